//! Dirty-page tracking: which 4 KiB pages of the region were written since the last commit,
//! found by the kernel with no help from user code. The software bitmap that accumulates
//! those pages between snapshots is [`DirtySet`](crate::mem::dirty_set::DirtySet), in
//! `dirty_set.rs`.
//!
//! # Mechanism
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
//! At construction the tracker probes the mechanism on a private scratch mapping and falls
//! back to [`TrackMode::AllDirty`] (every armed page reported at every commit) on any failure:
//! never to "nothing dirty". Soft-dirty bits are not used: they are compiled out of the
//! kernels this was measured on, where clearing them "works" and nothing is ever reported.
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
//! - `mode == Uffd` <=> `kernel.is_some()`.
//! - `armed` is sorted, its ranges are page-aligned, non-empty, disjoint and non-adjacent
//!   (`armed[i].1 < armed[i + 1].0`); in `Uffd` mode it is exactly the set registered with
//!   the userfaultfd by this tracker.
//! - `scan.len() == 0` (never scanned) or `SCAN_INITIAL <= scan.len() <= SCAN_MAX`.
//!
//! # Safety
//!
//! No unsafe code outside the tests: every system call goes through `crate::sys::uffd`.
//!
//! # Errors and lost reports
//!
//! An error from [`Tracker::collect`] may come after the kernel re-protected (and so forgot)
//! part of the dirty set: the caller must then treat every page of the range as written.

use std::fmt;
use std::io;

use crate::mem::sysmem::SysVec;
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

/// How the tracker finds written pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrackMode {
    /// userfaultfd asynchronous write-protection + `PAGEMAP_SCAN`.
    Uffd,
    /// No mechanism: every armed page counts as written at every collect.
    AllDirty,
}

impl TrackMode {
    /// The mode's name as reported in `Stats::track_mode`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            TrackMode::Uffd => "uffd-wp",
            TrackMode::AllDirty => "all-dirty",
        }
    }
}

impl fmt::Display for TrackMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a tracker runs in [`TrackMode::AllDirty`].
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
    /// Reused `PAGEMAP_SCAN` output vector (allocated at the first scan).
    scan: SysVec<PageRegion>,
    /// The armed ranges: sorted, disjoint, non-adjacent.
    armed: SysVec<(usize, usize)>,
    fallback: Option<Fallback>,
}

impl Tracker {
    /// Opens a userfaultfd and `/proc/self/pagemap` and probes the mechanism on a private
    /// scratch mapping: with two pages populated and two untouched, arms all four, expects
    /// nothing reported, writes a populated page and then an untouched one and expects exactly
    /// each reported once. Any failure (`ENOSYS`, `EPERM`, `EINVAL` from old kernels, a seccomp
    /// filter, a wrong result) selects [`TrackMode::AllDirty`]; so does `force_all_dirty`,
    /// without probing.
    pub(crate) fn new(force_all_dirty: bool) -> Tracker {
        if force_all_dirty {
            return Tracker::all_dirty(Fallback::wrong("all-dirty mode requested"));
        }
        let kernel = match Kernel::open() {
            Ok(k) => k,
            Err(f) => return Tracker::all_dirty(f),
        };
        let mut t = Tracker {
            mode: TrackMode::Uffd,
            kernel: Some(kernel),
            scan: SysVec::new_in(std::alloc::System),
            armed: SysVec::new_in(std::alloc::System),
            fallback: None,
        };
        match t.probe() {
            Ok(()) => t,
            Err(f) => Tracker::all_dirty(f),
        }
    }

    fn all_dirty(why: Fallback) -> Tracker {
        Tracker {
            mode: TrackMode::AllDirty,
            kernel: None,
            scan: SysVec::new_in(std::alloc::System),
            armed: SysVec::new_in(std::alloc::System),
            fallback: Some(why),
        }
    }

    /// The mechanism in use.
    pub(crate) fn mode(&self) -> TrackMode {
        self.mode
    }

    /// Why the tracker runs in all-dirty mode (`None` in `Uffd` mode).
    pub(crate) fn fallback_reason(&self) -> Option<Fallback> {
        self.fallback
    }

    /// Starts tracking `[start, end)`: page-aligned, mapped read-write, possibly partly
    /// populated, anonymous or a `MAP_PRIVATE` file mapping. Registers it in write-protect mode
    /// and protects every page, so only writes after this call are reported (arming an armed
    /// range again forgets its unreported writes). In all-dirty mode it only records the range.
    pub(crate) fn arm(&mut self, start: usize, end: usize) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if start >= end {
            return Ok(());
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
        ranges_remove(&mut self.armed, start, end);
        Ok(())
    }

    /// The commit point: appends to `out` the page-aligned ranges of armed pages in
    /// `[start, end)` written since they were armed or last collected, in address order with
    /// adjacent pages coalesced (never merged into entries `out` held before the call), and
    /// re-protects them atomically per page. All-dirty mode appends every armed page of the
    /// range. On error, see the module docs: the caller must assume the whole range written.
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
        self.arm(a, end)
            .map_err(|e| Fallback::os("probe arm (UFFDIO_REGISTER/WRITEPROTECT)", e))?;
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

    fn uffd_tracker() -> Tracker {
        let t = Tracker::new(false);
        assert_eq!(t.mode(), TrackMode::Uffd, "probe failed: {:?}", t.fallback_reason());
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
        let t = Tracker::new(false);
        assert_eq!(t.mode(), TrackMode::Uffd, "fell back: {:?}", t.fallback_reason());
        assert_eq!(t.fallback_reason(), None);
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(anon.addr(), end(&anon)).unwrap();
        t.arm(fmap.addr(), end(&fmap)).unwrap();
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(map.addr(), mid).unwrap();
        t.arm(mid, end(&map)).unwrap();
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
        t.arm(map.addr(), end(&map)).unwrap();
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
        t.arm(map.addr(), map.addr()).unwrap();
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
        let mut t = Tracker::new(true);
        assert_eq!(t.mode(), TrackMode::AllDirty);
        assert!(t.fallback_reason().is_some());
        let base = 0x7000_0000_0000usize; // never touched: all-dirty mode makes no syscall
        t.arm(base, base + 8 * P).unwrap();
        t.arm(base + 8 * P, base + 10 * P).unwrap();
        t.arm(base + 20 * P, base + 30 * P).unwrap();
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
        let mut t = Tracker::new(true);
        let base = 0x7000_0000_0000usize;
        t.arm(base, base + 2 * P).unwrap();
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

    /// The project's cross-check: over many rounds of random writes (user stores and kernel
    /// `pread`s) and reads, the set the kernel reports at each collect equals the software
    /// bitmap of pages the test wrote: none missed (bitmap is a subset of the kernel's set)
    /// and none extra (the kernel's set is a subset of the bitmap).
    #[test]
    fn kernel_written_set_matches_software_bitmap_over_random_workload() {
        let mut t = uffd_tracker();
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
        t.arm(anon.addr(), anon.addr() + 100 * P).unwrap();
        t.arm(anon.addr() + 100 * P, end(&anon)).unwrap();
        t.arm(fmap.addr(), end(&fmap)).unwrap();
        let mut maps = [anon, fmap];
        let mut epoch: Vec<DirtySet> = maps.iter().map(|m| DirtySet::new(m.addr(), m.len() / P)).collect();
        let mut total_reported = 0;
        for round in 0..50 {
            let mut wrote: Vec<DirtySet> = maps.iter().map(|m| DirtySet::new(m.addr(), m.len() / P)).collect();
            for _ in 0..rng.below(64) {
                let m = rng.below(2);
                let page = rng.below(maps[m].len() / P);
                let off = page * P + rng.below(P);
                match rng.below(8) {
                    0..=2 => {
                        maps[m].read(off);
                    }
                    3 => {
                        let len = 1 + rng.below(P).min(maps[m].len() - off - 1);
                        kernel_write(&mut maps[m], off, len, &src);
                        let a = maps[m].addr() + page * P;
                        let b = (maps[m].addr() + off + len).next_multiple_of(P);
                        wrote[m].insert_range(a, b);
                    }
                    _ => {
                        maps[m].write(off, round as u8);
                        let a = maps[m].addr() + page * P;
                        wrote[m].insert_range(a, a + P);
                    }
                }
            }
            for m in 0..2 {
                let (a, b) = (maps[m].addr(), end(&maps[m]));
                if round % 3 == 0 {
                    let peeked = set_of(&maps[m], &peek(&mut t, a, b));
                    assert!(peeked.is_subset_of(&wrote[m]) && wrote[m].is_subset_of(&peeked));
                }
                let kernel = set_of(&maps[m], &collect(&mut t, a, b));
                kernel.check_invariants();
                let missed: Vec<_> = wrote[m].iter_ranges().filter(|&(p, _)| !kernel.contains(p)).collect();
                let extra: Vec<_> = kernel.iter_ranges().filter(|&(p, _)| !wrote[m].contains(p)).collect();
                assert!(
                    wrote[m].is_subset_of(&kernel),
                    "round {round} map {m}: kernel missed {missed:x?}"
                );
                assert!(
                    kernel.is_subset_of(&wrote[m]),
                    "round {round} map {m}: kernel extra {extra:x?}"
                );
                assert_eq!(kernel.count(), wrote[m].count());
                total_reported += kernel.count();
                epoch[m].union_with(&kernel);
                assert!(kernel.is_subset_of(&epoch[m]));
            }
        }
        assert!(total_reported > 500, "the workload wrote too little to prove anything");
        assert!(epoch.iter().all(|e| e.count() > 0));
    }

    #[test]
    fn parent_keeps_tracking_across_fork() {
        let mut t = uffd_tracker();
        let mut map = ScratchMap::new(8 * P).unwrap();
        map.write(0, 1);
        t.arm(map.addr(), end(&map)).unwrap();
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
