//! The I/O seam: every file operation on a heap's directory goes through [`Vfs`] and
//! [`VFile`], so that tests can substitute a simulated disk that separates written bytes from
//! durable bytes and injects failures (see `tests/` and the reliability suite).
//!
//! [`OsVfs`] is the real implementation over the `sys` layer; `SimVfs` (hidden, compiled
//! only with the `testing` feature) is a simulated disk with power-loss and fault injection
//! (`sim.rs`), the crate's one in-memory [`Vfs`].
//!
//! # Invariants
//!
//! - A byte counts as durable only after `sync_data` on its file returned `Ok` after the byte
//!   was written; a directory entry (create, remove, rename) only after `sync_dir`.
//! - After any `Err` from `write_at` or `sync_data`, the caller must assume nothing about the
//!   file's durable contents beyond what an earlier successful sync covered.

#![forbid(unsafe_code)]

mod os;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod sim;

pub use os::OsVfs;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use sim::{CrashMode, Fault, FaultOn, Replayer, SimTrace, SimVfs, TraceOp, SECTOR};

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

/// One open file of a heap directory.
pub trait VFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `offset`; fewer only at end of file.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Extends the file to at least `len` bytes with allocated (not sparse) blocks.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Sets the length exactly (truncates or extends sparsely).
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// The OS file descriptor, when this is a real file (needed for `mmap` and for the forked
    /// snapshot child, which writes with raw syscalls).
    fn raw_fd(&self) -> Option<RawFd>;
    /// The descriptor to `mmap` the file's pages from (remapping clean pages), when there is
    /// one: [`VFile::raw_fd`] for real files; the simulated disk can offer a mirror file.
    fn map_fd(&self) -> Option<RawFd> {
        self.raw_fd()
    }
}

/// A directory of files.
pub trait Vfs: Send + Sync {
    /// Opens `path` for reading and writing, creating it with mode 0600 when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn VFile>>;
    /// Removes a file. The removal is durable after [`Vfs::sync_dir`].
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` atomically, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (`fsync` of the directory).
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Lists the file names in a directory.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Creates the directory (and parents) with mode 0700 if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
}
