fn main() {
    let _ = snapheap::Heap::<std::sync::Arc<u64>>::open("/tmp/never", |_| std::sync::Arc::new(1));
}
