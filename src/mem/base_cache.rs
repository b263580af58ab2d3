//! The base cache: for recently committed pages, a copy of the image the journal now holds for
//! them (what replay reconstructs at this point), so that the next commit can journal only the
//! words that changed (`DELTA` records). Process-local memory with a fixed budget, evicted by
//! CLOCK; owned by the commit state and used only under the commit lock.
//!
//! Memory: one private anonymous mapping (`sys::map_private_no_fork`: `MAP_NORESERVE`, so
//! untouched parts cost nothing, and `MADV_DONTFORK`), so the snapshot writer child neither inherits nor copies it.
//! It asks for transparent huge pages (`MADV_HUGEPAGE`, best effort): the commit path reads
//! scattered 4 KiB images of a cache of tens of MiB, and with 4 KiB pages nearly each one cost a
//! TLB miss whose page walk missed the caches too (measured with `commit_breakdown`, YCSB A
//! batches, `Durability::Eventual`: commit CPU median 147-151 -> 138-145 us). Memory then grows in
//! 2 MiB steps, still within the mapping and so within the budget. Never the
//! global allocator: snapheap may be the global allocator, and the commit path runs while it
//! is paused. Layout of the mapping: `slots + 1` page frames (one is the *spare*: the commit
//! path copies a live page into it, diffs it against the slot's frame, then the two frames
//! swap roles, so updating the base costs no copy), then the slot array, then the hash table.
//!
//! Exactness (why a slot's frame equals what replay has for its page) is argued in
//! `docs/design.md` ("Base cache"); this module only stores what it is given. Entries carry
//! the *epoch* in which they were filled; [`BaseCache::invalidate_all`] starts a new epoch
//! (at every snapshot fork and after a failed write), and entries of older epochs never hit.
//!
//! # Invariants
//!
//! - `used <= slots`; slots `[0, used)` have `page != 0` (page index + 1) and exactly one table
//!   entry each, at the end of its probe chain from `hash(page)` without an empty entry between;
//!   the table has no other entries, and `tcap >= 2 * slots` is a power of two.
//! - The frame indexes of the `used` slots and `spare` are distinct, all `<= slots`.
//! - `hits + misses` = lookups; `evictions` counts current-epoch entries dropped for room.
//!
//! # Safety
//!
//! The mapping is owned by this value and unmapped on drop; every pointer derived from it stays
//! within `[mem, mem + map_len)`. Frames are page-aligned, so they may be viewed as `[u64; 512]`.

use std::io;
use std::mem::size_of;

/// Bytes in a frame (one OS page).
pub(crate) const FRAME: usize = 4096;
/// A frame viewed as words.
pub(crate) type FrameWords = [u64; FRAME / 8];

#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    /// Page index + 1; 0 = empty.
    page: u64,
    /// Frame holding the image.
    frame: u32,
    /// Epoch in which the image was stored.
    epoch: u32,
    /// CLOCK reference bit.
    referenced: u32,
}

/// Per-slot cost in the budget: its frame, its slot, two table entries.
const SLOT_COST: usize = FRAME + size_of::<Slot>() + 2 * size_of::<u32>();

/// Counters of a cache, for `Stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheCounters {
    /// Lookups that found a current image.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Current images dropped to make room.
    pub evictions: u64,
    /// Memory the cache has touched: frames in use (and the spare), slots, the table.
    pub bytes: u64,
}

/// See the module documentation.
pub(crate) struct BaseCache {
    mem: *mut u8,
    map_len: usize,
    slots_ptr: *mut Slot,
    table: *mut u32,
    slots: u32,
    tmask: u32,
    tbits: u32,
    used: u32,
    hand: u32,
    spare: u32,
    epoch: u32,
    counters: CacheCounters,
}

// SAFETY: the cache owns its mapping exclusively; nothing else holds pointers into it, so moving
// it to another thread moves the only access path (it is used under the commit lock).
unsafe impl Send for BaseCache {}

impl BaseCache {
    /// A cache of at most `budget` bytes, holding at most `max_pages` pages (no point in more
    /// slots than the heap has pages). `Ok(None)` when the budget does not fit one slot (deltas
    /// are then off).
    pub(crate) fn new(budget: u64, max_pages: usize) -> io::Result<Option<BaseCache>> {
        let budget = usize::try_from(budget).unwrap_or(usize::MAX);
        let Some(room) = budget.checked_sub(FRAME) else {
            return Ok(None);
        };
        let mut slots = (room / SLOT_COST).min(max_pages).min(u32::MAX as usize / 4);
        // The table rounds up to a power of two and the mapping to a page: shrink until the
        // whole mapping fits the budget.
        let lens = |slots: usize| {
            let tcap = (2 * slots).next_power_of_two();
            let frames_len = (slots + 1) * FRAME;
            let slots_len = slots * size_of::<Slot>();
            let map_len = (frames_len + slots_len + tcap * size_of::<u32>()).next_multiple_of(FRAME);
            (tcap, frames_len, slots_len, map_len)
        };
        while slots > 0 && lens(slots).3 > budget {
            slots -= 1;
        }
        if slots == 0 {
            return Ok(None);
        }
        let (tcap, frames_len, slots_len, map_len) = lens(slots);
        let mem = crate::sys::map_private_no_fork(map_len)? as *mut u8;
        // Best effort: the commit path reads scattered images of a cache of tens of MiB, and with
        // 4 KiB pages nearly every image costs a TLB miss whose page walk misses the caches too.
        let _ = crate::sys::huge_pages(mem as usize, map_len);
        let tbits = tcap.trailing_zeros();
        Ok(Some(BaseCache {
            mem,
            map_len,
            // SAFETY: both offsets are inside the mapping (map_len covers them), and the
            // mapping is page-aligned, so the slot array (after whole frames) is aligned for
            // `Slot` and the table (after it, a multiple of 8 bytes on) for `u32`.
            slots_ptr: unsafe { mem.add(frames_len) } as *mut Slot,
            // SAFETY: as above.
            table: unsafe { mem.add(frames_len + slots_len) } as *mut u32,
            slots: slots as u32,
            tmask: (tcap - 1) as u32,
            tbits,
            used: 0,
            hand: 0,
            spare: slots as u32,
            epoch: 1,
            counters: CacheCounters::default(),
        }))
    }

    /// Faults in, in one system call, the frames that storing `pages` pages into an empty
    /// cache uses (slots take frames in order, the spare starts as the last one), so that
    /// seeding at open does not take a page fault per page. Best effort: a kernel without
    /// `MADV_POPULATE_WRITE` faults them in as they are written.
    pub(crate) fn prefault(&self, pages: usize) {
        let n = pages.min(self.slots as usize);
        let _ = crate::sys::populate_write(self.mem as usize, n * FRAME);
        let _ = crate::sys::populate_write(self.frame_ptr(self.slots) as usize, FRAME);
    }

    /// Number of slots (the most pages it holds).
    pub(crate) fn capacity(&self) -> usize {
        self.slots as usize
    }

    /// Number of slots in use.
    pub(crate) fn len(&self) -> usize {
        self.used as usize
    }

    /// Counters, with `bytes` computed now.
    pub(crate) fn counters(&self) -> CacheCounters {
        let bytes = (self.used as usize + 1) * FRAME
            + self.used as usize * size_of::<Slot>()
            + (self.tmask as usize + 1) * size_of::<u32>();
        CacheCounters {
            bytes: bytes as u64,
            ..self.counters
        }
    }

    fn slot(&self, i: u32) -> &Slot {
        debug_assert!(i < self.used);
        // SAFETY: i < used <= slots, so the slot lies inside the slot array; slots below `used`
        // were initialised when taken; `&self` excludes writers.
        unsafe { &*self.slots_ptr.add(i as usize) }
    }

    fn slot_mut(&mut self, i: u32) -> &mut Slot {
        debug_assert!(i < self.slots);
        // SAFETY: i < slots, so the slot lies inside the slot array (zero-initialised memory,
        // a valid `Slot`); `&mut self` makes the reference unique.
        unsafe { &mut *self.slots_ptr.add(i as usize) }
    }

    fn entry(&self, t: u32) -> u32 {
        // SAFETY: t <= tmask < tcap, inside the table; `&self` excludes writers.
        unsafe { *self.table.add(t as usize) }
    }

    fn set_entry(&mut self, t: u32, v: u32) {
        // SAFETY: t <= tmask < tcap, inside the table; `&mut self` makes the write exclusive.
        unsafe { *self.table.add(t as usize) = v }
    }

    fn home(&self, key: u64) -> u32 {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.tbits)) as u32 & self.tmask
    }

    /// The table position holding slot `key`'s entry, if any.
    fn find_entry(&self, key: u64) -> Option<u32> {
        let mut t = self.home(key);
        loop {
            let e = self.entry(t);
            if e == 0 {
                return None;
            }
            if self.slot(e - 1).page == key {
                return Some(t);
            }
            t = (t + 1) & self.tmask;
        }
    }

    fn remove_entry(&mut self, mut t: u32) {
        // Backward-shift deletion keeps every chain free of holes.
        loop {
            self.set_entry(t, 0);
            let mut n = (t + 1) & self.tmask;
            loop {
                let e = self.entry(n);
                if e == 0 {
                    return;
                }
                let h = self.home(self.slot(e - 1).page);
                // Move `e` into the hole at `t` if its home is not in (t, n].
                let dist_home = n.wrapping_sub(h) & self.tmask;
                let dist_hole = n.wrapping_sub(t) & self.tmask;
                if dist_home >= dist_hole {
                    self.set_entry(t, e);
                    t = n;
                    break;
                }
                n = (n + 1) & self.tmask;
            }
        }
    }

    fn insert_entry(&mut self, key: u64, slot: u32) {
        let mut t = self.home(key);
        while self.entry(t) != 0 {
            t = (t + 1) & self.tmask;
        }
        self.set_entry(t, slot + 1);
    }

    /// Whether `page` has a current image (no counters change; seeding uses it to copy each
    /// replayed page once).
    pub(crate) fn holds(&self, page: u64) -> bool {
        self.find_entry(page + 1)
            .map(|t| self.entry(t) - 1)
            .is_some_and(|s| self.slot(s).epoch == self.epoch)
    }

    /// The slot holding a current image of page `page` (an index: region offset / 4096), if
    /// any; counts a hit or a miss and marks the slot referenced.
    pub(crate) fn lookup(&mut self, page: u64) -> Option<u32> {
        let hit = self
            .find_entry(page + 1)
            .map(|t| self.entry(t) - 1)
            .filter(|&s| self.slot(s).epoch == self.epoch);
        match hit {
            Some(s) => {
                self.counters.hits += 1;
                self.slot_mut(s).referenced = 1;
            }
            None => self.counters.misses += 1,
        }
        hit
    }

    fn frame_ptr(&self, frame: u32) -> *mut u8 {
        debug_assert!(frame <= self.slots);
        // SAFETY: frame <= slots, and the mapping starts with slots + 1 frames.
        unsafe { self.mem.add(frame as usize * FRAME) }
    }

    /// The image stored in slot `slot` (from [`Self::lookup`]).
    pub(crate) fn image(&self, slot: u32) -> &FrameWords {
        let f = self.slot(slot).frame;
        // SAFETY: the frame lies in the mapping, is page-aligned (so aligned for u64) and is
        // initialised memory (anonymous pages read as zero); `&self` excludes writers.
        unsafe { &*(self.frame_ptr(f) as *const FrameWords) }
    }

    /// The spare frame as words (what [`Self::load_spare`] copied).
    pub(crate) fn spare_words(&self) -> &FrameWords {
        // SAFETY: as in `image`.
        unsafe { &*(self.frame_ptr(self.spare) as *const FrameWords) }
    }

    /// The spare frame as bytes.
    pub(crate) fn spare_bytes(&self) -> &[u8] {
        // SAFETY: as in `image`; FRAME bytes from the frame's start lie in the mapping.
        unsafe { std::slice::from_raw_parts(self.frame_ptr(self.spare), FRAME) }
    }

    /// Copies one page into the spare frame: the one read of the page that the commit path
    /// both journals and keeps as the new base.
    ///
    /// # Safety
    ///
    /// `src` is valid for reads of [`FRAME`] bytes and does not overlap the cache's mapping.
    /// (Other threads may write it meanwhile; the copy then holds some mix of old and new
    /// words, which is fine: the tracker reports the page again at the next commit.)
    pub(crate) unsafe fn load_spare(&mut self, src: *const u8) {
        let dst = self.frame_ptr(self.spare);
        // SAFETY: the caller guarantees `src` is readable for FRAME bytes and disjoint from the
        // mapping; `dst` is a whole frame of the mapping, which `&mut self` owns.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, FRAME) };
    }

    /// Makes the spare frame's contents the stored image of `page`: `slot` is the page's slot
    /// from [`Self::lookup`], if it had a current image; otherwise the page's stale slot is
    /// reused or a slot is taken (a free one, else the CLOCK victim). The old frame becomes
    /// the spare. Costs no copy.
    pub(crate) fn install_spare(&mut self, page: u64, slot: Option<u32>) {
        let key = page + 1;
        let s = match slot {
            Some(s) => s,
            None => match self.find_entry(key) {
                Some(t) => self.entry(t) - 1,
                None => {
                    let s = self.take_slot();
                    self.slot_mut(s).page = key;
                    self.insert_entry(key, s);
                    s
                }
            },
        };
        let epoch = self.epoch;
        let spare = self.spare;
        let sl = self.slot_mut(s);
        debug_assert_eq!(sl.page, key);
        let old = std::mem::replace(&mut sl.frame, spare);
        sl.epoch = epoch;
        sl.referenced = 1;
        self.spare = old;
    }

    /// A slot with its table entry removed, ready for a new page.
    fn take_slot(&mut self) -> u32 {
        if self.used < self.slots {
            let s = self.used;
            let frame = s;
            *self.slot_mut(s) = Slot {
                page: 0,
                frame,
                epoch: 0,
                referenced: 0,
            };
            self.used += 1;
            return s;
        }
        // CLOCK: the first slot with its reference bit clear (or of an old epoch), clearing
        // bits on the way; ends within two sweeps.
        let s = loop {
            let s = self.hand;
            self.hand = (self.hand + 1) % self.slots;
            let epoch = self.epoch;
            let sl = self.slot_mut(s);
            if sl.epoch != epoch {
                break s;
            }
            if sl.referenced == 0 {
                self.counters.evictions += 1;
                break s;
            }
            sl.referenced = 0;
        };
        let key = self.slot(s).page;
        if let Some(t) = self.find_entry(key) {
            self.remove_entry(t);
        }
        self.slot_mut(s).page = 0;
        s
    }

    /// Makes the stored image of `page`, if any, stale (epoch 0 is never current): it does not
    /// hit again, and its slot is reused by the page's next store.
    pub(crate) fn forget(&mut self, page: u64) {
        if let Some(t) = self.find_entry(page + 1) {
            let s = self.entry(t) - 1;
            self.slot_mut(s).epoch = 0;
        }
    }

    /// Makes every stored image stale (a new epoch): none of them hits again. Costs O(1).
    pub(crate) fn invalidate_all(&mut self) {
        if self.epoch == u32::MAX {
            // Wrapping would revive old entries: forget everything instead.
            for t in 0..=self.tmask {
                self.set_entry(t, 0);
            }
            self.used = 0;
            self.hand = 0;
            self.spare = self.slots;
            self.epoch = 1;
        } else {
            self.epoch += 1;
        }
    }

    /// Checks the invariants of the module documentation (tests and `verify`).
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut frames = vec![false; self.slots as usize + 1];
        frames[self.spare as usize] = true;
        let mut entries = 0;
        for t in 0..=self.tmask {
            if self.entry(t) != 0 {
                entries += 1;
            }
        }
        if entries != self.used {
            return Err(format!("{entries} table entries for {} slots", self.used));
        }
        for s in 0..self.used {
            let sl = self.slot(s);
            if sl.page == 0 || self.find_entry(sl.page).map(|t| self.entry(t) - 1) != Some(s) {
                return Err(format!("slot {s} (page {}) is not reachable in the table", sl.page));
            }
            let f = sl.frame as usize;
            if f > self.slots as usize || std::mem::replace(&mut frames[f], true) {
                return Err(format!("slot {s} has frame {f}, used twice or out of range"));
            }
        }
        Ok(())
    }
}

impl Drop for BaseCache {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by `map_private_no_fork` with this length, is owned
        // by the cache and nothing refers into it once the cache is dropped.
        let _ = unsafe { crate::sys::unmap(self.mem as usize, self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn page_of(v: u64) -> Vec<u8> {
        (0..FRAME).map(|i| (v as usize + i * 7) as u8).collect()
    }

    fn store(c: &mut BaseCache, page: u64, v: u64) {
        let img = page_of(v);
        let hit = c.lookup(page);
        // SAFETY: img is FRAME bytes of ordinary memory.
        unsafe { c.load_spare(img.as_ptr()) };
        c.install_spare(page, hit);
    }

    fn words_to_bytes(w: &FrameWords) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn budget_decides_the_slot_count_and_zero_disables() {
        assert!(BaseCache::new(0, 1000).unwrap().is_none());
        assert!(BaseCache::new(FRAME as u64, 1000).unwrap().is_none());
        let c = BaseCache::new(64 << 20, usize::MAX).unwrap().unwrap();
        assert!(c.capacity() <= ((64 << 20) - FRAME) / SLOT_COST && c.capacity() > 16_000);
        assert!(c.map_len as u64 <= 64 << 20, "mapping {} exceeds the budget", c.map_len);
        let c = BaseCache::new(64 << 20, 10).unwrap().unwrap();
        assert_eq!(c.capacity(), 10);
    }

    #[test]
    fn stored_images_are_returned_and_updated_without_copies() {
        let mut c = BaseCache::new(1 << 20, usize::MAX).unwrap().unwrap();
        for p in 0..50 {
            store(&mut c, p * 3, p);
        }
        for p in 0..50 {
            let s = c.lookup(p * 3).expect("hit");
            assert_eq!(words_to_bytes(c.image(s)), page_of(p));
        }
        store(&mut c, 6, 99);
        let s = c.lookup(6).unwrap();
        assert_eq!(words_to_bytes(c.image(s)), page_of(99));
        assert!(c.lookup(1).is_none());
        c.check_invariants().unwrap();
        let k = c.counters();
        assert_eq!((k.hits, k.misses, k.evictions), (52, 50 + 1, 0));
    }

    #[test]
    fn invalidate_all_makes_every_image_stale_and_stale_slots_are_reused() {
        let mut c = BaseCache::new(1 << 20, usize::MAX).unwrap().unwrap();
        store(&mut c, 1, 1);
        store(&mut c, 2, 2);
        c.invalidate_all();
        assert!(c.lookup(1).is_none() && c.lookup(2).is_none());
        store(&mut c, 1, 5);
        let s = c.lookup(1).unwrap();
        assert_eq!(words_to_bytes(c.image(s)), page_of(5));
        assert_eq!(c.used, 2, "the stale slot was reused");
        c.check_invariants().unwrap();
        c.epoch = u32::MAX;
        c.invalidate_all();
        assert_eq!(c.used, 0);
        assert!(c.lookup(1).is_none());
        c.check_invariants().unwrap();
    }

    #[test]
    fn forget_makes_one_image_stale_and_keeps_the_others() {
        let mut c = BaseCache::new(1 << 20, usize::MAX).unwrap().unwrap();
        store(&mut c, 1, 1);
        store(&mut c, 2, 2);
        c.forget(1);
        c.forget(7); // not stored: nothing happens
        assert!(c.lookup(1).is_none());
        let s = c.lookup(2).expect("the other image still hits");
        assert_eq!(words_to_bytes(c.image(s)), page_of(2));
        store(&mut c, 1, 9);
        let s = c.lookup(1).unwrap();
        assert_eq!(words_to_bytes(c.image(s)), page_of(9));
        assert_eq!(c.used, 2, "the forgotten slot was reused");
        c.check_invariants().unwrap();
    }

    #[test]
    fn clock_evicts_within_capacity_against_a_model() {
        let budget = 2 * FRAME + 64 * SLOT_COST;
        let mut c = BaseCache::new(budget as u64, 64).unwrap().unwrap();
        assert_eq!(c.capacity(), 64);
        let mut model: HashMap<u64, u64> = HashMap::new();
        let mut x = 12345u64;
        for i in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A hot set of 40 pages and a cold tail of 2,000.
            let page = if x % 3 == 0 { x % 2000 } else { x % 40 };
            if let Some(&v) = model.get(&page) {
                if let Some(s) = c.lookup(page) {
                    assert_eq!(words_to_bytes(c.image(s)), page_of(v), "page {page}");
                }
            }
            store(&mut c, page, i);
            model.insert(page, i);
            if i % 1000 == 0 {
                c.check_invariants().unwrap();
                if i == 10_000 {
                    c.invalidate_all();
                }
            }
        }
        c.check_invariants().unwrap();
        let k = c.counters();
        assert!(k.evictions > 0 && k.hits > 0);
        assert!(k.bytes <= c.map_len as u64 && c.map_len <= budget, "{k:?}");
    }

    #[test]
    fn the_mapping_is_not_inherited_by_a_fork_child() {
        let mut c = BaseCache::new(1 << 20, usize::MAX).unwrap().unwrap();
        store(&mut c, 1, 1);
        let addr = c.mem as usize;
        // SAFETY: the child only calls madvise and _exit (async-signal-safe). madvise on a
        // range that is not mapped fails with ENOMEM: that is how it checks the mapping is gone.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: madvise on an address range has no memory-safety effect.
            let r = unsafe { libc::madvise(addr as *mut libc::c_void, FRAME, libc::MADV_NORMAL) };
            // SAFETY: _exit is always safe to call.
            unsafe { libc::_exit(if r != 0 { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: pid is our child; status is a valid out-pointer.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child saw the cache mapped"
        );
    }
}
