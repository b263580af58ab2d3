//! What inspection reads of the heap directory's files without rebuilding the image: both
//! snapshot headers and dirty bitmaps, the journal chain (walked as recovery walks it,
//! `disk::journal::walk_chain`), the commit groups of a scanned journal, a torn tail, and the
//! directory's disk use.

use super::{GroupInfo, Inspector, JournalInfo, Problem, RunInfo, RunKind, SnapshotInfo, SnapshotState};
use crate::disk::format::journal::{FIRST_RECORD_OFFSET, RECORD_HEADER_LEN};
use crate::disk::format::meta::Meta;
use crate::disk::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::disk::journal::{journal_file_name, walk_chain, JournalScan, PageRun};
use crate::engine::SNAPSHOT_FILES;
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use std::path::Path;

impl Inspector {
    /// Both snapshot files, the newest valid one marked.
    pub(super) fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        let mut out = Vec::new();
        for name in SNAPSHOT_FILES {
            let path = self.dir.join(name);
            let (len, state) = match self.vfs.open(&path, false) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, SnapshotState::Empty),
                Err(e) => return Err(Error::io("open", &path, e)),
                Ok(f) => {
                    let len = f.len().map_err(|e| Error::io("fstat", &path, e))?;
                    (len, snapshot_state(&*f, &path, len, &self.meta)?)
                }
            };
            out.push(SnapshotInfo {
                path,
                len,
                state,
                newest: false,
            });
        }
        let newest = out
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s.state {
                SnapshotState::Valid { generation, .. } => Some((generation, i)),
                _ => None,
            })
            .max();
        if let Some((_, i)) = newest {
            out[i].newest = true;
        }
        Ok(out)
    }

    /// Every journal file with its scan (chain journals only), and the chain's last seq when
    /// the chain is intact. The chain is walked as recovery walks it (gap-free ids from the
    /// newest snapshot's `journal_id`, each starting where the previous ended).
    #[allow(clippy::type_complexity)]
    pub(super) fn journals(
        &self,
        snaps: &[SnapshotInfo],
    ) -> Result<(Vec<(JournalInfo, Option<JournalScan>)>, Option<u64>)> {
        let (start_seq, first) = snaps
            .iter()
            .find_map(|s| match (s.newest, &s.state) {
                (true, SnapshotState::Valid { seq, journal_id, .. }) => Some((*seq, *journal_id)),
                _ => None,
            })
            .unwrap_or((0, 1));
        let chain = walk_chain(&self.vfs, &self.dir, self.meta.heap_id, first, start_seq)?;
        let len_of = |path: &Path| {
            std::fs::metadata(path)
                .map(|m| m.len())
                .map_err(|e| Error::io("stat", path, e))
        };
        let mut out = Vec::with_capacity(chain.stale.len() + chain.links.len());
        for &id in &chain.stale {
            let path = self.dir.join(journal_file_name(id));
            let info = JournalInfo {
                len: len_of(&path)?,
                path,
                id,
                stale: true,
                start_seq: None,
                seqs: None,
                groups: 0,
                valid_end: 0,
                error: None,
            };
            out.push((info, None));
        }
        let (intact, end_seq) = (chain.intact, chain.end_seq);
        for link in chain.links {
            let mut info = JournalInfo {
                len: len_of(&link.path)?,
                path: link.path.clone(),
                id: link.id,
                stale: false,
                start_seq: None,
                seqs: None,
                groups: 0,
                valid_end: 0,
                error: link.error.map(|e| Problem::from_error(e, &link.path)),
            };
            if let Some(scan) = &link.scan {
                info.start_seq = Some(scan.header.start_seq);
                info.groups = scan.groups.len() as u64;
                info.seqs = scan.groups.first().map(|g| (g.seq, scan.last_seq()));
                info.valid_end = scan.valid_end;
            }
            out.push((info, link.scan));
        }
        Ok((out, intact.then_some(end_seq)))
    }

    /// Bytes after `valid_end` of the newest journal that are not zeros (pre-zeroed space is
    /// not a tail), or `None`.
    pub(super) fn torn_tail(&self, scan: &JournalScan) -> Result<Option<u64>> {
        let f = self
            .vfs
            .open(&scan.path, false)
            .map_err(|e| Error::io("open", &scan.path, e))?;
        let len = f.len().map_err(|e| Error::io("fstat", &scan.path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = scan.valid_end;
        while pos < len {
            let n = (len - pos).min(buf.len() as u64) as usize;
            let got = f
                .read_at(&mut buf[..n], pos)
                .map_err(|e| Error::io("read", &scan.path, e))?;
            if buf[..got].iter().any(|&b| b != 0) {
                return Ok(Some(len - scan.valid_end));
            }
            if got == 0 {
                break;
            }
            pos += got as u64;
        }
        Ok(None)
    }
}

/// The kind of a scanned page run: the one place a new journal record kind is mapped to
/// [`RunKind`].
fn run_kind(run: &PageRun) -> RunKind {
    match run.delta_entries {
        None => RunKind::Full,
        Some(_) => RunKind::Delta,
    }
}

/// Pages a scanned run writes: its length in pages, or one per `DELTA` entry.
fn run_pages(run: &PageRun) -> u64 {
    match run.delta_entries {
        None => run.len / crate::sys::OS_PAGE as u64,
        Some(n) => u64::from(n),
    }
}

/// The groups of one scanned journal with their file offsets (a group is its `PAGES` records
/// followed by a 40-byte `COMMIT` record, contiguous from the previous group's end).
pub(super) fn groups_of(scan: &JournalScan) -> Vec<GroupInfo> {
    let hdr = RECORD_HEADER_LEN as u64;
    let mut start = FIRST_RECORD_OFFSET;
    let mut out = Vec::with_capacity(scan.groups.len());
    for g in scan.groups.iter() {
        let runs: Vec<RunInfo> = scan.runs[g.runs.clone()]
            .iter()
            .map(|run| RunInfo {
                kind: run_kind(run),
                region_offset: run.region_offset,
                pages: run_pages(run),
                file_offset: run.file_offset - hdr,
                payload_bytes: run.len,
            })
            .collect();
        let offset = runs.first().map_or(start, |r| r.file_offset);
        let end = scan.runs[g.runs.clone()]
            .last()
            .map_or(offset, |r| r.file_offset + r.len)
            + hdr;
        out.push(GroupInfo {
            journal: scan.path.clone(),
            seq: g.seq,
            offset,
            bytes: end - offset,
            extent: g.extent,
            runs,
        });
        start = end;
    }
    out
}

/// Decodes a snapshot header into its state.
fn snapshot_state(f: &dyn VFile, path: &Path, len: u64, meta: &Meta) -> Result<SnapshotState> {
    if len == 0 {
        return Ok(SnapshotState::Empty);
    }
    let mut b = [0u8; HEADER_LEN];
    let n = f.read_at(&mut b, 0).map_err(|e| Error::io("read", path, e))?;
    let damaged = |offset: u64, what: String| {
        SnapshotState::Damaged(Problem {
            file: path.to_path_buf(),
            offset,
            what,
        })
    };
    Ok(match SnapHeader::decode(&b[..n], meta.heap_id, meta.max_size) {
        Err((off, what)) => damaged(off, format!("snapshot header: {what} (the file is not used)")),
        Ok(h) if !h.valid => SnapshotState::Incomplete {
            generation: h.generation,
        },
        Ok(h) if len < h.file_len() => damaged(
            len,
            format!(
                "the file is {len} bytes but its header describes {} (the file is not used)",
                h.file_len()
            ),
        ),
        Ok(h) => SnapshotState::Valid {
            generation: h.generation,
            seq: h.seq,
            journal_id: h.journal_id,
            extent: h.extent,
        },
    })
}

/// Checks a valid snapshot's dirty bitmap checksum.
pub(super) fn check_bitmap(f: &dyn VFile, path: &Path, extent: u64) -> Result<Option<Problem>> {
    let mut hb = [0u8; HEADER_LEN];
    f.read_at(&mut hb, 0).map_err(|e| Error::io("read", path, e))?;
    let crc = crate::disk::format::get_u32(&hb, crate::disk::format::snapshot::DIRTY_CRC_OFFSET);
    let len = crate::disk::format::snapshot::dirty_len_for(extent) as usize;
    let mut buf = vec![0u8; len];
    let n = f
        .read_at(&mut buf, DATA_OFFSET + extent)
        .map_err(|e| Error::io("read", path, e))?;
    if n != len || crc32fast::hash(&buf) != crc {
        return Ok(Some(Problem {
            file: path.to_path_buf(),
            offset: DATA_OFFSET + extent,
            what: "dirty bitmap checksum mismatch (the next snapshot rewrites the whole file)".into(),
        }));
    }
    Ok(None)
}

/// Bytes of all regular files in `dir`.
pub(super) fn disk_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io("list directory", dir, e))? {
        let e = e.map_err(|e| Error::io("list directory", dir, e))?;
        if let Ok(md) = e.metadata() {
            if md.is_file() {
                total += md.len();
            }
        }
    }
    Ok(total)
}
