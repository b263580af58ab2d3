//! Snapshot benchmarks (issue 4, "Must show"):
//!
//! 1. `fork`: the stall `fork()` causes in the committing thread (`Stats::last_fork_micros`)
//!    per GiB of heap, for 1, 2 and 4 GiB of allocated and touched data. Target <= 15 ms/GiB.
//! 2. `open`: time of `Heap::open` of a 1 GiB heap after a clean `close()`, against the time to
//!    read the files that hold its state (the newest snapshot file, the journal, `meta`) with
//!    plain `read`s, both cold (page cache dropped through `/proc/sys/vm/drop_caches`, needs
//!    root) and warm. Target: open <= 5% of the read time.
//! 3. `bytes`: pages written by a snapshot (`Stats::last_snapshot_pages`) against heap size
//!    (256 MiB, 1 GiB) and the fraction of pages changed since the previous snapshot.
//!
//! Run: `cargo run --release --manifest-path benches/Cargo.toml --bin snapshot [part ...]`
//! (parts: fork, open, bytes; default all). `--max-gib N` caps the heap sizes of `fork`
//! (default 4). `SNAPHEAP_BENCH_DIR` chooses the scratch directory (default: temp).

#[path = "../fill.rs"]
mod fill;

use fill::{data_pages, empty, fill, size_name, touch_page, touch_spread, us, Chunks, PAGE};
use snapheap::{Durability, Heap, OpenOptions};
use snapheap_benches::{Rng, Scratch};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

fn opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durability(Durability::Eventual)
        .snapshot_after_journal_bytes(1 << 50)
        .max_size(16 << 30);
    o
}

fn open(dir: &Path) -> Heap<Chunks> {
    opts().open(dir, empty).expect("open heap")
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort();
    v[v.len() / 2]
}

/// The page-table-copy floor: the time `fork()` takes in this process when it holds `size`
/// bytes of touched anonymous memory in 4 KiB pages (no heap open), with a child that exits at
/// once. Median of `reps`.
fn raw_fork_floor(size: usize, reps: usize) -> u64 {
    let mut v = vec![0u8; size];
    // SAFETY: v's buffer is a live allocation of `size` bytes.
    unsafe { libc::madvise(v.as_mut_ptr() as *mut libc::c_void, size, libc::MADV_NOHUGEPAGE) };
    for i in (0..size).step_by(PAGE) {
        v[i] = 1;
    }
    let mut t = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        // SAFETY: the child only calls _exit, which is async-signal-safe.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: _exit never returns and runs no destructors.
            unsafe { libc::_exit(0) };
        }
        t.push(start.elapsed().as_micros() as u64);
        assert!(pid > 0, "fork failed");
        let mut st = 0;
        // SAFETY: pid is our child; st is a valid out-parameter.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    std::hint::black_box(&v);
    median(t)
}

fn fork(max_gib: usize, reps: usize) {
    println!("## Fork stall per GiB of heap\n");
    println!(
        "`heap.snapshot()` after changing 16 pages; `Stats::last_fork_micros` (the parent's time in \
         `fork()`); median of {reps} snapshots after the first two (which write whole files). Target <= 15 ms/GiB.\n"
    );
    println!("| heap (data) | mapped | fork stall (median) | min | max | ms per GiB | raw fork floor, same size (median) | stall / floor | snapshot duration (median) | pages written (median) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for gib in [1usize, 2, 4].into_iter().filter(|&g| g <= max_gib) {
        // The floor is measured before and after the heap's snapshots (the machine's load
        // drifts); the table shows the mean of the two medians.
        let floor_before = raw_fork_floor(gib << 30, reps);
        let dir = Scratch::new("snap-fork");
        let heap = open(&dir.0.join("heap"));
        let size = gib << 30;
        fill(&heap, size, 256 << 20);
        let total = data_pages(&heap.read());
        let mapped = heap.stats().mapped_bytes as usize;
        let (mut forks, mut durs, mut pages) = (Vec::new(), Vec::new(), Vec::new());
        for r in 0..reps + 2 {
            touch_spread(&mut heap.write(), total, 16, r * 31, r as u8);
            heap.snapshot().expect("snapshot");
            let s = heap.stats();
            if r >= 2 {
                forks.push(s.last_fork_micros);
                durs.push(s.last_snapshot_micros);
                pages.push(s.last_snapshot_pages);
            }
        }
        // Released: a dropped heap's memory otherwise stays mapped until exit, and the next
        // open of it would take that memory over instead of mapping its files.
        // SAFETY: the benchmark keeps every heap value in the root.
        unsafe { heap.drop_and_release() };
        drop(dir);
        let floor = (floor_before + raw_fork_floor(gib << 30, reps)) / 2;
        let (lo, hi) = (*forks.iter().min().unwrap(), *forks.iter().max().unwrap());
        let f = median(forks);
        println!(
            "| {} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1} | {:.1} ms | {:.2}x | {:.1} ms | {} |",
            size_name(size),
            size_name(mapped),
            f as f64 / 1e3,
            lo as f64 / 1e3,
            hi as f64 / 1e3,
            f as f64 / 1e3 / (mapped as f64 / (1u64 << 30) as f64),
            floor as f64 / 1e3,
            f as f64 / floor as f64,
            median(durs) as f64 / 1e3,
            median(pages),
        );
    }
    println!();
}

/// Drops the page cache (clean pages only; dirty ones are written first). Needs root.
fn drop_caches() -> bool {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Reads every file of `files` with plain reads of 1 MiB; returns the bytes read.
fn read_files(files: &[std::path::PathBuf]) -> u64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    for p in files {
        let mut f = std::fs::File::open(p).expect("open for reading");
        loop {
            let n = f.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total
}

fn open_bench(reps: usize) {
    println!("## Open time of a 1 GiB heap after a clean close, against reading its files\n");
    let scratch = Scratch::new("snap-open");
    let dir = scratch.0.join("heap");
    let size = 1usize << 30;
    {
        let heap = open(&dir);
        fill(&heap, size, 256 << 20);
        // Released, so the memory does not stay mapped until exit (and a reopen maps the files).
        // SAFETY: the benchmark keeps every heap value in the root.
        unsafe { heap.close_and_release() }.expect("close (commits and snapshots)");
    }
    // The files a non-lazy open would read: the newest snapshot, the journals, meta.
    let mut files = Vec::new();
    let mut newest: Option<(std::time::SystemTime, std::path::PathBuf)> = None;
    let mut listing = Vec::new();
    for e in std::fs::read_dir(&dir).expect("list heap dir") {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().to_string();
        let md = e.metadata().expect("stat");
        listing.push(format!("{name} ({} bytes)", md.len()));
        if name.starts_with("snapshot-") {
            let m = md.modified().expect("mtime");
            if newest.as_ref().is_none_or(|(t, _)| m > *t) {
                newest = Some((m, e.path()));
            }
        } else if name.starts_with("journal-") || name == "meta" {
            files.push(e.path());
        }
    }
    files.push(newest.expect("a snapshot file").1);
    listing.sort();
    println!("Heap directory after close: {}.\n", listing.join(", "));

    let can_drop = drop_caches();
    if !can_drop {
        println!("(cannot write /proc/sys/vm/drop_caches: cold rows skipped)\n");
    }
    let mut rows = Vec::new();
    for cold in [true, false] {
        if cold && !can_drop {
            continue;
        }
        let (mut opens, mut reads, mut replayed, mut bytes) = (Vec::new(), Vec::new(), 0, 0);
        // Warm rows get one unmeasured round first so the cache holds everything.
        for r in 0..reps + usize::from(!cold) {
            // Alternate which goes first so neither always follows the other's cache effects.
            let mut o = Duration::ZERO;
            let mut rd = Duration::ZERO;
            for step in 0..2 {
                if cold {
                    drop_caches();
                }
                if (step + r) % 2 == 0 {
                    let t = Instant::now();
                    let heap = open(&dir);
                    o = t.elapsed();
                    let s = heap.stats();
                    replayed = s.replayed_pages;
                    assert_eq!(heap.read().chunks.len(), size / fill::CHUNK, "recovered root");
                    // Dropped, not closed: the allocator writes a few pages while attaching
                    // (17 here), which close() would commit and snapshot, changing the files
                    // between rounds. A drop discards them like a crash, leaving the directory
                    // exactly as the clean close left it.
                    // Released: a dropped heap's memory otherwise stays mapped until exit, and the next
                    // open of it would take that memory over instead of mapping its files.
                    // SAFETY: the benchmark keeps every heap value in the root.
                    unsafe { heap.drop_and_release() };
                } else {
                    let t = Instant::now();
                    bytes = read_files(&files);
                    rd = t.elapsed();
                }
            }
            if cold || r > 0 {
                opens.push(o);
                reads.push(rd);
            }
        }
        opens.sort();
        reads.sort();
        let (om, rm) = (opens[opens.len() / 2], reads[reads.len() / 2]);
        rows.push(format!(
            "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1}% | {bytes} | {replayed} |",
            if cold { "cold (drop_caches before each)" } else { "warm" },
            us(om) / 1e3,
            us(opens[0]) / 1e3,
            us(rm) / 1e3,
            100.0 * us(om) / us(rm),
        ));
    }
    println!("Median of {reps}; the open and the read alternate.\n");
    println!("| page cache | open (median) | open (min) | read files (median) | open / read | bytes read | pages replayed at open |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!("{r}");
    }
    println!();
}

fn bytes(sizes: &[usize]) {
    println!("## Snapshot pages written against heap size and pages changed\n");
    println!(
        "After filling, two snapshots write both files in full; then each round changes a random set \
         of data pages, commits and snapshots. A snapshot rewrites the pages changed since the *older* \
         file was written: this round's and the previous round's changes (plus allocator/root pages).\n"
    );
    println!("| heap (data) | round | pages changed (this round) | changed (previous round) | snapshot pages | bytes written | % of heap | pages / (this + previous) | snapshot duration |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for &size in sizes {
        let dir = Scratch::new("snap-bytes");
        let heap = open(&dir.0.join("heap"));
        fill(&heap, size, 256 << 20);
        let total = data_pages(&heap.read());
        for _ in 0..2 {
            heap.snapshot().expect("full snapshot");
        }
        let s = heap.stats();
        println!(
            "| {} | full (2nd) | | | {} | {} | {:.1}% | | {:.1} ms |",
            size_name(size),
            s.last_snapshot_pages,
            s.last_snapshot_pages * PAGE as u64,
            100.0 * (s.last_snapshot_pages * PAGE as u64) as f64 / size as f64,
            s.last_snapshot_micros as f64 / 1e3
        );
        let mut rng = Rng::new(size as u64);
        let mut prev = 0usize;
        for (name, frac) in [("0.1%", 0.001), ("1%", 0.01), ("10%", 0.1)] {
            for round in 1..=2 {
                let want = ((total as f64 * frac) as usize).max(1);
                let mut chosen = std::collections::HashSet::new();
                while chosen.len() < want {
                    chosen.insert(rng.range(0, total as u64) as usize);
                }
                {
                    let mut g = heap.write();
                    for &p in &chosen {
                        touch_page(&mut g, p, round as u8);
                    }
                }
                heap.snapshot().expect("snapshot");
                let s = heap.stats();
                let w = s.last_snapshot_pages;
                println!(
                    "| {} | {name} #{round} | {want} | {prev} | {w} | {} | {:.2}% | {:.2} | {:.1} ms |",
                    size_name(size),
                    w * PAGE as u64,
                    100.0 * (w * PAGE as u64) as f64 / size as f64,
                    w as f64 / (want + prev) as f64,
                    s.last_snapshot_micros as f64 / 1e3
                );
                prev = want;
            }
        }
        // Released: a dropped heap's memory otherwise stays mapped until exit, and the next
        // open of it would take that memory over instead of mapping its files.
        // SAFETY: the benchmark keeps every heap value in the root.
        unsafe { heap.drop_and_release() };
        drop(dir);
    }
    println!();
}

fn main() {
    let (parts, max_gib) = fill::parts_and_max_gib(&["fork", "open", "bytes"]);
    println!("# snapheap snapshot benchmarks ({})\n", fill::now_utc());
    for p in &parts {
        match p.as_str() {
            "fork" => fork(max_gib, 9),
            "open" => open_bench(9),
            "bytes" => bytes(&[256 << 20, 1 << 30]),
            other => panic!("unknown part {other:?} (fork, open, bytes)"),
        }
    }
}
