//! Detached heaps: what stays of a heap after its handle is closed or dropped, so that safe
//! code still holding values allocated from it (collections outside the root, or moved out of
//! it with `std::mem::take`) never touches unmapped memory. See `docs/design.md`, "Closing".
//!
//! At close the engine *detaches* its region instead of unmapping it: the data pages stay
//! mapped read-write, the allocator is closed (allocation through a stale `HeapAlloc` returns
//! null, freeing does nothing), the dirty-page tracker stays armed, and pages of the region
//! still shared with a snapshot file's page cache are given private copies (so no later write
//! to that file, by another process, can show through). The detached region is kept in a
//! process-wide list until the same heap is reopened in this process (which *adopts* the
//! memory, when it provably equals the durable state plus the tracked writes) or until an
//! explicit, `unsafe`, release.
//!
//! # Invariants
//!
//! - A detached entry's memory equals the heap's durable state as of commit `seq` except on
//!   pages its tracker reports as written (or on every page, in all-dirty mode), unless
//!   `refuse` is set.
//! - At most one entry per base address; an entry's range is absent from the region module's
//!   list of retained reservations (its data part is still mapped).
//! - A reopen adopts an entry only if `refuse` is unset, the heap id matches and recovery from
//!   the files ends at exactly commit `seq`; otherwise it fails with `Error::Detached` and
//!   leaves the entry in the list.
//!
//! # Safety
//!
//! Unmapping a detached region (in [`release`]) is sound only when no value allocated from
//! the heap is used afterwards: [`release`] and [`crate::release_detached`] are `unsafe` and
//! pass that obligation to their caller. The page-privatising step only faults pages in
//! (`MADV_POPULATE_WRITE`), which changes no contents.

use super::{lock, Engine};
use crate::disk::format::meta::{Meta, META_LEN};
use crate::disk::journal::JournalWriter;
use crate::error::{Error, Result};
use crate::mem::region::Region;
use crate::mem::sysmem::SysVec;
use crate::mem::track::Tracker;
use crate::options::OpenOptions;
use crate::sys::{self, OS_PAGE};
use std::alloc::System;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// The memory of a closed heap that values in this process may still reference.
pub(crate) struct DetachedHeap {
    /// The region, still mapped read-write up to its extent.
    pub(super) region: Region,
    /// The tracker, still armed on `[base, base + extent)`: it reports every page written
    /// since the heap's last commit (and the pages privatised at detach).
    pub(super) tracker: Tracker,
    pub(super) heap_id: u64,
    /// The last commit of the detached heap (durable when `refuse` is `None`).
    pub(super) seq: u64,
    /// [`journal_digest`] of the last journal at detach: tells this heap's durable state at
    /// `seq` from another lineage that reached the same `seq` (a restored backup, another
    /// crash image of a simulated disk).
    pub(super) digest: Option<u64>,
    /// Why a reopen must not adopt this memory, if it must not.
    pub(super) refuse: Option<&'static str>,
}

/// The detached heaps of this process (System memory; one entry per base).
static DETACHED: Mutex<SysVec<DetachedHeap>> = Mutex::new(SysVec::new_in(System));

/// Detaches the region of a closed engine and records it. Called from the engine's `Drop`,
/// after `close` (so the allocator is closed and everything committed is durable or the
/// engine is poisoned).
pub(super) fn detach(e: &Engine) {
    let region = lock(&e.grow.region).take();
    let mut tracker = std::mem::replace(&mut *lock(&e.grow.tracker), Tracker::new(true));
    let (base, extent) = (region.base(), region.extent());
    let (last_seq, durable_seq) = e.durable.seqs();
    let refuse = if e.is_poisoned() {
        Some("an earlier failure poisoned the heap, so its memory may hold commits that never became durable")
    } else if durable_seq < last_seq {
        Some("not all of its commits became durable")
    } else if !e.closed_with_commit.load(Ordering::Acquire) && has_writes(&mut tracker, base, extent) {
        Some("it was dropped with uncommitted changes, which a reopen must not show")
    } else {
        None
    };
    if !e.opts.replica {
        // A replica's memory is released right after the drop (`Replica`'s drop and promote).
        privatise_file_pages(&region);
    }
    let digest = {
        let cs = lock(&e.commit);
        journal_digest(&*cs.journal.file(), cs.journal.end())
    };
    let entry = DetachedHeap {
        region,
        tracker,
        heap_id: e.meta.heap_id,
        seq: last_seq,
        digest,
        refuse,
    };
    let mut list = lock(&DETACHED);
    debug_assert!(list.iter().all(|d| d.region.base() != base));
    list.push(entry);
}

/// A 64-bit digest (FNV-1a) of the journal file's first `end` bytes: its header (id, start
/// and the random salt chosen when it was created) and every complete commit group in it.
/// `None` when the file cannot be read. Costs one read of the journal (after a `close` that
/// took a snapshot, only its header).
pub(super) fn journal_digest(f: &dyn crate::io::VFile, end: u64) -> Option<u64> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < end {
        let n = ((end - off) as usize).min(buf.len());
        let got = f.read_at(&mut buf[..n], off).ok()?;
        if got == 0 {
            return None;
        }
        for &b in &buf[..got] {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
        off += got as u64;
    }
    Some(h)
}

/// Whether the tracker reports any page of `[base, base + extent)` written since the last
/// commit (all-dirty mode and a failed scan count as written).
fn has_writes(tracker: &mut Tracker, base: usize, extent: usize) -> bool {
    let mut out = SysVec::new_in(System);
    tracker.peek(base, base + extent, &mut out).is_err() || !out.is_empty()
}

/// Gives every page of the snapshot-file part of `region` that still shares the file's page
/// cache (or is not populated, so a later touch would read the file) its private copy.
/// Afterwards no write to the file, by any process, changes what the region shows. Pages are
/// found with `/proc/self/pagemap` (bit 63 present, 61 file page or shared) and
/// copied with `MADV_POPULATE_WRITE`; the tracker sees them as written, so the first commit
/// after an adoption journals them once. Best effort: when `MADV_POPULATE_WRITE` is missing
/// (Linux < 5.14) the pages stay shared, as documented in the README.
fn privatise_file_pages(region: &Region) {
    let (base, len) = (region.base(), region.file_extent());
    if len == 0 {
        return;
    }
    let Ok(pm) = std::fs::File::open("/proc/self/pagemap") else {
        let _ = sys::populate_write(base, len);
        return;
    };
    const CHUNK: usize = 512;
    let mut buf = [0u8; CHUNK * 8];
    let pages = len / OS_PAGE;
    let mut run: Option<usize> = None;
    let flush = |from: usize, to: usize| {
        let _ = sys::populate_write(base + from * OS_PAGE, (to - from) * OS_PAGE);
    };
    let mut i = 0;
    while i < pages {
        let n = (pages - i).min(CHUNK);
        let off = ((base / OS_PAGE + i) * 8) as u64;
        if pm.read_exact_at(&mut buf[..n * 8], off).is_err() {
            flush(run.take().unwrap_or(i), pages);
            return;
        }
        for k in 0..n {
            let e = u64::from_le_bytes(buf[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
            // Not present (never touched, or a uffd-wp marker, which pagemap reports as a swap
            // entry; a really swapped-out private page is copied back in, harmlessly), or
            // present and still the file's page.
            let (present, shared) = (e >> 63 & 1 == 1, e >> 61 & 1 == 1);
            let need = !present || shared;
            match (need, run) {
                (true, None) => run = Some(i + k),
                (false, Some(a)) => {
                    flush(a, i + k);
                    run = None;
                }
                _ => {}
            }
        }
        i += n;
    }
    if let Some(a) = run {
        flush(a, pages);
    }
}

/// A detached heap taken out of the list for a reopen. Dropping it (when the reopen fails
/// before adopting) puts it back.
pub(super) struct Taken(Option<DetachedHeap>);

impl Taken {
    /// An inert copy of the region (its drop does nothing) for the recovery steps to read.
    pub(super) fn shadow(&self) -> Region {
        self.get().region.shadow()
    }

    pub(super) fn get(&self) -> &DetachedHeap {
        self.0.as_ref().expect("taken")
    }

    /// Recovery step 2 for a detached heap: refuses early when the memory must not be adopted
    /// whatever the files say.
    pub(super) fn check_adoptable(&self, dir: &Path, meta: &Meta) -> Result<()> {
        let d = self.get();
        if let Some(why) = d.refuse {
            return Err(refuse(dir, why.to_string()));
        }
        if d.heap_id != meta.heap_id {
            return Err(refuse(
                dir,
                "the directory now holds another heap at the same address".into(),
            ));
        }
        Ok(())
    }

    /// After recovery step 4: the files must end exactly where the memory is (same commit,
    /// same last journal bytes), or adopting would pair the memory with another state.
    pub(super) fn check_same_state(&self, dir: &Path, journal: &JournalWriter) -> Result<()> {
        let d = self.get();
        let seq = journal.next_seq() - 1;
        let same = d.seq == seq && d.digest.is_some() && d.digest == journal_digest(&*journal.file(), journal.end());
        if same {
            return Ok(());
        }
        Err(refuse(
            dir,
            format!(
                "its files changed since (they end at commit {seq}, the memory still mapped holds commit {}{})",
                d.seq,
                if d.seq == seq { " of another history" } else { "" }
            ),
        ))
    }

    /// Adopts the memory: the region (left mapped if the open still fails) and its tracker.
    pub(super) fn adopt(mut self) -> (Region, Tracker) {
        let d = self.0.take().expect("taken");
        let mut region = d.region;
        region.keep_mapped_on_drop();
        (region, d.tracker)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            lock(&DETACHED).push(d);
        }
    }
}

fn refuse(dir: &Path, reason: String) -> Error {
    Error::Detached {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// Takes the detached heap at `base` out of the list, if there is one.
pub(super) fn take(base: usize) -> Option<Taken> {
    let mut list = lock(&DETACHED);
    let i = list.iter().position(|d| d.region.base() == base)?;
    Some(Taken(Some(list.swap_remove(i))))
}

/// Releases the detached heap at `base`: disarms its tracker and returns its data part to
/// `PROT_NONE` (the reservation and control area stay, so stale `HeapAlloc`s still fail
/// cleanly and the heap can be reopened from its files). Returns whether there was one.
///
/// # Safety
///
/// No value allocated from that heap (or moved out of its root) is used or dropped after this
/// call: their memory is gone.
pub(crate) unsafe fn release(base: usize) -> bool {
    let Some(mut t) = take(base) else { return false };
    let d = t.0.take().expect("taken");
    drop(d.tracker);
    // The region releases on drop: `detach` stored a releasing region.
    drop(d.region);
    true
}

/// Releases the memory that this process still keeps mapped for the heap in `dir` after an
/// earlier [`Heap::close`](crate::Heap::close) or drop of its handle, so that the next open
/// maps the heap from its files even when they changed since (or the handle was dropped with
/// uncommitted changes; see [`Error::Detached`]). Returns `Ok(false)` when this process holds
/// no such memory for that heap. Reads only the heap's `meta` file. Same as
/// [`OpenOptions::release_detached`] with the default options (the real file system).
///
/// Values allocated from the heap stay valid after a close, because its memory stays mapped
/// until the process exits; this call unmaps it.
///
/// # Safety
///
/// No value allocated from the heap (collections built with its `HeapAlloc`, values moved
/// out of its root) is used or dropped after this call. `HeapAlloc` handles themselves stay
/// harmless (allocation through them fails).
pub unsafe fn release_detached(dir: impl AsRef<Path>) -> Result<bool> {
    // SAFETY: forwarded contract.
    unsafe { OpenOptions::new().release_detached(dir) }
}

impl OpenOptions {
    /// [`release_detached`](crate::release_detached) for a heap on these options' file
    /// system (the `meta` file is read through [`OpenOptions::vfs`]).
    ///
    /// # Safety
    ///
    /// As for [`release_detached`](crate::release_detached).
    pub unsafe fn release_detached(&self, dir: impl AsRef<Path>) -> Result<bool> {
        let path = dir.as_ref().join("meta");
        let f = self.vfs.open(&path, false).map_err(|e| Error::io("open", &path, e))?;
        let mut bytes = vec![0u8; META_LEN];
        let n = f.read_at(&mut bytes, 0).map_err(|e| Error::io("read", &path, e))?;
        bytes.truncate(n);
        let meta = Meta::decode(&bytes).map_err(|_| Error::corrupt(&path, 0, "meta file does not decode"))?;
        // SAFETY: forwarded contract.
        Ok(unsafe { release(meta.base as usize) })
    }
}
