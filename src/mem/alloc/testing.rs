//! Test support (not part of the public API): a region backed by anonymous memory at a
//! random fixed address, with an arena on it, so allocator tests and the micro-benchmark run
//! without the engine.
//!
//! # Safety
//!
//! A `TestRegion` reserves its whole address range itself (`MAP_FIXED_NOREPLACE`), so every
//! later fixed mapping replaces only its own reservation; it unmaps the range only when
//! dropped, after closing the arena.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};

use super::arena::{Arena, CTRL_SIZE};
use super::check::ArenaReport;
use super::handle::HeapAlloc;
use super::pause::PauseGuard;
use super::segment::{SegmentHeader, ARENA_HEADER_OFFSET, SEGMENT};
use crate::sys;

struct GrowCtx {
    base: usize,
    mapped: AtomicUsize,
}

/// Grow hook: maps anonymous memory up to `new_extent`.
///
/// # Safety
///
/// `ctx` points to the `GrowCtx` of a live `TestRegion`.
unsafe fn grow_anon(ctx: *const (), new_extent: usize) -> bool {
    // SAFETY: contract.
    let c = unsafe { &*(ctx as *const GrowCtx) };
    let m = c.mapped.load(Acquire);
    if new_extent <= m {
        return true;
    }
    // SAFETY: the range lies inside the region's reservation, beyond everything mapped, so
    // nothing references it.
    match unsafe { sys::map_anon_fixed(c.base + m, new_extent - m) } {
        Ok(()) => {
            c.mapped.store(new_extent, Release);
            true
        }
        Err(_) => false,
    }
}

/// An anonymous-memory region with an open arena (tests and benchmarks only).
#[doc(hidden)]
pub struct TestRegion {
    ctx: Box<GrowCtx>,
    arena: &'static Arena,
    max_size: usize,
}

impl TestRegion {
    /// Reserves `max_size` bytes (a multiple of 4 MiB) at a random 4 MiB-aligned address in
    /// `0x2000_0000_0000..0x5000_0000_0000` and creates an arena on it.
    pub fn new(max_size: usize) -> TestRegion {
        assert!(max_size % SEGMENT == 0 && max_size >= SEGMENT);
        let base = loop {
            let r = std::collections::hash_map::RandomState::new().build_hasher().finish() as usize;
            let base = (0x2000_0000_0000 + (r % 0x3000_0000_0000)) & !(SEGMENT - 1);
            if sys::reserve(base - CTRL_SIZE, CTRL_SIZE + max_size).is_ok() {
                break base;
            }
        };
        // SAFETY: inside our own reservation; nothing references it.
        unsafe { sys::map_anon_fixed(base - CTRL_SIZE, CTRL_SIZE + SEGMENT) }.expect("map first segment");
        let ctx = Box::new(GrowCtx {
            base,
            mapped: AtomicUsize::new(SEGMENT),
        });
        let ctx_ptr = &*ctx as *const GrowCtx as *const ();
        // SAFETY: control area and first segment are freshly mapped (zero) and ours; the grow
        // hook maps inside the reservation; ctx lives as long as the region.
        let arena = unsafe { Arena::create(base, max_size, grow_anon, ctx_ptr) };
        TestRegion { ctx, arena, max_size }
    }

    /// The allocator handle.
    pub fn alloc(&self) -> HeapAlloc {
        HeapAlloc::new(self.arena)
    }

    /// The region's base address.
    pub fn base(&self) -> usize {
        self.ctx.base
    }

    /// Whether `p` lies inside the region.
    pub fn contains(&self, p: *const u8) -> bool {
        self.arena.contains(p)
    }

    /// Bytes handed out to segments.
    pub fn extent(&self) -> usize {
        self.arena.extent()
    }

    /// Persistent word `i` of the arena header.
    pub fn user_word(&self, i: usize) -> &AtomicU64 {
        &self.arena.user_words()[i]
    }

    /// Pauses the arena.
    pub fn pause(&self) -> PauseGuard<'_> {
        self.arena.pause()
    }

    /// Runs the whole-structure validator.
    pub fn check_invariants(&self) -> Result<ArenaReport, String> {
        self.arena.check_invariants()
    }

    /// Bytes in live blocks.
    pub fn allocated_bytes(&self) -> usize {
        self.arena.allocated_bytes()
    }

    /// Closes the arena (allocations then return null).
    pub fn close(&self) {
        self.arena.close();
    }

    /// Simulates a restart on the same memory: closes the arena and attaches a fresh control
    /// block to the region as it is.
    pub fn reattach(&mut self) -> Result<(), String> {
        self.arena.close();
        let ctx_ptr = &*self.ctx as *const GrowCtx as *const ();
        // SAFETY: the control area and [base, base + extent) are mapped and ours; the closed
        // arena's control block is no longer used by any allocator call.
        self.arena = unsafe { Arena::attach(self.ctx.base, self.max_size, grow_anon, ctx_ptr) }?;
        Ok(())
    }

    /// A checksum of all allocator metadata in the region (arena header, bitmap and every
    /// used segment's header with its descriptors). The guard proves the arena is paused.
    pub fn metadata_checksum(&self, _paused: &PauseGuard<'_>) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        let mut eat = |addr: usize, len: usize| {
            // SAFETY: the ranges below lie inside [base, base + extent), mapped; paused.
            let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len) };
            for &b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        let base = self.ctx.base;
        let n = self.arena.extent() / SEGMENT;
        eat(base + ARENA_HEADER_OFFSET, 256 + n.div_ceil(64) * 8);
        for s in 0..n {
            eat(base + s * SEGMENT, std::mem::size_of::<SegmentHeader>());
        }
        h
    }
}

impl Drop for TestRegion {
    fn drop(&mut self) {
        self.arena.close();
        // SAFETY: the arena is closed and the test dropped every block; the range is ours.
        let _ = unsafe { sys::unmap(self.ctx.base - CTRL_SIZE, CTRL_SIZE + self.max_size) };
    }
}
