//! The page differ of the commit path: which 8-byte words of a page changed since its base
//! image, as sorted runs, and whether journaling them as a `DELTA` entry is worth it. Pure,
//! no unsafe code, no allocation (it runs while the allocator is paused).
//!
//! Cost (`cargo run --release --example diff_cost`): a first, vectorised test compares 512-byte
//! spans; only inside spans that differ does a block test compare 64 bytes per step, and only
//! inside blocks that differ are single words looked at.
//!
//! # Invariants
//!
//! - After [`diff_page`] returns [`Diff::Delta`], `runs` holds maximal runs of differing words:
//!   sorted, non-overlapping, non-adjacent, each non-empty and inside the page, and
//!   `runs.words() == sum of their lengths`; `entry_len(runs.len(), runs.words()) <= max_entry`.
//! - [`Diff::Same`] means `new == base` word for word.

#![forbid(unsafe_code)]

use crate::disk::format::delta::{entry_len, PageWords, Run, MAX_RUNS, PAGE_WORDS};

/// Words per block of the fast comparison (one cache line).
const BLOCK: usize = 8;

/// The runs of one diff: a fixed-capacity list (no allocation).
pub(crate) struct Runs {
    runs: [Run; MAX_RUNS],
    len: usize,
    words: usize,
}

impl Runs {
    /// An empty list.
    pub(crate) const fn new() -> Self {
        Runs {
            runs: [Run { start: 0, len: 0 }; MAX_RUNS],
            len: 0,
            words: 0,
        }
    }

    /// The runs found.
    pub(crate) fn as_slice(&self) -> &[Run] {
        &self.runs[..self.len]
    }

    /// Number of runs.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    #[allow(dead_code)] // clippy's len_without_is_empty; tests use it
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Total words covered.
    pub(crate) fn words(&self) -> usize {
        self.words
    }

    fn clear(&mut self) {
        self.len = 0;
        self.words = 0;
    }

    /// Appends the run `[start, end)`.
    fn push(&mut self, start: usize, end: usize) {
        if let Some(r) = self.runs.get_mut(self.len) {
            *r = Run {
                start: start as u16,
                len: (end - start) as u16,
            };
            self.len += 1;
            self.words += end - start;
        }
    }
}

impl Default for Runs {
    fn default() -> Self {
        Self::new()
    }
}

/// The outcome of comparing a page with its base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Diff {
    /// Nothing changed: the page need not be journaled at all.
    Same,
    /// The runs in the [`Runs`] describe the change within the size limit.
    Delta,
    /// The entry would be longer than the limit: journal the page whole.
    Full,
}

/// Words per span of the first, branch-free test (512 bytes): an OR of XORs over a fixed-length
/// array, which the compiler vectorises. Most spans of a page a commit changed are equal.
const SPAN: usize = 64;

/// Whether two spans differ anywhere (OR of XORs without an early exit, so it vectorises).
#[inline(always)]
fn span_differs(a: &[u64], b: &[u64]) -> bool {
    debug_assert!(a.len() == SPAN && b.len() == SPAN);
    let mut x = [0u64; 4];
    for (ca, cb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for j in 0..4 {
            x[j] |= ca[j] ^ cb[j];
        }
    }
    (x[0] | x[1] | x[2] | x[3]) != 0
}

/// Compares `new` with `base` and fills `runs` with the runs of differing words, giving up
/// with [`Diff::Full`] as soon as the entry they need would exceed `max_entry` bytes.
pub(crate) fn diff_page(new: &PageWords, base: &PageWords, max_entry: usize, runs: &mut Runs) -> Diff {
    runs.clear();
    // Start of the run being extended, if the previous word differed.
    let mut open: Option<usize> = None;
    for (sp, (ns, bs)) in new.chunks_exact(SPAN).zip(base.chunks_exact(SPAN)).enumerate() {
        let span_first = sp * SPAN;
        if !span_differs(ns, bs) {
            // Every block of the span is equal: what the block loop below concludes for them,
            // at once (the open run ends at the span's first word).
            if let Some(s) = open.take() {
                runs.push(s, span_first);
                if entry_len(runs.len, runs.words) > max_entry {
                    return Diff::Full;
                }
            }
            continue;
        }
        for (b, (nb, bb)) in ns.chunks_exact(BLOCK).zip(bs.chunks_exact(BLOCK)).enumerate() {
            let mut x = 0u64;
            for i in 0..BLOCK {
                x |= nb[i] ^ bb[i];
            }
            let first = span_first + b * BLOCK;
            if x == 0 {
                if let Some(s) = open.take() {
                    runs.push(s, first);
                    if entry_len(runs.len, runs.words) > max_entry {
                        return Diff::Full;
                    }
                }
                continue;
            }
            for i in 0..BLOCK {
                let differs = nb[i] != bb[i];
                match (differs, open) {
                    (true, None) => open = Some(first + i),
                    (false, Some(s)) => {
                        open = None;
                        runs.push(s, first + i);
                    }
                    _ => {}
                }
            }
            // Checked once per block: the bound on the open run is exact enough (it is at most
            // one block away) and keeps the inner loop free of it.
            let open_words = open.map_or(0, |s| first + BLOCK - s);
            if entry_len(runs.len + usize::from(open.is_some()), runs.words + open_words) > max_entry {
                return Diff::Full;
            }
        }
    }
    if let Some(s) = open {
        runs.push(s, PAGE_WORDS);
    }
    if runs.len == 0 {
        Diff::Same
    } else if entry_len(runs.len, runs.words) > max_entry {
        Diff::Full
    } else {
        Diff::Delta
    }
}

/// A page of zeros: the base of a page that the journal has never held (grown into the extent
/// since the snapshot replay starts from).
pub(crate) static ZERO_PAGE: PageWords = [0; PAGE_WORDS];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::format::delta::MAX_USEFUL_ENTRY_LEN;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed | 1;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    /// The runs by the obvious word-by-word definition.
    fn reference(new: &PageWords, base: &PageWords) -> Vec<Run> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < PAGE_WORDS {
            if new[i] != base[i] {
                let s = i;
                while i < PAGE_WORDS && new[i] != base[i] {
                    i += 1;
                }
                out.push(Run {
                    start: s as u16,
                    len: (i - s) as u16,
                });
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn identical_pages_are_same() {
        let mut r = Runs::new();
        let mut next = rng(1);
        let mut p = Box::new([0u64; PAGE_WORDS]);
        p.iter_mut().for_each(|w| *w = next());
        assert_eq!(diff_page(&p, &p.clone(), usize::MAX, &mut r), Diff::Same);
        assert!(r.is_empty());
        assert_eq!(diff_page(&ZERO_PAGE, &ZERO_PAGE, 0, &mut r), Diff::Same);
    }

    #[test]
    fn runs_match_the_reference_on_random_changes() {
        let mut next = rng(7);
        let mut r = Runs::new();
        for round in 0..3000 {
            let mut base = Box::new([0u64; PAGE_WORDS]);
            base.iter_mut().for_each(|w| *w = next());
            let mut new = base.clone();
            let changes = (next() % 40) as usize;
            for _ in 0..changes {
                let at = (next() % PAGE_WORDS as u64) as usize;
                let len = 1 + (next() % [1, 3, 20, 200][round % 4]) as usize;
                for w in &mut new[at..(at + len).min(PAGE_WORDS)] {
                    *w ^= 1 << (next() % 64);
                }
            }
            let want = reference(&new, &base);
            let got = diff_page(&new, &base, usize::MAX, &mut r);
            assert_eq!(r.as_slice(), &want[..], "round {round}");
            assert_eq!(got, if want.is_empty() { Diff::Same } else { Diff::Delta });
            let words: usize = want.iter().map(|r| r.len as usize).sum();
            assert_eq!(r.words(), words);
            // With a limit, Delta exactly when the reference entry fits.
            let limited = diff_page(&new, &base, MAX_USEFUL_ENTRY_LEN, &mut r);
            let fits = entry_len(want.len(), words) <= MAX_USEFUL_ENTRY_LEN;
            match limited {
                Diff::Same => assert!(want.is_empty()),
                Diff::Delta => assert!(fits && r.as_slice() == &want[..]),
                Diff::Full => assert!(!fits, "round {round}: gave up on an entry that fits"),
            }
        }
    }

    #[test]
    fn edge_words_and_a_whole_page() {
        let mut r = Runs::new();
        let base = Box::new([5u64; PAGE_WORDS]);
        let mut new = base.clone();
        new[0] = 1;
        new[511] = 1;
        new[7] = 1;
        new[8] = 1;
        assert_eq!(diff_page(&new, &base, usize::MAX, &mut r), Diff::Delta);
        let want = [(0, 1), (7, 2), (511, 1)].map(|(start, len)| Run { start, len });
        assert_eq!(r.as_slice(), &want);
        let all = Box::new([6u64; PAGE_WORDS]);
        assert_eq!(diff_page(&all, &base, usize::MAX, &mut r), Diff::Delta);
        assert_eq!(r.as_slice(), &[Run { start: 0, len: 512 }]);
        assert_eq!(diff_page(&all, &base, MAX_USEFUL_ENTRY_LEN, &mut r), Diff::Full);
        // Every other word: the most runs a page can have.
        let mut alt = base.clone();
        alt.iter_mut().step_by(2).for_each(|w| *w = 0);
        assert_eq!(diff_page(&alt, &base, usize::MAX, &mut r), Diff::Delta);
        assert_eq!(r.len(), 256);
        assert_eq!(diff_page(&alt, &base, MAX_USEFUL_ENTRY_LEN, &mut r), Diff::Full);
    }
}
