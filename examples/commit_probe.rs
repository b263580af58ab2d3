//! A probe for profiling the commit and open paths with `strace`/`perf` (issue 10):
//!
//! ```sh
//! cargo run --release --example commit_probe -- commit 1000  # load 100k records (commit per
//!     # 1,000), then 1,000 one-update Immediate commits; exits without close, as a crash would
//! cargo run --release --example commit_probe -- read         # open (replays the journal),
//!     # 1,000 reads, drop without close (so every `read` run replays the same journal)
//! ```
//!
//! `PROBE_DIR` sets the heap directory (default `/tmp/probe.heap`); `PROBE_CLOSE` makes
//! `commit` end with `close()`.
use snapheap::collections::HashMap;
use snapheap::{Heap, HeapAlloc, OpenOptions};
use std::time::Instant;

#[derive(snapheap::Persist)]
struct S {
    m: HashMap<u64, [u8; 100]>,
}

fn main() -> snapheap::Result<()> {
    let dir = std::env::var("PROBE_DIR").unwrap_or_else(|_| "/tmp/probe.heap".into());
    let mode = std::env::args().nth(1).unwrap_or_else(|| "commit".into());
    let n: u64 = std::env::args().nth(2).map(|s| s.parse().unwrap()).unwrap_or(1000);
    if mode == "commit" {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let t = Instant::now();
    let heap: Heap<S> = OpenOptions::new().open(&dir, |a: HeapAlloc| S { m: HashMap::new_in(a) })?;
    eprintln!("open {:?}", t.elapsed());
    if mode == "commit" {
        {
            let mut w = heap.write();
            for k in 0..100_000u64 {
                w.m.insert(k.wrapping_mul(0x9E3779B97F4A7C15), [k as u8; 100]);
                if k % 1000 == 999 {
                    w.commit()?;
                }
            }
        }
        heap.commit()?;
        eprintln!("loaded {:?}", t.elapsed());
        let t = Instant::now();
        for i in 0..n {
            let k = (i * 7919 % 100_000).wrapping_mul(0x9E3779B97F4A7C15);
            let mut w = heap.write();
            if let Some(v) = w.m.get_mut(&k) {
                v[0] = v[0].wrapping_add(1);
            }
            w.commit()?;
        }
        eprintln!("{n} commits {:?} ({:?}/commit)", t.elapsed(), t.elapsed() / n as u32);
        eprintln!("{:?}", heap.stats());
        if std::env::var_os("PROBE_CLOSE").is_some() {
            let t = Instant::now();
            heap.close()?;
            eprintln!("close {:?}", t.elapsed());
        } else {
            // A crash-like exit: no close, nothing dropped.
            std::mem::forget(heap);
            std::process::exit(0);
        }
    } else {
        let t = Instant::now();
        let r = heap.read();
        let mut s = 0u64;
        for i in 0..1000u64 {
            let k = (i * 13 % 100_000).wrapping_mul(0x9E3779B97F4A7C15);
            s += r.m.get(&k).map_or(0, |v| v[0] as u64);
        }
        eprintln!("reads {:?} sum {s}", t.elapsed());
        drop(r);
        eprintln!("{:?}", heap.stats());
    }
    Ok(())
}
