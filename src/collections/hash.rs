//! [`PersistentState`]: a seeded hasher whose complete state is stored in the map.
//!
//! The function is a folded 64x64->128 multiply over 8-byte words (the construction used by
//! several fast non-cryptographic hashes), written here so that its output is fixed by this
//! crate's format version rather than by a dependency's. Each map draws its own seed, so keys
//! do not collide identically across maps; it is not meant to resist deliberate collision
//! attacks by an adversary who can read the seed.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

const K0: u64 = 0x243f_6a88_85a3_08d3;
const K1: u64 = 0x1319_8a2e_0370_7344;
const K2: u64 = 0xa409_3822_299f_31d0;

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// Builds [`PersistentHasher`]s; stores one 64-bit seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PersistentState {
    seed: u64,
}

thread_local! {
    static NEXT_SEED: Cell<u64> = const { Cell::new(0) };
}

impl PersistentState {
    /// A state with a fixed seed (the same hashes in every map built with it).
    pub const fn with_seed(seed: u64) -> Self {
        PersistentState { seed }
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }
}

impl Default for PersistentState {
    /// A fresh seed: a per-thread sequence started from the OS's random source.
    fn default() -> Self {
        let seed = NEXT_SEED.with(|c| {
            let mut s = c.get();
            if s == 0 {
                s = crate::sys::random_u64() | 1;
            }
            s = s.wrapping_add(K2);
            c.set(s);
            fold_mul(s, K1)
        });
        PersistentState { seed }
    }
}

impl BuildHasher for PersistentState {
    type Hasher = PersistentHasher;
    #[inline]
    fn build_hasher(&self) -> PersistentHasher {
        PersistentHasher { acc: self.seed ^ K0 }
    }
}

/// The hasher built by [`PersistentState`].
#[derive(Clone, Debug)]
pub struct PersistentHasher {
    acc: u64,
}

impl Hasher for PersistentHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u16(&mut self, i: u16) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.write_u64(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.acc = fold_mul(self.acc ^ i, K1);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.acc, K2).rotate_left(26)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn h<T: Hash>(s: &PersistentState, v: T) -> u64 {
        s.hash_one(v)
    }

    #[test]
    fn hashes_depend_only_on_seed_and_value() {
        let a = PersistentState::with_seed(42);
        let b = PersistentState::with_seed(42);
        assert_eq!(h(&a, "hello"), h(&b, "hello"));
        assert_eq!(h(&a, 7u64), h(&b, 7u64));
        assert_ne!(h(&a, 7u64), h(&PersistentState::with_seed(43), 7u64));
        // Pinned value: changing the function would break every persisted map.
        assert_eq!(
            h(&PersistentState::with_seed(1), 12345u64),
            0xd1b6_264a_0861_04e6,
            "hash function changed"
        );
    }

    #[test]
    fn default_states_differ() {
        assert_ne!(PersistentState::default(), PersistentState::default());
    }

    #[test]
    fn sequential_keys_spread_over_top_bits() {
        let s = PersistentState::with_seed(9);
        let mut buckets = [0u32; 128];
        for k in 0..128_000u64 {
            buckets[(h(&s, k) >> 57) as usize] += 1;
        }
        assert!(buckets.iter().all(|&c| c > 700 && c < 1300), "{buckets:?}");
    }
}
