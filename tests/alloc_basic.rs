//! Single-threaded allocator properties: alignment, writability, no overlap, realloc
//! preserving contents (in place where the design promises it), exact zeroing, exhaustion,
//! two arenas side by side, and collections on `HeapAlloc`.

mod common;
use common::{assert_disjoint, Rng};

use std::alloc::{GlobalAlloc, Layout};
use std::ptr::NonNull;

use allocator_api2::alloc::Allocator;
use snapheap::alloc_testing::TestRegion;
use snapheap::HeapAlloc;

const MIB: usize = 1 << 20;
const ALIGNS: [usize; 14] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 65536];

/// Fills `[p, p + n)` with a pattern derived from `seed` (position dependent).
unsafe fn fill(p: *mut u8, n: usize, seed: u64) {
    let s = unsafe { std::slice::from_raw_parts_mut(p, n) };
    for (i, chunk) in s.chunks_mut(8).enumerate() {
        let w = (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        chunk.copy_from_slice(&w[..chunk.len()]);
    }
}

/// Checks the pattern of `fill` over the first `n` bytes.
unsafe fn check(p: *const u8, n: usize, seed: u64) -> bool {
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    s.chunks(8).enumerate().all(|(i, chunk)| {
        let w = (seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).to_le_bytes();
        chunk == &w[..chunk.len()]
    })
}

/// Writes every byte of `[p, p + n)` (memset) and then `seed` into its first and last
/// eight bytes (or as many as fit).
unsafe fn tag(p: *mut u8, n: usize, seed: u64) {
    unsafe {
        p.write_bytes(seed as u8, n);
        let w = seed.to_le_bytes();
        let k = n.min(8);
        if n >= 16 {
            std::ptr::copy_nonoverlapping(w.as_ptr(), p.add(n - k), k);
        }
        std::ptr::copy_nonoverlapping(w.as_ptr(), p, k);
    }
}

unsafe fn check_tag(p: *const u8, n: usize, seed: u64) -> bool {
    let w = seed.to_le_bytes();
    let k = n.min(8);
    let s = unsafe { std::slice::from_raw_parts(p, n) };
    s[..k] == w[..k] && (n < 16 || s[n - k..] == w[..k]) && (n <= 16 || s[n / 2] == seed as u8)
}

fn sweep_sizes() -> Vec<usize> {
    let mut sizes: Vec<usize> = (0..=4096).collect();
    let mut rng = Rng(0x1234_5678);
    let mut s = 4096.0f64;
    while s < 5.0 * MIB as f64 {
        s *= 1.09;
        sizes.push(s as usize);
        sizes.push(s as usize + 1 + rng.index(4096));
    }
    sizes.push(5 * MIB);
    sizes.push(64 << 10);
    sizes.push(128 << 10);
    sizes.push((128 << 10) + 1);
    sizes.push(63 * (64 << 10));
    sizes.push(63 * (64 << 10) + 1);
    sizes
}

#[test]
fn every_size_and_alignment_is_aligned_writable_and_disjoint() {
    let r = TestRegion::new(64 << 30);
    let a = r.alloc();
    let sizes = sweep_sizes();
    for &align in &ALIGNS {
        let mut live = Vec::with_capacity(sizes.len());
        for (k, &size) in sizes.iter().enumerate() {
            let l = Layout::from_size_align(size, align).unwrap();
            let p = unsafe { a.alloc(l) };
            assert!(!p.is_null(), "size {size} align {align}");
            assert_eq!(p as usize % align, 0, "size {size} align {align}");
            if size == 0 {
                assert!(!r.contains(p), "zero-size allocation must not touch the heap");
                continue;
            }
            assert!(r.contains(p));
            unsafe { tag(p, size, (k as u64) << 20 | align as u64) };
            live.push((p, l, k));
        }
        assert_disjoint(live.iter().map(|&(p, l, _)| (p as usize, l.size())).collect());
        for &(p, l, k) in &live {
            assert!(
                unsafe { check_tag(p, l.size(), (k as u64) << 20 | align as u64) },
                "size {} align {align}",
                l.size()
            );
        }
        r.check_invariants().unwrap();
        for (p, l, _) in live {
            unsafe { a.dealloc(p, l) };
        }
        let rep = r.check_invariants().unwrap();
        assert_eq!(rep.used_bytes, 0, "align {align}");
    }
}

#[test]
fn realloc_preserves_contents_across_grow_and_shrink_for_all_alignments() {
    let r = TestRegion::new(64 << 30);
    let a = r.alloc();
    let mut rng = Rng(99);
    let sizes = sweep_sizes();
    for &align in &ALIGNS {
        for i in (1..sizes.len()).step_by(7) {
            let s0 = sizes[i].max(1);
            let s1 = sizes[rng.index(sizes.len())].max(1);
            let l0 = Layout::from_size_align(s0, align).unwrap();
            let seed = (i as u64) << 16 | align as u64;
            unsafe {
                let p = a.alloc(l0);
                assert!(!p.is_null());
                fill(p, s0, seed);
                let q = a.realloc(p, l0, s1);
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0);
                assert!(check(q, s0.min(s1), seed), "{s0} -> {s1} align {align}");
                fill(q, s1, seed + 1);
                let l1 = Layout::from_size_align(s1, align).unwrap();
                let s2 = (s1 / 3).max(1);
                let z = a.realloc(q, l1, s2);
                assert!(!z.is_null());
                assert_eq!(z as usize % align, 0);
                assert!(check(z, s2, seed + 1), "{s1} -> {s2} align {align}");
                a.dealloc(z, Layout::from_size_align(s2, align).unwrap());
            }
        }
        r.check_invariants().unwrap();
    }
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn realloc_is_in_place_within_a_class_and_for_spans_and_huge_blocks() {
    let r = TestRegion::new(1 << 30);
    let a = r.alloc();
    unsafe {
        // Shrink within a class.
        let l = Layout::from_size_align(1000, 8).unwrap();
        let p = a.alloc(l);
        fill(p, 1000, 1);
        assert_eq!(a.realloc(p, l, 900), p);
        assert!(check(p, 900, 1));
        a.dealloc(p, Layout::from_size_align(900, 8).unwrap());

        // A span grows into the free slices after it, then shrinks.
        let l = Layout::from_size_align(200 << 10, 16).unwrap();
        let p = a.alloc(l);
        fill(p, 200 << 10, 2);
        let q = a.realloc(p, l, 900 << 10);
        assert_eq!(q, p, "span growth into free following slices is in place");
        assert!(check(q, 200 << 10, 2));
        fill(q, 900 << 10, 3);
        let z = a.realloc(q, Layout::from_size_align(900 << 10, 16).unwrap(), 300 << 10);
        assert_eq!(z, p, "span shrink is in place");
        assert!(check(z, 300 << 10, 3));
        let rep = r.check_invariants().unwrap();
        assert_eq!(rep.used_bytes, 320 << 10, "the span gave back its tail slices");

        // A huge block shrinks in place and grows in place into unused segments.
        let l = Layout::from_size_align(10 * MIB, 16).unwrap();
        let h = a.alloc(l);
        fill(h, 10 * MIB, 4);
        let h2 = a.realloc(h, l, 6 * MIB);
        assert_eq!(h2, h);
        assert!(check(h2, 6 * MIB, 4));
        let h3 = a.realloc(h2, Layout::from_size_align(6 * MIB, 16).unwrap(), 20 * MIB);
        assert_eq!(h3, h, "huge growth into unused segments is in place");
        assert!(check(h3, 6 * MIB, 4));
        r.check_invariants().unwrap();
        a.dealloc(h3, Layout::from_size_align(20 * MIB, 16).unwrap());
        a.dealloc(z, Layout::from_size_align(300 << 10, 16).unwrap());
    }
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn allocator_api_grow_shrink_and_zeroed_variants_preserve_and_zero() {
    let r = TestRegion::new(1 << 30);
    let a = r.alloc();
    for &(s0, s1, align) in &[
        (10, 5000, 8),
        (3000, 200_000, 64),
        (200_000, 9 * MIB, 4096),
        (9 * MIB, 100, 32),
    ] {
        let l0 = Layout::from_size_align(s0, align).unwrap();
        let l1 = Layout::from_size_align(s1, align).unwrap();
        unsafe {
            let p = a.allocate(l0).unwrap().cast::<u8>();
            fill(p.as_ptr(), s0, 7);
            let q = if s1 > s0 {
                a.grow_zeroed(p, l0, l1)
            } else {
                a.shrink(p, l0, l1)
            }
            .unwrap();
            assert_eq!(q.len(), s1);
            let q = q.cast::<u8>();
            assert_eq!(q.as_ptr() as usize % align, 0);
            assert!(check(q.as_ptr(), s0.min(s1), 7));
            if s1 > s0 {
                let tail = std::slice::from_raw_parts(q.as_ptr().add(s0), s1 - s0);
                assert!(tail.iter().all(|&b| b == 0), "grow_zeroed zeroes the new tail");
            }
            // Changing the alignment moves the block but keeps the contents.
            let l2 = Layout::from_size_align(s1, align * 2).unwrap();
            let z = a.grow(q, l1, l2).unwrap().cast::<u8>();
            assert_eq!(z.as_ptr() as usize % (align * 2), 0);
            assert!(check(z.as_ptr(), s0.min(s1), 7));
            let e = a.shrink(z, l2, Layout::from_size_align(0, align * 2).unwrap()).unwrap();
            assert_eq!(e.len(), 0);
        }
    }
    assert_eq!(r.allocated_bytes(), 0);
    r.check_invariants().unwrap();
}

#[test]
fn alloc_zeroed_returns_zero_memory_even_where_blocks_were_reused() {
    let r = TestRegion::new(1 << 30);
    let a = r.alloc();
    let sizes = [
        8,
        24,
        100,
        1000,
        5000,
        20_000,
        100_000,
        300_000,
        3 * MIB,
        5 * MIB,
        12 * MIB,
    ];
    for round in 0..3 {
        let mut live = Vec::new();
        for &s in &sizes {
            for &align in &[8, 64, 4096] {
                let l = Layout::from_size_align(s, align).unwrap();
                let p = unsafe { a.alloc_zeroed(l) };
                assert!(!p.is_null());
                let bytes = unsafe { std::slice::from_raw_parts(p, s) };
                assert!(bytes.iter().all(|&b| b == 0), "size {s} align {align} round {round}");
                unsafe { p.write_bytes(0xa5, s) };
                live.push((p, l));
            }
        }
        for (p, l) in live {
            unsafe { a.dealloc(p, l) };
        }
    }
    r.check_invariants().unwrap();
}

#[test]
fn zero_size_layouts_are_dangling_and_free_is_a_no_op() {
    let r = TestRegion::new(64 * MIB);
    let a = r.alloc();
    for &align in &ALIGNS {
        let l = Layout::from_size_align(0, align).unwrap();
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null() && p as usize % align == 0 && !r.contains(p));
        unsafe { a.dealloc(p, l) };
        let q = a.allocate(l).unwrap();
        assert_eq!(q.len(), 0);
        unsafe { a.deallocate(q.cast(), l) };
    }
    assert_eq!(r.check_invariants().unwrap().slabs, 0, "nothing touched the heap");
}

#[test]
fn exhaustion_returns_null_and_frees_make_room_again() {
    let r = TestRegion::new(16 * MIB);
    let a = r.alloc();
    let big = Layout::from_size_align(100 << 10, 16).unwrap();
    let mut live = Vec::new();
    loop {
        let p = unsafe { a.alloc(big) };
        if p.is_null() {
            break;
        }
        unsafe { p.write_bytes(1, big.size()) };
        live.push((p, big));
        assert!(live.len() < 1000, "a 16 MiB region cannot hold 1000 x 100 KiB");
    }
    let small = Layout::from_size_align(48, 8).unwrap();
    loop {
        let p = unsafe { a.alloc(small) };
        if p.is_null() {
            break;
        }
        live.push((p, small));
        assert!(live.len() < 1_000_000);
    }
    assert!(unsafe { a.alloc(Layout::from_size_align(32 * MIB, 8).unwrap()) }.is_null());
    assert!(unsafe { a.alloc(Layout::from_size_align(usize::MAX / 4, 8).unwrap()) }.is_null());
    assert!(r.extent() <= 16 * MIB);
    r.check_invariants().unwrap();
    for (p, l) in live.drain(..) {
        unsafe { a.dealloc(p, l) };
    }
    // After freeing, other classes, spans and a huge block fit again.
    for l in [
        Layout::from_size_align(3000, 8).unwrap(),
        big,
        Layout::from_size_align(9 * MIB, 8).unwrap(),
    ] {
        let p = unsafe { a.alloc(l) };
        assert!(!p.is_null(), "{l:?} after freeing");
        live.push((p, l));
    }
    for (p, l) in live {
        unsafe { a.dealloc(p, l) };
    }
    r.check_invariants().unwrap();
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn two_arenas_interleave_and_collections_work_on_heap_alloc() {
    type Map = hashbrown::HashMap<u64, u64, hashbrown::DefaultHashBuilder, HeapAlloc>;
    let r1 = TestRegion::new(4 << 30);
    let r2 = TestRegion::new(4 << 30);
    let (a1, a2) = (r1.alloc(), r2.alloc());
    assert_ne!(a1, a2);
    let mut m1 = Map::with_hasher_in(Default::default(), a1);
    let mut m2 = Map::with_hasher_in(Default::default(), a2);
    let mut v1: allocator_api2::vec::Vec<u8, HeapAlloc> = allocator_api2::vec::Vec::new_in(a1);
    let mut v2: allocator_api2::vec::Vec<u8, HeapAlloc> = allocator_api2::vec::Vec::new_in(a2);
    let mut boxes = Vec::new();
    for i in 0..100_000u64 {
        m1.insert(i, i * 3);
        m2.insert(i * 7, i);
        v1.push(i as u8);
        v2.push((i * 5) as u8);
        if i % 1000 == 0 {
            boxes.push(allocator_api2::boxed::Box::new_in(
                [i; 20],
                if i % 2000 == 0 { a1 } else { a2 },
            ));
        }
    }
    assert!(r1.contains(v1.as_ptr()) && r2.contains(v2.as_ptr()));
    for i in 0..100_000u64 {
        assert_eq!(m1.get(&i), Some(&(i * 3)));
        assert_eq!(m2.get(&(i * 7)), Some(&i));
        assert_eq!(v1[i as usize], i as u8);
        assert_eq!(v2[i as usize], (i * 5) as u8);
    }
    for (k, b) in boxes.iter().enumerate() {
        assert_eq!(b[19], k as u64 * 1000);
    }
    r1.check_invariants().unwrap();
    r2.check_invariants().unwrap();
    drop((m1, m2, v1, v2, boxes));
    assert_eq!(r1.allocated_bytes(), 0);
    assert_eq!(r2.allocated_bytes(), 0);
}

#[test]
fn closed_arena_returns_null_and_ignores_frees() {
    let r = TestRegion::new(64 * MIB);
    let a = r.alloc();
    let l = Layout::from_size_align(64, 8).unwrap();
    let p = unsafe { a.alloc(l) };
    assert!(!p.is_null());
    r.close();
    assert!(unsafe { a.alloc(l) }.is_null());
    assert!(unsafe { a.alloc(Layout::from_size_align(1 << 20, 8).unwrap()) }.is_null());
    unsafe { a.dealloc(p, l) };
    let _ = NonNull::new(p);
}
