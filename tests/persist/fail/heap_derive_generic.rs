// A generic derived struct is Persist only for Persist parameters.
use snapheap::{Heap, Persist};

#[derive(Persist)]
struct Tagged<T> {
    tag: u32,
    value: T,
}

fn main() {
    let _ = Heap::<Tagged<std::string::String>>::open("/tmp/never", |_| unimplemented!());
}
