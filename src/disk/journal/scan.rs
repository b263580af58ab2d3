//! Validating a journal for recovery: [`scan_journal`] streams a file through a bounded
//! window, checks every record and decides where the valid prefix ends (torn tail versus
//! damage); [`read_run`] copies one page run's payload. See also `writer.rs` (the bytes it
//! reads are written there) and [`crate::disk::format::journal`] (the layout).
//!
//! # Invariants
//!
//! See the journal module doc (`mod.rs`): `FIRST_RECORD_OFFSET <= valid_end <= file_len`,
//! and nothing read from disk is trusted before its checksum verified.

#![forbid(unsafe_code)]

use super::{Group, JournalHeader, JournalScan, PageRun};
use crate::disk::format::delta::{DeltaError, Entries, Entry, ENTRY_PAGE_OFFSET, PAGE_SIZE as DELTA_PAGE};
use crate::disk::format::journal::{
    decode_header, verify_record_crc, HeaderError, RecordHeader, DELTA_VERSION, FIRST_RECORD_OFFSET, HEADER_AREA_LEN,
    HEADER_LEN, HEAP_ID_OFFSET, JOURNAL_ID_OFFSET, KIND_COMMIT, KIND_DELTA, KIND_PAGES, MAX_RECORD_LEN, RECORD_ALIGN,
    RECORD_HEADER_LEN, START_SEQ_OFFSET,
};
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::sysmem::SysVec;
use std::alloc::System;
use std::path::Path;

/// Largest size of the scanner's read window. It holds any record, and since a refill starts
/// at the record that needed it, the window moves forward at least the window's length minus
/// the record's per refill, so the evidence scan reads each byte at most about twice.
const WINDOW_LEN: usize = 2 << 20;
/// The window's first size: it grows (up to [`WINDOW_LEN`]) only for a record that does not
/// fit. Each page of a fresh buffer costs a page fault when first written (2-3 us each on
/// the VMs here), so a 2 MiB window cost about 1 ms per journal before a byte was read.
const WINDOW_FIRST_LEN: usize = 256 << 10;
const _: () = assert!(WINDOW_LEN as u64 >= MAX_RECORD_LEN + (512 << 10));
/// How far [`examine_tail`] looks ahead at once for words of zeros to skip.
const ZERO_SKIP_CHUNK: u64 = 64 << 10;
const _: () = assert!(ZERO_SKIP_CHUNK <= WINDOW_LEN as u64 && ZERO_SKIP_CHUNK % RECORD_ALIGN == 0 && RECORD_ALIGN == 8);
/// Reads and validates a whole journal (see `docs/design.md ("Journal files")` for the rules),
/// streaming it through a window of at most [`WINDOW_LEN`] bytes.
///
/// `is_last` says whether this is the newest journal of the heap: only that one may end in
/// a torn tail. Returns `Error::Corrupt` for damage that a crash cannot explain,
/// `Error::Incompatible` for another format version.
pub(crate) fn scan_journal(
    vfs: &dyn Vfs,
    path: &Path,
    heap_id: u64,
    journal_id: u64,
    is_last: bool,
) -> Result<JournalScan> {
    let file = vfs.open(path, false).map_err(|e| Error::io("open", path, e))?;
    scan_file(&*file, path, heap_id, journal_id, is_last)
}

/// Copies a [`PageRun`]'s payload into `dst` (`dst.len() == run.len`).
pub(crate) fn read_run(file: &dyn VFile, path: &Path, run: &PageRun, dst: &mut [u8]) -> Result<()> {
    if dst.len() as u64 != run.len {
        return Err(Error::invalid(format!(
            "read_run: buffer of {} bytes for a run of {} bytes",
            dst.len(),
            run.len
        )));
    }
    let n = file
        .read_at(dst, run.file_offset)
        .map_err(|e| Error::io("read", path, e))?;
    if n != dst.len() {
        return Err(Error::corrupt(
            path,
            run.file_offset + n as u64,
            "journal became shorter after it was scanned",
        ));
    }
    Ok(())
}

/// Reads a `DELTA` record's payload into `buf`, decodes it again with the scanner's checks
/// (the file could have changed since it was scanned) and calls `visit` with each entry in
/// order. Every entry must name a page of the record (`[region_offset, region_end)`). A
/// failure of `visit` (applying the entry, say) is reported at the entry's field. Errors name
/// the file and byte offset. Replay (`engine/replay.rs`) and `Heap::verify` both apply
/// `DELTA` records through this.
pub(crate) fn for_each_delta_entry(
    file: &dyn VFile,
    path: &Path,
    run: &PageRun,
    buf: &mut SysVec<u8>,
    visit: &mut dyn FnMut(&Entry<'_>) -> std::result::Result<(), DeltaError>,
) -> Result<()> {
    let Some(count) = run.delta_entries else {
        return Err(Error::invalid("for_each_delta_entry: a PAGES record"));
    };
    buf.clear();
    buf.resize(run.len as usize, 0);
    read_run(file, path, run, buf)?;
    visit_delta_entries(path, run, count, buf, visit)
}

/// [`for_each_delta_entry`] on a payload already read (by a [`RunReader`]).
pub(crate) fn for_each_delta_entry_in(
    path: &Path,
    run: &PageRun,
    payload: &[u8],
    visit: &mut dyn FnMut(&Entry<'_>) -> std::result::Result<(), DeltaError>,
) -> Result<()> {
    let Some(count) = run.delta_entries else {
        return Err(Error::invalid("for_each_delta_entry_in: a PAGES record"));
    };
    if payload.len() as u64 != run.len {
        return Err(Error::invalid(
            "for_each_delta_entry_in: payload of another length than the run",
        ));
    }
    visit_delta_entries(path, run, count, payload, visit)
}

fn visit_delta_entries(
    path: &Path,
    run: &PageRun,
    count: u32,
    buf: &[u8],
    visit: &mut dyn FnMut(&Entry<'_>) -> std::result::Result<(), DeltaError>,
) -> Result<()> {
    let at = |off: usize| run.file_offset + off as u64;
    for e in Entries::new(buf, count) {
        let e = e.map_err(|e| Error::corrupt(path, at(e.offset), e.to_string()))?;
        if e.page < run.region_offset || e.page >= run.region_end {
            return Err(Error::corrupt(
                path,
                at(e.at + ENTRY_PAGE_OFFSET),
                format!(
                    "DELTA entry for page {:#x} outside the record's pages {:#x}..{:#x} (changed since the scan)",
                    e.page, run.region_offset, run.region_end
                ),
            ));
        }
        visit(&e).map_err(|d| Error::corrupt(path, at(d.offset), d.to_string()))?;
    }
    Ok(())
}

/// Reads the payloads of one journal's page runs, visited in file order, through a bounded
/// window: one read system call per window instead of one per record. (Replaying a journal
/// of 6,000 one-record groups cost 6,000 `pread`s, most of an open that adopts its memory.)
pub(crate) struct RunReader<'a> {
    window: Window<'a>,
}

impl<'a> RunReader<'a> {
    /// A reader of `file` (at `path`, for errors) as long as it is now.
    pub(crate) fn new(file: &'a dyn VFile, path: &'a Path) -> Result<Self> {
        let len = file.len().map_err(|e| Error::io("fstat", path, e))?;
        Ok(RunReader {
            window: Window::new(file, path, len),
        })
    }

    /// The payload of `run` (as [`read_run`] copies it), valid until the next call.
    pub(crate) fn payload(&mut self, run: &PageRun) -> Result<&[u8]> {
        let w = &self.window;
        let end = run.file_offset.saturating_add(run.len);
        if end > w.file_len {
            return Err(Error::corrupt(
                w.path,
                w.file_len,
                "journal became shorter after it was scanned",
            ));
        }
        if run.len > WINDOW_LEN as u64 {
            return Err(Error::invalid(format!(
                "RunReader: a run of {} bytes does not fit the read window",
                run.len
            )));
        }
        self.window.get(run.file_offset, run.len as usize)
    }
}

/// A bounded read window over a file.
struct Window<'a> {
    file: &'a dyn VFile,
    path: &'a Path,
    file_len: u64,
    buf: SysVec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    filled: usize,
}

impl<'a> Window<'a> {
    fn new(file: &'a dyn VFile, path: &'a Path, file_len: u64) -> Self {
        let cap = file_len.min(WINDOW_FIRST_LEN as u64) as usize;
        let mut buf = SysVec::new_in(System);
        buf.resize(cap, 0);
        Window {
            file,
            path,
            file_len,
            buf,
            start: 0,
            filled: 0,
        }
    }

    /// The file bytes `[off, off + len)`; the caller ensures `off + len <= file_len` and
    /// `len <= WINDOW_LEN`.
    fn get(&mut self, off: u64, len: usize) -> Result<&[u8]> {
        let end = off.saturating_add(len as u64);
        if end > self.file_len || len > WINDOW_LEN {
            debug_assert!(false, "window read {off}+{len} out of bounds");
            return Err(Error::corrupt(self.path, off, "read past the end of the journal"));
        }
        if off < self.start || end > self.start + self.filled as u64 {
            if len > self.buf.len() {
                // `len <= WINDOW_LEN` and `off + len <= file_len` (checked above).
                let grown = len.max(2 * self.buf.len()).min(WINDOW_LEN);
                self.buf.resize(grown, 0);
            }
            let want = (self.file_len - off).min(self.buf.len() as u64) as usize;
            let n = self
                .file
                .read_at(&mut self.buf[..want], off)
                .map_err(|e| Error::io("read", self.path, e))?;
            self.start = off;
            self.filled = n;
            if n < len {
                return Err(Error::corrupt(
                    self.path,
                    off + n as u64,
                    "journal became shorter while it was being read",
                ));
            }
        }
        let s = (off - self.start) as usize;
        Ok(&self.buf[s..s + len])
    }
}

/// Where and why the valid prefix of records stopped.
struct Stop {
    at: u64,
    why: &'static str,
}

/// Validates the header and walks the records; see [`scan_journal`].
fn scan_file(file: &dyn VFile, path: &Path, heap_id: u64, journal_id: u64, is_last: bool) -> Result<JournalScan> {
    let file_len = file.len().map_err(|e| Error::io("fstat", path, e))?;
    let header = check_header(file, path, file_len, heap_id, journal_id)?;
    let Some(first_seq) = header.start_seq.checked_add(1) else {
        return Err(Error::corrupt(
            path,
            START_SEQ_OFFSET as u64,
            "start sequence number overflows",
        ));
    };
    let mut w = Window::new(file, path, file_len);
    let mut groups: SysVec<Group> = SysVec::new_in(System);
    let mut runs: SysVec<PageRun> = SysVec::new_in(System);
    let mut pos = FIRST_RECORD_OFFSET;
    // State of the group being read.
    let mut seq = first_seq;
    let mut group_start = pos;
    let mut group_runs = 0usize;
    let mut pages_records = 0u64;

    let stop = loop {
        if pos == file_len {
            break (group_start != pos).then_some(Stop {
                at: pos,
                why: "the file ends inside a group (no COMMIT record)",
            });
        }
        if file_len - pos < RECORD_HEADER_LEN as u64 {
            break Some(Stop {
                at: pos,
                why: "partial record header at the end of the file",
            });
        }
        let Some(h) = RecordHeader::decode(w.get(pos, RECORD_HEADER_LEN)?) else {
            break Some(Stop {
                at: pos,
                why: "partial record header",
            });
        };
        if let Err(why) = h.check_shape() {
            break Some(Stop { at: pos, why });
        }
        let rec_len = h.record_len();
        if rec_len > file_len - pos {
            break Some(Stop {
                at: pos,
                why: "record extends past the end of the file",
            });
        }
        if !verify_record_crc(w.get(pos, RECORD_HEADER_LEN + h.len as usize)?, header.salt) {
            break Some(Stop {
                at: pos,
                why: "record checksum does not match",
            });
        }
        // The checksum verified, so a writer put exactly these bytes here: a mismatch with
        // the context is damage or a bug, never a torn write.
        if let Err(e) = h.check_context(pos, seq) {
            return Err(Error::corrupt(path, pos, e.to_string()));
        }
        if h.kind == KIND_PAGES {
            runs.push(PageRun {
                file_offset: pos + RECORD_HEADER_LEN as u64,
                region_offset: h.arg,
                len: u64::from(h.len),
                delta_entries: None,
                region_end: h.arg + u64::from(h.len),
            });
            pages_records += 1;
        } else if h.kind == KIND_DELTA {
            if header.version < DELTA_VERSION {
                return Err(Error::corrupt(
                    path,
                    pos,
                    format!("DELTA record in a version {} journal", header.version),
                ));
            }
            // Validated whole before anything is applied; its checksum verified, so a bad
            // entry is damage or a bug, never a torn write.
            let payload_at = pos + RECORD_HEADER_LEN as u64;
            let payload = w.get(payload_at, h.len as usize)?;
            let (mut first, mut last) = (None, 0);
            for e in Entries::new(payload, h.count) {
                let e = e.map_err(|e| Error::corrupt(path, payload_at + e.offset as u64, e.to_string()))?;
                first.get_or_insert(e.page);
                last = e.page;
            }
            runs.push(PageRun {
                file_offset: payload_at,
                region_offset: first.unwrap_or(0),
                len: u64::from(h.len),
                delta_entries: Some(h.count),
                region_end: last + DELTA_PAGE as u64,
            });
            pages_records += 1;
        } else {
            debug_assert_eq!(h.kind, KIND_COMMIT);
            if u64::from(h.count) != pages_records {
                return Err(Error::corrupt(
                    path,
                    pos,
                    format!(
                        "COMMIT record of sequence {seq} counts {} PAGES and DELTA records, its group has {pages_records}",
                        h.count
                    ),
                ));
            }
            groups.push(Group {
                seq,
                extent: h.arg,
                runs: group_runs..runs.len(),
                start: group_start,
                end: pos + rec_len,
            });
            group_start = pos + rec_len;
            group_runs = runs.len();
            pages_records = 0;
            seq = match seq.checked_add(1) {
                Some(s) => s,
                None => return Err(Error::corrupt(path, pos, "sequence number overflows")),
            };
        }
        pos += rec_len;
    };

    let mut zero_tail = true;
    let valid_end = match stop {
        None => pos,
        Some(stop) => {
            let tail = examine_tail(&mut w, header.salt, stop.at, seq)?;
            if let Some(ev) = tail.evidence {
                return Err(Error::corrupt(
                    path,
                    stop.at,
                    format!(
                        "{}; the record at offset {} (sequence {}) was written after every byte before offset {} was durable, so this is damage to durable data, not a torn write",
                        stop.why, ev.at, ev.seq, ev.synced
                    ),
                ));
            }
            let zero_end = stop.at == group_start && tail.all_zero;
            zero_tail = zero_end;
            if !is_last && !zero_end {
                return Err(Error::corrupt(
                    path,
                    stop.at,
                    format!(
                        "{}, in a journal that is not the newest (it was made durable before the next one was created)",
                        stop.why
                    ),
                ));
            }
            runs.truncate(group_runs);
            group_start
        }
    };
    Ok(JournalScan {
        path: path.to_path_buf(),
        header,
        groups,
        runs,
        valid_end,
        zero_tail,
        file_len,
    })
}

/// Reads and checks the header area.
fn check_header(file: &dyn VFile, path: &Path, file_len: u64, heap_id: u64, journal_id: u64) -> Result<JournalHeader> {
    let mut area = [0u8; HEADER_AREA_LEN];
    let n = file.read_at(&mut area, 0).map_err(|e| Error::io("read", path, e))?;
    if n < HEADER_LEN {
        return Err(Error::corrupt(
            path,
            n as u64,
            HeaderError::Short { len: n }.to_string(),
        ));
    }
    let header = decode_header(&area[..n]).map_err(|e| match e {
        HeaderError::UnsupportedVersion(_) => Error::incompatible(format!("{}: {e}", path.display())),
        _ => Error::corrupt(path, e.offset(), e.to_string()),
    })?;
    if header.heap_id != heap_id {
        return Err(Error::corrupt(
            path,
            HEAP_ID_OFFSET as u64,
            format!("journal belongs to heap {:#018x}, not {heap_id:#018x}", header.heap_id),
        ));
    }
    if header.journal_id != journal_id {
        return Err(Error::corrupt(
            path,
            JOURNAL_ID_OFFSET as u64,
            format!(
                "header says journal {:#x}, the file name says {journal_id:#x}",
                header.journal_id
            ),
        ));
    }
    if n < HEADER_AREA_LEN || file_len < FIRST_RECORD_OFFSET {
        return Err(Error::corrupt(
            path,
            n as u64,
            format!("file is {file_len} bytes, shorter than the {HEADER_AREA_LEN}-byte header area"),
        ));
    }
    if let Some(i) = area[HEADER_LEN..].iter().position(|&b| b != 0) {
        return Err(Error::corrupt(
            path,
            (HEADER_LEN + i) as u64,
            "header area padding is not zero",
        ));
    }
    Ok(header)
}

/// A record after the damage proving that the damaged bytes had been durable.
struct Evidence {
    at: u64,
    seq: u64,
    synced: u64,
}

/// What lies after the first invalid record.
struct Tail {
    evidence: Option<Evidence>,
    /// Every byte in `[x, file_len)` is zero.
    all_zero: bool,
}

/// Examines `[x, file_len)` after the first invalid record at `x`: looks at every 8-aligned
/// offset past `x` for a record of this file (checksum verifies with its salt) of the group
/// being read or a later one whose `synced` covers `x`. Candidates are prefiltered on their
/// header so that only plausible ones are checksummed; the checksummed bytes are bounded by
/// twice the file length plus 64 MiB, beyond which the tail is reported as corrupt rather
/// than analysed further (only a crafted file gets there).
fn examine_tail(w: &mut Window<'_>, salt: u64, x: u64, expected_seq: u64) -> Result<Tail> {
    let file_len = w.file_len;
    let mut budget = file_len.saturating_mul(2).saturating_add(64 << 20);
    let mut all_zero = true;
    let mut o = x;
    while o < file_len {
        // An all-zero word at `o` can neither start a candidate (its `kind` would be 0) nor
        // clear `all_zero`, so runs of them (the writer's pre-zeroed space, megabytes after
        // every crash) are skipped in bulk instead of decoding a header at every offset.
        let chunk = ((file_len - o).min(ZERO_SKIP_CHUNK) / RECORD_ALIGN * RECORD_ALIGN) as usize;
        if chunk > 0 {
            let zeros = w.get(o, chunk)?.chunks_exact(8).take_while(|c| *c == [0u8; 8]).count();
            if zeros > 0 {
                o += zeros as u64 * RECORD_ALIGN;
                continue;
            }
        }
        let avail = (file_len - o).min(RECORD_HEADER_LEN as u64) as usize;
        let hb = w.get(o, avail)?;
        if all_zero && hb[..avail.min(RECORD_ALIGN as usize)].iter().any(|&b| b != 0) {
            all_zero = false;
        }
        let candidate = match RecordHeader::decode(hb) {
            Some(h)
                if o > x
                    && h.synced > x
                    && h.synced <= o
                    && h.seq >= expected_seq
                    && h.check_shape().is_ok()
                    && h.record_len() <= file_len - o =>
            {
                Some(h)
            }
            _ => None,
        };
        if let Some(h) = candidate {
            let n = RECORD_HEADER_LEN + h.len as usize;
            budget = match budget.checked_sub(n as u64) {
                Some(b) => b,
                None => {
                    return Err(Error::corrupt(
                        w.path,
                        x,
                        "too many record-like headers after a damaged record to tell a torn tail from damage",
                    ))
                }
            };
            if verify_record_crc(w.get(o, n)?, salt) {
                let evidence = Evidence {
                    at: o,
                    seq: h.seq,
                    synced: h.synced,
                };
                return Ok(Tail {
                    evidence: Some(evidence),
                    all_zero: false,
                });
            }
        }
        o += RECORD_ALIGN;
    }
    Ok(Tail {
        evidence: None,
        all_zero,
    })
}
