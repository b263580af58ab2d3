static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

fn main() {
    HEAP.with_root(|| Vec::<Box<dyn Fn() + Send>>::new(), |v| v.push(Box::new(|| ())));
}
