//! Allocator operation sequences against a model, on `snapheap::alloc_testing::TestRegion`
//! (an arena on anonymous memory, no engine).
//!
//! Each input byte pair is one operation: allocate (size class and alignment from the
//! input), reallocate, free, check a block's contents, run the invariant checker, or
//! restart (close the arena and attach again on the same memory, as after a reopen). Every
//! block is tagged (at sampled bytes) with its own value; the model checks alignment, bounds, non-overlap and
//! contents, and the checker's `used_bytes` against the live sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap::alloc_testing::TestRegion;
use std::alloc::{GlobalAlloc, Layout};

const REGION: usize = 64 << 20;
/// Live bytes the model allows (leaves room for metadata and fragmentation).
const LIVE_LIMIT: usize = 40 << 20;

struct Block {
    ptr: *mut u8,
    size: usize,
    align: usize,
    tag: u8,
}

fn size_from(sel: u8, x: u8, y: u8) -> usize {
    let v = usize::from(x) << 8 | usize::from(y);
    // Mostly small blocks; spans (up to 1 MiB) and huge blocks (whole segments) are rarer,
    // as each costs page faults.
    match sel % 32 {
        0..=19 => 1 + v % 512,
        20..=27 => 1 + v % (16 << 10),
        28..=30 => 1 + (v << 4) % (1 << 20),
        _ => 1 + (v << 8) % (9 << 20),
    }
}

/// The bytes of a block the model fills and checks: the first 32, the last 8 and one every
/// 16 KiB (checking every byte under coverage instrumentation would dominate the run time;
/// overlapping blocks, or allocator metadata written into a live block, show up here).
fn sampled(size: usize) -> impl Iterator<Item = usize> {
    let head = 32.min(size);
    let tail = size.saturating_sub(8).max(head);
    (0..head).chain(tail..size).chain((head..tail).step_by(16 << 10))
}

/// Checks a block's tag at its sampled bytes.
fn check(b: &Block) {
    check_prefix(b, b.size);
}

/// Checks the sampled bytes of `b` below `kept` (after a reallocation moved `kept` bytes
/// of a block of `b.size` bytes to `b.ptr`).
fn check_prefix(b: &Block, kept: usize) {
    for i in sampled(b.size).filter(|&i| i < kept) {
        // SAFETY: i < size and the block is live.
        let x = unsafe { b.ptr.add(i).read() };
        if x != b.tag {
            panic!("block {:p}+{} byte {i} is {x:#x}, expected {:#x}", b.ptr, b.size, b.tag);
        }
    }
}

/// Writes a block's tag at its sampled bytes.
fn fill(b: &Block) {
    for i in sampled(b.size) {
        // SAFETY: i < size and the block is live and owned by the model.
        unsafe { b.ptr.add(i).write(b.tag) };
    }
}

fn overlaps(blocks: &[Block], p: *mut u8, size: usize) -> bool {
    let (a, e) = (p as usize, p as usize + size);
    blocks
        .iter()
        .any(|b| (b.ptr as usize) < e && a < b.ptr as usize + b.size)
}

fn invariants(region: &TestRegion, blocks: &[Block]) {
    let report = region
        .check_invariants()
        .unwrap_or_else(|e| panic!("invariant check failed: {e}"));
    let live: usize = blocks.iter().map(|b| b.size).sum();
    assert!(report.used_bytes >= live, "used {} < live {live}", report.used_bytes);
}

fuzz_target!(|data: &[u8]| {
    let mut region = TestRegion::new(REGION);
    let mut a = region.alloc();
    let mut blocks: Vec<Block> = Vec::new();
    let mut live = 0usize;
    let mut tag = 0u8;
    let mut ops = data.chunks_exact(4);
    for op in ops.by_ref().take(2000) {
        let (kind, x, y, z) = (op[0], op[1], op[2], op[3]);
        match kind % 8 {
            0..=2 => {
                let size = size_from(z, x, y);
                let align = 1usize << (z >> 3).min(16);
                if live + size > LIVE_LIMIT {
                    continue;
                }
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size.
                let p = unsafe { a.alloc(layout) };
                if p.is_null() {
                    continue;
                }
                assert_eq!(p as usize % align, 0, "misaligned {p:p} for align {align}");
                assert!(region.contains(p) && region.contains(p.wrapping_add(size - 1)));
                assert!(!overlaps(&blocks, p, size), "{p:p}+{size} overlaps a live block");
                tag = tag.wrapping_add(1) | 1;
                let b = Block {
                    ptr: p,
                    size,
                    align,
                    tag,
                };
                fill(&b);
                blocks.push(b);
                live += size;
            }
            3 | 4 if !blocks.is_empty() => {
                let i = usize::from(x) << 8 | usize::from(y);
                let b = blocks.swap_remove(i % blocks.len());
                check(&b);
                live -= b.size;
                // SAFETY: a live block allocated with this layout.
                unsafe { a.dealloc(b.ptr, Layout::from_size_align(b.size, b.align).unwrap()) };
            }
            5 if !blocks.is_empty() => {
                let i = (usize::from(x) << 8 | usize::from(y)) % blocks.len();
                let new_size = size_from(z, y, x);
                if live - blocks[i].size + new_size > LIVE_LIMIT {
                    continue;
                }
                let b = &blocks[i];
                check(b);
                let old = Layout::from_size_align(b.size, b.align).unwrap();
                // SAFETY: a live block of this layout; new_size > 0 and fits isize.
                let q = unsafe { a.realloc(b.ptr, old, new_size) };
                if q.is_null() {
                    check(&blocks[i]);
                    continue;
                }
                let kept = b.size.min(new_size);
                let old_tag = b.tag;
                assert_eq!(q as usize % b.align, 0);
                let mut nb = blocks.swap_remove(i);
                // The first `kept` bytes were carried over from the old block.
                let moved = Block {
                    ptr: q,
                    size: nb.size,
                    align: 1,
                    tag: old_tag,
                };
                check_prefix(&moved, kept);
                assert!(!overlaps(&blocks, q, new_size), "realloc result overlaps a live block");
                live = live - nb.size + new_size;
                nb.ptr = q;
                nb.size = new_size;
                tag = tag.wrapping_add(1) | 1;
                nb.tag = tag;
                fill(&nb);
                blocks.push(nb);
            }
            6 => {
                if let Some(b) = blocks.get(usize::from(x) % blocks.len().max(1)) {
                    check(b);
                }
                if y % 16 == 0 {
                    invariants(&region, &blocks);
                }
            }
            7 if x % 8 == 0 => {
                region
                    .reattach()
                    .unwrap_or_else(|e| panic!("attach after restart failed: {e}"));
                a = region.alloc();
                blocks.iter().for_each(check);
                invariants(&region, &blocks);
            }
            _ => {}
        }
    }
    invariants(&region, &blocks);
    for b in blocks.drain(..) {
        check(&b);
        // SAFETY: a live block allocated with this layout.
        unsafe { a.dealloc(b.ptr, Layout::from_size_align(b.size, b.align).unwrap()) };
    }
    let report = region
        .check_invariants()
        .unwrap_or_else(|e| panic!("invariant check failed: {e}"));
    assert_eq!(
        report.used_bytes, 0,
        "bytes still in use after freeing everything: {report:?}"
    );
});
