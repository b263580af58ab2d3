//! A seccomp filter that makes this process look like a default container to snapheap: the
//! `userfaultfd` system call fails with `EPERM`, as under Docker's default profile (which
//! allows it in no rule), whatever the capabilities. Containers also lack `/dev/userfaultfd`;
//! snapheap never opens it, so the filter need not deny it.
//!
//! The filter is classic BPF written by hand (seccomp(2), `Documentation/userspace-api/
//! seccomp_filter.rst`): it checks the architecture field first (a filter that skipped it
//! would match another ABI's numbers), kills the process for a foreign architecture or an x32
//! system call number, answers `EPERM` for `userfaultfd` and allows everything else. It is
//! installed with `prctl(PR_SET_NO_NEW_PRIVS)` (required without `CAP_SYS_ADMIN`) and
//! `seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC)`, so every thread of the
//! process is covered, and it cannot be removed: call it only in a child process.

use std::io;

/// `offsetof(struct seccomp_data, nr)` and `arch`.
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// x32 system calls carry this bit in `nr` under the x86-64 architecture value.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_SET_MODE_FILTER: libc::c_uint = 1;
const SECCOMP_FILTER_FLAG_TSYNC: libc::c_uint = 1;
const SECCOMP_RET_KILL_PROCESS: u32 = 0x8000_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;

// Classic BPF opcodes (linux/bpf_common.h): class | size | mode, or class | op | source.
const BPF_LD: u16 = 0x00;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_W: u16 = 0x00;
const BPF_ABS: u16 = 0x20;
const BPF_JEQ: u16 = 0x10;
const BPF_JSET: u16 = 0x40;
const BPF_K: u16 = 0x00;
const BPF_LD_W_ABS: u16 = op(&[BPF_LD, BPF_W, BPF_ABS]);
const BPF_JEQ_K: u16 = op(&[BPF_JMP, BPF_JEQ, BPF_K]);
const BPF_JSET_K: u16 = op(&[BPF_JMP, BPF_JSET, BPF_K]);
const BPF_RET_K: u16 = op(&[BPF_RET, BPF_K]);

/// ORs the parts of an opcode (a loop, so that zero-valued parts stay named).
const fn op(parts: &[u16]) -> u16 {
    let mut v = 0;
    let mut i = 0;
    while i < parts.len() {
        v |= parts[i];
        i += 1;
    }
    v
}

const _: () = assert!(BPF_LD_W_ABS == 0x20 && BPF_JEQ_K == 0x15 && BPF_JSET_K == 0x45 && BPF_RET_K == 0x06);

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program (exposed for a test of its shape).
pub fn program(deny_nr: u32, errno: u32) -> Vec<libc::sock_filter> {
    vec![
        // 0: A = arch; foreign architecture -> kill.
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        // 3: A = nr; x32 numbers -> kill (x86-64 only; the bit is unused elsewhere).
        stmt(BPF_LD_W_ABS, DATA_NR),
        jump(BPF_JSET_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_KILL_PROCESS),
        // 6: the denied call -> errno.
        jump(BPF_JEQ_K, deny_nr, 0, 1),
        stmt(BPF_RET_K, SECCOMP_RET_ERRNO | (errno & 0xFFFF)),
        stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
}

/// Installs the filter denying `userfaultfd` with `EPERM` on every thread of this process.
/// Irreversible: call it in a child process only.
pub fn deny_userfaultfd() -> io::Result<()> {
    let prog = program(libc::SYS_userfaultfd as u32, libc::EPERM as u32);
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fprog` points to `prog`, a valid filter array that outlives the call (the
    // kernel copies it).
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            SECCOMP_FILTER_FLAG_TSYNC,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r != 0 {
        // With TSYNC a positive return is the id of a thread that could not be synchronised.
        return Err(if r < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::from_raw_os_error(libc::ESRCH)
        });
    }
    Ok(())
}

/// Calls `userfaultfd(O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)` directly and returns its
/// errno (`None` if it succeeded; the descriptor is closed again).
pub fn userfaultfd_errno() -> Option<i32> {
    // SAFETY: userfaultfd takes one integer argument.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK | 1) };
    if fd < 0 {
        return io::Error::last_os_error().raw_os_error();
    }
    // SAFETY: we own the descriptor just returned.
    unsafe { libc::close(fd as libc::c_int) };
    None
}
