//! The payload of a journal `DELTA` record (format version 2): for each page, the words that
//! changed since the page's previous journaled image, and a checksum of the page after they
//! are applied. Pure encoding, decoding, validation and application; no I/O, no unsafe code.
//! See `docs/design.md` ("DELTA records") for the diagram; every offset there is a constant
//! here, and the corruption tests flip bytes at these constants.
//!
//! A payload is `count` *entries* back to back. An entry is a 16-byte header, a table of
//! `runs` run descriptors (4 bytes each, zero-padded to a multiple of 8), then `words`
//! 8-byte words of data: the new contents of the runs, in table order.
//!
//! # Invariants (checked by [`Entries`] for anything read from disk)
//!
//! - every entry starts at an 8-aligned payload offset, and the entries tile the payload
//!   exactly: `sum(entry_len) == payload.len()`;
//! - `page % PAGE_SIZE == 0`, `page + PAGE_SIZE` does not overflow, and pages strictly
//!   increase from entry to entry;
//! - `1 <= runs <= PAGE_WORDS`, `1 <= words <= PAGE_WORDS`, `words == sum(run.len)`;
//! - every run has `len >= 1`, `start + len <= PAGE_WORDS`, and `start >= end of the previous
//!   run` (sorted, non-overlapping);
//! - the table's padding bytes are zero;
//! - applying an entry to the page's previous image gives an image whose crc32 is
//!   `post_crc` ([`apply_entry`] checks it: a delta applied to the wrong base is detected).

#![forbid(unsafe_code)]

use super::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use std::fmt;

/// Bytes in a page.
pub(crate) const PAGE_SIZE: usize = 4096;
/// 8-byte words in a page: the unit of a delta.
pub(crate) const PAGE_WORDS: usize = PAGE_SIZE / 8;
/// A page viewed as words.
pub(crate) type PageWords = [u64; PAGE_WORDS];

// Entry header, chained offsets (relative to the entry's start).
/// Offset of `page` (`u64`): region offset of the page, a multiple of [`PAGE_SIZE`].
pub(crate) const ENTRY_PAGE_OFFSET: usize = 0;
/// Offset of `post_crc` (`u32`): crc32 of the page after the runs are applied.
pub(crate) const ENTRY_CRC_OFFSET: usize = ENTRY_PAGE_OFFSET + 8;
/// Offset of `runs` (`u16`): number of run descriptors.
pub(crate) const ENTRY_RUNS_OFFSET: usize = ENTRY_CRC_OFFSET + 4;
/// Offset of `words` (`u16`): number of data words.
pub(crate) const ENTRY_WORDS_OFFSET: usize = ENTRY_RUNS_OFFSET + 2;
/// Length of an entry header; the run table follows.
pub(crate) const ENTRY_HEADER_LEN: usize = ENTRY_WORDS_OFFSET + 2;
// Run descriptor, offsets relative to the descriptor.
/// Offset of a run's `start` (`u16`, in words).
pub(crate) const RUN_START_OFFSET: usize = 0;
/// Offset of a run's `len` (`u16`, in words).
pub(crate) const RUN_LEN_OFFSET: usize = RUN_START_OFFSET + 2;
/// Length of a run descriptor.
pub(crate) const RUN_DESC_LEN: usize = RUN_LEN_OFFSET + 2;
/// Most runs an entry can have (every word of the page its own run).
pub(crate) const MAX_RUNS: usize = PAGE_WORDS;
/// Smallest entry: header, one descriptor padded to 8, one word.
pub(crate) const MIN_ENTRY_LEN: usize = ENTRY_HEADER_LEN + 8 + 8;

/// The writer journals a page whole instead when its entry would be longer than this: half a
/// page. Past it the saving is small, and the differ stops early (less CPU for pages that were
/// mostly rewritten).
pub(crate) const MAX_USEFUL_ENTRY_LEN: usize = PAGE_SIZE / 2;

/// A run of changed words: `[start, start + len)` in words from the start of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Run {
    /// First word.
    pub start: u16,
    /// Number of words (at least 1).
    pub len: u16,
}

impl Run {
    /// One past the last word.
    pub(crate) fn end(self) -> usize {
        usize::from(self.start) + usize::from(self.len)
    }
}

/// Length of the run table with its padding.
#[inline]
pub(crate) fn table_len(runs: usize) -> usize {
    (runs * RUN_DESC_LEN).next_multiple_of(8)
}

/// Length of an entry with `runs` runs covering `words` words.
#[inline]
pub(crate) fn entry_len(runs: usize, words: usize) -> usize {
    ENTRY_HEADER_LEN + table_len(runs) + words * 8
}

/// crc32 of a page image (the `post_crc` of an entry).
#[inline]
pub(crate) fn page_crc(page: &[u8]) -> u32 {
    crc32fast::hash(page)
}

/// Encodes one entry into `out`, which must be exactly [`entry_len`]`(runs.len(), words)`
/// bytes long (`words` = the runs' total length): `page` is the region offset of the page,
/// `post_crc` the crc32 of `new` (the page's new image, [`PAGE_SIZE`] bytes), and the data
/// words are taken from `new`. Returns `false` (and writes nothing meaningful) if `out` has
/// the wrong length or a run lies outside the page; never panics, since it runs on the commit
/// path while the allocator is paused.
pub(crate) fn encode_entry(out: &mut [u8], page: u64, post_crc: u32, runs: &[Run], new: &[u8]) -> bool {
    let words: usize = runs.iter().map(|r| usize::from(r.len)).sum();
    if out.len() != entry_len(runs.len(), words) || runs.len() > MAX_RUNS || words > PAGE_WORDS {
        return false;
    }
    put_u64(out, ENTRY_PAGE_OFFSET, page);
    put_u32(out, ENTRY_CRC_OFFSET, post_crc);
    put_u16(out, ENTRY_RUNS_OFFSET, runs.len() as u16);
    put_u16(out, ENTRY_WORDS_OFFSET, words as u16);
    let (table, data) = out[ENTRY_HEADER_LEN..].split_at_mut(table_len(runs.len()));
    table.fill(0);
    let mut d = 0;
    for (i, r) in runs.iter().enumerate() {
        put_u16(table, i * RUN_DESC_LEN + RUN_START_OFFSET, r.start);
        put_u16(table, i * RUN_DESC_LEN + RUN_LEN_OFFSET, r.len);
        let n = usize::from(r.len) * 8;
        match (new.get(usize::from(r.start) * 8..r.end() * 8), data.get_mut(d..d + n)) {
            (Some(src), Some(dst)) => dst.copy_from_slice(src),
            _ => return false,
        }
        d += n;
    }
    new.len() == PAGE_SIZE
}

/// What is wrong with a payload; [`DeltaError::offset`] is the payload offset of the bad field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeltaWhy {
    /// The payload ends inside an entry header.
    TruncatedHeader,
    /// `page` is not a multiple of the page size, or the page's end overflows.
    UnalignedPage(u64),
    /// `page` is not greater than the previous entry's.
    PageOrder {
        /// The previous entry's page.
        previous: u64,
        /// This entry's.
        page: u64,
    },
    /// `runs` is 0 or more than [`MAX_RUNS`].
    RunCount(u16),
    /// `words` is 0, more than [`PAGE_WORDS`], or not the runs' total length.
    WordCount(u16),
    /// The entry extends past the end of the payload.
    EntryPastEnd,
    /// A run has length 0.
    EmptyRun,
    /// A run starts before the previous run ends.
    RunOrder,
    /// A run ends past the end of the page.
    RunPastPage,
    /// A padding byte of the run table is not zero.
    Padding,
    /// Fewer entries than the record's `count`.
    MissingEntries,
    /// Bytes after the record's `count` entries.
    TrailingBytes,
    /// The payload length is not a multiple of 8.
    UnalignedPayload,
    /// The page after applying the entry does not have the entry's checksum: the delta was
    /// applied to another image than the one it was computed from.
    PostImage {
        /// `post_crc` as stored.
        stored: u32,
        /// crc32 of the page after applying.
        computed: u32,
    },
}

/// A validation failure at a payload offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeltaError {
    /// Offset in the payload of the field that is wrong.
    pub offset: usize,
    /// What is wrong.
    pub why: DeltaWhy,
}

impl fmt::Display for DeltaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            DeltaWhy::TruncatedHeader => write!(f, "DELTA payload ends inside an entry header"),
            DeltaWhy::UnalignedPage(p) => write!(f, "DELTA entry for region offset {p:#x}, not a page"),
            DeltaWhy::PageOrder { previous, page } => write!(
                f,
                "DELTA entry for page {page:#x} follows the entry for page {previous:#x} (pages must increase)"
            ),
            DeltaWhy::RunCount(n) => write!(f, "DELTA entry with {n} runs (1..={MAX_RUNS})"),
            DeltaWhy::WordCount(n) => {
                write!(f, "DELTA entry with {n} data words (1..={PAGE_WORDS}, the runs' total)")
            }
            DeltaWhy::EntryPastEnd => write!(f, "DELTA entry extends past the end of its record"),
            DeltaWhy::EmptyRun => write!(f, "DELTA run of length 0"),
            DeltaWhy::RunOrder => write!(f, "DELTA run starts before the previous run ends"),
            DeltaWhy::RunPastPage => write!(f, "DELTA run ends past the end of the page"),
            DeltaWhy::Padding => write!(f, "DELTA run table padding is not zero"),
            DeltaWhy::MissingEntries => write!(f, "DELTA payload holds fewer entries than its count"),
            DeltaWhy::TrailingBytes => write!(f, "DELTA payload has bytes after its last entry"),
            DeltaWhy::UnalignedPayload => write!(f, "DELTA payload length is not a multiple of 8"),
            DeltaWhy::PostImage { stored, computed } => write!(
                f,
                "page after applying the DELTA entry has checksum {computed:#010x}, the entry says {stored:#010x}: \
                 the delta was applied to another image than it was computed from"
            ),
        }
    }
}

/// One validated entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    /// Payload offset of the entry.
    pub at: usize,
    /// Region offset of the page.
    pub page: u64,
    /// crc32 of the page after applying.
    pub post_crc: u32,
    table: &'a [u8],
    data: &'a [u8],
}

impl<'a> Entry<'a> {
    /// Number of runs.
    pub(crate) fn run_count(&self) -> usize {
        self.table.len() / RUN_DESC_LEN
    }

    /// Run `i` (`i < run_count()`).
    pub(crate) fn run(&self, i: usize) -> Run {
        Run {
            start: get_u16(self.table, i * RUN_DESC_LEN + RUN_START_OFFSET),
            len: get_u16(self.table, i * RUN_DESC_LEN + RUN_LEN_OFFSET),
        }
    }

    /// Number of data words.
    pub(crate) fn words(&self) -> usize {
        self.data.len() / 8
    }

    /// Length of the entry in the payload.
    pub(crate) fn len(&self) -> usize {
        entry_len(self.run_count(), self.words())
    }

    /// Writes the runs into `page` (the page's previous image) without checking the result.
    pub(crate) fn write_runs(&self, page: &mut [u8]) {
        let mut d = 0;
        for i in 0..self.run_count() {
            let r = self.run(i);
            let (a, b) = (usize::from(r.start) * 8, r.end() * 8);
            if let (Some(dst), Some(src)) = (page.get_mut(a..b), self.data.get(d..d + (b - a))) {
                dst.copy_from_slice(src);
            }
            d += b - a;
        }
    }
}

/// Decodes and validates the entry at payload offset `at`, which must follow a page
/// `previous` (if any).
fn decode_entry(payload: &[u8], at: usize, previous: Option<u64>) -> Result<Entry<'_>, DeltaError> {
    let err = |offset, why| Err(DeltaError { offset, why });
    let Some(h) = payload.get(at..at + ENTRY_HEADER_LEN) else {
        return err(at, DeltaWhy::TruncatedHeader);
    };
    let page = get_u64(h, ENTRY_PAGE_OFFSET);
    if page % PAGE_SIZE as u64 != 0 || page.checked_add(PAGE_SIZE as u64).is_none() {
        return err(at + ENTRY_PAGE_OFFSET, DeltaWhy::UnalignedPage(page));
    }
    if let Some(previous) = previous {
        if page <= previous {
            return err(at + ENTRY_PAGE_OFFSET, DeltaWhy::PageOrder { previous, page });
        }
    }
    let runs = get_u16(h, ENTRY_RUNS_OFFSET);
    if runs == 0 || usize::from(runs) > MAX_RUNS {
        return err(at + ENTRY_RUNS_OFFSET, DeltaWhy::RunCount(runs));
    }
    let words = get_u16(h, ENTRY_WORDS_OFFSET);
    if words == 0 || usize::from(words) > PAGE_WORDS {
        return err(at + ENTRY_WORDS_OFFSET, DeltaWhy::WordCount(words));
    }
    let (runs, words_n) = (usize::from(runs), usize::from(words));
    let len = entry_len(runs, words_n);
    if payload.len() - at < len {
        return err(at + ENTRY_WORDS_OFFSET, DeltaWhy::EntryPastEnd);
    }
    let t0 = at + ENTRY_HEADER_LEN;
    let table = &payload[t0..t0 + runs * RUN_DESC_LEN];
    let mut end = 0usize;
    let mut total = 0usize;
    for i in 0..runs {
        let d = i * RUN_DESC_LEN;
        let start = usize::from(get_u16(table, d + RUN_START_OFFSET));
        let rlen = usize::from(get_u16(table, d + RUN_LEN_OFFSET));
        if rlen == 0 {
            return err(t0 + d + RUN_LEN_OFFSET, DeltaWhy::EmptyRun);
        }
        if start < end {
            return err(t0 + d + RUN_START_OFFSET, DeltaWhy::RunOrder);
        }
        if start + rlen > PAGE_WORDS {
            return err(t0 + d + RUN_LEN_OFFSET, DeltaWhy::RunPastPage);
        }
        end = start + rlen;
        total += rlen;
    }
    if total != words_n {
        return err(at + ENTRY_WORDS_OFFSET, DeltaWhy::WordCount(words));
    }
    let pad = t0 + runs * RUN_DESC_LEN..t0 + table_len(runs);
    if let Some(i) = payload[pad.clone()].iter().position(|&b| b != 0) {
        return err(pad.start + i, DeltaWhy::Padding);
    }
    let d0 = t0 + table_len(runs);
    Ok(Entry {
        at,
        page,
        post_crc: get_u32(h, ENTRY_CRC_OFFSET),
        table,
        data: &payload[d0..d0 + words_n * 8],
    })
}

/// Iterates over the `count` entries of a payload, validating each; after the last one it
/// checks that nothing follows. Yields at most one error, then stops.
pub(crate) struct Entries<'a> {
    payload: &'a [u8],
    count: u32,
    seen: u32,
    at: usize,
    previous: Option<u64>,
    done: bool,
}

impl<'a> Entries<'a> {
    /// The entries of `payload`, which a record header says holds `count` of them.
    pub(crate) fn new(payload: &'a [u8], count: u32) -> Self {
        Entries {
            payload,
            count,
            seen: 0,
            at: 0,
            previous: None,
            done: false,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, DeltaError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let fail = |s: &mut Self, offset, why| {
            s.done = true;
            Some(Err(DeltaError { offset, why }))
        };
        if self.at == 0 && self.payload.len() % 8 != 0 {
            return fail(self, self.payload.len(), DeltaWhy::UnalignedPayload);
        }
        if self.seen == self.count {
            self.done = true;
            if self.at != self.payload.len() {
                return fail(self, self.at, DeltaWhy::TrailingBytes);
            }
            return None;
        }
        if self.at == self.payload.len() {
            return fail(self, self.at, DeltaWhy::MissingEntries);
        }
        match decode_entry(self.payload, self.at, self.previous) {
            Ok(e) => {
                self.seen += 1;
                self.at += e.len();
                self.previous = Some(e.page);
                Some(Ok(e))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Validates a whole payload of `count` entries (what the scanner does, entry by entry, before
/// anything is applied).
#[cfg(test)]
pub(crate) fn check_payload(payload: &[u8], count: u32) -> Result<(), DeltaError> {
    for e in Entries::new(payload, count) {
        e?;
    }
    Ok(())
}

/// Applies `entry` to `page` (its previous image, [`PAGE_SIZE`] bytes) and checks the result
/// against the entry's `post_crc`; on a mismatch the error names the entry's `post_crc` field
/// (the page is left with the runs written: the caller discards it).
pub(crate) fn apply_entry(entry: &Entry<'_>, page: &mut [u8]) -> Result<(), DeltaError> {
    entry.write_runs(page);
    check_post_image(page, entry.post_crc, entry.at)
}

/// The post-image check of [`apply_entry`] on its own: `page` must have checksum `post_crc`,
/// the stored checksum of the entry at payload offset `at`. Recovery applies a page's chain
/// of entries with [`Entry::write_runs`] and checks only the image the chain ends in (the one
/// recovery keeps): a wrong base anywhere in the chain leaves wrong words in that image unless
/// later entries overwrite them all, in which case the kept image is right.
pub(crate) fn check_post_image(page: &[u8], post_crc: u32, at: usize) -> Result<(), DeltaError> {
    let computed = crc32fast::hash(page);
    if computed != post_crc || page.len() != PAGE_SIZE {
        return Err(DeltaError {
            offset: at + ENTRY_CRC_OFFSET,
            why: DeltaWhy::PostImage {
                stored: post_crc,
                computed,
            },
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of(w: &PageWords) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// A page with pseudo-random words, and `runs` of it changed.
    fn sample(seed: u64, runs: &[Run]) -> (Box<PageWords>, Box<PageWords>) {
        let mut x = seed | 1;
        let mut base = Box::new([0u64; PAGE_WORDS]);
        for w in base.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        let mut new = base.clone();
        for r in runs {
            for w in &mut new[usize::from(r.start)..r.end()] {
                *w = !*w;
            }
        }
        (base, new)
    }

    fn encode_one(page: u64, runs: &[Run], new: &PageWords) -> Vec<u8> {
        let words: usize = runs.iter().map(|r| usize::from(r.len)).sum();
        let mut out = vec![0xeeu8; entry_len(runs.len(), words)];
        let bytes = bytes_of(new);
        assert!(encode_entry(&mut out, page, page_crc(&bytes), runs, &bytes));
        out
    }

    const R: fn(u16, u16) -> Run = |start, len| Run { start, len };

    #[test]
    fn offsets_match_the_documented_layout() {
        assert_eq!(
            [
                ENTRY_PAGE_OFFSET,
                ENTRY_CRC_OFFSET,
                ENTRY_RUNS_OFFSET,
                ENTRY_WORDS_OFFSET,
                ENTRY_HEADER_LEN
            ],
            [0, 8, 12, 14, 16]
        );
        assert_eq!([RUN_START_OFFSET, RUN_LEN_OFFSET, RUN_DESC_LEN], [0, 2, 4]);
        assert_eq!(entry_len(1, 1), 32);
        assert_eq!(entry_len(1, 8), 88, "a 64-byte change");
        assert_eq!(entry_len(2, 2), 40);
        assert_eq!(entry_len(3, 3), 16 + 16 + 24);
        assert_eq!(MIN_ENTRY_LEN, 32);
    }

    #[test]
    fn entries_round_trip_and_apply_to_their_base() {
        let cases: &[&[Run]] = &[
            &[R(0, 1)],
            &[R(511, 1)],
            &[R(0, 512)],
            &[R(3, 2), R(5, 1), R(100, 7)],
            &[R(0, 1), R(2, 1), R(4, 1)],
        ];
        let mut payload = Vec::new();
        let mut pages = Vec::new();
        for (i, runs) in cases.iter().enumerate() {
            let (base, new) = sample(i as u64 + 9, runs);
            let page = (i as u64 * 3 + 1) * PAGE_SIZE as u64;
            payload.extend(encode_one(page, runs, &new));
            pages.push((page, base, new, *runs));
        }
        assert_eq!(check_payload(&payload, cases.len() as u32), Ok(()));
        let entries: Vec<_> = Entries::new(&payload, cases.len() as u32).map(Result::unwrap).collect();
        assert_eq!(entries.len(), cases.len());
        for (e, (page, base, new, runs)) in entries.iter().zip(&pages) {
            assert_eq!(e.page, *page);
            assert_eq!((0..e.run_count()).map(|i| e.run(i)).collect::<Vec<_>>(), runs.to_vec());
            let mut img = bytes_of(base);
            apply_entry(e, &mut img).unwrap();
            assert_eq!(img, bytes_of(new));
            // The same entry on another image is caught by the post-image checksum.
            let mut wrong = bytes_of(base);
            wrong[4095] ^= 1;
            if runs.iter().all(|r| r.end() < 512) {
                let err = apply_entry(e, &mut wrong).unwrap_err();
                assert_eq!(err.offset, e.at + ENTRY_CRC_OFFSET);
                assert!(matches!(err.why, DeltaWhy::PostImage { .. }));
            }
        }
    }

    #[test]
    fn encode_refuses_a_wrong_buffer_length_without_panicking() {
        let (_, new) = sample(1, &[]);
        let new = bytes_of(&new);
        let mut out = vec![0u8; 31];
        assert!(!encode_entry(&mut out, 0, 0, &[R(0, 1)], &new));
        let mut out = vec![0u8; entry_len(1, 2)];
        assert!(!encode_entry(&mut out, 0, 0, &[R(511, 2)], &new), "run past the page");
        let mut out = vec![0u8; entry_len(1, 1)];
        assert!(!encode_entry(&mut out, 0, 0, &[R(0, 1)], &new[..100]), "short page");
    }

    /// Re-encodes a field of a one-entry payload and expects the error at `offset`.
    fn expect_err(payload: &[u8], count: u32, offset: usize, why: fn(&DeltaWhy) -> bool) {
        let r = check_payload(payload, count);
        match r {
            Err(e) if e.offset == offset && why(&e.why) => {}
            other => panic!("expected an error at {offset}, got {other:?}"),
        }
    }

    #[test]
    fn every_field_is_validated_with_its_offset() {
        let (_, new) = sample(3, &[R(1, 2), R(10, 1)]);
        let good = encode_one(2 * PAGE_SIZE as u64, &[R(1, 2), R(10, 1)], &new);
        assert_eq!(good.len(), entry_len(2, 3));
        assert_eq!(check_payload(&good, 1), Ok(()));
        let t0 = ENTRY_HEADER_LEN;
        let edit = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut b = good.clone();
            f(&mut b);
            b
        };
        // page
        let b = edit(&|b| put_u64(b, ENTRY_PAGE_OFFSET, 100));
        expect_err(&b, 1, 0, |w| matches!(w, DeltaWhy::UnalignedPage(100)));
        let b = edit(&|b| put_u64(b, ENTRY_PAGE_OFFSET, u64::MAX - 4095));
        expect_err(&b, 1, 0, |w| matches!(w, DeltaWhy::UnalignedPage(_)));
        // runs
        let b = edit(&|b| put_u16(b, ENTRY_RUNS_OFFSET, 0));
        expect_err(&b, 1, ENTRY_RUNS_OFFSET, |w| matches!(w, DeltaWhy::RunCount(0)));
        let b = edit(&|b| put_u16(b, ENTRY_RUNS_OFFSET, 513));
        expect_err(&b, 1, ENTRY_RUNS_OFFSET, |w| matches!(w, DeltaWhy::RunCount(513)));
        let b = edit(&|b| put_u16(b, ENTRY_RUNS_OFFSET, 400));
        expect_err(&b, 1, ENTRY_WORDS_OFFSET, |w| matches!(w, DeltaWhy::EntryPastEnd));
        // words
        let b = edit(&|b| put_u16(b, ENTRY_WORDS_OFFSET, 0));
        expect_err(&b, 1, ENTRY_WORDS_OFFSET, |w| matches!(w, DeltaWhy::WordCount(0)));
        let b = edit(&|b| put_u16(b, ENTRY_WORDS_OFFSET, 513));
        expect_err(&b, 1, ENTRY_WORDS_OFFSET, |w| matches!(w, DeltaWhy::WordCount(513)));
        let b = edit(&|b| put_u16(b, ENTRY_WORDS_OFFSET, 4));
        expect_err(&b, 1, ENTRY_WORDS_OFFSET, |w| matches!(w, DeltaWhy::EntryPastEnd));
        let mut b = edit(&|b| put_u16(b, ENTRY_WORDS_OFFSET, 4));
        b.extend([0u8; 8]);
        expect_err(&b, 1, ENTRY_WORDS_OFFSET, |w| matches!(w, DeltaWhy::WordCount(4)));
        // runs: empty, overlapping, past the page
        let b = edit(&|b| put_u16(b, t0 + RUN_LEN_OFFSET, 0));
        expect_err(&b, 1, t0 + RUN_LEN_OFFSET, |w| matches!(w, DeltaWhy::EmptyRun));
        let b = edit(&|b| put_u16(b, t0 + RUN_DESC_LEN + RUN_START_OFFSET, 2));
        expect_err(&b, 1, t0 + 4, |w| matches!(w, DeltaWhy::RunOrder));
        let b = edit(&|b| put_u16(b, t0 + RUN_DESC_LEN + RUN_START_OFFSET, 512));
        expect_err(&b, 1, t0 + 4 + RUN_LEN_OFFSET, |w| matches!(w, DeltaWhy::RunPastPage));
        let b = edit(&|b| put_u16(b, t0 + RUN_DESC_LEN + RUN_START_OFFSET, 3));
        assert_eq!(check_payload(&b, 1), Ok(()), "adjacent runs are allowed");
        // padding: 2 runs fill the 8-byte table exactly; a 3-run entry has 4 bytes of padding
        let (_, new3) = sample(4, &[R(1, 1), R(3, 1), R(5, 1)]);
        let mut b3 = encode_one(0, &[R(1, 1), R(3, 1), R(5, 1)], &new3);
        b3[t0 + 12 + 2] = 1;
        expect_err(&b3, 1, t0 + 14, |w| matches!(w, DeltaWhy::Padding));
        // count and tiling
        expect_err(&good, 2, good.len(), |w| matches!(w, DeltaWhy::MissingEntries));
        expect_err(&good, 0, 0, |w| matches!(w, DeltaWhy::TrailingBytes));
        let mut b = good.clone();
        b.extend([0u8; 8]);
        expect_err(&b, 1, good.len(), |w| matches!(w, DeltaWhy::TrailingBytes));
        let mut b = good.clone();
        b.push(0);
        expect_err(&b, 1, good.len() + 1, |w| matches!(w, DeltaWhy::UnalignedPayload));
        // truncation at every length
        for n in 0..good.len() {
            assert!(check_payload(&good[..n], 1).is_err(), "length {n}");
        }
        // page order across entries
        let mut two = good.clone();
        two.extend(encode_one(2 * PAGE_SIZE as u64, &[R(1, 2), R(10, 1)], &new));
        expect_err(&two, 2, good.len(), |w| matches!(w, DeltaWhy::PageOrder { .. }));
        let mut two = good.clone();
        two.extend(encode_one(3 * PAGE_SIZE as u64, &[R(1, 2), R(10, 1)], &new));
        assert_eq!(check_payload(&two, 2), Ok(()));
    }

    #[test]
    fn every_flipped_byte_is_rejected_or_caught_by_the_post_image_check() {
        let runs = [R(0, 1), R(7, 3), R(300, 2)];
        let (base, new) = sample(11, &runs);
        let good = encode_one(5 * PAGE_SIZE as u64, &runs, &new);
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = good.clone();
                b[i] ^= bit;
                let r: Result<Vec<_>, _> = Entries::new(&b, 1).collect();
                match r {
                    Err(_) => {}
                    Ok(es) => {
                        // Structurally valid: the page moved (a different page), or applying
                        // it to the base does not give the checksummed image.
                        let e = es[0];
                        let mut img = bytes_of(&base);
                        let applied = apply_entry(&e, &mut img);
                        assert!(
                            e.page != 5 * PAGE_SIZE as u64 || applied.is_err(),
                            "flip {bit:#x} at {i} went unnoticed"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut page = vec![0u8; PAGE_SIZE];
        for n in 0..2000usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x as usize % 96) & !7;
            let mut b: Vec<u8> = (0..len).map(|j| (x >> (j % 64)) as u8).collect();
            if len >= 16 {
                // Plausible headers now and then.
                put_u64(&mut b, 0, (x % 4) * 4096);
                put_u16(&mut b, ENTRY_RUNS_OFFSET, (x % 3) as u16);
                put_u16(&mut b, ENTRY_WORDS_OFFSET, (x % 5) as u16);
            }
            for e in Entries::new(&b, (n % 3) as u32).flatten() {
                let _ = apply_entry(&e, &mut page);
            }
        }
    }
}
