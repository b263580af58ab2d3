static N: u64 = 7;

fn main() {
    let _ = snapheap::Heap::<&'static u64>::open("/tmp/never", |_| &N);
}
