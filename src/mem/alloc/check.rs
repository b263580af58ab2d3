//! Validation: the header checks `attach` runs on a recovered region, and the whole-structure
//! validator `check_invariants` that tests run after every phase.
//!
//! # Invariants checked
//!
//! Everything listed in `segment.rs` and `slab.rs`, in particular for every slab:
//! free-list elements lie inside the slab's carved blocks at block boundaries, no block is on
//! two lists, lists are acyclic, `used + |free| + |local_free| + (capacity - reserved) ==
//! capacity` and `|thread_free| <= used`; pooled slabs are exactly those on the pools.
//!
//! # Safety
//!
//! The validator reads the region only while the arena is paused (no allocator call in
//! flight, so no list changes) and only inside `[base, base + extent)`, and checks every
//! index and address before following it.

use std::sync::atomic::Ordering::*;

use super::arena::Arena;
use super::segment::*;
use super::size_class::{block_size, capacity, slab_slices, NUM_CLASSES};
use super::slab::{slab_start, ABANDONED, OWNED, POOLED, STATE_MASK};

/// What `check_invariants` counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ArenaReport {
    /// Segments in use (a huge block counts all of its segments).
    pub segments: usize,
    /// Slabs (size-class runs).
    pub slabs: usize,
    /// Spans (large blocks inside one segment).
    pub spans: usize,
    /// Huge blocks (runs of whole segments).
    pub huge: usize,
    /// Bytes in live blocks: blocks handed out and not freed, whole spans and huge blocks.
    pub used_bytes: usize,
    /// Bytes of free blocks inside slabs (on lists or never carved).
    pub free_bytes: usize,
    /// Slabs on the pools.
    pub pooled: usize,
}

fn err<T>(what: String) -> Result<T, String> {
    Err(what)
}

/// Checks the arena header and every segment header of a region for `attach`.
///
/// # Safety
///
/// `[base, base + SEGMENT)` is mapped, and so is `[base, base + extent)` for the extent the
/// header records (checked against `max_size` before use).
pub(crate) unsafe fn validate_persistent(base: usize, max_size: usize) -> Result<(), String> {
    // SAFETY: segment 0 is mapped (contract).
    let h = unsafe { &*((base + ARENA_HEADER_OFFSET) as *const ArenaHeader) };
    if h.magic != ARENA_MAGIC {
        return err(format!("arena header magic {:#x} is not {ARENA_MAGIC:#x}", h.magic));
    }
    if h.version != LAYOUT_VERSION {
        return err(format!(
            "allocator layout version {} is not {LAYOUT_VERSION}",
            h.version
        ));
    }
    if h.max_size != max_size as u64 {
        return err(format!(
            "recorded max_size {:#x} differs from {max_size:#x}",
            h.max_size
        ));
    }
    let extent = h.extent.load(Relaxed);
    if extent % SEGMENT as u64 != 0 || extent < SEGMENT as u64 || extent > max_size as u64 {
        return err(format!(
            "extent {extent:#x} is not a multiple of a segment within max_size"
        ));
    }
    let n = extent as usize / SEGMENT;
    let used = |i: usize| h.seg_used[i / 64].load(Relaxed) & (1 << (i % 64)) != 0;
    for w in n / 64..(max_size / SEGMENT).div_ceil(64) {
        let below = if w == n / 64 { (1u64 << (n % 64)) - 1 } else { 0 };
        let stray = h.seg_used[w].load(Relaxed) & !below;
        if stray != 0 {
            let i = w * 64 + stray.trailing_zeros() as usize;
            return err(format!("segment {i} marked used beyond the extent"));
        }
    }
    if !used(0) {
        return err("segment 0 not marked used".into());
    }
    let mut s = 0;
    while s < n {
        if !used(s) {
            s += 1;
            continue;
        }
        // SAFETY: s < extent, mapped.
        let sh = unsafe { &*((base + s * SEGMENT) as *const SegmentHeader) };
        if sh.magic != SEG_MAGIC {
            return err(format!("segment {s}: bad magic {:#x}", sh.magic));
        }
        match sh.kind {
            SEG_HUGE => {
                let k = sh.huge_segments as usize;
                if s == 0 || k == 0 || k > n - s {
                    return err(format!("segment {s}: huge block of {k} segments out of range"));
                }
                if let Some(j) = (s..s + k).find(|&j| !used(j)) {
                    return err(format!("segment {j}: inside huge block at {s} but not marked used"));
                }
                if sh.descs[1].kind != D_HUGE {
                    return err(format!("segment {s}: huge header without huge descriptor"));
                }
                s += k;
                continue;
            }
            SEG_NORMAL => validate_normal(s, sh)?,
            k => return err(format!("segment {s}: used but kind {k}")),
        }
        s += 1;
    }
    Ok(())
}

/// Checks one `NORMAL` segment's slice bitmap and descriptors.
fn validate_normal(s: usize, sh: &SegmentHeader) -> Result<(), String> {
    if sh.free_slices & 1 != 0 {
        return err(format!("segment {s}: header slice marked free"));
    }
    let mut i = 1;
    while i < SLICES_PER_SEGMENT {
        let d = &sh.descs[i];
        let free = sh.free_slices & (1 << i) != 0;
        if free {
            if d.kind != D_FREE {
                return err(format!("segment {s} slice {i}: free but descriptor kind {}", d.kind));
            }
            i += 1;
            continue;
        }
        let k = d.slices as usize;
        if k == 0 || i + k > SLICES_PER_SEGMENT {
            return err(format!("segment {s} slice {i}: run of {k} slices out of range"));
        }
        match d.kind {
            D_SLAB => {
                let c = d.class as usize;
                if c >= NUM_CLASSES || k != slab_slices(c) {
                    return err(format!("segment {s} slice {i}: slab class {c} with {k} slices"));
                }
                if d.block_size as usize != block_size(c) || d.capacity as usize != capacity(c) {
                    return err(format!(
                        "segment {s} slice {i}: block size or capacity wrong for class {c}"
                    ));
                }
                if d.reserved > d.capacity || d.used > d.reserved {
                    return err(format!(
                        "segment {s} slice {i}: used {} reserved {} capacity {}",
                        d.used, d.reserved, d.capacity
                    ));
                }
                if d.thread_free.load(Relaxed) & STATE_MASK > POOLED {
                    return err(format!("segment {s} slice {i}: bad slab state"));
                }
            }
            D_SPAN => {
                if d.block_size as usize != k * SLICE {
                    return err(format!("segment {s} slice {i}: span size does not match its slices"));
                }
            }
            kind => return err(format!("segment {s} slice {i}: in use but descriptor kind {kind}")),
        }
        for j in 1..k {
            let cd = &sh.descs[i + j];
            if cd.kind != D_CONT || cd.slices as usize != j || sh.free_slices & (1 << (i + j)) != 0 {
                return err(format!("segment {s} slice {}: bad continuation of run at {i}", i + j));
            }
        }
        i += k;
    }
    Ok(())
}

/// Walks a free list of slab `d`, marking blocks in `seen`. Returns its length.
pub(super) fn walk_list(
    d: &SlabDesc,
    start: usize,
    head: usize,
    seen: &mut [u64; 128],
    what: &str,
) -> Result<usize, String> {
    let bs = d.block_size as usize;
    let end = start + d.reserved as usize * bs;
    let mut p = head;
    let mut n = 0;
    while p != 0 {
        if p < start || p >= end || (p - start) % bs != 0 {
            return err(format!(
                "slab at {start:#x}: {what} element {p:#x} is not a carved block start"
            ));
        }
        let b = (p - start) / bs;
        if seen[b / 64] & (1 << (b % 64)) != 0 {
            return err(format!(
                "slab at {start:#x}: block {p:#x} twice on the lists ({what}) or a cycle"
            ));
        }
        seen[b / 64] |= 1 << (b % 64);
        n += 1;
        // SAFETY: p is a carved block of the slab, inside mapped memory; paused.
        p = unsafe { *(p as *const usize) };
    }
    Ok(n)
}

impl Arena {
    /// Validates the whole allocator state (pausing the arena meanwhile) and counts it.
    /// Must not be called while holding a pause of this arena.
    pub(crate) fn check_invariants(&self) -> Result<ArenaReport, String> {
        let _g = self.pause();
        self.check_paused()
    }

    /// Bytes in live blocks (see [`ArenaReport::used_bytes`]). Pauses the arena meanwhile.
    pub(crate) fn allocated_bytes(&self) -> usize {
        self.check_invariants().map(|r| r.used_bytes).unwrap_or(0)
    }

    /// `check_invariants` for a caller that already holds a pause.
    pub(crate) fn check_paused(&self) -> Result<ArenaReport, String> {
        // SAFETY: segment 0 is mapped while the arena exists.
        unsafe { validate_persistent(self.base, self.max_size) }?;
        let n = self.extent_segments();
        let mut r = ArenaReport::default();
        let mut pooled_state = 0;
        let mut s = 0;
        while s < n {
            let used = self.seg_used(s);
            // SAFETY: s < extent, mapped; validated above.
            let sh = unsafe { &*self.seg(s) };
            let partial = self.partial[s / 64].load(Relaxed) & (1 << (s % 64)) != 0;
            let want_partial = used && sh.kind == SEG_NORMAL && sh.free_slices != 0;
            if partial != want_partial {
                return err(format!("segment {s}: partial bit {partial}, expected {want_partial}"));
            }
            if !used {
                s += 1;
                continue;
            }
            r.segments += 1;
            if sh.kind == SEG_HUGE {
                let k = sh.huge_segments as usize;
                r.huge += 1;
                r.segments += k - 1;
                r.used_bytes += k * SEGMENT - SLICE;
                s += k;
                continue;
            }
            let mut i = 1;
            while i < SLICES_PER_SEGMENT {
                let d = &sh.descs[i];
                match d.kind {
                    D_SLAB => {
                        self.check_slab(s, i, d, &mut r)?;
                        let st = d.thread_free.load(Relaxed) & STATE_MASK;
                        let owner = d.owner.load(Relaxed);
                        if st == POOLED {
                            pooled_state += 1;
                        }
                        if (st == OWNED) != (owner != 0) {
                            return err(format!("segment {s} slice {i}: state {st} with owner {owner:#x}"));
                        }
                        if st == ABANDONED && (d.free != 0 || d.thread_free.load(Relaxed) & !STATE_MASK != 0) {
                            return err(format!("segment {s} slice {i}: abandoned with free blocks"));
                        }
                    }
                    D_SPAN => {
                        r.spans += 1;
                        r.used_bytes += d.block_size as usize;
                    }
                    _ => {}
                }
                i += if d.kind == D_FREE { 1 } else { d.slices as usize };
            }
            s += 1;
        }
        for c in 0..NUM_CLASSES {
            let mut d = self.pools[c].head();
            while !d.is_null() {
                if !self.contains(d as *const u8) || r.pooled > pooled_state {
                    return err(format!("pool {c}: bad or cyclic list at {:#x}", d as usize));
                }
                // SAFETY: d lies in the region and the walk is bounded by the slab count.
                let dd = unsafe { &*d };
                if dd.kind != D_SLAB || dd.class as usize != c || dd.thread_free.load(Relaxed) & STATE_MASK != POOLED {
                    return err(format!(
                        "pool {c}: descriptor {:#x} is not a pooled slab of the class",
                        d as usize
                    ));
                }
                // SAFETY: paused, so has_free's reads are stable.
                if !unsafe { super::slab::has_free(d) } {
                    return err(format!("pool {c}: slab at {:#x} has no free block", slab_start(d)));
                }
                r.pooled += 1;
                d = dd.next as *mut SlabDesc;
            }
        }
        if r.pooled != pooled_state || r.pooled != self.pooled.load(Relaxed) {
            return err(format!(
                "{} slabs on pools, {pooled_state} in state POOLED, counter {}",
                r.pooled,
                self.pooled.load(Relaxed)
            ));
        }
        Ok(r)
    }

    fn check_slab(&self, s: usize, i: usize, d: &SlabDesc, r: &mut ArenaReport) -> Result<(), String> {
        let start = slab_start(d);
        let mut seen = [0u64; 128];
        let nf = walk_list(d, start, d.free, &mut seen, "free")?;
        let nl = walk_list(d, start, d.local_free, &mut seen, "local_free")?;
        let tf = d.thread_free.load(Relaxed) & !STATE_MASK;
        let nt = walk_list(d, start, tf, &mut seen, "thread_free")?;
        let (cap, used) = (d.capacity as usize, d.used as usize);
        if used + nf + nl + (cap - d.reserved as usize) != cap || nt > used {
            return err(format!(
                "segment {s} slice {i}: used {used} + free {nf} + local_free {nl} + uncarved {} != capacity {cap} \
                 (thread_free {nt})",
                cap - d.reserved as usize
            ));
        }
        let bs = d.block_size as usize;
        r.slabs += 1;
        r.used_bytes += (used - nt) * bs;
        r.free_bytes += (cap - used + nt) * bs;
        Ok(())
    }
}
