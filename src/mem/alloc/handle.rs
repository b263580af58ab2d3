//! [`HeapAlloc`]: the allocator handle stored inside persistent collections.
//!
//! A `HeapAlloc` is one pointer to an [`Arena`] in its region's control area. Because the
//! region (and so the control area) sits at the same fixed address in every run, the handle's
//! bits stay valid across restarts, which is what lets collections that embed it be
//! persisted. It implements `allocator_api2`'s `Allocator` (the version `hashbrown` uses) and
//! `GlobalAlloc`.
//!
//! # Safety
//!
//! The handle may be dereferenced whenever it exists: the engine keeps the control area
//! mapped for as long as any handle to it can be used (a closed arena stays in place and
//! refuses allocations).

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

use allocator_api2::alloc::{AllocError, Allocator};

use super::arena::Arena;

/// The allocator of one persistent heap: a single pointer, identical in every run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HeapAlloc {
    arena: NonNull<Arena>,
}

// SAFETY: Arena is Sync (all shared state atomic or locked) and the handle is a plain pointer.
unsafe impl Send for HeapAlloc {}
// SAFETY: as above.
unsafe impl Sync for HeapAlloc {}

impl std::fmt::Debug for HeapAlloc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeapAlloc({:p})", self.arena)
    }
}

impl HeapAlloc {
    /// The handle of `arena`.
    pub(crate) fn new(arena: &'static Arena) -> Self {
        HeapAlloc {
            arena: NonNull::from(arena),
        }
    }

    /// The arena behind the handle.
    #[inline(always)]
    pub(crate) fn arena(&self) -> &Arena {
        // SAFETY: the control area outlives every handle (module Safety).
        unsafe { self.arena.as_ref() }
    }

    /// Resizes through `Arena::realloc`, or by allocate-copy-free when the alignment changes.
    ///
    /// # Safety
    ///
    /// `p` is a live block of this allocator allocated with `old`.
    unsafe fn resize(
        &self,
        p: NonNull<u8>,
        old: Layout,
        new: Layout,
        zero_tail: bool,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let a = self.arena();
        let q = if new.size() == 0 {
            // SAFETY: forwarded contract.
            unsafe { a.dealloc(p.as_ptr(), old) };
            super::arena::dangling(new.align())
        } else if old.align() == new.align() {
            // SAFETY: forwarded contract; new.size() > 0 and fits isize (valid Layout).
            unsafe { a.realloc(p.as_ptr(), old, new.size()) }
        } else {
            let q = a.alloc(new);
            if !q.is_null() {
                // SAFETY: both blocks are live and distinct; copy the common prefix.
                unsafe {
                    std::ptr::copy_nonoverlapping(p.as_ptr(), q, old.size().min(new.size()));
                    a.dealloc(p.as_ptr(), old);
                }
            }
            q
        };
        let q = NonNull::new(q).ok_or(AllocError)?;
        if zero_tail && new.size() > old.size() {
            // SAFETY: q has new.size() bytes; the tail past old.size() is ours to write.
            unsafe { std::ptr::write_bytes(q.as_ptr().add(old.size()), 0, new.size() - old.size()) };
        }
        Ok(NonNull::slice_from_raw_parts(q, new.size()))
    }
}

// SAFETY: blocks are valid for their layout until deallocated, never overlap, and are
// tracked per arena; all handles to one arena are equal and interchangeable (Copy).
unsafe impl Allocator for HeapAlloc {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = NonNull::new(self.arena().alloc(layout)).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let p = NonNull::new(self.arena().alloc_zeroed(layout)).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        // SAFETY: the trait contract: ptr is a live block of this allocator with layout.
        unsafe { self.arena().dealloc(ptr.as_ptr(), layout) }
    }

    unsafe fn grow(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait contract.
        unsafe { self.resize(ptr, old, new, false) }
    }

    unsafe fn grow_zeroed(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait contract.
        unsafe { self.resize(ptr, old, new, true) }
    }

    unsafe fn shrink(&self, ptr: NonNull<u8>, old: Layout, new: Layout) -> Result<NonNull<[u8]>, AllocError> {
        // SAFETY: the trait contract.
        unsafe { self.resize(ptr, old, new, false) }
    }
}

// SAFETY: as for Allocator; null is returned on failure, never a panic.
unsafe impl GlobalAlloc for HeapAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.arena().alloc(layout)
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.arena().alloc_zeroed(layout)
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the trait contract.
        unsafe { self.arena().dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the trait contract (new_size > 0, fits isize when rounded to align).
        unsafe { self.arena().realloc(ptr, layout, new_size) }
    }
}
