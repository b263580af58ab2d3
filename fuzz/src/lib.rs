//! Shared pieces of the snapheap fuzz targets and of the corpus generator.
//!
//! - [`Dir`]: a heap directory packed into one fuzz input (sparse: files of several MiB that
//!   are mostly zeros stay small), with [`encode_dir`] for the generator and [`Dir::decode`]
//!   for the `recovery` target, which never fails (a short input gives fewer files).
//! - Resealing helpers: recompute the checksums of meta, snapshot and journal headers and of
//!   journal records, so that a target can let a mutated input past the checksum checks and
//!   exercise what lies behind them (an input flag decides; without it the checksums are
//!   tested as they are).
//!
//! # Invariants
//!
//! - `Dir::decode` bounds every file: meta <= 4 KiB, snapshots <= 4 KiB + 1 GiB + 32 KiB
//!   (sparse), journals <= [`MAX_JOURNAL`].

use snapheap::fuzzing;

/// The root type of every heap in the corpus and in the `recovery` target.
pub type Root = snapheap::collections::Vec<u64>;

/// `max_size` of the generator's heaps.
pub const MAX_SIZE: u64 = 64 << 20;
/// Largest journal file the `recovery` target writes.
pub const MAX_JOURNAL: u64 = 2 << 20;
/// Largest snapshot file the `recovery` target writes (sparse).
pub const MAX_SNAPSHOT: u64 = 4096 + (1 << 30) + (32 << 10);

/// Meta header: offsets of `base`, `max_size` (docs/design.md, "Meta header").
pub const META_BASE_OFFSET: usize = 24;
/// See [`META_BASE_OFFSET`].
pub const META_MAX_SIZE_OFFSET: usize = 32;

/// File tags in a packed directory.
pub const TAG_META: u8 = 0;
/// `snapshot-0`.
pub const TAG_SNAPSHOT0: u8 = 1;
/// `snapshot-1`.
pub const TAG_SNAPSHOT1: u8 = 2;
/// A journal; its file name comes from the `journal_id` in its header (offset 24).
pub const TAG_JOURNAL: u8 = 3;

/// Input flag: recompute the meta checksum.
pub const RESEAL_META: u8 = 1;
/// Input flag: recompute both snapshot header checksums.
pub const RESEAL_SNAPSHOTS: u8 = 2;
/// Input flag: recompute journal header and record checksums.
pub const RESEAL_JOURNALS: u8 = 4;
/// Input flag (`recovery`): after the commit on a recovered heap, reopen it and check that
/// the commit was recovered.
pub const REOPEN: u8 = 8;

/// One file of a packed directory.
#[derive(Debug, Clone, Default)]
pub struct File {
    /// One of the `TAG_*` values (taken modulo 4).
    pub tag: u8,
    /// Its length.
    pub len: u64,
    /// Non-zero parts: `(offset, bytes)`, clipped to `len`.
    pub chunks: Vec<(u64, Vec<u8>)>,
}

impl File {
    /// The bytes `[0, min(len, limit))`.
    pub fn prefix(&self, limit: u64) -> Vec<u8> {
        let n = self.len.min(limit) as usize;
        let mut out = vec![0u8; n];
        for (off, b) in &self.chunks {
            let off = *off as usize;
            if off < n {
                let m = b.len().min(n - off);
                out[off..off + m].copy_from_slice(&b[..m]);
            }
        }
        out
    }

    /// The file's name in a heap directory.
    pub fn name(&self) -> String {
        match self.tag % 4 {
            TAG_META => "meta".into(),
            TAG_SNAPSHOT0 => "snapshot-0".into(),
            TAG_SNAPSHOT1 => "snapshot-1".into(),
            _ => {
                let head = self.prefix(32);
                let id = head
                    .get(24..32)
                    .map_or(1, |s| u64::from_le_bytes(s.try_into().unwrap()));
                format!("journal-{id:016x}")
            }
        }
    }

    fn limit(&self) -> u64 {
        match self.tag % 4 {
            TAG_META => 4096,
            TAG_JOURNAL => MAX_JOURNAL,
            _ => MAX_SNAPSHOT,
        }
    }
}

/// A packed heap directory: `flags` (the `RESEAL_*` and `REOPEN` bits) and its files.
#[derive(Debug, Clone, Default)]
pub struct Dir {
    /// `RESEAL_*` bits.
    pub flags: u8,
    /// The files, in input order (a later file of the same name replaces an earlier one).
    pub files: Vec<File>,
}

/// Little-endian reader that returns `None` at the end of the input.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    }
}

impl Dir {
    /// Unpacks an input: `flags: u8`, then files: `tag: u8, len: u32 (in 1 KiB units when
    /// tag >= 128), chunks: u16`, each chunk `offset: u32, len: u16, bytes`. Stops quietly at a
    /// short read.
    pub fn decode(data: &[u8]) -> Dir {
        let mut r = Reader(data);
        let mut dir = Dir {
            flags: r.u8().unwrap_or(0),
            files: Vec::new(),
        };
        while let Some(tag) = r.u8() {
            let Some(len) = r.u32() else { break };
            let len = if tag >= 128 {
                u64::from(len) << 10
            } else {
                u64::from(len)
            };
            let mut f = File {
                tag: tag % 4,
                len,
                chunks: Vec::new(),
            };
            f.len = f.len.min(f.limit());
            let n = r.u16().unwrap_or(0);
            for _ in 0..n {
                let (Some(off), Some(cl)) = (r.u32(), r.u16()) else {
                    break;
                };
                let bytes = r.take(usize::from(cl)).unwrap_or(r.0);
                let off = u64::from(off);
                if off < f.len {
                    let keep = (f.len - off).min(bytes.len() as u64) as usize;
                    f.chunks.push((off, bytes[..keep].to_vec()));
                }
            }
            dir.files.push(f);
        }
        dir
    }
}

impl Dir {
    /// Writes the files into `dir` (which must exist), after removing every file but `lock`.
    /// Applies the reseal flags; `fix_meta` may rewrite the meta bytes last.
    pub fn write_to(&self, dir: &std::path::Path, mut fix_meta: impl FnMut(&mut [u8])) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            if e.file_name() != "lock" {
                std::fs::remove_file(e.path())?;
            }
        }
        for f in &self.files {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(dir.join(f.name()))?;
            match f.tag {
                TAG_META | TAG_JOURNAL => {
                    let mut b = f.prefix(u64::MAX);
                    if f.tag == TAG_META {
                        if self.flags & RESEAL_META != 0 {
                            reseal_meta(&mut b);
                        }
                        fix_meta(&mut b);
                    } else if self.flags & RESEAL_JOURNALS != 0 {
                        reseal_journal(&mut b);
                    }
                    file.write_all_at(&b, 0)?;
                }
                _ => {
                    file.set_len(f.len)?;
                    for (off, bytes) in &f.chunks {
                        file.write_all_at(bytes, *off)?;
                    }
                    if self.flags & RESEAL_SNAPSHOTS != 0 {
                        let mut head = f.prefix(128);
                        reseal_snapshot(&mut head);
                        file.write_all_at(&head, 0)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Packs files (`(tag, bytes)`) into an input for the `recovery` target: runs of non-zero
/// bytes become chunks, zeros between them are left out.
pub fn encode_dir(flags: u8, files: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![flags];
    for &(tag, b) in files {
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == 0 {
                i += 1;
                continue;
            }
            let start = i;
            let mut end = i;
            // Extend over short zero gaps; a chunk holds at most 65535 bytes.
            while i < b.len() && i - start < 65_535 {
                if b[i] != 0 {
                    end = i + 1;
                } else if i - end >= 64 {
                    break;
                }
                i += 1;
            }
            chunks.push((start, end));
            i = end;
        }
        let (tag, len) = if b.len() > u32::MAX as usize || b.len() % 1024 == 0 && b.len() > 1 << 20 {
            (tag | 128, (b.len() >> 10) as u32)
        } else {
            (tag, b.len() as u32)
        };
        out.push(tag);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(chunks.len() as u16).to_le_bytes());
        for (s, e) in chunks {
            out.extend_from_slice(&(s as u32).to_le_bytes());
            out.extend_from_slice(&((e - s) as u16).to_le_bytes());
            out.extend_from_slice(&b[s..e]);
        }
    }
    out
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Recomputes the meta checksum (bytes 0..508 into 508).
pub fn reseal_meta(b: &mut [u8]) {
    let at = fuzzing::META_CRC_OFFSET;
    if b.len() >= at + 4 {
        let crc = crc32fast::hash(&b[..at]);
        put_u32(b, at, crc);
    }
}

/// Recomputes a snapshot header checksum (bytes 0..124 into 124).
pub fn reseal_snapshot(b: &mut [u8]) {
    let at = fuzzing::SNAPSHOT_CRC_OFFSET;
    if b.len() >= at + 4 {
        let crc = crc32fast::hash(&b[..at]);
        put_u32(b, at, crc);
    }
}

/// Recomputes a journal's header checksum and the checksum of every record that has a
/// valid shape, walking records from the first until one does not.
pub fn reseal_journal(b: &mut [u8]) {
    let at = fuzzing::JOURNAL_HEADER_CRC_OFFSET;
    if b.len() < at + 4 {
        return;
    }
    let crc = crc32fast::hash(&b[..at]);
    put_u32(b, at, crc);
    let salt = u64::from_le_bytes(b[40..48].try_into().unwrap());
    let mut pos = fuzzing::FIRST_RECORD_OFFSET as usize;
    while let Some(Ok(rec_len)) = b.get(pos..).and_then(fuzzing::record_shape) {
        let payload = u32::from_le_bytes(b[pos + 8..pos + 12].try_into().unwrap()) as usize;
        let end = pos + fuzzing::RECORD_HEADER_LEN + payload;
        if end > b.len() {
            break;
        }
        fuzzing::seal_record(&mut b[pos..end], salt);
        pos += rec_len as usize;
    }
}

/// xorshift64*: a small deterministic generator for the corpus generator.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_directories_round_trip() {
        let mut big = vec![0u8; 3 << 20];
        big[5] = 1;
        big[70_000..70_100].fill(7);
        big[(3 << 20) - 1] = 9;
        let small = b"hello\0\0\0world".to_vec();
        let packed = encode_dir(5, &[(TAG_SNAPSHOT0, &big), (TAG_META, &small)]);
        let d = Dir::decode(&packed);
        assert_eq!(d.flags, 5);
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.files[0].prefix(u64::MAX), big);
        assert_eq!(d.files[1].prefix(u64::MAX), small);
        assert_eq!(d.files[1].name(), "meta");
        for cut in 0..packed.len() {
            let _ = Dir::decode(&packed[..cut]);
        }
    }
}
