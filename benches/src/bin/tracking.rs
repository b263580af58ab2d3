//! Dirty-tracking rungs (issue 11, "Must show"): commit time and journal bytes of each rung of
//! the tracker ladder against the fast path (`uffd-wp`), in one run:
//!
//! 1. `small`: a 512 MiB heap, the same 100 scattered bytes changed at every commit;
//! 2. `spread`: a 1 GiB heap, 1% of its pages changed at every commit.
//!
//! Every rung the kernel offers is opened with `OpenOptions::tracking` (a rung it lacks is
//! printed as unavailable, with the probe's reason). The `+ remap` rows open with
//! `OpenOptions::remap_clean_pages(true)` and take one snapshot after the fill (which maps the
//! pages equal to it back from the snapshot file), so the hashed rung's pagemap read finds them
//! as file pages and hashes only the pages written since: what a long-running program with
//! remapping on sees between snapshots. No snapshot runs during the timed commits, so under
//! `spread` the written pages accumulate (1% more per commit). Commits use `Durability::Eventual` with a
//! flush interval longer than the run, so the times are the commit path (find pages, copy,
//! write to the page cache), not the disk's sync latency; snapshots never start.
//!
//! Run: `cargo run --release --manifest-path benches/Cargo.toml --bin tracking [small|spread]`
//! (default both). `SNAPHEAP_BENCH_DIR` chooses the scratch directory (default: temp);
//! `TRACKING_ONLY=hashed+remap,uffd-wp` runs only the rows named.

#[path = "../fill.rs"]
mod fill;

use fill::{empty, fill, quantile, touch_page, Chunks, PAGE};
use snapheap::{Durability, Heap, OpenOptions, Tracking};
use snapheap_benches::Scratch;
use std::time::{Duration, Instant};

const RUNGS: [Tracking; 4] = [
    Tracking::UffdWp,
    Tracking::SoftDirty,
    Tracking::Hashed,
    Tracking::AllDirty,
];

fn open(dir: &Scratch, t: Tracking, remap: bool) -> Result<Heap<Chunks>, snapheap::Error> {
    OpenOptions::new()
        .remap_clean_pages(remap)
        .durability(Durability::Eventual)
        .flush_interval(Duration::from_secs(3600))
        .snapshot_after_journal_bytes(1 << 50)
        .snapshot_on_close(false)
        .max_size(4 << 30)
        .tracking(t)
        .open(dir.0.join(t.name()), empty)
}

/// One measured configuration's result.
struct Row {
    rung: String,
    median: Duration,
    min: Duration,
    bytes: u64,
    pages: u64,
}

/// Opens a heap of `heap_bytes` with rung `t`, fills it, then times `reps` commits, each after
/// `change(root, round)`.
fn measure(
    t: Tracking,
    remap: bool,
    heap_bytes: usize,
    reps: usize,
    change: &dyn Fn(&mut Chunks, usize),
) -> Result<Row, String> {
    let dir = Scratch::new(&format!("tracking-{}", t.name()));
    let heap = open(&dir, t, remap).map_err(|e| e.to_string())?;
    fill(&heap, heap_bytes, 64 << 20);
    let mut setup = String::new();
    if remap {
        let start = Instant::now();
        heap.snapshot().map_err(|e| e.to_string())?;
        let s = heap.stats();
        setup = format!(
            " (setup snapshot + remap {:.1} s: {} pages remapped, {} MiB left anonymous)",
            start.elapsed().as_secs_f64(),
            s.remapped_pages,
            s.anonymous_bytes >> 20
        );
    }
    let mode = heap.stats().track_mode;
    assert_eq!(mode, t.name(), "forced rung not in use");
    let (mut times, mut bytes, mut pages) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..reps + 1 {
        let mut g = heap.write();
        change(&mut g, round);
        let j0 = heap.stats().journal_bytes;
        let start = Instant::now();
        g.commit().expect("commit");
        let d = start.elapsed();
        drop(g);
        let s = heap.stats();
        if round > 0 {
            // Round 0 is a warm-up (first-touch effects of the rung's own bookkeeping).
            times.push(d);
            bytes.push(s.journal_bytes - j0);
            pages.push(s.last_commit_pages);
        }
    }
    let anon = heap.stats().anonymous_bytes >> 20;
    if remap {
        setup.push_str(&format!("; {anon} MiB anonymous after the timed commits"));
        eprintln!("{}+remap{setup}", t.name());
    }
    drop(heap);
    bytes.sort();
    pages.sort();
    Ok(Row {
        rung: if remap {
            format!("{} + remap", t.name())
        } else {
            t.name().to_string()
        },
        median: quantile(&times, 0.5),
        min: quantile(&times, 0.0),
        bytes: bytes[bytes.len() / 2],
        pages: pages[pages.len() / 2],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn table(title: &str, heap_bytes: usize, change: &dyn Fn(&mut Chunks, usize)) {
    println!("## {title}\n");
    println!("| rung | commit median | min | journal bytes/commit | pages/commit | vs uffd-wp | vs all-dirty |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    let mut configs: Vec<(Tracking, bool)> = RUNGS.iter().map(|&t| (t, false)).collect();
    configs.push((Tracking::Hashed, true));
    configs.push((Tracking::UffdWp, true));
    // `TRACKING_ONLY=hashed+remap,uffd-wp` runs only those rows (quick checks).
    let only = std::env::var("TRACKING_ONLY").ok();
    for (t, remap) in configs {
        let name = if remap {
            format!("{}+remap", t.name())
        } else {
            t.name().to_string()
        };
        if only.as_ref().is_some_and(|o| !o.split(',').any(|x| x == name)) {
            continue;
        }
        let reps = if t == Tracking::AllDirty { 3 } else { 10 };
        match measure(t, remap, heap_bytes, reps, change) {
            Ok(r) => rows.push(r),
            Err(e) => println!("| {} | not available here: {e} | | | | | |", t.name()),
        }
    }
    let fast = rows.iter().find(|r| r.rung == "uffd-wp").map(|r| r.median);
    let all = rows.iter().find(|r| r.rung == "all-dirty").map(|r| r.median);
    let ratio = |x: Duration, base: Option<Duration>| match base {
        Some(b) => format!("{:.2}x", x.as_secs_f64() / b.as_secs_f64()),
        None => "-".into(),
    };
    for r in &rows {
        println!(
            "| {} | {:.2} ms | {:.2} ms | {} | {} | {} | {} |",
            r.rung,
            ms(r.median),
            ms(r.min),
            r.bytes,
            r.pages,
            ratio(r.median, fast),
            ratio(r.median, all)
        );
    }
    println!();
}

fn main() {
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
    println!("tracking benchmark, {}\n", fill::now_utc());
    if want("small") {
        // 100 byte offsets scattered over the 512 MiB (fixed), each incremented per commit.
        let heap = 512usize << 20;
        let total = heap / PAGE;
        let offsets: Vec<(usize, u8)> = (0..100)
            .map(|i| ((i * 1_299_709 + 17) % total, (i * 37 % 4096 / 8) as u8))
            .collect();
        table(
            "512 MiB heap, the same 100 scattered bytes changed per commit",
            heap,
            &|root: &mut Chunks, _round: usize| {
                for &(page, salt) in &offsets {
                    touch_page(root, page, salt);
                }
            },
        );
    }
    if want("spread") {
        let heap = 1usize << 30;
        let total = heap / PAGE;
        let k = total / 100;
        table(
            "1 GiB heap, 1% of the pages changed per commit",
            heap,
            &|root: &mut Chunks, round: usize| fill::touch_spread(root, total, k, round * 13, round as u8),
        );
    }
}
