//! Corruption sweep: every byte of every header and record format of real heap directories,
//! mutated (bit flip, set to 0x00, set to 0xFF), plus truncations at many offsets and garbage
//! appended, must make `open` return a clean error or recover a *committed* state (the
//! content of some commit, checked against a model of every commit's content). Never a
//! panic, a crash (signal) or a hang.
//!
//! How it runs: the test builds small heap directories (several commits, snapshots, a
//! non-empty journal after the newest snapshot), records the content of every commit, and
//! then starts a worker process (this test binary again, in the `worker` role) that applies
//! the cases one by one to a working copy of each directory, opens the heap in-process under
//! `catch_unwind`, classifies the outcome, and restores the working copy. The worker reports
//! each case on stdout (`SWEEP B i` when it starts, `SWEEP E i class` when it ends), so the
//! driver sees a crash (the worker dies inside case `i`) or a hang (no report within the
//! watchdog time) and restarts a worker after the offending case.
//!
//! Every 16th case that opens also commits on top of the recovered state and reopens, so a
//! recovery that leaves the journal unusable (say, a torn tail not truncated) is caught too.
//!
//! Snapshot *data pages* are not mutated: they are not checksummed by design (the heap's
//! contents are as trusted as the executable, see docs/design.md "Trust"); their header,
//! padding and dirty bitmap are. The directories live on tmpfs when there is one.

mod common;

use common::*;
use snapheap::collections::Vec as HVec;
use snapheap::fuzzing::delta_offsets;
use snapheap::{Error, Heap, OpenOptions};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

const SWEEP_TEST: &str = "corruption_sweep_gives_clean_errors_or_committed_prefixes";
const PLANTED_TEST: &str = "sweep_driver_reports_planted_panic_crash_hang_and_wrong_content";
/// Watchdog: a case that makes no progress for this long is a hang. Far above any real open.
const HANG_AFTER: Duration = Duration::from_secs(60);
const MAX_SIZE: u64 = 64 << 20;
const PAGE: u64 = 4096;

type Root = HVec<u64>;
/// Commit sequence number -> the root's content at that commit.
type Model = BTreeMap<u64, Vec<u64>>;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.max_size(MAX_SIZE)
        .snapshot_after_journal_bytes(u64::MAX)
        .snapshot_on_close(false);
    o
}

// ---------------------------------------------------------------------------------------
// Building the directories and the model.

fn record(heap: &Heap<Root>, model: &mut Model) {
    let seq = heap.stats().commit_seq;
    model.insert(seq, heap.read().to_vec());
}

/// One commit's worth of changes: appends a run of values (sometimes a long one, so that a
/// group spans several pages and the vector moves) and overwrites a few old ones.
fn change(heap: &Heap<Root>, rng: &mut Rng) {
    let mut s = heap.write();
    let n = if rng.below(4) == 0 {
        700 + rng.below(900)
    } else {
        10 + rng.below(200)
    };
    for _ in 0..n {
        let v = rng.next();
        s.push(v);
    }
    for _ in 0..8 {
        let i = rng.below(s.len() as u64) as usize;
        s[i] = rng.next();
    }
}

fn commit(heap: &Heap<Root>, rng: &mut Rng, model: &mut Model) {
    change(heap, rng);
    heap.commit().unwrap();
    record(heap, model);
}

/// Two valid snapshots (generations 1 and 2) and four commits in the journal after them.
fn build_two_snapshots(dir: &Path, seed: u64) -> Model {
    let mut model = Model::new();
    let mut rng = Rng::new(seed);
    let heap = released(options().open(dir, Root::new_in)).unwrap();
    record(&heap, &mut model);
    for _ in 0..3 {
        commit(&heap, &mut rng, &mut model);
    }
    heap.snapshot().unwrap();
    record(&heap, &mut model);
    for _ in 0..2 {
        commit(&heap, &mut rng, &mut model);
    }
    change(&heap, &mut rng);
    heap.snapshot().unwrap();
    record(&heap, &mut model);
    for _ in 0..4 {
        commit(&heap, &mut rng, &mut model);
    }
    drop(heap); // no close: the journal stays non-empty, as after a crash
    model
}

/// No snapshot yet (both files empty): the whole history is in journal 1.
fn build_journal_only(dir: &Path, seed: u64) -> Model {
    let mut model = Model::new();
    let mut rng = Rng::new(seed);
    let heap = released(options().open(dir, Root::new_in)).unwrap();
    record(&heap, &mut model);
    for _ in 0..7 {
        commit(&heap, &mut rng, &mut model);
    }
    drop(heap);
    model
}

/// One valid snapshot, a second snapshot whose writer stopped before its valid header (the
/// file holds pages and bitmap under an invalid header), so the chain after the valid
/// snapshot has two journals: a complete older one and the newest.
fn build_failed_snapshot(dir: &Path, seed: u64) -> Model {
    let mut model = Model::new();
    let mut rng = Rng::new(seed);
    {
        let heap = released(options().open(dir, Root::new_in)).unwrap();
        record(&heap, &mut model);
        for _ in 0..2 {
            commit(&heap, &mut rng, &mut model);
        }
        heap.snapshot().unwrap();
        record(&heap, &mut model);
        for _ in 0..2 {
            commit(&heap, &mut rng, &mut model);
        }
    }
    let mut o = options();
    o.test_snapshot_stop_after(Some(6)); // pages, bitmap and their sync; no valid header
    let heap = released(o.open(dir, Root::new_in)).unwrap();
    commit(&heap, &mut rng, &mut model);
    change(&heap, &mut rng);
    let _ = heap.snapshot(); // the writer "dies": reported or not, the journal rotated
    record(&heap, &mut model);
    for _ in 0..3 {
        commit(&heap, &mut rng, &mut model);
    }
    drop(heap);
    model
}

fn save_model(path: &Path, model: &Model) {
    let mut s = String::new();
    for (seq, v) in model {
        s.push_str(&seq.to_string());
        for x in v {
            s.push(' ');
            s.push_str(&x.to_string());
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

fn load_model(path: &Path) -> Model {
    let s = std::fs::read_to_string(path).unwrap();
    s.lines()
        .map(|l| {
            let mut it = l.split(' ').map(|x| x.parse::<u64>().unwrap());
            (it.next().unwrap(), it.collect())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Cases.

#[derive(Debug, Clone)]
enum Op {
    /// XOR the byte with this mask.
    Flip(u8),
    /// Set the byte to this value.
    Set(u8),
    /// Truncate the file to this length.
    Truncate,
    /// Append these bytes.
    Append(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Case {
    scenario: usize,
    file: String,
    /// Byte offset (mutations) or new length (truncation).
    off: u64,
    op: Op,
}

impl Case {
    fn describe(&self, scenario: &str) -> String {
        let what = match &self.op {
            Op::Flip(m) => format!("byte {} ^= {m:#04x}", self.off),
            Op::Set(v) => format!("byte {} = {v:#04x}", self.off),
            Op::Truncate => format!("truncated to {}", self.off),
            Op::Append(b) => format!("{} bytes appended", b.len()),
        };
        format!("{scenario}/{}: {what}", self.file)
    }
}

impl Scenario {
    /// Whether no snapshot was ever written (both snapshot files empty).
    fn never_snapshotted(&self) -> bool {
        self.files
            .iter()
            .all(|(n, b)| !n.starts_with("snapshot-") || b.is_empty())
    }
}

/// A pristine directory held in memory.
struct Scenario {
    name: String,
    files: Vec<(String, Vec<u8>)>,
    /// `nonzero_end` of each file.
    nonzero: Vec<usize>,
    model: Model,
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes(s.try_into().unwrap()))
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8)
        .map_or(0, |s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// Offsets of the records of a journal image (its own decoding, independent of the library's):
/// `(start, payload_len)` until the first all-zero header or the end.
fn journal_records(b: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 4096usize;
    while pos + 40 <= b.len() && b[pos..pos + 40].iter().any(|&x| x != 0) {
        let len = u64::from(u32_at(b, pos + 8));
        out.push((pos as u64, len));
        pos += (40 + len as usize).next_multiple_of(8);
    }
    out
}

/// Length of `b` without its trailing zero bytes.
fn nonzero_end(b: &[u8]) -> usize {
    b.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1)
}

fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut r = Rng::new(seed);
    (0..len).map(|_| r.next() as u8).collect()
}

fn cases(scenarios: &[Scenario]) -> Vec<Case> {
    let mut out = Vec::new();
    let mut delta_records = 0;
    for (si, sc) in scenarios.iter().enumerate() {
        for (name, b) in &sc.files {
            let mut mutate = |off: u64| {
                let cur = b[off as usize];
                let mut ops = vec![Op::Flip(1 << (off % 8))];
                if cur != 0 {
                    ops.push(Op::Set(0));
                }
                if cur != 0xff {
                    ops.push(Op::Set(0xff));
                }
                for op in ops {
                    out.push(Case {
                        scenario: si,
                        file: name.clone(),
                        off,
                        op,
                    });
                }
            };
            let len = b.len() as u64;
            let mut cuts: Vec<u64> = Vec::new();
            if name == "meta" {
                (0..len).for_each(&mut mutate);
                cuts.extend([0, 1, 8, 100, 256, 507, 508, 511]);
            } else if name.starts_with("snapshot-") {
                (0..128.min(len)).for_each(&mut mutate);
                (128..PAGE.min(len)).step_by(61).for_each(&mut mutate);
                let extent = u64_at(b, 48);
                let dirty_len = u64_at(b, 56);
                let bitmap = PAGE + extent;
                if bitmap + dirty_len <= len {
                    (bitmap..bitmap + dirty_len).for_each(&mut mutate);
                    cuts.extend([bitmap - 1, bitmap, bitmap + 1, bitmap + dirty_len / 2]);
                    cuts.extend([bitmap + dirty_len - 1, PAGE + extent / 2, PAGE + 1]);
                }
                if len > 0 {
                    cuts.extend([0, 1, 12, 64, 123, 124, 127, 128, 129, 2048, 4095, 4096, len - 1]);
                }
            } else if name.starts_with("journal-") {
                (0..64.min(len)).for_each(&mut mutate);
                (64..PAGE.min(len)).step_by(53).for_each(&mut mutate);
                let recs = journal_records(b);
                let mut rng = Rng::new(len ^ 0x5eed);
                for &(at, plen) in &recs {
                    (at..at + 40).for_each(&mut mutate);
                    cuts.extend([at, at + 1, at + 8, at + 39, at + 40]);
                    if plen > 0 {
                        let p = at + 40;
                        let mut sample = vec![p, p + 1, p + plen / 2, p + plen - 2, p + plen - 1];
                        sample.extend((0..4).map(|_| p + rng.below(plen)));
                        sample.into_iter().for_each(&mut mutate);
                        cuts.extend([p + plen / 2, p + plen - 1]);
                    }
                    if u16_at(b, at as usize + 4) == delta_offsets::KIND_DELTA {
                        // Every byte of every entry's header and run table, and the first and
                        // last byte of its data, walked with the format code's offsets.
                        delta_records += 1;
                        let (mut e, end) = (at + 40, at + 40 + plen);
                        while e + delta_offsets::ENTRY_HEADER_LEN as u64 <= end {
                            let runs = u16_at(b, e as usize + delta_offsets::ENTRY_RUNS_OFFSET) as usize;
                            let words = u16_at(b, e as usize + delta_offsets::ENTRY_WORDS_OFFSET) as usize;
                            let elen = delta_offsets::entry_len(runs, words) as u64;
                            let data = e + elen - 8 * words as u64;
                            (e..data).for_each(&mut mutate);
                            [data, e + elen - 1].into_iter().for_each(&mut mutate);
                            cuts.extend([e, data]);
                            e += elen;
                        }
                    }
                }
                let end = recs.last().map_or(PAGE, |&(at, l)| at + (40 + l).next_multiple_of(8));
                cuts.extend([0, 1, 8, 60, 63, 64, 65, 2000, 4095, 4096, end - 1, end, end + 1]);
                cuts.extend([end + 4096, len - 1]);
                // Bytes in the pre-zeroed space after the last record.
                [end, end + 7, end + 40, end + 4096, len - 1]
                    .into_iter()
                    .for_each(&mut mutate);
            } else {
                continue;
            }
            cuts.sort_unstable();
            cuts.dedup();
            for cut in cuts.into_iter().filter(|&c| c < len) {
                out.push(Case {
                    scenario: si,
                    file: name.clone(),
                    off: cut,
                    op: Op::Truncate,
                });
            }
            for (k, n) in [1usize, 7, 40, 48, 4096, 10_000].into_iter().enumerate() {
                out.push(Case {
                    scenario: si,
                    file: name.clone(),
                    off: len,
                    op: Op::Append(garbage(len ^ k as u64, n)),
                });
            }
            out.push(Case {
                scenario: si,
                file: name.clone(),
                off: len,
                op: Op::Append(vec![0; 8192]),
            });
        }
    }
    assert!(
        delta_records >= 3,
        "the scenarios' journals hold {delta_records} DELTA records"
    );
    out
}

// ---------------------------------------------------------------------------------------
// Worker: apply, open, classify, restore.

fn load_scenarios(root: &Path) -> Vec<Scenario> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("scenario-"))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let dir = root.join(&name);
            let pristine = dir.join("pristine");
            let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&pristine)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lock")
                .map(|n| {
                    let b = std::fs::read(pristine.join(&n)).unwrap();
                    (n, b)
                })
                .collect();
            files.sort();
            let model = load_model(&dir.join("model"));
            let nonzero = files.iter().map(|(_, b)| nonzero_end(b)).collect();
            Scenario {
                name,
                files,
                nonzero,
                model,
            }
        })
        .collect()
}

fn work_dir(root: &Path, sc: &Scenario) -> PathBuf {
    root.join(&sc.name).join("work")
}

/// Makes the working copy equal to the pristine directory again. Opening writes only journal
/// tails (truncation at resume, a new journal when none is left) and never snapshot pages,
/// so rewriting every file except the snapshots' data pages is enough; the periodic full
/// comparison in the worker checks that.
fn restore(dir: &Path, sc: &Scenario) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        if n != "lock" && !sc.files.iter().any(|(f, _)| *f == n) {
            std::fs::remove_file(dir.join(&n)).unwrap();
        }
    }
    for ((name, b), &nz) in sc.files.iter().zip(&sc.nonzero) {
        let path = dir.join(name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let len = f.metadata().unwrap().len();
        let orig = b.len() as u64;
        if name.starts_with("snapshot-") && orig > PAGE {
            // Header page and everything after the data pages; data pages only if cut off.
            let extent = u64_at(b, 48);
            let tail = (PAGE + extent).min(orig) as usize;
            f.write_all_at(&b[..PAGE as usize], 0).unwrap();
            if len < orig {
                let from = len.max(PAGE) as usize;
                f.write_all_at(&b[from..], from as u64).unwrap();
            } else {
                f.write_all_at(&b[tail..], tail as u64).unwrap();
            }
            if len > orig {
                f.set_len(orig).unwrap();
            }
        } else if name.starts_with("journal-") {
            // Records, then zeros (pre-zeroed space) that a commit may have overwritten.
            f.write_all_at(&b[..nz], 0).unwrap();
            f.set_len(nz as u64).unwrap();
            f.set_len(orig).unwrap();
        } else {
            f.write_all_at(b, 0).unwrap();
            if len != orig {
                f.set_len(orig).unwrap();
            }
        }
    }
}

/// Asserts that the working copy equals the pristine directory byte for byte.
fn assert_restored(dir: &Path, sc: &Scenario, after: &str) {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lock")
        .collect();
    names.sort();
    let expected: Vec<&String> = sc.files.iter().map(|(n, _)| n).collect();
    assert_eq!(names.iter().collect::<Vec<_>>(), expected, "{after}: file list");
    for (name, b) in &sc.files {
        let got = std::fs::read(dir.join(name)).unwrap();
        assert!(got == *b, "{after}: {name} was not restored");
    }
}

fn apply(dir: &Path, case: &Case) {
    let path = dir.join(&case.file);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
    match &case.op {
        Op::Flip(mask) | Op::Set(mask) => {
            let mut byte = [0u8];
            f.read_exact_at(&mut byte, case.off).unwrap();
            byte[0] = match case.op {
                Op::Flip(_) => byte[0] ^ mask,
                _ => *mask,
            };
            f.write_all_at(&byte, case.off).unwrap();
        }
        Op::Truncate => f.set_len(case.off).unwrap(),
        Op::Append(bytes) => f.write_all_at(bytes, case.off).unwrap(),
    }
}

/// What one open gave.
#[derive(Debug)]
enum Outcome {
    Corrupt,
    Incompatible,
    OtherError(String),
    /// Opened with the newest commit's content.
    Latest,
    /// Opened with an older commit's content.
    Prefix,
    /// Recovered no commit (a torn first commit): created anew.
    Empty,
    /// Opened with content that is no commit's, or an allocator that fails verification.
    Wrong(String),
    Panic(String),
}

impl Outcome {
    fn class(&self) -> &'static str {
        match self {
            Outcome::Corrupt => "error-corrupt",
            Outcome::Incompatible => "error-incompatible",
            Outcome::OtherError(_) => "error-other",
            Outcome::Latest => "opened-latest",
            Outcome::Prefix => "opened-prefix",
            Outcome::Empty => "opened-empty",
            Outcome::Wrong(_) => "WRONG",
            Outcome::Panic(_) => "PANIC",
        }
    }
}

fn open_and_check(dir: &Path, model: &Model, empty_prefix_ok: bool, extra_commit: bool) -> Outcome {
    let init_ran = std::cell::Cell::new(false);
    let heap = match released(options().open(dir, |a| {
        init_ran.set(true);
        Root::new_in(a)
    })) {
        Ok(h) => h,
        Err(Error::Corrupt { .. }) => return Outcome::Corrupt,
        Err(Error::Incompatible { .. }) => return Outcome::Incompatible,
        Err(e) => return Outcome::OtherError(e.to_string()),
    };
    if init_ran.get() {
        // Recovering no commit at all is the empty prefix: allowed only while the whole
        // history is in the journal (no snapshot was ever written), as after a torn first
        // commit; the heap is then created anew and `init` commits it again.
        if !empty_prefix_ok {
            return Outcome::Wrong("every commit was lost: the heap was created anew".into());
        }
        if heap.read()[..] != model.values().next().unwrap()[..] {
            return Outcome::Wrong("created anew with other content than the first commit".into());
        }
        return Outcome::Empty;
    }
    let seq = heap.stats().commit_seq;
    let Some(expected) = model.get(&seq) else {
        return Outcome::Wrong(format!("recovered commit {seq}, which was never made"));
    };
    if heap.read()[..] != expected[..] {
        return Outcome::Wrong(format!("commit {seq} recovered with other content"));
    }
    if let Err(e) = heap.verify() {
        return Outcome::Wrong(format!("commit {seq} recovered, verify failed: {e}"));
    }
    if extra_commit {
        // The recovered heap must go on working: commit on top of it and recover that.
        heap.write().push(seq);
        let next = match heap.commit() {
            Ok(s) => s,
            Err(e) => return Outcome::Wrong(format!("commit after recovering {seq} failed: {e}")),
        };
        drop(heap);
        let heap = match released(options().open(dir, Root::new_in)) {
            Ok(h) => h,
            Err(e) => return Outcome::Wrong(format!("reopen after a commit on recovered {seq} failed: {e}")),
        };
        let ok = heap.stats().commit_seq == next
            && heap.read().len() == expected.len() + 1
            && heap.read()[..expected.len()] == expected[..]
            && heap.read()[expected.len()] == seq;
        if !ok {
            return Outcome::Wrong(format!("commit {next} made on recovered {seq} not recovered"));
        }
    }
    if seq == *model.keys().next_back().unwrap() {
        Outcome::Latest
    } else {
        Outcome::Prefix
    }
}

/// A planted failure for the driver's self-test: `SWEEP_PLANT=kind:case,...`.
fn planted(i: usize) -> Option<String> {
    let plant = std::env::var("SWEEP_PLANT").ok()?;
    plant.split(',').find_map(|p| {
        let (kind, at) = p.split_once(':')?;
        (at.parse::<usize>().ok()? == i).then(|| kind.to_string())
    })
}

fn worker(root: &Path, start: usize) {
    let scenarios = load_scenarios(root);
    let all = cases(&scenarios);
    println!("SWEEP T {}", all.len());
    let end = std::env::var("SWEEP_END")
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(all.len());
    let mut current: Option<usize> = None;
    for (i, case) in all.iter().enumerate().take(end).skip(start) {
        let sc = &scenarios[case.scenario];
        let dir = work_dir(root, sc);
        if current != Some(case.scenario) {
            // A fresh copy: the previous worker may have died in the middle of a case.
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            restore(&dir, sc);
            assert_restored(&dir, sc, "initial copy");
            current = Some(case.scenario);
        }
        println!("SWEEP B {i}");
        apply(&dir, case);
        let plant = planted(i);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match plant.as_deref() {
            Some("panic") => panic!("planted panic"),
            Some("crash") => std::process::abort(),
            Some("hang") => loop {
                std::thread::park();
            },
            Some("wrong") => {
                let mut model = sc.model.clone();
                for v in model.values_mut() {
                    v.push(u64::MAX);
                }
                open_and_check(&dir, &model, false, false)
            }
            _ => open_and_check(&dir, &sc.model, sc.never_snapshotted(), i % 16 == 0),
        }));
        let outcome = r.unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome::Panic(msg)
        });
        restore(&dir, sc);
        if i % 512 == 0 || i + 1 == end {
            assert_restored(&dir, sc, &format!("case {i}"));
        }
        let detail = match &outcome {
            Outcome::OtherError(s) | Outcome::Wrong(s) | Outcome::Panic(s) => s.replace('\n', " "),
            _ => String::new(),
        };
        println!("SWEEP E {i} {} {} {detail}", outcome.class(), case.describe(&sc.name));
    }
    println!("SWEEP D");
}

// ---------------------------------------------------------------------------------------
// Driver.

enum Line {
    Out(String),
    Eof,
}

/// Outcome counts of a sweep.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    failures: Vec<String>,
    total: Option<usize>,
    workers: usize,
}

impl Tally {
    fn count(&self, class: &str) -> u64 {
        self.counts.get(class).copied().unwrap_or(0)
    }
}

/// Runs one worker (the test `test` of this binary) from case `start`; returns the next case
/// to run, `None` when the worker got through.
fn drive(
    test: &str,
    root: &Path,
    env: &[(&str, &str)],
    hang_after: Duration,
    start: usize,
    tally: &mut Tally,
) -> Option<usize> {
    let mut env = env.to_vec();
    let start_s = start.to_string();
    env.push(("SWEEP_ROOT", root.to_str().unwrap()));
    env.push(("SWEEP_START", &start_s));
    let mut child = child(test, "worker", &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tally.workers += 1;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(Line::Out(line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Line::Eof);
    });
    let mut err = child.stderr.take().unwrap();
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut running: Option<usize> = None;
    let mut last_done: Option<usize> = None;
    let mut finished = false;
    let mut hung = false;
    loop {
        match rx.recv_timeout(hang_after) {
            Ok(Line::Out(l)) => {
                // libtest may print "test name ... " without a newline before our first line.
                let Some(at) = l.find("SWEEP ") else { continue };
                let l = &l[at..];
                let mut w = l.split(' ').skip(1);
                match w.next() {
                    Some("T") => tally.total = w.next().and_then(|n| n.parse().ok()),
                    Some("B") => running = w.next().and_then(|n| n.parse().ok()),
                    Some("E") => {
                        let i: usize = w.next().unwrap().parse().unwrap();
                        let class = w.next().unwrap().to_string();
                        if class == "WRONG" || class == "PANIC" {
                            tally.failures.push(l.to_string());
                        }
                        *tally.counts.entry(class).or_default() += 1;
                        running = None;
                        last_done = Some(i);
                    }
                    Some("D") => finished = true,
                    _ => {}
                }
            }
            Ok(Line::Eof) => break,
            Err(_) => {
                hung = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    let stderr = err_thread.join().unwrap_or_default();
    if finished && status.success() {
        return None;
    }
    let tail: String = stderr
        .chars()
        .rev()
        .take(2000)
        .collect::<String>()
        .chars()
        .rev()
        .collect();
    match running {
        Some(i) => {
            let class = if hung { "HANG" } else { "CRASH" };
            *tally.counts.entry(class.into()).or_default() += 1;
            tally.failures.push(format!(
                "case {i}: {class} ({status:?}, signal {:?})\n{tail}",
                status.signal()
            ));
            Some(i + 1)
        }
        None => panic!("worker failed outside a case after case {last_done:?}: {status:?}\n{tail}"),
    }
}

/// Runs workers until every case from 0 to `end` (or the last) has been classified.
fn sweep(test: &str, root: &Path, env: &[(&str, &str)], hang_after: Duration) -> Tally {
    let mut tally = Tally::default();
    let mut next = Some(0);
    while let Some(start) = next {
        next = drive(test, root, env, hang_after, start, &mut tally);
        let end = env
            .iter()
            .find(|(k, _)| *k == "SWEEP_END")
            .and_then(|(_, v)| v.parse().ok())
            .or(tally.total);
        if end.is_some_and(|t| next.is_some_and(|n| n >= t)) {
            break;
        }
    }
    tally
}

/// The sweep's scratch directory: on tmpfs (`/dev/shm`) when there is one and
/// `SNAPHEAP_TEST_DIR` is not set, because every successful open syncs the journal and the
/// directory, and the sweep is about decoding and recovery decisions, not the disk.
struct SweepDir(PathBuf);

impl SweepDir {
    fn new(tag: &str) -> SweepDir {
        let base = match std::env::var_os("SNAPHEAP_TEST_DIR") {
            Some(d) => PathBuf::from(d),
            None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let p = base.join(format!("snapheap-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        SweepDir(p)
    }
}

impl Drop for SweepDir {
    fn drop(&mut self) {
        if std::env::var_os("SWEEP_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

type Build = fn(&Path, u64) -> Model;

/// Builds each scenario's pristine directory and saves its model under `root`.
fn prepare(root: &Path, builds: &[(&str, Build)]) {
    for (k, &(name, build)) in builds.iter().enumerate() {
        let dir = root.join(name);
        let pristine = dir.join("pristine");
        let model = build(&pristine, 0x5eed_0000 + k as u64);
        assert!(model.len() >= 8, "{name}: {} commits", model.len());
        save_model(&dir.join("model"), &model);
        let names: Vec<String> = std::fs::read_dir(&pristine)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let journals = names.iter().filter(|n| n.starts_with("journal-")).count();
        let snaps = names.iter().filter(|n| n.starts_with("snapshot-")).count();
        println!("{name}: {} commits, files {names:?}", model.len());
        assert!(journals >= 1 && snaps == 2, "{name}: {names:?}");
    }
}

/// Serialises the tests of this file: a heap's `flock` is held by every process forked while
/// its descriptor is open (a worker being spawned, a snapshot writer before it closes the
/// descriptors it does not need), so building heaps while the other test forks could see a
/// transient `Error::Locked`.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs the worker role when this process is one.
fn is_worker() -> bool {
    match role().as_deref() {
        Some("worker") => {
            let root = PathBuf::from(std::env::var("SWEEP_ROOT").unwrap());
            let start = std::env::var("SWEEP_START").unwrap().parse().unwrap();
            worker(&root, start);
            true
        }
        Some(_) => true,
        None => false,
    }
}

#[test]
fn corruption_sweep_gives_clean_errors_or_committed_prefixes() {
    if is_worker() {
        return;
    }
    let _serial = serial();
    let scratch = SweepDir::new("corruption-sweep");
    let root = &scratch.0;
    prepare(
        root,
        &[
            ("scenario-a-two-snapshots", build_two_snapshots),
            ("scenario-b-failed-snapshot", build_failed_snapshot),
            ("scenario-c-journal-only", build_journal_only),
        ],
    );
    let started = std::time::Instant::now();
    let tally = sweep(SWEEP_TEST, root, &[], HANG_AFTER);
    let total = tally.total.expect("the worker reported the number of cases");
    let counted: u64 = tally.counts.values().sum();
    println!(
        "corruption sweep: {counted} cases of {total} in {:.1} s with {} worker process(es)",
        started.elapsed().as_secs_f64(),
        tally.workers
    );
    for (class, n) in &tally.counts {
        println!("  {class:>20}: {n}");
    }
    for f in tally.failures.iter().take(20) {
        println!("FAILURE {f}");
    }
    assert_eq!(counted, total as u64, "every case was classified");
    assert!(total >= 10_000, "only {total} cases");
    assert!(tally.count("opened-latest") > 0 && tally.count("opened-prefix") > 0);
    assert!(tally.count("error-corrupt") > 0);
    assert!(
        tally.failures.is_empty(),
        "{} cases panicked, crashed, hung or recovered wrong content",
        tally.failures.len()
    );
    for class in ["PANIC", "CRASH", "HANG", "WRONG"] {
        assert_eq!(tally.count(class), 0, "{class}");
    }
}

/// The harness is not blind: a panic, an abort, a hang and a model mismatch planted in
/// chosen cases are each reported in their class, and the sweep goes on after each.
#[test]
fn sweep_driver_reports_planted_panic_crash_hang_and_wrong_content() {
    if is_worker() {
        return;
    }
    let _serial = serial();
    let scratch = SweepDir::new("sweep-planted");
    let root = &scratch.0;
    prepare(root, &[("scenario-a-two-snapshots", build_two_snapshots)]);
    // "wrong" needs an open that succeeds: the first case that appends garbage (to the
    // journal: a torn tail after the last commit).
    let scenarios = load_scenarios(root);
    let all = cases(&scenarios);
    let append = all.iter().position(|c| matches!(c.op, Op::Append(_))).unwrap();
    let plant = format!("panic:3,crash:5,hang:7,wrong:{append}");
    let end = (append + 1).to_string();
    let env = [("SWEEP_PLANT", plant.as_str()), ("SWEEP_END", end.as_str())];
    let tally = sweep(PLANTED_TEST, root, &env, Duration::from_secs(5));
    for (class, n) in &tally.counts {
        println!("  {class:>20}: {n}");
    }
    for class in ["PANIC", "CRASH", "HANG", "WRONG"] {
        assert_eq!(tally.count(class), 1, "{class}: {:?}", tally.counts);
    }
    let counted: u64 = tally.counts.values().sum();
    assert_eq!(counted, append as u64 + 1, "every case up to the last planted one ran");
    assert_eq!(tally.workers, 3, "a new worker after the crash and after the hang");
}

// ---------------------------------------------------------------------------------------
// Regressions found by the `recovery` fuzz target: recovered images too small for what the
// allocator header says made `open` read unmapped memory (SIGSEGV) instead of failing.

/// A heap with a snapshot (generation 1 in `snapshot-0`) and an empty journal after it.
fn snapshotted_heap(dir: &Path) -> PathBuf {
    let heap = released(options().open(dir, Root::new_in)).unwrap();
    heap.write().extend(0..1000u64);
    heap.snapshot().unwrap();
    drop(heap);
    let snap = dir.join("snapshot-0");
    assert_eq!(
        u64_at(&std::fs::read(&snap).unwrap(), 24),
        1,
        "generation 1 in snapshot-0"
    );
    snap
}

/// Rewrites `len` bytes at `off` of a file and, if `reseal`, the snapshot header checksum.
fn patch(path: &Path, off: u64, bytes: &[u8], reseal: bool) {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    f.write_all_at(bytes, off).unwrap();
    if reseal {
        let mut h = [0u8; 124];
        f.read_exact_at(&mut h, 0).unwrap();
        f.write_all_at(&crc32fast::hash(&h).to_le_bytes(), 124).unwrap();
    }
}

fn expect_corrupt(dir: &Path, case: &str) {
    match released(options().open(dir, Root::new_in)) {
        Err(Error::Corrupt { what, .. }) => println!("{case}: {what}"),
        Err(e) => panic!("{case}: expected Error::Corrupt, got {e}"),
        Ok(_) => panic!("{case}: opened"),
    }
}

#[test]
fn snapshot_extent_below_one_segment_is_corrupt_not_a_crash() {
    let _serial = serial();
    let scratch = SweepDir::new("small-extent");
    for (extent, dirty_len) in [(0u64, 0u64), (PAGE, 1), (2 << 20, 64)] {
        let dir = scratch.0.join(format!("heap-{extent}"));
        let snap = snapshotted_heap(&dir);
        // extent @ 48, dirty_len @ 56 (docs/design.md, "Snapshot files"); the bitmap's own
        // checksum no longer matches, which only costs the next snapshot a full rewrite.
        patch(&snap, 48, &extent.to_le_bytes(), false);
        patch(&snap, 56, &dirty_len.to_le_bytes(), true);
        expect_corrupt(&dir, &format!("snapshot extent {extent:#x}"));
    }
}

#[test]
fn allocator_extent_beyond_the_recovered_image_is_corrupt_not_a_crash() {
    let _serial = serial();
    let scratch = SweepDir::new("arena-extent");
    let dir = scratch.0.join("heap");
    let snap = snapshotted_heap(&dir);
    // In the image (file offset 4096 + region offset): the arena header at 8192 holds
    // `extent` at 24 and `seg_used` at 256 (src/alloc/segment.rs). Claim two segments, both
    // used, while the snapshot holds one.
    let header = PAGE + 8192;
    patch(&snap, header + 24, &(8u64 << 20).to_le_bytes(), false);
    patch(&snap, header + 256, &3u64.to_le_bytes(), false);
    expect_corrupt(&dir, "allocator extent of two segments in a one-segment image");
}

#[test]
fn every_damaged_byte_of_the_root_record_and_its_pointers_is_corrupt_not_a_crash() {
    let _serial = serial();
    let scratch = SweepDir::new("root-record");
    let dir = scratch.0.join("heap");
    let snap = snapshotted_heap(&dir);
    let image = std::fs::read(&snap).unwrap();
    let base = u64_at(&std::fs::read(dir.join("meta")).unwrap(), 24);
    // The arena header at 8192 of the image keeps `user_words` at 64: word 0 is the root
    // pointer, word 2 the root record's address (docs/design.md, "Root record").
    let words = PAGE + 8192 + 64;
    let record = u64_at(&image, (words + 16) as usize);
    assert!(record > base, "the heap has a root record");
    let at = PAGE + (record - base);
    let mut cases = 0;
    let mut check = |off: u64, new: u8, what: &str| {
        let old = image[off as usize];
        if new == old {
            return;
        }
        patch(&snap, off, &[new], false);
        expect_corrupt(&dir, what);
        patch(&snap, off, &[old], false);
        cases += 1;
    };
    for i in 0..448u64 {
        let old = image[(at + i) as usize];
        check(at + i, old ^ (1 << (i % 8)), &format!("root record byte {i} flipped"));
        if i % 7 == 0 {
            check(at + i, 0xff, &format!("root record byte {i} set to 0xff"));
        }
    }
    for (word, name) in [(0u64, "root pointer"), (2, "root record pointer")] {
        for bit in 0..64u64 {
            let off = words + 8 * word + bit / 8;
            let old = image[off as usize];
            check(off, old ^ (1 << (bit % 8)), &format!("{name} bit {bit} flipped"));
        }
    }
    println!("{cases} damaged root-record cases, each Error::Corrupt");
    // Undamaged again, the heap opens.
    released(options().open(&dir, Root::new_in)).unwrap().close().unwrap();
}
