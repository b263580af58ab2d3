//! The root registry of a [`GlobalHeap`]: one block in the heap holding, per root type, the
//! hash of its type name, its size and alignment and a pointer to the value; the heap's
//! `user_words[0]` points to it. Layout in `docs/design.md` ("GlobalHeap root registry").
//!
//! # Invariants
//!
//! `magic == REGISTRY_MAGIC`, `len <= MAX_ROOTS`, and every `entries[..len].ptr` points into
//! the heap at a multiple of `align` (checked by [`registry_at`] when a heap is opened).
//!
//! # Safety
//!
//! The registry block is read through raw pointers; [`registry_at`] validates a stored word
//! before anything dereferences it, and writers hold `GlobalHeap::roots`.

use super::{unsafe_arena, GlobalHeap};
use crate::mem::alloc::Arena;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::*};

/// The root type name recorded in `meta` for heaps of a [`GlobalHeap`] (a `Heap<T>` cannot
/// open them by mistake, nor the other way round).
pub(super) const REGISTRY_TYPE_NAME: &str = "snapheap::GlobalHeap root registry v1";
pub(super) const REGISTRY_MAGIC: u64 = u64::from_le_bytes(*b"SHROOTS1");
/// Most root types one heap can hold.
pub const MAX_ROOTS: usize = 64;
/// `user_words` index of the registry pointer (the same word as `Heap<T>`'s root pointer).
pub(super) const WORD_REGISTRY: usize = 0;
/// One root: a value of the type whose name hashes to `type_hash`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct RootEntry {
    pub(super) type_hash: u64,
    pub(super) size: u64,
    pub(super) align: u64,
    pub(super) ptr: u64,
}

/// The root registry, one block in the heap.
#[repr(C)]
pub(super) struct Registry {
    pub(super) magic: u64,
    pub(super) len: u64,
    pub(super) entries: [RootEntry; MAX_ROOTS],
}

impl GlobalHeap {
    pub(super) fn registry_word(&self, arena: *const Arena) -> &AtomicU64 {
        match unsafe_arena(arena) {
            Some(a) => &a.user_words()[WORD_REGISTRY],
            None => &self.fallback_word,
        }
    }

    /// The registry, created on first use. Caller holds `roots`.
    pub(super) fn registry(&self, word: &AtomicU64) -> *mut Registry {
        let w = word.load(Acquire);
        if w != 0 {
            return w as *mut Registry;
        }
        let layout = Layout::new::<Registry>();
        // SAFETY: nonzero size.
        let p = unsafe { self.alloc_zeroed(layout) } as *mut Registry;
        if p.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        // SAFETY: p is a fresh zeroed block for a Registry (all-zero is valid).
        unsafe { (*p).magic = REGISTRY_MAGIC };
        word.store(p as u64, Release);
        p
    }
}

/// Validates the registry word of a heap just opened: 0 (no registry yet) or a registry block
/// whose entries point into the heap.
pub(super) fn registry_at(arena: &Arena, word: u64) -> std::result::Result<Option<*mut Registry>, String> {
    if word == 0 {
        return Ok(None);
    }
    let p = word as usize;
    let size = std::mem::size_of::<Registry>();
    if p % 8 != 0 || !arena.contains(p as *const u8) || p + size > arena.base + arena.extent() {
        return Err(format!("root registry pointer {p:#x} does not point into the heap"));
    }
    // SAFETY: [p, p + size) lies inside the mapped extent.
    let reg = unsafe { &*(p as *const Registry) };
    if reg.magic != REGISTRY_MAGIC || reg.len as usize > MAX_ROOTS {
        return Err(format!(
            "root registry at {p:#x} is damaged (magic {:#x}, {} roots)",
            reg.magic, reg.len
        ));
    }
    for (i, e) in reg.entries[..reg.len as usize].iter().enumerate() {
        let ok_align = e.align.is_power_of_two() && e.ptr % e.align == 0;
        let in_heap = e.size == 0 || arena.contains(e.ptr as *const u8);
        if !ok_align || !in_heap {
            return Err(format!("root {i} pointer {:#x} does not point into the heap", e.ptr));
        }
    }
    Ok(Some(p as *mut Registry))
}
