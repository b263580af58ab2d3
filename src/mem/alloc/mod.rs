//! The persistent size-class allocator.
//!
//! Owns the allocator state of one region: segments and slices (`segment.rs`), size classes
//! (`size_class.rs`), slabs with their free lists and pools (`slab.rs`), per-thread heaps
//! (`thread_heap.rs`), the arena and its entry points (`arena.rs`), pausing (`pause.rs`), the
//! handle stored in collections (`handle.rs`) and validation (`check.rs`).
//!
//! Glossary: a *segment* is 4 MiB of the region; a *slice* is 64 KiB of a segment; a *slab*
//! is a run of slices cut into blocks of one *size class*; a *span* is a run of slices
//! holding one large block; a *huge* block is a run of whole segments; a *thread heap* is
//! one thread's process-local cache of current slabs; a *pool* is a process-local list of
//! unowned slabs with free blocks.
//!
//! # Invariants
//!
//! All allocator state that must survive a restart lives inside the region (segment and
//! arena headers, slab descriptors, free-list links inside free blocks); everything else
//! (thread heaps, pools, locks, owners) is process-local and rebuilt at attach in
//! O(segments). Nothing reachable from `alloc`/`dealloc` allocates through the global
//! allocator or panics.
//!
//! # Safety
//!
//! See the `# Safety` section of each submodule; the central contract is that the engine
//! keeps `[base - CTRL_SIZE, base + extent)` mapped read-write while the arena is open.

mod arena;
mod check;
mod handle;
mod pause;
mod segment;
mod size_class;
mod slab;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod thread_heap;
mod walk;

#[allow(unused_imports)]
pub(crate) use arena::{Arena, GrowFn, CTRL_SIZE};
#[allow(unused_imports)]
pub use check::ArenaReport;
pub use handle::HeapAlloc;
pub(crate) use pause::backoff;
#[allow(unused_imports)]
pub use pause::PauseGuard;
#[allow(unused_imports)]
pub(crate) use segment::{ArenaHeader, ARENA_HEADER_OFFSET, MAX_REGION, SEGMENT, SLICE, SLICES_PER_SEGMENT};
pub(crate) use size_class::MEDIUM_MAX;
