//! File descriptors: locking, positioned reads and writes, syncs, allocation, length and
//! readahead. Safe wrappers: a bad descriptor yields `EBADF`, not undefined behaviour.
//!
//! # Safety
//!
//! Each `unsafe` block passes a buffer the caller borrowed (or, for `pread_into`, a range the
//! caller guarantees mapped and unaliased) with its exact length.

use super::{cvt, cvt_size};
use std::io;
use std::os::fd::RawFd;

/// Takes an exclusive `flock` on `fd` without blocking. Returns `Ok(false)` when another open
/// file description holds it. The lock belongs to the open file description, so a forked
/// child inherits it. See flock(2).
pub fn try_lock_exclusive(fd: RawFd) -> io::Result<bool> {
    loop {
        // SAFETY: flock on any integer is memory-safe; a bad fd yields EBADF.
        let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Writes all of `buf` at `offset` (`pwrite` until done). Never allocates.
pub fn pwrite_all(fd: RawFd, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid readable slice of buf.len() bytes.
        let r = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), offset as libc::off_t) };
        match cvt_size(r) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `offset`, stopping early only at end of file. Returns the
/// number of bytes read.
pub fn pread_full(fd: RawFd, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is a valid writable slice of rest.len() bytes.
        let r = unsafe {
            libc::pread(
                fd,
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match cvt_size(r) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads `len` bytes at file `offset` straight into memory at `addr`.
///
/// # Safety
///
/// `[addr, addr + len)` is writable memory that no Rust reference aliases.
#[cfg(test)]
pub unsafe fn pread_into(fd: RawFd, addr: usize, len: usize, offset: u64) -> io::Result<usize> {
    // SAFETY: the caller guarantees the range is writable and unaliased.
    let buf = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) };
    pread_full(fd, buf, offset)
}

/// `fdatasync(fd)`. See fdatasync(2): after an error the page cache state is unknown, so the
/// caller must treat the file as no longer trustworthy (snapheap poisons the heap).
pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fdatasync on any integer is memory-safe.
    cvt(unsafe { libc::fdatasync(fd) }).map(drop)
}

/// `fsync(fd)`, used for directories (new or removed entries).
pub fn fsync(fd: RawFd) -> io::Result<()> {
    // SAFETY: fsync on any integer is memory-safe.
    cvt(unsafe { libc::fsync(fd) }).map(drop)
}

/// Allocates disk blocks for `[offset, offset + len)` and extends the file size to cover it
/// (`fallocate` mode 0), so later writes cannot fail for lack of space. Falls back to
/// `ftruncate` where the file system lacks `fallocate` (`EOPNOTSUPP`).
pub fn allocate(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: fallocate on any integer is memory-safe.
        let r = unsafe { libc::fallocate(fd, 0, offset as libc::off_t, len as libc::off_t) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => {
                let end = offset + len;
                if file_len(fd)? < end {
                    // SAFETY: ftruncate on any integer is memory-safe.
                    cvt(unsafe { libc::ftruncate(fd, end as libc::off_t) })?;
                }
                return Ok(());
            }
            _ => return Err(e),
        }
    }
}

/// Sets the file length with `ftruncate`.
pub fn set_len(fd: RawFd, len: u64) -> io::Result<()> {
    // SAFETY: ftruncate on any integer is memory-safe.
    cvt(unsafe { libc::ftruncate(fd, len as libc::off_t) }).map(drop)
}

/// Returns the file length (`fstat`).
pub fn file_len(fd: RawFd) -> io::Result<u64> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: st is valid writable storage for one `struct stat`.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it initialised st.
    Ok(unsafe { st.assume_init() }.st_size as u64)
}

/// `posix_fadvise(POSIX_FADV_WILLNEED)`: starts reading `[offset, offset + len)` of the file
/// into the page cache and returns without waiting. Advisory: an error only means no prefetch.
pub fn prefetch(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: posix_fadvise reads only its integer arguments; a bad fd is reported as EBADF.
    let r = unsafe { libc::posix_fadvise(fd, offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}
