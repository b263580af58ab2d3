//! Recovery from an arbitrary heap directory: the input is a packed directory
//! (`snapheap_fuzz::Dir`: meta, snapshot files, journals), written to a scratch directory and
//! opened. Opening must return `Ok` or `Err`, never panic, crash or hang; a heap that opens
//! must take a commit, and (input flag `REOPEN`) the next open must succeed and recover
//! exactly that commit.
//!
//! The heap's contents are not read: snapshot pages are not checksummed by design (a heap is
//! as trusted as the executable), so garbage pages may hold any pointer. Only what recovery
//! itself reads (headers, records, the allocator's attach checks) is under test.
//!
//! Address space: a heap maps at the base its meta names and keeps the reservation after it
//! closes, so the target lets at most 32 distinct `(base, max_size)` pairs through per process
//! (and clamps `max_size` to 1 GiB); others are rewritten to the first pair seen. Inputs
//! without a meta file (which would create a new heap at a random base) are skipped.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapheap_fuzz::{Dir, Root, META_BASE_OFFSET, META_MAX_SIZE_OFFSET, REOPEN, TAG_META};
use std::path::PathBuf;
use std::sync::Mutex;

struct State {
    dir: PathBuf,
    seen: Vec<(u64, u64)>,
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Keeps the set of address ranges this process maps small (see the module doc).
fn normalize_meta(b: &mut [u8], seen: &mut Vec<(u64, u64)>) {
    if b.len() < 512 {
        return;
    }
    let (mut base, mut max) = (u64_at(b, META_BASE_OFFSET), u64_at(b, META_MAX_SIZE_OFFSET));
    let mut changed = false;
    if max > 1 << 30 {
        max = snapheap_fuzz::MAX_SIZE;
        changed = true;
    }
    if !seen.contains(&(base, max)) && seen.len() >= 32 {
        (base, max) = seen[0];
        changed = true;
    }
    if changed {
        b[META_BASE_OFFSET..META_BASE_OFFSET + 8].copy_from_slice(&base.to_le_bytes());
        b[META_MAX_SIZE_OFFSET..META_MAX_SIZE_OFFSET + 8].copy_from_slice(&max.to_le_bytes());
        snapheap_fuzz::reseal_meta(b);
    }
    if snapheap::fuzzing::meta(b).is_ok() && !seen.contains(&(base, max)) {
        seen.push((base, max));
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(|| {
        // The scripts point SNAPHEAP_FUZZ_SCRATCH at a directory they remove afterwards.
        let base = match std::env::var_os("SNAPHEAP_FUZZ_SCRATCH") {
            Some(d) => PathBuf::from(d),
            None if std::path::Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("snapheap-fuzz-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        State { dir, seen: Vec::new() }
    });
    let dir = state.dir.clone();
    let seen = &mut state.seen;
    let packed = Dir::decode(data);
    if !packed.files.iter().any(|f| f.tag == TAG_META) {
        // No meta: `open` would create a new heap at a random base, and every heap created
        // keeps its address range reserved for the life of the process. Creation is not
        // recovery; leave it out.
        return;
    }
    packed.write_to(&dir, |meta| normalize_meta(meta, seen)).unwrap();
    let Ok(heap) = snapheap::OpenOptions::new().open(&dir, Root::new_in) else {
        return;
    };
    let seq = heap.commit();
    // Released, so that the next input's files are recovered rather than refused with
    // `Error::Detached` (a closed heap's memory otherwise stays mapped for values that
    // outlived it).
    // SAFETY: every value allocated from the heap lives in its root.
    unsafe { heap.drop_and_release() };
    let Ok(seq) = seq else { return };
    if packed.flags & REOPEN == 0 {
        // The reopen costs a scan of the megabytes of pre-zeroed journal space after the new
        // commit (about 10 ms here); only inputs that ask for it pay.
        return;
    }
    // What recovery left behind (a truncated tail, a resumed journal) must take the commit
    // durably: the next open recovers exactly it.
    let heap = snapheap::OpenOptions::new()
        .open(&dir, Root::new_in)
        .unwrap_or_else(|e| panic!("reopen after commit {seq} on a recovered heap failed: {e}"));
    assert_eq!(heap.stats().commit_seq, seq, "reopen did not recover the last commit");
    // SAFETY: as above.
    unsafe { heap.drop_and_release() };
});
