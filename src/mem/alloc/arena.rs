//! The arena: one region's allocator, its control block, and the public entry points.
//!
//! The [`Arena`] struct is placement-constructed in the control area at `base - CTRL_SIZE`
//! (mapped by the engine, process-local, not persisted), so a pointer to it is the same in
//! every run of the program. Everything that must survive a restart lives in the region
//! (`segment.rs`); everything here is rebuilt by [`Arena::create`] or [`Arena::attach`].
//!
//! Every allocator call brackets its work with its thread heap's `busy` flag (see
//! `pause.rs`). The fast paths (`alloc` of up to 128 KiB with `align <= 16`, `dealloc` of a
//! block of the caller's own current slab) are inlined; everything else goes to one cold
//! slow path per operation.
//!
//! This file stays above 600 lines on purpose: the entry points and their inline fast paths
//! (`alloc`, `dealloc`, `realloc`) sit next to the one cold slow path each falls back to, so the
//! fast-path cost stated in their docs can be checked by reading one file. Splitting the
//! malloc and free paths (as mimalloc splits `alloc.c` and `free.c`) is a change to hot code
//! left for later.
//!
//! # Invariants
//!
//! - `base % SEGMENT == 0`, `max_size % SEGMENT == 0`, `SEGMENT <= max_size <= MAX_REGION`.
//! - `gate` is 0 exactly when the arena is closed (or not yet open).
//!
//! # Safety
//!
//! Raw pointers into the region are derived from block addresses the arena handed out; the
//! engine keeps `[base, base + extent)` mapped while the arena is open (create/attach
//! contracts), and callers of `dealloc`/`realloc` pass only live blocks of this arena.

use std::alloc::Layout;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering::*};

use super::pause::{entry_fence, init_fence_mode, SpinLock, PAUSE_BIT};
use super::segment::*;
use super::size_class::{block_size, class_of, MEDIUM_MAX, NUM_CLASSES};
use super::slab::{desc_of, pop, push_local, slab_start, Pool};
use super::thread_heap::{register_arena, tls_entry, unregister_arena, ThreadHeap};

/// Bytes of the control area below `base` that holds the [`Arena`] struct.
pub(crate) const CTRL_SIZE: usize = 64 << 10;

/// The engine's grow hook: make `[base, base + new_extent)` readable and writable (and
/// tracked), returning false on failure. Called with the arena's segment lock held, from
/// inside an allocator call; it must not allocate from this arena.
pub(crate) type GrowFn = unsafe fn(ctx: *const (), new_extent: usize) -> bool;

/// One region's allocator (process-local control block). See the module docs.
#[repr(C, align(64))]
pub(crate) struct Arena {
    /// `key` when open, `key | PAUSE_BIT` while paused, 0 when closed.
    pub(crate) gate: AtomicU32,
    /// Registry slot, the index into the thread-local heap table.
    pub(crate) slot: u32,
    /// Unique key of this open instance (even, nonzero).
    pub(crate) key: u32,
    pub(crate) closed: AtomicBool,
    pub(crate) base: usize,
    pub(crate) max_size: usize,
    pub(crate) grow: Option<GrowFn>,
    pub(crate) grow_ctx: *const (),
    /// Every heap ever created for this instance (push-only list).
    pub(crate) heaps: AtomicPtr<ThreadHeap>,
    pub(crate) pause_lock: SpinLock,
    /// Guards segment headers' slice bitmaps, `seg_used`, `partial` and growth.
    pub(crate) seg_lock: SpinLock,
    /// Slabs on all pools.
    pub(crate) pooled: AtomicUsize,
    /// Slabs pooled since the last sweep.
    pub(crate) pooled_since_sweep: AtomicUsize,
    pub(crate) pools: [Pool; NUM_CLASSES],
    /// Bit per segment: used, `NORMAL`, with a free slice.
    pub(crate) partial: [AtomicU64; MAX_SEGMENTS / 64],
}

const _: () = assert!(std::mem::size_of::<Arena>() <= CTRL_SIZE);

// SAFETY: all shared mutable state is atomic or guarded by the arena's locks; grow_ctx is
// only passed back to the engine's hook, which the engine makes thread-safe.
unsafe impl Sync for Arena {}
// SAFETY: as above.
unsafe impl Send for Arena {}

/// A non-null pointer aligned to `align` for zero-sized allocations.
#[inline(always)]
pub(crate) fn dangling(align: usize) -> *mut u8 {
    std::ptr::without_provenance_mut(align)
}

impl Arena {
    /// Placement-constructs a fresh control block below `base` and registers it.
    ///
    /// # Safety
    ///
    /// `[base - CTRL_SIZE, base)` is mapped read-write and no other thread uses it.
    unsafe fn init_ctrl(
        base: usize,
        max_size: usize,
        grow: GrowFn,
        grow_ctx: *const (),
    ) -> Result<&'static Arena, String> {
        let a = (base - CTRL_SIZE) as *mut Arena;
        let (slot, key) = register_arena(a).ok_or_else(|| "too many arenas open in this process".to_string())?;
        // SAFETY: the control area is ours and mapped (contract); all-zero is a valid Arena
        // apart from the fields written right after.
        unsafe {
            std::ptr::write_bytes(a as *mut u8, 0, std::mem::size_of::<Arena>());
            (*a).slot = slot;
            (*a).key = key;
            (*a).base = base;
            (*a).max_size = max_size;
            (*a).grow = Some(grow);
            (*a).grow_ctx = grow_ctx;
            Ok(&*a)
        }
    }

    /// Creates a new, empty arena for the region at `base`.
    ///
    /// Panics if 64 arenas are already open in this process.
    ///
    /// # Safety
    ///
    /// `[base - CTRL_SIZE, base)` and `[base, base + SEGMENT)` are mapped read-write and
    /// zeroed; nothing else uses them; `base % SEGMENT == 0`, `max_size % SEGMENT == 0` and
    /// `SEGMENT <= max_size <= MAX_REGION`; `grow` honours [`GrowFn`]'s contract.
    pub(crate) unsafe fn create(base: usize, max_size: usize, grow: GrowFn, grow_ctx: *const ()) -> &'static Arena {
        debug_assert!(base % SEGMENT == 0 && max_size % SEGMENT == 0);
        debug_assert!((SEGMENT..=MAX_REGION).contains(&max_size));
        let max_size = max_size.clamp(SEGMENT, MAX_REGION) & !(SEGMENT - 1);
        init_fence_mode();
        // SAFETY: forwarded contract.
        let a = match unsafe { Self::init_ctrl(base, max_size, grow, grow_ctx) } {
            Ok(a) => a,
            Err(e) => panic!("snapheap: {e}"),
        };
        let h = (base + ARENA_HEADER_OFFSET) as *mut ArenaHeader;
        // SAFETY: segment 0 is mapped and zeroed (contract); nobody else uses it yet.
        unsafe {
            (*h).magic = ARENA_MAGIC;
            (*h).version = LAYOUT_VERSION;
            (*h).max_size = max_size as u64;
            (*h).extent.store(SEGMENT as u64, Release);
        }
        a.init_segment0(&a.seg_lock.lock());
        a.gate.store(a.key, Release);
        a
    }

    /// Re-opens the allocator of a recovered region mapped read-write up to its persisted
    /// extent. Checks the arena header and every segment header (returning a description of
    /// the first mismatch), resets process-local descriptor fields and rebuilds the pools.
    /// O(segments), never O(blocks).
    ///
    /// # Safety
    ///
    /// `[base - CTRL_SIZE, base)` and `[base, base + extent)` (extent as persisted, at least
    /// one segment) are mapped read-write; nothing else uses them; the region's contents
    /// were written by this allocator (they are as trusted as the executable, but the
    /// headers are still bounds-checked).
    pub(crate) unsafe fn attach(
        base: usize,
        max_size: usize,
        grow: GrowFn,
        grow_ctx: *const (),
    ) -> Result<&'static Arena, String> {
        // SAFETY: forwarded contract.
        let a = unsafe { Self::attach_ctrl(base, max_size, grow, grow_ctx) }?;
        // SAFETY: validated above; no thread can use the arena before the gate opens.
        unsafe { a.rebuild_process_state() };
        a.gate.store(a.key, Release);
        Ok(a)
    }

    /// What both attaches share: checks the geometry and the persistent headers, then sets up
    /// the control block (gate still closed).
    ///
    /// # Safety
    ///
    /// As for [`Self::attach`].
    unsafe fn attach_ctrl(
        base: usize,
        max_size: usize,
        grow: GrowFn,
        grow_ctx: *const (),
    ) -> Result<&'static Arena, String> {
        if base % SEGMENT != 0 || max_size % SEGMENT != 0 || !(SEGMENT..=MAX_REGION).contains(&max_size) {
            return Err(format!("bad region geometry: base {base:#x}, max_size {max_size:#x}"));
        }
        // SAFETY: segment 0 is mapped (contract).
        unsafe { super::check::validate_persistent(base, max_size) }?;
        init_fence_mode();
        // SAFETY: forwarded contract.
        let a = unsafe { Self::init_ctrl(base, max_size, grow, grow_ctx) }?;
        Ok(a)
    }

    /// Attaches to a region without writing it and with the gate closed for good: `alloc`
    /// returns null, `dealloc` does nothing. For a replica, whose memory must stay exactly the
    /// primary's image ([`Self::attach`] rewrites process-local links inside the region).
    ///
    /// # Safety
    ///
    /// As for [`Self::attach`].
    pub(crate) unsafe fn attach_closed(
        base: usize,
        max_size: usize,
        grow: GrowFn,
        grow_ctx: *const (),
    ) -> Result<&'static Arena, String> {
        // SAFETY: forwarded contract.
        let a = unsafe { Self::attach_ctrl(base, max_size, grow, grow_ctx) }?;
        // The gate never opens, so no thread can reach the arena through the registry.
        unregister_arena(a.slot, a.key);
        Ok(a)
    }

    /// Resets owners and pool links in every slab and rebuilds pools and `partial`.
    ///
    /// # Safety
    ///
    /// The persistent state was validated; the gate is still closed.
    unsafe fn rebuild_process_state(&self) {
        let n = self.extent_segments();
        let g = self.seg_lock.lock();
        let mut s = 0;
        while s < n {
            if !self.seg_used(s) {
                s += 1;
                continue;
            }
            let h = self.seg(s);
            // SAFETY: s < extent, validated header.
            unsafe {
                if (*h).kind == SEG_HUGE {
                    (*h).descs[1].owner.store(0, Relaxed);
                    s += (*h).huge_segments as usize;
                    continue;
                }
                let mut i = 1;
                while i < SLICES_PER_SEGMENT {
                    let d = (*h).descs.as_mut_ptr().add(i);
                    let k = ((*d).slices as usize).max(1);
                    match (*d).kind {
                        D_SLAB => {
                            (*d).owner.store(0, Relaxed);
                            (*d).next = 0;
                            let tf = (*d).thread_free.load(Relaxed) & !super::slab::STATE_MASK;
                            if (*d).used == 0 {
                                self.release_slices(&g, h, i, k);
                            } else if super::slab::has_free(d) {
                                (*d).thread_free.store(tf | super::slab::POOLED, Relaxed);
                                self.pool_push(d);
                            } else {
                                (*d).thread_free.store(tf | super::slab::ABANDONED, Relaxed);
                            }
                        }
                        D_SPAN => (*d).owner.store(0, Relaxed),
                        _ => {}
                    }
                    i += if (*d).kind == D_FREE { 1 } else { k };
                }
                let free = (*h).free_slices;
                // release_slices may have freed the whole segment.
                self.note_partial(s, self.seg_used(s) && free != 0);
            }
            s += 1;
        }
        self.pooled_since_sweep.store(0, Relaxed);
    }

    /// Closes the arena: waits for calls in flight; afterwards `alloc` returns null and
    /// `dealloc` does nothing. The control block stays in place. Must not be called while
    /// holding a pause of this arena.
    pub(crate) fn close(&self) {
        if self.gate.load(Acquire) == 0 {
            return;
        }
        unregister_arena(self.slot, self.key);
        let g = self.pause();
        self.closed.store(true, Relaxed);
        drop(g);
    }

    /// Bytes from `base` that have been handed out to segments (a multiple of `SEGMENT`).
    pub(crate) fn extent(&self) -> usize {
        self.header().extent.load(Acquire) as usize
    }

    /// The engine's persistent words in the arena header.
    pub(crate) fn user_words(&self) -> &[AtomicU64; 16] {
        &self.header().user_words
    }

    /// Whether `p` lies inside `[base, base + max_size)`.
    pub(crate) fn contains(&self, p: *const u8) -> bool {
        (p as usize).wrapping_sub(self.base) < self.max_size
    }

    /// Enters an allocator call on `h`: sets `busy`, waits out a pause. False when the arena
    /// is closed (or re-opened as another instance).
    ///
    /// # Safety
    ///
    /// `h` is a live heap of this thread.
    pub(crate) unsafe fn enter_heap(&self, h: *mut ThreadHeap) -> bool {
        loop {
            // SAFETY: h is live (contract).
            let hk = unsafe {
                (*h).busy.store(1, Relaxed);
                (*h).key
            };
            entry_fence();
            let g = self.gate.load(Relaxed);
            if g == hk {
                return true;
            }
            // SAFETY: as above.
            unsafe { (*h).busy.store(0, Release) };
            if g & !PAUSE_BIT != hk {
                return false;
            }
            self.wait_while_paused(g);
        }
    }

    /// Enters an allocator call on the calling thread's heap.
    fn enter(&self) -> Option<*mut ThreadHeap> {
        loop {
            let h = self.heap_for_thread()?;
            // SAFETY: heap_for_thread returns this thread's live heap.
            if unsafe { self.enter_heap(h) } {
                return Some(h);
            }
        }
    }

    #[inline(always)]
    fn leave(&self, h: *mut ThreadHeap) {
        // SAFETY: h is this thread's live heap.
        unsafe { (*h).busy.store(0, Release) };
    }

    /// Allocates a block for `layout`; null when the region is exhausted, the arena is
    /// closed, or `layout.align() > SLICE`.
    ///
    /// Fast path (size 1..=128 KiB, align <= 16, current slab has a free block), about 18
    /// instructions: TLS entry load, `busy` store, fence flag test, gate load and compare,
    /// class lookup (table up to 1 KiB), current slab load, pop (2 loads, 2 stores),
    /// `used += 1`, `busy` store.
    #[inline(always)]
    pub(crate) fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = layout.size();
        let align = layout.align();
        if size.wrapping_sub(1) < MEDIUM_MAX && align <= 16 {
            let c = class_of(if size > align { size } else { align });
            let e = tls_entry(self.slot);
            let h = e.heap as *mut ThreadHeap;
            // SAFETY: TLS entries always point to a live heap; it is used beyond the `busy`
            // store only when its key matches the open, unpaused gate, i.e. it is this
            // thread's heap of this arena; its current slab is owned by it.
            unsafe {
                (*h).busy.store(1, Relaxed);
                entry_fence();
                if self.gate.load(Relaxed) == e.key {
                    let d = (*h).current[c];
                    if (*d).free != 0 {
                        let b = pop(d);
                        (*h).busy.store(0, Release);
                        return b as *mut u8;
                    }
                }
                (*h).busy.store(0, Release);
            }
        }
        self.alloc_slow(layout, false)
    }

    /// Like [`Arena::alloc`] with the block zeroed. Memory known to be fresh (spans and huge
    /// blocks on never-used slices) is not written again.
    pub(crate) fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() <= MEDIUM_MAX && layout.align() <= 16 {
            let p = self.alloc(layout);
            if !p.is_null() {
                // SAFETY: p is a fresh block of at least layout.size() bytes.
                unsafe { std::ptr::write_bytes(p, 0, layout.size()) };
            }
            return p;
        }
        self.alloc_slow(layout, true)
    }

    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, layout: Layout, zero: bool) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        if size == 0 {
            return dangling(align);
        }
        if align > SLICE {
            return std::ptr::null_mut();
        }
        let Some(h) = self.enter() else {
            return std::ptr::null_mut();
        };
        // SAFETY: inside an allocator call on our heap.
        let p = unsafe { self.alloc_in(h, size, align, zero) };
        self.leave(h);
        p
    }

    /// Allocates `size > 0` bytes aligned to `align <= SLICE`.
    ///
    /// # Safety
    ///
    /// `h` is the caller's heap and the caller is inside an allocator call.
    unsafe fn alloc_in(&self, h: *mut ThreadHeap, size: usize, align: usize, zero: bool) -> *mut u8 {
        let want = size.max(align);
        if want <= MEDIUM_MAX {
            let c0 = class_of(want);
            let class_pad = if align <= 16 || block_size(c0) % align == 0 {
                Some((c0, false))
            } else if size + align - 16 <= MEDIUM_MAX {
                Some((class_of(size + align - 16), true))
            } else {
                None
            };
            if let Some((c, pad)) = class_pad {
                // SAFETY: forwarded contract.
                let Some((b, d)) = (unsafe { self.alloc_block(h, c) }) else {
                    return std::ptr::null_mut();
                };
                let p = if pad { (b + align - 1) & !(align - 1) } else { b };
                // SAFETY: d is owned by h (just allocated from); p..p+size lies in the block.
                unsafe {
                    if p != b && (*d).has_aligned.load(Relaxed) == 0 {
                        (*d).has_aligned.store(1, Relaxed);
                        (*d).owner.fetch_or(super::slab::OWNER_ALIGNED, Relaxed);
                    }
                    if zero {
                        std::ptr::write_bytes(p as *mut u8, 0, size);
                    }
                }
                return p as *mut u8;
            }
        }
        let k = size.div_ceil(SLICE);
        if k <= SPAN_MAX_SLICES {
            // SAFETY: forwarded contract.
            unsafe { self.alloc_span(h, k, size, zero) }
        } else {
            // SAFETY: forwarded contract.
            unsafe { self.alloc_huge_block(h, size, zero) }
        }
    }

    /// # Safety
    ///
    /// As for `alloc_in`; `1 <= k <= SPAN_MAX_SLICES`.
    unsafe fn alloc_span(&self, h: *mut ThreadHeap, k: usize, size: usize, zero: bool) -> *mut u8 {
        // SAFETY: forwarded contract.
        let Some(run) = (unsafe { self.carve_run(h, k) }) else {
            return std::ptr::null_mut();
        };
        // SAFETY: the run's descriptors are ours alone.
        unsafe {
            let d = (*run.seg).descs.as_mut_ptr().add(run.idx);
            set_span_conts(d, 1, k);
            (*d).class = 0;
            (*d).has_aligned.store(0, Relaxed);
            (*d).slices = k as u32;
            (*d).block_size = (k * SLICE) as u32;
            (*d).capacity = 1;
            (*d).reserved = 1;
            (*d).used = 1;
            (*d).free = 0;
            (*d).local_free = 0;
            (*d).thread_free.store(0, Relaxed);
            (*d).owner.store(0, Relaxed);
            (*d).next = 0;
            (*d).kind = D_SPAN;
            let p = run.seg as usize + run.idx * SLICE;
            if zero && !run.zero {
                std::ptr::write_bytes(p as *mut u8, 0, size);
            }
            p as *mut u8
        }
    }

    /// # Safety
    ///
    /// As for `alloc_in`.
    unsafe fn alloc_huge_block(&self, h: *mut ThreadHeap, size: usize, zero: bool) -> *mut u8 {
        let Some(n) = size.checked_add(SLICE).map(|b| b.div_ceil(SEGMENT)) else {
            return std::ptr::null_mut();
        };
        let mut r = self.alloc_huge(&self.seg_lock.lock(), n);
        if r.is_none() {
            // SAFETY: forwarded contract.
            let released = unsafe { self.release_retained(h) };
            if released || self.pooled.load(Relaxed) != 0 {
                // SAFETY: forwarded contract.
                unsafe { self.sweep_pools(h) };
                r = self.alloc_huge(&self.seg_lock.lock(), n);
            }
        }
        let Some((first, fresh)) = r else {
            return std::ptr::null_mut();
        };
        let p = self.seg(first) as usize + SLICE;
        if zero && !fresh {
            // SAFETY: the huge block spans [p, p + size) inside mapped, now-owned segments.
            unsafe { std::ptr::write_bytes(p as *mut u8, 0, size) };
        }
        p as *mut u8
    }

    /// Frees `p` (a live block of this arena).
    ///
    /// Fast path (the block belongs to the caller's current slab, no aligned blocks in it):
    /// descriptor address arithmetic, TLS entry load, `busy` store, gate compare, owner
    /// compare, push on `local_free`, `used -= 1`, `busy` store. No atomic RMW, no division.
    ///
    /// # Safety
    ///
    /// `p` was returned by this arena's `alloc`/`alloc_zeroed`/`realloc` with `layout` (or a
    /// size it was reallocated to) and not freed since.
    #[inline(always)]
    pub(crate) unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if layout.size() == 0 {
            return;
        }
        debug_assert!(self.contains(p));
        let a = p as usize;
        let d = desc_of(a);
        let e = tls_entry(self.slot);
        let h = e.heap as *mut ThreadHeap;
        // SAFETY: p is a live block of this arena (contract), so its segment header is
        // mapped; h is a live heap; the region is touched only when the gate matches and the
        // slab is owned by h (then only h's thread touches its lists).
        unsafe {
            (*h).busy.store(1, Relaxed);
            entry_fence();
            if self.gate.load(Relaxed) == e.key && (*d).owner.load(Relaxed) == h as usize {
                push_local(d, a);
                (*h).busy.store(0, Release);
                return;
            }
            (*h).busy.store(0, Release);
            self.dealloc_slow(p);
        }
    }

    /// # Safety
    ///
    /// As for `dealloc`.
    #[cold]
    #[inline(never)]
    unsafe fn dealloc_slow(&self, p: *mut u8) {
        if !self.contains(p) {
            return;
        }
        let Some(h) = self.enter() else { return };
        // SAFETY: forwarded contract; inside an allocator call.
        unsafe { self.free_in(h, p as usize) };
        self.leave(h);
    }

    /// Frees any kind of block.
    ///
    /// # Safety
    ///
    /// `p` is a live block of this arena; `h` is the caller's heap; inside an allocator call.
    unsafe fn free_in(&self, h: *mut ThreadHeap, p: usize) {
        let d = desc_of(p);
        // SAFETY: p is live, so its descriptors are valid and immutable while it is.
        unsafe {
            match (*d).kind {
                D_SLAB => self.free_block(h, d, p),
                D_CONT => {
                    let back = (*d).slices as usize;
                    let head = d.sub(back.min((p & (SEGMENT - 1)) >> SLICE_SHIFT));
                    if (*head).kind == D_SLAB {
                        self.free_block(h, head, p);
                    } else {
                        debug_assert!(false, "free of a pointer inside a span: {p:#x}");
                    }
                }
                D_SPAN => {
                    let seg = (p & !(SEGMENT - 1)) as *mut SegmentHeader;
                    let idx = (p - seg as usize) >> SLICE_SHIFT;
                    let k = (*d).slices as usize;
                    self.release_slices(&self.seg_lock.lock(), seg, idx, k);
                }
                D_HUGE => {
                    let first = self.seg_index((p & !(SEGMENT - 1)) as *const SegmentHeader);
                    let n = (*self.seg(first)).huge_segments as usize;
                    self.release_segments(&self.seg_lock.lock(), first, first + n);
                }
                _ => debug_assert!(false, "free of an unknown pointer: {p:#x}"),
            }
        }
    }

    /// Resizes the block at `p` to `new_size` bytes keeping `old.align()`, in place when the
    /// block allows (shrink within its class, span shrink or growth into following free
    /// slices, huge shrink or growth into following unused segments), otherwise by
    /// allocate-copy-free. Returns null (leaving `p` valid) on exhaustion.
    ///
    /// # Safety
    ///
    /// `p` is a live block of this arena allocated with `old`; `new_size > 0` and, rounded
    /// up to `old.align()`, does not overflow `isize`.
    pub(crate) unsafe fn realloc(&self, p: *mut u8, old: Layout, new_size: usize) -> *mut u8 {
        let align = old.align();
        if old.size() == 0 {
            // SAFETY: align is a power of two from a valid layout; size bound is the caller's.
            return self.alloc(unsafe { Layout::from_size_align_unchecked(new_size, align) });
        }
        if new_size == 0 {
            // SAFETY: forwarded contract.
            unsafe { self.dealloc(p, old) };
            return dangling(align);
        }
        let Some(h) = self.enter() else {
            return std::ptr::null_mut();
        };
        // SAFETY: forwarded contract; inside an allocator call.
        let q = unsafe { self.realloc_in(h, p as usize, old, new_size) };
        self.leave(h);
        q
    }

    /// # Safety
    ///
    /// As for `realloc`, inside an allocator call on `h`.
    unsafe fn realloc_in(&self, h: *mut ThreadHeap, p: usize, old: Layout, new_size: usize) -> *mut u8 {
        let mut d = desc_of(p);
        // SAFETY: p is live, so its descriptors are valid.
        unsafe {
            if (*d).kind == D_CONT {
                d = d.sub(((*d).slices as usize).min((p & (SEGMENT - 1)) >> SLICE_SHIFT));
            }
            let seg = (p & !(SEGMENT - 1)) as *mut SegmentHeader;
            match (*d).kind {
                D_SLAB => {
                    let start = slab_start(d);
                    let bs = (*d).block_size as usize;
                    let usable = start + (p - start) / bs * bs + bs - p;
                    if new_size <= usable && (new_size >= usable / 2 || usable <= 64) {
                        return p as *mut u8;
                    }
                }
                D_SPAN => {
                    let idx = (d as usize - seg as usize - DESC_OFFSET) / std::mem::size_of::<SlabDesc>();
                    let k = (*d).slices as usize;
                    let off = p - (seg as usize + idx * SLICE);
                    let need = (off + new_size).div_ceil(SLICE);
                    if need <= k && new_size > MEDIUM_MAX {
                        if need < k {
                            self.release_slices(&self.seg_lock.lock(), seg, idx + need, k - need);
                            (*d).slices = need as u32;
                            (*d).block_size = (need * SLICE) as u32;
                        }
                        return p as *mut u8;
                    }
                    if need > k
                        && need <= SPAN_MAX_SLICES
                        && self.take_following(&self.seg_lock.lock(), seg, idx + k, need - k)
                    {
                        set_span_conts(d, k, need);
                        (*d).slices = need as u32;
                        (*d).block_size = (need * SLICE) as u32;
                        return p as *mut u8;
                    }
                }
                D_HUGE => {
                    let first = self.seg_index(seg);
                    let n = (*seg).huge_segments as usize;
                    let need = (SLICE + new_size).div_ceil(SEGMENT);
                    if need <= n && new_size > SPAN_MAX_SLICES * SLICE {
                        if need < n {
                            self.release_segments(&self.seg_lock.lock(), first + need, first + n);
                            (*seg).huge_segments = need as u64;
                        }
                        return p as *mut u8;
                    }
                    if need > n && self.grow_huge(&self.seg_lock.lock(), first, n, need) {
                        return p as *mut u8;
                    }
                }
                _ => {}
            }
            let q = self.alloc_in(h, new_size, old.align(), false);
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(p as *const u8, q, old.size().min(new_size));
                self.free_in(h, p);
            }
            q
        }
    }
}

/// Marks descriptors `k0..k` after span head `d` as continuations pointing back to it.
///
/// # Safety
///
/// `d` is a span head whose slices `d + k0 .. d + k` belong to the caller.
unsafe fn set_span_conts(d: *mut SlabDesc, k0: usize, k: usize) {
    for i in k0..k {
        // SAFETY: forwarded contract; i < 64 - index of d.
        unsafe {
            let cd = d.add(i);
            (*cd).kind = D_CONT;
            (*cd).slices = i as u32;
            (*cd).owner.store(0, Relaxed);
        }
    }
}
