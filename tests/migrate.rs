//! Schema migration (`OpenOptions::migrate`): three releases of a root type opened in turn by
//! separate processes, chains that skip a release, missing steps, panicking closures, and the
//! upgrade of format-1 heaps (meta format 1, no root record).

mod common;
mod migrate_versions;

use common::*;
use migrate_versions::*;
use snapheap::{Error, Heap, OpenOptions};

const N: u64 = 200_000;
const CROSS: &str = "three_releases_in_three_processes_carry_every_value_and_move_the_map_without_copying";

/// A child process running release `HEAP_RELEASE` on the heap in `HEAP`: prints the address
/// of the big map's first entry and the migrations the heap has recorded.
fn release_child() {
    let dir = std::env::var("HEAP").unwrap();
    let r: u32 = std::env::var("HEAP_RELEASE").unwrap().parse().unwrap();
    match r {
        1 => {
            let h = options(1).open(&dir, |a| init_v1(a, N)).unwrap();
            check_v1(&h.read(), N);
            println!("ADDR {}", big_addr(&h.read().big));
            h.close().unwrap();
        }
        2 => {
            let h: Heap<v2::State> = options(2).open(&dir, |_| panic!("the heap exists")).unwrap();
            check_v2(&h.read(), N);
            println!("ADDR {}", big_addr(&h.read().big));
            println!("MIGRATIONS {}", h.root_info().unwrap().migrations);
            h.verify().unwrap();
            h.close().unwrap();
        }
        3 => {
            let h: Heap<v3::State> = options(3).open(&dir, |_| panic!("the heap exists")).unwrap();
            check_v3(&h.read(), N);
            println!("ADDR {}", big_addr(&h.read().big));
            println!("MIGRATIONS {}", h.root_info().unwrap().migrations);
            h.verify().unwrap();
            h.close().unwrap();
        }
        _ => unreachable!(),
    }
}

fn field(out: &str, key: &str) -> usize {
    out.lines()
        .find_map(|l| {
            l.split(key)
                .nth(1)
                .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no {key} line in {out}"))
}

#[test]
fn three_releases_in_three_processes_carry_every_value_and_move_the_map_without_copying() {
    if role().as_deref() == Some("release") {
        release_child();
        return;
    } else if role().is_some() {
        return;
    }
    let s = Scratch::new("migrate-cross");
    let dir = s.heap();
    let run = |r: &str| {
        run_child(
            CROSS,
            "release",
            &[("HEAP", dir.to_str().unwrap()), ("HEAP_RELEASE", r)],
        )
    };
    let out1 = run("1");
    let out2 = run("2");
    let out3 = run("3");
    let a1 = field(&out1, "ADDR ");
    assert_eq!(field(&out2, "ADDR "), a1, "v1 -> v2 copied the map's buffer");
    assert_eq!(field(&out3, "ADDR "), a1, "v2 -> v3 copied the map's buffer");
    assert_eq!((field(&out2, "MIGRATIONS "), field(&out3, "MIGRATIONS ")), (1, 2));
    // Opening v3 again runs nothing; the old release is refused with both identities named.
    let out3b = run("3");
    assert_eq!(field(&out3b, "MIGRATIONS "), 2);
    let e = options(1)
        .open(&dir, |a| init_v1(a, N))
        .err()
        .expect("v1 must not open a v3 heap");
    let msg = e.to_string();
    assert!(matches!(e, Error::Incompatible { .. }), "{e}");
    assert!(msg.contains("v3::State") && msg.contains("v1::State"), "{msg}");
    let info = OpenOptions::new().read_root_info(&dir).unwrap();
    assert!(info.type_name.ends_with("v3::State"), "{info:?}");
    assert_eq!(
        (info.schema.as_str(), info.migrations, info.format_version),
        ("app-v3", 2, 2)
    );
}

#[test]
fn a_chain_skips_a_release_and_runs_both_steps_in_one_open() {
    let s = Scratch::new("migrate-skip");
    let dir = s.heap();
    let h = options(1).open(&dir, |a| init_v1(a, 1000)).unwrap();
    let addr = big_addr(&h.read().big);
    let seq = h.stats().commit_seq;
    h.close().unwrap();
    let h: Heap<v3::State> = options(3).open(&dir, |_| unreachable!()).unwrap();
    check_v3(&h.read(), 1000);
    assert_eq!(big_addr(&h.read().big), addr);
    assert_eq!(h.stats().commit_seq, seq + 1, "the whole chain is one commit");
    h.verify().unwrap();
    h.close().unwrap();
    let h: Heap<v3::State> = options(3).open(&dir, |_| unreachable!()).unwrap();
    check_v3(&h.read(), 1000);
}

#[test]
fn a_missing_step_is_incompatible_and_names_the_stored_type_and_the_offered_steps() {
    let s = Scratch::new("migrate-missing");
    let dir = s.heap();
    options(1).open(&dir, |a| init_v1(a, 10)).unwrap().close().unwrap();
    // v3 offering only v2 -> v3: nothing leads from v1.
    let mut o = OpenOptions::new();
    o.schema("app-v3").migrate::<v2::State, v3::State>("app-v2", v2_to_v3);
    let e = o.open::<v3::State>(&dir, |_| unreachable!()).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::Incompatible { .. }), "{msg}");
    for want in [
        "v1::State",
        "\"app-v1\"",
        "v3::State",
        "migrations offered",
        "v2::State` (schema \"app-v2\")",
    ] {
        assert!(msg.contains(want), "{want:?} missing from: {msg}");
    }
    // v3 offering only v1 -> v2: the chain stops at v2.
    let mut o = OpenOptions::new();
    o.schema("app-v3").migrate::<v1::State, v2::State>("app-v1", v1_to_v2);
    let msg = o.open::<v3::State>(&dir, |_| unreachable!()).err().unwrap().to_string();
    assert!(
        msg.contains("lead from it only to") && msg.contains("v2::State"),
        "{msg}"
    );
    // Nothing was committed: v1 still opens with its data.
    let h = options(1).open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 10);
    h.verify().unwrap();
}

#[test]
fn a_panicking_migration_fails_the_open_and_commits_nothing() {
    let s = Scratch::new("migrate-panic");
    let dir = s.heap();
    let h = options(1).open(&dir, |a| init_v1(a, 5000)).unwrap();
    let seq = h.stats().commit_seq;
    h.close().unwrap();
    let mut o = OpenOptions::new();
    o.schema("app-v2").migrate::<v1::State, v2::State>("app-v1", |old, a| {
        // Half the work done (blocks freed and allocated), then a panic.
        let mut s = v1_to_v2(old, a);
        s.big.clear();
        s.big.shrink_to_fit();
        panic!("boom in the middle");
    });
    let e = o.open::<v2::State>(&dir, |_| unreachable!()).err().unwrap();
    let msg = e.to_string();
    assert!(matches!(e, Error::MigrationFailed { .. }), "{msg}");
    assert!(msg.contains("boom in the middle") && msg.contains("v1::State"), "{msg}");
    // In this process the half-migrated memory stays mapped (values could still point into
    // it), so a reopen here is refused until it is released ...
    let e = options(1).open::<v1::State>(&dir, |_| unreachable!()).err().unwrap();
    assert!(matches!(e, Error::Detached { .. }), "{e}");
    // SAFETY: the failed migration's values were dropped while unwinding; none escaped.
    assert!(unsafe { snapheap::release_detached(&dir) }.unwrap());
    // The durable state is the one from before: v1 opens unchanged, nothing was committed.
    let h = options(1).open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 5000);
    assert_eq!(h.stats().commit_seq, seq);
    h.verify().unwrap();
    h.close().unwrap();
    // And the good migration then runs.
    let h: Heap<v2::State> = options(2).open(&dir, |_| unreachable!()).unwrap();
    check_v2(&h.read(), 5000);
    h.verify().unwrap();
}

#[test]
fn the_schema_alone_selects_a_step_when_the_type_keeps_its_name() {
    // The same Rust type, its meaning changed: schema "s1" -> "s2".
    let s = Scratch::new("migrate-same-type");
    let dir = s.heap();
    OpenOptions::new()
        .schema("s1")
        .open(&dir, |_| 7u64)
        .unwrap()
        .close()
        .unwrap();
    let e = OpenOptions::new().schema("s2").open(&dir, |_| 0u64).err().unwrap();
    assert!(e.to_string().contains("schema"), "{e}");
    let mut o = OpenOptions::new();
    o.schema("s2").migrate::<u64, u64>("s1", |v, _| v * 100);
    let h = o.open(&dir, |_| 0u64).unwrap();
    assert_eq!(*h.read(), 700);
    let info = h.root_info().unwrap();
    assert_eq!((info.schema.as_str(), info.migrations), ("s2", 1));
    h.close().unwrap();
    // Reopening with the same options does not run the step again.
    assert_eq!(*o.open(&dir, |_| 0u64).unwrap().read(), 700);
}

/// The meta format version byte of a heap directory.
fn meta_version(dir: &std::path::Path) -> u32 {
    let b = std::fs::read(dir.join("meta")).unwrap();
    u32::from_le_bytes(b[8..12].try_into().unwrap())
}

#[test]
fn a_format_1_heap_is_upgraded_at_its_first_open_and_can_migrate_in_the_same_open() {
    let s = Scratch::new("migrate-legacy");
    let dir = s.heap();
    let mut o = options(1);
    o.test_create_legacy_format(true);
    let h = o.open(&dir, |a| init_v1(a, 3000)).unwrap();
    let addr = big_addr(&h.read().big);
    h.close().unwrap();
    assert_eq!(meta_version(&dir), 1);
    let info = OpenOptions::new().read_root_info(&dir).unwrap();
    assert_eq!((info.format_version, info.schema.as_str()), (1, "app-v1"));
    assert_eq!(meta_version(&dir), 1, "reading the identity upgrades nothing");
    // The current release opens it (upgrade) and migrates in the same open.
    let h: Heap<v2::State> = options(2).open(&dir, |_| unreachable!()).unwrap();
    check_v2(&h.read(), 3000);
    assert_eq!(big_addr(&h.read().big), addr);
    h.verify().unwrap();
    h.close().unwrap();
    assert_eq!(meta_version(&dir), 2);
    let h: Heap<v2::State> = options(2).open(&dir, |_| unreachable!()).unwrap();
    check_v2(&h.read(), 3000);
}

#[test]
fn an_upgrade_interrupted_between_the_record_commit_and_the_meta_rewrite_completes_later() {
    let s = Scratch::new("migrate-legacy-crash");
    let dir = s.heap();
    let mut o = options(1);
    o.test_create_legacy_format(true);
    o.open(&dir, |a| init_v1(a, 100)).unwrap().close().unwrap();
    let format_1_meta = std::fs::read(dir.join("meta")).unwrap();
    // Upgrade step 1 (the record committed durably) and step 2 (meta rewritten) ...
    let h = options(1).open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 100);
    h.close().unwrap();
    assert_eq!(meta_version(&dir), 2);
    // ... then put the format-1 meta back: the state a crash between the steps leaves.
    std::fs::write(dir.join("meta"), &format_1_meta).unwrap();
    // The previous release's code (format 1) still opens it: it ignores the record.
    let h = o.open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 100);
    h.close().unwrap();
    // This release reuses the record and finishes the upgrade.
    let h = options(1).open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 100);
    h.verify().unwrap();
    h.close().unwrap();
    assert_eq!(meta_version(&dir), 2);
    let h: Heap<v3::State> = options(3).open(&dir, |_| unreachable!()).unwrap();
    check_v3(&h.read(), 100);
    h.verify().unwrap();
}

#[test]
fn a_new_format_1_heap_whose_creator_died_before_its_first_commit_is_created_in_format_2() {
    let s = Scratch::new("migrate-legacy-empty");
    let dir = s.heap();
    let mut o = options(1);
    o.test_create_legacy_format(true);
    // Drop without commit after creation is not possible through the API (open commits),
    // so make a format-1 meta with an empty image: create, then remove every commit.
    o.open(&dir, |a| init_v1(a, 1)).unwrap().close().unwrap();
    // SAFETY: every value of that heap was in its root, and the handle is closed.
    unsafe { snapheap::release_detached(&dir) }.unwrap();
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let n = e.file_name().into_string().unwrap();
        if n.starts_with("journal-") || n.starts_with("snapshot-") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let h = options(1).open(&dir, |a| init_v1(a, 50)).unwrap();
    check_v1(&h.read(), 50);
    h.close().unwrap();
    assert_eq!(meta_version(&dir), 2);
    let h = options(1).open::<v1::State>(&dir, |_| unreachable!()).unwrap();
    check_v1(&h.read(), 50);
}
