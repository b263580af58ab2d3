//! Replication, primary side (`docs/design.md`, "Replication"): the chain hash of every
//! group, an index of the durable groups in the journals, the journals held for a shipper,
//! the base export, and the acknowledgement/fence state of `Durability::Replicated`.
//!
//! The state lives in [`ReplShared`], an `Arc` shared by the engine and every
//! `ReplicationSource`: a source never touches the engine (which may be closed and freed
//! while a shipper thread still holds the source), only this state and the heap's files.
//!
//! # Lock order
//!
//! `commit` → `durable.state` → `ReplShared::state`; nothing is locked while holding
//! `ReplShared::state` except to read files that no lock protects.
//!
//! # Invariants
//!
//! - `groups` holds every group of the journals in `journals` after `floor.0`, dense and in
//!   order: `groups[i].seq == floor.0 + 1 + i`; `floor.1` is the chain hash at `floor.0`.
//! - `groups[i].chain == chain_step(chain(seq - 1), seq, records of the group)`.
//! - `durable_seq` is never above what `wait_durable` published: a source hands out only
//!   `seq <= durable_seq`, or, with `ship_written` (`Durability::Replicated`), only groups in
//!   `groups` (written to the journal with `pwrite`, so in the page cache; a process crash
//!   keeps them, a machine crash may not: `docs/design.md`, "Shipping on write").
//! - `recent` holds, in `seq` order, copies of the records of groups in `groups`, each the
//!   exact bytes its `pwrite` wrote; `recent_bytes` is their total, at most
//!   `IN_MEMORY_MAX_BYTES` after each `group_written`.
//! - `written_seq` is the seq of `groups.back()` (or the floor), `acked_seq == acked`, and
//!   `committing` the number of `Replicated` commits between `commit_begin` and
//!   `commit_end`; all three change only under `state` (their atomics let a spinning thread
//!   read them without it; a decision is always re-checked under the lock).

use super::{lock, Engine};
use crate::disk::format::journal::{
    verify_record_crc, RecordHeader, FIRST_RECORD_OFFSET, KIND_COMMIT, RECORD_HEADER_LEN,
};
use crate::disk::format::meta::{Meta, META_LEN};
use crate::disk::format::snapshot::SnapHeader;
use crate::disk::format::wire::{chain_step, encode_base, encode_group, encode_group_chained, genesis_chain};
use crate::disk::format::{get_u32, get_u64, put_u32, put_u64};
use crate::disk::journal::{journal_file_name, scan_journal, JournalScan};
use crate::disk::snapshot::read_snapshot_header;
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Name of the chain anchor file in a heap directory.
pub(crate) const CHAIN_FILE: &str = "chain";
const CHAIN_MAGIC: [u8; 8] = *b"SNAPCHNA";
/// Anchors kept in the file (the newest).
const MAX_ANCHORS: usize = 8;
const ANCHOR_LEN: usize = 24;
/// A written group of at most this many bytes is handed to a source from memory (a copy
/// taken by `group_written`) instead of being read back from its journal.
const IN_MEMORY_MAX_GROUP: usize = 256 << 10;
/// The in-memory copies kept for a source at most (bytes); the oldest go first (a source
/// that is that far behind reads its groups back from the journal).
const IN_MEMORY_MAX_BYTES: usize = 1 << 20;
/// How long a source waiting for the group of a `Replicated` commit that has started but
/// not yet written it spins instead of sleeping (a sleeping thread takes tens of
/// microseconds to wake; the commit's own work before its write is of the same order).
const SPIN_FOR_WRITE: Duration = Duration::from_micros(300);
/// How long a `Replicated` commit whose group is durable spins for its acknowledgement
/// before it sleeps (the publish and the sync take about as long: when the sync ends first
/// the acknowledgement is usually that close, and a wake-up would add tens of microseconds).
const SPIN_FOR_ACK: Duration = Duration::from_micros(250);

/// The chain hash at the start of one journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    journal_id: u64,
    start_seq: u64,
    chain: u64,
}

/// Where one durable group lies.
#[derive(Debug, Clone, Copy)]
struct GroupLoc {
    seq: u64,
    journal: u64,
    start: u64,
    end: u64,
    chain: u64,
}

struct JournalInfo {
    id: u64,
    start_seq: u64,
    salt: u64,
    path: PathBuf,
    file: Option<Arc<dyn VFile>>,
    /// End of its last group.
    end: u64,
}

struct ReplState {
    closed: bool,
    durable_seq: u64,
    acked: u64,
    fenced: Option<String>,
    hold: Option<u64>,
    journals: VecDeque<JournalInfo>,
    groups: VecDeque<GroupLoc>,
    floor: (u64, u64),
    anchors: Vec<Anchor>,
    pins: [u32; 2],
    /// Hand out groups as soon as they are written, not once durable (`Durability::Replicated`:
    /// the publish overlaps the `fdatasync`).
    ship_written: bool,
    /// With `ship_written`: copies of the records of the last groups written (seq, records
    /// in journal form), newest last, at most `IN_MEMORY_MAX_BYTES` in all.
    recent: VecDeque<(u64, Vec<u8>)>,
    recent_bytes: usize,
    /// Sources sleeping in `next_group` (`group_written`, `durable` and `commit_begin` skip
    /// the wake-up system call without one; nothing else waits for what they announce).
    group_waiters: u32,
}

/// What the engine and its replication sources share.
pub(crate) struct ReplShared {
    heap_id: u64,
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    meta: Meta,
    max_backlog: u64,
    state: Mutex<ReplState>,
    cv: Condvar,
    /// `Replicated` commits between `commit_begin` and `commit_end` (changed under `state`;
    /// read without it by a spinning source).
    committing: AtomicU32,
    /// Seq of the last group written (changed under `state`; read without it by a spinning
    /// source).
    written_seq: AtomicU64,
    /// `ReplState::acked`, for a committer spinning for its acknowledgement.
    acked_seq: AtomicU64,
}

/// A group read back for shipping.
pub(crate) struct ShippedGroup {
    pub seq: u64,
    pub bytes: Vec<u8>,
}

/// An exported base.
pub(crate) struct ExportedBase {
    pub seq: u64,
    pub heap_id: u64,
    pub bytes: Vec<u8>,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

fn read_anchors(vfs: &dyn Vfs, dir: &Path) -> Result<Vec<Anchor>> {
    let path = dir.join(CHAIN_FILE);
    let f = match vfs.open(&path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("open", &path, e)),
    };
    let len = f.len().map_err(io_err("fstat", &path))?;
    let max = 16 + MAX_ANCHORS * ANCHOR_LEN + 4;
    if len < 20 || len as usize > max {
        return Err(Error::corrupt(&path, 0, format!("chain anchor file of {len} bytes")));
    }
    let mut b = vec![0u8; len as usize];
    f.read_at(&mut b, 0).map_err(io_err("read", &path))?;
    let n = get_u32(&b, 8) as usize;
    if b[..8] != CHAIN_MAGIC || n > MAX_ANCHORS || b.len() != 16 + n * ANCHOR_LEN + 4 {
        return Err(Error::corrupt(&path, 0, "not a chain anchor file of this version"));
    }
    let body = b.len() - 4;
    if get_u32(&b, body) != crc32fast::hash(&b[..body]) {
        return Err(Error::corrupt(
            &path,
            body as u64,
            "chain anchor checksum does not match",
        ));
    }
    Ok((0..n)
        .map(|i| {
            let at = 16 + i * ANCHOR_LEN;
            Anchor {
                journal_id: get_u64(&b, at),
                start_seq: get_u64(&b, at + 8),
                chain: get_u64(&b, at + 16),
            }
        })
        .collect())
}

/// Rewrites the anchor file (`chain.tmp`, sync, rename, sync the directory).
fn write_anchors(vfs: &dyn Vfs, dir: &Path, anchors: &[Anchor]) -> Result<()> {
    let mut b = vec![0u8; 16 + anchors.len() * ANCHOR_LEN + 4];
    b[..8].copy_from_slice(&CHAIN_MAGIC);
    put_u32(&mut b, 8, anchors.len() as u32);
    for (i, a) in anchors.iter().enumerate() {
        let at = 16 + i * ANCHOR_LEN;
        put_u64(&mut b, at, a.journal_id);
        put_u64(&mut b, at + 8, a.start_seq);
        put_u64(&mut b, at + 16, a.chain);
    }
    let body = b.len() - 4;
    let crc = crc32fast::hash(&b[..body]);
    put_u32(&mut b, body, crc);
    let tmp = dir.join(format!("{CHAIN_FILE}.tmp"));
    let path = dir.join(CHAIN_FILE);
    let f = vfs.open(&tmp, true).map_err(io_err("create", &tmp))?;
    f.set_len(0).map_err(io_err("truncate", &tmp))?;
    f.write_at(&b, 0).map_err(io_err("write", &tmp))?;
    f.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(f);
    vfs.rename(&tmp, &path).map_err(io_err("rename", &path))?;
    vfs.sync_dir(dir).map_err(io_err("fsync (directory)", dir))
}

/// Writes the anchor file of a replica created from a base: the chain hash `chain` at
/// `start_seq`, where journal `journal_id` starts.
pub(crate) fn write_first_anchor(vfs: &dyn Vfs, dir: &Path, journal_id: u64, start_seq: u64, chain: u64) -> Result<()> {
    write_anchors(
        vfs,
        dir,
        &[Anchor {
            journal_id,
            start_seq,
            chain,
        }],
    )
}

/// Reads the records of a group (`[start, end)` of `file`) and checks each record's shape,
/// checksum (with the journal's `salt`) and sequence number, and that the last is `COMMIT`.
fn read_group(file: &dyn VFile, path: &Path, salt: u64, seq: u64, start: u64, end: u64) -> Result<Vec<u8>> {
    let len = end.checked_sub(start).filter(|&l| l >= RECORD_HEADER_LEN as u64);
    let Some(len) = len else {
        return Err(Error::corrupt(path, start, "group location is empty"));
    };
    let mut b = vec![0u8; len as usize];
    let n = file.read_at(&mut b, start).map_err(io_err("read", path))?;
    if n != b.len() {
        return Err(Error::corrupt(
            path,
            start + n as u64,
            "journal ends inside a durable group",
        ));
    }
    check_records(&b, path, start, salt, seq)?;
    Ok(b)
}

fn check_records(b: &[u8], path: &Path, start: u64, salt: u64, seq: u64) -> Result<()> {
    let mut pos = 0usize;
    let mut last_kind = 0;
    while pos < b.len() {
        let at = start + pos as u64;
        let h = RecordHeader::decode(&b[pos..]).ok_or_else(|| Error::corrupt(path, at, "partial record"))?;
        h.check_shape().map_err(|w| Error::corrupt(path, at, w))?;
        let rl = h.record_len() as usize;
        if rl > b.len() - pos || !verify_record_crc(&b[pos..pos + RECORD_HEADER_LEN + h.len as usize], salt) {
            return Err(Error::corrupt(
                path,
                at,
                "durable group record does not verify (changed since it was written)",
            ));
        }
        if h.seq != seq {
            return Err(Error::corrupt(
                path,
                at,
                format!("record of sequence {} in group {seq}", h.seq),
            ));
        }
        last_kind = h.kind;
        pos += rl;
    }
    if last_kind != KIND_COMMIT {
        return Err(Error::corrupt(
            path,
            start,
            "durable group does not end with its COMMIT record",
        ));
    }
    Ok(())
}

/// Folds the chain hash over the groups of a scanned journal, reading them in large chunks.
fn fold_journal(
    vfs: &dyn Vfs,
    scan: &JournalScan,
    mut chain: u64,
    mut each: impl FnMut(u64, u64, u64, u64),
) -> Result<u64> {
    let f = vfs.open(&scan.path, false).map_err(io_err("open", &scan.path))?;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = 0u64;
    for g in scan.groups.iter() {
        let inside = g.start >= buf_at && g.end <= buf_at + buf.len() as u64;
        if !inside {
            let len = (g.end - g.start).max(4 << 20).min(scan.valid_end - g.start);
            buf.resize(len as usize, 0);
            let n = f.read_at(&mut buf, g.start).map_err(io_err("read", &scan.path))?;
            buf.truncate(n);
            buf_at = g.start;
            if (n as u64) < g.end - g.start {
                return Err(Error::corrupt(
                    &scan.path,
                    g.start + n as u64,
                    "journal ends inside a group",
                ));
            }
        }
        let rec = &buf[(g.start - buf_at) as usize..(g.end - buf_at) as usize];
        chain = chain_step(chain, g.seq, rec);
        each(g.seq, g.start, g.end, chain);
    }
    Ok(chain)
}

impl ReplShared {
    /// Builds the replication state at open from the scanned journals (step 4 of recovery):
    /// the chain hash at the first journal's start comes from the anchor file (or, after a
    /// crash between a snapshot and the anchor write, from the previous journal, still on
    /// disk then), else a new chain starts there (written as an anchor). Returns the state
    /// and the chain hash at the last group.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn recover(
        vfs: Arc<dyn Vfs>,
        dir: &Path,
        meta: &Meta,
        max_backlog: u64,
        scans: &[JournalScan],
        first_journal: u64,
        start_seq: u64,
        stale: &[u64],
    ) -> Result<(Arc<ReplShared>, u64)> {
        let mut anchors = read_anchors(&*vfs, dir)?;
        let find = |a: &[Anchor], id: u64, seq: u64| {
            a.iter()
                .find(|x| x.journal_id == id && x.start_seq == seq)
                .map(|x| x.chain)
        };
        let mut chain0 = find(&anchors, first_journal, start_seq);
        let found = chain0.is_some();
        if chain0.is_none() && first_journal > 1 && stale.contains(&(first_journal - 1)) {
            // The process died after the snapshot became valid and before the anchor of its
            // journal was written: fold the previous journal (deleted only after this open).
            let prev = first_journal - 1;
            let path = dir.join(journal_file_name(prev));
            if let Ok(scan) = scan_journal(&*vfs, &path, meta.heap_id, prev, false) {
                if let Some(c) = find(&anchors, prev, scan.header.start_seq) {
                    if scan.last_seq() == start_seq {
                        chain0 = Some(fold_journal(&*vfs, &scan, c, |_, _, _, _| {})?);
                    }
                }
            }
        }
        // Without an anchor (and no previous journal to rebuild it from) a new chain starts.
        let chain0 = chain0.unwrap_or_else(|| genesis_chain(meta.heap_id, start_seq));
        if !found {
            // Recorded before the previous journal is removed (later in this open).
            anchors.retain(|a| a.journal_id != first_journal);
            anchors.push(Anchor {
                journal_id: first_journal,
                start_seq,
                chain: chain0,
            });
            let keep = anchors.len().saturating_sub(MAX_ANCHORS);
            anchors.drain(..keep);
            write_anchors(&*vfs, dir, &anchors)?;
        }
        let mut journals = VecDeque::new();
        let mut groups = VecDeque::new();
        let mut chain = chain0;
        for scan in scans {
            let id = scan.header.journal_id;
            chain = fold_journal(&*vfs, scan, chain, |seq, start, end, chain| {
                groups.push_back(GroupLoc {
                    seq,
                    journal: id,
                    start,
                    end,
                    chain,
                })
            })?;
            journals.push_back(JournalInfo {
                id,
                start_seq: scan.header.start_seq,
                salt: scan.header.salt,
                path: scan.path.clone(),
                file: None,
                end: scan.valid_end,
            });
        }
        let durable_seq = groups.back().map_or(start_seq, |g: &GroupLoc| g.seq);
        let shared = ReplShared {
            heap_id: meta.heap_id,
            dir: dir.to_path_buf(),
            vfs,
            meta: meta.clone(),
            max_backlog,
            state: Mutex::new(ReplState {
                closed: false,
                durable_seq,
                acked: 0,
                fenced: None,
                hold: None,
                journals,
                groups,
                floor: (start_seq, chain0),
                anchors,
                pins: [0, 0],
                ship_written: false,
                recent: VecDeque::new(),
                recent_bytes: 0,
                group_waiters: 0,
            }),
            cv: Condvar::new(),
            committing: AtomicU32::new(0),
            written_seq: AtomicU64::new(durable_seq),
            acked_seq: AtomicU64::new(0),
        };
        Ok((Arc::new(shared), chain))
    }

    /// The heap id.
    pub(crate) fn heap_id(&self) -> u64 {
        self.heap_id
    }

    /// Registers the journal the writer appends to, if it is new (created at open).
    pub(crate) fn journal_opened(&self, id: u64, start_seq: u64, salt: u64, path: PathBuf, end: u64) {
        let mut st = lock(&self.state);
        if st.journals.iter().all(|j| j.id != id) {
            st.journals.push_back(JournalInfo {
                id,
                start_seq,
                salt,
                path,
                file: None,
                end,
            });
        }
    }

    /// A group was written to journal `journal` at `[start, end)` (not yet durable);
    /// `records` are its bytes as written, or empty when the writer no longer holds them
    /// (kept in memory for a source with `ship_written`, so that it need not read them back).
    pub(crate) fn group_written(&self, seq: u64, journal: u64, start: u64, end: u64, chain: u64, records: &[u8]) {
        let mut st = lock(&self.state);
        debug_assert_eq!(seq, st.floor.0 + 1 + st.groups.len() as u64, "groups are dense");
        debug_assert!(
            records.is_empty() || records.len() as u64 == end - start,
            "records are the group as written"
        );
        st.groups.push_back(GroupLoc {
            seq,
            journal,
            start,
            end,
            chain,
        });
        if let Some(j) = st.journals.iter_mut().rev().find(|j| j.id == journal) {
            j.end = end;
        }
        self.written_seq.store(seq, Ordering::Release);
        if st.ship_written {
            if !records.is_empty() && records.len() <= IN_MEMORY_MAX_GROUP {
                st.recent_bytes += records.len();
                st.recent.push_back((seq, records.to_vec()));
                while st.recent_bytes > IN_MEMORY_MAX_BYTES {
                    let Some((_, r)) = st.recent.pop_front() else { break };
                    st.recent_bytes -= r.len();
                }
            }
            if st.group_waiters > 0 {
                // A source waiting for this group ships it while the committer syncs.
                self.cv.notify_all();
            }
        }
    }

    /// A `Durability::Replicated` commit starts: a source sleeping in `next_group` wakes now
    /// and spins for the group ([`SPIN_FOR_WRITE`]), so that its wake-up overlaps the
    /// commit's work instead of following the write. Drop the guard once the group is
    /// written (or the commit failed, or had nothing to write).
    pub(crate) fn commit_begin(&self) -> Committing<'_> {
        let st = lock(&self.state);
        self.committing.fetch_add(1, Ordering::AcqRel);
        if st.ship_written && st.group_waiters > 0 {
            self.cv.notify_all();
        }
        Committing(self)
    }

    fn commit_end(&self) {
        let _st = lock(&self.state);
        self.committing.fetch_sub(1, Ordering::AcqRel);
    }

    /// Whether sources hand out groups once written (`Durability::Replicated`) instead of
    /// once durable.
    pub(crate) fn set_ship_written(&self, on: bool) {
        lock(&self.state).ship_written = on;
    }

    /// Every group up to `seq` is durable (only a source sleeping in `next_group` waits for
    /// that: without one the wake-up system call is skipped, off the committer's path).
    pub(crate) fn durable(&self, seq: u64) {
        let mut st = lock(&self.state);
        if seq > st.durable_seq {
            st.durable_seq = seq;
            if st.group_waiters > 0 {
                self.cv.notify_all();
            }
        }
    }

    /// Before creating journal `id` starting at `seq` with chain hash `chain`: records the
    /// anchor durably.
    pub(crate) fn rotating(&self, id: u64, seq: u64, chain: u64) -> Result<()> {
        let mut anchors = lock(&self.state).anchors.clone();
        anchors.retain(|a| a.journal_id != id);
        anchors.push(Anchor {
            journal_id: id,
            start_seq: seq,
            chain,
        });
        let keep = anchors.len().saturating_sub(MAX_ANCHORS);
        anchors.drain(..keep);
        write_anchors(&*self.vfs, &self.dir, &anchors)?;
        lock(&self.state).anchors = anchors;
        Ok(())
    }

    /// A snapshot whose chain starts at journal `first_needed` is durable: returns the first
    /// journal to keep (lower when a shipper's hold needs older ones and they fit the
    /// backlog cap; past the cap the hold is dropped) and forgets the groups of the others.
    pub(crate) fn release_before(&self, first_needed: u64) -> u64 {
        let mut st = lock(&self.state);
        let mut keep = first_needed;
        if let Some(h) = st.hold {
            let holder = st.journals.iter().rev().find(|j| j.start_seq <= h).map(|j| j.id);
            if let Some(id) = holder.filter(|&id| id < first_needed) {
                let held: u64 = st
                    .journals
                    .iter()
                    .filter(|j| j.id >= id && j.id < first_needed)
                    .map(|j| j.end.saturating_sub(FIRST_RECORD_OFFSET))
                    .sum();
                if held > self.max_backlog {
                    st.hold = None;
                } else {
                    keep = id;
                }
            }
        }
        while st.journals.front().is_some_and(|j| j.id < keep) {
            st.journals.pop_front();
        }
        while let Some(g) = st.groups.front().copied() {
            if g.journal >= keep {
                break;
            }
            st.floor = (g.seq, g.chain);
            st.groups.pop_front();
        }
        while st.recent.front().is_some_and(|(s, _)| *s <= st.floor.0) {
            if let Some((_, r)) = st.recent.pop_front() {
                st.recent_bytes -= r.len();
            }
        }
        keep
    }

    /// The heap is closing: every waiting source and committer wakes up.
    pub(crate) fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        st.recent.clear();
        st.recent_bytes = 0;
        drop(st);
        self.cv.notify_all();
    }

    /// Whether snapshot file `slot` is being read by a base export.
    pub(crate) fn pinned(&self, slot: usize) -> bool {
        lock(&self.state).pins[slot] > 0
    }

    /// Waits until no base export reads snapshot file `slot`.
    pub(crate) fn wait_unpinned(&self, slot: usize) {
        let mut st = lock(&self.state);
        while st.pins[slot] > 0 && !st.closed {
            st = self.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// `Durability::Replicated`: refuses a commit of a fenced primary.
    pub(crate) fn check_fenced(&self) -> Result<()> {
        match &lock(&self.state).fenced {
            Some(reason) => Err(Error::Fenced { reason: reason.clone() }),
            None => Ok(()),
        }
    }

    /// `Durability::Replicated`: waits for the acknowledgement of `seq` (spinning for up to
    /// [`SPIN_FOR_ACK`] first).
    pub(crate) fn wait_ack(&self, seq: u64, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let deadline = start + timeout;
        let spin_until = start + SPIN_FOR_ACK.min(timeout);
        'spin: loop {
            for _ in 0..64 {
                if self.acked_seq.load(Ordering::Acquire) >= seq {
                    break 'spin;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= spin_until {
                break;
            }
        }
        let mut st = lock(&self.state);
        loop {
            if let Some(reason) = &st.fenced {
                return Err(Error::Fenced { reason: reason.clone() });
            }
            if st.acked >= seq {
                return Ok(());
            }
            if st.closed {
                return Err(Error::Closed {
                    what: format!("waiting for the replication of commit {seq}"),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::ReplicationTimeout { seq });
            }
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Highest durable commit.
    pub(crate) fn durable_seq(&self) -> u64 {
        lock(&self.state).durable_seq
    }

    /// Pins the journals holding groups after `seq`.
    pub(crate) fn hold_from(&self, seq: u64) {
        lock(&self.state).hold = Some(seq);
    }

    /// The replicated log holds every group up to `seq`.
    pub(crate) fn acknowledge(&self, seq: u64) {
        let mut st = lock(&self.state);
        st.acked = st.acked.max(seq);
        self.acked_seq.store(st.acked, Ordering::Release);
        if let Some(h) = st.hold.as_mut() {
            *h = (*h).max(seq);
        }
        self.cv.notify_all();
    }

    /// This primary was fenced.
    pub(crate) fn fence(&self, reason: &str) {
        let mut st = lock(&self.state);
        if st.fenced.is_none() {
            st.fenced = Some(reason.to_string());
        }
        self.cv.notify_all();
    }

    /// The chain hash at `seq`, if this state still knows it.
    fn chain_at(st: &ReplState, seq: u64) -> Option<u64> {
        if seq == st.floor.0 {
            return Some(st.floor.1);
        }
        let i = seq.checked_sub(st.floor.0 + 1)? as usize;
        st.groups.get(i).map(|g| g.chain)
    }

    /// The chain hash at `seq` if this state still knows it (a source's `chain_at`, and the
    /// replica side's duplicate check).
    pub(crate) fn chain_of(&self, seq: u64) -> Option<u64> {
        Self::chain_at(&lock(&self.state), seq)
    }

    /// Highest seq a source may hand out: the last durable group, or with `ship_written` the
    /// last group written.
    fn shippable(st: &ReplState) -> u64 {
        if st.ship_written {
            st.groups.back().map_or(st.durable_seq, |g| g.seq.max(st.durable_seq))
        } else {
            st.durable_seq
        }
    }

    /// Group `after + 1` in wire form once it is shippable (waiting up to `timeout`): from
    /// the in-memory copy `group_written` kept, else read back from its journal (each
    /// record's checksum verified).
    pub(crate) fn next_group(&self, after: u64, timeout: Duration) -> Result<Option<ShippedGroup>> {
        let wanted = after
            .checked_add(1)
            .ok_or_else(|| Error::invalid("next_group: sequence number overflows"))?;
        let deadline = Instant::now() + timeout;
        let mut spun = false;
        let mut st = lock(&self.state);
        loop {
            if st.closed {
                return Err(Error::Closed {
                    what: "ReplicationSource::next_group".into(),
                });
            }
            if wanted <= st.floor.0 {
                return Err(Error::BacklogTrimmed {
                    wanted,
                    oldest: st.floor.0 + 1,
                });
            }
            if wanted <= Self::shippable(&st) {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            if st.ship_written && !spun && self.committing.load(Ordering::Acquire) > 0 {
                // A commit is on its way to writing this group: wait for it awake.
                spun = true;
                drop(st);
                self.spin_for_write(wanted, deadline.min(now + SPIN_FOR_WRITE));
                st = lock(&self.state);
                continue;
            }
            st.group_waiters += 1;
            st = self
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            st.group_waiters -= 1;
            // A new commit may have started meanwhile: it may be spun for again.
            spun = false;
        }
        let i = (wanted - st.floor.0 - 1) as usize;
        let Some(loc) = st.groups.get(i).copied() else {
            return Err(Error::invalid(format!("group {wanted} is durable but not indexed")));
        };
        debug_assert_eq!(loc.seq, wanted);
        let prev = Self::chain_at(&st, wanted - 1).unwrap_or(st.floor.1);
        // The copy of a group written since (a source takes each group once, in order).
        while st.recent.front().is_some_and(|(s, _)| *s < wanted) {
            if let Some((_, r)) = st.recent.pop_front() {
                st.recent_bytes -= r.len();
            }
        }
        if st.recent.front().is_some_and(|(s, _)| *s == wanted) {
            let (_, records) = st.recent.pop_front().expect("checked just above");
            st.recent_bytes -= records.len();
            drop(st);
            let bytes = encode_group_chained(self.heap_id, wanted, prev, loc.chain, &records);
            return Ok(Some(ShippedGroup { seq: wanted, bytes }));
        }
        let vfs = self.vfs.clone();
        let Some(j) = st.journals.iter_mut().find(|j| j.id == loc.journal) else {
            return Err(Error::invalid(format!(
                "journal {} of group {wanted} is not indexed",
                loc.journal
            )));
        };
        let file = match &j.file {
            Some(f) => f.clone(),
            None => {
                let f: Arc<dyn VFile> = Arc::from(vfs.open(&j.path, false).map_err(io_err("open", &j.path))?);
                j.file = Some(f.clone());
                f
            }
        };
        let (path, salt) = (j.path.clone(), j.salt);
        drop(st);
        let records = read_group(&*file, &path, salt, wanted, loc.start, loc.end)?;
        let (bytes, chain) = encode_group(self.heap_id, wanted, prev, &records);
        if chain != loc.chain {
            return Err(Error::corrupt(
                &path,
                loc.start,
                format!("group {wanted} no longer has the chain hash it was written with"),
            ));
        }
        Ok(Some(ShippedGroup { seq: wanted, bytes }))
    }

    /// Spins (without the lock) until group `wanted` is written, no `Replicated` commit is
    /// in progress any more, or `until`.
    fn spin_for_write(&self, wanted: u64, until: Instant) {
        loop {
            for _ in 0..64 {
                if self.written_seq.load(Ordering::Acquire) >= wanted || self.committing.load(Ordering::Acquire) == 0 {
                    return;
                }
                std::hint::spin_loop();
            }
            if Instant::now() >= until {
                return;
            }
        }
    }

    /// A base: `meta` and the newest valid snapshot file, pinned while it is read.
    pub(crate) fn export_base(&self) -> Result<ExportedBase> {
        let meta_path = self.dir.join("meta");
        let mf = self.vfs.open(&meta_path, false).map_err(io_err("open", &meta_path))?;
        let mut meta = vec![0u8; META_LEN];
        let n = mf.read_at(&mut meta, 0).map_err(io_err("read", &meta_path))?;
        meta.truncate(n);
        for _ in 0..8 {
            if lock(&self.state).closed {
                return Err(Error::Closed {
                    what: "ReplicationSource::export_base".into(),
                });
            }
            let (slot, h, f) = self.newest_snapshot()?;
            let pin = Pin::new(self, slot);
            if self.header_of(&*f, slot)? != Some(h) {
                continue;
            }
            let len = h.file_len();
            let mut snap = vec![0u8; len as usize];
            let got = f.read_at(&mut snap, 0).map_err(io_err("read", &self.dir))?;
            if got as u64 != len || self.header_of(&*f, slot)? != Some(h) {
                continue;
            }
            drop(pin);
            let chain = Self::chain_at(&lock(&self.state), h.seq).ok_or_else(|| {
                Error::invalid(format!(
                    "the chain hash at the snapshot's commit {} is not known",
                    h.seq
                ))
            })?;
            return Ok(ExportedBase {
                seq: h.seq,
                heap_id: self.heap_id,
                bytes: encode_base(self.heap_id, h.seq, chain, &meta, &snap),
            });
        }
        Err(Error::invalid(
            "export_base: the snapshot files kept changing while being read",
        ))
    }

    fn header_of(&self, f: &dyn VFile, slot: usize) -> Result<Option<SnapHeader>> {
        let path = self.dir.join(super::SNAPSHOT_FILES[slot]);
        read_snapshot_header(f, &self.meta).map_err(|(off, what)| Error::corrupt(path, off, what))
    }

    fn newest_snapshot(&self) -> Result<(usize, SnapHeader, Box<dyn VFile>)> {
        let mut best: Option<(usize, SnapHeader, Box<dyn VFile>)> = None;
        for slot in 0..2 {
            let path = self.dir.join(super::SNAPSHOT_FILES[slot]);
            let f = self.vfs.open(&path, false).map_err(io_err("open", &path))?;
            if let Some(h) = self.header_of(&*f, slot)?.filter(|h| h.valid) {
                if best.as_ref().is_none_or(|b| b.1.generation < h.generation) {
                    best = Some((slot, h, f));
                }
            }
        }
        best.ok_or_else(|| Error::invalid("export_base: the heap has no snapshot yet"))
    }
}

/// A `Replicated` commit on its way to writing its group ([`ReplShared::commit_begin`]); a
/// guard, so that a commit that panics is not counted for ever.
pub(crate) struct Committing<'a>(&'a ReplShared);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        self.0.commit_end();
    }
}

/// A base export's pin on a snapshot file: no snapshot writer targets it meanwhile.
struct Pin<'a> {
    shared: &'a ReplShared,
    slot: usize,
}

impl<'a> Pin<'a> {
    fn new(shared: &'a ReplShared, slot: usize) -> Self {
        lock(&shared.state).pins[slot] += 1;
        Pin { shared, slot }
    }
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        lock(&self.shared.state).pins[self.slot] -= 1;
        self.shared.cv.notify_all();
    }
}

impl Engine {
    /// The replication state (if the heap was opened with replication on) for a new
    /// `ReplicationSource`: with `Durability::Replicated`
    /// its groups are handed out once written, so that the publish overlaps the sync.
    pub(crate) fn replication_for_source(&self) -> Option<&Arc<ReplShared>> {
        let r = self.repl.as_ref()?;
        r.set_ship_written(matches!(
            self.opts.durability,
            crate::options::Durability::Replicated { .. }
        ));
        Some(r)
    }
}
