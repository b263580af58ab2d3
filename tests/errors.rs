//! Every error the open path can report is a clean `Error`, never a crash.

mod common;

use common::*;
use snapheap::collections::Vec;
use snapheap::{Error, Heap, OpenOptions};

fn open_vec(dir: &std::path::Path) -> snapheap::Result<Heap<Vec<u64>>> {
    Heap::open(dir, Vec::new_in)
}

#[test]
fn second_handle_in_same_process_is_locked() {
    let dir = Scratch::new("locked-same");
    let h = open_vec(&dir.heap()).unwrap();
    match open_vec(&dir.heap()) {
        Err(Error::Locked { path }) => assert!(path.ends_with("lock")),
        other => panic!("expected Locked, got {:?}", other.err()),
    }
    drop(h);
    open_vec(&dir.heap()).unwrap();
}

#[test]
fn second_process_is_locked() {
    const TEST: &str = "second_process_is_locked";
    if role().as_deref() == Some("open") {
        let dir = std::env::var("HEAP").unwrap();
        match open_vec(dir.as_ref()) {
            Err(Error::Locked { .. }) => println!("RESULT locked"),
            Err(e) => println!("RESULT error {e}"),
            Ok(_) => println!("RESULT opened"),
        }
        return;
    } else if role().is_some() {
        return;
    }
    let dir = Scratch::new("locked-proc");
    let h = open_vec(&dir.heap()).unwrap();
    let out = run_child(TEST, "open", &[("HEAP", dir.heap().to_str().unwrap())]);
    assert!(out.contains("RESULT locked"), "{out}");
    h.close().unwrap();
    let out = run_child(TEST, "open", &[("HEAP", dir.heap().to_str().unwrap())]);
    assert!(out.contains("RESULT opened"), "{out}");
}

#[test]
fn other_root_type_is_incompatible() {
    let dir = Scratch::new("other-type");
    open_vec(&dir.heap()).unwrap().close().unwrap();
    let r = Heap::open(dir.heap(), Vec::<u32>::new_in);
    match r {
        Err(Error::Incompatible { what }) => assert!(what.contains("root type"), "{what}"),
        other => panic!("expected Incompatible, got {:?}", other.err()),
    }
    // The heap is untouched: the right type still opens it.
    open_vec(&dir.heap()).unwrap();
}

/// A journal named with the largest id (damage: no heap rotates 2^64 times) is a clean
/// `Corrupt`, not an overflow in the chain walk (found by the `recovery` fuzz target).
#[test]
fn journal_with_the_largest_id_is_corrupt_not_a_crash() {
    let dir = Scratch::new("journal-max-id");
    let h = open_vec(&dir.heap()).unwrap();
    h.write().push(7);
    h.commit().unwrap();
    h.close().unwrap();
    let newest = std::fs::read_dir(dir.heap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .max()
        .expect("a journal");
    std::fs::rename(&newest, dir.heap().join("journal-ffffffffffffffff")).unwrap();
    match open_vec(&dir.heap()) {
        Err(Error::Corrupt { file, .. }) => assert!(
            file.to_string_lossy().contains("journal-"),
            "names a journal: {}",
            file.display()
        ),
        other => panic!("expected Corrupt, got {:?}", other.err()),
    }
}

#[test]
fn other_schema_is_incompatible() {
    let dir = Scratch::new("other-schema");
    OpenOptions::new()
        .schema("v1")
        .open(dir.heap(), Vec::<u64>::new_in)
        .unwrap()
        .close()
        .unwrap();
    match OpenOptions::new().schema("v2").open(dir.heap(), Vec::<u64>::new_in) {
        Err(Error::Incompatible { what }) => assert!(what.contains("schema") && what.contains("v1"), "{what}"),
        other => panic!("expected Incompatible, got {:?}", other.err()),
    }
    OpenOptions::new()
        .schema("v1")
        .open(dir.heap(), Vec::<u64>::new_in)
        .unwrap();
}

fn meta_base(dir: &std::path::Path) -> usize {
    let b = std::fs::read(dir.join("meta")).unwrap();
    u64::from_le_bytes(b[24..32].try_into().unwrap()) as usize
}

#[test]
fn occupied_base_address_is_address_in_use() {
    const TEST: &str = "occupied_base_address_is_address_in_use";
    if role().as_deref() == Some("occupy") {
        let dir = std::path::PathBuf::from(std::env::var("HEAP").unwrap());
        let base = meta_base(&dir);
        // SAFETY (test): MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let p = unsafe {
            libc::mmap(
                (base + 8192) as *mut libc::c_void,
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_eq!(p as usize, base + 8192);
        match open_vec(&dir) {
            Err(Error::AddressInUse { start, end }) => {
                assert!(start <= base && end > base + 8192, "{start:#x}..{end:#x} vs {base:#x}");
                println!("RESULT in-use {}", Error::AddressInUse { start, end });
            }
            other => println!("RESULT unexpected {:?}", other.err()),
        }
        return;
    } else if role().is_some() {
        return;
    }
    let dir = Scratch::new("in-use");
    open_vec(&dir.heap()).unwrap().close().unwrap();
    let out = run_child(TEST, "occupy", &[("HEAP", dir.heap().to_str().unwrap())]);
    assert!(out.contains("RESULT in-use"), "{out}");
}

#[test]
fn every_damaged_meta_byte_is_a_clean_error() {
    let dir = Scratch::new("meta-sweep");
    {
        let h = open_vec(&dir.heap()).unwrap();
        h.write().push(42);
        h.close().unwrap();
    }
    let meta = dir.heap().join("meta");
    let good = std::fs::read(&meta).unwrap();
    let mut corrupt = 0;
    let mut incompatible = 0;
    for i in 0..good.len() {
        for mask in [0x01u8, 0xff] {
            let mut b = good.clone();
            b[i] ^= mask;
            std::fs::write(&meta, &b).unwrap();
            match open_vec(&dir.heap()) {
                Err(Error::Corrupt { file, offset, .. }) => {
                    assert!(file.ends_with("meta"));
                    assert!(offset < 512);
                    corrupt += 1;
                }
                Err(Error::Incompatible { .. }) => incompatible += 1,
                Err(e) => panic!("byte {i}: unexpected error {e}"),
                Ok(_) => panic!("byte {i} mask {mask:#x}: damaged meta accepted"),
            }
        }
    }
    for len in [0, 1, 100, 511] {
        std::fs::write(&meta, &good[..len]).unwrap();
        assert!(
            matches!(open_vec(&dir.heap()), Err(Error::Corrupt { .. })),
            "truncated to {len}"
        );
    }
    std::fs::write(&meta, &good).unwrap();
    assert_eq!(&open_vec(&dir.heap()).unwrap().read()[..], &[42]);
    println!(
        "meta sweep: {corrupt} corrupt, {incompatible} incompatible of {} cases",
        good.len() * 2
    );
}
