//! The hashed rung's fork check, deterministically: a page written between a commit's collect
//! and the snapshot fork (bytes B) and then restored (bytes A, the journaled ones) before the
//! next collect must not leave B in the snapshot with nothing in the journal to undo it. A
//! test hook writes B in exactly that window; the planted bug `NoForkCheck` (the check
//! skipped) must reproduce the loss, so the test is shown to detect it.

mod common;

use common::*;
use snapheap::collections::Vec as HVec;
use snapheap::{Heap, HeapAlloc, OpenOptions, PlantedBug, Tracking};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

type Root = HVec<u64>;

const A: u64 = 0xaaaa_aaaa_aaaa_aaaa;
const B: u64 = 0xbbbb_bbbb_bbbb_bbbb;
const AT: usize = 1500;

/// Options with `tracking`, no automatic snapshot, and a hook that, once `armed` is set,
/// writes `B` at the address in `target` in the window between a commit's collect and the
/// snapshot fork (an unguarded writer), then disarms itself.
fn fork_window_opts(tracking: Tracking, bug: Option<PlantedBug>) -> (OpenOptions, Arc<AtomicUsize>, Arc<AtomicBool>) {
    let target = Arc::new(AtomicUsize::new(0));
    let armed = Arc::new(AtomicBool::new(false));
    let mut o = OpenOptions::new();
    o.tracking(tracking)
        .snapshot_after_journal_bytes(1 << 40)
        .snapshot_on_close(false)
        .test_planted_bug(bug);
    let (t, a) = (target.clone(), armed.clone());
    o.test_before_fork(Some(Arc::new(move || {
        if a.swap(false, Ordering::SeqCst) {
            // SAFETY (test): the address is a word of the root vector, alive and not
            // referenced by anyone else meanwhile (the test thread is inside commit).
            unsafe { (t.load(Ordering::SeqCst) as *mut u64).write_volatile(B) };
        }
    })));
    (o, target, armed)
}

/// Takes a snapshot with the hook of [`fork_window_opts`] armed, and checks that it ran (wrote
/// `B` between the snapshot commit's collect and the fork).
fn snapshot_with_the_hook_armed<T: snapheap::Persist>(heap: &Heap<T>, armed: &AtomicBool) {
    armed.store(true, Ordering::SeqCst);
    heap.snapshot().unwrap();
    assert!(!armed.load(Ordering::SeqCst), "the hook did not run");
}

/// Runs the A-B-A sequence and returns the word recovered at `AT`, the snapshot retries the
/// first handle counted and whether its `verify` before the restart passed.
fn recovered_after_aba(name: &str, bug: Option<PlantedBug>) -> (u64, u64, bool) {
    let dir = Scratch::new(name);
    let (o, target, armed) = fork_window_opts(Tracking::Hashed, bug);
    let (retries, verified);
    {
        let heap = o
            .open(dir.heap(), |a| {
                let mut v = HVec::with_capacity_in(4096, a);
                v.resize(4096, 0);
                v
            })
            .unwrap();
        assert_eq!(heap.stats().track_mode, "hashed");
        {
            let mut w = heap.write();
            w[AT] = A;
            target.store(&w[AT] as *const u64 as usize, Ordering::SeqCst);
            w.commit().unwrap();
        }
        // The commit of the snapshot collects nothing new (baseline A), then the hook writes
        // B before the fork.
        snapshot_with_the_hook_armed(&heap, &armed);
        // B was never committed as far as the program knows; it restores A and commits.
        {
            let mut w = heap.write();
            assert_eq!(w[AT], B);
            w[AT] = A;
            w.commit().unwrap();
        }
        retries = heap.stats().snapshot_retries;
        verified = heap
            .verify()
            .map_err(|e| println!("verify before the restart: {e}"))
            .is_ok();
        // SAFETY: every value of the heap lives in its root.
        unsafe { heap.drop_and_release() };
    }
    let heap = Heap::open(dir.heap(), |_: HeapAlloc| -> Root { unreachable!("the heap exists") }).unwrap();
    let got = heap.read()[AT];
    heap.close().unwrap();
    (got, retries, verified)
}

#[test]
fn a_page_changed_and_restored_around_the_snapshot_fork_is_recovered_as_committed() {
    let (got, retries, verified) = recovered_after_aba("fork-race", None);
    assert!(verified, "verify failed before the restart");
    assert_eq!(
        got, A,
        "recovered {got:#x}: the snapshot kept bytes that were never the committed state"
    );
    assert_eq!(
        retries, 1,
        "the first snapshot writer should have abandoned its image once"
    );
}

#[test]
fn without_the_fork_check_the_restored_page_is_lost() {
    let (got, retries, verified) = recovered_after_aba("fork-race-bug", Some(PlantedBug::NoForkCheck));
    assert_eq!(retries, 0);
    assert!(
        !verified,
        "verify must see the page that differs from the snapshot unreported"
    );
    assert_eq!(
        got, B,
        "with the check planted away the A-B-A race must reproduce the loss (else this test cannot detect it)"
    );
}

/// The uffd-wp rung keeps the base cache across a snapshot fork and forgets only the pages
/// written since the forking commit's collect (found by a non-re-protecting report after the
/// fork). A page written in that window holds in the new snapshot bytes the cache does not:
/// its next record must not be a delta against the cached image. Sequence: commit `[A, 0]`;
/// the hook writes `B` over `A` between the collect and the fork (the snapshot holds `[B, 0]`);
/// the program writes `[A, C]` and commits. Returns the open's result (the two words) after
/// dropping the handle.
fn recovered_after_write_in_fork_window(name: &str, bug: Option<PlantedBug>) -> Option<Result<(u64, u64), String>> {
    const C: u64 = 0xcccc_cccc_cccc_cccc;
    let dir = Scratch::new(name);
    let (o, target, armed) = fork_window_opts(Tracking::UffdWp, bug);
    {
        let heap = match o.open(dir.heap(), |a| {
            let mut v = HVec::with_capacity_in(4096, a);
            v.resize(4096, 0);
            v
        }) {
            Ok(h) => h,
            Err(snapheap::Error::Unsupported { what }) => {
                println!("uffd-wp unavailable here ({what}): nothing to test");
                return None;
            }
            Err(e) => panic!("open: {e}"),
        };
        {
            let mut w = heap.write();
            w[AT] = A;
            target.store(&w[AT] as *const u64 as usize, Ordering::SeqCst);
            w.commit().unwrap();
        }
        // A second commit of the same page, so that its image is certainly cached.
        {
            let mut w = heap.write();
            w[AT + 1] = 1;
            w.commit().unwrap();
            w[AT + 1] = 0;
            w.commit().unwrap();
        }
        snapshot_with_the_hook_armed(&heap, &armed);
        {
            let mut w = heap.write();
            assert_eq!(w[AT], B);
            w[AT] = A;
            w[AT + 1] = C;
            w.commit().unwrap();
        }
        assert!(heap.stats().snapshots >= 1, "the snapshot was taken");
        // SAFETY: every value of the heap lives in its root.
        unsafe { heap.drop_and_release() };
    }
    Some(
        Heap::open(dir.heap(), |_: HeapAlloc| -> Root { unreachable!("the heap exists") })
            .map(|h| {
                let got = (h.read()[AT], h.read()[AT + 1]);
                h.close().unwrap();
                got
            })
            .map_err(|e| e.to_string()),
    )
}

#[test]
fn a_page_written_in_the_fork_window_is_not_diffed_against_its_cached_image() {
    let Some(r) = recovered_after_write_in_fork_window("fork-window-uffd", None) else {
        return;
    };
    assert_eq!(r, Ok((A, 0xcccc_cccc_cccc_cccc)), "recovered what was committed");
}

#[test]
fn keeping_the_whole_cache_at_the_fork_is_caught_by_the_post_image_check() {
    let Some(r) = recovered_after_write_in_fork_window("fork-window-uffd-bug", Some(PlantedBug::ForkKeepsCache)) else {
        return;
    };
    match r {
        Err(e) => {
            println!("open with the bug planted: {e}");
            assert!(e.contains("applied to another image"), "{e}")
        }
        Ok(v) => panic!("with the cache kept whole the delta against [A, 0] must be caught, recovered {v:x?}"),
    }
}
