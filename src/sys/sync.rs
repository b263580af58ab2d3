//! Synchronisation primitives of the allocator's pause: `membarrier`, futex wait and wake,
//! `sched_yield`, and the thread-exit hook (a pthread key destructor).
//!
//! # Safety
//!
//! Each `unsafe` block states the libc call's precondition; futex words are `AtomicU32`s the
//! caller keeps alive for the call.

/// `membarrier` commands used for the allocator's asymmetric fence (see membarrier(2)).
pub mod membarrier {
    const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    /// Registers the process for private expedited membarriers. Returns false when the
    /// kernel lacks them; callers then fall back to full fences on the fast path.
    pub fn register() -> bool {
        // SAFETY: membarrier takes no pointers.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
    }

    /// Issues a full memory barrier on every running thread of this process. Returns false on
    /// failure (not registered).
    pub fn private_expedited() -> bool {
        // SAFETY: membarrier takes no pointers.
        unsafe { libc::syscall(libc::SYS_membarrier, CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
    }
}

/// Futex wait/wake on a 32-bit word, process-private (see futex(2)). Used by the allocator's
/// pause gate; never allocates.
pub mod futex {
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `*word == expected` (`FUTEX_WAIT_PRIVATE`). Returns on a wake, a signal,
    /// a spurious wake-up, or at once when the word already differs: callers re-check.
    pub fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: word points to a live, aligned u32 for the duration of the call; a null
        // timeout means no timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// Wakes every waiter on `word` (`FUTEX_WAKE_PRIVATE`).
    pub fn wake_all(word: &AtomicU32) {
        // SAFETY: word points to a live, aligned u32; FUTEX_WAKE only reads the address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

/// `sched_yield()`: lets another runnable thread run (used by spin locks after spinning).
pub fn yield_now() {
    // SAFETY: sched_yield has no preconditions.
    unsafe { libc::sched_yield() };
}

/// A per-thread exit hook built on a pthread key: the destructor runs at thread exit for every
/// thread that called [`thread_exit_hook::arm`] (glibc runs key destructors up to
/// `PTHREAD_DESTRUCTOR_ITERATIONS` rounds, so arming again from a destructor works).
pub mod thread_exit_hook {
    /// A created pthread key.
    pub type Key = libc::pthread_key_t;

    /// Creates a key whose destructor is `dtor` (`pthread_key_create`). May allocate through
    /// glibc's own malloc, never through the Rust global allocator.
    pub fn create(dtor: unsafe extern "C" fn(*mut libc::c_void)) -> Option<Key> {
        let mut key: Key = 0;
        // SAFETY: key is valid writable storage; dtor is a valid extern "C" function.
        let r = unsafe { libc::pthread_key_create(&mut key, Some(dtor)) };
        (r == 0).then_some(key)
    }

    /// Makes the calling thread run the key's destructor at exit (`pthread_setspecific` with a
    /// non-null value). Returns false on failure.
    pub fn arm(key: Key) -> bool {
        // SAFETY: setting a non-null opaque value for a created key has no other precondition;
        // the value is never dereferenced.
        unsafe { libc::pthread_setspecific(key, std::ptr::dangling::<u8>().cast()) == 0 }
    }
}
