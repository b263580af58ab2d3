//! Containers: a child process under a seccomp filter that denies `userfaultfd` (as Docker's
//! default profile does) opens a heap with `Tracking::Auto`, which must pick the best remaining
//! rung (here the hashed one, never all-dirty), commit only the changed pages, and lose nothing.
//! The kill test under the same filter is in `crash_kill.rs` (its rung matrix).

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Heap, OpenOptions};

const TEST: &str = "seccomp_filter_denies_userfaultfd_and_auto_picks_a_rung_that_tracks";

#[test]
fn seccomp_filter_denies_userfaultfd_and_auto_picks_a_rung_that_tracks() {
    match role().as_deref() {
        Some("container") => return container_child(true),
        Some("host") => return container_child(false),
        Some(_) => return,
        None => {}
    }
    let dir = Scratch::new("container");
    let heap = dir.heap();
    let out = run_child(TEST, "container", &[("HEAP", heap.to_str().unwrap())]);
    print!("{out}");
    assert!(out.contains("CHILD DONE"), "{out}");
    // The same heap, reopened outside the filter, has every commit of the contained child.
    let h: Heap<Vec<u64>> = OpenOptions::new().open(&heap, Vec::new_in).unwrap();
    assert_eq!(h.read().len(), 1000 + 20);
    assert!(h.read().iter().take(1000).enumerate().all(|(i, &v)| v == i as u64 + 20));
    h.verify().unwrap();
    drop(h);
    // Control: without the filter the same child code sees userfaultfd work.
    let out = run_child(TEST, "host", &[("HEAP", dir.path().join("host").to_str().unwrap())]);
    assert!(out.contains("CHILD DONE"), "{out}");
}

fn container_child(filtered: bool) {
    if filtered {
        seccomp::deny_userfaultfd().expect("install the seccomp filter");
        assert_eq!(
            seccomp::userfaultfd_errno(),
            Some(libc::EPERM),
            "the filter must deny userfaultfd"
        );
        // SAFETY: getpid takes no arguments.
        assert!(unsafe { libc::getpid() } > 0, "other system calls still work");
    } else if seccomp::userfaultfd_errno().is_some() {
        println!("host child: userfaultfd unavailable even without the filter; control skipped");
        println!("CHILD DONE");
        return;
    }
    let dir = std::env::var("HEAP").unwrap();
    let heap: Heap<Vec<u64>> = OpenOptions::new().open(&dir, Vec::new_in).unwrap();
    let stats = heap.stats();
    println!("track_mode {} fallback {:?}", stats.track_mode, stats.track_fallback);
    if filtered {
        assert_ne!(stats.track_mode, "uffd-wp");
        assert_ne!(
            stats.track_mode, "all-dirty",
            "Auto fell back to all-dirty in a container"
        );
        let why = stats.track_fallback.clone().unwrap_or_default();
        assert!(why.contains("userfaultfd") && why.contains("not permitted"), "{why}");
    } else {
        assert_eq!(stats.track_mode, "uffd-wp");
        assert_eq!(stats.track_fallback, None);
    }
    // About 8 MiB of u64s, committed once, then 20 commits that change one element each: each
    // commit must capture a handful of pages, not the heap.
    {
        let mut v = heap.write();
        for i in 0..1_000_000u64 {
            v.push(i);
        }
        v.commit().unwrap();
    }
    let full = heap.stats().last_commit_pages;
    assert!(full > 1900, "the fill captured {full} pages");
    for round in 0..20u64 {
        let mut v = heap.write();
        let n = v.len();
        for i in 0..1000usize {
            v[i] += 1;
        }
        if round == 0 {
            v.truncate(1000);
            assert!(n == 1_000_000);
        }
        v.push(round);
        v.commit().unwrap();
        let pages = heap.stats().last_commit_pages;
        assert!(pages <= 8, "round {round}: a small change captured {pages} pages");
    }
    heap.close().unwrap();
    println!("CHILD DONE");
}
