//! Size classes: which block size serves a request, and how big a slab of each class is.
//!
//! Block sizes are 8, then 16-byte steps up to 128 bytes, then four classes per power of two
//! (`5/4`, `6/4`, `7/4`, `8/4` of the lower power) up to [`MEDIUM_MAX`] = 128 KiB, like
//! mimalloc's bins. Requests above `MEDIUM_MAX` are served by spans of whole slices instead.
//!
//! Every block size except 8 is a multiple of 16, and slabs start on a slice boundary
//! (64 KiB aligned), so every block of a class with size >= 16 is 16-byte aligned, and a block
//! of size `s` is aligned to the largest power of two dividing `s`.
//!
//! # Invariants
//!
//! - `class_of(s)` is the smallest class `c` with `block_size(c) >= s`, for `1 <= s <= MEDIUM_MAX`.
//! - `block_size(c) % 16 == 0` for `c >= 1`; `block_size(0) == 8`.
//! - `capacity(c) = slab_slices(c) * SLICE / block_size(c) >= 4`.
//! - `block_size(c) <= SMALL_MAX` implies `slab_slices(c) == 1`, otherwise `slab_slices(c) == 8`.

/// Bytes in one slice (the unit slabs and spans are made of).
const SLICE: usize = 64 << 10;

/// Largest block size served by one-slice (64 KiB) slabs.
pub(crate) const SMALL_MAX: usize = 8 << 10;
/// Largest block size served by a size class; larger requests get a span.
pub(crate) const MEDIUM_MAX: usize = 128 << 10;
/// Slices in a medium slab (512 KiB).
pub(crate) const MEDIUM_SLAB_SLICES: usize = 8;
/// Largest size looked up in the direct table.
pub(crate) const DIRECT_MAX: usize = 1024;

/// Classes 0..=8: 8, 16, 32, ..., 128. Then 4 classes for each of the 10 power-of-two ranges
/// (128, 256], ..., (64 KiB, 128 KiB].
pub(crate) const NUM_CLASSES: usize = 9 + 4 * 10;

/// The block size of class `c` (`c < NUM_CLASSES`).
pub(crate) const fn block_size(c: usize) -> usize {
    if c == 0 {
        8
    } else if c <= 8 {
        c * 16
    } else {
        let k = c - 9;
        let msb = 7 + k / 4;
        (5 + k % 4) << (msb - 2)
    }
}

/// The class for a request of `size` bytes, computed without the table
/// (`1 <= size <= MEDIUM_MAX`).
#[inline(always)]
pub(crate) const fn class_of_computed(size: usize) -> usize {
    if size <= 8 {
        0
    } else if size <= 128 {
        size.div_ceil(16)
    } else {
        let s = size - 1;
        let msb = (usize::BITS - 1 - s.leading_zeros()) as usize;
        let sub = (s >> (msb - 2)) & 3;
        9 + (msb - 7) * 4 + sub
    }
}

const fn build_direct() -> [u8; DIRECT_MAX / 8 + 1] {
    let mut t = [0u8; DIRECT_MAX / 8 + 1];
    let mut i = 1;
    while i <= DIRECT_MAX / 8 {
        t[i] = class_of_computed(i * 8) as u8;
        i += 1;
    }
    t
}

/// `DIRECT[(size + 7) / 8]` is the class of `size` for `1 <= size <= DIRECT_MAX`. Every class
/// boundary up to 1024 is a multiple of 8, so the table is exact.
static DIRECT: [u8; DIRECT_MAX / 8 + 1] = build_direct();

/// The class for a request of `size` bytes, `1 <= size <= MEDIUM_MAX`: one table load up to
/// 1 KiB, a leading-zero count above.
#[inline(always)]
pub(crate) fn class_of(size: usize) -> usize {
    debug_assert!((1..=MEDIUM_MAX).contains(&size));
    if size <= DIRECT_MAX {
        DIRECT[(size + 7) >> 3] as usize
    } else {
        class_of_computed(size)
    }
}

/// Slices in one slab of class `c`.
pub(crate) const fn slab_slices(c: usize) -> usize {
    if block_size(c) <= SMALL_MAX {
        1
    } else {
        MEDIUM_SLAB_SLICES
    }
}

/// Blocks in one slab of class `c`.
pub(crate) const fn capacity(c: usize) -> usize {
    slab_slices(c) * SLICE / block_size(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_of_returns_smallest_fitting_class_for_every_size() {
        let mut c = 0;
        for size in 1..=MEDIUM_MAX {
            while block_size(c) < size {
                c += 1;
            }
            assert_eq!(class_of(size), c, "size {size}");
            assert_eq!(class_of_computed(size), c, "size {size}");
        }
        assert_eq!(c, NUM_CLASSES - 1);
        assert_eq!(block_size(NUM_CLASSES - 1), MEDIUM_MAX);
    }

    #[test]
    fn block_sizes_increase_and_are_16_byte_multiples() {
        assert_eq!(block_size(0), 8);
        for c in 1..NUM_CLASSES {
            assert!(block_size(c) > block_size(c - 1));
            assert_eq!(block_size(c) % 16, 0, "class {c}");
        }
    }

    #[test]
    fn every_slab_holds_at_least_four_blocks_and_small_slabs_are_one_slice() {
        for c in 0..NUM_CLASSES {
            assert!(capacity(c) >= 4, "class {c}");
            assert_eq!(slab_slices(c) == 1, block_size(c) <= SMALL_MAX);
            assert!(capacity(c) <= SLICE / 8);
        }
    }
}
