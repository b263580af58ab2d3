//! `GlobalHeap` under concurrency and SIGKILL: three threads update a root and churn garbage
//! while the main thread commits (and snapshots every few commits, and automatically after
//! 256 KiB of journal); the process is killed at random moments and restarted. Every restart
//! finds the root internally consistent (it was captured between two updates), at least as new
//! as the last acknowledged commit, and the allocator's invariants intact.
//!
//! The rung matrix: the same test with the default rung and with the hashed rung forced
//! (`SNAPHEAP_TRACKING=hashed`), whose collect races with the workers' writes into any page.
//!
//! `SNAPHEAP_KILLS` sets the number of kills (default 8).

mod common;

use common::*;
use snapheap::GlobalHeap;
use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

#[global_allocator]
static HEAP: GlobalHeap = GlobalHeap::new().snapshot_after_journal_bytes(256 << 10);

const TEST: &str = "threads_allocating_during_commits_and_sigkill_leave_consistent_roots";

/// Updated by three threads; every update keeps all four invariants of [`State::check`].
#[derive(Default, snapheap::GlobalPersist)]
struct State {
    counts: [u64; 3],
    logs: [Vec<String>; 3],
    total: u64,
    /// `total` at each update → the thread that made it.
    index: BTreeMap<u64, u8>,
}

impl State {
    fn check(&self) -> Result<(), String> {
        for t in 0..3 {
            if self.logs[t].len() as u64 != self.counts[t] {
                return Err(format!(
                    "thread {t}: {} log entries, count {}",
                    self.logs[t].len(),
                    self.counts[t]
                ));
            }
            for (i, l) in self.logs[t].iter().enumerate() {
                if *l != format!("t{t}-{i}") {
                    return Err(format!("thread {t}: entry {i} is {l:?}"));
                }
            }
        }
        if self.total != self.counts.iter().sum::<u64>() || self.index.len() as u64 != self.total {
            return Err(format!(
                "total {} counts {:?} index {}",
                self.total,
                self.counts,
                self.index.len()
            ));
        }
        for t in 0..3u8 {
            let n = self.index.values().filter(|&&v| v == t).count() as u64;
            if n != self.counts[t as usize] {
                return Err(format!(
                    "index has {n} entries of thread {t}, count {}",
                    self.counts[t as usize]
                ));
            }
        }
        Ok(())
    }

    fn update(&mut self, t: usize) {
        let i = self.counts[t];
        self.logs[t].push(format!("t{t}-{i}"));
        self.counts[t] += 1;
        self.total += 1;
        self.index.insert(self.total, t as u8);
    }
}

fn worker(t: usize) {
    let mut rng = Rng::new(t as u64 + 1);
    loop {
        HEAP.with_root(State::default, |s| s.update(t));
        // Garbage: allocated and freed outside the root while commits run.
        let junk: Vec<String> = (0..rng.below(200)).map(|k| "g".repeat(k as usize % 97)).collect();
        let mut m: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for k in 0..rng.below(50) {
            m.insert(k, vec![k as u8; rng.below(3000) as usize]);
        }
        drop((junk, m));
    }
}

fn child_main() {
    assert!(HEAP.is_persistent());
    if let Ok(want) = std::env::var("SNAPHEAP_TRACKING") {
        assert_eq!(HEAP.stats().track_mode, want, "the forced rung is not in use");
    }
    let total = HEAP.with_root(State::default, |s| s.check().map(|()| s.total));
    let total = total.unwrap_or_else(|e| panic!("inconsistent root after restart: {e}"));
    HEAP.verify().expect("verify after restart");
    println!("READY {total}");
    for t in 0..3 {
        std::thread::spawn(move || worker(t));
    }
    for i in 1u64.. {
        let before = HEAP.with_root(State::default, |s| s.total);
        HEAP.commit().expect("commit");
        if i % 5 == 0 {
            HEAP.snapshot().expect("snapshot");
        }
        // Every update counted in `before` is durable now.
        println!("ACK {before}");
    }
}

#[test]
fn threads_allocating_during_commits_and_sigkill_leave_consistent_roots() {
    kill_matrix(TEST, None);
}

#[test]
fn the_same_under_the_hashed_rung() {
    kill_matrix("the_same_under_the_hashed_rung", Some("hashed"));
}

fn kill_matrix(test: &str, tracking: Option<&str>) {
    match role().as_deref() {
        Some("run") => return child_main(),
        Some(_) => return,
        None => {}
    }
    let kills: u64 = std::env::var("SNAPHEAP_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    let mut rng = Rng::new(0x91_0ba1);
    let dir = Scratch::new("global-kill");
    let heap = dir.heap();
    let mut acked = 0u64;
    let mut seen = 0u64;
    for round in 0..=kills {
        let mut env = vec![("SNAPHEAP_DIR", heap.to_str().unwrap())];
        if let Some(t) = tracking {
            env.push(("SNAPHEAP_TRACKING", t));
        }
        let mut c = child(test, "run", &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = c.stdout.take().unwrap();
        let (rx, reader) = line_reader(stdout);
        let value = |line: &str, key: &str| line.split(key).nth(1).and_then(|v| v.trim().parse::<u64>().ok());
        let mut ready = None;
        while ready.is_none() {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => ready = value(&line, "READY "),
                Err(_) => {
                    let _ = c.kill();
                    let out = c.wait_with_output().unwrap();
                    panic!(
                        "round {round}: child did not start: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            }
        }
        let total = ready.unwrap();
        assert!(
            total >= acked,
            "round {round}: acknowledged total {acked} lost, heap has {total}"
        );
        assert!(total >= seen, "round {round}: heap went back from {seen} to {total}");
        seen = total;
        if round == kills {
            c.kill().unwrap();
            c.wait().unwrap();
            break;
        }
        // Let it acknowledge a random number of commits, then kill it at once.
        let want = 1 + rng.below(25);
        let mut n = 0;
        while n < want {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("child stopped acknowledging");
            if let Some(v) = value(&line, "ACK ") {
                acked = acked.max(v);
                n += 1;
            }
        }
        c.kill().unwrap();
        c.wait().unwrap();
        reader.join().unwrap();
        // Acknowledgements printed before the kill landed count too (a cut line does not parse).
        for line in rx.try_iter() {
            if let Some(v) = value(&line, "ACK ") {
                acked = acked.max(v);
            }
        }
    }
    assert!(seen > 0, "the workers made progress");
    eprintln!(
        "{kills} kills ({} rung); final total {seen}, last acknowledged {acked}",
        tracking.unwrap_or("default")
    );
}
