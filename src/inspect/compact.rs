//! [`compact`]: the one inspection operation that writes. It opens the heap with the engine
//! (the normal recovery), takes a snapshot with the normal crash-safe protocol and so removes
//! the journals the snapshot covers.

use super::{Inspector, SnapshotState};
use crate::engine::{Engine, Fingerprint};
use crate::error::Result;
use crate::options::OpenOptions;
use std::path::Path;

/// What [`compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactReport {
    /// Bytes of all files before.
    pub bytes_before: u64,
    /// Bytes of all files after.
    pub bytes_after: u64,
    /// Journal files before and after.
    pub journals_before: u64,
    /// Journal files after (the new, empty current journal).
    pub journals_after: u64,
    /// The commit the new snapshot holds.
    pub seq: u64,
    /// The new snapshot's generation.
    pub generation: u64,
}

/// Replays the journals of the heap in `dir` into a new snapshot with the normal crash-safe
/// protocol (the heap is opened by the engine, as any program opens it, and a snapshot is
/// taken and waited for), so the journals it covers are removed. Refuses a heap that is open
/// elsewhere ([`Error::Locked`](crate::Error::Locked)) and a directory that is not a heap. A torn journal tail is
/// truncated, as at every open.
pub fn compact(dir: impl AsRef<Path>) -> Result<CompactReport> {
    let dir = dir.as_ref();
    let (meta, bytes_before, journals_before) = {
        let ins = Inspector::open(dir)?;
        let info = ins.info_with(false)?;
        (ins.meta.clone(), info.disk_bytes, info.journals.len() as u64)
    };
    // The engine checks the root type against `meta`; the tool has no type, so it names the
    // recorded one. The name is leaked: one small string per compaction.
    let fp = Fingerprint {
        size: meta.root_size,
        align: meta.root_align,
        type_name: Box::leak(meta.root_type_name.clone().into_boxed_str()),
        schema: meta.schema.clone(),
        // `meta` names what it holds (format 2: the root-record kind; format 1: the user's
        // root type), so the check against it passes without the typed layer.
        legacy_root: false,
    };
    let mut opts = OpenOptions::new();
    opts.snapshot_on_close(false);
    let engine = Engine::open(dir, &opts, &fp)?;
    let res = engine.snapshot();
    let closed = engine.close(false);
    drop(engine);
    res?;
    closed?;
    let ins = Inspector::open(dir)?;
    let info = ins.info_with(false)?;
    let (generation, seq) = info
        .snapshots
        .iter()
        .find_map(|s| match (s.newest, &s.state) {
            (true, SnapshotState::Valid { generation, seq, .. }) => Some((*generation, *seq)),
            _ => None,
        })
        .unwrap_or((0, 0));
    Ok(CompactReport {
        bytes_before,
        bytes_after: info.disk_bytes,
        journals_before,
        journals_after: info.journals.len() as u64,
        seq,
        generation,
    })
}
