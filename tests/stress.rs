//! Concurrency stress on real files: allocator threads against commits, forked snapshots and
//! the full invariant check.
//!
//! - `SNAPHEAP_STRESS_SNAPSHOTS` (default 100) sets the number of forked snapshots taken under
//!   allocator contention; `scripts/stress-snapshots.sh` runs 10,000.
//! - A watchdog aborts the process (with a message) if no snapshot completes for 120 s: a hung
//!   snapshot child would otherwise hang the test silently. It never synchronises anything.

mod common;

use common::*;
use snapheap::{HeapAlloc, OpenOptions};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(snapheap::Persist)]
struct Root {
    counter: u64,
}

fn pattern(tag: u64, i: usize) -> u8 {
    (tag.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

/// Allocates, fills, checks and frees random blocks until `stop` (with `big`, one in a hundred
/// is 200 KB-1 MB; else one in a thousand); returns the operations done.
fn churn(a: HeapAlloc, id: u64, stop: &AtomicBool, big: bool) -> u64 {
    let mut rng = Rng::new(id * 104_729 + 3);
    let mut live: Vec<(usize, usize, u64)> = Vec::new();
    let mut ops = 0u64;
    let free = |(p, len, tag): (usize, usize, u64)| {
        // SAFETY (test): p was allocated by `a` with this layout and filled with the pattern.
        let s = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        assert!(
            s.iter().enumerate().all(|(i, &b)| b == pattern(tag, i)),
            "block {p:#x} changed"
        );
        // SAFETY (test): as above.
        unsafe { a.dealloc(p as *mut u8, Layout::from_size_align(len, 16).unwrap()) };
    };
    while !stop.load(Ordering::Relaxed) {
        ops += 1;
        if live.len() < 1500 && rng.below(2) == 0 {
            let len = match rng.below(if big { 100 } else { 1000 }) {
                0 => 200_000 + rng.below(800_000) as usize,
                1..=5 => 8_000 + rng.below(60_000) as usize,
                _ => 1 + rng.below(512) as usize,
            };
            let tag = id << 48 | ops;
            // SAFETY (test): non-zero size.
            let p = unsafe { a.alloc(Layout::from_size_align(len, 16).unwrap()) };
            assert!(!p.is_null(), "allocation of {len} bytes failed");
            for i in 0..len {
                // SAFETY (test): p is valid for len bytes.
                unsafe { *p.add(i) = pattern(tag, i) };
            }
            live.push((p as usize, len, tag));
        } else if !live.is_empty() {
            let k = rng.below(live.len() as u64) as usize;
            free(live.swap_remove(k));
        }
    }
    for b in live.drain(..) {
        free(b);
    }
    ops
}

/// Opens the heap; dropping the handle releases its memory (every value lives in the root),
/// so a reopen recovers from the files as after a crash.
fn open(dir: &std::path::Path) -> Released<Root> {
    // The churn threads write their blocks without a guard while commits run: remapping clean
    // pages forbids that (`OpenOptions::remap_clean_pages`), so it is off here.
    released(
        OpenOptions::new()
            .max_size(1 << 30)
            .snapshot_after_journal_bytes(1 << 20)
            .remap_clean_pages(false)
            .open(dir, |_| Root { counter: 0 }),
    )
    .unwrap()
}

/// Aborts the process if `progress` stays silent for two minutes.
fn watchdog(what: &'static str) -> mpsc::Sender<u64> {
    let (tx, rx) = mpsc::channel::<u64>();
    std::thread::spawn(move || loop {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                eprintln!("{what}: no progress for 120 s (a hung snapshot writer?)");
                std::process::abort();
            }
        }
    });
    tx
}

#[test]
fn threads_allocating_and_freeing_during_commits_and_snapshots_keep_every_invariant() {
    let scratch = Scratch::new("stress-invariants");
    let heap = open(&scratch.heap());
    let stop = AtomicBool::new(false);
    let commits = AtomicU64::new(0);
    let progress = watchdog("stress-invariants");
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|id| {
                let a = heap.alloc();
                let stop = &stop;
                s.spawn(move || churn(a, id, stop, true))
            })
            .collect();
        for i in 0..150u64 {
            heap.write().counter = i;
            heap.commit().unwrap();
            commits.fetch_add(1, Ordering::Relaxed);
            if i % 25 == 0 {
                heap.snapshot().unwrap();
            }
            if i % 50 == 49 {
                // The full check, with the workers still running.
                heap.verify().unwrap();
            }
            let _ = progress.send(i);
        }
        stop.store(true, Ordering::Relaxed);
        let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        println!(
            "{ops} allocator operations during {} commits",
            commits.load(Ordering::Relaxed)
        );
        assert!(ops > 0);
    });
    let report = heap.verify().unwrap();
    println!("{report}");
    assert!(heap.stats().snapshots >= 6);
    heap.close().unwrap();
    let heap = open(&scratch.heap());
    assert_eq!(heap.read().counter, 149);
    heap.verify().unwrap();
}

#[test]
fn forked_snapshots_under_allocator_contention_all_finish() {
    let n = std::env::var("SNAPHEAP_STRESS_SNAPSHOTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100u64);
    let scratch = Scratch::new("stress-snapshots");
    let heap = open(&scratch.heap());
    let stop = AtomicBool::new(false);
    let progress = watchdog("stress-snapshots");
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..3)
            .map(|id| {
                let a = heap.alloc();
                let stop = &stop;
                s.spawn(move || churn(a, 10 + id, stop, false))
            })
            .collect();
        for i in 0..n {
            heap.write().counter = i;
            heap.snapshot().unwrap();
            let _ = progress.send(i);
            if (i + 1) % 1000 == 0 {
                println!("  ... {} snapshots, {:.0} s", i + 1, started.elapsed().as_secs_f64());
            }
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
    });
    let st = heap.stats();
    println!(
        "{n} forked snapshots under contention in {:.1} s ({} failures)",
        started.elapsed().as_secs_f64(),
        st.snapshot_failures
    );
    assert_eq!(st.snapshots, n);
    assert_eq!(st.snapshot_failures, 0);
    heap.verify().unwrap();
    drop(heap);
    let heap = open(&scratch.heap());
    assert_eq!(heap.read().counter, n - 1);
}
