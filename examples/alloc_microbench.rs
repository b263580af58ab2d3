//! Allocator micro-benchmark: snapheap's arena against `std::alloc::System` (glibc malloc)
//! in the same run. Run with `cargo run --release --example alloc_microbench`.
//!
//! Measures, per size (16, 64, 256 bytes): alloc+free pairs, and batches of 1,000 allocations
//! followed by 1,000 frees (in allocation order). Prints nanoseconds per operation pair.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Instant;

use snapheap::alloc_testing::TestRegion;

fn pairs(a: &dyn GlobalAlloc, size: usize, n: usize) -> f64 {
    let l = Layout::from_size_align(size, 8).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        unsafe {
            let p = a.alloc(l);
            black_box(p).write(1);
            a.dealloc(p, l);
        }
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn batches(a: &dyn GlobalAlloc, size: usize, rounds: usize) -> f64 {
    let l = Layout::from_size_align(size, 8).unwrap();
    let mut v = vec![std::ptr::null_mut::<u8>(); 1000];
    let t = Instant::now();
    for _ in 0..rounds {
        for slot in v.iter_mut() {
            let p = unsafe { a.alloc(l) };
            unsafe { p.write(1) };
            *slot = p;
        }
        for &p in v.iter() {
            unsafe { a.dealloc(black_box(p), l) };
        }
    }
    t.elapsed().as_nanos() as f64 / (rounds * 1000) as f64
}

fn main() {
    let region = TestRegion::new(64 << 30);
    let heap = region.alloc();
    println!(
        "{:<28} {:>12} {:>12} {:>8}",
        "benchmark (ns per alloc+free)", "snapheap", "System", "ratio"
    );
    let mut logs = 0.0;
    let mut count = 0;
    for &size in &[16usize, 64, 256] {
        for batch in [false, true] {
            let run = |a: &dyn GlobalAlloc| {
                if batch {
                    batches(a, size, 2_000)
                } else {
                    pairs(a, size, 2_000_000)
                }
            };
            let (mut s, mut g) = (f64::MAX, f64::MAX);
            for _ in 0..5 {
                s = s.min(run(&heap));
                g = g.min(run(&System));
            }
            let name = if batch { "batch 1000" } else { "pairs" };
            println!(
                "{:<28} {:>12.2} {:>12.2} {:>8.2}",
                format!("{name} {size} B"),
                s,
                g,
                s / g
            );
            logs += (s / g).ln();
            count += 1;
        }
    }
    println!(
        "geometric mean ratio snapheap/System: {:.2}",
        (logs / count as f64).exp()
    );
    region.check_invariants().expect("invariants after the benchmark");
}
