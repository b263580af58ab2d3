//! Memory: the region, its allocator and the dirty-page tracker.

pub(crate) mod alloc;
pub(crate) mod base_cache;
pub(crate) mod dirty_set;
pub(crate) mod region;
pub(crate) mod sysmem;
pub(crate) mod track;
