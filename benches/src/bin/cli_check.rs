//! `snapheap check` on a 1 GiB heap, timed against reading the heap's files once
//! (`cat files > /dev/null`), cold (the page cache dropped first: `echo 1 >
//! /proc/sys/vm/drop_caches` where this runs as root, else "cold-ish": each file's cache
//! dropped with `posix_fadvise(DONTNEED)`) and warm. Target: check within 3x of one read.
//!
//! ```sh
//! cargo build --release -p snapheap-cli
//! cargo run --release --manifest-path benches/Cargo.toml --bin cli_check [-- DIR]
//! ```
//!
//! The heap (default `/tmp/snapheap-bench-cli-check`) is made once and reused: 1 GiB of random
//! bytes in 4 MiB blocks, a snapshot, then 64 MiB rewritten in 4 commits (left in the journal).
//! The binary is `target/release/snapheap` of the workspace, or `$SNAPHEAP_BIN`.

use snapheap::collections::Vec as HVec;
use snapheap::{Heap, HeapAlloc, OpenOptions};
use snapheap_benches::Rng;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Root = HVec<HVec<u8>>;
/// A block fills one segment less its header slice, so 256 of them make a 1 GiB extent.
const BLOCK: usize = (4 << 20) - (64 << 10);
const BLOCKS: usize = 256;

fn opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.max_size(4 << 30)
        .snapshot_on_close(false)
        .snapshot_after_journal_bytes(1 << 40);
    o
}

fn fill(b: &mut HVec<u8>, rng: &mut Rng) {
    for chunk in b.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn make(dir: &Path) {
    let heap: Heap<Root> = opts().open(dir, |a: HeapAlloc| HVec::new_in(a)).expect("create");
    let a = heap.alloc();
    let mut rng = Rng::new(7);
    for i in 0..BLOCKS {
        let mut w = heap.write();
        let mut b = HVec::with_capacity_in(BLOCK, a);
        b.resize(BLOCK, 0u8);
        fill(&mut b, &mut rng);
        w.push(b);
        if i % 16 == 15 {
            w.commit().expect("commit");
        }
    }
    heap.commit().expect("commit");
    heap.snapshot().expect("snapshot");
    for i in 0..4 {
        let mut w = heap.write();
        fill(&mut w[i * 8], &mut rng);
        fill(&mut w[i * 8 + 1], &mut rng);
        fill(&mut w[i * 8 + 2], &mut rng);
        fill(&mut w[i * 8 + 3], &mut rng);
        w.commit().expect("commit");
    }
    heap.close().expect("close");
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Drops the page cache before a cold run: the whole cache where this process may (root), else
/// each file's pages. Returns the label of the row.
fn drop_cache(files: &[PathBuf]) -> &'static str {
    // SAFETY: a plain syscall with no arguments.
    unsafe { libc::sync() };
    if std::fs::write("/proc/sys/vm/drop_caches", "1\n").is_ok() {
        return "cold";
    }
    for f in files {
        let file = std::fs::File::open(f).expect("open");
        // SAFETY: a plain syscall on an open descriptor.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
    "cold-ish"
}

/// CPU time (user + system) of the children waited for so far.
fn children_cpu() -> Duration {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall time and CPU time of one run of `cmd`.
fn time(mut cmd: Command) -> (Duration, Duration) {
    let cpu = children_cpu();
    let t = Instant::now();
    let st = cmd.stdout(Stdio::null()).status().expect("runs");
    let d = t.elapsed();
    assert!(st.success(), "{cmd:?} failed: {st}");
    (d, children_cpu() - cpu)
}

fn row(run: u32, cache: &str, cat: (Duration, Duration), check: (Duration, Duration)) {
    let s = |d: Duration| d.as_secs_f64();
    println!(
        "| {run} | {cache} | {:.3} | {:.3} | {:.2} | {:.3} | {:.3} | {:.2} |",
        s(cat.0),
        s(check.0),
        s(check.0) / s(cat.0),
        s(cat.1),
        s(check.1),
        s(check.1) / s(cat.1).max(1e-3)
    );
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/snapheap-bench-cli-check".into()),
    );
    let bin = std::env::var("SNAPHEAP_BIN")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/snapheap").into());
    assert!(
        Path::new(&bin).exists(),
        "build the tool first: cargo build --release -p snapheap-cli ({bin})"
    );
    if !dir.join("meta").exists() {
        let t = Instant::now();
        make(&dir);
        eprintln!("made the heap in {:.1} s", t.elapsed().as_secs_f64());
    }
    let fs = files(&dir);
    let bytes: u64 = fs.iter().map(|f| std::fs::metadata(f).expect("stat").len()).sum();
    println!(
        "heap {}: {} files, {:.1} MiB",
        dir.display(),
        fs.len(),
        bytes as f64 / (1 << 20) as f64
    );
    let cat = || {
        let mut c = Command::new("cat");
        c.args(&fs);
        c
    };
    let check = || {
        let mut c = Command::new(&bin);
        c.arg("check").arg(&dir);
        c
    };
    // Wall time on a shared machine includes waiting for a core; CPU time (user + system, from
    // getrusage of the child) does not.
    println!("| run | cache | cat wall (s) | check wall (s) | ratio | cat CPU (s) | check CPU (s) | ratio |");
    println!("|---|---|---|---|---|---|---|---|");
    for run in 1..=2 {
        drop_cache(&fs);
        let c = time(cat());
        let label = drop_cache(&fs);
        let k = time(check());
        row(run, label, c, k);
        let c = time(cat());
        let k = time(check());
        row(run, "warm", c, k);
    }
}
