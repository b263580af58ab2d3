//! Where a YCSB batch commit's time goes (issue 10): snapheap's `Heap<HashMap<u64, [u8; 100]>>`
//! with `Durability::Immediate`, loaded like the YCSB benchmark, then batches of a workload
//! (default B: 95 reads / 5 updates per batch of 100), each timed in two parts: the operations
//! (under the write guard) and the commit. Interleaved with the same number of raw
//! `pwrite` + `fdatasync` samples of the commit's own size into pre-written blocks (the floor),
//! so that mean and median can be compared in one run: throughput is bound by the *mean*
//! commit, the floor target by the median.
//!
//! ```sh
//! cargo run --release --manifest-path benches/Cargo.toml --bin commit_breakdown
//! ```
//!
//! Environment: `CB_RECORDS` [100000], `CB_BATCHES` [2000], `CB_WORKLOAD` [B] (A or B),
//! `CB_EVERY` [100] operations per batch, `CB_EVENTUAL` (set: `Durability::Eventual`, so a
//! commit is the commit path's CPU without waiting for the disk), `SNAPHEAP_BENCH_DIR`.

use snapheap_benches::ycsb::floor::Floor;
use snapheap_benches::ycsb::workload::{self, value, Op, Workload};
use snapheap_benches::Scratch;
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn stats(name: &str, xs: &mut [Duration]) {
    xs.sort();
    let n = xs.len().max(1);
    let mean = xs.iter().sum::<Duration>() / n as u32;
    let q = |p: f64| xs[((xs.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name:<34} n={:<6} mean {:>8.1} us  median {:>8.1}  p90 {:>8.1}  p99 {:>8.1}  max {:>9.1}",
        xs.len(),
        mean.as_secs_f64() * 1e6,
        q(0.5).as_secs_f64() * 1e6,
        q(0.9).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        q(1.0).as_secs_f64() * 1e6,
    );
}

type Root = snapheap::collections::HashMap<u64, [u8; 100]>;

/// CPU time of the calling thread (user + system).
fn cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let records = env_usize("CB_RECORDS", 100_000) as u64;
    let batches = env_usize("CB_BATCHES", 2000);
    let every = env_usize("CB_EVERY", 100);
    let w = match std::env::var("CB_WORKLOAD").as_deref() {
        Ok("A") => Workload::A,
        _ => Workload::B,
    };
    let scratch = Scratch::new("commit-breakdown");
    let mut o = snapheap::OpenOptions::new();
    // `CB_EVENTUAL=1`: commits do not wait for the sync (the background flusher syncs), so the
    // commit times are the commit path's CPU without the disk.
    if std::env::var_os("CB_EVENTUAL").is_some() {
        o.durability(snapheap::Durability::Eventual);
    } else {
        o.durability(snapheap::Durability::Immediate);
    }
    let heap = o.open::<Root>(scratch.0.join("heap"), Root::new_in).expect("open");
    let t = Instant::now();
    let (mut l_ops, mut l_commit, mut l_ccpu) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in workload::load_ops(records).chunks(1000) {
        let t0 = Instant::now();
        let mut g = heap.write();
        for op in chunk {
            if let Op::Insert(k, v) = *op {
                g.insert(k, value(k, v));
            }
        }
        let (t1, c1) = (Instant::now(), cpu());
        g.commit().expect("commit");
        let (t2, c2) = (Instant::now(), cpu());
        l_ops.push(t1 - t0);
        l_commit.push(t2 - t1);
        l_ccpu.push(c2 - c1);
    }
    println!(
        "load {:?} ({:.0} inserts/s)",
        t.elapsed(),
        records as f64 / t.elapsed().as_secs_f64()
    );
    stats("load: inserts per 1000", &mut l_ops);
    stats("load: commit", &mut l_commit);
    stats("load: commit thread CPU", &mut l_ccpu);
    let mut ver = 1 << 32;
    let ops = workload::ops(w, batches * every, records, 7, &mut ver);
    let mut floor = Floor::new(&scratch.0.join("floor.bin"), 64 << 20);
    let (mut t_ops, mut t_commit, mut t_floor, mut t_batch) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut t_ccpu = Vec::new();
    let s0 = heap.stats();
    let wall = Instant::now();
    let mut floor_total = Duration::ZERO;
    for (i, b) in ops.chunks(every).enumerate() {
        let t0 = Instant::now();
        let mut g = heap.write();
        let mut sum = 0u64;
        for op in b {
            match *op {
                Op::Read(k) => sum = sum.wrapping_add(g.get(&k).map_or(0, |v| v[0] as u64)),
                Op::Update(k, v) | Op::Insert(k, v) => {
                    g.insert(k, value(k, v));
                }
                Op::Rmw(_) => {}
            }
        }
        std::hint::black_box(sum);
        let (t1, c1) = (Instant::now(), cpu());
        g.commit().expect("commit");
        drop(g);
        let (t2, c2) = (Instant::now(), cpu());
        t_ccpu.push(c2 - c1);
        t_ops.push(t1 - t0);
        t_commit.push(t2 - t1);
        t_batch.push(t2 - t0);
        if i % 2 == 0 {
            let d = floor.sample(700);
            floor_total += d;
            t_floor.push(d);
        }
    }
    let wall = wall.elapsed() - floor_total;
    let s1 = heap.stats();
    println!(
        "workload {} every {every}: {} batches, {:.0} ops/s (floor samples excluded); journal bytes/commit {:.0}, commits {}",
        w.name(),
        batches,
        (batches * every) as f64 / wall.as_secs_f64(),
        (s1.journal_bytes.saturating_sub(s0.journal_bytes)) as f64 / (s1.commits - s0.commits).max(1) as f64,
        s1.commits - s0.commits,
    );
    stats("ops (under write guard)", &mut t_ops);
    stats("commit", &mut t_commit);
    stats("commit thread CPU", &mut t_ccpu);
    stats("batch total", &mut t_batch);
    stats("floor pwrite 700 B + fdatasync", &mut t_floor);
    println!("{:?}", s1);
    heap.close().expect("close");
}
