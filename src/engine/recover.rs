//! Creating a heap directory and recovering an existing one: [`Engine::open`], which runs
//! the numbered steps below, one function each, in this order.
//!
//! Recovery (see `docs/design.md`, "Recovery"):
//!
//! 1. Lock the directory (`lock`, an exclusive `flock`; [`lock_dir`]), read and check `meta`
//!    or create the heap ([`read_meta`], [`create_meta`]).
//! 2. Reserve the heap's address range at its recorded base (in [`read_meta`]), or take the
//!    heap's detached memory if this process closed it earlier (`detach.rs`): steps 3 and 4
//!    then only read and check, and step 5 adopts the memory and its tracker if the files end
//!    exactly where it is, or fails with `Error::Detached`.
//! 3. Read both snapshot headers; map the newest valid one's pages copy-on-write (lazy: no page
//!    is read until touched) ([`map_newest_snapshot`]).
//! 4. Scan the journals that follow it (gap-free ids, each starting where the previous ended;
//!    [`scan_journals`]); replay their complete commit groups in order ([`replay`]); only the
//!    last journal may end in a torn tail, which is truncated (`JournalWriter::resume`).
//!    [`check_image`] then checks that the allocator's header lies inside the image.
//! 5. Seed the base cache from the replayed pages ([`seed_capture`], before anything else
//!    writes the region), arm dirty tracking on the mapped extent, attach the allocator
//!    ([`attach`]), resume the
//!    last journal; remove journals older than the snapshot ([`remove_stale`]) and build the
//!    engine ([`assemble`]).
//!
//! See also `engine/snapshot.rs` (the parent side of snapshots), `disk/snapshot.rs` (the file
//! protocol, including the reading step 3 calls) and `disk/journal/scan.rs` (step 4's scanner).
//!
//! # Safety
//!
//! Replay (`replay.rs`) writes recovered pages (and applies `DELTA` entries to them) into the
//! reserved, mapped region before anything is handed out, and [`check_image`] reads the allocator header in segment 0 only after checking that
//! segment 0 is mapped; each `unsafe` block states its range.

use super::replay::{replay_journal, Replay, Target};
use super::{lock, snapshot::SNAPSHOT_FILES, CommitState, Counters, Engine, GrowCtx};
use crate::disk::format::meta::{fnv1a, Meta, MetaError, FORMAT_VERSION, LEGACY_FORMAT_VERSION, META_LEN};
use crate::disk::format::snapshot::SnapHeader;
use crate::disk::journal::{journal_file_name, parse_journal_file_name, walk_chain, JournalScan, JournalWriter};
use crate::disk::snapshot::{map_snapshot, read_dirty_bitmap, read_snapshot_header};
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::alloc::{Arena, ArenaHeader, ARENA_HEADER_OFFSET, SEGMENT};
use crate::mem::base_cache::BaseCache;
use crate::mem::dirty_set::DirtySet;
use crate::mem::region::Region;
use crate::mem::sysmem::{SysBox, SysVec};
use crate::mem::track::Tracker;
use crate::options::{Durability, OpenOptions};
use crate::sys;
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
    /// The caller reads the root identity of a format-1 heap from [`Engine::meta`] and
    /// checks it itself (format 1 recorded the user's root type in `meta`; `Heap<T>` passes
    /// the root-record kind, which such a heap does not name yet).
    pub legacy_root: bool,
}

impl Fingerprint {
    /// The fingerprint of `T` with a user schema id.
    pub(crate) fn of<T>(schema: &str) -> Fingerprint {
        Fingerprint {
            size: std::mem::size_of::<T>() as u64,
            align: std::mem::align_of::<T>() as u64,
            type_name: std::any::type_name::<T>(),
            schema: schema.to_string(),
            legacy_root: false,
        }
    }

    /// The fingerprint of the root record kind that format-2 `meta` records for a `Heap<T>`
    /// (the user's root type lives in the committed root record).
    pub(crate) fn root_record_kind() -> Fingerprint {
        Fingerprint {
            size: crate::disk::format::root::ROOT_RECORD_LEN as u64,
            align: 8,
            type_name: crate::disk::format::root::ROOT_RECORD_KIND,
            schema: String::new(),
            legacy_root: true,
        }
    }

    fn check(&self, m: &Meta) -> Result<()> {
        if m.version == LEGACY_FORMAT_VERSION && self.legacy_root && m.root_type_name != self.type_name {
            // A format-1 `Heap<T>` heap: the typed layer checks the recorded root type.
            return Ok(());
        }
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
    /// Opens (or creates) the heap in `dir`: the numbered recovery steps of the module doc,
    /// one function each. Returns the boxed engine (its address must stay stable: the
    /// allocator's grow hook and the flusher point into it).
    pub(crate) fn open(dir: &Path, opts: &OpenOptions, fp: &Fingerprint) -> Result<SysBox<Engine>> {
        check_page_size()?;
        let vfs = opts.vfs.clone();
        vfs.create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let dir = dir.to_path_buf();
        let lock_file = lock_dir(&*vfs, &dir)?; // 1
        if !opts.replica && vfs.open(&dir.join(super::replica::REPLICA_MARKER), false).is_ok() {
            return Err(Error::invalid(format!(
                "{} is a replica's directory: open it with `Replica::open`, or make it the primary with `Replica::promote`",
                dir.display()
            )));
        }
        // `adopting`: this heap's memory from an earlier handle in this process, still mapped
        // (`detach.rs`). Steps 3 and 4 then only read and check the files, and step 5 takes
        // the memory and its tracker over if the files end exactly where the memory is.
        let (meta, mut region, adopting) = read_meta(&*vfs, &dir, opts, fp)?; // 1, 2
        let snaps = map_newest_snapshot(&*vfs, &dir, &meta, &mut region, adopting.is_none())?; // 3
        let journals = scan_journals(&*vfs, &dir, &meta, snaps.first_journal, snaps.start_seq)?; // 4
        let replayed = replay(
            &*vfs,
            opts,
            &dir,
            &meta,
            &mut region,
            &journals.scans,
            adopting.is_some(),
        )?; // 4
        let any_state = snaps.newest.is_some() || replayed.any_group;
        if any_state {
            check_image(&dir, &region, &journals.scans, &snaps)?;
        }
        let journal = match journals.scans.last() {
            Some(last) => JournalWriter::resume(&*vfs, last)?, // 4: truncates a torn tail
            None => JournalWriter::create(&*vfs, &dir, meta.heap_id, snaps.first_journal, snaps.start_seq)?,
        };
        let repl = if opts.replicates() {
            let (r, chain) = super::repl::ReplShared::recover(
                vfs.clone(),
                &dir,
                &meta,
                opts.replication_backlog_bytes,
                &journals.scans,
                snaps.first_journal,
                snaps.start_seq,
                &journals.stale,
            )?;
            r.journal_opened(
                journal.id(),
                snaps.start_seq,
                journal.salt(),
                journal.path().to_path_buf(),
                journal.end(),
            );
            Some((r, chain))
        } else {
            None
        };
        // With adoption the memory is the detached heap's, which may hold writes made after its
        // last commit: the cache then starts empty instead of seeded (docs/design.md, "Base cache").
        let capture = seed_capture(opts, &meta, &region, &snaps, &replayed, adopting.is_none()); // 5, before arming
        let older_journal_bytes = journals
            .scans
            .iter()
            .rev()
            .skip(1)
            .map(|s| s.valid_end - crate::disk::format::journal::FIRST_RECORD_OFFSET)
            .sum();
        let (older_journal_pages, journal_pages) = match journals.scans.split_last() {
            Some((last, older)) => (older.iter().map(page_records).sum(), page_records(last)),
            None => (0, 0),
        };
        let adopted = match adopting {
            Some(t) => {
                t.check_same_state(&dir, &journal)?;
                Some(t.adopt())
            }
            None => None,
        };
        let (grow, arena) = match adopted {
            Some((region, tracker)) => attach(opts, &dir, &meta, region, false, Some(tracker))?, // 5
            None => attach(opts, &dir, &meta, region, !any_state, None)?,                        // 5
        };
        remove_stale(&*vfs, &dir, &journals.stale);
        let (capture, cache_budget) = capture;
        let engine = assemble(
            dir, vfs, meta, opts, lock_file, snaps, replayed, journal, grow, arena, capture, repl,
        );
        engine.counters.cache_budget.store(cache_budget, Ordering::Relaxed);
        {
            let mut cs = lock(&engine.commit);
            cs.older_journal_bytes = older_journal_bytes;
            cs.older_journal_pages = older_journal_pages;
            cs.journal_pages = journal_pages;
        }
        Ok(engine)
    }
}

/// snapheap needs 4096-byte pages (the journal and snapshot formats are page-granular).
fn check_page_size() -> Result<()> {
    if sys::page_size() != sys::OS_PAGE {
        return Err(Error::incompatible(format!(
            "the system page size is {} bytes; snapheap needs {}-byte pages",
            sys::page_size(),
            sys::OS_PAGE
        )));
    }
    Ok(())
}

/// Step 1a: takes the directory's exclusive lock (`lock`, an `flock`).
fn lock_dir(vfs: &dyn Vfs, dir: &Path) -> Result<Box<dyn VFile>> {
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
    Ok(lock_file)
}

/// Steps 1b and 2: reads and checks `meta` (or creates a new heap), then reserves the heap's
/// address range at its recorded base, or takes this heap's detached memory (returning an
/// inert copy of its region for the later steps to read, see `detach.rs`).
fn read_meta(
    vfs: &dyn Vfs,
    dir: &Path,
    opts: &OpenOptions,
    fp: &Fingerprint,
) -> Result<(Meta, Region, Option<super::detach::Taken>)> {
    let meta_path = dir.join("meta");
    match read_file(vfs, &meta_path, META_LEN)? {
        Some(bytes) => {
            let meta = Meta::decode(&bytes).map_err(|e| match e {
                MetaError::Corrupt(off, what) => Error::corrupt(&meta_path, off, what),
                MetaError::Version(v) => Error::incompatible(format!(
                    "{} has format version {v}, this build reads version {}",
                    meta_path.display(),
                    FORMAT_VERSION
                )),
            })?;
            fp.check(&meta)?;
            if let Some(t) = super::detach::take(meta.base as usize) {
                t.check_adoptable(dir, &meta)?;
                let shadow = t.shadow();
                return Ok((meta, shadow, Some(t)));
            }
            let region = Region::reserve(meta.base as usize, meta.max_size as usize)?;
            Ok((meta, region, None))
        }
        None => create_meta(vfs, dir, opts, fp).map(|(m, r)| (m, r, None)),
    }
}

/// What step 3 found: both snapshot files and the newest valid one.
struct Snapshots {
    files: SysVec<Box<dyn VFile>>,
    headers: [Option<SnapHeader>; 2],
    /// Index of the newest valid snapshot, if any.
    newest: Option<usize>,
    /// Commit sequence number of the state the snapshot holds (0 without one).
    start_seq: u64,
    /// The first journal after the snapshot (1 without one).
    first_journal: u64,
    /// The newest snapshot's dirty bitmap, when it has a usable one.
    prev_interval: Option<DirtySet>,
}

/// Step 3: reads both snapshot headers and maps the newest valid snapshot's pages
/// copy-on-write (lazily: no page is read until touched); with `map` false (adopting a
/// detached heap, whose memory already holds them) only reads the headers and bitmap.
fn map_newest_snapshot(vfs: &dyn Vfs, dir: &Path, meta: &Meta, region: &mut Region, map: bool) -> Result<Snapshots> {
    let mut files: SysVec<Box<dyn VFile>> = SysVec::new_in(System);
    let mut headers = [None, None];
    for (i, name) in SNAPSHOT_FILES.iter().enumerate() {
        let path = dir.join(name);
        let f = vfs.open(&path, true).map_err(io_err("open", &path))?;
        headers[i] = read_snapshot_header(&*f, meta).map_err(|(off, what)| Error::corrupt(&path, off, what))?;
        files.push(f);
    }
    let newest = (0..2)
        .filter(|&i| headers[i].is_some_and(|h: SnapHeader| h.valid))
        .max_by_key(|&i| headers[i].map_or(0, |h| h.generation));
    let (start_seq, first_journal) = match newest.and_then(|n| headers[n]) {
        Some(h) => (h.seq, h.journal_id),
        None => (0, 1),
    };
    let mut prev_interval = None;
    if let Some(n) = newest {
        let h = headers[n].expect("newest is valid");
        let f = &files[n];
        if h.extent > 0 && map {
            map_snapshot(region, &**f, h.extent as usize, &dir.join(SNAPSHOT_FILES[n]))?;
        }
        prev_interval = read_dirty_bitmap(&**f, &h, region.base(), meta.max_size as usize);
    }
    Ok(Snapshots {
        files,
        headers,
        newest,
        start_seq,
        first_journal,
        prev_interval,
    })
}

/// What step 4's scan found.
struct Journals {
    /// The journals from `first_journal` on, in order, each validated.
    scans: Vec<JournalScan>,
    /// Ids of journals older than the snapshot (garbage).
    stale: Vec<u64>,
}

/// Step 4a: scans the journals that follow the snapshot: gap-free ids from `first_journal`,
/// each starting at the commit where the previous one ended; only the last may end in a torn
/// tail (`disk::journal::walk_chain`). The first broken link is the error.
fn scan_journals(vfs: &dyn Vfs, dir: &Path, meta: &Meta, first_journal: u64, start_seq: u64) -> Result<Journals> {
    let chain = walk_chain(vfs, dir, meta.heap_id, first_journal, start_seq)?;
    let stale = chain.stale.clone();
    Ok(Journals {
        scans: chain.into_scans()?,
        stale,
    })
}

/// What step 4's replay wrote into the region.
struct Replayed {
    /// The address ranges written, in replay order.
    ranges: SysVec<(usize, usize)>,
    /// Pages written (counted once per write).
    pages: u64,
    /// The distinct pages written (they enter `since_snap`).
    written: DirtySet,
    /// Whether any journal held a complete commit group.
    any_group: bool,
}

/// Step 4b: replays the complete commit groups in order (`replay.rs`: growing the region to
/// each group's extent, copying its page runs into place and applying its `DELTA` entries;
/// then each page's final image checked against its last entry's post-image checksum). With `adopt` (the memory of a detached heap
/// already holds them, which step 5 checks by the commit number and journal digest) the
/// records are read and checked without writing, so damage is reported as on any open.
fn replay(
    vfs: &dyn Vfs,
    opts: &OpenOptions,
    dir: &Path,
    meta: &Meta,
    region: &mut Region,
    scans: &[JournalScan],
    adopt: bool,
) -> Result<Replayed> {
    let base = region.base();
    let target = if adopt {
        Target::Check {
            mapped: region.extent(),
            dir,
        }
    } else {
        Target::Write(region)
    };
    let mut rp = Replay::new(meta.max_size, target);
    rp.planted_zero_base = opts.planted_delta_replay_zero_base();
    let mut ranges: SysVec<(usize, usize)> = SysVec::new_in(System);
    let mut pages = 0u64;
    let mut written = DirtySet::new(base, meta.max_size as usize / sys::OS_PAGE);
    for scan in scans {
        pages += replay_journal(vfs, &mut rp, scan, &mut |w| {
            let a = base + w.region_offset as usize;
            ranges.push((a, a + w.len as usize));
            written.insert_range(a, a + w.len as usize);
        })?;
    }
    rp.finish()?;
    Ok(Replayed {
        ranges,
        pages,
        written,
        any_group: scans.iter().any(|s| !s.groups.is_empty()),
    })
}

/// The most replayed pages seeded into the base cache at open (the most recently replayed
/// first; 8 MiB). Seeding costs a page fault and a copy per page, most of what an open after a
/// long journal costs besides replay itself; a replayed page not seeded has its first commit
/// after open journaled whole, as after a snapshot fork (docs/design.md, "Restart without a
/// snapshot").
const SEED_MAX_PAGES: usize = 2048;

/// Page records of a scanned journal's complete groups (whole pages plus `DELTA` entries):
/// what replaying it costs, as `OpenOptions::snapshot_after_journal_pages` counts it.
fn page_records(scan: &JournalScan) -> u64 {
    let runs = scan.groups.last().map_or(0, |g| g.runs.end);
    scan.runs[..runs]
        .iter()
        .map(|r| r.delta_entries.map_or(r.len / sys::OS_PAGE as u64, u64::from))
        .sum()
}

/// Start of step 5: the base cache, seeded with the pages replay just wrote (their memory is
/// exactly what the journal chain holds), before tracking is armed and before anything else
/// writes the region; the most recently replayed first, up to its capacity. Pages at or above
/// the newest snapshot's extent that replay did not write are zeros in the chain
/// (`docs/design.md`, "Base cache"). Returns the capture and the cache's budget (0: off; a
/// cache whose mapping fails is off, not an error).
fn seed_capture(
    opts: &OpenOptions,
    meta: &Meta,
    region: &Region,
    snaps: &Snapshots,
    replayed: &Replayed,
    seed: bool,
) -> (super::capture::Capture, u64) {
    let cache = BaseCache::new(opts.base_cache_bytes, meta.max_size as usize / sys::OS_PAGE).unwrap_or(None);
    if let Some(c) = cache.as_ref().filter(|_| seed) {
        c.prefault(replayed.written.count().min(SEED_MAX_PAGES));
    }
    let budget = if cache.is_some() { opts.base_cache_bytes } else { 0 };
    let zero_from = snaps.newest.and_then(|n| snaps.headers[n]).map_or(0, |h| h.extent);
    let mut capture = super::capture::Capture::new(cache, zero_from, opts.planted_delta_stale_base());
    let mut left = SEED_MAX_PAGES;
    for &(a, b) in replayed.ranges.iter().rev().filter(|_| seed) {
        // Whole ranges only (a PAGES run is at most 256 pages), so the cap may be passed by a
        // run's length; the newest write of a page is seeded first.
        if left == 0 {
            break;
        }
        left = left.saturating_sub((b - a) / sys::OS_PAGE);
        // SAFETY: replayed ranges are page-aligned and inside the mapped extent, and nothing
        // writes the region during open.
        if !unsafe { capture.seed(region.base(), a, b) } {
            break;
        }
    }
    (capture, budget)
}

/// Between steps 4 and 5: `Arena::attach` reads the allocator header in segment 0 and every
/// segment up to the extent that header records: both must lie inside the recovered image,
/// or a damaged (or crafted) snapshot or journal would make it read unmapped memory.
fn check_image(dir: &Path, region: &Region, scans: &[JournalScan], snaps: &Snapshots) -> Result<()> {
    let mapped = region.extent();
    let source = scans
        .iter()
        .rev()
        .find(|s| !s.groups.is_empty())
        .map(|s| s.path.clone())
        .or_else(|| snaps.newest.map(|n| dir.join(SNAPSHOT_FILES[n])))
        .unwrap_or_else(|| dir.to_path_buf());
    if mapped < SEGMENT {
        return Err(Error::corrupt(
            &source,
            0,
            format!("the recovered image is {mapped:#x} bytes, less than the allocator's first segment"),
        ));
    }
    // SAFETY: the header lies inside segment 0, mapped read-write (checked above), and
    // nothing refers into the region yet.
    let header = unsafe { &*((region.base() + ARENA_HEADER_OFFSET) as *const ArenaHeader) };
    let persisted = header.extent.load(Ordering::Relaxed);
    if persisted > mapped as u64 {
        return Err(Error::corrupt(
            &source,
            0,
            format!("allocator extent {persisted:#x} exceeds the recovered image of {mapped:#x} bytes"),
        ));
    }
    Ok(())
}

/// Step 5: arms dirty tracking on the mapped extent and creates (`fresh`) or attaches the
/// allocator. The allocator comes last: nothing after it can fail. An `adopted` tracker (of
/// a detached heap) is already armed on the whole extent and reports every page written
/// since the commit the files end at.
fn attach(
    opts: &OpenOptions,
    dir: &Path,
    meta: &Meta,
    mut region: Region,
    fresh: bool,
    adopted: Option<Tracker>,
) -> Result<(SysBox<GrowCtx>, &'static Arena)> {
    let base = region.base();
    // An adopted tracker serves if it runs the requested rung (any rung for `Auto`); else a
    // new one is armed over the adopted memory, which holds exactly the committed state (a
    // detached heap with uncommitted changes is never adopted).
    let adopted = adopted.filter(|t| t.serves(opts.tracking));
    let tracker = match adopted {
        Some(t) => t,
        None => {
            let mut tracker =
                Tracker::new(opts.tracking, opts.concurrent_writers).map_err(|(mode, why)| Error::Unsupported {
                    what: format!(
                        "dirty-tracking rung {} was requested with OpenOptions::tracking, but {why}",
                        mode.name()
                    ),
                })?;
            if fresh {
                region.grow(SEGMENT).map_err(io_err("mmap (first segment)", dir))?;
            }
            if region.extent() > 0 {
                // The region is the tracker's sibling in GrowCtx and a detached region keeps
                // its tracker with it, so the tracker is never asked to report after an unmap.
                // SAFETY: [base, base + extent) is mapped read-write until the engine is dropped.
                unsafe { tracker.arm(base, base + region.extent()) }
                    .map_err(io_err("arm dirty tracking (userfaultfd or pagemap)", dir))?;
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
    } else if opts.replica {
        // A replica's memory must stay the primary's image: nothing may write it at open.
        // SAFETY: the region is mapped read-write up to the recovered extent.
        unsafe { Arena::attach_closed(base, meta.max_size as usize, super::grow_hook, ctx) }
            .map_err(|e| Error::corrupt(dir, 0, format!("allocator state: {e}")))?
    } else {
        // SAFETY: the region is mapped read-write up to the recovered extent.
        unsafe { Arena::attach(base, meta.max_size as usize, super::grow_hook, ctx) }
            .map_err(|e| Error::corrupt(dir, 0, format!("allocator state: {e}")))?
    };
    if arena.extent() > lock(&grow.region).extent() {
        return Err(Error::corrupt(dir, 0, "allocator extent exceeds the recovered image"));
    }
    Ok((grow, arena))
}

/// Removes the journals older than the snapshot. They are covered by the snapshot; if a
/// removal is lost to a power loss the file is found stale and removed again, so the
/// directory sync is only for tidiness and is skipped when nothing was removed.
fn remove_stale(vfs: &dyn Vfs, dir: &Path, stale: &[u64]) {
    if !stale.is_empty() {
        for id in stale.iter() {
            let _ = vfs.remove(&dir.join(journal_file_name(*id)));
        }
        let _ = vfs.sync_dir(dir);
    }
}

/// Builds the engine from what the steps produced and starts the flusher of
/// [`Durability::Eventual`]. Cannot fail.
#[allow(clippy::too_many_arguments)] // one argument per recovery step's result
fn assemble(
    dir: std::path::PathBuf,
    vfs: std::sync::Arc<dyn Vfs>,
    meta: Meta,
    opts: &OpenOptions,
    lock_file: Box<dyn VFile>,
    snaps: Snapshots,
    replayed: Replayed,
    journal: JournalWriter,
    grow: SysBox<GrowCtx>,
    arena: &'static Arena,
    capture: super::capture::Capture,
    repl: Option<(std::sync::Arc<super::repl::ReplShared>, u64)>,
) -> SysBox<Engine> {
    let chain = repl.as_ref().map_or(0, |r| r.1);
    let since_snap = replayed.written;
    let last_seq = journal.next_seq() - 1;
    let durable = super::durable::Durable::new(journal.file(), journal.id(), last_seq, journal.end());
    let mut files = snaps.files.into_iter();
    let snap_files = [files.next().expect("two files"), files.next().expect("two files")];
    let counters = Counters::default();
    counters.replayed_pages.store(replayed.pages, Ordering::Relaxed);
    counters.publish_capture(&capture);
    if let Some(n) = snaps.newest {
        counters
            .snapshot_generation
            .store(snaps.headers[n].map_or(0, |h| h.generation), Ordering::Relaxed);
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
            prev_interval: snaps.prev_interval,
            snap_files,
            snaps: snaps.headers,
            pending: None,
            last_seq,
            last_snapshot_at: Instant::now(),
            footprint: Default::default(),
            capture,
            older_journal_bytes: 0,
            journal_pages: 0,
            older_journal_pages: 0,
            chain,
        }),
        durable,
        poisoned: AtomicBool::new(false),
        poison_cause: Mutex::new(None),
        counters,
        lock_file,
        closed: AtomicBool::new(false),
        frozen: AtomicBool::new(false),
        closed_with_commit: AtomicBool::new(false),
        repl: repl.map(|r| r.0),
    };
    let engine = SysBox::new_in(engine, System);
    if opts.durability == Durability::Eventual {
        // SAFETY: the engine is boxed (stable address) and its close/drop stop the flusher
        // before the box is freed.
        unsafe { engine.start_flusher(opts.flush_interval) };
    }
    engine
}

/// Creates `meta` for a new heap (removing leftovers of an earlier creation that never
/// completed) and reserves its address range.
fn create_meta(vfs: &dyn Vfs, dir: &Path, opts: &OpenOptions, fp: &Fingerprint) -> Result<(Meta, Region)> {
    let max_size = opts.max_size.div_ceil(SEGMENT as u64) * SEGMENT as u64;
    if max_size == 0 || max_size > crate::disk::format::meta::MAX_MAX_SIZE {
        return Err(Error::invalid(format!("max_size {} is out of range", opts.max_size)));
    }
    for name in vfs.list(dir).map_err(io_err("list directory", dir))? {
        let s = name.to_string_lossy();
        let replication_file = s == super::repl::CHAIN_FILE || s == super::replica::REPLICA_MARKER;
        if parse_journal_file_name(&s).is_some() || SNAPSHOT_FILES.contains(&&*s) || replication_file {
            let _ = vfs.remove(&dir.join(&name));
        }
    }
    let region = Region::reserve_anywhere(max_size as usize)?;
    let meta = Meta {
        version: if opts.test_create_legacy_format {
            LEGACY_FORMAT_VERSION
        } else {
            FORMAT_VERSION
        },
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
    write_meta(vfs, dir, &meta)?;
    Ok((meta, region))
}

/// Writes `meta` as `meta.tmp`, syncs it, renames it over `meta` and syncs the directory: a
/// crash leaves the old `meta` (or none) or the new one, whole.
fn write_meta(vfs: &dyn Vfs, dir: &Path, meta: &Meta) -> Result<()> {
    let tmp = dir.join("meta.tmp");
    let path = dir.join("meta");
    let f = vfs.open(&tmp, true).map_err(io_err("create", &tmp))?;
    f.set_len(0).map_err(io_err("truncate", &tmp))?;
    f.write_at(&meta.encode(), 0).map_err(io_err("write", &tmp))?;
    f.sync_data().map_err(io_err("fdatasync", &tmp))?;
    drop(f);
    vfs.rename(&tmp, &path).map_err(io_err("rename", &path))?;
    vfs.sync_dir(dir).map_err(io_err("fsync (directory)", dir))?;
    Ok(())
}

impl Engine {
    /// The heap directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The meta header as read (or created) at open.
    pub(crate) fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Upgrade step 2 of a format-1 heap: rewrites `meta` in format 2 with the root fields of
    /// `kind` (the caller has made the root record durable first, see `docs/design.md`,
    /// "Format upgrade"). Idempotent; the in-memory header keeps what was read at open.
    pub(crate) fn upgrade_meta(&self, kind: &Fingerprint) -> Result<()> {
        let mut m = self.meta.clone();
        m.version = FORMAT_VERSION;
        m.root_size = kind.size;
        m.root_align = kind.align;
        m.root_type_hash = fnv1a(kind.type_name.as_bytes());
        m.schema_hash = fnv1a(kind.schema.as_bytes());
        m.root_type_name = kind.type_name.to_string();
        m.schema = kind.schema.clone();
        write_meta(&*self.vfs, &self.dir, &m)
    }
}
