//! End-to-end torn-tail and mid-journal corruption tests through `Heap::open`.
//!
//! A heap makes five commits with no snapshot after them, so recovery must replay the journal.
//! Cutting the journal file at *every* byte offset inside the last commit group (and, for the
//! same offsets, zeroing the rest of the group in place, as an unwritten pre-allocated tail
//! looks) must recover exactly the fourth commit; the uncut file recovers the fifth. Damage to a
//! record that valid records follow is not a torn tail: it must be `Error::Corrupt` naming the
//! journal file, never a silent truncation. Both with delta journaling (the five commits are
//! `DELTA` groups of one entry) and with it off (whole-page groups).

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Error, OpenOptions};
use std::path::{Path, PathBuf};

type Root = Vec<u64>;

const SLOTS: usize = 64;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.snapshot_after_journal_bytes(1 << 40).snapshot_on_close(false);
    o
}

/// [`options`] with delta journaling on (the default) or off.
fn build_options(deltas: bool) -> OpenOptions {
    let mut o = options();
    if !deltas {
        o.base_cache_bytes(0);
    }
    o
}

/// The root after commit `k` (1-based): slot 0 holds `k`, slot `k` holds `k * 1000`.
fn expected(k: u64) -> std::vec::Vec<u64> {
    let mut v = vec![0u64; SLOTS];
    for j in 1..=k {
        v[0] = j;
        v[j as usize] = j * 1000;
    }
    v
}

/// Builds the heap: an initial commit creating the root's buffer, then commits 1..=5, each
/// changing two words of one page. Returns the journal file and the byte offsets where each
/// commit's group ends (`ends[k]` is the end of commit `k`).
fn build(dir: &Path, deltas: bool) -> (PathBuf, std::vec::Vec<u64>) {
    let heap = build_options(deltas)
        .open(dir, |a| {
            let mut v = Vec::with_capacity_in(SLOTS, a);
            v.resize(SLOTS, 0);
            v
        })
        .unwrap();
    heap.commit().unwrap();
    let mut ends = vec![heap.stats().journal_bytes];
    for k in 1..=5u64 {
        let mut w = heap.write();
        w[0] = k;
        w[k as usize] = k * 1000;
        w.commit().unwrap();
        drop(w);
        ends.push(heap.stats().journal_bytes);
    }
    let s = heap.stats();
    if deltas {
        assert!(s.delta_pages >= 5, "commits 1..=5 must be DELTA groups: {s:?}");
    } else {
        assert_eq!(s.delta_pages, 0, "{s:?}");
    }
    // Released: the copies of this heap opened below must map their own (cut) files.
    // SAFETY: every value of the heap lives in its root.
    unsafe { heap.drop_and_release() };
    let journal = newest_journal(dir);
    // journal_bytes counts from the first record, which starts after the 4096-byte header area.
    let ends = ends.iter().map(|e| e + 4096).collect();
    (journal, ends)
}

fn newest_journal(dir: &Path) -> PathBuf {
    let mut js: std::vec::Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("journal"))
        .collect();
    js.sort();
    js.pop().expect("a journal file")
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Copies every file but `skip` (which the caller writes itself).
fn copy_dir_except(from: &Path, to: &Path, skip: &std::ffi::OsStr) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_name() != skip {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn contents(dir: &Path) -> Result<std::vec::Vec<u64>, Error> {
    let heap = released::<Root>(options().open(dir, |_| panic!("the heap exists; init must not run")))?;
    let v = heap.read().to_vec();
    heap.verify().unwrap();
    Ok(v)
}

#[test]
fn cutting_the_last_group_at_every_byte_recovers_the_previous_commit() {
    cut_last_group_at_every_byte(false);
}

#[test]
fn cutting_the_last_delta_group_at_every_byte_recovers_the_previous_commit() {
    cut_last_group_at_every_byte(true);
}

fn cut_last_group_at_every_byte(deltas: bool) {
    // Thousands of opens each sync the journal: on tmpfs (when present) syncs cost nothing,
    // and what is tested (recovery's reading of the bytes) does not depend on the file system.
    let scratch = if std::env::var_os("SNAPHEAP_TEST_DIR").is_none() && Path::new("/dev/shm").is_dir() {
        let p = PathBuf::from(format!("/dev/shm/snapheap-torn-{}-{deltas}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    } else {
        Scratch::new("torn")
    };
    let pristine = scratch.path().join("pristine");
    let (journal, ends) = build(&pristine, deltas);
    let name = journal.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&journal).unwrap();
    let (start, end) = (ends[4], ends[5]);
    assert!(
        start < end && end as usize <= bytes.len(),
        "group [{start}, {end}) in {}",
        bytes.len()
    );
    let work = scratch.path().join("work");
    let mut cases = 0;
    let limit: u64 = std::env::var("SNAPHEAP_TORN_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    for cut in (start..end).take(limit as usize) {
        // Every cut is checked as a truncation; every 16th also as a zero-filled tail and with
        // a commit appended after recovery (the slower checks).
        let sampled = (cut - start) % 16 == 0;
        for zero_fill in [false, true] {
            if zero_fill && !sampled {
                continue;
            }
            copy_dir_except(&pristine, &work, &name);
            let mut torn = bytes[..cut as usize].to_vec();
            if zero_fill {
                torn.resize(bytes.len(), 0);
            }
            std::fs::write(work.join(&name), &torn).unwrap();
            let got = contents(&work).unwrap_or_else(|e| panic!("cut at {cut} (zero fill {zero_fill}): {e}"));
            assert_eq!(got, expected(4), "cut at {cut} (zero fill {zero_fill})");
            cases += 1;
            if !sampled {
                continue;
            }
            // Recovery truncated the tail: a second open agrees and a new commit appends cleanly.
            let heap = released::<Root>(options().open(&work, |_| unreachable!())).unwrap();
            assert_eq!(heap.read().to_vec(), expected(4));
            heap.write()[SLOTS - 1] = 77;
            heap.commit().unwrap();
            drop(heap);
            let mut after = expected(4);
            after[SLOTS - 1] = 77;
            assert_eq!(
                contents(&work).unwrap(),
                after,
                "commit after recovery from cut at {cut}"
            );
        }
    }
    copy_dir(&pristine, &work);
    assert_eq!(
        contents(&work).unwrap(),
        expected(5),
        "the uncut journal recovers commit 5"
    );
    println!(
        "torn tail ({}): the {}-byte last group cut at every byte; {cases} damaged copies (truncated or zero-filled) all recovered commit 4",
        if deltas { "DELTA group" } else { "whole pages" },
        end - start
    );
}

#[test]
fn damage_before_later_valid_commits_is_corrupt_naming_the_journal() {
    let scratch = Scratch::new("midcorrupt");
    let pristine = scratch.path().join("pristine");
    let (journal, ends) = build(&pristine, true);
    let name = journal.file_name().unwrap().to_owned();
    let bytes = std::fs::read(&journal).unwrap();
    let work = scratch.path().join("work");
    // Damage one byte at several places inside commit 2's group (header fields, payload,
    // commit marker); commits 3..5 follow intact.
    let (start, end) = (ends[1], ends[2]);
    let mut checked = 0;
    for off in (start..end).step_by(13).chain([start, start + 8, end - 1]) {
        copy_dir(&pristine, &work);
        let mut damaged = bytes.clone();
        damaged[off as usize] ^= 0x40;
        std::fs::write(work.join(&name), &damaged).unwrap();
        match contents(&work) {
            Err(Error::Corrupt { file, offset, .. }) => {
                assert_eq!(file.file_name(), Some(name.as_os_str()), "flip at {off}");
                assert!(
                    offset >= start && offset < end,
                    "flip at {off}: reported offset {offset}"
                );
            }
            other => panic!("flip at {off}: expected Corrupt, got {other:?}"),
        }
        checked += 1;
    }
    println!("mid-journal corruption: {checked} damaged bytes each reported as Corrupt");
}
