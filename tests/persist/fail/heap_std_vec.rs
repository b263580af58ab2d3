fn main() {
    let _ = snapheap::Heap::<std::vec::Vec<u64>>::open("/tmp/never", |_| Vec::new());
}
