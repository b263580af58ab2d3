//! `GlobalHeap` as the global allocator: a `serde_json::Value` of a few MB parsed into a root
//! survives five restarts, each finding it equal to a fresh parse, and the reclaim at open
//! keeps the allocated bytes flat although every run leaks 4 MiB and replaces the root.
//!
//! The test binary runs on a volatile `GlobalHeap`; it re-executes itself with `SNAPHEAP_DIR`
//! set for each run of the persistent program.

mod common;

use common::*;
use serde_json::Value;
use snapheap::GlobalHeap;

#[global_allocator]
static HEAP: GlobalHeap = GlobalHeap::new();

const TEST: &str = "json_root_survives_five_restarts_and_reclaim_keeps_allocation_flat";

/// A deterministic JSON document of about 3 MB: objects with strings, numbers, booleans,
/// nulls and nested arrays.
fn document() -> String {
    let mut rng = Rng::new(42);
    let mut s = String::with_capacity(3 << 20);
    s.push('[');
    for i in 0..16_000 {
        if i > 0 {
            s.push(',');
        }
        let tags: Vec<String> = (0..rng.below(6))
            .map(|k| format!("\"tag-{}-{k}\"", rng.below(1000)))
            .collect();
        s.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item number {i} of the document\",\"score\":{}.{},\"ok\":{},\"none\":null,\
             \"tags\":[{}],\"nested\":{{\"depth\":{},\"values\":[{},{},{}],\"label\":\"{}\"}}}}",
            rng.below(100_000),
            rng.below(1000),
            rng.below(2) == 0,
            tags.join(","),
            rng.below(10),
            rng.next() as i64,
            rng.below(1 << 20),
            rng.below(7),
            "x".repeat(rng.below(40) as usize),
        ));
    }
    s.push(']');
    s
}

/// The root: a JSON document. `serde_json::Value` is a foreign type, so it gets the escape hatch
/// through a newtype instead of the derive.
struct Json(Value);

// SAFETY: a `Value` is null, a bool, a number (integers or a float, inline), or a `String`,
// `Vec<Value>` or map of `String` to `Value` (a `BTreeMap`, or an `IndexMap` of a `Vec` and a
// hash table with `RandomState` under `preserve_order`): every pointer it holds is a plain
// address of a block from the global allocator, which is this GlobalHeap; no references,
// `fn` pointers, vtables, handles or locks.
unsafe impl snapheap::GlobalPersist for Json {}

fn parse() -> Value {
    serde_json::from_str(&document()).expect("the generated document parses")
}

fn create() {
    assert!(HEAP.is_persistent());
    let v = parse();
    HEAP.with_root(|| Json(Value::Null), |root| root.0 = v);
    HEAP.commit().expect("commit");
    println!("DOC {}", document().len());
}

fn restart() {
    assert!(HEAP.is_persistent());
    let fresh = parse();
    let equal = HEAP.with_root(|| Json(Value::Null), |root| root.0 == fresh);
    assert!(equal, "the root differs from a fresh parse");
    drop(fresh);
    let st = HEAP.stats();
    println!("ALLOC {} RECLAIMED {}", st.allocated_bytes, st.reclaimed_bytes);
    // What a real run leaves behind: the old root is replaced (and freed), 4 MiB are leaked.
    let again = parse();
    HEAP.with_root(|| Json(Value::Null), |root| root.0 = again);
    std::mem::forget(vec![7u8; 4 << 20]);
    HEAP.commit().expect("commit");
    HEAP.verify().expect("verify");
}

fn field(out: &str, key: &str) -> u64 {
    // libtest may print "test <name> ... " on the same line before the child's output.
    let line = out
        .lines()
        .find_map(|l| l.find("ALLOC ").map(|i| &l[i..]))
        .expect("ALLOC line");
    let mut it = line.split_whitespace();
    while let Some(k) = it.next() {
        if k == key {
            return it.next().unwrap().parse().unwrap();
        }
    }
    panic!("no {key} in {line:?}")
}

#[test]
fn json_root_survives_five_restarts_and_reclaim_keeps_allocation_flat() {
    match role().as_deref() {
        Some("create") => return create(),
        Some("restart") => return restart(),
        _ => {}
    }
    assert!(
        !HEAP.is_persistent(),
        "the test harness itself runs on the volatile heap"
    );
    let dir = Scratch::new("global-json");
    let heap = dir.heap();
    let env = [("SNAPHEAP_DIR", heap.to_str().unwrap())];
    let out = run_child(TEST, "create", &env);
    assert!(out.contains("DOC "), "{out}");
    let mut allocated = Vec::new();
    let mut reclaimed = Vec::new();
    for _ in 0..5 {
        let out = run_child(TEST, "restart", &env);
        allocated.push(field(&out, "ALLOC"));
        reclaimed.push(field(&out, "RECLAIMED"));
    }
    eprintln!("allocated after restarts 1..5: {allocated:?}; reclaimed at open: {reclaimed:?}");
    let (first, fifth) = (allocated[0], allocated[4]);
    assert!(
        fifth as f64 <= 1.5 * first as f64,
        "allocated bytes grew from {first} to {fifth} over five restarts"
    );
    assert!(
        reclaimed[1..].iter().all(|&r| r >= 4 << 20),
        "each restart after a leaking run reclaims the leaked 4 MiB: {reclaimed:?}"
    );
}
