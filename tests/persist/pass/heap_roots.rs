// Types that a Heap root admits: primitives, arrays, tuples, Option, raw pointers, atomics,
// cells, the heap's collections, and derived structs and enums (nested, generic, recursive).
use snapheap::collections::{Box, HashMap, HashSet, String, Vec};
use snapheap::{Heap, HeapAlloc, OpenOptions, Persist};
use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::AtomicU64;

fn persist<T: Persist>() {}

#[derive(Persist)]
struct Point {
    x: f64,
    y: f64,
}

#[derive(Persist)]
struct Named<T> {
    name: String,
    value: T,
}

#[derive(Persist)]
enum Shape<T: Copy> {
    Dot(Point),
    Poly { points: Vec<Point>, tag: Option<T> },
    Empty,
}

#[derive(Persist)]
struct Tree {
    label: u32,
    children: Vec<Tree>,
    parent: Option<Box<Self>>,
}

#[derive(Persist)]
struct Fixed<const N: usize> {
    cells: [u16; N],
}

#[derive(Persist)]
struct Marker<'a, T> {
    _borrow: PhantomData<&'a T>,
    raw: *const u8,
}

#[derive(Persist)]
struct Unit;

#[derive(Persist)]
struct Pair(u8, char);

#[derive(Persist)]
struct State {
    shapes: HashMap<u64, Shape<u8>>,
    names: HashSet<String>,
    tree: Tree,
    counters: Vec<Named<(u64, [i32; 4], bool)>>,
    boxed: Box<[u8; 3]>,
    hits: AtomicU64,
    fixed: Fixed<8>,
    alloc: HeapAlloc,
}

#[allow(dead_code)]
fn open(dir: &str) -> snapheap::Result<Heap<State>> {
    OpenOptions::new().open(dir, |a| State {
        shapes: HashMap::new_in(a),
        names: HashSet::new_in(a),
        tree: Tree { label: 0, children: Vec::new_in(a), parent: None },
        counters: Vec::new_in(a),
        boxed: Box::new_in([1u8, 2, 3], a),
        hits: AtomicU64::new(0),
        fixed: Fixed { cells: [0; 8] },
        alloc: a,
    })
}

fn main() {
    persist::<(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize)>();
    persist::<(f32, f64, bool, char, ())>();
    persist::<[[u64; 3]; 2]>();
    persist::<Option<Option<(u8, Point)>>>();
    persist::<Result<u64, Pair>>();
    persist::<(*mut Tree, *const [u8], std::ptr::NonNull<str>)>();
    persist::<Cell<u64>>();
    persist::<Named<Named<u8>>>();
    // Type parameters get the bound, even those used only in `PhantomData`.
    persist::<Marker<'static, u8>>();
    persist::<Unit>();
    persist::<(Box<str>, Box<[Point]>, HashMap<String, Vec<Box<Tree>>>)>();
    persist::<State>();
    let _ = open;
}
