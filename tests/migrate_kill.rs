//! SIGKILL during schema migrations: a child opens a heap of release 1 with release 2's
//! options, whose migration rebuilds a large map (slowly, so kills land inside it); the
//! parent kills it after a random delay. After every kill the old release must open the heap
//! with its state intact (unless the migration's commit had completed, when it is refused as
//! incompatible and the new release finds the migrated state), the new release must finish
//! the migration, and the allocator's invariants must hold (`verify`) after each open.
//!
//! `SNAPHEAP_MIGRATE_KILLS` sets the number of kills (default 100).

mod common;

use common::*;
use snapheap::collections::HashMap;
use snapheap::{Error, Heap, HeapAlloc, OpenOptions, Persist};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const N: u64 = 60_000;
const TEST: &str = "sigkill_during_migrations_leaves_the_old_state_or_the_new_one";

#[derive(Persist)]
struct K1 {
    tag: u64,
    big: HashMap<u64, u64>,
}

#[derive(Persist)]
struct K2 {
    tag: u64,
    doubled: HashMap<u64, u128>,
}

fn options(release: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.schema(&format!("kill-v{release}")).snapshot_on_close(false);
    if release == 2 {
        o.migrate::<K1, K2>("kill-v1", |old: K1, a: HeapAlloc| {
            println!("IN");
            let mut doubled = HashMap::with_capacity_in(old.big.len() / 2, a);
            for (i, (k, v)) in old.big.iter().enumerate() {
                doubled.insert(*k, u128::from(*v) * 2);
                if i % 2000 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            K2 {
                tag: old.tag + 1,
                doubled,
            }
        });
    }
    o
}

fn init(a: HeapAlloc) -> K1 {
    let mut big = HashMap::with_capacity_in(N as usize, a);
    for k in 0..N {
        big.insert(k, k * 7 + 3);
    }
    K1 { tag: 100, big }
}

fn check_old(s: &K1) {
    assert_eq!(s.tag, 100);
    assert_eq!(s.big.len() as u64, N);
    for k in 0..N {
        assert_eq!(s.big.get(&k), Some(&(k * 7 + 3)), "old big[{k}]");
    }
}

fn check_new(s: &K2) {
    assert_eq!(s.tag, 101);
    assert_eq!(s.doubled.len() as u64, N);
    for k in 0..N {
        assert_eq!(
            s.doubled.get(&k),
            Some(&(u128::from(k * 7 + 3) * 2)),
            "new doubled[{k}]"
        );
    }
}

/// Opens with `o`, retrying while a killed child's snapshot writer still holds the lock.
fn open_retrying<T: Persist + Send + Sync + 'static>(o: &OpenOptions, dir: &Path) -> snapheap::Result<Heap<T>> {
    let start = Instant::now();
    loop {
        match o.open(dir, |_| panic!("the heap exists")) {
            Err(Error::Locked { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            r => return r,
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn sigkill_during_migrations_leaves_the_old_state_or_the_new_one() {
    if role().as_deref() == Some("migrate") {
        let dir = std::env::var("HEAP").unwrap();
        println!("OPENING");
        let h: Heap<K2> = open_retrying(&options(2), dir.as_ref()).unwrap();
        println!("DONE {}", h.read().tag);
        std::thread::sleep(Duration::from_secs(60));
        return;
    } else if role().is_some() {
        return;
    }
    let kills: u64 = std::env::var("SNAPHEAP_MIGRATE_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let mut rng = Rng::new(0x6d16_7a7e);
    let s = Scratch::new("migrate-kill");
    let dir = s.heap();
    let pristine = s.path().join("pristine");
    let h = options(1).open(&dir, init).unwrap();
    // SAFETY: every value of the heap is in its root; the handle is consumed.
    unsafe { h.close_and_release() }.unwrap();
    copy_dir(&dir, &pristine);
    let (mut inside, mut before, mut after, mut finished_by_new) = (0u64, 0u64, 0u64, 0u64);
    for round in 0..kills {
        let mut child = child(TEST, "migrate", &[("HEAP", dir.to_str().unwrap())])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (rx, reader) = line_reader(child.stdout.take().unwrap());
        loop {
            let line = rx.recv_timeout(Duration::from_secs(30)).expect("child did not start");
            if line.contains("OPENING") {
                break;
            }
        }
        std::thread::sleep(Duration::from_micros(rng.below(160_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        reader.join().unwrap();
        let lines: Vec<String> = rx.try_iter().collect();
        let (saw_in, saw_done) = (
            lines.iter().any(|l| l.contains("IN")),
            lines.iter().any(|l| l.contains("DONE")),
        );
        match (saw_in, saw_done) {
            (false, _) => before += 1,
            (true, false) => inside += 1,
            (true, true) => after += 1,
        }
        // The old release: its state intact, or (only if the migration's commit completed)
        // refused because the heap now holds the new root.
        let migrated = match open_retrying::<K1>(&options(1), &dir) {
            Ok(h) => {
                check_old(&h.read());
                h.verify().unwrap_or_else(|e| panic!("round {round}: old release: {e}"));
                // SAFETY: every value of the heap is in its root; the handle is consumed.
                unsafe { h.close_and_release() }.unwrap();
                false
            }
            Err(Error::Incompatible { what }) => {
                assert!(what.contains("K2"), "round {round}: {what}");
                true
            }
            Err(e) => panic!("round {round}: the old release cannot open the heap: {e}"),
        };
        assert!(
            !saw_done || migrated,
            "round {round}: the child reported the migration done but it was lost"
        );
        // The new release finishes the migration (every third round, and whenever it was done).
        if migrated || round % 3 == 0 {
            let h: Heap<K2> = open_retrying(&options(2), &dir).unwrap();
            check_new(&h.read());
            h.verify().unwrap_or_else(|e| panic!("round {round}: new release: {e}"));
            // SAFETY: as above.
            unsafe { h.close_and_release() }.unwrap();
            finished_by_new += 1;
            copy_dir(&pristine, &dir);
        }
    }
    println!(
        "migration kill test: {kills} kills: {before} before the migration started, {inside} inside it, {after} \
         after its commit; the new release finished the migration {finished_by_new} times"
    );
    assert!(
        inside >= kills / 4,
        "too few kills landed inside a migration ({inside} of {kills})"
    );
}
