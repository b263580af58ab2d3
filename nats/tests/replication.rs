//! Replication end to end with real nats-server processes: every node is a child process
//! (see `common`), the test is the operator that kills and promotes.
//!
//! `SNAPHEAP_NATS_ROUNDS` sets the failover and standby-kill rounds (default 100).

mod common;

use common::*;
use snapheap_nats::frame::{self, Kind};
use snapheap_nats::testing::{NatsCluster, NatsServer, TempDir};
use snapheap_nats::transport::{next_message, Conn};
use snapheap_nats::NatsConfig;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(60);

fn is_node() -> bool {
    std::env::var(ROLE).as_deref() == Ok("node")
}

fn rounds() -> u64 {
    std::env::var("SNAPHEAP_NATS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

fn net(url: String, log: &str, replicas: usize) -> Net {
    Net {
        url,
        log: log.to_string(),
        replicas,
        frame: 8 << 10,
        base_every: 8 << 20,
        durability: "replicated",
        snap: 4 << 20,
    }
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Every frame of the log in stream order: (stream seq, header).
fn read_log(url: &str, log: &str) -> Vec<(u64, frame::Header)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Conn::open(&NatsConfig::new(url, log, "reader")).await.unwrap();
        let Some((last, _)) = c.tail().await.unwrap() else {
            return Vec::new();
        };
        let (first, _) = c.bounds().await.unwrap();
        let mut m = c.messages_from(first).await.unwrap();
        let mut out = Vec::new();
        loop {
            let (s, p) = next_message(&mut m).await.unwrap();
            out.push((s, frame::decode(&p).unwrap().header));
            if s >= last {
                return out;
            }
        }
    })
}

#[test]
fn failover_rounds_keep_every_acknowledged_commit() {
    if is_node() {
        return node_main();
    }
    let cluster = NatsCluster::start();
    let n = net(cluster.urls(), "fo", 3);
    let dirs = [TempDir::new("node-a"), TempDir::new("node-b")];
    let names = ["a", "b"];
    let heap = |i: usize| dirs[i].path().join("heap");
    let test = "failover_rounds_keep_every_acknowledged_commit";
    let mut primary = Node::start(test, &n, names[0], "primary", &heap(0));
    primary.expect(&["PRIMARY"], T);
    primary.ask("COMMIT 3", &["DONE"], T);
    let mut standby = Node::start(test, &n, names[1], "standby", &heap(1));
    standby.expect(&["STANDBY"], T);
    let (mut p, mut seed) = (0usize, 0x9e37_79b9_7f4a_7c15u64);
    let mut took = Vec::new();
    let mut mid_group = 0;
    for round in 0..rounds() {
        primary.send("RUN");
        // Let it commit a while (a random number of acknowledged commits), then SIGKILL.
        let want = 2 + rng(&mut seed) % 12;
        let mut acked = 0;
        while acked < want {
            let l = primary.expect(&["ACK", "ERR"], T);
            assert!(l.starts_with("ACK"), "round {round}: primary failed: {l}");
            acked += 1;
        }
        std::thread::sleep(Duration::from_micros(rng(&mut seed) % 3000));
        primary.kill();
        let lines = primary.drain();
        let max_acked = max_ack(&primary.seen).max(max_ack(&lines));
        let tail = read_log(&n.url, &n.log).last().map(|x| x.1);
        if let Some(h) = tail {
            if h.kind == Kind::Data && h.index + 1 < h.count {
                mid_group += 1;
            }
        }
        let w = standby.ask("PROMOTE", &["PROMOTED", "LOST"], T);
        assert_eq!(w[0], "PROMOTED", "round {round}: {w:?}");
        let len: u64 = w[4].parse().unwrap();
        assert_eq!(w[5], "true", "round {round}: the promoted log is not 1..=len");
        assert!(
            len >= max_acked,
            "round {round}: acknowledged commit {max_acked} lost (promoted heap holds {len})"
        );
        took.push(w[3].parse::<u64>().unwrap());
        standby.expect(&["PRIMARY"], T);
        // The promoted standby is the new primary; the killed node comes back as a standby,
        // bootstrapped afresh (its directory holds a history the log may not have).
        std::mem::swap(&mut primary, &mut standby);
        p = 1 - p;
        let dead = 1 - p;
        drop(standby);
        std::fs::remove_dir_all(heap(dead)).unwrap();
        standby = Node::start(test, &n, names[dead], "standby", &heap(dead));
        standby.expect(&["STANDBY"], T);
        primary.ask("COMMIT 1", &["DONE"], T);
    }
    // The last standby catches up and holds exactly the primary's content.
    let s = primary.ask("SUM", &["SUM"], T);
    standby.ask(&format!("AT {}", s[1]), &["AT"], T);
    let r = standby.ask("SUM", &["SUM"], T);
    assert_eq!(s[1..], r[1..], "primary {s:?} standby {r:?}");
    took.sort_unstable();
    println!(
        "failover: {} rounds, {mid_group} killed mid multi-frame group; kill-to-writable \
         (promote) p50 {} us, p99 {} us, max {} us",
        took.len(),
        took[took.len() / 2],
        took[took.len() * 99 / 100],
        took[took.len() - 1]
    );
}

#[test]
fn standby_killed_during_apply_resumes_with_the_primarys_content() {
    if is_node() {
        return node_main();
    }
    let server = NatsServer::start();
    let n = net(server.url(), "sk", 1);
    let (pd, sd) = (TempDir::new("p"), TempDir::new("s"));
    let test = "standby_killed_during_apply_resumes_with_the_primarys_content";
    let mut primary = Node::start(test, &n, "p", "primary", &pd.path().join("heap"));
    primary.expect(&["PRIMARY"], T);
    let mut seed = 0x1234_5678u64;
    let mut standby = Node::start(test, &n, "s", "standby", &sd.path().join("heap"));
    standby.expect(&["STANDBY"], T);
    let mut resumed_at = Vec::new();
    for round in 0..rounds() {
        primary.ask(&format!("COMMIT {}", 1 + rng(&mut seed) % 8), &["DONE"], T);
        std::thread::sleep(Duration::from_micros(rng(&mut seed) % 4000));
        standby.kill();
        standby = Node::start(test, &n, "s", "standby", &sd.path().join("heap"));
        let w = standby.expect(&["STANDBY"], T);
        resumed_at.push(w.split(' ').nth(1).unwrap().parse::<u64>().unwrap());
        if round % 10 == 9 {
            let s = primary.ask("SUM", &["SUM"], T);
            standby.ask(&format!("AT {}", s[1]), &["AT"], T);
            let r = standby.ask("SUM", &["SUM"], T);
            assert_eq!(s[1..], r[1..], "round {round}: primary {s:?} standby {r:?}");
        }
    }
    let s = primary.ask("SUM", &["SUM"], T);
    standby.ask(&format!("AT {}", s[1]), &["AT"], T);
    let r = standby.ask("SUM", &["SUM"], T);
    assert_eq!(s[1..], r[1..], "primary {s:?} standby {r:?}");
    let st = standby.ask("STATUS", &["STATUS"], T);
    assert!(st.contains(&"reb=0".to_string()), "a restart re-bootstrapped: {st:?}");
    println!(
        "standby kills: {} rounds; resumed at positions {:?}..",
        resumed_at.len(),
        &resumed_at[..resumed_at.len().min(10)]
    );
}

#[test]
fn nats_killed_while_shipping_resumes_without_duplicate_or_hole() {
    if is_node() {
        return node_main();
    }
    let mut server = NatsServer::start();
    let mut n = net(server.url(), "nk", 1);
    n.durability = "immediate";
    let pd = TempDir::new("p");
    let test = "nats_killed_while_shipping_resumes_without_duplicate_or_hole";
    let mut primary = Node::start(test, &n, "p", "primary", &pd.path().join("heap"));
    primary.expect(&["PRIMARY"], T);
    for _ in 0..3 {
        primary.send("RUN");
        for _ in 0..20 {
            primary.expect(&["ACK"], T);
        }
        server.kill();
        // Immediate commits keep working while NATS is down.
        let t0 = Instant::now();
        let mut during = 0;
        while t0.elapsed() < Duration::from_millis(700) {
            let l = primary.expect(&["ACK", "ERR"], T);
            assert!(l.starts_with("ACK"), "commit failed with NATS down: {l}");
            during += 1;
        }
        assert!(during > 5, "only {during} commits while NATS was down");
        server.restart();
        primary.ask("COMMIT 5", &["DONE"], T);
    }
    let d = primary.ask("COMMIT 1", &["DONE"], T);
    let last: u64 = d[1].parse().unwrap();
    // Wait for the shipper to catch up, then read the whole log.
    let t0 = Instant::now();
    let frames = loop {
        let f = read_log(&n.url, &n.log);
        let done = f
            .iter()
            .any(|(_, h)| h.kind == Kind::Data && h.index + 1 == h.count && h.seq >= last);
        if done {
            break f;
        }
        assert!(t0.elapsed() < T, "shipper did not catch up to {last}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Every (seq, index) exactly once, in order, seqs consecutive: no duplicate, no hole.
    let mut expect: Option<(u64, u32)> = None;
    for (s, h) in &frames {
        assert_eq!(h.kind, Kind::Data, "stream seq {s}");
        if let Some((seq, idx)) = expect {
            assert_eq!((h.seq, h.index), (seq, idx), "stream seq {s}: {h:?}");
        }
        expect = Some(if h.index + 1 == h.count {
            (h.seq + 1, 0)
        } else {
            (h.seq, h.index + 1)
        });
    }
    println!("nats kills: 3, {} frames checked", frames.len());
}

/// A standby stopped at some position while the primary ships several bases (each purges
/// the stream below the base before it) finds a gap when it comes back, re-bootstraps and
/// ends with the primary's content.
#[test]
fn gap_after_purge_is_detected_and_rebootstrap_succeeds() {
    if is_node() {
        return node_main();
    }
    let server = NatsServer::start();
    let mut n = net(server.url(), "gap", 1);
    n.base_every = 512 << 10;
    n.snap = 256 << 10;
    let (pd, sd) = (TempDir::new("p"), TempDir::new("s"));
    let test = "gap_after_purge_is_detected_and_rebootstrap_succeeds";
    let mut primary = Node::start(test, &n, "p", "primary", &pd.path().join("heap"));
    primary.expect(&["PRIMARY"], T);
    let d = primary.ask("COMMIT 10", &["DONE"], T);
    let at: u64 = d[2].parse().unwrap();
    let mut standby = Node::start(test, &n, "s", "standby", &sd.path().join("heap"));
    standby.expect(&["STANDBY"], T);
    standby.ask(&format!("AT {at}"), &["AT"], T);
    standby.send("EXIT");
    drop(standby);
    let d80 = primary.ask("COMMIT 80", &["DONE"], T);
    eprintln!("after COMMIT 10: {d:?}, after COMMIT 80: {d80:?}");
    let first = read_log(&n.url, &n.log)
        .iter()
        .find(|(_, h)| h.kind == Kind::Data && h.index == 0)
        .map(|(_, h)| h.seq)
        .unwrap();
    assert!(
        first > at + 1,
        "the stream was not purged past the standby (first group {first})"
    );
    let mut standby = Node::start(test, &n, "s", "standby", &sd.path().join("heap"));
    let w = standby.expect(&["STANDBY"], T);
    assert_eq!(w, format!("STANDBY {at}"));
    let s = primary.ask("SUM", &["SUM"], T);
    standby.ask(&format!("AT {}", s[1]), &["AT"], T);
    let r = standby.ask("SUM", &["SUM"], T);
    assert_eq!(s[1..], r[1..], "primary {s:?} standby {r:?}");
    let st = standby.ask("STATUS", &["STATUS"], T).join(" ");
    assert!(st.contains("reb=1") && st.contains("gap"), "{st}");
    println!("gap: first group in the stream {first}; standby: {st}");
}

/// The log loses its last groups (what a 2.9.10 server that acknowledged without fsync can do
/// on power loss); a standby that had applied them is ahead of the promoted one's history:
/// the epoch record shows the divergence, the standby re-bootstraps and ends equal to the new
/// primary, which committed different content at the same seqs.
#[test]
fn divergence_after_a_new_epoch_is_detected_and_rebootstrap_succeeds() {
    if is_node() {
        return node_main();
    }
    let server = NatsServer::start();
    let n = net(server.url(), "dv", 1);
    let (ad, bd, cd) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
    let test = "divergence_after_a_new_epoch_is_detected_and_rebootstrap_succeeds";
    let mut a = Node::start(test, &n, "a", "primary", &ad.path().join("heap"));
    a.expect(&["PRIMARY"], T);
    let d = a.ask("COMMIT 20", &["DONE"], T);
    let s20: u64 = d[2].parse().unwrap();
    let mut b = Node::start(test, &n, "b", "standby", &bd.path().join("heap"));
    b.expect(&["STANDBY"], T);
    b.ask(&format!("AT {s20}"), &["AT"], T);
    b.send("EXIT");
    drop(b);
    let d = a.ask("COMMIT 10", &["DONE"], T);
    let mut c = Node::start(test, &n, "c", "standby", &cd.path().join("heap"));
    c.expect(&["STANDBY"], T);
    c.ask(&format!("AT {}", d[2]), &["AT"], T);
    a.kill();
    // Lose every message after group 20.
    let frames = read_log(&n.url, &n.log);
    let cut = frames
        .iter()
        .find(|(_, h)| h.kind == Kind::Data && h.seq == s20 && h.index + 1 == h.count)
        .map(|(s, _)| *s)
        .unwrap();
    delete_after(&n, cut);
    let mut b = Node::start(test, &n, "b", "standby", &bd.path().join("heap"));
    assert_eq!(b.expect(&["STANDBY"], T), format!("STANDBY {s20}"));
    let w = b.ask("PROMOTE", &["PROMOTED", "LOST"], T);
    assert_eq!(
        (w[0].as_str(), w[1].parse::<u64>().unwrap(), w[2].as_str()),
        ("PROMOTED", s20, "2"),
        "{w:?}"
    );
    b.expect(&["PRIMARY"], T);
    b.ask("COMMIT 5", &["DONE"], T);
    let s = b.ask("SUM", &["SUM"], T);
    assert_eq!(s[3], "25");
    c.ask(&format!("AT {}", s[1]), &["AT"], T);
    let r = c.ask("SUM", &["SUM"], T);
    assert_eq!(s[1..], r[1..], "new primary {s:?} standby {r:?}");
    let st = c.ask("STATUS", &["STATUS"], T).join(" ");
    assert!(st.contains("reb=1") && st.contains("diverged"), "{st}");
    println!("divergence: {st}");
}

fn delete_after(n: &Net, cut: u64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Conn::open(&NatsConfig::new(&n.url, &n.log, "op")).await.unwrap();
        let (_, last) = c.bounds().await.unwrap();
        for s in cut + 1..=last {
            c.delete_message(s).await.unwrap();
        }
    });
}

/// Two standbys promote at once: one wins, the other is told who holds the epoch, keeps its
/// replica and follows the winner. (Both pause 300 ms between reading the leader key and
/// their compare-and-set, so both read before either writes: the compare-and-set decides.)
#[test]
fn racing_candidates_one_wins_the_other_follows() {
    if is_node() {
        return node_main();
    }
    let server = NatsServer::start();
    let n = net(server.url(), "race", 1);
    let (pd, bd, cd) = (TempDir::new("p"), TempDir::new("b"), TempDir::new("c"));
    let test = "racing_candidates_one_wins_the_other_follows";
    let mut wins = [0, 0];
    for round in 0..5 {
        let _ = std::fs::remove_dir_all(pd.path().join("heap"));
        let _ = std::fs::remove_dir_all(bd.path().join("heap"));
        let _ = std::fs::remove_dir_all(cd.path().join("heap"));
        let mut n = n.clone();
        n.log = format!("race{round}");
        std::env::set_var("N_PROMOTE_PAUSE_MS", "300");
        let mut p = Node::start(test, &n, "p", "primary", &pd.path().join("heap"));
        p.expect(&["PRIMARY"], T);
        let d = p.ask("COMMIT 10", &["DONE"], T);
        let mut b = Node::start(test, &n, "b", "standby", &bd.path().join("heap"));
        let mut c = Node::start(test, &n, "c", "standby", &cd.path().join("heap"));
        b.expect(&["STANDBY"], T);
        c.expect(&["STANDBY"], T);
        b.ask(&format!("AT {}", d[2]), &["AT"], T);
        c.ask(&format!("AT {}", d[2]), &["AT"], T);
        p.kill();
        b.send("PROMOTE");
        c.send("PROMOTE");
        let rb = b.expect(&["PROMOTED", "LOST"], T);
        let rc = c.expect(&["PROMOTED", "LOST"], T);
        let (mut w, mut l) = match (rb.starts_with("PROMOTED"), rc.starts_with("PROMOTED")) {
            (true, false) => {
                wins[0] += 1;
                (b, c)
            }
            (false, true) => {
                wins[1] += 1;
                (c, b)
            }
            _ => panic!("round {round}: b {rb:?}, c {rc:?}"),
        };
        let lost = l.seen.iter().find(|x| x.starts_with("LOST")).unwrap().clone();
        assert!(lost.contains("not the leader"), "{lost}");
        l.expect(&["STANDBY"], T);
        w.expect(&["PRIMARY"], T);
        w.ask("COMMIT 5", &["DONE"], T);
        let s = w.ask("SUM", &["SUM"], T);
        l.ask(&format!("AT {}", s[1]), &["AT"], T);
        let r = l.ask("SUM", &["SUM"], T);
        assert_eq!(s[1..], r[1..], "round {round}: winner {s:?} loser {r:?}");
    }
    println!("races: b won {}, c won {}", wins[0], wins[1]);
}
