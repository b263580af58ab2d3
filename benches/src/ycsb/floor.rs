//! The physical floor of a durable commit: `pwrite` of N bytes appended at increasing offsets
//! to a file whose blocks are all written and synced already, then `fdatasync`.
//!
//! The blocks are written beforehand (not merely `fallocate`d) because ext4 records a first
//! write into an unwritten extent as a metadata change, which makes `fdatasync` commit the
//! filesystem journal; overwriting written blocks leaves `fdatasync` only the data to send.
//! When the offset reaches the end of the file it starts again at zero (still written blocks).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// A pre-written file and the next append offset.
pub struct Floor {
    file: File,
    size: u64,
    off: u64,
    buf: Vec<u8>,
}

impl Floor {
    /// Creates `path` with `size` bytes written and synced.
    pub fn new(path: &Path, size: u64) -> Floor {
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("create floor file");
        let chunk = vec![0xA5u8; 1 << 20];
        let mut left = size;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n]).expect("pre-write floor file");
            left -= n as u64;
        }
        file.sync_all().expect("fsync floor file");
        Floor {
            file,
            size,
            off: 0,
            buf: Vec::new(),
        }
    }

    /// One `pwrite` of `n` bytes at the next offset plus `fdatasync`; returns its latency.
    pub fn sample(&mut self, n: usize) -> Duration {
        if self.buf.len() < n {
            self.buf = (0..n).map(|i| i as u8).collect();
        }
        if self.off + n as u64 > self.size {
            self.off = 0;
        }
        self.buf[0] = self.buf[0].wrapping_add(1);
        let t = Instant::now();
        self.file.write_all_at(&self.buf[..n], self.off).expect("floor pwrite");
        self.file.sync_data().expect("floor fdatasync");
        let d = t.elapsed();
        self.off += n as u64;
        d
    }
}
