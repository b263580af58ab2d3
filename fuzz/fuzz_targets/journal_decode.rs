//! Journal header decoding and record scanning on arbitrary bytes.
//!
//! Input: `flags: u8` then the journal file. Flags: bit 0 reseals the header and record
//! checksums first (to reach the checks behind them), bit 1 scans it as the newest journal
//! (torn tail allowed), bit 2 expects ids other than the header's. A successful scan must
//! satisfy the scanner's documented invariants (including: every `DELTA` record it accepted has
//! a valid payload), and the prefix it accepted must scan cleanly as an older journal (what
//! `resume` leaves behind).
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::fuzzing;

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut b = rest.to_vec();
    if flags & 1 != 0 {
        snapheap_fuzz::reseal_journal(&mut b);
    }
    let is_last = flags & 2 != 0;
    let (heap_id, journal_id) = if flags & 4 == 0 {
        (u64_at(&b, 16), u64_at(&b, 24))
    } else {
        (1, 1)
    };
    let _ = fuzzing::journal_header(&b);
    for at in (0..b.len().min(256)).step_by(8) {
        let _ = fuzzing::record_shape(&b[at..]);
    }
    let Ok(s) = fuzzing::scan_journal(&b, heap_id, journal_id, is_last) else {
        return;
    };
    assert_eq!(s.file_len, b.len() as u64);
    assert!(
        fuzzing::FIRST_RECORD_OFFSET <= s.valid_end && s.valid_end <= s.file_len,
        "{s:?}"
    );
    let mut prev_end = fuzzing::FIRST_RECORD_OFFSET;
    for (i, g) in s.groups.iter().enumerate() {
        assert_eq!(g.seq, s.header.start_seq + 1 + i as u64);
        for &(file_offset, region_offset, len) in &g.runs {
            assert!(
                file_offset >= prev_end + fuzzing::RECORD_HEADER_LEN as u64,
                "runs overlap"
            );
            assert!(file_offset + len <= s.valid_end, "run past the valid end");
            assert!(region_offset % 4096 == 0 && len % 4096 == 0 && len > 0);
            let rec = &b[(file_offset as usize - fuzzing::RECORD_HEADER_LEN)..(file_offset + len) as usize];
            assert!(
                fuzzing::verify_record(rec, s.header.salt),
                "a run whose record does not verify"
            );
            prev_end = file_offset + len;
        }
        for &(file_offset, len, count) in &g.deltas {
            assert!(file_offset + len <= s.valid_end, "DELTA record past the valid end");
            let rec = &b[(file_offset as usize - fuzzing::RECORD_HEADER_LEN)..(file_offset + len) as usize];
            assert!(fuzzing::verify_record(rec, s.header.salt), "a DELTA record that does not verify");
            let payload = &b[file_offset as usize..(file_offset + len) as usize];
            if let Err((at, why)) = fuzzing::delta_check(payload, count) {
                panic!("the scanner accepted a DELTA payload with {why} at {at}");
            }
        }
    }
    let again = fuzzing::scan_journal(&b[..s.valid_end as usize], heap_id, journal_id, false)
        .unwrap_or_else(|e| panic!("the accepted prefix does not scan as an older journal: {e}"));
    assert_eq!(again.groups, s.groups);
    assert_eq!(again.valid_end, s.valid_end);
});
