//! `GlobalHeap` roots of plain std types survive restarts: `HashMap` with `RandomState`,
//! `BTreeMap`, `String` and `Vec<Box<T>>`; a heap written by another build of the program is
//! refused unless explicitly allowed; a persistent heap that cannot be opened aborts with a
//! clear message instead of running volatile.

// `Vec<Box<T>>` is one of the shapes the issue asks to persist.
#![allow(clippy::vec_box)]

mod common;

use common::*;
use snapheap::GlobalHeap;
use std::collections::{BTreeMap, HashMap};

#[global_allocator]
static HEAP: GlobalHeap = GlobalHeap::new();

#[derive(Debug, PartialEq, snapheap::GlobalPersist)]
struct Item {
    id: u64,
    name: String,
    weights: Vec<f64>,
}

fn item(i: u64) -> Item {
    Item {
        id: i,
        name: format!("item-{i}"),
        weights: (0..i % 7).map(|k| k as f64 * 0.5).collect(),
    }
}

/// The state after run `run` (0 = created): every run adds entries derived from its number.
fn expected_map(run: u64) -> HashMap<String, Vec<u64>> {
    let mut m = HashMap::new();
    for r in 0..=run {
        for k in 0..500 {
            m.insert(format!("run{r}-key{k}"), vec![r, k, r * k]);
        }
    }
    m
}

fn expected_tree(run: u64) -> BTreeMap<u64, String> {
    (0..=run)
        .flat_map(|r| (0..1000).map(move |k| (r * 1000 + k, format!("v{r}.{k}"))))
        .collect()
}

fn expected_string(run: u64) -> String {
    (0..=run).map(|r| format!("[run {r}]")).collect()
}

fn expected_items(run: u64) -> Vec<Box<Item>> {
    (0..(run + 1) * 100).map(|i| Box::new(item(i))).collect()
}

/// Adds run `run`'s entries to every root.
fn extend(run: u64) {
    HEAP.with_root(HashMap::<String, Vec<u64>>::new, |m| {
        for k in 0..500 {
            m.insert(format!("run{run}-key{k}"), vec![run, k, run * k]);
        }
    });
    HEAP.with_root(BTreeMap::<u64, String>::new, |t| {
        for k in 0..1000 {
            t.insert(run * 1000 + k, format!("v{run}.{k}"));
        }
    });
    HEAP.with_root(String::new, |s| s.push_str(&format!("[run {run}]")));
    HEAP.with_root(Vec::<Box<Item>>::new, |v| {
        for i in run * 100..(run + 1) * 100 {
            v.push(Box::new(item(i)));
        }
    });
}

fn check(run: u64) {
    let map_ok = HEAP.with_root(HashMap::<String, Vec<u64>>::new, |m| {
        // Lookups hash with the map's own RandomState keys, stored in the heap with it.
        *m == expected_map(run) && m.get("run0-key7") == Some(&vec![0, 7, 0])
    });
    assert!(map_ok, "HashMap root differs after run {run}");
    let tree_ok = HEAP.with_root(BTreeMap::<u64, String>::new, |t| *t == expected_tree(run));
    assert!(tree_ok, "BTreeMap root differs after run {run}");
    let s = HEAP.with_root(String::new, |s| s.clone());
    assert_eq!(s, expected_string(run));
    let items_ok = HEAP.with_root(Vec::<Box<Item>>::new, |v| *v == expected_items(run));
    assert!(items_ok, "Vec<Box<Item>> root differs after run {run}");
}

const ROOTS_TEST: &str = "std_roots_survive_restarts";

#[test]
fn std_roots_survive_restarts() {
    if let Some(r) = role() {
        assert!(HEAP.is_persistent());
        let run: u64 = r.parse().unwrap();
        if run > 0 {
            check(run - 1);
        }
        extend(run);
        HEAP.commit().expect("commit");
        check(run);
        // Garbage that the next open reclaims.
        HEAP.with_root(String::new, |s| std::mem::forget(s.repeat(100)));
        HEAP.verify().expect("verify");
        println!("RECLAIMED {}", HEAP.stats().reclaimed_bytes);
        return;
    }
    let dir = Scratch::new("global-roots");
    let heap = dir.heap();
    let env = [("SNAPHEAP_DIR", heap.to_str().unwrap())];
    for run in 0..4 {
        let out = run_child(ROOTS_TEST, &run.to_string(), &env);
        let reclaimed: u64 = out
            .lines()
            .find_map(|l| l.split("RECLAIMED ").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .expect("RECLAIMED line")
            .parse()
            .unwrap();
        // Each run leaks a copy of the string root a hundred times over; the next open frees it.
        assert_eq!(reclaimed > 0, run > 0, "run {run} reclaimed {reclaimed} bytes");
    }
    // The volatile heap of this process holds roots too, but only for this run.
    assert!(!HEAP.is_persistent());
    HEAP.with_root(|| 5u32, |v| *v += 1);
    assert_eq!(HEAP.with_root(|| 0u32, |v| *v), 6);
    assert_eq!(HEAP.commit().unwrap(), 0);
}

const BUILD_TEST: &str = "a_heap_from_another_build_is_refused_unless_allowed";

#[test]
fn a_heap_from_another_build_is_refused_unless_allowed() {
    if let Some(r) = role() {
        let n = HEAP.with_root(
            || 0u64,
            |n| {
                *n += 1;
                *n
            },
        );
        HEAP.commit().expect("commit");
        println!("COUNT {n} {r}");
        return;
    }
    let dir = Scratch::new("global-build");
    let heap = dir.heap();
    let h = heap.to_str().unwrap();
    run_child(
        BUILD_TEST,
        "first",
        &[("SNAPHEAP_DIR", h), ("SNAPHEAP_TEST_BUILD_ID", "abc")],
    );
    let out = child(
        BUILD_TEST,
        "other",
        &[("SNAPHEAP_DIR", h), ("SNAPHEAP_TEST_BUILD_ID", "def")],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "another build must not open the heap");
    assert!(stderr.contains("another build"), "{stderr}");
    assert!(stderr.contains("SNAPHEAP_ALLOW_OTHER_BUILD"), "{stderr}");
    let out = run_child(
        BUILD_TEST,
        "allowed",
        &[
            ("SNAPHEAP_DIR", h),
            ("SNAPHEAP_TEST_BUILD_ID", "def"),
            ("SNAPHEAP_ALLOW_OTHER_BUILD", "1"),
        ],
    );
    assert!(out.contains("COUNT 2 allowed"), "{out}");
    // The allowed run recorded the new build, which now opens the heap without the override.
    let out = run_child(
        BUILD_TEST,
        "again",
        &[("SNAPHEAP_DIR", h), ("SNAPHEAP_TEST_BUILD_ID", "def")],
    );
    assert!(out.contains("COUNT 3 again"), "{out}");
    // The real executable id differs from the fake one.
    let out = child(BUILD_TEST, "real", &[("SNAPHEAP_DIR", h)]).output().unwrap();
    assert!(!out.status.success());
}

const OPEN_FAIL_TEST: &str = "an_unopenable_persistent_heap_aborts_with_a_message";

#[test]
fn an_unopenable_persistent_heap_aborts_with_a_message() {
    if role().is_some() {
        HEAP.with_root(|| 0u64, |n| *n += 1);
        println!("RAN VOLATILE: {}", !HEAP.is_persistent());
        return;
    }
    let dir = Scratch::new("global-openfail");
    let file = dir.path().join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let out = child(OPEN_FAIL_TEST, "child", &[("SNAPHEAP_DIR", file.to_str().unwrap())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("RAN VOLATILE"));
    assert!(stderr.contains("cannot open the persistent heap"), "{stderr}");
    assert!(stderr.contains("not-a-directory"), "{stderr}");
}
