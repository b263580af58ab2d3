fn main() {
    let _ = snapheap::Heap::<std::sync::Mutex<u64>>::open("/tmp/never", |_| std::sync::Mutex::new(0));
}
