//! The commit journal files: their names, the [`JournalWriter`] that appends one commit
//! *group* per commit, and [`scan_journal`], which validates a journal for recovery and
//! decides where its valid prefix ends. The byte layout is in [`crate::disk::format::journal`];
//! the rules are in `docs/design.md ("Journal files")`.
//!
//! # Invariants
//!
//! - A journal file named `journal-{id:016x}` always holds a complete, durable header: the
//!   writer creates it as `journal-{id:016x}.tmp`, writes and syncs the header, then renames
//!   it and syncs the directory.
//! - Groups in a file have consecutive sequence numbers `start_seq + 1, start_seq + 2, ..`;
//!   group `k` occupies `[end(k-1), end(k))` with `end(0) = FIRST_RECORD_OFFSET`.
//! - Writer: `FIRST_RECORD_OFFSET <= end <= zeroed_end <= file length`, and the bytes
//!   `[end, zeroed_end)` were written as zeros by this writer (pre-zeroed space).
//! - Scan: `FIRST_RECORD_OFFSET <= valid_end <= file_len`; `groups[i].seq == start_seq + 1 + i`;
//!   `groups[i].runs` are consecutive, disjoint ranges of `runs` covering all of it; every
//!   run satisfies `file_offset + len <= valid_end`, and a `DELTA` run's payload passed
//!   `format::delta::check_payload`.
//! - Nothing read from disk is trusted before its checksum verified; buffers are bounded by
//!   `min(WINDOW_LEN, file length)` and the run list by `file length / 4136` entries.

#![forbid(unsafe_code)]

mod chain;
mod scan;
mod writer;

pub(crate) use chain::walk_chain;
pub(crate) use scan::{for_each_delta_entry, for_each_delta_entry_in, read_run, scan_journal, RunReader};
pub(crate) use writer::JournalWriter;
#[cfg(test)]
use writer::{DEFAULT_PREZERO_STEP, PREZERO_MAX_GROUP};

use crate::mem::sysmem::SysVec;
use std::ops::Range;
use std::path::PathBuf;

pub(crate) use crate::disk::format::journal::JournalHeader;

/// File name prefix of journals.
const NAME_PREFIX: &str = "journal-";
/// Suffix of a journal being created; such a file never holds commits and may be deleted.
pub(crate) const JOURNAL_TEMP_SUFFIX: &str = ".tmp";
/// The file name of journal `id`: `journal-{id:016x}`.
pub(crate) fn journal_file_name(id: u64) -> String {
    format!("{NAME_PREFIX}{id:016x}")
}

/// The id in a journal file name, or `None` when `name` is not exactly
/// `journal-` followed by 16 lowercase hex digits (so `journal-*.tmp` is `None`).
pub(crate) fn parse_journal_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(NAME_PREFIX)?;
    let ok = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// Where the payload of one `PAGES` or `DELTA` record lies in the journal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRun {
    /// File offset of the first payload byte.
    pub file_offset: u64,
    /// `PAGES`: byte offset in the heap region of the first page (a multiple of 4096).
    /// `DELTA`: the first entry's page.
    pub region_offset: u64,
    /// Payload length in bytes (`PAGES`: a multiple of 4096; both: at most 1 MiB).
    pub len: u64,
    /// `Some(count)` for a `DELTA` record of `count` entries (its payload validated by the
    /// scanner); `None` for `PAGES`.
    pub delta_entries: Option<u32>,
    /// End of the region range the record touches (`PAGES`: `region_offset + len`; `DELTA`:
    /// the last entry's page + 4096).
    pub region_end: u64,
}

/// One complete commit group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// Its commit sequence number.
    pub seq: u64,
    /// The region extent in bytes at this commit.
    pub extent: u64,
    /// Its page runs: indexes into [`JournalScan::runs`], in write order.
    pub runs: Range<usize>,
    /// File offset of its first record.
    pub start: u64,
    /// File offset one past its `COMMIT` record.
    pub end: u64,
}

/// The result of validating one journal file.
#[derive(Debug)]
pub(crate) struct JournalScan {
    /// The file scanned.
    pub path: PathBuf,
    /// Its header.
    pub header: JournalHeader,
    /// Its complete groups, in order.
    pub groups: SysVec<Group>,
    /// The page runs of all groups.
    pub runs: SysVec<PageRun>,
    /// End of the last complete group; bytes after it are a torn tail or pre-zeroed space.
    pub valid_end: u64,
    /// Every byte after `valid_end` is zero (nothing follows it, or only the writer's
    /// pre-zeroed space): resuming may write over them without truncating first.
    pub zero_tail: bool,
    /// The file length when scanned.
    #[allow(dead_code)] // part of the recovery report; the engine does not need it yet
    pub file_len: u64,
}

impl JournalScan {
    /// Sequence number of the last complete group, or `start_seq` when there is none.
    pub(crate) fn last_seq(&self) -> u64 {
        self.groups.last().map_or(self.header.start_seq, |g| g.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::format::journal::{
        decode_header, seal_record, RecordHeader, FIRST_RECORD_OFFSET, HEADER_AREA_LEN, HEAP_ID_OFFSET,
        JOURNAL_ID_OFFSET, KIND_DELTA, PAGE_SIZE, RECORD_HEADER_LEN,
    };
    use crate::disk::format::journal::{REC_COUNT_OFFSET, REC_SEQ_OFFSET, REC_SYNCED_OFFSET, VERSION_OFFSET};
    use crate::disk::format::{put_u32, put_u64};
    use crate::error::{Error, Result};
    use crate::io::sim::{CrashMode, SimVfs};
    use crate::io::Vfs;
    use std::path::Path;

    const HEAP: u64 = 0x5eed_0000_0000_0001;
    const ID: u64 = 3;
    const START: u64 = 100;
    const P: usize = PAGE_SIZE as usize;
    /// Small pre-zeroing step so tests exercise it without writing megabytes of zeros.
    const TEST_PREZERO: u64 = 16 << 10;

    /// A disk holding only `path` with `bytes` (written and durable).
    fn with_file(path: &Path, bytes: &[u8]) -> SimVfs {
        let vfs = SimVfs::new();
        vfs.write_file(path, bytes);
        vfs
    }

    /// The written bytes of `path`.
    fn bytes(vfs: &SimVfs, path: &Path) -> Vec<u8> {
        vfs.read_file(path).expect("the journal exists")
    }

    fn dir() -> PathBuf {
        PathBuf::from("/heap")
    }

    fn jpath() -> PathBuf {
        dir().join(journal_file_name(ID))
    }

    /// `n` pages of deterministic, tag-dependent, nonzero-dense bytes.
    fn pages(tag: u64, n: usize) -> Vec<u8> {
        let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n * P)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// One commit group to write: region extent and `(region_offset, bytes)` runs.
    #[derive(Clone)]
    struct Spec {
        extent: u64,
        runs: Vec<(u64, Vec<u8>)>,
    }

    fn spec(extent: u64, runs: &[(u64, usize)], tag: u64) -> Spec {
        let runs = runs
            .iter()
            .enumerate()
            .map(|(i, &(off, n))| (off, pages(tag * 1000 + i as u64, n)))
            .collect();
        Spec { extent, runs }
    }

    /// How each group's `synced` is chosen from the group ends so far (`ends[0]` is the
    /// first record offset, `ends[k]` the end of group `k`).
    type SyncPolicy = fn(&[u64]) -> u64;
    /// Nothing after the header was ever synced.
    const NOTHING_SYNCED: SyncPolicy = |_| FIRST_RECORD_OFFSET;
    /// Every group was synced before the next was written.
    const PREVIOUS_SYNCED: SyncPolicy = |ends| *ends.last().unwrap();

    fn append(w: &mut JournalWriter, specs: &[Spec], policy: impl Fn(&[u64]) -> u64, ends: &mut Vec<u64>) {
        for s in specs {
            let runs: Vec<(u64, &[u8])> = s.runs.iter().map(|(o, b)| (*o, &b[..])).collect();
            let seq = w.next_seq();
            let n = w.encode_group(seq, s.extent, policy(ends), &runs);
            let end = w.write_encoded().unwrap();
            assert_eq!(end, ends.last().unwrap() + n);
            assert_eq!(w.end(), end);
            ends.push(end);
        }
    }

    /// Writes a journal of `specs` into `vfs`; returns the group ends.
    fn build(vfs: &SimVfs, specs: &[Spec], policy: SyncPolicy) -> Vec<u64> {
        let mut w = JournalWriter::create(vfs, &dir(), HEAP, ID, START).unwrap();
        w.set_prezero_step(TEST_PREZERO);
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, specs, policy, &mut ends);
        ends
    }

    /// The file bytes of the journal without its pre-zeroed tail.
    fn built_bytes(vfs: &SimVfs, ends: &[u64]) -> Vec<u8> {
        let mut b = bytes(vfs, &jpath());
        assert!(b.len() as u64 >= *ends.last().unwrap());
        assert!(b[*ends.last().unwrap() as usize..].iter().all(|&x| x == 0));
        b.truncate(*ends.last().unwrap() as usize);
        b
    }

    /// The model: pages of a group coalesced into runs of contiguous pages of at most
    /// 256 pages, in write order.
    fn model_runs(s: &Spec) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (off, bytes) in &s.runs {
            for (i, page) in bytes.chunks(P).enumerate() {
                let at = off + (i * P) as u64;
                match out.last_mut() {
                    Some((o, b)) if *o + b.len() as u64 == at && b.len() < 256 * P => b.extend_from_slice(page),
                    _ => out.push((at, page.to_vec())),
                }
            }
        }
        out
    }

    fn scan(vfs: &SimVfs, is_last: bool) -> Result<JournalScan> {
        scan_journal(vfs, &jpath(), HEAP, ID, is_last)
    }

    /// Asserts that `scan` holds exactly the groups of `specs`, with their page bytes.
    fn assert_groups(vfs: &dyn Vfs, scan: &JournalScan, specs: &[Spec]) {
        assert_eq!(scan.groups.len(), specs.len(), "group count");
        let file = vfs.open(&scan.path, false).unwrap();
        let mut next_run = 0;
        for (i, (g, s)) in scan.groups.iter().zip(specs).enumerate() {
            assert_eq!(g.seq, START + 1 + i as u64);
            assert_eq!(g.extent, s.extent);
            assert_eq!(g.runs.start, next_run, "runs are consecutive");
            next_run = g.runs.end;
            let got: Vec<(u64, Vec<u8>)> = scan.runs[g.runs.clone()]
                .iter()
                .map(|r| {
                    assert!(r.file_offset + r.len <= scan.valid_end);
                    let mut b = vec![0u8; r.len as usize];
                    read_run(&*file, &scan.path, r, &mut b).unwrap();
                    (r.region_offset, b)
                })
                .collect();
            assert!(got == model_runs(s), "group {i}: runs differ from the model");
        }
        assert_eq!(next_run, scan.runs.len());
        assert_eq!(scan.last_seq(), START + specs.len() as u64);
    }

    fn corrupt_offset(r: Result<JournalScan>) -> u64 {
        match r {
            Err(Error::Corrupt { offset, .. }) => offset,
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }

    /// Offsets of the records of a well-formed journal image.
    fn record_starts(bytes: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut pos = FIRST_RECORD_OFFSET;
        while pos < bytes.len() as u64 {
            out.push(pos);
            pos += RecordHeader::decode(&bytes[pos as usize..]).unwrap().record_len();
        }
        out
    }

    fn round_trip_specs() -> Vec<Spec> {
        vec![
            // No pages at all.
            spec(1 << 20, &[], 1),
            // One page.
            spec(1 << 20, &[(0x3000, 1)], 2),
            // Contiguous runs coalesce; a gap starts a new record; order is kept.
            spec(1 << 20, &[(0x10000, 2), (0x12000, 1), (0x40000, 1), (0, 3)], 3),
            // 2.5 MiB splits at 1 MiB; the contiguous run after it fills the last record
            // up to 1 MiB and spills into a fourth.
            spec(8 << 20, &[(0x100000, 640), (0x100000 + 640 * 4096, 200)], 4),
            spec(8 << 20, &[(0x7000, 1)], 5),
        ]
    }

    #[test]
    fn journal_file_names_round_trip_and_foreign_names_are_rejected() {
        for id in [0, 1, 0xabc, u64::MAX] {
            assert_eq!(parse_journal_file_name(&journal_file_name(id)), Some(id));
        }
        assert_eq!(journal_file_name(0x2a), "journal-000000000000002a");
        for bad in [
            "journal-000000000000002a.tmp",
            "journal-2a",
            "journal-000000000000002A",
            "journal-+00000000000002a",
            "snapshot-0",
            "journal-",
        ] {
            assert_eq!(parse_journal_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trip_returns_exactly_the_groups_runs_and_page_bytes() {
        let vfs = SimVfs::new();
        let specs = round_trip_specs();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        for is_last in [true, false] {
            let s = scan(&vfs, is_last).unwrap();
            assert_groups(&vfs, &s, &specs);
            assert_eq!(s.valid_end, *ends.last().unwrap());
            assert_eq!(s.header.start_seq, START);
            assert_eq!(s.header.heap_id, HEAP);
        }
        let s = scan(&vfs, true).unwrap();
        let counts: Vec<usize> = s.groups.iter().map(|g| g.runs.len()).collect();
        assert_eq!(counts, [0, 1, 3, 4, 1]);
        let lens: Vec<u64> = s.runs[s.groups[3].runs.clone()].iter().map(|r| r.len).collect();
        assert_eq!(lens, [1 << 20, 1 << 20, 1 << 20, 72 * 4096]);
    }

    #[test]
    fn round_trip_through_the_real_file_system_with_resume() {
        let dir = std::env::temp_dir().join(format!("snapheap-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vfs = crate::io::OsVfs;
        vfs.create_dir_all(&dir).unwrap();
        let specs = round_trip_specs();
        let mut w = JournalWriter::create(&vfs, &dir, HEAP, ID, START).unwrap();
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, &specs[..3], PREVIOUS_SYNCED, &mut ends);
        w.file().sync_data().unwrap();
        let path = w.path().to_path_buf();
        assert_eq!(path, dir.join(journal_file_name(ID)));
        drop(w);
        let names = vfs.list(&dir).unwrap();
        assert_eq!(names, [PathBuf::from(journal_file_name(ID))], "no temp file is left");
        let s = scan_journal(&vfs, &path, HEAP, ID, true).unwrap();
        assert_groups(&vfs, &s, &specs[..3]);
        assert!(s.file_len >= DEFAULT_PREZERO_STEP, "the default writer pre-zeroes");
        assert!(s.zero_tail && s.file_len > s.valid_end, "{s:?}");
        let mut w = JournalWriter::resume(&vfs, &s).unwrap();
        // Only pre-zeroed space follows the last group: kept (not truncated) as the new
        // writer's pre-zeroed space.
        assert_eq!(std::fs::metadata(&path).unwrap().len(), s.file_len);
        append(&mut w, &specs[3..], PREVIOUS_SYNCED, &mut ends);
        let s = scan_journal(&vfs, &path, HEAP, ID, false).unwrap();
        assert_groups(&vfs, &s, &specs);
        assert_eq!(s.valid_end, *ends.last().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_makes_a_durable_empty_journal_and_refuses_to_replace_one() {
        let vfs = SimVfs::new();
        let w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        assert_eq!((w.id(), w.end(), w.next_seq()), (ID, FIRST_RECORD_OFFSET, START + 1));
        assert_eq!(vfs.list(&dir()).unwrap(), [PathBuf::from(journal_file_name(ID))]);
        let power_lost = vfs.crash(CrashMode::DropUnsynced);
        assert_eq!(power_lost.list(&dir()).unwrap(), [PathBuf::from(journal_file_name(ID))]);
        let durable = scan(&power_lost, false).unwrap();
        let s = scan(&vfs, false).unwrap();
        assert_eq!(durable.header, s.header, "the header is durable before create returns");
        assert_eq!(
            (s.groups.len(), s.valid_end, s.last_seq()),
            (0, FIRST_RECORD_OFFSET, START)
        );
        let again = JournalWriter::create(&vfs, &dir(), HEAP, ID, START);
        assert!(matches!(again, Err(Error::InvalidArgument { .. })));
        assert_eq!(
            scan(&vfs, true).unwrap().header,
            s.header,
            "the first journal is intact"
        );
    }

    #[test]
    fn salts_differ_between_journals() {
        let vfs = SimVfs::new();
        let a = JournalWriter::create(&vfs, &dir(), HEAP, 1, 0).unwrap();
        let b = JournalWriter::create(&vfs, &dir(), HEAP, 2, 0).unwrap();
        assert_ne!(a.salt, b.salt);
    }

    #[test]
    fn encode_group_reuses_its_buffer_after_warm_up() {
        let vfs = SimVfs::new();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        let data = pages(9, 300);
        let runs = [(0u64, &data[..100 * P]), (0x200000, &data[100 * P..])];
        let n = w.encode_group(START + 1, 1 << 22, FIRST_RECORD_OFFSET, &runs);
        w.write_encoded().unwrap();
        let (ptr, cap) = (w.buf.as_ptr(), w.buf.capacity());
        for seq in START + 2..START + 6 {
            assert_eq!(w.encode_group(seq, 1 << 22, FIRST_RECORD_OFFSET, &runs), n);
            assert_eq!((w.buf.as_ptr(), w.buf.capacity()), (ptr, cap));
            w.write_encoded().unwrap();
        }
        assert_eq!(scan(&vfs, true).unwrap().groups.len(), 5);
    }

    #[test]
    fn write_encoded_without_an_encoded_group_is_refused() {
        let vfs = SimVfs::new();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        assert!(matches!(w.write_encoded(), Err(Error::InvalidArgument { .. })));
        w.encode_group(START + 1, 0, FIRST_RECORD_OFFSET, &[]);
        w.write_encoded().unwrap();
        assert!(matches!(w.write_encoded(), Err(Error::InvalidArgument { .. })));
        assert_eq!(scan(&vfs, true).unwrap().groups.len(), 1);
    }

    /// Three small groups, then a last group of two non-contiguous pages.
    fn torn_specs() -> Vec<Spec> {
        vec![
            spec(1 << 20, &[(0, 1)], 1),
            spec(1 << 20, &[], 2),
            spec(1 << 20, &[(0x1000, 1)], 3),
            spec(1 << 20, &[(0x5000, 1), (0x9000, 1)], 4),
        ]
    }

    #[test]
    fn torn_tail_is_truncated_to_last_whole_commit() {
        let specs = torn_specs();
        let vfs = SimVfs::new();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let (last_start, last_end) = (ends[3], ends[4]);
        let starts = record_starts(&bytes);
        let extra = spec(1 << 20, &[(0x2000, 2)], 77);
        let mut expected = specs[..3].to_vec();
        expected.push(extra.clone());
        for cut in last_start..last_end {
            let vfs = with_file(&jpath(), &bytes[..cut as usize]);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..3]);
            assert_eq!((s.valid_end, s.file_len), (last_start, cut), "cut at {cut}");
            if cut > last_start {
                let x = *starts.iter().filter(|&&r| r <= cut).max().unwrap();
                assert_eq!(corrupt_offset(scan(&vfs, false)), x, "not last, cut at {cut}");
            }
            let syncs = vfs.syncs();
            let mut w = JournalWriter::resume(&vfs, &s).unwrap();
            assert!(vfs.syncs() > syncs, "resume syncs");
            assert_eq!((w.end(), w.next_seq()), (last_start, START + 4));
            w.set_prezero_step(TEST_PREZERO);
            let mut ends2 = ends[..4].to_vec();
            append(&mut w, std::slice::from_ref(&extra), PREVIOUS_SYNCED, &mut ends2);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &expected);
            assert_eq!(s.valid_end, ends2[4]);
        }
    }

    #[test]
    fn sector_torn_tail_with_later_sectors_present_is_truncated_not_corrupt() {
        // Groups 4 and 5 were written by group commit without a sync between them: both
        // name the end of group 3 as durable. Only some of group 4's sectors reached disk.
        let mut specs = torn_specs();
        specs[3] = spec(1 << 20, &[(0x5000, 1), (0x9000, 2), (0x20000, 1)], 4);
        specs.push(spec(1 << 20, &[(0x30000, 1)], 5));
        let vfs = SimVfs::new();
        let w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START);
        let mut w = w.unwrap();
        w.set_prezero_step(0);
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, &specs[..4], PREVIOUS_SYNCED, &mut ends);
        let durable = ends[3];
        append(&mut w, &specs[4..], |_| durable, &mut ends);
        let bytes = bytes(&vfs, &jpath());
        let (g_start, g_end) = (ends[3] as usize, ends[4] as usize);
        let sectors: Vec<usize> = (g_start / 512..g_end.div_ceil(512)).collect();
        let mut patterns: Vec<Vec<bool>> = Vec::new(); // true = sector reached disk
        for i in 0..sectors.len() {
            patterns.push((0..sectors.len()).map(|j| j != i).collect());
            patterns.push((0..sectors.len()).map(|j| j == i).collect());
        }
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            patterns.push(
                (0..sectors.len())
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 3 != 0
                    })
                    .collect(),
            );
        }
        for pattern in &patterns {
            let mut torn = bytes.clone();
            for (&sector, &present) in sectors.iter().zip(pattern) {
                if !present {
                    let lo = (sector * 512).max(g_start);
                    let hi = ((sector + 1) * 512).min(g_end);
                    torn[lo..hi].fill(0);
                }
            }
            assert_ne!(torn, bytes, "every sector holds nonzero bytes of the group");
            let vfs = with_file(&jpath(), &torn);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..3]);
            assert_eq!(s.valid_end, ends[3]);
        }
    }

    #[test]
    fn corrupt_record_before_durable_data_is_an_error() {
        let specs: Vec<Spec> = (0..4).map(|g| spec(1 << 20, &[(0, 1), (0x10000, 1)], g + 1)).collect();
        let vfs = SimVfs::new();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let starts = record_starts(&bytes);
        assert_eq!(starts.len(), 12);
        // A payload byte of group 2's second PAGES record, a header byte of group 3's
        // COMMIT record, group 1's first header byte: all lie before the end of group 3,
        // which group 4's records name as durable.
        let cases = [
            (starts[4], starts[4] + 40 + 100),
            (starts[8], starts[8] + REC_SEQ_OFFSET as u64),
            (starts[0], starts[0]),
        ];
        for (record, byte) in cases {
            let mut bad = bytes.clone();
            bad[byte as usize] ^= 0x10;
            let vfs = with_file(&jpath(), &bad);
            assert_eq!(corrupt_offset(scan(&vfs, true)), record, "flip at {byte}");
        }
        // Group 4 is covered by nothing: the same damage there is a torn tail.
        let mut bad = bytes.clone();
        bad[starts[9] as usize + 40 + 7] ^= 0x10;
        let vfs = with_file(&jpath(), &bad);
        let s = scan(&vfs, true).unwrap();
        assert_groups(&vfs, &s, &specs[..3]);
        assert_eq!(corrupt_offset(scan(&vfs, false)), starts[9]);
    }

    #[test]
    fn every_flipped_byte_gives_a_prefix_of_the_groups_or_an_error() {
        let specs: Vec<Spec> = (0..3).map(|g| spec(1 << 20, &[(0x4000, 1)], g + 1)).collect();
        for (policy, synced_all) in [(NOTHING_SYNCED, false), (PREVIOUS_SYNCED, true)] {
            let vfs = SimVfs::new();
            let ends = build(&vfs, &specs, policy);
            let bytes = built_bytes(&vfs, &ends);
            let starts = record_starts(&bytes);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x5a;
                let vfs = with_file(&jpath(), &bad);
                let r = scan(&vfs, true);
                if i < HEADER_AREA_LEN {
                    assert!(
                        matches!(r, Err(Error::Corrupt { .. } | Error::Incompatible { .. })),
                        "header byte {i}: {r:?}"
                    );
                    continue;
                }
                let g = ends.iter().position(|&e| e > i as u64).unwrap(); // 1-based group
                let record = *starts.iter().filter(|&&r| r <= i as u64).max().unwrap();
                if synced_all && g < specs.len() {
                    assert_eq!(corrupt_offset(r), record, "byte {i}");
                } else {
                    let s = r.unwrap_or_else(|e| panic!("byte {i}: {e}"));
                    assert_groups(&vfs, &s, &specs[..g - 1]);
                    assert_eq!(s.valid_end, ends[g - 1]);
                }
                if i % 7 == 0 {
                    assert_eq!(corrupt_offset(scan(&vfs, false)), record, "not last, byte {i}");
                }
            }
        }
    }

    #[test]
    fn evidence_after_megabytes_of_zeros_is_still_found() {
        let specs: Vec<Spec> = (0..3).map(|g| spec(1 << 20, &[(0x4000, 1)], g + 1)).collect();
        let vfs = SimVfs::new();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let (e1, e2) = (ends[1] as usize, ends[2] as usize);
        // Group 3 moved 3 MiB (more than the read window) further, zeros in between.
        let mut spaced = bytes[..e2].to_vec();
        spaced.resize(e2 + (3 << 20), 0);
        spaced.extend_from_slice(&bytes[e2..]);
        // Intact: the zeros end the valid prefix; group 3 names only the end of group 2 as
        // durable, which proves nothing about the zeros: a torn tail in the newest journal.
        let vfs = with_file(&jpath(), &spaced);
        let s = scan(&vfs, true).unwrap();
        assert_groups(&vfs, &s, &specs[..2]);
        assert_eq!(s.valid_end, ends[2]);
        // Damage in group 2: group 3, far behind the zeros, proves it had been durable.
        spaced[e1 + RECORD_HEADER_LEN + 7] ^= 0x10;
        let vfs = with_file(&jpath(), &spaced);
        assert_eq!(corrupt_offset(scan(&vfs, true)), ends[1]);
    }

    #[test]
    fn every_flipped_header_byte_is_reported_at_its_field() {
        let vfs = SimVfs::new();
        let ends = build(&vfs, &torn_specs(), PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for i in 0..HEADER_AREA_LEN {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let vfs = with_file(&jpath(), &bad);
            for is_last in [true, false] {
                let r = scan(&vfs, is_last);
                let expected = match i {
                    0..8 => 0,
                    8..12 => {
                        assert!(matches!(r, Err(Error::Incompatible { .. })), "{i}: {r:?}");
                        continue;
                    }
                    12..16 => 12,
                    16..64 => 60,
                    _ => i as u64,
                };
                assert_eq!(corrupt_offset(r), expected, "header byte {i}");
            }
        }
    }

    #[test]
    fn a_future_version_is_incompatible_and_foreign_ids_are_corrupt() {
        let vfs = SimVfs::new();
        build(&vfs, &torn_specs()[..1], PREVIOUS_SYNCED);
        let r = scan_journal(&vfs, &jpath(), HEAP ^ 1, ID, true);
        assert_eq!(corrupt_offset(r), HEAP_ID_OFFSET as u64);
        let r = scan_journal(&vfs, &jpath(), HEAP, ID + 1, true);
        assert_eq!(corrupt_offset(r), JOURNAL_ID_OFFSET as u64);
        for (version, readable) in [(0u8, false), (1, true), (2, true), (3, false), (0xff, false)] {
            let mut b = bytes(&vfs, &jpath());
            b[VERSION_OFFSET] = version;
            let crc = crc32fast::hash(&b[..60]);
            b[60..64].copy_from_slice(&crc.to_le_bytes());
            let vfs = with_file(&jpath(), &b);
            let r = scan(&vfs, true);
            if readable {
                assert_eq!(r.unwrap().header.version, u32::from(version));
            } else {
                assert!(matches!(r, Err(Error::Incompatible { .. })), "version {version}: {r:?}");
            }
        }
    }

    /// Writes groups of `DELTA` entries (and one whole page) and returns the journal bytes, the
    /// group ends, and each group's entries as `(page, new image)`.
    /// Per group, its pages as `(region offset, new image)`.
    type DeltaGroups = Vec<Vec<(u64, Vec<u8>)>>;

    fn build_delta(vfs: &SimVfs) -> (Vec<u8>, Vec<u64>, DeltaGroups) {
        use crate::disk::format::delta::{encode_entry, entry_len, page_crc, Run};
        let mut w = JournalWriter::create(vfs, &dir(), HEAP, ID, START).unwrap();
        w.set_prezero_step(TEST_PREZERO);
        let mut ends = vec![FIRST_RECORD_OFFSET];
        let mut groups = Vec::new();
        for g in 0..4u64 {
            w.begin_group(w.next_seq(), *ends.last().unwrap());
            let whole = pages(g + 50, 1);
            w.add_pages(0x40000, &whole);
            let mut entries = vec![(0x40000, whole)];
            for k in 0..3u64 {
                let page = (g * 4 + k) * PAGE_SIZE;
                let new = pages(g * 10 + k, 1);
                let runs = [
                    Run {
                        start: k as u16,
                        len: 2,
                    },
                    Run { start: 100, len: 1 },
                ];
                let out = w.delta_entry(entry_len(2, 3));
                assert!(encode_entry(out, page, page_crc(&new), &runs, &new));
                entries.push((page, new));
            }
            w.finish_group(1 << 20);
            ends.push(w.write_encoded().unwrap());
            groups.push(entries);
        }
        (built_bytes(vfs, &ends), ends, groups)
    }

    #[test]
    fn delta_records_scan_with_their_pages_and_damage_inside_them_names_the_field() {
        use crate::disk::format::delta::{ENTRY_HEADER_LEN, ENTRY_RUNS_OFFSET, RUN_DESC_LEN, RUN_START_OFFSET};
        let vfs = SimVfs::new();
        let (b, ends, groups) = build_delta(&vfs);
        let s = scan(&vfs, false).unwrap();
        assert_eq!(s.groups.len(), 4);
        for (g, entries) in s.groups.iter().zip(&groups) {
            let runs = &s.runs[g.runs.clone()];
            assert_eq!(runs.len(), 2, "a PAGES and a DELTA record");
            assert_eq!((runs[0].delta_entries, runs[0].region_offset), (None, 0x40000));
            assert_eq!(runs[1].delta_entries, Some(3));
            assert_eq!(
                (runs[1].region_offset, runs[1].region_end),
                (entries[1].0, entries[3].0 + PAGE_SIZE)
            );
        }
        // A field of the second entry of group 2's DELTA record, resealed: Corrupt at it.
        let starts = record_starts(&b);
        let delta_rec = starts[4] as usize; // group 2: PAGES, DELTA, COMMIT after group 1's three
        assert_eq!(RecordHeader::decode(&b[delta_rec..]).unwrap().kind, KIND_DELTA);
        let entry = delta_rec + RECORD_HEADER_LEN + crate::disk::format::delta::entry_len(2, 3);
        let salt = decode_header(&b).unwrap().salt;
        let len = RecordHeader::decode(&b[delta_rec..]).unwrap().len as usize;
        for (field, value) in [
            (entry + ENTRY_RUNS_OFFSET, 0u8),
            (entry + ENTRY_HEADER_LEN + RUN_DESC_LEN + RUN_START_OFFSET, 1),
            (entry, 0x10),
        ] {
            let mut bad = b.clone();
            bad[field] = value;
            seal_record(&mut bad[delta_rec..delta_rec + RECORD_HEADER_LEN + len], salt);
            let vfs = with_file(&jpath(), &bad);
            assert_eq!(corrupt_offset(scan(&vfs, true)), field as u64, "field at {field}");
        }
        // The same journal as version 1: a DELTA record there is damage.
        let mut v1 = b.clone();
        v1[VERSION_OFFSET] = 1;
        let crc = crc32fast::hash(&v1[..60]);
        v1[60..64].copy_from_slice(&crc.to_le_bytes());
        let vfs = with_file(&jpath(), &v1);
        assert_eq!(corrupt_offset(scan(&vfs, true)), starts[1]);
        // A resumed version-1 journal takes no deltas.
        let vfs = with_file(&jpath(), &v1[..starts[1] as usize]);
        let w = JournalWriter::resume(&vfs, &scan(&vfs, true).unwrap()).unwrap();
        assert!(!w.accepts_delta());
        // Cut anywhere in the last (delta) group: the first three groups remain.
        for cut in ends[3]..ends[4] {
            let vfs = with_file(&jpath(), &b[..cut as usize]);
            let s = scan(&vfs, true).unwrap();
            assert_eq!((s.groups.len(), s.valid_end), (3, ends[3]), "cut at {cut}");
        }
    }

    #[test]
    fn a_file_shorter_than_its_header_area_is_corrupt_even_when_last() {
        let vfs = SimVfs::new();
        let ends = build(&vfs, &torn_specs()[..1], PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for len in 0..HEADER_AREA_LEN {
            let vfs = with_file(&jpath(), &bytes[..len]);
            for is_last in [true, false] {
                let off = corrupt_offset(scan(&vfs, is_last));
                assert_eq!(off, len as u64, "length {len}");
            }
        }
        let vfs = with_file(&jpath(), &bytes[..HEADER_AREA_LEN]);
        assert_eq!(scan(&vfs, false).unwrap().groups.len(), 0);
    }

    /// Rewrites a field of every record of group `g` (0-based) and reseals them if asked.
    fn rewrite_group(bytes: &mut [u8], ends: &[u64], g: usize, edit: &dyn Fn(&mut [u8]), reseal: bool) {
        let salt = get_salt(bytes);
        let mut pos = ends[g];
        while pos < ends[g + 1] {
            let h = RecordHeader::decode(&bytes[pos as usize..]).unwrap();
            let rec = &mut bytes[pos as usize..pos as usize + 40 + h.len as usize];
            edit(rec);
            if reseal {
                seal_record(rec, salt);
            }
            pos += h.record_len();
        }
    }

    fn get_salt(bytes: &[u8]) -> u64 {
        decode_header(bytes).unwrap().salt
    }

    #[test]
    fn record_with_valid_checksum_but_wrong_seq_is_corrupt_not_truncated() {
        let vfs = SimVfs::new();
        let specs = torn_specs();
        let ends = build(&vfs, &specs, NOTHING_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for (g, seq) in [(3, START + 5), (3, START + 3), (1, START + 3)] {
            let mut bad = bytes.clone();
            rewrite_group(&mut bad, &ends, g, &|r| put_u64(r, REC_SEQ_OFFSET, seq), true);
            let vfs = with_file(&jpath(), &bad);
            assert_eq!(corrupt_offset(scan(&vfs, true)), ends[g], "group {g} seq {seq}");
            // Without a valid checksum the same bytes are a torn tail (nothing synced).
            let mut torn = bytes.clone();
            rewrite_group(&mut torn, &ends, g, &|r| put_u64(r, REC_SEQ_OFFSET, seq), false);
            let vfs = with_file(&jpath(), &torn);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..g]);
        }
    }

    #[test]
    fn commit_count_mismatch_and_future_synced_with_valid_checksums_are_corrupt() {
        let vfs = SimVfs::new();
        let ends = build(&vfs, &torn_specs(), NOTHING_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let starts = record_starts(&bytes);
        let commit = starts[starts.len() - 1];
        let mut bad = bytes.clone();
        put_u32(&mut bad, commit as usize + REC_COUNT_OFFSET, 1);
        seal_record(&mut bad[commit as usize..commit as usize + 40], get_salt(&bytes));
        let vfs = with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs, true)), commit);
        let mut bad = bytes.clone();
        rewrite_group(&mut bad, &ends, 2, &|r| put_u64(r, REC_SYNCED_OFFSET, 1 << 40), true);
        let vfs = with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs, true)), ends[2]);
    }

    #[test]
    fn prezeroed_tail_is_a_clean_end_in_any_journal_but_not_inside_a_group() {
        let vfs = SimVfs::new();
        let specs = torn_specs();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let end = *ends.last().unwrap();
        let file_len = bytes(&vfs, &jpath()).len() as u64;
        assert!(file_len > end && file_len % TEST_PREZERO == 0, "{file_len} after {end}");
        for is_last in [true, false] {
            let s = scan(&vfs, is_last).unwrap();
            assert_groups(&vfs, &s, &specs);
            assert_eq!((s.valid_end, s.file_len), (end, file_len));
        }
        // The last COMMIT record zeroed (its PAGES present): an incomplete group.
        let mut bad = bytes(&vfs, &jpath());
        bad[(end - 40) as usize..end as usize].fill(0);
        let vfs2 = with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs2, false)), end - 40);
        assert_groups(&vfs2, &scan(&vfs2, true).unwrap(), &specs[..3]);
        // Resume keeps the zeros as its pre-zeroed space (no truncation) and writes the next
        // group over them; a zeroed tail inside a group is truncated (torn-tail tests).
        let s = scan(&vfs, true).unwrap();
        assert!(s.zero_tail);
        let mut w = JournalWriter::resume(&vfs, &s).unwrap();
        assert_eq!(bytes(&vfs, &jpath()).len() as u64, file_len);
        w.set_prezero_step(TEST_PREZERO);
        let mut ends2 = ends.clone();
        append(&mut w, &specs[..1], PREVIOUS_SYNCED, &mut ends2);
        assert!(bytes(&vfs, &jpath()).len() as u64 > *ends2.last().unwrap());
        assert!(bytes(&vfs, &jpath())[*ends2.last().unwrap() as usize..]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(scan(&vfs, false).unwrap().groups.len(), 5);
        // With the COMMIT record zeroed the zeros start inside a group: resume truncates.
        let s2 = scan(&vfs2, true).unwrap();
        assert!(!s2.zero_tail);
        JournalWriter::resume(&vfs2, &s2).unwrap();
        assert_eq!(bytes(&vfs2, &jpath()).len() as u64, s2.valid_end);
    }

    #[test]
    fn large_group_is_written_without_zeros_ahead_and_small_groups_still_prezero() {
        let vfs = SimVfs::new();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        w.set_prezero_step(TEST_PREZERO);
        let big = vec![7u8; PREZERO_MAX_GROUP];
        w.encode_group(START + 1, 1 << 30, FIRST_RECORD_OFFSET, &[(0, &big)]);
        let end = w.write_encoded().unwrap();
        assert_eq!(bytes(&vfs, &jpath()).len() as u64, end, "no zeros after a large group");
        let small = vec![9u8; P];
        w.encode_group(START + 2, 1 << 30, FIRST_RECORD_OFFSET, &[(0, &small)]);
        let end = w.write_encoded().unwrap();
        let len = bytes(&vfs, &jpath()).len() as u64;
        assert!(len > end && len % TEST_PREZERO == 0, "{len} after {end}");
        let s = scan(&vfs, true).unwrap();
        assert_eq!((s.groups.len(), s.valid_end), (2, end));
    }

    #[test]
    fn read_run_rejects_a_wrong_buffer_and_a_run_past_the_end() {
        let vfs = SimVfs::new();
        build(&vfs, &torn_specs(), PREVIOUS_SYNCED);
        let s = scan(&vfs, true).unwrap();
        let file = vfs.open(&jpath(), false).unwrap();
        let run = s.runs[0];
        let mut small = vec![0u8; run.len as usize - 1];
        let r = read_run(&*file, &jpath(), &run, &mut small);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        let past = PageRun {
            file_offset: s.file_len - 100,
            ..run
        };
        let mut buf = vec![0u8; run.len as usize];
        let r = read_run(&*file, &jpath(), &past, &mut buf);
        assert!(matches!(r, Err(Error::Corrupt { offset, .. }) if offset == s.file_len));
    }

    /// Replay reads payloads through a `RunReader` window: the same bytes as `read_run`, and
    /// a file that became shorter since the scan is damage named at its new end, not a panic.
    #[test]
    fn run_reader_gives_read_run_bytes_and_reports_a_shorter_file() {
        let vfs = SimVfs::new();
        build(&vfs, &torn_specs(), PREVIOUS_SYNCED);
        let s = scan(&vfs, true).unwrap();
        assert!(s.runs.len() > 2);
        let file = vfs.open(&jpath(), false).unwrap();
        let path = jpath();
        let mut reader = RunReader::new(&*file, &path).unwrap();
        for r in s.runs.iter() {
            let mut want = vec![0u8; r.len as usize];
            read_run(&*file, &jpath(), r, &mut want).unwrap();
            assert_eq!(reader.payload(r).unwrap(), &want[..]);
        }
        let last = *s.runs.last().unwrap();
        let short = last.file_offset + last.len / 2;
        file.set_len(short).unwrap();
        let mut reader = RunReader::new(&*file, &path).unwrap();
        assert!(reader.payload(&s.runs[0]).is_ok());
        let r = reader.payload(&last);
        assert!(
            matches!(r, Err(Error::Corrupt { offset, .. }) if offset == short),
            "{r:?}"
        );
    }
}
