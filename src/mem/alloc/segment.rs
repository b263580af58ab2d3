//! Segments and slices: the persistent layout of the region and the slice-level allocator.
//!
//! The region `[base, base + max_size)` is cut into segments of [`SEGMENT`] = 4 MiB, each
//! cut into 64 slices of [`SLICE`] = 64 KiB. Slice 0 of every segment holds its
//! [`SegmentHeader`]; slice 0 of segment 0 additionally holds the [`ArenaHeader`] at
//! [`ARENA_HEADER_OFFSET`]. A *run* of slices is a slab (one size class) or a span (one large
//! block); a *huge* block is a run of whole segments whose first segment's header describes it
//! and whose data starts at slice 1 of that first segment.
//!
//! Persistent byte layout (native little-endian, fixed by `repr(C)` and checked by
//! compile-time assertions below):
//!
//! ```text
//! SegmentHeader @ segment + 0                      ArenaHeader @ segment 0 + 8192
//!   0 magic u32      4 kind u32                      0 magic u64   8 version u32
//!   8 huge_segments u64                             16 max_size u64
//!  16 free_slices u64 (bit i: slice i free)         24 extent u64 (bytes, multiple of SEGMENT)
//!  24 touched u64 (bit i: slice i ever handed out)  64 user_words [u64; 16]
//!  64 descs [SlabDesc; 64] (64 bytes each)         256 seg_used [u64; MAX_SEGMENTS / 64]
//!
//! SlabDesc (64 bytes)
//!   0 kind u8  1 class u8  2 has_aligned u8  3 pad   4 slices u32 (head: run length; CONT: back offset)
//!   8 block_size u32  12 capacity u32  16 reserved u32  20 used u32
//!  24 free  32 local_free  40 thread_free (ptr | state)  48 owner (process-local)  56 next (process-local)
//! ```
//!
//! # Invariants
//!
//! - `extent % SEGMENT == 0`, `SEGMENT <= extent <= max_size <= MAX_REGION`.
//! - `seg_used` bit `i` set ⇒ `i < extent / SEGMENT`; segment 0 is always used and `NORMAL`.
//! - For a used `NORMAL` segment: bit 0 of `free_slices` is clear, and slice `i` (`1..64`) is
//!   free ⇔ bit `i` of `free_slices` ⇔ `descs[i].kind == D_FREE`.
//! - A head descriptor at `i` with `slices == k` is followed by `k - 1` `D_CONT` descriptors
//!   whose `slices` field is their distance back to `i`; `i + k <= 64`.
//! - A used `HUGE` segment `i` with `huge_segments == n` covers segments `i..i+n`, all with
//!   their `seg_used` bit set; only segment `i` has a valid header.
//! - Process-local: `partial` bit `i` set ⇔ segment `i` is used, `NORMAL`, `free_slices != 0`.
//!
//! # Safety
//!
//! Headers are reached through raw pointers computed from `base`; they are valid because the
//! engine maps `[base, base + extent)` read-write before the arena uses it (grow hook
//! contract). Header fields other than the atomics are only written with the segment lock
//! held (a [`SegGuard`] proves it), or, for descriptor fields of an owned slab, by its owner.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::*};

use super::arena::Arena;
use super::pause::SpinGuard;

/// Bytes in a segment; segments are `SEGMENT`-aligned.
pub(crate) const SEGMENT: usize = 4 << 20;
/// Bytes in a slice, the unit of slabs and spans.
pub(crate) const SLICE: usize = 64 << 10;
/// `log2(SLICE)`.
pub(crate) const SLICE_SHIFT: u32 = 16;
/// Slices per segment (slice 0 is the header).
pub(crate) const SLICES_PER_SEGMENT: usize = SEGMENT / SLICE;
/// Largest span, in slices (all usable slices of one segment).
pub(crate) const SPAN_MAX_SLICES: usize = SLICES_PER_SEGMENT - 1;
/// Largest supported region (1 TiB): bounds the `seg_used` bitmap.
pub(crate) const MAX_REGION: usize = 1 << 40;
/// Segments in the largest region.
pub(crate) const MAX_SEGMENTS: usize = MAX_REGION / SEGMENT;
/// Where the arena header sits in segment 0.
pub(crate) const ARENA_HEADER_OFFSET: usize = 8192;
/// Offset of `descs` in a segment header.
pub(crate) const DESC_OFFSET: usize = 64;
/// `free_slices` of an empty segment: every slice but the header.
pub(crate) const ALL_SLICES: u64 = !1;

/// `ArenaHeader::magic`.
pub(crate) const ARENA_MAGIC: u64 = u64::from_le_bytes(*b"SNAPHEAP");
/// `ArenaHeader::version`: bump on any change of the persistent layout.
pub(crate) const LAYOUT_VERSION: u32 = 1;
/// `SegmentHeader::magic` once a segment has been initialised.
pub(crate) const SEG_MAGIC: u32 = u32::from_le_bytes(*b"SHSG");

/// Segment kinds.
pub(crate) const SEG_FREE: u32 = 0;
pub(crate) const SEG_NORMAL: u32 = 1;
pub(crate) const SEG_HUGE: u32 = 2;

/// Descriptor kinds.
pub(crate) const D_FREE: u8 = 0;
pub(crate) const D_SLAB: u8 = 1;
pub(crate) const D_SPAN: u8 = 2;
pub(crate) const D_CONT: u8 = 3;
pub(crate) const D_HUGE: u8 = 4;

/// The persistent descriptor of one slice (see the module docs for the layout).
#[repr(C)]
pub(crate) struct SlabDesc {
    pub kind: u8,
    pub class: u8,
    /// 1 once an aligned interior pointer was handed out from this slab.
    pub has_aligned: AtomicU8,
    pub _pad: u8,
    /// Head: slices in the run. `D_CONT`: distance back to the head.
    pub slices: u32,
    pub block_size: u32,
    pub capacity: u32,
    /// Blocks carved so far by bump; blocks `reserved..capacity` were never handed out.
    pub reserved: u32,
    /// Blocks handed out and not yet collected (includes blocks in `thread_free`).
    pub used: u32,
    /// Free list popped by the owner.
    pub free: usize,
    /// Frees by the owner.
    pub local_free: usize,
    /// Frees by other threads: list head | state (`slab::OWNED`, `ABANDONED`, `POOLED`).
    pub thread_free: AtomicUsize,
    /// Process-local: owning `ThreadHeap` address | `slab::OWNER_ALIGNED`; 0 when unowned.
    pub owner: AtomicUsize,
    /// Process-local: next descriptor in a pool list.
    pub next: usize,
}

/// The persistent header at the start of every segment.
#[repr(C)]
pub(crate) struct SegmentHeader {
    pub magic: u32,
    pub kind: u32,
    pub huge_segments: u64,
    pub free_slices: u64,
    pub touched: u64,
    pub _reserved: [u64; 4],
    pub descs: [SlabDesc; SLICES_PER_SEGMENT],
}

/// The persistent arena header in segment 0.
#[repr(C)]
pub(crate) struct ArenaHeader {
    pub magic: u64,
    pub version: u32,
    pub _pad: u32,
    pub max_size: u64,
    pub extent: AtomicU64,
    pub _reserved: [u64; 4],
    pub user_words: [AtomicU64; 16],
    pub _reserved2: [u64; 8],
    pub seg_used: [AtomicU64; MAX_SEGMENTS / 64],
}

const _: () = {
    assert!(std::mem::size_of::<SlabDesc>() == 64);
    assert!(std::mem::offset_of!(SlabDesc, free) == 24);
    assert!(std::mem::offset_of!(SlabDesc, thread_free) == 40);
    assert!(std::mem::offset_of!(SlabDesc, next) == 56);
    assert!(std::mem::offset_of!(SegmentHeader, descs) == DESC_OFFSET);
    assert!(std::mem::size_of::<SegmentHeader>() <= ARENA_HEADER_OFFSET);
    assert!(std::mem::offset_of!(ArenaHeader, extent) == 24);
    assert!(std::mem::offset_of!(ArenaHeader, user_words) == 64);
    assert!(std::mem::offset_of!(ArenaHeader, seg_used) == 256);
    assert!(ARENA_HEADER_OFFSET + std::mem::size_of::<ArenaHeader>() <= SLICE);
};

/// Proof that the arena's segment lock is held.
pub(crate) type SegGuard<'a> = SpinGuard<'a>;

/// The lowest `i` such that bits `i..i+k` of `bits` are all set (`1 <= k <= 64`).
pub(crate) fn find_run(bits: u64, k: usize) -> Option<usize> {
    debug_assert!((1..=64).contains(&k));
    let mut m = bits;
    let mut have = 1;
    while have < k && m != 0 {
        let s = have.min(k - have);
        m &= m >> s;
        have += s;
    }
    if m == 0 {
        None
    } else {
        Some(m.trailing_zeros() as usize)
    }
}

/// Bits `i..i+k` (`i + k <= 64`).
pub(crate) fn run_mask(i: usize, k: usize) -> u64 {
    debug_assert!(i + k <= 64 && k >= 1);
    (if k == 64 { !0 } else { (1u64 << k) - 1 }) << i
}

fn bit_get(map: &[AtomicU64], i: usize) -> bool {
    map[i / 64].load(Relaxed) & (1 << (i % 64)) != 0
}

fn bit_set(map: &[AtomicU64], i: usize, on: bool) {
    if on {
        map[i / 64].fetch_or(1 << (i % 64), Relaxed);
    } else {
        map[i / 64].fetch_and(!(1 << (i % 64)), Relaxed);
    }
}

/// The first `i` in `from..to` whose bit equals `want`, or `to`.
fn bit_find(map: &[AtomicU64], from: usize, to: usize, want: bool) -> usize {
    let mut i = from;
    while i < to {
        let w = map[i / 64].load(Relaxed);
        let w = if want { w } else { !w };
        let w = w & (!0u64 << (i % 64));
        if w != 0 {
            return (i - i % 64 + w.trailing_zeros() as usize).min(to);
        }
        i = i - i % 64 + 64;
    }
    to
}

/// Where a carved run lies and whether its memory is known to be all zero.
pub(crate) struct Run {
    pub seg: *mut SegmentHeader,
    pub idx: usize,
    pub zero: bool,
}

impl Arena {
    /// The header of segment `i`.
    #[inline(always)]
    pub(crate) fn seg(&self, i: usize) -> *mut SegmentHeader {
        (self.base + i * SEGMENT) as *mut SegmentHeader
    }

    /// The persistent arena header.
    pub(crate) fn header(&self) -> &ArenaHeader {
        // SAFETY: segment 0 is mapped read-write for the arena's lifetime (create/attach
        // contract) and the header lies inside its first slice.
        unsafe { &*((self.base + ARENA_HEADER_OFFSET) as *const ArenaHeader) }
    }

    /// Segments `[0, extent / SEGMENT)` have been handed out at least once.
    pub(crate) fn extent_segments(&self) -> usize {
        self.header().extent.load(Acquire) as usize / SEGMENT
    }

    pub(crate) fn seg_used(&self, i: usize) -> bool {
        bit_get(&self.header().seg_used, i)
    }

    fn set_partial(&self, i: usize, on: bool) {
        bit_set(&self.partial, i, on);
    }

    /// Asks the engine to map `[base, base + new_extent)` and records the new extent.
    fn grow_to(&self, _g: &SegGuard<'_>, new_extent: usize) -> bool {
        let cur = self.header().extent.load(Relaxed) as usize;
        if new_extent <= cur {
            return true;
        }
        if new_extent > self.max_size {
            return false;
        }
        let Some(grow) = self.grow else { return false };
        // SAFETY: the grow hook's contract is the engine's; we call it with the growth lock
        // held and from inside an allocator call, as documented on `GrowFn`.
        if !unsafe { grow(self.grow_ctx, new_extent) } {
            return false;
        }
        self.header().extent.store(new_extent as u64, Release);
        true
    }

    /// Writes a fresh `NORMAL` header into segment `i` (keeping its `touched` bits).
    fn init_normal(&self, _g: &SegGuard<'_>, i: usize) {
        let h = self.seg(i);
        // SAFETY: segment i lies below the extent, so it is mapped; the segment lock is held
        // and the segment is unused, so nobody else reads or writes its header.
        unsafe {
            let touched = if (*h).magic == SEG_MAGIC { (*h).touched } else { 0 };
            std::ptr::write_bytes((*h).descs.as_mut_ptr(), 0, SLICES_PER_SEGMENT);
            (*h).magic = SEG_MAGIC;
            (*h).kind = SEG_NORMAL;
            (*h).huge_segments = 0;
            (*h).free_slices = ALL_SLICES;
            (*h).touched = touched | 1;
        }
        bit_set(&self.header().seg_used, i, true);
        self.set_partial(i, true);
    }

    /// Initialises segment 0 at create time.
    pub(crate) fn init_segment0(&self, g: &SegGuard<'_>) {
        self.init_normal(g, 0);
    }

    /// Takes an unused segment below the extent, or grows the extent by one segment.
    fn alloc_segment(&self, g: &SegGuard<'_>) -> Option<usize> {
        let n = self.extent_segments();
        let mut i = bit_find(&self.header().seg_used, 1, n, false);
        if i == n {
            if !self.grow_to(g, (n + 1) * SEGMENT) {
                return None;
            }
            i = n;
        }
        self.init_normal(g, i);
        Some(i)
    }

    /// Carves a run of `k` free slices (`1 <= k <= SPAN_MAX_SLICES`) from the lowest segment
    /// that has one, taking a new segment (reused or grown) if none does and `allow_new`.
    /// The descriptors are left for the caller to fill.
    pub(crate) fn carve(&self, g: &SegGuard<'_>, k: usize, allow_new: bool) -> Option<Run> {
        debug_assert!((1..=SPAN_MAX_SLICES).contains(&k));
        let n = self.extent_segments();
        let mut i = bit_find(&self.partial, 0, n, true);
        let (seg, idx) = loop {
            if i >= n {
                if !allow_new {
                    return None;
                }
                let s = self.alloc_segment(g)?;
                break (s, 1);
            }
            // SAFETY: segment i is used (partial bit), hence mapped; segment lock held.
            let free = unsafe { (*self.seg(i)).free_slices };
            if let Some(idx) = find_run(free, k) {
                break (i, idx);
            }
            i = bit_find(&self.partial, i + 1, n, true);
        };
        let h = self.seg(seg);
        let mask = run_mask(idx, k);
        // SAFETY: as above; the run is free, so no descriptor in it is in use.
        let zero = unsafe {
            let zero = (*h).touched & mask == 0;
            (*h).free_slices &= !mask;
            (*h).touched |= mask;
            if (*h).free_slices == 0 {
                self.set_partial(seg, false);
            }
            zero
        };
        Some(Run { seg: h, idx, zero })
    }

    /// Tries to extend the run that ends at `idx` in `seg` by the `k` slices `idx..idx+k`.
    pub(crate) fn take_following(&self, _g: &SegGuard<'_>, seg: *mut SegmentHeader, idx: usize, k: usize) -> bool {
        if idx + k > SLICES_PER_SEGMENT {
            return false;
        }
        let mask = run_mask(idx, k);
        // SAFETY: seg is a used NORMAL segment (it holds the caller's span); lock held.
        unsafe {
            if (*seg).free_slices & mask != mask {
                return false;
            }
            (*seg).free_slices &= !mask;
            (*seg).touched |= mask;
            if (*seg).free_slices == 0 {
                self.set_partial(self.seg_index(seg), false);
            }
        }
        true
    }

    /// Index of the segment whose header is `seg`.
    pub(crate) fn seg_index(&self, seg: *const SegmentHeader) -> usize {
        (seg as usize - self.base) / SEGMENT
    }

    /// Returns slices `idx..idx+k` of `seg` to the segment, clearing their descriptors, and
    /// releases the segment when it becomes empty.
    pub(crate) fn release_slices(&self, _g: &SegGuard<'_>, seg: *mut SegmentHeader, idx: usize, k: usize) {
        let si = self.seg_index(seg);
        // SAFETY: seg is a used NORMAL segment; the run belonged to the caller, who no longer
        // uses it; lock held.
        unsafe {
            for j in idx..idx + k {
                let d = &mut *(*seg).descs.as_mut_ptr().add(j);
                d.kind = D_FREE;
                d.slices = 0;
                d.owner.store(0, Relaxed);
                d.thread_free.store(0, Relaxed);
            }
            (*seg).free_slices |= run_mask(idx, k);
            if (*seg).free_slices == ALL_SLICES && si != 0 {
                (*seg).kind = SEG_FREE;
                bit_set(&self.header().seg_used, si, false);
                self.set_partial(si, false);
            } else {
                self.set_partial(si, true);
            }
        }
    }

    /// Finds `n` consecutive unused segments (growing the extent if the run reaches past it)
    /// and makes them one huge block. Returns its first segment and whether its memory is
    /// known to be zero.
    pub(crate) fn alloc_huge(&self, g: &SegGuard<'_>, n: usize) -> Option<(usize, bool)> {
        let used = &self.header().seg_used;
        let max = self.max_size / SEGMENT;
        let mut i = 1;
        let first = loop {
            i = bit_find(used, i, max, false);
            if i + n > max {
                return None;
            }
            let end = bit_find(used, i, i + n, true);
            if end == i + n {
                break i;
            }
            i = end + 1;
        };
        if !self.grow_to(g, (first + n) * SEGMENT) {
            return None;
        }
        let mut zero = true;
        for s in first..first + n {
            // SAFETY: s is below the (possibly just grown) extent, hence mapped, and unused;
            // lock held.
            unsafe {
                let h = self.seg(s);
                zero &= (*h).magic != SEG_MAGIC || (*h).touched == 0;
            }
            bit_set(used, s, true);
        }
        let h = self.seg(first);
        // SAFETY: as above. Only the header and descriptor 1 are written; the block starts at
        // slice 1 and descriptor 1 lies in slice 0.
        unsafe {
            (*h).magic = SEG_MAGIC;
            (*h).kind = SEG_HUGE;
            (*h).huge_segments = n as u64;
            (*h).free_slices = 0;
            (*h).touched = !0;
            let d = &mut (*h).descs[1];
            d.kind = D_HUGE;
            d.slices = SPAN_MAX_SLICES as u32;
            d.owner.store(0, Relaxed);
        }
        Some((first, zero))
    }

    /// Marks segments `from..to` unused, writing a `FREE` header into each (their old
    /// contents were user data or a huge header).
    pub(crate) fn release_segments(&self, _g: &SegGuard<'_>, from: usize, to: usize) {
        for s in from..to {
            let h = self.seg(s);
            // SAFETY: the segments were part of a huge block being released; still mapped.
            unsafe {
                (*h).magic = SEG_MAGIC;
                (*h).kind = SEG_FREE;
                (*h).huge_segments = 0;
                (*h).free_slices = 0;
                (*h).touched = !0;
            }
            bit_set(&self.header().seg_used, s, false);
        }
    }

    /// Tries to extend the huge block at `first` from `n` to `m > n` segments in place.
    pub(crate) fn grow_huge(&self, g: &SegGuard<'_>, first: usize, n: usize, m: usize) -> bool {
        let used = &self.header().seg_used;
        if first + m > self.max_size / SEGMENT || bit_find(used, first + n, first + m, true) != first + m {
            return false;
        }
        if !self.grow_to(g, (first + m) * SEGMENT) {
            return false;
        }
        for s in first + n..first + m {
            bit_set(used, s, true);
        }
        // SAFETY: first is the head of a used huge block; lock held.
        unsafe { (*self.seg(first)).huge_segments = m as u64 };
        true
    }

    /// Rebuilds the process-local `partial` bitmap bit of a used segment (attach).
    pub(crate) fn note_partial(&self, i: usize, on: bool) {
        self.set_partial(i, on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_run_finds_lowest_run_of_set_bits() {
        assert_eq!(find_run(0, 1), None);
        assert_eq!(find_run(0b1000, 1), Some(3));
        assert_eq!(find_run(0b1101_1110, 3), Some(1));
        assert_eq!(find_run(0b1101_1110, 4), Some(1));
        assert_eq!(find_run(0b1101_1110, 5), None);
        assert_eq!(find_run(0b1101_1110 << 10, 2), Some(11));
        assert_eq!(find_run(ALL_SLICES, 63), Some(1));
        assert_eq!(find_run(ALL_SLICES, 64), None);
        assert_eq!(find_run(!0, 64), Some(0));
        for k in 1..=64 {
            for i in 0..=64 - k {
                assert_eq!(find_run(run_mask(i, k), k), Some(i));
                if k > 1 {
                    assert_eq!(find_run(run_mask(i, k), k).map(|_| ()), Some(()));
                    assert_eq!(find_run(run_mask(i, k - 1), k), None);
                }
            }
        }
    }

    #[test]
    fn bit_find_skips_words() {
        let map: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        bit_set(&map, 130, true);
        assert_eq!(bit_find(&map, 0, 256, true), 130);
        assert_eq!(bit_find(&map, 131, 256, true), 256);
        assert_eq!(bit_find(&map, 130, 256, false), 131);
        assert_eq!(bit_find(&map, 0, 100, true), 100);
    }
}
