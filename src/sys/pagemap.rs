//! Reading `/proc/self/pagemap` entries and clearing soft-dirty bits: the raw kernel interface
//! under the fallback trackers (`crate::mem::track`), available to an unprivileged process on
//! every kernel the crate supports (pagemap flags since Linux 4.2).
//!
//! `Documentation/admin-guide/mm/pagemap.rst`: `/proc/pid/pagemap` holds one 64-bit entry per
//! virtual page, at file offset `(addr / 4096) * 8`. Bits used here:
//!
//! - 63 [`PM_PRESENT`]: the page is in memory;
//! - 62 [`PM_SWAPPED`]: the page is swapped out (only anonymous memory is swapped: for a
//!   `MAP_PRIVATE` file mapping that is a page written since it was mapped);
//! - 61 [`PM_FILE`]: the page is a file page or shared anonymous memory. In a `MAP_PRIVATE`
//!   file mapping a present page without it is a private copy, made by the first write;
//! - 56 [`PM_MMAP_EXCLUSIVE`]: mapped by this process only;
//! - 55 [`PM_SOFT_DIRTY`]: written since soft-dirty bits were last cleared
//!   (`Documentation/admin-guide/mm/soft-dirty.rst`). Always 0 on a kernel built without
//!   `CONFIG_MEM_SOFT_DIRTY`, although clearing "succeeds" there.
//!
//! Page frame numbers (bits 0-54) read as zero without `CAP_SYS_ADMIN`; nothing here uses them.
//!
//! Everything here is one system call per function (reads loop until complete), never
//! allocates and never panics.
//!
//! # Safety
//!
//! Every function here is safe: they read and write only file descriptors and the slices
//! passed in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Entry bit: the page is present in memory.
pub const PM_PRESENT: u64 = 1 << 63;
/// Entry bit: the page is swapped out.
pub const PM_SWAPPED: u64 = 1 << 62;
/// Entry bit: a file page or shared anonymous page (not a private copy).
pub const PM_FILE: u64 = 1 << 61;
/// Entry bit: the page is mapped by this process only.
#[allow(dead_code)] // ABI reference: documented with the others, not used by a tracker yet.
pub const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;
/// Entry bit: written since soft-dirty bits were last cleared.
pub const PM_SOFT_DIRTY: u64 = 1 << 55;

/// The OS page size the entries index.
const PAGE: usize = 4096;

/// Whether a pagemap entry describes a private anonymous page: present and not a file page,
/// or swapped out. Such a page of a heap mapping has been written (or, for the shared zero
/// page mapped by a read of never-touched anonymous memory, read) since it was mapped.
pub const fn is_private_anon(entry: u64) -> bool {
    entry & PM_SWAPPED != 0 || (entry & PM_PRESENT != 0 && entry & PM_FILE == 0)
}

use super::cvt;

/// A read-only descriptor of this process's `/proc/self/pagemap`, for [`read`](Self::read).
///
/// The descriptor describes the address space of the process that opened it, also after
/// `fork()`: a forked child must not use an inherited one.
#[derive(Debug)]
pub struct PagemapEntries(OwnedFd);

impl PagemapEntries {
    /// Opens `/proc/self/pagemap` read-only with `O_CLOEXEC`. See proc(5).
    pub fn open() -> io::Result<PagemapEntries> {
        let path = c"/proc/self/pagemap";
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(PagemapEntries(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Reads the entries of the `out.len()` pages starting at `addr` (page-aligned) into `out`
    /// with `pread` (retried on `EINTR` and short reads). An unmapped page reads as 0. A read
    /// that ends early is an error (`EIO`): the kernel returns whole entries for any range of
    /// the user address space.
    pub fn read(&self, addr: usize, out: &mut [u64]) -> io::Result<()> {
        debug_assert!(addr % PAGE == 0);
        let mut done = 0usize; // bytes
        let total = out.len() * 8;
        let base = (addr / PAGE) as u64 * 8;
        while done < total {
            // SAFETY: the destination is the unread tail of `out`, writable for
            // `total - done` bytes and not otherwise borrowed during the call.
            let r = unsafe {
                libc::pread(
                    self.0.as_raw_fd(),
                    out.as_mut_ptr().cast::<u8>().add(done).cast(),
                    total - done,
                    (base + done as u64) as libc::off_t,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(e);
            }
            if r == 0 || r % 8 != 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            done += r as usize;
        }
        Ok(())
    }
}

/// Clears the soft-dirty bit of every page of this process and write-protects them, so that the
/// next write to each sets it again: writes `4` to `/proc/self/clear_refs` (proc(5)). The
/// effect is process-wide: every mapping, not one range. On a kernel without
/// `CONFIG_MEM_SOFT_DIRTY` the write succeeds and nothing happens, so success proves nothing.
pub fn clear_soft_dirty() -> io::Result<()> {
    let path = c"/proc/self/clear_refs";
    // SAFETY: `path` is a NUL-terminated string that outlives the call.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    loop {
        // SAFETY: the buffer is a 1-byte static string.
        let r = unsafe { libc::write(fd.as_raw_fd(), b"4".as_ptr().cast(), 1) };
        if r == 1 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return Err(if r < 0 {
            e
        } else {
            io::Error::from_raw_os_error(libc::EIO)
        });
    }
}

/// Fills `out` with random bytes from `getrandom(2)` (blocking until the pool is ready).
pub fn fill_random(out: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < out.len() {
        // SAFETY: the destination is the unfilled tail of `out`.
        let r = unsafe { libc::getrandom(out.as_mut_ptr().add(done).cast(), out.len() - done, 0) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        done += r as usize;
    }
    Ok(())
}
