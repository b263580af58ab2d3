//! Walking the allocated blocks of an arena, and freeing blocks found unreachable.
//!
//! Used by [`GlobalHeap`](crate::GlobalHeap)'s reclaim at open: it lists every allocated
//! block, traces from the roots, and frees what it did not reach.
//!
//! A block is *allocated* when it is a span, a huge block, or a carved block of a slab
//! (index `< reserved`) that is on none of the slab's three free lists (`free`,
//! `local_free`, `thread_free`). Blocks are reported in address order.
//!
//! # Invariants
//!
//! - Reported blocks are disjoint, lie inside `[base, base + extent)` and are reported in
//!   increasing address order; `len > 0`.
//! - A huge block is reported with its whole capacity (`segments * SEGMENT - SLICE`), a span
//!   with its slices, a slab block with its class's block size.
//!
//! # Safety
//!
//! The walk reads segment headers and free-list links inside `[base, base + extent)` only,
//! checks every list element against its slab's bounds before following it (via
//! `check::walk_list`), and requires that no allocator call runs meanwhile (the caller pauses
//! the arena or has exclusive use of it).

use super::arena::Arena;
use super::check::walk_list;
use super::segment::*;
use super::slab::{slab_start, STATE_MASK};

impl Arena {
    /// Calls `f(start, len)` for every allocated block, in address order. Returns a
    /// description of the first inconsistency found in the free lists instead of walking past
    /// it.
    ///
    /// The caller holds a pause of this arena or otherwise guarantees that no allocator call
    /// runs during the walk.
    pub(crate) fn for_each_block(&self, mut f: impl FnMut(usize, usize)) -> Result<(), String> {
        let n = self.extent_segments();
        let mut s = 0;
        while s < n {
            if !self.seg_used(s) {
                s += 1;
                continue;
            }
            let seg = self.seg(s);
            // SAFETY: s < extent, so the segment is mapped; its header was validated at
            // attach (or written by this process); no allocator call runs (contract).
            let sh = unsafe { &*seg };
            if sh.kind == SEG_HUGE {
                let k = (sh.huge_segments as usize).clamp(1, n - s);
                f(seg as usize + SLICE, k * SEGMENT - SLICE);
                s += k;
                continue;
            }
            if sh.kind != SEG_NORMAL {
                return Err(format!("segment {s}: used but kind {}", sh.kind));
            }
            let mut i = 1;
            while i < SLICES_PER_SEGMENT {
                let d = &sh.descs[i];
                match d.kind {
                    D_SLAB => self.slab_blocks(s, i, d, &mut f)?,
                    D_SPAN => f(seg as usize + i * SLICE, d.block_size as usize),
                    _ => {}
                }
                i += if d.kind == D_FREE {
                    1
                } else {
                    (d.slices as usize).max(1)
                };
            }
            s += 1;
        }
        Ok(())
    }

    /// Reports the allocated blocks of the slab whose head descriptor is `d`.
    fn slab_blocks(&self, s: usize, i: usize, d: &SlabDesc, f: &mut impl FnMut(usize, usize)) -> Result<(), String> {
        let start = slab_start(d);
        let bs = d.block_size as usize;
        let reserved = d.reserved as usize;
        if bs == 0 || reserved > d.capacity as usize || reserved > 128 * 64 {
            return Err(format!(
                "segment {s} slice {i}: slab with block size {bs}, {reserved} blocks carved"
            ));
        }
        let mut free = [0u64; 128];
        walk_list(d, start, d.free, &mut free, "free")?;
        walk_list(d, start, d.local_free, &mut free, "local_free")?;
        let tf = d.thread_free.load(std::sync::atomic::Ordering::Relaxed) & !STATE_MASK;
        walk_list(d, start, tf, &mut free, "thread_free")?;
        for b in 0..reserved {
            if free[b / 64] & (1 << (b % 64)) == 0 {
                f(start + b * bs, bs);
            }
        }
        Ok(())
    }
}

impl Arena {
    /// Bytes from `p` to the end of the block that contains it: for a slab block the rest of
    /// its block size, for a span the rest of its slices, for a huge block the rest of its
    /// segments. 0 for an address in no allocated run.
    ///
    /// # Safety
    ///
    /// `p` lies inside a live block of this arena (so its descriptors are stable).
    pub(crate) unsafe fn usable_size(&self, p: usize) -> usize {
        debug_assert!(self.contains(p as *const u8));
        let seg = p & !(SEGMENT - 1);
        let mut d = super::slab::desc_of(p);
        // SAFETY: p is a live block (contract): its segment header and descriptors are mapped
        // and immutable while it lives.
        unsafe {
            if (*d).kind == D_CONT {
                d = d.sub(((*d).slices as usize).min((p - seg) >> SLICE_SHIFT));
            }
            match (*d).kind {
                D_SLAB => {
                    let start = slab_start(d);
                    let bs = (*d).block_size as usize;
                    start + (p - start) / bs * bs + bs - p
                }
                D_SPAN => slab_start(d) + (*d).slices as usize * SLICE - p,
                D_HUGE => seg + (*(seg as *const SegmentHeader)).huge_segments as usize * SEGMENT - p,
                _ => 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::TestRegion;
    use std::alloc::Layout;

    #[test]
    fn walk_reports_exactly_the_live_blocks_in_address_order() {
        let t = TestRegion::new(64 << 20);
        let h = t.alloc();
        let a = h.arena();
        let mut live = Vec::new();
        for (i, size) in [8usize, 24, 100, 3000, 20_000, 200_000, 5 << 20]
            .iter()
            .cycle()
            .take(70)
            .enumerate()
        {
            let l = Layout::from_size_align(*size, 8).unwrap();
            let p = a.alloc(l) as usize;
            assert_ne!(p, 0);
            if i % 3 == 0 {
                // SAFETY: p is a live block of this arena with layout l.
                unsafe { a.dealloc(p as *mut u8, l) };
            } else {
                live.push((p, *size));
            }
        }
        let mut seen = Vec::new();
        let _g = a.pause();
        a.for_each_block(|p, len| seen.push((p, len))).unwrap();
        assert!(
            seen.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0),
            "sorted and disjoint"
        );
        assert_eq!(seen.len(), live.len());
        live.sort();
        for ((p, size), (q, len)) in live.iter().zip(&seen) {
            assert_eq!(p, q);
            assert!(len >= size);
            // SAFETY: p is a live block.
            assert_eq!(unsafe { a.usable_size(*p) }, *len, "usable size of the block at {p:#x}");
        }
    }
}
