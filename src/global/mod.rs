//! [`GlobalHeap`]: snapheap as the process's `#[global_allocator]`, with roots of plain `std`
//! types, commits and snapshots, and reclaim of unreachable blocks at open.
//!
//! The user guide (configuration, initialisation, roots and commits, reclaim, what must not
//! be stored in roots) is the documentation of [`GlobalHeap`]. Files: `mod.rs` (the type, its
//! initialisation state machine and its API), `alloc.rs` (the `GlobalAlloc` impl, zeroed
//! blocks, the cold path), `roots.rs` (the in-heap root registry), `reclaim.rs` (mark and
//! sweep at open).
//!
//! # Invariants
//!
//! - `state` goes `UNINIT → INITIALIZING → READY` once; `arena` and `engine` are written
//!   before `READY` is published and never change after.
//! - `state == READY ∧ arena ≠ null` ⇒ every allocation is served by the arena; pointers in
//!   `[base, base + max_size)` are arena blocks, all others `System` blocks.
//! - The registry word (`user_words[0]`) is 0 or the address of a `Registry` block (`roots.rs`) with
//!   `len <= MAX_ROOTS`; `user_words[1]` is 0 or the executable id of the last writer.
//!
//! # Safety
//!
//! The arena and engine are leaked at initialisation and live until the process ends, so the
//! `&'static` references derived from the stored pointers are valid. Root pointers come from
//! the registry, which only this module writes (under `roots`), and were validated at open.

mod alloc;
mod reclaim;
mod roots;

use roots::registry_at;
pub use roots::MAX_ROOTS;
pub(crate) use roots::{Registry, RootEntry, REGISTRY_MAGIC, REGISTRY_TYPE_NAME, WORD_REGISTRY};

use crate::disk::format::meta::fnv1a;
use crate::engine::{lock, Engine, Fingerprint};
use crate::error::{Error, Result};
use crate::mem::alloc::{Arena, SEGMENT, SLICE};
use crate::mem::region::Region;
use crate::mem::sysmem::SysBox;
use crate::options::{
    Durability, OpenOptions, Tracking, DEFAULT_MAX_SIZE, DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES,
    DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES,
};
use crate::stats::Stats;
use crate::sys::process;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicU8, Ordering::*};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const UNINIT: u8 = 0;
const INITIALIZING: u8 = 1;
const READY: u8 = 2;

/// How long the first allocation waits for a heap locked by another process (typically the
/// snapshot writer of a program that just exited, which the kernel kills with its parent)
/// before giving up.
pub const LOCK_WAIT: Duration = Duration::from_secs(10);

/// `user_words` index of the executable id.
const WORD_BUILD: usize = 1;

thread_local! {
    /// Set while this thread runs an engine call (commit, snapshot, stats, verify): its
    /// allocations then go to `System`. The engine pauses the arena inside those calls, and an
    /// allocation (or a free of a heap block) by the pausing thread itself would wait for its
    /// own pause to end; error paths that format messages while paused would deadlock.
    static ENGINE_CALL: Cell<bool> = const { Cell::new(false) };
}

/// Whether the calling thread is inside an engine call (see [`ENGINE_CALL`]).
#[inline(always)]
fn in_engine_call() -> bool {
    ENGINE_CALL.try_with(|c| c.get()).unwrap_or(false)
}

/// Marks the calling thread as inside an engine call until dropped.
struct EngineCall(bool);

impl EngineCall {
    fn enter() -> EngineCall {
        EngineCall(ENGINE_CALL.try_with(|c| c.replace(true)).unwrap_or(false))
    }
}

impl Drop for EngineCall {
    fn drop(&mut self) {
        let _ = ENGINE_CALL.try_with(|c| c.set(self.0));
    }
}

/// Tunables fixed in the `static`.
#[derive(Clone, Copy)]
struct Config {
    max_size: u64,
    durability: Durability,
    snapshot_after_journal_bytes: u64,
    snapshot_after_journal_pages: u64,
    allow_other_builds: bool,
}

/// A persistent heap usable as `#[global_allocator]`: the whole process's heap, with roots of
/// plain `std` types, commits and snapshots, and reclaim of unreachable blocks at open.
///
/// ```no_run
/// #[global_allocator]
/// static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();
///
/// fn main() {
///     let runs = HEAP.with_root(Vec::<String>::new, |log| {
///         log.push(format!("run {}", log.len() + 1));
///         log.len()
///     });
///     HEAP.commit().expect("commit");
///     println!("this program ran {runs} times");
/// }
/// ```
///
/// # Configuration
///
/// - `SNAPHEAP_DIR=/path`: the heap is persistent and lives in that directory (created if
///   missing). Unset or empty: the heap is *volatile*: the same allocator over an anonymous
///   region (so a benchmark sees the allocator's cost without persistence), roots work, and
///   `commit`/`snapshot` do nothing.
/// - `SNAPHEAP_ALLOW_OTHER_BUILD=1`: open a heap written by another build of the program (see
///   "What must not be stored"). Risky: only when the heap holds no pointers into the
///   executable.
/// - `SNAPHEAP_TRACKING=<rung>`: the dirty-tracking rung (`auto`, the default, `uffd-wp`,
///   `hashed`, `all-dirty`; see [`Tracking`](crate::options::Tracking)). `soft-dirty` is
///   refused: any thread may write the heap at any time, and soft-dirty has no atomic
///   read-and-clear.
/// - `SNAPHEAP_TEST_BUILD_ID=<hex>`: tests only: pretend the executable has this id.
/// - Const builder methods ([`GlobalHeap::max_size`], [`GlobalHeap::durability`],
///   [`GlobalHeap::snapshot_after_journal_bytes`], [`GlobalHeap::snapshot_after_journal_pages`]) set the other tunables in the `static`.
///
/// If persistence was asked for and the heap cannot be opened (locked by another process for
/// more than [`LOCK_WAIT`], damaged, another build, address range taken), the first allocation
/// prints the reason on stderr and aborts the process: running on a volatile heap instead
/// would silently lose the data the user asked to keep.
///
/// # Initialisation
///
/// The first call into the allocator (often before `main`) initialises the heap. While that
/// runs (`state == INITIALIZING`), every allocation of every thread, including the engine's
/// own `PathBuf`s and `Box`es made while opening, goes to [`System`]; afterwards allocations
/// go to the heap's arena. `dealloc` and `realloc` route by address: a pointer inside the
/// heap's reserved range belongs to the arena, any other to `System` (the reserved range is
/// never handed out by `System`, so the test is exact). A `realloc` of a `System` block after
/// initialisation moves it into the heap. While a thread runs an engine call (`commit`,
/// `snapshot`, `stats`, `verify`) its own allocations go to `System` too: the engine pauses the
/// arena inside those calls, and the pausing thread must not wait for its own pause.
///
/// Every heap block is handed out entirely zeroed (slab blocks with a `memset` of their block
/// size, spans and huge blocks only when their memory is not fresh), so that no stale word of
/// an earlier user survives in a live block's slack to mislead the reclaim (see below). This is
/// the main cost over the plain arena; `benches/RESULTS-global.md` measures it.
///
/// # Roots and commits
///
/// [`GlobalHeap::with_root`] keeps one root per type in a registry block inside the heap
/// (keyed by the type's name, checked against its size and alignment). A process-local mutex
/// serialises `with_root` calls and commits, so a commit never captures a root halfway through
/// an update; do not call `with_root`, `commit` or `snapshot` from inside a `with_root`
/// closure (it would deadlock). Other threads may keep allocating during a commit: the engine
/// pauses the allocator while it captures the written pages. Nothing is committed at exit:
/// call [`GlobalHeap::commit`] for the state to keep.
///
/// # Reclaim
///
/// At open, every allocated block not reachable from the root registry is freed: a
/// conservative mark phase treats every 8-byte word of a reachable block that points into an
/// allocated block (anywhere inside it) as a reference. What earlier runs left behind (std's
/// buffers, thread-locals, leaked temporaries, values dropped after the last commit) does not
/// accumulate. Conservative means a stale word can keep garbage alive, never the reverse:
/// blocks are zeroed when handed out, but a live structure may still hold bytes its owner no
/// longer uses (a `Vec` after `pop`, removed slots of a `BTreeMap` node or hash table), and an
/// integer that happens to look like a heap address keeps its target. Pointers stored in
/// other forms than a plain address inside the target (tagged, compressed, XOR-ed, or only one
/// past the end) are not seen: such types must not be the only owners of heap blocks in roots.
///
/// # What must not be stored in roots
///
/// `with_root` requires `T:` [`GlobalPersist`](crate::GlobalPersist), which refuses at compile
/// time the types listed here that the compiler can see (references, `fn` pointers, `dyn`
/// objects, locks, OS handles); a persistent heap that is not the `#[global_allocator]` panics
/// at `with_root`.
///
/// Everything reachable from a root must stay meaningful in the next run:
/// - no pointers into the executable: `&'static str` literals, `Box<dyn Trait>` and
///   `&dyn Trait` (their vtables), `fn` pointers and closures stored as trait objects. They
///   stay valid only for the *same* build at the same load address; snapheap records an id of
///   the executable (its GNU build-id, or its size and modification time) and refuses to open
///   a heap written by another build ([`crate::Error::Incompatible`]). With
///   position-independent executables and ASLR even the same build may load elsewhere, so
///   avoid them altogether;
/// - no pointers to memory outside the heap (stack, `mmap`ed buffers, memory allocated before
///   the heap was initialised);
/// - no OS handles (`File`, sockets, thread ids, `Instant`s);
/// - no locks that might be held at a commit (a `Mutex` captured locked stays locked), and no
///   `Rc`/`Arc` shared with non-root memory you expect to be freed;
/// - values whose alignment exceeds 64 KiB (the arena cannot place them).
///
/// A child made with a bare `fork()` that keeps running Rust code shares the heap's lock and
/// journal with its parent: it must not commit (exec'ing children, as `std::process::Command`
/// makes them, are fine).
///
pub struct GlobalHeap {
    state: AtomicU8,
    /// The arena once `READY` (null before, and in the `System` fallback).
    arena: AtomicPtr<Arena>,
    /// The engine once `READY` with `SNAPHEAP_DIR` set (null otherwise).
    engine: AtomicPtr<Engine>,
    /// Serialises root access and commits.
    roots: Mutex<()>,
    /// Bytes freed by reclaim at open.
    reclaimed: AtomicU64,
    /// The registry word when no arena exists (the `System` fallback).
    fallback_word: AtomicU64,
    config: Config,
}

impl Default for GlobalHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl GlobalHeap {
    /// A heap with default tunables (256 GiB of address space, immediate durability, a
    /// snapshot after 64 MiB of journal). Nothing happens until the first allocation.
    pub const fn new() -> GlobalHeap {
        GlobalHeap {
            state: AtomicU8::new(UNINIT),
            arena: AtomicPtr::new(std::ptr::null_mut()),
            engine: AtomicPtr::new(std::ptr::null_mut()),
            roots: Mutex::new(()),
            reclaimed: AtomicU64::new(0),
            fallback_word: AtomicU64::new(0),
            config: Config {
                max_size: DEFAULT_MAX_SIZE,
                durability: Durability::Immediate,
                snapshot_after_journal_bytes: DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES,
                snapshot_after_journal_pages: DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES,
                allow_other_builds: false,
            },
        }
    }

    /// Maximum heap size in bytes (address space; fixed when the heap is created).
    pub const fn max_size(mut self, bytes: u64) -> GlobalHeap {
        self.config.max_size = bytes;
        self
    }

    /// When a commit is durable (see [`Durability`]).
    pub const fn durability(mut self, d: Durability) -> GlobalHeap {
        self.config.durability = d;
        self
    }

    /// Journal volume after which a commit starts a snapshot.
    pub const fn snapshot_after_journal_bytes(mut self, bytes: u64) -> GlobalHeap {
        self.config.snapshot_after_journal_bytes = bytes;
        self
    }

    /// Page records (whole pages plus `DELTA` entries) in the journal after which a commit
    /// starts a snapshot (0: off), as [`OpenOptions::snapshot_after_journal_pages`].
    pub const fn snapshot_after_journal_pages(mut self, pages: u64) -> GlobalHeap {
        self.config.snapshot_after_journal_pages = pages;
        self
    }

    /// Opens heaps written by other builds of the program, as `SNAPHEAP_ALLOW_OTHER_BUILD=1`
    /// does, but stated in the code. Every new release opening the previous release's heap is
    /// such a case, with or without [`GlobalHeap::migrate_root`].
    ///
    /// # Safety
    ///
    /// Nothing reachable from the roots may point into the executable: no `&'static str`
    /// literals, `Box<dyn Trait>`/`&dyn Trait` (vtables), `fn` pointers or closures stored as
    /// trait objects. Those addresses are meaningless in another build (and, with ASLR, in
    /// another run); the build-id check exists to catch them, and this turns it off.
    pub const unsafe fn allow_other_builds(mut self) -> GlobalHeap {
        self.config.allow_other_builds = true;
        self
    }

    // ---- state ---------------------------------------------------------------------------

    /// Initialises the heap if nobody has; returns the arena (null: use `System`). Waits
    /// while another thread initialises. Never called from inside the allocator.
    fn ready(&self) -> *const Arena {
        let mut round = 0u32;
        loop {
            match self.state.load(Acquire) {
                READY => return self.arena.load(Acquire),
                UNINIT => {
                    if let Some(a) = self.try_init() {
                        return a;
                    }
                }
                _ => crate::mem::alloc::backoff(&mut round),
            }
        }
    }

    /// Runs the initialisation if the state is `UNINIT` and this thread wins the race.
    fn try_init(&self) -> Option<*const Arena> {
        if self
            .state
            .compare_exchange(UNINIT, INITIALIZING, Acquire, Relaxed)
            .is_err()
        {
            return None;
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.init()));
        let (arena, engine) = match r {
            Ok(v) => v,
            Err(_) => fatal(format_args!("initialisation panicked")),
        };
        self.arena.store(arena as *mut Arena, Release);
        self.engine.store(engine as *mut Engine, Release);
        self.state.store(READY, Release);
        Some(arena)
    }

    /// Opens the persistent heap (`SNAPHEAP_DIR`) or creates the volatile one.
    fn init(&self) -> (*const Arena, *const Engine) {
        match process::getenv(c"SNAPHEAP_DIR") {
            Some(dir) if !dir.is_empty() => {
                let e = self.init_persistent(Path::new(OsStr::from_bytes(dir)));
                (e.arena() as *const Arena, e as *const Engine)
            }
            _ => (self.init_volatile(), std::ptr::null()),
        }
    }

    fn init_persistent(&self, dir: &Path) -> &'static Engine {
        if matches!(self.config.durability, Durability::Replicated { .. }) {
            // Replication needs a `Heap<T>` (docs/design.md, "Replication": limits).
            open_failed(
                dir,
                &Error::invalid("GlobalHeap does not support Durability::Replicated (use a Heap<T>)"),
            );
        }
        let mut opts = OpenOptions::new();
        opts.max_size(self.config.max_size)
            .durability(self.config.durability)
            .snapshot_after_journal_bytes(self.config.snapshot_after_journal_bytes)
            .snapshot_after_journal_pages(self.config.snapshot_after_journal_pages);
        // Any thread writes heap memory at any time: the tracker must not rely on commits
        // excluding writers.
        opts.concurrent_writers = true;
        if let Some(v) = process::getenv(c"SNAPHEAP_TRACKING") {
            let rungs = [
                Tracking::Auto,
                Tracking::UffdWp,
                Tracking::SoftDirty,
                Tracking::Hashed,
                Tracking::AllDirty,
            ];
            match rungs.into_iter().find(|t| t.name().as_bytes() == v) {
                Some(t) => {
                    opts.tracking(t);
                }
                None => open_failed(
                    dir,
                    &Error::invalid("SNAPHEAP_TRACKING names no rung (auto, uffd-wp, hashed, all-dirty)"),
                ),
            }
        }
        let fp = Fingerprint {
            size: std::mem::size_of::<Registry>() as u64,
            align: std::mem::align_of::<Registry>() as u64,
            type_name: REGISTRY_TYPE_NAME,
            schema: String::new(),
            legacy_root: false,
        };
        let started = Instant::now();
        let engine = loop {
            match Engine::open(dir, &opts, &fp) {
                Ok(e) => break e,
                Err(Error::Locked { .. }) if started.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => open_failed(dir, &e),
            }
        };
        let engine: &'static Engine = SysBox::leak(engine);
        if engine.meta().version == crate::disk::format::meta::LEGACY_FORMAT_VERSION {
            // A format-1 GlobalHeap heap: its root identity (the registry) is already in the
            // committed state, so the upgrade is the rewrite of `meta` alone.
            if let Err(e) = engine.upgrade_meta(&fp) {
                open_failed(dir, &e);
            }
        }
        let arena = engine.arena();
        if let Err(e) = check_build(arena, self.config.allow_other_builds) {
            open_failed(dir, &e);
        }
        let registry = match registry_at(arena, arena.user_words()[WORD_REGISTRY].load(Acquire)) {
            Ok(r) => r,
            Err(what) => open_failed(dir, &Error::corrupt(dir, 0, what)),
        };
        match reclaim::reclaim(arena, registry.map(|r| r as usize)) {
            Ok(n) => self.reclaimed.store(n, Relaxed),
            Err(what) => open_failed(dir, &Error::corrupt(dir, 0, format!("reclaim: {what}"))),
        }
        engine
    }

    /// The volatile heap: the same allocator over an anonymous region. Null (use `System`)
    /// if the address space cannot be reserved.
    fn init_volatile(&self) -> *const Arena {
        let max = (self.config.max_size as usize).div_ceil(SEGMENT).max(1) * SEGMENT;
        let Ok(mut region) = Region::reserve_anywhere(max) else {
            return std::ptr::null();
        };
        if region.grow(SEGMENT).is_err() {
            return std::ptr::null();
        }
        let base = region.base();
        let ctx: &'static Mutex<Region> = SysBox::leak(SysBox::new_in(Mutex::new(region), System));
        // SAFETY: the control area (mapped by reserve) and the first segment (just mapped) are
        // fresh, zeroed and ours; base and max are segment multiples; the grow hook maps
        // inside the reservation and ctx lives forever.
        unsafe { Arena::create(base, max, volatile_grow, ctx as *const Mutex<Region> as *const ()) }
    }

    /// The engine, if the heap is persistent (after `ready`).
    fn engine(&self) -> Option<&'static Engine> {
        // SAFETY: a non-null engine was leaked at initialisation (module Safety).
        unsafe { self.engine.load(Acquire).as_ref() }
    }

    // ---- public API ------------------------------------------------------------------------

    /// Whether the heap is persistent (`SNAPHEAP_DIR` was set). Initialises the heap.
    pub fn is_persistent(&self) -> bool {
        self.ready();
        self.engine().is_some()
    }

    /// Runs `f` on the root of type `T`, creating it with `init` on first use (in this heap's
    /// whole history, not this run). Roots are keyed by `std::any::type_name::<T>()`; a
    /// recorded root whose size or alignment differ from `T`'s panics. Holds the root mutex
    /// while `init` and `f` run: do not call `with_root`, `commit` or `snapshot` inside them.
    ///
    /// Panics when the registry is full ([`MAX_ROOTS`] types) or the heap is exhausted.
    pub fn with_root<T: crate::persist::GlobalPersist + Send + 'static, R>(
        &self,
        init: impl FnOnce() -> T,
        f: impl FnOnce(&mut T) -> R,
    ) -> R {
        let arena = self.ready();
        if self.engine().is_some() {
            crate::persist::assert_installed(arena);
        }
        let _g = lock(&self.roots);
        let word = self.registry_word(arena);
        let reg = self.registry(word);
        let name = std::any::type_name::<T>();
        let (hash, size, align) = (fnv1a(name.as_bytes()), size_of::<T>() as u64, align_of::<T>() as u64);
        assert!(
            align as usize <= SLICE,
            "snapheap: roots aligned to more than {SLICE} bytes are not supported (`{name}`)"
        );
        // SAFETY: the registry is a live block of the heap, accessed only under `roots`.
        let reg = unsafe { &mut *reg };
        let found = reg.entries[..reg.len as usize]
            .iter()
            .find(|e| e.type_hash == hash)
            .copied();
        let ptr = match found {
            Some(e) => {
                assert!(
                    e.size == size && e.align == align,
                    "snapheap: the root of type `{name}` in the heap has size {} and alignment {}, \
                     this program's has size {size} and alignment {align}",
                    e.size,
                    e.align
                );
                e.ptr as *mut T
            }
            None => {
                assert!(
                    (reg.len as usize) < MAX_ROOTS,
                    "snapheap: more than {MAX_ROOTS} root types"
                );
                let value = init();
                let layout = Layout::new::<T>();
                let p = if layout.size() == 0 {
                    std::ptr::NonNull::<T>::dangling().as_ptr()
                } else {
                    // SAFETY: layout has a nonzero size.
                    let p = unsafe { self.alloc(layout) } as *mut T;
                    if p.is_null() {
                        std::alloc::handle_alloc_error(layout);
                    }
                    p
                };
                // SAFETY: p is a fresh block for T (or dangling for a ZST).
                unsafe { p.write(value) };
                reg.entries[reg.len as usize] = RootEntry {
                    type_hash: hash,
                    size,
                    align,
                    ptr: p as u64,
                };
                reg.len += 1;
                p
            }
        };
        // SAFETY: ptr is the root of type T (checked fingerprint), live for the program, and
        // the roots mutex gives this call exclusive access.
        f(unsafe { &mut *ptr })
    }

    /// Commits every change made since the last commit and returns its sequence number
    /// (durable on return with [`Durability::Immediate`]). Waits for running `with_root`
    /// calls; other threads may go on allocating meanwhile. A volatile heap returns `Ok(0)`.
    pub fn commit(&self) -> Result<u64> {
        self.ready();
        match self.engine() {
            None => Ok(0),
            Some(e) => {
                let _g = lock(&self.roots);
                let _c = EngineCall::enter();
                e.commit()
            }
        }
    }

    /// Commits, then writes a snapshot and returns once it is durable. A volatile heap does
    /// nothing. The snapshot writer is a forked child that does not allocate.
    pub fn snapshot(&self) -> Result<()> {
        self.ready();
        match self.engine() {
            None => Ok(()),
            Some(e) => {
                let _g = lock(&self.roots);
                let _c = EngineCall::enter();
                e.snapshot()
            }
        }
    }

    /// Current counters, including [`Stats::reclaimed_bytes`] of the reclaim at open. For a
    /// volatile heap only `allocated_bytes` and `mapped_bytes` are set (`track_mode` "none").
    pub fn stats(&self) -> Stats {
        let a = self.ready();
        let _c = EngineCall::enter();
        let mut s = match self.engine() {
            Some(e) => e.stats(),
            None => {
                // SAFETY: a non-null arena was leaked at initialisation.
                let (allocated, mapped) = unsafe { a.as_ref() }.map_or((0, 0), |a| (a.allocated_bytes(), a.extent()));
                Stats {
                    allocated_bytes: allocated as u64,
                    mapped_bytes: mapped as u64,
                    track_mode: "none",
                    ..Stats::default()
                }
            }
        };
        s.reclaimed_bytes = self.reclaimed.load(Relaxed);
        s
    }

    /// Checks the allocator's invariants and the root registry; returns a human-readable
    /// report, or [`Error::Corrupt`] describing the first violation.
    pub fn verify(&self) -> Result<String> {
        let a = self.ready();
        let _g = lock(&self.roots);
        let _c = EngineCall::enter();
        let mut report = match (self.engine(), unsafe_arena(a)) {
            (Some(e), _) => e.verify()?.to_string(),
            (None, Some(a)) => {
                let r = a
                    .check_invariants()
                    .map_err(|e| Error::corrupt("", 0, format!("allocator invariant violated: {e}")))?;
                format!("{r:?}")
            }
            (None, None) => "system allocator".to_string(),
        };
        if let Some(a) = unsafe_arena(a) {
            let reg = registry_at(a, self.registry_word(a).load(Acquire)).map_err(|w| Error::corrupt("", 0, w))?;
            // SAFETY: validated by registry_at.
            let n = reg.map_or(0, |r| unsafe { (*r).len });
            let _ = write!(report, "; {n} roots");
        }
        Ok(report)
    }
}

/// The arena behind a stored pointer.
fn unsafe_arena(a: *const Arena) -> Option<&'static Arena> {
    // SAFETY: non-null arenas were leaked at initialisation (module Safety).
    unsafe { a.as_ref() }
}

/// Checks the executable id recorded in the heap against this executable's and records ours.
fn check_build(arena: &Arena, allowed_in_code: bool) -> Result<()> {
    let ours = match process::getenv(c"SNAPHEAP_TEST_BUILD_ID") {
        // Tests simulate another build by setting a (hex) id.
        Some(v) => u64::from_str_radix(std::str::from_utf8(v).unwrap_or("1"), 16).unwrap_or(1) | 1,
        None => process::executable_id().unwrap_or(0),
    };
    let word = &arena.user_words()[WORD_BUILD];
    let recorded = word.load(Acquire);
    let allow = allowed_in_code || process::getenv(c"SNAPHEAP_ALLOW_OTHER_BUILD").is_some_and(|v| v == b"1");
    if recorded != 0 && ours != 0 && recorded != ours && !allow {
        return Err(Error::incompatible(format!(
            "the heap was written by another build of this program (executable id {recorded:016x}, this one is \
             {ours:016x}); pointers into the executable stored in it (&'static str, Box<dyn Trait> vtables, fn \
             pointers) would be invalid. Set SNAPHEAP_ALLOW_OTHER_BUILD=1 to open it anyway if you are sure it \
             holds none (or build the GlobalHeap with `allow_other_builds`)"
        )));
    }
    if ours != 0 {
        word.store(ours, Release);
    }
    Ok(())
}

/// The volatile heap's grow hook: maps anonymous memory up to `new_extent`.
///
/// # Safety
///
/// `ctx` points to the leaked `Mutex<Region>` of the volatile heap.
unsafe fn volatile_grow(ctx: *const (), new_extent: usize) -> bool {
    // SAFETY: contract.
    let region = unsafe { &*(ctx as *const Mutex<Region>) };
    lock(region).grow(new_extent).is_ok()
}

/// A fixed buffer that formats without allocating.
struct StackText {
    buf: [u8; 1536],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints `snapheap: {msg}` on stderr and aborts.
fn fatal(msg: std::fmt::Arguments<'_>) -> ! {
    let mut t = StackText { buf: [0; 1536], len: 0 };
    let _ = writeln!(t, "snapheap: {msg}");
    process::write_stderr(&t.buf[..t.len]);
    process::abort()
}

fn open_failed(dir: &Path, e: &Error) -> ! {
    fatal(format_args!(
        "cannot open the persistent heap in {} (SNAPHEAP_DIR): {e}\nsnapheap: aborting: running on a volatile \
         heap instead would silently lose the state this program keeps",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A volatile heap used as an ordinary value (the lib tests do not set SNAPHEAP_DIR).
    static H: GlobalHeap = GlobalHeap::new().max_size(64 << 20);

    #[test]
    fn reused_blocks_are_handed_out_entirely_zeroed() {
        if std::env::var_os("SNAPHEAP_DIR").is_some() {
            return;
        }
        let a = {
            H.ready();
            unsafe_arena(H.arena.load(Acquire)).unwrap()
        };
        for size in [8usize, 20, 100, 3000, 70_000, 200_000] {
            let l = Layout::from_size_align(size, 8).unwrap();
            let n = (2_000_000 / size).clamp(4, 3000);
            // SAFETY: nonzero layout; blocks are written within their usable size and freed
            // once.
            unsafe {
                let first: Vec<usize> = (0..n).map(|_| H.alloc(l) as usize).collect();
                for &p in &first {
                    assert_ne!(p, 0);
                    std::ptr::write_bytes(p as *mut u8, 0xAB, a.usable_size(p));
                }
                for &p in &first {
                    H.dealloc(p as *mut u8, l);
                }
                let second: Vec<usize> = (0..n).map(|_| H.alloc(l) as usize).collect();
                let reused = second.iter().filter(|p| first.contains(p)).count();
                assert!(reused > 0, "size {size}: no block was reused");
                for &q in &second {
                    let bytes = std::slice::from_raw_parts(q as *const u8, a.usable_size(q));
                    assert!(bytes.iter().all(|&b| b == 0), "a block of {size} bytes came back dirty");
                    H.dealloc(q as *mut u8, l);
                }
            }
        }
    }

    #[test]
    fn realloc_moves_system_blocks_into_the_heap_and_keeps_heap_blocks_in_place_when_they_fit() {
        if std::env::var_os("SNAPHEAP_DIR").is_some() {
            return;
        }
        H.ready();
        let a = unsafe_arena(H.arena.load(Acquire)).unwrap();
        let l = Layout::from_size_align(100, 8).unwrap();
        // SAFETY: valid layouts; every block is freed once through the allocator that owns it
        // (H routes by address).
        unsafe {
            let s = System.alloc(l);
            std::ptr::write_bytes(s, 7, 100);
            let q = H.realloc(s, l, 300);
            assert!(a.contains(q), "a System block moves into the heap");
            assert!(std::slice::from_raw_parts(q, 100).iter().all(|&b| b == 7));
            let l3 = Layout::from_size_align(300, 8).unwrap();
            let r = H.realloc(q, l3, 290);
            assert_eq!(r, q, "a size that still fits the block stays in place");
            let l2 = Layout::from_size_align(290, 8).unwrap();
            let big = H.realloc(r, l2, 5000);
            assert!(a.contains(big) && big != r);
            assert!(std::slice::from_raw_parts(big, 100).iter().all(|&b| b == 7));
            H.dealloc(big, Layout::from_size_align(5000, 8).unwrap());
        }
    }

    #[test]
    fn reclaim_frees_exactly_the_blocks_unreachable_from_the_root() {
        let t = crate::mem::alloc::testing::TestRegion::new(64 << 20);
        let h = t.alloc();
        let a = h.arena();
        let l = |n: usize| Layout::from_size_align(n, 8).unwrap();
        // root -> b (by an interior pointer, like a hash table's control pointer) -> d (in a
        // huge block, by its start); c and e are garbage; e points to d but is unreachable.
        let root = a.alloc_zeroed(l(64)) as usize;
        let b = a.alloc_zeroed(l(4096)) as usize;
        let c = a.alloc_zeroed(l(100)) as usize;
        let d = a.alloc_zeroed(l(5 << 20)) as usize;
        let e = a.alloc_zeroed(l(300_000)) as usize;
        // SAFETY: all five are live, zeroed blocks of the sizes written below.
        unsafe {
            *((root + 8) as *mut usize) = b + 1000;
            *((b + 2048) as *mut usize) = d;
            *(e as *mut usize) = d;
            *((c + 8) as *mut usize) = root;
        }
        let mut before = Vec::new();
        a.for_each_block(|p, _| before.push(p)).unwrap();
        assert_eq!(before.len(), 5);
        let freed = reclaim::reclaim(a, Some(root)).unwrap();
        let mut after = Vec::new();
        a.for_each_block(|p, _| after.push(p)).unwrap();
        let mut want = vec![root, b, d];
        want.sort();
        assert_eq!(after, want);
        // c is a 112-byte slab block, e a 5-slice span.
        assert_eq!(freed, 112 + 5 * SLICE as u64, "one 112-byte block and one 5-slice span");
        a.check_invariants().unwrap();
    }

    #[test]
    fn roots_are_kept_per_type_and_created_once() {
        if std::env::var_os("SNAPHEAP_DIR").is_some() {
            return;
        }
        assert!(!H.is_persistent());
        H.with_root(|| 1u64, |v| *v += 1);
        H.with_root(|| 10u32, |v| *v += 1);
        H.with_root(|| unreachable!("created once"), |v: &mut u64| assert_eq!(*v, 2));
        assert_eq!(H.with_root(|| 0u32, |v| *v), 11);
        H.with_root(Vec::<String>::new, |v| v.push("x".repeat(1000)));
        assert!(H.verify().unwrap().contains("roots"));
        assert_eq!(H.commit().unwrap(), 0);
        assert!(H.stats().allocated_bytes > 1000);
    }
}
