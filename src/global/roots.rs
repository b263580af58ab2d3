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
use crate::disk::format::meta::fnv1a;
use crate::engine::lock;
use crate::mem::alloc::{Arena, SLICE};
use crate::persist::GlobalPersist;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicU64, Ordering::*};

/// The root type name recorded in `meta` for heaps of a [`GlobalHeap`] (a `Heap<T>` cannot
/// open them by mistake, nor the other way round).
pub(crate) const REGISTRY_TYPE_NAME: &str = "snapheap::GlobalHeap root registry v1";
pub(crate) const REGISTRY_MAGIC: u64 = u64::from_le_bytes(*b"SHROOTS1");
/// Most root types one heap can hold.
pub const MAX_ROOTS: usize = 64;
/// `user_words` index of the registry pointer (the same word as `Heap<T>`'s root pointer).
pub(crate) const WORD_REGISTRY: usize = 0;
/// One root: a value of the type whose name hashes to `type_hash`.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RootEntry {
    pub(crate) type_hash: u64,
    pub(crate) size: u64,
    pub(crate) align: u64,
    pub(crate) ptr: u64,
}

/// The root registry, one block in the heap.
#[repr(C)]
pub(crate) struct Registry {
    pub(crate) magic: u64,
    pub(crate) len: u64,
    pub(crate) entries: [RootEntry; MAX_ROOTS],
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

impl GlobalHeap {
    /// Migrates the root of type `Old` to a root of type `New`: `f` receives the old root
    /// **by value** (moved out of the heap, its block freed without dropping it) and returns
    /// the new one, which replaces it in the registry. Returns `false` (and does not call `f`)
    /// when the heap holds no root of type `Old` (a new heap, or one already migrated).
    ///
    /// Call it at start-up for each step in order (`V1 -> V2`, then `V2 -> V3`), then
    /// [`commit`](GlobalHeap::commit) once: the new root and its type become durable together
    /// in that commit. A crash before it leaves the old root, and the next run migrates again.
    /// `f` may move fields of `old` into the new value (a moved collection keeps its buffer),
    /// allocate (everything allocates in the heap), and drop what it does not keep. It cannot
    /// keep references into the old root (it owns `old`; `New: 'static`), and must not call
    /// `with_root`, `migrate_root`, `commit` or `snapshot` (they would deadlock). If `f`
    /// panics, the heap is poisoned (every later commit fails, so the half-migrated state is
    /// never committed; the heap on disk still holds the old root) and the panic resumes.
    ///
    /// A new release is a new build: a heap written by the previous one opens only with
    /// `SNAPHEAP_ALLOW_OTHER_BUILD=1` or [`GlobalHeap::allow_other_builds`], which state that
    /// the roots hold no pointers into the executable (see "What must not be stored in
    /// roots").
    ///
    /// Panics if the heap also holds a root of type `New` already, or if the recorded root's
    /// size or alignment differ from `Old`'s.
    pub fn migrate_root<Old: GlobalPersist + Send + 'static, New: GlobalPersist + Send + 'static>(
        &self,
        f: impl FnOnce(Old) -> New,
    ) -> bool {
        self.migrate_root_named::<Old, New>(std::any::type_name::<Old>(), f)
    }

    /// As [`migrate_root`](GlobalHeap::migrate_root), for an old root recorded under the type
    /// name `old_type_name` (`std::any::type_name` of the old release's type, e.g.
    /// `"app::State"` when this release renamed it `app::v1::State`).
    pub fn migrate_root_named<Old: GlobalPersist + Send + 'static, New: GlobalPersist + Send + 'static>(
        &self,
        old_type_name: &str,
        f: impl FnOnce(Old) -> New,
    ) -> bool {
        let arena = self.ready();
        let _g = lock(&self.roots);
        let word = self.registry_word(arena);
        if word.load(Acquire) == 0 {
            return false;
        }
        // SAFETY: the registry is a live block of the heap, accessed only under `roots`.
        let reg = unsafe { &mut *self.registry(word) };
        let new_name = std::any::type_name::<New>();
        let (old_hash, new_hash) = (fnv1a(old_type_name.as_bytes()), fnv1a(new_name.as_bytes()));
        let live = &reg.entries[..reg.len as usize];
        let Some(i) = live.iter().position(|e| e.type_hash == old_hash) else {
            return false;
        };
        assert!(
            !live.iter().any(|e| e.type_hash == new_hash),
            "snapheap: cannot migrate the root `{old_type_name}` to `{new_name}`: the heap already holds a `{new_name}` root"
        );
        let e = reg.entries[i];
        let (old_size, old_align) = (size_of::<Old>() as u64, align_of::<Old>() as u64);
        assert!(
            e.size == old_size && e.align == old_align,
            "snapheap: the root `{old_type_name}` in the heap has size {} and alignment {}, the migration's old type              has size {old_size} and alignment {old_align}",
            e.size,
            e.align
        );
        assert!(
            align_of::<New>() <= SLICE,
            "snapheap: roots aligned to more than {SLICE} bytes are not supported (`{new_name}`)"
        );
        let engine = self.engine();
        if let Some(en) = engine {
            en.freeze_commits(true);
        }
        // SAFETY: the entry records a root of `Old`'s name, size and alignment, validated at
        // open; the value is moved out here and its block freed below without dropping it.
        let old = unsafe { std::ptr::read(e.ptr as *const Old) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(old))) {
            Ok(new) => {
                if old_size != 0 {
                    // SAFETY: the root's block was allocated with `Old`'s layout by this
                    // allocator, and its value has been moved out.
                    unsafe { self.dealloc(e.ptr as *mut u8, Layout::new::<Old>()) };
                }
                let layout = Layout::new::<New>();
                let p = if layout.size() == 0 {
                    std::ptr::NonNull::<New>::dangling().as_ptr()
                } else {
                    // SAFETY: layout has a nonzero size.
                    let p = unsafe { self.alloc(layout) } as *mut New;
                    if p.is_null() {
                        std::alloc::handle_alloc_error(layout);
                    }
                    p
                };
                // SAFETY: p is a fresh block for New (or dangling for a ZST).
                unsafe { p.write(new) };
                reg.entries[i] = RootEntry {
                    type_hash: new_hash,
                    size: layout.size() as u64,
                    align: layout.align() as u64,
                    ptr: p as u64,
                };
                if let Some(en) = engine {
                    en.freeze_commits(false);
                }
                true
            }
            Err(payload) => {
                // The old value was dropped while unwinding; the entry points at a stale copy
                // whose blocks are freed. Nothing of this may be committed: the entry is
                // emptied in memory and the heap poisoned (commits stay frozen too).
                reg.entries[i] = RootEntry {
                    type_hash: 0,
                    size: 0,
                    align: 1,
                    ptr: 0,
                };
                if let Some(en) = engine {
                    en.poison_with(format!(
                        "the migration of the root `{old_type_name}` to `{new_name}` panicked; the heap on disk still                          holds the old root"
                    ));
                }
                std::panic::resume_unwind(payload)
            }
        }
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
