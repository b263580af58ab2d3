//! Replication end to end with real nats-server processes: every node is a child process
//! (see `common`), the test is the operator that kills and promotes.
//!
//! `SNAPHEAP_NATS_ROUNDS` sets the failover and standby-kill rounds (default 100).

mod common;

use common::*;
use snapheap_nats::frame::Kind;
use snapheap_nats::testing::{NatsCluster, TempDir};
use std::time::{Duration, Instant};

fn rounds() -> u64 {
    std::env::var("SNAPHEAP_NATS_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100)
}

fn rng(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Every fourth failover round stalls the primary's shipper inside a multi-frame group and
/// kills it there.
fn stall_round(round: u64) -> bool {
    round % 4 == 2
}

#[test]
fn failover_rounds_keep_every_acknowledged_commit() {
    if is_node() {
        return node_main();
    }
    let cluster = NatsCluster::start();
    let n = Net::new(
        "failover_rounds_keep_every_acknowledged_commit",
        cluster.urls(),
        "fo",
        3,
    );
    let log = LogReader::new(&n);
    let dirs = [TempDir::new("node-a"), TempDir::new("node-b")];
    let names = ["a", "b"];
    let mut primary = n.primary(names[0], &heap_dir(&dirs[0]));
    primary.ask("COMMIT 3", &["DONE"], T);
    let (mut standby, _) = n.standby(names[1], &heap_dir(&dirs[1]));
    let (mut p, mut seed) = (0usize, 0x9e37_79b9_7f4a_7c15u64);
    let mut took = Vec::new();
    let (mut mid_group_kills, mut forced) = (0u64, 0u64);
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
        if stall_round(round) {
            // The next group of more than k frames gets frames 0..k into the log, no more;
            // its commit (and every later one) waits for an acknowledgement that never comes.
            let k = 1 + (rng(&mut seed) % 4) as u32;
            primary.ask(&format!("STALL {k}"), &["STALLING"], T);
            primary.send("RUN");
            let w = primary.expect(&["STALLED"], T);
            let seq: u64 = w.split(' ').nth(1).unwrap().parse().unwrap();
            log.wait_tail("the stalled frame", |h| {
                h.kind == Kind::Data && h.seq == seq && h.index + 1 == k && h.count > k
            });
        } else {
            std::thread::sleep(Duration::from_micros(rng(&mut seed) % 3000));
        }
        primary.kill();
        let lines = primary.drain();
        let max_acked = max_ack(&primary.seen).max(max_ack(&lines));
        if log.tail().is_some_and(|(_, h)| mid_group(&h)) {
            mid_group_kills += 1;
            forced += u64::from(stall_round(round));
        }
        let w = standby.ask("PROMOTE", &["PROMOTED", "LOST"], T);
        assert_eq!(w[0], "PROMOTED", "round {round}: {w:?}");
        let len: u64 = w[4].parse().unwrap();
        assert_eq!(w[5], "true", "round {round}: the promoted log is not 1..=len");
        assert!(
            len >= max_acked,
            "round {round}: acknowledged commit {max_acked} lost (promoted heap holds {len})"
        );
        took.push((w[3].parse::<u64>().unwrap(), w[6].clone()));
        standby.expect(&["PRIMARY"], T);
        // The promoted standby is the new primary; the killed node comes back as a standby,
        // bootstrapped afresh (its directory holds a history the log may not have).
        std::mem::swap(&mut primary, &mut standby);
        p = 1 - p;
        let dead = 1 - p;
        drop(standby);
        std::fs::remove_dir_all(heap_dir(&dirs[dead])).unwrap();
        standby = n.standby(names[dead], &heap_dir(&dirs[dead])).0;
        // A hot standby: caught up before the next round (a fresh bootstrap replays the log
        // since the base first, up to `base_every` bytes; that catch-up is not promotion).
        let d = primary.ask("COMMIT 1", &["DONE"], T);
        standby.ask(&format!("AT {}", d[2]), &["AT"], T);
    }
    // The last standby catches up and holds exactly the primary's content.
    assert_same_content(&mut primary, &mut standby, "after the last round");
    // Every stalled round was killed with its group partly in the log.
    let stalled = (0..rounds()).filter(|r| stall_round(*r)).count() as u64;
    assert_eq!(forced, stalled, "stalled rounds killed mid-group");
    took.sort_unstable();
    let q = |p: usize| &took[(took.len() - 1) * p / 100];
    println!(
        "failover: {} rounds, {mid_group_kills} killed mid multi-frame group ({forced} by a \
         stalled shipper); kill-to-writable (promote) p50 {} us, p99 {} us, max {} us; \
         phases of the median {}, of the max {}",
        took.len(),
        q(50).0,
        q(99).0,
        q(100).0,
        q(50).1,
        q(100).1
    );
}

#[test]
fn standby_killed_during_apply_resumes_with_the_primarys_content() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("standby_killed_during_apply_resumes_with_the_primarys_content", "sk");
    let (pd, sd) = (TempDir::new("p"), TempDir::new("s"));
    let mut primary = n.primary("p", &heap_dir(&pd));
    let mut seed = 0x1234_5678u64;
    let (mut standby, _) = n.standby("s", &heap_dir(&sd));
    let mut resumed_at = Vec::new();
    for round in 0..rounds() {
        primary.ask(&format!("COMMIT {}", 1 + rng(&mut seed) % 8), &["DONE"], T);
        std::thread::sleep(Duration::from_micros(rng(&mut seed) % 4000));
        standby.kill();
        let (s, pos) = n.standby("s", &heap_dir(&sd));
        standby = s;
        resumed_at.push(pos);
        if round % 10 == 9 {
            assert_same_content(&mut primary, &mut standby, &format!("round {round}"));
        }
    }
    assert_same_content(&mut primary, &mut standby, "after the last round");
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
    let (mut server, mut n) = Net::with_server("nats_killed_while_shipping_resumes_without_duplicate_or_hole", "nk");
    n.durability = "immediate";
    let pd = TempDir::new("p");
    let mut primary = n.primary("p", &heap_dir(&pd));
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
    let last: u64 = d[2].parse().unwrap();
    // Wait for the shipper to catch up, then read the whole log.
    let log = LogReader::new(&n);
    log.wait_tail("the last commit's last frame", |h| {
        h.kind == Kind::Data && h.index + 1 == h.count && h.seq >= last
    });
    let frames = log.frames();
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
    let (_server, mut n) = Net::with_server("gap_after_purge_is_detected_and_rebootstrap_succeeds", "gap");
    n.base_every = 512 << 10;
    n.snap = 256 << 10;
    let (pd, sd) = (TempDir::new("p"), TempDir::new("s"));
    let mut primary = n.primary("p", &heap_dir(&pd));
    let d = primary.ask("COMMIT 10", &["DONE"], T);
    let at: u64 = d[2].parse().unwrap();
    let (mut standby, _) = n.standby("s", &heap_dir(&sd));
    standby.ask(&format!("AT {at}"), &["AT"], T);
    standby.send("EXIT");
    drop(standby);
    primary.ask("COMMIT 80", &["DONE"], T);
    let first = LogReader::new(&n)
        .frames()
        .iter()
        .find(|(_, h)| h.kind == Kind::Data && h.index == 0)
        .map(|(_, h)| h.seq)
        .unwrap();
    assert!(
        first > at + 1,
        "the stream was not purged past the standby (first group {first})"
    );
    let (mut standby, pos) = n.standby("s", &heap_dir(&sd));
    assert_eq!(pos, at);
    assert_same_content(&mut primary, &mut standby, "after the re-bootstrap");
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
    let (_server, n) = Net::with_server(
        "divergence_after_a_new_epoch_is_detected_and_rebootstrap_succeeds",
        "dv",
    );
    let (ad, bd, cd) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
    let mut a = n.primary("a", &heap_dir(&ad));
    let d = a.ask("COMMIT 20", &["DONE"], T);
    let s20: u64 = d[2].parse().unwrap();
    let (mut b, _) = n.standby("b", &heap_dir(&bd));
    b.ask(&format!("AT {s20}"), &["AT"], T);
    b.send("EXIT");
    drop(b);
    let d = a.ask("COMMIT 10", &["DONE"], T);
    let (mut c, _) = n.standby("c", &heap_dir(&cd));
    c.ask(&format!("AT {}", d[2]), &["AT"], T);
    a.kill();
    // Lose every message after group 20.
    let log = LogReader::new(&n);
    let cut = log
        .frames()
        .iter()
        .find(|(_, h)| h.kind == Kind::Data && h.seq == s20 && h.index + 1 == h.count)
        .map(|(s, _)| *s)
        .unwrap();
    log.delete_after(cut);
    let (mut b, pos) = n.standby("b", &heap_dir(&bd));
    assert_eq!(pos, s20);
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
    assert_same_content(&mut b, &mut c, "new primary and the diverged standby");
    let st = c.ask("STATUS", &["STATUS"], T).join(" ");
    assert!(st.contains("reb=1") && st.contains("diverged"), "{st}");
    println!("divergence: {st}");
}

/// Two standbys promote at once: one wins, the other is told who holds the epoch, keeps its
/// replica and follows the winner. (Both pause 300 ms between reading the leader key and
/// their compare-and-set, so both read before either writes: the compare-and-set decides.)
#[test]
fn racing_candidates_one_wins_the_other_follows() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("racing_candidates_one_wins_the_other_follows", "race");
    let (pd, bd, cd) = (TempDir::new("p"), TempDir::new("b"), TempDir::new("c"));
    let mut wins = [0, 0];
    for round in 0..5 {
        for d in [&pd, &bd, &cd] {
            let _ = std::fs::remove_dir_all(heap_dir(d));
        }
        let mut n = n.clone();
        n.log = format!("race{round}");
        let pause = [("N_PROMOTE_PAUSE_MS", "300")];
        let mut p = n.primary("p", &heap_dir(&pd));
        let d = p.ask("COMMIT 10", &["DONE"], T);
        let mut b = n.spawn_with("b", "standby", &heap_dir(&bd), &pause);
        let mut c = n.spawn_with("c", "standby", &heap_dir(&cd), &pause);
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
        assert_same_content(&mut w, &mut l, &format!("round {round}: winner and loser"));
    }
    println!("races: b won {}, c won {}", wins[0], wins[1]);
}

/// A `Replicated` primary publishes a group while its `fdatasync` runs, so a machine crash
/// (power loss) can leave the log ahead of the primary's disk. Simulated here by putting
/// back a copy of the primary's directory taken earlier (what the disk held; the page cache
/// with the later groups is gone). At restart the shipper refuses, clearly and with the
/// commits named, each way the log can be ahead: complete groups the heap lacks, the same
/// seqs with another history, a group partly in the log that the heap lacks. A restart after
/// a process crash (the page cache kept every written group, including one partly
/// published) is accepted and completes the log with no hole: a new standby follows it.
#[test]
fn restarted_primary_behind_the_log_refuses_to_ship() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("restarted_primary_behind_the_log_refuses_to_ship", "ahead");
    let log = LogReader::new(&n);
    let (ad, sd, copy) = (TempDir::new("a"), TempDir::new("s"), TempDir::new("copy"));
    let (dir, disk, crashed) = (heap_dir(&ad), copy.path().join("disk"), copy.path().join("crashed"));
    let refused = |env: &[(&str, &str)], what: &str| {
        let mut a = n.spawn_with("a", "primary", &dir, env);
        let l = a.expect(&["PRIMARY", "NOSHIP"], T);
        assert!(
            l.starts_with("NOSHIP") && l.contains("the log is ahead of this heap") && l.contains(what),
            "{l}"
        );
        l
    };
    let mut a = n.primary("a", &dir);
    let s5: u64 = a.ask("COMMIT 5", &["DONE"], T)[2].parse().unwrap();
    copy_dir(&dir, &disk);
    let s8: u64 = a.ask("COMMIT 3", &["DONE"], T)[2].parse().unwrap();
    a.kill();
    copy_dir(&dir, &crashed);
    // 1. The disk lost commits s5+1..=s8, which the log holds.
    copy_dir(&disk, &dir);
    let l1 = refused(&[], &format!("commits {}..={s8} are missing", s5 + 1));
    // 2. The same, then the heap made other commits under those seqs without shipping.
    copy_dir(&disk, &dir);
    let l2 = refused(&[("N_PRECOMMIT", "3"), ("N_VARIANT", "1")], "another history");
    // 3. A process crash kept everything: the restart ships on. Then a group is stalled
    // after two of its frames and the primary killed there.
    copy_dir(&crashed, &dir);
    let mut a = n.primary("a", &dir);
    let d = a.ask("COMMIT 1", &["DONE"], T);
    assert_eq!(d[1], "9", "commit 10 (even: multi-frame) must be the next one");
    let s9: u64 = d[2].parse().unwrap();
    copy_dir(&dir, &disk);
    a.ask("STALL 2", &["STALLING"], T);
    a.send("COMMIT 1");
    let seq: u64 = a.expect(&["STALLED"], T).split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(seq, s9 + 1);
    log.wait_tail("frame 1 of the stalled group", |h| {
        h.seq == seq && h.index == 1 && h.count > 2
    });
    a.kill();
    copy_dir(&dir, &crashed);
    // 4. The disk lost the group that is partly in the log.
    copy_dir(&disk, &dir);
    let l4 = refused(&[], "frames 0..=1 of");
    // 5. After a process crash the partial group is the heap's own: it is completed.
    copy_dir(&crashed, &dir);
    let mut a = n.primary("a", &dir);
    log.wait_tail("the stalled group completed", |h| {
        h.seq == seq && h.index + 1 == h.count
    });
    a.ask("COMMIT 2", &["DONE"], T);
    let (mut s, _) = n.standby("s", &heap_dir(&sd));
    assert_same_content(&mut a, &mut s, "after the refused restarts");
    println!("behind the log:\n  {l1}\n  {l2}\n  {l4}");
}

/// A candidate that wins the compare-and-set and dies before its epoch record leaves the
/// leader key at epoch 2 with no record of it. A candidate told to wait an hour on such a
/// stale promotion is still waiting when one told to wait 300 ms takes it over (epoch 3 by
/// compare-and-set on the same revision) holding every acknowledged commit; the first then
/// returns `NotLeader` naming the taker. Every node ends with the taker's content.
#[test]
fn stale_promotion_is_taken_over_after_the_wait() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("stale_promotion_is_taken_over_after_the_wait", "stale");
    let (pd, ad, bd, cd) = (
        TempDir::new("p"),
        TempDir::new("a"),
        TempDir::new("b"),
        TempDir::new("c"),
    );
    let mut p = n.primary("p", &heap_dir(&pd));
    let d = p.ask("COMMIT 10", &["DONE"], T);
    let acked: u64 = d[1].parse().unwrap();
    let mut a = n.spawn_with("a", "standby", &heap_dir(&ad), &[("N_AFTER_CAS", "die")]);
    let mut b = n.spawn_with("b", "standby", &heap_dir(&bd), &[("N_STALE_MS", "300")]);
    let mut c = n.spawn_with(
        "c",
        "standby",
        &heap_dir(&cd),
        &[("N_STALE_MS", "3600000"), ("N_EVENTS", "1")],
    );
    for s in [&mut a, &mut b, &mut c] {
        s.expect(&["STANDBY"], T);
        s.ask(&format!("AT {}", d[2]), &["AT"], T);
    }
    p.kill();
    // A wins epoch 2 and stops before its epoch record.
    let l = a.ask("PROMOTE", &["PROMOTED", "LOST"], T).join(" ");
    assert!(
        l.starts_with("LOST") && l.contains("stopped right after the compare-and-set to epoch 2"),
        "{l}"
    );
    a.expect(&["STANDBY"], T);
    let log = LogReader::new(&n);
    assert_eq!(log.leader(), Some((2, "a".to_string())));
    let records: Vec<u64> = log
        .frames()
        .iter()
        .filter(|(_, h)| h.kind == Kind::Epoch)
        .map(|(_, h)| h.epoch)
        .collect();
    assert!(!records.contains(&2), "epoch records {records:?}");
    // C parks on the stale promotion (and would for an hour).
    c.send("PROMOTE");
    c.expect(&["EVENT stale-wait epoch=2"], T);
    // B waits its 300 ms and takes over.
    let w = b.ask("PROMOTE", &["PROMOTED", "LOST"], T);
    assert_eq!((w[0].as_str(), w[2].as_str()), ("PROMOTED", "3"), "{w:?}");
    let len: u64 = w[4].parse().unwrap();
    assert_eq!(w[5], "true", "the promoted log is not 1..=len: {w:?}");
    assert!(
        len >= acked,
        "acknowledged commit {acked} lost (promoted heap holds {len})"
    );
    let stale_us: u64 = w[6]
        .split(',')
        .find_map(|x| x.strip_prefix("stale="))
        .unwrap_or_else(|| panic!("no stale phase: {w:?}"))
        .parse()
        .unwrap();
    assert!(stale_us >= 300_000, "took over after {stale_us} us: {w:?}");
    b.expect(&["PRIMARY"], T);
    assert_eq!(log.leader(), Some((3, "b".to_string())));
    // C, still inside its wait, sees the key move and loses to B.
    let l = c.expect(&["PROMOTED", "LOST"], T);
    assert!(
        l.starts_with("LOST") && l.contains("not the leader: epoch 3 belongs to node \"b\""),
        "{l}"
    );
    c.expect(&["STANDBY"], T);
    b.ask("COMMIT 5", &["DONE"], T);
    assert_same_content(&mut b, &mut a, "taker and the dead candidate");
    assert_same_content(&mut b, &mut c, "taker and the waiting candidate");
    println!("stale promotion: taken over after {stale_us} us; {}", w.join(" "));
}

/// A slow, not dead, holder: A wins epoch 2 and pauses after its compare-and-set until B
/// (300 ms) has taken the promotion over and written the record of epoch 3. A's publish loop
/// then finds the newer record and returns `NotLeader` instead of writing epoch 2 after 3.
#[test]
fn slow_holder_taken_over_loses_to_the_newer_record() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("slow_holder_taken_over_loses_to_the_newer_record", "slow");
    let t = standbys_of_a_killed_primary(
        &n,
        &[("N_AFTER_CAS", "hold"), ("N_EVENTS", "1")],
        &[("N_STALE_MS", "300")],
    );
    let acked: u64 = t.done[1].parse().unwrap();
    let (mut a, mut b) = (t.a, t.b);
    a.send("PROMOTE");
    a.expect(&["EVENT cas epoch=2"], T);
    let w = b.ask("PROMOTE", &["PROMOTED", "LOST"], T);
    assert_eq!((w[0].as_str(), w[2].as_str()), ("PROMOTED", "3"), "{w:?}");
    let len: u64 = w[4].parse().unwrap();
    assert!(len >= acked && w[5] == "true", "{w:?}");
    b.expect(&["PRIMARY"], T);
    let l = a.expect(&["PROMOTED", "LOST"], T);
    assert!(
        l.starts_with("LOST") && l.contains("not the leader: epoch 3 belongs to node \"b\""),
        "{l}"
    );
    a.expect(&["STANDBY"], T);
    b.ask("COMMIT 5", &["DONE"], T);
    assert_same_content(&mut b, &mut a, "taker and the slow holder");
    let records: Vec<(u64, u64)> = LogReader::new(&n)
        .frames()
        .iter()
        .filter(|(_, h)| h.kind == Kind::Epoch)
        .map(|(_, h)| (h.epoch, h.seq))
        .collect();
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), vec![3], "{records:?}");
    println!("slow holder: epoch records {records:?}; {l}");
}

/// A slow holder whose record still comes first: A wins epoch 2 and holds 700 ms after its
/// compare-and-set; B finds the promotion stale after 300 ms, then pauses 1.5 s before its own
/// compare-and-set (on the same key revision). Meanwhile A writes its epoch record, becomes
/// primary and makes acknowledged `Replicated` commits. B then takes epoch 3 anyway: its drain
/// applies A's record and everything A shipped, so every commit A had acknowledged is in B's
/// heap, and A's next commit fails because its shipper is fenced by B's record.
#[test]
fn slow_holder_whose_record_came_first_is_drained_then_fenced() {
    if is_node() {
        return node_main();
    }
    let (_server, n) = Net::with_server("slow_holder_whose_record_came_first_is_drained_then_fenced", "first");
    let t = standbys_of_a_killed_primary(
        &n,
        &[("N_AFTER_CAS", "hold_ms:700"), ("N_EVENTS", "1")],
        &[("N_STALE_MS", "300"), ("N_PROMOTE_PAUSE_MS", "1500"), ("N_EVENTS", "1")],
    );
    let (mut a, mut b) = (t.a, t.b);
    a.send("PROMOTE");
    a.expect(&["EVENT cas epoch=2"], T);
    b.send("PROMOTE");
    b.expect(&["EVENT stale-wait epoch=2"], T);
    // A's hold ends while B pauses between its stale wait and its compare-and-set.
    let pa = a.expect(&["PROMOTED", "LOST"], T);
    assert!(pa.starts_with("PROMOTED") && pa.split(' ').nth(2) == Some("2"), "{pa}");
    a.expect(&["PRIMARY"], T);
    let done = a.ask("COMMIT 5", &["DONE", "ERR"], T);
    assert_eq!(done[0], "DONE", "A's commits before B's compare-and-set: {done:?}");
    let a_len: u64 = pa.split(' ').nth(4).unwrap().parse::<u64>().unwrap() + 5;
    let w = b.expect(&["PROMOTED", "LOST"], T);
    let w: Vec<&str> = w.split(' ').collect();
    assert_eq!((w[0], w[2]), ("PROMOTED", "3"), "{w:?}");
    let b_len: u64 = w[4].parse().unwrap();
    assert!(
        b_len == a_len && w[5] == "true",
        "B holds {b_len} commits, A acknowledged {a_len}: {w:?}"
    );
    b.expect(&["PRIMARY"], T);
    // Both are primaries now: compare their sums at the same commit directly.
    let (sa, sb) = (a.ask("SUM", &["SUM"], T), b.ask("SUM", &["SUM"], T));
    assert_eq!(sa[1..], sb[1..], "the slow holder {sa:?} and the taker {sb:?}");
    let after = a.ask("COMMIT 1", &["DONE", "ERR"], T);
    assert!(
        after[0] == "ERR" && after.join(" ").contains("fenced"),
        "A committed after B's epoch record: {after:?}"
    );
    b.ask("COMMIT 3", &["DONE"], T);
    let records: Vec<(u64, u64)> = LogReader::new(&n)
        .frames()
        .iter()
        .filter(|(_, h)| h.kind == Kind::Epoch)
        .map(|(_, h)| (h.epoch, h.seq))
        .collect();
    assert_eq!(
        records.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![2, 3],
        "{records:?}"
    );
    println!(
        "record came first: epoch records {records:?}; A after B's record: {}",
        after.join(" ")
    );
}

/// What [`standbys_of_a_killed_primary`] leaves: two standbys of a primary killed after 10
/// commits (`done`: its `DONE` answer), and the three heap directories.
struct KilledPrimary {
    a: Node,
    b: Node,
    done: Vec<String>,
    _dirs: (TempDir, TempDir, TempDir),
}

/// A primary `p` commits 10 times, standbys `a` and `b` (with `a_env` and `b_env`) catch up
/// with it, and `p` is killed: the start of the takeover tests.
fn standbys_of_a_killed_primary(n: &Net, a_env: &[(&str, &str)], b_env: &[(&str, &str)]) -> KilledPrimary {
    let dirs = (TempDir::new("p"), TempDir::new("a"), TempDir::new("b"));
    let mut p = n.primary("p", &heap_dir(&dirs.0));
    let done = p.ask("COMMIT 10", &["DONE"], T);
    let mut a = n.spawn_with("a", "standby", &heap_dir(&dirs.1), a_env);
    let mut b = n.spawn_with("b", "standby", &heap_dir(&dirs.2), b_env);
    for s in [&mut a, &mut b] {
        s.expect(&["STANDBY"], T);
        s.ask(&format!("AT {}", done[2]), &["AT"], T);
    }
    p.kill();
    KilledPrimary {
        a,
        b,
        done,
        _dirs: dirs,
    }
}
