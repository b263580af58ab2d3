//! Collections that live in a persistent heap: `Vec`, `Box`, `HashMap`, `HashSet` and
//! `String`, all allocating through [`HeapAlloc`](crate::mem::alloc::HeapAlloc).
//!
//! `Vec` and `Box` are `allocator_api2`'s types with the heap's allocator. `HashMap` and
//! `HashSet` are thin wrappers over `hashbrown`'s, with [`PersistentState`] as the hasher: the
//! default hashers of `std` and `hashbrown` draw a per-process random seed that is not stored
//! in the map, so a map persisted with them could not find its keys after a restart.
//! `PersistentState` keeps its whole seed inside the map and uses a hash function defined by
//! this crate, so it hashes identically in every run and every build.

mod hash;
mod map;
mod string;

pub use hash::{PersistentHasher, PersistentState};
pub use map::{HashMap, HashSet};
pub use string::String;

/// A growable array in the heap.
pub type Vec<T> = allocator_api2::vec::Vec<T, crate::mem::alloc::HeapAlloc>;

/// An owned value in the heap.
pub type Box<T> = allocator_api2::boxed::Box<T, crate::mem::alloc::HeapAlloc>;
