//! The process: forking the snapshot writer, waiting for and reaping children, closing
//! inherited descriptors, and the process-level helpers of
//! [`GlobalHeap`](crate::GlobalHeap) (they run inside the global allocator's first call, so
//! none of them allocates).
//!
//! # Safety
//!
//! [`fork`] is an `unsafe fn` (the child may only call async-signal-safe code); the other
//! `unsafe` blocks each state the libc call's precondition.

use std::io;
use std::os::fd::RawFd;

use std::ffi::CStr;

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
