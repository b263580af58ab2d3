// `Rc` is also neither Send nor Sync; the first error is the Persist one.
fn main() {
    let _ = snapheap::Heap::<std::rc::Rc<u64>>::open("/tmp/never", |_| std::rc::Rc::new(1));
}
