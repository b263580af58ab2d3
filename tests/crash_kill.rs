//! Process-kill crash test: a child commits in a loop with `Durability::Immediate` and prints
//! every acknowledged commit; the parent kills it with SIGKILL at random moments (snapshots
//! are forced often, so kills also land while a snapshot writer runs), reopens the heap and
//! checks that it holds exactly a prefix of the commits containing every acknowledged one.
//!
//! The rung matrix: the same harness runs with `Tracking::Auto` (the fast rung here; full count),
//! under a seccomp filter denying `userfaultfd` as in a default container (Auto must then pick
//! the hashed rung; at least 100 kills), and with the hashed and all-dirty rungs forced
//! (reduced counts).
//!
//! `SNAPHEAP_KILLS` sets the number of kills of the default test (default 200;
//! `scripts/kill-loop.sh` runs 10,000); `SNAPHEAP_KILLS_MATRIX` those of the other rungs.

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Error, Heap, OpenOptions, Tracking};
use std::process::Stdio;
use std::time::{Duration, Instant};

type Log = Vec<u64>;

fn options(tracking: Tracking) -> OpenOptions {
    let mut o = OpenOptions::new();
    // Remapping clean pages is off by default; the kill test runs with it on (the children
    // write only under guards), so kills land in processes that remap.
    o.snapshot_after_journal_bytes(96 << 10)
        .remap_clean_pages(true)
        .tracking(tracking);
    o
}

/// Opens, retrying while a killed process's snapshot writer still holds the lock (it dies
/// with its parent, asynchronously).
fn open_retrying(dir: &std::path::Path, tracking: Tracking) -> Heap<Log> {
    let start = Instant::now();
    loop {
        match options(tracking).open(dir, Log::new_in) {
            Ok(h) => return h,
            Err(Error::Locked { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

/// The committing child: installs the seccomp filter first when `SECCOMP` is set, opens with
/// the rung named by `TRACKING`, and reports the rung in use on its READY line.
fn child_loop() {
    if std::env::var_os("SECCOMP").is_some() {
        seccomp::deny_userfaultfd().expect("install the seccomp filter");
    }
    let tracking: Tracking = std::env::var("TRACKING").unwrap().parse().unwrap();
    let dir = std::env::var("HEAP").unwrap();
    let heap = open_retrying(dir.as_ref(), tracking);
    let mut next = heap.read().last().copied().unwrap_or(0) + 1;
    // Ballast outside the root (leaked at the kill: 256 KiB per round), written under the
    // guard, so that remapping clean pages (issue 15) has runs to return after each snapshot
    // and later commits write into remapped pages.
    let mut ballast = Vec::new_in(heap.alloc());
    ballast.resize(256 << 10, 1u8);
    // A snapshot before the kills start, so every round's process has remapped pages (the
    // automatic snapshots come too late in short rounds on a loaded machine).
    heap.snapshot().unwrap();
    println!(
        "READY {} {} REMAPPED {}",
        next - 1,
        heap.stats().track_mode,
        heap.stats().remapped_pages
    );
    loop {
        {
            let mut log = heap.write();
            log.push(next);
            let at = (next as usize * 4096 + 17) % ballast.len();
            ballast[at] = ballast[at].wrapping_add(next as u8);
            // Some garbage churn so allocator state changes too.
            let mut tmp = Vec::new_in(heap.alloc());
            tmp.resize((next % 700) as usize, next as u8);
            drop(tmp);
            log.commit().unwrap();
        }
        println!("ACK {next}");
        next += 1;
    }
}

#[test]
fn sigkill_at_random_moments_keeps_a_prefix_with_every_acknowledged_commit() {
    kill_matrix(
        "sigkill_at_random_moments_keeps_a_prefix_with_every_acknowledged_commit",
        env_kills("SNAPHEAP_KILLS", 200),
        Tracking::Auto,
        false,
        None,
    );
}

#[test]
fn sigkill_under_a_seccomp_filter_denying_userfaultfd_loses_no_acknowledged_commit() {
    kill_matrix(
        "sigkill_under_a_seccomp_filter_denying_userfaultfd_loses_no_acknowledged_commit",
        env_kills("SNAPHEAP_KILLS_MATRIX", 100),
        Tracking::Auto,
        true,
        Some("hashed"),
    );
}

#[test]
fn sigkill_with_the_hashed_rung_forced_loses_no_acknowledged_commit() {
    kill_matrix(
        "sigkill_with_the_hashed_rung_forced_loses_no_acknowledged_commit",
        env_kills("SNAPHEAP_KILLS_MATRIX", 40),
        Tracking::Hashed,
        false,
        Some("hashed"),
    );
}

#[test]
fn sigkill_with_the_all_dirty_rung_forced_loses_no_acknowledged_commit() {
    kill_matrix(
        "sigkill_with_the_all_dirty_rung_forced_loses_no_acknowledged_commit",
        env_kills("SNAPHEAP_KILLS_MATRIX", 20),
        Tracking::AllDirty,
        false,
        Some("all-dirty"),
    );
}

fn env_kills(var: &str, default: u64) -> u64 {
    std::env::var(var).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// One cell of the rung matrix: `kills` rounds of run-and-SIGKILL of a child that opens with
/// `tracking` (under the seccomp filter when `seccomp`), which must report rung `expect`.
fn kill_matrix(test: &str, kills: u64, tracking: Tracking, seccomp: bool, expect: Option<&str>) {
    if role().as_deref() == Some("loop") {
        child_loop();
        return;
    } else if role().is_some() {
        return;
    }
    let seed = std::env::var("SNAPHEAP_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = Rng::new(seed);
    let dir = Scratch::new("kill");
    let heap_dir = dir.heap();
    // Released after each use in this process: the children change the files in between.
    // SAFETY: every value of the heap lives in its root.
    unsafe { open_retrying(&heap_dir, Tracking::Auto).close_and_release() }.unwrap();
    let mut env = vec![("HEAP", heap_dir.to_str().unwrap()), ("TRACKING", tracking.name())];
    if seccomp {
        env.push(("SECCOMP", "1"));
    }
    let mut total_acked = 0u64;
    let mut writers_killed = 0u64;
    let mut max_seen = 0u64;
    let mut remapped = 0u64;
    for round in 0..kills {
        let mut child = child(test, "loop", &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (rx, reader) = line_reader(stdout);
        // Wait until the child has opened the heap, then let it run for a random while.
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("child did not start");
            // The child's first line follows libtest's "test <name> ... " on the same line.
            if let Some((_, rest)) = line.split_once("READY ") {
                let mode = rest.split_whitespace().nth(1).unwrap_or("");
                if let Some(want) = expect {
                    assert_eq!(mode, want, "round {round}: the child tracks with {mode}, not {want}");
                }
                remapped += rest
                    .split_once("REMAPPED ")
                    .and_then(|(_, v)| v.split_whitespace().next()?.parse::<u64>().ok())
                    .unwrap_or(0);
                break;
            }
        }
        let run_for = Duration::from_micros(rng.below(40_000));
        std::thread::sleep(run_for);
        // In a third of the rounds, first kill the snapshot writer (the child's own child) if
        // one is running, let the parent go on committing for a moment, then kill the parent.
        if rng.below(3) == 0 {
            let deadline = Instant::now() + Duration::from_millis(300);
            let mut writer = snapshot_writer_of(child.id());
            while writer.is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(50));
                writer = snapshot_writer_of(child.id());
            }
            if let Some(writer) = writer {
                // SAFETY: kill takes no pointers; the pid is a child of our child.
                unsafe { libc::kill(writer, libc::SIGKILL) };
                writers_killed += 1;
                std::thread::sleep(Duration::from_micros(rng.below(5_000)));
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let mut acked = 0;
        for line in rx.try_iter() {
            // A line cut by the kill is not an acknowledgement.
            if let Some(v) = line.strip_prefix("ACK ").and_then(|v| v.parse::<u64>().ok()) {
                acked = acked.max(v);
                total_acked += 1;
            }
        }
        let heap = open_retrying(&heap_dir, Tracking::Auto);
        {
            let log = heap.read();
            let n = log.len() as u64;
            assert!(
                n >= acked,
                "round {round}: acknowledged commit {acked} lost (heap has {n})"
            );
            assert!(n >= max_seen, "round {round}: heap went back from {max_seen} to {n}");
            for (i, v) in log.iter().enumerate() {
                assert_eq!(*v, i as u64 + 1, "round {round}: not a prefix at index {i}");
            }
            max_seen = n;
        }
        heap.verify().unwrap();
        // Released: the next child changes the files, and the reopen here must map them.
        // SAFETY: every value of the heap lives in its root.
        unsafe { heap.drop_and_release() };
    }
    println!(
        "kill test ({}{}): {kills} kills ({writers_killed} of them after killing a running snapshot writer first), \
         final log length {max_seen}, {total_acked} acknowledged commits checked, {remapped} pages \
         remapped by the killed processes before their kill window",
        tracking.name(),
        if seccomp { ", under the seccomp filter" } else { "" }
    );
    // All-dirty reports every page written, so it never finds a clean page to remap.
    assert!(
        remapped > 0 || tracking == Tracking::AllDirty,
        "no round remapped a page: the kills did not cover remapping"
    );
    assert!(max_seen > 0, "no commit survived any round");
}

/// The pid of a running child of `pid` (the snapshot writer), from
/// `/proc/<pid>/task/<tid>/children` of each of its threads (the test harness commits from a
/// thread that is not the main one).
fn snapshot_writer_of(pid: u32) -> Option<libc::pid_t> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        if let Some(p) = list.split_whitespace().next().and_then(|p| p.parse().ok()) {
            return Some(p);
        }
    }
    None
}
