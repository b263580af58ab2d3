//! The commit journal files: their names, the [`JournalWriter`] that appends one commit
//! *group* per commit, and [`scan_journal`], which validates a journal for recovery and
//! decides where its valid prefix ends. The byte layout is in [`crate::disk::format::journal`];
//! the rules are in `docs/design.md ("Journal files")`.
//!
//! # Invariants
//!
//! - A journal file named `journal-{id:016x}` always holds a complete, durable header: the
//!   writer creates it as `journal-{id:016x}.tmp`, writes and syncs the header, then renames
//!   it and syncs the directory.
//! - Groups in a file have consecutive sequence numbers `start_seq + 1, start_seq + 2, ..`;
//!   group `k` occupies `[end(k-1), end(k))` with `end(0) = FIRST_RECORD_OFFSET`.
//! - Writer: `FIRST_RECORD_OFFSET <= end <= zeroed_end <= file length`, and the bytes
//!   `[end, zeroed_end)` were written as zeros by this writer (pre-zeroed space).
//! - Scan: `FIRST_RECORD_OFFSET <= valid_end <= file_len`; `groups[i].seq == start_seq + 1 + i`;
//!   `groups[i].runs` are consecutive, disjoint ranges of `runs` covering all of it; every
//!   run satisfies `file_offset + len <= valid_end`.
//! - Nothing read from disk is trusted before its checksum verified; buffers are bounded by
//!   `min(WINDOW_LEN, file length)` and the run list by `file length / 4136` entries.

use crate::disk::format::journal::{
    decode_header, encode_header, seal_record, verify_record_crc, HeaderError, RecordHeader, FIRST_RECORD_OFFSET,
    HEADER_AREA_LEN, HEADER_LEN, HEAP_ID_OFFSET, JOURNAL_ID_OFFSET, KIND_COMMIT, KIND_PAGES, MAX_PAGES_PAYLOAD,
    MAX_RECORD_LEN, PAGE_SIZE, RECORD_ALIGN, RECORD_HEADER_LEN, START_SEQ_OFFSET,
};
use crate::io::{VFile, Vfs};
use crate::{Error, Result, SysVec};
use std::alloc::System;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use crate::disk::format::journal::JournalHeader;

/// File name prefix of journals.
const NAME_PREFIX: &str = "journal-";
/// Suffix of a journal being created; such a file never holds commits and may be deleted.
pub(crate) const JOURNAL_TEMP_SUFFIX: &str = ".tmp";
/// Size of the scanner's read window. It holds any record, and since a refill starts at the
/// record that needed it, the window moves forward at least `WINDOW_LEN - MAX_RECORD_LEN`
/// bytes per refill, so the evidence scan reads each byte at most about twice.
const WINDOW_LEN: usize = 2 << 20;
const _: () = assert!(WINDOW_LEN as u64 >= MAX_RECORD_LEN + (512 << 10));
/// How far [`examine_tail`] looks ahead at once for words of zeros to skip.
const ZERO_SKIP_CHUNK: u64 = 64 << 10;
const _: () = assert!(ZERO_SKIP_CHUNK <= WINDOW_LEN as u64 && ZERO_SKIP_CHUNK % RECORD_ALIGN == 0 && RECORD_ALIGN == 8);
/// Default step in which the writer pre-zeroes space ahead of the end (see
/// [`JournalWriter::set_prezero_step`]).
pub(crate) const DEFAULT_PREZERO_STEP: u64 = 4 << 20;
/// Groups of this many bytes or more are written without pre-zeroing ahead of them
/// (measured on the map benchmark: 1,000-insert commits of about 4 MiB wrote 6.1 MiB each with
/// pre-zeroing and 4.0 MiB without, and ran 1.2x-2x faster).
const PREZERO_MAX_GROUP: usize = 1 << 20;
/// Size of the zero buffer used for pre-zeroing.
const ZERO_CHUNK: usize = 256 << 10;
/// Capacity of the encode buffer kept after writing an unusually large group.
const RETAINED_BUFFER: usize = 16 << 20;

/// The file name of journal `id`: `journal-{id:016x}`.
pub(crate) fn journal_file_name(id: u64) -> String {
    format!("{NAME_PREFIX}{id:016x}")
}

/// The id in a journal file name, or `None` when `name` is not exactly
/// `journal-` followed by 16 lowercase hex digits (so `journal-*.tmp` is `None`).
pub(crate) fn parse_journal_file_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix(NAME_PREFIX)?;
    let ok = hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// Where the payload of one `PAGES` record lies in the journal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageRun {
    /// File offset of the first payload byte.
    pub file_offset: u64,
    /// Byte offset in the heap region of the first page (a multiple of 4096).
    pub region_offset: u64,
    /// Payload length in bytes (a multiple of 4096, at most 1 MiB).
    pub len: u64,
}

/// One complete commit group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    /// Its commit sequence number.
    pub seq: u64,
    /// The region extent in bytes at this commit.
    pub extent: u64,
    /// Its page runs: indexes into [`JournalScan::runs`], in write order.
    pub runs: Range<usize>,
}

/// The result of validating one journal file.
#[derive(Debug)]
pub(crate) struct JournalScan {
    /// The file scanned.
    pub path: PathBuf,
    /// Its header.
    pub header: JournalHeader,
    /// Its complete groups, in order.
    pub groups: SysVec<Group>,
    /// The page runs of all groups.
    pub runs: SysVec<PageRun>,
    /// End of the last complete group; bytes after it are a torn tail or pre-zeroed space.
    pub valid_end: u64,
    /// The file length when scanned.
    #[allow(dead_code)] // part of the recovery report; the engine does not need it yet
    pub file_len: u64,
}

impl JournalScan {
    /// Sequence number of the last complete group, or `start_seq` when there is none.
    pub(crate) fn last_seq(&self) -> u64 {
        self.groups.last().map_or(self.header.start_seq, |g| g.seq)
    }
}

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
        let cap = file_len.min(WINDOW_LEN as u64) as usize;
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
        if end > self.file_len || len > self.buf.len() {
            debug_assert!(false, "window read {off}+{len} out of bounds");
            return Err(Error::corrupt(self.path, off, "read past the end of the journal"));
        }
        if off < self.start || end > self.start + self.filled as u64 {
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
            });
            pages_records += 1;
        } else {
            debug_assert_eq!(h.kind, KIND_COMMIT);
            if u64::from(h.count) != pages_records {
                return Err(Error::corrupt(
                    path,
                    pos,
                    format!(
                        "COMMIT record of sequence {seq} counts {} PAGES records, its group has {pages_records}",
                        h.count
                    ),
                ));
            }
            groups.push(Group {
                seq,
                extent: h.arg,
                runs: group_runs..runs.len(),
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

/// Appends commit groups to one journal file.
pub(crate) struct JournalWriter {
    file: Arc<dyn VFile>,
    path: PathBuf,
    id: u64,
    salt: u64,
    /// End of the last group written.
    end: u64,
    /// `[end, zeroed_end)` holds zeros written by this writer.
    zeroed_end: u64,
    next_seq: u64,
    prezero_step: u64,
    /// The encoded group waiting for [`Self::write_encoded`].
    buf: SysVec<u8>,
    /// Sequence number of the group in `buf`, if one is encoded.
    encoded: Option<u64>,
    /// Zeros for pre-zeroing, allocated on first use.
    zeros: SysVec<u8>,
}

impl JournalWriter {
    fn new(file: Arc<dyn VFile>, path: PathBuf, id: u64, salt: u64, end: u64, next_seq: u64) -> Self {
        JournalWriter {
            file,
            path,
            id,
            salt,
            end,
            zeroed_end: end,
            next_seq,
            prezero_step: DEFAULT_PREZERO_STEP,
            buf: SysVec::new_in(System),
            encoded: None,
            zeros: SysVec::new_in(System),
        }
    }

    /// Creates journal `id` in `dir`: writes the header into `journal-{id:016x}.tmp`,
    /// `sync_data`, renames it to its name, then `vfs.sync_dir(dir)`, so a journal under its
    /// real name always has a durable header. Refuses to replace an existing journal.
    pub(crate) fn create(vfs: &dyn Vfs, dir: &Path, heap_id: u64, id: u64, start_seq: u64) -> Result<Self> {
        let name = journal_file_name(id);
        let path = dir.join(&name);
        let Some(next_seq) = start_seq.checked_add(1) else {
            return Err(Error::invalid(format!("journal start sequence {start_seq} overflows")));
        };
        match vfs.open(&path, false) {
            Ok(_) => return Err(Error::invalid(format!("journal {} already exists", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open", &path, e)),
        }
        let tmp = dir.join(format!("{name}{JOURNAL_TEMP_SUFFIX}"));
        let file: Arc<dyn VFile> = Arc::from(vfs.open(&tmp, true).map_err(|e| Error::io("open", &tmp, e))?);
        let salt = crate::sys::random_u64();
        let header = JournalHeader {
            heap_id,
            journal_id: id,
            start_seq,
            salt,
        };
        let mut area = [0u8; HEADER_AREA_LEN];
        area[..HEADER_LEN].copy_from_slice(&encode_header(&header));
        let made = (|| {
            file.set_len(0).map_err(|e| Error::io("ftruncate", &tmp, e))?;
            file.write_at(&area, 0).map_err(|e| Error::io("write", &tmp, e))?;
            file.sync_data().map_err(|e| Error::io("fdatasync", &tmp, e))?;
            vfs.rename(&tmp, &path).map_err(|e| Error::io("rename", &tmp, e))?;
            vfs.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))
        })();
        if let Err(e) = made {
            // Best effort: a leftover temp file holds no commits either way.
            let _ = vfs.remove(&tmp);
            return Err(e);
        }
        Ok(Self::new(file, path, id, salt, FIRST_RECORD_OFFSET, next_seq))
    }

    /// Continues the last journal after recovery: truncates it to `scan.valid_end` when
    /// anything (a torn tail, pre-zeroed space) follows, then syncs it, so that `end()` is
    /// durable when this returns. The next group's sequence number is `scan.last_seq() + 1`.
    pub(crate) fn resume(vfs: &dyn Vfs, scan: &JournalScan) -> Result<Self> {
        let path = &scan.path;
        let Some(next_seq) = scan.last_seq().checked_add(1) else {
            return Err(Error::corrupt(path, scan.valid_end, "sequence number overflows"));
        };
        let file: Arc<dyn VFile> = Arc::from(vfs.open(path, false).map_err(|e| Error::io("open", path, e))?);
        let len = file.len().map_err(|e| Error::io("fstat", path, e))?;
        if len != scan.valid_end {
            // Durable before any new group is written: stale tail bytes of this file carry
            // this file's salt and could otherwise line up with new records.
            file.set_len(scan.valid_end)
                .map_err(|e| Error::io("ftruncate", path, e))?;
        }
        // Always: the groups just read may sit only in the page cache (the process died,
        // the OS did not), and the caller treats `end()` as durable from now on, so later
        // records will name it in their `synced` field.
        file.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
        let id = scan.header.journal_id;
        Ok(Self::new(
            file,
            path.clone(),
            id,
            scan.header.salt,
            scan.valid_end,
            next_seq,
        ))
    }

    /// Sets how far ahead of the end the writer writes zeros (0 disables). Overwriting
    /// written zeros lets `fdatasync` skip the metadata commit that extending the file or
    /// converting `fallocate`d extents needs (measured: 4 KiB-8 KiB appends synced in about
    /// 130 us instead of 170-250 us).
    #[allow(dead_code)] // a tuning knob: tests change it, the engine keeps the default
    pub(crate) fn set_prezero_step(&mut self, step: u64) {
        self.prezero_step = step;
    }

    /// Encodes one group into the internal buffer without writing it: `runs` are
    /// `(region_offset, bytes)` with both multiples of 4096; contiguous pages are coalesced
    /// into `PAGES` records of at most 1 MiB, then the `COMMIT` record carries `extent`.
    /// `seq` must be [`Self::next_seq`] and `synced` an offset `<= end()` already durable.
    /// Returns the encoded length. Does not allocate once the buffer has grown to the
    /// largest group size (cost: one memcpy and one crc32 pass over the payload).
    pub(crate) fn encode_group(&mut self, seq: u64, extent: u64, synced: u64, runs: &[(u64, &[u8])]) -> u64 {
        debug_assert_eq!(seq, self.next_seq, "groups must have consecutive sequence numbers");
        debug_assert!(
            synced <= self.end,
            "synced {synced} is past the journal end {}",
            self.end
        );
        const MAX: usize = MAX_PAGES_PAYLOAD as usize;
        let payload: usize = runs.iter().map(|r| r.1.len()).sum();
        let max_records = runs.len() + payload / MAX + 1;
        self.buf.clear();
        self.buf.reserve(payload + max_records * RECORD_HEADER_LEN);
        let header = move |kind, len: usize, count, arg| RecordHeader {
            crc: 0,
            kind,
            flags: 0,
            len: len as u32,
            count,
            seq,
            arg,
            synced,
        };
        let pages = move |len: usize, start| header(KIND_PAGES, len, (len as u64 / PAGE_SIZE) as u32, start);
        // The open PAGES record: (buffer offset of its header, region offset, payload len).
        let mut open: Option<(usize, u64, usize)> = None;
        let mut records = 0u32;
        for &(region_offset, bytes) in runs {
            debug_assert!(region_offset % PAGE_SIZE == 0 && bytes.len() as u64 % PAGE_SIZE == 0);
            let (mut off, mut rest) = (region_offset, bytes);
            while !rest.is_empty() {
                let (at, start, len) = match open {
                    Some((at, start, len)) if start + len as u64 == off && len < MAX => (at, start, len),
                    other => {
                        if let Some((at, start, len)) = other {
                            self.seal(at, pages(len, start));
                            records += 1;
                        }
                        let at = self.buf.len();
                        self.buf.resize(at + RECORD_HEADER_LEN, 0);
                        (at, off, 0)
                    }
                };
                let take = rest.len().min(MAX - len);
                crate::extend_bytes(&mut self.buf, &rest[..take]);
                open = Some((at, start, len + take));
                off += take as u64;
                rest = &rest[take..];
            }
        }
        if let Some((at, start, len)) = open {
            self.seal(at, pages(len, start));
            records += 1;
        }
        let at = self.buf.len();
        self.buf.resize(at + RECORD_HEADER_LEN, 0);
        self.seal(at, header(KIND_COMMIT, 0, records, extent));
        debug_assert_eq!(self.buf.len() as u64 % RECORD_ALIGN, 0);
        self.encoded = Some(seq);
        self.buf.len() as u64
    }

    /// Fills in and checksums the record whose header starts at `buf[at]` and whose payload
    /// (`len` bytes) follows it.
    fn seal(&mut self, at: usize, h: RecordHeader) {
        let len = h.len as usize;
        debug_assert_eq!(h.record_len(), (RECORD_HEADER_LEN + len) as u64);
        let rec = &mut self.buf[at..at + RECORD_HEADER_LEN + len];
        h.encode(rec);
        seal_record(rec, self.salt);
    }

    /// Writes the encoded group at the end of the file with one `write_at` (preceded, when
    /// the group reaches past the pre-zeroed space, by writes of zeros after it) and returns
    /// the new end offset. Not durable until the caller syncs [`Self::file`]. On error
    /// nothing is considered appended and the writer must not be used again.
    pub(crate) fn write_encoded(&mut self) -> Result<u64> {
        let Some(seq) = self.encoded.take() else {
            return Err(Error::invalid("write_encoded without an encoded group"));
        };
        let new_end = self.end + self.buf.len() as u64;
        // Pre-zeroing pays off for small groups, whose sync then skips a metadata commit. A
        // large group would have about its size in zeros written (and synced) first,
        // doubling its I/O for a saving that is small next to writing it.
        let small = self.buf.len() < PREZERO_MAX_GROUP;
        if self.prezero_step > 0 && new_end > self.zeroed_end && small {
            let target = (new_end / self.prezero_step + 1) * self.prezero_step;
            self.write_zeros(self.zeroed_end.max(new_end), target)?;
            self.zeroed_end = target;
        }
        self.file
            .write_at(&self.buf, self.end)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.end = new_end;
        self.zeroed_end = self.zeroed_end.max(new_end);
        self.next_seq = seq + 1;
        if self.buf.capacity() > RETAINED_BUFFER {
            self.buf.clear();
            self.buf.shrink_to(RETAINED_BUFFER);
        }
        Ok(new_end)
    }

    /// Writes zeros over `[from, to)`.
    fn write_zeros(&mut self, mut from: u64, to: u64) -> Result<()> {
        if self.zeros.is_empty() {
            let len = self.prezero_step.clamp(PAGE_SIZE, ZERO_CHUNK as u64);
            self.zeros.resize(len as usize, 0);
        }
        while from < to {
            let n = (to - from).min(self.zeros.len() as u64) as usize;
            self.file
                .write_at(&self.zeros[..n], from)
                .map_err(|e| Error::io("write", &self.path, e))?;
            from += n as u64;
        }
        Ok(())
    }

    /// The journal file, for syncing outside the commit lock (group commit).
    pub(crate) fn file(&self) -> Arc<dyn VFile> {
        Arc::clone(&self.file)
    }

    /// The journal's path.
    #[allow(dead_code)] // for error messages; the engine does not need it yet
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The journal's id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// End of the last group written (not necessarily durable).
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Sequence number the next group must carry.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::format::journal::{REC_COUNT_OFFSET, REC_SEQ_OFFSET, REC_SYNCED_OFFSET, VERSION_OFFSET};
    use crate::disk::format::{put_u32, put_u64};
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    const HEAP: u64 = 0x5eed_0000_0000_0001;
    const ID: u64 = 3;
    const START: u64 = 100;
    const P: usize = PAGE_SIZE as usize;
    /// Small pre-zeroing step so tests exercise it without writing megabytes of zeros.
    const TEST_PREZERO: u64 = 16 << 10;

    /// An in-memory file system: every write is immediately "durable"; counts syncs.
    #[derive(Default)]
    struct MemVfs {
        files: Mutex<HashMap<PathBuf, Arc<Node>>>,
        dir_syncs: AtomicUsize,
    }

    #[derive(Default)]
    struct Node {
        data: Mutex<Vec<u8>>,
        syncs: AtomicUsize,
    }

    struct MemFile(Arc<Node>);

    impl VFile for MemFile {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let d = self.0.data.lock().unwrap();
            let off = (offset as usize).min(d.len());
            let n = buf.len().min(d.len() - off);
            buf[..n].copy_from_slice(&d[off..off + n]);
            Ok(n)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
            let mut d = self.0.data.lock().unwrap();
            let end = offset as usize + buf.len();
            if d.len() < end {
                d.resize(end, 0);
            }
            d[offset as usize..end].copy_from_slice(buf);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            self.0.syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn allocate(&self, len: u64) -> io::Result<()> {
            let mut d = self.0.data.lock().unwrap();
            if (d.len() as u64) < len {
                d.resize(len as usize, 0);
            }
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.data.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.data.lock().unwrap().len() as u64)
        }
        fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }

    impl Vfs for MemVfs {
        fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn VFile>> {
            let mut files = self.files.lock().unwrap();
            let node = match files.get(path) {
                Some(n) => n.clone(),
                None if create => files.entry(path.to_path_buf()).or_default().clone(),
                None => return Err(io::ErrorKind::NotFound.into()),
            };
            Ok(Box::new(MemFile(node)))
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            let removed = self.files.lock().unwrap().remove(path);
            removed.map(drop).ok_or_else(|| io::ErrorKind::NotFound.into())
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            let mut files = self.files.lock().unwrap();
            let node = files.remove(from).ok_or(io::ErrorKind::NotFound)?;
            files.insert(to.to_path_buf(), node);
            Ok(())
        }
        fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
            self.dir_syncs.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
            let files = self.files.lock().unwrap();
            let names = files.keys().filter(|p| p.parent() == Some(dir));
            Ok(names.filter_map(|p| p.file_name().map(PathBuf::from)).collect())
        }
        fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
            Ok(())
        }
    }

    impl MemVfs {
        fn bytes(&self, path: &Path) -> Vec<u8> {
            self.files.lock().unwrap()[path].data.lock().unwrap().clone()
        }
        /// A new file system holding only `path` with `bytes`.
        fn with_file(path: &Path, bytes: &[u8]) -> MemVfs {
            let vfs = MemVfs::default();
            let node = Node {
                data: Mutex::new(bytes.to_vec()),
                syncs: AtomicUsize::new(0),
            };
            vfs.files.lock().unwrap().insert(path.to_path_buf(), Arc::new(node));
            vfs
        }
        fn syncs(&self, path: &Path) -> usize {
            self.files.lock().unwrap()[path].syncs.load(Ordering::Relaxed)
        }
    }

    fn dir() -> PathBuf {
        PathBuf::from("/heap")
    }

    fn jpath() -> PathBuf {
        dir().join(journal_file_name(ID))
    }

    /// `n` pages of deterministic, tag-dependent, nonzero-dense bytes.
    fn pages(tag: u64, n: usize) -> Vec<u8> {
        let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n * P)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// One commit group to write: region extent and `(region_offset, bytes)` runs.
    #[derive(Clone)]
    struct Spec {
        extent: u64,
        runs: Vec<(u64, Vec<u8>)>,
    }

    fn spec(extent: u64, runs: &[(u64, usize)], tag: u64) -> Spec {
        let runs = runs
            .iter()
            .enumerate()
            .map(|(i, &(off, n))| (off, pages(tag * 1000 + i as u64, n)))
            .collect();
        Spec { extent, runs }
    }

    /// How each group's `synced` is chosen from the group ends so far (`ends[0]` is the
    /// first record offset, `ends[k]` the end of group `k`).
    type SyncPolicy = fn(&[u64]) -> u64;
    /// Nothing after the header was ever synced.
    const NOTHING_SYNCED: SyncPolicy = |_| FIRST_RECORD_OFFSET;
    /// Every group was synced before the next was written.
    const PREVIOUS_SYNCED: SyncPolicy = |ends| *ends.last().unwrap();

    fn append(w: &mut JournalWriter, specs: &[Spec], policy: impl Fn(&[u64]) -> u64, ends: &mut Vec<u64>) {
        for s in specs {
            let runs: Vec<(u64, &[u8])> = s.runs.iter().map(|(o, b)| (*o, &b[..])).collect();
            let seq = w.next_seq();
            let n = w.encode_group(seq, s.extent, policy(ends), &runs);
            let end = w.write_encoded().unwrap();
            assert_eq!(end, ends.last().unwrap() + n);
            assert_eq!(w.end(), end);
            ends.push(end);
        }
    }

    /// Writes a journal of `specs` into `vfs`; returns the group ends.
    fn build(vfs: &MemVfs, specs: &[Spec], policy: SyncPolicy) -> Vec<u64> {
        let mut w = JournalWriter::create(vfs, &dir(), HEAP, ID, START).unwrap();
        w.set_prezero_step(TEST_PREZERO);
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, specs, policy, &mut ends);
        ends
    }

    /// The file bytes of the journal without its pre-zeroed tail.
    fn built_bytes(vfs: &MemVfs, ends: &[u64]) -> Vec<u8> {
        let mut b = vfs.bytes(&jpath());
        assert!(b.len() as u64 >= *ends.last().unwrap());
        assert!(b[*ends.last().unwrap() as usize..].iter().all(|&x| x == 0));
        b.truncate(*ends.last().unwrap() as usize);
        b
    }

    /// The model: pages of a group coalesced into runs of contiguous pages of at most
    /// 256 pages, in write order.
    fn model_runs(s: &Spec) -> Vec<(u64, Vec<u8>)> {
        let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
        for (off, bytes) in &s.runs {
            for (i, page) in bytes.chunks(P).enumerate() {
                let at = off + (i * P) as u64;
                match out.last_mut() {
                    Some((o, b)) if *o + b.len() as u64 == at && b.len() < 256 * P => b.extend_from_slice(page),
                    _ => out.push((at, page.to_vec())),
                }
            }
        }
        out
    }

    fn scan(vfs: &MemVfs, is_last: bool) -> Result<JournalScan> {
        scan_journal(vfs, &jpath(), HEAP, ID, is_last)
    }

    /// Asserts that `scan` holds exactly the groups of `specs`, with their page bytes.
    fn assert_groups(vfs: &dyn Vfs, scan: &JournalScan, specs: &[Spec]) {
        assert_eq!(scan.groups.len(), specs.len(), "group count");
        let file = vfs.open(&scan.path, false).unwrap();
        let mut next_run = 0;
        for (i, (g, s)) in scan.groups.iter().zip(specs).enumerate() {
            assert_eq!(g.seq, START + 1 + i as u64);
            assert_eq!(g.extent, s.extent);
            assert_eq!(g.runs.start, next_run, "runs are consecutive");
            next_run = g.runs.end;
            let got: Vec<(u64, Vec<u8>)> = scan.runs[g.runs.clone()]
                .iter()
                .map(|r| {
                    assert!(r.file_offset + r.len <= scan.valid_end);
                    let mut b = vec![0u8; r.len as usize];
                    read_run(&*file, &scan.path, r, &mut b).unwrap();
                    (r.region_offset, b)
                })
                .collect();
            assert!(got == model_runs(s), "group {i}: runs differ from the model");
        }
        assert_eq!(next_run, scan.runs.len());
        assert_eq!(scan.last_seq(), START + specs.len() as u64);
    }

    fn corrupt_offset(r: Result<JournalScan>) -> u64 {
        match r {
            Err(Error::Corrupt { offset, .. }) => offset,
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }

    /// Offsets of the records of a well-formed journal image.
    fn record_starts(bytes: &[u8]) -> Vec<u64> {
        let mut out = Vec::new();
        let mut pos = FIRST_RECORD_OFFSET;
        while pos < bytes.len() as u64 {
            out.push(pos);
            pos += RecordHeader::decode(&bytes[pos as usize..]).unwrap().record_len();
        }
        out
    }

    fn round_trip_specs() -> Vec<Spec> {
        vec![
            // No pages at all.
            spec(1 << 20, &[], 1),
            // One page.
            spec(1 << 20, &[(0x3000, 1)], 2),
            // Contiguous runs coalesce; a gap starts a new record; order is kept.
            spec(1 << 20, &[(0x10000, 2), (0x12000, 1), (0x40000, 1), (0, 3)], 3),
            // 2.5 MiB splits at 1 MiB; the contiguous run after it fills the last record
            // up to 1 MiB and spills into a fourth.
            spec(8 << 20, &[(0x100000, 640), (0x100000 + 640 * 4096, 200)], 4),
            spec(8 << 20, &[(0x7000, 1)], 5),
        ]
    }

    #[test]
    fn journal_file_names_round_trip_and_foreign_names_are_rejected() {
        for id in [0, 1, 0xabc, u64::MAX] {
            assert_eq!(parse_journal_file_name(&journal_file_name(id)), Some(id));
        }
        assert_eq!(journal_file_name(0x2a), "journal-000000000000002a");
        for bad in [
            "journal-000000000000002a.tmp",
            "journal-2a",
            "journal-000000000000002A",
            "journal-+00000000000002a",
            "snapshot-0",
            "journal-",
        ] {
            assert_eq!(parse_journal_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trip_returns_exactly_the_groups_runs_and_page_bytes() {
        let vfs = MemVfs::default();
        let specs = round_trip_specs();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        for is_last in [true, false] {
            let s = scan(&vfs, is_last).unwrap();
            assert_groups(&vfs, &s, &specs);
            assert_eq!(s.valid_end, *ends.last().unwrap());
            assert_eq!(s.header.start_seq, START);
            assert_eq!(s.header.heap_id, HEAP);
        }
        let s = scan(&vfs, true).unwrap();
        let counts: Vec<usize> = s.groups.iter().map(|g| g.runs.len()).collect();
        assert_eq!(counts, [0, 1, 3, 4, 1]);
        let lens: Vec<u64> = s.runs[s.groups[3].runs.clone()].iter().map(|r| r.len).collect();
        assert_eq!(lens, [1 << 20, 1 << 20, 1 << 20, 72 * 4096]);
    }

    #[test]
    fn round_trip_through_the_real_file_system_with_resume() {
        let dir = std::env::temp_dir().join(format!("snapheap-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let vfs = crate::io::OsVfs;
        vfs.create_dir_all(&dir).unwrap();
        let specs = round_trip_specs();
        let mut w = JournalWriter::create(&vfs, &dir, HEAP, ID, START).unwrap();
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, &specs[..3], PREVIOUS_SYNCED, &mut ends);
        w.file().sync_data().unwrap();
        let path = w.path().to_path_buf();
        assert_eq!(path, dir.join(journal_file_name(ID)));
        drop(w);
        let names = vfs.list(&dir).unwrap();
        assert_eq!(names, [PathBuf::from(journal_file_name(ID))], "no temp file is left");
        let s = scan_journal(&vfs, &path, HEAP, ID, true).unwrap();
        assert_groups(&vfs, &s, &specs[..3]);
        assert!(s.file_len >= DEFAULT_PREZERO_STEP, "the default writer pre-zeroes");
        let mut w = JournalWriter::resume(&vfs, &s).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), s.valid_end);
        append(&mut w, &specs[3..], PREVIOUS_SYNCED, &mut ends);
        let s = scan_journal(&vfs, &path, HEAP, ID, false).unwrap();
        assert_groups(&vfs, &s, &specs);
        assert_eq!(s.valid_end, *ends.last().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn create_makes_a_durable_empty_journal_and_refuses_to_replace_one() {
        let vfs = MemVfs::default();
        let w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        assert_eq!((w.id(), w.end(), w.next_seq()), (ID, FIRST_RECORD_OFFSET, START + 1));
        assert_eq!(vfs.list(&dir()).unwrap(), [PathBuf::from(journal_file_name(ID))]);
        assert!(vfs.syncs(&jpath()) >= 1 && vfs.dir_syncs.load(Ordering::Relaxed) >= 1);
        let s = scan(&vfs, false).unwrap();
        assert_eq!(
            (s.groups.len(), s.valid_end, s.last_seq()),
            (0, FIRST_RECORD_OFFSET, START)
        );
        let again = JournalWriter::create(&vfs, &dir(), HEAP, ID, START);
        assert!(matches!(again, Err(Error::InvalidArgument { .. })));
        assert_eq!(
            scan(&vfs, true).unwrap().header,
            s.header,
            "the first journal is intact"
        );
    }

    #[test]
    fn salts_differ_between_journals() {
        let vfs = MemVfs::default();
        let a = JournalWriter::create(&vfs, &dir(), HEAP, 1, 0).unwrap();
        let b = JournalWriter::create(&vfs, &dir(), HEAP, 2, 0).unwrap();
        assert_ne!(a.salt, b.salt);
    }

    #[test]
    fn encode_group_reuses_its_buffer_after_warm_up() {
        let vfs = MemVfs::default();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        let data = pages(9, 300);
        let runs = [(0u64, &data[..100 * P]), (0x200000, &data[100 * P..])];
        let n = w.encode_group(START + 1, 1 << 22, FIRST_RECORD_OFFSET, &runs);
        w.write_encoded().unwrap();
        let (ptr, cap) = (w.buf.as_ptr(), w.buf.capacity());
        for seq in START + 2..START + 6 {
            assert_eq!(w.encode_group(seq, 1 << 22, FIRST_RECORD_OFFSET, &runs), n);
            assert_eq!((w.buf.as_ptr(), w.buf.capacity()), (ptr, cap));
            w.write_encoded().unwrap();
        }
        assert_eq!(scan(&vfs, true).unwrap().groups.len(), 5);
    }

    #[test]
    fn write_encoded_without_an_encoded_group_is_refused() {
        let vfs = MemVfs::default();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        assert!(matches!(w.write_encoded(), Err(Error::InvalidArgument { .. })));
        w.encode_group(START + 1, 0, FIRST_RECORD_OFFSET, &[]);
        w.write_encoded().unwrap();
        assert!(matches!(w.write_encoded(), Err(Error::InvalidArgument { .. })));
        assert_eq!(scan(&vfs, true).unwrap().groups.len(), 1);
    }

    /// Three small groups, then a last group of two non-contiguous pages.
    fn torn_specs() -> Vec<Spec> {
        vec![
            spec(1 << 20, &[(0, 1)], 1),
            spec(1 << 20, &[], 2),
            spec(1 << 20, &[(0x1000, 1)], 3),
            spec(1 << 20, &[(0x5000, 1), (0x9000, 1)], 4),
        ]
    }

    #[test]
    fn torn_tail_is_truncated_to_last_whole_commit() {
        let specs = torn_specs();
        let vfs = MemVfs::default();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let (last_start, last_end) = (ends[3], ends[4]);
        let starts = record_starts(&bytes);
        let extra = spec(1 << 20, &[(0x2000, 2)], 77);
        let mut expected = specs[..3].to_vec();
        expected.push(extra.clone());
        for cut in last_start..last_end {
            let vfs = MemVfs::with_file(&jpath(), &bytes[..cut as usize]);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..3]);
            assert_eq!((s.valid_end, s.file_len), (last_start, cut), "cut at {cut}");
            if cut > last_start {
                let x = *starts.iter().filter(|&&r| r <= cut).max().unwrap();
                assert_eq!(corrupt_offset(scan(&vfs, false)), x, "not last, cut at {cut}");
            }
            let syncs = vfs.syncs(&jpath());
            let mut w = JournalWriter::resume(&vfs, &s).unwrap();
            assert!(vfs.syncs(&jpath()) > syncs, "resume syncs");
            assert_eq!((w.end(), w.next_seq()), (last_start, START + 4));
            w.set_prezero_step(TEST_PREZERO);
            let mut ends2 = ends[..4].to_vec();
            append(&mut w, std::slice::from_ref(&extra), PREVIOUS_SYNCED, &mut ends2);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &expected);
            assert_eq!(s.valid_end, ends2[4]);
        }
    }

    #[test]
    fn sector_torn_tail_with_later_sectors_present_is_truncated_not_corrupt() {
        // Groups 4 and 5 were written by group commit without a sync between them: both
        // name the end of group 3 as durable. Only some of group 4's sectors reached disk.
        let mut specs = torn_specs();
        specs[3] = spec(1 << 20, &[(0x5000, 1), (0x9000, 2), (0x20000, 1)], 4);
        specs.push(spec(1 << 20, &[(0x30000, 1)], 5));
        let vfs = MemVfs::default();
        let w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START);
        let mut w = w.unwrap();
        w.set_prezero_step(0);
        let mut ends = vec![FIRST_RECORD_OFFSET];
        append(&mut w, &specs[..4], PREVIOUS_SYNCED, &mut ends);
        let durable = ends[3];
        append(&mut w, &specs[4..], |_| durable, &mut ends);
        let bytes = vfs.bytes(&jpath());
        let (g_start, g_end) = (ends[3] as usize, ends[4] as usize);
        let sectors: Vec<usize> = (g_start / 512..g_end.div_ceil(512)).collect();
        let mut patterns: Vec<Vec<bool>> = Vec::new(); // true = sector reached disk
        for i in 0..sectors.len() {
            patterns.push((0..sectors.len()).map(|j| j != i).collect());
            patterns.push((0..sectors.len()).map(|j| j == i).collect());
        }
        let mut x = 0x1234_5678_9abc_def1u64;
        for _ in 0..300 {
            patterns.push(
                (0..sectors.len())
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x % 3 != 0
                    })
                    .collect(),
            );
        }
        for pattern in &patterns {
            let mut torn = bytes.clone();
            for (&sector, &present) in sectors.iter().zip(pattern) {
                if !present {
                    let lo = (sector * 512).max(g_start);
                    let hi = ((sector + 1) * 512).min(g_end);
                    torn[lo..hi].fill(0);
                }
            }
            assert_ne!(torn, bytes, "every sector holds nonzero bytes of the group");
            let vfs = MemVfs::with_file(&jpath(), &torn);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..3]);
            assert_eq!(s.valid_end, ends[3]);
        }
    }

    #[test]
    fn corrupt_record_before_durable_data_is_an_error() {
        let specs: Vec<Spec> = (0..4).map(|g| spec(1 << 20, &[(0, 1), (0x10000, 1)], g + 1)).collect();
        let vfs = MemVfs::default();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let starts = record_starts(&bytes);
        assert_eq!(starts.len(), 12);
        // A payload byte of group 2's second PAGES record, a header byte of group 3's
        // COMMIT record, group 1's first header byte: all lie before the end of group 3,
        // which group 4's records name as durable.
        let cases = [
            (starts[4], starts[4] + 40 + 100),
            (starts[8], starts[8] + REC_SEQ_OFFSET as u64),
            (starts[0], starts[0]),
        ];
        for (record, byte) in cases {
            let mut bad = bytes.clone();
            bad[byte as usize] ^= 0x10;
            let vfs = MemVfs::with_file(&jpath(), &bad);
            assert_eq!(corrupt_offset(scan(&vfs, true)), record, "flip at {byte}");
        }
        // Group 4 is covered by nothing: the same damage there is a torn tail.
        let mut bad = bytes.clone();
        bad[starts[9] as usize + 40 + 7] ^= 0x10;
        let vfs = MemVfs::with_file(&jpath(), &bad);
        let s = scan(&vfs, true).unwrap();
        assert_groups(&vfs, &s, &specs[..3]);
        assert_eq!(corrupt_offset(scan(&vfs, false)), starts[9]);
    }

    #[test]
    fn every_flipped_byte_gives_a_prefix_of_the_groups_or_an_error() {
        let specs: Vec<Spec> = (0..3).map(|g| spec(1 << 20, &[(0x4000, 1)], g + 1)).collect();
        for (policy, synced_all) in [(NOTHING_SYNCED, false), (PREVIOUS_SYNCED, true)] {
            let vfs = MemVfs::default();
            let ends = build(&vfs, &specs, policy);
            let bytes = built_bytes(&vfs, &ends);
            let starts = record_starts(&bytes);
            for i in 0..bytes.len() {
                let mut bad = bytes.clone();
                bad[i] ^= 0x5a;
                let vfs = MemVfs::with_file(&jpath(), &bad);
                let r = scan(&vfs, true);
                if i < HEADER_AREA_LEN {
                    assert!(
                        matches!(r, Err(Error::Corrupt { .. } | Error::Incompatible { .. })),
                        "header byte {i}: {r:?}"
                    );
                    continue;
                }
                let g = ends.iter().position(|&e| e > i as u64).unwrap(); // 1-based group
                let record = *starts.iter().filter(|&&r| r <= i as u64).max().unwrap();
                if synced_all && g < specs.len() {
                    assert_eq!(corrupt_offset(r), record, "byte {i}");
                } else {
                    let s = r.unwrap_or_else(|e| panic!("byte {i}: {e}"));
                    assert_groups(&vfs, &s, &specs[..g - 1]);
                    assert_eq!(s.valid_end, ends[g - 1]);
                }
                if i % 7 == 0 {
                    assert_eq!(corrupt_offset(scan(&vfs, false)), record, "not last, byte {i}");
                }
            }
        }
    }

    #[test]
    fn evidence_after_megabytes_of_zeros_is_still_found() {
        let specs: Vec<Spec> = (0..3).map(|g| spec(1 << 20, &[(0x4000, 1)], g + 1)).collect();
        let vfs = MemVfs::default();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let (e1, e2) = (ends[1] as usize, ends[2] as usize);
        // Group 3 moved 3 MiB (more than the read window) further, zeros in between.
        let mut spaced = bytes[..e2].to_vec();
        spaced.resize(e2 + (3 << 20), 0);
        spaced.extend_from_slice(&bytes[e2..]);
        // Intact: the zeros end the valid prefix; group 3 names only the end of group 2 as
        // durable, which proves nothing about the zeros: a torn tail in the newest journal.
        let vfs = MemVfs::with_file(&jpath(), &spaced);
        let s = scan(&vfs, true).unwrap();
        assert_groups(&vfs, &s, &specs[..2]);
        assert_eq!(s.valid_end, ends[2]);
        // Damage in group 2: group 3, far behind the zeros, proves it had been durable.
        spaced[e1 + RECORD_HEADER_LEN + 7] ^= 0x10;
        let vfs = MemVfs::with_file(&jpath(), &spaced);
        assert_eq!(corrupt_offset(scan(&vfs, true)), ends[1]);
    }

    #[test]
    fn every_flipped_header_byte_is_reported_at_its_field() {
        let vfs = MemVfs::default();
        let ends = build(&vfs, &torn_specs(), PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for i in 0..HEADER_AREA_LEN {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let vfs = MemVfs::with_file(&jpath(), &bad);
            for is_last in [true, false] {
                let r = scan(&vfs, is_last);
                let expected = match i {
                    0..8 => 0,
                    8..12 => {
                        assert!(matches!(r, Err(Error::Incompatible { .. })), "{i}: {r:?}");
                        continue;
                    }
                    12..16 => 12,
                    16..64 => 60,
                    _ => i as u64,
                };
                assert_eq!(corrupt_offset(r), expected, "header byte {i}");
            }
        }
    }

    #[test]
    fn a_future_version_is_incompatible_and_foreign_ids_are_corrupt() {
        let vfs = MemVfs::default();
        build(&vfs, &torn_specs()[..1], PREVIOUS_SYNCED);
        let r = scan_journal(&vfs, &jpath(), HEAP ^ 1, ID, true);
        assert_eq!(corrupt_offset(r), HEAP_ID_OFFSET as u64);
        let r = scan_journal(&vfs, &jpath(), HEAP, ID + 1, true);
        assert_eq!(corrupt_offset(r), JOURNAL_ID_OFFSET as u64);
        let mut b = vfs.bytes(&jpath());
        b[VERSION_OFFSET] = 2;
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        let vfs = MemVfs::with_file(&jpath(), &b);
        assert!(matches!(scan(&vfs, true), Err(Error::Incompatible { .. })));
    }

    #[test]
    fn a_file_shorter_than_its_header_area_is_corrupt_even_when_last() {
        let vfs = MemVfs::default();
        let ends = build(&vfs, &torn_specs()[..1], PREVIOUS_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for len in 0..HEADER_AREA_LEN {
            let vfs = MemVfs::with_file(&jpath(), &bytes[..len]);
            for is_last in [true, false] {
                let off = corrupt_offset(scan(&vfs, is_last));
                assert_eq!(off, len as u64, "length {len}");
            }
        }
        let vfs = MemVfs::with_file(&jpath(), &bytes[..HEADER_AREA_LEN]);
        assert_eq!(scan(&vfs, false).unwrap().groups.len(), 0);
    }

    /// Rewrites a field of every record of group `g` (0-based) and reseals them if asked.
    fn rewrite_group(bytes: &mut [u8], ends: &[u64], g: usize, edit: &dyn Fn(&mut [u8]), reseal: bool) {
        let salt = get_salt(bytes);
        let mut pos = ends[g];
        while pos < ends[g + 1] {
            let h = RecordHeader::decode(&bytes[pos as usize..]).unwrap();
            let rec = &mut bytes[pos as usize..pos as usize + 40 + h.len as usize];
            edit(rec);
            if reseal {
                seal_record(rec, salt);
            }
            pos += h.record_len();
        }
    }

    fn get_salt(bytes: &[u8]) -> u64 {
        decode_header(bytes).unwrap().salt
    }

    #[test]
    fn record_with_valid_checksum_but_wrong_seq_is_corrupt_not_truncated() {
        let vfs = MemVfs::default();
        let specs = torn_specs();
        let ends = build(&vfs, &specs, NOTHING_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        for (g, seq) in [(3, START + 5), (3, START + 3), (1, START + 3)] {
            let mut bad = bytes.clone();
            rewrite_group(&mut bad, &ends, g, &|r| put_u64(r, REC_SEQ_OFFSET, seq), true);
            let vfs = MemVfs::with_file(&jpath(), &bad);
            assert_eq!(corrupt_offset(scan(&vfs, true)), ends[g], "group {g} seq {seq}");
            // Without a valid checksum the same bytes are a torn tail (nothing synced).
            let mut torn = bytes.clone();
            rewrite_group(&mut torn, &ends, g, &|r| put_u64(r, REC_SEQ_OFFSET, seq), false);
            let vfs = MemVfs::with_file(&jpath(), &torn);
            let s = scan(&vfs, true).unwrap();
            assert_groups(&vfs, &s, &specs[..g]);
        }
    }

    #[test]
    fn commit_count_mismatch_and_future_synced_with_valid_checksums_are_corrupt() {
        let vfs = MemVfs::default();
        let ends = build(&vfs, &torn_specs(), NOTHING_SYNCED);
        let bytes = built_bytes(&vfs, &ends);
        let starts = record_starts(&bytes);
        let commit = starts[starts.len() - 1];
        let mut bad = bytes.clone();
        put_u32(&mut bad, commit as usize + REC_COUNT_OFFSET, 1);
        seal_record(&mut bad[commit as usize..commit as usize + 40], get_salt(&bytes));
        let vfs = MemVfs::with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs, true)), commit);
        let mut bad = bytes.clone();
        rewrite_group(&mut bad, &ends, 2, &|r| put_u64(r, REC_SYNCED_OFFSET, 1 << 40), true);
        let vfs = MemVfs::with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs, true)), ends[2]);
    }

    #[test]
    fn prezeroed_tail_is_a_clean_end_in_any_journal_but_not_inside_a_group() {
        let vfs = MemVfs::default();
        let specs = torn_specs();
        let ends = build(&vfs, &specs, PREVIOUS_SYNCED);
        let end = *ends.last().unwrap();
        let file_len = vfs.bytes(&jpath()).len() as u64;
        assert!(file_len > end && file_len % TEST_PREZERO == 0, "{file_len} after {end}");
        for is_last in [true, false] {
            let s = scan(&vfs, is_last).unwrap();
            assert_groups(&vfs, &s, &specs);
            assert_eq!((s.valid_end, s.file_len), (end, file_len));
        }
        // The last COMMIT record zeroed (its PAGES present): an incomplete group.
        let mut bad = vfs.bytes(&jpath());
        bad[(end - 40) as usize..end as usize].fill(0);
        let vfs2 = MemVfs::with_file(&jpath(), &bad);
        assert_eq!(corrupt_offset(scan(&vfs2, false)), end - 40);
        assert_groups(&vfs2, &scan(&vfs2, true).unwrap(), &specs[..3]);
        // Resume drops the zeros and re-zeroes ahead of the next group.
        let s = scan(&vfs, true).unwrap();
        let mut w = JournalWriter::resume(&vfs, &s).unwrap();
        assert_eq!(vfs.bytes(&jpath()).len() as u64, end);
        w.set_prezero_step(TEST_PREZERO);
        let mut ends2 = ends.clone();
        append(&mut w, &specs[..1], PREVIOUS_SYNCED, &mut ends2);
        assert!(vfs.bytes(&jpath()).len() as u64 > *ends2.last().unwrap());
        assert_eq!(scan(&vfs, false).unwrap().groups.len(), 5);
    }

    #[test]
    fn large_group_is_written_without_zeros_ahead_and_small_groups_still_prezero() {
        let vfs = MemVfs::default();
        let mut w = JournalWriter::create(&vfs, &dir(), HEAP, ID, START).unwrap();
        w.set_prezero_step(TEST_PREZERO);
        let big = vec![7u8; PREZERO_MAX_GROUP];
        w.encode_group(START + 1, 1 << 30, FIRST_RECORD_OFFSET, &[(0, &big)]);
        let end = w.write_encoded().unwrap();
        assert_eq!(vfs.bytes(&jpath()).len() as u64, end, "no zeros after a large group");
        let small = vec![9u8; P];
        w.encode_group(START + 2, 1 << 30, FIRST_RECORD_OFFSET, &[(0, &small)]);
        let end = w.write_encoded().unwrap();
        let len = vfs.bytes(&jpath()).len() as u64;
        assert!(len > end && len % TEST_PREZERO == 0, "{len} after {end}");
        let s = scan(&vfs, true).unwrap();
        assert_eq!((s.groups.len(), s.valid_end), (2, end));
    }

    #[test]
    fn read_run_rejects_a_wrong_buffer_and_a_run_past_the_end() {
        let vfs = MemVfs::default();
        build(&vfs, &torn_specs(), PREVIOUS_SYNCED);
        let s = scan(&vfs, true).unwrap();
        let file = vfs.open(&jpath(), false).unwrap();
        let run = s.runs[0];
        let mut small = vec![0u8; run.len as usize - 1];
        let r = read_run(&*file, &jpath(), &run, &mut small);
        assert!(matches!(r, Err(Error::InvalidArgument { .. })));
        let past = PageRun {
            file_offset: s.file_len - 100,
            ..run
        };
        let mut buf = vec![0u8; run.len as usize];
        let r = read_run(&*file, &jpath(), &past, &mut buf);
        assert!(matches!(r, Err(Error::Corrupt { offset, .. }) if offset == s.file_len));
    }
}
