use snapheap::collections::Vec;
use snapheap::Persist;

#[derive(Persist)]
struct State {
    counts: Vec<u64>,
    name: std::string::String,
}

fn main() {}
