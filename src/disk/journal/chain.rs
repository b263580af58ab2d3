//! The journal chain after a snapshot: [`walk_chain`] lists the journal files of a heap
//! directory, checks that their ids follow the snapshot's `journal_id` without a gap and that
//! each starts at the commit where the state before it ends, and scans every one
//! (`scan.rs`). Recovery, `Heap::verify` and offline inspection all walk the chain with it;
//! recovery and verify stop at the first broken link, inspection reports every link.
//!
//! # Invariants
//!
//! - `links` are the journals with `id >= first_journal`, in id order; `stale` the ids below.
//! - A link's `error` is the first thing wrong with it (a gap before it, a scan failure, a
//!   start that does not follow the previous end); once a link is broken, later links are
//!   still scanned (for a report) but no longer checked against the chain.

#![forbid(unsafe_code)]

use super::{journal_file_name, parse_journal_file_name, scan_journal, JournalScan};
use crate::disk::format::journal::START_SEQ_OFFSET;
use crate::error::{Error, Result};
use crate::io::Vfs;
use std::path::{Path, PathBuf};

/// One journal file of the chain.
#[derive(Debug)]
pub(crate) struct ChainLink {
    /// Its id (the number in its name).
    pub id: u64,
    /// Its path.
    pub path: PathBuf,
    /// Its scan, when it could be scanned.
    pub scan: Option<JournalScan>,
    /// The first thing wrong with it as a link of the chain.
    pub error: Option<Error>,
}

/// The journal files of a heap directory, as [`walk_chain`] found them.
#[derive(Debug)]
pub(crate) struct Chain {
    /// Ids of journals older than the snapshot (covered by it: garbage).
    pub stale: Vec<u64>,
    /// The journals from `first_journal` on, in id order.
    pub links: Vec<ChainLink>,
    /// Whether every link is sound (no error anywhere).
    pub intact: bool,
    /// The last commit of the chain (the snapshot's seq when it has no groups), when intact.
    pub end_seq: u64,
}

impl Chain {
    /// The scans of an intact chain, or the first link's error.
    pub(crate) fn into_scans(self) -> Result<Vec<JournalScan>> {
        let mut scans = Vec::with_capacity(self.links.len());
        for link in self.links {
            if let Some(e) = link.error {
                return Err(e);
            }
            scans.push(link.scan.expect("a link without an error has a scan"));
        }
        Ok(scans)
    }
}

/// Lists and scans the journals of `dir` after a snapshot whose first journal is
/// `first_journal` and whose state ends at commit `start_seq` (no snapshot: 1 and 0). Only
/// listing the directory can fail; everything wrong with a journal is its link's `error`.
pub(crate) fn walk_chain(vfs: &dyn Vfs, dir: &Path, heap_id: u64, first_journal: u64, start_seq: u64) -> Result<Chain> {
    let names = vfs.list(dir).map_err(|e| Error::io("list directory", dir, e))?;
    let mut ids: Vec<u64> = names
        .iter()
        .filter_map(|n| n.to_str().and_then(parse_journal_file_name))
        .collect();
    ids.sort_unstable();
    let stale: Vec<u64> = ids.iter().copied().filter(|&id| id < first_journal).collect();
    ids.retain(|&id| id >= first_journal);
    let mut links = Vec::with_capacity(ids.len());
    let mut intact = true;
    let mut expect_seq = start_seq;
    let mut expected_id = first_journal;
    for (k, &id) in ids.iter().enumerate() {
        let path = dir.join(journal_file_name(id));
        let mut error = None;
        if id != expected_id && intact {
            error = Some(Error::corrupt(
                dir.join(journal_file_name(expected_id)),
                0,
                format!("journal {expected_id} is missing but journal {id} exists (the chain is broken)"),
            ));
        }
        // The largest id has no successor: the engine could never rotate past it, and no heap
        // reaches it by rotating (2^64 snapshots), so such a name is damage, reported as such.
        expected_id = id.saturating_add(1);
        if id == u64::MAX {
            error.get_or_insert_with(|| {
                Error::corrupt(
                    &path,
                    0,
                    "journal id ffffffffffffffff is the largest possible (no journal can follow it)",
                )
            });
        }
        let scan = match scan_journal(vfs, &path, heap_id, id, k + 1 == ids.len()) {
            Ok(s) => Some(s),
            Err(e) => {
                error.get_or_insert(e);
                None
            }
        };
        if let (Some(s), None, true) = (&scan, &error, intact) {
            if s.header.start_seq != expect_seq {
                error = Some(Error::corrupt(
                    &path,
                    START_SEQ_OFFSET as u64,
                    format!(
                        "journal starts after commit {} but the state before it ends at commit {expect_seq}",
                        s.header.start_seq
                    ),
                ));
            }
        }
        intact &= error.is_none();
        if let Some(s) = &scan {
            expect_seq = s.last_seq();
        }
        links.push(ChainLink { id, path, scan, error });
    }
    Ok(Chain {
        stale,
        links,
        intact,
        end_seq: expect_seq,
    })
}
