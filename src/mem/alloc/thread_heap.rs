//! Thread heaps: the process-local per-(thread, arena) caches, the thread-local table that
//! finds them, the registry of open arenas, and the thread-exit hook.
//!
//! A [`ThreadHeap`] holds, per size class, the slab the thread currently allocates from. It is
//! allocated from [`std::alloc::System`] (never from the region, never from the global
//! allocator), linked into its arena's heap list and never freed: when its thread exits it is
//! abandoned (its slabs go back to the pools) and may be claimed by a new thread of the same
//! arena instance.
//!
//! Each open arena holds a *slot* `0..MAX_ARENAS` in the process-wide registry and a *key*
//! unique to this open instance. The thread-local table `TLS[slot]` holds `(heap, key)`; an
//! entry is valid for an arena iff its key equals the arena's current key, so entries left
//! behind by a closed arena (or by another arena that used the same slot) are ignored without
//! being dereferenced for anything but the harmless `busy` store of the fast path.
//!
//! # Invariants
//!
//! - `TLS[slot].heap` always points to a live `ThreadHeap` (initially [`DUMMY_HEAP`]).
//! - `TLS[slot].key == arena.key` ⇒ the heap is claimed by this thread and on the arena's list.
//! - A heap's `current[c]` is [`EMPTY_DESC`] or a slab of class `c` owned by that heap;
//!   each `retained[c][i]` is null or a slab of class `c` owned by that heap; no slab
//!   appears twice among them.
//! - Registry slot `s` holds `(arena, key)` of at most one open arena.
//!
//! # Safety
//!
//! `current[c]` and `retained[c][i]` pointers are only dereferenced by the heap's thread (or by the exit hook of
//! that thread), inside an allocator call (`busy == 1`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering::*};

use super::arena::Arena;
use super::pause::SpinLock;
use super::segment::SlabDesc;
use super::size_class::NUM_CLASSES;
use crate::sys;

/// How many arenas may be open in one process at once.
pub(crate) const MAX_ARENAS: usize = 64;

/// Full slabs a heap keeps owning per class besides its current one (see `alloc_block`).
pub(crate) const RETAIN: usize = 4;

/// Per-(thread, arena) allocation state. Process-local.
#[repr(C)]
pub(crate) struct ThreadHeap {
    /// 1 while the owning thread is inside an allocator call of the arena.
    pub busy: AtomicU32,
    /// Key of the arena instance this heap belongs to.
    pub key: u32,
    /// Per class: the slab this thread allocates from, or `EMPTY_DESC`.
    pub current: [*mut SlabDesc; NUM_CLASSES],
    /// Per class: slabs this heap filled and still owns (null = empty slot), so that its own
    /// frees into them stay on the non-atomic fast path and it can allocate from them again.
    pub retained: [[*mut SlabDesc; RETAIN]; NUM_CLASSES],
    /// Per class: the `retained` slot to evict next (round robin).
    pub retain_next: [u8; NUM_CLASSES],
    /// Next heap on the arena's list (immutable once pushed).
    pub next_heap: *mut ThreadHeap,
    /// Held by a live thread.
    pub claimed: AtomicBool,
}

/// A wrapper that lets statics hold raw pointers.
#[repr(transparent)]
pub(crate) struct Shared<T>(pub T);
// SAFETY: the wrapped statics are only read, or written through atomics (see their docs).
unsafe impl<T> Sync for Shared<T> {}

/// A descriptor with nothing free: `current[c]` of a heap without a slab of class `c`. The
/// fast path reads its `free` (0) and falls into the slow path, which never writes it.
pub(crate) static EMPTY_DESC: Shared<SlabDesc> = Shared(SlabDesc {
    kind: 0,
    class: 0,
    has_aligned: std::sync::atomic::AtomicU8::new(0),
    _pad: 0,
    slices: 0,
    block_size: 0,
    capacity: 0,
    reserved: 0,
    used: 0,
    free: 0,
    local_free: 0,
    thread_free: AtomicUsize::new(0),
    owner: AtomicUsize::new(0),
    next: 0,
});

/// `EMPTY_DESC` as the pointer stored in `current`.
#[inline(always)]
pub(crate) fn empty_desc() -> *mut SlabDesc {
    &EMPTY_DESC.0 as *const SlabDesc as *mut SlabDesc
}

/// The heap of TLS entries that belong to no arena: only its `busy` is ever written (by the
/// fast path before it notices the key mismatch), atomically.
pub(crate) static DUMMY_HEAP: Shared<ThreadHeap> = Shared(ThreadHeap {
    busy: AtomicU32::new(0),
    key: 0,
    current: [&EMPTY_DESC.0 as *const SlabDesc as *mut SlabDesc; NUM_CLASSES],
    retained: [[std::ptr::null_mut(); RETAIN]; NUM_CLASSES],
    retain_next: [0; NUM_CLASSES],
    next_heap: std::ptr::null_mut(),
    claimed: AtomicBool::new(true),
});

/// One thread-local table entry.
#[derive(Clone, Copy)]
pub(crate) struct TlsEntry {
    pub heap: *const ThreadHeap,
    pub key: u32,
}

impl TlsEntry {
    pub(crate) const EMPTY: TlsEntry = TlsEntry {
        heap: &DUMMY_HEAP.0 as *const ThreadHeap,
        key: 0,
    };
}

thread_local! {
    static TLS: [Cell<TlsEntry>; MAX_ARENAS] = const { [const { Cell::new(TlsEntry::EMPTY) }; MAX_ARENAS] };
    static HOOK_ARMED: Cell<bool> = const { Cell::new(false) };
}

/// The calling thread's entry for `slot`. Cost: one TLS-relative load pair.
#[inline(always)]
pub(crate) fn tls_entry(slot: u32) -> TlsEntry {
    TLS.try_with(|t| t[slot as usize % MAX_ARENAS].get())
        .unwrap_or(TlsEntry::EMPTY)
}

fn set_tls_entry(slot: u32, e: TlsEntry) {
    let _ = TLS.try_with(|t| t[slot as usize % MAX_ARENAS].set(e));
}

struct RegSlot {
    arena: AtomicPtr<Arena>,
    key: AtomicU32,
}

struct Registry {
    lock: SpinLock,
    slots: [RegSlot; MAX_ARENAS],
}

static REGISTRY: Registry = Registry {
    lock: SpinLock::new(),
    slots: [const {
        RegSlot {
            arena: AtomicPtr::new(std::ptr::null_mut()),
            key: AtomicU32::new(0),
        }
    }; MAX_ARENAS],
};

static NEXT_KEY: AtomicU32 = AtomicU32::new(2);

/// Gives an opening arena a free slot and a fresh key. `None` when all slots are taken.
pub(crate) fn register_arena(arena: *const Arena) -> Option<(u32, u32)> {
    let _g = REGISTRY.lock.lock();
    let slot = REGISTRY.slots.iter().position(|s| s.key.load(Relaxed) == 0)?;
    let mut key = NEXT_KEY.fetch_add(2, Relaxed);
    if key == 0 {
        key = NEXT_KEY.fetch_add(2, Relaxed);
    }
    REGISTRY.slots[slot].arena.store(arena as *mut Arena, Relaxed);
    REGISTRY.slots[slot].key.store(key, Relaxed);
    Some((slot as u32, key))
}

/// Frees the slot of a closing arena; exit hooks no longer find it afterwards. Waits for an
/// exit hook that is abandoning a heap of the arena.
pub(crate) fn unregister_arena(slot: u32, key: u32) {
    let _g = REGISTRY.lock.lock();
    let s = &REGISTRY.slots[slot as usize % MAX_ARENAS];
    if s.key.load(Relaxed) == key {
        s.key.store(0, Relaxed);
        s.arena.store(std::ptr::null_mut(), Relaxed);
    }
}

const HOOK_NONE: usize = 0;
const HOOK_BUSY: usize = 1;
const HOOK_FAILED: usize = 2;
const HOOK_KEY_BIAS: usize = 3;
static HOOK_KEY: AtomicUsize = AtomicUsize::new(HOOK_NONE);

fn hook_key() -> Option<sys::thread_exit_hook::Key> {
    loop {
        match HOOK_KEY.load(Acquire) {
            HOOK_NONE => {
                if HOOK_KEY
                    .compare_exchange(HOOK_NONE, HOOK_BUSY, Acquire, Relaxed)
                    .is_ok()
                {
                    let v = match sys::thread_exit_hook::create(on_thread_exit) {
                        Some(k) => k as usize + HOOK_KEY_BIAS,
                        None => HOOK_FAILED,
                    };
                    HOOK_KEY.store(v, Release);
                }
            }
            HOOK_BUSY => sys::yield_now(),
            HOOK_FAILED => return None,
            v => return Some((v - HOOK_KEY_BIAS) as sys::thread_exit_hook::Key),
        }
    }
}

/// Makes sure the calling thread runs [`on_thread_exit`] when it exits.
fn arm_exit_hook() {
    if HOOK_ARMED.try_with(|a| a.get()).unwrap_or(true) {
        return;
    }
    if let Some(k) = hook_key() {
        if sys::thread_exit_hook::arm(k) {
            let _ = HOOK_ARMED.try_with(|a| a.set(true));
        }
    }
}

/// The pthread key destructor: abandons every heap the exiting thread holds in an open arena.
unsafe extern "C" fn on_thread_exit(_: *mut libc::c_void) {
    let _ = HOOK_ARMED.try_with(|a| a.set(false));
    for slot in 0..MAX_ARENAS as u32 {
        let e = tls_entry(slot);
        if e.key == 0 {
            continue;
        }
        set_tls_entry(slot, TlsEntry::EMPTY);
        let _g = REGISTRY.lock.lock();
        let s = &REGISTRY.slots[slot as usize];
        if s.key.load(Relaxed) == e.key {
            let arena = s.arena.load(Relaxed);
            // SAFETY: the registry holds the arena while it is open, and close() unregisters
            // (under this lock) before the arena can go away; e.heap is a claimed heap of
            // this instance (key match) and the thread that claimed it is this one.
            unsafe { (*arena).abandon_heap(e.heap as *mut ThreadHeap) };
        }
    }
}

impl Arena {
    /// The calling thread's heap for this arena, claiming or creating one on first use.
    /// `None` when the arena is closed or System memory ran out.
    #[cold]
    pub(crate) fn heap_for_thread(&self) -> Option<*mut ThreadHeap> {
        if self.gate.load(Relaxed) == 0 {
            return None;
        }
        let e = tls_entry(self.slot);
        if e.key == self.key {
            return Some(e.heap as *mut ThreadHeap);
        }
        arm_exit_hook();
        let mut h = self.heaps.load(Acquire);
        while !h.is_null() {
            // SAFETY: heaps on the list are never freed.
            let heap = unsafe { &*h };
            if !heap.claimed.load(Relaxed) && heap.claimed.compare_exchange(false, true, Acquire, Relaxed).is_ok() {
                set_tls_entry(self.slot, TlsEntry { heap: h, key: self.key });
                return Some(h);
            }
            h = heap.next_heap;
        }
        let layout = Layout::new::<ThreadHeap>();
        // SAFETY: layout has nonzero size.
        let h = unsafe { System.alloc(layout) } as *mut ThreadHeap;
        if h.is_null() {
            return None;
        }
        // SAFETY: h is fresh, properly aligned System memory for one ThreadHeap.
        unsafe {
            h.write(ThreadHeap {
                busy: AtomicU32::new(0),
                key: self.key,
                current: [empty_desc(); NUM_CLASSES],
                retained: [[std::ptr::null_mut(); RETAIN]; NUM_CLASSES],
                retain_next: [0; NUM_CLASSES],
                next_heap: std::ptr::null_mut(),
                claimed: AtomicBool::new(true),
            });
        }
        let mut head = self.heaps.load(Relaxed);
        loop {
            // SAFETY: h is not yet published, so this thread has exclusive access.
            unsafe { (*h).next_heap = head };
            match self.heaps.compare_exchange_weak(head, h, Release, Relaxed) {
                Ok(_) => break,
                Err(x) => head = x,
            }
        }
        set_tls_entry(self.slot, TlsEntry { heap: h, key: self.key });
        Some(h)
    }
}
