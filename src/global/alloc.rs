//! The [`GlobalAlloc`] implementation of [`GlobalHeap`]: the fast path (one load of the arena
//! pointer and the arena's inline fast path), zeroed blocks (so stale words do not keep
//! garbage alive at the next reclaim), over-aligned blocks from `System`, and the cold path
//! that initialises the heap on the first allocation.
//!
//! # Safety
//!
//! Blocks come from the arena or from `System`; `dealloc` and `realloc` route each pointer
//! to the allocator whose reserved range contains it, which is the one that allocated it.

use super::{in_engine_call, unsafe_arena, GlobalHeap, READY, UNINIT};
use crate::mem::alloc::{Arena, MEDIUM_MAX, SEGMENT, SLICE, SLICES_PER_SEGMENT};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::Ordering::*;

// SAFETY: blocks come from the arena (which hands out disjoint blocks valid for their
// layout) or from System; dealloc/realloc route each pointer to the allocator whose reserved
// range contains it (module docs), which is the one that allocated it.
unsafe impl GlobalAlloc for GlobalHeap {
    /// Fast path: one load of the arena pointer, the arena's inline fast path, and zeroing of
    /// the block (see `zeroed_block`).
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let a = self.arena.load(Acquire);
        if !a.is_null() && !in_engine_call() {
            // SAFETY: a non-null arena lives forever (module Safety); nonzero size (contract).
            return unsafe { zeroed_block(&*a, layout) };
        }
        // SAFETY: forwarded contract.
        unsafe { self.alloc_cold(layout) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract; heap blocks are handed out zeroed anyway, and the
        // System fallback is asked for zeroed memory below.
        unsafe {
            let a = self.arena.load(Acquire);
            if !a.is_null() && !in_engine_call() {
                return zeroed_block(&*a, layout);
            }
            let p = self.alloc_cold(layout);
            if !p.is_null() && !self.in_heap(p) {
                std::ptr::write_bytes(p, 0, layout.size());
            }
            p
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let a = self.arena.load(Acquire);
        // SAFETY: a non-null arena lives forever; a pointer inside its range is one of its
        // blocks (System never hands out addresses in the reservation), any other pointer
        // came from System (forwarded contract).
        unsafe {
            if !a.is_null() && (*a).contains(ptr) {
                (*a).dealloc(ptr, layout)
            } else {
                System.dealloc(ptr, layout)
            }
        }
    }

    /// In place when the new size fits the block and uses at least half of it (the tail the
    /// block no longer covers is zeroed); otherwise allocate, copy, free. A `System` block
    /// from before initialisation moves into the heap.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let a = self.arena.load(Acquire);
        // SAFETY: as in dealloc; new_size satisfies realloc's contract (forwarded), so the
        // new layout is valid; ptr is live for layout.size() bytes.
        unsafe {
            if a.is_null() || (in_engine_call() && !(*a).contains(ptr)) {
                return System.realloc(ptr, layout, new_size);
            }
            let arena = &*a;
            if arena.contains(ptr) {
                let usable = arena.usable_size(ptr as usize);
                if new_size <= usable && new_size >= usable / 2 {
                    if new_size < layout.size() {
                        std::ptr::write_bytes(ptr.add(new_size), 0, layout.size() - new_size);
                    }
                    return ptr;
                }
            }
            let new = Layout::from_size_align_unchecked(new_size, layout.align());
            let q = if in_engine_call() {
                System.alloc(new)
            } else {
                zeroed_block(arena, new)
            };
            if !q.is_null() {
                std::ptr::copy_nonoverlapping(ptr, q, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
            q
        }
    }
}

/// Allocates a block for `layout` from `arena` with *all* of it zeroed, not just
/// `layout.size()` bytes: stale words left by earlier users of the memory (in a block's slack,
/// or in the last word of a string that does not fill it) would look like references to the
/// conservative reclaim at the next open and keep garbage alive. Slab blocks are cleared with
/// a `memset` of their block size; spans and huge blocks are requested at their full size from
/// `alloc_zeroed`, which skips memory known to be fresh.
///
/// # Safety
///
/// `layout.size() > 0`.
#[inline(always)]
unsafe fn zeroed_block(arena: &Arena, layout: Layout) -> *mut u8 {
    let size = layout.size();
    debug_assert!(size > 0);
    if layout.align() > SLICE {
        // SAFETY: forwarded contract.
        return unsafe { overaligned(layout) };
    }
    if size <= MEDIUM_MAX {
        let p = arena.alloc(layout);
        if !p.is_null() {
            // SAFETY: p is a fresh live block; usable_size bytes from p belong to it.
            unsafe { std::ptr::write_bytes(p, 0, arena.usable_size(p as usize)) };
        }
        return p;
    }
    let k = size.div_ceil(SLICE);
    let full = if k < SLICES_PER_SEGMENT {
        k * SLICE
    } else {
        size.saturating_add(SLICE).div_ceil(SEGMENT).saturating_mul(SEGMENT) - SLICE
    };
    match Layout::from_size_align(full, layout.align()) {
        Ok(l) => arena.alloc_zeroed(l),
        Err(_) => std::ptr::null_mut(),
    }
}

/// Alignments above a slice are beyond the arena; such (rare) blocks come from `System` and
/// are therefore not persistent.
///
/// # Safety
///
/// `layout.size() > 0`.
#[cold]
unsafe fn overaligned(layout: Layout) -> *mut u8 {
    // SAFETY: forwarded contract.
    unsafe { System.alloc_zeroed(layout) }
}

impl GlobalHeap {
    /// Allocation before `READY`: initialises on the first call; while initialising (on any
    /// thread) and in the fallback, serves from `System` (not zeroed).
    ///
    /// # Safety
    ///
    /// `layout` has a nonzero size (`GlobalAlloc::alloc`'s contract).
    #[cold]
    #[inline(never)]
    unsafe fn alloc_cold(&self, layout: Layout) -> *mut u8 {
        debug_assert!(layout.size() > 0);
        let a = match self.state.load(Acquire) {
            READY if in_engine_call() => std::ptr::null(),
            READY => self.arena.load(Acquire) as *const Arena,
            UNINIT => self.try_init().unwrap_or(std::ptr::null()),
            _ => std::ptr::null(),
        };
        // SAFETY: forwarded contract; a non-null arena lives forever.
        unsafe {
            match a.as_ref() {
                Some(a) => zeroed_block(a, layout),
                None => System.alloc(layout),
            }
        }
    }

    /// Whether `p` lies in the heap's reserved range.
    fn in_heap(&self, p: *const u8) -> bool {
        unsafe_arena(self.arena.load(Acquire)).is_some_and(|a| a.contains(p))
    }
}
