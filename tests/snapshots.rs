//! Forked page-diff snapshots: what they write, what they leave on disk, and that writing into
//! a snapshot file never changes what the program sees.

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Heap, OpenOptions};

type Blocks = Vec<Vec<u8>>;

const PAGE: usize = 4096;

fn checksum(blocks: &Blocks) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in blocks.iter() {
        for chunk in b.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w)).wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

fn fill(heap: &Heap<Blocks>, total: usize, block: usize) {
    let a = heap.alloc();
    let mut s = heap.write();
    for i in 0..total / block {
        let mut v = Vec::with_capacity_in(block, a);
        v.resize(block, (i % 251) as u8 + 1);
        s.push(v);
    }
}

/// Touches `n` distinct random pages of the blocks (blocks may differ in size).
fn touch_pages(heap: &Heap<Blocks>, rng: &mut Rng, n: usize, stamp: u8) {
    let mut s = heap.write();
    let pages: std::vec::Vec<(usize, usize)> = s
        .iter()
        .enumerate()
        .flat_map(|(b, v)| (0..v.len() / PAGE).map(move |o| (b, o)))
        .collect();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < n.min(pages.len()) {
        let p = rng.below(pages.len() as u64) as usize;
        if seen.insert(p) {
            let (b, o) = pages[p];
            s[b][o * PAGE + 17] = stamp;
        }
    }
}

#[test]
fn snapshot_rounds_write_only_the_pages_changed_in_the_last_two_intervals() {
    let dir = Scratch::new("snap-diff");
    let heap = OpenOptions::new().open(dir.heap(), Blocks::new_in).unwrap();
    fill(&heap, 128 << 20, 1 << 20);
    heap.commit().unwrap();
    heap.snapshot().unwrap();
    heap.snapshot().unwrap();
    let heap_pages = (128 << 20) / PAGE;
    let mut rng = Rng::new(7);
    for round in 0..5u8 {
        let changed = heap_pages / 100;
        touch_pages(&heap, &mut rng, changed, round + 1);
        heap.commit().unwrap();
        heap.snapshot().unwrap();
        let st = heap.stats();
        let limit = 2 * changed as u64 + 256;
        println!(
            "round {round}: changed {changed} pages, snapshot wrote {} pages (limit {limit}), fork {} us",
            st.last_snapshot_pages, st.last_fork_micros
        );
        assert!(
            st.last_snapshot_pages <= limit,
            "round {round}: wrote {} > {limit}",
            st.last_snapshot_pages
        );
        assert!(
            st.last_snapshot_pages >= changed as u64,
            "round {round}: wrote fewer pages than changed"
        );
    }
}

fn disk_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    // A covered journal may be removed by the background remover between the listing and the
    // stat: a file that is gone uses no space.
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| match e.unwrap().metadata() {
            Ok(m) => Some(m.blocks() * 512),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => panic!("stat in {}: {e}", dir.display()),
        })
        .sum()
}

#[test]
fn disk_use_stays_bounded_over_400_commits() {
    let dir = Scratch::new("snap-bound");
    let threshold = 4u64 << 20;
    // Whole-page journaling (no base cache), so that 400 commits of 16 one-byte page changes
    // make enough journal (26 MiB) for several automatic snapshots by bytes. With deltas they
    // journal about 1 KiB per commit, and snapshot forks keep the base cache (only pages
    // written since the forking commit's collect are journaled whole again).
    let heap = OpenOptions::new()
        .snapshot_after_journal_bytes(threshold)
        .base_cache_bytes(0)
        .open(dir.heap(), Blocks::new_in)
        .unwrap();
    fill(&heap, 16 << 20, 256 << 10);
    heap.commit().unwrap();
    let mut rng = Rng::new(11);
    let mut peak = 0;
    for i in 0..400u32 {
        touch_pages(&heap, &mut rng, 16, i as u8);
        heap.commit().unwrap();
        peak = peak.max(disk_bytes(&dir.heap()));
    }
    let st = heap.stats();
    // Two snapshot files of ~16 MiB of data (plus allocator overhead) and a few thresholds of
    // journal: the journal being snapshotted (one threshold), the current one (at most two
    // thresholds: then commits wait for the writer), one more while the old one's removal
    // runs in the background, and each journal's 4 MiB of pre-zeroed space ahead of its end.
    let snapshot_file = st.mapped_bytes + 8192 + st.mapped_bytes / PAGE as u64 / 8;
    let prezero = 4u64 << 20;
    let bound = 2 * snapshot_file + 4 * threshold + 2 * prezero;
    println!("peak disk use {peak} bytes, bound {bound}, snapshots {}", st.snapshots);
    assert!(st.snapshots >= 3, "expected automatic snapshots, got {}", st.snapshots);
    assert!(peak <= bound, "disk use {peak} exceeds {bound}");
}

#[test]
fn twenty_snapshot_restart_cycles_keep_contents_identical() {
    let dir = Scratch::new("snap-cycles");
    let mut rng = Rng::new(3);
    let mut expected;
    {
        let heap = Heap::open(dir.heap(), Blocks::new_in).unwrap();
        fill(&heap, 8 << 20, 64 << 10);
        heap.commit().unwrap();
        expected = checksum(&heap.read());
        heap.close().unwrap();
    }
    for cycle in 0..20u8 {
        let heap = Heap::open(dir.heap(), |_| -> Blocks { panic!("init on reopen") }).unwrap();
        assert_eq!(
            checksum(&heap.read()),
            expected,
            "cycle {cycle}: contents differ after reopen"
        );
        touch_pages(
            &heap,
            &mut rng,
            1 + (cycle as usize * 37) % 200,
            cycle.wrapping_mul(7) | 1,
        );
        {
            // Grow and shrink some blocks so allocator state changes as well.
            let a = heap.alloc();
            let mut s = heap.write();
            let mut v = Vec::new_in(a);
            v.resize(1000 + cycle as usize * 100, cycle);
            s.push(v);
            if s.len() > 140 {
                s.remove(0);
            }
        }
        heap.commit().unwrap();
        let before = checksum(&heap.read());
        // Each snapshot rewrites the older file; from the second cycle on that is the file
        // this process has mapped. What the program sees must not change.
        heap.snapshot().unwrap();
        heap.snapshot().unwrap();
        assert_eq!(
            checksum(&heap.read()),
            before,
            "cycle {cycle}: a snapshot write showed through"
        );
        expected = before;
        heap.close().unwrap();
    }
}

#[test]
fn a_snapshot_writer_stopped_after_any_step_leaves_the_last_commit_recoverable() {
    for step in 1..=8u8 {
        let dir = Scratch::new("snap-steps");
        let mut want = 0;
        for phase in 0..3u64 {
            let heap = OpenOptions::new()
                .test_snapshot_stop_after(if phase == 2 { Some(step) } else { None })
                .snapshot_on_close(false)
                .open(dir.heap(), Vec::<u64>::new_in)
                .unwrap();
            assert_eq!(heap.read().len() as u64, want, "step {step} phase {phase}");
            for i in 0..500 {
                heap.write().push(phase * 1000 + i);
            }
            heap.commit().unwrap();
            want += 500;
            let r = heap.snapshot();
            if phase == 2 {
                assert!(r.is_err(), "step {step}: stopped writer reported success");
                assert!(heap.stats().snapshot_failures >= 1);
                // Commits still work and are safe in the journal.
                heap.write().push(99);
                heap.commit().unwrap();
                want += 1;
            } else {
                r.unwrap();
            }
            drop(heap); // no close: as if the process died here
        }
        let heap = Heap::open(dir.heap(), Vec::<u64>::new_in).unwrap();
        assert_eq!(heap.read().len() as u64, want, "step {step}: lost commits");
        assert_eq!(heap.read()[1000], 2000, "step {step}");
        heap.verify().unwrap();
    }
}

/// The highest journal id in the heap directory (a new one is created at every snapshot fork).
fn newest_journal(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            u64::from_str_radix(name.strip_prefix("journal-")?, 16).ok()
        })
        .max()
        .expect("a journal")
}

/// Commits until the snapshot writer forked earlier has been reaped (commits reap it).
fn wait_for_snapshots(heap: &Heap<Blocks>, n: u64) {
    let t0 = std::time::Instant::now();
    while heap.stats().snapshots < n {
        assert!(t0.elapsed().as_secs() < 60, "snapshot {n} never completed");
        std::thread::sleep(std::time::Duration::from_millis(5));
        heap.commit().unwrap();
    }
}

#[test]
fn page_records_start_a_snapshot_at_a_quiet_commit_or_at_four_times_the_threshold() {
    let dir = Scratch::new("snap-records");
    let records = 256u64;
    let heap = OpenOptions::new()
        .snapshot_after_journal_bytes(1 << 40)
        .snapshot_after_journal_pages(records)
        .snapshot_on_close(false)
        .open(dir.heap(), Blocks::new_in)
        .unwrap();
    fill(&heap, 2 << 20, 256 << 10);
    heap.commit().unwrap();
    let mut since_fork = heap.stats().last_commit_pages;
    assert!(since_fork >= records, "{since_fork}");
    // Commits of 100 pages are not quiet: no fork below four times the threshold.
    let mut rng = Rng::new(5);
    let first = newest_journal(&dir.heap());
    let mut i = 0u8;
    loop {
        i += 1;
        touch_pages(&heap, &mut rng, 100, i);
        heap.commit().unwrap();
        let forked = newest_journal(&dir.heap()) != first;
        assert_eq!(
            forked,
            since_fork >= 4 * records,
            "commit {i}: {since_fork} page records since the last fork"
        );
        if forked {
            break;
        }
        since_fork += heap.stats().last_commit_pages;
    }
    wait_for_snapshots(&heap, 1);
    // Past the threshold but below four times it, the first quiet commit (one page) forks.
    let second = newest_journal(&dir.heap());
    let mut since_fork = 0;
    while since_fork < records {
        i += 1;
        touch_pages(&heap, &mut rng, 100, i);
        heap.commit().unwrap();
        assert_eq!(
            newest_journal(&dir.heap()),
            second,
            "a commit of 100 pages is not quiet"
        );
        since_fork += heap.stats().last_commit_pages;
    }
    assert!(since_fork < 4 * records);
    heap.write()[0][0] = 77;
    heap.commit().unwrap();
    assert_eq!(newest_journal(&dir.heap()), second + 1, "the quiet commit forks");
    wait_for_snapshots(&heap, 2);
    let sum = checksum(&heap.read());
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = OpenOptions::new().open(dir.heap(), Blocks::new_in).unwrap();
    assert_eq!(checksum(&heap.read()), sum);
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
}

#[test]
fn close_stops_a_running_writer_when_the_journal_is_cheap_to_replay_and_loses_nothing() {
    let dir = Scratch::new("snap-close-stop");
    let heap = OpenOptions::new()
        .snapshot_after_journal_bytes(1 << 40)
        .snapshot_after_journal_pages(0)
        .open(dir.heap(), Blocks::new_in)
        .unwrap();
    fill(&heap, 64 << 20, 1 << 20);
    heap.commit().unwrap();
    heap.snapshot().unwrap(); // generation 1
    let mut rng = Rng::new(1);
    touch_pages(&heap, &mut rng, 16384, 9);
    heap.commit().unwrap();
    heap.snapshot().unwrap(); // generation 2: its interval holds every page
                              // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    let mut o = OpenOptions::new();
    o.snapshot_after_journal_bytes(1 << 40)
        .snapshot_after_journal_pages(1000)
        .close_snapshot_min_bytes(1 << 40);
    let heap = o.open(dir.heap(), Blocks::new_in).unwrap();
    assert_eq!(heap.stats().snapshot_generation, 2);
    // 1,200 page records in commits that are not quiet (below four times 1,000: no fork), then
    // a quiet commit forks a writer of every page changed since generation 1's file (~64 MiB).
    touch_pages(&heap, &mut rng, 600, 10);
    heap.commit().unwrap();
    touch_pages(&heap, &mut rng, 600, 11);
    heap.commit().unwrap();
    heap.write()[0][1] = 5;
    let sum = checksum(&heap.read()); // before the fork: this takes long in a debug build
    heap.commit().unwrap();
    assert!(heap.stats().last_fork_micros > 0, "the quiet commit forked");
    // The journal since generation 2 holds ~1,200 records, below twice 1,000: close stops the
    // writer (64 MiB and two fdatasyncs are not done microseconds after the fork) instead of
    // waiting, and takes no snapshot.
    let t0 = std::time::Instant::now();
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    println!("close took {:?}", t0.elapsed());
    let heap = o.open(dir.heap(), Blocks::new_in).unwrap();
    let st = heap.stats();
    assert_eq!(
        st.snapshot_generation, 2,
        "the stopped writer's snapshot must not count"
    );
    assert!(st.replayed_pages >= 1200, "{st:?}");
    assert_eq!(checksum(&heap.read()), sum);
    // The stopped writer's file is rewritten whole by the next snapshot; everything survives.
    heap.snapshot().unwrap();
    let sum = checksum(&heap.read());
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = o.open(dir.heap(), Blocks::new_in).unwrap();
    assert_eq!(heap.stats().snapshot_generation, 3);
    assert_eq!(checksum(&heap.read()), sum);
    // SAFETY (test): nothing allocated from the heap is used after this.
    unsafe { heap.close_and_release() }.unwrap();
}
