//! The hashed rung: finds changed pages with no privilege and no special kernel feature, by
//! comparing a keyed hash of each candidate page with the hash of the bytes last journaled for
//! it. `/proc/self/pagemap` (readable by any process) narrows the candidates to the private
//! anonymous pages, so the cost is proportional to the pages written since the heap was
//! mapped, not to the heap's size.
//!
//! # Which pages can have changed
//!
//! The heap is a `MAP_PRIVATE` mapping of the snapshot file followed by anonymous memory. A
//! page of it is, per its pagemap entry ([`crate::sys::pagemap`]):
//!
//! - not present and not swapped: never touched since it was mapped, so its content is its
//!   backing (the file's bytes, or zeros);
//! - present with `PM_FILE`: still the page-cache page, so never written since it was mapped
//!   (the first write to a private file page makes a private copy, which loses `PM_FILE`;
//!   so does a kernel write into it, e.g. `read(2)`);
//! - private anonymous (present without `PM_FILE`, or swapped): written since it was mapped,
//!   or (the shared zero page) read after never being touched. Only these are hashed.
//!
//! After `fork()` (the snapshot writer) the parent's anonymous pages stay anonymous, shared
//! copy-on-write with the child: still candidates, still hashed; the child's writes go to its
//! own copies and never change the parent's bytes. Pages the engine maps beyond the snapshot's
//! extent are anonymous memory: untouched ones are not present (skipped), touched ones are
//! candidates.
//!
//! # The baseline and exactness
//!
//! Per armed page the rung keeps a 128-bit digest (16 bytes per page: 4 MiB per GiB armed);
//! the value 0 means "no baseline: the content is the backing", which is what arming records
//! for a page that is not private anonymous. Arming hashes the private anonymous pages of the
//! range: the caller arms only content that is committed (the recovered image at open, fresh
//! memory at growth). A page is reported when
//!
//! - it is private anonymous and its digest differs from the baseline (a page first seen
//!   anonymous has none, so it is reported: it was written, or it is the zero page after a read,
//!   a harmless extra page once), or
//! - it has a baseline but is no longer private anonymous (its copy was discarded, e.g. by
//!   `MADV_DONTNEED`, so its content went back to the backing).
//!
//! With `update` ([`Hashed::report`] for `collect`) every reported page is copied into the
//! *staging buffer* and its new baseline is the digest of that copy, and the commit journals
//! the staged copy, not the live page. So the baseline is always the digest of exactly the
//! bytes the journal holds, whatever other threads write meanwhile (`GlobalHeap`, or blocks not
//! yet linked to a `Heap` root): a page found equal to its baseline has the journaled content
//! at the instant it was read, and any later change differs from the baseline at the next
//! collect. Hashing the live page and journaling a later read of it instead would lose an
//! "A, B, A" pattern (an `Arc` count going up and down) racing with the commit.
//!
//! A change is missed only if the new content has the same digest as the old: the digest is
//! NH (the universal hash of UMAC, Black et al., CRYPTO 1999) with 64-bit words, a 4 KiB random
//! key drawn from `getrandom` when the tracker is made, and a 128-bit sum, which is
//! 2^-64-almost-universal: for any two different pages the probability (over the key) of equal
//! digests is at most 2^-64. The key never leaves the process's private memory.
//!
//! # Cost (measured, see the README's Platform table and `benches/src/bin/tracking.rs`)
//!
//! Per collect: one `pread` of 8 bytes of pagemap per armed page (2 MiB per GiB armed), and one
//! hash per private anonymous page, memory-bandwidth bound; plus a copy of each changed page.
//!
//! # Invariants
//!
//! - `pieces` is sorted by address, its ranges page-aligned, non-empty, disjoint and
//!   non-adjacent; `piece.digests.len() == (piece.end - piece.start) / 4096`.
//! - After a `report` with `update`, `staged.len()` is the total length of the ranges that call
//!   appended, and holds their bytes in the same order.
//!
//! # Safety
//!
//! The rung reads the memory of armed pages (hashing and staging). [`Hashed::arm`] is
//! `unsafe`: its caller promises that the range stays mapped readable until it is disarmed.
//! Those reads may race with writes by other threads, exactly like the commit's own copy of
//! dirty pages: the bytes read may be torn, which the staging argument above makes harmless.

use std::io;

use super::Fallback;
use crate::mem::sysmem::SysVec;
use crate::sys::pagemap::{self, PagemapEntries};
use crate::sys::uffd::ScratchMap;

/// The tracking granularity: one OS page.
const PAGE: usize = crate::sys::OS_PAGE;
/// 64-bit words per page (and in the key).
const WORDS: usize = PAGE / 8;
/// Pagemap entries read per `pread` (32 KiB of entries, 16 MiB of address space).
const CHUNK: usize = 4096;

/// A page digest; 0 means "no baseline" (the page's content is its backing).
type Digest = u128;

/// One armed range and the digests of its pages.
#[derive(Debug)]
struct Piece {
    start: usize,
    end: usize,
    digests: SysVec<Digest>,
}

/// The hashed tracker state. See the module docs.
#[derive(Debug)]
pub(crate) struct Hashed {
    pagemap: PagemapEntries,
    /// The NH key: one random word per word of a page.
    key: SysVec<u64>,
    pieces: SysVec<Piece>,
    /// Reused pagemap read buffer.
    entries: SysVec<u64>,
    /// Copies of the pages the last updating report returned, in report order.
    staged: SysVec<u8>,
}

impl Hashed {
    /// Opens `/proc/self/pagemap` and draws a fresh key.
    pub(crate) fn new() -> io::Result<Hashed> {
        let pagemap = PagemapEntries::open()?;
        let mut key = SysVec::new_in(std::alloc::System);
        key.resize(WORDS, 0u64);
        let mut bytes = [0u8; PAGE];
        pagemap::fill_random(&mut bytes)?;
        for (k, c) in key.iter_mut().zip(bytes.chunks_exact(8)) {
            *k = u64::from_le_bytes(c.try_into().expect("8-byte chunk"));
        }
        Ok(Hashed {
            pagemap,
            key,
            pieces: SysVec::new_in(std::alloc::System),
            entries: SysVec::new_in(std::alloc::System),
            staged: SysVec::new_in(std::alloc::System),
        })
    }

    /// Starts tracking `[start, end)` (page-aligned): records the digest of each private
    /// anonymous page as its baseline and "backing" for the others. Arming an armed range
    /// again replaces its baselines (forgetting unreported changes).
    ///
    /// # Safety
    ///
    /// `[start, end)` is mapped readable and stays so until it is disarmed (or the tracker is
    /// dropped), and its current content is what the journal and snapshot hold for it.
    pub(crate) unsafe fn arm(&mut self, start: usize, end: usize) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if start >= end {
            return Ok(());
        }
        let mut digests = SysVec::with_capacity_in((end - start) / PAGE, std::alloc::System);
        let mut addr = start;
        while addr < end {
            let n = CHUNK.min((end - addr) / PAGE);
            self.entries.resize(n, 0);
            self.pagemap.read(addr, &mut self.entries[..n])?;
            for (j, &e) in self.entries[..n].iter().enumerate() {
                let d = if pagemap::is_private_anon(e) {
                    // SAFETY: the page lies in [start, end), mapped readable (caller's promise).
                    unsafe { digest(&self.key, (addr + j * PAGE) as *const u64) }
                } else {
                    0
                };
                digests.push(d);
            }
            addr += n * PAGE;
        }
        self.remove(start, end);
        self.insert(Piece { start, end, digests });
        Ok(())
    }

    /// Stops tracking `[start, end)`.
    pub(crate) fn disarm(&mut self, start: usize, end: usize) {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        if start < end {
            self.remove(start, end);
        }
    }

    /// Appends to `out` the changed armed pages of `[start, end)` in address order, adjacent
    /// pages coalesced (never into entries `out` held before the call). With `update` (the
    /// commit's collect) it also stages a copy of each reported page (see [`staged`](Self::staged))
    /// and makes the copy's digest the page's new baseline; without it (verification) nothing
    /// changes. An error (a failed pagemap read) may come after part of the baselines were
    /// updated: the caller must then treat the whole range as changed.
    pub(crate) fn report(
        &mut self,
        start: usize,
        end: usize,
        update: bool,
        out: &mut SysVec<(usize, usize)>,
    ) -> io::Result<()> {
        debug_assert!(start <= end && start % PAGE == 0 && end % PAGE == 0);
        let first = out.len();
        if update {
            self.staged.clear();
        }
        let Hashed {
            pagemap,
            key,
            pieces,
            entries,
            staged,
        } = self;
        let mut i = pieces.partition_point(|p| p.end <= start);
        while i < pieces.len() && pieces[i].start < end {
            let piece = &mut pieces[i];
            let (a, b) = (piece.start.max(start), piece.end.min(end));
            let mut addr = a;
            while addr < b {
                let n = CHUNK.min((b - addr) / PAGE);
                entries.resize(n, 0);
                pagemap.read(addr, &mut entries[..n])?;
                let slots = &mut piece.digests[(addr - piece.start) / PAGE..][..n];
                for (j, (&e, slot)) in entries[..n].iter().zip(slots.iter_mut()).enumerate() {
                    let page = addr + j * PAGE;
                    let changed = if pagemap::is_private_anon(e) {
                        // SAFETY: armed pages are mapped readable (the promise of `arm`).
                        unsafe { digest(key, page as *const u64) != *slot }
                    } else {
                        *slot != 0
                    };
                    if !changed {
                        continue;
                    }
                    push_coalesced(out, first, page, page + PAGE);
                    if update {
                        let at = staged.len();
                        // SAFETY: as above; `extend_bytes` copies the page with one memcpy.
                        let live = unsafe { std::slice::from_raw_parts(page as *const u8, PAGE) };
                        crate::mem::sysmem::extend_bytes(staged, live);
                        *slot = if pagemap::is_private_anon(e) {
                            // SAFETY: `staged[at..at + PAGE]` is initialised memory we own;
                            // u8 storage read as u64 words with unaligned reads.
                            unsafe { digest(key, staged.as_ptr().add(at).cast()) }
                        } else {
                            // Back to the backing (its copy was discarded): the staged bytes
                            // are the backing's, and a page that stays so is unchanged.
                            0
                        };
                    }
                }
                addr += n * PAGE;
            }
            i += 1;
        }
        Ok(())
    }

    /// The start-up round trip on a private scratch mapping (never trusting a call that merely
    /// succeeds): with pages 0 and 1 populated and 2 and 3 untouched, arms all four, expects
    /// nothing reported; changes page 1 and expects exactly it, with its bytes staged; expects
    /// nothing at the next collect; writes untouched page 3 and expects exactly it. Catches an
    /// unreadable or blanked pagemap (a written page would look untouched). Leaves nothing armed.
    pub(crate) fn probe(&mut self) -> Result<(), Fallback> {
        let mut map = ScratchMap::new(4 * PAGE).map_err(|e| Fallback::os("probe mmap", e))?;
        let a = map.addr();
        map.write(0, 1);
        map.write(PAGE, 1);
        // SAFETY: the scratch map stays mapped until it is disarmed below.
        unsafe { self.arm(a, a + 4 * PAGE) }.map_err(|e| Fallback::os("probe arm (pagemap read)", e))?;
        let r = self.probe_armed(&mut map);
        self.disarm(a, a + 4 * PAGE);
        self.staged.clear();
        r
    }

    fn probe_armed(&mut self, map: &mut ScratchMap) -> Result<(), Fallback> {
        let a = map.addr();
        let mut out = SysVec::new_in(std::alloc::System);
        let mut step = |t: &mut Self, want: Option<(usize, usize)>, what: &'static str| {
            out.clear();
            t.report(a, a + 4 * PAGE, true, &mut out)
                .map_err(|e| Fallback::os("probe pagemap read", e))?;
            if out.as_slice() != want.as_slice() {
                return Err(Fallback::wrong(what));
            }
            let staged_ok = match want {
                // SAFETY: the range is inside the live scratch map.
                Some((x, y)) => t.staged() == unsafe { std::slice::from_raw_parts(x as *const u8, y - x) },
                None => t.staged().is_empty(),
            };
            if staged_ok {
                Ok(())
            } else {
                Err(Fallback::wrong("probe: staged bytes differ from the page"))
            }
        };
        step(self, None, "probe: a page nobody wrote was reported")?;
        map.write(PAGE + 8, 2);
        step(
            self,
            Some((a + PAGE, a + 2 * PAGE)),
            "probe: written populated page not reported",
        )?;
        step(self, None, "probe: collect did not update the baseline")?;
        map.write(3 * PAGE + 8, 2);
        step(
            self,
            Some((a + 3 * PAGE, a + 4 * PAGE)),
            "probe: written untouched page not reported",
        )?;
        step(self, None, "probe: collect did not update the baseline (2)")
    }

    /// The baseline of the armed page at `addr`: `None` when it is not armed, `Some(0)` when
    /// its content is its backing. Allocation-free (a binary search), so the snapshot child
    /// may call it.
    fn baseline(&self, addr: usize) -> Option<Digest> {
        let i = self.pieces.partition_point(|p| p.end <= addr);
        let p = self.pieces.get(i).filter(|p| p.start <= addr)?;
        p.digests.get((addr - p.start) / PAGE).copied()
    }

    /// Whether the page at `addr` still holds the bytes its baseline was taken from, as far as
    /// the snapshot writer must know: true for a page without a baseline (its content is the
    /// backing, or it is private anonymous and so reported at the next collect whatever it
    /// holds) and for an unarmed one; else whether the page's digest equals the baseline. The
    /// snapshot child calls it on its copy-on-write image, which is frozen, for every page it is
    /// about to write (docs/design.md, "Dirty tracking: the ladder", the fork check).
    /// Allocation-, lock- and panic-free.
    pub(crate) fn image_matches(&self, addr: usize) -> bool {
        match self.baseline(addr) {
            None | Some(0) => true,
            // SAFETY: an armed page is mapped readable (the promise of `arm`).
            Some(d) => d == unsafe { digest(&self.key, (addr & !(PAGE - 1)) as *const u64) },
        }
    }

    /// Whether the armed page at `addr` has a baseline and it is the digest of `bytes` (one
    /// page): then the next collect reports the page exactly when its content differs from
    /// `bytes` (for `verify`, comparing against the committed image).
    pub(crate) fn baseline_is(&self, addr: usize, bytes: &[u8]) -> bool {
        debug_assert_eq!(bytes.len(), PAGE);
        match self.baseline(addr) {
            // SAFETY: `bytes` is one page of readable memory (unaligned reads).
            Some(d) if d != 0 && bytes.len() == PAGE => d == unsafe { digest(&self.key, bytes.as_ptr().cast()) },
            _ => false,
        }
    }

    /// The copies staged by the last updating [`report`](Self::report): the reported pages'
    /// bytes in report order. The commit journals these, not the live pages.
    pub(crate) fn staged(&self) -> &[u8] {
        &self.staged
    }

    /// Bytes of bookkeeping held (digests and buffers), for the docs' memory statement.
    #[cfg(test)]
    pub(crate) fn memory_bytes(&self) -> usize {
        let digests: usize = self.pieces.iter().map(|p| p.digests.capacity() * 16).sum();
        digests + self.key.capacity() * 8 + self.entries.capacity() * 8 + self.staged.capacity()
    }

    /// Removes `[a, b)` from the pieces, splitting as needed.
    fn remove(&mut self, a: usize, b: usize) {
        let i = self.pieces.partition_point(|p| p.end <= a);
        let mut j = i;
        while j < self.pieces.len() && self.pieces[j].start < b {
            j += 1;
        }
        if i >= j {
            return;
        }
        let mut keep: SysVec<Piece> = SysVec::new_in(std::alloc::System);
        for mut p in self.pieces.drain(i..j) {
            if p.end > b {
                let tail = p.digests.split_off((b - p.start) / PAGE);
                keep.push(Piece {
                    start: b,
                    end: p.end,
                    digests: tail,
                });
                p.end = b;
            }
            if p.start < a {
                p.digests.truncate((a - p.start) / PAGE);
                p.end = a;
                keep.push(p);
            }
        }
        keep.sort_by_key(|p| p.start);
        for (k, p) in keep.into_iter().enumerate() {
            self.pieces.insert(i + k, p);
        }
    }

    /// Inserts a piece that overlaps none, merging with adjacent neighbours.
    fn insert(&mut self, mut p: Piece) {
        let i = self.pieces.partition_point(|q| q.end < p.start);
        // A right neighbour starting exactly at p.end.
        if i < self.pieces.len() && self.pieces[i].start == p.end {
            let right = self.pieces.remove(i);
            p.digests.extend(right.digests);
            p.end = right.end;
        }
        if i < self.pieces.len() && self.pieces[i].end == p.start {
            let left = &mut self.pieces[i];
            left.digests.extend(p.digests);
            left.end = p.end;
            return;
        }
        if i > 0 && self.pieces[i - 1].end == p.start {
            let left = &mut self.pieces[i - 1];
            left.digests.extend(p.digests);
            left.end = p.end;
            return;
        }
        self.pieces.insert(i, p);
    }

    /// Checks the invariants of the module docs; panics on violation (tests only).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        for w in self.pieces.windows(2) {
            assert!(w[0].end < w[1].start, "pieces overlap or touch");
        }
        for p in self.pieces.iter() {
            assert!(p.start < p.end && p.start % PAGE == 0 && p.end % PAGE == 0);
            assert_eq!(p.digests.len(), (p.end - p.start) / PAGE);
        }
        assert_eq!(self.key.len(), WORDS);
    }
}

/// NH over one page with 64-bit words: the sum mod 2^128 of
/// `(m[2i] + k[2i] mod 2^64) * (m[2i+1] + k[2i+1] mod 2^64)`; a zero result is mapped to 1 (0
/// means "no baseline"). Four independent accumulators let the multiplies overlap.
///
/// # Safety
///
/// `page` points to 4096 readable bytes (any alignment).
unsafe fn digest(key: &[u64], page: *const u64) -> Digest {
    debug_assert_eq!(key.len(), WORDS);
    let mut acc = [0u128; 4];
    let mut i = 0;
    while i < WORDS {
        for (l, a) in acc.iter_mut().enumerate() {
            let w = i + 2 * l;
            // SAFETY: w + 1 < WORDS, inside the page (caller's promise).
            let (m0, m1) = unsafe { (page.add(w).read_unaligned(), page.add(w + 1).read_unaligned()) };
            let x = m0.wrapping_add(key[w]) as u128;
            let y = m1.wrapping_add(key[w + 1]) as u128;
            *a = a.wrapping_add(x * y);
        }
        i += 8;
    }
    let d = acc[0].wrapping_add(acc[1]).wrapping_add(acc[2]).wrapping_add(acc[3]);
    if d == 0 {
        1
    } else {
        d
    }
}

/// Appends `[a, b)` to `out`, extending the last entry instead when it ends at `a` and was
/// appended by this call (index `>= first`).
fn push_coalesced(out: &mut SysVec<(usize, usize)>, first: usize, a: usize, b: usize) {
    if out.len() > first {
        if let Some(last) = out.last_mut() {
            if last.1 == a {
                last.1 = b;
                return;
            }
        }
    }
    out.push((a, b));
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: usize = PAGE;

    fn sysvec<T>() -> SysVec<T> {
        SysVec::new_in(std::alloc::System)
    }

    fn pages(base: usize, idx: &[usize]) -> std::vec::Vec<(usize, usize)> {
        let mut out = sysvec();
        for &i in idx {
            push_coalesced(&mut out, 0, base + i * P, base + (i + 1) * P);
        }
        out.to_vec()
    }

    fn collect(h: &mut Hashed, a: usize, b: usize) -> std::vec::Vec<(usize, usize)> {
        let mut out = sysvec();
        h.report(a, b, true, &mut out).unwrap();
        h.check_invariants();
        out.to_vec()
    }

    fn peek(h: &mut Hashed, a: usize, b: usize) -> std::vec::Vec<(usize, usize)> {
        let mut out = sysvec();
        h.report(a, b, false, &mut out).unwrap();
        out.to_vec()
    }

    fn end(m: &ScratchMap) -> usize {
        m.addr() + m.len()
    }

    fn live(addr: usize, len: usize) -> std::vec::Vec<u8> {
        // SAFETY: tests pass ranges of live scratch maps.
        unsafe { std::slice::from_raw_parts(addr as *const u8, len) }.to_vec()
    }

    #[test]
    fn probe_passes_here() {
        let mut h = Hashed::new().unwrap();
        h.probe().unwrap();
        assert!(h.pieces.is_empty() && h.staged().is_empty());
    }

    #[test]
    fn digest_is_keyed_and_sensitive_to_every_word_and_bit() {
        let h1 = Hashed::new().unwrap();
        let h2 = Hashed::new().unwrap();
        assert_ne!(h1.key.as_slice(), h2.key.as_slice(), "keys are random");
        let mut page = vec![0u64; WORDS];
        // SAFETY: `page` is 4096 readable bytes.
        let d0 = unsafe { digest(&h1.key, page.as_ptr()) };
        assert_ne!(d0, 0);
        let mut seen = std::collections::HashSet::new();
        seen.insert(d0);
        for w in 0..WORDS {
            for bit in [0, 1, 31, 32, 62, 63] {
                page[w] ^= 1 << bit;
                // SAFETY: as above.
                let d = unsafe { digest(&h1.key, page.as_ptr()) };
                assert!(seen.insert(d), "word {w} bit {bit} collides");
                page[w] ^= 1 << bit;
            }
        }
        // The two-top-bits cancellation that plain multiply-xor chains suffer from.
        page[0] ^= 1 << 63;
        page[1] ^= 1 << 63;
        // SAFETY: as above.
        assert_ne!(unsafe { digest(&h1.key, page.as_ptr()) }, d0);
    }

    #[test]
    fn reports_exactly_changed_pages_and_stages_their_bytes() {
        let mut h = Hashed::new().unwrap();
        let mut map = ScratchMap::new(16 * P).unwrap();
        for i in 0..8 {
            map.write(i * P, 1); // populated before arming
        }
        // SAFETY: the map lives until the end of the test; nothing disarms it early.
        unsafe { h.arm(map.addr(), end(&map)) }.unwrap();
        h.check_invariants();
        assert_eq!(peek(&mut h, map.addr(), end(&map)), vec![]);
        assert_eq!(collect(&mut h, map.addr(), end(&map)), vec![]);
        map.write(3 * P + 7, 9); // populated page changed
        map.write(12 * P, 4); // untouched page written
        map.write(5 * P, 1); // same value: content unchanged
        let _ = map.read(14 * P); // untouched page read: not private anonymous? (zero page)
        let want = pages(map.addr(), &[3, 12]);
        let peeked = peek(&mut h, map.addr(), end(&map));
        let got = collect(&mut h, map.addr(), end(&map));
        assert_eq!(peeked, got, "peek and collect agree");
        // The zero page after a read is anonymous in pagemap: reported once, harmlessly.
        let with_read = pages(map.addr(), &[3, 12, 14]);
        assert!(
            got == want || got == with_read,
            "got {got:x?}, want {want:x?} (+ page 14 at most)"
        );
        let mut expect_staged = vec![];
        for &(a, b) in &got {
            expect_staged.extend(live(a, b - a));
        }
        assert_eq!(h.staged(), expect_staged.as_slice());
        assert_eq!(collect(&mut h, map.addr(), end(&map)), vec![], "baselines updated");
        // A -> B -> A between collects is no change.
        map.write(3 * P + 7, 1);
        map.write(3 * P + 7, 9);
        assert_eq!(collect(&mut h, map.addr(), end(&map)), vec![]);
        // Peek leaves baselines alone.
        map.write(6 * P, 2);
        assert_eq!(peek(&mut h, map.addr(), end(&map)), pages(map.addr(), &[6]));
        assert_eq!(peek(&mut h, map.addr(), end(&map)), pages(map.addr(), &[6]));
        assert_eq!(collect(&mut h, map.addr(), end(&map)), pages(map.addr(), &[6]));
        assert!(h.memory_bytes() >= 16 * 16);
    }

    #[test]
    fn file_pages_count_as_unchanged_until_copied_and_kernel_writes_are_seen() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let path = std::env::temp_dir().join(format!("snapheap-hashed-{}", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&vec![7u8; 8 * P]).unwrap();
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        // SAFETY: a fresh private mapping of our own file at a kernel-chosen address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * P,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        // Page 0 read into the page cache, page 1 written (private copy) before arming.
        // SAFETY: inside the mapping.
        unsafe {
            let _ = std::ptr::read_volatile(base as *const u8);
            std::ptr::write_volatile((base + P) as *mut u8, 1);
        }
        let mut h = Hashed::new().unwrap();
        // SAFETY: mapped until the munmap at the end; disarmed before.
        unsafe { h.arm(base, base + 8 * P) }.unwrap();
        assert_eq!(collect(&mut h, base, base + 8 * P), vec![]);
        // Reads of file pages change nothing.
        // SAFETY: inside the mapping.
        unsafe {
            let _ = std::ptr::read_volatile((base + 4 * P) as *const u8);
        }
        assert_eq!(collect(&mut h, base, base + 8 * P), vec![]);
        // A user write to a page-cache page, a kernel write (pread) into an untouched page, and a
        // write of the value the file already holds (still a copy: reported once).
        let src = std::fs::File::open("/proc/self/exe").unwrap();
        // SAFETY: inside the mapping; pread writes 100 bytes into page 6.
        unsafe {
            std::ptr::write_volatile(base as *mut u8, 3);
            assert_eq!(
                libc::pread(src.as_raw_fd(), (base + 6 * P) as *mut libc::c_void, 100, 0),
                100
            );
            std::ptr::write_volatile((base + 5 * P) as *mut u8, 7);
        }
        assert_eq!(collect(&mut h, base, base + 8 * P), pages(base, &[0, 5, 6]));
        assert_eq!(collect(&mut h, base, base + 8 * P), vec![]);
        h.disarm(base, base + 8 * P);
        h.check_invariants();
        assert!(h.pieces.is_empty());
        // SAFETY: our mapping, no references into it remain.
        unsafe { libc::munmap(p, 8 * P) };
    }

    #[test]
    fn pieces_merge_split_and_rearm() {
        let mut h = Hashed::new().unwrap();
        let mut map = ScratchMap::new(64 * P).unwrap();
        let a = map.addr();
        // SAFETY: the map outlives the tracker's use of it.
        unsafe {
            h.arm(a, a + 10 * P).unwrap();
            h.arm(a + 10 * P, a + 20 * P).unwrap(); // adjacent: merged
            h.arm(a + 30 * P, a + 40 * P).unwrap();
        }
        h.check_invariants();
        assert_eq!(h.pieces.len(), 2);
        h.disarm(a + 5 * P, a + 35 * P);
        h.check_invariants();
        assert_eq!(
            h.pieces.iter().map(|p| (p.start, p.end)).collect::<std::vec::Vec<_>>(),
            vec![(a, a + 5 * P), (a + 35 * P, a + 40 * P)]
        );
        for i in [0, 4, 5, 20, 36, 50] {
            map.write(i * P, 1);
        }
        assert_eq!(collect(&mut h, a, a + 64 * P), pages(a, &[0, 4, 36]));
        // Re-arming forgets unreported changes.
        map.write(36 * P, 2);
        // SAFETY: as above.
        unsafe { h.arm(a + 35 * P, a + 40 * P) }.unwrap();
        h.check_invariants();
        assert_eq!(collect(&mut h, a, a + 64 * P), vec![]);
        // Sub-range collects see only their part.
        map.write(P, 5);
        map.write(37 * P, 5);
        assert_eq!(collect(&mut h, a + 30 * P, a + 64 * P), pages(a, &[37]));
        assert_eq!(collect(&mut h, a, a + 30 * P), pages(a, &[1]));
    }

    /// The exactness property under a concurrent writer: a model "journal" image is updated
    /// from the staged copies of each collect only; after the writer stops and a last collect,
    /// the model equals live memory byte for byte. The writer flips words A -> B -> A so that
    /// a tracker journaling a later read than it hashed would be caught.
    #[test]
    fn journal_model_matches_memory_under_a_concurrent_aba_writer() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        const N: usize = 4;
        let mut h = Hashed::new().unwrap();
        let mut map = ScratchMap::new(N * P).unwrap();
        for i in 0..N {
            map.write(i * P, 1);
        }
        let a = map.addr();
        // SAFETY: the map outlives the tracker's use.
        unsafe { h.arm(a, a + N * P) }.unwrap();
        let mut model = live(a, N * P);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0x9E37_79B9_7F4A_7C15u64;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let page = (x as usize) % N;
                    let word = (a + page * P + ((x >> 32) as usize % WORDS) * 8) as *mut u64;
                    // SAFETY: inside the map, which outlives the thread (joined below);
                    // word-sized volatile stores. A -> B -> A, so the page keeps returning to
                    // the content a collect may have hashed while another state was copied.
                    unsafe {
                        let old = std::ptr::read_volatile(word);
                        for _ in 0..64 {
                            std::ptr::write_volatile(word, old ^ 0xFF);
                            std::ptr::write_volatile(word, old);
                        }
                    }
                }
            })
        };
        let mut reported = 0;
        let t0 = std::time::Instant::now();
        while reported < 300 && t0.elapsed() < std::time::Duration::from_secs(3) {
            let mut out = sysvec();
            h.report(a, a + N * P, true, &mut out).unwrap();
            let mut at = 0;
            for &(x, y) in out.iter() {
                model[x - a..y - a].copy_from_slice(&h.staged()[at..at + (y - x)]);
                at += y - x;
                reported += (y - x) / P;
            }
            assert_eq!(at, h.staged().len());
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let mut out = sysvec();
        h.report(a, a + N * P, true, &mut out).unwrap();
        let mut at = 0;
        for &(x, y) in out.iter() {
            model[x - a..y - a].copy_from_slice(&h.staged()[at..at + (y - x)]);
            at += y - x;
        }
        assert!(reported > 50, "the writer barely raced ({reported} pages)");
        assert!(model == live(a, N * P), "the journal model lost a change");
    }

    #[test]
    fn parent_changes_are_seen_across_fork_and_the_childs_are_not() {
        let mut h = Hashed::new().unwrap();
        let mut map = ScratchMap::new(8 * P).unwrap();
        for i in 0..8 {
            map.write(i * P, 1);
        }
        // SAFETY: the map outlives the tracker's use.
        unsafe { h.arm(map.addr(), end(&map)) }.unwrap();
        // SAFETY: the child only performs volatile stores to memory it owns and `_exit`s.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            map.write(2 * P, 9);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(0) };
        }
        map.write(5 * P, 3); // while the child shares the pages (or after it exited)
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert_eq!(map.read(2 * P), 1);
        assert_eq!(collect(&mut h, map.addr(), end(&map)), pages(map.addr(), &[5]));
    }
}
