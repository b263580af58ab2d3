//! A persistent `GlobalHeap` that is not the `#[global_allocator]` refuses roots: std's
//! collections in them (which `GlobalPersist` admits) would get their buffers from another
//! allocator and be lost at exit. This binary deliberately declares no global allocator.

mod common;

use common::Scratch;
use snapheap::GlobalHeap;

static HEAP: GlobalHeap = GlobalHeap::new().max_size(64 << 20);

#[test]
fn with_root_on_a_persistent_heap_that_is_not_the_global_allocator_panics() {
    let dir = Scratch::new("global-not-installed");
    // The only test in this binary: nothing else reads the environment concurrently.
    std::env::set_var("SNAPHEAP_DIR", dir.heap());
    assert!(HEAP.is_persistent());
    let r = std::panic::catch_unwind(|| HEAP.with_root(Vec::<String>::new, |v| v.len()));
    let msg = r.expect_err("with_root must refuse");
    let msg = msg
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_else(|| msg.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default());
    assert!(
        msg.contains("not the #[global_allocator]"),
        "unexpected panic message: {msg}"
    );
}
