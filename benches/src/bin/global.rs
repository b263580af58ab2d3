//! `GlobalHeap` as the global allocator against `System`, on allocation-heavy real workloads:
//! building, querying and thinning a `BTreeMap<u64, String>`, and parsing a JSON document into
//! a `serde_json::Value`, walking it and dropping it.
//!
//! The global allocator is fixed per binary, so this binary's allocator is a switch decided
//! once, at the first allocation, from `SNAPHEAP_BENCH_ALLOC` (`system` or `snapheap`); the
//! parent runs three children of itself in the same run: `System`, `GlobalHeap` volatile (no
//! `SNAPHEAP_DIR`) and `GlobalHeap` persistent (`SNAPHEAP_DIR` in a temporary directory, with
//! a commit after every phase, timed separately). All three pay the switch's branch.
//!
//! Run: `cargo run --release --manifest-path benches/Cargo.toml --bin global [-- reps]`

use snapheap::GlobalHeap;
use snapheap_benches::Rng;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

static HEAP: GlobalHeap = GlobalHeap::new();

/// 0: undecided, 1: System, 2: GlobalHeap.
static MODE: AtomicU8 = AtomicU8::new(0);

struct Switch;

impl Switch {
    #[inline(always)]
    fn system(&self) -> bool {
        let m = MODE.load(Ordering::Relaxed);
        if m != 0 {
            return m == 1;
        }
        // SAFETY: getenv with a NUL-terminated name; it does not allocate.
        let p = unsafe { libc::getenv(c"SNAPHEAP_BENCH_ALLOC".as_ptr()) };
        // SAFETY: p is null or a NUL-terminated string of the environment.
        let sys = !p.is_null() && unsafe { std::ffi::CStr::from_ptr(p) }.to_bytes() == b"system";
        MODE.store(if sys { 1 } else { 2 }, Ordering::Relaxed);
        sys
    }
}

// SAFETY: the mode never changes after the first call, so every block is freed by the
// allocator that made it.
unsafe impl GlobalAlloc for Switch {
    #[inline]
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if self.system() {
                System.alloc(l)
            } else {
                HEAP.alloc(l)
            }
        }
    }
    #[inline]
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if self.system() {
                System.alloc_zeroed(l)
            } else {
                HEAP.alloc_zeroed(l)
            }
        }
    }
    #[inline]
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            if self.system() {
                System.dealloc(p, l)
            } else {
                HEAP.dealloc(p, l)
            }
        }
    }
    #[inline]
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            if self.system() {
                System.realloc(p, l, n)
            } else {
                HEAP.realloc(p, l, n)
            }
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch;

const KEYS: u64 = 1_000_000;

fn json_document(objects: usize) -> String {
    let mut rng = Rng::new(7);
    let mut s = String::with_capacity(objects * 200);
    s.push('[');
    for i in 0..objects {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"object {i}\",\"score\":{},\"tags\":[\"a{}\",\"b{}\"],\"inner\":{{\"x\":{},\"y\":[1,2,3],\"s\":\"{}\"}}}}",
            rng.range(0, 1_000_000),
            rng.range(0, 100),
            rng.range(0, 100),
            rng.next_u64() >> 12,
            "z".repeat(rng.range(0, 30) as usize)
        ));
    }
    s.push(']');
    s
}

fn walk(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::Array(a) => a.iter().map(walk).sum(),
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| k.len() as u64 + walk(v)).sum(),
        serde_json::Value::String(s) => s.len() as u64,
        serde_json::Value::Number(n) => n.as_u64().unwrap_or(1) & 1,
        _ => 1,
    }
}

/// One child: runs the phases and prints `RESULT <phase> <ms>` lines.
fn child() {
    let persistent = HEAP.is_persistent();
    let commit = |phase: &str| {
        if persistent {
            let t = Instant::now();
            HEAP.commit().expect("commit");
            println!("RESULT commit-after-{phase} {:.1}", t.elapsed().as_secs_f64() * 1e3);
            let st = HEAP.stats();
            println!(
                "INFO commit-after-{phase}: {} pages ({} MiB), journal {} MiB",
                st.last_commit_pages,
                (st.last_commit_pages * 4096) >> 20,
                st.journal_bytes >> 20
            );
        }
    };
    // Phase 1: build a BTreeMap<u64, String> of 1M entries.
    let t = Instant::now();
    let mut rng = Rng::new(1);
    let mut map = BTreeMap::new();
    for i in 0..KEYS {
        let k = rng.next_u64();
        map.insert(k, format!("value number {i} for key {k:x}"));
    }
    println!("RESULT btree-build {:.1}", t.elapsed().as_secs_f64() * 1e3);
    commit("build");
    // Phase 2: 1M lookups (half hits) and 1M updates of hits.
    let t = Instant::now();
    let mut rng = Rng::new(1);
    let mut other = Rng::new(2);
    let mut hits = 0u64;
    for i in 0..KEYS {
        let k = if i % 2 == 0 { rng.next_u64() } else { other.next_u64() };
        if let Some(v) = map.get_mut(&k) {
            hits += 1;
            v.push('!');
        }
    }
    assert!(hits >= KEYS / 2);
    println!("RESULT btree-query-update {:.1}", t.elapsed().as_secs_f64() * 1e3);
    commit("query");
    // Phase 3: remove half the entries, then drop the map.
    let t = Instant::now();
    let mut rng = Rng::new(1);
    for i in 0..KEYS {
        let k = rng.next_u64();
        if i % 2 == 0 {
            map.remove(&k);
        }
    }
    drop(map);
    println!("RESULT btree-remove-drop {:.1}", t.elapsed().as_secs_f64() * 1e3);
    commit("remove");
    // Phase 4: parse ~20 MB of JSON three times, walk it, drop it.
    let doc = json_document(120_000);
    let t = Instant::now();
    let mut sum = 0;
    for _ in 0..3 {
        let v: serde_json::Value = serde_json::from_str(&doc).expect("parse");
        sum += walk(&v);
    }
    assert!(sum > 0);
    println!("RESULT json-parse-walk-drop {:.1}", t.elapsed().as_secs_f64() * 1e3);
    commit("json");
    let st = HEAP.stats();
    if !matches!(MODE.load(Ordering::Relaxed), 1) {
        println!("INFO mapped {} MiB", st.mapped_bytes >> 20);
    }
}

fn main() {
    if std::env::var_os("SNAPHEAP_BENCH_ROLE").is_some() {
        return child();
    }
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("snapheap-bench-global-{}", std::process::id()));
    let modes: [(&str, &str, bool); 3] = [
        ("System", "system", false),
        ("GlobalHeap volatile", "snapheap", false),
        ("GlobalHeap persistent", "snapheap", true),
    ];
    // results[mode][phase] = samples (ms)
    let mut phases: Vec<String> = Vec::new();
    let mut results: Vec<BTreeMap<String, Vec<f64>>> = vec![BTreeMap::new(); 3];
    for rep in 0..reps {
        for (m, (_, alloc, persistent)) in modes.iter().enumerate() {
            let _ = std::fs::remove_dir_all(&dir);
            let mut c = std::process::Command::new(std::env::current_exe().unwrap());
            c.env("SNAPHEAP_BENCH_ROLE", "1").env("SNAPHEAP_BENCH_ALLOC", alloc);
            if *persistent {
                c.env("SNAPHEAP_DIR", &dir);
            } else {
                c.env_remove("SNAPHEAP_DIR");
            }
            let out = c.output().expect("run child");
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let mut it = line.split_whitespace();
                match it.next() {
                    Some("RESULT") => {
                        let phase = it.next().unwrap().to_string();
                        let ms: f64 = it.next().unwrap().parse().unwrap();
                        if !phases.contains(&phase) {
                            phases.push(phase.clone());
                        }
                        results[m].entry(phase).or_default().push(ms);
                    }
                    Some("INFO") if rep == 0 => eprintln!("{}: {line}", modes[m].0),
                    _ => {}
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let median = |v: &Vec<f64>| {
        let mut v = v.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!("median of {reps} runs, ms (ratio to System)\n");
    println!("| phase | System | GlobalHeap volatile | GlobalHeap persistent |");
    println!("|---|---:|---:|---:|");
    let mut totals = [0.0f64; 3];
    for p in &phases {
        let cells: Vec<Option<f64>> = (0..3).map(|m| results[m].get(p).map(median)).collect();
        let base = cells[0];
        let fmt = |c: Option<f64>| match (c, base) {
            (Some(v), Some(b)) => format!("{v:.1} ({:.2}x)", v / b),
            (Some(v), None) => format!("{v:.1}"),
            (None, _) => "-".to_string(),
        };
        for m in 0..3 {
            if !p.starts_with("commit") {
                totals[m] += cells[m].unwrap_or(0.0);
            }
        }
        println!("| {p} | {} | {} | {} |", fmt(cells[0]), fmt(cells[1]), fmt(cells[2]));
    }
    let commits: f64 = phases
        .iter()
        .filter(|p| p.starts_with("commit"))
        .map(|p| median(&results[2][p]))
        .sum();
    println!(
        "| **workload total** | {:.1} | {:.1} ({:.2}x) | {:.1} ({:.2}x) |",
        totals[0],
        totals[1],
        totals[1] / totals[0],
        totals[2],
        totals[2] / totals[0]
    );
    println!(
        "| **total with commits** | {:.1} | {:.1} ({:.2}x) | {:.1} ({:.2}x) |",
        totals[0],
        totals[1],
        totals[1] / totals[0],
        totals[2] + commits,
        (totals[2] + commits) / totals[0]
    );
}
