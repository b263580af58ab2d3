//! Frames: how a wire group travels through a JetStream message (pure, no I/O).
//!
//! A wire group (the core's self-describing, checksummed commit group) may be larger than a
//! NATS message may be (1 MiB including headers by default), so it is split into frames.
//! Every frame carries a fixed 56-byte header and a slice of the group's bytes; an epoch
//! record (written by a promotion) is a frame of kind [`Kind::Epoch`] whose payload is the
//! new leader's node name. Layout, little-endian:
//!
//! ```text
//! 0        4        6    7    8                16               24               32
//! | magic  | version|kind|flag| heap_id        | epoch          | seq            |
//! 32       36       40                48       52       56
//! | index  | count  | group_len       | plen   | crc    | payload (plen bytes) ...
//! ```
//!
//! - `magic` = [`FRAME_MAGIC`] (`"SHNF"`), `version` = [`FRAME_VERSION`], `flag` = 0.
//! - `seq`: the commit seq of the group (data) or the last seq of the previous epoch that the
//!   new leader holds (epoch record).
//! - `index` in `0..count`; `count >= 1`; `group_len` = the whole group's length (0 for an
//!   epoch record); `plen` = this frame's payload length.
//! - `crc` = CRC-32 of bytes `0..52` followed by the payload.
//!
//! # Invariants
//! - `HEADER_LEN + plen <= MAX_FRAME_BYTES` for every frame [`split`] produces, and the
//!   payloads of frames `0..count` concatenated are the group's bytes exactly;
//! - [`decode`] accepts exactly the byte strings [`encode`] produces (header + payload; any
//!   changed byte changes the CRC or a checked field); it never panics on any input;
//! - [`Reassembler`] returns a group only when all `count` frames of one identity
//!   `(heap_id, epoch, seq, count, group_len)` arrived in index order and their lengths add
//!   up to `group_len`; it holds at most `max_group` bytes.

use std::fmt;

/// `"SHNF"` read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"SHNF");
/// The frame format version this crate writes and reads.
pub const FRAME_VERSION: u16 = 1;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 56;
/// Largest frame (header + payload): 1 MiB less 4 KiB left for the NATS message headers
/// (`Nats-Msg-Id`, `Nats-Expected-Last-Subject-Sequence`), so a frame fits the server's
/// default `max_payload` of 1 MiB.
pub const MAX_FRAME_BYTES: usize = (1 << 20) - 4096;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = MAX_FRAME_BYTES - HEADER_LEN;

const MAGIC_OFFSET: usize = 0;
const VERSION_OFFSET: usize = MAGIC_OFFSET + 4;
const KIND_OFFSET: usize = VERSION_OFFSET + 2;
const FLAG_OFFSET: usize = KIND_OFFSET + 1;
const HEAP_OFFSET: usize = FLAG_OFFSET + 1;
const EPOCH_OFFSET: usize = HEAP_OFFSET + 8;
const SEQ_OFFSET: usize = EPOCH_OFFSET + 8;
const INDEX_OFFSET: usize = SEQ_OFFSET + 8;
const COUNT_OFFSET: usize = INDEX_OFFSET + 4;
const GROUP_LEN_OFFSET: usize = COUNT_OFFSET + 4;
const PLEN_OFFSET: usize = GROUP_LEN_OFFSET + 8;
const CRC_OFFSET: usize = PLEN_OFFSET + 4;
const _: () = assert!(CRC_OFFSET + 4 == HEADER_LEN);

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A slice of a wire group.
    Data,
    /// An epoch record: a promotion started epoch `epoch` after seq `seq`.
    Epoch,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Data => 1,
            Kind::Epoch => 2,
        }
    }
}

/// A frame's header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Data or epoch record.
    pub kind: Kind,
    /// The heap the log belongs to.
    pub heap_id: u64,
    /// The leader epoch the frame was written in.
    pub epoch: u64,
    /// Commit seq (see the module doc).
    pub seq: u64,
    /// Fragment index, `0..count`.
    pub index: u32,
    /// Number of fragments of the group.
    pub count: u32,
    /// Length of the whole group.
    pub group_len: u64,
}

/// A decoded frame borrowing its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: Header,
    /// The payload.
    pub payload: &'a [u8],
}

/// Why a byte string is not a valid frame, or why frames do not assemble.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// Byte offset of the bad field in the frame (0 when not about one field).
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad frame at byte {}: {}", self.offset, self.what)
    }
}

fn err(offset: usize, what: impl Into<String>) -> FrameError {
    FrameError {
        offset,
        what: what.into(),
    }
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Encodes one frame: the header for `h` followed by `payload`.
pub fn encode(h: &Header, payload: &[u8]) -> Vec<u8> {
    debug_assert!(HEADER_LEN + payload.len() <= MAX_FRAME_BYTES);
    debug_assert!(h.index < h.count);
    let mut b = vec![0u8; HEADER_LEN + payload.len()];
    b[MAGIC_OFFSET..MAGIC_OFFSET + 4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    b[VERSION_OFFSET..VERSION_OFFSET + 2].copy_from_slice(&FRAME_VERSION.to_le_bytes());
    b[KIND_OFFSET] = h.kind.code();
    b[FLAG_OFFSET] = 0;
    b[HEAP_OFFSET..HEAP_OFFSET + 8].copy_from_slice(&h.heap_id.to_le_bytes());
    b[EPOCH_OFFSET..EPOCH_OFFSET + 8].copy_from_slice(&h.epoch.to_le_bytes());
    b[SEQ_OFFSET..SEQ_OFFSET + 8].copy_from_slice(&h.seq.to_le_bytes());
    b[INDEX_OFFSET..INDEX_OFFSET + 4].copy_from_slice(&h.index.to_le_bytes());
    b[COUNT_OFFSET..COUNT_OFFSET + 4].copy_from_slice(&h.count.to_le_bytes());
    b[GROUP_LEN_OFFSET..GROUP_LEN_OFFSET + 8].copy_from_slice(&h.group_len.to_le_bytes());
    b[PLEN_OFFSET..PLEN_OFFSET + 4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[HEADER_LEN..].copy_from_slice(payload);
    let crc = crc_of(&b[..CRC_OFFSET], payload);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn crc_of(head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Decodes and checks one frame. Every field is checked; nothing here panics.
pub fn decode(b: &[u8]) -> Result<Frame<'_>, FrameError> {
    if b.len() < HEADER_LEN {
        return Err(err(
            0,
            format!("{} bytes, shorter than the {HEADER_LEN}-byte header", b.len()),
        ));
    }
    if b.len() > MAX_FRAME_BYTES {
        return Err(err(0, format!("{} bytes, longer than {MAX_FRAME_BYTES}", b.len())));
    }
    let magic = u32_at(b, MAGIC_OFFSET);
    if magic != FRAME_MAGIC {
        return Err(err(MAGIC_OFFSET, format!("magic {magic:#010x}")));
    }
    let version = u16_at(b, VERSION_OFFSET);
    if version != FRAME_VERSION {
        return Err(err(
            VERSION_OFFSET,
            format!("frame version {version}, this build reads {FRAME_VERSION}"),
        ));
    }
    let plen = u32_at(b, PLEN_OFFSET) as usize;
    if plen != b.len() - HEADER_LEN {
        return Err(err(
            PLEN_OFFSET,
            format!(
                "payload length {plen} but {} bytes follow the header",
                b.len() - HEADER_LEN
            ),
        ));
    }
    let payload = &b[HEADER_LEN..];
    let stored = u32_at(b, CRC_OFFSET);
    let actual = crc_of(&b[..CRC_OFFSET], payload);
    if stored != actual {
        return Err(err(
            CRC_OFFSET,
            format!("checksum {stored:#010x}, computed {actual:#010x}"),
        ));
    }
    let kind = match b[KIND_OFFSET] {
        1 => Kind::Data,
        2 => Kind::Epoch,
        k => return Err(err(KIND_OFFSET, format!("unknown kind {k}"))),
    };
    if b[FLAG_OFFSET] != 0 {
        return Err(err(FLAG_OFFSET, format!("flags {:#x}", b[FLAG_OFFSET])));
    }
    let header = Header {
        kind,
        heap_id: u64_at(b, HEAP_OFFSET),
        epoch: u64_at(b, EPOCH_OFFSET),
        seq: u64_at(b, SEQ_OFFSET),
        index: u32_at(b, INDEX_OFFSET),
        count: u32_at(b, COUNT_OFFSET),
        group_len: u64_at(b, GROUP_LEN_OFFSET),
    };
    if header.count == 0 || header.index >= header.count {
        return Err(err(
            INDEX_OFFSET,
            format!("fragment {} of {}", header.index, header.count),
        ));
    }
    if kind == Kind::Epoch && (header.count != 1 || header.group_len != 0) {
        return Err(err(
            COUNT_OFFSET,
            format!(
                "epoch record with {} fragments and group length {}",
                header.count, header.group_len
            ),
        ));
    }
    if kind == Kind::Data && (plen as u64) > header.group_len {
        return Err(err(
            GROUP_LEN_OFFSET,
            format!("payload {plen} longer than the group ({})", header.group_len),
        ));
    }
    Ok(Frame { header, payload })
}

/// The `Nats-Msg-Id` of a frame: `heap-epoch-seq-index` (the server drops a second publish
/// with the same id inside its duplicate window).
pub fn msg_id(h: &Header) -> String {
    match h.kind {
        Kind::Data => format!("{:016x}-{}-{}-{}", h.heap_id, h.epoch, h.seq, h.index),
        Kind::Epoch => format!("{:016x}-{}-epoch-{}", h.heap_id, h.epoch, h.seq),
    }
}

/// Splits a group's bytes into frames of at most `max_payload` payload bytes each (clamped
/// to `1..=MAX_PAYLOAD`). An empty group is one empty frame.
pub fn split(heap_id: u64, epoch: u64, seq: u64, group: &[u8], max_payload: usize) -> Vec<(Header, Vec<u8>)> {
    let max = max_payload.clamp(1, MAX_PAYLOAD);
    let count = group.len().div_ceil(max).max(1);
    let count32 = u32::try_from(count).expect("a group of fewer than 2^32 frames");
    (0..count)
        .map(|i| {
            let h = Header {
                kind: Kind::Data,
                heap_id,
                epoch,
                seq,
                index: i as u32,
                count: count32,
                group_len: group.len() as u64,
            };
            let end = ((i + 1) * max).min(group.len());
            let part = &group[(i * max).min(group.len())..end];
            (h, encode(&h, part))
        })
        .collect()
}

/// The epoch record frame for a promotion to `epoch` after `seq`, naming `node`.
pub fn epoch_record(heap_id: u64, epoch: u64, seq: u64, node: &str) -> (Header, Vec<u8>) {
    let h = Header {
        kind: Kind::Epoch,
        heap_id,
        epoch,
        seq,
        index: 0,
        count: 1,
        group_len: 0,
    };
    let name = &node.as_bytes()[..node.len().min(255)];
    (h, encode(&h, name))
}

/// What one pushed frame produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A whole group arrived.
    Group {
        /// Its epoch.
        epoch: u64,
        /// Its commit seq.
        seq: u64,
        /// The group's bytes.
        bytes: Vec<u8>,
    },
    /// An epoch record (any partial group was dropped: it was abandoned by the old leader).
    Epoch {
        /// The new epoch.
        epoch: u64,
        /// The last seq of the previous epoch that the new leader holds.
        seq: u64,
        /// The new leader's node name (lossy UTF-8).
        node: String,
    },
    /// A fragment was stored; more are needed.
    Partial,
    /// The frame was dropped, with why (a repeated fragment, a fragment without its start).
    Ignored(&'static str),
}

struct Partial {
    epoch: u64,
    seq: u64,
    count: u32,
    group_len: u64,
    next: u32,
    bytes: Vec<u8>,
}

/// Rebuilds groups from frames in stream order for one heap.
pub struct Reassembler {
    heap_id: u64,
    max_group: u64,
    cur: Option<Partial>,
}

impl Reassembler {
    /// A reassembler for `heap_id` that refuses groups longer than `max_group` bytes.
    pub fn new(heap_id: u64, max_group: u64) -> Reassembler {
        Reassembler {
            heap_id,
            max_group,
            cur: None,
        }
    }

    /// Drops any partial group (after a re-bootstrap or a consumer restart).
    pub fn reset(&mut self) {
        self.cur = None;
    }

    /// True while a group is partly assembled.
    pub fn has_partial(&self) -> bool {
        self.cur.is_some()
    }

    /// Feeds the next frame of the stream. Errors name a frame that cannot belong to this
    /// log (another heap, an impossible length); the partial group is dropped then too.
    pub fn push(&mut self, f: &Frame<'_>) -> Result<Event, FrameError> {
        let h = f.header;
        if h.heap_id != self.heap_id {
            self.cur = None;
            return Err(err(
                HEAP_OFFSET,
                format!(
                    "frame of heap {:#018x} in the log of heap {:#018x}",
                    h.heap_id, self.heap_id
                ),
            ));
        }
        if h.kind == Kind::Epoch {
            self.cur = None;
            return Ok(Event::Epoch {
                epoch: h.epoch,
                seq: h.seq,
                node: String::from_utf8_lossy(f.payload).into_owned(),
            });
        }
        if h.group_len > self.max_group {
            self.cur = None;
            return Err(err(
                GROUP_LEN_OFFSET,
                format!("group of {} bytes, more than the limit {}", h.group_len, self.max_group),
            ));
        }
        if h.index == 0 {
            // A new group starts; a partial one before it was abandoned (its writer died or
            // restarted and is sending it again).
            self.cur = Some(Partial {
                epoch: h.epoch,
                seq: h.seq,
                count: h.count,
                group_len: h.group_len,
                next: 0,
                bytes: Vec::with_capacity(f.payload.len()),
            });
        }
        let Some(p) = self.cur.as_mut() else {
            return Ok(Event::Ignored("fragment without the start of its group"));
        };
        let same = p.epoch == h.epoch && p.seq == h.seq && p.count == h.count && p.group_len == h.group_len;
        if !same {
            self.cur = None;
            return Ok(Event::Ignored("fragment of another group than the one assembling"));
        }
        if h.index < p.next {
            return Ok(Event::Ignored("repeated fragment"));
        }
        if h.index > p.next {
            self.cur = None;
            return Ok(Event::Ignored("fragment after a missing one"));
        }
        if p.bytes.len() as u64 + f.payload.len() as u64 > p.group_len {
            self.cur = None;
            return Err(err(PLEN_OFFSET, "fragments longer than the group"));
        }
        p.bytes.extend_from_slice(f.payload);
        p.next += 1;
        if p.next < p.count {
            return Ok(Event::Partial);
        }
        let p = self.cur.take().expect("partial present");
        if p.bytes.len() as u64 != p.group_len {
            return Err(err(
                GROUP_LEN_OFFSET,
                format!("group of {} bytes announced, {} arrived", p.group_len, p.bytes.len()),
            ));
        }
        Ok(Event::Group {
            epoch: p.epoch,
            seq: p.seq,
            bytes: p.bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn group(len: usize, salt: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ salt).collect()
    }

    #[test]
    fn split_then_reassemble_gives_the_group_back() {
        for (len, max) in [
            (0, 100),
            (1, 100),
            (100, 100),
            (101, 100),
            (10_000, 333),
            (3 << 20, MAX_PAYLOAD),
        ] {
            let g = group(len, 7);
            let frames = split(9, 2, 41, &g, max);
            assert_eq!(frames.len(), len.div_ceil(max.min(MAX_PAYLOAD)).max(1));
            let mut r = Reassembler::new(9, 1 << 30);
            let mut out = None;
            for (i, (h, b)) in frames.iter().enumerate() {
                assert!(b.len() <= MAX_FRAME_BYTES);
                let f = decode(b).unwrap();
                assert_eq!(f.header, *h);
                match r.push(&f).unwrap() {
                    Event::Partial => assert!(i + 1 < frames.len()),
                    Event::Group { epoch, seq, bytes } => {
                        assert_eq!((epoch, seq, i + 1), (2, 41, frames.len()));
                        out = Some(bytes);
                    }
                    e => panic!("unexpected {e:?}"),
                }
            }
            assert_eq!(out.unwrap(), g);
        }
    }

    #[test]
    fn every_single_byte_change_is_refused() {
        let (_, b) = split(5, 1, 3, &group(200, 1), 1000).remove(0);
        for i in 0..b.len() {
            for bit in [0x01u8, 0x80] {
                let mut c = b.clone();
                c[i] ^= bit;
                assert!(decode(&c).is_err(), "flip at byte {i} accepted");
            }
        }
        for n in 0..b.len() {
            assert!(decode(&b[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn repeated_fragments_are_ignored_and_restarts_begin_again() {
        let g = group(1000, 3);
        let frames = split(1, 1, 10, &g, 300);
        let d: Vec<Frame<'_>> = frames.iter().map(|(_, b)| decode(b).unwrap()).collect();
        let mut r = Reassembler::new(1, 1 << 20);
        assert_eq!(r.push(&d[0]).unwrap(), Event::Partial);
        assert_eq!(r.push(&d[1]).unwrap(), Event::Partial);
        assert_eq!(r.push(&d[1]).unwrap(), Event::Ignored("repeated fragment"));
        // The writer restarted and sends the group from its first frame again.
        assert_eq!(r.push(&d[0]).unwrap(), Event::Partial);
        for f in &d[1..3] {
            assert_eq!(r.push(f).unwrap(), Event::Partial);
        }
        match r.push(&d[3]).unwrap() {
            Event::Group { bytes, .. } => assert_eq!(bytes, g),
            e => panic!("{e:?}"),
        }
        // A middle fragment without its start, and a skipped fragment, are dropped.
        assert!(matches!(r.push(&d[2]).unwrap(), Event::Ignored(_)));
        assert_eq!(r.push(&d[0]).unwrap(), Event::Partial);
        assert!(matches!(r.push(&d[2]).unwrap(), Event::Ignored(_)));
        assert!(!r.has_partial());
    }

    #[test]
    fn an_epoch_record_drops_the_abandoned_partial_group() {
        let frames = split(1, 1, 10, &group(1000, 3), 300);
        let mut r = Reassembler::new(1, 1 << 20);
        r.push(&decode(&frames[0].1).unwrap()).unwrap();
        let (_, e) = epoch_record(1, 2, 9, "standby-b");
        assert_eq!(
            r.push(&decode(&e).unwrap()).unwrap(),
            Event::Epoch {
                epoch: 2,
                seq: 9,
                node: "standby-b".into()
            }
        );
        assert!(!r.has_partial());
        assert!(matches!(
            r.push(&decode(&frames[1].1).unwrap()).unwrap(),
            Event::Ignored(_)
        ));
    }

    #[test]
    fn frames_of_another_heap_or_oversized_groups_are_errors() {
        let (_, b) = split(2, 1, 1, &group(10, 0), 100).remove(0);
        let mut r = Reassembler::new(1, 1 << 20);
        assert!(r.push(&decode(&b).unwrap()).is_err());
        let (_, b) = split(1, 1, 1, &group(5000, 0), 100).remove(0);
        let mut r = Reassembler::new(1, 4000);
        assert!(r.push(&decode(&b).unwrap()).is_err());
    }

    /// Random, damaged, shuffled and forged frames: decode and the reassembler must never
    /// panic, and whatever group comes out must be one of the real groups, whole.
    #[test]
    fn random_and_corrupt_frames_never_panic_or_forge_a_group() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let groups: Vec<Vec<u8>> = (0..8).map(|i| group(rng.below(3000) as usize, i)).collect();
        let mut pool: Vec<Vec<u8>> = Vec::new();
        for (s, g) in groups.iter().enumerate() {
            for (_, b) in split(7, 1 + (s as u64 % 2), s as u64 + 1, g, 1 + rng.below(900) as usize) {
                pool.push(b);
            }
        }
        let mut r = Reassembler::new(7, 1 << 16);
        let mut produced = 0;
        for _ in 0..200_000 {
            let mut b = pool[rng.below(pool.len() as u64) as usize].clone();
            match rng.below(6) {
                0 => {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
                1 => b.truncate(rng.below(b.len() as u64 + 1) as usize),
                2 => b = (0..rng.below(200)).map(|_| rng.next() as u8).collect(),
                3 => {
                    // A forged header with a valid CRC: fields out of range.
                    let h = Header {
                        kind: Kind::Data,
                        heap_id: 7,
                        epoch: 100 + rng.below(3),
                        seq: rng.below(10),
                        index: rng.below(4) as u32,
                        count: 1 + rng.below(4) as u32,
                        group_len: rng.below(5000),
                    };
                    let plen = (rng.below(600) as usize).min(h.group_len as usize);
                    if h.index < h.count {
                        b = encode(&h, &vec![0xEE; plen]);
                    }
                }
                _ => {}
            }
            let Ok(f) = decode(&b) else { continue };
            if let Ok(Event::Group { epoch, seq, bytes }) = r.push(&f) {
                if epoch >= 100 {
                    // A forged group (its own identity): it must not have absorbed a real
                    // fragment, so it is made of forged bytes only.
                    assert!(bytes.iter().all(|&x| x == 0xEE), "forged group mixed");
                    continue;
                }
                produced += 1;
                assert!((1..=8).contains(&seq), "seq {seq} out of the real range");
                assert_eq!(bytes, groups[seq as usize - 1], "seq {seq} reassembled wrong");
            }
        }
        assert!(produced > 0, "the mix never produced a whole group");
    }
}
