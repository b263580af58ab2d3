//! The YCSB core workloads (Cooper et al., "Benchmarking Cloud Serving Systems with YCSB",
//! SoCC 2010) as operation streams: record keys, values, the scrambled zipfian request
//! distribution and the operation mixes of workloads A, B, C and F.
//!
//! Deviations from YCSB's defaults, chosen by issue 10: a record is one `u64` key and one
//! 100-byte value (YCSB: a string key and 10 fields of 100 bytes). Keys are hashed record
//! numbers, as in YCSB's default `insertorder=hashed`, so the load inserts at random positions of
//! an ordered store. Every peer runs the same generated stream.

use crate::Rng;

/// Bytes in one value.
pub const VALUE_LEN: usize = 100;
/// One value.
pub type Val = [u8; VALUE_LEN];

/// YCSB's zipfian constant.
pub const ZIPF_THETA: f64 = 0.99;
/// The item count YCSB's scrambled zipfian draws ranks from before hashing them onto the
/// records (`ScrambledZipfianGenerator.ITEM_COUNT`).
pub const SCRAMBLE_ITEMS: u64 = 10_000_000_000;

/// 64-bit FNV-1a over the eight little-endian bytes of `x` (YCSB's `fnvhash64`).
pub fn fnv64(x: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in x.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The key of record number `i` (YCSB `insertorder=hashed`).
pub fn key_of(i: u64) -> u64 {
    fnv64(i)
}

/// The value a write of version `ver` stores under `key`: bytes 0..8 the key, 8..16 the
/// version, the rest a fill derived from both (so [`check_value`] can tell a torn or misplaced
/// value from a real one).
pub fn value(key: u64, ver: u64) -> Val {
    let mut v = [0u8; VALUE_LEN];
    v[0..8].copy_from_slice(&key.to_le_bytes());
    v[8..16].copy_from_slice(&ver.to_le_bytes());
    let mut x = key ^ ver.rotate_left(32) ^ 0x5851_f42d_4c95_7f2d;
    for c in v[16..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = c.len();
        c.copy_from_slice(&x.to_le_bytes()[..n]);
    }
    v
}

/// The version stored in a value.
pub fn version_of(v: &Val) -> u64 {
    u64::from_le_bytes(v[8..16].try_into().expect("8 bytes"))
}

/// Whether `v` is exactly what [`value`] writes for `key` and the version it carries.
pub fn check_value(key: u64, v: &Val) -> bool {
    *v == value(key, version_of(v))
}

/// Sum of `i^-theta` for `i` in `1..=n`: exact up to a million terms, the Euler-Maclaurin
/// formula (integral, end-point and first-derivative terms) for the tail beyond.
pub fn zeta(n: u64, theta: f64) -> f64 {
    let m = n.min(1_000_000);
    let mut s: f64 = (1..=m).map(|i| (i as f64).powf(-theta)).sum();
    if n > m {
        let f = |x: f64| x.powf(-theta);
        let df = |x: f64| -theta * x.powf(-theta - 1.0);
        let (a, b) = (m as f64, n as f64);
        // sum over (m, n] = integral_a^b f + (f(b) - f(a))/2 + (f'(b) - f'(a))/12 + ...
        s += (b.powf(1.0 - theta) - a.powf(1.0 - theta)) / (1.0 - theta) + (f(b) - f(a)) / 2.0 + (df(b) - df(a)) / 12.0;
    }
    s
}

/// The zipfian generator of Gray et al., "Quickly Generating Billion-Record Synthetic
/// Databases" (SIGMOD 1994), as YCSB uses it: ranks in `0..n`, rank 0 the most popular.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over `n` items with exponent `theta` (0 < theta < 1).
    pub fn new(n: u64, theta: f64) -> Zipfian {
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2, theta);
        let nf = n as f64;
        Zipfian {
            n: nf,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta: (1.0 - (2.0 / nf).powf(1.0 - theta)) / (1.0 - zeta2 / zetan),
        }
    }

    /// The normalisation constant `zeta(n, theta)`.
    pub fn zetan(&self) -> f64 {
        self.zetan
    }

    /// The next rank.
    pub fn next(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let r = (self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n as u64 - 1)
    }
}

/// YCSB's scrambled zipfian: a zipfian rank over [`SCRAMBLE_ITEMS`] hashed onto `0..records`,
/// so the popular records are spread over the key space instead of clustered at its start.
#[derive(Clone, Debug)]
pub struct ScrambledZipfian {
    records: u64,
    z: Zipfian,
}

impl ScrambledZipfian {
    /// A generator of record numbers in `0..records`.
    pub fn new(records: u64) -> ScrambledZipfian {
        ScrambledZipfian {
            records,
            z: Zipfian::new(SCRAMBLE_ITEMS, ZIPF_THETA),
        }
    }

    /// The next record number.
    pub fn next_record(&self, rng: &mut Rng) -> u64 {
        fnv64(self.z.next(rng)) % self.records
    }

    /// The key of the next requested record.
    pub fn next_key(&self, rng: &mut Rng) -> u64 {
        key_of(self.next_record(rng))
    }
}

/// One operation of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read the value of a key.
    Read(u64),
    /// Insert a new record: key and version.
    Insert(u64, u64),
    /// Overwrite an existing record with [`value`]`(key, version)`.
    Update(u64, u64),
    /// Read the record and write it back with its version plus one (YCSB F).
    Rmw(u64),
}

impl Op {
    /// Whether the operation writes.
    pub fn writes(&self) -> bool {
        !matches!(self, Op::Read(_))
    }
}

/// A YCSB core workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// 100% reads.
    C,
    /// 50% reads, 50% read-modify-writes.
    F,
}

impl Workload {
    /// The workload's letter.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "A",
            Workload::B => "B",
            Workload::C => "C",
            Workload::F => "F",
        }
    }
}

/// The load phase: inserts of records `0..records` in record order (hashed keys), version 0.
pub fn load_ops(records: u64) -> Vec<Op> {
    (0..records).map(|i| Op::Insert(key_of(i), 0)).collect()
}

/// `n` operations of workload `w` over `records` loaded records. Versions of updates come from
/// `*next_ver`, which is advanced, so every write in a run stores a distinct version.
pub fn ops(w: Workload, n: usize, records: u64, seed: u64, next_ver: &mut u64) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let z = ScrambledZipfian::new(records);
    (0..n)
        .map(|_| {
            let coin = rng.next_u64() % 100;
            let k = z.next_key(&mut rng);
            match w {
                Workload::A if coin < 50 => Op::Read(k),
                Workload::B if coin < 95 => Op::Read(k),
                Workload::C => Op::Read(k),
                Workload::F if coin < 50 => Op::Read(k),
                Workload::F => Op::Rmw(k),
                Workload::A | Workload::B => {
                    *next_ver += 1;
                    Op::Update(k, *next_ver)
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeta_matches_ycsb_constant() {
        // YCSB's ScrambledZipfianGenerator hard-codes ZETAN = 26.46902820178302 for 10^10 items
        // and theta 0.99; the Euler-Maclaurin tail must reproduce it.
        let z = zeta(SCRAMBLE_ITEMS, ZIPF_THETA);
        assert!((z - 26.46902820178302).abs() < 1e-6, "zeta = {z}");
        // And the exact sum for a small n.
        let exact: f64 = (1..=2_000_000u64).map(|i| (i as f64).powf(-0.99)).sum();
        assert!((zeta(2_000_000, 0.99) - exact).abs() < 1e-7);
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = ScrambledZipfian::new(100_000);
        let mut rng = Rng::new(3);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..200_000 {
            let r = z.next_record(&mut rng);
            assert!(r < 100_000);
            *counts.entry(r).or_insert(0u32) += 1;
        }
        let mut c: Vec<u32> = counts.values().copied().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        // theta 0.99 over 10^10 ranks: the top rank draws 1/zetan, about 3.8% of requests.
        let top = f64::from(c[0]) / 200_000.0;
        assert!((0.03..0.05).contains(&top), "top share {top}");
        // and many distinct records are touched (a long tail).
        assert!(c.len() > 20_000, "{} distinct", c.len());
    }

    #[test]
    fn values_check() {
        let v = value(42, 7);
        assert!(check_value(42, &v));
        assert_eq!(version_of(&v), 7);
        assert!(!check_value(43, &v));
        let mut w = v;
        w[99] ^= 1;
        assert!(!check_value(42, &w));
    }

    #[test]
    fn mixes_have_their_proportions() {
        let mut ver = 0;
        let a = ops(Workload::A, 10_000, 1000, 1, &mut ver);
        let wa = a.iter().filter(|o| o.writes()).count();
        assert!((4_500..5_500).contains(&wa), "{wa}");
        let b = ops(Workload::B, 10_000, 1000, 1, &mut ver);
        let wb = b.iter().filter(|o| o.writes()).count();
        assert!((300..700).contains(&wb), "{wb}");
        assert!(ops(Workload::C, 1000, 1000, 1, &mut ver).iter().all(|o| !o.writes()));
        let f = ops(Workload::F, 10_000, 1000, 1, &mut ver);
        assert!(f.iter().all(|o| matches!(o, Op::Read(_) | Op::Rmw(_))));
    }
}
