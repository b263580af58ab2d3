//! Writing one snapshot file: the crash-safe page-diff protocol.
//!
//! A [`Plan`] is prepared by the parent under the commit lock, before `fork()`: the target
//! file, the page runs to write, both versions of the header and the dirty bitmap, all in
//! memory that the child only reads. [`write_plan`] then runs the protocol with nothing but
//! positional writes, syncs and `fallocate`, so the forked child performs only
//! async-signal-safe work: no allocation, no locks, no panics.
//!
//! The protocol (each step durable before the next starts):
//!
//! 0. With an [`ImageCheck`] (the hashed tracking rung): every page of the plan is checked
//!    against the tracker's baselines first; if one differs, the writer abandons the snapshot
//!    before touching the file ([`Written::ImageChanged`]). See docs/design.md, "Snapshot
//!    protocol".
//! 1. `StampInvalid`: overwrite the header with an invalid one, then `SyncInvalid`. From here
//!    on recovery ignores this file, so half-written pages can never be mistaken for a
//!    snapshot.
//! 2. `Allocate`: extend the file with `fallocate` to `4096 + extent + bitmap` bytes, so a full
//!    disk is an error here rather than a SIGBUS in a later mapping.
//! 3. `WritePages`: write every page of the plan's runs from memory at its file offset, then
//!    `WriteBitmap`.
//! 4. `SyncData`: `fdatasync`.
//! 5. `WriteHeader`: write the valid header (generation, seq, journal id, extent, checksums),
//!    then `SyncHeader`.
//!
//! A crash before step 5 completes leaves the file invalid and the other snapshot (and the
//! journals after it, which are deleted only after this protocol succeeds) intact.
//!
//! Reading the file back at open ([`read_snapshot_header`], [`map_snapshot`],
//! [`read_dirty_bitmap`]) lives here too, so this file is the whole file protocol. See also
//! `engine/snapshot.rs` (when a snapshot is taken and which pages) and
//! `disk/format/snapshot.rs` (the header's bytes).
//!
//! # Safety
//!
//! [`map_snapshot`] maps or reads the file's pages over the region before anything refers
//! into it. [`write_plan`] reads heap memory at the plan's runs; the caller guarantees those addresses
//! are mapped and readable (they lie inside the region's extent at the time of the plan).

use crate::disk::format::meta::Meta;
use crate::disk::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::error::{Error, Result};
use crate::io::VFile;
use crate::mem::alloc::SEGMENT;
use crate::mem::dirty_set::DirtySet;
use crate::mem::region::Region;
use crate::mem::sysmem::SysVec;
use crate::sys;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;

/// The protocol's steps, in order. A failure reports the step it happened in; tests can stop
/// a writer right after any step to simulate a crash there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Step {
    StampInvalid = 1,
    SyncInvalid = 2,
    Allocate = 3,
    WritePages = 4,
    WriteBitmap = 5,
    SyncData = 6,
    WriteHeader = 7,
    SyncHeader = 8,
}

impl Step {
    /// All steps in protocol order.
    pub(crate) const ALL: [Step; 8] = [
        Step::StampInvalid,
        Step::SyncInvalid,
        Step::Allocate,
        Step::WritePages,
        Step::WriteBitmap,
        Step::SyncData,
        Step::WriteHeader,
        Step::SyncHeader,
    ];

    /// The step with this number, if any.
    pub(crate) fn from_u8(v: u8) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| *s as u8 == v)
    }
}

/// Everything a snapshot writer needs, prepared before the fork.
pub(crate) struct Plan {
    /// Address of region offset 0.
    pub base: usize,
    /// Region byte ranges `[a, b)` (offsets from `base`, page-aligned) to write.
    pub runs: SysVec<(u64, u64)>,
    /// The header that marks the file invalid while it is rewritten.
    pub invalid_header: [u8; HEADER_LEN],
    /// The final header.
    pub header: SnapHeader,
    /// The dirty bitmap stored after the pages.
    pub bitmap: SysVec<u8>,
    /// Stop (as if crashed) right after this step; tests only.
    pub stop_after: Option<Step>,
    /// Planted bug (tests only): write and sync the valid header before the pages.
    pub header_first: bool,
}

impl Plan {
    /// Number of pages the plan writes.
    pub(crate) fn pages(&self) -> u64 {
        self.runs.iter().map(|(a, b)| (b - a) / sys::OS_PAGE as u64).sum()
    }
}

/// The check of step 0: whether the page at an address holds what the commit that forked
/// journaled for it (the tracker's baseline). Implementations must be allocation-, lock- and
/// panic-free: the forked child calls them.
pub(crate) trait ImageCheck {
    /// Whether the page at `addr` (page-aligned, inside the plan) may be written as it is.
    fn page_matches(&self, addr: usize) -> bool;
}

/// Where a plan is written: a raw file descriptor (the forked child) or a [`VFile`]
/// (in-process, e.g. on the simulated disk of the reliability tests).
pub(crate) trait Sink {
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    fn sync(&self) -> io::Result<()>;
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// A raw descriptor; every method is a single async-signal-safe syscall loop.
pub(crate) struct RawSink(pub RawFd);

impl Sink for RawSink {
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        sys::pwrite_all(self.0, buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        sys::fdatasync(self.0)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        let cur = sys::file_len(self.0)?;
        if len > cur {
            sys::allocate(self.0, cur, len - cur)?;
        }
        Ok(())
    }
}

impl Sink for &dyn VFile {
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        VFile::write_at(*self, buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.sync_data()
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        VFile::allocate(*self, len)
    }
}

/// How a [`write_plan`] that did not fail ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// The protocol completed: the file holds a valid snapshot.
    Complete,
    /// Stopped early by `stop_after` (tests).
    Stopped,
    /// Step 0 found a page that differs from its baseline: nothing was written.
    ImageChanged,
}

/// Result of [`write_plan`]: how it ended, or `Err((step, error))` on failure.
pub(crate) type Outcome = Result<Written, (Step, io::Error)>;

/// Runs the protocol. Allocation-free and panic-free, so it may run in a forked child.
///
/// # Safety
///
/// Every run `[a, b)` of the plan satisfies `base + b <= base + extent` of a region that is
/// mapped and readable for the whole call.
pub(crate) unsafe fn write_plan(sink: &impl Sink, plan: &Plan, check: Option<&dyn ImageCheck>) -> Outcome {
    macro_rules! step {
        ($step:expr, $e:expr) => {{
            $e.map_err(|e| ($step, e))?;
            if plan.stop_after == Some($step) {
                return Ok(Written::Stopped);
            }
        }};
    }
    if let Some(c) = check {
        for &(a, b) in plan.runs.iter() {
            let mut off = a;
            while off < b {
                if !c.page_matches(plan.base + off as usize) {
                    return Ok(Written::ImageChanged);
                }
                off += sys::OS_PAGE as u64;
            }
        }
    }
    step!(Step::StampInvalid, sink.write_at(&plan.invalid_header, 0));
    step!(Step::SyncInvalid, sink.sync());
    step!(Step::Allocate, sink.allocate(plan.header.file_len()));
    if plan.header_first {
        // Planted bug (tests only): the file claims to be valid before its pages are durable.
        sink.write_at(&plan.header.encode(), 0)
            .map_err(|e| (Step::WriteHeader, e))?;
        sink.sync().map_err(|e| (Step::SyncHeader, e))?;
    }
    step!(Step::WritePages, {
        let mut r = Ok(());
        for &(a, b) in plan.runs.iter() {
            // SAFETY: the caller guarantees the run lies inside the mapped, readable region.
            let src = unsafe { std::slice::from_raw_parts((plan.base + a as usize) as *const u8, (b - a) as usize) };
            r = sink.write_at(src, DATA_OFFSET + a);
            if r.is_err() {
                break;
            }
        }
        r
    });
    step!(
        Step::WriteBitmap,
        sink.write_at(&plan.bitmap, DATA_OFFSET + plan.header.extent)
    );
    step!(Step::SyncData, sink.sync());
    step!(Step::WriteHeader, sink.write_at(&plan.header.encode(), 0));
    step!(Step::SyncHeader, sink.sync());
    Ok(Written::Complete)
}

/// Exit status the forked child uses for "stopped early on purpose" (tests).
pub(crate) const EXIT_STOPPED: i32 = 100;
/// Exit status the forked child uses for "abandoned at step 0: a page differs from its
/// baseline" ([`Written::ImageChanged`]).
pub(crate) const EXIT_IMAGE_CHANGED: i32 = 101;

/// Body of the forked child: runs the plan on `fd` (with the step-0 `check`, if any) and
/// leaves with `_exit`. Exit code 0 on success, [`EXIT_STOPPED`] when stopped by the plan,
/// [`EXIT_IMAGE_CHANGED`] when step 0 abandoned it, `10 + step` on failure, 3 if the parent
/// died before the child started.
///
/// The child first closes every descriptor but `fd` and `lock_fd`: it must not keep the
/// program's sockets, other files or *other* heaps' locks open, but it keeps its own heap's
/// lock, so that no new opener can start before this writer is gone (it dies with its parent).
///
/// # Safety
///
/// Must only be called in a freshly forked child, with the plan's runs mapped (they are: the
/// child has a copy-on-write image of the parent's region).
pub(crate) unsafe fn child_main(
    fd: RawFd,
    lock_fd: RawFd,
    plan: &Plan,
    check: Option<&dyn ImageCheck>,
    parent: libc::pid_t,
) -> ! {
    if sys::die_with_parent() != parent {
        sys::exit_immediately(3);
    }
    sys::close_all_except(&[fd, lock_fd]);
    // SAFETY: forwarded from this function's contract.
    match unsafe { write_plan(&RawSink(fd), plan, check) } {
        Ok(Written::Complete) => sys::exit_immediately(0),
        Ok(Written::Stopped) => sys::exit_immediately(EXIT_STOPPED),
        Ok(Written::ImageChanged) => sys::exit_immediately(EXIT_IMAGE_CHANGED),
        Err((step, _)) => sys::exit_immediately(10 + step as i32),
    }
}

// ---- Reading a snapshot file at open (engine/recover.rs, step 3) ----------------------------

/// Reads a snapshot header. `Ok(None)` for an empty (never written) file; a header that is
/// damaged, or valid but describing more data than the file holds, counts as invalid — if it
/// was needed, the gap in the journal chain reports the loss.
pub(crate) fn read_snapshot_header(
    f: &dyn VFile,
    meta: &Meta,
) -> std::result::Result<Option<SnapHeader>, (u64, String)> {
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
pub(crate) fn map_snapshot(region: &mut Region, f: &dyn VFile, extent: usize, path: &Path) -> Result<()> {
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
            region
                .grow(extent)
                .map_err(|e| Error::io("mmap (snapshot image)", path, e))?;
            let base = region.base();
            // SAFETY: [base, base + extent) was just mapped read-write and nothing refers to it.
            let dst = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, extent) };
            let n = f.read_at(dst, DATA_OFFSET).map_err(|e| Error::io("read", path, e))?;
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
pub(crate) fn read_dirty_bitmap(f: &dyn VFile, h: &SnapHeader, base: usize, max_size: usize) -> Option<DirtySet> {
    let mut buf = vec![0u8; h.dirty_len as usize];
    let n = f.read_at(&mut buf, DATA_OFFSET + h.extent).ok()?;
    if n != buf.len() || crc32fast::hash(&buf) != h.dirty_crc {
        return None;
    }
    DirtySet::from_bytes(base, max_size / sys::OS_PAGE, &buf).ok()
}
