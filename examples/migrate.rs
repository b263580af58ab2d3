//! Changing your types: three releases of one program, each with its own root type, opening
//! the same heap. Run them in order and watch the data carried forward:
//!
//! ```sh
//! cargo run --release --example migrate v1   # release 1 creates data/migrate.heap
//! cargo run --release --example migrate v2   # release 2 migrates v1 -> v2 in place
//! cargo run --release --example migrate v3   # release 3 migrates v2 -> v3 (or v1 -> v2 -> v3)
//! ```
//!
//! A real program keeps only its newest type plus the older ones its migrations read; here
//! the three releases live in one file and the argument picks which one runs. The heap
//! directory can be set with `SNAPHEAP_EXAMPLE_DIR`.

use snapheap::collections::{HashMap, String, Vec};
use snapheap::{Heap, HeapAlloc, OpenOptions, Persist};

/// Release 1: users by id, and a flat list of visit counts.
#[derive(Persist)]
struct StateV1 {
    users: HashMap<u64, String>,
    visits: Vec<u32>,
    motd: String,
}

/// Release 2: adds `runs`, drops `motd`.
#[derive(Persist)]
struct StateV2 {
    users: HashMap<u64, String>,
    visits: Vec<u32>,
    runs: u64,
}

/// Release 3: visit counts become `u64` (a collection's element type changes).
#[derive(Persist)]
struct StateV3 {
    users: HashMap<u64, String>,
    visits: Vec<u64>,
    runs: u64,
}

/// v1 -> v2: `users` and `visits` are moved (their buffers stay where they are), `motd` is
/// dropped (its block is freed in the heap), `runs` starts at 0.
fn v1_to_v2(old: StateV1, _a: HeapAlloc) -> StateV2 {
    println!("  migrating v1 -> v2: dropping motd {:?}", old.motd.as_str());
    StateV2 {
        users: old.users,
        visits: old.visits,
        runs: 0,
    }
}

/// v2 -> v3: `visits` is rebuilt with the new element type, allocated through `a`.
fn v2_to_v3(old: StateV2, a: HeapAlloc) -> StateV3 {
    println!("  migrating v2 -> v3: widening {} visit counts", old.visits.len());
    let mut visits = Vec::with_capacity_in(old.visits.len(), a);
    visits.extend(old.visits.iter().map(|&v| u64::from(v)));
    StateV3 {
        users: old.users,
        visits,
        runs: old.runs,
    }
}

fn main() -> snapheap::Result<()> {
    let dir = std::env::var("SNAPHEAP_EXAMPLE_DIR").unwrap_or_else(|_| "data/migrate.heap".into());
    let release = std::env::args().nth(1).unwrap_or_else(|| "v1".into());
    match release.as_str() {
        "v1" => {
            let heap = OpenOptions::new().schema("app-v1").open(&dir, |a| {
                let mut users = HashMap::new_in(a);
                users.insert(1, String::from_str_in("ada", a));
                users.insert(2, String::from_str_in("grace", a));
                let mut visits = Vec::new_in(a);
                visits.extend([3u32, 5]);
                StateV1 {
                    users,
                    visits,
                    motd: String::from_str_in("hello from release 1", a),
                }
            })?;
            let s = heap.read();
            println!(
                "release 1: users {:?}, visits {:?}, motd {:?}",
                sorted(&s.users),
                &s.visits[..],
                s.motd.as_str()
            );
        }
        "v2" => {
            let heap: Heap<StateV2> = OpenOptions::new()
                .schema("app-v2")
                .migrate::<StateV1, StateV2>("app-v1", v1_to_v2)
                .open(&dir, |a| StateV2 {
                    users: HashMap::new_in(a),
                    visits: Vec::new_in(a),
                    runs: 0,
                })?;
            let mut s = heap.write();
            s.runs += 1;
            s.commit()?;
            println!(
                "release 2: users {:?}, visits {:?}, runs {}",
                sorted(&s.users),
                &s.visits[..],
                s.runs
            );
        }
        "v3" => {
            let heap: Heap<StateV3> = OpenOptions::new()
                .schema("app-v3")
                .migrate::<StateV1, StateV2>("app-v1", v1_to_v2)
                .migrate::<StateV2, StateV3>("app-v2", v2_to_v3)
                .open(&dir, |a| StateV3 {
                    users: HashMap::new_in(a),
                    visits: Vec::new_in(a),
                    runs: 0,
                })?;
            let mut s = heap.write();
            s.runs += 1;
            s.visits.push(1 << 40);
            s.commit()?;
            println!(
                "release 3: users {:?}, visits {:?}, runs {}",
                sorted(&s.users),
                &s.visits[..],
                s.runs
            );
            drop(s);
            let info = heap.root_info()?;
            println!(
                "the heap now records `{}` with schema {:?} after {} migrations",
                info.type_name, info.schema, info.migrations
            );
        }
        other => {
            eprintln!("usage: migrate v1|v2|v3 (got {other:?})");
            std::process::exit(2);
        }
    }
    Ok(())
}

fn sorted(users: &HashMap<u64, String>) -> std::vec::Vec<(u64, &str)> {
    let mut v: std::vec::Vec<_> = users.iter().map(|(k, n)| (*k, n.as_str())).collect();
    v.sort();
    v
}
