//! The thin syscall layer: every system call the crate makes goes through this module.
//!
//! Each wrapper does one call, converts `-1`/`MAP_FAILED` into [`std::io::Error`] from
//! `errno`, and retries `EINTR` where the call is restartable. Nothing here allocates, so the
//! wrappers may be used from the allocator's slow path and from a forked snapshot child.
//!
//! # Safety
//!
//! Wrappers that create or replace mappings at a caller-chosen address are `unsafe fn`: the
//! caller must own the address range (it lies inside a reservation made by
//! [`reserve`]) and must guarantee that no live Rust reference points into memory that the
//! call replaces. Wrappers that only read or write file descriptors are safe: a bad file
//! descriptor yields `EBADF`, not undefined behaviour.

mod file;
mod mm;
pub mod pagemap;
pub mod process;
mod sync;
pub mod uffd;

pub use file::*;
pub use mm::*;
pub use process::{close_all_except, die_with_parent, exit_immediately, fork, try_wait_child, wait_child};
pub use sync::{futex, membarrier, thread_exit_hook, yield_now};

use std::io;

/// The size of an OS page. snapheap requires 4096-byte pages (checked at open).
pub const OS_PAGE: usize = 4096;

pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// 64 random bits from `getrandom(2)` (falls back to time and address entropy if it fails).
pub fn random_u64() -> u64 {
    let mut v = 0u64;
    // SAFETY: v is valid writable storage of 8 bytes.
    let r = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if r != 8 {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = t ^ ((&v as *const u64 as u64).rotate_left(32)) ^ u64::from(std::process::id());
    }
    v
}
