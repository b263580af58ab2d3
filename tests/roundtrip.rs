//! A heap survives a restart: values, and the addresses of the root and its elements.

mod common;

use common::*;
use snapheap::collections::{HashMap, String, Vec};
use snapheap::{Heap, HeapAlloc};
use std::fmt::Write;

#[derive(snapheap::Persist)]
struct State {
    map: HashMap<u64, String>,
    blobs: Vec<Vec<u8>>,
}

fn init(a: HeapAlloc) -> State {
    State {
        map: HashMap::new_in(a),
        blobs: Vec::new_in(a),
    }
}

fn value(k: u64) -> std::string::String {
    format!("value-{k}-{}", k.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn blob(i: u64) -> std::vec::Vec<u8> {
    (0..(i % 300 + 1)).map(|j| (i * 31 + j) as u8).collect()
}

/// Addresses recorded by the builder: root, then every 1000th key's String buffer, then
/// every blob's buffer.
fn addresses(heap: &Heap<State>) -> std::string::String {
    let s = heap.read();
    let mut out = std::string::String::new();
    write!(out, "{:p}", &*s).unwrap();
    for k in (0..100_000u64).step_by(1000) {
        write!(out, " {:p}", s.map[&k].as_ptr()).unwrap();
    }
    for b in s.blobs.iter() {
        write!(out, " {:p}", b.as_ptr()).unwrap();
    }
    out
}

#[test]
fn restart_round_trip_keeps_values_and_addresses() {
    const TEST: &str = "restart_round_trip_keeps_values_and_addresses";
    match role().as_deref() {
        Some("build") => {
            let dir = std::env::var("HEAP").unwrap();
            let heap = Heap::open(&dir, init).unwrap();
            let a = heap.alloc();
            {
                let mut s = heap.write();
                for k in 0..100_000u64 {
                    s.map.insert(k, String::from_str_in(&value(k), a));
                }
                for i in 0..1000u64 {
                    let mut v = Vec::new_in(a);
                    v.extend_from_slice(&blob(i));
                    s.blobs.push(v);
                }
                s.commit().unwrap();
            }
            println!("ADDR {}", addresses(&heap));
            heap.close().unwrap();
            return;
        }
        Some("check") => {
            let dir = std::env::var("HEAP").unwrap();
            let heap: Heap<State> = Heap::open(&dir, |_| panic!("init must not run on reopen")).unwrap();
            {
                let s = heap.read();
                assert_eq!(s.map.len(), 100_000);
                for k in 0..100_000u64 {
                    assert_eq!(s.map[&k].as_str(), value(k), "key {k}");
                }
                assert_eq!(s.blobs.len(), 1000);
                for (i, b) in s.blobs.iter().enumerate() {
                    assert_eq!(&b[..], &blob(i as u64)[..], "blob {i}");
                }
            }
            heap.verify().unwrap();
            println!("ADDR {}", addresses(&heap));
            heap.close().unwrap();
            return;
        }
        Some(_) => return,
        None => {}
    }
    let dir = Scratch::new("roundtrip");
    let heap_dir = dir.heap();
    let env = [("HEAP", heap_dir.to_str().unwrap())];
    let built = run_child(TEST, "build", &env);
    let checked = run_child(TEST, "check", &env);
    // libtest may print "test ... " on the same line before the child's output.
    let addr = |out: &str| {
        out.lines()
            .find_map(|l| l.find("ADDR ").map(|i| l[i..].to_owned()))
            .expect("ADDR line")
    };
    assert_eq!(
        addr(&built),
        addr(&checked),
        "root or element addresses moved across the restart"
    );
    // A third open, in this process, sees the same data again.
    let heap: Heap<State> = Heap::open(&heap_dir, |_| panic!("init must not run")).unwrap();
    assert_eq!(heap.read().map[&77_777].as_str(), value(77_777));
}

#[test]
fn init_runs_only_on_creation() {
    let dir = Scratch::new("init-once");
    let mut calls = 0;
    for _ in 0..3 {
        let heap = Heap::open(dir.heap(), |a| {
            calls += 1;
            let mut v = Vec::new_in(a);
            v.push(7u64);
            v
        })
        .unwrap();
        assert_eq!(&heap.read()[..], &[7]);
        heap.close().unwrap();
    }
    assert_eq!(calls, 1);
}

#[test]
fn uncommitted_changes_are_discarded_by_drop_and_kept_by_close() {
    let dir = Scratch::new("drop-vs-close");
    {
        let heap = Heap::open(dir.heap(), Vec::<u64>::new_in).unwrap();
        heap.write().push(1);
        heap.commit().unwrap();
        heap.write().push(2); // never committed
        drop(heap);
    }
    // In this process the dropped heap's memory (with the uncommitted push) is still mapped
    // for values that may have outlived the handle: the reopen refuses rather than show the
    // uncommitted change or map the files over that memory. A restart (or the release, when
    // nothing outlived the handle) recovers the last commit.
    assert!(matches!(
        Heap::open(dir.heap(), Vec::<u64>::new_in),
        Err(snapheap::Error::Detached { .. })
    ));
    // SAFETY: nothing allocated from the dropped heap is alive.
    assert!(unsafe { snapheap::release_detached(dir.heap()) }.unwrap());
    {
        let heap = Heap::open(dir.heap(), Vec::<u64>::new_in).unwrap();
        assert_eq!(&heap.read()[..], &[1]);
        heap.write().push(3);
        heap.close().unwrap(); // close commits
    }
    let heap = Heap::open(dir.heap(), Vec::<u64>::new_in).unwrap();
    assert_eq!(&heap.read()[..], &[1, 3]);
}

#[test]
fn two_heaps_work_side_by_side_in_one_process() {
    let dir = Scratch::new("two-heaps");
    let h1 = Heap::open(dir.path().join("one"), HashMap::<u64, u64>::new_in).unwrap();
    let h2 = Heap::open(dir.path().join("two"), HashMap::<u64, u64>::new_in).unwrap();
    for i in 0..10_000 {
        h1.write().insert(i, i * 2);
        h2.write().insert(i, i * 3);
    }
    h1.commit().unwrap();
    h2.commit().unwrap();
    h1.close().unwrap();
    h2.close().unwrap();
    let h1 = Heap::open(dir.path().join("one"), HashMap::<u64, u64>::new_in).unwrap();
    let h2 = Heap::open(dir.path().join("two"), HashMap::<u64, u64>::new_in).unwrap();
    assert_eq!(h1.read()[&9_999], 19_998);
    assert_eq!(h2.read()[&9_999], 29_997);
}

#[test]
fn the_issue_api_example_compiles_and_round_trips() {
    use snapheap::{Durability, OpenOptions, Stats};
    #[derive(snapheap::Persist)]
    struct State {
        map: HashMap<u64, String>,
        log: Vec<u64>,
    }
    let dir = Scratch::new("api");
    let path = dir.path().join("app.heap");
    let init = |a: HeapAlloc| State {
        map: HashMap::new_in(a),
        log: Vec::new_in(a),
    };
    let heap = Heap::<State>::open(&path, init).unwrap();
    let a: HeapAlloc = heap.alloc();
    {
        let mut s = heap.write();
        s.map.insert(1, String::from_str_in("one", a));
        s.log.push(1);
        let seq: u64 = s.commit().unwrap();
        assert!(seq >= 2);
    }
    let n = heap.read().log.len();
    assert_eq!(n, 1);
    let _seq: u64 = heap.commit().unwrap();
    heap.snapshot().unwrap();
    let st: Stats = heap.stats();
    assert!(st.snapshots >= 1 && st.commit_seq >= 2 && st.mapped_bytes > 0 && st.allocated_bytes > 0);
    let _ = (st.journal_bytes, st.last_snapshot_pages, st.last_fork_micros);
    heap.close().unwrap();
    let heap = OpenOptions::new()
        .max_size(1 << 36)
        .durability(Durability::Eventual)
        .schema("myapp-v1")
        .snapshot_after_journal_bytes(64 << 20)
        .open::<State>(&path, init)
        .unwrap();
    assert_eq!(heap.read().map[&1].as_str(), "one");
    let _e: Option<snapheap::Error> = None;
}
