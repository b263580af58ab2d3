//! [`OpenOptions`], [`Durability`] and [`Tracking`]: how a heap is opened, how commits reach
//! the disk, and how changed pages are found.
//!
//! A leaf: plain settings that every layer may read. [`OpenOptions::open`] lives in
//! `heap.rs`, so this file imports nothing above `io`.

use crate::io::{OsVfs, Vfs};
use std::sync::Arc;
use std::time::Duration;

/// When a commit is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `commit` returns after the commit's journal records are synced (`fdatasync`); commits
    /// from concurrent threads share one sync (group commit). Survives a power loss.
    #[default]
    Immediate,
    /// `commit` returns after the records are written to the file; a background flusher syncs
    /// them within [`OpenOptions::flush_interval`]. Survives a crash of the process at once, and
    /// a power loss for commits older than the interval.
    Eventual,
    /// `commit` makes the commit durable exactly as [`Durability::Immediate`] and waits
    /// until the replication shipper reports that the replicated log acknowledged it
    /// ([`ReplicationSource::acknowledge`](crate::ReplicationSource::acknowledge)); the
    /// shipper gets the group as soon as it is written, so the publish overlaps the
    /// `fdatasync` (after a machine crash the log may hold a group the disk lost: a shipper
    /// must check at start, as `snapheap-nats` does; `docs/design.md`, "Shipping on write").
    /// Errors:
    /// [`Error::ReplicationTimeout`](crate::Error::ReplicationTimeout) after `timeout` — the
    /// commit **is** durable on the local disk then and is not rolled back (a restart keeps
    /// it; it reaches the standbys when the shipper catches up) — and
    /// [`Error::Fenced`](crate::Error::Fenced) once the shipper reported a newer primary
    /// (checked before the commit too: a fenced primary writes nothing new). Turns
    /// [`OpenOptions::replication`] on. `Heap<T>` only: `GlobalHeap` refuses it.
    Replicated {
        /// How long a commit waits for the acknowledgement.
        timeout: Duration,
    },
}

impl Durability {
    /// Whether `commit` syncs the journal before it returns.
    pub(crate) fn syncs(self) -> bool {
        !matches!(self, Durability::Eventual)
    }
}

/// Which dirty-page tracking mechanism a heap uses ([`OpenOptions::tracking`]).
///
/// `Auto` (the default) probes the rungs in order at open and takes the first that works:
/// `UffdWp`, then `Hashed`, then `AllDirty`. The others force one rung; opening fails with
/// [`Error::Unsupported`](crate::Error::Unsupported), naming what the probe saw, when the
/// kernel or the environment lacks it. See `docs/design.md`, "Dirty tracking: the ladder".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Tracking {
    /// The best rung this kernel and environment offer.
    #[default]
    Auto,
    /// userfaultfd write-protection in asynchronous mode + `PAGEMAP_SCAN`: Linux >= 6.7 and the
    /// `userfaultfd` system call allowed (denied by Docker's default seccomp profile). Cost per
    /// commit: proportional to the populated page tables plus the written pages.
    UffdWp,
    /// Soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`). Never chosen by `Auto`: it has no atomic
    /// read-and-clear, so a write by another thread during a commit could be lost. Force it only
    /// if no thread writes heap memory while another commits; refused by `GlobalHeap`.
    SoftDirty,
    /// Keyed 128-bit page hashes compared at commit, restricted by `/proc/self/pagemap` to the
    /// pages written since the heap was mapped: any kernel, no privilege, works in containers.
    /// Cost per commit: reading those pages once (memory bandwidth); 16 bytes of memory per page.
    Hashed,
    /// No tracking: every page is journaled at every commit. Correct and slow.
    AllDirty,
}

impl Tracking {
    /// The rung's name, as in [`Stats::track_mode`](crate::Stats::track_mode): `"auto"`,
    /// `"uffd-wp"`, `"soft-dirty"`, `"hashed"` or `"all-dirty"`.
    pub fn name(self) -> &'static str {
        match self {
            Tracking::Auto => "auto",
            Tracking::UffdWp => "uffd-wp",
            Tracking::SoftDirty => "soft-dirty",
            Tracking::Hashed => "hashed",
            Tracking::AllDirty => "all-dirty",
        }
    }
}

impl std::fmt::Display for Tracking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Tracking {
    type Err = std::string::String;

    /// Parses a name as printed by [`Tracking::name`].
    fn from_str(s: &str) -> Result<Tracking, std::string::String> {
        [
            Tracking::Auto,
            Tracking::UffdWp,
            Tracking::SoftDirty,
            Tracking::Hashed,
            Tracking::AllDirty,
        ]
        .into_iter()
        .find(|t| t.name() == s)
        .ok_or_else(|| format!("unknown tracking rung {s:?} (auto, uffd-wp, soft-dirty, hashed, all-dirty)"))
    }
}

/// Options for opening or creating a heap. [`Heap::open`](crate::Heap::open) uses the defaults.
#[derive(Clone)]
pub struct OpenOptions {
    pub(crate) max_size: u64,
    pub(crate) durability: Durability,
    pub(crate) schema: String,
    pub(crate) snapshot_after_journal_bytes: u64,
    pub(crate) snapshot_after_journal_pages: u64,
    pub(crate) snapshot_interval: Option<Duration>,
    pub(crate) flush_interval: Duration,
    pub(crate) snapshot_on_close: bool,
    pub(crate) tracking: Tracking,
    /// Any thread may write heap memory at any time (`GlobalHeap`): rules out soft-dirty.
    pub(crate) concurrent_writers: bool,
    pub(crate) close_snapshot_min_bytes: u64,
    pub(crate) base_cache_bytes: u64,
    pub(crate) remap_clean_pages: bool,
    pub(crate) vfs: Arc<dyn Vfs>,
    pub(crate) test_snapshot_stop_after: Option<u8>,
    pub(crate) replication: bool,
    pub(crate) replication_backlog_bytes: u64,
    /// Set by `Replica`: the directory is a replica's (its `replica` marker is expected).
    pub(crate) replica: bool,
    /// Schema migrations offered to [`OpenOptions::open`](crate::OpenOptions::open), in the
    /// order given: `migrate.rs`'s steps, type-erased so this leaf stays below the API.
    pub(crate) migrations: std::vec::Vec<Arc<dyn std::any::Any + Send + Sync>>,
    /// Tests only: create heaps in meta format 1 (as the previous release did).
    pub(crate) test_create_legacy_format: bool,
    #[cfg(any(test, feature = "testing"))]
    pub(crate) test_planted_bug: Option<PlantedBug>,
    /// Tests only: called by a commit that forks a snapshot writer, after the collect and
    /// the capture, just before the fork (to write heap memory in that window).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) test_before_fork: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// Tests only (`testing` feature): deliberately broken protocol steps, used by the reliability suite to prove that
/// its crash harness detects lost or inconsistent states (`tests/crash_points.rs`).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlantedBug {
    /// Acknowledge commits without syncing the journal (`engine/durable.rs`).
    SkipJournalSync,
    /// Write and sync the snapshot's valid header before its pages (`snapshot.rs`).
    SnapshotHeaderFirst,
    /// After journaling a page as a delta, keep its old base image instead of the one just
    /// journaled, so its next delta is computed against a stale base (`engine/capture.rs`).
    DeltaStaleBase,
    /// Skip the hashed rung's fork check (step 0 of the snapshot protocol): a snapshot writer
    /// writes its image even where another thread changed a page between the commit's collect
    /// and the fork (`engine/snapshot.rs`; `tests/track_fork_race.rs` must catch it).
    NoForkCheck,
    /// At a snapshot fork, keep every cached base image, even those of pages another thread
    /// wrote between the commit's collect and the fork (`engine/snapshot.rs`;
    /// `tests/track_fork_race.rs` must catch it: the next delta of such a page is computed
    /// against an image the new snapshot does not hold).
    ForkKeepsCache,
    /// At recovery, apply each `DELTA` entry to a zeroed page instead of the page's replayed
    /// image (`engine/replay.rs`): the post-image check must report it.
    DeltaReplayZeroBase,
    /// When returning clean pages to the kernel, treat every present anonymous page below the
    /// newest snapshot's extent as clean, ignoring the pages written since its fork
    /// (`since_snap`) and since the last commit (the tracker) (`engine/footprint.rs`): written
    /// pages revert to the snapshot's content.
    RemapWrittenPages,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("max_size", &self.max_size)
            .field("durability", &self.durability)
            .field("schema", &self.schema)
            .field("snapshot_after_journal_bytes", &self.snapshot_after_journal_bytes)
            .field("snapshot_after_journal_pages", &self.snapshot_after_journal_pages)
            .field("snapshot_interval", &self.snapshot_interval)
            .field("flush_interval", &self.flush_interval)
            .field("snapshot_on_close", &self.snapshot_on_close)
            .field("migrations", &self.migrations.len())
            .field("remap_clean_pages", &self.remap_clean_pages)
            .field("close_snapshot_min_bytes", &self.close_snapshot_min_bytes)
            .field("base_cache_bytes", &self.base_cache_bytes)
            .field("tracking", &self.tracking)
            .finish_non_exhaustive()
    }
}

/// The default maximum heap size: 256 GiB of address space (costs nothing until used).
pub const DEFAULT_MAX_SIZE: u64 = 1 << 38;
/// The default budget of the base cache ([`OpenOptions::base_cache_bytes`]): 64 MiB, about
/// 16,000 pages (see `docs/design.md`, "Base cache", for why).
pub const DEFAULT_BASE_CACHE_BYTES: u64 = 64 << 20;
/// The default journal volume below which `close` skips the snapshot: 32 MiB (with the page
/// records also bounded, what is left to replay costs mostly the scan of the bytes).
pub const DEFAULT_CLOSE_SNAPSHOT_MIN_BYTES: u64 = 32 << 20;
/// The default cap on journals kept for a lagging replication shipper: 256 MiB.
pub const DEFAULT_REPLICATION_BACKLOG_BYTES: u64 = 256 << 20;

/// The default journal volume after which a snapshot starts: 64 MiB.
pub const DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES: u64 = 64 << 20;

/// The default number of page records (whole pages and `DELTA` entries) in the journal after
/// which a snapshot starts ([`OpenOptions::snapshot_after_journal_pages`]).
pub const DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES: u64 = 16384;

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_size: DEFAULT_MAX_SIZE,
            durability: Durability::Immediate,
            schema: String::new(),
            snapshot_after_journal_bytes: DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES,
            snapshot_after_journal_pages: DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES,
            snapshot_interval: None,
            flush_interval: Duration::from_secs(1),
            snapshot_on_close: true,
            tracking: Tracking::Auto,
            concurrent_writers: false,
            close_snapshot_min_bytes: DEFAULT_CLOSE_SNAPSHOT_MIN_BYTES,
            base_cache_bytes: DEFAULT_BASE_CACHE_BYTES,
            remap_clean_pages: false,
            vfs: Arc::new(OsVfs),
            test_snapshot_stop_after: None,
            replication: false,
            replication_backlog_bytes: DEFAULT_REPLICATION_BACKLOG_BYTES,
            replica: false,
            migrations: std::vec::Vec::new(),
            test_create_legacy_format: false,
            #[cfg(any(test, feature = "testing"))]
            test_planted_bug: None,
            #[cfg(any(test, feature = "testing"))]
            test_before_fork: None,
        }
    }
}

impl OpenOptions {
    /// Default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maximum size of the heap in bytes (rounded up to 4 MiB). Fixed when the heap is created;
    /// a reopen must not ask for a different value. Address space only: untouched parts cost
    /// neither memory nor disk.
    pub fn max_size(&mut self, bytes: u64) -> &mut Self {
        self.max_size = bytes;
        self
    }

    /// When commits become durable (default [`Durability::Immediate`]).
    pub fn durability(&mut self, d: Durability) -> &mut Self {
        self.durability = d;
        self
    }

    /// A user schema id recorded at creation. Opening a heap that recorded one with a
    /// *different* non-empty id is [`Error::Incompatible`](crate::Error::Incompatible); an empty
    /// id on either side skips the check. Bump it when the root type's meaning changes without
    /// its Rust type name, size or alignment changing.
    pub fn schema(&mut self, id: &str) -> &mut Self {
        self.schema = id.to_string();
        self
    }

    /// Start a snapshot once the journal since the last snapshot exceeds this many bytes
    /// (default 64 MiB). Bounds recovery time and disk use.
    pub fn snapshot_after_journal_bytes(&mut self, bytes: u64) -> &mut Self {
        self.snapshot_after_journal_bytes = bytes.max(1);
        self
    }

    /// Also start a snapshot once the journal since the last snapshot holds this many page
    /// records: pages journaled whole plus `DELTA` entries, each of which an open after a
    /// crash replays (default [`DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES`], 16,384; 0: off). Small
    /// deltas fill the byte threshold slowly (a 100,000-record load journals about 80,000
    /// entries in 30 MB), and replay costs per record, not per byte: this bounds the replay
    /// after a crash and lets [`Heap::close`](crate::Heap::close) skip its snapshot. Unlike
    /// the byte threshold it never makes a commit wait for a running snapshot writer. See
    /// `docs/design.md`, "Restart without a snapshot".
    pub fn snapshot_after_journal_pages(&mut self, pages: u64) -> &mut Self {
        self.snapshot_after_journal_pages = pages;
        self
    }

    /// Also start a snapshot when this much time has passed since the last one and something
    /// was committed (default: off).
    pub fn snapshot_interval(&mut self, every: Option<Duration>) -> &mut Self {
        self.snapshot_interval = every;
        self
    }

    /// With [`Durability::Eventual`], how often the background flusher syncs (default 1 s).
    pub fn flush_interval(&mut self, every: Duration) -> &mut Self {
        self.flush_interval = every;
        self
    }

    /// Whether [`Heap::close`](crate::Heap::close) may take a snapshot, so that the next open
    /// replays nothing (default true). It does so only when the journal since the newest
    /// snapshot holds at least [`Self::close_snapshot_min_bytes`] bytes or twice
    /// [`Self::snapshot_after_journal_pages`] page records.
    pub fn snapshot_on_close(&mut self, yes: bool) -> &mut Self {
        self.snapshot_on_close = yes;
        self
    }

    /// How changed pages are found at commit (default [`Tracking::Auto`]: the best rung the
    /// kernel and environment offer, probed at open). Forcing a rung the kernel lacks makes
    /// `open` fail with [`Error::Unsupported`](crate::Error::Unsupported).
    pub fn tracking(&mut self, t: Tracking) -> &mut Self {
        self.tracking = t;
        self
    }

    /// The journal volume since the newest snapshot below which [`Heap::close`](crate::Heap::close)
    /// does not take a snapshot (default 32 MiB; 0: always, when anything was committed), unless
    /// the journal holds at least twice [`Self::snapshot_after_journal_pages`] page records.
    /// Replaying that much at the next open costs less than writing the snapshot now. A
    /// snapshot writer still running at close is stopped (its file is left invalid, the
    /// older snapshot and the journals stay) when the journal since the older snapshot is
    /// below both limits, and waited for otherwise.
    pub fn close_snapshot_min_bytes(&mut self, bytes: u64) -> &mut Self {
        self.close_snapshot_min_bytes = bytes;
        self
    }

    /// Memory budget of the base cache, the process-local copies of recently committed pages
    /// that let a commit journal only the words that changed (default 64 MiB, touched only as
    /// pages are cached; 0 turns delta journaling off). See `docs/design.md` ("Base cache").
    pub fn base_cache_bytes(&mut self, bytes: u64) -> &mut Self {
        self.base_cache_bytes = bytes;
        self
    }

    /// Shorthand for [`tracking`](Self::tracking)`(Tracking::AllDirty)` (`true`) or
    /// `Tracking::Auto` (`false`): treat every page as written at each commit. Slow.
    pub fn force_all_dirty(&mut self, yes: bool) -> &mut Self {
        self.tracking = if yes { Tracking::AllDirty } else { Tracking::Auto };
        self
    }

    /// After each snapshot, give the pages that still equal it back to the kernel as clean
    /// file-backed pages of the snapshot file (default false: turning it on accepts the rule below; [`Heap`](crate::Heap) only, see
    /// `engine/footprint.rs` and docs/design.md "Returning clean pages"). Written pages are
    /// private anonymous memory that the kernel can never drop (there is no swap on most
    /// servers); returned pages are page cache it may evict and re-read, so the resident set
    /// tracks the pages written since the last snapshot instead of every page ever written.
    ///
    /// The remapping runs at a commit (in bounded steps) or at [`Heap::snapshot`](crate::Heap::snapshot),
    /// only while the committing thread can take the root lock exclusively. It therefore
    /// requires that **no thread writes heap memory without holding a guard of the heap**: a
    /// thread that fills blocks from [`HeapAlloc`](crate::HeapAlloc) outside the root must hold
    /// [`Heap::read`](crate::Heap::read) (or the write guard) while it writes. A program that
    /// writes heap memory unguarded from other threads while commits run (this includes I/O
    /// in flight into heap buffers, such as an `io_uring` read) must turn this off; otherwise
    /// such a write racing with a remap can be lost. [`GlobalHeap`](crate::GlobalHeap) never
    /// remaps.
    pub fn remap_clean_pages(&mut self, yes: bool) -> &mut Self {
        self.remap_clean_pages = yes;
        self
    }

    /// Use another file-system implementation (tests: a simulated disk).
    #[doc(hidden)]
    pub fn vfs(&mut self, vfs: Arc<dyn Vfs>) -> &mut Self {
        self.vfs = vfs;
        self
    }

    /// Tests only: make snapshot writers stop (as if killed) right after protocol step `n`
    /// (1..=8, see docs/design.md).
    #[doc(hidden)]
    pub fn test_snapshot_stop_after(&mut self, step: Option<u8>) -> &mut Self {
        self.test_snapshot_stop_after = step;
        self
    }

    /// Tests only: create a new heap in meta format 1, the format of the previous release
    /// (the root type in `meta`, no root record), to test the upgrade at the next open.
    #[doc(hidden)]
    pub fn test_create_legacy_format(&mut self, yes: bool) -> &mut Self {
        self.test_create_legacy_format = yes;
        self
    }

    /// Keeps what a replication shipper needs (default off; [`Durability::Replicated`] turns
    /// it on): the chain hash of every commit group (`docs/design.md`, "Replication"), an
    /// index of the durable groups in the journals, and the journals a shipper still needs
    /// (see [`OpenOptions::replication_backlog_bytes`]). Needed by
    /// [`Heap::replication_source`](crate::Heap::replication_source). Costs one hash pass
    /// over each group at commit, 40 bytes of memory per group in the journals, a small
    /// `chain` file rewritten at each journal rotation, and at open one read of the journals
    /// since the newest snapshot. Turning it off and on again starts a new chain: standbys
    /// then report divergence and must be bootstrapped again.
    pub fn replication(&mut self, yes: bool) -> &mut Self {
        self.replication = yes;
        self
    }

    /// How many bytes of journals older than the newest snapshot are kept for a shipper that
    /// lags behind ([`ReplicationSource::hold_from`](crate::ReplicationSource::hold_from)),
    /// default 256 MiB. Past it they are deleted and the shipper gets
    /// [`Error::BacklogTrimmed`](crate::Error::BacklogTrimmed).
    pub fn replication_backlog_bytes(&mut self, bytes: u64) -> &mut Self {
        self.replication_backlog_bytes = bytes;
        self
    }

    /// Whether the engine keeps the replication state.
    pub(crate) fn replicates(&self) -> bool {
        self.replication || matches!(self.durability, Durability::Replicated { .. })
    }

    /// Tests only: plant a known bug (see [`PlantedBug`]) to check that the tests catch it.
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn test_planted_bug(&mut self, bug: Option<PlantedBug>) -> &mut Self {
        self.test_planted_bug = bug;
        self
    }

    /// Tests only: run `hook` in every commit that forks a snapshot writer, between the
    /// commit's collect and the fork (the window an unguarded writer can hit).
    #[cfg(any(test, feature = "testing"))]
    #[doc(hidden)]
    pub fn test_before_fork(&mut self, hook: Option<Arc<dyn Fn() + Send + Sync>>) -> &mut Self {
        self.test_before_fork = hook;
        self
    }

    /// Runs the [`test_before_fork`](Self::test_before_fork) hook, if any; nothing without the
    /// `testing` feature.
    pub(crate) fn run_test_before_fork(&self) {
        #[cfg(any(test, feature = "testing"))]
        if let Some(h) = &self.test_before_fork {
            h();
        }
    }

    /// Whether the tests planted [`PlantedBug::NoForkCheck`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_no_fork_check(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::NoForkCheck);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::ForkKeepsCache`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_fork_keeps_cache(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::ForkKeepsCache);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::DeltaStaleBase`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_delta_stale_base(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::DeltaStaleBase);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::DeltaReplayZeroBase`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_delta_replay_zero_base(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::DeltaReplayZeroBase);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::RemapWrittenPages`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_remap_written_pages(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::RemapWrittenPages);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::SkipJournalSync`]; always false without the
    /// `testing` feature.
    pub(crate) fn planted_skip_journal_sync(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::SkipJournalSync);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }

    /// Whether the tests planted [`PlantedBug::SnapshotHeaderFirst`]; always false without
    /// the `testing` feature.
    pub(crate) fn planted_snapshot_header_first(&self) -> bool {
        #[cfg(any(test, feature = "testing"))]
        return self.test_planted_bug == Some(PlantedBug::SnapshotHeaderFirst);
        #[cfg(not(any(test, feature = "testing")))]
        false
    }
}
