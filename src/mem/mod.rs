//! Memory: the region, its allocator and the dirty-page tracker.

pub(crate) mod alloc;
pub(crate) mod region;
pub(crate) mod track;
