use std::collections::HashMap;

#[derive(snapheap::GlobalPersist)]
enum Entry {
    Text(String),
    Label { name: &'static str, hits: u64 },
    Table(HashMap<String, u64>),
}

fn main() {}
