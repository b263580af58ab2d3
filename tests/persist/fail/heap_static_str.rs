fn main() {
    let _ = snapheap::Heap::<&'static str>::open("/tmp/never", |_| "a literal in the executable");
}
