//! Helpers shared by the `commit` and `snapshot` binaries (included with `#[path]`, so the
//! library crate stays untouched): a root made of byte chunks that can be filled to a given
//! size and whose pages can be dirtied one by one, and the calling thread's CPU clock.

#![allow(dead_code)]

use snapheap::collections::Vec as HVec;
use snapheap::{Heap, HeapAlloc};
use std::time::Duration;

/// OS page size used by snapheap.
pub const PAGE: usize = 4096;
/// Size of each chunk of the root (the last one may be smaller).
pub const CHUNK: usize = 64 << 20;

/// The root: chunks of bytes, every byte written at least once.
#[derive(snapheap::Persist)]
pub struct Chunks {
    pub chunks: HVec<HVec<u8>>,
}

/// An empty root.
pub fn empty(a: HeapAlloc) -> Chunks {
    Chunks {
        chunks: HVec::new_in(a),
    }
}

/// Allocates and touches `bytes` of data in chunks of at most [`CHUNK`], committing after
/// every `commit_every` bytes so no single commit copies the whole heap.
pub fn fill(heap: &Heap<Chunks>, bytes: usize, commit_every: usize) {
    let a = heap.alloc();
    let mut g = heap.write();
    let mut done = 0;
    let mut since = 0;
    while done < bytes {
        let n = CHUNK.min(bytes - done);
        let mut v: HVec<u8> = HVec::with_capacity_in(n, a);
        // Vec::resize of allocator_api2 writes byte by byte; fill with one memset instead.
        // SAFETY: the capacity is at least n, and all n bytes are initialised before set_len.
        unsafe {
            std::ptr::write_bytes(v.as_mut_ptr(), 1, n);
            v.set_len(n);
        }
        g.chunks.push(v);
        done += n;
        since += n;
        if since >= commit_every {
            g.commit().expect("commit while filling");
            since = 0;
        }
    }
    g.commit().expect("commit after filling");
}

/// Number of data pages in the root.
pub fn data_pages(root: &Chunks) -> usize {
    root.chunks.iter().map(|c| c.len() / PAGE).sum()
}

/// Writes one byte into data page `page` (counting pages across chunks in order).
pub fn touch_page(root: &mut Chunks, page: usize, salt: u8) {
    let ppc = CHUNK / PAGE;
    let c = &mut root.chunks[page / ppc];
    let off = (page % ppc) * PAGE + (salt as usize % 64) * 8;
    c[off] = c[off].wrapping_add(salt | 1);
}

/// Dirties `k` distinct data pages spread evenly over the `total` pages (`k <= total`), shifted
/// by `shift` so successive rounds do not always hit the same pages.
pub fn touch_spread(root: &mut Chunks, total: usize, k: usize, shift: usize, salt: u8) {
    let stride = total / k;
    for i in 0..k {
        touch_page(root, (i * stride + shift % stride.max(1)) % total, salt);
    }
}

/// CPU time consumed by the calling thread (user + system).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is always supported.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Value at quantile `q` (0..=1) of an unsorted sample.
pub fn quantile(xs: &[Duration], q: f64) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}

/// Microseconds as a float.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Human size: "1 MiB", "4 GiB".
pub fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else {
        format!("{} MiB", bytes >> 20)
    }
}

/// Current date and time in UTC as printed by `date -u` (for the results file).
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The command line of the commit and snapshot benchmarks: the parts to run (`default` when
/// none is named) and `--max-gib N` (default 4), the largest heap size to try.
pub fn parts_and_max_gib(default: &[&str]) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut max_gib = 4;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--max-gib" => max_gib = args.next().and_then(|v| v.parse().ok()).expect("--max-gib N"),
            p => parts.push(p.to_string()),
        }
    }
    if parts.is_empty() {
        parts = default.iter().map(|p| p.to_string()).collect();
    }
    (parts, max_gib)
}
