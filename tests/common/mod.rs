//! Helpers shared by the integration tests: scratch directories, re-running the current test
//! binary as a child process in a given role, and a small deterministic PRNG.
#![allow(dead_code)]

pub mod seccomp;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let base = std::env::var_os("SNAPHEAP_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(format!("snapheap-{tag}-{}-{}", std::process::id(), xorshift_seed()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn heap(&self) -> PathBuf {
        self.0.join("heap")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn xorshift_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ N.fetch_add(0x9E37_79B9, Ordering::Relaxed)
}

/// Environment variable that tells a re-executed test binary which role to play.
pub const ROLE: &str = "SNAPHEAP_TEST_ROLE";

/// The role this process plays, if it was started by [`child`].
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A command that re-runs this test binary, running only `test` (which must check [`role`]
/// first), with `role` and extra environment.
pub fn child(test: &str, role: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", test, "--nocapture", "--test-threads=1"]);
    c.env(ROLE, role);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(Stdio::null());
    c
}

/// Runs a child to completion and asserts it succeeded; returns its stdout.
pub fn run_child(test: &str, role: &str, env: &[(&str, &str)]) -> String {
    let out = child(test, role, env).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "child {role} failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// xorshift64*: small, deterministic, good enough for workloads.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// A generator whose state is `seed` spread over the word (never zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// A value in `[0, n)` as an index.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }
}

/// Asserts that no two of the `(address, length)` blocks overlap.
pub fn assert_disjoint(mut blocks: Vec<(usize, usize)>) {
    blocks.sort_unstable();
    for w in blocks.windows(2) {
        assert!(
            w[0].0 + w[0].1 <= w[1].0,
            "blocks {:#x}+{} and {:#x} overlap",
            w[0].0,
            w[0].1,
            w[1].0
        );
    }
}

/// Forwards the lines of a child's stdout to a channel from a reader thread, so the caller can
/// wait for lines with a timeout and collect what was printed before a kill.
pub fn line_reader(
    stdout: std::process::ChildStdout,
) -> (std::sync::mpsc::Receiver<String>, std::thread::JoinHandle<()>) {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, reader)
}

/// A heap handle that releases the heap's memory when dropped (`Heap::drop_and_release`), so
/// the next open in this process recovers from the files, as after a crash, instead of
/// refusing with `Error::Detached`. For tests that keep every value they allocate in the
/// root (the `unsafe` contract of the release).
pub struct Released<T: snapheap::Persist>(Option<snapheap::Heap<T>>);

/// Wraps the result of an open in [`Released`].
pub fn released<T: snapheap::Persist>(r: snapheap::Result<snapheap::Heap<T>>) -> snapheap::Result<Released<T>> {
    r.map(|h| Released(Some(h)))
}

impl<T: snapheap::Persist> Released<T> {
    /// Closes the heap (commit and snapshot), then releases its memory.
    pub fn close(mut self) -> snapheap::Result<()> {
        let h = self.0.take().expect("open");
        // SAFETY: the tests using this keep every heap value in the root.
        unsafe { h.close_and_release() }
    }
}

impl<T: snapheap::Persist> std::ops::Deref for Released<T> {
    type Target = snapheap::Heap<T>;
    fn deref(&self) -> &snapheap::Heap<T> {
        self.0.as_ref().expect("open")
    }
}

impl<T: snapheap::Persist> Drop for Released<T> {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            // SAFETY: the tests using this keep every heap value in the root.
            unsafe { h.drop_and_release() }
        }
    }
}
