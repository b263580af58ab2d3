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
        Replica::<State>::open_with(&replica_opts(), &rdir).unwrap()
    } else {
        let base = std::fs::read(gdir.join("base")).unwrap();
        Replica::<State>::bootstrap_with(&replica_opts(), &rdir, &base).unwrap()
    };
    println!("OPENED {}", r.position());
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

/// The value after `key` on the last line of `out` that starts with `line`.
fn field(out: &str, line: &str, key: &str) -> u64 {
    let l = out
        .lines()
        .rev()
        .find(|l| l.starts_with(line))
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
    heap.close().unwrap();
}
