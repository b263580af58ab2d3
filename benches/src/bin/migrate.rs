//! Schema migration benchmark (issue 12): the time `OpenOptions::open` takes to migrate a
//! root holding a 1M-entry `HashMap<u64, u64>` when the migration **moves** the map into the
//! new root (O(1): the buffer stays where it is) against one that **rebuilds** it (a new map,
//! every entry inserted, the old one dropped), with the plain open of the same heap (no
//! migration) as the reference, all in the same run. Each case opens a fresh copy of the same
//! release-1 heap; the median of `MIGRATE_REPS` (default 3) is reported, total open time
//! (recovery + migration + its one commit) and the closure's own time.
//!
//! Run with: `cargo run --release --manifest-path benches/Cargo.toml --bin migrate`
//! (`MIGRATE_N` sets the map size, default 1,000,000).

use snapheap::collections::HashMap;
use snapheap::{Heap, HeapAlloc, OpenOptions, Persist};
use snapheap_benches::Scratch;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Persist)]
struct V1 {
    map: HashMap<u64, u64>,
    tag: u64,
}

#[derive(Persist)]
struct V2 {
    map: HashMap<u64, u64>,
    tag: u64,
    added: u64,
}

/// Nanoseconds the last migration closure ran.
static CLOSURE_NS: AtomicU64 = AtomicU64::new(0);

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Reference,
    Moved,
    Rebuilt,
}

fn run(case: Case, pristine: &Path, work: &Path, n: u64) -> (Duration, Duration) {
    copy_dir(pristine, work);
    let mut o = OpenOptions::new();
    let t = Instant::now();
    let (total, check) = match case {
        Case::Reference => {
            o.schema("bench-v1");
            let h: Heap<V1> = o.open(work, |_| unreachable!()).unwrap();
            let total = t.elapsed();
            let ok = h.read().map.len() as u64 == n && h.read().tag == 1;
            // SAFETY: every value of the heap is in its root; the handle is consumed.
            unsafe { h.close_and_release() }.unwrap();
            CLOSURE_NS.store(0, Ordering::Relaxed);
            (total, ok)
        }
        Case::Moved | Case::Rebuilt => {
            o.schema("bench-v2");
            if case == Case::Moved {
                o.migrate::<V1, V2>("bench-v1", |old, _a| {
                    let t = Instant::now();
                    let s = V2 {
                        map: old.map,
                        tag: old.tag,
                        added: 1,
                    };
                    CLOSURE_NS.store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    s
                });
            } else {
                o.migrate::<V1, V2>("bench-v1", |old, a: HeapAlloc| {
                    let t = Instant::now();
                    let mut map = HashMap::with_capacity_in(old.map.len(), a);
                    for (k, v) in old.map.iter() {
                        map.insert(*k, *v);
                    }
                    drop(old.map);
                    let s = V2 {
                        map,
                        tag: old.tag,
                        added: 1,
                    };
                    CLOSURE_NS.store(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    s
                });
            }
            let h: Heap<V2> = o.open(work, |_| unreachable!()).unwrap();
            let total = t.elapsed();
            let r = h.read();
            let ok = r.map.len() as u64 == n && r.map.get(&7) == Some(&(7 * 31)) && r.tag == 1 && r.added == 1;
            drop(r);
            // SAFETY: as above.
            unsafe { h.close_and_release() }.unwrap();
            (total, ok)
        }
    };
    assert!(check, "the migrated heap lost entries");
    (total, Duration::from_nanos(CLOSURE_NS.load(Ordering::Relaxed)))
}

fn main() {
    let n: u64 = std::env::var("MIGRATE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let reps: usize = std::env::var("MIGRATE_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let s = Scratch::new("migrate");
    let pristine = s.0.join("v1");
    let work = s.0.join("work");
    {
        let mut o = OpenOptions::new();
        o.schema("bench-v1");
        let h = o
            .open(&pristine, |a| {
                let mut map = HashMap::with_capacity_in(n as usize, a);
                for k in 0..n {
                    map.insert(k, k * 31);
                }
                V1 { map, tag: 1 }
            })
            .unwrap();
        // SAFETY: as above.
        unsafe { h.close_and_release() }.unwrap();
    }
    println!("migration of a root holding a {n}-entry HashMap<u64, u64>, median of {reps}");
    println!("{:<34} {:>12} {:>12}", "case", "open total", "closure");
    let mut rows = Vec::new();
    for (name, case) in [
        ("plain open (reference)", Case::Reference),
        ("migrate, map moved", Case::Moved),
        ("migrate, map rebuilt", Case::Rebuilt),
    ] {
        let runs: Vec<(Duration, Duration)> = (0..reps).map(|_| run(case, &pristine, &work, n)).collect();
        let total = median(runs.iter().map(|r| r.0).collect());
        let closure = median(runs.iter().map(|r| r.1).collect());
        println!(
            "{name:<34} {:>9.2} ms {:>9.3} ms",
            total.as_secs_f64() * 1e3,
            closure.as_secs_f64() * 1e3
        );
        rows.push((total, closure));
    }
    let (moved, rebuilt) = (rows[1], rows[2]);
    println!(
        "rebuilt / moved: open {:.1}x, closure {:.0}x; moved open / plain open {:.2}",
        rebuilt.0.as_secs_f64() / moved.0.as_secs_f64(),
        rebuilt.1.as_secs_f64() / moved.1.as_secs_f64().max(1e-9),
        moved.0.as_secs_f64() / rows[0].0.as_secs_f64()
    );
}
