//! Replication wire formats (`docs/design.md`, "Replication"): wire groups and bases decoded
//! from arbitrary bytes never panic, and whatever decodes is canonical.
//!
//! Input: `mode: u8`, then bytes. Mode bit 0 clear: the bytes are decoded as a wire group and
//! as a base; an error names an offset inside the input (or its end); an accepted group
//! encodes back to exactly the input, and its records lie inside its payload. Mode bit 0 set:
//! the bytes are a group's records (anything): encoded into a wire group (header, checksum,
//! chain hash computed), decoded — every record check is reached, since the checksum and
//! chain hash are right — and then one byte (chosen by the mode's upper bits) is flipped:
//! the damaged group must be refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::fuzzing;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        match fuzzing::wire_group(rest) {
            Ok(g) => {
                let payload = &rest[64..];
                assert_eq!(g.payload_len, payload.len());
                for &(at, len) in &g.records {
                    assert!(at + len <= payload.len());
                }
                let (again, chain) = fuzzing::wire_group_encode(g.heap_id, g.seq, g.prev_chain, payload);
                assert_eq!(chain, g.chain);
                assert_eq!(again, rest, "an accepted wire group is canonical");
            }
            Err((off, why)) => assert!(off <= rest.len() as u64, "{why} at {off} past {}", rest.len()),
        }
        match fuzzing::wire_base(rest) {
            Ok((heap_id, seq, chain, m, s)) => {
                assert_eq!(64 + m + s, rest.len());
                let again = fuzzing::wire_base_encode(heap_id, seq, chain, &rest[64..64 + m], &rest[64 + m..]);
                assert_eq!(again, rest, "an accepted base is canonical");
            }
            Err((off, why)) => assert!(off <= rest.len() as u64, "{why} at {off} past {}", rest.len()),
        }
        return;
    }
    let (wire, chain) = fuzzing::wire_group_encode(7, 42, 0x1234, rest);
    match fuzzing::wire_group(&wire) {
        Ok(g) => {
            assert_eq!((g.heap_id, g.seq, g.prev_chain, g.chain), (7, 42, 0x1234, chain));
            assert_eq!(g.payload_len, rest.len());
        }
        Err((off, why)) => assert!(off <= wire.len() as u64, "{why} at {off} past {}", wire.len()),
    }
    let at = (mode as usize >> 1) * wire.len() / 128;
    let mut bad = wire.clone();
    bad[at.min(wire.len() - 1)] ^= 0x80;
    assert!(fuzzing::wire_group(&bad).is_err(), "a flipped byte at {at} was accepted");
});
