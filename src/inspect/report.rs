//! The public reports of inspection: what [`Inspector::info`](super::Inspector::info),
//! [`Inspector::journal`](super::Inspector::journal) and
//! [`Inspector::check`](super::Inspector::check) return. Plain data; no I/O.

use crate::error::Error;
use std::path::{Path, PathBuf};

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
    pub(super) fn from_error(e: Error, fallback: &Path) -> Problem {
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

/// What [`Inspector::info`](super::Inspector::info) reports.
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
    /// The root identity `meta` records: since meta format 2 the kind of heap (a `Heap<T>`
    /// root record or a `GlobalHeap` registry), in format 1 the user's root type.
    pub meta_root: MetaRoot,
    /// The user's root type, read from the committed state (see [`RootIdentity`]).
    pub root: RootIdentity,
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
/// one more variant here and one more arm in `run_kind` (`files.rs`) and in the tool's printer.
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

/// One commit group, as [`Inspector::journal`](super::Inspector::journal) lists it.
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

/// What [`Inspector::check`](super::Inspector::check) checked, with counts, and what it found.
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

/// The root fields of `meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRoot {
    /// The recorded type name (possibly truncated to 256 bytes).
    pub type_name: String,
    /// The recorded size.
    pub size: u64,
    /// The recorded alignment.
    pub align: u64,
    /// The recorded schema id (may be empty).
    pub schema: String,
}

/// The user's root, as the committed state names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootIdentity {
    /// A `Heap<T>` heap: its committed root record (`docs/design.md`, "Root record").
    Record {
        /// The root type's name (`std::any::type_name`, possibly truncated to 256 bytes).
        type_name: String,
        /// The root type's size.
        size: u64,
        /// The root type's alignment.
        align: u64,
        /// The user's schema id (may be empty).
        schema: String,
        /// Schema migrations applied over the heap's life.
        migrations: u32,
        /// Address of the root value.
        address: u64,
        /// Address of the record.
        record_address: u64,
    },
    /// A heap of meta format 1, which records the user's root type in `meta` (see
    /// [`HeapInfo::meta_root`]); the next open by its program upgrades it.
    InMeta,
    /// A `GlobalHeap` heap: the entries of its root registry (type names are not recorded,
    /// only their hashes), in creation order.
    Global(Vec<GlobalRoot>),
    /// No root committed yet (the creating process died before its first commit).
    NoRoot,
    /// The committed state could not be read (a broken journal chain, a damaged record, the
    /// heap's address range taken in this process): why.
    Unreadable(String),
}

/// One root of a `GlobalHeap` heap's registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalRoot {
    /// FNV-1a hash of the root type's name.
    pub type_hash: u64,
    /// The root type's size.
    pub size: u64,
    /// The root type's alignment.
    pub align: u64,
    /// Address of the value.
    pub address: u64,
}
