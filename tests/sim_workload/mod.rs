//! The reliability harness shared by `crash_points.rs` and `fault_loops.rs`: a heap on the
//! simulated disk ([`SimVfs`]) driven by seeded operations, a model of every state it
//! committed, and the oracle that checks a recovered heap against the model.
//!
//! The root holds a version number and a list of blocks of `u64`s; the model keeps the blocks
//! of every committed version. A crash at trace position `k` must recover some version `v`
//! with `lo(k) <= v <= hi(k)`, where `lo` is the newest version whose commit had returned
//! `Ok` before position `k` (acknowledged durable: the heap runs with
//! `Durability::Immediate`) and `hi` the newest version whose commit had started; and the
//! recovered blocks must equal the model's blocks of `v` exactly.
#![allow(dead_code)]

use snapheap::collections::Vec as HVec;
use snapheap::io::{CrashMode, SimTrace, SimVfs};
use snapheap::{Heap, HeapAlloc, OpenOptions, PlantedBug, Tracking};
use std::sync::Arc;

/// The heap directory on the simulated disk.
pub const DIR: &str = "/sim/heap";

/// The root type of the harness heap.
#[derive(snapheap::Persist)]
pub struct Root {
    pub version: u64,
    pub blocks: HVec<HVec<u64>>,
}

pub fn init(a: HeapAlloc) -> Root {
    Root {
        version: 0,
        blocks: HVec::new_in(a),
    }
}

std::thread_local! {
    /// The dirty-tracking rung of every heap this thread's harness opens (the rung matrix:
    /// each test sets it first with [`use_tracking`]; tests run on threads of their own).
    static TRACKING: std::cell::Cell<Tracking> = const { std::cell::Cell::new(Tracking::Auto) };
}

/// Makes every harness heap opened by this thread use `t`.
pub fn use_tracking(t: Tracking) {
    TRACKING.with(|c| c.set(t));
}

/// Options for the harness heap on `disk`: small, with frequent automatic snapshots.
/// A heap on a simulated disk that releases its memory when dropped or closed, so that the
/// next open in this process recovers from the (crashed) disk instead of refusing with
/// `Error::Detached`. Sound here: the harness keeps every value it allocates in the root.
pub struct SimHeap(Option<Heap<Root>>);

impl SimHeap {
    /// Closes the heap (commit, snapshot) and releases its memory.
    pub fn close(mut self) -> snapheap::Result<()> {
        let h = self.0.take().expect("open");
        // SAFETY: every value allocated from the heap lives in its root.
        unsafe { h.close_and_release() }
    }
}

impl std::ops::Deref for SimHeap {
    type Target = Heap<Root>;
    fn deref(&self) -> &Heap<Root> {
        self.0.as_ref().expect("open")
    }
}

impl Drop for SimHeap {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            // SAFETY: every value allocated from the heap lives in its root.
            unsafe { h.drop_and_release() }
        }
    }
}

/// Opens the harness heap on `disk` (see [`SimHeap`]).
/// A failed open (a failed creation may leave a detached heap) releases too.
pub fn open_sim(disk: &SimVfs, bug: Option<PlantedBug>) -> snapheap::Result<SimHeap> {
    let o = options(disk, bug);
    o.open(DIR, init).map(|h| SimHeap(Some(h))).inspect_err(|_| {
        // SAFETY: the harness's `init` keeps nothing outside the root.
        let _ = unsafe { o.release_detached(DIR) };
    })
}

pub fn options(disk: &SimVfs, bug: Option<PlantedBug>) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.vfs(Arc::new(disk.clone()))
        .max_size(64 << 20)
        .snapshot_after_journal_bytes(96 << 10)
        .snapshot_on_close(true)
        .tracking(TRACKING.with(|c| c.get()))
        // A disk that mirrors mapped files (`Run::create_remapping`) gives the engine a real
        // descriptor to map snapshot pages from, so remapping clean pages runs on it.
        .remap_clean_pages(disk.mirrors_mapped_files())
        .test_planted_bug(bug);
    o
}

pub use crate::common::Rng;

/// One workload operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Alloc,
    Write,
    Free,
    Commit,
    Snapshot,
    Reopen,
}

pub const ALL_OPS: [Op; 6] = [Op::Alloc, Op::Write, Op::Free, Op::Commit, Op::Snapshot, Op::Reopen];

impl Op {
    /// A random operation, weighted towards mutations and commits.
    pub fn random(rng: &mut Rng) -> Op {
        match rng.below(20) {
            0..=5 => Op::Alloc,
            6..=9 => Op::Write,
            10..=11 => Op::Free,
            12..=16 => Op::Commit,
            17..=18 => Op::Snapshot,
            _ => Op::Reopen,
        }
    }
}

/// Every version the workload tried to commit, with where in the trace it started and
/// where (if at all) it was acknowledged.
#[derive(Default)]
pub struct Model {
    pub committed: Vec<Vec<Vec<u64>>>,
    pub starts: Vec<usize>,
    pub acks: Vec<Option<usize>>,
    pub working: Vec<Vec<u64>>,
}

impl Model {
    /// `(lo, hi)`: the versions a crash after `k` traced operations may recover.
    pub fn allowed(&self, k: usize) -> (u64, u64) {
        let lo = (0..self.acks.len())
            .rev()
            .find(|&v| self.acks[v].is_some_and(|a| a <= k));
        let hi = (0..self.starts.len()).rev().find(|&v| self.starts[v] < k);
        (lo.unwrap_or(0) as u64, hi.unwrap_or(0) as u64)
    }

    /// The newest acknowledged version.
    pub fn last_acked(&self) -> u64 {
        (0..self.acks.len())
            .rev()
            .find(|&v| self.acks[v].is_some())
            .unwrap_or(0) as u64
    }
}

/// A heap on a traced simulated disk, and its model.
pub struct Run {
    pub disk: SimVfs,
    pub heap: Option<SimHeap>,
    pub model: Model,
    pub rng: Rng,
    pub bug: Option<PlantedBug>,
    /// Pages returned to the kernel (remapped from the newest snapshot) over the run.
    pub remapped: u64,
    /// `remapped_pages` of the open handle when last read.
    remapped_seen: u64,
}

impl Run {
    /// Creates the heap on an empty traced disk (version 0: no blocks).
    pub fn create(seed: u64, bug: Option<PlantedBug>) -> Run {
        Run::create_on(SimVfs::new(), seed, bug)
    }

    /// [`Run::create`] with remapping of clean pages on: the disk mirrors the files the
    /// engine maps (`SimVfs::mirror_mapped_files`), so the live heap maps snapshot pages from
    /// real files that receive every later write, while crashes stay simulated.
    pub fn create_remapping(seed: u64, bug: Option<PlantedBug>) -> Run {
        let disk = SimVfs::new();
        disk.mirror_mapped_files();
        Run::create_on(disk, seed, bug)
    }

    fn create_on(disk: SimVfs, seed: u64, bug: Option<PlantedBug>) -> Run {
        disk.start_trace();
        let mut model = Model::default();
        model.starts.push(0);
        model.committed.push(Vec::new());
        model.acks.push(None);
        let heap = open_sim(&disk, bug).expect("create the harness heap");
        model.acks[0] = Some(disk.trace_len());
        Run {
            disk,
            heap: Some(heap),
            model,
            rng: Rng::new(seed),
            bug,
            remapped: 0,
            remapped_seen: 0,
        }
    }

    pub fn heap(&self) -> &Heap<Root> {
        self.heap.as_ref().expect("heap open")
    }

    /// Runs one operation; returns the error of a failed commit, snapshot or reopen.
    pub fn step(&mut self, op: Op) -> snapheap::Result<()> {
        let res = self.step_inner(op);
        if let Some(h) = &self.heap {
            let r = h.stats().remapped_pages;
            self.remapped += r.saturating_sub(self.remapped_seen);
            self.remapped_seen = r;
        }
        res
    }

    fn step_inner(&mut self, op: Op) -> snapheap::Result<()> {
        match op {
            Op::Alloc => {
                let n = match self.rng.below(16) {
                    0..=9 => 1 + self.rng.below(16),
                    10..=14 => 64 + self.rng.below(1024),
                    _ => 8192 + self.rng.below(16384),
                } as usize;
                let seed = self.rng.next();
                let vals: Vec<u64> = (0..n as u64).map(|i| seed ^ i.wrapping_mul(0x9E37)).collect();
                let heap = self.heap.as_ref().expect("heap open");
                let mut w = heap.write();
                let mut b = HVec::with_capacity_in(n, w.alloc());
                b.extend_from_slice(&vals);
                w.blocks.push(b);
                self.model.working.push(vals);
            }
            Op::Write => {
                if self.model.working.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.model.working.len() as u64) as usize;
                let heap = self.heap.as_ref().expect("heap open");
                let mut w = heap.write();
                for _ in 0..1 + self.rng.below(4) {
                    let j = self.rng.below(self.model.working[i].len() as u64) as usize;
                    let v = self.rng.next();
                    w.blocks[i][j] = v;
                    self.model.working[i][j] = v;
                }
            }
            Op::Free => {
                if self.model.working.is_empty() {
                    return Ok(());
                }
                let i = self.rng.below(self.model.working.len() as u64) as usize;
                let heap = self.heap.as_ref().expect("heap open");
                heap.write().blocks.swap_remove(i);
                self.model.working.swap_remove(i);
            }
            Op::Commit | Op::Snapshot => {
                let v = self.begin_version();
                let heap = self.heap.as_ref().expect("heap open");
                if op == Op::Commit {
                    heap.commit()?;
                } else {
                    heap.snapshot()?;
                }
                self.model.acks[v] = Some(self.disk.trace_len());
            }
            Op::Reopen => {
                if self.rng.below(2) == 0 {
                    // Clean close: commits the changes and snapshots.
                    let v = self.begin_version();
                    let heap = self.heap.take().expect("heap open");
                    heap.close()?;
                    self.model.acks[v] = Some(self.disk.trace_len());
                } else {
                    // Drop: uncommitted changes are discarded.
                    self.heap = None;
                    let last = self.model.committed.len() - 1;
                    self.model.working = self.model.committed[last].clone();
                }
                self.reopen()?;
            }
        }
        Ok(())
    }

    /// Stamps the next version number into the root and records its start.
    fn begin_version(&mut self) -> usize {
        let v = self.model.committed.len();
        self.heap.as_ref().expect("heap open").write().version = v as u64;
        self.model.starts.push(self.disk.trace_len());
        self.model.committed.push(self.model.working.clone());
        self.model.acks.push(None);
        v
    }

    /// Reopens after a close (no crash): the state must be the last committed version.
    pub fn reopen(&mut self) -> snapheap::Result<()> {
        self.remapped_seen = 0; // a new handle counts from 0
        let heap = open_sim(&self.disk, self.bug)?;
        let v = self.model.committed.len() as u64 - 1;
        if let Err(e) = check_state(&heap, &self.model, v, v) {
            panic!("reopen after a clean close: {e}");
        }
        self.heap = Some(heap);
        Ok(())
    }

    /// Drops the heap (as at the end of a process) and returns the trace.
    pub fn finish(mut self) -> (SimTrace, Model) {
        self.heap = None;
        (self.disk.trace(), self.model)
    }
}

/// Checks that the heap's blocks are exactly `want`.
fn blocks_equal(heap: &Heap<Root>, want: &[Vec<u64>]) -> Result<(), String> {
    let r = heap.read();
    let v = r.version;
    if r.blocks.len() != want.len() {
        return Err(format!(
            "version {v}: {} blocks, expected {}",
            r.blocks.len(),
            want.len()
        ));
    }
    for (i, (b, w)) in r.blocks.iter().zip(want).enumerate() {
        if b[..] != w[..] {
            return Err(format!("version {v}: block {i} differs"));
        }
    }
    Ok(())
}

/// Checks that `heap` holds a version in `lo..=hi` with exactly the model's blocks, and that
/// its invariants hold. Returns the version.
pub fn check_state(heap: &Heap<Root>, model: &Model, lo: u64, hi: u64) -> Result<u64, String> {
    let v = heap.read().version;
    if v < lo || v > hi {
        return Err(format!("recovered version {v}, allowed {lo}..={hi}"));
    }
    blocks_equal(heap, &model.committed[v as usize])?;
    heap.verify().map_err(|e| format!("version {v}: verify: {e}"))?;
    Ok(v)
}

/// The commit every check makes after recovering: one more block, version `u64::MAX`.
fn commit_after_recovery(heap: &Heap<Root>) -> Result<(), String> {
    let mut w = heap.write();
    let mut b = HVec::with_capacity_in(3, w.alloc());
    b.extend_from_slice(&[1, 2, 3]);
    w.blocks.push(b);
    w.version = u64::MAX;
    w.commit().map(drop).map_err(|e| format!("commit after recovery: {e}"))
}

/// Recovers a crash image with tracing on, commits once more, then crashes that recovery and
/// commit at each of their sync points (one random mode each): every second recovery must
/// give the first recovery's state, or the new commit once it had started (and always once it
/// was acknowledged). Catches recoveries that are not themselves crash-safe. Returns the
/// number of recoveries checked.
pub fn double_crash(
    disk: &SimVfs,
    model: &Model,
    k: usize,
    rng: &mut Rng,
    bug: Option<PlantedBug>,
) -> Result<u64, String> {
    disk.start_trace();
    let (lo, hi) = model.allowed(k);
    let heap = open_sim(disk, bug).map_err(|e| format!("open failed: {e}"))?;
    let v1 = check_state(&heap, model, lo, hi)?;
    let start = disk.trace_len();
    commit_after_recovery(&heap)?;
    let ack = disk.trace_len();
    drop(heap);
    let mut extra = model.committed[v1 as usize].clone();
    extra.push(vec![1, 2, 3]);
    let trace = disk.trace();
    let mut replay = trace.replay();
    let mut n = 1;
    for k2 in 0..=trace.ops.len() {
        if k2 < trace.ops.len() && !trace.ops[k2].is_sync() {
            continue;
        }
        let mode = match rng.below(3) {
            0 => CrashMode::DropUnsynced,
            1 => CrashMode::KeepUnsynced,
            _ => CrashMode::Torn(rng.next()),
        };
        replay.advance_to(k2);
        let d2 = replay.crash(mode);
        n += 1;
        let what = format!(
            "second crash after op {k2}/{} of the recovery ({mode:?})",
            trace.ops.len()
        );
        let heap = open_sim(&d2, bug).map_err(|e| format!("{what}: open failed: {e}"))?;
        let v2 = heap.read().version;
        let ok = (v2 == v1 && k2 < ack) || (v2 == u64::MAX && k2 > start);
        if !ok {
            return Err(format!("{what}: recovered version {v2}, first recovery gave {v1}"));
        }
        let want = if v2 == v1 {
            &model.committed[v1 as usize]
        } else {
            &extra
        };
        blocks_equal(&heap, want).map_err(|e| format!("{what}: {e}"))?;
        heap.verify().map_err(|e| format!("{what}: verify: {e}"))?;
    }
    Ok(n)
}

/// Recovers `disk` and checks the result against the model for a crash after `k` traced
/// operations; then checks that the recovered heap accepts a new commit.
pub fn check_recovery(disk: &SimVfs, model: &Model, k: usize, bug: Option<PlantedBug>) -> Result<u64, String> {
    let (lo, hi) = model.allowed(k);
    let heap = open_sim(disk, bug).map_err(|e| format!("open failed: {e}"))?;
    let v = check_state(&heap, model, lo, hi)?;
    commit_after_recovery(&heap)?;
    Ok(v)
}

/// What a crash campaign found.
#[derive(Default, Debug)]
pub struct Tally {
    /// Recoveries checked (each a crash point).
    pub points: u64,
    /// Crash points whose recovery was itself crashed at each of its sync points.
    pub double: u64,
    /// Recoveries of those second crashes (included in `points`).
    pub points_in_double: u64,
    pub failures: Vec<String>,
}

/// Where [`crash_everywhere`] crashes a trace.
#[derive(Default, Clone, Copy)]
pub struct Plan {
    /// First trace position considered.
    pub from: usize,
    /// Extra crash points after randomly chosen writes (kept or torn).
    pub random_writes: usize,
    /// All three modes at every sync boundary (else one, picked at random).
    pub all_modes: bool,
    /// Every this many points (0: none) the recovery is itself crashed ([`double_crash`]).
    pub double_every: usize,
    /// The planted bug the heap runs with.
    pub bug: Option<PlantedBug>,
}

/// Crashes the traced run as `plan` says: before every sync boundary from `plan.from` on (and
/// at its end), and after random writes, recovering and checking each.
pub fn crash_everywhere(trace: &SimTrace, model: &Model, plan: Plan, rng: &mut Rng, tally: &mut Tally) {
    let Plan {
        from,
        random_writes,
        all_modes,
        double_every,
        bug,
    } = plan;
    let ops = &trace.ops;
    let mut points: Vec<(usize, CrashMode)> = Vec::new();
    for k in from..=ops.len() {
        if k == ops.len() || ops[k].is_sync() {
            let modes = [
                CrashMode::DropUnsynced,
                CrashMode::KeepUnsynced,
                CrashMode::Torn(rng.next()),
            ];
            if all_modes {
                points.extend(modes.iter().map(|&m| (k, m)));
            } else {
                points.push((k, modes[rng.below(3) as usize]));
            }
        }
    }
    let writes: Vec<usize> = (from.max(1)..=ops.len()).filter(|&k| ops[k - 1].is_write()).collect();
    if !writes.is_empty() {
        for _ in 0..random_writes {
            let k = writes[rng.below(writes.len() as u64) as usize];
            let mode = if rng.below(3) == 0 {
                CrashMode::KeepUnsynced
            } else {
                CrashMode::Torn(rng.next())
            };
            points.push((k, mode));
        }
    }
    points.sort_by_key(|p| p.0);
    let mut replay = trace.replay();
    for (i, (k, mode)) in points.into_iter().enumerate() {
        replay.advance_to(k);
        let disk = replay.crash(mode);
        let r = if double_every > 0 && i % double_every == 0 {
            double_crash(&disk, model, k, rng, bug).map(|n| {
                tally.points += n;
                tally.double += 1;
                tally.points_in_double += n - 1;
            })
        } else {
            check_recovery(&disk, model, k, bug).map(|_| tally.points += 1)
        };
        if let Err(e) = r {
            tally.points += 1;
            tally
                .failures
                .push(format!("crash after op {k}/{} ({mode:?}): {e}", ops.len()));
        }
    }
}

/// A count from the environment, or `default`.
pub fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
