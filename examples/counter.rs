//! The README's example: a visit counter and a log that survive restarts.
//!
//! ```sh
//! cargo run --release --example counter          # first run: creates data/counter.heap
//! cargo run --release --example counter          # later runs: the state is still there
//! ```
//!
//! The heap directory can be set with `SNAPHEAP_EXAMPLE_DIR`. With `SNAPHEAP_EXAMPLE_KEEP_JOURNAL`
//! set, closing takes no snapshot, so the commits stay in the journal (the README's `snapheap`
//! tool transcript uses this to have a journal to list and compact).

use snapheap::collections::{HashMap, String, Vec};
use snapheap::{Heap, HeapAlloc, OpenOptions};

#[derive(snapheap::Persist)]
struct State {
    visits: HashMap<String, u64>,
    log: Vec<u64>,
}

fn main() -> snapheap::Result<()> {
    let dir = std::env::var("SNAPHEAP_EXAMPLE_DIR").unwrap_or_else(|_| "data/counter.heap".into());
    let mut opts = OpenOptions::new();
    opts.snapshot_on_close(std::env::var_os("SNAPHEAP_EXAMPLE_KEEP_JOURNAL").is_none());
    let heap: Heap<State> = opts.open(&dir, |a: HeapAlloc| State {
        visits: HashMap::new_in(a),
        log: Vec::new_in(a),
    })?;
    let a = heap.alloc();
    let n = {
        let mut s = heap.write();
        *s.visits.entry(String::from_str_in("home", a)).or_insert(0) += 1;
        let n = s.visits["home"];
        s.log.push(n);
        s.commit()?; // durable when this returns
        n
    };
    let st = heap.stats();
    println!(
        "home visited {n} times (heap at {dir}, commit #{}, tracking: {})",
        st.commit_seq, st.track_mode
    );
    println!("log: {:?}", &heap.read().log[..]);
    heap.close()
}
