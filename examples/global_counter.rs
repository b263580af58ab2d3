//! A program whose state survives restarts with no allocator generics in its code.
//!
//! Run it twice:
//!
//! ```text
//! SNAPHEAP_DIR=/tmp/snapheap-demo cargo run --release --example global_counter
//! SNAPHEAP_DIR=/tmp/snapheap-demo cargo run --release --example global_counter
//! ```
//!
//! Every run appends a line to a `Vec<String>` and bumps counters in a `BTreeMap`, both
//! ordinary std types living in the persistent heap. Without `SNAPHEAP_DIR` the heap is
//! volatile and every run starts afresh.

use std::collections::BTreeMap;

#[global_allocator]
static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

/// The state kept across runs: plain std types.
#[derive(Default, snapheap::GlobalPersist)]
struct State {
    runs: Vec<String>,
    words: BTreeMap<String, u64>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (n, last_lines) = HEAP.with_root(State::default, |s| {
        let when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        s.runs
            .push(format!("run {} at unix time {when}, args {args:?}", s.runs.len() + 1));
        for a in &args {
            *s.words.entry(a.clone()).or_default() += 1;
        }
        let tail: Vec<String> = s.runs.iter().rev().take(5).rev().cloned().collect();
        (s.runs.len(), tail)
    });
    let seq = HEAP.commit().expect("commit");
    println!(
        "{} heap; this is run {n}; commit {seq}",
        if HEAP.is_persistent() { "persistent" } else { "volatile" }
    );
    for l in last_lines {
        println!("  {l}");
    }
    HEAP.with_root(State::default, |s| {
        for (w, c) in &s.words {
            println!("  word {w:?} seen {c} times");
        }
    });
    let st = HEAP.stats();
    println!(
        "allocated {} bytes, reclaimed {} bytes at open, {} replayed pages",
        st.allocated_bytes, st.reclaimed_bytes, st.replayed_pages
    );
}
