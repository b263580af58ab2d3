//! Memory mappings: the reservation of a heap's address range, fixed-address anonymous and
//! private file mappings inside it, unmapping, `MADV_NOHUGEPAGE`, and process-local mappings a
//! fork child does not inherit.
//!
//! # Safety
//!
//! Wrappers that create or replace mappings at a caller-chosen address are `unsafe fn` (see
//! the layer's contract in `sys/mod.rs`); each `unsafe` block states which call it makes.

use super::{cvt, OS_PAGE};
use std::io;
use std::os::fd::RawFd;

/// Returns the system page size (`sysconf(_SC_PAGESIZE)`).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

/// Reserves `len` bytes of address space at exactly `addr`, inaccessible and without swap
/// reservation (`PROT_NONE`, `MAP_NORESERVE`, `MAP_FIXED_NOREPLACE`).
///
/// Fails with `EEXIST` when any part of the range is already mapped. Kernels older than 4.17
/// ignore `MAP_FIXED_NOREPLACE` and may place the mapping elsewhere: that case is detected,
/// undone and reported as `EEXIST` too. See mmap(2).
pub fn reserve(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so this cannot
    // invalidate any memory the program uses.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as usize != addr {
        // SAFETY: the kernel just created this mapping for us at `p`; nothing refers to it.
        unsafe { libc::munmap(p, len) };
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(())
}

/// Replaces `[addr, addr + len)` with zero-filled, readable and writable anonymous memory.
///
/// # Safety
///
/// - the range lies inside a reservation owned by the caller;
/// - no reference points into the range (its contents are discarded).
pub unsafe fn map_anon_fixed(addr: usize, len: usize) -> io::Result<()> {
    debug_assert!(addr % OS_PAGE == 0 && len % OS_PAGE == 0);
    // SAFETY: the caller owns the range (function contract), so MAP_FIXED replaces only our
    // own reservation.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    debug_assert_eq!(p as usize, addr);
    Ok(())
}

/// Maps `len` bytes of `fd` starting at file offset `offset` copy-on-write (`MAP_PRIVATE`)
/// at exactly `addr`.
///
/// # Safety
///
/// - the range lies inside a reservation owned by the caller;
/// - no reference points into the range;
/// - the file is at least `offset + len` bytes long for as long as the mapping exists
///   (otherwise touching the tail raises SIGBUS).
pub unsafe fn map_file_private_fixed(addr: usize, len: usize, fd: RawFd, offset: u64) -> io::Result<()> {
    debug_assert!(addr % OS_PAGE == 0 && len % OS_PAGE == 0 && offset % OS_PAGE as u64 == 0);
    // SAFETY: as for map_anon_fixed; the file length is the caller's promise.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            fd,
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    debug_assert_eq!(p as usize, addr);
    Ok(())
}

/// Turns `[addr, addr + len)` back into an inaccessible reservation, dropping its contents.
///
/// # Safety
///
/// Same as [`map_anon_fixed`].
pub unsafe fn rereserve(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and holds no references into it.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Maps `len` bytes of zero-filled, readable and writable private anonymous memory wherever
/// the kernel chooses, with `MAP_NORESERVE` (untouched pages cost nothing). Returns its
/// address. See mmap(2).
pub fn map_anonymous(len: usize) -> io::Result<usize> {
    // SAFETY: a fresh mapping at an address the kernel picks; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p as usize)
}

/// Maps `len` bytes of zero-filled, readable and writable private anonymous memory wherever
/// the kernel chooses (`MAP_NORESERVE`: untouched pages cost nothing), not inherited by
/// `fork` children (`MADV_DONTFORK`). Returns its address. For process-local caches that a
/// snapshot child must not copy. See mmap(2), madvise(2).
pub fn map_private_no_fork(len: usize) -> io::Result<usize> {
    let p = map_anonymous(len)? as *mut libc::c_void;
    // SAFETY: [p, p + len) is the mapping just created; advice changes no contents.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTFORK) } != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: as above; nothing refers to it yet.
        unsafe { libc::munmap(p, len) };
        return Err(e);
    }
    Ok(p as usize)
}

/// Unmaps `[addr, addr + len)`.
///
/// # Safety
///
/// Same as [`map_anon_fixed`].
pub unsafe fn unmap(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: the caller owns the range and holds no references into it.
    cvt(unsafe { libc::munmap(addr as *mut libc::c_void, len) }).map(drop)
}

/// `madvise(MADV_POPULATE_WRITE)` (Linux >= 5.14): faults every page of the range in as if
/// written, without changing its contents, so each page of a `MAP_PRIVATE` file mapping gets
/// its private copy. Safe: contents and protections stay as they are (the kernel copies each
/// page atomically under its page-table lock, so a concurrent writer loses nothing).
pub fn populate_write(addr: usize, len: usize) -> io::Result<()> {
    const MADV_POPULATE_WRITE: libc::c_int = 23;
    // SAFETY: MADV_POPULATE_WRITE changes no contents and no protections.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, MADV_POPULATE_WRITE) }).map(drop)
}

/// `madvise(MADV_HUGEPAGE)`: back the range with transparent huge pages where the kernel can
/// (fewer TLB misses and page faults for a large cache read in scattered 4 KiB frames). Advisory
/// only; safe because it never changes contents. Never used on the heap region itself.
pub fn huge_pages(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_HUGEPAGE changes no contents and no protections.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) }).map(drop)
}

/// `madvise(MADV_NOHUGEPAGE)`: keep the range in 4 KiB pages so that dirty tracking and
/// fork stay page-granular. Advisory only; safe because it never changes contents.
pub fn no_huge_pages(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE changes no contents and no protections.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) }).map(drop)
}
