//! The read-only file system seam of inspection: files are opened `O_RDONLY` and every
//! write, truncation, rename, removal or creation fails with `PermissionDenied`, so whatever
//! inspection does through it cannot change a byte on disk.

use crate::io::{VFile, Vfs};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Reads up to `buf.len()` bytes at `off` (short only at the end of the file).
pub(super) fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn read_only_error() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "opened read-only for inspection")
}

/// The read-only file system seam of inspection: `O_RDONLY` files; every change fails.
#[derive(Debug)]
pub(super) struct ReadOnlyVfs;

struct ReadOnlyFile(File);

impl VFile for ReadOnlyFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        read_full(&self.0, buf, offset)
    }
    fn write_at(&self, _buf: &[u8], _offset: u64) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn sync_data(&self) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn allocate(&self, _len: u64) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn set_len(&self, _len: u64) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.0.as_raw_fd())
    }
}

impl Vfs for ReadOnlyVfs {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn VFile>> {
        if create {
            return Err(read_only_error());
        }
        Ok(Box::new(ReadOnlyFile(File::open(path)?)))
    }
    fn remove(&self, _path: &Path) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn rename(&self, _from: &Path, _to: &Path) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn sync_dir(&self, _dir: &Path) -> std::io::Result<()> {
        Err(read_only_error())
    }
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir)? {
            out.push(PathBuf::from(e?.file_name()));
        }
        Ok(out)
    }
    fn create_dir_all(&self, _dir: &Path) -> std::io::Result<()> {
        Err(read_only_error())
    }
}
