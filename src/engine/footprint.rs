//! Returning clean pages to the kernel: after a snapshot is durable, the pages whose current
//! content equals that snapshot file are mapped from it again (`MAP_PRIVATE`), so they stop
//! being private anonymous memory and become page cache the kernel may drop and re-read.
//!
//! Why: every page written since open is a private anonymous copy that only swap could evict
//! (and servers rarely have swap), so without this the resident set grows to every page ever
//! written. With it, the anonymous part of the heap is about the pages written since the
//! newest snapshot's fork, and a heap larger than the memory a process may use works (its cold
//! pages are re-read from the snapshot file on a fault).
//!
//! # Which pages, and who is excluded (the full argument is docs/design.md, "Returning clean
//! pages")
//!
//! A step runs with the commit lock held, the allocator paused and, from the typed API only,
//! the root lock held exclusively by the committing thread (`Heap` takes it with `try_write`
//! after its commit; [`OpenOptions::remap_clean_pages`](crate::OpenOptions::remap_clean_pages)
//! documents that unguarded writers must turn the feature off). So no thread writes the region
//! during a step. Under that exclusion a page `p` below the newest snapshot's extent is
//! remapped only if:
//!
//! - it is present private anonymous memory (`PAGEMAP_SCAN`: present, not a file page), so
//!   there is memory to return;
//! - it is not in `since_snap` (captured by a commit after the newest snapshot's fork) and no
//!   snapshot writer is pending (whose fork set would also count);
//! - the tracker does not report it written since the last collect (`peek`).
//!
//! Such a page was not written since the fork of the newest snapshot, so it equals the page
//! the snapshot writer copied into the file. After the `MAP_FIXED` mapping the range has lost
//! its userfaultfd registration; it is armed again at once (register + write-protect), and a
//! `peek` over it must succeed (`PM_SCAN_CHECK_WPASYNC` fails on an unregistered range) and
//! report nothing. A failure to arm poisons the heap (writes there would go unreported).
//!
//! `GlobalHeap` never remaps: any thread may write any page at any time there, and no lock of
//! ours can exclude them.
//!
//! # Bounded work
//!
//! Runs shorter than [`MIN_RUN`] are skipped (each remapped run may split a mapping in two; the
//! bound keeps the number of mappings far below `vm.max_map_count`), at most [`MAX_RUNS`] runs
//! are remapped per step, and a step at a commit remaps at most [`STEP_BYTES`], continuing at
//! the next commit from where it stopped; `Heap::snapshot` runs steps until done.
//!
//! # Safety
//!
//! The `MAP_FIXED` replacement happens through `Region::remap_file`, inside our reservation,
//! over pages whose content equals the file's at the mapped offset, while no thread writes them
//! (above). Concurrent *readers* are harmless: `mmap` holds the address space's lock for
//! writing, so a reader faulting meanwhile waits and then reads the same bytes from the file.

use super::{lock, CommitState, Engine};
use crate::disk::format::snapshot::DATA_OFFSET;
use crate::error::Error;
use crate::mem::dirty_set::DirtySet;
use crate::mem::sysmem::SysVec;
use crate::sys;
use crate::sys::uffd::{self, PageRegion, Pagemap, ScanQuery};
use std::alloc::System;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Shortest run remapped: 64 KiB.
pub(crate) const MIN_RUN: usize = 16 * sys::OS_PAGE;
/// Most runs remapped in one step.
pub(crate) const MAX_RUNS: usize = 4096;
/// Most bytes remapped in one step at a commit: 256 MiB.
pub(crate) const STEP_BYTES: usize = 256 << 20;

/// Remapping progress, guarded by the commit lock.
#[derive(Debug, Default)]
pub(crate) struct Footprint {
    /// A snapshot was reaped whose clean pages have not all been considered yet.
    due: bool,
    /// Offset from `base` where the next step continues.
    cursor: usize,
}

impl Footprint {
    /// A new snapshot became the newest: start over from the beginning of the region.
    pub(super) fn snapshot_reaped(&mut self) {
        self.due = true;
        self.cursor = 0;
    }
}

/// `PAGE_IS_PFNZERO` of `PAGEMAP_SCAN` (Linux 6.7+): the page is the shared zero page (a read
/// of never-written anonymous memory), which costs no memory.
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// Runs `[a, b)` of present pages in `[start, end)` that are private anonymous memory (not
/// file pages, not the shared zero page),
/// appended to `out`. Allocates only from `System`.
fn anonymous_runs(pm: &Pagemap, start: usize, end: usize, out: &mut SysVec<(usize, usize)>) -> std::io::Result<()> {
    let mut vec: SysVec<PageRegion> = SysVec::new_in(System);
    vec.resize(1024, PageRegion::default());
    let mut cur = start;
    while cur < end {
        let q = ScanQuery {
            start: cur,
            end,
            flags: 0,
            category_mask: uffd::PAGE_IS_PRESENT,
            return_mask: uffd::PAGE_IS_PRESENT | uffd::PAGE_IS_FILE | PAGE_IS_PFNZERO,
        };
        let (n, walk_end) = pm.scan(&q, &mut vec)?;
        for r in &vec[..n] {
            if r.categories & (uffd::PAGE_IS_FILE | PAGE_IS_PFNZERO) == 0 {
                let (a, b) = (r.start as usize, r.end as usize);
                match out.last_mut() {
                    Some(last) if last.1 == a => last.1 = b,
                    _ => out.push((a, b)),
                }
            }
        }
        // As in the tracker: a vector with room left means the walk is complete.
        if n < vec.len() {
            break;
        }
        let next = walk_end.max(vec[n - 1].end as usize);
        if next <= cur {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        cur = next;
    }
    Ok(())
}

/// [`anonymous_runs`], falling back to plain `/proc/self/pagemap` entries where the kernel
/// lacks `PAGEMAP_SCAN` (before 6.7: there only the hashed rung runs, and remapping is what
/// keeps its collect cheap). The entries cannot tell the shared zero page (its frame number is
/// hidden from unprivileged readers), so the fallback also returns present zero-page runs;
/// remapping those is useless but harmless (a page neither written since the snapshot's fork
/// nor reported holds the snapshot's bytes, whatever it maps).
fn present_anonymous_runs(
    pm: &Pagemap,
    start: usize,
    end: usize,
    out: &mut SysVec<(usize, usize)>,
) -> std::io::Result<()> {
    let first = out.len();
    match anonymous_runs(pm, start, end, out) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP)) => {
            out.truncate(first);
            anonymous_runs_from_entries(start, end, out)
        }
        r => r,
    }
}

/// Runs of present, non-file pages of `[start, end)` from `/proc/self/pagemap` entries (any
/// kernel since 4.2), appended to `out`.
fn anonymous_runs_from_entries(start: usize, end: usize, out: &mut SysVec<(usize, usize)>) -> std::io::Result<()> {
    use crate::sys::pagemap::{PagemapEntries, PM_FILE, PM_PRESENT};
    const CHUNK: usize = 4096;
    let pm = PagemapEntries::open()?;
    let mut entries: SysVec<u64> = SysVec::new_in(System);
    entries.resize(CHUNK, 0);
    let first = out.len();
    let mut addr = start;
    while addr < end {
        let n = CHUNK.min((end - addr) / sys::OS_PAGE);
        pm.read(addr, &mut entries[..n])?;
        for (j, &e) in entries[..n].iter().enumerate() {
            if e & PM_PRESENT == 0 || e & PM_FILE != 0 {
                continue;
            }
            let a = addr + j * sys::OS_PAGE;
            let extend = out.len() > first && out.last().is_some_and(|l| l.1 == a);
            match out.last_mut() {
                Some(last) if extend => last.1 = a + sys::OS_PAGE,
                _ => out.push((a, a + sys::OS_PAGE)),
            }
        }
        addr += n * sys::OS_PAGE;
    }
    Ok(())
}

/// Bytes of `[start, end)` that are present private anonymous memory; 0 if the kernel cannot
/// tell (no `PAGEMAP_SCAN`).
pub(crate) fn anonymous_bytes(start: usize, end: usize) -> u64 {
    let Ok(pm) = Pagemap::open() else { return 0 };
    let mut runs = SysVec::new_in(System);
    if anonymous_runs(&pm, start, end, &mut runs).is_err() {
        return 0;
    }
    runs.iter().map(|&(a, b)| (b - a) as u64).sum()
}

impl Engine {
    /// Whether a remapping step has work to do (cheap; the typed API asks before taking the
    /// root lock exclusively).
    pub(crate) fn remap_due(&self) -> bool {
        self.opts.remap_clean_pages && !self.is_poisoned() && lock(&self.commit).footprint.due
    }

    /// Runs remapping steps: one bounded step, or (with `until_done`) steps until every clean
    /// page of the newest snapshot was considered.
    ///
    /// # Safety
    ///
    /// The caller excludes every writer of the region other than through this engine for the
    /// duration of the call: the typed API holds the root lock exclusively, and the option's
    /// contract forbids unguarded writes (see the module docs).
    pub(crate) unsafe fn remap_clean(&self, until_done: bool) {
        if !self.opts.remap_clean_pages {
            return;
        }
        let mut cs = lock(&self.commit);
        loop {
            if self.is_poisoned() || !cs.footprint.due {
                return;
            }
            let started = Instant::now();
            let more = self.remap_step(&mut cs);
            self.counters
                .last_remap_micros
                .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            if !more || !until_done {
                return;
            }
        }
    }

    /// One step; returns whether work is left.
    fn remap_step(&self, cs: &mut CommitState) -> bool {
        // A pending writer's fork set would have to count too; wait until it is reaped (which
        // makes a newer snapshot the source anyway).
        let Some(n) = cs.newest() else {
            cs.footprint.due = false;
            return false;
        };
        if cs.pending.is_some() {
            return false;
        }
        let (Some(h), Some(fd)) = (cs.snaps[n], cs.snap_files[n].map_fd()) else {
            cs.footprint.due = false;
            return false;
        };
        let Ok(pm) = Pagemap::open() else {
            cs.footprint.due = false;
            return false;
        };
        let base = self.base();
        let _pause = self.arena.pause();
        let limit = (h.extent as usize).min(self.arena.extent());
        let (lo, hi) = (base + cs.footprint.cursor.min(limit), base + limit);
        let mut tracker = lock(&self.grow.tracker);
        let mut anon = SysVec::new_in(System);
        let mut written = SysVec::new_in(System);
        if present_anonymous_runs(&pm, lo, hi, &mut anon).is_err() || tracker.peek(lo, hi, &mut written).is_err() {
            cs.footprint.due = false;
            return false;
        }
        let mut dirty = DirtySet::new(base, self.meta.max_size as usize / sys::OS_PAGE);
        for &(a, b) in written.iter() {
            dirty.insert_range(a, b);
        }
        let planted = self.opts.planted_remap_written_pages(); // tests only: the wrong set
        let clean = |p: usize| planted || (!cs.since_snap.contains(p) && !dirty.contains(p));
        let region = lock(&self.grow.region);
        let (mut runs, mut bytes, mut stop_at, mut failed) = (0usize, 0usize, None, false);
        'outer: for &(a, b) in anon.iter() {
            let mut p = a;
            while p < b {
                while p < b && !clean(p) {
                    p += sys::OS_PAGE;
                }
                let start = p;
                while p < b && clean(p) {
                    p += sys::OS_PAGE;
                }
                // A tail shorter than MIN_RUN after a split at the budget stays anonymous
                // until the next snapshot; harmless.
                let mut at = start;
                while p - at >= MIN_RUN {
                    if runs == MAX_RUNS || bytes >= STEP_BYTES {
                        stop_at = Some(at);
                        break 'outer;
                    }
                    let end = p.min(at + (STEP_BYTES - bytes));
                    if let Err(()) = self.remap_run(&region, &mut tracker, fd, at, end) {
                        stop_at = None;
                        failed = true;
                        break 'outer;
                    }
                    runs += 1;
                    bytes += end - at;
                    at = end;
                }
            }
        }
        self.counters
            .remapped_pages
            .fetch_add((bytes / sys::OS_PAGE) as u64, Ordering::Relaxed);
        if failed {
            cs.footprint.due = false;
            return false;
        }
        match stop_at {
            Some(at) => {
                cs.footprint.cursor = at - base;
                true
            }
            None => {
                cs.footprint.due = false;
                false
            }
        }
    }

    /// Maps `[a, b)` from the snapshot file `fd` and arms it again. `Err` when the step must
    /// stop (the heap may be poisoned then).
    fn remap_run(
        &self,
        region: &crate::mem::region::Region,
        tracker: &mut crate::mem::track::Tracker,
        fd: std::os::fd::RawFd,
        a: usize,
        b: usize,
    ) -> Result<(), ()> {
        let offset = DATA_OFFSET + (a - self.base()) as u64;
        // [a, b) lies inside the region's mapped part below the newest snapshot's extent,
        // whose file is at least DATA_OFFSET + extent long and only grows; every page of it is
        // present anonymous memory not written since that snapshot's fork (not in since_snap,
        // not reported by the tracker, no writer pending), so it equals the file's page.
        // SAFETY: the range and contents are as above, and no thread writes the region now
        // (the caller's exclusion, the allocator pause).
        let remapped = unsafe { region.remap_file(a, b - a, fd, offset) };
        if let Err(e) = remapped {
            // The kernel keeps the old mapping when mmap fails (since Linux 6.12 it gathers the
            // old mappings first and restores them on error): check that the range is still
            // tracked, and stop remapping for this handle.
            let mut probe = SysVec::new_in(System);
            if tracker.peek(a, b, &mut probe).is_err() {
                self.poison(Error::io("mmap (remap clean pages)", "", e));
            }
            return Err(());
        }
        let mut check = SysVec::new_in(System);
        // SAFETY: [a, b) lies in the region's mapped extent, which stays mapped readable until
        // the engine (and the tracker with it) is dropped or detached with its region.
        let armed = unsafe { tracker.arm(a, b) }.and_then(|()| tracker.peek(a, b, &mut check));
        if let Err(e) = armed {
            self.poison(Error::io("UFFDIO_REGISTER (re-arm remapped pages)", "", e));
            return Err(());
        }
        debug_assert!(check.is_empty(), "freshly remapped pages reported written");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pagemap-entries fallback finds the same written runs as `PAGEMAP_SCAN` on a mapping
    /// of written and untouched anonymous pages (no zero pages: the fallback cannot tell those).
    #[test]
    fn entries_fallback_matches_pagemap_scan() {
        let pages = 64;
        let mut map = crate::sys::uffd::ScratchMap::new(pages * sys::OS_PAGE).unwrap();
        let a = map.addr();
        for p in [0usize, 1, 2, 7, 20, 21, 40, 63] {
            map.write(p * sys::OS_PAGE + 8, 1);
        }
        let mut from_entries = SysVec::new_in(System);
        anonymous_runs_from_entries(a, a + pages * sys::OS_PAGE, &mut from_entries).unwrap();
        let want: std::vec::Vec<(usize, usize)> = [(0, 3), (7, 8), (20, 22), (40, 41), (63, 64)]
            .iter()
            .map(|&(x, y)| (a + x * sys::OS_PAGE, a + y * sys::OS_PAGE))
            .collect();
        assert_eq!(from_entries.as_slice(), want.as_slice());
        if let Ok(pm) = Pagemap::open() {
            let mut scanned = SysVec::new_in(System);
            if anonymous_runs(&pm, a, a + pages * sys::OS_PAGE, &mut scanned).is_ok() {
                assert_eq!(scanned.as_slice(), want.as_slice());
            }
        }
    }
}
