static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

fn main() {
    HEAP.with_root(|| std::sync::Mutex::new(0u64), |m| *m.get_mut().unwrap() += 1);
}
