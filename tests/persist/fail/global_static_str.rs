// The second program: a literal's address is in the executable, which loads elsewhere
// in the next run.
#[global_allocator]
static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

fn main() {
    HEAP.with_root(Vec::<&'static str>::new, |v| v.push("hello"));
    HEAP.commit().unwrap();
}
