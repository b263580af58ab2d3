//! Replication benchmark, one run, one local nats-server (R1, loopback):
//!
//! 1. commit latency of small commits, `Immediate` vs `Replicated` (shipper running), same
//!    heap shape, each in its own child process; the phase is cut into four slices that
//!    alternate the two modes (I R I R ...), so that both see the same share of a shared
//!    machine's load, and the percentiles are over all slices of a mode; interleaved with
//!    them (I R P I R P ...), the floor `P`: a raw async-nats JetStream publish of a message
//!    the size of one such commit's frame (same stream type, same headers), awaiting its ack,
//!    one in flight — the replicated log's own round trip; `Replicated` is compared with
//!    `max(Immediate, P)`, what a commit that overlaps its sync and its publish can reach;
//! 2. shipping throughput: 256 KiB commits in `Immediate` as fast as possible, MB/s and
//!    commits/s published whole and acknowledged by the log (a base that replaces groups the
//!    shipper fell too far behind for is counted apart);
//! 3. YCSB-A-like load (50% reads, 50% updates over 100k keys, a commit per 100 operations)
//!    on the primary with a standby following in another process: replication lag.
//!
//! `cargo bench -p snapheap-nats --bench replication` (`BENCH_SECS` sets the phase length,
//! default 5; `BENCH_ONLY=latency` runs phase 1 only).

use snapheap::collections::{HashMap, Vec as PVec};
use snapheap::{Durability, HeapAlloc, OpenOptions, Persist};
use snapheap_nats::testing::{NatsServer, TempDir};
use snapheap_nats::{Follower, NatsConfig, Shipper};
use std::io::{BufRead, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Persist)]
struct Db {
    map: HashMap<u64, u64>,
    blob: PVec<u8>,
}

const KEYS: u64 = 100_000;

fn init(a: HeapAlloc) -> Db {
    let mut map = HashMap::with_capacity_in(KEYS as usize, a);
    for k in 0..KEYS {
        map.insert(k, k);
    }
    let mut blob = PVec::with_capacity_in(4 << 20, a);
    blob.resize(4 << 20, 0);
    Db { map, blob }
}

fn secs() -> f64 {
    std::env::var("BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0)
}

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros()
}

fn cfg(node: &str) -> NatsConfig {
    let mut c = NatsConfig::new(&std::env::var("B_URL").unwrap(), &std::env::var("B_LOG").unwrap(), node);
    c.base_every_bytes = 1 << 30;
    c
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p) as usize]
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn child_latency(replicated: bool) {
    let dir = std::env::var("B_DIR").unwrap();
    let mut o = OpenOptions::new();
    if replicated {
        o.durability(Durability::Replicated {
            timeout: Duration::from_secs(10),
        });
    } else {
        o.durability(Durability::Immediate).replication(true);
    }
    let heap = o.open(&dir, init).unwrap();
    let shipper = replicated.then(|| Shipper::start(heap.replication_source().unwrap(), &cfg("p")).unwrap());
    let mut rng = Rng(7);
    // One untimed commit: on a replicated heap it returns once every group before it (the
    // creation commit's among them) was acknowledged, so `s0` counts only small commits.
    {
        let mut g = heap.write();
        *g.map.get_mut(&(rng.next() % KEYS)).unwrap() += 1;
        g.commit().unwrap();
    }
    let s0 = shipper.as_ref().map(|s| s.status());
    let mut lat = Vec::new();
    let slice: f64 = std::env::var("B_SLICE").unwrap().parse().unwrap();
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < slice {
        let t = Instant::now();
        let mut g = heap.write();
        let k = rng.next() % KEYS;
        *g.map.get_mut(&k).unwrap() += 1;
        g.commit().unwrap();
        drop(g);
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let mut out = std::io::stdout().lock();
    for l in lat {
        writeln!(out, "L {l:.1}").unwrap();
    }
    if let (Some(sh), Some(s0)) = (shipper, s0) {
        // The mean frame size of the timed commits, for the raw publish floor.
        let s = sh.stop();
        if s.frames > s0.frames {
            let frame = (s.bytes - s0.bytes) / (s.frames - s0.frames) + snapheap_nats::frame::HEADER_LEN as u64;
            writeln!(out, "F {frame}").unwrap();
        }
    }
}

/// The floor: raw JetStream publishes of `B_FRAME` bytes, one in flight, each awaited.
fn child_raw_publish() {
    let url = std::env::var("B_URL").unwrap();
    let size: usize = std::env::var("B_FRAME").unwrap().parse().unwrap();
    let slice: f64 = std::env::var("B_SLICE").unwrap().parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lat = rt.block_on(async move {
        use async_nats::jetstream::{self, stream};
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = jetstream::new(client);
        let st = js
            .get_or_create_stream(stream::Config {
                name: "RAWFLOOR".into(),
                subjects: vec!["rawfloor".into()],
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut last = st.cached_info().state.last_sequence;
        let payload = bytes::Bytes::from(vec![0x5au8; size]);
        let mut lat = Vec::new();
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < slice {
            let t = Instant::now();
            let mut h = async_nats::HeaderMap::new();
            h.insert("Nats-Msg-Id", format!("raw-{}-{last}", std::process::id()).as_str());
            h.insert("Nats-Expected-Last-Subject-Sequence", last.to_string().as_str());
            let ack = js
                .publish_with_headers("rawfloor", h, payload.clone())
                .await
                .unwrap()
                .await
                .unwrap();
            last = ack.sequence;
            lat.push(t.elapsed().as_secs_f64() * 1e6);
        }
        lat
    });
    let mut out = std::io::stdout().lock();
    for l in lat {
        writeln!(out, "L {l:.1}").unwrap();
    }
}

/// Runs the latency child of `mode` for `slice` seconds on `dir`; its commit latencies and
/// the mean frame size it reports (`F`, replicated mode).
fn latency_slice(
    mode: &str,
    dir: &std::path::Path,
    url: &str,
    log: &str,
    slice: f64,
    frame: u64,
) -> (Vec<f64>, Option<u64>) {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    let out = c
        .env("B_ROLE", mode)
        .env("B_FRAME", frame.to_string())
        .env("B_DIR", dir)
        .env("B_URL", url)
        .env("B_LOG", log)
        .env("B_SLICE", slice.to_string())
        .stdout(std::process::Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lat = text
        .lines()
        .filter_map(|l| l.strip_prefix("L ").and_then(|v| v.parse().ok()))
        .collect();
    let f = text
        .lines()
        .find_map(|l| l.strip_prefix("F ").and_then(|v| v.parse().ok()));
    (lat, f)
}

fn latency_result(mode: &str, lat: &mut [f64]) -> String {
    let n = lat.len();
    let mean = lat.iter().sum::<f64>() / n as f64;
    format!(
        "RESULT {mode} commits={n} mean_us={mean:.1} p50_us={:.1} p99_us={:.1}",
        pct(lat, 0.5),
        pct(lat, 0.99)
    )
}

fn child_throughput() {
    let dir = std::env::var("B_DIR").unwrap();
    let mut o = OpenOptions::new();
    o.durability(Durability::Immediate).replication(true);
    let heap = o.open(&dir, init).unwrap();
    let shipper = Shipper::start(heap.replication_source().unwrap(), &cfg("p")).unwrap();
    let s0 = shipper.status();
    let t0 = Instant::now();
    let mut last = 0;
    let mut v = 0u8;
    while t0.elapsed().as_secs_f64() < secs() {
        let mut g = heap.write();
        v = v.wrapping_add(1);
        let at = (v as usize * (256 << 10)) % (4 << 20);
        for b in &mut g.blob[at..at + (256 << 10)] {
            *b = b.wrapping_add(v) ^ 0x5a;
        }
        last = g.commit().unwrap();
    }
    // Wait until everything committed was acknowledged, then rate over the whole time.
    while shipper.status().shipped < last {
        std::thread::sleep(Duration::from_millis(5));
    }
    let el = t0.elapsed().as_secs_f64();
    let s = shipper.status();
    // Commits per second counts the groups published whole: when the shipper falls more than
    // the backlog cap behind, a base replaces trimmed groups, which are not shipping.
    println!(
        "RESULT throughput groups={} MB_per_s={:.1} commits_per_s={:.0} frames={} committed={} bases={}",
        s.groups - s0.groups,
        (s.bytes - s0.bytes) as f64 / el / 1e6,
        (s.groups - s0.groups) as f64 / el,
        s.frames - s0.frames,
        s.shipped - s0.shipped,
        s.bases - s0.bases
    );
}

fn child_ycsb_primary() {
    let dir = std::env::var("B_DIR").unwrap();
    let mut o = OpenOptions::new();
    o.durability(Durability::Immediate).replication(true);
    let heap = o.open(&dir, init).unwrap();
    let shipper = Shipper::start(heap.replication_source().unwrap(), &cfg("p")).unwrap();
    println!("READY {}", heap.stats().durable_seq);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let mut rng = Rng(11);
    let t0 = Instant::now();
    let (mut ops, mut sum) = (0u64, 0u64);
    let mut out = std::io::stdout().lock();
    while t0.elapsed().as_secs_f64() < secs() {
        let mut g = heap.write();
        for _ in 0..100 {
            let k = rng.next() % KEYS;
            if rng.next() % 2 == 0 {
                sum = sum.wrapping_add(*g.map.get(&k).unwrap());
            } else {
                *g.map.get_mut(&k).unwrap() = rng.next();
            }
        }
        let seq = g.commit().unwrap();
        drop(g);
        ops += 100;
        writeln!(out, "C {} {seq}", now_us()).unwrap();
    }
    let el = t0.elapsed().as_secs_f64();
    writeln!(
        out,
        "RESULT ycsb ops_per_s={:.0} commits_per_s={:.0} shipped={} ({sum})",
        ops as f64 / el,
        ops as f64 / 100.0 / el,
        shipper.status().shipped
    )
    .unwrap();
    writeln!(out, "END").unwrap();
    out.flush().unwrap();
    std::thread::sleep(Duration::from_secs(2));
}

fn child_standby() {
    let dir = std::env::var("B_DIR").unwrap();
    let f: Follower<Db> = Follower::start(&dir, &OpenOptions::new(), &cfg("s")).unwrap();
    println!("STANDBY");
    let mut out = std::io::stdout().lock();
    let mut last = 0;
    loop {
        let p = f.status().position;
        if p != last {
            writeln!(out, "S {} {p}", now_us()).unwrap();
            out.flush().unwrap();
            last = p;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn spawn(role: &str, dir: &std::path::Path, url: &str, log: &str) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().unwrap())
        .env("B_ROLE", role)
        .env("B_DIR", dir)
        .env("B_URL", url)
        .env("B_LOG", log)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn result_of(c: std::process::Child) -> String {
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("RESULT"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn main() {
    match std::env::var("B_ROLE").as_deref() {
        Ok("immediate") => return child_latency(false),
        Ok("replicated") => return child_latency(true),
        Ok("rawpub") => return child_raw_publish(),
        Ok("throughput") => return child_throughput(),
        Ok("ycsb") => return child_ycsb_primary(),
        Ok("standby") => return child_standby(),
        _ => {}
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let server = NatsServer::start();
    let url = server.url();
    let tmp = TempDir::new("bench");
    println!("nats-server on {url}, phases of {} s", secs());
    let (mut li, mut lr, mut lp) = (Vec::new(), Vec::new(), Vec::new());
    let mut frame = 0;
    for _ in 0..4 {
        let slice = secs() / 4.0;
        li.extend(latency_slice("immediate", &tmp.path().join("i"), &url, "bi", slice, 0).0);
        let (l, f) = latency_slice("replicated", &tmp.path().join("r"), &url, "br", slice, 0);
        lr.extend(l);
        frame = f.unwrap_or(frame);
        lp.extend(latency_slice("rawpub", &tmp.path().join("p"), &url, "bp", slice, frame).0);
    }
    let i = latency_result("immediate", &mut li);
    let r = latency_result("replicated", &mut lr);
    let p = latency_result(&format!("raw_publish frame_bytes={frame}"), &mut lp);
    println!("{i}\n{r}\n{p}");
    let field = |s: &str, k: &str| -> f64 {
        s.split(' ')
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    println!(
        "replicated/immediate: mean {:.2}x, p50 {:.2}x",
        field(&r, "mean_us=") / field(&i, "mean_us="),
        field(&r, "p50_us=") / field(&i, "p50_us=")
    );
    println!(
        "replicated/max(immediate, raw publish): mean {:.2}x, p50 {:.2}x",
        field(&r, "mean_us=") / field(&i, "mean_us=").max(field(&p, "mean_us=")),
        field(&r, "p50_us=") / field(&i, "p50_us=").max(field(&p, "p50_us="))
    );
    if std::env::var("BENCH_ONLY").as_deref() == Ok("latency") {
        return;
    }
    println!("{}", result_of(spawn("throughput", &tmp.path().join("t"), &url, "bt")));
    // YCSB-A with a standby.
    let mut p = spawn("ycsb", &tmp.path().join("y"), &url, "by");
    let mut pout = std::io::BufReader::new(p.stdout.take().unwrap());
    let mut l = String::new();
    pout.read_line(&mut l).unwrap();
    let mut s = spawn("standby", &tmp.path().join("ys"), &url, "by");
    let sout = std::io::BufReader::new(s.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<(u128, u64)>();
    std::thread::spawn(move || {
        for l in sout.lines() {
            let Ok(l) = l else { break };
            let w: Vec<&str> = l.split(' ').collect();
            if w[0] == "S" {
                let _ = tx.send((w[1].parse().unwrap(), w[2].parse().unwrap()));
            }
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    writeln!(p.stdin.as_mut().unwrap(), "GO").unwrap();
    let mut commits: Vec<(u128, u64)> = Vec::new();
    let mut res = String::new();
    for l in pout.lines() {
        let l = l.unwrap();
        if l.starts_with("C ") {
            let w: Vec<&str> = l.split(' ').collect();
            commits.push((w[1].parse().unwrap(), w[2].parse().unwrap()));
        } else if l.starts_with("RESULT") {
            res = l;
        } else if l == "END" {
            break;
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = p.kill();
    let _ = p.wait();
    let _ = s.kill();
    let _ = s.wait();
    let applied: Vec<(u128, u64)> = rx.try_iter().collect();
    // For each commit, the time until the standby's position reached it.
    let mut lags = Vec::new();
    let mut j = 0;
    for (t, seq) in &commits {
        while j < applied.len() && applied[j].1 < *seq {
            j += 1;
        }
        if j == applied.len() {
            break;
        }
        lags.push(applied[j].0.saturating_sub(*t) as f64 / 1000.0);
    }
    println!("{res}");
    let reached = lags.len();
    println!(
        "standby lag (commit on primary -> applied on standby): commits {} reached {reached}, \
         p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        commits.len(),
        pct(&mut lags, 0.5),
        pct(&mut lags, 0.99),
        pct(&mut lags, 1.0)
    );
}
