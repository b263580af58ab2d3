//! Files and bytes: the journal, the snapshot file protocol, the on-disk formats.

pub(crate) mod format;
pub(crate) mod journal;
pub(crate) mod snapshot;
