//! Entry points for the fuzz targets in `fuzz/` (not part of the public API): thin wrappers
//! that hand arbitrary bytes to the internal decoders and the journal scanner, and return
//! what they decoded in plain types. No logic of their own beyond adapting types (the
//! scanner reads through the `Vfs` seam, so bytes are served by the simulated disk,
//! `io::SimVfs`, holding one file).
//!
//! # Invariants
//!
//! - Every function here is total: whatever the input, it returns (`Ok`/`Err`/`None`); a
//!   panic, a crash or a hang is a bug of the decoder it wraps.

use crate::disk::format::journal::{self as jf, RecordHeader};
use crate::disk::format::meta::{Meta, MetaError};
use crate::disk::format::snapshot::SnapHeader;
use crate::error::Error;
use crate::io::sim::SimVfs;
use std::path::Path;

/// A decoded journal file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalHeader {
    /// The heap it belongs to.
    pub heap_id: u64,
    /// The id in its file name.
    pub journal_id: u64,
    /// Sequence number of the state it starts from.
    pub start_seq: u64,
    /// Per-file salt of the record checksums.
    pub salt: u64,
}

/// Offset of the journal header checksum and length of the header.
pub const JOURNAL_HEADER_CRC_OFFSET: usize = jf::HEADER_CRC_OFFSET;
/// Length of a journal record header.
pub const RECORD_HEADER_LEN: usize = jf::RECORD_HEADER_LEN;
/// File offset of a journal's first record.
pub const FIRST_RECORD_OFFSET: u64 = jf::FIRST_RECORD_OFFSET;
/// Offset of the meta header checksum.
pub const META_CRC_OFFSET: usize = crate::disk::format::meta::CRC_OFFSET;
/// Offset of the root record checksum, and the record's length.
pub const ROOT_RECORD_CRC_OFFSET: usize = crate::disk::format::root::ROOT_CRC_OFFSET;
/// Length of a root record.
pub const ROOT_RECORD_LEN: usize = crate::disk::format::root::ROOT_RECORD_LEN;

/// A decoded root record (`format::root::RootRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootRecordFields {
    /// Address of the root.
    pub root: u64,
    /// Alignment of the root type.
    pub align: u64,
    /// The root type's name.
    pub type_name: String,
    /// The schema id.
    pub schema: String,
}

/// Decodes a root record (`format::root::RootRecord::decode`); on success also checks that
/// encoding the result gives back the input's first bytes.
pub fn root_record(b: &[u8]) -> Result<RootRecordFields, (u64, String)> {
    let r = crate::disk::format::root::RootRecord::decode(b).map_err(|(off, what)| (off as u64, what))?;
    assert_eq!(&r.encode()[..], &b[..ROOT_RECORD_LEN], "decode and encode disagree");
    Ok(RootRecordFields {
        root: r.root,
        align: r.align,
        type_name: r.type_name,
        schema: r.schema,
    })
}

/// Offset of the snapshot header checksum.
pub const SNAPSHOT_CRC_OFFSET: usize = crate::disk::format::snapshot::CRC_OFFSET;

/// Decodes a journal file header (`format::journal::decode_header`).
pub fn journal_header(b: &[u8]) -> Result<JournalHeader, String> {
    jf::decode_header(b)
        .map(|h| JournalHeader {
            heap_id: h.heap_id,
            journal_id: h.journal_id,
            start_seq: h.start_seq,
            salt: h.salt,
        })
        .map_err(|e| e.to_string())
}

/// Decodes a record header and checks its shape: `None` when `b` is shorter than a header,
/// otherwise the record's length on disk or why it is not a record.
pub fn record_shape(b: &[u8]) -> Option<Result<u64, &'static str>> {
    let h = RecordHeader::decode(b)?;
    Some(h.check_shape().map(|()| h.record_len()))
}

/// Computes and stores a record's checksum (`rec` = header and payload).
pub fn seal_record(rec: &mut [u8], salt: u64) {
    if rec.len() >= jf::RECORD_HEADER_LEN {
        jf::seal_record(rec, salt);
    }
}

/// Whether a record's stored checksum matches (`rec` = header and payload).
pub fn verify_record(rec: &[u8], salt: u64) -> bool {
    jf::verify_record_crc(rec, salt)
}

/// One complete commit group found by the scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its sequence number.
    pub seq: u64,
    /// The region extent at this commit.
    pub extent: u64,
    /// Its `PAGES` runs: `(file_offset, region_offset, len)`.
    pub runs: Vec<(u64, u64, u64)>,
    /// Its `DELTA` records: `(payload file offset, payload len, entries)`.
    pub deltas: Vec<(u64, u64, u32)>,
}

/// What the scanner made of a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalScan {
    /// The file header.
    pub header: JournalHeader,
    /// Complete groups, in order.
    pub groups: Vec<Group>,
    /// End of the last complete group.
    pub valid_end: u64,
    /// The file's length.
    pub file_len: u64,
}

/// Scans `bytes` as journal `journal_id` of heap `heap_id` (`journal::scan_journal`).
pub fn scan_journal(bytes: &[u8], heap_id: u64, journal_id: u64, is_last: bool) -> Result<JournalScan, Error> {
    let vfs = SimVfs::new();
    vfs.write_file(Path::new("journal"), bytes);
    let s = crate::disk::journal::scan_journal(&vfs, Path::new("journal"), heap_id, journal_id, is_last)?;
    Ok(JournalScan {
        header: JournalHeader {
            heap_id: s.header.heap_id,
            journal_id: s.header.journal_id,
            start_seq: s.header.start_seq,
            salt: s.header.salt,
        },
        groups: s
            .groups
            .iter()
            .map(|g| Group {
                seq: g.seq,
                extent: g.extent,
                runs: s.runs[g.runs.clone()]
                    .iter()
                    .filter(|r| r.delta_entries.is_none())
                    .map(|r| (r.file_offset, r.region_offset, r.len))
                    .collect(),
                deltas: s.runs[g.runs.clone()]
                    .iter()
                    .filter_map(|r| r.delta_entries.map(|n| (r.file_offset, r.len, n)))
                    .collect(),
            })
            .collect(),
        valid_end: s.valid_end,
        file_len: s.file_len,
    })
}

/// The fields of a decoded meta header that the fuzz targets check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaFields {
    /// Heap id.
    pub heap_id: u64,
    /// Region base.
    pub base: u64,
    /// Region size.
    pub max_size: u64,
    /// Root type name.
    pub root_type_name: String,
    /// Schema id.
    pub schema: String,
}

/// Decodes a meta header (`format::meta::Meta::decode`); `Err` names the offset.
pub fn meta(b: &[u8]) -> Result<MetaFields, (u64, String)> {
    match Meta::decode(b) {
        Ok(m) => Ok(MetaFields {
            heap_id: m.heap_id,
            base: m.base,
            max_size: m.max_size,
            root_type_name: m.root_type_name,
            schema: m.schema,
        }),
        Err(MetaError::Corrupt(off, what)) => Err((off, what)),
        Err(MetaError::Version(v)) => Err((crate::disk::format::meta::VERSION_OFFSET as u64, format!("version {v}"))),
    }
}

/// A decoded snapshot header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// State is `VALD`.
    pub valid: bool,
    /// Generation.
    pub generation: u64,
    /// Commit the image holds.
    pub seq: u64,
    /// First journal to replay.
    pub journal_id: u64,
    /// Bytes of region data.
    pub extent: u64,
    /// Dirty bitmap length.
    pub dirty_len: u64,
    /// File length the header requires.
    pub file_len: u64,
}

/// Decodes a snapshot header (`format::snapshot::SnapHeader::decode`).
pub fn snapshot_header(b: &[u8], heap_id: u64, max_size: u64) -> Result<SnapshotHeader, (u64, String)> {
    SnapHeader::decode(b, heap_id, max_size).map(|h| SnapshotHeader {
        valid: h.valid,
        generation: h.generation,
        seq: h.seq,
        journal_id: h.journal_id,
        extent: h.extent,
        dirty_len: h.dirty_len,
        file_len: h.file_len(),
    })
}

/// Offsets of a `DELTA` entry's fields (`disk::format::delta`), for the corruption tests.
pub mod delta_offsets {
    use crate::disk::format::delta as d;
    /// `kind` of a `DELTA` record.
    pub const KIND_DELTA: u16 = crate::disk::format::journal::KIND_DELTA;
    /// Offset of an entry's `page`.
    pub const ENTRY_PAGE_OFFSET: usize = d::ENTRY_PAGE_OFFSET;
    /// Offset of an entry's `post_crc`.
    pub const ENTRY_CRC_OFFSET: usize = d::ENTRY_CRC_OFFSET;
    /// Offset of an entry's `runs`.
    pub const ENTRY_RUNS_OFFSET: usize = d::ENTRY_RUNS_OFFSET;
    /// Offset of an entry's `words`.
    pub const ENTRY_WORDS_OFFSET: usize = d::ENTRY_WORDS_OFFSET;
    /// Length of an entry header (the run table follows).
    pub const ENTRY_HEADER_LEN: usize = d::ENTRY_HEADER_LEN;
    /// Length of a run descriptor.
    pub const RUN_DESC_LEN: usize = d::RUN_DESC_LEN;

    /// Length of an entry with `runs` runs over `words` words.
    pub fn entry_len(runs: usize, words: usize) -> usize {
        d::entry_len(runs, words)
    }
}

/// An applied `DELTA` entry: `(page, payload offset, length)`.
pub type DeltaEntry = (u64, usize, usize);

/// Validates a `DELTA` payload of `count` entries and applies each entry in turn to `page`
/// (every entry to the same buffer: the targets check totality, not meaning). Returns each
/// entry's `(page, payload offset, length)`, or the first error's payload offset and message.
pub fn delta_apply(payload: &[u8], count: u32, page: &mut [u8; 4096]) -> Result<Vec<DeltaEntry>, (usize, String)> {
    let mut out = Vec::new();
    for e in crate::disk::format::delta::Entries::new(payload, count) {
        let e = e.map_err(|e| (e.offset, e.to_string()))?;
        crate::disk::format::delta::apply_entry(&e, page).map_err(|e| (e.offset, e.to_string()))?;
        out.push((e.page, e.at, e.len()));
    }
    Ok(out)
}

/// Validates a `DELTA` payload of `count` entries without applying it (what the scanner
/// checks); `Err` names the payload offset.
pub fn delta_check(payload: &[u8], count: u32) -> Result<(), (usize, String)> {
    for e in crate::disk::format::delta::Entries::new(payload, count) {
        e.map_err(|e| (e.offset, e.to_string()))?;
    }
    Ok(())
}

/// What [`delta_encode`] made of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaEncoded {
    /// Equal to its base: nothing to journal.
    Same,
    /// Journaled whole.
    Full,
    /// One `DELTA` entry (a whole payload of count 1).
    Delta(Vec<u8>),
}

fn words(b: &[u8; 4096]) -> Box<[u64; 512]> {
    let mut w = Box::new([0u64; 512]);
    for (d, s) in w.iter_mut().zip(b.chunks_exact(8)) {
        *d = u64::from_le_bytes(s.try_into().unwrap_or([0; 8]));
    }
    w
}

/// Diffs `new` against `base` and encodes the entry the commit path would write for page
/// offset `page` (a multiple of 4096).
pub fn delta_encode(page: u64, new: &[u8; 4096], base: &[u8; 4096]) -> DeltaEncoded {
    use crate::disk::format::delta as d;
    use crate::engine::page_diff::{diff_page, Diff, Runs};
    let mut runs = Runs::new();
    match diff_page(&words(new), &words(base), d::MAX_USEFUL_ENTRY_LEN, &mut runs) {
        Diff::Same => DeltaEncoded::Same,
        Diff::Full => DeltaEncoded::Full,
        Diff::Delta => {
            let mut out = vec![0u8; d::entry_len(runs.len(), runs.words())];
            if d::encode_entry(&mut out, page, d::page_crc(new), runs.as_slice(), new) {
                DeltaEncoded::Delta(out)
            } else {
                DeltaEncoded::Full
            }
        }
    }
}

/// Whether byte `i` of the page lies in one of the runs of the one-entry payload `payload`.
pub fn delta_covers(payload: &[u8], i: usize) -> bool {
    match crate::disk::format::delta::Entries::new(payload, 1).next() {
        Some(Ok(e)) => (0..e.run_count()).any(|k| {
            let r = e.run(k);
            (usize::from(r.start) * 8..r.end() * 8).contains(&i)
        }),
        _ => false,
    }
}

/// The commit path's word differ on two pages: `(0 same | 1 delta | 2 whole, runs)` (for the
/// differ benchmark, `examples/diff_cost.rs`).
pub fn diff_words(new: &[u64; 512], base: &[u64; 512]) -> (u8, usize) {
    use crate::engine::page_diff::{diff_page, Diff, Runs};
    let mut runs = Runs::new();
    let d = diff_page(new, base, crate::disk::format::delta::MAX_USEFUL_ENTRY_LEN, &mut runs);
    (
        match d {
            Diff::Same => 0,
            Diff::Delta => 1,
            Diff::Full => 2,
        },
        runs.len(),
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_root_record_seed_decodes() {
        let seed = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/corpus/root_record/valid-record"
        ))
        .unwrap();
        let r = root_record(&seed[1..]).unwrap();
        assert_eq!((r.type_name.as_str(), r.schema.as_str()), ("app::v2::State", "app-v2"));
        let mut damaged = seed[1..].to_vec();
        damaged[70] ^= 1;
        assert!(root_record(&damaged).is_err());
    }

    use super::*;

    #[test]
    fn fuzzing_wrappers_reject_garbage_without_panicking() {
        let junk: Vec<u8> = (0..10_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in [0, 1, 39, 40, 64, 128, 511, 512, 4096, 4097, 10_000] {
            let b = &junk[..len];
            assert!(journal_header(b).is_err());
            assert!(meta(b).is_err());
            assert!(snapshot_header(b, 1, 1 << 30).is_err());
            assert!(scan_journal(b, 1, 1, true).is_err());
            let _ = record_shape(b);
        }
    }

    #[test]
    fn a_sealed_record_verifies_and_scans() {
        let h = jf::JournalHeader {
            heap_id: 9,
            journal_id: 1,
            start_seq: 0,
            salt: 77,
            version: jf::VERSION,
        };
        let mut file = vec![0u8; jf::HEADER_AREA_LEN];
        file[..jf::HEADER_LEN].copy_from_slice(&jf::encode_header(&h));
        let mut rec = [0u8; RECORD_HEADER_LEN];
        RecordHeader {
            crc: 0,
            kind: jf::KIND_COMMIT,
            flags: 0,
            len: 0,
            count: 0,
            seq: 1,
            arg: 4 << 20,
            synced: 0,
        }
        .encode(&mut rec);
        seal_record(&mut rec, 77);
        assert!(verify_record(&rec, 77));
        assert_eq!(record_shape(&rec), Some(Ok(RECORD_HEADER_LEN as u64)));
        file.extend_from_slice(&rec);
        let s = scan_journal(&file, 9, 1, true).unwrap();
        assert_eq!(s.header.salt, 77);
        assert_eq!(s.groups.len(), 1);
        assert_eq!((s.groups[0].seq, s.groups[0].extent), (1, 4 << 20));
        assert_eq!(s.valid_end, file.len() as u64);
    }
}

/// The fields of a decoded wire group (`format::wire::decode_group`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireGroupFields {
    /// Heap id.
    pub heap_id: u64,
    /// Sequence number.
    pub seq: u64,
    /// Chain hash before the group.
    pub prev_chain: u64,
    /// Chain hash after the group.
    pub chain: u64,
    /// Region extent at the commit.
    pub extent: u64,
    /// Payload length.
    pub payload_len: usize,
    /// `(payload offset, payload length)` of each `PAGES` / `DELTA` record.
    pub records: Vec<(usize, usize)>,
}

/// Decodes and validates a wire group; `Err` names the offset.
pub fn wire_group(b: &[u8]) -> Result<WireGroupFields, (u64, String)> {
    let v = crate::disk::format::wire::decode_group(b).map_err(|e| (e.offset, e.what))?;
    Ok(WireGroupFields {
        heap_id: v.heap_id,
        seq: v.seq,
        prev_chain: v.prev_chain,
        chain: v.chain,
        extent: v.extent,
        payload_len: v.payload.len(),
        records: v.records.iter().map(|r| (r.payload_at, r.len)).collect(),
    })
}

/// Encodes a wire group from records (any bytes: the encoder zeroes `crc`/`synced` of what
/// parses as records); returns the bytes and the chain hash.
pub fn wire_group_encode(heap_id: u64, seq: u64, prev_chain: u64, records: &[u8]) -> (Vec<u8>, u64) {
    crate::disk::format::wire::encode_group(heap_id, seq, prev_chain, records)
}

/// A decoded base: `(heap_id, seq, chain, meta length, snapshot length)`.
pub type WireBaseFields = (u64, u64, u64, usize, usize);

/// Decodes a base.
pub fn wire_base(b: &[u8]) -> Result<WireBaseFields, (u64, String)> {
    let v = crate::disk::format::wire::decode_base(b).map_err(|e| (e.offset, e.what))?;
    Ok((v.heap_id, v.seq, v.chain, v.meta.len(), v.snapshot.len()))
}

/// Encodes a base.
pub fn wire_base_encode(heap_id: u64, seq: u64, chain: u64, meta: &[u8], snapshot: &[u8]) -> Vec<u8> {
    crate::disk::format::wire::encode_base(heap_id, seq, chain, meta, snapshot)
}
