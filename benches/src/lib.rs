//! Shared helpers for the benchmark binaries in `src/bin/`: a seeded random number generator,
//! timing with repetitions, and table printing. Each binary compares snapheap with its reference
//! in the same run and prints ratios; the README records the tables.

pub mod ycsb;

use std::time::{Duration, Instant};

/// xorshift64*: deterministic, fast, good enough to pick sizes and keys.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (zero is replaced by a constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `[lo, hi)`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo)
    }
}

/// Runs `f` `reps` times and returns the median duration.
pub fn median_of<F: FnMut() -> Duration>(reps: usize, mut f: F) -> Duration {
    let mut v: Vec<Duration> = (0..reps).map(|_| f()).collect();
    v.sort();
    v[v.len() / 2]
}

/// Times one call of `f`.
pub fn time<F: FnOnce()>(f: F) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

/// Geometric mean of positive ratios.
pub fn geomean(xs: &[f64]) -> f64 {
    (xs.iter().map(|x| x.ln()).sum::<f64>() / xs.len() as f64).exp()
}

/// A scratch directory under the system temp dir (or `SNAPHEAP_BENCH_DIR`), removed on drop.
pub struct Scratch(pub std::path::PathBuf);

impl Scratch {
    /// Creates a fresh directory named after `name` and the process id.
    pub fn new(name: &str) -> Scratch {
        let base = std::env::var_os("SNAPHEAP_BENCH_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("snapheap-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create bench dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
