//! `DELTA` payload decoding and application, and the differ's round trip.
//!
//! Input: `mode: u8`, `count: u8`, then bytes. Mode bit 0 clear: the bytes are a `DELTA`
//! payload of `count` entries; validating and applying it must never panic, an error names an
//! offset inside the payload (or its end), and every accepted entry lies inside the page and
//! inside the payload. Mode bit 0 set: the bytes describe a base page and edits to it; the
//! differ and encoder's entry, decoded and applied to the base, must give exactly the new page
//! (and its post-image checksum must pass), and applied to any other image must fail the
//! checksum unless that image agrees with the base outside the changed runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::fuzzing::{self, DeltaEncoded};

fn page_from(seed: &[u8]) -> Box<[u8; 4096]> {
    let mut p = Box::new([0u8; 4096]);
    if !seed.is_empty() {
        for (i, b) in p.iter_mut().enumerate() {
            *b = seed[i % seed.len()].wrapping_add((i / seed.len()) as u8);
        }
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let [mode, count, rest @ ..] = data else {
        return;
    };
    if mode & 1 == 0 {
        let mut page = page_from(&rest[..rest.len().min(16)]);
        match fuzzing::delta_apply(rest, u32::from(*count), &mut page) {
            Ok(entries) => {
                assert_eq!(entries.len(), usize::from(*count));
                let mut end = 0;
                for (page_off, at, len) in entries {
                    assert_eq!(page_off % 4096, 0);
                    assert_eq!(at, end, "entries must tile the payload");
                    end = at + len;
                }
                assert_eq!(end, rest.len());
            }
            Err((offset, why)) => assert!(offset <= rest.len(), "{why} at {offset} past {}", rest.len()),
        }
        return;
    }
    // Round trip: a base page from the first 32 bytes, edits (offset u16, byte) from the rest.
    let (seed, edits) = rest.split_at(rest.len().min(32));
    let base = page_from(seed);
    let mut new = base.clone();
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % 4096;
        new[at] = e[2];
    }
    let page_off = u64::from(*count) * 4096;
    match fuzzing::delta_encode(page_off, &new, &base) {
        DeltaEncoded::Same => assert_eq!(new, base),
        DeltaEncoded::Full => assert_ne!(new, base),
        DeltaEncoded::Delta(payload) => {
            let mut img = base.clone();
            let entries = fuzzing::delta_apply(&payload, 1, &mut img).expect("an encoded delta applies to its base");
            assert_eq!(entries, vec![(page_off, 0, payload.len())]);
            assert_eq!(img, new);
            // Another base: one byte changed outside the runs makes the checksum fail.
            if let Some(i) = (0..4096).find(|&i| new[i] == base[i] && !fuzzing::delta_covers(&payload, i)) {
                let mut other = base.clone();
                other[i] ^= 0x5a;
                assert!(fuzzing::delta_apply(&payload, 1, &mut other).is_err(), "wrong base at byte {i} not caught");
            }
        }
    }
});
