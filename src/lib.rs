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
//! - `engine`: one open heap: region, allocator, tracker, journal, snapshots, recovery.
//! - `alloc`: the size-class allocator whose state lives inside the region.
//! - `track`: which pages were written since the last commit (userfaultfd + `PAGEMAP_SCAN`).
//! - `journal`, `snapshot`, `format`: files and their byte layouts.
//! - [`io`]: the file-system seam; `sys`: the thin syscall layer.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks, clippy::missing_safety_doc)]

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
compile_error!("snapheap supports 64-bit Linux only");

mod alloc;
pub mod collections;
mod engine;
mod error;
mod format;
mod heap;
pub mod io;
mod journal;
mod options;
mod region;
mod snapshot;
mod stats;
mod sys;
mod track;

pub use alloc::HeapAlloc;
pub use error::{Error, Result};
pub use heap::{Heap, ReadGuard, WriteGuard};
pub use options::{Durability, OpenOptions, DEFAULT_MAX_SIZE, DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES};
pub use stats::Stats;

#[doc(hidden)]
pub use alloc::testing as alloc_testing;

/// Entry points for the fuzz targets (`fuzz/`); not part of the public API.
#[doc(hidden)]
pub mod fuzzing;

/// A vector for the crate's own bookkeeping. It allocates from [`std::alloc::System`], never
/// from the global allocator, because snapheap may *be* the global allocator and its commit
/// path runs while that allocator is paused.
pub(crate) type SysVec<T> = allocator_api2::vec::Vec<T, std::alloc::System>;

/// A box for the crate's own bookkeeping, allocated from [`std::alloc::System`] (see [`SysVec`]).
pub(crate) type SysBox<T> = allocator_api2::boxed::Box<T, std::alloc::System>;
