//! The snapshot file header.
//!
//! Files `snapshot-0` and `snapshot-1` in the heap directory. Each holds one full image of the
//! region as of some commit:
//!
//! ```text
//! 0        4096                       4096+extent                 +dirty_len
//! | header | page 0 | page 1 | ...    | dirty bitmap of the interval |
//! ```
//!
//! Page `i` of the region (address `base + 4096 * i`) lives at file offset `4096 * (i + 1)`,
//! so the data part can be mapped with one `mmap` at file offset 4096. The dirty bitmap holds
//! the pages that changed between the previous snapshot and this one (bit `i % 8` of byte
//! `i / 8` is page `i`); after a restart it tells which pages the *other* file lacks.
//!
//! Header (128 bytes at offset 0, rest of the first page zero):
//!
//! ```text
//! 0       8       16      24      32      40      48      56      64
//! | "SNAPSNAP"    |ver|state| heap_id | generation | seq  | journal_id | extent |
//! 56: dirty_len u64   64: dirty_crc u32   68: reserved (56 bytes, zero)   124: crc32 of 0..124
//! ```
//!
//! # Invariants
//!
//! - A header counts only if `crc == crc32(bytes[0..124])` and `state == STATE_VALID`.
//! - `extent % 4096 == 0`, `extent <= max_size`, `dirty_len == ceil(extent / 4096 / 8)`, and
//!   the file is at least `4096 + extent + dirty_len` bytes long.
//! - A valid header is written only after every page and the bitmap are durable; the header is
//!   stamped invalid (and synced) before any page of the file is overwritten.

use super::{get_u32, get_u64, put_u32, put_u64};

/// Where the region's pages start in the file.
pub(crate) const DATA_OFFSET: u64 = 4096;
/// Header length.
pub(crate) const HEADER_LEN: usize = 128;
pub(crate) const MAGIC_OFFSET: usize = 0;
pub(crate) const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
pub(crate) const STATE_OFFSET: usize = VERSION_OFFSET + 4;
pub(crate) const HEAP_ID_OFFSET: usize = STATE_OFFSET + 4;
pub(crate) const GENERATION_OFFSET: usize = HEAP_ID_OFFSET + 8;
pub(crate) const SEQ_OFFSET: usize = GENERATION_OFFSET + 8;
pub(crate) const JOURNAL_ID_OFFSET: usize = SEQ_OFFSET + 8;
pub(crate) const EXTENT_OFFSET: usize = JOURNAL_ID_OFFSET + 8;
pub(crate) const DIRTY_LEN_OFFSET: usize = EXTENT_OFFSET + 8;
pub(crate) const DIRTY_CRC_OFFSET: usize = DIRTY_LEN_OFFSET + 8;
pub(crate) const CRC_OFFSET: usize = 124;

/// The magic number of a snapshot file.
pub(crate) const MAGIC: [u8; 8] = *b"SNAPSNAP";
/// Snapshot format version.
pub(crate) const VERSION: u32 = 1;
/// `state` of a complete snapshot. Any other value means "being written or abandoned".
pub(crate) const STATE_VALID: u32 = 0x5641_4C44; // "VALD"
/// `state` written before a file is overwritten.
pub(crate) const STATE_INVALID: u32 = 0;

/// The decoded header of a snapshot file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SnapHeader {
    pub valid: bool,
    pub heap_id: u64,
    pub generation: u64,
    pub seq: u64,
    pub journal_id: u64,
    pub extent: u64,
    pub dirty_len: u64,
    pub dirty_crc: u32,
}

/// Length of the dirty bitmap for a region extent.
pub(crate) fn dirty_len_for(extent: u64) -> u64 {
    (extent / 4096).div_ceil(8)
}

impl SnapHeader {
    /// Encodes the header (128 bytes).
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[..8].copy_from_slice(&MAGIC);
        put_u32(&mut b, VERSION_OFFSET, VERSION);
        put_u32(
            &mut b,
            STATE_OFFSET,
            if self.valid { STATE_VALID } else { STATE_INVALID },
        );
        put_u64(&mut b, HEAP_ID_OFFSET, self.heap_id);
        put_u64(&mut b, GENERATION_OFFSET, self.generation);
        put_u64(&mut b, SEQ_OFFSET, self.seq);
        put_u64(&mut b, JOURNAL_ID_OFFSET, self.journal_id);
        put_u64(&mut b, EXTENT_OFFSET, self.extent);
        put_u64(&mut b, DIRTY_LEN_OFFSET, self.dirty_len);
        put_u32(&mut b, DIRTY_CRC_OFFSET, self.dirty_crc);
        let crc = crc32fast::hash(&b[..CRC_OFFSET]);
        put_u32(&mut b, CRC_OFFSET, crc);
        b
    }

    /// Decodes a header. `Err((offset, what))` for damage; a well-formed header whose state is
    /// not valid decodes with `valid == false`. Never panics.
    pub(crate) fn decode(b: &[u8], heap_id: u64, max_size: u64) -> Result<SnapHeader, (u64, String)> {
        let bad = |off: usize, what: &str| Err((off as u64, what.to_string()));
        if b.len() < HEADER_LEN {
            return bad(b.len(), "snapshot header is truncated");
        }
        if b[..8] != MAGIC {
            return bad(MAGIC_OFFSET, "bad magic number");
        }
        if get_u32(b, CRC_OFFSET) != crc32fast::hash(&b[..CRC_OFFSET]) {
            return bad(CRC_OFFSET, "snapshot header checksum mismatch");
        }
        if get_u32(b, VERSION_OFFSET) != VERSION {
            return bad(VERSION_OFFSET, "unsupported snapshot version");
        }
        let h = SnapHeader {
            valid: get_u32(b, STATE_OFFSET) == STATE_VALID,
            heap_id: get_u64(b, HEAP_ID_OFFSET),
            generation: get_u64(b, GENERATION_OFFSET),
            seq: get_u64(b, SEQ_OFFSET),
            journal_id: get_u64(b, JOURNAL_ID_OFFSET),
            extent: get_u64(b, EXTENT_OFFSET),
            dirty_len: get_u64(b, DIRTY_LEN_OFFSET),
            dirty_crc: get_u32(b, DIRTY_CRC_OFFSET),
        };
        if h.heap_id != heap_id {
            return bad(HEAP_ID_OFFSET, "snapshot belongs to another heap");
        }
        if h.extent % 4096 != 0 || h.extent > max_size {
            return bad(EXTENT_OFFSET, "extent out of range");
        }
        if h.dirty_len != dirty_len_for(h.extent) {
            return bad(DIRTY_LEN_OFFSET, "dirty bitmap length does not match the extent");
        }
        Ok(h)
    }

    /// Total file length this header requires.
    pub(crate) fn file_len(&self) -> u64 {
        DATA_OFFSET + self.extent + self.dirty_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapHeader {
        SnapHeader {
            valid: true,
            heap_id: 7,
            generation: 3,
            seq: 99,
            journal_id: 4,
            extent: 8 << 20,
            dirty_len: dirty_len_for(8 << 20),
            dirty_crc: 0xdead_beef,
        }
    }

    #[test]
    fn snapshot_header_round_trips() {
        let h = sample();
        assert_eq!(SnapHeader::decode(&h.encode(), 7, 1 << 30).unwrap(), h);
        let inv = SnapHeader { valid: false, ..h };
        assert!(!SnapHeader::decode(&inv.encode(), 7, 1 << 30).unwrap().valid);
    }

    #[test]
    fn every_flipped_byte_of_a_snapshot_header_is_rejected_or_invalid() {
        let good = sample().encode();
        for i in 0..HEADER_LEN {
            let mut b = good;
            b[i] ^= 0x10;
            match SnapHeader::decode(&b, 7, 1 << 30) {
                Err(_) => {}
                Ok(h) => panic!("byte {i} flip accepted: {h:?}"),
            }
        }
    }

    #[test]
    fn snapshot_of_another_heap_is_rejected() {
        assert!(SnapHeader::decode(&sample().encode(), 8, 1 << 30).is_err());
    }
}
