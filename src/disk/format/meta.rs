//! The meta header: the heap's identity, written when the heap is created (and rewritten
//! once when a format-1 heap is upgraded to format 2).
//!
//! Format 2 (this build): the root fields name the *kind* of heap (for a `Heap<T>`
//! `snapheap::Heap root record v1`, whose root type and schema live in the committed root
//! record, `root.rs`; for a `GlobalHeap` its registry type). Format 1 recorded the user's
//! root type and schema here; such a heap is read and upgraded at its first open.
//!
//! File `meta` in the heap directory, 512 bytes, little-endian:
//!
//! ```text
//! 0       8       16      24      32      40      48      56      64
//! | magic "SNAPHEAP" | ver | pgsz | heap_id | base   | max_size| root_size|root_align|
//! 56: root_type_hash  64: schema_hash  72: created_unix  80: name_len u16, schema_len u16, reserved u32
//! 88..344: root type name (UTF-8, zero padded)  344..472: schema id (zero padded)
//! 472..508: reserved (zero)  508: crc32 of bytes 0..508
//! ```
//!
//! The file is created as `meta.tmp`, synced, renamed to `meta` and the directory synced, so a
//! crash leaves either no `meta` or a whole one.
//!
//! # Invariants
//!
//! - `crc == crc32(bytes[0..508])`; a reader rejects anything else as corrupt.
//! - `base % SEGMENT == 0`, `max_size % SEGMENT == 0`, `0 < max_size <= MAX_MAX_SIZE`.

use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};

/// Length of the meta file.
pub(crate) const META_LEN: usize = 512;
/// Offsets of each field (the corruption tests flip bytes at these).
pub(crate) const MAGIC_OFFSET: usize = 0;
pub(crate) const VERSION_OFFSET: usize = MAGIC_OFFSET + 8;
pub(crate) const PAGE_SIZE_OFFSET: usize = VERSION_OFFSET + 4;
pub(crate) const HEAP_ID_OFFSET: usize = PAGE_SIZE_OFFSET + 4;
pub(crate) const BASE_OFFSET: usize = HEAP_ID_OFFSET + 8;
pub(crate) const MAX_SIZE_OFFSET: usize = BASE_OFFSET + 8;
pub(crate) const ROOT_SIZE_OFFSET: usize = MAX_SIZE_OFFSET + 8;
pub(crate) const ROOT_ALIGN_OFFSET: usize = ROOT_SIZE_OFFSET + 8;
pub(crate) const ROOT_HASH_OFFSET: usize = ROOT_ALIGN_OFFSET + 8;
pub(crate) const SCHEMA_HASH_OFFSET: usize = ROOT_HASH_OFFSET + 8;
pub(crate) const CREATED_OFFSET: usize = SCHEMA_HASH_OFFSET + 8;
pub(crate) const NAME_LEN_OFFSET: usize = CREATED_OFFSET + 8;
pub(crate) const SCHEMA_LEN_OFFSET: usize = NAME_LEN_OFFSET + 2;
pub(crate) const NAME_OFFSET: usize = SCHEMA_LEN_OFFSET + 2 + 4;
pub(crate) const NAME_MAX: usize = 256;
pub(crate) const SCHEMA_OFFSET: usize = NAME_OFFSET + NAME_MAX;
pub(crate) const SCHEMA_MAX: usize = 128;
pub(crate) const CRC_OFFSET: usize = 508;

/// The magic number of a meta file.
pub(crate) const MAGIC: [u8; 8] = *b"SNAPHEAP";
/// The on-disk format version this build writes.
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The older format version this build still reads (and upgrades at open).
pub(crate) const LEGACY_FORMAT_VERSION: u32 = 1;
/// The largest `max_size` accepted (64 TiB, inside x86-64's 47-bit user space).
pub(crate) const MAX_MAX_SIZE: u64 = 1 << 46;

/// The decoded meta header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    /// Format version: [`FORMAT_VERSION`], or [`LEGACY_FORMAT_VERSION`] for a heap not yet
    /// upgraded.
    pub version: u32,
    pub heap_id: u64,
    pub page_size: u32,
    pub base: u64,
    pub max_size: u64,
    pub root_size: u64,
    pub root_align: u64,
    pub root_type_hash: u64,
    pub schema_hash: u64,
    pub created_unix: u64,
    pub root_type_name: String,
    pub schema: String,
}

/// Why a meta header was rejected: the offset of the offending field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MetaError {
    /// Damaged: wrong length, magic or checksum, or a field out of range.
    Corrupt(u64, String),
    /// Written by another format version.
    Version(u32),
}

/// 64-bit FNV-1a, used for the type-name and schema fingerprints.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Truncates `s` to at most `max` bytes at a character boundary.
fn truncated(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Meta {
    /// Encodes the header into its 512-byte form.
    pub(crate) fn encode(&self) -> [u8; META_LEN] {
        let mut b = [0u8; META_LEN];
        b[MAGIC_OFFSET..MAGIC_OFFSET + 8].copy_from_slice(&MAGIC);
        put_u32(&mut b, VERSION_OFFSET, self.version);
        put_u32(&mut b, PAGE_SIZE_OFFSET, self.page_size);
        put_u64(&mut b, HEAP_ID_OFFSET, self.heap_id);
        put_u64(&mut b, BASE_OFFSET, self.base);
        put_u64(&mut b, MAX_SIZE_OFFSET, self.max_size);
        put_u64(&mut b, ROOT_SIZE_OFFSET, self.root_size);
        put_u64(&mut b, ROOT_ALIGN_OFFSET, self.root_align);
        put_u64(&mut b, ROOT_HASH_OFFSET, self.root_type_hash);
        put_u64(&mut b, SCHEMA_HASH_OFFSET, self.schema_hash);
        put_u64(&mut b, CREATED_OFFSET, self.created_unix);
        let name = truncated(&self.root_type_name, NAME_MAX);
        let schema = truncated(&self.schema, SCHEMA_MAX);
        put_u16(&mut b, NAME_LEN_OFFSET, name.len() as u16);
        put_u16(&mut b, SCHEMA_LEN_OFFSET, schema.len() as u16);
        b[NAME_OFFSET..NAME_OFFSET + name.len()].copy_from_slice(name.as_bytes());
        b[SCHEMA_OFFSET..SCHEMA_OFFSET + schema.len()].copy_from_slice(schema.as_bytes());
        let crc = crc32fast::hash(&b[..CRC_OFFSET]);
        put_u32(&mut b, CRC_OFFSET, crc);
        b
    }

    /// Decodes and validates a meta header. Never panics, whatever the input.
    pub(crate) fn decode(b: &[u8]) -> Result<Meta, MetaError> {
        let corrupt = |off: usize, what: &str| MetaError::Corrupt(off as u64, what.to_string());
        if b.len() < META_LEN {
            return Err(corrupt(b.len(), "meta header is truncated"));
        }
        if b[MAGIC_OFFSET..MAGIC_OFFSET + 8] != MAGIC {
            return Err(corrupt(MAGIC_OFFSET, "bad magic number (not a snapheap heap)"));
        }
        if get_u32(b, CRC_OFFSET) != crc32fast::hash(&b[..CRC_OFFSET]) {
            return Err(corrupt(CRC_OFFSET, "meta header checksum mismatch"));
        }
        let version = get_u32(b, VERSION_OFFSET);
        if version != FORMAT_VERSION && version != LEGACY_FORMAT_VERSION {
            return Err(MetaError::Version(version));
        }
        let page_size = get_u32(b, PAGE_SIZE_OFFSET);
        if page_size != crate::sys::OS_PAGE as u32 {
            return Err(corrupt(PAGE_SIZE_OFFSET, "page size is not 4096"));
        }
        let seg = crate::mem::alloc::SEGMENT as u64;
        let base = get_u64(b, BASE_OFFSET);
        let max_size = get_u64(b, MAX_SIZE_OFFSET);
        if base % seg != 0 || base < seg || base.checked_add(max_size).is_none_or(|e| e > 1 << 47) {
            return Err(corrupt(BASE_OFFSET, "base address out of range"));
        }
        if max_size == 0 || max_size % seg != 0 || max_size > MAX_MAX_SIZE {
            return Err(corrupt(MAX_SIZE_OFFSET, "max_size out of range"));
        }
        let name_len = usize::from(get_u16(b, NAME_LEN_OFFSET));
        let schema_len = usize::from(get_u16(b, SCHEMA_LEN_OFFSET));
        if name_len > NAME_MAX {
            return Err(corrupt(NAME_LEN_OFFSET, "root type name length out of range"));
        }
        if schema_len > SCHEMA_MAX {
            return Err(corrupt(SCHEMA_LEN_OFFSET, "schema length out of range"));
        }
        let text = |off: usize, len: usize| {
            std::str::from_utf8(&b[off..off + len])
                .map(str::to_string)
                .map_err(|_| corrupt(off, "text field is not UTF-8"))
        };
        Ok(Meta {
            version,
            heap_id: get_u64(b, HEAP_ID_OFFSET),
            page_size,
            base,
            max_size,
            root_size: get_u64(b, ROOT_SIZE_OFFSET),
            root_align: get_u64(b, ROOT_ALIGN_OFFSET),
            root_type_hash: get_u64(b, ROOT_HASH_OFFSET),
            schema_hash: get_u64(b, SCHEMA_HASH_OFFSET),
            created_unix: get_u64(b, CREATED_OFFSET),
            root_type_name: text(NAME_OFFSET, name_len)?,
            schema: text(SCHEMA_OFFSET, schema_len)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Meta {
        Meta {
            version: FORMAT_VERSION,
            heap_id: 0x1234_5678_9abc_def0,
            page_size: 4096,
            base: 0x2000_0000_0000,
            max_size: 1 << 36,
            root_size: 48,
            root_align: 8,
            root_type_hash: fnv1a(b"app::State"),
            schema_hash: fnv1a(b"v1"),
            created_unix: 1_800_000_000,
            root_type_name: "app::State".into(),
            schema: "v1".into(),
        }
    }

    #[test]
    fn meta_round_trips() {
        let m = sample();
        assert_eq!(Meta::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn format_1_headers_still_decode() {
        let mut m = sample();
        m.version = LEGACY_FORMAT_VERSION;
        assert_eq!(Meta::decode(&m.encode()).unwrap().version, 1);
    }

    #[test]
    fn every_flipped_byte_of_the_meta_header_is_rejected() {
        let good = sample().encode();
        for i in 0..META_LEN {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut b = good;
                b[i] ^= mask;
                assert!(Meta::decode(&b).is_err(), "byte {i} mask {mask:#x} accepted");
            }
        }
    }

    #[test]
    fn truncated_meta_header_is_rejected_without_panic() {
        let good = sample().encode();
        for len in 0..META_LEN {
            assert!(Meta::decode(&good[..len]).is_err());
        }
    }

    #[test]
    fn long_names_are_truncated_at_a_char_boundary() {
        let mut m = sample();
        m.root_type_name = "é".repeat(200);
        let d = Meta::decode(&m.encode()).unwrap();
        assert!(d.root_type_name.len() <= NAME_MAX);
        assert!(m.root_type_name.starts_with(&d.root_type_name));
    }
}
