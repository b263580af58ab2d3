//! The replication wire formats (`docs/design.md`, "Replication"): a **wire group** (one
//! commit group, self-describing and checksummed, with the chain hash of its history) and a
//! **base** (`meta` and a snapshot file, from which a replica starts). Pure encoding and
//! decoding; every length read from the input is checked before it is used, so no input can
//! make the decoder panic, allocate without bound or loop.
//!
//! A wire group's payload is the group's journal records exactly as the journal holds them,
//! except that the two fields that depend on the journal file (`crc`, salted with the file's
//! salt, and `synced`, a file offset) are zero. The replica re-seals them for its own journal.
//!
//! The chain hash `chain(k) = step(chain(k-1), seq_k, records_k)` folds every group of the
//! history into 64 bits; it ignores `crc` and `synced`, so the journal's and the wire's form
//! of a group give the same value.

use super::delta::{Entries, PAGE_SIZE as DELTA_PAGE};
use super::journal::{
    record_len, RecordHeader, KIND_COMMIT, KIND_DELTA, KIND_PAGES, PAGE_SIZE, RECORD_HEADER_LEN, REC_CRC_OFFSET,
    REC_SYNCED_OFFSET,
};
use super::{get_u32, get_u64, put_u32, put_u64};
use std::fmt;

/// Magic of a wire group.
pub(crate) const GROUP_MAGIC: [u8; 8] = *b"SNAPWIRE";
/// Magic of a base.
pub(crate) const BASE_MAGIC: [u8; 8] = *b"SNAPBASE";
/// Version of both wire formats written and read by this build.
pub(crate) const WIRE_VERSION: u32 = 1;
/// Length of a wire group's and a base's header.
pub(crate) const WIRE_HEADER_LEN: usize = 64;

/// Offsets of a wire group header.
pub(crate) const G_MAGIC_OFFSET: usize = 0;
/// Wire version (u32).
pub(crate) const G_VERSION_OFFSET: usize = 8;
/// Header length (u32) = 64.
pub(crate) const G_HDR_LEN_OFFSET: usize = 12;
/// The primary's heap id (u64).
pub(crate) const G_HEAP_ID_OFFSET: usize = 16;
/// The group's commit sequence number (u64).
pub(crate) const G_SEQ_OFFSET: usize = 24;
/// Chain hash of the history up to `seq - 1` (u64).
pub(crate) const G_PREV_CHAIN_OFFSET: usize = 32;
/// Chain hash of the history up to `seq` (u64).
pub(crate) const G_CHAIN_OFFSET: usize = 40;
/// Payload length (u64).
pub(crate) const G_PAYLOAD_LEN_OFFSET: usize = 48;
/// Number of records in the payload (u32).
pub(crate) const G_RECORDS_OFFSET: usize = 56;
/// crc32 of bytes `0..60` and the payload (u32).
pub(crate) const G_CRC_OFFSET: usize = 60;

/// Offsets of a base header.
pub(crate) const B_HEAP_ID_OFFSET: usize = 16;
/// The commit sequence number the base's snapshot holds (u64).
pub(crate) const B_SEQ_OFFSET: usize = 24;
/// Chain hash of the history up to `seq` (u64).
pub(crate) const B_CHAIN_OFFSET: usize = 32;
/// Length of the `meta` bytes (u64).
pub(crate) const B_META_LEN_OFFSET: usize = 40;
/// Length of the snapshot file bytes (u64).
pub(crate) const B_SNAP_LEN_OFFSET: usize = 48;
/// Reserved, zero (u32).
pub(crate) const B_RESERVED_OFFSET: usize = 56;
/// crc32 of bytes `0..60` and everything after the header (u32).
pub(crate) const B_CRC_OFFSET: usize = 60;

/// Seed of the chain hash of a history that starts without an earlier chain (a heap created
/// with replication on, or whose chain anchor was lost): `genesis(heap_id, seq)`.
const CHAIN_SEED: u64 = 0x736e_6170_6865_6170; // "snapheap"

const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn feed(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(K).rotate_left(27)
}

fn finish(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The chain hash of a history that has no recorded past before `seq`.
pub(crate) fn genesis_chain(heap_id: u64, seq: u64) -> u64 {
    finish(feed(feed(CHAIN_SEED ^ 1, heap_id), seq))
}

/// One step of the chain hash: `prev` folded with group `seq`'s records (journal or wire
/// form: `crc` and `synced` are skipped). `records` must be a whole number of records as a
/// writer laid them out; a malformed tail is folded as raw words (never panics).
pub(crate) fn chain_step(prev: u64, seq: u64, records: &[u8]) -> u64 {
    let mut h = feed(feed(CHAIN_SEED, prev), seq);
    let mut words = 0u64;
    let mut pos = 0usize;
    while pos + RECORD_HEADER_LEN <= records.len() {
        let len = get_u32(records, pos + 8) as usize;
        let end = (pos + RECORD_HEADER_LEN).saturating_add(len).next_multiple_of(8);
        let end = end.min(records.len()) & !7;
        // Word 0 holds crc (low half) and kind/flags (high half): only the high half counts.
        h = feed(h, get_u64(records, pos + REC_CRC_OFFSET) >> 32);
        for off in (pos + 8..pos + REC_SYNCED_OFFSET).step_by(8) {
            h = feed(h, get_u64(records, off));
        }
        for off in (pos + RECORD_HEADER_LEN..end).step_by(8) {
            h = feed(h, get_u64(records, off));
        }
        words += ((end - pos) / 8) as u64;
        pos = end.max(pos + RECORD_HEADER_LEN);
    }
    for off in (pos..records.len() & !7).step_by(8) {
        h = feed(h, get_u64(records, off));
    }
    finish(h ^ words ^ records.len() as u64)
}

/// Why wire bytes were refused, with the byte offset in them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError {
    /// Offset in the input where the problem was found.
    pub offset: u64,
    /// What was wrong.
    pub what: String,
    /// A version this build does not read (not damage).
    pub version: bool,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.what)
    }
}

fn damage(offset: usize, what: impl Into<String>) -> WireError {
    WireError {
        offset: offset as u64,
        what: what.into(),
        version: false,
    }
}

/// One validated record of a wire group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireRecord {
    /// `KIND_PAGES` or `KIND_DELTA` (the `COMMIT` record is summarised in [`WireGroupView`]).
    pub kind: u16,
    /// `PAGES`: region offset of the first page.
    pub arg: u64,
    /// `PAGES`: pages; `DELTA`: entries.
    pub count: u32,
    /// Offset of the payload in the wire group's payload.
    pub payload_at: usize,
    /// Payload length.
    pub len: usize,
}

/// A decoded, fully validated wire group (borrowing the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireGroupView<'a> {
    pub heap_id: u64,
    pub seq: u64,
    pub prev_chain: u64,
    pub chain: u64,
    /// The region extent at this commit (the `COMMIT` record's `arg`).
    pub extent: u64,
    /// The records in journal form, `crc` and `synced` zero.
    pub payload: &'a [u8],
    /// The `PAGES` and `DELTA` records, in order.
    pub records: Vec<WireRecord>,
}

/// Encodes a wire group from a group's records in journal or wire form (copied, with `crc`
/// and `synced` zeroed). `records_count` is the number of records including `COMMIT`.
pub(crate) fn encode_group(heap_id: u64, seq: u64, prev_chain: u64, records: &[u8]) -> (Vec<u8>, u64) {
    let chain = chain_step(prev_chain, seq, records);
    (encode_group_chained(heap_id, seq, prev_chain, chain, records), chain)
}

/// [`encode_group`] when the caller already knows the group's chain hash (`chain ==
/// chain_step(prev_chain, seq, records)`, computed by the commit that wrote it).
pub(crate) fn encode_group_chained(heap_id: u64, seq: u64, prev_chain: u64, chain: u64, records: &[u8]) -> Vec<u8> {
    debug_assert_eq!(
        chain,
        chain_step(prev_chain, seq, records),
        "the chain hash is the group's"
    );
    let mut out = vec![0u8; WIRE_HEADER_LEN + records.len()];
    out[WIRE_HEADER_LEN..].copy_from_slice(records);
    let mut pos = WIRE_HEADER_LEN;
    let mut n = 0u32;
    while pos + RECORD_HEADER_LEN <= out.len() {
        let len = get_u32(&out, pos + 8);
        put_u32(&mut out, pos + REC_CRC_OFFSET, 0);
        put_u64(&mut out, pos + REC_SYNCED_OFFSET, 0);
        n += 1;
        pos += record_len(len) as usize;
    }
    out[G_MAGIC_OFFSET..G_MAGIC_OFFSET + 8].copy_from_slice(&GROUP_MAGIC);
    put_u32(&mut out, G_VERSION_OFFSET, WIRE_VERSION);
    put_u32(&mut out, G_HDR_LEN_OFFSET, WIRE_HEADER_LEN as u32);
    put_u64(&mut out, G_HEAP_ID_OFFSET, heap_id);
    put_u64(&mut out, G_SEQ_OFFSET, seq);
    put_u64(&mut out, G_PREV_CHAIN_OFFSET, prev_chain);
    put_u64(&mut out, G_CHAIN_OFFSET, chain);
    put_u64(&mut out, G_PAYLOAD_LEN_OFFSET, records.len() as u64);
    put_u32(&mut out, G_RECORDS_OFFSET, n);
    let crc = wire_crc(&out);
    put_u32(&mut out, G_CRC_OFFSET, crc);
    out
}

/// crc32 of header bytes `0..60` and everything after the header.
fn wire_crc(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[..G_CRC_OFFSET]);
    h.update(&b[WIRE_HEADER_LEN..]);
    h.finalize()
}

/// Checks the fixed part of a header (magic, version, header length, checksum).
fn check_header(b: &[u8], magic: &[u8; 8], what: &str) -> Result<(), WireError> {
    if b.len() < WIRE_HEADER_LEN {
        return Err(damage(
            b.len(),
            format!("{what} of {} bytes is shorter than its 64-byte header", b.len()),
        ));
    }
    if b[..8] != magic[..] {
        return Err(damage(0, format!("bad magic: not a {what}")));
    }
    let v = get_u32(b, G_VERSION_OFFSET);
    if v != WIRE_VERSION {
        return Err(WireError {
            offset: G_VERSION_OFFSET as u64,
            what: format!("{what} has wire version {v}, this build reads version {WIRE_VERSION}"),
            version: true,
        });
    }
    if get_u32(b, G_HDR_LEN_OFFSET) as usize != WIRE_HEADER_LEN {
        return Err(damage(G_HDR_LEN_OFFSET, "header length is not 64"));
    }
    if get_u32(b, G_CRC_OFFSET) != wire_crc(b) {
        return Err(damage(
            G_CRC_OFFSET,
            format!("{what} checksum does not match (damaged in transit?)"),
        ));
    }
    Ok(())
}

/// Decodes and validates a wire group completely: header, checksum, chain hash, and every
/// record (shape, sequence number, zero `crc`/`synced`, page alignment and extent, `DELTA`
/// payloads, no page twice, exactly one `COMMIT` at the end counting the others).
pub(crate) fn decode_group(b: &[u8]) -> Result<WireGroupView<'_>, WireError> {
    check_header(b, &GROUP_MAGIC, "wire group")?;
    let payload_len = get_u64(b, G_PAYLOAD_LEN_OFFSET);
    if payload_len != (b.len() - WIRE_HEADER_LEN) as u64 {
        return Err(damage(
            G_PAYLOAD_LEN_OFFSET,
            format!(
                "payload length {payload_len} but {} bytes follow the header",
                b.len() - WIRE_HEADER_LEN
            ),
        ));
    }
    let heap_id = get_u64(b, G_HEAP_ID_OFFSET);
    let seq = get_u64(b, G_SEQ_OFFSET);
    let prev_chain = get_u64(b, G_PREV_CHAIN_OFFSET);
    let chain = get_u64(b, G_CHAIN_OFFSET);
    let n_records = get_u32(b, G_RECORDS_OFFSET);
    let payload = &b[WIRE_HEADER_LEN..];
    let at = |off: usize| WIRE_HEADER_LEN + off;
    let mut records = Vec::new();
    let mut pages = std::collections::HashSet::new();
    let mut pos = 0usize;
    let mut extent = None;
    let mut seen = 0u32;
    while pos < payload.len() {
        if extent.is_some() {
            return Err(damage(at(pos), "bytes after the COMMIT record"));
        }
        let Some(h) = RecordHeader::decode(&payload[pos..]) else {
            return Err(damage(at(pos), "partial record header"));
        };
        h.check_shape().map_err(|w| damage(at(pos), w))?;
        let rec_len = h.record_len() as usize;
        if rec_len > payload.len() - pos {
            return Err(damage(at(pos), "record extends past the end of the group"));
        }
        if h.seq != seq {
            return Err(damage(
                at(pos),
                format!("record of sequence {} in the group of sequence {seq}", h.seq),
            ));
        }
        if h.crc != 0 || h.synced != 0 {
            return Err(damage(at(pos), "record crc or synced field is not zero in wire form"));
        }
        let payload_at = pos + RECORD_HEADER_LEN;
        let body = &payload[payload_at..payload_at + h.len as usize];
        if payload[payload_at + h.len as usize..pos + rec_len]
            .iter()
            .any(|&x| x != 0)
        {
            return Err(damage(at(payload_at + h.len as usize), "record padding is not zero"));
        }
        seen += 1;
        match h.kind {
            KIND_PAGES => {
                if h.arg % PAGE_SIZE != 0 || h.arg.checked_add(u64::from(h.len)).is_none() {
                    return Err(damage(at(pos), format!("PAGES record at region offset {:#x}", h.arg)));
                }
                for p in 0..u64::from(h.count) {
                    if !pages.insert(h.arg + p * PAGE_SIZE) {
                        return Err(damage(at(pos), "a page appears twice in the group"));
                    }
                }
                records.push(WireRecord {
                    kind: KIND_PAGES,
                    arg: h.arg,
                    count: h.count,
                    payload_at,
                    len: h.len as usize,
                });
            }
            KIND_DELTA => {
                for e in Entries::new(body, h.count) {
                    let e = e.map_err(|e| damage(at(payload_at + e.offset), e.to_string()))?;
                    if !pages.insert(e.page) {
                        return Err(damage(at(payload_at + e.at), "a page appears twice in the group"));
                    }
                }
                records.push(WireRecord {
                    kind: KIND_DELTA,
                    arg: 0,
                    count: h.count,
                    payload_at,
                    len: h.len as usize,
                });
            }
            _ => {
                debug_assert_eq!(h.kind, KIND_COMMIT);
                if h.count as usize != records.len() {
                    return Err(damage(
                        at(pos),
                        format!("COMMIT counts {} records, the group has {}", h.count, records.len()),
                    ));
                }
                extent = Some(h.arg);
            }
        }
        pos += rec_len;
    }
    let Some(extent) = extent else {
        return Err(damage(b.len(), "the group has no COMMIT record"));
    };
    if seen != n_records {
        return Err(damage(
            G_RECORDS_OFFSET,
            format!("header counts {n_records} records, the payload has {seen}"),
        ));
    }
    if extent % PAGE_SIZE != 0 {
        return Err(damage(b.len(), format!("extent {extent:#x} is not page-aligned")));
    }
    if let Some(&p) = pages.iter().find(|&&p| p.saturating_add(DELTA_PAGE as u64) > extent) {
        return Err(damage(
            b.len(),
            format!("page {p:#x} lies outside the commit's extent {extent:#x}"),
        ));
    }
    if chain_step(prev_chain, seq, payload) != chain {
        return Err(damage(G_CHAIN_OFFSET, "chain hash does not match the group's records"));
    }
    Ok(WireGroupView {
        heap_id,
        seq,
        prev_chain,
        chain,
        extent,
        payload,
        records,
    })
}

/// A decoded base (borrowing the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseView<'a> {
    pub heap_id: u64,
    pub seq: u64,
    pub chain: u64,
    pub meta: &'a [u8],
    pub snapshot: &'a [u8],
}

/// Encodes a base.
pub(crate) fn encode_base(heap_id: u64, seq: u64, chain: u64, meta: &[u8], snapshot: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; WIRE_HEADER_LEN];
    out.reserve(meta.len() + snapshot.len());
    out.extend_from_slice(meta);
    out.extend_from_slice(snapshot);
    out[..8].copy_from_slice(&BASE_MAGIC);
    put_u32(&mut out, G_VERSION_OFFSET, WIRE_VERSION);
    put_u32(&mut out, G_HDR_LEN_OFFSET, WIRE_HEADER_LEN as u32);
    put_u64(&mut out, B_HEAP_ID_OFFSET, heap_id);
    put_u64(&mut out, B_SEQ_OFFSET, seq);
    put_u64(&mut out, B_CHAIN_OFFSET, chain);
    put_u64(&mut out, B_META_LEN_OFFSET, meta.len() as u64);
    put_u64(&mut out, B_SNAP_LEN_OFFSET, snapshot.len() as u64);
    let crc = wire_crc(&out);
    put_u32(&mut out, B_CRC_OFFSET, crc);
    out
}

/// Decodes a base: header, checksum and lengths (the `meta` and snapshot bytes are checked by
/// their own decoders when the replica opens them).
pub(crate) fn decode_base(b: &[u8]) -> Result<BaseView<'_>, WireError> {
    check_header(b, &BASE_MAGIC, "base")?;
    if get_u32(b, B_RESERVED_OFFSET) != 0 {
        return Err(damage(B_RESERVED_OFFSET, "reserved field is not zero"));
    }
    let meta_len = get_u64(b, B_META_LEN_OFFSET);
    let snap_len = get_u64(b, B_SNAP_LEN_OFFSET);
    let rest = (b.len() - WIRE_HEADER_LEN) as u64;
    if meta_len.checked_add(snap_len) != Some(rest) {
        return Err(damage(
            B_META_LEN_OFFSET,
            format!("meta ({meta_len}) and snapshot ({snap_len}) lengths do not add up to the {rest} bytes present"),
        ));
    }
    let m = WIRE_HEADER_LEN + meta_len as usize;
    Ok(BaseView {
        heap_id: get_u64(b, B_HEAP_ID_OFFSET),
        seq: get_u64(b, B_SEQ_OFFSET),
        chain: get_u64(b, B_CHAIN_OFFSET),
        meta: &b[WIRE_HEADER_LEN..m],
        snapshot: &b[m..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::format::journal::seal_record;

    /// A group of one PAGES record (one page) and its COMMIT, in journal form with `salt`.
    fn journal_group(seq: u64, salt: u64, synced: u64, fill: u8) -> Vec<u8> {
        let mut b = vec![0u8; RECORD_HEADER_LEN + 4096 + RECORD_HEADER_LEN];
        let h = RecordHeader {
            crc: 0,
            kind: KIND_PAGES,
            flags: 0,
            len: 4096,
            count: 1,
            seq,
            arg: 8192,
            synced,
        };
        h.encode(&mut b);
        b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + 4096].fill(fill);
        seal_record(&mut b[..RECORD_HEADER_LEN + 4096], salt);
        let c = RecordHeader {
            kind: KIND_COMMIT,
            len: 0,
            count: 1,
            arg: 1 << 20,
            ..h
        };
        c.encode(&mut b[RECORD_HEADER_LEN + 4096..]);
        seal_record(&mut b[RECORD_HEADER_LEN + 4096..], salt);
        b
    }

    #[test]
    fn chain_ignores_salt_and_synced_but_not_content() {
        let a = journal_group(7, 1, 4096, 0xaa);
        let b = journal_group(7, 2, 8192, 0xaa);
        let c = journal_group(7, 1, 4096, 0xab);
        assert_eq!(chain_step(5, 7, &a), chain_step(5, 7, &b));
        assert_ne!(chain_step(5, 7, &a), chain_step(5, 7, &c));
        assert_ne!(chain_step(5, 7, &a), chain_step(6, 7, &a));
        assert_ne!(chain_step(5, 7, &a), chain_step(5, 8, &a));
    }

    #[test]
    fn group_round_trip_and_every_flipped_byte_is_refused() {
        let j = journal_group(9, 77, 4096, 0x5c);
        let (wire, chain) = encode_group(42, 9, 1234, &j);
        let v = decode_group(&wire).unwrap();
        assert_eq!(
            (v.heap_id, v.seq, v.prev_chain, v.chain, v.extent),
            (42, 9, 1234, chain, 1 << 20)
        );
        assert_eq!(v.records.len(), 1);
        assert_eq!(chain, chain_step(1234, 9, &j));
        for i in (0..wire.len()).step_by(7) {
            let mut bad = wire.clone();
            bad[i] ^= 0x10;
            assert!(decode_group(&bad).is_err(), "flip at {i} accepted");
        }
        for cut in [0, 10, 63, 64, 100, wire.len() - 1] {
            assert!(decode_group(&wire[..cut]).is_err());
        }
    }

    #[test]
    fn base_round_trip() {
        let b = encode_base(1, 2, 3, b"meta", b"snapshot");
        let v = decode_base(&b).unwrap();
        assert_eq!(
            (v.heap_id, v.seq, v.chain, v.meta, v.snapshot),
            (1, 2, 3, &b"meta"[..], &b"snapshot"[..])
        );
        let mut bad = b.clone();
        bad[70] ^= 1;
        assert!(decode_base(&bad).is_err());
        assert!(decode_base(&b[..b.len() - 1]).is_err());
    }
}
