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
//! Only types valid after a restart may be stored in a root, and the compiler checks it: a
//! [`Heap<T>`] requires `T:` [`Persist`], a [`GlobalHeap`] root [`GlobalPersist`]; derive
//! them with `#[derive(Persist)]` / `#[derive(GlobalPersist)]` (feature `derive`, on by
//! default).
//!
//! # Code map
//!
//! This file holds the API only (`mod` and `pub use` lines). Below it, one folder per layer,
//! top (what users touch) to bottom (syscalls):
//!
//! | Layer | Files | Owns | Never sees |
//! |---|---|---|---|
//! | API | `heap.rs`, `migrate.rs`, `persist.rs`, `replica.rs`, `collections/`, `global/` (`mod.rs`, `alloc.rs`, `roots.rs`, `reclaim.rs`), `inspect/` (`mod.rs`, `report.rs`, `files.rs`, `image.rs`, `check.rs`, `compact.rs`, `readonly.rs`) | [`Heap`], guards, [`OpenOptions::open`], [`OpenOptions::migrate`], [`Persist`], [`GlobalPersist`], [`collections`], [`GlobalHeap`], offline [`inspect`]ion, replication ([`ReplicationSource`], [`Replica`]) | |
//! | leaves | `options.rs`, `error.rs`, `stats.rs` | [`OpenOptions`], [`Durability`], [`Error`], [`Stats`] | anything but `io` |
//! | `engine/` | `mod.rs`, `recover.rs`, `replay.rs`, `commit.rs`, `capture.rs`, `page_diff.rs`, `durable.rs`, `snapshot.rs`, `repl.rs`, `replica.rs`, `verify.rs` | one open heap: recovery, commit (pages whole or as deltas), group commit, snapshot scheduling, replication (primary and standby side), verify | the typed API |
//! | `disk/` | `journal/` (`mod.rs`, `chain.rs`, `scan.rs`, `writer.rs`), `snapshot.rs`, `format/` | files and bytes: journal scan and append, the snapshot file protocol, pure encode/decode | the engine |
//! | `mem/` | `region.rs`, `alloc/`, `track/`, `dirty_set.rs`, `base_cache.rs`, `sysmem.rs` | the mapped region, the size-class allocator, the dirty-page tracker ladder, the dirty bitmap, the commit path's base images, bookkeeping memory | files |
//! | [`io`] | `mod.rs`, `os.rs` | the [`io::Vfs`] seam and the real file system | the heap |
//! | `sys` | `mod.rs`, `mm.rs`, `file.rs`, `process.rs`, `sync.rs`, `uffd.rs`, `pagemap.rs` | the thin syscall layer | everything above |
//!
//! Import rules (checked by `scripts/layers.sh` in CI):
//! - a file imports from its own folder or from layers below it; the leaves from anywhere.
//!   The one call upward is the allocator's grow callback, a function pointer
//!   (`engine::grow_hook`);
//! - inside the crate, import by module path (`crate::mem::sysmem::SysVec`), never through
//!   this file's re-exports (`crate::Error`).
//!
//! # Test support
//!
//! Compiled only with the `testing` cargo feature (the crate's own tests turn it on through a
//! dev-dependency on itself, so plain `cargo test` runs everything), all `#[doc(hidden)]`:
//! the simulated disk `io::SimVfs` with its crash modes and faults (`io/sim.rs`), the
//! allocator test region `alloc_testing` (`mem/alloc/testing.rs`), the fuzz entry points
//! `fuzzing` (`fuzzing.rs`) and `PlantedBug` (`options.rs`). Each lives next to what it fakes
//! or drives, so it needs no wider visibility of the internals.

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
pub mod inspect;
pub mod io;
mod mem;
mod migrate;
mod options;
mod persist;
mod replica;
mod stats;
mod sys;

pub use engine::{release_detached, SnapshotFileState, VerifyReport};
pub use error::{Error, Result};
pub use global::{GlobalHeap, LOCK_WAIT, MAX_ROOTS};
pub use heap::{Heap, ReadGuard, WriteGuard};
pub use mem::alloc::HeapAlloc;
pub use migrate::RootInfo;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use options::PlantedBug;
pub use options::{
    Durability, OpenOptions, Tracking, DEFAULT_BASE_CACHE_BYTES, DEFAULT_CLOSE_SNAPSHOT_MIN_BYTES, DEFAULT_MAX_SIZE,
    DEFAULT_REPLICATION_BACKLOG_BYTES, DEFAULT_SNAPSHOT_AFTER_JOURNAL_BYTES, DEFAULT_SNAPSHOT_AFTER_JOURNAL_PAGES,
};
#[doc(hidden)]
pub use persist::__private;
pub use persist::{GlobalPersist, Persist};
pub use replica::{Applied, Base, Replica, ReplicaReadGuard, ReplicationSource, WireGroup};
#[cfg(feature = "derive")]
pub use snapheap_derive::{GlobalPersist, Persist};
pub use stats::Stats;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use mem::alloc::testing as alloc_testing;

/// Entry points for the fuzz targets (`fuzz/`); not part of the public API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
