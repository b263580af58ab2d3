//! Replication (issue 14, core): a primary ships its durable commit groups
//! (`ReplicationSource`), a `Replica` applies them in order and is promoted by a normal open.
//!
//! A replica maps the heap at the primary's fixed address, so the primary runs in the test
//! process and every replica in a child process (this binary again, in a role). Groups travel
//! as files: `base` and `g-<seq>` in a directory the parent writes and the child reads; the
//! child prints `POS <position> SUM <checksum> LEN <log length>` and the outcome of every
//! group it was given (`APPLIED n`, `DUP n`, `ERR n <kind>`).

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Applied, Error, Heap, HeapAlloc, OpenOptions, Persist, Replica, ReplicationSource};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Persist)]
struct State {
    log: Vec<u64>,
    blob: Vec<u8>,
}

fn init(a: HeapAlloc) -> State {
    State {
        log: Vec::new_in(a),
        blob: Vec::new_in(a),
    }
}

fn primary_opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.replication(true)
        .snapshot_after_journal_bytes(256 << 10)
        .max_size(1 << 30);
    o
}

fn replica_opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.snapshot_after_journal_bytes(192 << 10);
    o
}

/// One commit: append `n` to the log and rewrite a few bytes (small changes: DELTA records)
/// or a whole stretch of the blob (PAGES records) every 7th commit.
fn commit_one(heap: &Heap<State>, n: u64) -> u64 {
    let mut g = heap.write();
    g.log.push(n);
    if g.blob.len() < (256 << 10) {
        let len = g.blob.len();
        g.blob.resize(len + (32 << 10), n as u8);
    }
    let len = g.blob.len();
    if n % 7 == 0 {
        for i in 0..(48 << 10) {
            let at = (n as usize * 4096 + i) % len;
            g.blob[at] = (n as u8).wrapping_mul(31).wrapping_add(i as u8);
        }
    } else {
        let at = (n as usize * 9973) % len;
        g.blob[at] = g.blob[at].wrapping_add(1);
    }
    g.commit().unwrap()
}

fn group_path(gdir: &Path, seq: u64) -> PathBuf {
    gdir.join(format!("g-{seq:012}"))
}

/// Writes every group after `after` that is durable now; returns the last seq written.
fn ship(src: &ReplicationSource, mut after: u64, gdir: &Path) -> u64 {
    while let Some(g) = src.next_group(after, Duration::ZERO).unwrap() {
        assert_eq!(g.seq, after + 1, "groups come in seq order");
        std::fs::write(group_path(gdir, g.seq), &g.bytes).unwrap();
        after = g.seq;
    }
    after
}

fn write_base(src: &ReplicationSource, gdir: &Path) -> u64 {
    let b = src.export_base().unwrap();
    assert_eq!(b.heap_id, src.heap_id());
    std::fs::write(gdir.join("base"), &b.bytes).unwrap();
    b.seq
}

/// The child side: bootstrap (first time) or open the replica, apply the group files in
/// order (all of them, or those named in `ONLY`), print the outcomes and the state.
fn child_apply() {
    let rdir = PathBuf::from(std::env::var("REPLICA").unwrap());
    let gdir = PathBuf::from(std::env::var("GROUPS").unwrap());
    let r = if rdir.join("replica").exists() {
        open_replica_retrying(&rdir)
    } else {
        let _ = std::fs::remove_dir_all(&rdir); // an interrupted bootstrap
        let base = std::fs::read(gdir.join("base")).unwrap();
        Replica::<State>::bootstrap_with(&replica_opts(), &rdir, &base).unwrap()
    };
    println!("OPENED {} SUM {}", r.position(), r.content_checksum().unwrap());
    let mut files: std::vec::Vec<PathBuf> = match std::env::var("ONLY") {
        Ok(list) => list.split(',').map(|f| gdir.join(f)).collect(),
        Err(_) => std::fs::read_dir(&gdir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("g-"))
            .collect(),
    };
    if std::env::var("ONLY").is_err() {
        files.sort();
    }
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        let name = f.file_name().unwrap().to_str().unwrap().to_string();
        match r.apply(&bytes) {
            Ok(Applied::Applied(s)) => println!("APPLIED {s}"),
            Ok(Applied::Duplicate(s)) => println!("DUP {s}"),
            Err(e) => {
                let kind = match e {
                    Error::ReplicaGap { .. } => "gap",
                    Error::ReplicaDiverged { .. } => "diverged",
                    Error::Corrupt { .. } => "corrupt",
                    _ => "other",
                };
                println!("ERR {name} {kind} {e}");
            }
        }
    }
    let g = r.read().unwrap();
    println!(
        "POS {} SUM {} LEN {} LAST {}",
        r.position(),
        r.content_checksum().unwrap(),
        g.log.len(),
        g.log.last().copied().unwrap_or(0)
    );
}

/// Opens a replica, retrying while a killed process's snapshot writer still holds the lock
/// (it dies with its parent, asynchronously).
fn open_replica_retrying(dir: &Path) -> Replica<State> {
    let start = std::time::Instant::now();
    loop {
        match Replica::<State>::open_with(&replica_opts(), dir) {
            Ok(r) => return r,
            Err(Error::Locked { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("replica reopen failed: {e}"),
        }
    }
}

/// The child side of the promotion test: a replica directory that `Heap::open` refuses,
/// promoted, committing on, shipping its new groups into the same group directory.
fn child_promote() {
    let rdir = PathBuf::from(std::env::var("REPLICA").unwrap());
    let gdir = PathBuf::from(std::env::var("GROUPS").unwrap());
    let r = open_replica_retrying(&rdir);
    let pos = r.position();
    let len = r.read().unwrap().log.len() as u64;
    drop(r);
    match Heap::<State>::open(&rdir, init) {
        Err(Error::InvalidArgument { .. }) => println!("REFUSED"),
        Err(e) => panic!("unexpected error opening a replica as a heap: {e}"),
        Ok(_) => panic!("a replica directory opened as a writable heap"),
    }
    let r = open_replica_retrying(&rdir);
    let heap = r.promote(&primary_opts()).unwrap();
    assert_eq!(heap.read().log.len() as u64, len);
    let src = heap.replication_source().unwrap();
    src.hold_from(pos);
    for n in len + 1..len + 31 {
        commit_one(&heap, n);
    }
    let last = ship(&src, pos, &gdir);
    println!("PROMOTED {pos} NEWPOS {last} SUM {}", heap.content_checksum().unwrap());
    heap.close().unwrap();
    let heap = primary_opts().open(&rdir, init).unwrap();
    println!("REOPENED LEN {}", heap.read().log.len());
}

/// The killed primary's options: with `snapshots`, a 96 KiB snapshot threshold (snapshots, and
/// so journal removal, inside most rounds); without, one no round reaches (the journals after
/// the standby's position all survive the kill and the restart).
fn killed_primary_opts(snapshots: bool) -> OpenOptions {
    let mut o = primary_opts();
    o.snapshot_after_journal_bytes(if snapshots { 96 << 10 } else { 1 << 40 });
    o
}

/// Whether the killed primary of this round takes snapshots (`PRIMARY_SNAPSHOTS`, set by the
/// test for its child).
fn primary_snapshots_env() -> bool {
    std::env::var("PRIMARY_SNAPSHOTS").map_or(true, |v| v != "0")
}

/// A primary committing until it is killed.
fn child_primary() {
    let dir = PathBuf::from(std::env::var("PRIMARY").unwrap());
    let heap = open_primary_retrying(&dir, primary_snapshots_env());
    let mut n = heap.read().log.len() as u64 + 1;
    println!("READY");
    loop {
        commit_one(&heap, n);
        n += 1;
    }
}

fn open_primary_retrying(dir: &Path, snapshots: bool) -> Heap<State> {
    let start = std::time::Instant::now();
    loop {
        match killed_primary_opts(snapshots).open(dir, init) {
            Ok(h) => return h,
            Err(Error::Locked { .. }) if start.elapsed() < Duration::from_secs(20) => {
                std::thread::sleep(Duration::from_millis(2))
            }
            Err(e) => panic!("primary reopen failed: {e}"),
        }
    }
}

/// The value after `key` on the last line of `out` that starts with `line`.
fn field(out: &str, line: &str, key: &str) -> u64 {
    // The first line a child prints follows the test harness's `test name ... ` on the same line.
    let l = out
        .lines()
        .rev()
        .find_map(|l| l.find(&format!("{line} ")).map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no {line} line in:\n{out}"));
    let mut it = l.split_whitespace();
    while let Some(w) = it.next() {
        if w == key {
            return it.next().unwrap().parse().unwrap();
        }
    }
    panic!("no {key} in {l}")
}

fn run_apply(test: &str, rdir: &Path, gdir: &Path, only: Option<&str>) -> String {
    let mut env = vec![("REPLICA", rdir.to_str().unwrap()), ("GROUPS", gdir.to_str().unwrap())];
    if let Some(o) = only {
        env.push(("ONLY", o));
    }
    run_child(test, "apply", &env)
}

/// Dispatches a child role; true when this process is a child and has done its part.
fn child_role() -> bool {
    match role().as_deref() {
        Some("apply") => {
            child_apply();
            true
        }
        Some("promote") => {
            child_promote();
            true
        }
        Some("primary") => {
            child_primary();
            true
        }
        Some(other) => panic!("unknown role {other}"),
        None => false,
    }
}

#[test]
fn round_trip_full_and_delta_records_across_journal_rotations() {
    if child_role() {
        return;
    }
    let s = Scratch::new("repl-rt");
    let (pdir, rdir, gdir) = (s.path().join("p"), s.path().join("r"), s.path().join("g"));
    std::fs::create_dir_all(&gdir).unwrap();
    let heap = primary_opts().open(&pdir, init).unwrap();
    let mut n = 1;
    for _ in 0..20 {
        commit_one(&heap, n);
        n += 1;
    }
    let src = heap.replication_source().unwrap();
    let base_seq = write_base(&src, &gdir);
    src.hold_from(base_seq);
    let mut shipped = ship(&src, base_seq, &gdir);
    // More commits while shipping: snapshots rotate the journal (threshold 256 KiB).
    let snaps_before = heap.stats().snapshots;
    for round in 0..6 {
        for _ in 0..25 {
            commit_one(&heap, n);
            n += 1;
        }
        shipped = ship(&src, shipped, &gdir);
        src.acknowledge(shipped);
        if round == 2 {
            // The first child bootstraps and applies what is there so far.
            let out = run_apply(
                "round_trip_full_and_delta_records_across_journal_rotations",
                &rdir,
                &gdir,
                None,
            );
            assert_eq!(field(&out, "POS", "POS"), shipped, "{out}");
        }
    }
    let st = heap.stats();
    assert!(
        st.snapshots > snaps_before,
        "no snapshot rotated the journal while shipping"
    );
    assert!(
        st.delta_pages > 0 && st.full_pages > 0,
        "both record kinds shipped: {st:?}"
    );
    assert_eq!(shipped, st.durable_seq);
    let sum = heap.content_checksum().unwrap();
    let out = run_apply(
        "round_trip_full_and_delta_records_across_journal_rotations",
        &rdir,
        &gdir,
        None,
    );
    println!("{out}");
    assert!(!out.contains("ERR"), "{out}");
    assert_eq!(field(&out, "POS", "POS"), shipped, "{out}");
    assert_eq!(
        field(&out, "POS", "SUM"),
        sum,
        "replica content differs from the primary at {shipped}"
    );
    assert_eq!(field(&out, "POS", "LEN"), n - 1);
    assert_eq!(field(&out, "POS", "LAST"), n - 1);
    // The replica snapshots on its own (threshold 192 KiB), which bounds its journal: the
    // bootstrap wrote only `snapshot-0`, and journals before its newest snapshot are gone.
    assert!(
        std::fs::metadata(rdir.join("snapshot-1")).unwrap().len() > 0,
        "the replica never took a snapshot"
    );
    let journals = std::fs::read_dir(&rdir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_str()
                .unwrap()
                .starts_with("journal-")
        })
        .count();
    assert!(journals <= 3, "{journals} journals left in the replica");
    heap.close().unwrap();
}

/// Primary side of the standby tests: `count` commits shipped (with rotations), the
/// primary's checksum recorded after each.
struct Shipped {
    s: Scratch,
    heap: Heap<State>,
    src: ReplicationSource,
    last: u64,
    n: u64,
    sums: std::collections::HashMap<u64, u64>,
}

fn shipped(tag: &str, count: u64) -> Shipped {
    let s = Scratch::new(tag);
    std::fs::create_dir_all(s.path().join("g")).unwrap();
    let heap = primary_opts().open(s.path().join("p"), init).unwrap();
    commit_one(&heap, 1);
    let src = heap.replication_source().unwrap();
    let gdir = s.path().join("g");
    let base = write_base(&src, &gdir);
    let mut sums = std::collections::HashMap::new();
    sums.insert(base, heap.content_checksum().unwrap());
    let mut n = heap.read().log.len() as u64 + 1;
    let mut last = base;
    for _ in 0..count {
        let seq = commit_one(&heap, n);
        sums.insert(seq, heap.content_checksum().unwrap());
        n += 1;
        last = ship(&src, last, &gdir);
        assert_eq!(last, seq);
    }
    Shipped {
        s,
        heap,
        src,
        last,
        n,
        sums,
    }
}

#[test]
fn gap_duplicate_divergence_and_damage_are_distinct_and_apply_nothing() {
    const T: &str = "gap_duplicate_divergence_and_damage_are_distinct_and_apply_nothing";
    if child_role() {
        return;
    }
    let Shipped {
        s,
        heap,
        src,
        last: k,
        n,
        sums,
        ..
    } = shipped("repl-errors", 12);
    let gdir = s.path().join("g");
    let rdir = s.path().join("r");
    // Another copy of the heap with the same past up to `k` (a restored backup, or an old
    // primary after a failover): its groups k+1, k+2 have the right seqs and another history.
    let pdir = s.path().join("p");
    let bdir = s.path().join("b");
    drop(src);
    // SAFETY: no value allocated from the heap outlives this point.
    unsafe { heap.close_and_release() }.unwrap();
    copy_dir(&pdir, &bdir);
    let other = primary_opts().open(&bdir, init).unwrap();
    let osrc = other.replication_source().unwrap();
    for i in 0..2 {
        let seq = commit_one(&other, 1000 + i);
        let g = osrc.next_group(seq - 1, Duration::ZERO).unwrap().unwrap();
        std::fs::write(gdir.join(format!("b-{seq:012}")), &g.bytes).unwrap();
    }
    // SAFETY: as above.
    unsafe { other.close_and_release() }.unwrap();
    // The real primary, reopened (its chain continues across the restart), goes on.
    let heap = primary_opts().open(&pdir, init).unwrap();
    let src = heap.replication_source().unwrap();
    for n in n..n + 3 {
        commit_one(&heap, n);
    }
    let last = ship(&src, k, &gdir);
    assert_eq!(last, k + 3);
    // Damaged copies of group k+1: a flipped byte in the header, in a record header, in a
    // payload, and a truncation.
    let good = std::fs::read(group_path(&gdir, k + 1)).unwrap();
    for (i, at) in [20usize, 64 + 5, good.len() - 50, good.len() / 2].iter().enumerate() {
        let mut bad = good.clone();
        bad[*at] ^= 0x40;
        std::fs::write(gdir.join(format!("d-{i}")), &bad).unwrap();
    }
    std::fs::write(gdir.join("d-short"), &good[..good.len() - 8]).unwrap();
    let g = |s: u64| format!("g-{s:012}");
    let b = |s: u64| format!("b-{s:012}");
    // Bootstrap and apply up to k - 1.
    let upto: std::vec::Vec<String> = (sums.keys().min().unwrap() + 1..k).map(g).collect();
    let out = run_apply(T, &rdir, &gdir, Some(&upto.join(",")));
    assert_eq!(field(&out, "POS", "POS"), k - 1, "{out}");
    let script = [
        g(k + 1),         // gap
        "d-0".into(),     // damage (header)
        g(k),             // applied
        g(k),             // duplicate
        "d-1".into(),     // damage (record header)
        "d-2".into(),     // damage (payload)
        "d-3".into(),     // damage (payload)
        "d-short".into(), // damage (truncated)
        b(k + 2),         // gap (and another history)
        g(k + 1),         // applied
        b(k + 1),         // same seq, another history: diverged
        b(k + 2),         // continues another history: diverged
        g(k + 2),         // applied
        g(k + 3),         // applied
    ];
    let out = run_apply(T, &rdir, &gdir, Some(&script.join(",")));
    println!("{out}");
    let outcomes: std::vec::Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("APPLIED") || l.starts_with("DUP") || l.starts_with("ERR"))
        .map(
            |l| match l.split_whitespace().collect::<std::vec::Vec<_>>().as_slice() {
                ["APPLIED", ..] => "applied",
                ["DUP", ..] => "dup",
                ["ERR", _, kind, ..] => kind,
                _ => unreachable!(),
            },
        )
        .collect();
    assert_eq!(
        outcomes,
        [
            "gap", "corrupt", "applied", "dup", "corrupt", "corrupt", "corrupt", "corrupt", "gap", "applied",
            "diverged", "diverged", "applied", "applied"
        ],
        "{out}"
    );
    assert_eq!(field(&out, "POS", "POS"), k + 3);
    assert_eq!(field(&out, "POS", "SUM"), heap.content_checksum().unwrap(), "{out}");
    heap.close().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "lock" {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn standby_sigkill_during_apply_resumes_with_the_primarys_content() {
    const T: &str = "standby_sigkill_during_apply_resumes_with_the_primarys_content";
    if child_role() {
        return;
    }
    let rounds: u64 = std::env::var("SNAPHEAP_REPL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let Shipped {
        s, heap, last, sums, ..
    } = shipped("repl-kill", (rounds * 8).max(240));
    let (rdir, gdir) = (s.path().join("r"), s.path().join("g"));
    let mut rng = Rng::new(0x5eed ^ rounds);
    let mut positions = std::vec::Vec::new();
    let mut prev = 0;
    for round in 0..rounds {
        let mut c = child(
            T,
            "apply",
            &[("REPLICA", rdir.to_str().unwrap()), ("GROUPS", gdir.to_str().unwrap())],
        );
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let mut ch = c.spawn().unwrap();
        let (lines, reader) = line_reader(ch.stdout.take().unwrap());
        // Wait until it opened (and printed where), then kill it a random moment later.
        let opened = loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("OPENED ") => break l,
                Ok(_) => {}
                Err(e) => panic!("round {round}: the child never opened the replica: {e:?}"),
            }
        };
        std::thread::sleep(Duration::from_micros(rng.below(60_000)));
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(ch.id() as i32, libc::SIGKILL) };
        let _ = ch.wait();
        let _ = reader.join();
        let pos = field(&opened, "OPENED", "OPENED");
        let sum = field(&opened, "OPENED", "SUM");
        assert!(pos >= prev, "round {round}: position went back from {prev} to {pos}");
        assert_eq!(
            Some(&sum),
            sums.get(&pos),
            "round {round}: replica content at {pos} differs from the primary's"
        );
        positions.push(pos);
        prev = pos;
    }
    println!("positions at reopen: {positions:?}");
    let out = run_apply(T, &rdir, &gdir, None);
    assert!(!out.contains("ERR"), "{out}");
    assert_eq!(field(&out, "POS", "POS"), last);
    assert_eq!(field(&out, "POS", "SUM"), sums[&last]);
    let distinct: std::collections::BTreeSet<_> = positions.iter().collect();
    assert!(
        distinct.len() > 2,
        "the kills did not land during applies: {positions:?}"
    );
    heap.close().unwrap();
}

#[test]
fn promoted_standby_refuses_plain_open_then_commits_and_its_groups_continue_the_chain() {
    const T: &str = "promoted_standby_refuses_plain_open_then_commits_and_its_groups_continue_the_chain";
    if child_role() {
        return;
    }
    let Shipped { s, heap, last, .. } = shipped("repl-promote", 40);
    let (r1, r2, gdir) = (s.path().join("r1"), s.path().join("r2"), s.path().join("g"));
    // Two standbys follow the primary to `last`.
    for r in [&r1, &r2] {
        let out = run_apply(T, r, &gdir, None);
        assert_eq!(field(&out, "POS", "POS"), last, "{out}");
    }
    let primary_len = heap.read().log.len() as u64;
    // The primary is lost; standby 1 is promoted and commits 30 more.
    drop(heap);
    let out = run_child(
        T,
        "promote",
        &[("REPLICA", r1.to_str().unwrap()), ("GROUPS", gdir.to_str().unwrap())],
    );
    println!("{out}");
    assert!(out.contains("REFUSED"), "{out}");
    let newpos = field(&out, "PROMOTED", "NEWPOS");
    assert_eq!(field(&out, "PROMOTED", "PROMOTED"), last);
    assert_eq!(newpos, last + 30);
    assert_eq!(field(&out, "REOPENED", "LEN"), primary_len + 30);
    // Standby 2 follows the new primary: its groups continue the same chain.
    let out2 = run_apply(T, &r2, &gdir, None);
    assert!(!out2.contains("ERR"), "{out2}");
    assert_eq!(field(&out2, "POS", "POS"), newpos);
    assert_eq!(field(&out2, "POS", "SUM"), field(&out, "PROMOTED", "SUM"));
    assert_eq!(field(&out2, "POS", "LEN"), primary_len + 30);
}

#[test]
fn backlog_is_held_across_snapshots_up_to_the_cap_then_trimmed() {
    if child_role() {
        return;
    }
    let s = Scratch::new("repl-backlog");
    let mut o = primary_opts();
    // Whole-page journaling, so that the hundred commits below journal well past the 1 MiB
    // cap (with deltas, and snapshot forks keeping the base cache, they journal a few KiB).
    o.replication_backlog_bytes(1 << 20).base_cache_bytes(0);
    let heap = o.open(s.path().join("p"), init).unwrap();
    commit_one(&heap, 1);
    let src = heap.replication_source().unwrap();
    let from = src.durable_seq();
    // Without a hold, a snapshot deletes what the shipper has not read.
    for n in 2..10 {
        commit_one(&heap, n);
    }
    heap.snapshot().unwrap();
    match src.next_group(from, Duration::ZERO) {
        Err(Error::BacklogTrimmed { wanted, oldest }) => {
            assert_eq!(wanted, from + 1);
            assert!(oldest > wanted);
        }
        other => panic!("expected BacklogTrimmed, got {:?}", other.map(|g| g.map(|g| g.seq))),
    }
    // With a hold, the journals survive several snapshots while within the cap.
    let from = src.durable_seq();
    src.hold_from(from);
    let mut n = 10;
    for _ in 0..3 {
        for _ in 0..5 {
            commit_one(&heap, n);
            n += 1;
        }
        heap.snapshot().unwrap();
    }
    let mut after = from;
    while let Some(g) = src.next_group(after, Duration::ZERO).unwrap() {
        assert_eq!(g.seq, after + 1);
        after = g.seq;
    }
    assert_eq!(after, src.durable_seq(), "every held group is still readable");
    // Past the cap the hold is dropped.
    for _ in 0..10 {
        for _ in 0..10 {
            commit_one(&heap, n);
            n += 1;
        }
        heap.snapshot().unwrap();
    }
    match src.next_group(from, Duration::ZERO) {
        Err(Error::BacklogTrimmed { wanted, oldest }) => assert!(wanted == from + 1 && oldest > wanted),
        other => panic!(
            "expected BacklogTrimmed past the cap, got {:?}",
            other.map(|g| g.map(|g| g.seq))
        ),
    }
    // A new base and the groups after it work again.
    let b = src.export_base().unwrap();
    assert!(src.next_group(b.seq, Duration::ZERO).is_ok());
    heap.close().unwrap();
}

#[test]
fn replicated_durability_waits_for_the_acknowledgement_times_out_and_is_fenced() {
    if child_role() {
        return;
    }
    let s = Scratch::new("repl-durability");
    let mut o = OpenOptions::new();
    o.durability(snapheap::Durability::Replicated {
        timeout: Duration::from_millis(150),
    });
    let heap = o.open(s.heap(), init).unwrap();
    let src = heap.replication_source().unwrap();
    // No shipper: the commit times out but is durable locally.
    heap.write().log.push(1);
    let seq = match heap.commit() {
        Err(Error::ReplicationTimeout { seq }) => seq,
        other => panic!("expected ReplicationTimeout, got {other:?}"),
    };
    assert!(heap.stats().durable_seq >= seq);
    // A shipper that acknowledges what it reads: commits return.
    let shipper = {
        let src = src.clone();
        std::thread::spawn(move || {
            let mut after = src.durable_seq().min(seq - 1);
            loop {
                match src.next_group(after, Duration::from_millis(20)) {
                    Ok(Some(g)) => {
                        after = g.seq;
                        src.acknowledge(g.seq);
                    }
                    Ok(None) => {}
                    Err(Error::Closed { .. }) => return after,
                    Err(e) => panic!("shipper: {e}"),
                }
            }
        })
    };
    for n in 2..20 {
        heap.write().log.push(n);
        heap.commit().unwrap();
    }
    // Fenced: the next commit is refused and writes nothing.
    src.fence("a newer primary holds epoch 2");
    heap.write().log.push(99);
    let before = heap.stats().commit_seq;
    match heap.commit() {
        Err(Error::Fenced { reason }) => assert!(reason.contains("epoch 2")),
        other => panic!("expected Fenced, got {other:?}"),
    }
    assert_eq!(heap.stats().commit_seq, before);
    let len = {
        let g = heap.read();
        g.log.len()
    };
    drop(heap); // no commit of the fenced change
    let shipped = shipper.join().unwrap();
    assert!(shipped >= before);
    assert!(matches!(
        src.next_group(shipped, Duration::ZERO),
        Err(Error::Closed { .. })
    ));
    let _ = len;
}

#[test]
fn primary_sigkill_and_restart_keeps_the_chain_for_its_standby() {
    const T: &str = "primary_sigkill_and_restart_keeps_the_chain_for_its_standby";
    if child_role() {
        return;
    }
    let rounds: u64 = std::env::var("SNAPHEAP_REPL_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30)
        / 2;
    let s = Scratch::new("repl-primary-kill");
    let (pdir, rdir, gdir) = (s.path().join("p"), s.path().join("r"), s.path().join("g"));
    std::fs::create_dir_all(&gdir).unwrap();
    let mut rng = Rng::new(0xfeed ^ rounds);
    let mut pos = None::<u64>;
    let mut rebases = 0;
    for round in 0..rounds.max(3) {
        // Odd rounds take no snapshot, so the standby must follow them without a new base;
        // even rounds snapshot (and remove journals) and may need one.
        let snapshots = round % 2 == 0;
        let env_snap = if snapshots { "1" } else { "0" };
        let mut c = child(
            T,
            "primary",
            &[("PRIMARY", pdir.to_str().unwrap()), ("PRIMARY_SNAPSHOTS", env_snap)],
        );
        // The child's stderr goes to a file, so that a primary that dies before READY says why.
        let err_path = s.path().join("primary-stderr");
        c.stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let mut ch = c.spawn().unwrap();
        let (lines, reader) = line_reader(ch.stdout.take().unwrap());
        loop {
            match lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) if l.contains("READY") => break,
                Ok(_) => {}
                Err(e) => {
                    let _ = ch.wait();
                    let why = std::fs::read_to_string(&err_path).unwrap_or_default();
                    panic!("round {round}: the primary never started: {e:?}; its stderr:\n{why}");
                }
            }
        }
        std::thread::sleep(Duration::from_micros(10_000 + rng.below(80_000)));
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(ch.id() as i32, libc::SIGKILL) };
        let _ = ch.wait();
        let _ = reader.join();
        // The restarted primary ships what the standby lacks (or a new base).
        let heap = open_primary_retrying(&pdir, snapshots);
        // The open's allocator attach rewrote process-local links in the region: commit them,
        // so memory is the committed image again (what `content_checksum` compares).
        heap.commit().unwrap();
        let src = heap.replication_source().unwrap();
        let from = match pos {
            Some(p) => match src.next_group(p, Duration::ZERO) {
                Err(Error::BacklogTrimmed { wanted, oldest }) => {
                    assert!(
                        snapshots,
                        "round {round}: no snapshot was taken, yet group {wanted} is gone"
                    );
                    assert!(
                        oldest > wanted,
                        "round {round}: trimmed {wanted} though {oldest} is the oldest held"
                    );
                    None
                }
                Ok(_) => Some(p),
                Err(e) => panic!("round {round}: {e}"),
            },
            None => None,
        };
        let from = match from {
            Some(p) => p,
            None => {
                rebases += 1;
                let _ = std::fs::remove_dir_all(&rdir);
                write_base(&src, &gdir)
            }
        };
        let last = ship(&src, from, &gdir);
        assert_eq!(last, heap.stats().durable_seq);
        let sum = heap.content_checksum().unwrap();
        drop(src);
        // SAFETY: no value allocated from the heap outlives this point.
        unsafe { heap.close_and_release() }.unwrap();
        let out = run_apply(T, &rdir, &gdir, None);
        assert!(!out.contains("ERR"), "round {round}: {out}");
        assert_eq!(field(&out, "POS", "POS"), last, "round {round}");
        assert_eq!(
            field(&out, "POS", "SUM"),
            sum,
            "round {round}: standby differs from the restarted primary"
        );
        pos = Some(last);
    }
    println!("rounds {} rebases {rebases} last {pos:?}", rounds.max(3));
    // Round 0 bootstraps; every round without snapshots was followed without a new base
    // (asserted above), so at least one round in three continued the standby's chain.
    assert!(rebases < rounds.max(3), "every round needed a new base");
}

/// A disk whose journal `fdatasync`s block, once armed, until the test opens the gate.
struct Gate {
    armed: std::sync::atomic::AtomicBool,
    open: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
}

impl Gate {
    fn pass(&self) {
        if !self.armed.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut o = self.open.lock().unwrap();
        while !*o {
            o = self.cv.wait(o).unwrap();
        }
    }
    fn set(&self, armed: bool, open: bool) {
        self.armed.store(armed, std::sync::atomic::Ordering::Release);
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

struct GatedVfs(snapheap::io::OsVfs, std::sync::Arc<Gate>);
struct GatedFile(Box<dyn snapheap::io::VFile>, Option<std::sync::Arc<Gate>>);

impl snapheap::io::VFile for GatedFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> std::io::Result<()> {
        if let Some(g) = &self.1 {
            g.pass();
        }
        self.0.sync_data()
    }
    fn allocate(&self, len: u64) -> std::io::Result<()> {
        self.0.allocate(len)
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> std::io::Result<u64> {
        self.0.len()
    }
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.raw_fd()
    }
    fn map_fd(&self) -> Option<std::os::fd::RawFd> {
        self.0.map_fd()
    }
}

impl snapheap::io::Vfs for GatedVfs {
    fn open(&self, path: &Path, create: bool) -> std::io::Result<Box<dyn snapheap::io::VFile>> {
        let journal = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("journal"));
        Ok(Box::new(GatedFile(
            self.0.open(path, create)?,
            journal.then(|| self.1.clone()),
        )))
    }
    fn remove(&self, path: &Path) -> std::io::Result<()> {
        self.0.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        self.0.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        self.0.sync_dir(dir)
    }
    fn list(&self, dir: &Path) -> std::io::Result<std::vec::Vec<PathBuf>> {
        self.0.list(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> std::io::Result<()> {
        self.0.create_dir_all(dir)
    }
}

/// `Durability::Replicated` hands the group to the shipper as soon as it is written, while
/// the commit's `fdatasync` is still running (held here by a gated disk), and the commit
/// returns only when both the sync and the acknowledgement are done; with `Immediate` the
/// source still waits for the sync.
#[test]
fn replicated_commit_ships_while_its_sync_runs_and_returns_after_both() {
    if child_role() {
        return;
    }
    for replicated in [true, false] {
        let s = Scratch::new("repl-overlap");
        let gate = std::sync::Arc::new(Gate {
            armed: false.into(),
            open: std::sync::Mutex::new(true),
            cv: std::sync::Condvar::new(),
        });
        let mut o = OpenOptions::new();
        o.vfs(std::sync::Arc::new(GatedVfs(snapheap::io::OsVfs, gate.clone())));
        if replicated {
            o.durability(snapheap::Durability::Replicated {
                timeout: Duration::from_secs(30),
            });
        } else {
            o.durability(snapheap::Durability::Immediate).replication(true);
        }
        let heap = std::sync::Arc::new(o.open(s.heap(), init).unwrap());
        let src = heap.replication_source().unwrap();
        let before = src.durable_seq();
        src.acknowledge(before);
        gate.set(true, false);
        let (tx, rx) = std::sync::mpsc::channel();
        let committer = {
            let heap = heap.clone();
            std::thread::spawn(move || {
                heap.write().log.push(7);
                let _ = tx.send(heap.commit());
            })
        };
        if replicated {
            let g = src
                .next_group(before, Duration::from_secs(30))
                .unwrap()
                .expect("the written group is handed out while its sync is held");
            assert_eq!(g.seq, before + 1);
            assert_eq!(src.durable_seq(), before, "the group is not durable yet");
            assert!(src.chain_at(g.seq).is_some());
            // That group came from the commit's in-memory copy, which a take consumes; the
            // same group again is read back from the journal: the same bytes.
            let again = src.next_group(before, Duration::ZERO).unwrap().unwrap();
            assert_eq!(again, g, "the in-memory copy and the journal give the same wire group");
            src.acknowledge(g.seq);
            // Acknowledged but not durable: the commit must still be waiting.
            std::thread::sleep(Duration::from_millis(50));
            assert!(rx.try_recv().is_err(), "the commit returned before its sync");
            gate.set(false, true);
        } else {
            // The sync is held: nothing is shippable.
            assert!(src.next_group(before, Duration::from_millis(200)).unwrap().is_none());
            gate.set(false, true);
            let g = src.next_group(before, Duration::from_secs(30)).unwrap().unwrap();
            assert_eq!(g.seq, before + 1);
        }
        let seq = rx.recv_timeout(Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(seq, before + 1);
        assert!(src.durable_seq() >= seq);
        committer.join().unwrap();
        drop(src);
        std::sync::Arc::try_unwrap(heap).ok().unwrap().close().unwrap();
    }
}
