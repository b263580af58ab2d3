//! The commit journal files: their names, the [`JournalWriter`] that appends one commit
//! *group* per commit, and [`scan_journal`], which validates a journal for recovery and
//! decides where its valid prefix ends. The byte layout is in [`crate::format::journal`];
//! the rules are in `docs/journal-format.md`.
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

use crate::format::journal::{
    decode_header, encode_header, record_len, seal_record, verify_record_crc, HeaderError,
    RecordHeader, FIRST_RECORD_OFFSET, HEADER_AREA_LEN, HEADER_LEN, HEAP_ID_OFFSET,
    JOURNAL_ID_OFFSET, KIND_COMMIT, KIND_PAGES, MAX_PAGES_PAYLOAD, PAGE_SIZE, RECORD_ALIGN,
    RECORD_HEADER_LEN, START_SEQ_OFFSET,
};
use crate::io::{VFile, Vfs};
use crate::{Error, Result, SysVec};
use std::alloc::System;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub(crate) use crate::format::journal::JournalHeader;

/// File name prefix of journals.
const NAME_PREFIX: &str = "journal-";
/// Suffix of a journal being created; such a file never holds commits and may be deleted.
pub(crate) const JOURNAL_TEMP_SUFFIX: &str = ".tmp";
/// Size of the scanner's read window: at least two of the largest records.
const WINDOW_LEN: usize = 2 << 20;
/// Default step in which the writer pre-zeroes space ahead of the end (see
/// [`JournalWriter::set_prezero_step`]).
pub(crate) const DEFAULT_PREZERO_STEP: u64 = 4 << 20;
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
    let ok = hex.len() == 16
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
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
    pub file_len: u64,
}

impl JournalScan {
    /// Sequence number of the last complete group, or `start_seq` when there is none.
    pub(crate) fn last_seq(&self) -> u64 {
        self.groups.last().map_or(self.header.start_seq, |g| g.seq)
    }
}

/// Reads and validates a whole journal (see `docs/journal-format.md` for the rules),
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
    let file = vfs
        .open(path, false)
        .map_err(|e| Error::io("open", path, e))?;
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
            return Err(Error::corrupt(
                self.path,
                off,
                "read past the end of the journal",
            ));
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
fn scan_file(
    file: &dyn VFile,
    path: &Path,
    heap_id: u64,
    journal_id: u64,
    is_last: bool,
) -> Result<JournalScan> {
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
fn check_header(
    file: &dyn VFile,
    path: &Path,
    file_len: u64,
    heap_id: u64,
    journal_id: u64,
) -> Result<JournalHeader> {
    let mut area = [0u8; HEADER_AREA_LEN];
    let n = file
        .read_at(&mut area, 0)
        .map_err(|e| Error::io("read", path, e))?;
    if n < HEADER_LEN {
        return Err(Error::corrupt(
            path,
            n as u64,
            HeaderError::Short { len: n }.to_string(),
        ));
    }
    let header = decode_header(&area[..n]).map_err(|e| match e {
        HeaderError::UnsupportedVersion(_) => {
            Error::incompatible(format!("{}: {e}", path.display()))
        }
        _ => Error::corrupt(path, e.offset(), e.to_string()),
    })?;
    if header.heap_id != heap_id {
        return Err(Error::corrupt(
            path,
            HEAP_ID_OFFSET as u64,
            format!(
                "journal belongs to heap {:#018x}, not {heap_id:#018x}",
                header.heap_id
            ),
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
            format!(
                "file is {file_len} bytes, shorter than the {HEADER_AREA_LEN}-byte header area"
            ),
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
        let avail = (file_len - o).min(RECORD_HEADER_LEN as u64) as usize;
        let hb = w.get(o, avail)?;
        if all_zero
            && hb[..avail.min(RECORD_ALIGN as usize)]
                .iter()
                .any(|&b| b != 0)
        {
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
    fn new(
        file: Arc<dyn VFile>,
        path: PathBuf,
        id: u64,
        salt: u64,
        end: u64,
        next_seq: u64,
    ) -> Self {
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
    pub(crate) fn create(
        vfs: &dyn Vfs,
        dir: &Path,
        heap_id: u64,
        id: u64,
        start_seq: u64,
    ) -> Result<Self> {
        let name = journal_file_name(id);
        let path = dir.join(&name);
        let Some(next_seq) = start_seq.checked_add(1) else {
            return Err(Error::invalid(format!(
                "journal start sequence {start_seq} overflows"
            )));
        };
        match vfs.open(&path, false) {
            Ok(_) => {
                return Err(Error::invalid(format!(
                    "journal {} already exists",
                    path.display()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("open", &path, e)),
        }
        let tmp = dir.join(format!("{name}{JOURNAL_TEMP_SUFFIX}"));
        let file: Arc<dyn VFile> = Arc::from(
            vfs.open(&tmp, true)
                .map_err(|e| Error::io("open", &tmp, e))?,
        );
        let salt = random_salt();
        let header = JournalHeader {
            heap_id,
            journal_id: id,
            start_seq,
            salt,
        };
        let mut area = [0u8; HEADER_AREA_LEN];
        area[..HEADER_LEN].copy_from_slice(&encode_header(&header));
        let made = (|| {
            file.set_len(0)
                .map_err(|e| Error::io("ftruncate", &tmp, e))?;
            file.write_at(&area, 0)
                .map_err(|e| Error::io("write", &tmp, e))?;
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", &tmp, e))?;
            vfs.rename(&tmp, &path)
                .map_err(|e| Error::io("rename", &tmp, e))?;
            vfs.sync_dir(dir).map_err(|e| Error::io("fsync", dir, e))
        })();
        if let Err(e) = made {
            // Best effort: a leftover temp file holds no commits either way.
            let _ = vfs.remove(&tmp);
            return Err(e);
        }
        Ok(Self::new(
            file,
            path,
            id,
            salt,
            FIRST_RECORD_OFFSET,
            next_seq,
        ))
    }

    /// Continues the last journal after recovery: truncates it to `scan.valid_end` and
    /// syncs when anything (a torn tail, pre-zeroed space) follows; the next group's
    /// sequence number is `scan.last_seq() + 1`.
    pub(crate) fn resume(vfs: &dyn Vfs, scan: &JournalScan) -> Result<Self> {
        let path = &scan.path;
        let Some(next_seq) = scan.last_seq().checked_add(1) else {
            return Err(Error::corrupt(
                path,
                scan.valid_end,
                "sequence number overflows",
            ));
        };
        let file: Arc<dyn VFile> = Arc::from(
            vfs.open(path, false)
                .map_err(|e| Error::io("open", path, e))?,
        );
        let len = file.len().map_err(|e| Error::io("fstat", path, e))?;
        if len != scan.valid_end {
            // Durable before any new group is written: stale tail bytes of this file carry
            // this file's salt and could otherwise line up with new records.
            file.set_len(scan.valid_end)
                .map_err(|e| Error::io("ftruncate", path, e))?;
            file.sync_data()
                .map_err(|e| Error::io("fdatasync", path, e))?;
        }
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
    pub(crate) fn set_prezero_step(&mut self, step: u64) {
        self.prezero_step = step;
    }

    /// Encodes one group into the internal buffer without writing it: `runs` are
    /// `(region_offset, bytes)` with both multiples of 4096; contiguous pages are coalesced
    /// into `PAGES` records of at most 1 MiB, then the `COMMIT` record carries `extent`.
    /// `seq` must be [`Self::next_seq`] and `synced` an offset `<= end()` already durable.
    /// Returns the encoded length. Does not allocate once the buffer has grown to the
    /// largest group size (cost: one memcpy and one crc32 pass over the payload).
    pub(crate) fn encode_group(
        &mut self,
        seq: u64,
        extent: u64,
        synced: u64,
        runs: &[(u64, &[u8])],
    ) -> u64 {
        debug_assert_eq!(
            seq, self.next_seq,
            "groups must have consecutive sequence numbers"
        );
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
        // The open PAGES record: (buffer offset of its header, region offset, payload len).
        let mut open: Option<(usize, u64, usize)> = None;
        let mut records = 0u32;
        for &(region_offset, bytes) in runs {
            debug_assert!(region_offset % PAGE_SIZE == 0 && bytes.len() as u64 % PAGE_SIZE == 0);
            let (mut off, mut rest) = (region_offset, bytes);
            while !rest.is_empty() {
                let (at, start, len) = match open {
                    Some((at, start, len)) if start + len as u64 == off && len < MAX => {
                        (at, start, len)
                    }
                    other => {
                        if let Some((at, start, len)) = other {
                            self.seal(
                                at,
                                KIND_PAGES,
                                len,
                                (len as u64 / PAGE_SIZE) as u32,
                                start,
                                seq,
                                synced,
                            );
                            records += 1;
                        }
                        let at = self.buf.len();
                        self.buf.resize(at + RECORD_HEADER_LEN, 0);
                        (at, off, 0)
                    }
                };
                let take = rest.len().min(MAX - len);
                self.buf.extend_from_slice(&rest[..take]);
                open = Some((at, start, len + take));
                off += take as u64;
                rest = &rest[take..];
            }
        }
        if let Some((at, start, len)) = open {
            self.seal(
                at,
                KIND_PAGES,
                len,
                (len as u64 / PAGE_SIZE) as u32,
                start,
                seq,
                synced,
            );
            records += 1;
        }
        let at = self.buf.len();
        self.buf.resize(at + RECORD_HEADER_LEN, 0);
        self.seal(at, KIND_COMMIT, 0, records, extent, seq, synced);
        debug_assert_eq!(self.buf.len() as u64 % RECORD_ALIGN, 0);
        self.encoded = Some(seq);
        self.buf.len() as u64
    }

    /// Fills in and checksums the record whose header starts at `buf[at]` and whose payload
    /// (`len` bytes) follows it.
    #[allow(clippy::too_many_arguments)]
    fn seal(
        &mut self,
        at: usize,
        kind: u16,
        len: usize,
        count: u32,
        arg: u64,
        seq: u64,
        synced: u64,
    ) {
        debug_assert_eq!(record_len(len as u32), (RECORD_HEADER_LEN + len) as u64);
        let h = RecordHeader {
            crc: 0,
            kind,
            flags: 0,
            len: len as u32,
            count,
            seq,
            arg,
            synced,
        };
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
        if self.prezero_step > 0 && new_end > self.zeroed_end {
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
            self.zeros.resize(ZERO_CHUNK, 0);
        }
        while from < to {
            let n = (to - from).min(ZERO_CHUNK as u64) as usize;
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

/// A random salt: `getrandom`, or if that fails, a hash of the time and the process id
/// through std's randomly keyed hasher.
fn random_salt() -> u64 {
    let mut b = [0u8; 8];
    if crate::sys::getrandom(&mut b).is_ok() {
        return u64::from_le_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.write_u128(now.as_nanos());
    h.write_u32(std::process::id());
    h.write_usize(&b as *const _ as usize);
    h.finish()
}
