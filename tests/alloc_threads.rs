//! Multi-threaded allocator behaviour: cross-thread frees, thread exit, and pause exclusion.

mod common;
use common::Rng;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use snapheap::alloc_testing::TestRegion;
use snapheap::HeapAlloc;

/// A block in flight: address, size, and the tag its bytes were filled with.
#[derive(Clone, Copy)]
struct Block {
    addr: usize,
    size: usize,
    tag: u64,
}

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

/// Fills the block: the tag in its first and last eight bytes, the tag's low byte between.
fn fill(b: &Block) {
    let p = b.addr as *mut u8;
    unsafe {
        p.write_bytes(b.tag as u8, b.size);
        (p.add(b.size - 8) as *mut u64).write_unaligned(b.tag);
        (p as *mut u64).write_unaligned(b.tag);
    }
}

fn verify_and_free(a: HeapAlloc, b: Block) {
    let p = b.addr as *const u8;
    let s = unsafe { std::slice::from_raw_parts(p, b.size) };
    assert_eq!(
        u64::from_le_bytes(s[..8].try_into().unwrap()),
        b.tag,
        "head of block {:#x}",
        b.addr
    );
    if b.size >= 16 {
        assert_eq!(
            u64::from_le_bytes(s[b.size - 8..].try_into().unwrap()),
            b.tag,
            "tail of block {:#x}",
            b.addr
        );
        assert!(
            s[8..b.size - 8].iter().step_by(61).all(|&x| x == b.tag as u8),
            "body of block {:#x}",
            b.addr
        );
    }
    unsafe { a.dealloc(b.addr as *mut u8, layout(b.size)) };
}

fn random_size(rng: &mut Rng) -> usize {
    match rng.index(100) {
        0 => 8 + rng.index(300_000),
        1..=4 => 8 + rng.index(40_000),
        _ => 8 + rng.index(4089),
    }
}

#[test]
fn three_threads_with_cross_thread_frees_keep_blocks_intact_and_return_to_baseline() {
    const THREADS: usize = 3;
    const OPS: usize = 300_000;
    let r = TestRegion::new(16 << 30);
    let a = r.alloc();
    let baseline = r.allocated_bytes();
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..THREADS).map(|_| mpsc::channel::<Option<Block>>()).unzip();
    let (progress_tx, progress_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (t, rx) in rxs.into_iter().enumerate() {
            let tx = txs[(t + 1) % THREADS].clone();
            let progress = progress_tx.clone();
            handles.push(s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t as u64 * 7919);
                let mut live: Vec<Block> = Vec::new();
                let mut pred_done = false;
                for seq in 0..OPS {
                    if seq % 50_000 == 0 {
                        progress.send(()).unwrap();
                    }
                    while !pred_done {
                        match rx.try_recv() {
                            Ok(Some(b)) => verify_and_free(a, b),
                            Ok(None) => pred_done = true,
                            Err(_) => break,
                        }
                    }
                    if live.is_empty() || (live.len() < 2000 && rng.index(100) < 52) {
                        let size = random_size(&mut rng);
                        let p = unsafe { a.alloc(layout(size)) };
                        assert!(!p.is_null());
                        let b = Block {
                            addr: p as usize,
                            size,
                            tag: (t as u64) << 56 | seq as u64,
                        };
                        fill(&b);
                        live.push(b);
                    } else {
                        let b = live.swap_remove(rng.index(live.len()));
                        if rng.index(3) == 0 {
                            tx.send(Some(b)).unwrap();
                        } else {
                            verify_and_free(a, b);
                        }
                    }
                }
                for b in live {
                    verify_and_free(a, b);
                }
                tx.send(None).unwrap();
                // Drain until the predecessor is done sending.
                while !pred_done {
                    match rx.recv().unwrap() {
                        Some(b) => verify_and_free(a, b),
                        None => pred_done = true,
                    }
                }
            }));
        }
        drop(txs);
        drop(progress_tx);
        // Validate while the workers run (each check pauses them), at their checkpoints.
        let mut checks = 0;
        while progress_rx.recv().is_ok() {
            r.check_invariants().unwrap();
            checks += 1;
        }
        assert_eq!(checks, THREADS * OPS / 50_000);
        for h in handles {
            h.join().unwrap();
        }
    });
    let rep = r.check_invariants().unwrap();
    assert_eq!(rep.used_bytes, baseline);
    assert_eq!(r.allocated_bytes(), baseline);
}

#[test]
fn blocks_of_exited_threads_can_be_freed_and_their_slabs_reused() {
    let r = TestRegion::new(4 << 30);
    let a = r.alloc();
    let mut all = Vec::new();
    for round in 0..4u64 {
        let blocks = std::thread::spawn(move || {
            (0..20_000u64)
                .map(|i| {
                    let size = 16 + (i as usize * 13) % 2000;
                    let p = unsafe { a.alloc(layout(size)) };
                    assert!(!p.is_null());
                    let b = Block {
                        addr: p as usize,
                        size,
                        tag: round << 32 | i,
                    };
                    fill(&b);
                    b
                })
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        r.check_invariants().unwrap();
        // Free half now (remote frees into slabs of a dead thread), keep half.
        for (i, b) in blocks.into_iter().enumerate() {
            if i % 2 == 0 {
                verify_and_free(a, b);
            } else {
                all.push(b);
            }
        }
        r.check_invariants().unwrap();
    }
    let extent = r.extent();
    let before = r.check_invariants().unwrap();
    // A new thread allocating the same mix reuses the pooled slabs instead of growing much.
    let budget = before.free_bytes / 2;
    let count = (0..).scan(0, |sum, i: usize| {
        *sum += 16 + (i * 13) % 2000;
        (*sum <= budget).then_some(())
    });
    let count = count.count() as u64;
    assert!(count > 1000);
    let again = std::thread::spawn(move || {
        (0..count)
            .map(|i| {
                let size = 16 + (i as usize * 13) % 2000;
                let b = Block {
                    addr: unsafe { a.alloc(layout(size)) } as usize,
                    size,
                    tag: i,
                };
                fill(&b);
                b
            })
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    let after = r.check_invariants().unwrap();
    assert!(
        r.extent() <= extent + (4 << 20),
        "pooled slabs were reused: {before:?} {after:?}"
    );
    for b in again.into_iter().chain(all) {
        verify_and_free(a, b);
    }
    r.check_invariants().unwrap();
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn pause_excludes_every_allocator_call() {
    let r = Arc::new(TestRegion::new(4 << 30));
    let a = r.alloc();
    let stop = AtomicBool::new(false);
    let ops = AtomicUsize::new(0);
    std::thread::scope(|s| {
        let mut workers = Vec::new();
        for t in 0..2u64 {
            let (stop, ops) = (&stop, &ops);
            workers.push(s.spawn(move || {
                let mut rng = Rng(77 + t);
                let mut live: Vec<Block> = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if live.len() < 500 && rng.index(2) == 0 {
                        let size = random_size(&mut rng);
                        let p = unsafe { a.alloc(layout(size)) };
                        assert!(!p.is_null());
                        let b = Block {
                            addr: p as usize,
                            size,
                            tag: n,
                        };
                        fill(&b);
                        live.push(b);
                    } else if !live.is_empty() {
                        let b = live.swap_remove(rng.index(live.len()));
                        if rng.index(4) == 0 {
                            let new_size = if b.size < 100_000 { b.size * 2 } else { b.size / 3 };
                            let q = unsafe { a.realloc(b.addr as *mut u8, layout(b.size), new_size) };
                            assert!(!q.is_null());
                            let nb = Block {
                                addr: q as usize,
                                size: new_size,
                                tag: b.tag,
                            };
                            fill(&nb);
                            live.push(nb);
                        } else {
                            verify_and_free(a, b);
                        }
                    }
                    n += 1;
                    ops.fetch_add(1, Ordering::Relaxed);
                }
                for b in live {
                    verify_and_free(a, b);
                }
            }));
        }
        let mut pauses = 0;
        while pauses < 300 {
            assert!(!workers.iter().any(|w| w.is_finished()), "a worker died");
            let g = r.pause();
            let c1 = r.metadata_checksum(&g);
            // Give a misbehaving thread time to mutate: spin a little while paused.
            for _ in 0..20_000 {
                std::hint::spin_loop();
            }
            let c2 = r.metadata_checksum(&g);
            assert_eq!(c1, c2, "allocator metadata changed during a pause");
            drop(g);
            pauses += 1;
            // Let the workers make progress before the next pause.
            let seen = ops.load(Ordering::Relaxed);
            while ops.load(Ordering::Relaxed) < seen + 100 && !workers.iter().any(|w| w.is_finished()) {
                std::thread::yield_now();
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    r.check_invariants().unwrap();
    assert_eq!(r.allocated_bytes(), 0);
}
