//! Commits while other threads allocate and free: the captured allocator state is consistent.

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Heap, HeapAlloc, OpenOptions, Tracking};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

type Root = Vec<Vec<u8>>;

fn pattern(tag: u64, len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(move |i| (tag.wrapping_mul(31).wrapping_add(i as u64)) as u8)
}

/// Allocates and frees random blocks until told to stop, checking each block's pattern before
/// freeing it; about a third of the frees happen on the other worker's blocks.
fn churn(
    a: HeapAlloc,
    id: u64,
    stop: Arc<AtomicBool>,
    swap: Arc<std::sync::Mutex<std::vec::Vec<(usize, usize, u64)>>>,
) -> u64 {
    let mut rng = Rng::new(id * 7919 + 1);
    let mut live: std::vec::Vec<(usize, usize, u64)> = std::vec::Vec::new();
    let mut ops = 0u64;
    let check_free = |(p, len, tag): (usize, usize, u64)| {
        // SAFETY (test): p was allocated by `a` with this layout and filled with the pattern.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        assert!(s.iter().copied().eq(pattern(tag, len)), "block {p:#x} overwritten");
        unsafe { a.dealloc(p as *mut u8, Layout::from_size_align(len, 8).unwrap()) };
    };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        if live.len() < 2000 && rng.below(3) != 0 {
            let max = if rng.below(50) == 0 { 70_000 } else { 600 };
            let len = 1 + rng.below(max) as usize;
            let tag = id << 40 | ops;
            // SAFETY (test): non-zero size.
            let p = unsafe { a.alloc(Layout::from_size_align(len, 8).unwrap()) };
            assert!(!p.is_null());
            for (i, b) in pattern(tag, len).enumerate() {
                // SAFETY (test): p is valid for len bytes.
                unsafe { *p.add(i) = b };
            }
            live.push((p as usize, len, tag));
        } else if !live.is_empty() {
            let k = rng.below(live.len() as u64) as usize;
            let blk = live.swap_remove(k);
            if rng.below(3) == 0 {
                swap.lock().unwrap().push(blk);
            } else {
                check_free(blk);
            }
            let theirs = swap.lock().unwrap().pop();
            if let Some(b) = theirs {
                check_free(b);
            }
        }
    }
    for b in live.drain(..) {
        check_free(b);
    }
    ops
}

#[test]
fn commits_during_concurrent_alloc_and_free_capture_a_consistent_allocator() {
    concurrent_commits(Tracking::Auto, 300);
}

/// The rung matrix: the same test with the hashed and all-dirty rungs forced (fewer commits).
/// Under the hashed rung the workers' writes into blocks not linked to the root race with the
/// collect's hashing and staging and with the snapshot fork (a page changed and changed back
/// around the fork: the writer's fork check abandons such a snapshot): `verify` during the run
/// and the reopened heap must still check out.
#[test]
fn concurrent_commits_under_the_hashed_rung() {
    concurrent_commits(Tracking::Hashed, 150);
}

#[test]
fn concurrent_commits_under_the_all_dirty_rung() {
    concurrent_commits(Tracking::AllDirty, 40);
}

fn concurrent_commits(tracking: Tracking, commits: u64) {
    let dir = Scratch::new(&format!("commit-conc-{}", tracking.name()));
    let mut root_blocks = 0;
    {
        // The workers write their blocks without holding a guard while commits run, which the
        // remapping of clean pages forbids (`OpenOptions::remap_clean_pages`): this test is
        // about the commit path with unguarded writers, so it turns remapping off.
        let heap = OpenOptions::new()
            .tracking(tracking)
            .remap_clean_pages(false)
            .open(dir.heap(), Root::new_in)
            .unwrap();
        let a = heap.alloc();
        let stop = Arc::new(AtomicBool::new(false));
        let swap = Arc::new(std::sync::Mutex::new(std::vec::Vec::new()));
        let workers: std::vec::Vec<_> = (1..=2)
            .map(|id| {
                let (stop, swap) = (stop.clone(), swap.clone());
                std::thread::spawn(move || churn(a, id, stop, swap))
            })
            .collect();
        for i in 0..commits {
            {
                let mut r = heap.write();
                let mut v = Vec::new_in(a);
                v.extend(pattern(i, 100 + (i as usize * 13) % 3000));
                r.push(v);
                r.commit().unwrap();
            }
            root_blocks += 1;
            if i % 50 == 0 {
                heap.verify().unwrap();
            }
        }
        stop.store(true, Ordering::Relaxed);
        let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        let st = heap.stats();
        println!(
            "{ops} worker operations during {commits} commits ({}): {} snapshots, {} abandoned by the fork check",
            tracking.name(),
            st.snapshots,
            st.snapshot_retries
        );
        // No final commit: the last commit happened while the workers ran. Released, so the
        // reopen recovers from the files as after a crash.
        // SAFETY: the workers are joined and freed their blocks; the root holds the rest.
        unsafe { heap.drop_and_release() };
    }
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.verify().unwrap();
    let a = heap.alloc();
    let mut spans: std::vec::Vec<(usize, usize)> = std::vec::Vec::new();
    {
        let r = heap.read();
        assert_eq!(r.len(), root_blocks);
        for (i, v) in r.iter().enumerate() {
            assert!(
                v.iter().copied().eq(pattern(i as u64, v.len())),
                "root block {i} damaged"
            );
            spans.push((v.as_ptr() as usize, v.len()));
        }
    }
    // New blocks never overlap each other or the blocks reachable from the root.
    let mut fresh = std::vec::Vec::new();
    let mut rng = Rng::new(5);
    for _ in 0..20_000 {
        let len = 1 + rng.below(2000) as usize;
        // SAFETY (test): non-zero size.
        let p = unsafe { a.alloc(Layout::from_size_align(len, 8).unwrap()) };
        assert!(!p.is_null());
        spans.push((p as usize, len));
        fresh.push((p, len));
    }
    assert_disjoint(spans.clone());
    for (p, len) in fresh {
        // SAFETY (test): allocated above with this layout.
        unsafe { a.dealloc(p, Layout::from_size_align(len, 8).unwrap()) };
    }
    heap.verify().unwrap();
}
