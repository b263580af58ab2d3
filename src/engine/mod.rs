//! The engine: one open heap. It owns the region, the allocator, the dirty-page tracker, the
//! journal and the snapshot files, and runs the commit, snapshot and recovery protocols.
//!
//! - `recover.rs`: creating a heap directory and recovering an existing one.
//! - `commit.rs`: capturing dirty pages at a commit point and appending them to the journal.
//! - `capture.rs`: each dirty page journaled whole or as a delta against the base cache;
//!   `page_diff.rs`: the word differ it uses.
//! - `durable.rs`: group commit (one `fdatasync` for concurrent committers) and the background
//!   flusher of [`Durability::Eventual`](crate::Durability::Eventual).
//! - `snapshot.rs`: forking a snapshot writer, reaping it, rotating journals.
//! - `footprint.rs`: returning pages that equal the newest snapshot to the kernel as clean
//!   file-backed pages.
//! - `detach.rs`: what stays of a closed heap (its memory, still mapped for values that
//!   outlived the handle) and adopting it at a reopen in the same process.
//! - `verify.rs`: the full invariant check ([`VerifyReport`]).
//!
//! # Lock order
//!
//! `commit` (the commit lock) → allocator pause → `grow.tracker`; and, in the allocator's
//! growth path (which runs inside an allocation, so never during a pause), `grow.region` →
//! `grow.tracker`. `durable.state` is taken alone. The commit path takes the tracker only after
//! the pause is in force, so a growth that holds the tracker always finishes before a pause
//! completes.
//!
//! # Invariants
//!
//! - Every page written since the last commit is either reported by the tracker at the next
//!   commit or was written by a thread outside the commit lock into memory unreachable from
//!   the roots.
//! - `since_snap ⊇` every page captured by a commit after the last snapshot fork;
//!   `prev_interval` = the pages that differ between the two snapshot files (when known).
//! - Journals with an id below the newest durable snapshot's `journal_id` are garbage and are
//!   deleted; the others form a gap-free chain of sequence numbers starting at that snapshot.
//!
//! # Safety
//!
//! [`grow_hook`] is the allocator's one call upward, a function pointer with a `*const ()`
//! context: the context is the engine's boxed [`GrowCtx`], which outlives the arena's use.

mod capture;
mod commit;
mod detach;
mod durable;
mod footprint;
pub(crate) mod page_diff;
mod recover;
pub(crate) mod repl;
pub(crate) mod replay;
pub(crate) mod replica;
mod snapshot;
mod verify;

pub(crate) use detach::release as release_detached_at;
pub use detach::release_detached;
pub use verify::{SnapshotFileState, VerifyReport};

use crate::disk::format::meta::Meta;
use crate::disk::format::snapshot::SnapHeader;
use crate::disk::journal::JournalWriter;
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::alloc::Arena;
use crate::mem::dirty_set::DirtySet;
use crate::mem::region::Region;
use crate::mem::sysmem::{SysBox, SysVec};
use crate::mem::track::Tracker;
use crate::options::OpenOptions;
use crate::stats::Stats;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub(crate) use recover::Fingerprint;
pub(crate) use snapshot::SNAPSHOT_FILES;

/// What the allocator's growth hook needs: the region and the tracker. Boxed separately so its
/// address is stable before the arena exists.
pub(crate) struct GrowCtx {
    region: Mutex<Region>,
    tracker: Mutex<Tracker>,
}

/// Locks a mutex, ignoring poisoning (our critical sections leave consistent state or poison
/// the heap explicitly).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The allocator's growth hook: maps `[base, base + new_extent)` and arms tracking on the new
/// part. On a tracking failure the new part is unmapped again (untracked memory would lose
/// writes) and the allocation fails.
///
/// # Safety
///
/// `ctx` points to the engine's live [`GrowCtx`].
unsafe fn grow_hook(ctx: *const (), new_extent: usize) -> bool {
    // SAFETY: the arena was created with this engine's GrowCtx, which outlives the arena's use.
    let g = unsafe { &*(ctx as *const GrowCtx) };
    let mut region = lock(&g.region);
    let old = region.extent();
    match region.grow(new_extent) {
        Ok(None) => true,
        Ok(Some((a, b))) => {
            // SAFETY: [a, b) was just mapped read-write and stays mapped for the engine's
            // lifetime (growth never unmaps; `shrink_to` below runs only when arming failed,
            // which leaves nothing armed).
            if unsafe { lock(&g.tracker).arm(a, b) }.is_ok() {
                true
            } else {
                region.shrink_to(old);
                false
            }
        }
        Err(_) => false,
    }
}

/// The state guarded by the commit lock.
pub(crate) struct CommitState {
    journal: JournalWriter,
    /// Scratch: dirty ranges of the current commit.
    ranges: SysVec<(usize, usize)>,
    /// Pages captured since the last snapshot fork.
    since_snap: DirtySet,
    /// Pages that differ between the two snapshot files; `None` when unknown (then the next
    /// snapshot rewrites every page of its file).
    prev_interval: Option<DirtySet>,
    /// The two snapshot files and their last known headers.
    snap_files: [Box<dyn VFile>; 2],
    snaps: [Option<SnapHeader>; 2],
    /// A forked snapshot writer that has not been reaped yet.
    pending: Option<snapshot::Pending>,
    last_seq: u64,
    last_snapshot_at: std::time::Instant,
    /// Progress of returning clean pages to the kernel (`footprint.rs`).
    footprint: footprint::Footprint,
    /// Delta capture and the base cache.
    capture: capture::Capture,
    /// Bytes of the journals of the chain before the current one (since the newest durable
    /// snapshot); with the current journal's, what the next open would replay.
    older_journal_bytes: u64,
    /// Page records (whole pages and `DELTA` entries; counted as the pages each commit
    /// captured) in the current journal, and in the older journals of the chain: what the
    /// next open would replay, by record (`OpenOptions::snapshot_after_journal_pages`).
    journal_pages: u64,
    older_journal_pages: u64,
    /// Chain hash of the history up to `last_seq` (with replication on; `docs/design.md`,
    /// "Replication").
    chain: u64,
}

/// Counters reported by [`Stats`].
#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    last_commit_pages: AtomicU64,
    snapshots: AtomicU64,
    snapshot_failures: AtomicU64,
    snapshot_retries: AtomicU64,
    snapshots_stopped: AtomicU64,
    last_snapshot_pages: AtomicU64,
    last_fork_micros: AtomicU64,
    last_snapshot_micros: AtomicU64,
    snapshot_generation: AtomicU64,
    journal_bytes: AtomicU64,
    replayed_pages: AtomicU64,
    remapped_pages: AtomicU64,
    last_remap_micros: AtomicU64,
    delta_pages: AtomicU64,
    full_pages: AtomicU64,
    unchanged_pages: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_evictions: AtomicU64,
    cache_bytes: AtomicU64,
    cache_budget: AtomicU64,
}

impl Counters {
    /// Publishes the capture's counters (under the commit lock, after a commit).
    fn publish_capture(&self, cap: &capture::Capture) {
        let (k, c) = cap.counters();
        let st = |a: &AtomicU64, v| a.store(v, Ordering::Relaxed);
        st(&self.delta_pages, k.delta_pages);
        st(&self.full_pages, k.full_pages);
        st(&self.unchanged_pages, k.same_pages);
        st(&self.cache_hits, c.hits);
        st(&self.cache_misses, c.misses);
        st(&self.cache_evictions, c.evictions);
        st(&self.cache_bytes, c.bytes);
    }
}

/// One open heap.
pub(crate) struct Engine {
    dir: PathBuf,
    vfs: Arc<dyn Vfs>,
    meta: Meta,
    opts: OpenOptions,
    arena: &'static Arena,
    grow: SysBox<GrowCtx>,
    commit: Mutex<CommitState>,
    durable: durable::Durable,
    poisoned: AtomicBool,
    poison_cause: Mutex<Option<String>>,
    counters: Counters,
    lock_file: Box<dyn VFile>,
    closed: AtomicBool,
    /// Set while a root migration runs (`Engine::freeze_commits`): every commit is refused,
    /// so no state between taking the old root and installing the new one is ever committed.
    frozen: AtomicBool,
    /// Set by a `close` whose final commit succeeded (see `detach.rs`).
    closed_with_commit: AtomicBool,
    /// Replication state shared with `ReplicationSource`s (with replication on).
    repl: Option<Arc<repl::ReplShared>>,
}

impl Engine {
    /// The allocator of this heap.
    pub(crate) fn arena(&self) -> &'static Arena {
        self.arena
    }

    /// First address of the heap's data.
    pub(crate) fn base(&self) -> usize {
        self.meta.base as usize
    }

    /// The persistent word where the typed API keeps its root pointer.
    pub(crate) fn root_word(&self) -> &AtomicU64 {
        &self.arena.user_words()[0]
    }

    /// Refuses work once poisoned.
    fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            let cause = lock(&self.poison_cause).clone().unwrap_or_default();
            return Err(Error::Poisoned { cause });
        }
        Ok(())
    }

    /// Poisons the heap: every later commit fails. Returns the error to report now.
    fn poison(&self, err: Error) -> Error {
        let mut c = lock(&self.poison_cause);
        if c.is_none() {
            *c = Some(err.to_string());
        }
        self.poisoned.store(true, Ordering::Release);
        err
    }

    /// Poisons the heap with `cause` (a root migration failed halfway in memory): every later
    /// commit fails, so the half-migrated state never becomes durable.
    pub(crate) fn poison_with(&self, cause: String) {
        let _ = self.poison(Error::invalid(cause));
    }

    /// While `on`, every commit (explicit, at close, or a snapshot) returns an error: a root
    /// migration runs and the heap holds no consistent state to commit.
    pub(crate) fn freeze_commits(&self, on: bool) {
        self.frozen.store(on, Ordering::Release);
    }

    /// Whether an earlier failure poisoned the heap.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Current counters.
    pub(crate) fn stats(&self) -> Stats {
        let c = &self.counters;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (last_seq, durable_seq) = self.durable.seqs();
        let (track_mode, track_fallback) = {
            let t = lock(&self.grow.tracker);
            (t.mode().name(), t.fallback_text())
        };
        let anonymous_bytes = footprint::anonymous_bytes(self.base(), self.base() + self.arena.extent());
        Stats {
            commit_seq: last_seq,
            durable_seq,
            journal_bytes: ld(&c.journal_bytes),
            commits: ld(&c.commits),
            last_commit_pages: ld(&c.last_commit_pages),
            snapshots: ld(&c.snapshots),
            snapshot_failures: ld(&c.snapshot_failures),
            snapshot_retries: ld(&c.snapshot_retries),
            snapshots_stopped: ld(&c.snapshots_stopped),
            last_snapshot_pages: ld(&c.last_snapshot_pages),
            last_fork_micros: ld(&c.last_fork_micros),
            last_snapshot_micros: ld(&c.last_snapshot_micros),
            snapshot_generation: ld(&c.snapshot_generation),
            allocated_bytes: self.arena.allocated_bytes() as u64,
            mapped_bytes: lock(&self.grow.region).extent() as u64,
            track_mode,
            track_fallback,
            replayed_pages: ld(&c.replayed_pages),
            reclaimed_bytes: 0,
            remapped_pages: ld(&c.remapped_pages),
            anonymous_bytes,
            last_remap_micros: ld(&c.last_remap_micros),
            delta_pages: ld(&c.delta_pages),
            full_pages: ld(&c.full_pages),
            unchanged_pages: ld(&c.unchanged_pages),
            base_cache_hits: ld(&c.cache_hits),
            base_cache_misses: ld(&c.cache_misses),
            base_cache_evictions: ld(&c.cache_evictions),
            base_cache_bytes: ld(&c.cache_bytes),
            base_cache_budget: ld(&c.cache_budget),
        }
    }

    /// Releases the heap. With `commit_and_snapshot`, first commits outstanding changes and
    /// (if enabled and the journal chain holds at least `close_snapshot_min_bytes`) takes a
    /// snapshot so the next open replays nothing; without it (drop), uncommitted changes are discarded as in a crash. In both
    /// cases everything committed is made durable and a running snapshot writer is reaped.
    pub(crate) fn close(&self, commit_and_snapshot: bool) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.durable.stop_flusher();
        let mut result = Ok(());
        if let Some(r) = &self.repl {
            r.close();
        }
        if commit_and_snapshot && !self.is_poisoned() {
            result = self.commit_inner(false).map(drop);
            self.closed_with_commit.store(result.is_ok(), Ordering::Release);
        }
        {
            let mut cs = lock(&self.commit);
            // A snapshot writer still running: stopped when the journal since the older
            // snapshot is small enough to replay (as below), else waited for (docs/design.md,
            // "Restart without a snapshot").
            self.reap(&mut cs, false);
            if cs.pending.is_some() && !self.close_snapshot_worth_it(&cs) {
                self.stop_pending(&mut cs);
            }
            self.reap(&mut cs, true);
            if result.is_ok() && !self.is_poisoned() {
                result = self.wait_durable(cs.last_seq);
            }
            // Cheap restart: a small journal is replayed at the next open instead (docs/design.md,
            // "Restart without a snapshot").
            let worth_it = self.close_snapshot_worth_it(&cs);
            if commit_and_snapshot && result.is_ok() && self.opts.snapshot_on_close && worth_it && !self.is_poisoned() {
                result = self.snapshot_locked(&mut cs);
            }
        }
        self.arena.close();
        result
    }
}

impl Engine {
    /// Whether the journal chain since the newest durable snapshot is worth a snapshot at
    /// close: at least `close_snapshot_min_bytes` of journal, or at least twice
    /// `snapshot_after_journal_pages` page records (docs/design.md, "Restart without a snapshot").
    fn close_snapshot_worth_it(&self, cs: &CommitState) -> bool {
        let bytes = cs.older_journal_bytes + cs.journal.end() - crate::disk::format::journal::FIRST_RECORD_OFFSET;
        let pages = cs.older_journal_pages + cs.journal_pages;
        let page_limit = self.opts.snapshot_after_journal_pages;
        bytes > 0
            && (bytes >= self.opts.close_snapshot_min_bytes
                || (page_limit > 0 && pages >= page_limit.saturating_mul(2)))
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.close(false);
        // The region stays mapped: values allocated from the heap may outlive the handle.
        // `detach` moves it (and the armed tracker) to the list of detached heaps, leaving an
        // inert region in `grow`; only an explicit, unsafe release unmaps it.
        detach::detach(self);
    }
}
