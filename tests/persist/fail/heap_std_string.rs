// The first program: a std String in a Heap root (its buffer is not in the heap).
use snapheap::Heap;

fn main() {
    let heap = Heap::<std::string::String>::open("/tmp/never", |_| String::new()).unwrap();
    heap.write().push_str("text");
    heap.close().unwrap();
}
