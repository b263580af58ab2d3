//! On-disk formats: pure encoding and decoding, no I/O and no unsafe code.
//!
//! All integers are fixed-width little-endian. Each file's layout is documented once in
//! `docs/design.md` and mirrored here by `*_OFFSET` constants that the corruption tests reuse.
//! The getters below take offsets the callers have already bounds-checked against a fixed
//! header length; they never panic on their own (they read zero past the end).

#![forbid(unsafe_code)]

pub(crate) mod delta;
pub(crate) mod journal;
pub(crate) mod meta;
pub(crate) mod root;
pub(crate) mod snapshot;
pub(crate) mod wire;

fn get<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = b.get(off..off + N) {
        out.copy_from_slice(src);
    }
    out
}

/// Reads a little-endian u16 at `off` (zero if out of bounds).
pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get(b, off))
}

/// Reads a little-endian u32 at `off` (zero if out of bounds).
pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(b, off))
}

/// Reads a little-endian u64 at `off` (zero if out of bounds).
pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(b, off))
}

/// Writes a little-endian u16 at `off` (ignored if out of bounds).
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    if let Some(d) = b.get_mut(off..off + 2) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes a little-endian u32 at `off` (ignored if out of bounds).
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    if let Some(d) = b.get_mut(off..off + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

/// Writes a little-endian u64 at `off` (ignored if out of bounds).
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    if let Some(d) = b.get_mut(off..off + 8) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}
