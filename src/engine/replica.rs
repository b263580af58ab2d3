//! Replication, standby side: applying a wire group to a replica's engine
//! (`docs/design.md`, "Replication").
//!
//! A replica is an ordinary heap directory opened by an ordinary engine (recovery maps the
//! newest snapshot and replays the journals), whose allocator gate is closed and which never
//! captures dirty pages: it changes only by [`Engine::replica_apply`], which
//!
//! 1. decodes and validates the whole group (damage, heap id, gap, duplicate, divergence) and
//!    computes every `DELTA` page's new image against the replica's own current image (its
//!    `post_crc` must match) — nothing is written before all of it passed;
//! 2. appends the records to the replica's journal (re-sealed with its salt) and waits until
//!    they are durable — from here a crash resumes at this group;
//! 3. writes the pages into memory under the caller's exclusive lock (readers see whole
//!    commits only);
//! 4. takes a snapshot when the journal asks for one, like a commit would (bounding the
//!    replica's journal).
//!
//! # Safety
//!
//! Step 1 reads pages inside the mapped extent; step 3 writes pages inside `[base, base +
//! extent)` after growing the mapping to the group's extent, with every reader excluded by
//! the caller's lock and no value handed out by the closed allocator.

use super::{lock, Engine};
use crate::disk::format::delta::{apply_entry, Entries};
use crate::disk::format::journal::{KIND_DELTA, KIND_PAGES};
use crate::disk::format::meta::{Meta, MetaError};
use crate::disk::format::snapshot::SnapHeader;
use crate::disk::format::wire::{decode_base, decode_group, WireError, WireGroupView};
use crate::error::{Error, Result};
use crate::io::Vfs;
use crate::mem::alloc::SEGMENT;
use crate::sys::OS_PAGE;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::RwLock;

/// Marker file of a replica directory (written last by a bootstrap; removed by a promotion).
pub(crate) const REPLICA_MARKER: &str = "replica";

/// What applying a group did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApplyOutcome {
    /// The group was applied; the replica is at this seq.
    Applied(u64),
    /// The replica already holds this group.
    Duplicate(u64),
}

/// `Error::Corrupt` (or `Incompatible` for a version) for refused wire bytes.
pub(crate) fn wire_error(what: &str, e: WireError) -> Error {
    if e.version {
        Error::incompatible(e.what)
    } else {
        Error::corrupt(PathBuf::from(what), e.offset, e.what)
    }
}

/// Creates a replica directory from a base (`docs/design.md`, "Replication"): `meta`, the
/// snapshot as `snapshot-0`, the chain anchor, each written and synced, then the marker
/// `replica` last (so a directory without it is an incomplete bootstrap). `dir` must not
/// exist or be empty.
pub(crate) fn bootstrap_files(vfs: &dyn Vfs, dir: &Path, base: &[u8]) -> Result<()> {
    let b = decode_base(base).map_err(|e| wire_error("<base>", e))?;
    let meta = Meta::decode(b.meta).map_err(|e| match e {
        MetaError::Corrupt(off, what) => Error::corrupt("<base: meta>", off, what),
        MetaError::Version(v) => Error::incompatible(format!("the base's meta has format version {v}")),
    })?;
    if meta.heap_id != b.heap_id {
        return Err(Error::corrupt(
            "<base>",
            0,
            format!(
                "base of heap {:#x} holds the meta of heap {:#x}",
                b.heap_id, meta.heap_id
            ),
        ));
    }
    let h = SnapHeader::decode(b.snapshot, meta.heap_id, meta.max_size)
        .map_err(|(off, what)| Error::corrupt("<base: snapshot>", off, what))?;
    if !h.valid || h.seq != b.seq || h.file_len() != b.snapshot.len() as u64 {
        return Err(Error::corrupt(
            "<base: snapshot>",
            0,
            format!(
                "the base's snapshot (valid {}, commit {}, {} bytes) does not match the base (commit {}, {} bytes)",
                h.valid,
                h.seq,
                h.file_len(),
                b.seq,
                b.snapshot.len()
            ),
        ));
    }
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| Error::io(op, p, e)
    };
    vfs.create_dir_all(dir).map_err(io("create directory", dir))?;
    if !vfs.list(dir).map_err(io("list directory", dir))?.is_empty() {
        return Err(Error::invalid(format!(
            "{} is not empty: a replica is bootstrapped into a new or empty directory",
            dir.display()
        )));
    }
    let write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        let f = vfs.open(&path, true).map_err(io("create", &path))?;
        f.write_at(bytes, 0).map_err(io("write", &path))?;
        f.sync_data().map_err(io("fdatasync", &path))
    };
    write("meta", b.meta)?;
    write(super::SNAPSHOT_FILES[0], b.snapshot)?;
    super::repl::write_first_anchor(vfs, dir, h.journal_id, h.seq, b.chain)?;
    vfs.sync_dir(dir).map_err(io("fsync (directory)", dir))?;
    write(REPLICA_MARKER, b"snapheap replica\n")?;
    vfs.sync_dir(dir).map_err(io("fsync (directory)", dir))
}

/// Removes the replica marker (promotion), durably.
pub(crate) fn remove_marker(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    match vfs.remove(&dir.join(REPLICA_MARKER)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", dir.join(REPLICA_MARKER), e)),
    }
    vfs.sync_dir(dir).map_err(|e| Error::io("fsync (directory)", dir, e))
}

/// Whether `dir` holds a complete replica (its marker).
pub(crate) fn is_replica(vfs: &dyn Vfs, dir: &Path) -> bool {
    vfs.open(&dir.join(REPLICA_MARKER), false).is_ok()
}

impl Engine {
    /// Applies one wire group (module doc); `exclusive` is the lock readers hold.
    pub(crate) fn replica_apply(&self, bytes: &[u8], exclusive: &RwLock<()>) -> Result<ApplyOutcome> {
        let v = decode_group(bytes).map_err(|e| wire_error("<wire group>", e))?;
        if v.heap_id != self.meta.heap_id {
            return Err(Error::incompatible(format!(
                "wire group of heap {:#x} given to a replica of heap {:#x}",
                v.heap_id, self.meta.heap_id
            )));
        }
        let repl = self.repl.as_ref().ok_or_else(|| Error::invalid("not a replica"))?;
        let mut cs = lock(&self.commit);
        self.check_poison()?;
        let pos = cs.last_seq;
        if v.seq <= pos {
            return match repl.chain_of(v.seq) {
                Some(c) if c != v.chain => Err(Error::ReplicaDiverged {
                    seq: v.seq,
                    what: format!(
                        "the replica holds group {} with chain hash {c:#018x}, this one has {:#018x}",
                        v.seq, v.chain
                    ),
                }),
                _ => Ok(ApplyOutcome::Duplicate(v.seq)),
            };
        }
        if v.seq != pos + 1 {
            return Err(Error::ReplicaGap {
                expected: pos + 1,
                got: v.seq,
            });
        }
        if v.prev_chain != cs.chain {
            return Err(Error::ReplicaDiverged {
                seq: v.seq,
                what: format!(
                    "the replica's history up to {pos} has chain hash {:#018x}, the group continues {:#018x}",
                    cs.chain, v.prev_chain
                ),
            });
        }
        if v.extent > self.meta.max_size || v.extent % SEGMENT as u64 != 0 {
            return Err(Error::corrupt(
                "<wire group>",
                0,
                format!("commit {} has extent {:#x} outside the heap", v.seq, v.extent),
            ));
        }
        let staged = self.stage_deltas(&v)?;
        // Step 2: durable in the replica's journal.
        let journal_bytes = cs.journal.end() - crate::disk::format::journal::FIRST_RECORD_OFFSET;
        let block = cs.pending.is_some() && journal_bytes >= self.opts.snapshot_after_journal_bytes.saturating_mul(2);
        self.reap(&mut cs, block);
        let synced = self.durable.durable_end();
        cs.journal.encode_wire(v.seq, synced, v.payload);
        let start = cs.journal.end();
        let end = cs.journal.write_encoded().map_err(|e| self.poison(e))?;
        repl.group_written(v.seq, cs.journal.id(), start, end, v.chain, cs.journal.encoded());
        self.durable.written(v.seq, end);
        cs.last_seq = v.seq;
        cs.chain = v.chain;
        self.counters.journal_bytes.store(
            end - crate::disk::format::journal::FIRST_RECORD_OFFSET,
            Ordering::Relaxed,
        );
        self.wait_durable(v.seq)?;
        // Step 3: memory, readers excluded.
        {
            let _w = exclusive.write().unwrap_or_else(|p| p.into_inner());
            self.install(&mut cs, &v, &staged)?;
        }
        self.counters.commits.fetch_add(1, Ordering::Relaxed);
        // Step 4.
        if cs.pending.is_none()
            && self.snapshot_due(&cs, None)
            && self.fork_snapshot(&mut cs, None, v.seq, v.extent as usize)
        {
            self.rotate_journal(&mut cs, v.seq)?;
        }
        Ok(ApplyOutcome::Applied(v.seq))
    }

    /// Step 1's `DELTA` part: each entry applied to a copy of the page's current image (zeros
    /// beyond the mapped extent), its post-image checked.
    fn stage_deltas(&self, v: &WireGroupView<'_>) -> Result<Vec<(u64, Vec<u8>)>> {
        let base = self.base();
        let mapped = lock(&self.grow.region).extent() as u64;
        let mut out = Vec::new();
        for r in v.records.iter().filter(|r| r.kind == KIND_DELTA) {
            let body = &v.payload[r.payload_at..r.payload_at + r.len];
            for e in Entries::new(body, r.count) {
                let at = |off: usize| (crate::disk::format::wire::WIRE_HEADER_LEN + r.payload_at + off) as u64;
                let e = e.map_err(|e| Error::corrupt("<wire group>", at(e.offset), e.to_string()))?;
                let mut page = vec![0u8; OS_PAGE];
                if e.page + OS_PAGE as u64 <= mapped {
                    // SAFETY: the page lies inside the mapped extent; the commit lock excludes
                    // every writer of a replica's memory (only `install` writes it).
                    let src = unsafe { std::slice::from_raw_parts((base + e.page as usize) as *const u8, OS_PAGE) };
                    page.copy_from_slice(src);
                }
                apply_entry(&e, &mut page).map_err(|d| {
                    Error::corrupt(
                        "<wire group>",
                        at(d.offset),
                        format!(
                            "{d} (the group's delta for page {:#x} does not fit the replica's image of it)",
                            e.page
                        ),
                    )
                })?;
                out.push((e.page, page));
            }
        }
        Ok(out)
    }

    /// Step 3: grows the mapping to the group's extent and writes its pages.
    fn install(&self, cs: &mut super::CommitState, v: &WireGroupView<'_>, staged: &[(u64, Vec<u8>)]) -> Result<()> {
        let base = self.base();
        {
            let mut region = lock(&self.grow.region);
            match region.grow(v.extent as usize) {
                Ok(None) => {}
                Ok(Some((a, b))) => {
                    // SAFETY: [a, b) was just mapped read-write and stays mapped for the
                    // engine's lifetime (a replica's region never shrinks).
                    if let Err(e) = unsafe { lock(&self.grow.tracker).arm(a, b) } {
                        return Err(self.poison(Error::io("userfaultfd (arm)", &self.dir, e)));
                    }
                }
                Err(e) => return Err(self.poison(Error::io("mmap (grow replica)", &self.dir, e))),
            }
        }
        let mut write = |off: u64, bytes: &[u8]| {
            let addr = base + off as usize;
            // SAFETY: the range lies inside the group's extent (checked by the decoder), now
            // mapped; the caller excludes readers and nothing else refers into a replica's
            // memory mutably.
            let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, bytes.len()) };
            dst.copy_from_slice(bytes);
            cs.since_snap.insert_range(addr, addr + bytes.len());
        };
        for r in v.records.iter().filter(|r| r.kind == KIND_PAGES) {
            write(r.arg, &v.payload[r.payload_at..r.payload_at + r.len]);
        }
        for (page, img) in staged {
            write(*page, img);
        }
        Ok(())
    }

    /// A checksum of the heap's memory `[base, base + extent)` and its extent, taken under the
    /// commit lock with the allocator paused (the caller excludes writers of the root).
    pub(crate) fn content_checksum(&self) -> u64 {
        let _cs = lock(&self.commit);
        let _pause = self.arena.pause();
        let extent = lock(&self.grow.region).extent();
        let base = self.base();
        let mut h: u64 = 0x6a09_e667_f3bc_c908 ^ extent as u64;
        for i in 0..extent / OS_PAGE {
            // SAFETY: the page lies inside the mapped extent; writers are excluded (above).
            let page = unsafe { std::slice::from_raw_parts((base + i * OS_PAGE) as *const u8, OS_PAGE) };
            let c = crc32fast::hash(page) as u64 | ((i as u64) << 32);
            h = (h ^ c).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
        }
        h ^ (h >> 31)
    }

    /// Closes the allocator gate: a replica never allocates (its memory must stay the
    /// primary's image); a `HeapAlloc` reached through it fails every allocation.
    pub(crate) fn close_allocator(&self) {
        self.arena.close();
    }

    /// Whether a valid snapshot exists (a base can be exported).
    pub(crate) fn has_snapshot(&self) -> bool {
        lock(&self.commit).newest().is_some()
    }

    /// The position: the last applied (durable) group.
    pub(crate) fn last_seq(&self) -> u64 {
        self.durable.seqs().0
    }
}
