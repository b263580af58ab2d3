//! Three releases of one program's root type, shared by the migration tests: v1 -> v2 adds a
//! field (`added`) and removes one (`legacy`); v2 -> v3 changes a collection's element type
//! (`scores`: `u32` -> `u64`) and adds another collection (`notes`). The large map `big` is
//! moved unchanged through both steps.

#![allow(dead_code)]

use snapheap::collections::{HashMap, String, Vec};
use snapheap::{HeapAlloc, OpenOptions, Persist};

pub mod v1 {
    use super::*;
    #[derive(Persist)]
    pub struct State {
        pub counter: u64,
        pub name: String,
        pub legacy: u64,
        pub scores: Vec<u32>,
        pub big: HashMap<u64, u64>,
    }
}

pub mod v2 {
    use super::*;
    #[derive(Persist)]
    pub struct State {
        pub counter: u64,
        pub name: String,
        pub scores: Vec<u32>,
        pub big: HashMap<u64, u64>,
        pub added: u64,
    }
}

pub mod v3 {
    use super::*;
    #[derive(Persist)]
    pub struct State {
        pub counter: u64,
        pub name: String,
        pub scores: Vec<u64>,
        pub big: HashMap<u64, u64>,
        pub added: u64,
        pub notes: Vec<String>,
    }
}

pub fn v1_to_v2(old: v1::State, _a: HeapAlloc) -> v2::State {
    v2::State {
        counter: old.counter,
        name: old.name,
        scores: old.scores,
        big: old.big,
        added: old.legacy * 2,
    }
}

pub fn v2_to_v3(old: v2::State, a: HeapAlloc) -> v3::State {
    let mut scores = Vec::with_capacity_in(old.scores.len(), a);
    scores.extend(old.scores.iter().map(|&s| u64::from(s) * 1000));
    let mut notes = Vec::new_in(a);
    notes.push(String::from_str_in("migrated from v2", a));
    v3::State {
        counter: old.counter,
        name: old.name,
        scores,
        big: old.big,
        added: old.added,
        notes,
    }
}

/// The options release `r` opens the heap with: its schema id and the migrations from every
/// earlier release.
pub fn options(r: u32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.schema(&format!("app-v{r}"));
    if r >= 2 {
        o.migrate::<v1::State, v2::State>("app-v1", v1_to_v2);
    }
    if r >= 3 {
        o.migrate::<v2::State, v3::State>("app-v2", v2_to_v3);
    }
    o
}

pub fn init_v1(a: HeapAlloc, n: u64) -> v1::State {
    let mut big = HashMap::with_capacity_in(n as usize, a);
    for k in 0..n {
        big.insert(k, k * 3 + 1);
    }
    let mut scores = Vec::new_in(a);
    scores.extend([5u32, 7, 11]);
    v1::State {
        counter: 41,
        name: String::from_str_in("carried", a),
        legacy: 21,
        scores,
        big,
    }
}

pub fn check_big(big: &HashMap<u64, u64>, n: u64) {
    assert_eq!(big.len() as u64, n, "big map length");
    for k in 0..n {
        assert_eq!(big.get(&k), Some(&(k * 3 + 1)), "big[{k}]");
    }
}

pub fn check_v1(s: &v1::State, n: u64) {
    assert_eq!((s.counter, s.name.as_str(), s.legacy), (41, "carried", 21));
    assert_eq!(&s.scores[..], &[5, 7, 11]);
    check_big(&s.big, n);
}

pub fn check_v2(s: &v2::State, n: u64) {
    assert_eq!((s.counter, s.name.as_str(), s.added), (41, "carried", 42));
    assert_eq!(&s.scores[..], &[5, 7, 11]);
    check_big(&s.big, n);
}

pub fn check_v3(s: &v3::State, n: u64) {
    assert_eq!((s.counter, s.name.as_str(), s.added), (41, "carried", 42));
    assert_eq!(&s.scores[..], &[5000, 7000, 11000]);
    assert_eq!(s.notes.len(), 1);
    assert_eq!(s.notes[0].as_str(), "migrated from v2");
    check_big(&s.big, n);
}

/// Address of the map's entry for key 0: inside the map's table buffer, so equal addresses
/// before and after a migration mean the buffer was moved, not copied.
pub fn big_addr(big: &HashMap<u64, u64>) -> usize {
    big.get(&0).expect("key 0") as *const u64 as usize
}
