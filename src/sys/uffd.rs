//! userfaultfd write-protection in asynchronous mode and the `PAGEMAP_SCAN` ioctl: the raw
//! kernel interface under the dirty-page tracker (`crate::mem::track`).
//!
//! The system headers on the build machines (linux-libc-dev 6.1) and the `libc` crate lack most
//! of these definitions, so they are declared here from the kernel's UAPI headers
//! (`include/uapi/linux/userfaultfd.h`, `include/uapi/linux/fs.h`) and documentation:
//!
//! - `Documentation/admin-guide/mm/userfaultfd.rst`, section "Write Protect Notifications" and
//!   its asynchronous mode (`UFFD_FEATURE_WP_ASYNC`, Linux 6.7): a write to a write-protected
//!   page is resolved by the kernel itself (the page is made writable and loses its uffd-wp
//!   bit) instead of being sent to a handler thread; `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4)
//!   makes `UFFDIO_WRITEPROTECT` also protect pages that are not populated yet, by installing
//!   pte markers.
//! - `Documentation/admin-guide/mm/pagemap.rst`, section "Pagemap Scan IOCTL": `PAGEMAP_SCAN` on
//!   a file descriptor of `/proc/<pid>/pagemap` reports runs of pages by category
//!   (`PAGE_IS_WRITTEN` = the uffd-wp bit is clear) and, with `PM_SCAN_WP_MATCHING`,
//!   write-protects the reported pages again, page by page under the page-table lock.
//!
//! Everything here is one system call per function, never allocates and never panics.
//!
//! # Invariants
//!
//! - A [`Uffd`] always holds a userfaultfd on which `UFFDIO_API` succeeded; a [`Pagemap`] always
//!   holds a descriptor of this process's `/proc/self/pagemap`. The newtypes exist so that the
//!   ioctl numbers below are only ever sent to the kind of file that defines them.
//! - `size_of::<PmScanArg>() == 96`, `size_of::<PageRegion>() == 24`, and every ioctl number
//!   equals the value the kernel headers compute (checked at compile time).
//!
//! # Safety
//!
//! Every function here is safe. Write-protection in asynchronous mode never changes memory
//! contents and never blocks a writer (the kernel resolves the fault itself), so registering
//! or protecting any range cannot break Rust's memory model. `PAGEMAP_SCAN` writes only into
//! the `&mut [PageRegion]` slice passed to [`Pagemap::scan`], whose pointer and length are set
//! by that function, never by the caller. [`ScratchMap`] owns its mapping and only accesses it
//! through raw pointers with bounds checks.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `_IOC` from `include/uapi/asm-generic/ioctl.h`: direction in bits 30-31, argument size in
/// bits 16-29, type in bits 8-15, number in bits 0-7.
const fn ioc(dir: u64, ty: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (ty << 8) | nr
}
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;
/// `_IOWR(ty, nr, T)`: the kernel reads and writes the argument.
const fn iowr(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}
/// `_IOR(ty, nr, T)`: the kernel reads the argument (the uapi spells it from its own view).
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, ty, nr, size)
}

/// The ioctl type of userfaultfd (`UFFDIO`) and the API version (`UFFD_API`).
const UFFDIO: u64 = 0xAA;
const UFFD_API: u64 = 0xAA;

/// `userfaultfd(2)` flag: only faults raised by user-space accesses are handled. Lets an
/// unprivileged process open a userfaultfd when `vm.unprivileged_userfaultfd = 0` (Linux 5.11).
pub const UFFD_USER_MODE_ONLY: libc::c_int = 1;

/// Unpopulated pages are write-protected too (pte markers), Linux 6.4.
pub const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// Write faults on protected pages are resolved by the kernel, not by a handler, Linux 6.7.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;

/// `UFFDIO_REGISTER` mode: track write-protect faults in the range.
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_WRITEPROTECT` mode: set (rather than clear) write-protection.
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `struct uffdio_api`.
#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

const UFFDIO_API: u64 = iowr(UFFDIO, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: u64 = iowr(UFFDIO, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: u64 = ior(UFFDIO, 0x01, size_of::<UffdioRange>());
const UFFDIO_WRITEPROTECT: u64 = iowr(UFFDIO, 0x06, size_of::<UffdioWriteprotect>());

/// Page category: the VMA is registered for asynchronous write-protection.
#[allow(dead_code)] // ABI reference: the tracker asks only for PAGE_IS_WRITTEN.
pub const PAGE_IS_WPALLOWED: u64 = 1 << 0;
/// Page category: written since it was last write-protected (its uffd-wp bit is clear).
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;
/// Page category: file-backed.
#[allow(dead_code)] // ABI reference: the tracker asks only for PAGE_IS_WRITTEN.
pub const PAGE_IS_FILE: u64 = 1 << 2;
/// Page category: present in memory.
#[allow(dead_code)] // ABI reference: the tracker asks only for PAGE_IS_WRITTEN.
pub const PAGE_IS_PRESENT: u64 = 1 << 3;
/// Page category: swapped out.
#[allow(dead_code)] // ABI reference: the tracker asks only for PAGE_IS_WRITTEN.
pub const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `PAGEMAP_SCAN` flag: write-protect the pages that matched, atomically with the report.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
/// `PAGEMAP_SCAN` flag: fail with `EPERM` on any VMA in the range that is not registered for
/// asynchronous write-protection. Without it such a VMA is skipped and so looks clean.
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `struct pm_scan_arg` (`include/uapi/linux/fs.h`, Linux 6.7).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`: one run `[start, end)` of pages sharing the reported `categories`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageRegion {
    /// First byte of the run.
    pub start: u64,
    /// One past the last byte of the run.
    pub end: u64,
    /// `PAGE_IS_*` bits, restricted to the scan's `return_mask`.
    pub categories: u64,
}

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)`.
const PAGEMAP_SCAN: u64 = iowr(b'f' as u64, 16, size_of::<PmScanArg>());

const _: () = {
    assert!(size_of::<PmScanArg>() == 96);
    assert!(size_of::<PageRegion>() == 24);
    assert!(UFFDIO_API == 0xc018_aa3f);
    assert!(UFFDIO_REGISTER == 0xc020_aa00);
    assert!(UFFDIO_UNREGISTER == 0x8010_aa01);
    assert!(UFFDIO_WRITEPROTECT == 0xc018_aa06);
    assert!(PAGEMAP_SCAN == 0xc060_6610);
};

use super::cvt;

/// A userfaultfd file descriptor on which `UFFDIO_API` succeeded. Closing it (drop) unregisters
/// every range registered through it.
#[derive(Debug)]
pub struct Uffd(OwnedFd);

impl Uffd {
    /// Opens a userfaultfd (`O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY`) and performs the
    /// `UFFDIO_API` handshake asking for `features`. Returns the descriptor and the feature
    /// bits the kernel reports as available; the kernel fails with `EINVAL` when a requested
    /// feature is unknown to it. See userfaultfd(2) and ioctl_userfaultfd(2).
    pub fn open(features: u64) -> io::Result<(Uffd, u64)> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
        // SAFETY: userfaultfd takes one integer argument and no pointers.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        let uffd = Uffd(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: `api` is a valid, writable `struct uffdio_api` that outlives the call.
        cvt(unsafe { libc::ioctl(uffd.0.as_raw_fd(), UFFDIO_API as libc::Ioctl, &mut api) })?;
        Ok((uffd, api.features))
    }

    /// `UFFDIO_REGISTER` of `[start, start + len)` in write-protect mode. The range must be
    /// mapped and page-aligned; with `UFFD_FEATURE_WP_ASYNC` any memory type is accepted.
    pub fn register_wp(&self, start: usize, len: usize) -> io::Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_WP,
            ioctls: 0,
        };
        // SAFETY: `reg` is a valid, writable `struct uffdio_register` that outlives the call.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_REGISTER as libc::Ioctl, &mut reg) }).map(drop)
    }

    /// `UFFDIO_UNREGISTER` of `[start, start + len)`; this also clears write-protection there.
    pub fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: `range` is a valid `struct uffdio_range` that outlives the call.
        cvt(unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_UNREGISTER as libc::Ioctl, &range) }).map(drop)
    }

    /// `UFFDIO_WRITEPROTECT` of `[start, start + len)`: sets (`protect`) or clears the uffd-wp
    /// bit of every page, including unpopulated ones when `UFFD_FEATURE_WP_UNPOPULATED` is on.
    /// The range must be registered in write-protect mode (else `ENOENT`).
    pub fn write_protect(&self, start: usize, len: usize, protect: bool) -> io::Result<()> {
        let mut wp = UffdioWriteprotect {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: if protect { UFFDIO_WRITEPROTECT_MODE_WP } else { 0 },
        };
        loop {
            // SAFETY: `wp` is a valid `struct uffdio_writeprotect` that outlives the call.
            let r = unsafe { libc::ioctl(self.0.as_raw_fd(), UFFDIO_WRITEPROTECT as libc::Ioctl, &mut wp) };
            match cvt(r) {
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                other => return other.map(drop),
            }
        }
    }
}

/// What [`Pagemap::scan`] reports and whether it re-protects.
#[derive(Debug, Clone, Copy)]
pub struct ScanQuery {
    /// First byte to scan (page-aligned).
    pub start: usize,
    /// One past the last byte to scan.
    pub end: usize,
    /// `PM_SCAN_*` flags.
    pub flags: u64,
    /// Report only pages that have all of these categories.
    pub category_mask: u64,
    /// Categories to copy into [`PageRegion::categories`].
    pub return_mask: u64,
}

/// A descriptor of `/proc/self/pagemap`, used only for `PAGEMAP_SCAN`.
///
/// The descriptor refers to the address space of the process that opened it, also after
/// `fork()`: a forked child must not use an inherited one.
#[derive(Debug)]
pub struct Pagemap(OwnedFd);

impl Pagemap {
    /// Opens `/proc/self/pagemap` read-only with `O_CLOEXEC`. Does not allocate.
    pub fn open() -> io::Result<Pagemap> {
        let path = c"/proc/self/pagemap";
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
        // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
        Ok(Pagemap(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// One `PAGEMAP_SCAN` ioctl over `[query.start, query.end)`, filling `out` from its start.
    ///
    /// Returns `(n, walk_end)`: `out[..n]` holds the matching runs in address order. When
    /// `n == out.len()` the vector may have filled up: the kernel stopped at `walk_end`, and
    /// pages at or after it were neither reported nor re-protected; continue from there. When
    /// `n < out.len()` the walk is complete, but `walk_end` may be stale: measured on Linux
    /// 6.18, once the kernel restarts its walk internally (its bounce buffer holds 512 runs)
    /// `walk_end` keeps the last restart point instead of becoming `query.end`.
    pub fn scan(&self, query: &ScanQuery, out: &mut [PageRegion]) -> io::Result<(usize, usize)> {
        debug_assert!(query.start <= query.end);
        let mut arg = PmScanArg {
            size: size_of::<PmScanArg>() as u64,
            flags: query.flags,
            start: query.start as u64,
            end: query.end as u64,
            walk_end: 0,
            vec: out.as_mut_ptr() as u64,
            vec_len: out.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            category_mask: query.category_mask,
            category_anyof_mask: 0,
            return_mask: query.return_mask,
        };
        // SAFETY: `arg` is a valid `struct pm_scan_arg`; its `vec`/`vec_len` describe exactly
        // the writable slice `out`, which outlives the call and is not otherwise borrowed. The
        // kernel writes only `arg.walk_end` and `out[..n]`.
        let r = unsafe { libc::ioctl(self.0.as_raw_fd(), PAGEMAP_SCAN as libc::Ioctl, &mut arg) };
        let n = cvt(r)? as usize;
        if n > out.len() || (arg.walk_end as usize) < query.start {
            // The kernel promises neither; refuse to trust a result that breaks it.
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok((n, arg.walk_end as usize))
    }
}

/// A private anonymous read-write mapping at a kernel-chosen address, unmapped on drop. Used to
/// probe the tracking mechanism on memory nobody else uses (and by tests and examples).
#[derive(Debug)]
pub struct ScratchMap {
    addr: usize,
    len: usize,
}

impl ScratchMap {
    /// Maps `len` bytes (`len > 0`, page multiple) of zeroed anonymous memory with
    /// `MAP_NORESERVE` and asks for 4 KiB pages (`MADV_NOHUGEPAGE`, best effort).
    pub fn new(len: usize) -> io::Result<ScratchMap> {
        debug_assert!(len > 0 && len % super::OS_PAGE == 0);
        let map = ScratchMap {
            addr: super::mm::map_anonymous(len)?,
            len,
        };
        // Advisory: a kernel without THP rejects it and then has no huge pages to blur anyway.
        let _ = super::no_huge_pages(map.addr, len);
        Ok(map)
    }

    /// First byte of the mapping.
    pub fn addr(&self) -> usize {
        self.addr
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes `value` at byte `offset` (volatile, so the store really happens).
    pub fn write(&mut self, offset: usize, value: u8) {
        assert!(offset < self.len, "ScratchMap::write out of bounds");
        // SAFETY: `offset < len`, the mapping is readable and writable for as long as `self`
        // lives, no Rust reference ever points into it, and `&mut self` excludes a concurrent
        // access through this handle.
        unsafe { std::ptr::write_volatile((self.addr + offset) as *mut u8, value) }
    }

    /// Reads the byte at `offset` (volatile, so the load really happens).
    #[cfg(test)]
    pub fn read(&self, offset: usize) -> u8 {
        assert!(offset < self.len, "ScratchMap::read out of bounds");
        // SAFETY: as for `write`; a concurrent `write` would need `&mut self`.
        unsafe { std::ptr::read_volatile((self.addr + offset) as *const u8) }
    }
}

impl Drop for ScratchMap {
    fn drop(&mut self) {
        // SAFETY: we own [addr, addr + len) and no reference points into it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}
