//! A replication node as a child process (this test binary again, in the `node` role), and
//! the parent's handle on it.
//!
//! A replica maps the heap at the primary's fixed address, so a primary and a standby never
//! share a process: every node is a child. The child reads commands on stdin, one per line,
//! and answers on stdout:
//!
//! | command | primary | standby |
//! |---|---|---|
//! | `COMMIT k` | k commits, then `DONE <value> <seq>` (`ERR <e>` on a failed commit) | |
//! | `RUN` | commits until the next command, `ACK <value>` after each | |
//! | `STALL k` | `STALLING k`; the shipper stops after k frames of the next group of more (`Shipper::stall_mid_group`), then `STALLED <seq> <k>` | |
//! | `SUM` | `SUM <seq> <checksum> <len>` | the same for the replica |
//! | `AT n` | | `AT <pos>` once at n, or `TIMEOUT <pos>` |
//! | `STATUS` | `STATUS ...` (shipper) | `STATUS pos=.. reb=.. why=..` |
//! | `PROMOTE` | | `PROMOTED <seq> <epoch> <micros> <len> <prefix ok> <phase=micros,..>`, then primary; or `LOST <e>` and following again |
//! | `EXIT` | exits | exits |
//!
//! With `N_EVENTS` set a node also prints `EVENT <what>` for each promotion event
//! (`NatsConfig::events`); `N_STALE_MS` sets `stale_promotion_after`, `N_AFTER_CAS` =
//! `die` / `hold` / `hold_ms:<ms>` sets `after_cas`, `N_PROMOTE_PAUSE_MS` `promote_pause`.
//!
//! A primary answers `PRIMARY <len> <epoch>` once shipping, or `NOSHIP <error>` (and exits)
//! when its shipper refuses to start. With `N_PRECOMMIT=k` it first makes k commits without
//! a shipper (`Immediate`, replication on) and closes the heap, before the normal start.
//!
//! Commit number v appends v to `log` (so the log of every node must be exactly `1..=len`:
//! a prefix of all commits) and, for even v, rewrites 64 KiB of `blob` (with small frames a
//! multi-frame group). The bytes written depend on the node's name and `N_VARIANT`, so
//! different nodes (or variants) write different histories.
#![allow(dead_code)]

use snapheap::collections::Vec as PVec;
use snapheap::{Durability, Heap, HeapAlloc, OpenOptions, Persist};
use snapheap_nats::config::AfterCas;
use snapheap_nats::testing::{NatsServer, TempDir};
use snapheap_nats::{frame, Follower, NatsConfig, Shipper};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const ROLE: &str = "SNAPHEAP_NATS_ROLE";
/// How long the parent waits for any one answer of a node.
pub const T: Duration = Duration::from_secs(60);
const BLOB: usize = 1 << 20;
const CHANGE: usize = 64 << 10;

#[derive(Persist)]
pub struct State {
    pub log: PVec<u64>,
    pub blob: PVec<u8>,
}

fn init(a: HeapAlloc) -> State {
    let mut blob = PVec::with_capacity_in(BLOB, a);
    blob.resize(BLOB, 0);
    State {
        log: PVec::new_in(a),
        blob,
    }
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("child needs {k}"))
}

fn cfg_from_env() -> NatsConfig {
    let mut c = NatsConfig::new(&env("N_URL"), &env("N_LOG"), &env("N_NODE"));
    c.replicas = env("N_REPLICAS").parse().unwrap();
    c.frame_payload = env("N_FRAME").parse().unwrap();
    c.base_every_bytes = env("N_BASE_EVERY").parse().unwrap();
    c.request_timeout = Duration::from_secs(3);
    c.max_backoff = Duration::from_millis(200);
    if let Ok(ms) = std::env::var("N_PROMOTE_PAUSE_MS") {
        c.promote_pause = Duration::from_millis(ms.parse().unwrap());
    }
    if let Ok(ms) = std::env::var("N_STALE_MS") {
        c.stale_promotion_after = Duration::from_millis(ms.parse().unwrap());
    }
    match std::env::var("N_AFTER_CAS").as_deref() {
        Ok("die") => c.after_cas = AfterCas::Die,
        Ok("hold") => c.after_cas = AfterCas::HoldUntilNewerRecord,
        Ok(v) if v.starts_with("hold_ms:") => {
            c.after_cas = AfterCas::HoldFor(Duration::from_millis(v["hold_ms:".len()..].parse().unwrap()))
        }
        _ => {}
    }
    if std::env::var("N_EVENTS").is_ok() {
        // Promotion events as `EVENT <what>` lines (the test waits for them to order nodes).
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for e in rx {
                say(format!("EVENT {e}"));
            }
        });
        c.events = Some(tx);
    }
    c
}

fn heap_opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    let snap = std::env::var("N_SNAP")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4 << 20);
    o.snapshot_after_journal_bytes(snap).max_size(1 << 30);
    if std::env::var("N_DUR").as_deref() == Ok("immediate") {
        o.durability(Durability::Immediate).replication(true);
    } else {
        o.durability(Durability::Replicated {
            timeout: Duration::from_secs(10),
        });
    }
    o
}

fn replica_opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.snapshot_after_journal_bytes(4 << 20);
    o
}

fn say(s: String) {
    let mut out = std::io::stdout().lock();
    // Each answer on its own line behind a marker: the test harness prints its own text
    // without a newline before the test body runs.
    let _ = writeln!(out, "\n@@ {s}");
    let _ = out.flush();
}

fn is_prefix(log: &[u64]) -> bool {
    log.iter().enumerate().all(|(i, v)| *v == i as u64 + 1)
}

/// One commit; returns the value committed and the commit seq.
fn commit_one(h: &Heap<State>) -> snapheap::Result<(u64, u64)> {
    let mut g = h.write();
    let v = g.log.len() as u64 + 1;
    g.log.push(v);
    if v % 2 == 0 {
        let at = (v as usize * 4096 * 7) % (BLOB - CHANGE);
        for i in 0..CHANGE {
            g.blob[at + i] = (v as u8).wrapping_mul(13).wrapping_add(i as u8) ^ node_byte();
        }
    }
    let seq = g.commit()?;
    Ok((v, seq))
}

/// Nodes write different blob bytes for the same commit number, so histories written by
/// different primaries differ.
fn node_byte() -> u8 {
    let variant: u8 = std::env::var("N_VARIANT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::env::var("N_NODE")
        .map(|n| n.bytes().fold(0u8, |a, b| a.wrapping_mul(31) ^ b))
        .unwrap_or(0)
        ^ variant.wrapping_mul(0x5b)
}

fn stdin_lines() -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::stdin().lock().lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn run_primary(heap: Heap<State>, rx: &Receiver<String>) {
    // The seq of the last commit made here.
    let mut last_seq = heap.stats().durable_seq;
    let cfg = cfg_from_env();
    let shipper = match Shipper::start(heap.replication_source().unwrap(), &cfg) {
        Ok(s) => std::sync::Arc::new(s),
        Err(e) => {
            say(format!("NOSHIP {e}"));
            std::process::exit(3);
        }
    };
    say(format!("PRIMARY {} {}", heap.read().log.len(), shipper.status().epoch));
    let mut pending: Option<String> = None;
    loop {
        let cmd = match pending.take() {
            Some(c) => c,
            None => match rx.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        let w: Vec<&str> = cmd.split(' ').collect();
        match w[0] {
            "COMMIT" => {
                let k: u64 = w[1].parse().unwrap();
                let mut last = Ok((0, 0));
                for _ in 0..k {
                    last = commit_one(&heap);
                    if last.is_err() {
                        break;
                    }
                }
                match last {
                    Ok((v, seq)) => {
                        last_seq = seq;
                        say(format!("DONE {v} {seq}"))
                    }
                    Err(e) => say(format!("ERR {e}")),
                }
            }
            "RUN" => loop {
                match rx.try_recv() {
                    Ok(c) => {
                        pending = Some(c);
                        break;
                    }
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return,
                    Err(_) => {}
                }
                match commit_one(&heap) {
                    Ok((v, seq)) => {
                        last_seq = seq;
                        say(format!("ACK {v}"))
                    }
                    Err(e) => {
                        say(format!("ERR {e}"));
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            },
            "SUM" => {
                let len = heap.read().log.len();
                let ok = is_prefix(&heap.read().log);
                let seq = last_seq.max(heap.stats().durable_seq);
                say(format!("SUM {seq} {} {len} {ok}", heap.content_checksum().unwrap()));
            }
            "STATUS" => say(format!("STATUS {:?}", shipper.status())),
            "STALL" => {
                let k: u32 = w[1].parse().unwrap();
                shipper.stall_mid_group(k);
                say(format!("STALLING {k}"));
                let s = shipper.clone();
                std::thread::spawn(move || loop {
                    if let Some((seq, k)) = s.status().stalled {
                        return say(format!("STALLED {seq} {k}"));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                });
            }
            "EXIT" => {
                drop(shipper);
                drop(heap);
                std::process::exit(0);
            }
            other => say(format!("UNKNOWN {other}")),
        }
    }
}

/// The body of the `node` role.
pub fn node_main() {
    let rx = stdin_lines();
    let dir = env("N_DIR");
    if env("N_MODE") == "primary" {
        if let Ok(k) = std::env::var("N_PRECOMMIT") {
            let mut o = heap_opts();
            o.durability(Durability::Immediate).replication(true);
            let heap = o.open(&dir, init).unwrap();
            for _ in 0..k.parse::<u64>().unwrap() {
                commit_one(&heap).unwrap();
            }
            heap.close().unwrap();
        }
        let heap = heap_opts().open(&dir, init).unwrap();
        run_primary(heap, &rx);
        return;
    }
    let cfg = cfg_from_env();
    let mut f: Follower<State> = Follower::start(&dir, &replica_opts(), &cfg).unwrap();
    say(format!("STANDBY {}", f.status().position));
    loop {
        let Ok(cmd) = rx.recv() else { return };
        let w: Vec<&str> = cmd.split(' ').collect();
        match w[0] {
            "AT" => {
                let n: u64 = w[1].parse().unwrap();
                let ok = f.wait_for(n, Duration::from_secs(30));
                let p = f.status().position;
                if ok {
                    say(format!("AT {p}"));
                } else {
                    say(format!("TIMEOUT {p} {:?}", f.status()));
                }
            }
            "SUM" => {
                let r = f.replica().unwrap();
                let g = r.read().unwrap();
                let len = g.log.len();
                let ok = is_prefix(&g.log);
                drop(g);
                say(format!(
                    "SUM {} {} {len} {ok}",
                    r.position(),
                    r.content_checksum().unwrap()
                ));
            }
            "STATUS" => {
                let s = f.status();
                say(format!(
                    "STATUS pos={} reb={} why={:?} err={:?}",
                    s.position, s.rebootstraps, s.last_rebootstrap, s.last_error
                ));
            }
            "PROMOTE" => match f.promote(&heap_opts()) {
                Ok(p) => {
                    let len = p.heap.read().log.len();
                    let ok = is_prefix(&p.heap.read().log);
                    let phases: Vec<String> = p.phases.iter().map(|(k, d)| format!("{k}={}", d.as_micros())).collect();
                    say(format!(
                        "PROMOTED {} {} {} {len} {ok} {}",
                        p.seq,
                        p.epoch,
                        p.took.as_micros(),
                        phases.join(",")
                    ));
                    run_primary(p.heap, &rx);
                    return;
                }
                Err(e) => {
                    say(format!("LOST {e}"));
                    f = Follower::start(&dir, &replica_opts(), &cfg).unwrap();
                    say(format!("STANDBY {}", f.status().position));
                }
            },
            "EXIT" => {
                drop(f);
                std::process::exit(0);
            }
            other => say(format!("UNKNOWN {other}")),
        }
    }
}

/// Settings every node of one test shares, and how the test starts its nodes: each node is
/// the test binary again running `test` in the `node` role (the test must call [`node_main`]
/// first thing when [`is_node`]).
#[derive(Clone)]
pub struct Net {
    /// The test function every child runs.
    pub test: &'static str,
    pub url: String,
    pub log: String,
    pub replicas: usize,
    pub frame: usize,
    pub base_every: u64,
    pub durability: &'static str,
    /// The primary's `snapshot_after_journal_bytes`.
    pub snap: u64,
}

/// True in a child started by [`Net::spawn`].
pub fn is_node() -> bool {
    std::env::var(ROLE).as_deref() == Ok("node")
}

/// A node's heap directory inside its temporary directory.
pub fn heap_dir(t: &TempDir) -> PathBuf {
    t.path().join("heap")
}

impl Net {
    /// The defaults of the tests: `Replicated` commits, 8 KiB frames (the even commits'
    /// 64 KiB groups take about nine), a base every 8 MiB, 4 MiB snapshots.
    /// A single nats-server of its own (stopped when the returned handle drops) and a log
    /// `log` of one replica on it, for `test`.
    pub fn with_server(test: &'static str, log: &str) -> (NatsServer, Net) {
        let server = NatsServer::start();
        let net = Net::new(test, server.url(), log, 1);
        (server, net)
    }

    pub fn new(test: &'static str, url: String, log: &str, replicas: usize) -> Net {
        Net {
            test,
            url,
            log: log.to_string(),
            replicas,
            frame: 8 << 10,
            base_every: 8 << 20,
            durability: "replicated",
            snap: 4 << 20,
        }
    }

    /// Starts node `name` (`mode` "primary" or "standby") on `dir`, with extra environment
    /// `env`, without waiting for it.
    pub fn spawn_with(&self, name: &str, mode: &str, dir: &Path, env: &[(&str, &str)]) -> Node {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args(["--exact", self.test, "--nocapture", "--test-threads=1"])
            .env(ROLE, "node")
            .env("N_URL", &self.url)
            .env("N_LOG", &self.log)
            .env("N_NODE", name)
            .env("N_MODE", mode)
            .env("N_DIR", dir)
            .env("N_REPLICAS", self.replicas.to_string())
            .env("N_FRAME", self.frame.to_string())
            .env("N_BASE_EVERY", self.base_every.to_string())
            .env("N_DUR", self.durability)
            .env("N_SNAP", self.snap.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in std::io::BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                let Some(at) = l.find("@@ ") else { continue };
                if tx.send(l[at + 3..].to_string()).is_err() {
                    break;
                }
            }
        });
        Node {
            name: name.to_string(),
            child,
            stdin,
            rx,
            seen: Vec::new(),
        }
    }

    /// [`Net::spawn_with`] without extra environment.
    pub fn spawn(&self, name: &str, mode: &str, dir: &Path) -> Node {
        self.spawn_with(name, mode, dir, &[])
    }

    /// Starts node `name` as the primary on `dir` and waits until it ships (`PRIMARY`).
    pub fn primary(&self, name: &str, dir: &Path) -> Node {
        let mut p = self.spawn(name, "primary", dir);
        p.expect(&["PRIMARY"], T);
        p
    }

    /// Starts node `name` as a standby on `dir` and waits until it follows; returns it and
    /// the position it started at.
    pub fn standby(&self, name: &str, dir: &Path) -> (Node, u64) {
        let mut s = self.spawn(name, "standby", dir);
        let w = s.expect(&["STANDBY"], T);
        let pos = w.split(' ').nth(1).and_then(|p| p.parse().ok()).unwrap();
        (s, pos)
    }
}

/// Waits until `standby` has applied everything `primary` committed and asserts that both
/// hold the same content (`SUM`: seq, checksum, log length, prefix).
pub fn assert_same_content(primary: &mut Node, standby: &mut Node, what: &str) {
    let s = primary.ask("SUM", &["SUM"], T);
    standby.ask(&format!("AT {}", s[1]), &["AT"], T);
    let r = standby.ask("SUM", &["SUM"], T);
    assert_eq!(s[1..], r[1..], "{what}: primary {s:?} standby {r:?}");
}

/// The parent's handle on a node process.
pub struct Node {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<String>,
    /// Every line seen so far (the last 200).
    pub seen: Vec<String>,
}

impl Node {
    pub fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// The next line starting with one of `prefixes` (other lines are kept in `seen`).
    pub fn expect(&mut self, prefixes: &[&str], limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            let left = limit.saturating_sub(t0.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(l) => {
                    let hit = prefixes.iter().any(|p| l.starts_with(p));
                    self.seen.push(l.clone());
                    if self.seen.len() > 200 {
                        self.seen.remove(0);
                    }
                    if hit {
                        return l;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "node {}: no {prefixes:?} within {limit:?}; last lines: {:?}",
                    self.name,
                    &self.seen[self.seen.len().saturating_sub(10)..]
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "node {} exited before {prefixes:?}; last lines: {:?}",
                    self.name,
                    &self.seen[self.seen.len().saturating_sub(10)..]
                ),
            }
        }
    }

    /// Sends `cmd` and returns the answer's fields.
    pub fn ask(&mut self, cmd: &str, prefixes: &[&str], limit: Duration) -> Vec<String> {
        self.send(cmd);
        self.expect(prefixes, limit).split(' ').map(str::to_string).collect()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Lines received so far without waiting, e.g. the ACKs printed during RUN.
    pub fn drain(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.rx.try_recv() {
            v.push(l);
        }
        v
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The largest value in the `ACK v` lines.
pub fn max_ack(lines: &[String]) -> u64 {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ACK "))
        .filter_map(|v| v.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The test's own view of a log: reads frames and deletes messages (one connection).
pub struct LogReader {
    rt: tokio::runtime::Runtime,
    conn: snapheap_nats::transport::Conn,
}

impl LogReader {
    pub fn new(net: &Net) -> LogReader {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let conn = rt
            .block_on(snapheap_nats::transport::Conn::open(&NatsConfig::new(
                &net.url, &net.log, "reader",
            )))
            .unwrap();
        LogReader { rt, conn }
    }

    /// The header of the log's last message (None: empty).
    pub fn tail(&self) -> Option<(u64, frame::Header)> {
        let t = self.rt.block_on(self.conn.tail()).unwrap();
        t.map(|(s, p)| (s, frame::decode(&p).unwrap().header))
    }

    /// The leader key: (epoch, node); None when never set.
    pub fn leader(&self) -> Option<(u64, String)> {
        self.rt
            .block_on(self.conn.leader())
            .unwrap()
            .map(|(l, _)| (l.epoch, l.node))
    }

    /// Polls the tail until `pred` holds for it (panics after [`T`]).
    pub fn wait_tail(&self, what: &str, pred: impl Fn(&frame::Header) -> bool) -> (u64, frame::Header) {
        let t0 = Instant::now();
        loop {
            if let Some(t) = self.tail().filter(|(_, h)| pred(h)) {
                return t;
            }
            assert!(
                t0.elapsed() < T,
                "the log's tail never became {what}: {:?}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Every frame of the log in stream order: (stream seq, header).
    pub fn frames(&self) -> Vec<(u64, frame::Header)> {
        self.rt.block_on(async {
            let Some((last, _)) = self.conn.tail().await.unwrap() else {
                return Vec::new();
            };
            let (first, _) = self.conn.bounds().await.unwrap();
            let mut m = self.conn.messages_from(first).await.unwrap();
            let mut out = Vec::new();
            loop {
                let (s, p) = snapheap_nats::transport::next_message(&mut m).await.unwrap();
                out.push((s, frame::decode(&p).unwrap().header));
                if s >= last {
                    return out;
                }
            }
        })
    }

    /// Deletes every message after stream sequence `cut` (a server that lost its tail).
    pub fn delete_after(&self, cut: u64) {
        self.rt.block_on(async {
            let (_, last) = self.conn.bounds().await.unwrap();
            for s in cut + 1..=last {
                self.conn.delete_message(s).await.unwrap();
            }
        });
    }
}

/// True for a data frame that is not the last of its group.
pub fn mid_group(h: &frame::Header) -> bool {
    h.kind == frame::Kind::Data && h.index + 1 < h.count
}

/// Copies a heap directory (files only, as a disk would hold them).
pub fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
