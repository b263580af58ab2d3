//! Delta journaling end to end: what a commit journals for small changes, that replay of
//! `DELTA` records reproduces every committed state (across snapshots, restarts without a
//! snapshot, and with other threads writing into the heap during commits), that the base cache
//! stays within its budget, and that a delta applied to the wrong base is `Error::Corrupt`
//! (the planted bug `DeltaStaleBase`).

mod common;

use common::*;
use snapheap::collections::Vec as HVec;
use snapheap::{Error, Heap, HeapAlloc, OpenOptions, PlantedBug};
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

type Root = HVec<u64>;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.max_size(1 << 30)
        .snapshot_after_journal_bytes(1 << 40)
        .snapshot_on_close(false);
    o
}

/// A root of `n` words, committed once.
fn words(dir: &std::path::Path, o: &OpenOptions, n: usize) -> Heap<Root> {
    let heap = o
        .open(dir, |a| {
            let mut v = HVec::with_capacity_in(n, a);
            v.resize(n, 0);
            v
        })
        .unwrap();
    heap.commit().unwrap();
    heap
}

/// The init closure of a reopen (never called: the heap exists).
fn reopen(_: HeapAlloc) -> Root {
    unreachable!("the heap exists")
}

fn journal_growth(heap: &Heap<Root>, f: impl FnOnce(&mut Root)) -> u64 {
    let j0 = heap.stats().journal_bytes;
    let mut w = heap.write();
    f(&mut w);
    w.commit().unwrap();
    drop(w);
    heap.stats().journal_bytes - j0
}

#[test]
fn a_64_byte_change_journals_one_small_delta_record() {
    let dir = Scratch::new("delta-64");
    let heap = words(&dir.heap(), &options(), 4096);
    // First commit of a page not yet cached is whole; after that, deltas.
    let first = journal_growth(&heap, |w| w[1000] = 1);
    assert!(first <= 256, "a page of the root was committed at creation: {first}");
    let bytes = journal_growth(&heap, |w| w[1000..1008].iter_mut().for_each(|x| *x += 7));
    assert!(bytes <= 256, "64 changed bytes journaled {bytes} bytes");
    let s = heap.stats();
    assert!(s.delta_pages >= 2, "{s:?}");
    assert!(s.base_cache_hits >= 2, "{s:?}");
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.drop_and_release() };
    let heap = options().open(dir.heap(), reopen).unwrap();
    let r = heap.read();
    assert_eq!(r[1000], 8);
    assert!(r[1001..1008].iter().all(|&x| x == 7));
}

#[test]
fn with_a_zero_budget_every_page_is_journaled_whole() {
    let dir = Scratch::new("delta-off");
    let mut o = options();
    o.base_cache_bytes(0);
    let heap = words(&dir.heap(), &o, 4096);
    let bytes = journal_growth(&heap, |w| w[1000] = 1);
    assert_eq!(bytes, 4096 + 40 + 40);
    let s = heap.stats();
    assert_eq!(
        (s.delta_pages, s.base_cache_hits, s.base_cache_bytes),
        (0, 0, 0),
        "{s:?}"
    );
}

/// Random changes, commits, snapshots, drops (a crash: no close) and clean closes; after each
/// reopen the root equals the last commit's content.
#[test]
fn replay_of_deltas_reproduces_every_committed_state() {
    let dir = Scratch::new("delta-replay");
    let mut rng = Rng::new(42);
    let mut model: Vec<u64> = vec![0; 20_000];
    let mut o = options();
    o.close_snapshot_min_bytes(1 << 20);
    let mut heap = words(&dir.heap(), &o, model.len());
    let mut deltas = 0;
    for round in 0..40 {
        for _ in 0..(1 + rng.below(5)) {
            let mut w = heap.write();
            for _ in 0..rng.below(60) {
                let i = rng.below(model.len() as u64) as usize;
                let v = rng.next();
                w[i] = v;
                model[i] = v;
            }
            if rng.below(8) == 0 {
                // A long run: most of several pages rewritten (whole-page records).
                let s = rng.below(model.len() as u64 - 3000) as usize;
                for i in s..s + 3000 {
                    w[i] = i as u64 ^ round;
                    model[i] = i as u64 ^ round;
                }
            }
            w.commit().unwrap();
        }
        deltas += heap.stats().delta_pages;
        match rng.below(4) {
            0 => {
                heap.snapshot().unwrap();
                // SAFETY (test): nothing allocated from the heap is used after this.
                unsafe { heap.drop_and_release() };
            }
            // SAFETY (test): nothing allocated from the heap is used after this.
            1 => unsafe { heap.close_and_release() }.unwrap(),
            // SAFETY (test): as above.
            _ => unsafe { heap.drop_and_release() },
        }
        if rng.below(4) == 1 {
            heap = o.open(dir.heap(), reopen).unwrap();
            heap.snapshot().unwrap();
        } else {
            heap = o.open(dir.heap(), reopen).unwrap();
        }
        assert_eq!(&heap.read()[..], &model[..], "round {round}");
        heap.verify().unwrap();
    }
    assert!(deltas > 100, "the workload journaled {deltas} delta pages");
}

/// Other threads write into heap blocks that share pages with the root (allocated from the
/// same heap, unreachable from the root) without pause while the main thread changes the root
/// and commits, sometimes with a snapshot. Every group's deltas must still replay exactly: a
/// base that disagreed with replay would fail the post-image check at open.
#[test]
fn concurrent_writers_during_commits_never_break_replay() {
    let dir = Scratch::new("delta-race");
    let o = options();
    let heap = words(&dir.heap(), &o, 2);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for t in 0..2u64 {
        let a: HeapAlloc = heap.alloc();
        let (stop, writes) = (stop.clone(), writes.clone());
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng::new(t + 100);
            let lay = Layout::from_size_align(24, 8).unwrap();
            // Small blocks: they share slab pages with the root's allocations below.
            // SAFETY (test): non-zero size; the blocks are only ever written by this thread.
            let blocks: Vec<*mut u64> = (0..2000).map(|_| unsafe { a.alloc(lay) } as *mut u64).collect();
            assert!(blocks.iter().all(|p| !p.is_null()));
            while !stop.load(Ordering::Relaxed) {
                let p = blocks[rng.below(blocks.len() as u64) as usize];
                // SAFETY (test): p points to a live 24-byte block of this thread.
                unsafe { std::ptr::write_volatile(p.add(rng.below(3) as usize), rng.next()) };
                writes.fetch_add(1, Ordering::Relaxed);
            }
            blocks.len()
        }));
    }
    let mut rng = Rng::new(7);
    let mut model: Vec<u64> = Vec::new();
    for i in 0..300 {
        let mut w = heap.write();
        // The root grows in small steps so its blocks land among the writers' blocks.
        for _ in 0..rng.below(20) {
            let v = rng.next();
            w.push(v);
            model.push(v);
        }
        for _ in 0..5 {
            if !model.is_empty() {
                let k = rng.below(model.len() as u64) as usize;
                let v = rng.next();
                w[k + 2] = v;
                model[k] = v;
            }
        }
        w.commit().unwrap();
        drop(w);
        if i % 50 == 49 {
            heap.snapshot().unwrap();
        }
    }
    let s = heap.stats();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(writes.load(Ordering::Relaxed) > 10_000, "the writers hardly ran");
    assert!(s.delta_pages > 100, "{s:?}");
    let last = heap.read().to_vec();
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.drop_and_release() }; // a crash: replay every group since the last snapshot
    let heap = o.open(dir.heap(), reopen).unwrap();
    assert_eq!(heap.read().to_vec(), last);
    assert_eq!(&heap.read()[2..], &model[..]);
}

#[test]
fn the_base_cache_stays_within_its_budget_and_evicts() {
    let dir = Scratch::new("delta-budget");
    let mut o = options();
    let budget = 1u64 << 20; // about 250 pages
    o.base_cache_bytes(budget);
    let heap = words(&dir.heap(), &o, 512 * 1000); // 1,000 pages of data
    for r in 0..3u64 {
        let mut w = heap.write();
        for p in 0..1000 {
            w[p * 512 + r as usize] += 1;
        }
        w.commit().unwrap();
    }
    let s = heap.stats();
    assert!(s.base_cache_bytes > 0 && s.base_cache_bytes <= budget, "{s:?}");
    assert!(s.base_cache_evictions > 0, "{s:?}");
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.drop_and_release() };
    let heap = o.open(dir.heap(), reopen).unwrap();
    assert!((0..1000).all(|p| heap.read()[p * 512..p * 512 + 3] == [1, 1, 1]));
}

#[test]
fn close_skips_the_snapshot_for_a_small_journal_and_the_next_open_replays_it() {
    let dir = Scratch::new("delta-close");
    let mut o = options();
    o.snapshot_on_close(true);
    let heap = words(&dir.heap(), &o, 4096);
    journal_growth(&heap, |w| w[5] = 5);
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = o.open(dir.heap(), reopen).unwrap();
    let s = heap.stats();
    assert_eq!(s.snapshot_generation, 0, "a small journal needs no snapshot at close");
    assert!(s.replayed_pages > 0);
    assert_eq!(heap.read()[5], 5);
    // Seeded from replay: the next change of a replayed page is a delta at once.
    journal_growth(&heap, |w| w[5] = 6);
    assert!(heap.stats().delta_pages >= 1, "{:?}", heap.stats());
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    // With the threshold at 0, close snapshots as before.
    o.close_snapshot_min_bytes(0);
    let heap = o.open(dir.heap(), reopen).unwrap();
    journal_growth(&heap, |w| w[7] = 7);
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = o.open(dir.heap(), reopen).unwrap();
    assert_eq!(heap.stats().snapshot_generation, 1);
    assert_eq!(heap.stats().replayed_pages, 0);
    assert_eq!((heap.read()[5], heap.read()[7]), (6, 7));
}

#[test]
fn planted_stale_base_is_reported_as_corrupt_by_the_post_image_check() {
    let dir = Scratch::new("delta-planted");
    let mut o = options();
    o.test_planted_bug(Some(PlantedBug::DeltaStaleBase));
    let heap = words(&dir.heap(), &o, 4096);
    // A word changes and changes back: against the stale base (zeros, the page's image at
    // creation) the second delta leaves the word out, but another word of the page changed
    // too, so the page is journaled and its post-image checksum cannot match at replay.
    journal_growth(&heap, |w| w[100] = 5);
    journal_growth(&heap, |w| {
        w[100] = 0;
        w[200] = 7;
    });
    assert!(heap.stats().delta_pages >= 2, "{:?}", heap.stats());
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.drop_and_release() };
    match options().open(dir.heap(), reopen) {
        Err(Error::Corrupt { file, offset, what }) => {
            assert!(file.to_string_lossy().contains("journal-"), "{file:?}");
            assert!(offset > 4096, "{offset}");
            assert!(what.contains("checksum"), "{what}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("a delta applied to a stale base went unnoticed"),
    }
}

#[test]
fn grown_pages_are_journaled_against_zeros() {
    let dir = Scratch::new("delta-zero");
    let heap = words(&dir.heap(), &options(), 1);
    let s0 = heap.stats();
    // A new allocation far into fresh memory; a few words written in each of its pages.
    let bytes = journal_growth(&heap, |w| {
        w.reserve(8 << 20);
        let n = w.len();
        w.resize(n + (4 << 20) / 8, 0);
        for p in 0..1024 {
            w[n + p * 512] = p as u64 + 1;
        }
    });
    let s = heap.stats();
    assert!(s.delta_pages - s0.delta_pages >= 1000, "{s:?}");
    assert!(bytes < 1024 * 100, "4 MiB of mostly zero pages journaled {bytes} bytes");
    let expect: Vec<u64> = heap.read().to_vec();
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.drop_and_release() };
    let heap = options().open(dir.heap(), reopen).unwrap();
    assert_eq!(heap.read().to_vec(), expect);
}
