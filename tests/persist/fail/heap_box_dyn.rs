// Even a box in the heap may not hold a trait object: its vtable is in the executable.
use snapheap::collections::Box;

trait Shape {}

fn main() {
    let _ = snapheap::Heap::<Box<dyn Shape + Send + Sync>>::open("/tmp/never", |_| unimplemented!());
}
