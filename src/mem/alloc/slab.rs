//! Slabs: runs of slices serving one size class, their free lists, ownership and pools.
//!
//! A slab's blocks are in exactly one of: handed out (counted by `used`), on `free` or
//! `local_free` (owner only), on `thread_free` (pushed by other threads, still counted in
//! `used` until the owner collects them), or never carved (`reserved..capacity`). Free-list
//! links are stored in the first word of each free block and always point to block starts.
//!
//! `thread_free` holds the list head in its high bits and the slab's state in its low two:
//! [`OWNED`] (some heap's current or retained slab), [`ABANDONED`] (full, unowned, in no list) or
//! [`POOLED`] (unowned, on its class's pool). A remote free into an abandoned slab moves it
//! to `POOLED` in the same CAS that pushes the block and then inserts it into the pool, so a
//! slab is pooled exactly once without a second handshake.
//!
//! # Invariants
//!
//! - `used + |free| + |local_free| + (capacity - reserved) == capacity`, `|thread_free| <= used`.
//! - state `OWNED` ⇔ `owner != 0` (outside allocator calls); state `POOLED` ⇔ on a pool list.
//! - A pooled slab has at least one free block (`free`, `local_free`, `thread_free` or bump).
//!
//! # Safety
//!
//! `free`, `local_free`, `used` and `reserved` are touched only by the owner heap's thread
//! inside an allocator call, or by a thread that has just taken the slab out of a pool (and
//! so owns it). Other threads touch only `thread_free` (CAS) and read immutable fields of a
//! slab that holds a block they are freeing.

use std::sync::atomic::{AtomicUsize, Ordering::*};

use super::arena::Arena;
use super::pause::SpinLock;
use super::segment::{SegmentHeader, SlabDesc, DESC_OFFSET, D_CONT, D_SLAB, SEGMENT, SLICE};
use super::size_class::{block_size, capacity, slab_slices, NUM_CLASSES};
use super::thread_heap::{empty_desc, ThreadHeap, RETAIN};

/// `thread_free` state: current or retained slab of some heap.
pub(crate) const OWNED: usize = 0;
/// `thread_free` state: full, unowned, in no list; the next remote free pools it.
pub(crate) const ABANDONED: usize = 1;
/// `thread_free` state: unowned, on its class's pool.
pub(crate) const POOLED: usize = 2;
/// Low bits of `thread_free` that hold the state.
pub(crate) const STATE_MASK: usize = 3;
/// Low bit of `owner`: the slab has handed out aligned interior pointers, so frees must
/// round down to a block start (the fast free path bails out on it).
pub(crate) const OWNER_ALIGNED: usize = 1;

/// Bytes of fresh blocks threaded onto the free list at a time (one OS page).
const EXTEND_BYTES: usize = 4096;

/// Sweep the pools for empty slabs before taking a new segment once this many slabs have
/// been pooled since the last sweep, relative to the pooled total (see `sweep_due`).
const SWEEP_RATIO: usize = 8;

/// A process-local stack of unowned slabs of one class with free blocks.
pub(crate) struct Pool {
    lock: SpinLock,
    head: AtomicUsize,
}

impl Pool {
    /// The first descriptor on the list (for the validator; callers pause first).
    pub(crate) fn head(&self) -> *mut SlabDesc {
        self.head.load(Acquire) as *mut SlabDesc
    }
}

/// First byte of the slab whose head descriptor is `d`.
#[inline(always)]
pub(crate) fn slab_start(d: *const SlabDesc) -> usize {
    let a = d as usize;
    let seg = a & !(SEGMENT - 1);
    seg + (a - seg - DESC_OFFSET) / std::mem::size_of::<SlabDesc>() * SLICE
}

/// The descriptor of the slice containing `p`.
#[inline(always)]
pub(crate) fn desc_of(p: usize) -> *mut SlabDesc {
    let seg = p & !(SEGMENT - 1);
    (seg + DESC_OFFSET + ((p - seg) >> super::segment::SLICE_SHIFT) * std::mem::size_of::<SlabDesc>()) as *mut SlabDesc
}

/// Pops a block from `free` (which must be non-empty). Cost: two loads, two stores.
///
/// # Safety
///
/// The caller owns `d` and `(*d).free != 0`.
#[inline(always)]
pub(crate) unsafe fn pop(d: *mut SlabDesc) -> usize {
    // SAFETY: the caller owns d and free is a valid non-empty list of this slab's blocks.
    unsafe {
        let b = (*d).free;
        debug_assert!(b != 0);
        (*d).free = *(b as *const usize);
        (*d).used += 1;
        b
    }
}

/// Pushes `block` on the owner's `local_free`.
///
/// # Safety
///
/// The caller owns `d` and `block` is a live block start of `d` being freed.
#[inline(always)]
pub(crate) unsafe fn push_local(d: *mut SlabDesc, block: usize) {
    // SAFETY: as documented; the block's first word is free for the link.
    unsafe {
        *(block as *mut usize) = (*d).local_free;
        (*d).local_free = block;
        debug_assert!((*d).used > 0);
        (*d).used -= 1;
    }
}

/// Moves the `thread_free` list onto `free`, subtracting its length from `used`. Returns
/// whether anything was collected.
///
/// # Safety
///
/// The caller owns `d` and `(*d).free == 0`... or any value: the list is appended in front.
unsafe fn collect(d: *mut SlabDesc) -> bool {
    // SAFETY: the caller owns d; thread_free links were written before the Release CAS that
    // published each block, and fetch_and acquires them.
    unsafe {
        if (*d).thread_free.load(Relaxed) & !STATE_MASK == 0 {
            return false;
        }
        let head = (*d).thread_free.fetch_and(STATE_MASK, AcqRel) & !STATE_MASK;
        let mut n = 1u32;
        let mut tail = head;
        loop {
            let next = *(tail as *const usize);
            if next == 0 {
                break;
            }
            tail = next;
            n += 1;
        }
        *(tail as *mut usize) = (*d).free;
        (*d).free = head;
        debug_assert!((*d).used >= n);
        (*d).used -= n;
        true
    }
}

/// Threads up to a page's worth of never-used blocks onto `free`. Returns false when the
/// slab has none left.
///
/// # Safety
///
/// The caller owns `d`.
unsafe fn extend(d: *mut SlabDesc) -> bool {
    // SAFETY: the caller owns d; blocks reserved..capacity lie inside the slab and are unused.
    unsafe {
        let (cap, r) = ((*d).capacity as usize, (*d).reserved as usize);
        if r >= cap {
            return false;
        }
        let bs = (*d).block_size as usize;
        let n = (cap - r).min((EXTEND_BYTES / bs).max(1));
        let start = slab_start(d) + r * bs;
        for i in 0..n - 1 {
            *((start + i * bs) as *mut usize) = start + (i + 1) * bs;
        }
        *((start + (n - 1) * bs) as *mut usize) = (*d).free;
        (*d).free = start;
        (*d).reserved = (r + n) as u32;
        true
    }
}

/// Makes `free` non-empty if the slab has any free block: local frees, then remote frees,
/// then fresh blocks.
///
/// # Safety
///
/// The caller owns `d`.
pub(crate) unsafe fn refill(d: *mut SlabDesc) -> bool {
    // SAFETY: the caller owns d.
    unsafe {
        debug_assert!(
            (*d).kind == D_SLAB && (*d).used <= (*d).reserved && (*d).reserved <= (*d).capacity,
            "slab counters out of range at {:#x}",
            slab_start(d)
        );
        if (*d).free != 0 {
            return true;
        }
        if (*d).local_free != 0 {
            (*d).free = (*d).local_free;
            (*d).local_free = 0;
            return true;
        }
        collect(d) || extend(d)
    }
}

/// Whether the owned slab `d` has a free block somewhere (without collecting).
///
/// # Safety
///
/// The caller owns `d` or the arena is paused.
pub(crate) unsafe fn has_free(d: *const SlabDesc) -> bool {
    // SAFETY: as documented.
    unsafe {
        (*d).free != 0
            || (*d).local_free != 0
            || (*d).thread_free.load(Relaxed) & !STATE_MASK != 0
            || (*d).reserved < (*d).capacity
    }
}

impl Arena {
    /// Allocates one block of class `c` for heap `h`: the slow path behind the inline pop.
    /// Returns the block and its slab, or `None` when the region is exhausted.
    ///
    /// # Safety
    ///
    /// `h` is the calling thread's heap of this arena and the caller is inside an allocator
    /// call (`busy == 1`).
    pub(crate) unsafe fn alloc_block(&self, h: *mut ThreadHeap, c: usize) -> Option<(usize, *mut SlabDesc)> {
        // SAFETY: h is ours (contract); current slabs are owned by h; pooled slabs become
        // ours when popped.
        unsafe {
            let d = (*h).current[c];
            if d != empty_desc() {
                if refill(d) {
                    return Some((pop(d), d));
                }
                // d is full. Keep owning it among the retained slabs (frees into it by this
                // thread stay on the fast path), switching to a retained slab that has free
                // blocks again, or else evicting the oldest retained slab to the pools.
                let slots = &mut (*h).retained[c];
                for slot in slots.iter_mut() {
                    let r = *slot;
                    if !r.is_null() && refill(r) {
                        *slot = d;
                        (*h).current[c] = r;
                        return Some((pop(r), r));
                    }
                }
                let i = (*h).retain_next[c] as usize % RETAIN;
                (*h).retain_next[c] = ((i + 1) % RETAIN) as u8;
                let old = std::mem::replace(&mut slots[i], d);
                (*h).current[c] = empty_desc();
                if !old.is_null() {
                    self.release_owned(old);
                }
            }
            while let Some(d) = self.pool_pop(c) {
                self.claim(h, d);
                if refill(d) {
                    (*h).current[c] = d;
                    return Some((pop(d), d));
                }
                // Defensive: a pooled slab always has a free block.
                if !self.retire_full(h, d) {
                    self.release_owned(d);
                }
            }
            let d = self.new_slab(h, c)?;
            (*h).current[c] = d;
            if refill(d) {
                return Some((pop(d), d));
            }
            None
        }
    }

    /// Makes `h` the owner of `d`, just taken out of a pool.
    ///
    /// # Safety
    ///
    /// `d` was popped from a pool by the caller, who runs on `h`'s thread.
    pub(crate) unsafe fn claim(&self, h: *mut ThreadHeap, d: *mut SlabDesc) {
        // SAFETY: d is a slab descriptor in the region (it was pooled).
        unsafe {
            let flag = if (*d).has_aligned.load(Relaxed) != 0 {
                OWNER_ALIGNED
            } else {
                0
            };
            (*d).owner.store(h as usize | flag, Relaxed);
            (*d).thread_free.fetch_and(!STATE_MASK, AcqRel); // POOLED -> OWNED
        }
    }

    /// The owner gives up a slab with no free block. Returns false (and keeps the slab) if a
    /// remote free arrived meanwhile.
    ///
    /// # Safety
    ///
    /// `h` owns `d`.
    unsafe fn retire_full(&self, h: *mut ThreadHeap, d: *mut SlabDesc) -> bool {
        // SAFETY: h owns d.
        unsafe {
            let flags = (*d).owner.load(Relaxed) & OWNER_ALIGNED;
            (*d).owner.store(0, Relaxed);
            if (*d)
                .thread_free
                .compare_exchange(OWNED, ABANDONED, AcqRel, Relaxed)
                .is_ok()
            {
                return true;
            }
            (*d).owner.store(h as usize | flags, Relaxed);
            false
        }
    }

    /// The owner lets go of `d` (thread exit, sweep): back to its segment if empty, else to
    /// the pool if it has a free block, else abandoned.
    ///
    /// # Safety
    ///
    /// The caller owns `d` and is inside an allocator call.
    pub(crate) unsafe fn release_owned(&self, d: *mut SlabDesc) {
        // SAFETY: the caller owns d.
        unsafe {
            collect(d);
            (*d).owner.store(0, Relaxed);
            if (*d).used == 0 {
                self.free_slab(d);
                return;
            }
            if !has_free(d)
                && (*d)
                    .thread_free
                    .compare_exchange(OWNED, ABANDONED, AcqRel, Relaxed)
                    .is_ok()
            {
                return;
            }
            (*d).thread_free.fetch_or(POOLED, AcqRel);
            self.pool_push(d);
        }
    }

    /// Returns the slices of an empty, unowned, unlisted slab to its segment.
    ///
    /// # Safety
    ///
    /// `d` is a slab head with `used == 0` that nothing else references.
    unsafe fn free_slab(&self, d: *mut SlabDesc) {
        let seg = (d as usize & !(SEGMENT - 1)) as *mut SegmentHeader;
        let idx = (d as usize - seg as usize - DESC_OFFSET) / std::mem::size_of::<SlabDesc>();
        // SAFETY: d is a slab head (contract).
        let k = unsafe { (*d).slices } as usize;
        let g = self.seg_lock.lock();
        self.release_slices(&g, seg, idx, k);
    }

    /// Pushes an unowned slab in state `POOLED` onto its class's pool.
    ///
    /// # Safety
    ///
    /// `d` is a slab head that is on no list.
    pub(crate) unsafe fn pool_push(&self, d: *mut SlabDesc) {
        // SAFETY: d is a slab head (contract); class < NUM_CLASSES for slabs.
        let c = unsafe { (*d).class } as usize % NUM_CLASSES;
        let pool = &self.pools[c];
        let _g = pool.lock.lock();
        // SAFETY: `next` is only touched under the pool lock.
        unsafe { (*d).next = pool.head.load(Relaxed) };
        pool.head.store(d as usize, Relaxed);
        self.pooled.fetch_add(1, Relaxed);
        self.pooled_since_sweep.fetch_add(1, Relaxed);
    }

    fn pool_pop(&self, c: usize) -> Option<*mut SlabDesc> {
        let pool = &self.pools[c];
        if pool.head.load(Relaxed) == 0 {
            return None;
        }
        let _g = pool.lock.lock();
        let d = pool.head.load(Relaxed) as *mut SlabDesc;
        if d.is_null() {
            return None;
        }
        // SAFETY: d is on the pool list, so it is a valid slab head; `next` under pool lock.
        pool.head.store(unsafe { (*d).next }, Relaxed);
        self.pooled.fetch_sub(1, Relaxed);
        Some(d)
    }

    fn sweep_due(&self) -> bool {
        self.pooled_since_sweep.load(Relaxed) * SWEEP_RATIO >= self.pooled.load(Relaxed).max(1)
    }

    /// Returns every empty pooled slab's slices to its segment.
    ///
    /// # Safety
    ///
    /// `h` is the caller's heap; inside an allocator call.
    pub(crate) unsafe fn sweep_pools(&self, h: *mut ThreadHeap) {
        self.pooled_since_sweep.store(0, Relaxed);
        for c in 0..NUM_CLASSES {
            let pool = &self.pools[c];
            if pool.head.load(Relaxed) == 0 {
                continue;
            }
            let mut d = {
                let _g = pool.lock.lock();
                let d = pool.head.swap(0, Relaxed);
                d as *mut SlabDesc
            };
            while !d.is_null() {
                // SAFETY: d was on the pool, so it is ours to claim; `next` was written under
                // the pool lock we took after it.
                unsafe {
                    let next = (*d).next as *mut SlabDesc;
                    self.pooled.fetch_sub(1, Relaxed);
                    self.claim(h, d);
                    self.release_owned(d);
                    d = next;
                }
            }
        }
    }

    /// Carves a run of `k` slices, sweeping the pools for empty slabs before growing the
    /// region when that looks worthwhile, and always before giving up.
    ///
    /// # Safety
    ///
    /// `h` is the caller's heap; inside an allocator call.
    pub(crate) unsafe fn carve_run(&self, h: *mut ThreadHeap, k: usize) -> Option<super::segment::Run> {
        {
            let g = self.seg_lock.lock();
            if let Some(r) = self.carve(&g, k, false) {
                return Some(r);
            }
        }
        if self.sweep_due() {
            // SAFETY: forwarded contract.
            unsafe { self.sweep_pools(h) };
        }
        {
            let g = self.seg_lock.lock();
            if let Some(r) = self.carve(&g, k, true) {
                return Some(r);
            }
        }
        // Last resort: this heap's retained slabs (empty ones go back to their segments,
        // the rest to the pools), then the pools' empty slabs.
        // SAFETY: forwarded contract.
        let released = unsafe { self.release_retained(h) };
        if self.pooled.load(Relaxed) == 0 && !released {
            return None;
        }
        // SAFETY: forwarded contract.
        unsafe { self.sweep_pools(h) };
        let g = self.seg_lock.lock();
        self.carve(&g, k, true)
    }

    /// Carves and initialises a new slab of class `c` owned by `h`.
    ///
    /// # Safety
    ///
    /// `h` is the caller's heap; inside an allocator call.
    unsafe fn new_slab(&self, h: *mut ThreadHeap, c: usize) -> Option<*mut SlabDesc> {
        let k = slab_slices(c);
        // SAFETY: forwarded contract.
        let run = unsafe { self.carve_run(h, k) }?;
        // SAFETY: the run is carved, so its descriptors belong to us alone.
        unsafe {
            let descs = (*run.seg).descs.as_mut_ptr().add(run.idx);
            for i in 1..k {
                let cd = descs.add(i);
                (*cd).kind = D_CONT;
                (*cd).slices = i as u32;
                (*cd).owner.store(0, Relaxed);
            }
            let d = descs;
            (*d).class = c as u8;
            (*d).has_aligned.store(0, Relaxed);
            (*d).slices = k as u32;
            (*d).block_size = block_size(c) as u32;
            (*d).capacity = capacity(c) as u32;
            (*d).reserved = 0;
            (*d).used = 0;
            (*d).free = 0;
            (*d).local_free = 0;
            (*d).thread_free.store(OWNED, Relaxed);
            (*d).owner.store(h as usize, Relaxed);
            (*d).next = 0;
            (*d).kind = D_SLAB;
            Some(d)
        }
    }

    /// Frees a block of slab `d` (head descriptor) at address `p` (possibly an aligned
    /// interior pointer).
    ///
    /// # Safety
    ///
    /// `p` is a live block of slab `d` handed out by this arena; `h` is the caller's heap;
    /// inside an allocator call.
    pub(crate) unsafe fn free_block(&self, h: *mut ThreadHeap, d: *mut SlabDesc, p: usize) {
        // SAFETY: forwarded contract; immutable fields of d are stable while p is live.
        unsafe {
            let mut block = p;
            if (*d).has_aligned.load(Relaxed) != 0 {
                let start = slab_start(d);
                let bs = (*d).block_size as usize;
                block = start + (p - start) / bs * bs;
            }
            if (*d).owner.load(Relaxed) & !OWNER_ALIGNED == h as usize {
                push_local(d, block);
            } else {
                self.push_remote(d, block);
            }
        }
    }

    /// Pushes `block` onto `d`'s `thread_free`; pools the slab if it was abandoned.
    ///
    /// # Safety
    ///
    /// `block` is a live block start of slab `d`, being freed by a thread that does not own it.
    unsafe fn push_remote(&self, d: *mut SlabDesc, block: usize) {
        // SAFETY: the block is ours to link; thread_free is atomic.
        unsafe {
            let tf = &(*d).thread_free;
            let mut cur = tf.load(Relaxed);
            loop {
                *(block as *mut usize) = cur & !STATE_MASK;
                let st = cur & STATE_MASK;
                let new_st = if st == ABANDONED { POOLED } else { st };
                match tf.compare_exchange_weak(cur, block | new_st, AcqRel, Relaxed) {
                    Ok(_) => {
                        if st == ABANDONED {
                            self.pool_push(d);
                        }
                        return;
                    }
                    Err(x) => cur = x,
                }
            }
        }
    }

    /// Lets go of every retained slab of `h` (to its segment, a pool, or abandoned). Returns
    /// whether there was any.
    ///
    /// # Safety
    ///
    /// `h` is the caller's heap (or the exiting thread's); inside an allocator call.
    pub(crate) unsafe fn release_retained(&self, h: *mut ThreadHeap) -> bool {
        let mut any = false;
        // SAFETY: retained slabs are owned by h, whose thread is the caller (contract).
        unsafe {
            for c in 0..NUM_CLASSES {
                for i in 0..RETAIN {
                    let d = std::mem::replace(&mut (*h).retained[c][i], std::ptr::null_mut());
                    if !d.is_null() {
                        any = true;
                        self.release_owned(d);
                    }
                }
            }
        }
        any
    }

    /// Abandons every current slab of `h` and frees the heap for reuse (thread exit).
    ///
    /// # Safety
    ///
    /// `h` is a claimed heap of this arena instance whose thread is the caller.
    pub(crate) unsafe fn abandon_heap(&self, h: *mut ThreadHeap) {
        // SAFETY: h belongs to this thread (contract).
        unsafe {
            if !self.enter_heap(h) {
                return;
            }
            for c in 0..NUM_CLASSES {
                let d = (*h).current[c];
                if d != empty_desc() {
                    (*h).current[c] = empty_desc();
                    self.release_owned(d);
                }
            }
            self.release_retained(h);
            (*h).busy.store(0, Release);
            (*h).claimed.store(false, Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::mem::alloc::testing::TestRegion;
    use std::alloc::{GlobalAlloc, Layout};
    use std::collections::BTreeSet;

    const N: usize = 1000;

    fn alloc_n(a: &crate::mem::alloc::HeapAlloc, l: Layout) -> Vec<usize> {
        (0..N)
            .map(|i| {
                // SAFETY: nonzero layout.
                let p = unsafe { a.alloc(l) };
                assert!(!p.is_null());
                // SAFETY: fresh block of l.size() bytes.
                unsafe { p.write_bytes(i as u8, l.size()) };
                p as usize
            })
            .collect()
    }

    #[test]
    fn a_threads_frees_into_its_full_slabs_are_reused_before_new_slabs() {
        let r = TestRegion::new(64 << 20);
        let a = r.alloc();
        let l = Layout::from_size_align(256, 8).unwrap();
        let first = alloc_n(&a, l);
        let slabs = r.check_invariants().unwrap().slabs;
        assert!(slabs >= 4, "1,000 x 256 B fill several 64 KiB slabs ({slabs})");
        for &p in &first {
            // SAFETY: allocated above with l.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        let report = r.check_invariants().unwrap();
        assert_eq!(report.pooled, 0, "the frees kept the full slabs owned, none was pooled");
        let second = alloc_n(&a, l);
        let report = r.check_invariants().unwrap();
        assert_eq!(report.slabs, slabs, "no new slab was carved");
        let slab_of = |p: &usize| p & !(super::SLICE - 1);
        let (s1, s2): (BTreeSet<_>, BTreeSet<_>) = (
            first.iter().map(slab_of).collect(),
            second.iter().map(slab_of).collect(),
        );
        assert!(s2.is_subset(&s1), "the second round used only the first round's slabs");
        for &p in &second {
            // SAFETY: allocated above with l.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        r.check_invariants().unwrap();
        assert_eq!(r.allocated_bytes(), 0);
    }

    #[test]
    fn retained_slabs_of_an_exited_thread_are_reused_by_others() {
        let r = TestRegion::new(64 << 20);
        let a = r.alloc();
        let l = Layout::from_size_align(256, 8).unwrap();
        let blocks = std::thread::scope(|s| s.spawn(|| alloc_n(&a, l)).join().unwrap());
        let slabs = r.check_invariants().unwrap().slabs;
        for &p in &blocks {
            // SAFETY: allocated by the other thread with l; remote frees are allowed.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        r.check_invariants().unwrap();
        let again = alloc_n(&a, l);
        let report = r.check_invariants().unwrap();
        assert!(
            report.slabs <= slabs,
            "{} slabs after reuse, {slabs} before",
            report.slabs
        );
        for &p in &again {
            // SAFETY: allocated above with l.
            unsafe { a.dealloc(p as *mut u8, l) };
        }
        r.check_invariants().unwrap();
        assert_eq!(r.allocated_bytes(), 0);
    }
}
