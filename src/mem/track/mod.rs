//! Dirty-page tracking: which 4 KiB pages of the region changed since the last commit, found
//! with no help from user code. The software bitmap that accumulates those pages between
//! snapshots is [`DirtySet`](crate::mem::dirty_set::DirtySet), in `dirty_set.rs`.
//!
//! # The ladder
//!
//! [`Tracker::new`] chooses a mechanism ("rung") by round-trip probes on a private scratch
//! mapping (arm, write, expect exactly the written page reported; a call that merely succeeds
//! proves nothing). [`Tracking::Auto`] takes the first rung that passes, in this order; the
//! other [`Tracking`] values force one (an error naming the failed probe step if it fails):
//!
//! 1. [`TrackMode::Uffd`], userfaultfd asynchronous write-protection + `PAGEMAP_SCAN`
//!    (Linux >= 6.7, the `userfaultfd` system call allowed): below.
//! 2. [`TrackMode::Hashed`], keyed page hashes restricted by `/proc/self/pagemap` flags: any
//!    kernel, no privilege (`hashed.rs`, which states its exactness argument and costs).
//! 3. [`TrackMode::AllDirty`], every armed page at every collect: the last resort.
//!
//! [`TrackMode::SoftDirty`] (`soft_dirty.rs`) is never chosen by `Auto`: it has no atomic
//! read-and-clear, so it is exact only when no thread writes heap memory during a commit. It
//! is refused when the caller declares concurrent writers (`GlobalHeap`).
//!
//! Whatever the rung, a collect delivers the same thing: sorted, coalesced page ranges, and
//! for the hashed rung the bytes to journal for them ([`Tracker::staged`]).
//!
//! # The uffd-wp rung
//!
//! [`Tracker`] registers the used part of the region with a userfaultfd in write-protect mode
//! with `UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED`
//! (`Documentation/admin-guide/mm/userfaultfd.rst`), then write-protects every page of it
//! (`UFFDIO_WRITEPROTECT`). In asynchronous mode the first write to a protected page does not
//! wait for a handler: the kernel makes the page writable and clears its uffd-wp bit
//! (about 0.7 us per first write here). At commit, `PAGEMAP_SCAN` on `/proc/self/pagemap`
//! (`Documentation/admin-guide/mm/pagemap.rst`) reports the pages whose bit is clear
//! (`PAGE_IS_WRITTEN`) and, with `PM_SCAN_WP_MATCHING`, sets the bit again on exactly those
//! pages, each under its page-table lock. A write racing with the scan therefore either lands
//! before its page is re-protected (reported now) or faults after (reported at the next
//! collect). A write through a stale TLB entry can still land after the re-protection but
//! before the ioctl returns (the TLB flush ends each page-table walk step) without being
//! reported later: the engine must copy the contents of reported pages only after `collect`
//! returns, which captures it. `PM_SCAN_CHECK_WPASYNC` is always passed: without it a range whose registration
//! was lost (a `MAP_FIXED` remap, `mremap`) would silently look clean.
//!
//! Its probe failing moves `Auto` down the ladder: never to "nothing dirty".
//!
//! # Verified on Linux 6.18 (x86-64)
//!
//! By the tests below unless marked otherwise:
//!
//! - exactly the written pages are reported, on anonymous memory (populated before arming, or
//!   never touched) and on `MAP_PRIVATE` file mappings (pages only read before arming, pages
//!   never touched); reads, including first reads of never-touched pages, are not reported;
//! - writes by the kernel (a `read()`/`pread()` into the range) are reported;
//! - arming with `UFFDIO_WRITEPROTECT` protects populated, read-only-file and unpopulated pages
//!   alike (with `WP_UNPOPULATED` it installs pte markers where nothing is mapped, which also
//!   creates page tables: arm only the used part). A `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING`,
//!   no category mask and no output vector protects the same pages (checked once by hand, not
//!   a kept test); the tracker uses `UFFDIO_WRITEPROTECT`, the documented way;
//! - after `fork()` the parent keeps tracking (the child loses the registration, per the
//!   design notes; the tracker must not be used in a forked child);
//! - a result with more runs than the scan vector holds continues correctly from `walk_end`;
//!   but when the kernel restarted its walk internally (more than 512 runs, its bounce buffer)
//!   and then finished with room left in the vector, `walk_end` is stale (the last restart
//!   point, not `end`): the scan loop trusts "vector not full" as completion and never resumes
//!   before the end of the last run it received, so no page is reported twice.
//!
//! # Invariants
//!
//! - `mode == Uffd` <=> `kernel.is_some()`; `mode == Hashed` <=> `hashed.is_some()`;
//!   `mode == SoftDirty` <=> `soft.is_some()`.
//! - `armed` is sorted, its ranges are page-aligned, non-empty, disjoint and non-adjacent
//!   (`armed[i].1 < armed[i + 1].0`); in `Uffd` mode it is exactly the set registered with
//!   the userfaultfd by this tracker.
//! - `scan.len() == 0` (never scanned) or `SCAN_INITIAL <= scan.len() <= SCAN_MAX`.
//!
//! # Safety
//!
//! [`Tracker::arm`] is `unsafe`: the hashed rung reads the memory of armed pages, so the
//! caller promises they stay mapped readable until disarmed. Otherwise no unsafe code outside
//! the tests: every system call goes through `crate::sys`.
//!
//! # Errors and lost reports
//!
//! An error from [`Tracker::collect`] may come after the kernel re-protected (and so forgot)
//! part of the dirty set: the caller must then treat every page of the range as written.

mod hashed;
mod soft_dirty;

use std::fmt;
use std::io;

use hashed::Hashed;
use soft_dirty::SoftDirty;

use crate::mem::sysmem::SysVec;
use crate::options::Tracking;
use crate::sys::uffd::{self, PageRegion, Pagemap, ScanQuery, ScratchMap, Uffd};
use crate::sys::OS_PAGE;

/// The tracking granularity: one OS page.
const PAGE: usize = OS_PAGE;
/// Scan-vector length (runs) at the first scan; 24 KiB.
const SCAN_INITIAL: usize = 1024;
/// The scan vector doubles while a scan fills it, up to this many runs (1.5 MiB).
const SCAN_MAX: usize = 64 * 1024;
/// Features asked of `UFFDIO_API`.
const FEATURES: u64 = uffd::UFFD_FEATURE_WP_ASYNC | uffd::UFFD_FEATURE_WP_UNPOPULATED;

/// How the tracker finds written pages: the rung in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackMode {
    /// userfaultfd asynchronous write-protection + `PAGEMAP_SCAN`.
    Uffd,
    /// Soft-dirty bits in pagemap, cleared through `clear_refs` (`soft_dirty.rs`).
    SoftDirty,
    /// Keyed page hashes over the private anonymous pages (`hashed.rs`).
    Hashed,
    /// No mechanism: every armed page counts as written at every collect.
    AllDirty,
}

impl TrackMode {
    /// The mode's name as reported in `Stats::track_mode`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TrackMode::Uffd => Tracking::UffdWp.name(),
            TrackMode::SoftDirty => Tracking::SoftDirty.name(),
            TrackMode::Hashed => Tracking::Hashed.name(),
            TrackMode::AllDirty => Tracking::AllDirty.name(),
        }
    }
}

impl fmt::Display for TrackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a rung was not used: its probe's failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fallback {
    /// The step that failed, e.g. `"UFFDIO_API"` or `"probe: written page not reported"`.
    pub(crate) step: &'static str,
    /// The OS error of that step, if it was a failed system call.
    pub(crate) errno: Option<i32>,
}

impl Fallback {
    fn os(step: &'static str, e: io::Error) -> Fallback {
        Fallback {
            step,
            errno: e.raw_os_error(),
        }
    }

    fn wrong(step: &'static str) -> Fallback {
        Fallback { step, errno: None }
    }
}

impl fmt::Display for Fallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}: {}", self.step, io::Error::from_raw_os_error(e)),
            None => f.write_str(self.step),
        }
    }
}

/// The two kernel objects of `Uffd` mode. Dropping them unregisters everything.
#[derive(Debug)]
struct Kernel {
    uffd: Uffd,
    pagemap: Pagemap,
}

/// Finds the pages written since they were armed or last collected. See the module docs.
#[derive(Debug)]
pub(crate) struct Tracker {
    mode: TrackMode,
    kernel: Option<Kernel>,
    hashed: Option<Hashed>,
    soft: Option<SoftDirty>,
    /// Reused `PAGEMAP_SCAN` output vector (allocated at the first scan).
    scan: SysVec<PageRegion>,
    /// The armed ranges: sorted, disjoint, non-adjacent.
    armed: SysVec<(usize, usize)>,
    /// The better rungs `Auto` skipped, and why.
    skipped: SysVec<(TrackMode, Fallback)>,
    /// The rung was forced with [`Tracking`] rather than chosen by `Auto`.
    forced: bool,
}

impl Tracker {
    /// Chooses and probes a rung (see the module docs). `concurrent_writers` declares that any
    /// thread may write heap memory at any time (`GlobalHeap`), which rules out soft-dirty.
    /// `Auto` always succeeds (all-dirty needs nothing); a forced rung whose probe fails is
    /// `Err((rung, the failed step))`.
    pub(crate) fn new(request: Tracking, concurrent_writers: bool) -> Result<Tracker, (TrackMode, Fallback)> {
        let mut t = match request {
            Tracking::Auto => {
                let mut skipped = SysVec::new_in(std::alloc::System);
                let t = match Tracker::uffd() {
                    Ok(t) => t,
                    Err(f) => {
                        skipped.push((TrackMode::Uffd, f));
                        match Tracker::hashed() {
                            Ok(t) => t,
                            Err(f) => {
                                skipped.push((TrackMode::Hashed, f));
                                Tracker::bare(TrackMode::AllDirty)
                            }
                        }
                    }
                };
                return Ok(Tracker { skipped, ..t });
            }
            Tracking::UffdWp => Tracker::uffd().map_err(|f| (TrackMode::Uffd, f))?,
            Tracking::Hashed => Tracker::hashed().map_err(|f| (TrackMode::Hashed, f))?,
            Tracking::SoftDirty if concurrent_writers => {
                return Err((
                    TrackMode::SoftDirty,
                    Fallback::wrong(
                        "refused: any thread may write heap memory at any time here (GlobalHeap), and soft-dirty \
                         has no atomic read-and-clear",
                    ),
                ))
            }
            Tracking::SoftDirty => {
                let soft = SoftDirty::new().map_err(|f| (TrackMode::SoftDirty, f))?;
                Tracker {
                    soft: Some(soft),
                    ..Tracker::bare(TrackMode::SoftDirty)
                }
            }
            Tracking::AllDirty => Tracker::bare(TrackMode::AllDirty),
        };
        t.forced = true;
        Ok(t)
    }

    /// An all-dirty tracker armed on nothing: what a detached engine leaves in place of the
    /// tracker it hands to the detached heap.
    pub(crate) fn placeholder() -> Tracker {
        Tracker::bare(TrackMode::AllDirty)
    }

    /// Whether this tracker runs the rung `request` asks for (`Auto` any but soft-dirty, which it never picks): an adopted
    /// detached heap keeps its tracker only then.
    pub(crate) fn serves(&self, request: Tracking) -> bool {
        match request {
            Tracking::Auto => self.mode != TrackMode::SoftDirty,
            Tracking::UffdWp => self.mode == TrackMode::Uffd,
            Tracking::SoftDirty => self.mode == TrackMode::SoftDirty,
            Tracking::Hashed => self.mode == TrackMode::Hashed,
            Tracking::AllDirty => self.mode == TrackMode::AllDirty,
        }
    }

    /// A tracker in `mode` with no kernel objects.
    fn bare(mode: TrackMode) -> Tracker {
        Tracker {
            mode,
            kernel: None,
            hashed: None,
            soft: None,
            scan: SysVec::new_in(std::alloc::System),
            armed: SysVec::new_in(std::alloc::System),
            skipped: SysVec::new_in(std::alloc::System),
            forced: false,
        }
    }

    /// The uffd-wp rung: opens a userfaultfd and `/proc/self/pagemap` and probes the mechanism
    /// on a private scratch mapping: with two pages populated and two untouched, arms all four,
    /// expects nothing reported, writes a populated page and then an untouched one and expects
    /// exactly each reported once. Any failure (`ENOSYS`, `EPERM`, `EINVAL` from old kernels, a
    /// seccomp filter, a wrong result) is returned.
    fn uffd() -> Result<Tracker, Fallback> {
        let kernel = Kernel::open()?;
        let mut t = Tracker {
            kernel: Some(kernel),
            ..Tracker::bare(TrackMode::Uffd)
        };
        t.probe()?;
        Ok(t)
    }

    /// The hashed rung, after its round trip (`Hashed::probe`).
    fn hashed() -> Result<Tracker, Fallback> {
        let mut h = Hashed::new().map_err(|e| Fallback::os("open /proc/self/pagemap or getrandom", e))?;
        h.probe()?;
        Ok(Tracker {
            hashed: Some(h),
            ..Tracker::bare(TrackMode::Hashed)
        })
    }

    /// The mechanism in use.
    pub(crate) fn mode(&self) -> TrackMode {
        self.mode
    }

    /// Why better rungs were not used, for `Stats::track_fallback`: each skipped rung and its
    /// failed step (`None` when `Auto` got the best rung), or that the rung was forced.
    pub(crate) fn fallback_text(&self) -> Option<std::string::String> {
        if self.forced {
            return Some(format!("{} forced by OpenOptions::tracking", self.mode.name()));
        }
        if self.skipped.is_empty() {
            return None;
        }
        let parts: std::vec::Vec<std::string::String> =
            self.skipped.iter().map(|(m, f)| format!("{}: {f}", m.name())).collect();
        Some(parts.join("; "))
    }

    /// The copies of the pages the last `collect` reported, in report order, when the rung
    /// made them (hashed): the commit must journal these bytes instead of reading the pages
    /// again (see `hashed.rs`). `None` for the rungs whose reports stay valid for a later read.
    pub(crate) fn staged(&self) -> Option<&[u8]> {
        self.hashed.as_ref().map(|h| h.staged())
    }

    /// Whether a snapshot writer must check its image against this tracker before writing
    /// it: only the hashed rung, whose report is not sticky (a write between the collect and
    /// the fork that is undone before the next collect leaves no trace; see `hashed.rs`).
    pub(crate) fn needs_image_check(&self) -> bool {
        self.hashed.is_some()
    }

    /// The snapshot child's check for the page at `addr` (see [`Hashed::image_matches`]);
    /// true for the other rungs. Allocation-, lock- and panic-free.
    pub(crate) fn image_matches(&self, addr: usize) -> bool {
        self.hashed.as_ref().is_none_or(|h| h.image_matches(addr))
    }

    /// Hashed rung only: whether the page at `addr` has a baseline equal to the digest of
    /// `bytes`, so the next collect reports it exactly when it differs from `bytes` (`verify`).
    pub(crate) fn baseline_is(&self, addr: usize, bytes: &[u8]) -> bool {
        self.hashed.as_ref().is_some_and(|h| h.baseline_is(addr, bytes))
    }

    /// Starts tracking `[start, end)`: page-aligned, mapped read-write, possibly partly
    /// populated, anonymous or a `MAP_PRIVATE` file mapping, holding committed content. In
    /// uffd-wp mode registers it in write-protect mode and protects every page, so only writes
    /// after this call are reported; the hashed rung records the digests of its private
    /// anonymous pages (arming an armed range again forgets its unreported writes). In
    /// all-dirty and soft-dirty mode it only records the range.
    ///
    /// # Safety
    ///
    /// `[start, end)` stays mapped readable until it is disarmed or the tracker is dropped (the
    /// hashed rung reads it at every collect).
    pub(crate) unsafe fn arm(&mut self, start: usize, end: usize) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if start >= end {
            return Ok(());
        }
        if let Some(h) = &mut self.hashed {
            // SAFETY: forwarded from this function's contract.
            unsafe { h.arm(start, end) }?;
        }
        if let Some(s) = &mut self.soft {
            s.arm(start, end);
        }
        if let Some(k) = &self.kernel {
            let len = end - start;
            k.uffd.register_wp(start, len)?;
            if let Err(e) = k.uffd.write_protect(start, len, true) {
                let _ = k.uffd.unregister(start, len);
                ranges_remove(&mut self.armed, start, end);
                return Err(e);
            }
        }
        ranges_insert(&mut self.armed, start, end);
        Ok(())
    }

    /// Stops tracking `[start, end)` (before the engine unmaps or remaps it). Unregistering
    /// also clears the write-protection of its pages.
    pub(crate) fn disarm(&mut self, start: usize, end: usize) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if start >= end {
            return Ok(());
        }
        if let Some(k) = &self.kernel {
            k.uffd.unregister(start, end - start)?;
        }
        if let Some(h) = &mut self.hashed {
            h.disarm(start, end);
        }
        if let Some(s) = &mut self.soft {
            s.disarm(start, end);
        }
        ranges_remove(&mut self.armed, start, end);
        Ok(())
    }

    /// The commit point: appends to `out` the page-aligned ranges of armed pages in
    /// `[start, end)` written since they were armed or last collected, in address order with
    /// adjacent pages coalesced (never merged into entries `out` held before the call), and
    /// re-protects them atomically per page (uffd-wp), or updates their baselines and stages
    /// their bytes (hashed: journal [`staged`](Self::staged)), or clears soft-dirty bits. The
    /// soft-dirty rung requires `[start, end)` to cover every armed range. All-dirty mode
    /// appends every armed page of the range. On error, see the module docs: the caller must
    /// assume the whole range written.
    pub(crate) fn collect(&mut self, start: usize, end: usize, out: &mut SysVec<(usize, usize)>) -> io::Result<()> {
        self.report(start, end, true, out)
    }

    /// The same report as [`collect`](Self::collect), without re-protecting (for verification).
    pub(crate) fn peek(&mut self, start: usize, end: usize, out: &mut SysVec<(usize, usize)>) -> io::Result<()> {
        self.report(start, end, false, out)
    }

    fn report(
        &mut self,
        start: usize,
        end: usize,
        reprotect: bool,
        out: &mut SysVec<(usize, usize)>,
    ) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if let Some(h) = &mut self.hashed {
            return h.report(start, end, reprotect, out);
        }
        if let Some(s) = &mut self.soft {
            return s.report(start, end, reprotect, out);
        }
        let first = out.len();
        // Walk the armed pieces of [start, end); usually exactly one.
        let mut i = self.armed.partition_point(|&(_, e)| e <= start);
        while i < self.armed.len() && self.armed[i].0 < end {
            let a = self.armed[i].0.max(start);
            let b = self.armed[i].1.min(end);
            match self.kernel {
                None => push_coalesced(out, first, a, b),
                Some(_) => self.scan_written(a, b, reprotect, first, out)?,
            }
            i += 1;
        }
        Ok(())
    }

    /// `PAGEMAP_SCAN` for written pages over `[start, end)`, continuing from `walk_end` while
    /// the scan vector fills up (and doubling it then, up to `SCAN_MAX`).
    fn scan_written(
        &mut self,
        start: usize,
        end: usize,
        reprotect: bool,
        first: usize,
        out: &mut SysVec<(usize, usize)>,
    ) -> io::Result<()> {
        let Some(k) = &self.kernel else {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        };
        if self.scan.is_empty() {
            self.scan.resize(SCAN_INITIAL, PageRegion::default());
        }
        let mut flags = uffd::PM_SCAN_CHECK_WPASYNC;
        if reprotect {
            flags |= uffd::PM_SCAN_WP_MATCHING;
        }
        let mut cur = start;
        while cur < end {
            let query = ScanQuery {
                start: cur,
                end,
                flags,
                category_mask: uffd::PAGE_IS_WRITTEN,
                return_mask: uffd::PAGE_IS_WRITTEN,
            };
            let (n, walk_end) = k.pagemap.scan(&query, &mut self.scan)?;
            for r in &self.scan[..n] {
                push_coalesced(out, first, r.start as usize, r.end as usize);
            }
            // The kernel leaves its loop with room to spare in the vector only when the walk
            // is complete (or on error). Its `walk_end` is then NOT reliable: on Linux 6.18 it
            // still holds the last internal restart point when the walk needed more than one
            // bounce buffer (> 512 runs), and resuming from it would report pages twice.
            if n < self.scan.len() {
                break;
            }
            // The vector filled: `walk_end` is where the first unreported run starts, or, if
            // the walk happened to finish exactly then, a stale lower address. Never resume
            // before the last reported run: a page is reported at most once per call.
            let next = walk_end.max(self.scan[n - 1].end as usize);
            if next <= cur {
                // No progress: the kernel broke its contract.
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            cur = next;
            if n == self.scan.len() && self.scan.len() < SCAN_MAX {
                let grown = (self.scan.len() * 2).min(SCAN_MAX);
                self.scan.resize(grown, PageRegion::default());
            }
        }
        Ok(())
    }

    /// The start-up probe; see [`Tracker::new`]. Leaves nothing armed.
    fn probe(&mut self) -> Result<(), Fallback> {
        let mut map = ScratchMap::new(4 * PAGE).map_err(|e| Fallback::os("probe mmap", e))?;
        let (a, end) = (map.addr(), map.addr() + 4 * PAGE);
        // Pages 0 and 1 populated before arming, pages 2 and 3 never touched.
        map.write(0, 1);
        map.write(PAGE, 1);
        // SAFETY: the scratch map stays mapped until it is disarmed below.
        unsafe { self.arm(a, end) }.map_err(|e| Fallback::os("probe arm (UFFDIO_REGISTER/WRITEPROTECT)", e))?;
        let result = self.probe_armed(&mut map);
        let disarmed = self.disarm(a, end);
        result?;
        disarmed.map_err(|e| Fallback::os("probe disarm (UFFDIO_UNREGISTER)", e))
    }

    fn probe_armed(&mut self, map: &mut ScratchMap) -> Result<(), Fallback> {
        let a = map.addr();
        let mut out = SysVec::new_in(std::alloc::System);
        self.probe_expect(map, true, &mut out, None, "probe: a page nobody wrote was reported")?;
        map.write(PAGE + 8, 2);
        let p1 = Some((a + PAGE, a + 2 * PAGE));
        self.probe_expect(map, false, &mut out, p1, "probe: written populated page not reported")?;
        self.probe_expect(map, true, &mut out, p1, "probe: peek re-protected a page")?;
        self.probe_expect(map, true, &mut out, None, "probe: collect did not re-protect")?;
        map.write(3 * PAGE + 8, 2);
        let p3 = Some((a + 3 * PAGE, a + 4 * PAGE));
        self.probe_expect(map, true, &mut out, p3, "probe: written unpopulated page not reported")?;
        self.probe_expect(map, true, &mut out, None, "probe: collect did not re-protect (2)")
    }

    /// One probe step: reports over the whole scratch map and expects exactly `want`.
    fn probe_expect(
        &mut self,
        map: &ScratchMap,
        reprotect: bool,
        out: &mut SysVec<(usize, usize)>,
        want: Option<(usize, usize)>,
        what: &'static str,
    ) -> Result<(), Fallback> {
        out.clear();
        self.report(map.addr(), map.addr() + map.len(), reprotect, out)
            .map_err(|e| Fallback::os("probe PAGEMAP_SCAN", e))?;
        if out.as_slice() == want.as_slice() {
            Ok(())
        } else {
            Err(Fallback::wrong(what))
        }
    }

    /// Checks the invariants of the module docs; panics on violation (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.mode == TrackMode::Uffd, self.kernel.is_some());
        assert_eq!(self.mode == TrackMode::Hashed, self.hashed.is_some());
        assert_eq!(self.mode == TrackMode::SoftDirty, self.soft.is_some());
        if let Some(h) = &self.hashed {
            h.check_invariants();
        }
        for w in self.armed.windows(2) {
            assert!(w[0].1 < w[1].0, "armed ranges overlap or touch: {:?}", w);
        }
        for &(a, b) in self.armed.iter() {
            assert!(
                a < b && a % PAGE == 0 && b % PAGE == 0,
                "bad armed range {a:#x}..{b:#x}"
            );
        }
        assert!(self.scan.is_empty() || (SCAN_INITIAL..=SCAN_MAX).contains(&self.scan.len()));
    }
}

impl Kernel {
    fn open() -> Result<Kernel, Fallback> {
        let (uffd, features) = Uffd::open(FEATURES).map_err(|e| Fallback::os("userfaultfd/UFFDIO_API", e))?;
        if features & FEATURES != FEATURES {
            return Err(Fallback::wrong("UFFDIO_API lacks WP_ASYNC or WP_UNPOPULATED"));
        }
        let pagemap = Pagemap::open().map_err(|e| Fallback::os("open /proc/self/pagemap", e))?;
        Ok(Kernel { uffd, pagemap })
    }
}

/// Appends `[a, b)` to `out`, extending the last entry instead when it ends at `a` and was
/// appended by this call (index `>= first`).
fn push_coalesced(out: &mut SysVec<(usize, usize)>, first: usize, a: usize, b: usize) {
    if out.len() > first {
        if let Some(last) = out.last_mut() {
            if last.1 == a {
                last.1 = b;
                return;
            }
        }
    }
    out.push((a, b));
}

/// Adds `[a, b)` to a sorted list of disjoint, non-adjacent ranges, merging as needed.
fn ranges_insert(list: &mut SysVec<(usize, usize)>, a: usize, b: usize) {
    // Ranges i..j overlap or touch [a, b].
    let i = list.partition_point(|&(_, e)| e < a);
    let j = list.partition_point(|&(s, _)| s <= b);
    if i == j {
        list.insert(i, (a, b));
        return;
    }
    let merged = (a.min(list[i].0), b.max(list[j - 1].1));
    list[i] = merged;
    list.drain(i + 1..j);
}

/// Removes `[a, b)` from a sorted list of disjoint, non-adjacent ranges, splitting as needed.
fn ranges_remove(list: &mut SysVec<(usize, usize)>, a: usize, b: usize) {
    // Ranges i..j overlap [a, b) (share at least one byte).
    let i = list.partition_point(|&(_, e)| e <= a);
    let j = list.partition_point(|&(s, _)| s < b);
    if i >= j {
        return;
    }
    let left = (list[i].0 < a).then(|| (list[i].0, a));
    let right = (list[j - 1].1 > b).then(|| (b, list[j - 1].1));
    list.drain(i..j);
    if let Some(r) = right {
        list.insert(i, r);
    }
    if let Some(l) = left {
        list.insert(i, l);
    }
}

#[cfg(test)]
mod tests {
    //! Tests run against the real kernel mechanism. Unsafe code here only maps test files over
    //! test-owned scratch mappings and lets the kernel write into them with `pread`.

    use super::*;
    use crate::mem::dirty_set::DirtySet;
    use std::fs::File;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const P: usize = PAGE;

    fn sysvec<T>() -> SysVec<T> {
        SysVec::new_in(std::alloc::System)
    }

    /// Arms through the unsafe API. Tests arm only their own live scratch maps, or (in
    /// all-dirty mode, which reads nothing) addresses never touched.
    fn arm(t: &mut Tracker, a: usize, b: usize) -> io::Result<()> {
        // SAFETY: see above.
        unsafe { t.arm(a, b) }
    }

    fn uffd_tracker() -> Tracker {
        let t = Tracker::new(Tracking::Auto, false).unwrap();
        assert_eq!(t.mode(), TrackMode::Uffd, "probe failed: {:?}", t.fallback_text());
        t
    }

    fn collect(t: &mut Tracker, a: usize, b: usize) -> Vec<(usize, usize)> {
        let mut out = sysvec();
        t.collect(a, b, &mut out).expect("collect");
        t.check_invariants();
        out.to_vec()
    }

    fn peek(t: &mut Tracker, a: usize, b: usize) -> Vec<(usize, usize)> {
        let mut out = sysvec();
        t.peek(a, b, &mut out).expect("peek");
        out.to_vec()
    }

    /// The coalesced address ranges of the given page indices of `map`.
    fn pages(map: &ScratchMap, idx: &[usize]) -> Vec<(usize, usize)> {
        let mut set = DirtySet::new(map.addr(), map.len() / P);
        for &i in idx {
            set.insert_range(map.addr() + i * P, map.addr() + (i + 1) * P);
        }
        set.iter_ranges().collect()
    }

    fn end(map: &ScratchMap) -> usize {
        map.addr() + map.len()
    }

    /// A temporary file of `pages` pages, page `i` filled with byte `i as u8 + 1`, already
    /// unlinked (the open descriptor and any mapping keep it alive).
    fn temp_file(pages: usize) -> File {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "snapheap-track-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let mut data = vec![0u8; pages * P];
        for (i, page) in data.chunks_mut(P).enumerate() {
            page.fill(i as u8 + 1);
        }
        std::fs::write(&path, &data).unwrap();
        let f = File::options().read(true).write(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    /// A `MAP_PRIVATE` mapping of a fresh `pages`-page temporary file.
    fn file_map(pages: usize) -> (ScratchMap, File) {
        let map = ScratchMap::new(pages * P).unwrap();
        let file = temp_file(pages);
        // SAFETY: `map` owns the range and nothing references it; the file is `pages * P`
        // bytes long and is never truncated while mapped.
        unsafe { crate::sys::map_file_private_fixed(map.addr(), map.len(), file.as_raw_fd(), 0) }.unwrap();
        crate::sys::no_huge_pages(map.addr(), map.len()).unwrap();
        (map, file)
    }

    /// Lets the kernel write `len` bytes of `file` into `map` at `offset` (a `pread`).
    fn kernel_write(map: &mut ScratchMap, offset: usize, len: usize, file: &File) {
        assert!(offset + len <= map.len());
        // SAFETY: the range lies inside `map`, which is writable and is only ever accessed
        // through raw pointers; `&mut map` excludes other accesses during the call.
        let n = unsafe { crate::sys::pread_into(file.as_raw_fd(), map.addr() + offset, len, 0) }.unwrap();
        assert_eq!(n, len);
    }

    #[test]
    fn probe_selects_uffd_on_this_kernel() {
        let t = Tracker::new(Tracking::Auto, false).unwrap();
        assert_eq!(t.mode(), TrackMode::Uffd, "fell back: {:?}", t.fallback_text());
        assert_eq!(t.fallback_text(), None);
        assert!(t.armed.is_empty(), "the probe left a range armed");
        assert_eq!(t.mode().to_string(), "uffd-wp");
        assert_eq!(TrackMode::AllDirty.to_string(), "all-dirty");
        t.check_invariants();
    }

    #[test]
    fn tracker_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Tracker>();
        assert_send_sync::<DirtySet>();
    }

    #[test]
    fn exactly_written_anonymous_pages_are_reported_and_reads_are_not() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(16 * P).unwrap();
        for i in 0..8 {
            map.write(i * P, 7); // pages 0..8 populated before arming, 8..16 never touched
        }
        arm(&mut t, map.addr(), end(&map)).unwrap();
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
        // Reads of a populated page and first reads of never-touched pages.
        assert_eq!(map.read(2 * P), 7);
        assert_eq!(map.read(10 * P), 0);
        assert_eq!(map.read(15 * P + 100), 0);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), vec![]);
        map.write(3 * P + 5, 1); // populated before arming
        map.write(11 * P, 1); // never touched
        map.write(15 * P + 4095, 1); // read (zero page) after arming, then written
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[3, 11, 15]));
    }

    #[test]
    fn exactly_written_pages_of_a_private_file_mapping_are_reported() {
        let mut t = uffd_tracker();
        let (mut map, _file) = file_map(16);
        for i in 0..4 {
            assert_eq!(map.read(i * P), i as u8 + 1); // pages 0..4 read (page cache) before arming
        }
        arm(&mut t, map.addr(), end(&map)).unwrap();
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
        assert_eq!(map.read(6 * P), 7); // first read after arming
        assert_eq!(map.read(P), 2);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), vec![]);
        map.write(P + 1, 0xEE); // only read before
        map.write(6 * P, 0xEE); // read after arming
        map.write(9 * P, 0xEE); // never touched
        map.write(10 * P, 0xEE); // never touched, adjacent: coalesces with page 9
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[1, 6, 9, 10]));
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
        // A page written before (now private and re-protected) is reported again.
        map.write(P + 2, 0xDD);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[1]));
    }

    #[test]
    fn a_read_syscall_into_the_range_is_reported() {
        let mut t = uffd_tracker();
        let mut anon = ScratchMap::new(8 * P).unwrap();
        anon.write(5 * P, 1);
        let (mut fmap, _file) = file_map(8);
        let src = temp_file(1);
        arm(&mut t, anon.addr(), end(&anon)).unwrap();
        arm(&mut t, fmap.addr(), end(&fmap)).unwrap();
        kernel_write(&mut anon, 5 * P + 10, 100, &src); // populated page
        kernel_write(&mut anon, 2 * P + P - 50, 100, &src); // spans untouched pages 2 and 3
        kernel_write(&mut fmap, 4 * P, 1, &src); // file page never touched
        assert_eq!(collect(&mut t, anon.addr(), end(&anon)), pages(&anon, &[2, 3, 5]));
        assert_eq!(collect(&mut t, fmap.addr(), end(&fmap)), pages(&fmap, &[4]));
        assert_eq!(anon.read(5 * P + 10), 1, "the pread wrote the file's first byte");
    }

    #[test]
    fn collect_reprotects_so_a_second_collect_is_empty() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(8 * P).unwrap();
        arm(&mut t, map.addr(), end(&map)).unwrap();
        map.write(4 * P, 1);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[4]));
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
        map.write(4 * P, 2);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[4]));
    }

    #[test]
    fn peek_reports_without_reprotecting() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(8 * P).unwrap();
        arm(&mut t, map.addr(), end(&map)).unwrap();
        map.write(0, 1);
        map.write(7 * P, 1);
        let want = pages(&map, &[0, 7]);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), want);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), want);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), want);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), vec![]);
    }

    #[test]
    fn results_larger_than_the_scan_vector_continue_from_walk_end() {
        let mut t = uffd_tracker();
        let n = 5_000;
        let mut map = ScratchMap::new(2 * n * P).unwrap();
        arm(&mut t, map.addr(), end(&map)).unwrap();
        let written: Vec<usize> = (0..n).map(|i| 2 * i + 1).collect(); // isolated pages
        for &i in &written {
            map.write(i * P, 1);
        }
        let want = pages(&map, &written);
        assert_eq!(want.len(), n);
        assert!(n > SCAN_INITIAL);
        assert_eq!(peek(&mut t, map.addr(), end(&map)), want);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), want);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
        // Runs that cross a scan-vector boundary are coalesced: write everything.
        for i in 0..2 * n {
            map.write(i * P, 2);
        }
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![(map.addr(), end(&map))]);
    }

    #[test]
    fn adjacent_ranges_armed_separately_are_tracked_as_one() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(64 * P).unwrap();
        let mid = map.addr() + 32 * P;
        arm(&mut t, map.addr(), mid).unwrap();
        arm(&mut t, mid, end(&map)).unwrap();
        assert_eq!(t.armed.as_slice(), &[(map.addr(), end(&map))]);
        for i in [0, 31, 32, 63] {
            map.write(i * P, 1);
        }
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[0, 31, 32, 63]));
        map.write(20 * P, 1);
        map.write(40 * P, 1);
        assert_eq!(collect(&mut t, mid, end(&map)), pages(&map, &[40]));
        assert_eq!(collect(&mut t, map.addr(), mid), pages(&map, &[20]));
    }

    #[test]
    fn disarmed_pages_are_not_reported_and_unregistered_memory_is_an_error_not_clean() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(64 * P).unwrap();
        arm(&mut t, map.addr(), end(&map)).unwrap();
        t.disarm(map.addr() + 16 * P, map.addr() + 32 * P).unwrap();
        t.check_invariants();
        map.write(20 * P, 1);
        map.write(40 * P, 1);
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[40]));
        // The hazard PM_SCAN_CHECK_WPASYNC exists for, at the syscall layer.
        let other = ScratchMap::new(4 * P).unwrap();
        let pagemap = Pagemap::open().unwrap();
        let mut vec = [PageRegion::default(); 4];
        let mut q = ScanQuery {
            start: other.addr(),
            end: end(&other),
            flags: uffd::PM_SCAN_WP_MATCHING,
            category_mask: uffd::PAGE_IS_WRITTEN,
            return_mask: uffd::PAGE_IS_WRITTEN,
        };
        assert_eq!(pagemap.scan(&q, &mut vec).unwrap(), (0, end(&other)), "silently clean");
        q.flags |= uffd::PM_SCAN_CHECK_WPASYNC;
        let err = pagemap.scan(&q, &mut vec).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn empty_ranges_arm_disarm_and_collect_to_nothing() {
        let mut t = uffd_tracker();
        let map = ScratchMap::new(P).unwrap();
        arm(&mut t, map.addr(), map.addr()).unwrap();
        t.disarm(map.addr(), map.addr()).unwrap();
        assert!(t.armed.is_empty());
        assert_eq!(collect(&mut t, map.addr(), map.addr()), vec![]);
        assert_eq!(
            collect(&mut t, map.addr(), end(&map)),
            vec![],
            "nothing armed, nothing reported"
        );
    }

    #[test]
    fn force_all_dirty_reports_every_armed_page_every_time() {
        let mut t = Tracker::new(Tracking::AllDirty, false).unwrap();
        assert_eq!(t.mode(), TrackMode::AllDirty);
        assert!(t.fallback_text().is_some());
        let base = 0x7000_0000_0000usize; // never touched: all-dirty mode makes no syscall
        arm(&mut t, base, base + 8 * P).unwrap();
        arm(&mut t, base + 8 * P, base + 10 * P).unwrap();
        arm(&mut t, base + 20 * P, base + 30 * P).unwrap();
        t.check_invariants();
        let want = vec![(base, base + 10 * P), (base + 20 * P, base + 30 * P)];
        assert_eq!(collect(&mut t, base, base + 100 * P), want);
        assert_eq!(collect(&mut t, base, base + 100 * P), want);
        assert_eq!(peek(&mut t, base, base + 100 * P), want);
        assert_eq!(
            collect(&mut t, base + 5 * P, base + 25 * P),
            vec![(base + 5 * P, base + 10 * P), (base + 20 * P, base + 25 * P)]
        );
        t.disarm(base + 2 * P, base + 4 * P).unwrap();
        t.check_invariants();
        assert_eq!(
            collect(&mut t, base, base + 100 * P),
            vec![
                (base, base + 2 * P),
                (base + 4 * P, base + 10 * P),
                (base + 20 * P, base + 30 * P)
            ]
        );
    }

    #[test]
    fn collect_does_not_merge_into_entries_the_caller_already_had() {
        let mut t = Tracker::new(Tracking::AllDirty, false).unwrap();
        let base = 0x7000_0000_0000usize;
        arm(&mut t, base, base + 2 * P).unwrap();
        let mut out = sysvec();
        out.push((base - P, base));
        t.collect(base, base + 2 * P, &mut out).unwrap();
        assert_eq!(out.as_slice(), &[(base - P, base), (base, base + 2 * P)]);
    }

    /// xorshift64*: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn set_of(map: &ScratchMap, ranges: &[(usize, usize)]) -> DirtySet {
        let mut s = DirtySet::new(map.addr(), map.len() / P);
        for &(a, b) in ranges {
            s.insert_range(a, b);
        }
        s
    }

    /// The project's cross-check, for the uffd-wp rung: over many rounds of random writes (user
    /// stores and kernel `pread`s) and reads, the set the kernel reports at each collect equals
    /// the software bitmap of pages the test wrote: none missed (bitmap is a subset of the
    /// kernel's set) and none extra (the kernel's set is a subset of the bitmap).
    #[test]
    fn kernel_written_set_matches_software_bitmap_over_random_workload() {
        random_workload_cross_check(uffd_tracker());
    }

    /// The same workload under the hashed rung: every page whose bytes changed is reported
    /// (none missed), only pages the test wrote or read are (the shared zero page after a read
    /// of an untouched anonymous page is the one allowed extra), and the staged bytes are the
    /// pages' bytes.
    #[test]
    fn hashed_rung_reports_every_changed_page_over_random_workload() {
        let t = Tracker::new(Tracking::Hashed, false).unwrap();
        random_workload_cross_check(t);
    }

    /// The bytes of page `i` of `map` (reading touches only that page).
    fn page_bytes(map: &ScratchMap, i: usize) -> Vec<u8> {
        (i * P..(i + 1) * P).map(|o| map.read(o)).collect()
    }

    fn random_workload_cross_check(mut t: Tracker) {
        let exact_writes = t.mode() == TrackMode::Uffd;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let src = temp_file(1);
        let mut anon = ScratchMap::new(384 * P).unwrap();
        for i in 0..192 {
            anon.write(i * P, 1); // first half populated before arming
        }
        let (fmap, _file) = file_map(128);
        for i in 0..64 {
            fmap.read(i * P); // first half read into the page cache before arming
        }
        // Arm the anonymous map in two adjacent pieces, as a growing heap would.
        arm(&mut t, anon.addr(), anon.addr() + 100 * P).unwrap();
        arm(&mut t, anon.addr() + 100 * P, end(&anon)).unwrap();
        arm(&mut t, fmap.addr(), end(&fmap)).unwrap();
        let mut maps = [anon, fmap];
        let mut epoch: Vec<DirtySet> = maps.iter().map(|m| DirtySet::new(m.addr(), m.len() / P)).collect();
        let mut total_reported = 0;
        for round in 0..50 {
            let mut wrote: Vec<DirtySet> = maps.iter().map(|m| DirtySet::new(m.addr(), m.len() / P)).collect();
            let mut read: Vec<DirtySet> = maps.iter().map(|m| DirtySet::new(m.addr(), m.len() / P)).collect();
            // The bytes of each page before its first write this round (= at the last collect).
            let mut before: Vec<std::collections::BTreeMap<usize, Vec<u8>>> = vec![Default::default(); 2];
            for _ in 0..rng.below(64) {
                let m = rng.below(2);
                let page = rng.below(maps[m].len() / P);
                let off = page * P + rng.below(P);
                match rng.below(8) {
                    0..=2 => {
                        maps[m].read(off);
                        let a = maps[m].addr() + page * P;
                        read[m].insert_range(a, a + P);
                    }
                    3 => {
                        let len = 1 + rng.below(P).min(maps[m].len() - off - 1);
                        for i in page..(off + len).div_ceil(P) {
                            before[m].entry(i).or_insert_with(|| page_bytes(&maps[m], i));
                        }
                        kernel_write(&mut maps[m], off, len, &src);
                        let a = maps[m].addr() + page * P;
                        let b = (maps[m].addr() + off + len).next_multiple_of(P);
                        wrote[m].insert_range(a, b);
                    }
                    _ => {
                        before[m].entry(page).or_insert_with(|| page_bytes(&maps[m], page));
                        maps[m].write(off, round as u8);
                        let a = maps[m].addr() + page * P;
                        wrote[m].insert_range(a, a + P);
                    }
                }
            }
            for m in 0..2 {
                let (a, b) = (maps[m].addr(), end(&maps[m]));
                let mut changed = DirtySet::new(a, maps[m].len() / P);
                for (&i, old) in &before[m] {
                    if page_bytes(&maps[m], i) != *old {
                        changed.insert_range(a + i * P, a + (i + 1) * P);
                    }
                }
                assert!(changed.is_subset_of(&wrote[m]), "the test's own bookkeeping is wrong");
                let peeked = (round % 3 == 0).then(|| set_of(&maps[m], &peek(&mut t, a, b)));
                let reported = collect(&mut t, a, b);
                let kernel = set_of(&maps[m], &reported);
                kernel.check_invariants();
                if let Some(p) = peeked {
                    assert!(
                        p.is_subset_of(&kernel) && kernel.is_subset_of(&p),
                        "peek and collect differ"
                    );
                }
                let missed: Vec<_> = changed.iter_ranges().filter(|&(p, _)| !kernel.contains(p)).collect();
                assert!(
                    changed.is_subset_of(&kernel),
                    "round {round} map {m}: {} missed changed pages {missed:x?}",
                    t.mode().name()
                );
                let mut allowed = wrote[m].clone();
                if !exact_writes {
                    allowed.union_with(&read[m]);
                }
                let extra: Vec<_> = kernel.iter_ranges().filter(|&(p, _)| !allowed.contains(p)).collect();
                assert!(
                    kernel.is_subset_of(&allowed),
                    "round {round} map {m}: {} reported extra {extra:x?}",
                    t.mode().name()
                );
                if exact_writes {
                    assert!(
                        wrote[m].is_subset_of(&kernel),
                        "round {round} map {m}: kernel missed a write"
                    );
                    assert_eq!(kernel.count(), wrote[m].count());
                }
                if let Some(staged) = t.staged() {
                    let mut want = Vec::new();
                    for &(x, y) in &reported {
                        for i in (x - a) / P..(y - a) / P {
                            want.extend(page_bytes(&maps[m], i));
                        }
                    }
                    assert!(staged == want.as_slice(), "round {round} map {m}: staged bytes differ");
                }
                total_reported += kernel.count();
                epoch[m].union_with(&kernel);
                assert!(kernel.is_subset_of(&epoch[m]));
            }
        }
        assert!(total_reported > 500, "the workload wrote too little to prove anything");
        assert!(epoch.iter().all(|e| e.count() > 0));
    }

    #[test]
    fn forced_rungs_report_their_mode_and_missing_ones_name_the_probe_step() {
        for (req, mode) in [
            (Tracking::UffdWp, TrackMode::Uffd),
            (Tracking::Hashed, TrackMode::Hashed),
            (Tracking::AllDirty, TrackMode::AllDirty),
        ] {
            let t = Tracker::new(req, false).unwrap();
            assert_eq!(t.mode(), mode);
            assert_eq!(t.mode().name(), req.name());
            assert!(t.fallback_text().unwrap().contains("forced"), "{:?}", t.fallback_text());
            assert_eq!(t.staged().is_some(), mode == TrackMode::Hashed);
            t.check_invariants();
        }
        match Tracker::new(Tracking::SoftDirty, false) {
            Ok(t) => assert_eq!(t.mode(), TrackMode::SoftDirty),
            Err((m, f)) => {
                assert_eq!(m, TrackMode::SoftDirty);
                assert!(f.step.starts_with("probe") || f.step.contains("another heap"), "{f}");
            }
        }
        let (m, f) = Tracker::new(Tracking::SoftDirty, true).unwrap_err();
        assert_eq!(m, TrackMode::SoftDirty);
        assert!(f.step.contains("GlobalHeap"), "{f}");
        for t in [
            Tracking::Auto,
            Tracking::UffdWp,
            Tracking::SoftDirty,
            Tracking::Hashed,
            Tracking::AllDirty,
        ] {
            assert_eq!(t.name().parse::<Tracking>().unwrap(), t);
            assert_eq!(t.to_string(), t.name());
        }
        assert!("uffd".parse::<Tracking>().is_err());
        assert_eq!(Tracking::default(), Tracking::Auto);
    }

    #[test]
    fn parent_keeps_tracking_across_fork() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(8 * P).unwrap();
        map.write(0, 1);
        arm(&mut t, map.addr(), end(&map)).unwrap();
        map.write(P, 1); // A: written before the fork
                         // SAFETY: the child only performs volatile stores to memory it owns and `_exit`s:
                         // no allocation, no locks, no unwinding.
        let pid = unsafe { crate::sys::fork() }.unwrap();
        if pid == 0 {
            map.write(2 * P, 9); // B: the child's copy, never seen by the parent
            map.write(P, 9);
            crate::sys::exit_immediately(0);
        }
        let status = crate::sys::wait_child(pid).unwrap();
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert_eq!(map.read(2 * P), 0, "the child's write is not the parent's");
        map.write(5 * P, 1); // C: written after the fork
        map.write(0, 2); // D: populated, protected, written after the fork
        assert_eq!(collect(&mut t, map.addr(), end(&map)), pages(&map, &[0, 1, 5]));
        assert_eq!(collect(&mut t, map.addr(), end(&map)), vec![]);
    }

    #[test]
    fn armed_range_list_merges_and_splits() {
        let mut l = sysvec();
        ranges_insert(&mut l, 10, 20);
        ranges_insert(&mut l, 30, 40);
        ranges_insert(&mut l, 20, 30);
        assert_eq!(l.as_slice(), &[(10, 40)]);
        ranges_insert(&mut l, 50, 60);
        ranges_insert(&mut l, 0, 5);
        ranges_insert(&mut l, 35, 55);
        assert_eq!(l.as_slice(), &[(0, 5), (10, 60)]);
        ranges_remove(&mut l, 20, 30);
        assert_eq!(l.as_slice(), &[(0, 5), (10, 20), (30, 60)]);
        ranges_remove(&mut l, 3, 40);
        assert_eq!(l.as_slice(), &[(0, 3), (40, 60)]);
        ranges_remove(&mut l, 100, 200);
        ranges_remove(&mut l, 0, 60);
        assert!(l.is_empty());
    }
}
