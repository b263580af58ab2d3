//! Map workload benchmark (issue 3): random `u64 -> [u8; 32]` inserts into a
//! `snapheap::collections::HashMap` inside a `Heap`, against redb 4 (one table `u64 -> [u8; 32]`,
//! one write transaction per commit), with equal durability.
//!
//! Run with: `cargo run --release --manifest-path benches/Cargo.toml --bin map`
//!
//! Every case runs snapheap twice, with returning clean pages to the kernel
//! (`OpenOptions::remap_clean_pages`, issue 15) on and off, then redb, so the effect of
//! remapping is measured in the same run against the same reference (`MAP_REMAP` lists the
//! settings in order: default `1,0`; `0,1` runs off first, `1` only on).
//!
//! Cases (each side starts from an empty heap / database in a scratch directory):
//! - commit every 1,000 inserts, `MAP_N_BATCH` inserts (default 1,000,000);
//! - commit every insert, `MAP_N_EACH` inserts (default 20,000: with an fsync per commit on
//!   both sides the full 1M would take hours on this disk);
//! - the same two with no sync per commit (snapheap `Durability::Eventual`, which syncs in the
//!   background within 1 s, against redb `Durability::None`, which does not sync at all until a
//!   later durable commit), unless `MAP_SKIP_NOSYNC=1`.
//!
//! Durable rows: snapheap `Durability::Immediate` (commit returns after `fdatasync`) against
//! redb's default `Durability::Immediate` (commit returns after its fsyncs). Prints inserts/s
//! and the snapheap/redb throughput ratio; the target is at least 2x.

use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};
use snapheap::collections::HashMap;
use snapheap::{Durability, OpenOptions};
use snapheap_benches::{Rng, Scratch};

const TABLE: TableDefinition<u64, [u8; 32]> = TableDefinition::new("map");

type Root = HashMap<u64, [u8; 32]>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `n` random keys with their values (the value is derived from the key so it can be checked).
fn workload(n: usize, seed: u64) -> Vec<(u64, [u8; 32])> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let k = rng.next_u64();
            let mut v = [0u8; 32];
            for (i, c) in v.chunks_mut(8).enumerate() {
                c.copy_from_slice(&(k.rotate_left(i as u32 * 16) ^ i as u64).to_le_bytes());
            }
            (k, v)
        })
        .collect()
}

/// Bytes this process has passed to write-like syscalls (`wchar` of `/proc/self/io`; the
/// snapshot children of snapheap are not counted).
fn written_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("wchar:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// What one side measured.
struct Run {
    elapsed: Duration,
    detail: String,
}

impl Run {
    fn skipped() -> Run {
        Run {
            elapsed: Duration::from_secs(1_000_000),
            detail: "skipped".to_string(),
        }
    }
}

fn snapheap_run(dir: &std::path::Path, items: &[(u64, [u8; 32])], every: usize, d: Durability, remap: bool) -> Run {
    let mut opts = OpenOptions::new();
    opts.durability(d);
    opts.remap_clean_pages(remap);
    // MAP_SNAPSHOT_MIB overrides the journal volume that triggers a snapshot (for profiling).
    if let Some(mib) = std::env::var("MAP_SNAPSHOT_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        opts.snapshot_after_journal_bytes(mib << 20);
    }
    let heap = opts
        .open::<Root>(dir.join("map.heap"), HashMap::new_in)
        .expect("open heap");
    let w0 = written_bytes();
    let t = Instant::now();
    {
        let mut g = heap.write();
        for (i, (k, v)) in items.iter().enumerate() {
            g.insert(*k, *v);
            if (i + 1).is_multiple_of(every) {
                g.commit().expect("commit");
            }
        }
        if !items.len().is_multiple_of(every) {
            g.commit().expect("commit");
        }
    }
    let elapsed = t.elapsed();
    let wrote = written_bytes() - w0;
    let st = heap.stats();
    // Spot-check that the data is there.
    {
        let r = heap.read();
        assert_eq!(
            r.len(),
            items
                .iter()
                .map(|x| x.0)
                .collect::<std::collections::HashSet<_>>()
                .len()
        );
        for (k, _) in items.iter().step_by(997) {
            assert!(r.get(k).is_some());
        }
    }
    let detail = format!(
        "{} commits, {:.0} KiB written per commit, {} snapshots, tracking {}, {} pages remapped (last step {} us), {:.1} MiB anonymous",
        st.commits,
        wrote as f64 / 1024.0 / st.commits.max(1) as f64,
        st.snapshots,
        st.track_mode,
        st.remapped_pages,
        st.last_remap_micros,
        st.anonymous_bytes as f64 / (1 << 20) as f64
    );
    // Released, so the memory does not stay mapped until exit (and a reopen maps the files).
    // SAFETY: the benchmark keeps every heap value in the root.
    unsafe { heap.close_and_release() }.expect("close");
    Run { elapsed, detail }
}

fn redb_run(dir: &std::path::Path, items: &[(u64, [u8; 32])], every: usize, durable: bool) -> Run {
    let db = Database::create(dir.join("map.redb")).expect("create redb");
    let w0 = written_bytes();
    let t = Instant::now();
    for chunk in items.chunks(every) {
        let mut tx = db.begin_write().expect("begin_write");
        if !durable {
            tx.set_durability(redb::Durability::None).expect("set_durability");
        }
        {
            let mut table = tx.open_table(TABLE).expect("open_table");
            for (k, v) in chunk {
                table.insert(*k, *v).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let elapsed = t.elapsed();
    let wrote = written_bytes() - w0;
    {
        let r = db.begin_read().expect("begin_read");
        let table = r.open_table(TABLE).expect("open_table");
        for (k, _) in items.iter().step_by(997) {
            assert!(table.get(*k).expect("get").is_some());
        }
    }
    let size = std::fs::metadata(dir.join("map.redb")).map(|m| m.len()).unwrap_or(0);
    Run {
        elapsed,
        detail: format!(
            "{} commits, {:.0} KiB written per commit, file {:.1} MiB",
            items.len().div_ceil(every),
            wrote as f64 / 1024.0 / items.len().div_ceil(every) as f64,
            size as f64 / (1 << 20) as f64
        ),
    }
}

fn main() {
    let n_batch = env_usize("MAP_N_BATCH", 1_000_000);
    let n_each = env_usize("MAP_N_EACH", 20_000);
    let skip_nosync = env_usize("MAP_SKIP_NOSYNC", 0) != 0;
    let only = std::env::var("MAP_ONLY").ok(); // a substring of the case name, for profiling
    let side = std::env::var("MAP_SIDE").ok(); // "snapheap" or "redb" runs one side only, for profiling

    println!("snapheap map benchmark: random u64 -> [u8; 32] inserts, equal durability");
    println!("(commit-every-insert cases use {n_each} inserts, set by MAP_N_EACH; batch cases {n_batch}, MAP_N_BATCH)");
    // MAP_REMAP: the remapping settings to run, in order (default "1,0": on, then off).
    let remap_modes: Vec<bool> = std::env::var("MAP_REMAP")
        .unwrap_or_else(|_| "1,0".into())
        .split(',')
        .map(|m| m.trim() != "0")
        .collect();
    println!(
        "{:<50} {:>8} {:>12} {:>12} {:>8}",
        "case", "inserts", "snapheap/s", "redb/s", "ratio"
    );
    let mut cases: Vec<(&str, usize, usize, bool)> = vec![
        ("every 1,000 inserts, Immediate vs redb Immediate", n_batch, 1000, true),
        ("every insert, Immediate vs redb Immediate", n_each, 1, true),
    ];
    if !skip_nosync {
        cases.push(("every 1,000 inserts, Eventual vs redb None", n_batch, 1000, false));
        cases.push(("every insert, Eventual vs redb None", n_each, 1, false));
    }
    let mut details = Vec::new();
    for (name, n, every, durable) in cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let items = workload(n, 7 + n as u64);
        let d = if durable {
            Durability::Immediate
        } else {
            Durability::Eventual
        };
        let mut snap: Vec<(bool, Run)> = Vec::new();
        for &remap in &remap_modes {
            let s = if side.as_deref() != Some("redb") {
                let scratch = Scratch::new("map-snapheap");
                snapheap_run(&scratch.0, &items, every, d, remap)
            } else {
                Run::skipped()
            };
            snap.push((remap, s));
        }
        let r = if side.as_deref() != Some("snapheap") {
            let scratch = Scratch::new("map-redb");
            redb_run(&scratch.0, &items, every, durable)
        } else {
            Run::skipped()
        };
        let rr = n as f64 / r.elapsed.as_secs_f64();
        for (remap, s) in &snap {
            let sr = n as f64 / s.elapsed.as_secs_f64();
            let label = format!("{name}, remap {}", if *remap { "on" } else { "off" });
            println!("{label:<50} {n:>8} {sr:>12.0} {rr:>12.0} {:>7.2}x", sr / rr);
            details.push(format!("{label}: snapheap {}", s.detail));
        }
        details.push(format!("{name}: redb {}", r.detail));
    }
    println!("target (issue 3): snapheap at least 2x redb's throughput at equal durability");
    for d in details {
        println!("  {d}");
    }
}
