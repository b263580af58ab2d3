//! snapheap: a persistent heap for Rust.
//!
//! A program keeps ordinary data structures (`HashMap`, `Vec`, `String`, trees of `Box`es)
//! in a file-backed region mapped at a fixed virtual address, mutates them in place and calls
//! [`Heap::commit`]. After a crash or a restart, [`Heap::open`] finds the data exactly as of
//! the last durable commit, at the same addresses.
//!
//! See `docs/design.md` for the on-disk format, the commit and snapshot protocols and the
//! recovery algorithm, and the README for guarantees and when not to use the crate.
//!
//! # Layers (top to bottom)
//!
//! - [`Heap`], [`OpenOptions`], [`collections`]: the typed API (`heap.rs`, `options.rs`).
//! - [`GlobalHeap`]: the whole process's heap as `#[global_allocator]`, roots of plain std
//!   types, reclaim of unreachable blocks at open (`global.rs`).
//! - `engine`: one open heap: region, allocator, tracker, journal, snapshots, recovery.
//! - `alloc`: the size-class allocator whose state lives inside the region.
//! - `track`: which pages were written since the last commit (userfaultfd + `PAGEMAP_SCAN`).
//! - `journal`, `snapshot`, `format`: files and their byte layouts.
//! - [`io`]: the file-system seam; `sys`: the thin syscall layer.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("snapheap supports 64-bit Linux only");

pub mod collections;
mod disk;
mod engine;
mod error;
mod global;
mod heap;
pub mod io;
mod mem;
mod options;
mod stats;
mod sys;

pub use engine::{SnapshotFileState, VerifyReport};
pub use error::{Error, Result};
pub use global::{GlobalHeap, LOCK_WAIT, MAX_ROOTS};
pub use heap::{Heap, ReadGuard, WriteGuard};
pub use mem::alloc::HeapAlloc;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use options::PlantedBug;
pub use options::{Durability, OpenOptions, DEFAULT_MAX_SIZE, DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES};
pub use stats::Stats;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use mem::alloc::testing as alloc_testing;

/// Entry points for the fuzz targets (`fuzz/`); not part of the public API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
