//! `Heap::verify`: the report on a healthy heap, and each check catching the damage it exists
//! for (bytes changed behind the heap's back on the simulated disk).

mod common;
mod sim_workload;

use sim_workload::{Op, Run, DIR};
use snapheap::{Error, SnapshotFileState};
use std::path::Path;

fn journal_path(run: &Run) -> std::path::PathBuf {
    run.disk
        .files()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("journal-"))
        })
        .max()
        .expect("a journal")
}

/// The snapshot file that holds a snapshot (the other may be empty).
fn written_snapshot(run: &Run) -> std::path::PathBuf {
    ["snapshot-0", "snapshot-1"]
        .iter()
        .map(|n| Path::new(DIR).join(n))
        .find(|p| run.disk.read_file(p).is_some_and(|b| !b.is_empty()))
        .expect("a written snapshot file")
}

fn healthy() -> Run {
    let mut run = Run::create(5, None);
    for op in [
        Op::Alloc,
        Op::Alloc,
        Op::Commit,
        Op::Snapshot,
        Op::Alloc,
        Op::Write,
        Op::Commit,
        Op::Write,
    ] {
        run.step(op).unwrap();
    }
    run
}

#[test]
fn verify_reports_checked_files_and_uncommitted_pages_of_a_healthy_heap() {
    let run = healthy();
    let r = run.heap().verify().unwrap();
    assert!(r.segments >= 1 && r.used_bytes > 0);
    assert!(
        matches!(r.snapshots[0], SnapshotFileState::Valid { .. })
            || matches!(r.snapshots[1], SnapshotFileState::Valid { .. })
    );
    assert_eq!(r.journals, 1);
    assert!(r.journal_groups >= 1);
    assert_eq!(r.last_seq, run.heap().stats().commit_seq);
    assert!(r.pages_uncommitted >= 1, "the last Write is not committed: {r}");
    assert!(r.kernel_written_pages >= r.pages_uncommitted);
    assert!(r.pages_since_snapshot >= r.pages_uncommitted);
    let text = r.to_string();
    assert!(
        text.contains("allocator: ok") && text.contains("checksums ok"),
        "{text}"
    );
    run.heap().commit().unwrap();
    let r = run.heap().verify().unwrap();
    assert_eq!(
        r.pages_uncommitted, 0,
        "after a commit memory equals the image on disk: {r}"
    );
}

#[test]
fn verify_catches_a_damaged_journal_record() {
    let run = healthy();
    let path = journal_path(&run);
    let mut bytes = run.disk.read_file(&path).unwrap();
    // Flip a byte inside the first record after the header area (a page payload).
    bytes[4096 + 200] ^= 0x40;
    run.disk.write_file(&path, &bytes);
    let e = run.heap().verify().unwrap_err();
    assert!(matches!(e, Error::Corrupt { .. }), "{e}");
}

#[test]
fn verify_catches_a_page_that_differs_from_disk_without_being_tracked() {
    let run = healthy();
    run.heap().commit().unwrap();
    let snap = written_snapshot(&run);
    let mut bytes = run.disk.read_file(&snap).unwrap();
    // The last page of the first segment: never allocated, zero in memory and in every image.
    let off = 4096 + (4 << 20) - 100;
    bytes[off] ^= 0xFF;
    run.disk.write_file(&snap, &bytes);
    let e = run.heap().verify().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("escaped tracking") || msg.contains("neither in the dirty set"),
        "{msg}"
    );
}

#[test]
fn verify_catches_a_damaged_snapshot_bitmap() {
    let run = healthy();
    let snap = written_snapshot(&run);
    let mut bytes = run.disk.read_file(&snap).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    run.disk.write_file(&snap, &bytes);
    let e = run.heap().verify().unwrap_err();
    assert!(e.to_string().contains("bitmap"), "{e}");
}

/// Issue 3's cross-check on real files and the real kernel tracker: over a random workload
/// (writes into random blocks, allocations, frees, snapshots), before every commit every page
/// that differs from the committed image was reported written by the kernel (otherwise
/// `verify` fails), and after every commit memory equals the image on disk.
///
/// The rung matrix: the same workload runs under `Tracking::Auto` (the fast rung here) and
/// under each other rung the kernel offers, forced; a rung it lacks must be refused with an
/// error naming the failed probe step.
#[test]
fn kernel_reports_every_changed_page_before_each_commit_of_a_random_workload() {
    cross_check(snapheap::Tracking::Auto, 60);
}

#[test]
fn cross_check_under_the_hashed_rung() {
    cross_check(snapheap::Tracking::Hashed, 60);
}

#[test]
fn cross_check_under_the_all_dirty_rung() {
    cross_check(snapheap::Tracking::AllDirty, 20);
}

#[test]
fn cross_check_under_soft_dirty_where_the_kernel_has_it() {
    let dir = std::env::temp_dir().join(format!("snapheap-verify-sd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = snapheap::OpenOptions::new()
        .tracking(snapheap::Tracking::SoftDirty)
        .open(&dir, |_| 0u64);
    match r {
        Ok(h) => {
            drop(h);
            let _ = std::fs::remove_dir_all(&dir);
            cross_check(snapheap::Tracking::SoftDirty, 60);
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            let msg = e.to_string();
            assert!(matches!(e, snapheap::Error::Unsupported { .. }), "{msg}");
            assert!(msg.contains("soft-dirty") && msg.contains("probe"), "{msg}");
            println!("soft-dirty not available on this kernel: {msg}");
        }
    }
}

fn cross_check(tracking: snapheap::Tracking, rounds: u64) {
    use snapheap::collections::{Box as HBox, Vec as HVec};
    use snapheap::OpenOptions;
    let dir = std::env::temp_dir().join(format!(
        "snapheap-verify-xcheck-{}-{}",
        tracking.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let heap = OpenOptions::new()
        .snapshot_after_journal_bytes(1 << 20)
        .tracking(tracking)
        .remap_clean_pages(true)
        .open(&dir, HVec::<HBox<[u64; 256]>>::new_in)
        .unwrap();
    if tracking != snapheap::Tracking::Auto {
        assert_eq!(heap.stats().track_mode, tracking.name());
    }
    let a = heap.alloc();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut checked_pages = 0;
    for round in 0..rounds {
        {
            let mut v = heap.write();
            for _ in 0..(next() % 40) {
                match next() % 4 {
                    0 | 1 if !v.is_empty() => {
                        let i = (next() % v.len() as u64) as usize;
                        let w = (next() % 256) as usize;
                        v[i][w] = next();
                    }
                    2 => v.push(HBox::new_in([round; 256], a)),
                    _ if !v.is_empty() => {
                        let i = (next() % v.len() as u64) as usize;
                        v.swap_remove(i);
                    }
                    _ => {}
                }
            }
        }
        let before = heap.verify().unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            before.kernel_written_pages >= before.pages_uncommitted,
            "round {round}: {before}"
        );
        checked_pages += before.pages_uncommitted;
        heap.commit().unwrap();
        if round % 15 == 14 {
            heap.snapshot().unwrap();
        }
        let after = heap.verify().unwrap();
        assert_eq!(after.pages_uncommitted, 0, "round {round}: {after}");
    }
    assert!(
        checked_pages > rounds,
        "the workload changed too few pages to check anything"
    );
    // Remapping clean pages is on: the cross-check runs across remaps (issue 15), on every
    // rung that can tell a clean page (all-dirty reports every page, so nothing is remapped).
    let remapped = heap.stats().remapped_pages;
    if heap.stats().track_mode != snapheap::Tracking::AllDirty.name() {
        assert!(remapped > 0, "no page was remapped, so the check did not cover remaps");
    }
    println!(
        "cross-check ({}): {checked_pages} changed pages, each reported before its commit; {remapped} pages remapped meanwhile",
        heap.stats().track_mode
    );
    heap.close().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
