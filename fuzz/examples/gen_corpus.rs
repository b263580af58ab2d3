//! Writes the seed corpora of the fuzz targets into `fuzz/corpus/<target>/` from real heap
//! directories (built here with snapheap) and deterministic operation sequences.
//!
//! Run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml --example gen_corpus`.
//! Heap ids, salts and base addresses are random, so the files differ on every run; commit
//! the result only when the formats change.

use snapheap::{Heap, OpenOptions};
use snapheap_fuzz::{encode_dir, Dir, Rng, Root, REOPEN, RESEAL_JOURNALS, RESEAL_META, RESEAL_SNAPSHOTS};
use snapheap_fuzz::{TAG_JOURNAL, TAG_META, TAG_SNAPSHOT0, TAG_SNAPSHOT1};
use std::path::{Path, PathBuf};

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.max_size(snapheap_fuzz::MAX_SIZE)
        .snapshot_after_journal_bytes(u64::MAX)
        .snapshot_on_close(false);
    o
}

fn change(heap: &Heap<Root>, rng: &mut Rng, n: u64) {
    let mut s = heap.write();
    for _ in 0..n {
        let v = rng.next_u64();
        s.push(v);
    }
    for _ in 0..4 {
        let i = (rng.next_u64() % s.len() as u64) as usize;
        s[i] = rng.next_u64();
    }
}

/// A heap with only a journal (no snapshot yet).
fn journal_only(dir: &Path, rng: &mut Rng) {
    let heap = options().open(dir, Root::new_in).unwrap();
    for n in [3, 40, 700] {
        change(&heap, rng, n);
        heap.commit().unwrap();
    }
}

/// Two snapshots and a journal after them.
fn two_snapshots(dir: &Path, rng: &mut Rng) {
    let heap = options().open(dir, Root::new_in).unwrap();
    change(&heap, rng, 100);
    heap.commit().unwrap();
    heap.snapshot().unwrap();
    change(&heap, rng, 600);
    heap.snapshot().unwrap();
    for n in [5, 50] {
        change(&heap, rng, n);
        heap.commit().unwrap();
    }
}

/// A valid snapshot, a snapshot whose writer stopped before its header, two journals.
fn failed_snapshot(dir: &Path, rng: &mut Rng) {
    {
        let heap = options().open(dir, Root::new_in).unwrap();
        change(&heap, rng, 100);
        heap.snapshot().unwrap();
        change(&heap, rng, 10);
        heap.commit().unwrap();
    }
    let mut o = options();
    o.test_snapshot_stop_after(Some(6));
    let heap = o.open(dir, Root::new_in).unwrap();
    change(&heap, rng, 30);
    let _ = heap.snapshot();
    change(&heap, rng, 20);
    heap.commit().unwrap();
}

/// The journal's bytes up to the end of its last record plus a few zeros (the writer
/// pre-zeroes megabytes ahead; the fuzzer does not need them).
fn trimmed_journal(b: &[u8]) -> Vec<u8> {
    let mut pos = 4096usize;
    while let Some(Ok(len)) = b.get(pos..).and_then(snapheap::fuzzing::record_shape) {
        pos += len as usize;
    }
    b[..(pos + 64).min(b.len())].to_vec()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let scratch = std::env::temp_dir().join(format!("snapheap-gen-corpus-{}", std::process::id()));
    let mut rng = Rng(0x5eed_c0de);
    type Build = fn(&Path, &mut Rng);
    let builds: [(&str, Build); 3] = [
        ("journal-only", journal_only),
        ("two-snapshots", two_snapshots),
        ("failed-snapshot", failed_snapshot),
    ];
    for (name, build) in builds {
        let dir = scratch.join(name);
        build(&dir, &mut rng);
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_default();
        let meta = read("meta");
        let snaps = [read("snapshot-0"), read("snapshot-1")];
        let mut journals: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("journal-") && !n.ends_with(".tmp"))
            .map(|n| {
                let b = trimmed_journal(&read(&n));
                (n, b)
            })
            .collect();
        journals.sort();

        // recovery: the whole directory, as is and with the reseal flags.
        let mut files: Vec<(u8, &[u8])> = vec![
            (TAG_META, &meta),
            (TAG_SNAPSHOT0, &snaps[0]),
            (TAG_SNAPSHOT1, &snaps[1]),
        ];
        files.extend(journals.iter().map(|(_, b)| (TAG_JOURNAL, b.as_slice())));
        write(&out.join("recovery"), name, &encode_dir(0, &files));
        let all = RESEAL_META | RESEAL_SNAPSHOTS | RESEAL_JOURNALS;
        write(
            &out.join("recovery"),
            &format!("{name}-reseal"),
            &encode_dir(all, &files),
        );
        write(
            &out.join("recovery"),
            &format!("{name}-reseal-reopen"),
            &encode_dir(all | REOPEN, &files),
        );
        // The seeds must open (as the recovery target writes them), or the fuzzer starts
        // from nothing but error paths.
        let check = scratch.join(format!("{name}-check"));
        for flags in [0, all] {
            std::fs::create_dir_all(&check).unwrap();
            Dir::decode(&encode_dir(flags, &files))
                .write_to(&check, |_| {})
                .unwrap();
            let heap = options().open(&check, Root::new_in).unwrap();
            assert!(heap.stats().commit_seq > 1, "{name}: the seed recovered nothing");
            drop(heap);
        }

        // journal_decode: each journal as the newest and as an older one.
        for (jn, b) in &journals {
            for flags in [0u8, 2, 3] {
                let mut input = vec![flags];
                input.extend_from_slice(b);
                write(
                    &out.join("journal_decode"),
                    &format!("{name}-{jn}-flags{flags}"),
                    &input,
                );
            }
        }

        // header_parse: the meta header and each non-empty snapshot header.
        let mut input = vec![0u8];
        input.extend_from_slice(&meta);
        write(&out.join("header_parse"), &format!("{name}-meta"), &input);
        for (i, s) in snaps.iter().enumerate().filter(|(_, s)| s.len() >= 128) {
            let mut input = vec![4u8];
            input.extend_from_slice(&s[..128]);
            write(&out.join("header_parse"), &format!("{name}-snapshot-{i}"), &input);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);

    // alloc_model: deterministic operation sequences of several lengths and mixes.
    for (k, len) in [64usize, 400, 2000, 8000].into_iter().enumerate() {
        let mut r = Rng(0xa110c + k as u64);
        let ops: Vec<u8> = (0..len).map(|_| r.next_u64() as u8).collect();
        write(&out.join("alloc_model"), &format!("random-{len}"), &ops);
    }
    // Allocate many small blocks, free every other one, restart, check, allocate again.
    let mut ops = Vec::new();
    for i in 0..200u8 {
        ops.extend_from_slice(&[0, i, i, 0x11]);
    }
    for i in 0..100u8 {
        ops.extend_from_slice(&[3, 0, i, 0]);
    }
    ops.extend_from_slice(&[7, 0, 0, 0, 6, 0, 0, 0]);
    for i in 0..50u8 {
        ops.extend_from_slice(&[0, i, 7, 0x37, 5, 0, i, 6]);
    }
    write(&out.join("alloc_model"), "alloc-free-restart-realloc", &ops);
    println!("wrote the corpus under {}", out.display());
}
