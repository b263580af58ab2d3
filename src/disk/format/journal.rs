//! The commit journal's byte layout: the file header and the record header, their checksums
//! and the checks that need no context beyond one record. See `docs/design.md ("Journal files")`
//! (merged into `docs/design.md`) for the diagrams; every offset there is a constant here.
//!
//! A journal file is a 4096-byte header area followed by records. A commit *group* is zero
//! or more `PAGES` records followed by one `COMMIT` record, all carrying the group's `seq`.
//!
//! # Invariants
//!
//! - Records start at 8-aligned offsets `>= FIRST_RECORD_OFFSET` and are
//!   `record_len(len) = align8(RECORD_HEADER_LEN + len)` bytes long.
//! - `PAGES`: `1 <= count <= MAX_PAGES_PER_RECORD`, `len == count * PAGE_SIZE`,
//!   `arg % PAGE_SIZE == 0`, `arg + len <= u64::MAX`. `DELTA` (version 2): `len % 8 == 0`,
//!   `MIN_ENTRY_LEN <= len <= MAX_PAGES_PAYLOAD`, `1 <= count <= len / MIN_ENTRY_LEN`, `arg == 0`;
//!   its payload is checked by [`super::delta`]. `COMMIT`: `len == 0`, `count` = number of
//!   `PAGES` and `DELTA` records of the group, `arg` = region extent.
//! - `crc == crc32(salt.to_le_bytes() ++ record[4 .. RECORD_HEADER_LEN + len])`.
//! - `synced <= ` the record's own offset (a record never claims durability past itself).

use super::delta::MIN_ENTRY_LEN;
use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use std::fmt;

/// Bytes 0..8 of every journal file.
pub(crate) const MAGIC: [u8; 8] = *b"SNAPJRNL";
/// The format version this code writes: 2, which may hold `DELTA` records.
pub(crate) const VERSION: u32 = 2;
/// The oldest format version this code reads (1: `PAGES` and `COMMIT` records only).
pub(crate) const MIN_READ_VERSION: u32 = 1;
/// The first version that may hold `DELTA` records.
pub(crate) const DELTA_VERSION: u32 = 2;

// File header, chained offsets (see the diagram in docs/design.md ("Journal files")).
/// Offset of `magic` (`[u8; 8]`).
pub(crate) const MAGIC_OFFSET: usize = 0;
/// Offset of `version` (`u32`).
pub(crate) const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
/// Offset of `hdr_len` (`u32`, always [`HEADER_LEN`]).
pub(crate) const HDR_LEN_OFFSET: usize = VERSION_OFFSET + 4;
/// Offset of `heap_id` (`u64`).
pub(crate) const HEAP_ID_OFFSET: usize = HDR_LEN_OFFSET + 4;
/// Offset of `journal_id` (`u64`).
pub(crate) const JOURNAL_ID_OFFSET: usize = HEAP_ID_OFFSET + 8;
/// Offset of `start_seq` (`u64`).
pub(crate) const START_SEQ_OFFSET: usize = JOURNAL_ID_OFFSET + 8;
/// Offset of `salt` (`u64`).
pub(crate) const SALT_OFFSET: usize = START_SEQ_OFFSET + 8;
/// Offset of the reserved bytes (`[u8; RESERVED_LEN]`, zero).
pub(crate) const RESERVED_OFFSET: usize = SALT_OFFSET + 8;
/// Length of the reserved bytes.
pub(crate) const RESERVED_LEN: usize = 12;
/// Offset of the header checksum (`u32`, crc32 of bytes `0..HEADER_CRC_OFFSET`).
pub(crate) const HEADER_CRC_OFFSET: usize = RESERVED_OFFSET + RESERVED_LEN;
/// Length of the file header proper.
pub(crate) const HEADER_LEN: usize = HEADER_CRC_OFFSET + 4;
/// Length of the header area; bytes `HEADER_LEN..HEADER_AREA_LEN` are zero.
pub(crate) const HEADER_AREA_LEN: usize = 4096;
/// Offset of the first record.
pub(crate) const FIRST_RECORD_OFFSET: u64 = HEADER_AREA_LEN as u64;

// Record header, chained offsets.
/// Offset of the record `crc` (`u32`).
pub(crate) const REC_CRC_OFFSET: usize = 0;
/// Offset of `kind` (`u16`).
pub(crate) const REC_KIND_OFFSET: usize = REC_CRC_OFFSET + 4;
/// Offset of `flags` (`u16`, zero).
pub(crate) const REC_FLAGS_OFFSET: usize = REC_KIND_OFFSET + 2;
/// Offset of `len` (`u32`, payload bytes).
pub(crate) const REC_LEN_OFFSET: usize = REC_FLAGS_OFFSET + 2;
/// Offset of `count` (`u32`).
pub(crate) const REC_COUNT_OFFSET: usize = REC_LEN_OFFSET + 4;
/// Offset of `seq` (`u64`).
pub(crate) const REC_SEQ_OFFSET: usize = REC_COUNT_OFFSET + 4;
/// Offset of `arg` (`u64`).
pub(crate) const REC_ARG_OFFSET: usize = REC_SEQ_OFFSET + 8;
/// Offset of `synced` (`u64`).
pub(crate) const REC_SYNCED_OFFSET: usize = REC_ARG_OFFSET + 8;
/// Length of a record header; the payload follows.
pub(crate) const RECORD_HEADER_LEN: usize = REC_SYNCED_OFFSET + 8;
/// Records start at multiples of this.
pub(crate) const RECORD_ALIGN: u64 = 8;

/// `kind` of a record carrying page images.
pub(crate) const KIND_PAGES: u16 = 1;
/// `kind` of the record that closes a group.
pub(crate) const KIND_COMMIT: u16 = 2;
/// `kind` of a record carrying page deltas (format version 2; payload in [`super::delta`]).
pub(crate) const KIND_DELTA: u16 = 3;
/// Size of one journaled page.
pub(crate) const PAGE_SIZE: u64 = 4096;
/// Largest payload of one `PAGES` record.
pub(crate) const MAX_PAGES_PAYLOAD: u32 = 1 << 20;
/// Largest `count` of one `PAGES` record.
pub(crate) const MAX_PAGES_PER_RECORD: u32 = MAX_PAGES_PAYLOAD / PAGE_SIZE as u32;
/// Largest record on disk.
pub(crate) const MAX_RECORD_LEN: u64 = RECORD_HEADER_LEN as u64 + MAX_PAGES_PAYLOAD as u64;

/// The decoded file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JournalHeader {
    /// Random id of the heap the journal belongs to.
    pub heap_id: u64,
    /// The number in the file name.
    pub journal_id: u64,
    /// Commit sequence number of the state the journal starts from.
    pub start_seq: u64,
    /// Random per file, mixed into every record checksum.
    pub salt: u64,
    /// The format version ([`MIN_READ_VERSION`]..=[`VERSION`]).
    pub version: u32,
}

/// Why a file header was rejected. [`HeaderError::offset`] names the bad field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes were given.
    Short {
        /// How many bytes there were.
        len: usize,
    },
    /// `magic` is not [`MAGIC`].
    BadMagic,
    /// `version` is outside [`MIN_READ_VERSION`]..=[`VERSION`].
    UnsupportedVersion(u32),
    /// `hdr_len` is not [`HEADER_LEN`].
    BadHeaderLen(u32),
    /// The header checksum does not match.
    BadChecksum {
        /// The stored value.
        stored: u32,
        /// The value computed over bytes `0..HEADER_CRC_OFFSET`.
        computed: u32,
    },
    /// A reserved byte is not zero.
    ReservedNotZero,
}

impl HeaderError {
    /// File offset of the field that is wrong.
    pub(crate) fn offset(&self) -> u64 {
        (match self {
            HeaderError::Short { len } => *len,
            HeaderError::BadMagic => MAGIC_OFFSET,
            HeaderError::UnsupportedVersion(_) => VERSION_OFFSET,
            HeaderError::BadHeaderLen(_) => HDR_LEN_OFFSET,
            HeaderError::BadChecksum { .. } => HEADER_CRC_OFFSET,
            HeaderError::ReservedNotZero => RESERVED_OFFSET,
        }) as u64
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeaderError::Short { len } => {
                write!(
                    f,
                    "file is {len} bytes, shorter than the {HEADER_LEN}-byte journal header"
                )
            }
            HeaderError::BadMagic => write!(f, "not a snapheap journal (bad magic)"),
            HeaderError::UnsupportedVersion(v) => {
                write!(
                    f,
                    "journal format version {v}, this build reads versions {MIN_READ_VERSION} to {VERSION}"
                )
            }
            HeaderError::BadHeaderLen(n) => write!(f, "header length {n}, expected {HEADER_LEN}"),
            HeaderError::BadChecksum { stored, computed } => write!(
                f,
                "header checksum {stored:#010x} does not match the computed {computed:#010x}"
            ),
            HeaderError::ReservedNotZero => write!(f, "reserved header bytes are not zero"),
        }
    }
}

/// Encodes the file header (the first [`HEADER_LEN`] bytes of the header area).
pub(crate) fn encode_header(h: &JournalHeader) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    b[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&MAGIC);
    put_u32(&mut b, VERSION_OFFSET, h.version);
    put_u32(&mut b, HDR_LEN_OFFSET, HEADER_LEN as u32);
    put_u64(&mut b, HEAP_ID_OFFSET, h.heap_id);
    put_u64(&mut b, JOURNAL_ID_OFFSET, h.journal_id);
    put_u64(&mut b, START_SEQ_OFFSET, h.start_seq);
    put_u64(&mut b, SALT_OFFSET, h.salt);
    let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
    put_u32(&mut b, HEADER_CRC_OFFSET, crc);
    b
}

/// Decodes and checks a file header: magic, then version (so that a future layout is
/// reported as a version mismatch rather than as damage), `hdr_len`, checksum, reserved bytes.
/// Ids are compared by the caller, which knows what to expect.
pub(crate) fn decode_header(b: &[u8]) -> Result<JournalHeader, HeaderError> {
    let Some(b) = b.get(..HEADER_LEN) else {
        return Err(HeaderError::Short { len: b.len() });
    };
    let field64 = |off| get_u64(b, off);
    let field32 = |off| get_u32(b, off);
    if b[MAGIC_OFFSET..MAGIC_OFFSET + 8] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let version = field32(VERSION_OFFSET);
    if !(MIN_READ_VERSION..=VERSION).contains(&version) {
        return Err(HeaderError::UnsupportedVersion(version));
    }
    let hdr_len = field32(HDR_LEN_OFFSET);
    if hdr_len != HEADER_LEN as u32 {
        return Err(HeaderError::BadHeaderLen(hdr_len));
    }
    let stored = field32(HEADER_CRC_OFFSET);
    let computed = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
    if stored != computed {
        return Err(HeaderError::BadChecksum { stored, computed });
    }
    if b[RESERVED_OFFSET..RESERVED_OFFSET + RESERVED_LEN]
        .iter()
        .any(|&x| x != 0)
    {
        return Err(HeaderError::ReservedNotZero);
    }
    Ok(JournalHeader {
        heap_id: field64(HEAP_ID_OFFSET),
        journal_id: field64(JOURNAL_ID_OFFSET),
        start_seq: field64(START_SEQ_OFFSET),
        salt: field64(SALT_OFFSET),
        version,
    })
}

/// A decoded record header. Decoding checks nothing; see [`RecordHeader::check_shape`],
/// [`verify_record_crc`] and [`RecordHeader::check_context`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Stored checksum.
    pub crc: u32,
    /// [`KIND_PAGES`], [`KIND_DELTA`] or [`KIND_COMMIT`].
    pub kind: u16,
    /// Zero.
    pub flags: u16,
    /// Payload length in bytes.
    pub len: u32,
    /// `PAGES`: pages in the payload; `DELTA`: entries in the payload; `COMMIT`: `PAGES` and
    /// `DELTA` records in the group.
    pub count: u32,
    /// Commit sequence number of the group.
    pub seq: u64,
    /// `PAGES`: region offset of the first page; `DELTA`: 0; `COMMIT`: region extent.
    pub arg: u64,
    /// A file offset that was durable when the record was written.
    pub synced: u64,
}

impl RecordHeader {
    /// Decodes the first [`RECORD_HEADER_LEN`] bytes of `b`; `None` when `b` is shorter.
    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < RECORD_HEADER_LEN {
            return None;
        }
        Some(RecordHeader {
            crc: get_u32(b, REC_CRC_OFFSET),
            kind: get_u16(b, REC_KIND_OFFSET),
            flags: get_u16(b, REC_FLAGS_OFFSET),
            len: get_u32(b, REC_LEN_OFFSET),
            count: get_u32(b, REC_COUNT_OFFSET),
            seq: get_u64(b, REC_SEQ_OFFSET),
            arg: get_u64(b, REC_ARG_OFFSET),
            synced: get_u64(b, REC_SYNCED_OFFSET),
        })
    }

    /// Writes every field into `out[..RECORD_HEADER_LEN]` (the checksum as stored in
    /// `self.crc`; see [`seal_record`] to compute it).
    pub(crate) fn encode(&self, out: &mut [u8]) {
        put_u32(out, REC_CRC_OFFSET, self.crc);
        put_u16(out, REC_KIND_OFFSET, self.kind);
        put_u16(out, REC_FLAGS_OFFSET, self.flags);
        put_u32(out, REC_LEN_OFFSET, self.len);
        put_u32(out, REC_COUNT_OFFSET, self.count);
        put_u64(out, REC_SEQ_OFFSET, self.seq);
        put_u64(out, REC_ARG_OFFSET, self.arg);
        put_u64(out, REC_SYNCED_OFFSET, self.synced);
    }

    /// Length of the whole record on disk: header, payload, padding to [`RECORD_ALIGN`].
    pub(crate) fn record_len(&self) -> u64 {
        record_len(self.len)
    }

    /// The checks that need only the header: kind known, flags zero, `len` within limits
    /// and consistent with kind and count. A record failing them is not a record.
    pub(crate) fn check_shape(&self) -> Result<(), &'static str> {
        if self.flags != 0 {
            return Err("record flags are not zero");
        }
        match self.kind {
            KIND_PAGES => {
                if self.count == 0 || self.count > MAX_PAGES_PER_RECORD {
                    Err("page count of a PAGES record out of range")
                } else if u64::from(self.len) != u64::from(self.count) * PAGE_SIZE {
                    Err("PAGES record length is not its page count times the page size")
                } else {
                    Ok(())
                }
            }
            KIND_DELTA => {
                let len = self.len as usize;
                if len % 8 != 0 || len < MIN_ENTRY_LEN || self.len > MAX_PAGES_PAYLOAD {
                    Err("DELTA record length out of range or not a multiple of 8")
                } else if self.count == 0 || self.count as usize > len / MIN_ENTRY_LEN {
                    Err("entry count of a DELTA record out of range")
                } else if self.arg != 0 {
                    Err("DELTA record arg is not zero")
                } else {
                    Ok(())
                }
            }
            KIND_COMMIT if self.len != 0 => Err("COMMIT record has a payload"),
            KIND_COMMIT => Ok(()),
            _ => Err("unknown record kind"),
        }
    }

    /// The checks of a record whose checksum verified, against its position: `at` is its
    /// file offset and `expected_seq` the sequence number of the group being read. A record
    /// that passes [`Self::check_shape`] and its checksum but fails these was written
    /// wrongly or placed wrongly; it is never the product of a torn write.
    pub(crate) fn check_context(&self, at: u64, expected_seq: u64) -> Result<(), ContextError> {
        if self.seq != expected_seq {
            return Err(ContextError::Seq {
                expected: expected_seq,
                found: self.seq,
            });
        }
        if self.synced > at {
            return Err(ContextError::SyncedBeyondRecord { synced: self.synced });
        }
        if self.kind == KIND_PAGES {
            if self.arg % PAGE_SIZE != 0 {
                return Err(ContextError::UnalignedPages {
                    region_offset: self.arg,
                });
            }
            if self.arg.checked_add(u64::from(self.len)).is_none() {
                return Err(ContextError::PagesOverflow {
                    region_offset: self.arg,
                });
            }
        }
        Ok(())
    }
}

/// Why a record with a valid checksum does not fit where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextError {
    /// The record's `seq` is not the group's.
    Seq {
        /// The sequence number of the group being read.
        expected: u64,
        /// The record's.
        found: u64,
    },
    /// `synced` is past the record's own offset.
    SyncedBeyondRecord {
        /// The stored value.
        synced: u64,
    },
    /// A `PAGES` record's region offset is not page-aligned.
    UnalignedPages {
        /// The stored value.
        region_offset: u64,
    },
    /// A `PAGES` record's region range overflows `u64`.
    PagesOverflow {
        /// The stored value.
        region_offset: u64,
    },
}

impl fmt::Display for ContextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContextError::Seq { expected, found } => write!(
                f,
                "record has a valid checksum but sequence number {found} where {expected} was expected"
            ),
            ContextError::SyncedBeyondRecord { synced } => {
                write!(f, "record claims offset {synced}, past itself, was already durable")
            }
            ContextError::UnalignedPages { region_offset } => {
                write!(f, "PAGES record at region offset {region_offset:#x}, not page-aligned")
            }
            ContextError::PagesOverflow { region_offset } => {
                write!(f, "PAGES record at region offset {region_offset:#x} overflows")
            }
        }
    }
}

/// `align8(RECORD_HEADER_LEN + len)`.
#[inline]
pub(crate) fn record_len(len: u32) -> u64 {
    let raw = RECORD_HEADER_LEN as u64 + u64::from(len);
    raw.next_multiple_of(RECORD_ALIGN)
}

/// The record checksum: crc32 of `salt` (8 bytes little-endian) followed by `body`, which is
/// the record from byte [`REC_KIND_OFFSET`] to the end of the payload.
#[inline]
pub(crate) fn record_crc(salt: u64, body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&salt.to_le_bytes());
    h.update(body);
    h.finalize()
}

/// Computes the checksum of `rec` (header and payload, `RECORD_HEADER_LEN + len` bytes)
/// and stores it in the header.
pub(crate) fn seal_record(rec: &mut [u8], salt: u64) {
    debug_assert!(rec.len() >= RECORD_HEADER_LEN);
    let crc = record_crc(salt, rec.get(REC_KIND_OFFSET..).unwrap_or(&[]));
    put_u32(rec, REC_CRC_OFFSET, crc);
}

/// Whether the checksum stored in `rec` matches. `rec` must hold exactly the header and the
/// payload (`RECORD_HEADER_LEN + len` bytes); a shorter slice never verifies.
pub(crate) fn verify_record_crc(rec: &[u8], salt: u64) -> bool {
    match rec.get(REC_KIND_OFFSET..) {
        Some(body) if rec.len() >= RECORD_HEADER_LEN => get_u32(rec, REC_CRC_OFFSET) == record_crc(salt, body),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> JournalHeader {
        JournalHeader {
            heap_id: 0x1122_3344,
            journal_id: 7,
            start_seq: 41,
            salt: 0xdead_beef,
            version: VERSION,
        }
    }

    #[test]
    fn header_offsets_match_the_documented_layout() {
        assert_eq!(
            [
                VERSION_OFFSET,
                HDR_LEN_OFFSET,
                HEAP_ID_OFFSET,
                JOURNAL_ID_OFFSET,
                START_SEQ_OFFSET
            ],
            [8, 12, 16, 24, 32]
        );
        assert_eq!(
            [SALT_OFFSET, RESERVED_OFFSET, HEADER_CRC_OFFSET, HEADER_LEN],
            [40, 48, 60, 64]
        );
        assert_eq!(
            [
                REC_KIND_OFFSET,
                REC_FLAGS_OFFSET,
                REC_LEN_OFFSET,
                REC_COUNT_OFFSET,
                REC_SEQ_OFFSET
            ],
            [4, 6, 8, 12, 16]
        );
        assert_eq!([REC_ARG_OFFSET, REC_SYNCED_OFFSET, RECORD_HEADER_LEN], [24, 32, 40]);
        assert_eq!(MAX_PAGES_PER_RECORD, 256);
    }

    #[test]
    fn header_round_trips() {
        let b = encode_header(&header());
        assert_eq!(&b[..8], b"SNAPJRNL");
        assert_eq!(decode_header(&b), Ok(header()));
    }

    #[test]
    fn every_flipped_header_byte_is_rejected_with_the_field_offset() {
        let good = encode_header(&header());
        for i in 0..HEADER_LEN {
            let mut b = good;
            b[i] ^= 0x01;
            let err = decode_header(&b).expect_err("a flipped header byte must be rejected");
            let expected = match i {
                0..8 => MAGIC_OFFSET,
                8..12 => VERSION_OFFSET,
                12..16 => HDR_LEN_OFFSET,
                _ => HEADER_CRC_OFFSET,
            };
            assert_eq!(err.offset(), expected as u64, "byte {i}: {err}");
        }
    }

    #[test]
    fn short_header_is_rejected_without_panicking() {
        let b = encode_header(&header());
        for n in 0..HEADER_LEN {
            assert_eq!(decode_header(&b[..n]), Err(HeaderError::Short { len: n }));
        }
    }

    #[test]
    fn nonzero_reserved_bytes_with_valid_crc_are_rejected() {
        let mut b = encode_header(&header());
        b[RESERVED_OFFSET + 3] = 1;
        let crc = crc32fast::hash(&b[..HEADER_CRC_OFFSET]);
        put_u32(&mut b, HEADER_CRC_OFFSET, crc);
        assert_eq!(decode_header(&b), Err(HeaderError::ReservedNotZero));
    }

    fn pages(count: u32) -> RecordHeader {
        RecordHeader {
            crc: 0,
            kind: KIND_PAGES,
            flags: 0,
            len: count * PAGE_SIZE as u32,
            count,
            seq: 5,
            arg: 3 * PAGE_SIZE,
            synced: 4096,
        }
    }

    #[test]
    fn record_header_round_trips_and_seals() {
        let h = pages(1);
        let mut rec = vec![0xa5u8; RECORD_HEADER_LEN + PAGE_SIZE as usize];
        h.encode(&mut rec);
        seal_record(&mut rec, 99);
        assert!(verify_record_crc(&rec, 99));
        assert!(!verify_record_crc(&rec, 98), "another file's salt must not verify");
        let d = RecordHeader::decode(&rec).unwrap();
        assert_eq!(RecordHeader { crc: d.crc, ..h }, d);
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x80;
            assert!(!verify_record_crc(&bad, 99), "flip at {i} verified");
        }
        assert!(!verify_record_crc(&rec[..RECORD_HEADER_LEN - 1], 99));
        assert_eq!(RecordHeader::decode(&rec[..RECORD_HEADER_LEN - 1]), None);
    }

    #[test]
    fn shape_check_enforces_kind_flags_and_length_rules() {
        assert_eq!(pages(1).check_shape(), Ok(()));
        assert_eq!(pages(MAX_PAGES_PER_RECORD).check_shape(), Ok(()));
        assert!(pages(0).check_shape().is_err());
        assert!(pages(MAX_PAGES_PER_RECORD + 1).check_shape().is_err());
        assert!(RecordHeader { len: 4095, ..pages(1) }.check_shape().is_err());
        assert!(RecordHeader { flags: 1, ..pages(1) }.check_shape().is_err());
        assert!(RecordHeader { kind: 3, ..pages(1) }.check_shape().is_err());
        let commit = RecordHeader {
            kind: KIND_COMMIT,
            len: 0,
            count: 9,
            ..pages(1)
        };
        assert_eq!(commit.check_shape(), Ok(()));
        assert!(RecordHeader { len: 8, ..commit }.check_shape().is_err());
        assert_eq!(record_len(0), 40);
        assert_eq!(record_len(4096), 4136);
        assert_eq!(record_len(1), 48);
    }

    #[test]
    fn context_check_rejects_wrong_seq_future_synced_and_unaligned_pages() {
        let h = pages(1);
        assert_eq!(h.check_context(8192, 5), Ok(()));
        assert!(matches!(
            h.check_context(8192, 6),
            Err(ContextError::Seq { expected: 6, found: 5 })
        ));
        assert!(matches!(
            h.check_context(4000, 5),
            Err(ContextError::SyncedBeyondRecord { .. })
        ));
        let unaligned = RecordHeader { arg: 100, ..h };
        assert!(matches!(
            unaligned.check_context(8192, 5),
            Err(ContextError::UnalignedPages { .. })
        ));
        let overflow = RecordHeader {
            arg: u64::MAX - 4095,
            ..h
        };
        assert!(matches!(
            overflow.check_context(8192, 5),
            Err(ContextError::PagesOverflow { .. })
        ));
    }
}
