//! Journal replay: [`replay_journal`] applies the complete commit groups of one scanned
//! journal to a region image, in order: it grows the image to each group's extent, copies each
//! `PAGES` run into place and applies each `DELTA` record's entries to their pages.
//! [`Replay::finish`], called once after the last journal of the chain, checks each page
//! that `DELTA` entries wrote against the post-image checksum of its last entry
//! ([`PostImageChecks`]; `docs/design.md`, "DELTA records", says why once per page is as
//! strict as once per entry for the image replay leaves). Recovery (`recover.rs`, step 4b) replays into
//! the heap's own region; offline inspection (`inspect/`) into a private mapping at the heap's
//! address, for `snapheap check` and `snapheap info`. `Heap::verify` rebuilds the image window
//! by window instead and shares the `DELTA` decoding (`disk::journal::for_each_delta_entry`).
//!
//! # Invariants
//!
//! - Every group has `extent <= max_size`, `extent % SEGMENT == 0`; every run lies in
//!   `[0, extent)` of its group and starts on a page; anything else is `Error::Corrupt` naming
//!   the journal and the byte offset (of the group's first record, or of the run's payload), and nothing after it is applied.
//! - Each write is reported to the caller's `written` callback in replay order, once per
//!   `PAGES` run and once per `DELTA` page, after it was applied.
//! - After [`Replay::finish`] returned `Ok` (with [`Target::Write`]), every page a `DELTA`
//!   entry wrote and no later `PAGES` run replaced has the checksum its last entry recorded;
//!   a mismatch is `Error::Corrupt` naming that entry's journal and the file offset of its
//!   `post_crc` field.
//!
//! # Safety
//!
//! With [`Target::Write`] the region is mapped read-write up to each group's extent before
//! a page of the group is written, and the caller guarantees that nothing else refers into the
//! region while replay runs (recovery: nothing is handed out yet; inspection: the mapping is
//! private to the check). Each `unsafe` block states its range.

use crate::disk::format::delta::check_post_image;
use crate::disk::format::journal::RECORD_HEADER_LEN;
use crate::disk::journal::{for_each_delta_entry_in, read_run, JournalScan, RunReader};
use crate::error::{Error, Result};
use crate::io::Vfs;
use crate::mem::alloc::SEGMENT;
use crate::mem::region::Region;
use crate::mem::sysmem::SysVec;
use crate::sys::OS_PAGE;
use std::alloc::System;
use std::path::{Path, PathBuf};

/// Where replay puts the pages.
pub(crate) enum Target<'a> {
    /// Grow the region to each group's extent and write the pages into it.
    Write(&'a mut Region),
    /// Adopting a detached heap (`detach.rs`): its memory already holds the pages, up to
    /// `mapped` bytes. Every record is read and decoded (damage is reported as on any open)
    /// and nothing is written; a `DELTA` entry's post-image check needs the intermediate
    /// images, which this does not rebuild. A group beyond `mapped` is `Error::Detached`.
    Check {
        /// Bytes of the detached heap still mapped.
        mapped: usize,
        /// The heap directory (for the error).
        dir: &'a Path,
    },
}

/// One write of replay, as reported to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Write {
    /// Region offset of the first byte written (a page boundary).
    pub region_offset: u64,
    /// Bytes written (whole pages).
    pub len: u64,
    /// File offset in the journal of the data: a `PAGES` run's first payload byte (the
    /// first page's image), or a `DELTA` record's payload.
    pub file_offset: u64,
    /// Whether it came from a `DELTA` record (the file holds changed words, not the image).
    pub delta: bool,
}

/// Settings of one replay.
pub(crate) struct Replay<'a> {
    /// The heap's size limit (a group extent above it is damage).
    pub max_size: u64,
    /// Where the pages go.
    pub target: Target<'a>,
    /// Planted bug (tests only): zero a page before applying a `DELTA` entry to it.
    pub planted_zero_base: bool,
    /// The post-image checks still to do, across the journals of the chain.
    checks: PostImageChecks,
    /// The journals replayed so far, in order (the checks name them by index).
    journals: Vec<PathBuf>,
}

impl<'a> Replay<'a> {
    /// A replay into `target` of a heap of `max_size` bytes.
    pub(crate) fn new(max_size: u64, target: Target<'a>) -> Replay<'a> {
        Replay {
            max_size,
            target,
            planted_zero_base: false,
            checks: PostImageChecks::new(),
            journals: Vec::new(),
        }
    }

    /// The end of a replay: checks every page `DELTA` entries wrote (and no later whole image
    /// replaced) against its last entry's `post_crc`, in the region at `base` (module doc).
    /// Does nothing for [`Target::Check`], which rebuilds no image. Call it once, after the
    /// last journal replayed (or the last one replayed without error).
    pub(crate) fn finish(&self) -> Result<()> {
        let Target::Write(region) = &self.target else {
            return Ok(());
        };
        let base = region.base();
        for c in self.checks.pending.iter().filter(|c| c.page != LAPSED) {
            // SAFETY: the page was written by this replay, so it lies inside an extent the
            // region was grown to (replay never shrinks it); nothing else refers into the
            // region while replay runs (module doc).
            let page = unsafe { std::slice::from_raw_parts((base + c.page as usize) as *const u8, OS_PAGE) };
            check_post_image(page, c.post_crc, 0).map_err(|e| {
                Error::corrupt(
                    &self.journals[c.journal as usize],
                    c.entry_at + e.offset as u64,
                    e.to_string(),
                )
            })?;
        }
        Ok(())
    }
}

/// A pending check's page once a whole image replaced it.
const LAPSED: u64 = u64::MAX;

/// The post-image checks of a replay's `DELTA` entries, one per page: the checksum of the last
/// entry applied to a page since its last whole image, checked by [`Replay::finish`] against
/// the image replay leaves. Checking after every entry cost a crc32 of the whole page per
/// entry (a 100,000-record load journals about 80,000 entries on 6,000 pages).
struct PostImageChecks {
    /// Per page index: 1 + the index of its check in `pending`, or 0 (grown on demand up to
    /// the highest page an entry wrote, which lies inside the group's extent).
    by_page: SysVec<u32>,
    pending: SysVec<PendingCheck>,
}

struct PendingCheck {
    /// Region offset of the page, or [`LAPSED`].
    page: u64,
    post_crc: u32,
    /// Index of the journal in `Replay::journals`.
    journal: u32,
    /// File offset of the entry in that journal.
    entry_at: u64,
}

impl PostImageChecks {
    fn new() -> Self {
        PostImageChecks {
            by_page: SysVec::new_in(System),
            pending: SysVec::new_in(System),
        }
    }

    /// A `DELTA` entry with checksum `post_crc` (at file offset `entry_at` of journal
    /// `journal`) was applied to the page at region offset `page`.
    fn entry_applied(&mut self, page: u64, post_crc: u32, journal: u32, entry_at: u64) {
        let i = (page / OS_PAGE as u64) as usize;
        if self.by_page.len() <= i {
            self.by_page.resize(i + 1, 0);
        }
        let check = PendingCheck {
            page,
            post_crc,
            journal,
            entry_at,
        };
        match self.by_page[i] {
            0 => {
                self.pending.push(check);
                self.by_page[i] = self.pending.len() as u32;
            }
            k => self.pending[k as usize - 1] = check,
        }
    }

    /// Whole page images replaced `[from, to)` (region offsets, page-aligned): their pending
    /// checks lapse.
    fn pages_written(&mut self, from: u64, to: u64) {
        let first = (from / OS_PAGE as u64) as usize;
        let last = ((to / OS_PAGE as u64) as usize).min(self.by_page.len());
        for i in first..last {
            let k = std::mem::take(&mut self.by_page[i]);
            if k != 0 {
                self.pending[k as usize - 1].page = LAPSED;
            }
        }
    }
}

/// Replays the complete groups of `scan` (see the module doc), calling `written` after each
/// write. Returns the pages written (counted once per write).
pub(crate) fn replay_journal(
    vfs: &dyn Vfs,
    rp: &mut Replay<'_>,
    scan: &JournalScan,
    written: &mut dyn FnMut(Write),
) -> Result<u64> {
    let path = &scan.path;
    let journal = rp.journals.len() as u32;
    rp.journals.push(path.clone());
    let f = vfs.open(path, false).map_err(|e| Error::io("open", path, e))?;
    let mut reader = RunReader::new(&*f, path)?;
    let page = OS_PAGE as u64;
    let mut pages = 0u64;
    for g in &scan.groups {
        let runs = &scan.runs[g.runs.clone()];
        let group_at = runs.first().map_or(0, |r| r.file_offset - RECORD_HEADER_LEN as u64);
        if g.extent > rp.max_size || g.extent % SEGMENT as u64 != 0 {
            return Err(Error::corrupt(
                path,
                group_at,
                format!("commit {} has extent {:#x} outside the heap", g.seq, g.extent),
            ));
        }
        let base = match &mut rp.target {
            Target::Write(region) => {
                region
                    .grow(g.extent as usize)
                    .map_err(|e| Error::io("mmap (grow heap)", path, e))?;
                Some(region.base())
            }
            Target::Check { mapped, dir } => {
                if g.extent as usize > *mapped {
                    return Err(Error::Detached {
                        dir: dir.to_path_buf(),
                        reason: format!(
                            "its files describe {:#x} bytes, more than the {:#x} bytes still mapped",
                            g.extent, mapped
                        ),
                    });
                }
                None
            }
        };
        for run in runs {
            let pages_run = run.delta_entries.is_none();
            if run.region_offset % page != 0
                || (pages_run && run.len % page != 0)
                || run.region_end > g.extent
                || run.region_end <= run.region_offset
            {
                return Err(Error::corrupt(
                    path,
                    run.file_offset,
                    format!(
                        "page run {:#x}..{:#x} lies outside the heap extent {:#x}",
                        run.region_offset, run.region_end, g.extent
                    ),
                ));
            }
            if pages_run {
                match base {
                    Some(base) => {
                        let addr = base + run.region_offset as usize;
                        // SAFETY: [addr, addr + len) lies inside the group's extent (checked
                        // above), which is mapped read-write (grown above), and nothing else
                        // refers into the region while replay runs (module doc).
                        let dst = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, run.len as usize) };
                        read_run(&*f, path, run, dst)?;
                        rp.checks.pages_written(run.region_offset, run.region_end);
                    }
                    None => {
                        reader.payload(run)?;
                    }
                }
                pages += run.len / page;
                written(Write {
                    region_offset: run.region_offset,
                    len: run.len,
                    file_offset: run.file_offset,
                    delta: false,
                });
                continue;
            }
            let zero = rp.planted_zero_base;
            let checks = &mut rp.checks;
            let payload = reader.payload(run)?;
            for_each_delta_entry_in(path, run, payload, &mut |e| {
                if let Some(base) = base {
                    let addr = base + e.page as usize;
                    // SAFETY: the page lies in [region_offset, region_end) (checked by
                    // for_each_delta_entry), inside the group's extent (checked above), which
                    // is mapped read-write; nothing else refers into the region (module doc).
                    let page = unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, OS_PAGE) };
                    if zero {
                        page.fill(0); // planted bug (tests only): the wrong base
                    }
                    e.write_runs(page);
                    checks.entry_applied(e.page, e.post_crc, journal, run.file_offset + e.at as u64);
                }
                pages += 1;
                written(Write {
                    region_offset: e.page,
                    len: page,
                    file_offset: run.file_offset,
                    delta: true,
                });
                Ok(())
            })?;
        }
    }
    Ok(pages)
}
