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
//! # Safety
//!
//! [`write_plan`] reads heap memory at the plan's runs; the caller guarantees those addresses
//! are mapped and readable (they lie inside the region's extent at the time of the plan).

use crate::disk::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::io::VFile;
use crate::mem::sysmem::SysVec;
use crate::sys;
use std::io;
use std::os::fd::RawFd;

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

/// Result of [`write_plan`]: `Ok(true)` when complete, `Ok(false)` when stopped early by
/// `stop_after`, `Err((step, error))` on failure.
pub(crate) type Outcome = Result<bool, (Step, io::Error)>;

/// Runs the protocol. Allocation-free and panic-free, so it may run in a forked child.
///
/// # Safety
///
/// Every run `[a, b)` of the plan satisfies `base + b <= base + extent` of a region that is
/// mapped and readable for the whole call.
pub(crate) unsafe fn write_plan(sink: &impl Sink, plan: &Plan) -> Outcome {
    macro_rules! step {
        ($step:expr, $e:expr) => {{
            $e.map_err(|e| ($step, e))?;
            if plan.stop_after == Some($step) {
                return Ok(false);
            }
        }};
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
    Ok(true)
}

/// Exit status the forked child uses for "stopped early on purpose" (tests).
pub(crate) const EXIT_STOPPED: i32 = 100;

/// Body of the forked child: runs the plan on `fd` and leaves with `_exit`. Exit code 0 on
/// success, [`EXIT_STOPPED`] when stopped by the plan, `10 + step` on failure, 3 if the parent
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
pub(crate) unsafe fn child_main(fd: RawFd, lock_fd: RawFd, plan: &Plan, parent: libc::pid_t) -> ! {
    if sys::die_with_parent() != parent {
        sys::exit_immediately(3);
    }
    sys::close_all_except(&[fd, lock_fd]);
    // SAFETY: forwarded from this function's contract.
    match unsafe { write_plan(&RawSink(fd), plan) } {
        Ok(true) => sys::exit_immediately(0),
        Ok(false) => sys::exit_immediately(EXIT_STOPPED),
        Err((step, _)) => sys::exit_immediately(10 + step as i32),
    }
}
