// Types that a GlobalHeap root admits: everything Persist, and std's collections and smart
// pointers, in derived structs and enums.
use snapheap::{GlobalPersist, Persist};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, LinkedList, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::Arc;

#[global_allocator]
static HEAP: snapheap::GlobalHeap = snapheap::GlobalHeap::new();

fn global<T: GlobalPersist>() {}

#[derive(Persist)]
struct Plain {
    a: u64,
    b: [u8; 16],
}

#[derive(GlobalPersist)]
struct Doc {
    title: String,
    lines: Vec<String>,
    index: HashMap<String, Vec<usize>>,
    by_time: BTreeMap<u64, Box<Entry>>,
    queue: VecDeque<(u32, String)>,
    shared: Arc<str>,
    plain: Plain,
}

#[derive(GlobalPersist)]
enum Entry {
    Text(String),
    Bytes(Box<[u8]>),
    Nested(Vec<Entry>),
}

#[derive(GlobalPersist)]
struct Keyed<K: Ord> {
    keys: BTreeSet<K>,
}

fn main() {
    global::<std::string::String>();
    global::<Vec<Vec<u8>>>();
    global::<Box<u64>>();
    global::<Rc<[u8]>>();
    global::<HashSet<u64, BuildHasherDefault<std::collections::hash_map::DefaultHasher>>>();
    global::<(LinkedList<u8>, BinaryHeap<u32>, std::path::PathBuf, std::ffi::CString)>();
    global::<Option<Keyed<String>>>();
    global::<Plain>();
    // The derive of Persist also implements GlobalPersist.
    global::<(u64, snapheap::collections::String)>();
    // Volatile here (SNAPHEAP_DIR unset): roots work, commits do nothing.
    let n = HEAP.with_root(Vec::<String>::new, |log| {
        log.push(format!("run {}", log.len() + 1));
        log.len()
    });
    assert_eq!(n, 1);
    let len = HEAP.with_root(
        || Doc {
            title: "t".into(),
            lines: Vec::new(),
            index: HashMap::new(),
            by_time: BTreeMap::new(),
            queue: VecDeque::new(),
            shared: Arc::from("s"),
            plain: Plain { a: 1, b: [0; 16] },
        },
        |d| d.lines.len(),
    );
    assert_eq!(len, 0);
    global::<snapheap::collections::Vec<Box<Entry>>>();
}
