//! The root record: the identity of a `Heap<T>`'s root (its type fingerprint and schema id)
//! as part of the committed state. Meta format 2 moved it here from `meta`, so that a schema
//! migration can change the root, its type and its schema in one commit.
//!
//! The record is one 448-byte block inside the heap (allocated through the arena, so it is
//! journaled and snapshotted like any other data); `user_words[2]` of the allocator header
//! holds its address. Little-endian, layout in `docs/design.md` ("Root record"):
//!
//! ```text
//! 0 magic "SHROOTR1"  8 root  16 size  24 align  32 type_hash  40 schema_hash
//! 48 name_len u16  50 schema_len u16  52 migrations u32  56 crc u32  60 reserved u32
//! 64..320 type name (zero padded)  320..448 schema id (zero padded)
//! ```
//!
//! `crc` is CRC-32 of bytes 0..56 followed by bytes 60..448.
//!
//! # Invariants
//!
//! - `magic == ROOT_MAGIC`, `crc` matches, `name_len <= 256`, `schema_len <= 128`, both
//!   texts UTF-8, `align` a power of two, `root % align == 0`; [`RootRecord::decode`] rejects
//!   anything else.

use super::meta::fnv1a;
use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Length of the record block.
pub(crate) const ROOT_RECORD_LEN: usize = 448;
/// Offsets of each field (the corruption tests flip bytes at these).
pub(crate) const ROOT_MAGIC_OFFSET: usize = 0;
pub(crate) const ROOT_PTR_OFFSET: usize = 8;
pub(crate) const ROOT_SIZE_OFFSET: usize = 16;
pub(crate) const ROOT_ALIGN_OFFSET: usize = 24;
pub(crate) const ROOT_TYPE_HASH_OFFSET: usize = 32;
pub(crate) const ROOT_SCHEMA_HASH_OFFSET: usize = 40;
pub(crate) const ROOT_NAME_LEN_OFFSET: usize = 48;
pub(crate) const ROOT_SCHEMA_LEN_OFFSET: usize = 50;
pub(crate) const ROOT_MIGRATIONS_OFFSET: usize = 52;
pub(crate) const ROOT_CRC_OFFSET: usize = 56;
pub(crate) const ROOT_RESERVED_OFFSET: usize = 60;
pub(crate) const ROOT_NAME_OFFSET: usize = 64;
pub(crate) const ROOT_NAME_MAX: usize = 256;
pub(crate) const ROOT_SCHEMA_OFFSET: usize = ROOT_NAME_OFFSET + ROOT_NAME_MAX;
pub(crate) const ROOT_SCHEMA_MAX: usize = 128;

/// The record's magic number.
pub(crate) const ROOT_MAGIC: [u8; 8] = *b"SHROOTR1";

/// The root type name meta format 2 records for a `Heap<T>` heap: the kind of heap (its
/// `user_words[2]` points to a root record), not the user's type, which is in the record.
pub(crate) const ROOT_RECORD_KIND: &str = "snapheap::Heap root record v1";

/// A decoded root record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RootRecord {
    /// Address of the root value.
    pub root: u64,
    pub size: u64,
    pub align: u64,
    pub type_hash: u64,
    pub schema_hash: u64,
    /// Migrations applied over the heap's life (informational).
    pub migrations: u32,
    pub type_name: String,
    pub schema: String,
}

/// Truncates `s` to at most `max` bytes at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn crc_of(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..ROOT_CRC_OFFSET]);
    h.update(&b[ROOT_RESERVED_OFFSET..ROOT_RECORD_LEN]);
    h.finalize()
}

impl RootRecord {
    /// A record for a root at `root` of the given type fingerprint and schema.
    pub(crate) fn new(root: u64, size: u64, align: u64, type_name: &str, schema: &str, migrations: u32) -> RootRecord {
        RootRecord {
            root,
            size,
            align,
            type_hash: fnv1a(type_name.as_bytes()),
            schema_hash: fnv1a(schema.as_bytes()),
            migrations,
            type_name: type_name.to_string(),
            schema: schema.to_string(),
        }
    }

    /// Encodes the record.
    pub(crate) fn encode(&self) -> [u8; ROOT_RECORD_LEN] {
        let mut b = [0u8; ROOT_RECORD_LEN];
        b[..8].copy_from_slice(&ROOT_MAGIC);
        put_u64(&mut b, ROOT_PTR_OFFSET, self.root);
        put_u64(&mut b, ROOT_SIZE_OFFSET, self.size);
        put_u64(&mut b, ROOT_ALIGN_OFFSET, self.align);
        put_u64(&mut b, ROOT_TYPE_HASH_OFFSET, self.type_hash);
        put_u64(&mut b, ROOT_SCHEMA_HASH_OFFSET, self.schema_hash);
        let name = truncated(&self.type_name, ROOT_NAME_MAX);
        let schema = truncated(&self.schema, ROOT_SCHEMA_MAX);
        put_u16(&mut b, ROOT_NAME_LEN_OFFSET, name.len() as u16);
        put_u16(&mut b, ROOT_SCHEMA_LEN_OFFSET, schema.len() as u16);
        put_u32(&mut b, ROOT_MIGRATIONS_OFFSET, self.migrations);
        b[ROOT_NAME_OFFSET..ROOT_NAME_OFFSET + name.len()].copy_from_slice(name.as_bytes());
        b[ROOT_SCHEMA_OFFSET..ROOT_SCHEMA_OFFSET + schema.len()].copy_from_slice(schema.as_bytes());
        let crc = crc_of(&b);
        put_u32(&mut b, ROOT_CRC_OFFSET, crc);
        b
    }

    /// Decodes and validates a record; on failure, the offset of the offending field and
    /// what was wrong. Never panics, whatever the input.
    pub(crate) fn decode(b: &[u8]) -> Result<RootRecord, (usize, String)> {
        let bad = |off: usize, what: &str| Err((off, what.to_string()));
        if b.len() < ROOT_RECORD_LEN {
            return bad(b.len(), "root record is truncated");
        }
        if b[..8] != ROOT_MAGIC {
            return bad(ROOT_MAGIC_OFFSET, "bad root record magic");
        }
        if get_u32(b, ROOT_CRC_OFFSET) != crc_of(b) {
            return bad(ROOT_CRC_OFFSET, "root record checksum mismatch");
        }
        if get_u32(b, ROOT_RESERVED_OFFSET) != 0 {
            return bad(ROOT_RESERVED_OFFSET, "root record reserved field is not zero");
        }
        let align = get_u64(b, ROOT_ALIGN_OFFSET);
        let root = get_u64(b, ROOT_PTR_OFFSET);
        if !align.is_power_of_two() || root % align != 0 {
            return bad(ROOT_ALIGN_OFFSET, "root alignment out of range");
        }
        let name_len = usize::from(get_u16(b, ROOT_NAME_LEN_OFFSET));
        let schema_len = usize::from(get_u16(b, ROOT_SCHEMA_LEN_OFFSET));
        if name_len > ROOT_NAME_MAX {
            return bad(ROOT_NAME_LEN_OFFSET, "root type name length out of range");
        }
        if schema_len > ROOT_SCHEMA_MAX {
            return bad(ROOT_SCHEMA_LEN_OFFSET, "schema length out of range");
        }
        // The text fields are zero padded: a byte after the recorded length that is not zero
        // is damage (and would not survive a decode + encode).
        let pad = |off: usize, len: usize, max: usize| {
            b[off + len..off + max]
                .iter()
                .position(|&x| x != 0)
                .map(|i| off + len + i)
        };
        if let Some(at) = pad(ROOT_NAME_OFFSET, name_len, ROOT_NAME_MAX) {
            return bad(at, "root type name padding is not zero");
        }
        if let Some(at) = pad(ROOT_SCHEMA_OFFSET, schema_len, ROOT_SCHEMA_MAX) {
            return bad(at, "schema padding is not zero");
        }
        let text = |off: usize, len: usize| {
            std::str::from_utf8(&b[off..off + len])
                .map(str::to_string)
                .map_err(|_| (off, "root record text is not UTF-8".to_string()))
        };
        Ok(RootRecord {
            root,
            size: get_u64(b, ROOT_SIZE_OFFSET),
            align,
            type_hash: get_u64(b, ROOT_TYPE_HASH_OFFSET),
            schema_hash: get_u64(b, ROOT_SCHEMA_HASH_OFFSET),
            migrations: get_u32(b, ROOT_MIGRATIONS_OFFSET),
            type_name: text(ROOT_NAME_OFFSET, name_len)?,
            schema: text(ROOT_SCHEMA_OFFSET, schema_len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RootRecord {
        RootRecord::new(0x2000_0040_0000, 48, 8, "app::v2::State", "app-v2", 1)
    }

    #[test]
    fn root_record_round_trips() {
        let r = sample();
        assert_eq!(RootRecord::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn every_flipped_byte_of_the_root_record_is_rejected() {
        let good = sample().encode();
        for i in 0..ROOT_RECORD_LEN {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = good;
                b[i] ^= mask;
                assert!(RootRecord::decode(&b).is_err(), "byte {i} mask {mask:#x} accepted");
            }
        }
    }

    #[test]
    fn truncated_root_record_is_rejected() {
        let good = sample().encode();
        for len in 0..ROOT_RECORD_LEN {
            assert!(RootRecord::decode(&good[..len]).is_err());
        }
    }
}
