//! Offline inspection of a heap directory without knowing its root type: the API behind the
//! `snapheap` command-line tool (`cli/`).
//!
//! [`Inspector::open`] takes the directory's lock (so a heap that is open elsewhere is
//! reported as [`Error::Locked`]) and reads `meta`. Everything it does afterwards goes through
//! a read-only file system seam: files are opened `O_RDONLY` and every write, truncation,
//! rename or removal fails, so [`Inspector::info`], [`Inspector::check`] and
//! [`Inspector::journal`] never change a byte on disk (a torn journal tail stays in place, a
//! stale journal is not removed, a missing `lock` file is not created).
//!
//! [`compact`] is the one operation that writes: it opens the heap with the engine (the
//! normal recovery), takes a snapshot with the normal crash-safe protocol and so removes the
//! journals the snapshot covers.
//!
//! What [`Inspector::check`] can and cannot see: every checksum on disk is verified (meta,
//! both snapshot headers and dirty bitmaps, every journal header and record), the journal
//! chain is checked as recovery checks it, the newest snapshot's data is read in full (an
//! unreadable sector is a problem), and the recovered image is rebuilt in a private mapping at
//! the heap's address (the allocator's free lists hold absolute addresses) so that the
//! allocator's invariants can be checked. Snapshot *page data* carries no checksum in format
//! version 1, so damage inside user data is found only when it breaks an allocator invariant.
//!
//! # Safety
//!
//! The private mapping is reserved at the heap's base with `MAP_FIXED_NOREPLACE` (an occupied
//! range is [`Error::AddressInUse`]) and is owned by [`Inspector::check`] for its whole run:
//! replay copies journal pages into it and the allocator checker reads it; nothing else
//! refers into it. Each `unsafe` block states its range.

use crate::disk::format::journal::{FIRST_RECORD_OFFSET, RECORD_HEADER_LEN, START_SEQ_OFFSET};
use crate::disk::format::meta::{Meta, MetaError, FORMAT_VERSION, META_LEN};
use crate::disk::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::disk::journal::{journal_file_name, parse_journal_file_name, read_run, scan_journal, JournalScan, PageRun};
use crate::disk::snapshot::map_snapshot;
use crate::engine::{Engine, Fingerprint, SNAPSHOT_FILES};
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::alloc::{Arena, ArenaHeader, ARENA_HEADER_OFFSET, SEGMENT};
use crate::mem::region::Region;
use crate::options::OpenOptions;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

/// One problem found on disk: the file, the byte offset in it and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (or the heap directory, for a problem of the directory as a whole).
    pub file: PathBuf,
    /// Byte offset in the file.
    pub offset: u64,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte offset {}: {}",
            self.file.display(),
            self.offset,
            self.what
        )
    }
}

impl Problem {
    fn from_error(e: Error, fallback: &Path) -> Problem {
        match e {
            Error::Corrupt { file, offset, what } => Problem { file, offset, what },
            other => Problem {
                file: fallback.to_path_buf(),
                offset: 0,
                what: other.to_string(),
            },
        }
    }
}

/// What a snapshot file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// The file is missing or empty (never written).
    Empty,
    /// A header with a valid checksum that is not marked complete (a write was in progress or
    /// failed); recovery does not use the file.
    Incomplete {
        /// The generation the header names.
        generation: u64,
    },
    /// The header is damaged or describes more data than the file holds; recovery does not
    /// use the file.
    Damaged(Problem),
    /// A complete snapshot.
    Valid {
        /// Its generation (the newest valid one is used at recovery).
        generation: u64,
        /// The commit it holds.
        seq: u64,
        /// The first journal replayed after it.
        journal_id: u64,
        /// Bytes of region data.
        extent: u64,
    },
}

/// One snapshot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Its path.
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// What it holds.
    pub state: SnapshotState,
    /// Whether it is the newest valid snapshot (the one recovery starts from).
    pub newest: bool,
}

/// One journal file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalInfo {
    /// Its path.
    pub path: PathBuf,
    /// Its id (the number in its name).
    pub id: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Older than the newest snapshot (covered by it; the next open removes it).
    pub stale: bool,
    /// The commit it starts after, when its header could be read.
    pub start_seq: Option<u64>,
    /// The first and last complete commit groups in it, if any.
    pub seqs: Option<(u64, u64)>,
    /// Complete commit groups.
    pub groups: u64,
    /// End of the last complete group (bytes after it are a torn tail or pre-zeroed space).
    pub valid_end: u64,
    /// Why it could not be scanned, if it could not (stale journals are not scanned).
    pub error: Option<Problem>,
}

/// What [`Inspector::info`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeapInfo {
    /// The heap directory.
    pub dir: PathBuf,
    /// On-disk format version.
    pub format_version: u32,
    /// The heap's random id.
    pub heap_id: u64,
    /// First address of the region.
    pub base: u64,
    /// The region's size in bytes.
    pub max_size: u64,
    /// The root type's name as recorded (possibly truncated to 256 bytes).
    pub root_type_name: String,
    /// The root type's size.
    pub root_size: u64,
    /// The root type's alignment.
    pub root_align: u64,
    /// The user's schema id (may be empty).
    pub schema: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// `snapshot-0` and `snapshot-1`.
    pub snapshots: Vec<SnapshotInfo>,
    /// Every journal file, in id order.
    pub journals: Vec<JournalInfo>,
    /// The last commit recovery would give (the end of the journal chain), when the chain is
    /// intact.
    pub last_durable_seq: Option<u64>,
    /// Bytes of all files in the directory.
    pub disk_bytes: u64,
}

/// How a page run's pages are stored in the journal.
///
/// The listing of `snapheap journal` is built over this enum: a new journal record kind is
/// one more variant here and one more arm in `run_kind` (this module) and in the tool's printer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunKind {
    /// Whole page images (`PAGES` records).
    Full,
    /// Changed words of pages against their previous image (`DELTA` records, journal format 2).
    Delta,
}

/// One page run of a commit group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunInfo {
    /// How its pages are stored.
    pub kind: RunKind,
    /// Byte offset in the region of its first page.
    pub region_offset: u64,
    /// Pages in the run.
    pub pages: u64,
    /// File offset of its record.
    pub file_offset: u64,
    /// Bytes of payload in the file.
    pub payload_bytes: u64,
}

/// One commit group, as [`Inspector::journal`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The journal holding it.
    pub journal: PathBuf,
    /// Its commit sequence number.
    pub seq: u64,
    /// File offset of its first record.
    pub offset: u64,
    /// Bytes it occupies in the file (all records).
    pub bytes: u64,
    /// The region extent at this commit.
    pub extent: u64,
    /// Its page runs, in write order.
    pub runs: Vec<RunInfo>,
}

impl GroupInfo {
    /// Pages stored as whole images.
    pub fn full_pages(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.kind == RunKind::Full)
            .map(|r| r.pages)
            .sum()
    }
}

/// The kind of a scanned page run: the one place a new journal record kind is mapped to
/// [`RunKind`].
fn run_kind(run: &PageRun) -> RunKind {
    match run.delta_entries {
        None => RunKind::Full,
        Some(_) => RunKind::Delta,
    }
}

/// Pages a scanned run writes: its length in pages, or one per `DELTA` entry.
fn run_pages(run: &PageRun) -> u64 {
    match run.delta_entries {
        None => run.len / crate::sys::OS_PAGE as u64,
        Some(n) => u64::from(n),
    }
}

/// Allocator counts of the recovered image, from its invariant check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AllocatorCounts {
    /// Segments in use.
    pub segments: u64,
    /// Slabs.
    pub slabs: u64,
    /// Large blocks inside one segment.
    pub spans: u64,
    /// Huge blocks.
    pub huge: u64,
    /// Bytes in live blocks.
    pub used_bytes: u64,
    /// Bytes of free blocks inside slabs.
    pub free_bytes: u64,
    /// Bytes the allocator has handed out at least once.
    pub extent: u64,
}

/// What [`Inspector::check`] checked, with counts, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckReport {
    /// Checksums verified (meta, snapshot headers, dirty bitmaps, journal headers, records).
    pub checksums: u64,
    /// Snapshot headers read.
    pub snapshot_headers: u64,
    /// Bytes of snapshot data read back (the newest snapshot's whole image).
    pub snapshot_bytes_read: u64,
    /// Journals in the chain that were scanned.
    pub journals: u64,
    /// Journal bytes scanned.
    pub journal_bytes: u64,
    /// Complete commit groups replayed.
    pub groups: u64,
    /// Pages replayed into the private image.
    pub pages_replayed: u64,
    /// Whether the image was rebuilt (false when the journal chain is broken or unreadable).
    pub replayed: bool,
    /// The last commit of the recovered image (0 for an empty heap or when not replayed).
    pub last_seq: u64,
    /// The allocator invariant check's counts, when it ran and passed.
    pub allocator: Option<AllocatorCounts>,
    /// Damage: each makes the check fail.
    pub problems: Vec<Problem>,
    /// Findings that a crash explains and recovery repairs without losing a durable commit
    /// (a torn journal tail, stale journals, leftover temporary files).
    pub notes: Vec<Problem>,
}

impl CheckReport {
    /// Whether no problem was found.
    pub fn healthy(&self) -> bool {
        self.problems.is_empty()
    }
}

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

    /// The format, identity, snapshot files and journals of the heap.
    pub fn info(&self) -> Result<HeapInfo> {
        let snaps = self.snapshots()?;
        let (journals, last) = self.journals(&snaps)?;
        let m = &self.meta;
        Ok(HeapInfo {
            dir: self.dir.clone(),
            format_version: FORMAT_VERSION,
            heap_id: m.heap_id,
            base: m.base,
            max_size: m.max_size,
            root_type_name: m.root_type_name.clone(),
            root_size: m.root_size,
            root_align: m.root_align,
            schema: m.schema.clone(),
            created_unix: m.created_unix,
            snapshots: snaps,
            journals: journals.iter().map(|(j, _)| j.clone()).collect(),
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

    /// The full offline check (see the module docs). Damage is reported in
    /// [`CheckReport::problems`]; an `Err` means the check could not run (an I/O error on the
    /// directory, the heap's address range taken in this process).
    pub fn check(&self, progress: Progress<'_>) -> Result<CheckReport> {
        let mut r = CheckReport {
            checksums: 1, // meta, verified by open
            ..CheckReport::default()
        };
        let snaps = self.snapshots()?;
        let newest = snaps.iter().position(|s| s.newest);
        for s in &snaps {
            match &s.state {
                SnapshotState::Empty => {}
                SnapshotState::Damaged(p) => {
                    r.snapshot_headers += 1;
                    r.problems.push(p.clone());
                }
                _ => {
                    r.snapshot_headers += 1;
                    r.checksums += 1;
                }
            }
        }
        let (journals, _) = self.journals(&snaps)?;
        let chain_bytes: u64 = journals.iter().filter(|(j, _)| !j.stale).map(|(j, _)| j.len).sum();
        let snap_extent = newest.map_or(0, |n| match snaps[n].state {
            SnapshotState::Valid { extent, .. } => extent,
            _ => 0,
        });
        let total = snap_extent + 2 * chain_bytes;
        let mut done = 0u64;
        progress(0, total);

        // Snapshot files: dirty bitmaps of every valid one, the newest one's data in full.
        for (i, s) in snaps.iter().enumerate() {
            if let SnapshotState::Valid { extent, .. } = s.state {
                let f = self
                    .vfs
                    .open(&s.path, false)
                    .map_err(|e| Error::io("open", &s.path, e))?;
                if let Some(p) = check_bitmap(&*f, &s.path, extent)? {
                    r.problems.push(p);
                } else {
                    r.checksums += 1;
                }
                if Some(i) == newest {
                    match read_through(&*f, &s.path, DATA_OFFSET, extent, &mut |n| {
                        done += n;
                        progress(done, total);
                    }) {
                        Ok(()) => r.snapshot_bytes_read = extent,
                        Err(p) => r.problems.push(p),
                    }
                }
            }
        }

        // The journal chain: scan results, stale and temporary files.
        let mut chain: Vec<JournalScan> = Vec::new();
        let mut chain_ok = true;
        for (info, scan) in journals {
            if info.stale {
                r.notes.push(Problem {
                    file: info.path.clone(),
                    offset: 0,
                    what: "stale journal, covered by the newest snapshot (the next open removes it)".into(),
                });
                continue;
            }
            done += info.len;
            progress(done, total);
            if let Some(p) = info.error {
                r.problems.push(p);
                chain_ok = false;
                continue;
            }
            let Some(scan) = scan else { continue };
            r.journals += 1;
            r.journal_bytes += info.len;
            r.checksums += 1 + scan.groups.len() as u64 + scan.runs.len() as u64;
            if chain_ok {
                chain.push(scan);
            }
        }
        if let Some(last) = chain.last() {
            if let Some(n) = self.torn_tail(last)? {
                r.notes.push(Problem {
                    file: last.path.clone(),
                    offset: last.valid_end,
                    what: format!(
                        "torn tail: {n} bytes after the last complete commit {} (a crash during a write; the next \
                         open discards and truncates them)",
                        last.last_seq()
                    ),
                });
            }
        }
        for name in self
            .vfs
            .list(&self.dir)
            .map_err(|e| Error::io("list directory", &self.dir, e))?
        {
            let s = name.to_string_lossy();
            if s.ends_with(".tmp") {
                r.notes.push(Problem {
                    file: self.dir.join(&name),
                    offset: 0,
                    what: "leftover temporary file of an interrupted create (ignored by recovery)".into(),
                });
            }
        }
        if !chain_ok {
            progress(total, total);
            return Ok(r);
        }

        // Replay into a private mapping at the heap's address, then the allocator check.
        let mut region = Region::reserve(self.meta.base as usize, self.meta.max_size as usize)?;
        let mut sources: Vec<(PathBuf, PageRun)> = Vec::new();
        if let Some(n) = newest {
            if snap_extent > 0 {
                let f = self
                    .vfs
                    .open(&snaps[n].path, false)
                    .map_err(|e| Error::io("open", &snaps[n].path, e))?;
                map_snapshot(&mut region, &*f, snap_extent as usize, &snaps[n].path)?;
            }
        }
        r.last_seq = match newest.map(|n| &snaps[n].state) {
            Some(SnapshotState::Valid { seq, .. }) => *seq,
            _ => 0,
        };
        for scan in &chain {
            match replay_one(&self.vfs, &self.meta, &mut region, scan, &mut sources, &mut |n| {
                done += n;
                progress(done, total);
            }) {
                Ok(pages) => {
                    r.pages_replayed += pages;
                    r.groups += scan.groups.len() as u64;
                    r.last_seq = scan.last_seq();
                }
                Err(p) => {
                    r.problems.push(p);
                    progress(total, total);
                    return Ok(r);
                }
            }
        }
        progress(total, total);
        r.replayed = true;
        let any_state = newest.is_some() || r.groups > 0;
        if any_state {
            let newest_path = newest.map(|n| snaps[n].path.clone());
            match check_allocator(&region, &self.meta, &sources, newest_path.as_deref(), &self.dir) {
                Ok(c) => r.allocator = Some(c),
                Err(p) => r.problems.push(p),
            }
        }
        drop(region);
        Ok(r)
    }

    /// Both snapshot files, the newest valid one marked.
    fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for name in SNAPSHOT_FILES {
            let path = self.dir.join(name);
            let (len, state) = match self.vfs.open(&path, false) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, SnapshotState::Empty),
                Err(e) => return Err(Error::io("open", &path, e)),
                Ok(f) => {
                    let len = f.len().map_err(|e| Error::io("fstat", &path, e))?;
                    (len, snapshot_state(&*f, &path, len, &self.meta)?)
                }
            };
            out.push(SnapshotInfo {
                path,
                len,
                state,
                newest: false,
            });
        }
        let newest = out
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SnapshotState::Valid { generation, .. } => Some((generation, i)),
                _ => None,
            })
            .max();
        if let Some((_, i)) = newest {
            out[i].newest = true;
        }
        Ok(out)
    }

    /// Every journal file with its scan (chain journals only), and the chain's last seq when
    /// the chain is intact. Checks the chain as recovery does (gap-free ids from the newest
    /// snapshot's `journal_id`, each starting where the previous ended).
    #[allow(clippy::type_complexity)]
    fn journals(&self, snaps: &[SnapshotInfo]) -> Result<(Vec<(JournalInfo, Option<JournalScan>)>, Option<u64>)> {
        let (mut expect_seq, first) = snaps
            .iter()
            .find_map(|s| match (s.newest, &s.state) {
                (true, SnapshotState::Valid { seq, journal_id, .. }) => Some((*seq, *journal_id)),
                _ => None,
            })
            .unwrap_or((0, 1));
        let names = self
            .vfs
            .list(&self.dir)
            .map_err(|e| Error::io("list directory", &self.dir, e))?;
        let mut ids: Vec<u64> = names
            .iter()
            .filter_map(|n| n.to_str().and_then(parse_journal_file_name))
            .collect();
        ids.sort_unstable();
        let last_id = ids.last().copied();
        let mut out = Vec::new();
        let mut intact = true;
        let mut expected_id = first;
        for id in ids {
            let path = self.dir.join(journal_file_name(id));
            let len = std::fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?.len();
            let mut info = JournalInfo {
                path: path.clone(),
                id,
                len,
                stale: id < first,
                start_seq: None,
                seqs: None,
                groups: 0,
                valid_end: 0,
                error: None,
            };
            if info.stale {
                out.push((info, None));
                continue;
            }
            if id != expected_id && intact {
                info.error = Some(Problem {
                    file: self.dir.join(journal_file_name(expected_id)),
                    offset: 0,
                    what: format!("journal {expected_id} is missing but journal {id} exists (the chain is broken)"),
                });
                intact = false;
            }
            expected_id = id + 1;
            let scan = match scan_journal(&self.vfs, &path, self.meta.heap_id, id, Some(id) == last_id) {
                Ok(s) => s,
                Err(e) => {
                    if info.error.is_none() {
                        info.error = Some(Problem::from_error(e, &path));
                    }
                    intact = false;
                    out.push((info, None));
                    continue;
                }
            };
            info.start_seq = Some(scan.header.start_seq);
            info.groups = scan.groups.len() as u64;
            info.seqs = scan.groups.first().map(|g| (g.seq, scan.last_seq()));
            info.valid_end = scan.valid_end;
            if scan.header.start_seq != expect_seq && info.error.is_none() && intact {
                info.error = Some(Problem {
                    file: path.clone(),
                    offset: START_SEQ_OFFSET as u64,
                    what: format!(
                        "journal starts after commit {} but the state before it ends at commit {expect_seq}",
                        scan.header.start_seq
                    ),
                });
                intact = false;
            }
            expect_seq = scan.last_seq();
            out.push((info, Some(scan)));
        }
        Ok((out, intact.then_some(expect_seq)))
    }

    /// Bytes after `valid_end` of the newest journal that are not zeros (pre-zeroed space is
    /// not a tail), or `None`.
    fn torn_tail(&self, scan: &JournalScan) -> Result<Option<u64>> {
        let f = self
            .vfs
            .open(&scan.path, false)
            .map_err(|e| Error::io("open", &scan.path, e))?;
        let len = f.len().map_err(|e| Error::io("fstat", &scan.path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = scan.valid_end;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            let got = f
                .read_at(&mut buf[..n], pos)
                .map_err(|e| Error::io("read", &scan.path, e))?;
            if buf[..got].iter().any(|&b| b != 0) {
                return Ok(Some(len - scan.valid_end));
            }
            if got == 0 {
                break;
            }
            pos += got as u64;
        }
        Ok(None)
    }
}

/// The groups of one scanned journal with their file offsets (a group is its `PAGES` records
/// followed by a 40-byte `COMMIT` record, contiguous from the previous group's end).
fn groups_of(scan: &JournalScan) -> Vec<GroupInfo> {
    let hdr = RECORD_HEADER_LEN as u64;
    let mut start = FIRST_RECORD_OFFSET;
    let mut out = Vec::with_capacity(scan.groups.len());
    for g in scan.groups.iter() {
        let runs: Vec<RunInfo> = scan.runs[g.runs.clone()]
            .iter()
            .map(|run| RunInfo {
                kind: run_kind(run),
                region_offset: run.region_offset,
                pages: run_pages(run),
                file_offset: run.file_offset - hdr,
                payload_bytes: run.len,
            })
            .collect();
        let offset = runs.first().map_or(start, |r| r.file_offset);
        let end = scan.runs[g.runs.clone()]
            .last()
            .map_or(offset, |r| r.file_offset + r.len)
            + hdr;
        out.push(GroupInfo {
            journal: scan.path.clone(),
            seq: g.seq,
            offset,
            bytes: end - offset,
            extent: g.extent,
            runs,
        });
        start = end;
    }
    out
}

/// Decodes a snapshot header into its state.
fn snapshot_state(f: &dyn VFile, path: &Path, len: u64, meta: &Meta) -> Result<SnapshotState> {
    if len == 0 {
        return Ok(SnapshotState::Empty);
    }
    let mut b = [0u8; HEADER_LEN];
    let n = f.read_at(&mut b, 0).map_err(|e| Error::io("read", path, e))?;
    let damaged = |offset: u64, what: String| {
        SnapshotState::Damaged(Problem {
            file: path.to_path_buf(),
            offset,
            what,
        })
    };
    Ok(match SnapHeader::decode(&b[..n], meta.heap_id, meta.max_size) {
        Err((off, what)) => damaged(off, format!("snapshot header: {what} (the file is not used)")),
        Ok(h) if !h.valid => SnapshotState::Incomplete {
            generation: h.generation,
        },
        Ok(h) if len < h.file_len() => damaged(
            len,
            format!(
                "the file is {len} bytes but its header describes {} (the file is not used)",
                h.file_len()
            ),
        ),
        Ok(h) => SnapshotState::Valid {
            generation: h.generation,
            seq: h.seq,
            journal_id: h.journal_id,
            extent: h.extent,
        },
    })
}

/// Checks a valid snapshot's dirty bitmap checksum.
fn check_bitmap(f: &dyn VFile, path: &Path, extent: u64) -> Result<Option<Problem>> {
    let mut hb = [0u8; HEADER_LEN];
    f.read_at(&mut hb, 0).map_err(|e| Error::io("read", path, e))?;
    let crc = crate::disk::format::get_u32(&hb, crate::disk::format::snapshot::DIRTY_CRC_OFFSET);
    let len = crate::disk::format::snapshot::dirty_len_for(extent) as usize;
    let mut buf = vec![0u8; len];
    let n = f
        .read_at(&mut buf, DATA_OFFSET + extent)
        .map_err(|e| Error::io("read", path, e))?;
    if n != len || crc32fast::hash(&buf) != crc {
        return Ok(Some(Problem {
            file: path.to_path_buf(),
            offset: DATA_OFFSET + extent,
            what: "dirty bitmap checksum mismatch (the next snapshot rewrites the whole file)".into(),
        }));
    }
    Ok(None)
}

/// Reads `[off, off + len)` of a file in 256 KiB steps (an unreadable range is a problem). The
/// buffer stays in the CPU cache: with 8 MiB steps the copy ran at a quarter of the speed.
fn read_through(f: &dyn VFile, path: &Path, off: u64, len: u64, done: &mut dyn FnMut(u64)) -> Result<(), Problem> {
    let mut buf = vec![0u8; 256 << 10];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        match f.read_at(&mut buf[..n], off + pos) {
            Ok(got) if got == n => {}
            Ok(got) => {
                return Err(Problem {
                    file: path.to_path_buf(),
                    offset: off + pos + got as u64,
                    what: "snapshot data ends early".into(),
                })
            }
            Err(e) => {
                return Err(Problem {
                    file: path.to_path_buf(),
                    offset: off + pos,
                    what: format!("unreadable: {e}"),
                })
            }
        }
        pos += n as u64;
        done(n as u64);
    }
    Ok(())
}

/// Replays one journal's groups into the region (as recovery does), recording each run as the
/// source of its pages. Returns the pages written.
fn replay_one(
    vfs: &dyn Vfs,
    meta: &Meta,
    region: &mut Region,
    scan: &JournalScan,
    sources: &mut Vec<(PathBuf, PageRun)>,
    done: &mut dyn FnMut(u64),
) -> Result<u64, Problem> {
    let bad = |offset: u64, what: String| Problem {
        file: scan.path.clone(),
        offset,
        what,
    };
    let f = vfs
        .open(&scan.path, false)
        .map_err(|e| Problem::from_error(Error::io("open", &scan.path, e), &scan.path))?;
    let base = region.base();
    let mut pages = 0;
    for (g, info) in scan.groups.iter().zip(groups_of(scan)) {
        if g.extent > meta.max_size || g.extent % SEGMENT as u64 != 0 {
            return Err(bad(
                info.offset,
                format!("commit {} has extent {:#x} outside the heap", g.seq, g.extent),
            ));
        }
        region
            .grow(g.extent as usize)
            .map_err(|e| bad(info.offset, format!("mmap (grow image) failed: {e}")))?;
        for run in &scan.runs[g.runs.clone()] {
            if let Some(count) = run.delta_entries {
                pages += apply_delta_run(&*f, &scan.path, base, g.extent, run, count)?;
                sources.push((scan.path.clone(), *run));
                done(run.len);
                continue;
            }
            if run.region_offset % crate::sys::OS_PAGE as u64 != 0
                || run.len % crate::sys::OS_PAGE as u64 != 0
                || run.region_offset.checked_add(run.len).is_none_or(|e| e > g.extent)
            {
                return Err(bad(
                    run.file_offset,
                    format!(
                        "page run {:#x}+{:#x} lies outside the heap extent {:#x}",
                        run.region_offset, run.len, g.extent
                    ),
                ));
            }
            let addr = base + run.region_offset as usize;
            // SAFETY: [addr, addr + len) lies inside the mapped extent of the private image
            // (checked above), which only this function and the allocator check touch.
            let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, run.len as usize) };
            read_run(&*f, &scan.path, run, dst).map_err(|e| Problem::from_error(e, &scan.path))?;
            pages += run.len / crate::sys::OS_PAGE as u64;
            sources.push((scan.path.clone(), *run));
            done(run.len);
        }
    }
    Ok(pages)
}

/// Applies one `DELTA` record of a scanned journal to the private image, as recovery's replay
/// does: the payload is decoded again with the scanner's checks, every entry must name a page
/// of the record inside the group's extent, and each page's post-image checksum must match.
/// Returns the pages written.
fn apply_delta_run(
    f: &dyn VFile,
    path: &Path,
    base: usize,
    extent: u64,
    run: &PageRun,
    count: u32,
) -> Result<u64, Problem> {
    use crate::disk::format::delta::{apply_entry, Entries};
    let page_len = crate::sys::OS_PAGE as u64;
    let bad = |offset: u64, what: String| Problem {
        file: path.to_path_buf(),
        offset,
        what,
    };
    if run.region_offset % page_len != 0 || run.region_end > extent || run.region_end <= run.region_offset {
        return Err(bad(
            run.file_offset,
            format!(
                "DELTA record for pages {:#x}..{:#x} lies outside the heap extent {extent:#x}",
                run.region_offset, run.region_end
            ),
        ));
    }
    let mut payload = vec![0u8; run.len as usize];
    read_run(f, path, run, &mut payload).map_err(|e| Problem::from_error(e, path))?;
    let at = |off: usize| run.file_offset + off as u64;
    let mut pages = 0;
    for e in Entries::new(&payload, count) {
        let e = e.map_err(|e| bad(at(e.offset), e.to_string()))?;
        if e.page < run.region_offset || e.page >= run.region_end || e.page % page_len != 0 {
            return Err(bad(
                at(e.at),
                format!("DELTA entry for page {:#x} outside the record's pages", e.page),
            ));
        }
        let addr = base + e.page as usize;
        // SAFETY: the page lies inside [region_offset, region_end), within the group's extent,
        // which replay has mapped in the private image that only this module touches.
        let page = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, crate::sys::OS_PAGE) };
        apply_entry(&e, page).map_err(|e| bad(at(e.offset), e.to_string()))?;
        pages += 1;
    }
    Ok(pages)
}

/// The grow hook of the inspected image: it never grows (the checker only reads).
///
/// # Safety
///
/// None needed: it touches nothing; `unsafe` only to match the allocator's hook type.
unsafe fn no_grow(_ctx: *const (), _new_extent: usize) -> bool {
    false
}

/// Checks the allocator invariants of the recovered image. A violation is reported at the file
/// and offset that last wrote the address the checker names (or the allocator header).
fn check_allocator(
    region: &Region,
    meta: &Meta,
    sources: &[(PathBuf, PageRun)],
    snapshot: Option<&Path>,
    dir: &Path,
) -> Result<AllocatorCounts, Problem> {
    let base = region.base();
    let locate = |what: String| -> Problem {
        let addr = first_address_in(&what)
            .filter(|&a| a >= base as u64 && a < (base + region.extent()) as u64)
            .unwrap_or((base + ARENA_HEADER_OFFSET) as u64);
        let off = addr - base as u64;
        let hit = sources
            .iter()
            .rev()
            .find(|(_, r)| off >= r.region_offset && off < r.region_offset + r.len);
        let (file, offset) = match (hit, snapshot) {
            (Some((p, r)), _) => (p.clone(), r.file_offset + (off - r.region_offset)),
            (None, Some(s)) => (s.to_path_buf(), DATA_OFFSET + off),
            (None, None) => (dir.to_path_buf(), 0),
        };
        Problem {
            file,
            offset,
            what: format!("allocator state (region offset {off:#x}): {what}"),
        }
    };
    let mapped = region.extent();
    if mapped < SEGMENT {
        return Err(locate(format!(
            "the recovered image is {mapped:#x} bytes, less than the allocator's first segment"
        )));
    }
    // SAFETY: the header lies inside segment 0, mapped (checked above); nothing else refers
    // into the private image.
    let header = unsafe { &*((base + ARENA_HEADER_OFFSET) as *const ArenaHeader) };
    let extent = header.extent.load(Ordering::Relaxed);
    if extent > mapped as u64 {
        return Err(locate(format!(
            "allocator extent {extent:#x} exceeds the recovered image of {mapped:#x} bytes"
        )));
    }
    // SAFETY: the region is mapped read-write up to its extent, which covers the allocator's
    // extent (checked above); the image is private to this process and this call.
    let arena = unsafe { Arena::attach(base, meta.max_size as usize, no_grow, std::ptr::null()) }.map_err(locate)?;
    let res = arena.check_invariants();
    arena.close();
    let rep = res.map_err(locate)?;
    Ok(AllocatorCounts {
        segments: rep.segments as u64,
        slabs: rep.slabs as u64,
        spans: rep.spans as u64,
        huge: rep.huge as u64,
        used_bytes: rep.used_bytes as u64,
        free_bytes: rep.free_bytes as u64,
        extent,
    })
}

/// The first `0x...` number in a message.
fn first_address_in(s: &str) -> Option<u64> {
    let i = s.find("0x")?;
    let hex: String = s[i + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    u64::from_str_radix(&hex, 16).ok()
}

/// Bytes of all regular files in `dir`.
fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))? {
        let e = e.map_err(|e| Error::io("list directory", dir, e))?;
        if let Ok(md) = e.metadata() {
            if md.is_file() {
                total += md.len();
            }
        }
    }
    Ok(total)
}

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Bytes of all files before.
    pub bytes_before: u64,
    /// Bytes of all files after.
    pub bytes_after: u64,
    /// Journal files before and after.
    pub journals_before: u64,
    /// Journal files after (the new, empty current journal).
    pub journals_after: u64,
    /// The commit the new snapshot holds.
    pub seq: u64,
    /// The new snapshot's generation.
    pub generation: u64,
}

/// Replays the journals of the heap in `dir` into a new snapshot with the normal crash-safe
/// protocol (the heap is opened by the engine, as any program opens it, and a snapshot is
/// taken and waited for), so the journals it covers are removed. Refuses a heap that is open
/// elsewhere ([`Error::Locked`]) and a directory that is not a heap. A torn journal tail is
/// truncated, as at every open.
pub fn compact(dir: impl AsRef<Path>) -> Result<CompactReport> {
    let dir = dir.as_ref();
    let (meta, bytes_before, journals_before) = {
        let ins = Inspector::open(dir)?;
        let info = ins.info()?;
        (ins.meta.clone(), info.disk_bytes, info.journals.len() as u64)
    };
    // The engine checks the root type against `meta`; the tool has no type, so it names the
    // recorded one. The name is leaked: one small string per compaction.
    let fp = Fingerprint {
        size: meta.root_size,
        align: meta.root_align,
        type_name: Box::leak(meta.root_type_name.clone().into_boxed_str()),
        schema: meta.schema.clone(),
        // `meta` names what it holds (format 2: the root-record kind; format 1: the user's
        // root type), so the check against it passes without the typed layer.
        legacy_root: false,
    };
    let mut opts = OpenOptions::new();
    opts.snapshot_on_close(false);
    let engine = Engine::open(dir, &opts, &fp)?;
    let res = engine.snapshot();
    let closed = engine.close(false);
    drop(engine);
    res?;
    closed?;
    let ins = Inspector::open(dir)?;
    let info = ins.info()?;
    let (generation, seq) = info
        .snapshots
        .iter()
        .find_map(|s| match (s.newest, &s.state) {
            (true, SnapshotState::Valid { generation, seq, .. }) => Some((*generation, *seq)),
            _ => None,
        })
        .unwrap_or((0, 0));
    Ok(CompactReport {
        bytes_before,
        bytes_after: info.disk_bytes,
        journals_before,
        journals_after: info.journals.len() as u64,
        seq,
        generation,
    })
}

fn read_full(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
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
struct ReadOnlyVfs;

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
