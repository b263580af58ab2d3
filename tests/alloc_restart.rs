//! Restart at allocator level: close the arena and attach a fresh control block to the same
//! memory, as a recovered region would be.

use std::alloc::{GlobalAlloc, Layout};
use std::collections::HashSet;
use std::sync::atomic::Ordering;

use snapheap::alloc_testing::TestRegion;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 16).unwrap()
}

fn fill(p: usize, size: usize, tag: u8) {
    unsafe { (p as *mut u8).write_bytes(tag, size) };
}

fn intact(p: usize, size: usize, tag: u8) -> bool {
    let s = unsafe { std::slice::from_raw_parts(p as *const u8, size) };
    s.iter().step_by(97).chain(s.last()).all(|&b| b == tag)
}

#[test]
fn blocks_survive_close_and_attach_and_stay_usable() {
    let mut r = TestRegion::new(8 << 30);
    let a = r.alloc();
    let sizes = [16usize, 48, 200, 1000, 5000, 40_000, 120_000, 300_000, 2 << 20, 6 << 20];
    let mut live = Vec::new();
    for i in 0..6000usize {
        let size = sizes[i % sizes.len()] + i % 7;
        let p = unsafe { a.alloc(layout(size)) } as usize;
        assert_ne!(p, 0);
        fill(p, size, i as u8);
        live.push((p, size, i as u8));
    }
    // Another thread frees every third 48-byte block: they sit on thread_free lists at close.
    let (remote, kept): (Vec<_>, Vec<_>) = live.into_iter().enumerate().partition(|(i, b)| b.1 == 48 && i % 3 == 0);
    let remote: Vec<(usize, usize, u8)> = remote.into_iter().map(|(_, b)| b).collect();
    let live: Vec<(usize, usize, u8)> = kept.into_iter().map(|(_, b)| b).collect();
    let freed: HashSet<usize> = remote.iter().map(|b| b.0).collect();
    assert!(freed.len() >= 20);
    std::thread::spawn(move || {
        for (p, size, _) in remote {
            unsafe { a.dealloc(p as *mut u8, layout(size)) };
        }
    })
    .join()
    .unwrap();
    r.user_word(3).store(0xfeed, Ordering::Relaxed);
    let before = r.check_invariants().unwrap();
    {
        let _g = r.pause();
    }

    r.reattach().unwrap();
    let a2 = r.alloc();
    assert_eq!(a, a2, "the handle is the same value after a restart");
    assert_eq!(r.user_word(3).load(Ordering::Relaxed), 0xfeed);
    let after = r.check_invariants().unwrap();
    assert_eq!(after.used_bytes, before.used_bytes);
    for &(p, size, tag) in &live {
        assert!(intact(p, size, tag), "block {p:#x} of {size} bytes");
    }

    // New allocations never overlap old live blocks.
    let mut old: Vec<(usize, usize)> = live.iter().map(|&(p, s, _)| (p, s)).collect();
    old.sort_unstable();
    let overlaps = |p: usize, s: usize| {
        let i = old.partition_point(|&(q, _)| q < p + s);
        i > 0 && old[i - 1].0 + old[i - 1].1 > p
    };
    let mut fresh = Vec::new();
    let mut total = 0;
    let mut reused = HashSet::new();
    let mut i = 0usize;
    while total < (8 << 20) || reused.len() < freed.len() {
        let size = if reused.len() < freed.len() {
            48
        } else {
            sizes[i % sizes.len()]
        };
        let p = unsafe { a.alloc(layout(size)) } as usize;
        assert_ne!(p, 0);
        assert!(!overlaps(p, size), "new block {p:#x} overlaps an old live block");
        if freed.contains(&p) {
            reused.insert(p);
        }
        fill(p, size, 0xee);
        fresh.push((p, size));
        total += size;
        i += 1;
        assert!(i < 1_000_000, "remote-freed blocks were not reused after attach");
    }
    for &(p, size, tag) in &live {
        assert!(intact(p, size, tag), "block {p:#x} clobbered by a new allocation");
    }
    r.check_invariants().unwrap();

    // Old blocks can be freed after the restart.
    for (p, size, _) in live {
        unsafe { a.dealloc(p as *mut u8, layout(size)) };
    }
    for (p, size) in fresh {
        unsafe { a.dealloc(p as *mut u8, layout(size)) };
    }
    r.check_invariants().unwrap();
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn repeated_restarts_with_threads_keep_the_heap_consistent() {
    let mut r = TestRegion::new(4 << 30);
    let mut live: Vec<(usize, usize, u8)> = Vec::new();
    for round in 0..5u8 {
        let a = r.alloc();
        let mine = std::mem::take(&mut live);
        let made = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2usize)
                .map(|t| {
                    let mine = mine.iter().filter(|b| b.0 % 2 == t).copied().collect::<Vec<_>>();
                    s.spawn(move || {
                        let mut keep = Vec::new();
                        for (k, (p, size, tag)) in mine.into_iter().enumerate() {
                            assert!(intact(p, size, tag));
                            if k % 2 == 0 {
                                unsafe { a.dealloc(p as *mut u8, layout(size)) };
                            } else {
                                keep.push((p, size, tag));
                            }
                        }
                        for i in 0..3000usize {
                            let size = 8 + (i * 37 + t * 11) % 3000;
                            let p = unsafe { a.alloc(layout(size)) } as usize;
                            assert_ne!(p, 0);
                            let tag = round.wrapping_mul(31).wrapping_add(i as u8);
                            fill(p, size, tag);
                            keep.push((p, size, tag));
                        }
                        keep
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect::<Vec<_>>()
        });
        live = made;
        r.check_invariants().unwrap();
        r.reattach().unwrap();
        r.check_invariants().unwrap();
    }
    let a = r.alloc();
    for (p, size, tag) in live {
        assert!(intact(p, size, tag));
        unsafe { a.dealloc(p as *mut u8, layout(size)) };
    }
    assert_eq!(r.allocated_bytes(), 0);
}

#[test]
fn attach_rejects_a_damaged_arena_header_without_crashing() {
    let mut r = TestRegion::new(1 << 30);
    let a = r.alloc();
    let p = unsafe { a.alloc(layout(100)) };
    assert!(!p.is_null());
    let magic = (r.base() + 8192) as *mut u64;
    let good = unsafe { magic.read() };
    unsafe { magic.write(good ^ 1) };
    let e = r.reattach().unwrap_err();
    assert!(e.contains("magic"), "{e}");
    assert!(
        unsafe { a.alloc(layout(100)) }.is_null(),
        "a failed attach leaves the arena closed"
    );
    let extent = (r.base() + 8192 + 24) as *mut u64;
    unsafe { magic.write(good) };
    let e_good = unsafe { extent.read() };
    unsafe { extent.write(e_good + 12345) };
    assert!(r.reattach().unwrap_err().contains("extent"));
    unsafe { extent.write(e_good) };
    r.reattach().unwrap();
    unsafe { a.dealloc(p, layout(100)) };
    assert_eq!(r.check_invariants().unwrap().used_bytes, 0);
}
