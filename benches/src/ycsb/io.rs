//! Bytes written, from the kernel's per-task I/O accounting (`proc(5)`, `/proc/[pid]/io`).
//!
//! - `wchar`: bytes passed to `write`-like system calls (`write`, `pwrite`, `writev`, ...),
//!   whether or not they reached the disk; writes through a shared memory map are not counted.
//! - `write_bytes`: bytes of page cache this task dirtied for storage, counted when a clean
//!   folio becomes dirty and counted whole. On this kernel (6.18, ext4 with large folios) a file
//!   written in 1 MiB chunks has 1 MiB folios, and a later 4 KiB `pwrite` into it counts
//!   1,048,576 bytes (measured), while the device receives only the dirty blocks (measured with
//!   `/sys/block/vda/stat`: tens of KiB per sync, machine-wide). So `write_bytes` overstates
//!   small writes; `wchar` is the measure the tables lead with.
//!
//! `/proc/self/io` sums every thread of the process *and the children it has reaped* (the
//! kernel adds a child's counters to its parent's at `wait`): snapheap's forked snapshot
//! writers are counted once snapheap has reaped them, which happens at a later commit or at
//! close, so their bytes can land in the measurement of a following row. `/proc/thread-self/io`
//! counts the calling thread alone: for snapheap with `Durability::Immediate` that is its
//! journal writes (the committing thread writes and syncs the journal), without snapshots.

/// Two counters of one `/proc/.../io` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// Bytes passed to write-like system calls.
    pub wchar: u64,
    /// Bytes of page cache dirtied for storage.
    pub write_bytes: u64,
}

impl Io {
    /// The counters grown since `earlier`.
    pub fn since(self, earlier: Io) -> Io {
        Io {
            wchar: self.wchar.saturating_sub(earlier.wchar),
            write_bytes: self.write_bytes.saturating_sub(earlier.write_bytes),
        }
    }
}

fn read(path: &str) -> Io {
    let s = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{path} has no {name}"))
    };
    Io {
        wchar: field("wchar:"),
        write_bytes: field("write_bytes:"),
    }
}

/// The whole process, including reaped children.
pub fn process() -> Io {
    read("/proc/self/io")
}

/// The calling thread only.
pub fn thread() -> Io {
    read("/proc/thread-self/io")
}
