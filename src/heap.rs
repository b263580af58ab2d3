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

use crate::engine::{Engine, Fingerprint, VerifyReport};
use crate::error::{Error, Result};
use crate::mem::alloc::HeapAlloc;
use crate::mem::sysmem::SysBox;
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
/// are recorded at creation and checked at every open; a layout change that keeps all three is
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
        let fp = Fingerprint::of::<T>(&opts.schema);
        let engine = Engine::open(dir, opts, &fp)?;
        let arena = engine.arena();
        let word = engine.root_word().load(Ordering::Acquire);
        let layout = Layout::new::<T>();
        let root = if word == 0 {
            let value = init(HeapAlloc::new(arena));
            let p = if layout.size() == 0 {
                NonNull::<T>::dangling()
            } else {
                NonNull::new(arena.alloc(layout).cast::<T>()).ok_or_else(|| Error::OutOfSpace {
                    what: format!("the root ({} bytes)", layout.size()),
                })?
            };
            // SAFETY: p is a fresh allocation of T's layout (or dangling for a ZST), valid for
            // writes and not aliased.
            unsafe { p.as_ptr().write(value) };
            engine.root_word().store(p.as_ptr() as u64, Ordering::Release);
            engine.commit()?;
            p
        } else {
            let addr = word as usize;
            let in_heap = layout.size() == 0 || arena.contains(addr as *const u8);
            if addr % layout.align() != 0 || !in_heap {
                return Err(Error::corrupt(
                    dir,
                    0,
                    format!("root pointer {addr:#x} does not point into the heap"),
                ));
            }
            NonNull::new(addr as *mut T).ok_or_else(|| Error::corrupt(dir, 0, "null root pointer"))?
        };
        Ok(Heap {
            engine: Some(engine),
            lock: RwLock::new(()),
            root,
            _marker: PhantomData,
        })
    }
}

impl OpenOptions {
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
            self.engine().commit()?
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
        let seq = self.heap.engine().commit()?;
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
