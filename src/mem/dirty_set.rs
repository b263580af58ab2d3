//! The software dirty bitmap ([`DirtySet`]): the pages of one epoch, accumulated between
//! snapshots and stored in snapshot files. Pure bookkeeping: it never sees the kernel
//! tracker (`track/`), which only reports ranges that the engine inserts here.
//!
//! # Invariants
//!
//! `words.len() <= ceil(max_pages / 64)` and no bit at index `>= max_pages` is set, so
//! `count() <= max_pages`.

#![forbid(unsafe_code)]

use bitvec::prelude::{BitSlice, Lsb0};

use crate::mem::sysmem::SysVec;
use crate::sys::OS_PAGE;

/// Page size of the bitmap's bits.
const PAGE: usize = OS_PAGE;

/// Bits per storage word of [`DirtySet`].
const WORD_BITS: usize = usize::BITS as usize;

/// The software dirty bitmap of one epoch: a set of pages of the region
/// `[base, base + max_pages * 4096)`, bit `i` standing for the page at `base + i * 4096`.
///
/// Storage is a `System`-allocated word vector that grows (doubling) to the highest page
/// inserted, so a small heap in a large reservation costs a small bitmap.
#[derive(Debug, Clone)]
pub(crate) struct DirtySet {
    base: usize,
    max_pages: usize,
    words: SysVec<usize>,
}

impl DirtySet {
    /// An empty set over `max_pages` pages from `base` (page-aligned). Allocates nothing.
    pub(crate) fn new(base: usize, max_pages: usize) -> DirtySet {
        debug_assert!(base % PAGE == 0);
        DirtySet {
            base,
            max_pages,
            words: SysVec::new_in(std::alloc::System),
        }
    }

    /// The first byte of the region.
    #[cfg(test)]
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// The number of pages the set can hold.
    #[cfg(test)]
    pub(crate) fn max_pages(&self) -> usize {
        self.max_pages
    }

    fn limit(&self) -> usize {
        self.base.saturating_add(self.max_pages.saturating_mul(PAGE))
    }

    fn max_words(&self) -> usize {
        self.max_pages.div_ceil(WORD_BITS)
    }

    fn bits(&self) -> &BitSlice<usize, Lsb0> {
        BitSlice::from_slice(&self.words)
    }

    /// Grows the storage so that page index `pages - 1` has a bit.
    fn grow_to(&mut self, pages: usize) {
        let need = pages.div_ceil(WORD_BITS);
        if need > self.words.len() {
            let target = need.max(self.words.len() * 2).max(16).min(self.max_words());
            self.words.resize(target, 0);
        }
    }

    /// Adds the pages of `[a, b)` (page-aligned, inside the region; a range reaching outside
    /// is clipped to it, which is a caller bug caught in debug builds).
    pub(crate) fn insert_range(&mut self, a: usize, b: usize) {
        debug_assert!(a % PAGE == 0 && b % PAGE == 0);
        debug_assert!(
            self.base <= a && a <= b && b <= self.limit(),
            "{a:#x}..{b:#x} outside the region"
        );
        let a = a.clamp(self.base, self.limit());
        let b = b.clamp(self.base, self.limit());
        if a >= b {
            return;
        }
        let (i, j) = ((a - self.base) / PAGE, (b - self.base).div_ceil(PAGE));
        self.grow_to(j);
        BitSlice::<usize, Lsb0>::from_slice_mut(&mut self.words)[i..j].fill(true);
    }

    /// Whether the page containing `addr` is in the set (false outside the region).
    pub(crate) fn contains(&self, addr: usize) -> bool {
        if addr < self.base || addr >= self.limit() {
            return false;
        }
        let i = (addr - self.base) / PAGE;
        i < self.words.len() * WORD_BITS && self.bits()[i]
    }

    /// Adds every page of `other`.
    pub(crate) fn union_with(&mut self, other: &DirtySet) {
        if other.base != self.base || other.max_pages != self.max_pages {
            // Not the engine's use; correct but page-run by page-run.
            for (a, b) in other.iter_ranges() {
                let (a, b) = (a.max(self.base), b.min(self.limit()));
                if a < b {
                    self.insert_range(a, b);
                }
            }
            return;
        }
        if other.words.len() > self.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (w, o) in self.words.iter_mut().zip(other.words.iter()) {
            *w |= *o;
        }
    }

    /// Empties the set, keeping its storage.
    #[cfg(test)]
    pub(crate) fn clear(&mut self) {
        self.words.clear();
    }

    /// The number of pages in the set.
    pub(crate) fn count(&self) -> usize {
        self.bits().count_ones()
    }

    /// Whether the set holds no page.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// The set as coalesced, page-aligned address ranges `[a, b)` in increasing order.
    pub(crate) fn iter_ranges(&self) -> DirtyRanges<'_> {
        DirtyRanges { set: self, pos: 0 }
    }

    /// Whether every page of `self` is in `other`.
    #[cfg(test)]
    pub(crate) fn is_subset_of(&self, other: &DirtySet) -> bool {
        if other.base != self.base {
            return self
                .iter_ranges()
                .all(|(a, b)| (a..b).step_by(PAGE).all(|p| other.contains(p)));
        }
        self.words
            .iter()
            .enumerate()
            .all(|(k, &w)| w & !other.words.get(k).copied().unwrap_or(0) == 0)
    }

    /// The length of [`to_bytes`](Self::to_bytes)'s output: up to the last non-zero byte.
    pub(crate) fn encoded_len(&self) -> usize {
        match self.words.iter().rposition(|&w| w != 0) {
            None => 0,
            Some(k) => k * (WORD_BITS / 8) + (WORD_BITS - self.words[k].leading_zeros() as usize).div_ceil(8),
        }
    }

    /// Appends the on-disk form: `encoded_len()` bytes, bit `i` of byte `j` standing for page
    /// `8 * j + i` (little-endian bit order), trailing zero bytes omitted.
    pub(crate) fn to_bytes(&self, out: &mut SysVec<u8>) {
        let n = self.encoded_len();
        out.reserve(n);
        out.extend(self.words.iter().flat_map(|w| w.to_le_bytes()).take(n));
    }

    /// Rebuilds a set from [`to_bytes`](Self::to_bytes) output read from disk. Rejects, without
    /// panicking, more bytes than `max_pages` needs and bits set at or beyond `max_pages`.
    /// Trailing zero bytes are accepted.
    pub(crate) fn from_bytes(base: usize, max_pages: usize, bytes: &[u8]) -> Result<DirtySet, &'static str> {
        if bytes.len() > max_pages.div_ceil(8) {
            return Err("dirty-page bitmap is longer than the region needs");
        }
        if bytes.len() == max_pages.div_ceil(8) && max_pages % 8 != 0 {
            if let Some(&last) = bytes.last() {
                if last >> (max_pages % 8) != 0 {
                    return Err("dirty-page bitmap marks pages beyond the end of the region");
                }
            }
        }
        let mut set = DirtySet::new(base, max_pages);
        set.words.reserve_exact(bytes.len().div_ceil(WORD_BITS / 8));
        for chunk in bytes.chunks(WORD_BITS / 8) {
            let mut word = [0u8; WORD_BITS / 8];
            word[..chunk.len()].copy_from_slice(chunk);
            set.words.push(usize::from_le_bytes(word));
        }
        Ok(set)
    }

    /// Checks the invariants of the module docs; panics on violation (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert!(self.words.len() <= self.max_words());
        let bits = self.bits();
        if bits.len() > self.max_pages {
            assert!(bits[self.max_pages..].not_any(), "bits set beyond max_pages");
        }
    }
}

/// Iterator of [`DirtySet::iter_ranges`].
#[derive(Debug)]
pub(crate) struct DirtyRanges<'a> {
    set: &'a DirtySet,
    /// Next page index to look at.
    pos: usize,
}

impl Iterator for DirtyRanges<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let bits = self.set.bits();
        if self.pos >= bits.len() {
            return None;
        }
        let Some(off) = bits[self.pos..].first_one() else {
            self.pos = bits.len();
            return None;
        };
        let i = self.pos + off;
        let j = i + bits[i..].first_zero().unwrap_or(bits.len() - i);
        self.pos = j;
        Some((self.set.base + i * PAGE, self.set.base + j * PAGE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE;

    fn sysvec<T>() -> SysVec<T> {
        SysVec::new_in(std::alloc::System)
    }

    /// xorshift64*: a deterministic sequence for the randomised tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn dirty_set_basic_operations() {
        let base = 0x10_0000_0000usize;
        let mut s = DirtySet::new(base, 1000);
        assert!(s.is_empty() && s.count() == 0 && s.iter_ranges().next().is_none());
        s.insert_range(base + 3 * P, base + 6 * P);
        s.insert_range(base + 6 * P, base + 7 * P);
        s.insert_range(base + 999 * P, base + 1000 * P);
        s.insert_range(base, base); // empty
        s.check_invariants();
        assert_eq!(s.count(), 5);
        assert!(s.contains(base + 3 * P) && s.contains(base + 7 * P - 1) && s.contains(base + 999 * P));
        assert!(!s.contains(base + 2 * P) && !s.contains(base + 7 * P) && !s.contains(base - 1));
        assert!(!s.contains(base + 1000 * P), "outside the region");
        let r: Vec<_> = s.iter_ranges().collect();
        assert_eq!(r, vec![(base + 3 * P, base + 7 * P), (base + 999 * P, base + 1000 * P)]);

        let mut u = DirtySet::new(base, 1000);
        u.insert_range(base + 4 * P, base + 5 * P);
        assert!(u.is_subset_of(&s) && !s.is_subset_of(&u));
        u.insert_range(base + 100 * P, base + 200 * P);
        assert!(!u.is_subset_of(&s));
        s.union_with(&u);
        s.check_invariants();
        assert_eq!(s.count(), 5 + 100);
        assert!(u.is_subset_of(&s));
        let empty = DirtySet::new(base, 1000);
        assert!(empty.is_subset_of(&u) && !u.is_subset_of(&empty));
        s.clear();
        assert!(s.is_empty() && s.count() == 0 && s.iter_ranges().next().is_none());
        assert!(s.is_subset_of(&empty));
        s.insert_range(base, base + 1000 * P);
        assert_eq!(s.count(), 1000);
        assert_eq!(s.iter_ranges().collect::<Vec<_>>(), vec![(base, base + 1000 * P)]);
        s.check_invariants();
    }

    #[test]
    fn dirty_set_grows_lazily() {
        let base = 0x10_0000_0000usize;
        let mut s = DirtySet::new(base, 16 << 20); // a 64 GiB region
        assert_eq!(s.words.capacity(), 0);
        s.insert_range(base, base + P);
        assert!(s.words.len() <= 16, "a one-page set should not allocate 2 MiB");
        s.insert_range(base + (16 << 20) * P - P, base + (16 << 20) * P);
        assert_eq!(s.count(), 2);
        s.check_invariants();
    }

    #[test]
    fn dirty_set_bytes_are_little_endian_bit_order_and_round_trip() {
        let base = 0x10_0000_0000usize;
        let mut s = DirtySet::new(base, 77);
        s.insert_range(base + 10 * P, base + 11 * P);
        let mut bytes = sysvec();
        s.to_bytes(&mut bytes);
        assert_eq!(bytes.as_slice(), &[0, 0b100], "bit 2 of byte 1 is page 10");
        assert_eq!(s.encoded_len(), 2);

        let mut rng = Rng(42);
        for max_pages in [1usize, 7, 8, 9, 63, 64, 65, 77, 1000, 4096] {
            for _ in 0..20 {
                let mut s = DirtySet::new(base, max_pages);
                for _ in 0..rng.below(10) {
                    let a = rng.below(max_pages);
                    let b = a + 1 + rng.below(max_pages - a);
                    s.insert_range(base + a * P, base + b * P);
                }
                let mut bytes = sysvec();
                s.to_bytes(&mut bytes);
                assert_eq!(bytes.len(), s.encoded_len());
                assert!(bytes.last() != Some(&0), "trailing zero bytes are omitted");
                let back = DirtySet::from_bytes(base, max_pages, &bytes).unwrap();
                back.check_invariants();
                assert_eq!((back.base(), back.max_pages()), (base, max_pages));
                assert!(back.is_subset_of(&s) && s.is_subset_of(&back));
                assert_eq!(
                    back.iter_ranges().collect::<Vec<_>>(),
                    s.iter_ranges().collect::<Vec<_>>()
                );
                // Trailing zero bytes (up to the full length) are accepted.
                let mut padded = bytes.to_vec();
                padded.resize(max_pages.div_ceil(8), 0);
                let back = DirtySet::from_bytes(base, max_pages, &padded).unwrap();
                assert_eq!(back.count(), s.count());
            }
        }
        assert!(DirtySet::from_bytes(base, 10, &[]).unwrap().is_empty());
    }

    #[test]
    fn dirty_set_from_bytes_rejects_bad_lengths_and_stray_bits() {
        let base = 0x10_0000_0000usize;
        assert!(DirtySet::from_bytes(base, 16, &[0xFF, 0xFF]).is_ok());
        assert!(DirtySet::from_bytes(base, 16, &[0, 0, 0]).is_err(), "one byte too many");
        assert!(DirtySet::from_bytes(base, 0, &[0]).is_err());
        assert!(DirtySet::from_bytes(base, 10, &[0, 0b11]).is_ok());
        assert!(DirtySet::from_bytes(base, 10, &[0, 0b100]).is_err(), "page 10 of 10");
        assert!(DirtySet::from_bytes(base, 10, &[0, 0x80]).is_err());
        assert!(DirtySet::from_bytes(base, usize::MAX, &[1; 100]).is_ok());
    }
}
