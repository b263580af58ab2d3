//! Replication (`docs/design.md`, "Replication"): [`ReplicationSource`], the pull reader of a
//! primary's durable commit groups and its base export, and [`Replica`], a standby that
//! applies them in order and is promoted to a writable [`Heap`] by a normal open.
//!
//! The transport (a replicated log, e.g. NATS JetStream in `snapheap-nats`) is not here: the
//! core hands out and takes self-describing byte strings ([`WireGroup::bytes`],
//! [`Base::bytes`]).
//!
//! # Safety
//!
//! A replica maps the heap at the primary's fixed address and hands out `&T` through
//! [`ReplicaReadGuard`]s of its `RwLock`; groups are written into memory only under that lock
//! held exclusively, and its allocator is closed (nothing is ever allocated in a replica), so
//! the root stays a valid `T` between applies. The memory is unmapped when the replica is
//! dropped or promoted, when no guard can exist any more (they borrow the replica).

use crate::engine::repl::ReplShared;
use crate::engine::replica::{bootstrap_files, is_replica, remove_marker, ApplyOutcome};
use crate::engine::{Engine, Fingerprint};
use crate::error::{Error, Result};
use crate::heap::{check_root_pointer, read_record, Heap};
use crate::mem::sysmem::SysBox;
use crate::options::{Durability, OpenOptions};
use crate::persist::Persist;
use std::marker::PhantomData;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

/// A primary's replication handle for a shipper thread ([`Heap::replication_source`]):
/// `Clone + Send + Sync`, independent of the [`Heap`]'s borrow; after the heap is closed its
/// calls return [`Error::Closed`].
#[derive(Clone)]
pub struct ReplicationSource {
    shared: Arc<ReplShared>,
}

/// One durable commit group in wire form (`docs/design.md`, "Wire group"): versioned,
/// checksummed, with the chain hash of the history it continues. May exceed 1 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGroup {
    /// Its commit sequence number.
    pub seq: u64,
    /// The encoded group.
    pub bytes: Vec<u8>,
}

/// A base to bootstrap a [`Replica`] from: the primary's `meta` and its newest snapshot
/// (`docs/design.md`, "Base"), at commit `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// The commit the snapshot holds; the replica's first group is `seq + 1`.
    pub seq: u64,
    /// The primary's heap id.
    pub heap_id: u64,
    /// The encoded base.
    pub bytes: Vec<u8>,
}

/// What [`Replica::apply`] did with a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied and durable: the replica is now at this seq.
    Applied(u64),
    /// The replica already holds this group (same history as far as it can tell); nothing done.
    Duplicate(u64),
}

impl ReplicationSource {
    pub(crate) fn new(shared: Arc<ReplShared>) -> Self {
        ReplicationSource { shared }
    }

    /// The primary's heap id.
    pub fn heap_id(&self) -> u64 {
        self.shared.heap_id()
    }

    /// The highest commit that is durable on the primary's disk.
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq()
    }

    /// Keeps every journal that holds groups after `seq` from deletion by snapshots, up to
    /// [`OpenOptions::replication_backlog_bytes`] of journals older than the newest snapshot;
    /// past the cap the hold is dropped and [`next_group`](Self::next_group) returns
    /// [`Error::BacklogTrimmed`] for what was deleted. [`acknowledge`](Self::acknowledge)
    /// moves the hold forward. Held in memory only: a restarted primary deletes the journals
    /// before its newest snapshot at open.
    pub fn hold_from(&self, seq: u64) {
        self.shared.hold_from(seq)
    }

    /// Group `after + 1` once it is durable locally, waiting up to `timeout` (`Ok(None)` on
    /// timeout) — or, on a heap opened with [`Durability::Replicated`], once it is *written*
    /// to the journal, so that the publish overlaps the commit's `fdatasync` (the log may
    /// then hold a group that a machine crash or power loss of the primary took from its
    /// disk: see [`chain_at`](Self::chain_at) and `docs/design.md`, "Shipping on write").
    /// Groups come strictly in `seq` order, read back from the journal files (each record's
    /// checksum verified) or, on a `Replicated` heap, encoded from the copy of a recent group
    /// the commit kept in memory. [`Error::BacklogTrimmed`] when the group is no
    /// longer on disk (send a new base); [`Error::Closed`] after the heap was closed.
    pub fn next_group(&self, after: u64, timeout: Duration) -> Result<Option<WireGroup>> {
        Ok(self.shared.next_group(after, timeout)?.map(|g| WireGroup {
            seq: g.seq,
            bytes: g.bytes,
        }))
    }

    /// The chain hash of this heap's history at commit `seq`, if the heap still knows it
    /// (from its newest snapshot's commit to its last written group; `None` before or after):
    /// a shipper compares it with the log's, so that a primary whose disk lost groups the log
    /// holds is refused instead of continuing another history under the same seqs.
    pub fn chain_at(&self, seq: u64) -> Option<u64> {
        self.shared.chain_of(seq)
    }

    /// A base: `meta` and the newest durable snapshot (no snapshot writer overwrites that
    /// file while it is read), as one checksummed byte string. Holds the whole snapshot in
    /// memory.
    pub fn export_base(&self) -> Result<Base> {
        let b = self.shared.export_base()?;
        Ok(Base {
            seq: b.seq,
            heap_id: b.heap_id,
            bytes: b.bytes,
        })
    }

    /// The shipper reports that the replicated log holds every group up to `seq`: commits in
    /// [`Durability::Replicated`] up to it return.
    pub fn acknowledge(&self, seq: u64) {
        self.shared.acknowledge(seq)
    }

    /// The shipper reports that this primary was fenced (a newer primary exists): every later
    /// commit in [`Durability::Replicated`] fails with [`Error::Fenced`] and writes nothing.
    pub fn fence(&self, reason: &str) {
        self.shared.fence(reason)
    }
}

impl<T: Persist + Send + Sync + 'static> Heap<T> {
    /// A replication handle for a shipper ([`ReplicationSource`]). Needs a heap opened with
    /// [`OpenOptions::replication`] (or [`Durability::Replicated`]); takes a snapshot first
    /// if the heap has none, so that a base can always be exported.
    pub fn replication_source(&self) -> Result<ReplicationSource> {
        let Some(shared) = self.engine_ref().replication_for_source().cloned() else {
            return Err(Error::invalid(
                "replication_source: open the heap with OpenOptions::replication(true)",
            ));
        };
        if !self.engine_ref().has_snapshot() {
            self.snapshot()?;
        }
        Ok(ReplicationSource::new(shared))
    }
}

impl<T: Persist> Heap<T> {
    /// A checksum of the heap's memory (every byte of its extent, and the extent), to compare
    /// a primary with a [`Replica`] at the same commit: call it right after a commit, with no
    /// other thread writing heap memory (an open also changes the allocator's state in the
    /// region until the next commit journals it). Waits for guards to be dropped.
    pub fn content_checksum(&self) -> Result<u64> {
        let _g = self.lock_ref().write().unwrap_or_else(|p| p.into_inner());
        Ok(self.engine_ref().content_checksum())
    }
}

/// A standby copy of a primary heap (`docs/design.md`, "Replica"): a normal heap directory
/// (meta, snapshots, journals, plus the marker file `replica`) that changes only by
/// [`apply`](Self::apply). Reads see whole commits. It maps the heap at the primary's fixed
/// address, so it needs the same binary (the same root type) and that address range free:
/// a primary and a replica of the same heap cannot live in one process.
pub struct Replica<T: Persist> {
    engine: Option<SysBox<Engine>>,
    lock: RwLock<()>,
    apply: Mutex<()>,
    dir: PathBuf,
    /// The root pointer last checked against the root record and `T`.
    checked_root: AtomicU64,
    _marker: PhantomData<T>,
}

// SAFETY: the root is reachable only through guards of the RwLock, as for `Heap`.
unsafe impl<T: Persist + Send + Sync> Send for Replica<T> {}
// SAFETY: as above.
unsafe impl<T: Persist + Send + Sync> Sync for Replica<T> {}

/// Shared access to a [`Replica`]'s root, as of a whole commit.
pub struct ReplicaReadGuard<'a, T> {
    _g: RwLockReadGuard<'a, ()>,
    root: &'a T,
}

impl<T> Deref for ReplicaReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.root
    }
}

impl<T: Persist + Send + Sync + 'static> Replica<T> {
    /// Creates a replica in `dir` (which must not exist or be empty) from a base
    /// ([`ReplicationSource::export_base`]) and opens it. A crash during the bootstrap leaves
    /// a directory without the `replica` marker, which [`open`](Self::open) refuses: remove it
    /// and bootstrap again.
    pub fn bootstrap(dir: impl AsRef<Path>, base: &[u8]) -> Result<Self> {
        Self::bootstrap_with(&OpenOptions::new(), dir, base)
    }

    /// [`bootstrap`](Self::bootstrap) with options (the vfs, the snapshot thresholds that
    /// bound the replica's journal, the base cache of a later promotion are taken from them).
    pub fn bootstrap_with(opts: &OpenOptions, dir: impl AsRef<Path>, base: &[u8]) -> Result<Self> {
        bootstrap_files(&*opts.vfs, dir.as_ref(), base)?;
        Self::open_with(opts, dir)
    }

    /// Reopens a replica after a restart or a crash; its position is what its journal holds.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(&OpenOptions::new(), dir)
    }

    /// [`open`](Self::open) with options.
    pub fn open_with(opts: &OpenOptions, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !is_replica(&*opts.vfs, dir) {
            return Err(Error::invalid(format!(
                "{} is not a replica directory (no `replica` marker: not bootstrapped, bootstrap interrupted, or promoted)",
                dir.display()
            )));
        }
        let mut o = opts.clone();
        o.replica = true;
        o.replication = true;
        o.durability = Durability::Immediate;
        o.base_cache_bytes = 0; // a replica never captures pages
        let engine = Engine::open(dir, &o, &Fingerprint::root_record_kind())?;
        let base = engine.base();
        engine.close_allocator();
        let r = Replica {
            engine: Some(engine),
            lock: RwLock::new(()),
            apply: Mutex::new(()),
            dir: dir.to_path_buf(),
            checked_root: AtomicU64::new(0),
            _marker: PhantomData,
        };
        let _ = base;
        r.check_root()?;
        Ok(r)
    }

    fn engine(&self) -> &Engine {
        self.engine.as_deref().expect("engine present until promote")
    }

    /// Checks the root record against `T` (at open and whenever the root pointer changed);
    /// returns the root pointer.
    fn check_root(&self) -> Result<usize> {
        let e = self.engine();
        let word = e.root_word().load(Ordering::Acquire);
        if word != 0 && word == self.checked_root.load(Ordering::Acquire) {
            return Ok(word as usize);
        }
        if word == 0 {
            return Err(Error::invalid(format!(
                "the replica in {} holds no root",
                self.dir.display()
            )));
        }
        let (_, stored) = read_record(e.arena(), &self.dir)?;
        check_root_pointer(e.arena(), &self.dir, word as usize, &stored)?;
        let target = Fingerprint::of::<T>("");
        // No migrations: a replica cannot convert its root; any schema id is accepted, as by
        // `Heap::open` without one.
        let plain = OpenOptions::new();
        let chain = crate::migrate::plan(&plain, &stored, &target)?;
        if !chain.is_empty() {
            return Err(Error::incompatible(format!(
                "the replica's root is not a `{}` (its root record names another type)",
                target.type_name
            )));
        }
        self.checked_root.store(word, Ordering::Release);
        Ok(word as usize)
    }

    /// The last applied group's seq (durable).
    pub fn position(&self) -> u64 {
        self.engine().last_seq()
    }

    /// The primary's heap id.
    pub fn heap_id(&self) -> u64 {
        self.engine().meta().heap_id
    }

    /// Applies the next group ([`WireGroup::bytes`]). `Ok(Applied::Applied(seq))` once it is
    /// durable in the replica's journal and visible to reads; `Ok(Applied::Duplicate(seq))`
    /// for a group it already holds. Errors, with nothing applied: [`Error::ReplicaGap`]
    /// (a later group than the next), [`Error::ReplicaDiverged`] (another history),
    /// [`Error::Corrupt`] (damaged bytes, or a delta that does not fit the replica's image),
    /// [`Error::Incompatible`] (another heap or wire version). Applies are serialised; reads
    /// wait only while the pages are written into memory.
    pub fn apply(&self, group: &[u8]) -> Result<Applied> {
        let _one = self.apply.lock().unwrap_or_else(|p| p.into_inner());
        match self.engine().replica_apply(group, &self.lock)? {
            ApplyOutcome::Applied(s) => Ok(Applied::Applied(s)),
            ApplyOutcome::Duplicate(s) => Ok(Applied::Duplicate(s)),
        }
    }

    /// Shared access to the root as of the last applied commit. Errors: the replica was
    /// poisoned by a failed write, or the primary changed the root's type (a migration).
    pub fn read(&self) -> Result<ReplicaReadGuard<'_, T>> {
        let g = self.lock.read().unwrap_or_else(|p| p.into_inner());
        if self.engine().is_poisoned() {
            return Err(Error::Poisoned {
                cause: "a replica write failed; reopen it".into(),
            });
        }
        let p = self.check_root()?;
        // SAFETY: `check_root` validated the pointer against the root record and `T`; the
        // read lock excludes applies, which are the only writers of a replica's memory.
        let root = unsafe { &*(p as *const T) };
        Ok(ReplicaReadGuard { _g: g, root })
    }

    /// Checksum of the heap content at [`position`](Self::position), the same function as
    /// [`Heap::content_checksum`].
    pub fn content_checksum(&self) -> Result<u64> {
        Ok(self.engine().content_checksum())
    }

    /// Makes this replica the writable primary: closes it, removes its `replica` marker and
    /// opens the directory as a heap with `opts` (replication is turned on, so the chain
    /// continues and standbys of the new primary keep following).
    pub fn promote(mut self, opts: &OpenOptions) -> Result<Heap<T>> {
        self.check_root()?;
        let vfs = opts.vfs.clone();
        self.release();
        remove_marker(&*vfs, &self.dir)?;
        let mut o = opts.clone();
        o.replication = true;
        // The root was checked above, so `init` never runs: the heap holds a committed root.
        Heap::open_with(&o, &self.dir, |_| {
            unreachable!("a promoted replica holds a committed root")
        })
    }

    fn release(&mut self) {
        if let Some(e) = self.engine.take() {
            let base = e.base();
            drop(e);
            // SAFETY: no guard exists (they borrow `self`), nothing was allocated from the
            // replica (its allocator is closed), so nothing refers into its memory.
            unsafe { crate::engine::release_detached_at(base) };
        }
    }
}

impl<T: Persist> Drop for Replica<T> {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let base = e.base();
            drop(e);
            // SAFETY: as in `release`.
            unsafe { crate::engine::release_detached_at(base) };
        }
    }
}
