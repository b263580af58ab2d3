//! Pausing an arena (the commit point) and the small locks the allocator uses.
//!
//! While a [`PauseGuard`] is held no thread is inside `alloc`/`dealloc`/`realloc` of the
//! arena, so the allocator state inside the region is consistent and may be copied.
//!
//! Protocol (an asymmetric Dekker handshake): every allocator call of a thread sets its
//! heap's `busy` flag, issues a *compiler* fence, then reads the arena's `gate` word; the
//! pausing thread sets the pause bit in `gate`, then runs `membarrier(PRIVATE_EXPEDITED)`,
//! which executes a full fence on every running thread of the process, then waits until every
//! registered heap's `busy` is 0. Either the caller's `busy = 1` is visible to the pauser
//! (which then waits for it), or the caller's read of `gate` sees the pause bit (and it backs
//! off, clears `busy` and sleeps on the `gate` futex). When membarrier registration fails the
//! fast path issues a real `SeqCst` fence instead ([`STRONG_FENCE`]).
//!
//! # Invariants
//!
//! - `gate == key` while open and not paused, `key | PAUSE_BIT` while paused, 0 when closed;
//!   keys are even and nonzero.
//! - While a guard is held: for every heap `h` registered with the arena, `h.busy == 0`, and
//!   any thread that sets `busy = 1` later observes `gate != key` and backs off before
//!   touching the region.
//!
//! # Safety
//!
//! Heaps on an arena's list are never freed while the process runs, so walking the list is
//! always valid.

use std::sync::atomic::{compiler_fence, fence, AtomicBool, AtomicU8, Ordering::*};

use super::arena::Arena;
use crate::sys;

/// Bit set in `Arena::gate` while a pause is in force.
pub(crate) const PAUSE_BIT: u32 = 1;

/// Set when `membarrier` is unavailable: the fast path then uses a full fence.
pub(crate) static STRONG_FENCE: AtomicBool = AtomicBool::new(false);
static MEMBARRIER_STATE: AtomicU8 = AtomicU8::new(0); // 0 unknown, 1 registered, 2 unavailable

/// Registers the process for expedited membarriers once (called at create/attach).
pub(crate) fn init_fence_mode() {
    if MEMBARRIER_STATE.load(Acquire) != 0 {
        return;
    }
    if sys::membarrier::register() {
        MEMBARRIER_STATE.store(1, Release);
    } else {
        STRONG_FENCE.store(true, SeqCst);
        MEMBARRIER_STATE.store(2, Release);
    }
}

/// The fence between setting `busy` and reading `gate` on every allocator call. Cost: one
/// relaxed load and a predictable branch when membarrier works.
#[inline(always)]
pub(crate) fn entry_fence() {
    if STRONG_FENCE.load(Relaxed) {
        fence(SeqCst);
    } else {
        compiler_fence(SeqCst);
    }
}

/// Spins briefly, then yields the CPU; `round` counts calls.
#[inline]
pub(crate) fn backoff(round: &mut u32) {
    *round += 1;
    if *round < 64 {
        std::hint::spin_loop();
    } else {
        sys::yield_now();
    }
}

/// A test-and-test-and-set lock whose all-zero state is unlocked (it lives in the
/// zero-initialised control area). Held only for short, non-blocking critical sections, or
/// across the grow hook.
#[repr(transparent)]
pub(crate) struct SpinLock {
    locked: AtomicBool,
}

/// Holding one proves the lock is held; dropping it unlocks.
pub(crate) struct SpinGuard<'a> {
    lock: &'a SpinLock,
}

impl SpinLock {
    /// An unlocked lock.
    pub(crate) const fn new() -> Self {
        SpinLock {
            locked: AtomicBool::new(false),
        }
    }

    /// Acquires the lock, spinning then yielding.
    pub(crate) fn lock(&self) -> SpinGuard<'_> {
        let mut round = 0;
        loop {
            if !self.locked.load(Relaxed) && self.locked.compare_exchange_weak(false, true, Acquire, Relaxed).is_ok() {
                return SpinGuard { lock: self };
            }
            backoff(&mut round);
        }
    }
}

impl Drop for SpinGuard<'_> {
    fn drop(&mut self) {
        self.lock.locked.store(false, Release);
    }
}

/// While this guard lives no thread is inside an allocator call of its arena. Dropping it
/// resumes them. Do not allocate from the same arena while holding it (that call would wait
/// for the pause to end).
pub struct PauseGuard<'a> {
    arena: &'a Arena,
    _lock: SpinGuard<'a>,
}

impl std::fmt::Debug for PauseGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGuard")
            .field("base", &format_args!("{:#x}", self.arena.base))
            .finish()
    }
}

impl Arena {
    /// Stops every allocator call of this arena and returns when none is in flight.
    ///
    /// Must not be called by a thread that already holds a pause of this arena, nor from
    /// inside an allocator call.
    pub(crate) fn pause(&self) -> PauseGuard<'_> {
        let lock = self.pause_lock.lock();
        let g = self.gate.load(Relaxed);
        if g != 0 {
            self.gate.store(g | PAUSE_BIT, SeqCst);
        }
        if STRONG_FENCE.load(Relaxed) || !sys::membarrier::private_expedited() {
            // Without membarrier the fast path fences itself, so a full fence here completes
            // the Dekker handshake. (A registered process never sees the call fail.)
            STRONG_FENCE.store(true, SeqCst);
            fence(SeqCst);
        }
        let mut h = self.heaps.load(Acquire);
        while !h.is_null() {
            // SAFETY: heaps on the list are never freed (module Safety).
            let heap = unsafe { &*h };
            let mut round = 0;
            while heap.busy.load(Acquire) != 0 {
                backoff(&mut round);
            }
            h = heap.next_heap;
        }
        PauseGuard {
            arena: self,
            _lock: lock,
        }
    }

    /// Called by a thread that found the gate closed to it: sleeps while `gate == seen` and
    /// `seen` carries the pause bit.
    pub(crate) fn wait_while_paused(&self, seen: u32) {
        if seen & PAUSE_BIT == 0 {
            return;
        }
        while self.gate.load(Acquire) == seen {
            sys::futex::wait(&self.gate, seen);
        }
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        let a = self.arena;
        let open = if a.closed.load(Relaxed) { 0 } else { a.key };
        a.gate.store(open, SeqCst);
        sys::futex::wake_all(&a.gate);
    }
}
