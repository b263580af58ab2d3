//! Allocator benchmark (issue 2): snapheap's `HeapAlloc` against glibc (`System`), mimalloc and
//! jemalloc, all called through `GlobalAlloc` in the same run.
//!
//! Run with: `cargo run --release --manifest-path benches/Cargo.toml --bin alloc`
//!
//! Workloads (every block's first byte is written so the memory is touched):
//! - `pairs N B`: alloc + free of one N-byte block, repeated; ns per pair.
//! - `batch N B`: 1,000 allocs of N bytes, then 1,000 frees in allocation order; ns per
//!   alloc+free.
//! - `random 8..512`: 1M allocs of random sizes in 8..512 B, then all freed in a random order;
//!   ns per alloc+free.
//! - `cross-thread 64 B`: one thread allocates batches of 1,000 blocks and hands each batch to a
//!   second thread over a channel, which frees them; ns per alloc+free (wall time).
//!
//! Each cell is the median of `REPS` repetitions (env `BENCH_REPS`, default 7); the allocators
//! take turns inside each repetition so that machine noise hits them alike. The global
//! allocator of this binary stays the default (glibc): only the blocks under test come from the
//! allocator being measured.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::mpsc;
use std::time::Duration;

use snapheap::{Heap, HeapAlloc};
use snapheap_benches::{geomean, time, Rng, Scratch};

const NAMES: [&str; 4] = ["snapheap", "glibc", "mimalloc", "jemalloc"];

/// Runs a workload on an allocator and returns (elapsed, operations).
type RunFn = Box<dyn Fn(&dyn Runner) -> (Duration, usize)>;

/// One workload: a name and how to run it.
struct Workload {
    name: String,
    run: RunFn,
}

/// Dispatches a workload to a statically typed allocator (so each allocator's calls are
/// monomorphised and inlined as they would be in a real program).
trait Runner {
    fn pairs(&self, size: usize, n: usize) -> Duration;
    fn batch(&self, size: usize, rounds: usize) -> Duration;
    fn random(&self, sizes: &[usize], order: &[usize]) -> Duration;
    fn cross(&self, size: usize, batches: usize) -> Duration;
}

struct With<A: GlobalAlloc + Sync + Copy + Send + 'static>(A);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

impl<A: GlobalAlloc + Sync + Copy + Send + 'static> Runner for With<A> {
    fn pairs(&self, size: usize, n: usize) -> Duration {
        let a = &self.0;
        let l = layout(size);
        time(|| {
            for _ in 0..n {
                // SAFETY: l has nonzero size; the block is freed with the same layout.
                unsafe {
                    let p = a.alloc(l);
                    assert!(!p.is_null());
                    black_box(p).write(1);
                    a.dealloc(p, l);
                }
            }
        })
    }

    fn batch(&self, size: usize, rounds: usize) -> Duration {
        let a = &self.0;
        let l = layout(size);
        let mut v = vec![std::ptr::null_mut::<u8>(); 1000];
        time(|| {
            for _ in 0..rounds {
                for slot in v.iter_mut() {
                    // SAFETY: nonzero layout.
                    let p = unsafe { a.alloc(l) };
                    assert!(!p.is_null());
                    // SAFETY: p is a fresh block of at least one byte.
                    unsafe { p.write(1) };
                    *slot = p;
                }
                for &p in v.iter() {
                    // SAFETY: p was allocated above with l.
                    unsafe { a.dealloc(black_box(p), l) };
                }
            }
        })
    }

    fn random(&self, sizes: &[usize], order: &[usize]) -> Duration {
        let a = &self.0;
        let mut v = vec![std::ptr::null_mut::<u8>(); sizes.len()];
        time(|| {
            for (slot, &s) in v.iter_mut().zip(sizes) {
                // SAFETY: nonzero layout.
                let p = unsafe { a.alloc(layout(s)) };
                assert!(!p.is_null());
                // SAFETY: p is a fresh block of at least one byte.
                unsafe { p.write(1) };
                *slot = p;
            }
            for &i in order {
                // SAFETY: v[i] was allocated above with sizes[i].
                unsafe { a.dealloc(black_box(v[i]), layout(sizes[i])) };
            }
        })
    }

    fn cross(&self, size: usize, batches: usize) -> Duration {
        const BATCH: usize = 1000;
        let a = self.0;
        let l = layout(size);
        // Batches travel as Vec<usize> and come back empty, so the channel traffic does not
        // allocate per batch once the pool of buffers is warm.
        let (to_free, freer_rx) = mpsc::sync_channel::<Vec<usize>>(8);
        let (back_tx, back) = mpsc::channel::<Vec<usize>>();
        for _ in 0..10 {
            back_tx.send(Vec::with_capacity(BATCH)).unwrap();
        }
        time(|| {
            let freer = std::thread::spawn(move || {
                for mut v in freer_rx {
                    for &p in v.iter() {
                        // SAFETY: each block was allocated by the other thread with l.
                        unsafe { a.dealloc(p as *mut u8, l) };
                    }
                    v.clear();
                    if back_tx.send(v).is_err() {
                        break;
                    }
                }
            });
            for _ in 0..batches {
                let mut v = back.recv().unwrap();
                for _ in 0..BATCH {
                    // SAFETY: nonzero layout.
                    let p = unsafe { a.alloc(l) };
                    assert!(!p.is_null());
                    // SAFETY: fresh block.
                    unsafe { p.write(1) };
                    v.push(p as usize);
                }
                to_free.send(v).unwrap();
            }
            drop(to_free);
            freer.join().unwrap();
        })
    }
}

/// Copyable handles for the allocators that are unit structs.
#[derive(Clone, Copy)]
struct Mi;
// SAFETY: forwards to mimalloc.
unsafe impl GlobalAlloc for Mi {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
}

#[derive(Clone, Copy)]
struct Je;
// SAFETY: forwards to jemalloc.
unsafe impl GlobalAlloc for Je {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { tikv_jemallocator::Jemalloc.alloc(l) }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe { tikv_jemallocator::Jemalloc.dealloc(p, l) }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let reps = env_usize("BENCH_REPS", 7);
    let scale = env_usize("BENCH_SCALE", 1); // divides the op counts (for a quick smoke run)
    let scratch = Scratch::new("alloc");
    let heap = Heap::<()>::open(scratch.0.join("bench.heap"), |_| ()).expect("open heap");
    let ha: HeapAlloc = heap.alloc();

    let runners: [Box<dyn Runner>; 4] = [
        Box::new(With(ha)),
        Box::new(With(System)),
        Box::new(With(Mi)),
        Box::new(With(Je)),
    ];

    let mut rng = Rng::new(42);
    let n_random = 1_000_000 / scale;
    let sizes: Vec<usize> = (0..n_random).map(|_| rng.range(8, 513) as usize).collect();
    let mut order: Vec<usize> = (0..n_random).collect();
    for i in (1..order.len()).rev() {
        let j = rng.range(0, i as u64 + 1) as usize;
        order.swap(i, j);
    }
    let sizes: &'static [usize] = Box::leak(sizes.into_boxed_slice());
    let order: &'static [usize] = Box::leak(order.into_boxed_slice());

    let mut workloads: Vec<Workload> = Vec::new();
    for &size in &[16usize, 64, 256] {
        let n = 2_000_000 / scale;
        workloads.push(Workload {
            name: format!("pairs {size} B"),
            run: Box::new(move |r| (r.pairs(size, n), n)),
        });
    }
    for &size in &[16usize, 64, 256] {
        let rounds = 2_000 / scale;
        workloads.push(Workload {
            name: format!("batch 1000 x {size} B"),
            run: Box::new(move |r| (r.batch(size, rounds), rounds * 1000)),
        });
    }
    workloads.push(Workload {
        name: "random 1M x 8..512 B".to_string(),
        run: Box::new(move |r| (r.random(sizes, order), sizes.len())),
    });
    let batches = 2_000 / scale;
    workloads.push(Workload {
        name: "cross-thread 64 B".to_string(),
        run: Box::new(move |r| (r.cross(64, batches), batches * 1000)),
    });

    // BENCH_ALLOCS=snapheap,glibc limits the allocators (for profiling one of them).
    let enabled: Vec<bool> = match std::env::var("BENCH_ALLOCS") {
        Ok(v) => NAMES.iter().map(|n| v.split(',').any(|x| x == *n)).collect(),
        Err(_) => vec![true; 4],
    };
    if let Ok(f) = std::env::var("BENCH_FILTER") {
        workloads.retain(|w| w.name.contains(&f));
    }
    println!("snapheap allocator benchmark: ns per alloc+free, median of {reps} runs");
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "workload", NAMES[0], NAMES[1], NAMES[2], NAMES[3], "snap/glibc", "snap/mi", "snap/je"
    );
    let (mut rg, mut rm, mut rj) = (Vec::new(), Vec::new(), Vec::new());
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for w in &workloads {
        // Warm each allocator once (first-touch page faults, thread heaps), then take turns.
        for (i, r) in runners.iter().enumerate() {
            if enabled[i] {
                black_box((w.run)(r.as_ref()));
            }
        }
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 4];
        let mut ops = 1;
        for _ in 0..reps {
            for (i, r) in runners.iter().enumerate() {
                if !enabled[i] {
                    samples[i].push(Duration::from_nanos(1));
                    continue;
                }
                let (d, n) = (w.run)(r.as_ref());
                ops = n;
                samples[i].push(d);
            }
        }
        let ns: Vec<f64> = samples
            .into_iter()
            .map(|mut s| {
                s.sort();
                s[s.len() / 2].as_nanos() as f64 / ops as f64
            })
            .collect();
        let (g, m, j) = (ns[0] / ns[1], ns[0] / ns[2], ns[0] / ns[3]);
        rg.push(g);
        rm.push(m);
        rj.push(j);
        for i in 0..4 {
            all[i].push(ns[i]);
        }
        println!(
            "{:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}x {:>9.2}x {:>9.2}x",
            w.name, ns[0], ns[1], ns[2], ns[3], g, m, j
        );
    }
    println!(
        "{:<22} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}x {:>9.2}x {:>9.2}x",
        "geometric mean",
        geomean(&all[0]),
        geomean(&all[1]),
        geomean(&all[2]),
        geomean(&all[3]),
        geomean(&rg),
        geomean(&rm),
        geomean(&rj)
    );
    let (g, m) = (geomean(&rg), geomean(&rm));
    println!(
        "targets (issue 2): snapheap/glibc <= 1.00x: {} ({g:.2}x); snapheap/mimalloc <= 1.50x: {} ({m:.2}x)",
        if g <= 1.0 { "met" } else { "MISSED" },
        if m <= 1.5 { "met" } else { "MISSED" }
    );
    heap.verify().expect("heap invariants after the benchmark");
    heap.close().expect("close heap");
}
