//! YCSB peer benchmark (issue 10, item 7): snapheap against redb, SQLite, LMDB and a no-store
//! baseline on the YCSB core workloads, with restart costs and the physical floor of a commit,
//! all measured in one run at equal durability (every commit synced before it returns).
//!
//! Run with (2-8 minutes on the 2-core VM here, depending on how fast its disk syncs at the time):
//!
//! ```sh
//! cargo run --release --manifest-path benches/Cargo.toml --bin ycsb
//! ```
//!
//! Environment variables (defaults in brackets):
//! - `YCSB_RECORDS` [100000]: records loaded (one `u64` key, one 100-byte value each);
//! - `YCSB_OPS_BATCH` [200000]: operations of A, B and F when committing every 100 operations;
//! - `YCSB_OPS_EACH` [10000]: operations of A, B and F when committing every operation;
//! - `YCSB_OPS_READ` [1000000]: operations of C (reads, in read transactions of 100);
//! - `YCSB_BASELINE_MAX_COMMITS` [40]: the no-store baseline rewrites the whole map at every
//!   commit (about 11 MB), so in the workload rows it runs only the first operations of the
//!   stream, up to this many commits, and its ops/s is computed from those (the load runs whole);
//! - `YCSB_LAT_SAMPLES` [1000]: one-update commits timed per peer (baseline: a twentieth), and
//!   raw `pwrite`+`fdatasync` samples of the floor per size;
//! - `YCSB_KILL_AFTER` [200]: acknowledged commits after the load before the writer is killed;
//! - `YCSB_PEERS` [snapheap,redb,sqlite,lmdb,baseline]: the peers to run;
//! - `YCSB_OUT` [benches/results]: where `ycsb-<timestamp>.json`, `ycsb-<timestamp>.svg` and
//!   `ycsb-ratios.svg` (a copy of the latest chart) go;
//! - `SNAPHEAP_BENCH_DIR` [system temp dir]: parent of the scratch directories (removed at the
//!   end of the run).
//!
//! Rows: load (commit per 1,000 inserts), then A, B, F with a commit every 100 operations and
//! every operation, and C. All peers are open at once; each row is cut into 10 slices and the
//! peers take turns slice by slice (the order rotates), so that a change in the disk's latency
//! (other jobs on the machine) reaches every peer alike. A batch of
//! operations runs in one transaction; a batch that only reads uses a read transaction and
//! commits nothing (so in "every op" rows a read is its own read transaction).
//!
//! Ratios: snapheap's ops/s over each peer's for the whole row, and (for the best database)
//! also the median over the 10 slices of the per-slice ratio, which a transient slow patch of
//! the disk moves less.
//!
//! Bytes per commit (the headline measure is `wchar`): `wchar` of `/proc/self/io` (bytes handed
//! to write system calls by the process, including snapheap's reaped snapshot children) and
//! `write_bytes` (page-cache folios dirtied, counted whole: with ext4's large folios a 4 KiB
//! write into a file written in 1 MiB chunks counts 1 MiB, though only the dirty blocks reach
//! the device), per row divided by the row's commits; for snapheap also the committing thread's
//! own `wchar` and its journal record bytes (`Stats::journal_bytes`; `wchar` also counts the
//! journal's pre-zeroing of space ahead of its end). See `snapheap_benches::ycsb::io`.
//!
//! Restart: (a) clean close of the store as the workloads left it, then open + 1,000 zipfian
//! reads in a new process (this binary, `reopen` mode; the table also shows an open in the
//! closing process, where a snapheap heap adopts its still-mapped memory and replays nothing);
//! (b) a child process (this binary, `writer` mode) loads the records into a fresh store,
//! commits updates one at a time and prints each acknowledged commit; the parent SIGKILLs the
//! child's process group after `YCSB_KILL_AFTER` acknowledgements, then times open + 1,000
//! reads and checks that the last acknowledged value is there.
//!
//! `ycsb kill [PEER,...]` runs only the SIGKILL restart test (`YCSB_KILL_REPEAT` [1] times
//! per peer) and prints its times, for profiling an open. Every snapheap heap it opens stays
//! mapped in this process after its close (detached), so with repeats a later heap whose
//! recorded base overlaps an earlier one fails to open with `AddressInUse` (seen twice in
//! about 40 repeats).
//!
//! Floor: the latency of `pwrite` + `fdatasync` of 4 KiB (and of snapheap's measured bytes per
//! one-update commit) appended within already written blocks, interleaved sample by sample
//! with one-update commits of every peer (median, mean and p99 of each).

use snapheap_benches::ycsb::chart::{self, Group};
use snapheap_benches::ycsb::floor::Floor;
use snapheap_benches::ycsb::io::{self, Io};
use snapheap_benches::ycsb::stores::{Peer, Store, Tally, PEERS};
use snapheap_benches::ycsb::workload::{self, version_of, Op, ScrambledZipfian, Workload};
use snapheap_benches::{Rng, Scratch};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}: not a number")),
        Err(_) => default,
    }
}

/// The run's settings.
#[derive(Clone, Debug)]
struct Config {
    records: u64,
    ops_batch: usize,
    ops_each: usize,
    ops_read: usize,
    baseline_max_commits: usize,
    lat_samples: usize,
    kill_after: usize,
    peers: Vec<Peer>,
    out: PathBuf,
}

impl Config {
    fn from_env() -> Config {
        let peers = match std::env::var("YCSB_PEERS") {
            Ok(s) => s
                .split(',')
                .map(|p| Peer::from_name(p.trim()).unwrap_or_else(|| panic!("YCSB_PEERS: unknown peer {p:?}")))
                .collect(),
            Err(_) => PEERS.to_vec(),
        };
        Config {
            records: env_usize("YCSB_RECORDS", 100_000) as u64,
            ops_batch: env_usize("YCSB_OPS_BATCH", 200_000),
            ops_each: env_usize("YCSB_OPS_EACH", 10_000),
            ops_read: env_usize("YCSB_OPS_READ", 1_000_000),
            baseline_max_commits: env_usize("YCSB_BASELINE_MAX_COMMITS", 40).max(1),
            lat_samples: env_usize("YCSB_LAT_SAMPLES", 1_000).max(20),
            kill_after: env_usize("YCSB_KILL_AFTER", 200).max(1),
            peers,
            out: std::env::var_os("YCSB_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("results")),
        }
    }
}

/// One row of the workload table.
struct RowSpec {
    name: String,
    workload: Option<Workload>,
    every: usize,
    ops: Vec<Op>,
}

/// What one peer measured in one row.
#[derive(Clone, Debug)]
struct Cell {
    ops: usize,
    commits: usize,
    elapsed: Duration,
    io: Io,
    thread_io: Io,
    snapshots: Option<u64>,
    /// snapheap's journal record bytes (`Stats::journal_bytes` growth) summed over the slices
    /// of the row during which no snapshot started or finished (a snapshot resets the counter),
    /// and the commits of those slices.
    journal_bytes: Option<(u64, usize)>,
    /// ops/s of each slice, in slice order.
    slice_rates: Vec<f64>,
}

impl Cell {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    fn per_commit(&self, b: u64) -> Option<f64> {
        (self.commits > 0).then(|| b as f64 / self.commits as f64)
    }

    /// snapheap's journal record bytes per commit, over the slices without snapshots.
    fn journal_per_commit(&self) -> Option<f64> {
        match self.journal_bytes {
            Some((b, c)) if c > 0 => Some(b as f64 / c as f64),
            _ => None,
        }
    }

    /// Adds the measurements of a later slice of the same row.
    fn add(&mut self, o: &Cell) {
        self.ops += o.ops;
        self.commits += o.commits;
        self.elapsed += o.elapsed;
        self.io.wchar += o.io.wchar;
        self.io.write_bytes += o.io.write_bytes;
        self.thread_io.wchar += o.thread_io.wchar;
        self.thread_io.write_bytes += o.thread_io.write_bytes;
        self.snapshots = match (self.snapshots, o.snapshots) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        };
        self.slice_rates.extend_from_slice(&o.slice_rates);
        self.journal_bytes = match (self.journal_bytes, o.journal_bytes) {
            (Some(a), Some(b)) => Some((a.0 + b.0, a.1 + b.1)),
            (a, b) => a.or(b),
        };
    }
}

/// The prefix of `ops` the baseline runs: whole batches of `every`, up to `max_commits` batches
/// that write.
fn baseline_prefix(ops: &[Op], every: usize, max_commits: usize) -> usize {
    let mut commits = 0;
    let mut n = 0;
    for b in ops.chunks(every) {
        if b.iter().any(Op::writes) {
            if commits == max_commits {
                break;
            }
            commits += 1;
        }
        n += b.len();
    }
    n
}

fn run_cell(store: &mut dyn Store, ops: &[Op], every: usize) -> (Cell, Tally) {
    let mut t = Tally::default();
    let st0 = store.snapheap_stats();
    let commits = ops.chunks(every).filter(|b| b.iter().any(Op::writes)).count();
    let (p0, t0) = (io::process(), io::thread());
    let start = Instant::now();
    for b in ops.chunks(every) {
        store.run(b, &mut t);
    }
    let elapsed = start.elapsed();
    let (p1, t1) = (io::process(), io::thread());
    let st1 = store.snapheap_stats();
    let (snapshots, journal_bytes) = match (&st0, &st1) {
        (Some(a), Some(b)) => {
            let quiet = a.snapshots == b.snapshots
                && a.snapshot_failures == b.snapshot_failures
                && b.journal_bytes >= a.journal_bytes
                && b.last_fork_micros == a.last_fork_micros;
            (
                Some(b.snapshots - a.snapshots),
                Some(if quiet {
                    (b.journal_bytes - a.journal_bytes, commits)
                } else {
                    (0, 0)
                }),
            )
        }
        _ => (None, None),
    };
    (
        Cell {
            ops: ops.len(),
            commits,
            elapsed,
            io: p1.since(p0),
            thread_io: t1.since(t0),
            snapshots,
            journal_bytes,
            slice_rates: vec![ops.len() as f64 / elapsed.as_secs_f64()],
        },
        t,
    )
}

/// `date -u FORMAT`.
fn date_utc(format: &str) -> String {
    std::process::Command::new("date")
        .args(["-u", format])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The median of snapheap's ops/s over the peer's, slice by slice: the two ran one after the
/// other in each slice, so a slow patch of the disk affects both sides of each ratio; less
/// sensitive to one bad slice than the ratio of totals.
fn paired_median(snap: &Cell, peer: &Cell) -> Option<f64> {
    let mut r: Vec<f64> = snap
        .slice_rates
        .iter()
        .zip(&peer.slice_rates)
        .map(|(s, p)| s / p)
        .collect();
    if r.is_empty() {
        return None;
    }
    r.sort_by(f64::total_cmp);
    let n = r.len();
    Some(if n % 2 == 1 {
        r[n / 2]
    } else {
        (r[n / 2 - 1] + r[n / 2]) / 2.0
    })
}

fn quantile(xs: &[Duration], q: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn mean(xs: &[Duration]) -> Duration {
    xs.iter().sum::<Duration>() / xs.len().max(1) as u32
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn fmt_bytes(b: Option<f64>) -> String {
    match b {
        None => "-".to_string(),
        Some(b) if b >= 10.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", b / 1048576.0),
        Some(b) if b >= 10.0 * 1024.0 => format!("{:.1} KiB", b / 1024.0),
        Some(b) => format!("{b:.0} B"),
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// Zipfian keys for the restart reads.
fn restart_reads(records: u64, seed: u64) -> Vec<Op> {
    let z = ScrambledZipfian::new(records);
    let mut rng = Rng::new(seed);
    (0..1000).map(|_| Op::Read(z.next_key(&mut rng))).collect()
}

/// Reads `ops` through the store in one batch (a read transaction), checking each value.
fn checked_reads(store: &mut dyn Store, peer: Peer, ops: &[Op]) -> Tally {
    let mut t = Tally::checking();
    store.run(ops, &mut t);
    assert_eq!(t.bad, 0, "{}: {} values read back damaged", peer.name(), t.bad);
    t
}

/// Reads one key alone and returns its value, which must be present and well formed.
fn read_one(store: &mut dyn Store, peer: Peer, k: u64) -> workload::Val {
    let t = checked_reads(store, peer, &[Op::Read(k)]);
    assert_eq!(t.found, 1, "{}: key {k:#x} missing", peer.name());
    t.last.expect("a checked read keeps its value")
}

// ------------------------------------------------------------------------------------------
// Writer mode (the child of the SIGKILL restart test).

fn writer_main(peer: Peer, dir: &Path, records: u64) {
    let mut store = peer.open(dir);
    let load = workload::load_ops(records);
    let mut t = Tally::default();
    for b in load.chunks(1000) {
        store.run(b, &mut t);
    }
    println!("loaded");
    let z = ScrambledZipfian::new(records);
    let mut rng = Rng::new(0xC0FFEE);
    let mut ver: u64 = 1 << 40;
    loop {
        let k = z.next_key(&mut rng);
        ver += 1;
        store.run(&[Op::Update(k, ver)], &mut t);
        // Rust's stdout is line-buffered: the line leaves the process before the next commit.
        println!("ack {k} {ver}");
    }
}

/// Restart (a) of one peer: the close in the benchmark's process, the open and the reads in a
/// new process (`reopen_in_child`), and for comparison an open in the closing process.
struct CleanRestart {
    peer: Peer,
    close: Duration,
    open: Duration,
    reads: Duration,
    replayed: Option<u64>,
    open_here: Duration,
}

/// What the new process of restart (a) measured.
struct Reopened {
    open: Duration,
    reads: Duration,
    replayed_pages: Option<u64>,
}

/// Runs this binary in `reopen` mode on `dir`: a new process opens the store and reads.
fn reopen_in_child(cfg: &Config, peer: Peer, dir: &Path) -> Reopened {
    let out = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .arg("reopen")
        .arg(peer.name())
        .arg(dir)
        .env("YCSB_RECORDS", cfg.records.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("spawn reopen");
    assert!(
        out.status.success(),
        "{}: reopen in a new process failed: {}",
        peer.name(),
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("reopened "))
        .unwrap_or_else(|| panic!("{}: reopen printed no times: {stdout}", peer.name()));
    let f: Vec<i64> = line.split(' ').map(|x| x.parse().expect("reopen line")).collect();
    Reopened {
        open: Duration::from_nanos(f[0] as u64),
        reads: Duration::from_nanos(f[1] as u64),
        replayed_pages: (f[2] >= 0).then_some(f[2] as u64),
    }
}

/// Result of the SIGKILL restart test for one peer.
struct KillResult {
    acked: usize,
    /// From the writer's start to the end of its load.
    load: Duration,
    open: Duration,
    reads: Duration,
    replayed_pages: Option<u64>,
}

fn kill_test(cfg: &Config, peer: Peer) -> KillResult {
    use std::os::unix::process::CommandExt;
    let scratch = Scratch::new(&format!("ycsb-kill-{}", peer.name()));
    let dir = scratch.0.join("store");
    let mut child = std::process::Command::new(std::env::current_exe().expect("current_exe"))
        .arg("writer")
        .arg(peer.name())
        .arg(&dir)
        .env("YCSB_RECORDS", cfg.records.to_string())
        .stdout(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn writer");
    let pid = child.id() as libc::pid_t;
    let spawned = Instant::now();
    let mut load = Duration::ZERO;
    let mut lines = BufReader::new(child.stdout.take().expect("writer stdout")).lines();
    let mut acked = 0;
    let mut last: Option<(u64, u64)> = None;
    while acked < cfg.kill_after {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("{}: writer exited early", peer.name()))
            .expect("read writer stdout");
        if line == "loaded" {
            load = spawned.elapsed();
        }
        if let Some(rest) = line.strip_prefix("ack ") {
            let mut it = rest.split(' ').map(|x| x.parse::<u64>().expect("ack line"));
            last = Some((it.next().expect("key"), it.next().expect("version")));
            acked += 1;
        }
    }
    // SAFETY: kill(2) with a negative pid signals the process group the child leads (created by
    // process_group(0)): the writer and any snapshot process it forked. No memory is involved.
    let r = unsafe { libc::kill(-pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill writer: {}", std::io::Error::last_os_error());
    let status = child.wait().expect("wait writer");
    assert!(!status.success(), "writer was not killed: {status}");
    drop(lines);
    // Let any other member of the group (a snapshot child) be gone before opening.
    std::thread::sleep(Duration::from_millis(50));
    if let Some(keep) = std::env::var_os("YCSB_KILL_KEEP") {
        copy_dir(&dir, &Path::new(&keep).join(peer.name()));
    }
    let (k, ver) = last.expect("an acknowledged commit");
    let reads = restart_reads(cfg.records, 99);
    let t0 = Instant::now();
    let mut store = peer.open(&dir);
    let open = t0.elapsed();
    let t1 = Instant::now();
    let t = checked_reads(&mut *store, peer, &reads);
    let read_time = t1.elapsed();
    assert_eq!(t.missing, 0, "{}: keys missing after SIGKILL", peer.name());
    let v = read_one(&mut *store, peer, k);
    assert!(
        version_of(&v) >= ver,
        "{}: acknowledged commit lost: key {k:#x} has version {} < {ver}",
        peer.name(),
        version_of(&v)
    );
    let replayed_pages = store.snapheap_stats().map(|s| s.replayed_pages);
    store.close();
    KillResult {
        acked,
        load,
        open,
        reads: read_time,
        replayed_pages,
    }
}

// ------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("writer") {
        let peer = Peer::from_name(&args[1]).expect("writer: peer name");
        writer_main(peer, Path::new(&args[2]), env_usize("YCSB_RECORDS", 100_000) as u64);
        return;
    }
    if args.first().map(String::as_str) == Some("reopen") {
        // Restart (a)'s new process: open + 1,000 reads, times printed for the parent.
        let peer = Peer::from_name(&args[1]).expect("reopen: peer name");
        let records = env_usize("YCSB_RECORDS", 100_000) as u64;
        let reads = restart_reads(records, 42);
        let t0 = Instant::now();
        let mut store = peer.open(Path::new(&args[2]));
        let open = t0.elapsed();
        let t1 = Instant::now();
        let t = checked_reads(&mut *store, peer, &reads);
        let rd = t1.elapsed();
        assert_eq!(t.missing, 0, "{}: keys missing after restart", peer.name());
        let replayed = store.snapheap_stats().map_or(-1, |s| s.replayed_pages as i64);
        println!("reopened {} {} {replayed}", open.as_nanos(), rd.as_nanos());
        store.close();
        return;
    }
    let cfg = Config::from_env();
    if args.first().map(String::as_str) == Some("open") {
        // `ycsb open PEER STORE [N]`: open a copy of a store kept by `YCSB_KILL_KEEP` (`DIR/PEER`
        // after the SIGKILL test, `DIR/clean-PEER` after restart (a)'s close), N times.
        let peer = Peer::from_name(args.get(1).expect("open: peer")).expect("open: peer name");
        let kept = Path::new(args.get(2).expect("open: store directory"));
        for _ in 0..args.get(3).map_or(1, |n| n.parse::<usize>().expect("open: count")) {
            let scratch = Scratch::new("ycsb-open");
            let dir = scratch.0.join("store");
            copy_dir(kept, &dir);
            let t0 = Instant::now();
            let store = peer.open(&dir);
            let open = t0.elapsed();
            let replayed = store.snapheap_stats().map(|s| s.replayed_pages);
            let t1 = Instant::now();
            store.close();
            let close = t1.elapsed();
            // Reopened in this process: as in restart (a), a snapheap heap adopts its memory.
            let t2 = Instant::now();
            let store = peer.open(&dir);
            let reopen = t2.elapsed();
            println!(
                "{}: open {:.2} ms (replayed pages {replayed:?}), close {:.2} ms, reopen {:.2} ms",
                peer.name(),
                ms(open),
                ms(close),
                ms(reopen)
            );
            store.close();
        }
        return;
    }
    if args.first().map(String::as_str) == Some("kill") {
        // Only the SIGKILL restart test, for the peers named after `kill` (all by default),
        // `YCSB_KILL_REPEAT` [1] times each: for profiling the open.
        let peers: Vec<Peer> = match args.get(1) {
            Some(list) => list
                .split(',')
                .map(|n| Peer::from_name(n).expect("kill: peer name"))
                .collect(),
            None => cfg.peers.clone(),
        };
        for _ in 0..env_usize("YCSB_KILL_REPEAT", 1) {
            for &peer in &peers {
                let k = kill_test(&cfg, peer);
                println!(
                    "{}: load {:.0} ms, acked {} open {:.2} ms reads {:.2} ms replayed pages {:?}",
                    peer.name(),
                    ms(k.load),
                    k.acked,
                    ms(k.open),
                    ms(k.reads),
                    k.replayed_pages
                );
            }
        }
        return;
    }
    let started = date_utc("+%Y-%m-%d %H:%M:%S UTC");
    let load_start = load_avg();
    let wall = Instant::now();
    println!("# snapheap YCSB peer benchmark, {started}");
    println!(
        "records {} (u64 key, 100-byte value), zipfian theta {} (scrambled), ops: batch {} / each {} / read {}, baseline capped at {} commits per row",
        cfg.records,
        workload::ZIPF_THETA,
        cfg.ops_batch,
        cfg.ops_each,
        cfg.ops_read,
        cfg.baseline_max_commits
    );
    println!("load average at start: {load_start}");
    let has = |p: Peer| cfg.peers.contains(&p);

    let scratch = Scratch::new("ycsb");
    let mut stores: Vec<(Peer, Box<dyn Store>)> = cfg
        .peers
        .iter()
        .map(|&p| (p, p.open(&scratch.0.join(p.name()))))
        .collect();

    // The rows and their shared operation streams.
    let mut ver = 0;
    let mut rows = vec![RowSpec {
        name: "load (commit/1000)".into(),
        workload: None,
        every: 1000,
        ops: workload::load_ops(cfg.records),
    }];
    for (w, every, n) in [
        (Workload::A, 100, cfg.ops_batch),
        (Workload::A, 1, cfg.ops_each),
        (Workload::B, 100, cfg.ops_batch),
        (Workload::B, 1, cfg.ops_each),
        (Workload::C, 100, cfg.ops_read),
        (Workload::F, 100, cfg.ops_batch),
        (Workload::F, 1, cfg.ops_each),
    ] {
        let name = if w == Workload::C {
            "C (read only)".to_string()
        } else {
            format!(
                "{} (commit/{})",
                w.name(),
                if every == 1 {
                    "op".to_string()
                } else {
                    every.to_string()
                }
            )
        };
        rows.push(RowSpec {
            name,
            workload: Some(w),
            every,
            ops: workload::ops(w, n, cfg.records, 1000 + rows.len() as u64, &mut ver),
        });
    }

    // Each row is cut into SLICES slices; the peers take turns slice by slice (rotating who
    // goes first), so a change in the disk's latency (other jobs on the machine) reaches every
    // peer alike instead of whichever ran during it.
    const SLICES: usize = 10;
    let mut results: Vec<(String, Vec<(Peer, Cell)>)> = Vec::new();
    for row in &rows {
        let n = stores.len();
        let mut cells: Vec<Option<Cell>> = vec![None; n];
        let mut tallies = vec![Tally::default(); n];
        let slices: Vec<Vec<&[Op]>> = stores
            .iter()
            .map(|(peer, _)| {
                let ops = if *peer == Peer::Baseline && row.workload.is_some() {
                    &row.ops[..baseline_prefix(&row.ops, row.every, cfg.baseline_max_commits)]
                } else {
                    &row.ops[..]
                };
                let len = ops.len().div_ceil(row.every).div_ceil(SLICES) * row.every;
                ops.chunks(len.max(1)).collect()
            })
            .collect();
        for si in 0..SLICES {
            for j in 0..n {
                let i = (si + j) % n;
                let Some(ops) = slices[i].get(si) else {
                    continue;
                };
                let (cell, t) = run_cell(&mut *stores[i].1, ops, row.every);
                tallies[i].found += t.found;
                tallies[i].missing += t.missing;
                match &mut cells[i] {
                    Some(c) => c.add(&cell),
                    None => cells[i] = Some(cell),
                }
            }
        }
        let mut out = Vec::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let peer = stores[i].0;
            let cell = cell.expect("every peer ran the row");
            let t = tallies[i];
            assert_eq!(t.missing, 0, "{} {}: {} reads missed", peer.name(), row.name, t.missing);
            eprintln!(
                "  {:<20} {:<9} {:>9} ops {:>8.2} s {:>10} ops/s",
                row.name,
                peer.name(),
                cell.ops,
                cell.elapsed.as_secs_f64(),
                fmt_rate(cell.ops_per_s())
            );
            out.push((peer, cell));
        }
        out.sort_by_key(|(p, _)| PEERS.iter().position(|x| x == p));
        results.push((row.name.clone(), out));
    }

    // The full-history peers hold the same data: compare a sample of values.
    {
        let sample = restart_reads(cfg.records, 5);
        let mut reference: Option<(Peer, Vec<workload::Val>)> = None;
        for (peer, store) in stores.iter_mut().filter(|(p, _)| *p != Peer::Baseline) {
            let vals: Vec<workload::Val> = sample
                .iter()
                .map(|op| match op {
                    Op::Read(k) => read_one(&mut **store, *peer, *k),
                    _ => unreachable!(),
                })
                .collect();
            match &reference {
                None => reference = Some((*peer, vals)),
                Some((rp, rv)) => assert!(
                    *rv == vals,
                    "{} and {} disagree on the values after the same operations",
                    rp.name(),
                    peer.name()
                ),
            }
        }
    }

    // One-update commit latency of every peer, interleaved with the floor.
    let floor_path = scratch.0.join("floor.bin");
    let mut floor = Floor::new(&floor_path, 64 << 20);
    let z = ScrambledZipfian::new(cfg.records);
    let mut rng = Rng::new(77);
    let mut lat_ver: u64 = 1 << 50;
    // snapheap's journal bytes for one update, to run the floor at the same size.
    let snap_commit_bytes = stores.iter_mut().find(|(p, _)| *p == Peer::Snapheap).map(|(_, s)| {
        // Journal record bytes (Stats::journal_bytes growth) rather than write-syscall bytes,
        // which include the journal's pre-zeroing of space ahead of its end in 4 MiB steps.
        let mut t = Tally::default();
        let (t0, st0) = (io::thread(), s.snapheap_stats().expect("snapheap stats"));
        for _ in 0..50 {
            lat_ver += 1;
            let k = z.next_key(&mut rng);
            s.run(&[Op::Update(k, lat_ver)], &mut t);
        }
        let (t1, st1) = (io::thread(), s.snapheap_stats().expect("snapheap stats"));
        let b = if st1.snapshots == st0.snapshots && st1.journal_bytes > st0.journal_bytes {
            st1.journal_bytes - st0.journal_bytes
        } else {
            t1.since(t0).wchar
        };
        (b / 50) as usize
    });
    // Interleaved sample by sample (the floor at 4 KiB, the floor at snapheap's size, then one
    // commit of each peer, the order rotating by one each round; the baseline in every 20th
    // round only), so that every series sees the disk's fast and slow spells alike: the sync
    // latency here is bimodal (about 0.2 ms, or about 4 ms in slow spells lasting seconds), and
    // with blocks of 100 samples per series the medians could land in different modes.
    let mut lat: Vec<(Peer, Vec<Duration>)> = cfg.peers.iter().map(|&p| (p, Vec::new())).collect();
    let mut floor4k = Vec::new();
    let mut floor_snap = Vec::new();
    let actors = 2 + stores.len();
    for round in 0..cfg.lat_samples {
        for step in 0..actors {
            let a = (round + step) % actors;
            match a {
                0 => floor4k.push(floor.sample(4096)),
                1 => {
                    if let Some(n) = snap_commit_bytes {
                        floor_snap.push(floor.sample(n));
                    }
                }
                _ => {
                    let i = a - 2;
                    let (peer, store) = &mut stores[i];
                    if *peer == Peer::Baseline && round % 20 != 0 {
                        continue;
                    }
                    let mut t = Tally::default();
                    lat_ver += 1;
                    let key = z.next_key(&mut rng);
                    let t0 = Instant::now();
                    store.run(&[Op::Update(key, lat_ver)], &mut t);
                    lat[i].1.push(t0.elapsed());
                }
            }
        }
    }
    drop(floor);
    let _ = std::fs::remove_file(&floor_path);

    // Restart (a): clean close, open, 1,000 reads.
    let reads = restart_reads(cfg.records, 42);
    let mut clean: Vec<CleanRestart> = Vec::new();
    for (peer, store) in std::mem::take(&mut stores) {
        let t0 = Instant::now();
        store.close();
        let close = t0.elapsed();
        if let Some(keep) = std::env::var_os("YCSB_KILL_KEEP") {
            copy_dir(
                &scratch.0.join(peer.name()),
                &Path::new(&keep).join(format!("clean-{}", peer.name())),
            );
        }
        // First the same process (a snapheap heap adopts its still-mapped memory and replays
        // nothing: a reopen, not a restart), then a new process (the restart the target is for).
        let t1 = Instant::now();
        let mut s = peer.open(&scratch.0.join(peer.name()));
        let open_here = t1.elapsed();
        let t = checked_reads(&mut *s, peer, &reads);
        assert_eq!(t.missing, 0, "{}: keys missing after reopen", peer.name());
        s.close();
        let fresh = reopen_in_child(&cfg, peer, &scratch.0.join(peer.name()));
        clean.push(CleanRestart {
            peer,
            close,
            open: fresh.open,
            reads: fresh.reads,
            replayed: fresh.replayed_pages,
            open_here,
        });
    }

    // Restart (b): open after SIGKILL of a writer.
    let mut killed: Vec<(Peer, KillResult)> = Vec::new();
    for &peer in &cfg.peers {
        eprintln!("  kill test: {}", peer.name());
        killed.push((peer, kill_test(&cfg, peer)));
    }
    drop(scratch);
    let load_end = load_avg();
    let total = wall.elapsed();

    // ---------------------------------------------------------------------------------------
    // Tables.
    let names: Vec<&str> = cfg.peers.iter().map(|p| p.name()).collect();
    let dbs = [Peer::Redb, Peer::Sqlite, Peer::Lmdb];
    println!();
    println!("## Throughput (ops/s) and snapheap's ratio (snapheap ops/s / peer ops/s)");
    println!();
    let mut head = format!(
        "| row | {} | best db | snap/best | snap/best, slice median |",
        names.join(" | ")
    );
    let mut sep = format!("|---|{}---|---:|---:|", "---:|".repeat(names.len()));
    for p in cfg.peers.iter().filter(|p| **p != Peer::Snapheap) {
        head.push_str(&format!(" snap/{} |", p.name()));
        sep.push_str("---:|");
    }
    println!("{head}\n{sep}");
    let mut groups = Vec::new();
    let mut json_rows = Vec::new();
    for (name, cells) in &results {
        let rate = |p: Peer| cells.iter().find(|c| c.0 == p).map(|c| c.1.ops_per_s());
        let best = dbs
            .iter()
            .filter_map(|&p| rate(p).map(|r| (p, r)))
            .fold(None, |acc: Option<(Peer, f64)>, x| match acc {
                Some(a) if a.1 >= x.1 => Some(a),
                _ => Some(x),
            });
        let snap = rate(Peer::Snapheap);
        let mut line = format!("| {name} |");
        for c in cells {
            line.push_str(&format!(" {} |", fmt_rate(c.1.ops_per_s())));
        }
        let ratio_best = match (snap, best) {
            (Some(s), Some((_, b))) => Some(s / b),
            _ => None,
        };
        let cell_of = |p: Peer| cells.iter().find(|c| c.0 == p).map(|c| &c.1);
        let paired_best = match (cell_of(Peer::Snapheap), best.and_then(|b| cell_of(b.0))) {
            (Some(s), Some(b)) => paired_median(s, b),
            _ => None,
        };
        line.push_str(&format!(
            " {} | {} | {} |",
            best.map(|b| b.0.name()).unwrap_or("-"),
            ratio_best.map(|r| format!("**{r:.2}x**")).unwrap_or("-".into()),
            paired_best.map(|r| format!("{r:.2}x")).unwrap_or("-".into())
        ));
        let mut bars = Vec::new();
        if let Some(r) = ratio_best {
            bars.push(("best of redb/SQLite/LMDB".to_string(), r));
        }
        for c in cells.iter().filter(|c| c.0 != Peer::Snapheap) {
            let r = snap.map(|s| s / c.1.ops_per_s());
            line.push_str(&format!(" {} |", r.map(|r| format!("{r:.2}x")).unwrap_or("-".into())));
            if let Some(r) = r {
                bars.push((c.0.name().to_string(), r));
            }
        }
        println!("{line}");
        groups.push(Group {
            label: name.clone(),
            bars,
        });
        json_rows.push(serde_json::json!({
            "row": name,
            "best_db": best.map(|b| b.0.name()),
            "snapheap_over_best": ratio_best,
            "snapheap_over_best_slice_median": paired_best,
            "peers": cells.iter().map(|(p, c)| serde_json::json!({
                "peer": p.name(),
                "ops": c.ops,
                "commits": c.commits,
                "seconds": c.elapsed.as_secs_f64(),
                "ops_per_s": c.ops_per_s(),
                "slice_ops_per_s": c.slice_rates,
                "wchar": c.io.wchar,
                "write_bytes": c.io.write_bytes,
                "thread_wchar": c.thread_io.wchar,
                "wchar_per_commit": c.per_commit(c.io.wchar),
                "write_bytes_per_commit": c.per_commit(c.io.write_bytes),
                "thread_wchar_per_commit": c.per_commit(c.thread_io.wchar),
                "snapheap_snapshots": c.snapshots,
                "snapheap_journal_record_bytes_quiet_slices": c.journal_bytes.map(|j| j.0),
                "snapheap_commits_quiet_slices": c.journal_bytes.map(|j| j.1),
                "snapheap_journal_record_bytes_per_commit": c.journal_per_commit(),
            })).collect::<Vec<_>>(),
        }));
    }
    if has(Peer::Baseline) {
        println!();
        println!(
            "baseline ops in the workload rows: {} (the first operations of each stream, up to {} commits)",
            results
                .iter()
                .skip(1)
                .map(|(n, c)| format!(
                    "{n} {}",
                    c.iter().find(|x| x.0 == Peer::Baseline).map(|x| x.1.ops).unwrap_or(0)
                ))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.baseline_max_commits
        );
    }

    println!();
    println!("## Bytes written per commit: wchar (write syscalls, process incl. reaped children) / write_bytes (page-cache folios dirtied: whole large folios, so it overcounts small writes into files written in big chunks)");
    println!();
    println!(
        "| row | {} | snapheap thread wchar | snapheap journal records | snapheap snapshots in row |",
        names.join(" | ")
    );
    println!("|---|{}---:|---:|---:|", "---:|".repeat(names.len()));
    for (name, cells) in &results {
        if cells.iter().all(|c| c.1.commits == 0) {
            continue;
        }
        let mut line = format!("| {name} |");
        for (_, c) in cells {
            line.push_str(&format!(
                " {} / {} |",
                fmt_bytes(c.per_commit(c.io.wchar)),
                fmt_bytes(c.per_commit(c.io.write_bytes))
            ));
        }
        let snap = cells.iter().find(|c| c.0 == Peer::Snapheap);
        line.push_str(&format!(
            " {} | {} | {} |",
            fmt_bytes(snap.and_then(|c| c.1.per_commit(c.1.thread_io.wchar))),
            fmt_bytes(snap.and_then(|c| c.1.journal_per_commit())),
            snap.and_then(|c| c.1.snapshots)
                .map(|s| s.to_string())
                .unwrap_or("-".into())
        ));
        println!("{line}");
    }

    println!();
    println!("## One-update commit latency (us), interleaved with the physical floor");
    println!();
    println!("| what | samples | median | mean | p99 |");
    println!("|---|---:|---:|---:|---:|");
    let lat_line = |what: &str, xs: &[Duration]| {
        println!(
            "| {what} | {} | {:.0} | {:.0} | {:.0} |",
            xs.len(),
            us(quantile(xs, 0.5)),
            us(mean(xs)),
            us(quantile(xs, 0.99))
        );
    };
    lat_line("floor: pwrite 4096 B + fdatasync", &floor4k);
    if let Some(n) = snap_commit_bytes {
        lat_line(
            &format!("floor: pwrite {n} B + fdatasync (snapheap's bytes/commit)"),
            &floor_snap,
        );
    }
    for (p, xs) in &lat {
        lat_line(&format!("{} one-update commit", p.name()), xs);
    }
    let mut json_lat = serde_json::Map::new();
    for (p, xs) in &lat {
        json_lat.insert(
            p.name().into(),
            serde_json::json!({"samples": xs.len(), "median_us": us(quantile(xs, 0.5)), "mean_us": us(mean(xs)), "p99_us": us(quantile(xs, 0.99))}),
        );
    }
    let floor_ratio = lat.iter().find(|l| l.0 == Peer::Snapheap).map(|(_, xs)| {
        let (m, p) = (quantile(xs, 0.5), quantile(xs, 0.99));
        (
            m.as_secs_f64() / quantile(&floor4k, 0.5).as_secs_f64(),
            p.as_secs_f64() / quantile(&floor4k, 0.99).as_secs_f64(),
        )
    });
    if let Some((m, p)) = floor_ratio {
        println!();
        println!(
            "floor: snapheap Immediate one-update commit / raw pwrite 4 KiB + fdatasync = **{m:.2}x** (median), {p:.2}x (p99); snapheap journals {} bytes per one-update commit (journal record bytes)",
            snap_commit_bytes.unwrap_or(0)
        );
        if !floor_snap.is_empty() {
            let xs = &lat.iter().find(|l| l.0 == Peer::Snapheap).expect("snapheap").1;
            println!(
                "floor at snapheap's own size: {:.2}x (median)",
                quantile(xs, 0.5).as_secs_f64() / quantile(&floor_snap, 0.5).as_secs_f64()
            );
        }
    }

    println!();
    println!("## Restart (ms): (a) clean close, then open + 1,000 zipfian reads in a new process; (b) open + 1,000 reads after SIGKILL of a writer");
    println!();
    println!("| peer | (a) close | (a) open | (a) reads | **(a) total** | (b) acked | (b) open | (b) reads | **(b) total** | snapheap replayed pages (a)/(b) | (a) open in the closing process |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut json_restart = Vec::new();
    for (c, (_, k)) in clean.iter().zip(&killed) {
        let (p, close, open, rd, rep_a) = (&c.peer, &c.close, &c.open, &c.reads, &c.replayed);
        let ta = *close + *open + *rd;
        let tb = k.open + k.reads;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | **{:.2}** | {} | {:.2} | {:.2} | **{:.2}** | {} | {:.2} |",
            p.name(),
            ms(*close),
            ms(*open),
            ms(*rd),
            ms(ta),
            k.acked,
            ms(k.open),
            ms(k.reads),
            ms(tb),
            match (rep_a, k.replayed_pages) {
                (Some(a), Some(b)) => format!("{a} / {b}"),
                _ => "-".into(),
            },
            ms(c.open_here)
        );
        json_restart.push(serde_json::json!({
            "peer": p.name(),
            "clean_close_ms": ms(*close), "clean_open_ms": ms(*open), "clean_reads_ms": ms(*rd), "clean_total_ms": ms(ta),
            "clean_open_same_process_ms": ms(c.open_here),
            "kill_acked": k.acked, "kill_open_ms": ms(k.open), "kill_reads_ms": ms(k.reads), "kill_total_ms": ms(tb),
            "snapheap_replayed_pages_clean": rep_a, "snapheap_replayed_pages_kill": k.replayed_pages,
        }));
    }
    let restart_total = |p: Peer, which: usize| {
        clean.iter().zip(&killed).find(|(c, _)| c.peer == p).map(|(c, (_, k))| {
            if which == 0 {
                (c.close + c.open + c.reads).as_secs_f64()
            } else {
                (k.open + k.reads).as_secs_f64()
            }
        })
    };
    let mut restart_groups = Vec::new();
    for (which, label) in [
        (0, "restart: clean close+open+reads"),
        (1, "restart: open+reads after SIGKILL"),
    ] {
        let Some(s) = restart_total(Peer::Snapheap, which) else {
            continue;
        };
        let fastest = dbs
            .iter()
            .filter_map(|&p| restart_total(p, which).map(|t| (p, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let mut bars = Vec::new();
        if let Some((fp, ft)) = fastest {
            println!(
                "{label}: fastest db {} {:.2} ms, snapheap {:.2} ms: snapheap time / fastest = **{:.2}x** (target <= 2x)",
                fp.name(),
                ft * 1e3,
                s * 1e3,
                s / ft
            );
            bars.push(("best of redb/SQLite/LMDB".to_string(), ft / s));
        }
        for p in cfg.peers.iter().filter(|p| **p != Peer::Snapheap) {
            if let Some(t) = restart_total(*p, which) {
                bars.push((p.name().to_string(), t / s));
            }
        }
        restart_groups.push(Group {
            label: label.trim_start_matches("restart: ").to_string(),
            bars,
        });
    }
    groups.extend(restart_groups);
    if let Some((m, _)) = floor_ratio {
        groups.push(Group {
            label: "commit vs floor".into(),
            bars: vec![("raw pwrite 4 KiB + fdatasync".into(), 1.0 / m)],
        });
    }

    println!();
    println!(
        "load average: start {load_start}, end {load_end}; wall time {:.0} s",
        total.as_secs_f64()
    );

    // ---------------------------------------------------------------------------------------
    // Files.
    let stamp = date_utc("+%Y%m%dT%H%M%SZ");
    std::fs::create_dir_all(&cfg.out).expect("create results dir");
    let json = serde_json::json!({
        "benchmark": "ycsb",
        "started_utc": started,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "wall_seconds": total.as_secs_f64(),
        "config": {
            "records": cfg.records, "value_bytes": workload::VALUE_LEN, "key": "u64 (fnv64 of record number)",
            "zipf_theta": workload::ZIPF_THETA, "zipf_items": workload::SCRAMBLE_ITEMS,
            "ops_batch": cfg.ops_batch, "ops_each": cfg.ops_each, "ops_read": cfg.ops_read,
            "baseline_max_commits": cfg.baseline_max_commits, "lat_samples": cfg.lat_samples,
            "kill_after": cfg.kill_after, "peers": names,
        },
        "bytes_measure": "wchar and write_bytes of /proc/self/io (process incl. reaped children) per commit; thread_wchar: /proc/thread-self/io of the benchmark thread",
        "rows": json_rows,
        "commit_latency": json_lat,
        "floor": {
            "pwrite_4096_fdatasync": {"samples": floor4k.len(), "median_us": us(quantile(&floor4k, 0.5)), "mean_us": us(mean(&floor4k)), "p99_us": us(quantile(&floor4k, 0.99))},
            "snapheap_bytes_per_one_update_commit": snap_commit_bytes,
            "pwrite_snapheap_bytes_fdatasync": (!floor_snap.is_empty()).then(|| serde_json::json!({"median_us": us(quantile(&floor_snap, 0.5)), "p99_us": us(quantile(&floor_snap, 0.99))})),
            "snapheap_over_floor_median": floor_ratio.map(|r| r.0),
            "snapheap_over_floor_p99": floor_ratio.map(|r| r.1),
        },
        "restart": json_restart,
    });
    let jpath = cfg.out.join(format!("ycsb-{stamp}.json"));
    std::fs::write(&jpath, serde_json::to_string_pretty(&json).expect("json") + "\n").expect("write json");
    let doc = chart::svg(
        "snapheap vs embedded stores: YCSB, every commit durable",
        &[
            "snapheap's advantage (log scale; above 1x snapheap is faster): ops/s ratios, restart time ratios, commit latency vs raw pwrite+fdatasync.",
            &format!(
                "{} records (u64 key, 100-byte value), zipfian 0.99, redb/SQLite WAL FULL/LMDB/bincode file at equal durability. Run {started}.",
                cfg.records
            ),
        ],
        &groups,
    );
    let spath = cfg.out.join(format!("ycsb-{stamp}.svg"));
    std::fs::write(&spath, &doc).expect("write svg");
    std::fs::write(cfg.out.join("ycsb-ratios.svg"), &doc).expect("write svg");
    println!(
        "wrote {} and {} (copied to ycsb-ratios.svg)",
        jpath.display(),
        spath.display()
    );
}

/// Copies the files of `from` (recursively) into `to`, for keeping a killed store.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy directory");
    for e in std::fs::read_dir(from).expect("read store directory") {
        let e = e.expect("read store directory entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("file type").is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy store file");
            // Durable like the original, so that the open's syncs cost what they cost there.
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .expect("sync copied store file");
        }
    }
}
