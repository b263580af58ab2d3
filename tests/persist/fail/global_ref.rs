static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();
static N: u64 = 7;

fn main() {
    HEAP.with_root(|| &N, |r| println!("{r}"));
}
