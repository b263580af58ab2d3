//! Offline inspection of a heap directory without knowing its root type: the API behind the
//! `snapheap` command-line tool (`cli/`).
//!
//! [`Inspector::open`] takes the directory's lock (so a heap that is open elsewhere is
//! reported as [`Error::Locked`]) and reads `meta`. Everything it does afterwards goes through
//! a read-only file system seam (`readonly.rs`): files are opened `O_RDONLY` and every write,
//! truncation, rename or removal fails, so [`Inspector::info`], [`Inspector::check`] and
//! [`Inspector::journal`] never change a byte on disk (a torn journal tail stays in place, a
//! stale journal is not removed, a missing `lock` file is not created).
//!
//! [`compact`] is the one operation that writes: it opens the heap with the engine (the
//! normal recovery), takes a snapshot with the normal crash-safe protocol and so removes the
//! journals the snapshot covers.
//!
//! What [`Inspector::check`] can and cannot see: every checksum on disk is verified (meta,
//! both snapshot headers and dirty bitmaps, every journal header and record), the journal
//! chain is checked as recovery checks it (the same `walk_chain`), the newest snapshot's data
//! is read in full (an unreadable sector is a problem), and the recovered image is rebuilt
//! with recovery's own replay in a private mapping at the heap's address (the allocator's free
//! lists hold absolute addresses) so that the allocator's invariants can be checked. Snapshot
//! *page data* carries no checksum in format version 1, so damage inside user data is found
//! only when it breaks an allocator invariant (or the root record's checksum, which `info`
//! verifies).
//!
//! Files: `report.rs` (the public reports), `files.rs` (headers, the journal chain, groups),
//! `image.rs` (the recovered image, the root identity, the allocator check), `check.rs`,
//! `compact.rs`, `readonly.rs` (the read-only seam).
//!
//! # Safety
//!
//! No unsafe code here; `image.rs` owns the private mapping and states its own.

mod check;
mod compact;
mod files;
mod image;
mod readonly;
mod report;

pub use compact::{compact, CompactReport};
pub use report::{
    AllocatorCounts, CheckReport, GlobalRoot, GroupInfo, HeapInfo, JournalInfo, MetaRoot, Problem, RootIdentity,
    RunInfo, RunKind, SnapshotInfo, SnapshotState,
};

use crate::disk::format::meta::{Meta, MetaError, FORMAT_VERSION, META_LEN};
use crate::error::{Error, Result};
use files::{disk_bytes, groups_of};
use image::{root_identity, Base};
use readonly::{read_full, ReadOnlyVfs};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Progress of a long operation: bytes done out of an estimated total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// A heap directory opened for inspection: the lock held, `meta` read. See the module docs.
#[derive(Debug)]
pub struct Inspector {
    dir: PathBuf,
    meta: Meta,
    vfs: ReadOnlyVfs,
    _lock: Option<File>,
}

/// Returned by [`Inspector::open`] when `meta` is damaged, so that `check` can still report it
/// as a problem found (not as a failure to run).
fn meta_error(path: &Path, e: MetaError) -> Error {
    match e {
        MetaError::Corrupt(off, what) => Error::corrupt(path, off, what),
        MetaError::Version(v) => Error::incompatible(format!(
            "{} has format version {v}, this build reads version {FORMAT_VERSION}",
            path.display()
        )),
    }
}

impl Inspector {
    /// Opens `dir` for inspection without writing anything: takes the exclusive lock
    /// ([`Error::Locked`] when the heap is open elsewhere) and reads `meta`
    /// ([`Error::InvalidArgument`] when there is none: not a heap directory; [`Error::Corrupt`]
    /// when it is damaged).
    pub fn open(dir: impl AsRef<Path>) -> Result<Inspector> {
        let dir = dir.as_ref().to_path_buf();
        let md = std::fs::metadata(&dir).map_err(|e| Error::io("stat", &dir, e))?;
        if !md.is_dir() {
            return Err(Error::invalid(format!("{} is not a directory", dir.display())));
        }
        let meta_path = dir.join("meta");
        if !meta_path.exists() {
            return Err(Error::invalid(format!(
                "{} is not a snapheap heap directory (it has no `meta` file)",
                dir.display()
            )));
        }
        // A live handle always has the lock file (every open creates it); if it is missing no
        // handle can hold it, and creating it would be a write.
        let lock_path = dir.join("lock");
        let lock = match File::open(&lock_path) {
            Ok(f) => {
                let mut tries = 0;
                while !crate::sys::try_lock_exclusive(f.as_raw_fd()).map_err(|e| Error::io("flock", &lock_path, e))? {
                    tries += 1;
                    if tries > 50 {
                        return Err(Error::Locked { path: lock_path });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Some(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("open", &lock_path, e)),
        };
        let f = File::open(&meta_path).map_err(|e| Error::io("open", &meta_path, e))?;
        let mut buf = vec![0u8; META_LEN];
        let n = read_full(&f, &mut buf, 0).map_err(|e| Error::io("read", &meta_path, e))?;
        let meta = Meta::decode(&buf[..n]).map_err(|e| meta_error(&meta_path, e))?;
        Ok(Inspector {
            dir,
            meta,
            vfs: ReadOnlyVfs,
            _lock: lock,
        })
    }

    /// The heap directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The format, identity, snapshot files and journals of the heap. The user's root type is
    /// read from the committed state: the image is rebuilt in a private mapping (the snapshot
    /// mapped lazily, the journals replayed) when the chain is intact; otherwise, or when the
    /// heap's address range is taken in this process, [`RootIdentity::Unreadable`] says why.
    pub fn info(&self) -> Result<HeapInfo> {
        self.info_with(true)
    }

    /// [`Inspector::info`], reading the root identity only with `root`.
    pub(crate) fn info_with(&self, root: bool) -> Result<HeapInfo> {
        let snaps = self.snapshots()?;
        let (journals, last) = self.journals(&snaps)?;
        let (journals, scans): (Vec<JournalInfo>, Vec<_>) = journals.into_iter().unzip();
        let m = &self.meta;
        let root = match (root, last) {
            (false, _) => RootIdentity::Unreadable("not read".into()),
            (true, None) => RootIdentity::Unreadable("the journal chain is broken (run `snapheap check`)".into()),
            (true, Some(_)) => {
                let base = snaps.iter().find_map(|s| match (s.newest, &s.state) {
                    (true, SnapshotState::Valid { extent, seq, .. }) => Some(Base {
                        path: &s.path,
                        extent: *extent,
                        seq: *seq,
                    }),
                    _ => None,
                });
                // The chain is intact, so every journal but the stale ones has its scan.
                let chain: Vec<_> = scans.into_iter().flatten().collect();
                match self.build_image(base, &chain, &mut |_| {}) {
                    Err(e) => RootIdentity::Unreadable(e.to_string()),
                    Ok((_, Some(p))) => RootIdentity::Unreadable(p.to_string()),
                    Ok((image, None)) => root_identity(m, &image),
                }
            }
        };
        Ok(HeapInfo {
            dir: self.dir.clone(),
            format_version: m.version,
            heap_id: m.heap_id,
            base: m.base,
            max_size: m.max_size,
            meta_root: MetaRoot {
                type_name: m.root_type_name.clone(),
                size: m.root_size,
                align: m.root_align,
                schema: m.schema.clone(),
            },
            root,
            created_unix: m.created_unix,
            snapshots: snaps,
            journals,
            last_durable_seq: last,
            disk_bytes: disk_bytes(&self.dir)?,
        })
    }

    /// The commit groups of the journal chain with `seq >= from`, in order (the groups of
    /// stale journals are not listed). Fails at a journal that cannot be scanned.
    pub fn journal(&self, from: u64) -> Result<Vec<GroupInfo>> {
        let snaps = self.snapshots()?;
        let (journals, _) = self.journals(&snaps)?;
        let mut out = Vec::new();
        for (info, scan) in journals {
            if let Some(p) = info.error {
                return Err(Error::Corrupt {
                    file: p.file,
                    offset: p.offset,
                    what: p.what,
                });
            }
            if let Some(scan) = scan {
                out.extend(groups_of(&scan).into_iter().filter(|g| g.seq >= from));
            }
        }
        Ok(out)
    }
}
