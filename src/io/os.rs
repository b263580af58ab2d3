//! [`OsVfs`]: the real file system, through [`crate::sys`].

use super::{VFile, Vfs};
use crate::sys;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsVfs;

struct OsFile(File);

impl VFile for OsFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        sys::pread_full(self.0.as_raw_fd(), buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        sys::pwrite_all(self.0.as_raw_fd(), buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        sys::fdatasync(self.0.as_raw_fd())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        let cur = self.len()?;
        if len > cur {
            sys::allocate(self.0.as_raw_fd(), cur, len - cur)?;
        }
        Ok(())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        sys::set_len(self.0.as_raw_fd(), len)
    }
    fn len(&self) -> io::Result<u64> {
        sys::file_len(self.0.as_raw_fd())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

impl Vfs for OsVfs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn VFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)?;
        Ok(Box::new(OsFile(f)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let d = File::open(dir)?;
        sys::fsync(d.as_raw_fd())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir)? {
            out.push(PathBuf::from(e?.file_name()));
        }
        Ok(out)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
    }
}
