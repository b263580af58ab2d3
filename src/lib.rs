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

mod alloc;
pub mod collections;
mod engine;
mod error;
mod format;
mod global;
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
pub use engine::{release_detached, SnapshotFileState, VerifyReport};
pub use error::{Error, Result};
pub use global::{GlobalHeap, LOCK_WAIT, MAX_ROOTS};
pub use heap::{Heap, ReadGuard, WriteGuard};
#[doc(hidden)]
pub use options::PlantedBug;
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

/// Appends `src` to `v` with one `memcpy`. (`allocator_api2`'s `extend_from_slice` goes
/// through a generic clone loop that copies byte by byte: about 2 us per 4 KiB page, a third
/// of a commit's CPU before this helper.)
pub(crate) fn extend_bytes<A: allocator_api2::alloc::Allocator>(v: &mut allocator_api2::vec::Vec<u8, A>, src: &[u8]) {
    v.reserve(src.len());
    let len = v.len();
    // SAFETY: `reserve` guarantees capacity for `src.len()` more bytes after `len`; `src` cannot
    // overlap `v`'s spare capacity (we hold `&mut v`, and `src` is a shared borrow of other
    // memory); every byte up to `len + src.len()` is initialised by the copy before `set_len`.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), v.as_mut_ptr().add(len), src.len());
        v.set_len(len + src.len());
    }
}
