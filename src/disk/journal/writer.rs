//! Appending to a journal: [`JournalWriter`] creates a journal with a durable header, encodes
//! one commit group per commit into its buffer and writes it, pre-zeroing space ahead of the
//! end. See also `scan.rs` (which reads what this writes) and
//! [`crate::disk::format::journal`] (the layout).
//!
//! # Invariants
//!
//! `FIRST_RECORD_OFFSET <= end <= zeroed_end <= file length`, and the bytes
//! `[end, zeroed_end)` were written as zeros by this writer.

#![forbid(unsafe_code)]

use super::{journal_file_name, JournalHeader, JournalScan, JOURNAL_TEMP_SUFFIX};
use crate::disk::format::journal::{
    encode_header, seal_record, RecordHeader, DELTA_VERSION, FIRST_RECORD_OFFSET, HEADER_AREA_LEN, HEADER_LEN,
    KIND_COMMIT, KIND_DELTA, KIND_PAGES, MAX_PAGES_PAYLOAD, PAGE_SIZE, RECORD_ALIGN, RECORD_HEADER_LEN, VERSION,
};
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::sysmem::SysVec;
use std::alloc::System;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Default step in which the writer pre-zeroes space ahead of the end (see
/// [`JournalWriter::set_prezero_step`]).
pub(super) const DEFAULT_PREZERO_STEP: u64 = 4 << 20;
/// Groups of this many bytes or more are written without pre-zeroing ahead of them
/// (measured on the map benchmark: 1,000-insert commits of about 4 MiB wrote 6.1 MiB each with
/// pre-zeroing and 4.0 MiB without, and ran 1.2x-2x faster).
pub(super) const PREZERO_MAX_GROUP: usize = 1 << 20;
/// Size of the zero buffer used for pre-zeroing.
const ZERO_CHUNK: usize = 256 << 10;
/// Capacity of the encode buffer kept after writing an unusually large group.
const RETAINED_BUFFER: usize = 16 << 20;

/// Appends commit groups to one journal file.
pub(crate) struct JournalWriter {
    file: Arc<dyn VFile>,
    path: PathBuf,
    id: u64,
    pub(super) salt: u64,
    /// End of the last group written.
    end: u64,
    /// `[end, zeroed_end)` holds zeros written by this writer.
    zeroed_end: u64,
    next_seq: u64,
    prezero_step: u64,
    /// The encoded group waiting for [`Self::write_encoded`].
    pub(super) buf: SysVec<u8>,
    /// Sequence number of the group in `buf`, if one is encoded.
    encoded: Option<u64>,
    /// Zeros for pre-zeroing, allocated on first use.
    zeros: SysVec<u8>,
    /// The file's format version (from its header).
    version: u32,
    /// `DELTA` entries staged for the group's next `DELTA` record.
    delta: SysVec<u8>,
    /// The group being encoded.
    group: GroupState,
}

/// The group [`JournalWriter`] is encoding.
#[derive(Default)]
struct GroupState {
    seq: u64,
    synced: u64,
    /// The open `PAGES` record: (buffer offset of its header, region offset, payload len).
    open_pages: Option<(usize, u64, usize)>,
    /// Entries in `delta`.
    delta_entries: u32,
    /// Records sealed so far.
    records: u32,
}

impl JournalWriter {
    fn new(file: Arc<dyn VFile>, path: PathBuf, id: u64, salt: u64, end: u64, next_seq: u64, version: u32) -> Self {
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
            version,
            delta: SysVec::new_in(System),
            group: GroupState::default(),
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
            version: VERSION,
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
        Ok(Self::new(file, path, id, salt, FIRST_RECORD_OFFSET, next_seq, VERSION))
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
            scan.header.version,
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
    /// Returns the encoded length. (The same as [`Self::begin_group`], [`Self::add_pages`]
    /// for each run and [`Self::finish_group`]; the tests' shorthand.)
    #[cfg(test)]
    pub(crate) fn encode_group(&mut self, seq: u64, extent: u64, synced: u64, runs: &[(u64, &[u8])]) -> u64 {
        self.begin_group(seq, synced);
        for &(region_offset, bytes) in runs {
            self.add_pages(region_offset, bytes);
        }
        self.finish_group(extent)
    }

    /// Starts encoding group `seq` (which must be [`Self::next_seq`]); `synced` is an offset
    /// `<= end()` already durable. Add pages with [`Self::add_pages`] and
    /// [`Self::delta_entry`], then close it with [`Self::finish_group`]. Does not allocate once
    /// the buffers have grown to the largest group (cost: one memcpy and one crc32 pass over
    /// the payload).
    pub(crate) fn begin_group(&mut self, seq: u64, synced: u64) {
        debug_assert_eq!(seq, self.next_seq, "groups must have consecutive sequence numbers");
        debug_assert!(
            synced <= self.end,
            "synced {synced} is past the journal end {}",
            self.end
        );
        self.buf.clear();
        self.delta.clear();
        self.group = GroupState {
            seq,
            synced,
            open_pages: None,
            delta_entries: 0,
            records: 0,
        };
        self.encoded = None;
    }

    fn header(&self, kind: u16, len: usize, count: u32, arg: u64) -> RecordHeader {
        RecordHeader {
            crc: 0,
            kind,
            flags: 0,
            len: len as u32,
            count,
            seq: self.group.seq,
            arg,
            synced: self.group.synced,
        }
    }

    /// Closes the open `PAGES` record, if any.
    fn close_pages(&mut self) {
        if let Some((at, start, len)) = self.group.open_pages.take() {
            let h = self.header(KIND_PAGES, len, (len as u64 / PAGE_SIZE) as u32, start);
            self.seal(at, h);
            self.group.records += 1;
        }
    }

    /// Adds whole page images `bytes` at region offset `region_offset` (both multiples of
    /// 4096) to the group, continuing the open `PAGES` record when contiguous with it.
    pub(crate) fn add_pages(&mut self, region_offset: u64, bytes: &[u8]) {
        const MAX: usize = MAX_PAGES_PAYLOAD as usize;
        debug_assert!(region_offset % PAGE_SIZE == 0 && bytes.len() as u64 % PAGE_SIZE == 0);
        let (mut off, mut rest) = (region_offset, bytes);
        while !rest.is_empty() {
            let (at, start, len) = match self.group.open_pages {
                Some((at, start, len)) if start + len as u64 == off && len < MAX => (at, start, len),
                _ => {
                    self.close_pages();
                    let at = self.buf.len();
                    self.buf.resize(at + RECORD_HEADER_LEN, 0);
                    (at, off, 0)
                }
            };
            let take = rest.len().min(MAX - len);
            crate::mem::sysmem::extend_bytes(&mut self.buf, &rest[..take]);
            self.group.open_pages = Some((at, start, len + take));
            off += take as u64;
            rest = &rest[take..];
        }
    }

    /// Whether this journal's format version may hold `DELTA` records (a resumed version-1
    /// journal may not).
    pub(crate) fn accepts_delta(&self) -> bool {
        self.version >= DELTA_VERSION
    }

    /// Reserves a `DELTA` entry of `len` bytes (a multiple of 8, at most 1 MiB) in the group
    /// and returns it for the caller to encode (`format::delta::encode_entry`). Entries must
    /// come in increasing page order within the group.
    pub(crate) fn delta_entry(&mut self, len: usize) -> &mut [u8] {
        debug_assert!(self.accepts_delta() && len % 8 == 0 && len <= MAX_PAGES_PAYLOAD as usize);
        if self.delta.len() + len > MAX_PAGES_PAYLOAD as usize {
            self.flush_delta();
        }
        let at = self.delta.len();
        self.delta.resize(at + len, 0);
        self.group.delta_entries += 1;
        &mut self.delta[at..]
    }

    /// Appends the staged `DELTA` entries as one record.
    fn flush_delta(&mut self) {
        if self.group.delta_entries == 0 {
            return;
        }
        self.close_pages();
        let at = self.buf.len();
        self.buf.resize(at + RECORD_HEADER_LEN, 0);
        crate::mem::sysmem::extend_bytes(&mut self.buf, &self.delta);
        let h = self.header(KIND_DELTA, self.delta.len(), self.group.delta_entries, 0);
        self.seal(at, h);
        self.group.records += 1;
        self.delta.clear();
        self.group.delta_entries = 0;
    }

    /// Closes the group with its `COMMIT` record (carrying `extent`) and returns the encoded
    /// length; [`Self::write_encoded`] writes it.
    pub(crate) fn finish_group(&mut self, extent: u64) -> u64 {
        self.flush_delta();
        self.close_pages();
        let at = self.buf.len();
        self.buf.resize(at + RECORD_HEADER_LEN, 0);
        let h = self.header(KIND_COMMIT, 0, self.group.records, extent);
        self.seal(at, h);
        debug_assert_eq!(self.buf.len() as u64 % RECORD_ALIGN, 0);
        self.encoded = Some(self.group.seq);
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

    /// The records of the group encoded last (between [`Self::finish_group`] or
    /// [`Self::encode_wire`] and [`Self::write_encoded`]), as they will be written.
    pub(crate) fn encoded(&self) -> &[u8] {
        &self.buf
    }

    /// This journal's salt (mixed into every record checksum).
    pub(crate) fn salt(&self) -> u64 {
        self.salt
    }

    /// Encodes group `seq` from records in wire form (validated by the caller: whole records,
    /// `crc` and `synced` zero): copies them, stores `synced` in each and seals each with this
    /// journal's salt. [`Self::write_encoded`] then writes them as one group.
    pub(crate) fn encode_wire(&mut self, seq: u64, synced: u64, records: &[u8]) {
        debug_assert_eq!(seq, self.next_seq, "groups must have consecutive sequence numbers");
        self.buf.clear();
        self.delta.clear();
        self.group = GroupState::default();
        crate::mem::sysmem::extend_bytes(&mut self.buf, records);
        let mut pos = 0usize;
        while pos + RECORD_HEADER_LEN <= self.buf.len() {
            let Some(mut h) = RecordHeader::decode(&self.buf[pos..]) else {
                break;
            };
            h.synced = synced;
            let end = (pos + RECORD_HEADER_LEN + h.len as usize).min(self.buf.len());
            let rec = &mut self.buf[pos..end];
            h.encode(rec);
            seal_record(rec, self.salt);
            pos += h.record_len() as usize;
        }
        self.encoded = Some(seq);
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
