//! Prints what the dirty-page tracker costs at commit time: `Tracker::collect` (scan +
//! re-protect) over 64 MiB and 1 GiB of populated anonymous memory with 0, 1, 10,000 and all
//! pages written since the previous collect, next to a bare `PAGEMAP_SCAN` ioctl (what the
//! kernel alone costs) and the cost of arming.
//!
//! Run with `cargo run --release --example track_cost`. Numbers vary a lot on a shared VM:
//! read the minimum and the median, not one run.
//!
//! The tracker is crate-internal, so this example compiles its two source files into itself
//! (`#[path]` modules) with the module paths they import by; it measures the very code the
//! crate runs.

#![allow(dead_code, unused_imports)]

use std::alloc::System;
use std::time::{Duration, Instant};

#[path = "../src/sys/mod.rs"]
mod sys;
#[path = "../src/mem/sysmem.rs"]
mod sysmem;
#[path = "../src/mem/track.rs"]
mod track;
/// The crate's module paths the tracker imports by (`crate::mem::...`).
mod mem {
    pub(crate) use super::{sysmem, track};
}

use mem::sysmem::SysVec;
use mem::track::Tracker;
use sys::uffd::{PageRegion, Pagemap, ScanQuery, ScratchMap};
use sys::OS_PAGE as P;

const ROUNDS: usize = 9;

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "min {:7.3} ms  median {:7.3} ms  max {:7.3} ms",
        ms(samples[0]),
        ms(samples[samples.len() / 2]),
        ms(samples[samples.len() - 1])
    )
}

/// Writes `n` pages spread evenly over the map (all pages when `n >= pages`).
fn dirty(map: &mut ScratchMap, n: usize, round: usize) {
    let pages = map.len() / P;
    let n = n.min(pages);
    for i in 0..n {
        map.write(i * pages / n * P, round as u8);
    }
}

fn bare_scan(pm: &Pagemap, map: &ScratchMap, vec: &mut [PageRegion]) -> usize {
    let q = ScanQuery {
        start: map.addr(),
        end: map.addr() + map.len(),
        flags: sys::uffd::PM_SCAN_CHECK_WPASYNC | sys::uffd::PM_SCAN_WP_MATCHING,
        category_mask: sys::uffd::PAGE_IS_WRITTEN,
        return_mask: sys::uffd::PAGE_IS_WRITTEN,
    };
    pm.scan(&q, vec).expect("PAGEMAP_SCAN").0
}

fn main() {
    let mut t = Tracker::new(false);
    println!("tracker mode: {}", t.mode());
    if let Some(why) = t.fallback_reason() {
        println!("(all-dirty because: {why})");
    }
    let pm = Pagemap::open().expect("open pagemap");
    let mut vec = vec![PageRegion::default(); 16_384];
    let mut out: SysVec<(usize, usize)> = SysVec::new_in(System);

    for size in [64usize << 20, 1 << 30] {
        let mut map = ScratchMap::new(size).expect("mmap");
        let pages = size / P;
        for i in 0..pages {
            map.write(i * P, 1); // populate every page
        }
        let (a, e) = (map.addr(), map.addr() + size);
        let t0 = Instant::now();
        t.arm(a, e).expect("arm");
        println!(
            "\n== {} MiB populated ({pages} pages): arm {:.3} ms",
            size >> 20,
            t0.elapsed().as_secs_f64() * 1e3
        );
        t.collect(a, e, &mut out).expect("warm-up collect");

        for n in [0usize, 1, 10_000, usize::MAX] {
            let mut samples = Vec::new();
            for round in 0..ROUNDS {
                dirty(&mut map, n, round);
                out.clear();
                let t0 = Instant::now();
                t.collect(a, e, &mut out).expect("collect");
                samples.push(t0.elapsed());
                let got: usize = out.iter().map(|&(x, y)| (y - x) / P).sum();
                assert_eq!(got, n.min(pages), "collect reported a wrong page count");
            }
            let label = if n == usize::MAX {
                "all".to_string()
            } else {
                n.to_string()
            };
            println!("collect, {label:>6} dirty ({:>5} runs): {}", out.len(), stats(samples));
        }

        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            let t0 = Instant::now();
            let n = bare_scan(&pm, &map, &mut vec);
            samples.push(t0.elapsed());
            assert_eq!(n, 0);
        }
        println!("bare PAGEMAP_SCAN ioctl, 0 dirty:   {}", stats(samples));
        let mut samples = Vec::new();
        for _ in 0..ROUNDS {
            out.clear();
            let t0 = Instant::now();
            t.peek(a, e, &mut out).expect("peek");
            samples.push(t0.elapsed());
        }
        println!("peek, 0 dirty:                      {}", stats(samples));
        t.disarm(a, e).expect("disarm");
    }
}
