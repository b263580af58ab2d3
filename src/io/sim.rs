//! [`SimVfs`]: a simulated disk for the reliability tests. It keeps, per file, the bytes
//! written so far (what reads see: the page cache) apart from the bytes that would survive a
//! power loss, injects I/O errors on request, counts writes and syncs, and can record a trace
//! of every mutating operation so that a test can rebuild the disk as it was after any prefix
//! of the trace and crash it there ([`SimTrace`]).
//!
//! # Model
//!
//! - Files are inodes; an open [`VFile`] refers to its inode, so it keeps working after the
//!   name is renamed or removed (as on POSIX).
//! - **Data**: a write changes the written bytes at once and marks its 512-byte sectors dirty.
//!   `sync_data` copies the dirty sectors and the current length into the durable image.
//!   Length changes (`set_len`, `allocate`) become durable with the next `sync_data` too.
//! - **Directory entries**: create, rename and remove change the visible namespace at once and
//!   are queued; `sync_dir` makes every queued entry durable (all files of a heap live in one
//!   directory, so `sync_dir` covers the whole disk). This is the model the engine assumes
//!   (`docs/design.md`, "Assumptions about the disk and the kernel"): `meta` and journals are
//!   created under a temporary name, synced, renamed and the directory synced.
//! - **A failed `sync_data`** behaves like Linux after writeback errors: the dirty sectors are
//!   marked clean *without* becoming durable, so a later successful sync does not save them and
//!   a crash loses them. This is why the engine poisons itself after any failed sync.
//! - **A failed write** changes nothing.
//!
//! [`SimVfs::crash`] returns the disk a power loss leaves ([`CrashMode`]): unsynced data
//! dropped, kept, or torn per sector (each dirty sector independently old or new, the length
//! old or new, and a random prefix of the queued directory operations applied), seeded.
//!
//! `raw_fd()` is `None` for every simulated file: the engine then reads the snapshot into
//! anonymous memory instead of mapping it, and writes snapshots in-process instead of in a
//! forked child (see `engine/recover.rs` and `engine/snapshot.rs`).
//!
//! **Mirrors** ([`SimVfs::mirror_mapped_files`]): so that remapping clean pages from the
//! newest snapshot (`engine/footprint.rs`) runs on a simulated disk too, `map_fd()` of a file
//! then returns the descriptor of a real, unlinked temporary file that holds the simulated
//! file's written (page-cache) bytes and receives every later write, truncation and
//! allocation made through this disk, as the page cache of a real file would: pages mapped
//! from it see later writes to the file (the show-through `docs/design.md` reasons about).
//! Durability and crashes stay the simulation's: a crashed disk has no mirrors.
//!
//! Test support only (compiled with the `testing` feature): about 730 lines without its tests,
//! kept in one file because the inodes, the durable/written split, the trace and its replay
//! share one `State` whose invariants are stated once below.
//!
//! # Invariants
//!
//! - For every inode: `durable == None` implies `dirty` is empty and `!lost` (the durable
//!   bytes are the written bytes); otherwise every sector whose written and durable bytes may
//!   differ (below `max(data.len(), durable.len())`) is in `dirty`, except sectors whose new
//!   bytes were lost by a failed sync (then `lost`).
//! - File bytes are `Arc`-shared between clones of the disk and copied on first write.
//! - `durable_names` = `names` with the queued directory operations (`pending_dir`) undone;
//!   `sync_dir` empties `pending_dir`.
//! - Counters only grow; a fault with `nth = k` on writes fires at the write whose 1-based
//!   counter value is `k` (and every later one when `forever`).

use super::{VFile, Vfs};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Sector size of the simulated disk: the unit of tearing.
pub const SECTOR: u64 = 512;

/// What a power loss keeps of the data that was written but not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and directory operation is lost.
    DropUnsynced,
    /// Every unsynced write and directory operation survives (like a process kill).
    KeepUnsynced,
    /// Each unsynced sector independently keeps its old or new bytes; each file keeps its old
    /// or new length; a random prefix of the unsynced directory operations survives. Seeded.
    Torn(u64),
}

/// Which operations a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOn {
    /// `write_at`, `set_len` and `allocate`.
    Write,
    /// `sync_data` and `sync_dir`.
    Sync,
}

/// An injected I/O error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// The kind of operation that fails.
    pub on: FaultOn,
    /// Fails the operation whose 1-based counter ([`SimVfs::writes`] or [`SimVfs::syncs`])
    /// reaches this value.
    pub nth: u64,
    /// `libc::EIO` or `libc::ENOSPC` (any errno works).
    pub errno: i32,
    /// Keep failing every later operation of that kind.
    pub forever: bool,
}

/// One mutating operation, as recorded in a trace.
#[derive(Debug, Clone)]
pub enum TraceOp {
    /// A file was created (`open` with `create` on a missing name).
    Create(PathBuf),
    /// `write_at` on the inode.
    Write(u64, u64, Arc<[u8]>),
    /// `set_len` on the inode.
    SetLen(u64, u64),
    /// `allocate` on the inode (extends with zeros).
    Allocate(u64, u64),
    /// A successful `sync_data` on the inode.
    Sync(u64),
    /// A failed `sync_data` on the inode (its dirty sectors are lost).
    SyncFailed(u64),
    /// A successful `sync_dir`.
    SyncDir,
    /// `rename(from, to)`.
    Rename(PathBuf, PathBuf),
    /// `remove(path)`.
    Remove(PathBuf),
}

impl TraceOp {
    /// Whether this operation is a successful sync (a point where durability changes).
    pub fn is_sync(&self) -> bool {
        matches!(self, TraceOp::Sync(_) | TraceOp::SyncDir)
    }
    /// Whether this operation writes file data.
    pub fn is_write(&self) -> bool {
        matches!(self, TraceOp::Write(..) | TraceOp::SetLen(..) | TraceOp::Allocate(..))
    }
}

/// A set of sector numbers (a bitset).
#[derive(Clone, Default)]
struct Sectors(Vec<u64>);

impl Sectors {
    fn insert_range(&mut self, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let words = to.div_ceil(64) as usize;
        if self.0.len() < words {
            self.0.resize(words, 0);
        }
        for s in from..to {
            self.0[(s / 64) as usize] |= 1 << (s % 64);
        }
    }
    fn clear(&mut self) {
        self.0.clear();
    }
    /// The sectors in increasing order.
    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(i as u64 * 64 + b)
            })
        })
    }
}

/// A file's bytes, shared copy-on-write between clones of the disk (crash images, replays).
type Bytes = Arc<Vec<u8>>;

#[derive(Clone, Default)]
struct Inode {
    data: Bytes,
    /// The durable bytes; `None` while they equal `data`.
    durable: Option<Bytes>,
    dirty: Sectors,
    /// A failed sync lost sectors since `durable` split from `data` (so a later sync cannot
    /// simply declare `data` durable).
    lost: bool,
}

impl Inode {
    fn durable(&self) -> &[u8] {
        self.durable.as_deref().unwrap_or(&self.data)
    }
    /// Called before `data` changes: the durable image stops sharing it.
    fn data_mut(&mut self) -> &mut Vec<u8> {
        if self.durable.is_none() {
            self.durable = Some(Arc::clone(&self.data));
        }
        Arc::make_mut(&mut self.data)
    }
    fn mark(&mut self, from: u64, to: u64) {
        if from < to {
            self.dirty.insert_range(from / SECTOR, to.div_ceil(SECTOR));
        }
    }
    fn write(&mut self, off: u64, buf: &[u8]) {
        let data = self.data_mut();
        let end = off as usize + buf.len();
        if end > data.len() {
            data.resize(end, 0);
        }
        data[off as usize..end].copy_from_slice(buf);
        self.mark(off, end as u64);
    }
    fn set_len(&mut self, len: u64) {
        let data = self.data_mut();
        let old = data.len() as u64;
        data.resize(len as usize, 0);
        if len < old {
            // The cut bytes may survive a crash until the new length is synced.
            self.mark(len, old);
        }
    }
    fn allocate(&mut self, len: u64) {
        if len > self.data.len() as u64 {
            self.data_mut().resize(len as usize, 0);
        }
    }
    fn sync(&mut self) {
        if !self.lost {
            // Every difference was in a dirty sector: now everything written is durable.
            self.durable = None;
            self.dirty.clear();
            return;
        }
        let Some(durable) = self.durable.as_mut() else { return };
        let durable = Arc::make_mut(durable);
        durable.resize(self.data.len(), 0);
        let len = self.data.len() as u64;
        for s in self.dirty.iter() {
            let a = s * SECTOR;
            if a >= len {
                break;
            }
            let b = (a + SECTOR).min(len);
            durable[a as usize..b as usize].copy_from_slice(&self.data[a as usize..b as usize]);
        }
        self.dirty.clear();
    }
    fn sync_failed(&mut self) {
        // Linux marks the pages clean after a writeback error: their new bytes stay visible in
        // the page cache but will never reach the disk.
        if self.durable.is_some() {
            self.lost = true;
        }
        self.dirty.clear();
    }
    fn crashed(&self, mode: CrashMode, rng: &mut u64) -> Inode {
        if self.durable.is_none() {
            // Nothing unsynced: the crash image shares the bytes.
            return Inode {
                data: Arc::clone(&self.data),
                ..Inode::default()
            };
        }
        // Start from the durable bytes; every dirty sector then keeps its old bytes or gets
        // its new ones. Sectors lost by a failed sync are not dirty, so they stay old.
        let durable = self.durable();
        let len = match mode {
            CrashMode::DropUnsynced => durable.len(),
            CrashMode::KeepUnsynced => self.data.len(),
            CrashMode::Torn(_) if next(rng) & 1 == 0 => self.data.len(),
            CrashMode::Torn(_) => durable.len(),
        };
        let mut out = Vec::with_capacity(len);
        let common = len.min(durable.len());
        out.extend_from_slice(&durable[..common]);
        out.resize(len, 0);
        for s in self.dirty.iter() {
            let a = (s * SECTOR) as usize;
            if a >= len {
                break;
            }
            let take_new = match mode {
                CrashMode::DropUnsynced => false,
                CrashMode::KeepUnsynced => true,
                CrashMode::Torn(_) => next(rng) & 1 == 0,
            };
            if take_new {
                let b = (a + SECTOR as usize).min(len);
                out[a..b].fill(0);
                let src_end = b.min(self.data.len());
                if a < src_end {
                    out[a..src_end].copy_from_slice(&self.data[a..src_end]);
                }
            }
        }
        Inode {
            data: Arc::new(out),
            ..Inode::default()
        }
    }
}

fn next(s: &mut u64) -> u64 {
    // splitmix64
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone)]
enum DirOp {
    Create(PathBuf, u64),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

#[derive(Clone, Default)]
struct State {
    inodes: BTreeMap<u64, Inode>,
    names: BTreeMap<PathBuf, u64>,
    durable_names: BTreeMap<PathBuf, u64>,
    pending_dir: Vec<DirOp>,
    dirs: BTreeSet<PathBuf>,
    next_ino: u64,
    writes: u64,
    syncs: u64,
    faults: Vec<Fault>,
    trace: Option<Vec<TraceOp>>,
    /// The disk when the trace started (boxed: a state holding its own base).
    trace_base: Option<Box<State>>,
    /// With [`SimVfs::mirror_mapped_files`]: the real file mirroring each inode whose
    /// `map_fd` was asked for.
    mirrors: Option<BTreeMap<u64, Arc<std::fs::File>>>,
}

fn apply_dir(names: &mut BTreeMap<PathBuf, u64>, op: &DirOp) {
    match op {
        DirOp::Create(p, ino) => {
            names.insert(p.clone(), *ino);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
        DirOp::Remove(p) => {
            names.remove(p);
        }
    }
}

impl State {
    fn record(&mut self, op: TraceOp) {
        if let Some(t) = &mut self.trace {
            t.push(op);
        }
    }

    /// Applies one traced operation (the successful part of every public method).
    fn apply(&mut self, op: &TraceOp) {
        match op {
            TraceOp::Create(p) => {
                self.next_ino += 1;
                let ino = self.next_ino;
                self.inodes.insert(ino, Inode::default());
                self.names.insert(p.clone(), ino);
                self.pending_dir.push(DirOp::Create(p.clone(), ino));
            }
            TraceOp::Write(ino, off, b) => self.inode(*ino).write(*off, b),
            TraceOp::SetLen(ino, len) => self.inode(*ino).set_len(*len),
            TraceOp::Allocate(ino, len) => self.inode(*ino).allocate(*len),
            TraceOp::Sync(ino) => self.inode(*ino).sync(),
            TraceOp::SyncFailed(ino) => self.inode(*ino).sync_failed(),
            TraceOp::SyncDir => {
                for op in std::mem::take(&mut self.pending_dir) {
                    apply_dir(&mut self.durable_names, &op);
                }
            }
            TraceOp::Rename(from, to) => {
                if let Some(ino) = self.names.remove(from) {
                    self.names.insert(to.clone(), ino);
                    self.pending_dir.push(DirOp::Rename(from.clone(), to.clone()));
                }
            }
            TraceOp::Remove(p) => {
                if self.names.remove(p).is_some() {
                    self.pending_dir.push(DirOp::Remove(p.clone()));
                }
            }
        }
    }

    fn inode(&mut self, ino: u64) -> &mut Inode {
        self.inodes.entry(ino).or_default()
    }

    fn fault(&mut self, on: FaultOn) -> io::Result<()> {
        let count = match on {
            FaultOn::Write => {
                self.writes += 1;
                self.writes
            }
            FaultOn::Sync => {
                self.syncs += 1;
                self.syncs
            }
        };
        for f in &self.faults {
            if f.on == on && (count == f.nth || (f.forever && count > f.nth)) {
                return Err(io::Error::from_raw_os_error(f.errno));
            }
        }
        Ok(())
    }

    fn crashed(&self, mode: CrashMode) -> State {
        let mut rng = match mode {
            CrashMode::Torn(seed) => seed ^ 0x5EED,
            _ => 0,
        };
        let mut names = self.durable_names.clone();
        let keep = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::KeepUnsynced => self.pending_dir.len(),
            CrashMode::Torn(_) => (next(&mut rng) % (self.pending_dir.len() as u64 + 1)) as usize,
        };
        for op in &self.pending_dir[..keep] {
            apply_dir(&mut names, op);
        }
        let mut inodes = BTreeMap::new();
        for &ino in names.values() {
            if let Some(i) = self.inodes.get(&ino) {
                inodes.entry(ino).or_insert_with(|| i.crashed(mode, &mut rng));
            }
        }
        State {
            inodes,
            durable_names: names.clone(),
            names,
            pending_dir: Vec::new(),
            dirs: self.dirs.clone(),
            next_ino: self.next_ino,
            writes: 0,
            syncs: 0,
            faults: Vec::new(),
            trace: None,
            trace_base: None,
            mirrors: None,
        }
    }

    /// Repeats a successful mutation of an inode on its mirror, if it has one.
    fn mirror(&mut self, op: &TraceOp) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let ino = match op {
            TraceOp::Write(ino, ..) | TraceOp::SetLen(ino, _) | TraceOp::Allocate(ino, _) => *ino,
            _ => return Ok(()),
        };
        let Some(f) = self.mirrors.as_ref().and_then(|m| m.get(&ino)) else {
            return Ok(());
        };
        match op {
            TraceOp::Write(_, off, b) => f.write_all_at(b, *off),
            TraceOp::SetLen(_, len) => f.set_len(*len),
            TraceOp::Allocate(_, len) if *len > f.metadata()?.len() => f.set_len(*len),
            _ => Ok(()),
        }
    }

    /// The mirror of `ino`, created from its written bytes on first use.
    fn mirror_of(&mut self, ino: u64) -> io::Result<Option<Arc<std::fs::File>>> {
        use std::os::unix::fs::FileExt;
        let Some(mirrors) = self.mirrors.as_ref() else {
            return Ok(None);
        };
        if let Some(f) = mirrors.get(&ino) {
            return Ok(Some(Arc::clone(f)));
        }
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("snapheap-sim-mirror-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let _ = std::fs::remove_file(&path); // unlinked: gone with its last descriptor
        let data = self.inodes.get(&ino).map_or(&[][..], |i| &i.data[..]);
        f.write_all_at(data, 0)?;
        let f = Arc::new(f);
        self.mirrors
            .as_mut()
            .expect("checked above")
            .insert(ino, Arc::clone(&f));
        Ok(Some(f))
    }
}

/// A simulated disk (cheap to clone: clones share the disk).
#[derive(Clone, Default)]
pub struct SimVfs {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        write!(
            f,
            "SimVfs({} files, {} writes, {} syncs)",
            s.names.len(),
            s.writes,
            s.syncs
        )
    }
}

impl SimVfs {
    /// An empty disk.
    pub fn new() -> SimVfs {
        SimVfs::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on, `map_fd()` of this disk's files returns a real mirror file (see the module
    /// docs), so that the engine maps pages from it as from a real file.
    pub fn mirror_mapped_files(&self) {
        let mut s = self.lock();
        if s.mirrors.is_none() {
            s.mirrors = Some(BTreeMap::new());
        }
    }

    /// Whether [`SimVfs::mirror_mapped_files`] was called on this disk.
    pub fn mirrors_mapped_files(&self) -> bool {
        self.lock().mirrors.is_some()
    }

    /// Starts recording a trace of every mutating operation (see [`SimTrace`]); replaying it
    /// starts from the disk as it is now.
    pub fn start_trace(&self) {
        let mut s = self.lock();
        let mut base = s.clone();
        base.trace = None;
        base.trace_base = None;
        base.mirrors = None;
        s.trace_base = Some(Box::new(base));
        s.trace = Some(Vec::new());
    }

    /// Number of operations traced so far.
    pub fn trace_len(&self) -> usize {
        self.lock().trace.as_ref().map_or(0, |t| t.len())
    }

    /// The trace recorded since [`Self::start_trace`].
    pub fn trace(&self) -> SimTrace {
        let s = self.lock();
        SimTrace {
            base: s.trace_base.clone(),
            ops: s.trace.clone().unwrap_or_default(),
        }
    }

    /// Write operations so far (`write_at`, `set_len`, `allocate`, failed ones included).
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    /// Sync operations so far (`sync_data`, `sync_dir`, failed ones included).
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }

    /// Adds a fault.
    pub fn inject(&self, f: Fault) {
        self.lock().faults.push(f);
    }

    /// Removes every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The disk a power loss would leave now: a new, independent disk (no faults, no trace).
    pub fn crash(&self, mode: CrashMode) -> SimVfs {
        SimVfs {
            state: Arc::new(Mutex::new(self.lock().crashed(mode))),
        }
    }

    /// The written (page-cache) bytes of a file, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let s = self.lock();
        let ino = s.names.get(path)?;
        s.inodes.get(ino).map(|i| i.data.to_vec())
    }

    /// Replaces a file's contents (written and durable), creating it if needed; for corruption
    /// tests.
    pub fn write_file(&self, path: &Path, bytes: &[u8]) {
        let mut s = self.lock();
        let ino = match s.names.get(path) {
            Some(&i) => i,
            None => {
                s.next_ino += 1;
                let i = s.next_ino;
                s.names.insert(path.to_path_buf(), i);
                s.durable_names.insert(path.to_path_buf(), i);
                i
            }
        };
        s.inodes.insert(
            ino,
            Inode {
                data: Arc::new(bytes.to_vec()),
                ..Inode::default()
            },
        );
        if let Some(m) = s.mirrors.as_mut() {
            m.remove(&ino);
        }
    }

    /// Names of the files that exist now.
    pub fn files(&self) -> Vec<PathBuf> {
        self.lock().names.keys().cloned().collect()
    }
}

/// A recorded sequence of mutating operations; [`SimTrace::replay`] walks it and yields the
/// disk after every prefix, so every point of a run can be crashed without re-running it.
#[derive(Clone, Default)]
pub struct SimTrace {
    base: Option<Box<State>>,
    /// The operations in order.
    pub ops: Vec<TraceOp>,
}

impl std::fmt::Debug for SimTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SimTrace({} operations)", self.ops.len())
    }
}

impl SimTrace {
    /// A replayer positioned before the first operation (the disk when the trace started).
    pub fn replay(&self) -> Replayer<'_> {
        Replayer {
            ops: &self.ops,
            pos: 0,
            state: self.base.as_deref().cloned().unwrap_or_default(),
        }
    }
}

/// Rebuilds a traced disk operation by operation.
pub struct Replayer<'a> {
    ops: &'a [TraceOp],
    pos: usize,
    state: State,
}

impl Replayer<'_> {
    /// Operations applied so far.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Applies operations until `pos` of them are applied (never goes back).
    pub fn advance_to(&mut self, pos: usize) {
        while self.pos < pos.min(self.ops.len()) {
            let op = &self.ops[self.pos];
            self.state.apply(op);
            self.pos += 1;
        }
    }

    /// The disk a power loss at the current position would leave.
    pub fn crash(&self, mode: CrashMode) -> SimVfs {
        SimVfs {
            state: Arc::new(Mutex::new(self.state.crashed(mode))),
        }
    }
}

struct SimFile {
    vfs: SimVfs,
    ino: u64,
}

impl SimFile {
    fn mutate(&self, on: FaultOn, op: TraceOp) -> io::Result<()> {
        let mut s = self.vfs.lock();
        s.fault(on)?;
        s.apply(&op);
        // A mirror that cannot follow would make mapped pages silently differ from the
        // simulated file: a test-support failure, not a simulated I/O error.
        s.mirror(&op).expect("write to the simulated disk's mirror file");
        s.record(op);
        Ok(())
    }
}

impl VFile for SimFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let s = self.vfs.lock();
        let data = s.inodes.get(&self.ino).map_or(&[][..], |i| &i.data[..]);
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mutate(FaultOn::Write, TraceOp::Write(self.ino, offset, Arc::from(buf)))
    }
    fn sync_data(&self) -> io::Result<()> {
        let mut s = self.vfs.lock();
        if let Err(e) = s.fault(FaultOn::Sync) {
            let op = TraceOp::SyncFailed(self.ino);
            s.apply(&op);
            s.record(op);
            return Err(e);
        }
        let op = TraceOp::Sync(self.ino);
        s.apply(&op);
        s.record(op);
        Ok(())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.mutate(FaultOn::Write, TraceOp::Allocate(self.ino, len))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.mutate(FaultOn::Write, TraceOp::SetLen(self.ino, len))
    }
    fn len(&self) -> io::Result<u64> {
        let s = self.vfs.lock();
        Ok(s.inodes.get(&self.ino).map_or(0, |i| i.data.len() as u64))
    }
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }
    fn map_fd(&self) -> Option<RawFd> {
        use std::os::fd::AsRawFd;
        // The descriptor stays open while the disk holds the mirror (the disk outlives the
        // files the engine maps from: the harness keeps it until the heap is gone).
        match self.vfs.lock().mirror_of(self.ino) {
            Ok(f) => f.map(|f| f.as_raw_fd()),
            Err(_) => None,
        }
    }
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such simulated file", p.display()),
    )
}

impl Vfs for SimVfs {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn VFile>> {
        let mut s = self.lock();
        let ino = match s.names.get(path) {
            Some(&i) => i,
            None if create => {
                let op = TraceOp::Create(path.to_path_buf());
                s.apply(&op);
                s.record(op);
                s.names[path]
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(SimFile { vfs: self.clone(), ino }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if !s.names.contains_key(path) {
            return Err(not_found(path));
        }
        let op = TraceOp::Remove(path.to_path_buf());
        s.apply(&op);
        s.record(op);
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut s = self.lock();
        if !s.names.contains_key(from) {
            return Err(not_found(from));
        }
        let op = TraceOp::Rename(from.to_path_buf(), to.to_path_buf());
        s.apply(&op);
        s.record(op);
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        let mut s = self.lock();
        s.fault(FaultOn::Sync)?;
        s.apply(&TraceOp::SyncDir);
        s.record(TraceOp::SyncDir);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let s = self.lock();
        Ok(s.names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(PathBuf::from))
            .collect())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories are durable at once (the heap directory is created once and never
        // removed by the engine).
        self.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(format!("/d/{s}"))
    }

    /// Reads a mirror through its descriptor (`/proc/self/fd` reopens the unlinked file).
    fn mirror_bytes(fd: RawFd) -> Vec<u8> {
        std::fs::read(format!("/proc/self/fd/{fd}")).unwrap()
    }

    #[test]
    fn mirrors_follow_every_change_and_crashed_disks_have_none() {
        let v = SimVfs::new();
        let f = v.open(&p("a"), true).unwrap();
        f.write_at(b"hello", 0).unwrap();
        assert_eq!(f.map_fd(), None, "no mirrors unless asked for");
        v.mirror_mapped_files();
        let fd = f.map_fd().expect("a mirror");
        assert_eq!(mirror_bytes(fd), b"hello", "created from the written bytes");
        f.write_at(b"J", 0).unwrap();
        f.allocate(8).unwrap();
        assert_eq!(mirror_bytes(fd), b"Jello\0\0\0");
        f.set_len(2).unwrap();
        assert_eq!(mirror_bytes(fd), b"Je");
        assert_eq!(f.map_fd(), Some(fd), "one mirror per file");
        // A failed write changes neither the file nor its mirror.
        v.inject(Fault {
            on: FaultOn::Write,
            nth: v.writes() + 1,
            errno: libc::EIO,
            forever: false,
        });
        assert!(f.write_at(b"zz", 0).is_err());
        assert_eq!(mirror_bytes(fd), b"Je");
        let c = v.crash(CrashMode::KeepUnsynced);
        assert!(!c.mirrors_mapped_files());
        assert_eq!(c.open(&p("a"), false).unwrap().map_fd(), None);
    }

    #[test]
    fn unsynced_writes_are_dropped_kept_or_torn_by_sector() {
        let v = SimVfs::new();
        let f = v.open(&p("a"), true).unwrap();
        f.write_at(&[1u8; 1024], 0).unwrap();
        f.sync_data().unwrap();
        v.sync_dir(Path::new("/d")).unwrap();
        f.write_at(&[2u8; 4096], 0).unwrap();
        let dropped = v.crash(CrashMode::DropUnsynced).read_file(&p("a")).unwrap();
        assert_eq!(dropped, vec![1u8; 1024]);
        let kept = v.crash(CrashMode::KeepUnsynced).read_file(&p("a")).unwrap();
        assert_eq!(kept, vec![2u8; 4096]);
        let mut mixed = false;
        for seed in 0..32 {
            let t = v.crash(CrashMode::Torn(seed)).read_file(&p("a")).unwrap();
            assert!(t.len() == 1024 || t.len() == 4096);
            for (i, sector) in t.chunks(SECTOR as usize).enumerate() {
                let old = if i < 2 { 1 } else { 0 };
                assert!(sector.iter().all(|&b| b == 2) || sector.iter().all(|&b| b == old));
            }
            mixed |= t.chunks(512).any(|c| c[0] == 2) && t.chunks(512).any(|c| c[0] != 2);
        }
        assert!(mixed, "some torn crash mixes old and new sectors");
    }

    #[test]
    fn directory_entries_are_durable_only_after_sync_dir() {
        let v = SimVfs::new();
        let f = v.open(&p("tmp"), true).unwrap();
        f.write_at(b"x", 0).unwrap();
        f.sync_data().unwrap();
        v.rename(&p("tmp"), &p("real")).unwrap();
        assert!(v.crash(CrashMode::DropUnsynced).files().is_empty());
        assert_eq!(v.crash(CrashMode::KeepUnsynced).files(), vec![p("real")]);
        v.sync_dir(Path::new("/d")).unwrap();
        let c = v.crash(CrashMode::DropUnsynced);
        assert_eq!(c.read_file(&p("real")).unwrap(), b"x");
    }

    #[test]
    fn failed_sync_loses_the_dirty_sectors_for_good() {
        let v = SimVfs::new();
        let f = v.open(&p("a"), true).unwrap();
        v.sync_dir(Path::new("/d")).unwrap();
        f.write_at(&[7u8; 512], 0).unwrap();
        v.inject(Fault {
            on: FaultOn::Sync,
            nth: v.syncs() + 1,
            errno: libc::EIO,
            forever: false,
        });
        assert_eq!(f.sync_data().unwrap_err().raw_os_error(), Some(libc::EIO));
        f.sync_data().unwrap();
        let c = v.crash(CrashMode::DropUnsynced).read_file(&p("a")).unwrap();
        assert!(!c.contains(&7), "the bytes a failed sync dropped never become durable");
    }

    #[test]
    fn faults_fire_at_the_nth_operation_once_or_forever() {
        let v = SimVfs::new();
        let f = v.open(&p("a"), true).unwrap();
        v.inject(Fault {
            on: FaultOn::Write,
            nth: 2,
            errno: libc::ENOSPC,
            forever: false,
        });
        f.write_at(b"1", 0).unwrap();
        assert_eq!(f.write_at(b"2", 0).unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        f.write_at(b"3", 0).unwrap();
        v.inject(Fault {
            on: FaultOn::Write,
            nth: 4,
            errno: libc::EIO,
            forever: true,
        });
        assert!(f.write_at(b"4", 0).is_err());
        assert!(f.write_at(b"5", 0).is_err());
        assert_eq!(v.writes(), 5);
        assert_eq!(v.read_file(&p("a")).unwrap(), b"3");
    }

    #[test]
    fn replaying_a_trace_rebuilds_the_disk_at_every_prefix() {
        let v = SimVfs::new();
        v.start_trace();
        let f = v.open(&p("a"), true).unwrap();
        f.write_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        v.sync_dir(Path::new("/d")).unwrap();
        f.set_len(2).unwrap();
        let t = v.trace();
        assert_eq!(t.ops.len(), 5);
        let mut r = t.replay();
        r.advance_to(4);
        assert_eq!(r.crash(CrashMode::KeepUnsynced).read_file(&p("a")).unwrap(), b"hello");
        r.advance_to(5);
        assert_eq!(r.crash(CrashMode::KeepUnsynced).read_file(&p("a")).unwrap(), b"he");
        assert_eq!(r.crash(CrashMode::DropUnsynced).read_file(&p("a")).unwrap(), b"hello");
    }
}
