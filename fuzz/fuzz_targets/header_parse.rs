//! Meta and snapshot header decoding on arbitrary bytes.
//!
//! Input: `flags: u8` then the header bytes, decoded as both a meta header and a snapshot
//! header. Flags: bit 0 reseals the meta checksum, bit 1 the snapshot checksum (to reach
//! the field checks behind them), bit 2 expects the snapshot's own heap id, bit 3 uses the
//! largest `max_size`. Whatever decodes must satisfy the documented ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::fuzzing;

const SEGMENT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };

    let mut m = rest.to_vec();
    if flags & 1 != 0 {
        snapheap_fuzz::reseal_meta(&mut m);
    }
    match fuzzing::meta(&m) {
        Ok(meta) => {
            assert!(m.len() >= 512);
            assert!(meta.base % SEGMENT == 0 && meta.base >= SEGMENT, "{meta:?}");
            assert!(meta.max_size > 0 && meta.max_size % SEGMENT == 0 && meta.max_size <= 1 << 46);
            assert!(meta.base + meta.max_size <= 1 << 47);
            assert!(meta.root_type_name.len() <= 256 && meta.schema.len() <= 128);
        }
        Err((off, _)) => assert!(off <= 512, "error offset {off}"),
    }

    let mut s = rest.to_vec();
    if flags & 2 != 0 {
        snapheap_fuzz::reseal_snapshot(&mut s);
    }
    let heap_id = if flags & 4 != 0 {
        s.get(16..24).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    } else {
        0x5eed
    };
    let max_size = if flags & 8 != 0 {
        1 << 46
    } else {
        snapheap_fuzz::MAX_SIZE
    };
    match fuzzing::snapshot_header(&s, heap_id, max_size) {
        Ok(h) => {
            assert!(s.len() >= 128);
            assert!(h.extent % 4096 == 0 && h.extent <= max_size, "{h:?}");
            assert_eq!(h.dirty_len, (h.extent / 4096).div_ceil(8));
            assert_eq!(h.file_len, 4096 + h.extent + h.dirty_len);
        }
        Err((off, _)) => assert!(off <= 128, "error offset {off}"),
    }
});
