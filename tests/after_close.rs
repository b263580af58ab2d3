//! Values allocated from a heap that outlive its handle (issue 17): after `close()` or a drop
//! of the handle they stay valid, their `Drop` is safe, and reopening the same heap in the same
//! process either adopts their memory (no aliasing, exact dirty tracking) or refuses with
//! `Error::Detached`. Programs that would crash on a regression run in child processes, so a
//! SIGSEGV fails one test instead of the whole binary.

mod common;

use common::*;
use snapheap::collections::{String, Vec};
use snapheap::{release_detached, Error, Heap, HeapAlloc, Persist};

#[derive(Persist)]
struct Root {
    log: Vec<u64>,
    names: Option<Vec<String>>,
}

impl Root {
    fn new_in(a: HeapAlloc) -> Root {
        Root {
            log: Vec::new_in(a),
            names: Some(Vec::new_in(a)),
        }
    }
}

const N: u64 = 100_000;
const SUM: u64 = N * (N - 1) / 2;

/// Runs `test` again in a child process with role `child` and asserts it exited cleanly.
fn in_child(test: &str) {
    if role().is_none() {
        let out = run_child(test, "child", &[]);
        println!("{out}");
        assert!(out.contains("child done"), "the child did not finish:\n{out}");
    }
}

fn child_done() {
    println!("child done");
}

fn names(a: HeapAlloc, n: usize) -> Vec<String> {
    let mut v = Vec::new_in(a);
    for i in 0..n {
        v.push(String::from_str_in(&format!("name-{i}"), a));
    }
    v
}

/// The program of the issue: a collection outside the root, read after `close()`.
#[test]
fn vector_outside_the_root_is_readable_after_close() {
    in_child("vector_outside_the_root_is_readable_after_close");
    if role().is_none() {
        return;
    }
    let dir = Scratch::new("after-close");
    let heap = Heap::<u64>::open(dir.heap(), |_| 0).unwrap();
    let mut v = Vec::new_in(heap.alloc());
    v.extend(0..N);
    heap.close().unwrap();
    let sum: u64 = v.iter().sum();
    assert_eq!(sum, SUM);
    // Writes still work (they are not persisted); allocation fails cleanly.
    v[0] = 7;
    assert_eq!(v[0], 7);
    assert!(
        v.try_reserve(1 << 20).is_err(),
        "allocation through a closed heap must fail"
    );
    drop(v);
    child_done();
}

/// The same with `drop(heap)` instead of `close()`, and a `Vec<String>` whose `Drop` reads
/// the heap's memory (every element's buffer pointer) after the drop.
#[test]
fn values_outside_the_root_survive_a_dropped_handle_and_drop_safely() {
    in_child("values_outside_the_root_survive_a_dropped_handle_and_drop_safely");
    if role().is_none() {
        return;
    }
    let dir = Scratch::new("after-drop");
    let heap = Heap::<u64>::open(dir.heap(), |_| 0).unwrap();
    let mut v = Vec::new_in(heap.alloc());
    v.extend(0..N);
    let s = names(heap.alloc(), 1000);
    drop(heap);
    let sum: u64 = v.iter().sum();
    assert_eq!(sum, SUM);
    assert_eq!(s[999].as_str(), "name-999");
    drop(s);
    drop(v);
    child_done();
}

/// Vectors moved out of the root before the close (`std::mem::replace`, and `std::mem::take`
/// on an `Option`; `Vec<_, HeapAlloc>` has no `Default`, so `mem::take` on it directly does
/// not compile) stay valid after it.
#[test]
fn vectors_moved_out_of_the_root_survive_close() {
    in_child("vectors_moved_out_of_the_root_survive_close");
    if role().is_none() {
        return;
    }
    let dir = Scratch::new("taken");
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    {
        let a = heap.alloc();
        let mut g = heap.write();
        g.log.extend(0..N);
        g.names = Some(names(a, 500));
        g.commit().unwrap();
    }
    let (log, taken) = {
        let a = heap.alloc();
        let mut g = heap.write();
        (
            std::mem::replace(&mut g.log, Vec::new_in(a)),
            std::mem::take(&mut g.names),
        )
    };
    heap.close().unwrap();
    assert_eq!(log.iter().sum::<u64>(), SUM);
    let taken = taken.expect("names were set");
    assert_eq!(taken.len(), 500);
    assert_eq!(taken[321].as_str(), "name-321");
    drop(taken);
    drop(log);
    child_done();
}

/// Reopening after `close()` with no value of the old handle left: the data is there, the
/// heap verifies, and it keeps working across a further restart.
#[test]
fn reopen_after_close_without_live_values_works() {
    let dir = Scratch::new("reopen-clean");
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.write().log.extend(0..1000);
    heap.close().unwrap();
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.verify().unwrap();
    assert_eq!(heap.read().log.iter().sum::<u64>(), 1000 * 999 / 2);
    heap.write().log.push(5);
    heap.commit().unwrap();
    heap.verify().unwrap();
    // SAFETY: nothing allocated from the heap outlives this call.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    assert_eq!(heap.read().log.len(), 1001);
    heap.verify().unwrap();
}

/// Reopening after `close()` while values of the old handle are alive and were written after
/// the close: the new handle adopts the memory, so the old values keep their blocks (new
/// allocations never overlap them), their writes are tracked (verify's cross-check of memory
/// against the files passes before and after a commit), and dropping them frees into the new
/// heap correctly. A restart from the files afterwards sees exactly the committed state.
#[test]
fn reopen_after_close_with_live_values_adopts_their_memory() {
    in_child("reopen_after_close_with_live_values_adopts_their_memory");
    if role().is_none() {
        return;
    }
    let dir = Scratch::new("reopen-live");
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    let mut stale = names(heap.alloc(), 2000);
    let mut other = names(heap.alloc(), 10);
    heap.write().log.extend(0..100);
    heap.close().unwrap();
    // Written after the close: swap buffers between two stale values (moves ownership of
    // blocks inside the detached memory) and overwrite a number in place.
    std::mem::swap(&mut stale[0], &mut other[0]);
    stale.swap(1, 1999);

    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.verify()
        .expect("adopted heap: the post-close writes must be known to tracking");
    let mut stale_blocks: std::vec::Vec<(usize, usize)> = vec![(stale.as_ptr() as usize, stale.capacity() * 24)];
    for s in stale.iter().chain(other.iter()) {
        stale_blocks.push((s.as_str().as_ptr() as usize, s.capacity().max(1)));
    }
    // New allocations in the reopened heap, interleaved with frees of stale values.
    let a = heap.alloc();
    let mut fresh = std::vec::Vec::new();
    {
        let mut g = heap.write();
        for i in 0..3000 {
            let s = String::from_str_in(&format!("fresh-{i}-xxxxxxxxxxxxxxxx"), a);
            fresh.push((s.as_str().as_ptr() as usize, s.capacity()));
            g.names.as_mut().unwrap().push(s);
        }
        g.log.push(100);
    }
    let mut all = stale_blocks.clone();
    all.extend(fresh.iter().copied());
    assert_disjoint(all);
    assert_eq!(stale[0].as_str(), "name-0");
    assert_eq!(other[0].as_str(), "name-0");
    assert_eq!(stale[1].as_str(), "name-1999");
    assert_eq!(stale[1999].as_str(), "name-1");
    assert_eq!(stale[1234].as_str(), "name-1234");
    drop(other);
    stale.truncate(1000);
    heap.commit().unwrap();
    heap.verify().unwrap();
    // The freed blocks are reused by the new heap, and the remaining stale value is intact.
    {
        let mut g = heap.write();
        for i in 0..2000 {
            g.names
                .as_mut()
                .unwrap()
                .push(String::from_str_in(&format!("again-{i}"), a));
        }
    }
    assert_eq!(stale[999].as_str(), "name-999");
    drop(stale);
    heap.commit().unwrap();
    heap.verify().unwrap();
    // SAFETY: every value allocated from the heap has been dropped.
    unsafe { heap.close_and_release() }.unwrap();
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.verify().unwrap();
    assert_eq!(heap.read().log.len(), 101);
    assert_eq!(heap.read().names.as_ref().unwrap().len(), 5000);
    child_done();
}

/// Dropping the handle with uncommitted changes, then reopening in the same process: refused
/// with `Error::Detached` (the memory holds changes a restart must not show, and mapping the
/// files over it could alias live values); after the unsafe release, the reopen recovers the
/// last commit, as a restart would. A drop with nothing uncommitted is adopted.
#[test]
fn reopen_after_drop_with_uncommitted_changes_is_refused_until_released() {
    let dir = Scratch::new("reopen-dropped");
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.write().log.push(1);
    heap.commit().unwrap();
    drop(heap); // nothing uncommitted
    let heap = Heap::open(dir.heap(), Root::new_in).expect("a clean drop is adopted");
    assert_eq!(heap.read().log.len(), 1);
    heap.write().log.push(2); // never committed
    drop(heap);
    match Heap::open(dir.heap(), Root::new_in) {
        Err(Error::Detached { dir: d, reason }) => {
            assert_eq!(d, dir.heap());
            assert!(reason.contains("uncommitted"), "{reason}");
        }
        Err(e) => panic!("expected Detached, got {e}"),
        Ok(_) => panic!("expected Detached, the reopen succeeded"),
    }
    // Still refused: the detached memory stays until released.
    assert!(matches!(
        Heap::open(dir.heap(), Root::new_in),
        Err(Error::Detached { .. })
    ));
    // SAFETY: no value allocated from the dropped heap is alive.
    assert!(unsafe { release_detached(dir.heap()) }.unwrap());
    // SAFETY: as above (nothing left to release).
    assert!(!unsafe { release_detached(dir.heap()) }.unwrap());
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    assert_eq!(heap.read().log.to_vec(), [1]);
    heap.verify().unwrap();
    // SAFETY: nothing allocated from the heap is alive.
    unsafe { heap.drop_and_release() };
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    assert_eq!(heap.read().log.to_vec(), [1]);
}

/// Another process changes the heap after this process closed it: the reopen here refuses
/// (the files no longer match the memory still mapped) instead of mapping the new state over
/// values that may be alive; after the release it sees the other process's commit.
#[test]
fn reopen_after_another_process_committed_is_refused_until_released() {
    if role().as_deref() == Some("writer") {
        let dir = std::env::var("AFTER_CLOSE_DIR").unwrap();
        let heap = Heap::open(&dir, Root::new_in).unwrap();
        heap.write().log.push(42);
        heap.close().unwrap();
        println!("child done");
        return;
    }
    let dir = Scratch::new("other-process");
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    heap.write().log.push(1);
    heap.close().unwrap();
    let d = dir.heap().display().to_string();
    run_child(
        "reopen_after_another_process_committed_is_refused_until_released",
        "writer",
        &[("AFTER_CLOSE_DIR", &d)],
    );
    match Heap::open(dir.heap(), Root::new_in) {
        Err(Error::Detached { reason, .. }) => assert!(reason.contains("changed"), "{reason}"),
        Err(e) => panic!("expected Detached, got {e}"),
        Ok(_) => panic!("expected Detached, the reopen succeeded"),
    }
    // SAFETY: no value allocated from the closed heap is alive.
    assert!(unsafe { release_detached(dir.heap()) }.unwrap());
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    assert_eq!(heap.read().log.to_vec(), [1, 42]);
}

/// A heap opened from a snapshot maps the snapshot file copy-on-write, so pages only read show
/// the file's page cache. Here the handle is dropped with a value moved out of the root but
/// the move not committed, so on disk the root still owns that value's blocks; another
/// process then rewrites them and takes two snapshots, overwriting the file this process
/// mapped. The value held here must not change, which holds because detaching gave every
/// still-shared page of the closed heap its private copy.
#[test]
fn detached_memory_does_not_show_later_snapshot_writes() {
    let r = role();
    if let Some(r) = r.as_deref() {
        if r == "create" || r == "rewrite" {
            let dir = std::env::var("AFTER_CLOSE_DIR").unwrap();
            let heap = Heap::open(&dir, Root::new_in).unwrap();
            for round in 0..2 {
                {
                    let a = heap.alloc();
                    let mut g = heap.write();
                    if r == "create" {
                        g.names = Some(names(a, 1000));
                    } else {
                        let v = g.names.as_mut().expect("the move was never committed");
                        v.reverse();
                        v.swap(round, 500);
                    }
                }
                heap.snapshot().unwrap();
            }
            heap.close().unwrap();
            println!("child done");
            return;
        }
    }
    in_child("detached_memory_does_not_show_later_snapshot_writes");
    if r.is_none() {
        return;
    }
    let dir = Scratch::new("show-through");
    let d = dir.heap().display().to_string();
    let test = "detached_memory_does_not_show_later_snapshot_writes";
    run_child(test, "create", &[("AFTER_CLOSE_DIR", &d)]);
    // This process maps the snapshot; the names' pages are only read here.
    let heap = Heap::open(dir.heap(), Root::new_in).unwrap();
    let taken = std::mem::take(&mut heap.write().names).unwrap();
    drop(heap); // the take is not committed
    run_child(test, "rewrite", &[("AFTER_CLOSE_DIR", &d)]);
    for (i, s) in taken.iter().enumerate() {
        assert_eq!(
            s.as_str(),
            format!("name-{i}"),
            "the closed heap's memory changed under a live value"
        );
    }
    drop(taken);
    child_done();
}

/// `(Rss, Anonymous)` of this process in bytes, from `/proc/self/smaps_rollup`.
fn rss_anon() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap();
    let field = |name: &str| -> u64 {
        let line = s.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
    };
    (field("Rss:"), field("Anonymous:"))
}

/// The memory cost of keeping a closed heap mapped, measured (printed for the README): the
/// resident pages of a 64 MiB heap stay after `close()` and go with the release. Second case:
/// a heap opened lazily from a snapshot, of which nothing was read, costs its whole snapshot
/// extent at close (the pages are copied private so no later file write shows through).
#[test]
fn memory_of_a_closed_heap_stays_until_released() {
    in_child("memory_of_a_closed_heap_stays_until_released");
    if role().is_none() {
        return;
    }
    const MB: u64 = 1 << 20;
    let dir = Scratch::new("memory");
    let heap = Heap::<Vec<u8>>::open(dir.heap(), Vec::new_in).unwrap();
    heap.write().resize(64 << 20, 1u8);
    heap.close().unwrap(); // commits and snapshots: the file now holds 64 MiB of data
                           // SAFETY: nothing allocated from the heap is alive.
    assert!(unsafe { release_detached(dir.heap()) }.unwrap());

    let (rss0, anon0) = rss_anon();
    let heap = Heap::<Vec<u8>>::open(dir.heap(), Vec::new_in).unwrap();
    for x in heap.write().iter_mut().step_by(4096) {
        *x = 2; // touch (and copy) every page
    }
    heap.commit().unwrap();
    let (rss1, anon1) = rss_anon();
    heap.close().unwrap();
    let (rss2, anon2) = rss_anon();
    // SAFETY: nothing allocated from the heap is alive.
    assert!(unsafe { release_detached(dir.heap()) }.unwrap());
    let (rss3, anon3) = rss_anon();
    println!(
        "written 64 MiB heap: anonymous {} MiB open, {} MiB after close, {} MiB after release (rss {} / {} / {} MiB, baseline {} MiB anon, {} MiB rss)",
        anon1 / MB, anon2 / MB, anon3 / MB, rss1 / MB, rss2 / MB, rss3 / MB, anon0 / MB, rss0 / MB
    );
    assert!(anon1 >= anon0 + 60 * MB, "the written heap is anonymous memory");
    assert!(anon2 >= anon0 + 60 * MB, "the closed heap's pages stay resident");
    assert!(anon3 + 60 * MB <= anon2, "the release returns them");

    let heap = Heap::<Vec<u8>>::open(dir.heap(), Vec::new_in).unwrap();
    let (_, anon4) = rss_anon();
    heap.close().unwrap();
    let (_, anon5) = rss_anon();
    // SAFETY: nothing allocated from the heap is alive.
    assert!(unsafe { release_detached(dir.heap()) }.unwrap());
    let (_, anon6) = rss_anon();
    println!(
        "64 MiB heap mapped from its snapshot, not read: anonymous {} MiB open, {} MiB after close, {} MiB after release",
        anon4 / MB,
        anon5 / MB,
        anon6 / MB
    );
    assert!(
        anon5 >= anon4 + 60 * MB,
        "closing copies the shared snapshot pages private"
    );
    assert!(anon6 + 60 * MB <= anon5);
    child_done();
}
