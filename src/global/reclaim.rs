//! Reclaim at open: a conservative mark and sweep over the arena that frees every block not
//! reachable from the root registry, so that blocks leaked by a crash (allocated but never
//! linked from a root before the process died) do not accumulate.
//!
//! # Invariants
//!
//! Runs before the arena is published: no other thread allocates or frees meanwhile. A block
//! is kept when any word of a reachable block points inside it (conservative: never frees a
//! reachable block, may keep an unreachable one).
//!
//! # Safety
//!
//! Reads words of allocated blocks of the (mapped, unpublished) arena and frees blocks through
//! the arena; each `unsafe` block states why its range is allocated and mapped.

use crate::mem::alloc::Arena;
use crate::mem::sysmem::SysVec;
use std::alloc::{Layout, System};

/// Frees every allocated block not reachable from `root` (conservatively: any word of a
/// reachable block that points inside an allocated block makes that block reachable).
/// Returns the bytes freed. Runs before the arena is published, so no other thread uses it.
pub(super) fn reclaim(arena: &Arena, root: Option<usize>) -> std::result::Result<u64, String> {
    let mut blocks: SysVec<(usize, usize)> = SysVec::new_in(System);
    {
        let _p = arena.pause();
        arena.for_each_block(|p, len| blocks.push((p, len)))?;
    }
    debug_assert!(blocks.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0), "walk order");
    let n = blocks.len();
    let mut marks: SysVec<u64> = SysVec::new_in(System);
    marks.resize(n.div_ceil(64), 0);
    let mut stack: SysVec<usize> = SysVec::new_in(System);
    let find = |w: usize| -> Option<usize> {
        let i = blocks.partition_point(|b| b.0 <= w);
        (i > 0 && w < blocks[i - 1].0 + blocks[i - 1].1).then(|| i - 1)
    };
    let mark = |i: usize, marks: &mut SysVec<u64>, stack: &mut SysVec<usize>| {
        if marks[i / 64] & (1 << (i % 64)) == 0 {
            marks[i / 64] |= 1 << (i % 64);
            stack.push(i);
        }
    };
    if let Some(i) = root.and_then(find) {
        mark(i, &mut marks, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let (start, len) = blocks[i];
        for k in 0..len / 8 {
            // SAFETY: the block lies inside the mapped extent (walk invariant) and is 8-byte
            // aligned; the arena is not yet published, so nobody writes it.
            let w = unsafe { ((start + 8 * k) as *const usize).read() };
            if arena.contains(w as *const u8) {
                if let Some(j) = find(w) {
                    mark(j, &mut marks, &mut stack);
                }
            }
        }
    }
    let mut freed = 0u64;
    for (i, &(start, len)) in blocks.iter().enumerate() {
        if marks[i / 64] & (1 << (i % 64)) == 0 {
            // SAFETY: start is an allocated block of this arena (walk) that nothing reachable
            // refers to; len > 0 and align 1 form a valid layout; dealloc only uses the size
            // to skip zero-sized blocks.
            unsafe { arena.dealloc(start as *mut u8, Layout::from_size_align_unchecked(len, 1)) };
            freed += len as u64;
        }
    }
    Ok(freed)
}
