static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

fn hello() {}

fn main() {
    HEAP.with_root(|| hello as fn(), |f| f());
}
