//! Drives the built `snapheap` binary on real heap directories made here: healthy, a flipped
//! byte in each file kind, a torn journal tail, a locked heap, a directory that is not a heap,
//! and compaction. Each gets its documented exit code and names the file and byte offset.

use serde_json::Value;
use snapheap::collections::Vec as HVec;
use snapheap::{Heap, HeapAlloc, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_snapheap");

type Root = HVec<u64>;

fn opts() -> OpenOptions {
    let mut o = OpenOptions::new();
    // Whole-page records (no base cache), so the offsets the damage tests compute hold.
    o.max_size(64 << 20)
        .base_cache_bytes(0)
        .snapshot_on_close(false)
        .snapshot_after_journal_bytes(1 << 40);
    o
}

/// A fresh directory under the target's temporary directory.
fn fresh_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("heap")
}

/// Creates a heap: `before` commits, then (with `snapshot`) a snapshot, then `after` commits.
/// The root holds `0..before + after`. Returns the last commit's seq.
fn make_heap(dir: &Path, before: u64, snapshot: bool, after: u64) -> u64 {
    let heap: Heap<Root> = opts().open(dir, |a: HeapAlloc| HVec::new_in(a)).unwrap();
    let mut last = 0;
    for i in 0..before + after {
        if snapshot && i == before {
            heap.snapshot().unwrap();
        }
        let mut w = heap.write();
        w.push(i);
        last = w.commit().unwrap();
    }
    if snapshot && after == 0 {
        heap.snapshot().unwrap();
    }
    // The tool (another process) may change the files before this test reopens the heap, so
    // release the memory instead of leaving the heap detached (which would then refuse the
    // reopen with `Error::Detached`).
    // SAFETY: every value this heap allocated lives in its root, which is gone with the handle.
    unsafe { heap.close_and_release() }.unwrap();
    last
}

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN).args(args).arg(dir).output().expect("runs the binary")
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited normally")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(args: &[&str], dir: &Path) -> (i32, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let o = run(&a, dir);
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{args:?} --json printed no JSON ({e}): {}", stdout(&o)));
    (code(&o), v)
}

fn flip(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

/// Every file's name and bytes, to show that a command wrote nothing.
fn contents(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn journal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("journal-{id:016x}"))
}

/// The one problem (or note) naming `file`, with its offset.
fn entry_for<'a>(list: &'a Value, file: &Path) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| Path::new(p["file"].as_str().unwrap()) == file)
        .unwrap_or_else(|| panic!("no entry for {} in {list}", file.display()))
}

/// `snapheap info DIR | head -1`: a reader that closes the pipe early ends the tool by SIGPIPE,
/// as for other command-line tools, never with a panic. The pipe's read end is closed before
/// the tool starts, so its first write always meets a closed pipe.
#[test]
fn closed_stdout_pipe_ends_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::process::ExitStatusExt;
    let dir = fresh_dir("pipe");
    make_heap(&dir, 1, false, 0);
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created by pipe and are owned by nobody else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let out = Command::new(BIN)
        .arg("info")
        .arg(&dir)
        .stdout(std::process::Stdio::from(write_end))
        .output()
        .expect("runs the binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "the tool panicked on a closed pipe: {stderr}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "status {:?}, stderr {stderr}",
        out.status
    );
}

#[test]
fn healthy_heap_info_check_journal() {
    let dir = fresh_dir("healthy");
    let last = make_heap(&dir, 3, true, 4);
    let before = contents(&dir);

    let o = run(&["check"], &dir);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(stdout(&o).contains("healthy"), "{}", stdout(&o));
    assert!(stdout(&o).lines().all(|l| l.len() <= 100));

    let (c, v) = json(&["check"], &dir);
    assert_eq!(c, 0);
    assert_eq!(v["healthy"], true);
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["last_seq"], last);
    assert_eq!(v["checked"]["groups"], 4, "{v}");
    assert!(v["checked"]["checksums"].as_u64().unwrap() >= 8, "{v}");
    assert!(v["checked"]["pages_replayed"].as_u64().unwrap() >= 4, "{v}");
    assert!(v["checked"]["snapshot_bytes_read"].as_u64().unwrap() >= 4 << 20, "{v}");
    assert!(v["allocator"]["segments"].as_u64().unwrap() >= 1, "{v}");
    assert!(v["allocator"]["used_bytes"].as_u64().unwrap() >= 7 * 8, "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);

    let (c, v) = json(&["info"], &dir);
    assert_eq!(c, 0);
    assert_eq!(v["format_version"], 2);
    assert_eq!(v["heap_id"].as_str().unwrap().len(), 16);
    assert!(v["base"].as_str().unwrap().starts_with("0x"));
    assert_eq!(v["max_size"], 64 << 20);
    // Meta format 2 records the kind of root (a `Heap` root record); the user's root type is
    // in the committed root record, which `info` reads from the recovered image.
    assert!(v["meta_root"]["name"].as_str().unwrap().contains("root record"), "{v}");
    assert_eq!(v["root_type"]["name"], std::any::type_name::<Root>(), "{v}");
    assert_eq!(v["root_type"]["size"], std::mem::size_of::<Root>(), "{v}");
    assert_eq!(v["root_type"]["align"], std::mem::align_of::<Root>(), "{v}");
    assert_eq!(v["root_type"]["schema"], "", "{v}");
    assert_eq!(v["root"]["source"], "root_record", "{v}");
    assert!(v["root"]["address"].as_str().unwrap().starts_with("0x"), "{v}");
    let o = run(&["info"], &dir);
    assert!(stdout(&o).contains(std::any::type_name::<Root>()), "{}", stdout(&o));
    assert!(stdout(&o).lines().all(|l| l.len() <= 100), "{}", stdout(&o));
    assert_eq!(v["last_durable_seq"], last);
    let snaps = v["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let newest: Vec<&Value> = snaps.iter().filter(|s| s["newest"] == true).collect();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["state"], "valid");
    assert_eq!(newest[0]["seq"], last - 4);
    let journals = v["journals"].as_array().unwrap();
    let chain: Vec<&Value> = journals.iter().filter(|j| j["stale"] == false).collect();
    assert_eq!(chain.len(), 1, "{v}");
    assert_eq!(chain[0]["first_seq"], last - 3);
    assert_eq!(chain[0]["last_seq"], last);
    assert!(v["disk_bytes"].as_u64().unwrap() > 0);
    assert_eq!(code(&run(&["info"], &dir)), 0);

    let (c, v) = json(&["journal", "--pages"], &dir);
    assert_eq!(c, 0);
    let groups = v["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 4);
    for (k, g) in groups.iter().enumerate() {
        assert_eq!(g["seq"], last - 3 + k as u64);
        assert!(g["full_pages"].as_u64().unwrap() >= 1);
        assert_eq!(g["delta_pages"], 0);
        assert_eq!(g["runs"][0]["kind"], "full");
        assert!(g["bytes"].as_u64().unwrap() >= 40 + 40 + 4096);
    }
    // Groups are contiguous from the header area on.
    assert_eq!(groups[0]["offset"], 4096);
    for w in groups.windows(2) {
        assert_eq!(
            w[0]["offset"].as_u64().unwrap() + w[0]["bytes"].as_u64().unwrap(),
            w[1]["offset"].as_u64().unwrap()
        );
    }
    let (_, v) = json(&["journal", "--from", &(last - 1).to_string()], &dir);
    assert_eq!(v["groups"].as_array().unwrap().len(), 2);
    assert!(v["groups"][0].get("runs").is_none());
    let o = run(&["journal", "--pages"], &dir);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("full"), "{}", stdout(&o));

    assert_eq!(contents(&dir), before, "info, check and journal must not write");
}

fn damaged(name: &str, snapshot: bool, after: u64) -> (PathBuf, Value) {
    let dir = fresh_dir(name);
    make_heap(&dir, 3, snapshot, after);
    let (_, v) = json(&["info"], &dir);
    (dir, v)
}

fn newest_snapshot(info: &Value) -> PathBuf {
    let s = info["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["newest"] == true)
        .unwrap();
    PathBuf::from(s["file"].as_str().unwrap())
}

/// `check` on a damaged heap: exit 1, the problem names `file` at `offset` (text and JSON).
fn expect_problem(dir: &Path, file: &Path, offset: u64) -> Value {
    let before = contents(dir);
    let o = run(&["check"], dir);
    let text = stdout(&o);
    assert_eq!(code(&o), 1, "{text}");
    let line = format!("PROBLEM: {} at byte offset {offset}:", file.display());
    assert!(text.contains(&line), "expected `{line}` in:\n{text}");
    assert!(
        text.lines().filter(|l| l.starts_with(' ')).all(|l| l.len() <= 100),
        "{text}"
    );
    let (c, v) = json(&["check"], dir);
    assert_eq!(c, 1);
    assert_eq!(v["healthy"], false);
    assert_eq!(v["exit_code"], 1);
    assert_eq!(entry_for(&v["problems"], file)["offset"], offset, "{v}");
    // `info` still runs on a damaged heap (except a damaged `meta`) and fits 100 columns,
    // problem descriptions included.
    let o = run(&["info"], dir);
    if code(&o) == 0 {
        assert!(stdout(&o).lines().all(|l| l.len() <= 100), "{}", stdout(&o));
    }
    assert_eq!(contents(dir), before, "check and info must not write");
    v
}

#[test]
fn flipped_byte_in_meta() {
    let (dir, _) = damaged("meta", false, 0);
    flip(&dir.join("meta"), 40); // max_size
    expect_problem(&dir, &dir.join("meta"), 508); // the checksum field
}

#[test]
fn flipped_byte_in_snapshot_header() {
    let (dir, info) = damaged("snap-header", true, 2);
    let snap = newest_snapshot(&info);
    flip(&snap, 32); // seq
    let v = expect_problem(&dir, &snap, 124); // the header checksum
                                              // Recovery would fall back to no snapshot, and the journals it needs are gone.
    assert!(v["problems"].as_array().unwrap().len() >= 2, "{v}");
}

#[test]
fn flipped_byte_in_snapshot_data() {
    let (dir, info) = damaged("snap-data", true, 0);
    let snap = newest_snapshot(&info);
    // The allocator's arena header magic, region offset 8192 (file offset 4096 + 8192).
    flip(&snap, 4096 + 8192);
    let v = expect_problem(&dir, &snap, 4096 + 8192);
    assert!(v["allocator"].is_null());
    assert!(
        entry_for(&v["problems"], &snap)["what"]
            .as_str()
            .unwrap()
            .contains("allocator state"),
        "{v}"
    );
}

#[test]
fn flipped_byte_in_journal_header() {
    let (dir, _) = damaged("journal-header", false, 0);
    let j = journal_path(&dir, 1);
    flip(&j, 32); // start_seq
    expect_problem(&dir, &j, 60); // the header checksum
}

#[test]
fn flipped_byte_in_journal_record() {
    let (dir, _) = damaged("journal-record", false, 0);
    let (_, v) = json(&["journal", "--pages"], &dir);
    // Group 2's first page record; later records vouch that it was durable.
    let rec = v["groups"][1]["runs"][0]["file_offset"].as_u64().unwrap();
    let j = journal_path(&dir, 1);
    flip(&j, rec + 40 + 100);
    expect_problem(&dir, &j, rec);
}

#[test]
fn torn_journal_tail_is_a_note() {
    let dir = fresh_dir("torn");
    make_heap(&dir, 4, false, 0);
    let (_, info) = json(&["info"], &dir);
    let j = journal_path(&dir, 1);
    let valid_end = info["journals"][0]["valid_end"].as_u64().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&j).unwrap();
        f.write_all_at(&[0xab; 300], valid_end).unwrap();
    }
    let before = contents(&dir);
    let o = run(&["check"], &dir);
    let text = stdout(&o);
    assert_eq!(code(&o), 0, "a torn tail loses no durable commit: {text}");
    let line = format!("note: {} at byte offset {valid_end}:\n    torn tail", j.display());
    assert!(text.contains(&line), "expected `{line}` in:\n{text}");
    let (c, v) = json(&["check"], &dir);
    assert_eq!(c, 0);
    assert_eq!(entry_for(&v["notes"], &j)["offset"], valid_end);
    assert_eq!(v["last_seq"], info["last_durable_seq"]);
    assert_eq!(contents(&dir), before, "check must not truncate the tail");
}

#[test]
fn locked_heap_cannot_run() {
    let dir = fresh_dir("locked");
    make_heap(&dir, 2, false, 0);
    let heap: Heap<Root> = opts().open(&dir, |a: HeapAlloc| HVec::new_in(a)).unwrap();
    for cmd in ["check", "info", "journal", "compact"] {
        let o = run(&[cmd], &dir);
        assert_eq!(code(&o), 2, "{cmd}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("locked") && err.contains("lock"), "{cmd}: {err}");
        let (c, v) = json(&[cmd], &dir);
        assert_eq!(c, 2);
        assert_eq!(v["exit_code"], 2);
        assert!(v["error"].as_str().unwrap().contains("locked"), "{v}");
    }
    heap.close().unwrap();
    assert_eq!(code(&run(&["check"], &dir)), 0);
}

#[test]
fn not_a_heap_cannot_run() {
    let dir = fresh_dir("not-a-heap");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("something"), b"hello").unwrap();
    for cmd in ["check", "info", "journal", "compact"] {
        let o = run(&[cmd], &dir);
        assert_eq!(code(&o), 2, "{cmd}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not a snapheap heap directory"), "{cmd}: {err}");
    }
    // compact must not have created a heap there.
    assert!(!dir.join("meta").exists());
    let o = run(&["check"], &dir.join("missing"));
    assert_eq!(code(&o), 2);
}

#[test]
fn compact_replays_into_a_snapshot() {
    let dir = fresh_dir("compact");
    let last = make_heap(&dir, 3, true, 5);
    let (c, v) = json(&["compact"], &dir);
    assert_eq!(c, 0, "{v}");
    // The snapshot is taken at a commit, as every snapshot is: the last one, or one more that
    // carries only the allocator's bookkeeping of the reopen.
    let seq = v["seq"].as_u64().unwrap();
    assert!(seq == last || seq == last + 1, "{v}");
    assert_eq!(v["journals_after"], 1);
    assert!(v["bytes_before"].as_u64().unwrap() > 0 && v["bytes_after"].as_u64().unwrap() > 0);
    let (_, info) = json(&["info"], &dir);
    assert_eq!(info["last_durable_seq"], seq);
    let journals = info["journals"].as_array().unwrap();
    assert_eq!(journals.len(), 1, "{info}");
    assert_eq!(journals[0]["groups"], 0);
    assert_eq!(json(&["journal"], &dir).1["groups"].as_array().unwrap().len(), 0);
    assert_eq!(json(&["check"], &dir).0, 0);
    let heap: Heap<Root> = opts().open(&dir, |a: HeapAlloc| HVec::new_in(a)).unwrap();
    assert_eq!(&heap.read()[..], &(0..8).collect::<Vec<u64>>()[..]);
    heap.close().unwrap();
}
