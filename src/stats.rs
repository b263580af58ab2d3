//! [`Stats`]: counters describing a heap, and [`TrackMode`] re-exported for reporting.

/// A snapshot of a heap's counters, from [`Heap::stats`](crate::Heap::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Sequence number of the last commit (0 before the first).
    pub commit_seq: u64,
    /// Sequence number of the last commit known durable.
    pub durable_seq: u64,
    /// Bytes in the journal files written since the last snapshot.
    pub journal_bytes: u64,
    /// Commits made through this handle.
    pub commits: u64,
    /// Pages captured by the last commit.
    pub last_commit_pages: u64,
    /// Snapshots completed through this handle.
    pub snapshots: u64,
    /// Snapshots that failed (fork error or child failure) and will be retried.
    pub snapshot_failures: u64,
    /// Snapshots their writer abandoned before writing anything because a page it was to
    /// write no longer matched what the forking commit journaled (hashed tracking only: a
    /// thread wrote heap memory without a guard between the commit's collect and the fork;
    /// docs/design.md, "Snapshot protocol"). Retried at the next trigger (`Heap::snapshot`
    /// retries at once, a few times).
    pub snapshot_retries: u64,
    /// Snapshot writers stopped unfinished by `close` because the journal since the older
    /// snapshot was cheap to replay (`OpenOptions::close_snapshot_min_bytes`); not failures.
    pub snapshots_stopped: u64,
    /// Pages written by the last completed snapshot.
    pub last_snapshot_pages: u64,
    /// How long the last `fork()` stalled the committing thread, in microseconds.
    pub last_fork_micros: u64,
    /// Wall time of the last completed snapshot, from fork to durable header, in microseconds.
    pub last_snapshot_micros: u64,
    /// Generation of the newest durable snapshot (0 if none).
    pub snapshot_generation: u64,
    /// Bytes handed out by the allocator and not yet freed. Computing it walks the allocator's
    /// structures with allocation paused (the same walk as `Heap::verify`), so `stats()` costs
    /// time proportional to the heap's slabs and free blocks: fine for monitoring, not for a
    /// hot loop.
    pub allocated_bytes: u64,
    /// Bytes of the region mapped read-write (the used part).
    pub mapped_bytes: u64,
    /// The dirty-page tracking rung in use: `"uffd-wp"`, `"hashed"`, `"soft-dirty"` or
    /// `"all-dirty"` (see `Tracking`).
    pub track_mode: &'static str,
    /// Why better tracking rungs were not used: with `Tracking::Auto`, each skipped rung and
    /// its failed probe step and OS error (e.g. `"uffd-wp: userfaultfd/UFFDIO_API: Operation
    /// not permitted (os error 1)"` in a container), `None` when the best rung works; with a
    /// forced rung, that it was forced.
    pub track_fallback: Option<std::string::String>,
    /// Pages replayed from the journal when the heap was opened.
    pub replayed_pages: u64,
    /// Bytes reclaimed at open (blocks unreachable from the roots).
    pub reclaimed_bytes: u64,
    /// Pages given back to the kernel as clean file-backed pages of a snapshot file since
    /// open (see [`OpenOptions::remap_clean_pages`](crate::OpenOptions::remap_clean_pages)).
    pub remapped_pages: u64,
    /// Bytes of the heap's region that are private anonymous memory now (written pages the
    /// kernel cannot drop without swap), measured with `PAGEMAP_SCAN` when `stats()` runs;
    /// 0 when the kernel cannot tell.
    pub anonymous_bytes: u64,
    /// How long the last remapping step stalled its commit, in microseconds.
    pub last_remap_micros: u64,
    /// Pages journaled as `DELTA` entries (the changed words) by commits through this handle.
    pub delta_pages: u64,
    /// Pages journaled whole by commits through this handle.
    pub full_pages: u64,
    /// Dirty pages found equal to their journaled image, so not journaled.
    pub unchanged_pages: u64,
    /// Base-cache lookups that found the page's journaled image.
    pub base_cache_hits: u64,
    /// Base-cache lookups that did not (the page was journaled whole, or against zeros).
    pub base_cache_misses: u64,
    /// Images dropped from the base cache to make room.
    pub base_cache_evictions: u64,
    /// Memory the base cache has touched (its frames in use, slots, table), at most
    /// [`Stats::base_cache_budget`].
    pub base_cache_bytes: u64,
    /// The base cache's budget ([`OpenOptions::base_cache_bytes`](crate::OpenOptions::base_cache_bytes);
    /// 0 when delta journaling is off).
    pub base_cache_budget: u64,
}
