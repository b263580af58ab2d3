//! [`Engine::verify`]: the full invariant check behind [`Heap::verify`](crate::Heap::verify).
//!
//! With the commit lock held (no commit or snapshot can start), after reaping a finished
//! snapshot writer:
//!
//! 1. **Allocator**: every arena and segment structure (`alloc/check.rs`), and the allocator's
//!    extent within the mapped extent.
//! 2. **Files**: both snapshot headers are decoded (CRC, magic, heap id, bounds); the newest
//!    snapshot the engine builds on must be on disk exactly as recorded, with an intact dirty
//!    bitmap (while the heap relies on it); the journals after it must form a gap-free chain
//!    ending in the current journal, every record's checksum must hold (`scan_journal`) and
//!    the last group must be the last commit written.
//! 3. **Dirty pages**: the image on disk (newest snapshot, then every journal group replayed)
//!    is compared page by page with memory. Every page that differs must be reported written
//!    by the kernel (`Tracker::peek`, taken *after* the comparison, so a write that raced with
//!    it is reported too): otherwise a write escaped tracking and the next commit would lose
//!    it. Every page that differs from the newest snapshot alone must be in the software set
//!    `since_snap` or reported by the kernel: otherwise the next page-diff snapshot would miss
//!    it.
//!
//! Memory for the comparison comes from `System` (the heap may be the global allocator); it is
//! proportional to a window (1 MiB) plus one word per journal page run.
//!
//! # Invariants
//!
//! A report is returned only if every check passed; the first violation is returned as
//! `Error::Corrupt` naming the file (or the heap directory) and what differs.
//!
//! # Safety
//!
//! Reads the region `[base, base + extent)`, which stays mapped while the engine lives; see
//! the SAFETY comment at the read.

use super::{lock, snapshot::SNAPSHOT_FILES, CommitState, Engine};
use crate::disk::format::delta::apply_entry;
use crate::disk::format::snapshot::{SnapHeader, DATA_OFFSET, HEADER_LEN};
use crate::disk::journal::{for_each_delta_entry, journal_file_name, read_run, walk_chain, PageRun};
use crate::error::{Error, Result};
use crate::mem::sysmem::SysVec;
use crate::sys::OS_PAGE;
use std::alloc::System;
use std::fmt;

/// Pages compared per window.
const WINDOW_PAGES: usize = 256;

/// What one snapshot file holds, as [`Heap::verify`](crate::Heap::verify) found it on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotFileState {
    /// The file is empty (never written).
    Empty,
    /// The header is damaged, marked invalid (a write in progress or failed), or describes
    /// more data than the file holds.
    Invalid,
    /// A complete snapshot.
    Valid {
        /// Its generation.
        generation: u64,
        /// The commit it holds.
        seq: u64,
    },
}

/// The result of [`Heap::verify`](crate::Heap::verify): what was checked and counted. Every
/// check passed (a violation is returned as [`Error::Corrupt`] instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Segments in use by the allocator.
    pub segments: usize,
    /// Slabs (size-class runs).
    pub slabs: usize,
    /// Large blocks inside one segment.
    pub spans: usize,
    /// Huge blocks (runs of whole segments).
    pub huge: usize,
    /// Bytes in live blocks.
    pub used_bytes: usize,
    /// Bytes of free blocks inside slabs.
    pub free_bytes: usize,
    /// Bytes the allocator has handed out at least once.
    pub extent: u64,
    /// Bytes mapped read-write.
    pub mapped: u64,
    /// The two snapshot files.
    pub snapshots: [SnapshotFileState; 2],
    /// Journals in the chain after the newest snapshot (the last one is being appended to).
    pub journals: u64,
    /// Complete commit groups in those journals, all checksums verified.
    pub journal_groups: u64,
    /// The last commit written.
    pub last_seq: u64,
    /// Pages compared between memory and the image on disk.
    pub pages_compared: u64,
    /// Pages that differ from the image on disk (written since the last commit; all of them
    /// were reported by the kernel).
    pub pages_uncommitted: u64,
    /// Pages that differ from the newest snapshot (all in the software dirty set or reported).
    pub pages_since_snapshot: u64,
    /// Pages in the software dirty set `since_snap`.
    pub dirty_set_pages: u64,
    /// Pages the kernel reports written since the last commit.
    pub kernel_written_pages: u64,
    /// How writes are tracked (`"uffd"` or the fallback).
    pub track_mode: &'static str,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "allocator: ok ({} segments, {} slabs, {} spans, {} huge; {} bytes used, {} free in slabs)",
            self.segments, self.slabs, self.spans, self.huge, self.used_bytes, self.free_bytes
        )?;
        writeln!(f, "extent: {:#x} of {:#x} mapped", self.extent, self.mapped)?;
        for (i, s) in self.snapshots.iter().enumerate() {
            match s {
                SnapshotFileState::Empty => writeln!(f, "{}: empty", SNAPSHOT_FILES[i])?,
                SnapshotFileState::Invalid => writeln!(f, "{}: invalid (not used)", SNAPSHOT_FILES[i])?,
                SnapshotFileState::Valid { generation, seq } => writeln!(
                    f,
                    "{}: generation {generation}, commit {seq}, checksums ok",
                    SNAPSHOT_FILES[i]
                )?,
            }
        }
        writeln!(
            f,
            "journals: {} in the chain, {} commit groups, checksums ok, last commit {}",
            self.journals, self.journal_groups, self.last_seq
        )?;
        write!(
            f,
            "dirty pages ({}): {} compared with disk, {} uncommitted (kernel reports {}), {} changed since the \
             snapshot (software set holds {})",
            self.track_mode,
            self.pages_compared,
            self.pages_uncommitted,
            self.kernel_written_pages,
            self.pages_since_snapshot,
            self.dirty_set_pages
        )
    }
}

/// Where the image on disk gets a window's bytes from.
struct Sources {
    /// The newest snapshot's slot and extent, if any.
    snap: Option<(usize, u64)>,
    /// Journal page runs in replay order, with the index of their journal.
    runs: SysVec<(usize, PageRun)>,
}

impl Engine {
    /// The full invariant check (see the module docs).
    pub(crate) fn verify(&self) -> Result<VerifyReport> {
        let mut cs = lock(&self.commit);
        self.reap(&mut cs, true);
        // check_invariants pauses the allocator itself.
        let a = self
            .arena
            .check_invariants()
            .map_err(|e| Error::corrupt(&self.dir, 0, format!("allocator invariant violated: {e}")))?;
        let extent = self.arena.extent();
        let mapped = lock(&self.grow.region).extent();
        if extent > mapped {
            return Err(Error::corrupt(
                &self.dir,
                0,
                format!("allocator extent {extent:#x} exceeds mapped extent {mapped:#x}"),
            ));
        }
        let (snapshots, newest) = self.verify_snapshot_headers(&cs)?;
        let (journals, groups, sources) = self.verify_journals(&cs, newest)?;
        let mut report = VerifyReport {
            segments: a.segments,
            slabs: a.slabs,
            spans: a.spans,
            huge: a.huge,
            used_bytes: a.used_bytes,
            free_bytes: a.free_bytes,
            extent: extent as u64,
            mapped: mapped as u64,
            snapshots,
            journals,
            journal_groups: groups,
            last_seq: cs.last_seq,
            pages_compared: 0,
            pages_uncommitted: 0,
            pages_since_snapshot: 0,
            dirty_set_pages: cs.since_snap.count() as u64,
            kernel_written_pages: 0,
            track_mode: lock(&self.grow.tracker).mode().name(),
        };
        self.verify_dirty_pages(&cs, &sources, mapped, &mut report)?;
        Ok(report)
    }

    /// Decodes both snapshot headers on disk; the newest valid one must be the engine's.
    fn verify_snapshot_headers(&self, cs: &CommitState) -> Result<([SnapshotFileState; 2], Option<usize>)> {
        let mut states = [SnapshotFileState::Empty; 2];
        let mut on_disk: [Option<SnapHeader>; 2] = [None, None];
        for i in 0..2 {
            let f = &cs.snap_files[i];
            let path = self.dir.join(SNAPSHOT_FILES[i]);
            let len = f.len().map_err(|e| Error::io("fstat", &path, e))?;
            if len == 0 {
                continue;
            }
            let mut b = [0u8; HEADER_LEN];
            let n = f.read_at(&mut b, 0).map_err(|e| Error::io("read", &path, e))?;
            states[i] = SnapshotFileState::Invalid;
            if let Ok(h) = SnapHeader::decode(&b[..n], self.meta.heap_id, self.meta.max_size) {
                if h.valid && len >= h.file_len() {
                    states[i] = SnapshotFileState::Valid {
                        generation: h.generation,
                        seq: h.seq,
                    };
                    on_disk[i] = Some(h);
                }
            }
        }
        // The snapshot the heap builds on must be on disk exactly as the heap recorded it. The
        // other file may hold anything (a writer that failed may even have left a complete
        // header whose final sync failed; the heap rewrites that file in full next time).
        let newest = cs.newest();
        let h_mem = newest.and_then(|i| cs.snaps[i]);
        let h_disk = newest.and_then(|i| on_disk[i]);
        if h_disk != h_mem {
            return Err(Error::corrupt(
                self.dir.join(SNAPSHOT_FILES[newest.unwrap_or(0)]),
                0,
                format!("the snapshot header on disk ({h_disk:?}) is not the one the heap uses ({h_mem:?})"),
            ));
        }
        // Its dirty bitmap matters only while the heap relies on it (`prev_interval`): a bitmap
        // found damaged at open was dropped then, and the next snapshot rewrites every page.
        if let (Some(i), Some(h), true) = (newest, h_disk, cs.prev_interval.is_some()) {
            let path = self.dir.join(SNAPSHOT_FILES[i]);
            let mut buf: SysVec<u8> = SysVec::new_in(System);
            buf.resize(h.dirty_len as usize, 0);
            let n = cs.snap_files[i]
                .read_at(&mut buf, DATA_OFFSET + h.extent)
                .map_err(|e| Error::io("read", &path, e))?;
            if n != buf.len() || crc32fast::hash(&buf) != h.dirty_crc {
                return Err(Error::corrupt(
                    &path,
                    DATA_OFFSET + h.extent,
                    "the dirty bitmap does not match its checksum",
                ));
            }
        }
        Ok((states, newest))
    }

    /// Scans the journal chain after the newest snapshot; returns `(journals, groups, sources)`.
    fn verify_journals(&self, cs: &CommitState, newest: Option<usize>) -> Result<(u64, u64, Sources)> {
        let h = newest.and_then(|i| cs.snaps[i]);
        let (first, mut expect_seq) = h.map_or((1, 0), |h| (h.journal_id, h.seq));
        let chain = walk_chain(&*self.vfs, &self.dir, self.meta.heap_id, first, expect_seq)?;
        let ids: Vec<u64> = chain.links.iter().map(|l| l.id).collect();
        let current = cs.journal.id();
        let mut sources = Sources {
            snap: newest.zip(h).map(|(i, h)| (i, h.extent)),
            runs: SysVec::new_in(System),
        };
        let mut groups = 0u64;
        for scan in chain.into_scans()? {
            let id = scan.header.journal_id; // scan_journal checked it against the name
            expect_seq = scan.last_seq();
            groups += scan.groups.len() as u64;
            for g in scan.groups.iter() {
                for run in &scan.runs[g.runs.clone()] {
                    sources.runs.push((id as usize, *run));
                }
            }
        }
        if ids.last() != Some(&current) {
            return Err(Error::corrupt(
                self.dir.join(journal_file_name(current)),
                0,
                format!("the current journal {current} is not the last of the chain {ids:?}"),
            ));
        }
        if expect_seq != cs.last_seq {
            return Err(Error::corrupt(
                self.dir.join(journal_file_name(current)),
                0,
                format!(
                    "the journal ends at commit {expect_seq}, the heap wrote {}",
                    cs.last_seq
                ),
            ));
        }
        Ok((ids.len() as u64, groups, sources))
    }

    /// Compares memory with the image on disk, window by window (see the module docs).
    fn verify_dirty_pages(
        &self,
        cs: &CommitState,
        src: &Sources,
        mapped: usize,
        report: &mut VerifyReport,
    ) -> Result<()> {
        let base = self.base();
        let mut snap_img: SysVec<u8> = SysVec::new_in(System);
        let mut disk_img: SysVec<u8> = SysVec::new_in(System);
        let mut diff_disk: SysVec<usize> = SysVec::new_in(System);
        let mut diff_snap: SysVec<usize> = SysVec::new_in(System);
        let mut files: SysVec<(u64, Box<dyn crate::io::VFile>)> = SysVec::new_in(System);
        let mut delta_buf: SysVec<u8> = SysVec::new_in(System);
        let window = WINDOW_PAGES * OS_PAGE;
        // The hashed rung is not sticky: a page another thread changes and changes back between
        // this comparison and the peek below is not reported, though nothing escapes. For it a
        // differing page also passes when its baseline is the digest of the image it is
        // compared with: the next collect then reports it exactly when it still differs.
        let mut tracker = lock(&self.grow.tracker);
        let (mut uncommitted, mut since_snapshot) = (0u64, 0u64);
        let mut at = 0usize;
        while at < mapped {
            let len = window.min(mapped - at);
            snap_img.clear();
            snap_img.resize(len, 0);
            if let Some((slot, snap_extent)) = src.snap {
                let n = (snap_extent as usize).saturating_sub(at).min(len);
                if n > 0 {
                    let path = self.dir.join(SNAPSHOT_FILES[slot]);
                    let got = cs.snap_files[slot]
                        .read_at(&mut snap_img[..n], DATA_OFFSET + at as u64)
                        .map_err(|e| Error::io("read", &path, e))?;
                    if got != n {
                        return Err(Error::corrupt(
                            &path,
                            DATA_OFFSET + at as u64,
                            "snapshot file too short",
                        ));
                    }
                }
            }
            disk_img.resize(len, 0);
            disk_img.copy_from_slice(&snap_img);
            for &(jid, run) in src.runs.iter() {
                let (ra, rb) = (run.region_offset as usize, run.region_end as usize);
                let (a, b) = (ra.max(at), rb.min(at + len));
                if a >= b {
                    continue;
                }
                if !files.iter().any(|f| f.0 == jid as u64) {
                    let path = self.dir.join(journal_file_name(jid as u64));
                    let f = self.vfs.open(&path, false).map_err(|e| Error::io("open", &path, e))?;
                    files.push((jid as u64, f));
                }
                let f = &files.iter().find(|f| f.0 == jid as u64).expect("opened above").1;
                let path = self.dir.join(journal_file_name(jid as u64));
                if run.delta_entries.is_none() {
                    let part = PageRun {
                        file_offset: run.file_offset + (a - ra) as u64,
                        region_offset: a as u64,
                        len: (b - a) as u64,
                        delta_entries: None,
                        region_end: b as u64,
                    };
                    read_run(&**f, &path, &part, &mut disk_img[a - at..b - at])?;
                    continue;
                }
                // A DELTA record: apply its entries for pages in this window, in order (the
                // window is page-aligned, so an entry's page lies wholly inside or outside it).
                for_each_delta_entry(&**f, &path, &run, &mut delta_buf, &mut |e| {
                    let p = e.page as usize;
                    if p < at || p >= at + len {
                        return Ok(());
                    }
                    apply_entry(e, &mut disk_img[p - at..p - at + OS_PAGE])
                })?;
            }
            // Other threads may write into blocks they own meanwhile (as during a commit's
            // copy); such pages are then reported by the kernel in the peek below, which is all
            // the comparison relies on.
            // SAFETY: [base + at, base + at + len) lies inside the mapped extent, which stays
            // mapped while the engine lives; concurrent writes are only those described above.
            let mem = unsafe { std::slice::from_raw_parts((base + at) as *const u8, len) };
            for p in 0..len / OS_PAGE {
                let r = p * OS_PAGE..(p + 1) * OS_PAGE;
                let addr = base + at + r.start;
                if mem[r.clone()] != disk_img[r.clone()] {
                    uncommitted += 1;
                    if !tracker.baseline_is(addr, &disk_img[r.clone()]) {
                        diff_disk.push(addr);
                    }
                }
                if mem[r.clone()] != snap_img[r.clone()] {
                    since_snapshot += 1;
                    if !tracker.baseline_is(addr, &snap_img[r]) {
                        diff_snap.push(addr);
                    }
                }
            }
            report.pages_compared += (len / OS_PAGE) as u64;
            at += len;
        }
        // After the comparison: every write that made a page differ happened before the page
        // was read, so the kernel reports it now.
        let mut written: SysVec<(usize, usize)> = SysVec::new_in(System);
        tracker
            .peek(base, base + mapped, &mut written)
            .map_err(|e| Error::io("PAGEMAP_SCAN (verify)", &self.dir, e))?;
        let reported = |addr: usize| {
            let i = written.partition_point(|&(_, e)| e <= addr);
            i < written.len() && written[i].0 <= addr
        };
        report.kernel_written_pages = written.iter().map(|(a, b)| ((b - a) / OS_PAGE) as u64).sum();
        report.pages_uncommitted = uncommitted;
        report.pages_since_snapshot = since_snapshot;
        if let Some(&p) = diff_disk.iter().find(|&&p| !reported(p)) {
            return Err(Error::corrupt(
                &self.dir,
                (p - base) as u64,
                "a page differs from the committed image but the kernel does not report it written \
                 (a write escaped tracking)",
            ));
        }
        if let Some(&p) = diff_snap.iter().find(|&&p| !reported(p) && !cs.since_snap.contains(p)) {
            return Err(Error::corrupt(
                &self.dir,
                (p - base) as u64,
                "a page differs from the newest snapshot but is neither in the dirty set nor reported \
                 written (the next snapshot would miss it)",
            ));
        }
        Ok(())
    }
}
