//! `GlobalHeap::migrate_root` across processes: three releases of a root type, each a
//! different build (simulated by `SNAPHEAP_TEST_BUILD_ID`; this binary's heap states in code
//! that its roots hold no pointers into the executable, `allow_other_builds`); a release that
//! migrates and exits without committing leaves the old root; a panicking migration poisons
//! the heap so the half-done state is never committed.

mod common;

use common::*;
use snapheap::{GlobalHeap, GlobalPersist};

#[global_allocator]
// SAFETY: the roots of this test hold only integers, `String`s and `Vec`s.
static HEAP: GlobalHeap = unsafe { GlobalHeap::new().allow_other_builds() };

#[derive(GlobalPersist)]
struct G1 {
    names: Vec<String>,
    count: u64,
    legacy: String,
}

#[derive(GlobalPersist)]
struct G2 {
    names: Vec<String>,
    count: u64,
    added: u32,
}

#[derive(GlobalPersist)]
struct G3 {
    names: Vec<String>,
    count: u64,
    added: u64,
}

fn names() -> Vec<String> {
    (0..5000).map(|i| format!("name-{i}")).collect()
}

fn g1_to_g2(old: G1) -> G2 {
    G2 {
        names: old.names,
        count: old.count,
        added: old.legacy.len() as u32,
    }
}

fn g2_to_g3(old: G2) -> G3 {
    G3 {
        names: old.names,
        count: old.count,
        added: u64::from(old.added) * 10,
    }
}

const TEST: &str = "global_roots_migrate_across_builds_and_commit_once";

fn child_role(r: &str) {
    assert!(HEAP.is_persistent());
    match r {
        "v1" => {
            let addr = HEAP.with_root(
                || G1 {
                    names: names(),
                    count: 7,
                    legacy: "four".to_string(),
                },
                |g| g.names.as_ptr() as usize,
            );
            HEAP.commit().unwrap();
            println!("ADDR {addr}");
        }
        "v1-check" => {
            let ok = HEAP.with_root(
                || unreachable!("the v1 root exists"),
                |g: &mut G1| g.names == names() && g.count == 7 && g.legacy == "four",
            );
            assert!(ok, "v1 root changed");
            HEAP.verify().unwrap();
            println!("V1 INTACT");
        }
        "v2-no-commit" => {
            assert!(HEAP.migrate_root::<G1, G2>(g1_to_g2));
            // Exits without committing: the next run must still find G1.
        }
        "v2-panic" => {
            let r = std::panic::catch_unwind(|| HEAP.migrate_root::<G1, G2>(|_old| panic!("migration bug")));
            assert!(r.is_err());
            let e = HEAP.commit().unwrap_err();
            assert!(matches!(e, snapheap::Error::Poisoned { .. }), "{e}");
            println!("POISONED {e}");
        }
        "v2" => {
            assert!(HEAP.migrate_root::<G1, G2>(g1_to_g2));
            assert!(!HEAP.migrate_root::<G1, G2>(g1_to_g2), "a second call finds no G1");
            HEAP.commit().unwrap();
            let addr = HEAP.with_root(
                || unreachable!("migrated"),
                |g: &mut G2| {
                    assert!(g.names == names() && g.count == 7 && g.added == 4);
                    g.names.as_ptr() as usize
                },
            );
            HEAP.verify().unwrap();
            println!("ADDR {addr}");
        }
        "v3" => {
            // Release 3 offers both steps; the first finds nothing to do.
            assert!(!HEAP.migrate_root::<G1, G2>(g1_to_g2));
            assert!(HEAP.migrate_root::<G2, G3>(g2_to_g3));
            HEAP.commit().unwrap();
            let addr = HEAP.with_root(
                || unreachable!("migrated"),
                |g: &mut G3| {
                    assert!(g.names == names() && g.count == 7 && g.added == 40);
                    g.names.as_ptr() as usize
                },
            );
            HEAP.verify().unwrap();
            println!("ADDR {addr}");
        }
        _ => unreachable!(),
    }
}

fn addr(out: &str) -> usize {
    out.lines()
        .find_map(|l| l.split("ADDR ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .expect("ADDR line")
        .parse()
        .unwrap()
}

#[test]
fn global_roots_migrate_across_builds_and_commit_once() {
    if let Some(r) = role() {
        child_role(&r);
        return;
    }
    let s = Scratch::new("global-migrate");
    let heap = s.heap();
    let run = |r: &str, build: &str| {
        run_child(
            TEST,
            r,
            &[
                ("SNAPHEAP_DIR", heap.to_str().unwrap()),
                ("SNAPHEAP_TEST_BUILD_ID", build),
            ],
        )
    };
    let a1 = addr(&run("v1", "1a"));
    run("v2-no-commit", "2b");
    assert!(run("v1-check", "1a").contains("V1 INTACT"));
    assert!(run("v2-panic", "2b").contains("POISONED"));
    assert!(run("v1-check", "1a").contains("V1 INTACT"));
    let a2 = addr(&run("v2", "2b"));
    let a3 = addr(&run("v3", "3c"));
    assert_eq!((a2, a3), (a1, a1), "the names vector's buffer was copied");
}
