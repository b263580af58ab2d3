//! Creating a heap directory and recovering an existing one.
//!
//! Recovery (see `docs/design.md`, "Recovery"):
//!
//! 1. Lock the directory (`lock`, an exclusive `flock`), read and check `meta`.
//! 2. Reserve the heap's address range at its recorded base.
//! 3. Read both snapshot headers; map the newest valid one's pages copy-on-write (lazy: no page
//!    is read until touched).
//! 4. Scan the journals that follow it (gap-free ids, each starting where the previous ended);
//!    replay their complete commit groups in order; only the last journal may end in a torn
//!    tail, which is truncated.
//! 5. Arm dirty tracking on the mapped extent, attach the allocator, resume the last journal.

use super::{lock, snap::SNAPSHOT_FILES, CommitState, Counters, Engine, GrowCtx};
use crate::alloc::{Arena, ArenaHeader, ARENA_HEADER_OFFSET, SEGMENT};
use crate::error::{Error, Result};
use crate::format::meta::{fnv1a, Meta, MetaError, META_LEN};
use crate::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::io::{VFile, Vfs};
use crate::journal::{journal_file_name, parse_journal_file_name, read_run, scan_journal, JournalScan, JournalWriter};
use crate::options::{Durability, OpenOptions};
use crate::region::Region;
use crate::sys;
use crate::track::{DirtySet, Tracker};
use crate::{SysBox, SysVec};
use std::alloc::System;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Identity of the root type, recorded at creation and checked at every open.
#[derive(Debug, Clone)]
pub(crate) struct Fingerprint {
    pub size: u64,
    pub align: u64,
    pub type_name: &'static str,
    pub schema: String,
}

impl Fingerprint {
    /// The fingerprint of `T` with a user schema id.
    pub(crate) fn of<T>(schema: &str) -> Fingerprint {
        Fingerprint {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            type_name: std::any::type_name::<T>(),
            schema: schema.to_string(),
        }
    }

    fn check(&self, m: &Meta) -> Result<()> {
        if fnv1a(self.type_name.as_bytes()) != m.root_type_hash
            || self.size != m.root_size
            || self.align != m.root_align
        {
            return Err(Error::incompatible(format!(
                "root type: the heap holds `{}` (size {}, align {}), this program opened it as `{}` (size {}, align {})",
                m.root_type_name, m.root_size, m.root_align, self.type_name, self.size, self.align
            )));
        }
        // The schema id is optional: it is compared only when both the heap and the opener
        // name one, so `Heap::open` (no schema) opens any heap of the right root type.
        let recorded = !m.schema.is_empty();
        if recorded && !self.schema.is_empty() && fnv1a(self.schema.as_bytes()) != m.schema_hash {
            return Err(Error::incompatible(format!(
                "schema: the heap was created with schema {:?}, this program opened it with {:?}",
                m.schema, self.schema
            )));
        }
        Ok(())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| Error::io(op, path, e)
}

/// Reads a whole small file.
fn read_file(vfs: &dyn Vfs, path: &Path, max: usize) -> Result<Option<Vec<u8>>> {
    let f = match vfs.open(path, false) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open", path, e)),
    };
    let len = f.len().map_err(io_err("fstat", path))?.min(max as u64) as usize;
    let mut buf = vec![0u8; len];
    let n = f.read_at(&mut buf, 0).map_err(io_err("read", path))?;
    buf.truncate(n);
    Ok(Some(buf))
}

/// How many times (2 ms apart) a taken heap lock is tried again before `Error::Locked`.
const LOCK_RETRIES: u32 = 50;

impl Engine {
    /// Opens (or creates) the heap in `dir`. Returns the engine and whether the heap has no
    /// committed root yet (a new heap, or one whose creation never committed).
    pub(crate) fn open(dir: &Path, opts: &OpenOptions, fp: &Fingerprint) -> Result<SysBox<Engine>> {
        if sys::page_size() != sys::OS_PAGE {
            return Err(Error::incompatible(format!(
                "the system page size is {} bytes; snapheap needs {}-byte pages",
                sys::page_size(),
                sys::OS_PAGE
            )));
        }
        let vfs = opts.vfs.clone();
        vfs.create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let dir = dir.to_path_buf();
        let lock_path = dir.join("lock");
        let lock_file = vfs.open(&lock_path, true).map_err(io_err("open", &lock_path))?;
        if let Some(fd) = lock_file.raw_fd() {
            // A lock found taken is tried again for a short while: another thread of this
            // process that is spawning a program holds a copy of every descriptor between its
            // fork and exec (O_CLOEXEC closes them only at exec), and with it our lock.
            let mut tries = 0;
            while !sys::try_lock_exclusive(fd).map_err(io_err("flock", &lock_path))? {
                tries += 1;
                if tries > LOCK_RETRIES {
                    return Err(Error::Locked { path: lock_path });
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }

        let meta_path = dir.join("meta");
        // The memory of this heap's earlier handle in this process, when it is still mapped
        // (`detach.rs`): recovery then only checks that the files end exactly where that
        // memory is, and adopts it instead of mapping the files over it.
        let mut adopting: Option<super::detach::Taken> = None;
        let (meta, mut region) = match read_file(&*vfs, &meta_path, META_LEN)? {
            Some(bytes) => {
                let meta = Meta::decode(&bytes).map_err(|e| match e {
                    MetaError::Corrupt(off, what) => Error::corrupt(&meta_path, off, what),
                    MetaError::Version(v) => Error::incompatible(format!(
                        "{} has format version {v}, this build reads version {}",
                        meta_path.display(),
                        crate::format::meta::FORMAT_VERSION
                    )),
                })?;
                fp.check(&meta)?;
                let region = match super::detach::take(meta.base as usize) {
                    Some(t) => {
                        let refuse = |reason: &str| Error::Detached {
                            dir: dir.clone(),
                            reason: reason.to_string(),
                        };
                        if let Some(why) = t.get().refuse {
                            return Err(refuse(why));
                        }
                        if t.get().heap_id != meta.heap_id {
                            return Err(refuse("the directory now holds another heap at the same address"));
                        }
                        let r = t.shadow();
                        adopting = Some(t);
                        r
                    }
                    None => Region::reserve(meta.base as usize, meta.max_size as usize)?,
                };
                (meta, region)
            }
            None => create_meta(&*vfs, &dir, opts, fp)?,
        };
        let base = region.base();

        // Snapshot files: open both, pick the newest valid one.
        let mut snap_files: SysVec<Box<dyn VFile>> = SysVec::new_in(System);
        let mut snaps = [None, None];
        for (i, name) in SNAPSHOT_FILES.iter().enumerate() {
            let path = dir.join(name);
            let f = vfs.open(&path, true).map_err(io_err("open", &path))?;
            snaps[i] = read_snapshot_header(&*f, &meta).map_err(|(off, what)| Error::corrupt(&path, off, what))?;
            snap_files.push(f);
        }
        let newest = (0..2)
            .filter(|&i| snaps[i].is_some_and(|h: SnapHeader| h.valid))
            .max_by_key(|&i| snaps[i].map_or(0, |h| h.generation));
        let (start_seq, first_journal) = match newest.and_then(|n| snaps[n]) {
            Some(h) => (h.seq, h.journal_id),
            None => (0, 1),
        };
        let mut prev_interval = None;
        if let Some(n) = newest {
            let h = snaps[n].expect("newest is valid");
            let f = &snap_files[n];
            if h.extent > 0 && adopting.is_none() {
                map_snapshot(&mut region, &**f, h.extent as usize, &dir.join(SNAPSHOT_FILES[n]))?;
            }
            prev_interval = read_dirty_bitmap(&**f, &h, base, meta.max_size as usize);
        }

        // Journals after the snapshot.
        let names = vfs.list(&dir).map_err(io_err("list directory", &dir))?;
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|n| n.to_str().and_then(parse_journal_file_name))
            .collect();
        ids.sort_unstable();
        let stale: Vec<u64> = ids.iter().copied().filter(|&id| id < first_journal).collect();
        ids.retain(|&id| id >= first_journal);
        let mut scans: Vec<JournalScan> = Vec::new();
        let mut expect_seq = start_seq;
        for (k, &id) in ids.iter().enumerate() {
            let path = dir.join(journal_file_name(id));
            let expected_id = first_journal + k as u64;
            if id != expected_id {
                return Err(Error::corrupt(
                    dir.join(journal_file_name(expected_id)),
                    0,
                    format!("journal {expected_id} is missing but journal {id} exists"),
                ));
            }
            let scan = scan_journal(&*vfs, &path, meta.heap_id, id, k + 1 == ids.len())?;
            if scan.header.start_seq != expect_seq {
                return Err(Error::corrupt(
                    &path,
                    crate::format::journal::START_SEQ_OFFSET as u64,
                    format!(
                        "journal starts after commit {} but the state before it ends at commit {expect_seq}",
                        scan.header.start_seq
                    ),
                ));
            }
            expect_seq = scan.last_seq();
            scans.push(scan);
        }

        // Replay.
        let mut replayed: SysVec<(usize, usize)> = SysVec::new_in(System);
        let mut replayed_pages = 0u64;
        let mut any_state = newest.is_some();
        for scan in &scans {
            let f = vfs.open(&scan.path, false).map_err(io_err("open", &scan.path))?;
            for g in &scan.groups {
                any_state = true;
                if g.extent > meta.max_size || g.extent % SEGMENT as u64 != 0 {
                    return Err(Error::corrupt(
                        &scan.path,
                        0,
                        format!("commit {} has extent {:#x} outside the heap", g.seq, g.extent),
                    ));
                }
                if adopting.is_none() {
                    region
                        .grow(g.extent as usize)
                        .map_err(io_err("mmap (grow heap)", &scan.path))?;
                } else if g.extent as usize > region.extent() {
                    return Err(Error::Detached {
                        dir: dir.clone(),
                        reason: format!(
                            "its files describe {:#x} bytes, more than the {:#x} bytes still mapped",
                            g.extent,
                            region.extent()
                        ),
                    });
                }
                for run in &scan.runs[g.runs.clone()] {
                    if run.region_offset % sys::OS_PAGE as u64 != 0
                        || run.len % sys::OS_PAGE as u64 != 0
                        || run.region_offset.checked_add(run.len).is_none_or(|e| e > g.extent)
                    {
                        return Err(Error::corrupt(
                            &scan.path,
                            run.file_offset,
                            format!(
                                "page run {:#x}+{:#x} lies outside the heap extent {:#x}",
                                run.region_offset, run.len, g.extent
                            ),
                        ));
                    }
                    let addr = base + run.region_offset as usize;
                    if adopting.is_some() {
                        // The memory already holds these pages (checked by the commit number
                        // below); read them anyway so damage is reported as on any open.
                        let mut scratch = vec![0u8; run.len as usize];
                        read_run(&*f, &scan.path, run, &mut scratch)?;
                        replayed.push((addr, addr + run.len as usize));
                        replayed_pages += run.len / sys::OS_PAGE as u64;
                        continue;
                    }
                    // SAFETY: [addr, addr + len) lies inside the mapped extent (checked above)
                    // and nothing has been handed out yet, so no reference aliases it.
                    let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, run.len as usize) };
                    read_run(&*f, &scan.path, run, dst)?;
                    replayed.push((addr, addr + run.len as usize));
                    replayed_pages += run.len / sys::OS_PAGE as u64;
                }
            }
        }

        // `Arena::attach` reads the allocator header in segment 0 and every segment up to the
        // extent that header records: both must lie inside the recovered image, or a damaged
        // (or crafted) snapshot or journal would make it read unmapped memory.
        if any_state {
            let mapped = region.extent();
            let source = scans
                .iter()
                .rev()
                .find(|s| !s.groups.is_empty())
                .map(|s| s.path.clone())
                .or_else(|| newest.map(|n| dir.join(SNAPSHOT_FILES[n])))
                .unwrap_or_else(|| dir.clone());
            if mapped < SEGMENT {
                return Err(Error::corrupt(
                    &source,
                    0,
                    format!("the recovered image is {mapped:#x} bytes, less than the allocator's first segment"),
                ));
            }
            // SAFETY: the header lies inside segment 0, mapped read-write (checked above), and
            // nothing refers into the region yet.
            let header = unsafe { &*((base + ARENA_HEADER_OFFSET) as *const ArenaHeader) };
            let persisted = header.extent.load(Ordering::Relaxed);
            if persisted > mapped as u64 {
                return Err(Error::corrupt(
                    &source,
                    0,
                    format!("allocator extent {persisted:#x} exceeds the recovered image of {mapped:#x} bytes"),
                ));
            }
        }

        // Journal writer.
        let journal = match scans.last() {
            Some(last) => JournalWriter::resume(&*vfs, last)?,
            None => JournalWriter::create(&*vfs, &dir, meta.heap_id, first_journal, start_seq)?,
        };

        if let Some(t) = &adopting {
            let d = t.get();
            let same = d.seq == expect_seq
                && d.digest.is_some()
                && d.digest == super::detach::journal_digest(&*journal.file(), journal.end());
            if !same {
                return Err(Error::Detached {
                    dir: dir.clone(),
                    reason: format!(
                        "its files changed since (they end at commit {expect_seq}, the memory still mapped holds commit {}{})",
                        d.seq,
                        if d.seq == expect_seq { " of another history" } else { "" }
                    ),
                });
            }
        }

        // Tracking, allocator (attached last: nothing after it can fail).
        let fresh = !any_state;
        let tracker = match adopting.take() {
            // Adopted: the tracker is armed on the whole extent and reports every page
            // written since the commit the files end at (checked above).
            Some(t) => {
                let (r, tracker) = t.adopt();
                region = r;
                tracker
            }
            None => {
                let mut tracker = Tracker::new(opts.force_all_dirty);
                if fresh {
                    region.grow(SEGMENT).map_err(io_err("mmap (first segment)", &dir))?;
                }
                if region.extent() > 0 {
                    tracker
                        .arm(base, base + region.extent())
                        .map_err(io_err("userfaultfd (arm)", &dir))?;
                }
                tracker
            }
        };
        let grow = SysBox::new_in(
            GrowCtx {
                region: Mutex::new(region),
                tracker: Mutex::new(tracker),
            },
            System,
        );
        let ctx = &*grow as *const GrowCtx as *const ();
        let arena = if fresh {
            // SAFETY: the control area and the first segment are mapped read-write and zeroed
            // (fresh anonymous memory), and nothing else uses them.
            unsafe { Arena::create(base, meta.max_size as usize, super::grow_hook, ctx) }
        } else {
            // SAFETY: the region is mapped read-write up to the recovered extent.
            unsafe { Arena::attach(base, meta.max_size as usize, super::grow_hook, ctx) }
                .map_err(|e| Error::corrupt(&dir, 0, format!("allocator state: {e}")))?
        };
        if arena.extent() > lock(&grow.region).extent() {
            return Err(Error::corrupt(&dir, 0, "allocator extent exceeds the recovered image"));
        }

        // Stale journals are covered by the snapshot; if a removal is lost to a power loss the
        // file is found stale and removed again, so the directory sync is only for tidiness
        // and is skipped when nothing was removed.
        if !stale.is_empty() {
            for id in stale.iter() {
                let _ = vfs.remove(&dir.join(journal_file_name(*id)));
            }
            let _ = vfs.sync_dir(&dir);
        }

        let mut since_snap = DirtySet::new(base, meta.max_size as usize / sys::OS_PAGE);
        for &(a, b) in replayed.iter() {
            since_snap.insert_range(a, b);
        }
        let last_seq = journal.next_seq() - 1;
        let durable = super::durable::Durable::new(journal.file(), journal.id(), last_seq, journal.end());
        let mut files = snap_files.into_iter();
        let snap_files = [files.next().expect("two files"), files.next().expect("two files")];
        let counters = Counters::default();
        counters.replayed_pages.store(replayed_pages, Ordering::Relaxed);
        if let Some(n) = newest {
            counters
                .snapshot_generation
                .store(snaps[n].map_or(0, |h| h.generation), Ordering::Relaxed);
        }
        let engine = Engine {
            dir,
            vfs,
            meta,
            opts: opts.clone(),
            arena,
            grow,
            commit: Mutex::new(CommitState {
                journal,
                ranges: SysVec::new_in(System),
                since_snap,
                prev_interval,
                snap_files,
                snaps,
                pending: None,
                last_seq,
                last_snapshot_at: Instant::now(),
            }),
            durable,
            poisoned: AtomicBool::new(false),
            poison_cause: Mutex::new(None),
            counters,
            lock_file,
            closed: AtomicBool::new(false),
            closed_with_commit: AtomicBool::new(false),
        };
        let engine = SysBox::new_in(engine, System);
        if opts.durability == Durability::Eventual {
            // SAFETY: the engine is boxed (stable address) and its close/drop stop the flusher
            // before the box is freed.
            unsafe { engine.start_flusher(opts.flush_interval) };
        }
        Ok(engine)
    }
}

/// Creates `meta` for a new heap (removing leftovers of an earlier creation that never
/// completed) and reserves its address range.
fn create_meta(vfs: &dyn Vfs, dir: &Path, opts: &OpenOptions, fp: &Fingerprint) -> Result<(Meta, Region)> {
    let max_size = opts.max_size.div_ceil(SEGMENT as u64) * SEGMENT as u64;
    if max_size == 0 || max_size > crate::format::meta::MAX_MAX_SIZE {
        return Err(Error::invalid(format!("max_size {} is out of range", opts.max_size)));
    }
    for name in vfs.list(dir).map_err(io_err("list directory", dir))? {
        let s = name.to_string_lossy();
        if parse_journal_file_name(&s).is_some() || SNAPSHOT_FILES.contains(&&*s) {
            let _ = vfs.remove(&dir.join(&name));
        }
    }
    let region = Region::reserve_anywhere(max_size as usize)?;
    let meta = Meta {
        heap_id: sys::random_u64(),
        page_size: sys::OS_PAGE as u32,
        base: region.base() as u64,
        max_size,
        root_size: fp.size,
        root_align: fp.align,
        root_type_hash: fnv1a(fp.type_name.as_bytes()),
        schema_hash: fnv1a(fp.schema.as_bytes()),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        root_type_name: fp.type_name.to_string(),
        schema: fp.schema.clone(),
    };
    let tmp = dir.join("meta.tmp");
    let path = dir.join("meta");
    let f = vfs.open(&tmp, true).map_err(io_err("create", &tmp))?;
    f.set_len(0).map_err(io_err("truncate", &tmp))?;
    f.write_at(&meta.encode(), 0).map_err(io_err("write", &tmp))?;
    f.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(f);
    vfs.rename(&tmp, &path).map_err(io_err("rename", &path))?;
    vfs.sync_dir(dir).map_err(io_err("fsync (directory)", dir))?;
    Ok((meta, region))
}

/// Reads a snapshot header. `Ok(None)` for an empty (never written) file; a header that is
/// damaged, or valid but describing more data than the file holds, counts as invalid — if it
/// was needed, the gap in the journal chain reports the loss.
fn read_snapshot_header(f: &dyn VFile, meta: &Meta) -> std::result::Result<Option<SnapHeader>, (u64, String)> {
    let len = f.len().map_err(|e| (0, format!("fstat failed: {e}")))?;
    if len == 0 {
        return Ok(None);
    }
    let mut b = [0u8; HEADER_LEN];
    let n = f.read_at(&mut b, 0).map_err(|e| (0, format!("read failed: {e}")))?;
    match SnapHeader::decode(&b[..n], meta.heap_id, meta.max_size) {
        Ok(h) if h.valid && len < h.file_len() => Ok(Some(SnapHeader { valid: false, ..h })),
        Ok(h) => Ok(Some(h)),
        Err(_) => Ok(None),
    }
}

/// Bytes read ahead at the start of each segment of a mapped snapshot: the allocator's segment
/// header (4160 bytes) rounded up to whole pages.
const SEGMENT_META_PREFETCH: u64 = 2 * sys::OS_PAGE as u64;

/// Maps the snapshot's pages copy-on-write, or reads them into anonymous memory when the file
/// system seam has no file descriptor (simulated disks).
fn map_snapshot(region: &mut Region, f: &dyn VFile, extent: usize, path: &Path) -> Result<()> {
    match f.raw_fd() {
        Some(fd) => {
            // SAFETY: the file is at least DATA_OFFSET + extent long (checked by
            // read_snapshot_header) and is only ever extended while the heap is open; nothing
            // refers into the region yet.
            unsafe { region.map_file(fd, DATA_OFFSET, extent) }?;
            // Attaching the allocator reads the header at the start of every used segment. On
            // a cold page cache each is a synchronous read from disk, one after the other
            // (about 100 ms for a 1 GiB heap here); asking for all of them first lets the reads
            // overlap. Costs one syscall per segment when the cache is warm.
            for s in (0..extent).step_by(SEGMENT) {
                let _ = sys::prefetch(fd, DATA_OFFSET + s as u64, SEGMENT_META_PREFETCH);
            }
            Ok(())
        }
        None => {
            region.grow(extent).map_err(io_err("mmap (snapshot image)", path))?;
            let base = region.base();
            // SAFETY: [base, base + extent) was just mapped read-write and nothing refers to it.
            let dst = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, extent) };
            let n = f.read_at(dst, DATA_OFFSET).map_err(io_err("read", path))?;
            if n != extent {
                return Err(Error::corrupt(
                    path,
                    DATA_OFFSET + n as u64,
                    "snapshot file is shorter than its header says",
                ));
            }
            Ok(())
        }
    }
}

/// Loads the snapshot's dirty bitmap; `None` when it cannot be trusted (then the next
/// snapshot rewrites its whole file, which is always correct).
fn read_dirty_bitmap(f: &dyn VFile, h: &SnapHeader, base: usize, max_size: usize) -> Option<DirtySet> {
    let mut buf = vec![0u8; h.dirty_len as usize];
    let n = f.read_at(&mut buf, DATA_OFFSET + h.extent).ok()?;
    if n != buf.len() || crc32fast::hash(&buf) != h.dirty_crc {
        return None;
    }
    DirtySet::from_bytes(base, max_size / sys::OS_PAGE, &buf).ok()
}
