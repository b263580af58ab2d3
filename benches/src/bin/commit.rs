//! Commit benchmarks (issue 3, "Must show"):
//!
//! 1. `immediate`: latency of `commit()` with `Durability::Immediate` for 1 and 16 dirty pages,
//!    against the raw floor measured in the same run and interleaved with it: `pwrite` of the
//!    same number of bytes the commit appended to its journal, then `fdatasync`, on a file in
//!    the same directory, (a) appending to a growing file and (b) overwriting a file whose
//!    blocks were written and synced beforehand. Target: commit <= 1.2x the floor.
//! 2. `eventual`: wall and thread CPU time of `commit()` with `Durability::Eventual` against
//!    heap size (1 MiB to 4 GiB of allocated and touched data) and dirty pages (0 to 10,000).
//!    Target: <= 1 ms per GiB of heap + 2 us per dirty page.
//! 3. `bytes`: journal bytes appended by a commit that changes 64 bytes.
//! 4. `scattered`: one byte changed in each of the same 100 pages spread over a 512 MiB heap,
//!    commit after commit: journal bytes per commit (target <= 16 KiB once the pages have been
//!    committed once), the pages journaled as deltas, and the base cache's memory against the
//!    heap's.
//!
//! The word differ's own cost per page is measured by the crate's example `diff_cost`
//! (`cargo run --release --example diff_cost`).
//!
//! Run: `cargo run --release --manifest-path benches/Cargo.toml --bin commit [part ...]`
//! (parts: immediate, eventual, bytes, scattered; default all). `--max-gib N` caps the heap sizes of
//! `eventual` (default 4). `SNAPHEAP_BENCH_DIR` chooses the scratch directory (default: temp).

#[path = "../fill.rs"]
mod fill;

use fill::{empty, fill, quantile, size_name, thread_cpu, touch_page, touch_spread, us, Chunks, PAGE};
use snapheap::{Durability, Heap, OpenOptions};
use snapheap_benches::{Rng, Scratch};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// A snapshot threshold no run reaches, so snapshots never interfere.
const NO_SNAPSHOT: u64 = 1 << 50;

fn opts(d: Durability) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.durability(d)
        .snapshot_after_journal_bytes(NO_SNAPSHOT)
        .snapshot_on_close(false)
        .max_size(16 << 30);
    o
}

fn open(dir: &Scratch, d: Durability) -> Heap<Chunks> {
    opts(d).open(dir.0.join("heap"), empty).expect("open heap")
}

fn immediate(iters: usize) {
    println!("## Commit latency, Durability::Immediate, against write + fdatasync of the same bytes\n");
    let dir = Scratch::new("commit-imm");
    let heap = open(&dir, Durability::Immediate);
    fill(&heap, 16 << 20, usize::MAX);
    let total = fill::data_pages(&heap.read());
    println!(
        "heap: 16 MiB of data; tracking mode {}; {iters} iterations per row, interleaved \
         (commit, raw append, raw overwrite)\n",
        heap.stats().track_mode
    );

    let append = File::create(dir.0.join("raw-append")).expect("create raw-append");
    let over = File::create(dir.0.join("raw-overwrite")).expect("create raw-overwrite");
    const OVER_LEN: u64 = 256 << 20;
    {
        let zeros = vec![0u8; 4 << 20];
        let mut off = 0;
        while off < OVER_LEN {
            over.write_all_at(&zeros, off).expect("prewrite");
            off += zeros.len() as u64;
        }
        over.sync_all().expect("sync prewritten file");
    }
    let mut rng = Rng::new(7);
    let payload: Vec<u8> = (0..(1 << 20)).map(|_| rng.next_u64() as u8).collect();
    let (mut append_off, mut over_off) = (0u64, 0u64);

    println!("| dirty pages | journal bytes/commit | commit median | commit p99 | append+fdatasync median | p99 | overwrite+fdatasync median | p99 | ratio vs append (median) | ratio vs overwrite (median) | ratio vs overwrite (p99) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for k in [1usize, 16] {
        let (mut tc, mut ta, mut to) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes_seen = Vec::new();
        let mut last_bytes = k * (PAGE + 40) + 40;
        for i in 0..iters + 20 {
            // The three measurements run in an order rotated every iteration, so that work
            // one of them leaves behind (a jbd2 commit, writeback) does not always land on the
            // same one.
            let (mut dc, mut da, mut dov, mut bytes) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0usize);
            let mut g = heap.write();
            touch_spread(&mut g, total, k, i * 7, i as u8);
            drop(g);
            for step in 0..3 {
                match (step + i) % 3 {
                    0 => {
                        let mut g = heap.write();
                        let j0 = heap.stats().journal_bytes;
                        let t = Instant::now();
                        g.commit().expect("commit");
                        dc = t.elapsed();
                        drop(g);
                        bytes = (heap.stats().journal_bytes - j0) as usize;
                        assert!(bytes > 0 && bytes <= payload.len(), "journal grew by {bytes}");
                    }
                    1 => {
                        // Same byte count as the commit: it ran first in this iteration, or
                        // the count of the previous commit (identical for a fixed k).
                        let n = if bytes > 0 { bytes } else { last_bytes };
                        let t = Instant::now();
                        append.write_all_at(&payload[..n], append_off).expect("append");
                        append.sync_data().expect("fdatasync append");
                        da = t.elapsed();
                        append_off += n as u64;
                    }
                    _ => {
                        let n = if bytes > 0 { bytes } else { last_bytes };
                        if over_off + n as u64 > OVER_LEN {
                            over_off = 0;
                        }
                        let t = Instant::now();
                        over.write_all_at(&payload[..n], over_off).expect("overwrite");
                        over.sync_data().expect("fdatasync overwrite");
                        dov = t.elapsed();
                        over_off += n as u64;
                    }
                }
            }
            last_bytes = bytes;
            if i >= 20 {
                tc.push(dc);
                ta.push(da);
                to.push(dov);
                bytes_seen.push(bytes);
            }
        }
        bytes_seen.sort();
        let b = bytes_seen[bytes_seen.len() / 2];
        let (cm, cp) = (quantile(&tc, 0.5), quantile(&tc, 0.99));
        let (am, ap) = (quantile(&ta, 0.5), quantile(&ta, 0.99));
        let (om, op) = (quantile(&to, 0.5), quantile(&to, 0.99));
        println!(
            "| {k} | {b} | {:.0} us | {:.0} us | {:.0} us | {:.0} us | {:.0} us | {:.0} us | {:.2}x | {:.2}x | {:.2}x |",
            us(cm),
            us(cp),
            us(am),
            us(ap),
            us(om),
            us(op),
            us(cm) / us(am),
            us(cm) / us(om),
            us(cp) / us(op),
        );
    }
    println!();
    // Released: a dropped heap's memory otherwise stays mapped until exit, and the next
    // open of it would take that memory over instead of mapping its files.
    // SAFETY: the benchmark keeps every heap value in the root.
    unsafe { heap.drop_and_release() };
}

fn eventual(max_gib: usize, reps: usize) {
    println!("## Commit cost, Durability::Eventual, against heap size and dirty pages\n");
    println!(
        "Median of {reps} commits per cell (after one warm-up); wall time / thread CPU time \
         (CLOCK_THREAD_CPUTIME_ID) of `commit()`; budget = 1 ms per GiB of heap + 2 us per dirty page.\n"
    );
    println!(
        "| heap (data) | mapped | dirty pages | journal bytes | wall | CPU | CPU per dirty page | budget | CPU / budget | wall / budget | raw floor: pwritev of the same pages from a plain buffer (CPU); commit / raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let sizes: Vec<usize> = [1usize << 20, 16 << 20, 256 << 20, 1 << 30, 4 << 30]
        .into_iter()
        .filter(|&s| s <= max_gib << 30)
        .collect();
    for size in sizes {
        let dir = Scratch::new("commit-ev");
        let heap = open(&dir, Durability::Eventual);
        let t = Instant::now();
        fill(&heap, size, 256 << 20);
        let fill_time = t.elapsed();
        let total = fill::data_pages(&heap.read());
        let mapped = heap.stats().mapped_bytes;
        // The floor any buffered journal pays: gathering the same dirty pages from memory into
        // the page cache, appended to a growing file in the same directory (one copy, no
        // checksum, no tracking), from a plain buffer of the heap's size.
        let raw_file = File::create(dir.0.join("raw-append")).expect("create raw file");
        let mut raw_src = vec![1u8; size];
        let mut raw_off = 0u64;
        for k in [0usize, 1, 10, 100, 1000, 10_000] {
            if k > total {
                println!(
                    "| {} | | {k} | | n/a (heap has {total} pages) | | | | | | |",
                    size_name(size)
                );
                continue;
            }
            let (mut walls, mut cpus, mut raws, mut bytes) = (Vec::new(), Vec::new(), Vec::new(), 0u64);
            for r in 0..=reps {
                // The raw floor alternates before and after the commit (noisy shared machine).
                let mut raw_cpu = Duration::ZERO;
                let mut raw = |off: &mut u64| {
                    // Dirty the same spread of pages of a plain buffer as the commit's, then
                    // gather them into the file with pwritev (batches of IOV_MAX).
                    touch_raw(&mut raw_src, k, r);
                    let c0 = thread_cpu();
                    *off += pwritev_pages(&raw_file, &raw_src, k, r, *off);
                    thread_cpu() - c0
                };
                if r % 2 == 1 && k > 0 {
                    raw_cpu = raw(&mut raw_off);
                }
                let mut g = heap.write();
                if k > 0 {
                    touch_spread(&mut g, total, k, r * 13, r as u8);
                }
                let j0 = heap.stats().journal_bytes;
                let c0 = thread_cpu();
                let t = Instant::now();
                g.commit().expect("commit");
                let w = t.elapsed();
                let c = thread_cpu() - c0;
                drop(g);
                bytes = heap.stats().journal_bytes - j0;
                if r % 2 == 0 && k > 0 {
                    raw_cpu = raw(&mut raw_off);
                }
                if r > 0 {
                    walls.push(w);
                    cpus.push(c);
                    raws.push(raw_cpu);
                }
            }
            let (w, c, rc) = (quantile(&walls, 0.5), quantile(&cpus, 0.5), quantile(&raws, 0.5));
            let budget = Duration::from_secs_f64(size as f64 / (1u64 << 30) as f64 * 1e-3 + k as f64 * 2e-6);
            let per_page = if k > 0 {
                format!("{:.2} us", us(c) / k as f64)
            } else {
                "-".to_string()
            };
            let vs_raw = if k > 0 {
                format!(
                    "{:.0} us ({:.2} us/page); {:.2}x",
                    us(rc),
                    us(rc) / k as f64,
                    us(c) / us(rc)
                )
            } else {
                "-".to_string()
            };
            println!(
                "| {} | {} | {k} | {bytes} | {:.0} us | {:.0} us | {per_page} | {:.0} us | {:.2} | {:.2} | {vs_raw} |",
                size_name(size),
                size_name(mapped as usize),
                us(w),
                us(c),
                us(budget),
                us(c) / us(budget),
                us(w) / us(budget),
            );
        }
        eprintln!("({} filled in {:.1} s)", size_name(size), fill_time.as_secs_f64());
        // Released: a dropped heap's memory otherwise stays mapped until exit, and the next
        // open of it would take that memory over instead of mapping its files.
        // SAFETY: the benchmark keeps every heap value in the root.
        unsafe { heap.drop_and_release() };
        drop(dir);
    }
    println!();
}

/// Writes one byte into `k` pages of `buf` spread like [`touch_spread`] with shift `r * 13`.
fn touch_raw(buf: &mut [u8], k: usize, r: usize) {
    let total = buf.len() / PAGE;
    let stride = total / k;
    for i in 0..k {
        let p = (i * stride + (r * 13) % stride.max(1)) % total;
        buf[p * PAGE + (r % 64) * 8] ^= (r as u8) | 1;
    }
}

/// Appends the `k` pages [`touch_raw`] dirtied to `f` at `off` with `pwritev`; returns the bytes
/// written.
fn pwritev_pages(f: &File, buf: &[u8], k: usize, r: usize, off: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let total = buf.len() / PAGE;
    let stride = total / k;
    let iov: Vec<libc::iovec> = (0..k)
        .map(|i| {
            let p = (i * stride + (r * 13) % stride.max(1)) % total;
            libc::iovec {
                iov_base: buf[p * PAGE..].as_ptr() as *mut libc::c_void,
                iov_len: PAGE,
            }
        })
        .collect();
    let mut done = 0u64;
    for batch in iov.chunks(1024) {
        // SAFETY: every iovec points into `buf`, which outlives the call; the fd is open.
        let n = unsafe { libc::pwritev(f.as_raw_fd(), batch.as_ptr(), batch.len() as i32, (off + done) as i64) };
        assert_eq!(n as usize, batch.len() * PAGE, "pwritev");
        done += n as u64;
    }
    done
}

fn bytes64() {
    println!("## Journal bytes written by a commit that changes 64 bytes\n");
    let dir = Scratch::new("commit-64");
    let heap = open(&dir, Durability::Immediate);
    fill(&heap, 1 << 20, usize::MAX);
    println!("| change | pages captured | journal bytes | delta pages (total) |");
    println!("|---|---:|---:|---:|");
    for (what, off) in [
        ("64 bytes inside one page", 128usize),
        ("64 bytes across a page boundary", PAGE - 32),
    ] {
        let mut g = heap.write();
        let j0 = heap.stats().journal_bytes;
        let c = &mut g.chunks[0];
        for b in &mut c[PAGE * 3 + off..PAGE * 3 + off + 64] {
            *b = b.wrapping_add(1);
        }
        g.commit().expect("commit");
        drop(g);
        let s = heap.stats();
        println!(
            "| {what} | {} | {} | {} |",
            s.last_commit_pages,
            s.journal_bytes - j0,
            s.delta_pages
        );
    }
    // One 8-byte word in one page, for comparison with the 64-byte change.
    let mut g = heap.write();
    let j0 = heap.stats().journal_bytes;
    touch_page(&mut g, 5, 3);
    g.commit().expect("commit");
    drop(g);
    let s = heap.stats();
    println!(
        "| 1 byte inside one page | {} | {} | {} |",
        s.last_commit_pages,
        s.journal_bytes - j0,
        s.delta_pages
    );
    println!();
}

/// One byte changed in each of the same 100 pages of a 512 MiB heap, commit after commit.
fn scattered() {
    println!("## Journal bytes: one byte in each of the same 100 scattered pages of a 512 MiB heap\n");
    let dir = Scratch::new("commit-scat");
    let heap = open(&dir, Durability::Eventual);
    fill(&heap, 512 << 20, 256 << 20);
    let total = fill::data_pages(&heap.read());
    let s0 = heap.stats();
    println!(
        "heap: {} mapped, {total} data pages; base cache budget {} MiB\n",
        size_name(s0.mapped_bytes as usize),
        s0.base_cache_budget >> 20
    );
    println!("| commit | journal bytes | pages captured | delta pages | whole pages | cache hits | cache misses | cache bytes | cache / heap |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut prev = heap.stats();
    for r in 0..8usize {
        let mut g = heap.write();
        // The same 100 pages every time (shift 0), a different byte of each.
        touch_spread(&mut g, total, 100, 0, r as u8 + 1);
        g.commit().expect("commit");
        drop(g);
        let s = heap.stats();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.3}% |",
            r + 1,
            s.journal_bytes - prev.journal_bytes,
            s.last_commit_pages,
            s.delta_pages - prev.delta_pages,
            s.full_pages - prev.full_pages,
            s.base_cache_hits - prev.base_cache_hits,
            s.base_cache_misses - prev.base_cache_misses,
            s.base_cache_bytes,
            s.base_cache_bytes as f64 * 100.0 / s.mapped_bytes as f64
        );
        prev = s;
    }
    println!();
}

/// A long loop of Eventual commits of `SNAPHEAP_PROFILE_PAGES` (default 1,000) spread pages
/// in a 256 MiB heap, to run under `perf record`. Not part of the default set.
fn profile() {
    let k: usize = std::env::var("SNAPHEAP_PROFILE_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = Scratch::new("commit-prof");
    let heap = open(&dir, Durability::Eventual);
    fill(&heap, 256 << 20, usize::MAX);
    let total = fill::data_pages(&heap.read());
    let rounds = 20_000_000 / k.max(1) / 100;
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let mut g = heap.write();
        touch_spread(&mut g, total, k, r * 13, r as u8);
        let c0 = thread_cpu();
        let t = Instant::now();
        g.commit().expect("commit");
        walls.push(t.elapsed());
        cpus.push(thread_cpu() - c0);
    }
    println!(
        "{rounds} commits of {k} pages: wall median {:.0} us, CPU median {:.0} us ({:.2} us/page)",
        us(quantile(&walls, 0.5)),
        us(quantile(&cpus, 0.5)),
        us(quantile(&cpus, 0.5)) / k as f64
    );
}

fn main() {
    let (parts, max_gib) = fill::parts_and_max_gib(&["immediate", "eventual", "bytes", "scattered"]);
    println!("# snapheap commit benchmarks ({})\n", fill::now_utc());
    for p in &parts {
        match p.as_str() {
            "immediate" => immediate(1000),
            "eventual" => eventual(max_gib, 7),
            "bytes" => bytes64(),
            "scattered" => scattered(),
            "profile" => profile(),
            other => panic!("unknown part {other:?} (immediate, eventual, bytes, scattered)"),
        }
    }
}
