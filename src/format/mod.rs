//! Byte layouts of the heap's files, as pure encode/decode functions: no I/O, no `unsafe`.
//!
//! Each file kind has one submodule that mirrors its section of `docs/design.md` with
//! `*_OFFSET` constants, so corruption tests can flip bytes at exactly those offsets.
//! Everything is fixed-width little-endian.
//!
//! # Invariants
//!
//! - `get_*(b, off)` returns `Some` iff `off + width <= b.len()`; it never panics.
//! - `put_*(b, off, v)` writes iff `off + width <= b.len()` and never panics in release
//!   builds; a short buffer is a programming error and is `debug_assert!`ed.

pub(crate) mod journal;

/// Reads the `N` bytes at `off`, or `None` when `b` is too short.
#[inline]
fn get_array<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    let end = off.checked_add(N)?;
    b.get(off..end)?.try_into().ok()
}

/// Writes `v` at `off` when it fits.
#[inline]
fn put_array<const N: usize>(b: &mut [u8], off: usize, v: [u8; N]) {
    let dst = off.checked_add(N).and_then(|end| b.get_mut(off..end));
    debug_assert!(
        dst.is_some(),
        "put of {N} bytes at {off} into a {}-byte buffer",
        b.len()
    );
    if let Some(dst) = dst {
        dst.copy_from_slice(&v);
    }
}

/// Reads a little-endian `u16` at `off`; `None` when `b` is too short.
#[inline]
pub(crate) fn get_u16(b: &[u8], off: usize) -> Option<u16> {
    get_array(b, off).map(u16::from_le_bytes)
}

/// Reads a little-endian `u32` at `off`; `None` when `b` is too short.
#[inline]
pub(crate) fn get_u32(b: &[u8], off: usize) -> Option<u32> {
    get_array(b, off).map(u32::from_le_bytes)
}

/// Reads a little-endian `u64` at `off`; `None` when `b` is too short.
#[inline]
pub(crate) fn get_u64(b: &[u8], off: usize) -> Option<u64> {
    get_array(b, off).map(u64::from_le_bytes)
}

/// Writes `v` little-endian at `off` (nothing when `b` is too short).
#[inline]
pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    put_array(b, off, v.to_le_bytes());
}

/// Writes `v` little-endian at `off` (nothing when `b` is too short).
#[inline]
pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    put_array(b, off, v.to_le_bytes());
}

/// Writes `v` little-endian at `off` (nothing when `b` is too short).
#[inline]
pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    put_array(b, off, v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_return_none_on_short_input_instead_of_panicking() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert_eq!(get_u16(&b, 6), Some(0x0807));
        assert_eq!(get_u16(&b, 7), None);
        assert_eq!(get_u32(&b, 4), Some(0x0807_0605));
        assert_eq!(get_u32(&b, 5), None);
        assert_eq!(get_u64(&b, 0), Some(0x0807_0605_0403_0201));
        assert_eq!(get_u64(&b, 1), None);
        assert_eq!(get_u64(&b, usize::MAX), None);
    }

    #[test]
    fn putters_write_little_endian_at_the_offset() {
        let mut b = [0u8; 16];
        put_u16(&mut b, 0, 0x0201);
        put_u32(&mut b, 2, 0x0605_0403);
        put_u64(&mut b, 6, 0x0e0d_0c0b_0a09_0807);
        assert_eq!(&b[..14], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        assert_eq!(get_u64(&b, 6), Some(0x0e0d_0c0b_0a09_0807));
    }
}
