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

pub mod uffd;

use std::io;
use std::os::fd::RawFd;

/// The size of an OS page. snapheap requires 4096-byte pages (checked at open).
pub const OS_PAGE: usize = 4096;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
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

/// `madvise(MADV_NOHUGEPAGE)`: keep the range in 4 KiB pages so that dirty tracking and
/// fork stay page-granular. Advisory only; safe because it never changes contents.
pub fn no_huge_pages(addr: usize, len: usize) -> io::Result<()> {
    // SAFETY: MADV_NOHUGEPAGE changes no contents and no protections.
    cvt(unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) }).map(drop)
}

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

/// `fork()`. Returns 0 in the child and the child's pid in the parent.
///
/// # Safety
///
/// In a multithreaded parent the child may only perform async-signal-safe operations until it
/// calls [`exit_immediately`]: no allocation, no locks, no panics, no stdio.
pub unsafe fn fork() -> io::Result<libc::pid_t> {
    // SAFETY: the caller restricts what the child does (function contract).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

/// `_exit(code)`: leaves the process without running destructors, atexit handlers or stdio
/// flushes. Async-signal-safe.
pub fn exit_immediately(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Asks the kernel to send SIGKILL to this process when its parent dies (`PR_SET_PDEATHSIG`).
/// Returns the current parent pid afterwards so the caller can detect a parent that died
/// before the call. Async-signal-safe.
pub fn die_with_parent() -> libc::pid_t {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid have no memory-safety preconditions.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        libc::getppid()
    }
}

/// `waitpid(pid, 0)`: blocks until the child exits. Returns its raw wait status.
pub fn wait_child(pid: libc::pid_t) -> io::Result<libc::c_int> {
    let mut status = 0;
    loop {
        // SAFETY: status is valid writable storage for one int.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

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

/// `waitpid(pid, WNOHANG)`: `Ok(Some(status))` once the child has exited, `Ok(None)` while it
/// runs.
pub fn try_wait_child(pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
    let mut status = 0;
    loop {
        // SAFETY: status is valid writable storage for one int.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return Ok(Some(status));
        }
        if r == 0 {
            return Ok(None);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Closes every file descriptor except those in `keep` (`close_range(2)`, falling back to
/// `close` on each descriptor below the soft limit). Async-signal-safe; used by the snapshot
/// child so that it does not keep the program's other files, sockets or heap locks open.
pub fn close_all_except(keep: &[RawFd]) {
    let mut sorted = [-1; 8];
    let n = keep.len().min(sorted.len());
    sorted[..n].copy_from_slice(&keep[..n]);
    sorted[..n].sort_unstable();
    let mut lo: libc::c_uint = 0;
    for &k in sorted[..n].iter().filter(|&&k| k >= 0) {
        let k = k as libc::c_uint;
        if k > lo {
            close_range(lo, k - 1);
        }
        lo = lo.max(k + 1);
    }
    close_range(lo, libc::c_uint::MAX);
}

fn close_range(lo: libc::c_uint, hi: libc::c_uint) {
    // SAFETY: close_range takes no pointers; closing descriptors is memory-safe.
    let r = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0) };
    if r != 0 {
        // SAFETY: getrlimit writes one struct rlimit into valid storage.
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: rl is valid writable storage for one struct rlimit.
        let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } == 0 {
            rl.rlim_cur.min(1 << 20) as libc::c_uint
        } else {
            1024
        };
        for fd in lo..=hi.min(limit) {
            // SAFETY: closing any descriptor number is memory-safe.
            unsafe { libc::close(fd as libc::c_int) };
        }
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

/// Process-level helpers for [`GlobalHeap`](crate::GlobalHeap): they run inside the global
/// allocator's first call, so none of them allocates.
pub mod process {
    use std::ffi::CStr;

    /// The value of environment variable `name` (`getenv(3)`, which does not allocate), or
    /// `None` when unset. The bytes stay valid as long as nobody modifies the environment.
    pub fn getenv(name: &CStr) -> Option<&'static [u8]> {
        // SAFETY: name is NUL-terminated; getenv returns null or a NUL-terminated string in
        // the environment block.
        let p = unsafe { libc::getenv(name.as_ptr()) };
        if p.is_null() {
            return None;
        }
        // SAFETY: p is a NUL-terminated string that lives in the environment block, which is
        // not freed while the process runs (modifying the environment is the caller's risk,
        // as with `std::env::set_var`).
        Some(unsafe { CStr::from_ptr(p) }.to_bytes())
    }

    /// Writes `buf` to standard error (`write(2)` on descriptor 2), ignoring failures.
    pub fn write_stderr(mut buf: &[u8]) {
        while !buf.is_empty() {
            // SAFETY: buf is valid for reads of buf.len() bytes.
            let r = unsafe { libc::write(2, buf.as_ptr().cast(), buf.len()) };
            if r <= 0 {
                return;
            }
            buf = &buf[r as usize..];
        }
    }

    /// An identity of the running executable: a 64-bit hash of its GNU build-id note (found
    /// with `dl_iterate_phdr`), or, when it has none, of the size, modification time, inode
    /// and device of `/proc/self/exe`. Never 0. `None` when neither is available.
    pub fn executable_id() -> Option<u64> {
        let mut id = 0u64;
        // SAFETY: the callback only reads the program headers the loader passes it and writes
        // `id`, whose address it receives as `data`.
        unsafe { libc::dl_iterate_phdr(Some(build_id_cb), (&mut id as *mut u64).cast()) };
        if id != 0 {
            return Some(id);
        }
        // SAFETY: an all-zero stat is a valid value for the out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the path is NUL-terminated and st is valid writable storage.
        if unsafe { libc::stat(c"/proc/self/exe".as_ptr(), &mut st) } != 0 {
            return None;
        }
        let mut h = fnv1a(&(st.st_size as u64).to_le_bytes());
        for v in [st.st_mtime as u64, st.st_mtime_nsec as u64, st.st_ino, st.st_dev] {
            h = (h ^ v).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Some(h | 1)
    }

    /// `dl_iterate_phdr` callback: looks for `NT_GNU_BUILD_ID` in the PT_NOTE segments of the
    /// first object (the main program) and stops.
    ///
    /// # Safety
    ///
    /// Called by `dl_iterate_phdr` with a valid `dl_phdr_info` and `data` pointing to a `u64`.
    unsafe extern "C" fn build_id_cb(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut libc::c_void,
    ) -> libc::c_int {
        const NT_GNU_BUILD_ID: u32 = 3;
        // SAFETY: the loader passes a valid dl_phdr_info and our `data` pointer.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut u64)) };
        for i in 0..info.dlpi_phnum as usize {
            // SAFETY: dlpi_phdr has dlpi_phnum entries.
            let ph = unsafe { &*info.dlpi_phdr.add(i) };
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let mut p = info.dlpi_addr as usize + ph.p_vaddr as usize;
            let end = p + ph.p_memsz as usize;
            while p + 12 <= end {
                // SAFETY: [p, p + 12) lies inside the loaded, readable note segment.
                let (namesz, descsz, ty) = unsafe {
                    let w = p as *const u32;
                    (
                        w.read_unaligned() as usize,
                        w.add(1).read_unaligned() as usize,
                        w.add(2).read_unaligned(),
                    )
                };
                let name = p + 12;
                let desc = name + namesz.next_multiple_of(4);
                let next = desc + descsz.next_multiple_of(4);
                if next > end {
                    break;
                }
                // SAFETY: name and desc lie inside the note segment (checked against end).
                let (n, d) = unsafe {
                    (
                        std::slice::from_raw_parts(name as *const u8, namesz),
                        std::slice::from_raw_parts(desc as *const u8, descsz),
                    )
                };
                if ty == NT_GNU_BUILD_ID && n == b"GNU\0" && !d.is_empty() {
                    *out = fnv1a(d) | 1;
                    return 1;
                }
                p = next;
            }
        }
        1
    }

    /// FNV-1a over `bytes` (the same function as the heap format's; repeated here because
    /// this module is also compiled alone by the examples).
    fn fnv1a(bytes: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }

    /// Ends the process with `SIGABRT` (`abort(3)`), without unwinding or allocating.
    pub fn abort() -> ! {
        // SAFETY: abort has no preconditions.
        unsafe { libc::abort() }
    }
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
