//! [`Heap<T>`]: the typed API. A heap directory holds one root value of type `T`; guards give
//! shared or exclusive access to it, and commits make its current state durable.
//!
//! Synchronisation lives here, outside the persistent region: the `RwLock` that guards the
//! root is a field of the handle, so no lock is ever captured inside the heap's image.
//!
//! What a root may hold is documented on [`Heap`] ("What may be stored in the root").
//!
//! # Safety
//!
//! The root pointer is validated at open (inside the heap, aligned) and is dereferenced only
//! through the guards of the handle's `RwLock`, which give the usual shared/exclusive access.

use crate::disk::format::meta::LEGACY_FORMAT_VERSION;
use crate::disk::format::root::{RootRecord, ROOT_RECORD_LEN};
use crate::engine::{Engine, Fingerprint, VerifyReport};
use crate::error::{Error, Result};
use crate::mem::alloc::{Arena, HeapAlloc};
use crate::mem::sysmem::SysBox;
use crate::migrate::{place, RootInfo, WORD_ROOT_RECORD};
use crate::options::OpenOptions;
use crate::persist::Persist;
use crate::stats::Stats;
use std::alloc::Layout;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A persistent heap whose root is a `T`.
///
/// ```no_run
/// use snapheap::collections::{HashMap, String, Vec};
/// use snapheap::{Heap, HeapAlloc, Persist};
///
/// #[derive(Persist)]
/// struct State { map: HashMap<u64, String>, log: Vec<u64> }
///
/// let heap = Heap::<State>::open("data/app.heap", |a: HeapAlloc| State {
///     map: HashMap::new_in(a),
///     log: Vec::new_in(a),
/// })?;
/// let a = heap.alloc();
/// let mut s = heap.write();
/// s.map.insert(1, String::from_str_in("one", a));
/// s.log.push(1);
/// s.commit()?;
/// # Ok::<(), snapheap::Error>(())
/// ```
///
/// # What may be stored in the root
///
/// `T` must implement [`Persist`]: values whose bytes stay meaningful in another run of the
/// program (see its docs for what is admitted, what is refused and why, and what remains the
/// caller's responsibility). The root type's name, size and alignment and the user schema id
/// are committed with the root (its root record) and checked at every open (a changed type
/// is converted by [`OpenOptions::migrate`]); a layout change that keeps all three is
/// undetectable, so bump the schema id when the meaning of the data changes.
pub struct Heap<T: Persist> {
    engine: Option<SysBox<Engine>>,
    lock: RwLock<()>,
    root: NonNull<T>,
    _marker: PhantomData<T>,
}

// SAFETY: the root is reachable only through guards of the handle's RwLock, so sending or
// sharing the handle is sound exactly when T itself may be sent and shared.
unsafe impl<T: Persist + Send + Sync> Send for Heap<T> {}
// SAFETY: as above.
unsafe impl<T: Persist + Send + Sync> Sync for Heap<T> {}

impl<T: Persist + Send + Sync + 'static> Heap<T> {
    /// Opens the heap in directory `dir`, creating it if it does not exist. `init` runs only on
    /// creation (or if the creating process died before its first commit); its result becomes
    /// the root and is committed before `open` returns.
    ///
    /// Errors: [`Error::Locked`] if another handle holds the heap, [`Error::Incompatible`] for
    /// another root type or schema, [`Error::AddressInUse`] if the heap's address range is
    /// taken in this process, [`Error::Corrupt`] for damaged files.
    pub fn open(dir: impl AsRef<Path>, init: impl FnOnce(HeapAlloc) -> T) -> Result<Self> {
        OpenOptions::new().open(dir, init)
    }

    pub(crate) fn open_with(opts: &OpenOptions, dir: &Path, init: impl FnOnce(HeapAlloc) -> T) -> Result<Self> {
        let target = Fingerprint::of::<T>(&opts.schema);
        if opts.test_create_legacy_format {
            return Self::open_format_1(opts, dir, init, &target);
        }
        let kind = Fingerprint::root_record_kind();
        let engine = Engine::open(dir, opts, &kind)?;
        let base = engine.base();
        match Self::open_root(opts, dir, init, engine, &target, &kind) {
            Ok(h) => Ok(h),
            Err((e, user_code_ran)) => {
                if !user_code_ran {
                    // SAFETY: no handle was made and no code of the caller (init, a migration)
                    // ran on this heap, so no value allocated from it exists; its memory holds
                    // only what recovery mapped and the allocator's attach wrote.
                    unsafe { crate::engine::release_detached_at(base) };
                }
                Err(e)
            }
        }
    }

    /// The typed part of an open: the root record, the format upgrade, the migration chain.
    /// On failure the engine has been dropped (uncommitted) and the flag says whether code of
    /// the caller ran on the heap (then its memory stays detached, see `Error::Detached`).
    fn open_root(
        opts: &OpenOptions,
        dir: &Path,
        init: impl FnOnce(HeapAlloc) -> T,
        engine: SysBox<Engine>,
        target: &Fingerprint,
        kind: &Fingerprint,
    ) -> std::result::Result<Self, (Error, bool)> {
        let early = |e: Error| (e, false);
        let late = |e: Error| (e, true);
        let arena = engine.arena();
        let legacy = engine.meta().version == LEGACY_FORMAT_VERSION;
        let word = engine.root_word().load(Ordering::Acquire) as usize;
        if word == 0 {
            // A new heap (or its creator died before the first commit).
            let p = place(arena, init(HeapAlloc::new(arena))).map_err(late)?;
            let record = RootRecord::new(p as u64, target.size, target.align, target.type_name, &target.schema, 0);
            install_record(arena, None, &record).map_err(late)?;
            engine.root_word().store(p as u64, Ordering::Release);
            if legacy {
                engine.commit_durable().map_err(late)?;
                engine.upgrade_meta(kind).map_err(late)?;
            } else {
                engine.commit().map_err(late)?;
            }
            return Ok(Self::from_parts(engine, p));
        }
        let (record_at, stored) = if legacy {
            upgrade_format_1(&engine, dir, word, kind).map_err(early)?
        } else {
            read_record(arena, dir).map_err(early)?
        };
        check_root_pointer(arena, dir, word, &stored).map_err(early)?;
        let chain = crate::migrate::plan(opts, &stored, target).map_err(early)?;
        if chain.is_empty() {
            return Ok(Self::from_parts(engine, word));
        }
        let p = crate::migrate::run(&engine, word, &chain).map_err(late)?;
        let record = RootRecord::new(
            p as u64,
            target.size,
            target.align,
            target.type_name,
            &target.schema,
            stored.migrations.saturating_add(chain.len() as u32),
        );
        install_record(arena, Some(record_at), &record).map_err(late)?;
        engine.root_word().store(p as u64, Ordering::Release);
        engine.freeze_commits(false);
        engine.commit().map_err(late)?;
        Ok(Self::from_parts(engine, p))
    }

    fn from_parts(engine: SysBox<Engine>, root: usize) -> Self {
        Heap {
            engine: Some(engine),
            lock: RwLock::new(()),
            root: NonNull::new(root as *mut T).expect("validated non-null root"),
            _marker: PhantomData,
        }
    }

    /// Tests only: the open of the previous release (meta format 1: the root type in `meta`,
    /// no root record), to create heaps that the upgrade at the next open is tested on.
    fn open_format_1(
        opts: &OpenOptions,
        dir: &Path,
        init: impl FnOnce(HeapAlloc) -> T,
        fp: &Fingerprint,
    ) -> Result<Self> {
        let engine = Engine::open(dir, opts, fp)?;
        let arena = engine.arena();
        let word = engine.root_word().load(Ordering::Acquire) as usize;
        if word == 0 {
            let p = place(arena, init(HeapAlloc::new(arena)))?;
            engine.root_word().store(p as u64, Ordering::Release);
            engine.commit()?;
            return Ok(Self::from_parts(engine, p));
        }
        let layout = Layout::new::<T>();
        let in_heap = layout.size() == 0 || arena.contains(word as *const u8);
        if word % layout.align() != 0 || !in_heap {
            return Err(Error::corrupt(
                dir,
                0,
                format!("root pointer {word:#x} does not point into the heap"),
            ));
        }
        Ok(Self::from_parts(engine, word))
    }
}

/// Upgrade of a format-1 heap with a committed root (`docs/design.md`, "Format upgrade"):
/// step 1 writes a root record holding the identity `meta` recorded and commits it durably,
/// step 2 rewrites `meta` in format 2. A crash between the two leaves a format-1 `meta` and a
/// record, which the next open finds and reuses. Returns the record's address and contents.
fn upgrade_format_1(engine: &Engine, dir: &Path, word: usize, kind: &Fingerprint) -> Result<(usize, RootRecord)> {
    let arena = engine.arena();
    let m = engine.meta();
    let record = RootRecord {
        root: word as u64,
        size: m.root_size,
        align: m.root_align,
        type_hash: m.root_type_hash,
        schema_hash: m.schema_hash,
        migrations: 0,
        type_name: m.root_type_name.clone(),
        schema: m.schema.clone(),
    };
    if !record.align.is_power_of_two() {
        return Err(Error::corrupt(
            dir.join("meta"),
            0,
            "root alignment is not a power of two",
        ));
    }
    check_root_pointer(arena, dir, word, &record)?;
    // A record left by an upgrade that crashed before step 2 is reused (not leaked).
    let earlier = read_record(arena, dir).ok().map(|(at, _)| at);
    let at = install_record(arena, earlier, &record)?;
    engine.commit_durable()?;
    engine.upgrade_meta(kind)?;
    Ok((at, record))
}

/// Writes `record` into the record block at `at` (or a new block) and points
/// `user_words[2]` to it; returns the block's address.
fn install_record(arena: &'static Arena, at: Option<usize>, record: &RootRecord) -> Result<usize> {
    let at = match at {
        Some(at) => at,
        None => {
            let p = arena.alloc(Layout::from_size_align(ROOT_RECORD_LEN, 8).expect("constant layout"));
            if p.is_null() {
                return Err(Error::OutOfSpace {
                    what: "the root record".to_string(),
                });
            }
            p as usize
        }
    };
    let bytes = record.encode();
    // SAFETY: `at` is a live block of ROOT_RECORD_LEN bytes in the heap (fresh, or validated
    // by read_record), owned by the root record and not referenced elsewhere.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), at as *mut u8, ROOT_RECORD_LEN) };
    arena.user_words()[WORD_ROOT_RECORD].store(at as u64, Ordering::Release);
    Ok(at)
}

/// Reads and validates the root record that `user_words[2]` points to.
pub(crate) fn read_record(arena: &Arena, dir: &Path) -> Result<(usize, RootRecord)> {
    let at = arena.user_words()[WORD_ROOT_RECORD].load(Ordering::Acquire) as usize;
    let end = arena.base + arena.extent();
    if at == 0 {
        return Err(Error::corrupt(dir, 0, "the heap has a root but no root record"));
    }
    if at % 8 != 0 || !arena.contains(at as *const u8) || at.checked_add(ROOT_RECORD_LEN).is_none_or(|e| e > end) {
        return Err(Error::corrupt(
            dir,
            0,
            format!("root record pointer {at:#x} does not point into the heap"),
        ));
    }
    // SAFETY: [at, at + ROOT_RECORD_LEN) lies inside the mapped extent (checked above); no
    // handle exists yet, so nothing writes it meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, ROOT_RECORD_LEN) };
    let record = RootRecord::decode(bytes)
        .map_err(|(off, what)| Error::corrupt(dir, 0, format!("root record at {at:#x}, byte {off}: {what}")))?;
    Ok((at, record))
}

/// Checks that the root pointer lies inside the heap, aligned as the record says, and agrees
/// with the record.
pub(crate) fn check_root_pointer(arena: &Arena, dir: &Path, word: usize, record: &RootRecord) -> Result<()> {
    let end = (arena.base + arena.extent()) as u64;
    let in_heap = record.size == 0
        || (arena.contains(word as *const u8) && (word as u64).checked_add(record.size).is_some_and(|e| e <= end));
    if record.root != word as u64 {
        return Err(Error::corrupt(
            dir,
            0,
            format!(
                "root pointer {word:#x} disagrees with the root record ({:#x})",
                record.root
            ),
        ));
    }
    if word as u64 % record.align != 0 || !in_heap {
        return Err(Error::corrupt(
            dir,
            0,
            format!("root pointer {word:#x} does not point into the heap"),
        ));
    }
    Ok(())
}

impl OpenOptions {
    /// Reads the root identity of the `Heap<T>` heap in `dir` without knowing `T` (for tools
    /// that print it): recovers the heap, reads its root record (or, for a format-1 heap,
    /// `meta`), and releases it without committing or upgrading anything. Takes the heap's
    /// lock ([`Error::Locked`] while a program has it open). A missing heap is
    /// [`Error::InvalidArgument`]; a `GlobalHeap` heap is [`Error::Incompatible`].
    pub fn read_root_info(&self, dir: impl AsRef<Path>) -> Result<RootInfo> {
        let dir = dir.as_ref();
        if self.vfs.open(&dir.join("meta"), false).is_err() {
            return Err(Error::invalid(format!(
                "{} holds no heap (no meta file)",
                dir.display()
            )));
        }
        let engine = Engine::open(dir, self, &Fingerprint::root_record_kind())?;
        let base = engine.base();
        let r = read_identity(&engine, dir);
        drop(engine);
        // SAFETY: no handle was made and nothing was allocated from the heap, so no value
        // refers into its memory.
        unsafe { crate::engine::release_detached_at(base) };
        r
    }

    /// Opens the heap in `dir`, creating it (and running `init`) if it does not exist.
    pub fn open<T: Persist + Send + Sync + 'static>(
        &self,
        dir: impl AsRef<Path>,
        init: impl FnOnce(HeapAlloc) -> T,
    ) -> Result<Heap<T>> {
        Heap::open_with(self, dir.as_ref(), init)
    }
}

impl<T: Persist> Heap<T> {
    fn engine(&self) -> &Engine {
        self.engine.as_deref().expect("engine present until close")
    }

    pub(crate) fn engine_ref(&self) -> &Engine {
        self.engine()
    }

    pub(crate) fn lock_ref(&self) -> &RwLock<()> {
        &self.lock
    }

    /// The heap's allocator, for building values that go into the root.
    pub fn alloc(&self) -> HeapAlloc {
        HeapAlloc::new(self.engine().arena())
    }

    /// Shared access to the root. Blocks while a [`WriteGuard`] exists.
    pub fn read(&self) -> ReadGuard<'_, T> {
        let g = self.lock.read().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the root is a valid T for the heap's lifetime; the read lock excludes writers.
        let root = unsafe { self.root.as_ref() };
        ReadGuard { _g: g, root }
    }

    /// Exclusive access to the root. Blocks while other guards exist.
    pub fn write(&self) -> WriteGuard<'_, T> {
        let g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        WriteGuard { _g: g, heap: self }
    }

    /// Commits every change made since the last commit and returns the commit's sequence
    /// number. With [`Durability::Immediate`](crate::Durability::Immediate) (the default) the
    /// commit is durable when this returns. Waits for an open [`WriteGuard`] to be dropped; to
    /// commit while holding one, use [`WriteGuard::commit`].
    pub fn commit(&self) -> Result<u64> {
        let seq = {
            let _g = self.lock.read().unwrap_or_else(|p| p.into_inner());
            self.engine().commit_user()?
        };
        self.return_clean_pages(false);
        Ok(seq)
    }

    /// Returns pages equal to the newest snapshot to the kernel (one bounded step, or all with
    /// `until_done`), if there is work and no guard of the root is held anywhere: `try_write`
    /// never waits, a busy heap just tries again at its next commit.
    fn return_clean_pages(&self, until_done: bool) {
        if !self.engine().remap_due() {
            return;
        }
        if let Ok(_exclusive) = self.lock.try_write() {
            // SAFETY: the root lock is held exclusively, so no guard exists and no thread
            // writes the root; by `OpenOptions::remap_clean_pages`' contract no thread writes
            // other heap memory without a guard either.
            unsafe { self.engine().remap_clean(until_done) };
        }
    }

    /// Commits, then writes a snapshot and returns once it is durable. Snapshots also start on
    /// their own (see [`OpenOptions::snapshot_after_journal_bytes`]).
    pub fn snapshot(&self) -> Result<()> {
        {
            let _g = self.lock.read().unwrap_or_else(|p| p.into_inner());
            self.engine().snapshot()?;
        }
        self.return_clean_pages(true);
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        self.engine().stats()
    }

    /// The root identity the heap has committed: type name, schema id, layout, migrations.
    pub fn root_info(&self) -> Result<RootInfo> {
        let e = self.engine();
        let (_, r) = read_record(e.arena(), e.dir())?;
        Ok(RootInfo::from_record(&r, crate::disk::format::meta::FORMAT_VERSION))
    }

    /// Checks the heap's invariants: allocator structures, the checksums of the snapshot
    /// headers and journal records on disk, and that every page differing from the committed
    /// image is known to the dirty-page tracking. Returns what was checked (a
    /// [`VerifyReport`], which displays as a readable summary), or [`Error::Corrupt`]
    /// describing the first violation. Costs O(heap): it compares every mapped page with the
    /// files.
    pub fn verify(&self) -> Result<VerifyReport> {
        let _g = self.lock.read().unwrap_or_else(|p| p.into_inner());
        self.engine().verify()
    }

    /// Commits any changes, takes a snapshot if the journal is not empty (so the next open
    /// replays nothing), and releases the heap. Dropping a `Heap` without `close` releases it
    /// without committing (like a crash, which is always safe).
    ///
    /// The heap's memory stays mapped until the process exits: values allocated from it that
    /// outlive the handle (collections outside the root, values moved out of it) stay valid
    /// (allocating through them fails, freeing does nothing, writes are not persisted). A later
    /// open of the same heap in this process takes that memory over; see
    /// [`Error::Detached`] for when it cannot, and [`Heap::close_and_release`] to unmap it.
    pub fn close(mut self) -> Result<()> {
        let engine = self.engine.take().expect("engine present until close");
        let r = engine.close(true);
        drop(engine);
        r
    }

    /// [`close`](Heap::close), then unmaps the heap's memory, which a closed heap otherwise
    /// keeps until the process exits; the next open in this process maps the heap from its
    /// files.
    ///
    /// # Safety
    ///
    /// No value allocated from this heap (through [`Heap::alloc`] or a guard's `alloc`, or
    /// moved out of the root) is used or dropped after this call.
    pub unsafe fn close_and_release(self) -> Result<()> {
        let base = self.engine().base();
        let r = self.close();
        // SAFETY: forwarded contract.
        unsafe { crate::engine::release_detached_at(base) };
        r
    }

    /// Drops the handle without committing (as a crash would) and unmaps the heap's memory, so
    /// that the next open in this process recovers the last durable state from the files, as a
    /// restart would. A plain drop keeps the memory mapped for values that outlive the handle,
    /// and a reopen in this process then refuses with [`Error::Detached`] if there were
    /// uncommitted changes.
    ///
    /// # Safety
    ///
    /// As for [`close_and_release`](Heap::close_and_release).
    pub unsafe fn drop_and_release(self) {
        let base = self.engine().base();
        drop(self);
        // SAFETY: forwarded contract.
        unsafe { crate::engine::release_detached_at(base) };
    }
}

impl<T: Persist> Drop for Heap<T> {
    fn drop(&mut self) {
        // The engine's own Drop releases the heap without committing.
        self.engine.take();
    }
}

/// Shared access to the root of a [`Heap`].
pub struct ReadGuard<'a, T> {
    _g: RwLockReadGuard<'a, ()>,
    root: &'a T,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.root
    }
}

/// Exclusive access to the root of a [`Heap`].
pub struct WriteGuard<'a, T: Persist> {
    _g: RwLockWriteGuard<'a, ()>,
    heap: &'a Heap<T>,
}

impl<T: Persist> WriteGuard<'_, T> {
    /// Commits every change made so far, keeping the guard. Returns the sequence number.
    pub fn commit(&mut self) -> Result<u64> {
        let seq = self.heap.engine().commit_user()?;
        if self.heap.engine().remap_due() {
            // SAFETY: this guard holds the root lock exclusively; unguarded writers are excluded
            // by `OpenOptions::remap_clean_pages`' contract.
            unsafe { self.heap.engine().remap_clean(false) };
        }
        Ok(seq)
    }

    /// The heap's allocator.
    pub fn alloc(&self) -> HeapAlloc {
        self.heap.alloc()
    }
}

impl<T: Persist> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the write lock is held, so no other reference to the root exists.
        unsafe { self.heap.root.as_ref() }
    }
}

impl<T: Persist> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the write lock is held and the guard is borrowed mutably, so this is the only
        // reference to the root.
        unsafe { &mut *self.heap.root.as_ptr() }
    }
}

/// The root identity of an open engine: its root record, or `meta` for a format-1 heap.
fn read_identity(engine: &Engine, dir: &Path) -> Result<RootInfo> {
    let m = engine.meta();
    if m.version == LEGACY_FORMAT_VERSION {
        return Ok(RootInfo {
            type_name: m.root_type_name.clone(),
            schema: m.schema.clone(),
            size: m.root_size,
            align: m.root_align,
            type_hash: m.root_type_hash,
            migrations: 0,
            format_version: m.version,
        });
    }
    if engine.root_word().load(Ordering::Acquire) == 0 {
        return Err(Error::invalid(format!("{} holds no committed root yet", dir.display())));
    }
    let (_, r) = read_record(engine.arena(), dir)?;
    Ok(RootInfo::from_record(&r, m.version))
}
