fn hello() {}

fn main() {
    let _ = snapheap::Heap::<fn()>::open("/tmp/never", |_| hello as fn());
}
