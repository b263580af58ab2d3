//! Capturing a commit's dirty pages into its journal group: each page journaled whole
//! (`PAGES`) or as the words that changed against its base image (`DELTA`), and the base cache
//! updated from the same read. Runs under the commit lock while the allocator is paused: no
//! allocation from the global allocator, no panics.
//!
//! Per dirty page (the allocator paused, the tracker has just re-protected the page):
//!
//! 1. copy the live page (or the tracker's staged copy of it, hashed rung) once into the cache's
//!    spare frame (`load_spare`): the one read;
//! 2. find its base: the cached image (current epoch), else zeros if the journal has never
//!    held the page since the snapshot replay starts from (`zero_from`, below), else none;
//! 3. diff the copy against the base: unchanged → nothing journaled; small change → a `DELTA`
//!    entry whose words and post-image checksum come from the copy; else the copy whole;
//! 4. make the copy the page's cached image (the frames swap, no copy; a page unchanged against
//!    its cached image keeps it).
//!
//! Why the cached image always equals what replay has for the page is argued in
//! `docs/design.md` ("Base cache"). The two rules this file implements for it: at a snapshot
//! fork the cache forgets the pages written since that commit's collect (`snapshot_taken`,
//! uffd-wp rung) or starts a new epoch (`invalidate`: other rungs, and after any failed
//! write); and a page is
//! *known zero* only when it lies at or above `zero_from` (the extent of the snapshot replay
//! starts from, or of the last fork) and is not in `since_snap` (captured since then).
//!
//! # Invariants
//!
//! - `delta_pages + full_pages + same_pages` = pages captured with the cache on.
//! - Every `DELTA` entry emitted was computed from the spare frame, and the spare frame was
//!   then installed as the page's image (except under the planted bug `DeltaStaleBase`).

#![deny(unsafe_op_in_unsafe_fn)]

use crate::disk::format::delta::{encode_entry, entry_len, page_crc, MAX_USEFUL_ENTRY_LEN, PAGE_SIZE};
use crate::disk::journal::JournalWriter;
use crate::engine::page_diff::{diff_page, Diff, Runs, ZERO_PAGE};
use crate::mem::base_cache::{BaseCache, CacheCounters};
use crate::mem::dirty_set::DirtySet;

/// Page counts of the captures so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CaptureCounters {
    /// Pages journaled as `DELTA` entries.
    pub delta_pages: u64,
    /// Pages journaled whole.
    pub full_pages: u64,
    /// Dirty pages found unchanged against their base (nothing journaled).
    pub same_pages: u64,
}

/// The capture state kept in the commit state.
pub(crate) struct Capture {
    cache: Option<BaseCache>,
    runs: Runs,
    zero_from: u64,
    counters: CaptureCounters,
    stale_base_bug: bool,
}

impl Capture {
    /// A capture with `cache` (`None`: deltas off) whose known-zero pages start at region
    /// offset `zero_from`.
    pub(crate) fn new(cache: Option<BaseCache>, zero_from: u64, stale_base_bug: bool) -> Capture {
        Capture {
            cache,
            runs: Runs::new(),
            zero_from,
            counters: CaptureCounters::default(),
            stale_base_bug,
        }
    }

    /// Counters of the captures and of the cache.
    pub(crate) fn counters(&self) -> (CaptureCounters, CacheCounters) {
        (
            self.counters,
            self.cache.as_ref().map(|c| c.counters()).unwrap_or_default(),
        )
    }

    /// A snapshot image was taken at extent `extent` (or a write failed, with `extent` the
    /// current one): no cached image may serve as a base any more, and pages at or above
    /// `extent` not captured afterwards are zero in every image replay can start from.
    pub(crate) fn invalidate(&mut self, extent: u64) {
        if let Some(c) = &mut self.cache {
            c.invalidate_all();
        }
        self.zero_from = extent;
    }

    /// A snapshot image was taken at extent `extent`, and `written` are the pages (address
    /// ranges from `base`) the tracker reports written since this commit's collect, read after
    /// the fork: only their cached images can differ from the snapshot's (docs/design.md, "Base
    /// cache", case 2), so only they are forgotten; pages at or above `extent` not captured
    /// afterwards are zero in every image replay can start from.
    pub(crate) fn snapshot_taken(&mut self, extent: u64, base: usize, written: &[(usize, usize)]) {
        if let Some(c) = &mut self.cache {
            for &(a, b) in written {
                debug_assert!(a >= base && a <= b && (a - base) % PAGE_SIZE == 0);
                for p in (a..b).step_by(PAGE_SIZE) {
                    c.forget(((p - base) / PAGE_SIZE) as u64);
                }
            }
        }
        self.zero_from = extent;
    }

    /// Stores the current contents of `[a, b)` as the pages' images, up to the cache's
    /// capacity (seeding after replay: the memory then holds exactly what replay produced).
    ///
    /// # Safety
    ///
    /// `[a, b)` is page-aligned, mapped readable, and nothing writes it during the call.
    pub(crate) unsafe fn seed(&mut self, base: usize, a: usize, b: usize) -> bool {
        let Some(c) = &mut self.cache else {
            return false;
        };
        let mut p = a;
        while p < b {
            let index = ((p - base) / PAGE_SIZE) as u64;
            if c.holds(index) {
                // Replayed more than once: the newest replay (seeded first) already stored
                // the memory's contents, which are the same bytes.
                p += PAGE_SIZE;
                continue;
            }
            if c.len() >= c.capacity() {
                return false;
            }
            // SAFETY: p..p + PAGE_SIZE lies in [a, b), readable (caller), and the region is
            // not part of the cache's mapping.
            unsafe { c.load_spare(p as *const u8) };
            c.install_spare(index, None);
            p += PAGE_SIZE;
        }
        true
    }

    /// Captures the dirty pages `[a, b)` (addresses; `base` is the region's first byte) into
    /// the group `w` is encoding, reading their bytes from `src` (`a` itself, or a copy of the
    /// range made by the tracker: the hashed rung's staged pages). `since_snap` must not
    /// include `[a, b)` yet.
    ///
    /// # Safety
    ///
    /// `[a, b)` is page-aligned, inside the mapped region; `src` points to `b - a` bytes
    /// readable for the whole call, outside the base cache (the region, or a staging copy).
    /// Concurrent writes by other threads are allowed (each page is read once).
    pub(crate) unsafe fn capture(
        &mut self,
        w: &mut JournalWriter,
        base: usize,
        a: usize,
        b: usize,
        src: *const u8,
        since_snap: &DirtySet,
    ) {
        debug_assert!(a % PAGE_SIZE == 0 && b % PAGE_SIZE == 0 && a >= base && a < b);
        let cache = match &mut self.cache {
            Some(c) if w.accepts_delta() => c,
            _ => {
                // SAFETY: `src` holds b - a readable bytes (caller); concurrent writers race
                // only with this copy, and such pages are reported again by the next collect.
                let bytes = unsafe { std::slice::from_raw_parts(src, b - a) };
                w.add_pages((a - base) as u64, bytes);
                self.counters.full_pages += ((b - a) / PAGE_SIZE) as u64;
                return;
            }
        };
        let mut p = a;
        while p < b {
            let off = (p - base) as u64;
            let index = off / PAGE_SIZE as u64;
            // SAFETY: src + (p - a) .. + PAGE_SIZE lies in the b - a bytes at `src`: readable
            // (caller), outside the cache.
            unsafe { cache.load_spare(src.add(p - a)) };
            let hit = cache.lookup(index);
            let known_zero = hit.is_none() && off >= self.zero_from && !since_snap.contains(p);
            let diff = match (hit, known_zero) {
                (Some(s), _) => diff_page(
                    cache.spare_words(),
                    cache.image(s),
                    MAX_USEFUL_ENTRY_LEN,
                    &mut self.runs,
                ),
                (None, true) => diff_page(cache.spare_words(), &ZERO_PAGE, MAX_USEFUL_ENTRY_LEN, &mut self.runs),
                (None, false) => Diff::Full,
            };
            match diff {
                Diff::Same => self.counters.same_pages += 1,
                Diff::Delta => {
                    let new = cache.spare_bytes();
                    let len = entry_len(self.runs.len(), self.runs.words());
                    let out = w.delta_entry(len);
                    let ok = encode_entry(out, off, page_crc(new), self.runs.as_slice(), new);
                    debug_assert!(ok, "a diff's runs always encode");
                    self.counters.delta_pages += 1;
                }
                Diff::Full => {
                    w.add_pages(off, cache.spare_bytes());
                    self.counters.full_pages += 1;
                }
            }
            // An unchanged page with a cached image keeps it; an unchanged known-zero page is
            // stored too (zeros are its journaled image), so its next change is a delta.
            let keep_stale = self.stale_base_bug && hit.is_some() && diff == Diff::Delta;
            let store = match diff {
                Diff::Same => hit.is_none(),
                _ => !keep_stale,
            };
            if store {
                cache.install_spare(index, hit);
            }
            p += PAGE_SIZE;
        }
    }

    /// Checks the cache's invariants (tests and `verify`).
    #[allow(dead_code)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        self.cache.as_ref().map_or(Ok(()), |c| c.check_invariants())
    }
}
