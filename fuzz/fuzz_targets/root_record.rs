//! Root record decoding (`disk/format/root.rs`) on arbitrary bytes.
//!
//! Input: `flags: u8` then the record bytes. Flag bit 0 reseals the checksum (CRC-32 of bytes
//! 0..56 and 60..448 into 56) to reach the field checks behind it. Whatever decodes must
//! satisfy the documented ranges and encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    let (at, len) = (fuzzing::ROOT_RECORD_CRC_OFFSET, fuzzing::ROOT_RECORD_LEN);
    if flags & 1 != 0 && b.len() >= len {
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..at]);
        h.update(&b[at + 4..len]);
        let crc = h.finalize().to_le_bytes();
        b[at..at + 4].copy_from_slice(&crc);
    }
    match fuzzing::root_record(&b) {
        Ok(r) => {
            assert!(b.len() >= len);
            assert!(r.align.is_power_of_two() && r.root % r.align == 0, "{r:?}");
            assert!(r.type_name.len() <= 256 && r.schema.len() <= 128);
        }
        Err((off, _)) => assert!(off <= len as u64, "error offset {off}"),
    }
});
