//! Snapshots: planning, forking the writer, reaping it, rotating journals.
//!
//! At a commit boundary, with the allocator paused, the engine plans which pages the *older*
//! snapshot file lacks, forks, and lets the child write them (`crate::disk::snapshot`). The parent
//! then makes the current journal durable, starts journal `id + 1` (whose first commit follows
//! the snapshot's sequence number) and goes on. When the child is reaped successfully, the
//! journals older than the new snapshot are deleted.
//!
//! Which pages the older file lacks: every page captured since the older file was written,
//! i.e. `prev_interval ∪ since_snap`, plus every page beyond the older file's extent. When that
//! is unknown (first snapshots, a failed writer, a damaged bitmap) the whole extent is written.
//!
//! # Safety
//!
//! `fork()` runs while the commit lock is held and the allocator is paused; the child runs
//! only `disk::snapshot::child_main`, which is async-signal-safe (no allocation, no locks).
//! The in-process writer (simulated disks) reads the plan's runs, mapped at plan time.

use super::{lock, CommitState, Engine};
use crate::disk::format::snapshot::{dirty_len_for, SnapHeader};
use crate::disk::journal::{parse_journal_file_name, JournalWriter};
use crate::disk::snapshot::{self as writer, ImageCheck, Plan, Step, Written};
use crate::error::{Error, Result};
use crate::io::{VFile, Vfs};
use crate::mem::dirty_set::DirtySet;
use crate::mem::sysmem::SysVec;
use crate::mem::track::Tracker;
use crate::sys;
use std::alloc::System;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A snapshot writer that has been started and not reaped.
pub(crate) struct Pending {
    /// The child's pid; 0 when the plan was written in-process.
    pid: libc::pid_t,
    /// Outcome of an in-process write (`None`: it failed).
    in_process: Option<Written>,
    slot: usize,
    header: SnapHeader,
    pages: u64,
    started: Instant,
    /// `since_snap` at the fork: the pages the new snapshot's interval changed.
    fork_set: DirtySet,
}

/// Names of the two snapshot files.
pub(crate) const SNAPSHOT_FILES: [&str; 2] = ["snapshot-0", "snapshot-1"];

/// The largest journal id a snapshot may rotate from. Recovery's chain walk refuses a journal
/// named `u64::MAX` as damage (`disk/journal/chain.rs`: nothing could follow it), so a heap
/// whose journal reached this id (only a crafted directory can: it takes 2^64 snapshots) takes
/// no more snapshots and keeps journaling, instead of creating a journal its next open refuses.
const LAST_ROTATABLE_JOURNAL_ID: u64 = u64::MAX - 1;

impl CommitState {
    /// The slot holding the newest valid snapshot.
    pub(super) fn newest(&self) -> Option<usize> {
        (0..2)
            .filter(|&i| self.snaps[i].is_some_and(|h| h.valid))
            .max_by_key(|&i| self.snaps[i].map_or(0, |h| h.generation))
    }
}

impl Engine {
    /// Prepares the plan for a snapshot of the current image (commit `seq`, `extent` bytes).
    /// Runs with the allocator paused; allocates only from `System`.
    fn plan_snapshot(&self, cs: &CommitState, seq: u64, extent: usize) -> (usize, Plan) {
        let newest = cs.newest();
        let target = newest.map_or(0, |n| 1 - n);
        let newest_h = newest.and_then(|n| cs.snaps[n]);
        let generation = newest_h.map_or(0, |h| h.generation) + 1;
        let older = cs.snaps[target].filter(|h| h.valid);
        let base = self.base();
        let extent64 = extent as u64;
        let mut runs: SysVec<(u64, u64)> = SysVec::new_in(System);
        match (older, newest_h, &cs.prev_interval) {
            (Some(o), Some(n), Some(prev)) if o.generation + 1 == n.generation => {
                let mut set = cs.since_snap.clone();
                set.union_with(prev);
                for (a, b) in set.iter_ranges() {
                    let (a, b) = ((a - base) as u64, ((b - base) as u64).min(o.extent));
                    if a < b {
                        runs.push((a, b));
                    }
                }
                if o.extent < extent64 {
                    runs.push((o.extent, extent64));
                }
            }
            _ => {
                if extent64 > 0 {
                    runs.push((0, extent64));
                }
            }
        }
        let mut bitmap = SysVec::new_in(System);
        cs.since_snap.to_bytes(&mut bitmap);
        bitmap.resize(dirty_len_for(extent64) as usize, 0);
        let header = SnapHeader {
            valid: true,
            heap_id: self.meta.heap_id,
            generation,
            seq,
            journal_id: cs.journal.id() + 1, // below u64::MAX: see fork_snapshot
            extent: extent64,
            dirty_len: dirty_len_for(extent64),
            dirty_crc: crc32fast::hash(&bitmap),
        };
        let plan = Plan {
            base,
            runs,
            invalid_header: SnapHeader { valid: false, ..header }.encode(),
            header,
            bitmap,
            stop_after: self.opts.test_snapshot_stop_after.and_then(Step::from_u8),
            header_first: self.opts.planted_snapshot_header_first(),
        };
        (target, plan)
    }

    /// Starts a snapshot writer for the current image. Returns whether one was started (a
    /// failed fork is counted and retried at a later commit; the journal keeps every commit
    /// safe meanwhile). Runs with the allocator paused and the tracker locked (`tracker`, as
    /// of this commit's collect): with the hashed rung the writer checks every page it writes
    /// against the tracker's baselines first (step 0 of the protocol) and abandons the
    /// snapshot if one differs, i.e. another thread wrote it between the collect and the fork.
    ///
    /// `tracker` is `None` on a replica: only `apply` writes its memory, under the commit lock,
    /// so the image at the fork is exactly `seq` and there are no baselines to check against.
    pub(super) fn fork_snapshot(
        &self,
        cs: &mut CommitState,
        tracker: Option<&mut Tracker>,
        seq: u64,
        extent: usize,
    ) -> bool {
        if cs.pending.is_some() || cs.journal.id() >= LAST_ROTATABLE_JOURNAL_ID {
            return false;
        }
        let (slot, plan) = self.plan_snapshot(cs, seq, extent);
        if self.repl.as_ref().is_some_and(|r| r.pinned(slot)) {
            return false; // a base export reads that file; a later commit tries again
        }
        let check: Option<&dyn ImageCheck> = tracker
            .as_deref()
            .filter(|t| t.needs_image_check() && !self.opts.planted_no_fork_check())
            .map(|t| t as &dyn ImageCheck);
        let pages = plan.pages();
        let started = Instant::now();
        let file: &dyn VFile = &*cs.snap_files[slot];
        let (pid, in_process) = match file.raw_fd() {
            Some(fd) => {
                let lock_fd = self.lock_file.raw_fd().unwrap_or(-1);
                // SAFETY: getpid has no preconditions.
                let parent = unsafe { libc::getpid() };
                // SAFETY: the child runs only `child_main`, which is allocation-, lock- and
                // panic-free and leaves with _exit.
                match unsafe { sys::fork() } {
                    // SAFETY: we are the freshly forked child; the plan's runs lie in the
                    // region, which the child has a copy-on-write image of. The check reads the
                    // child's copy of the tracker, whose lock this thread held at the fork.
                    Ok(0) => unsafe { writer::child_main(fd, lock_fd, &plan, check, parent) },
                    Ok(pid) => (pid, None),
                    Err(_) => {
                        self.counters.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                        return false;
                    }
                }
            }
            None => {
                // SAFETY: the plan's runs lie inside the mapped region, which stays mapped
                // during this call.
                let r = unsafe { writer::write_plan(&file, &plan, check) };
                (0, r.ok())
            }
        };
        self.counters
            .last_fork_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let fresh = DirtySet::new(self.base(), self.meta.max_size as usize / sys::OS_PAGE);
        let fork_set = std::mem::replace(&mut cs.since_snap, fresh);
        // Replay may now start from this image (memory at the fork) or from the older one
        // (where the cached images are exact). Memory at the fork differs from a cached image
        // only on pages written since this commit's collect re-protected them (by threads
        // writing memory unreachable from the roots). With uffd-wp, whose report is sticky
        // until the next collect, a non-re-protecting report now finds them (and pages written
        // after the fork, harmlessly): only those images are forgotten. Other rungs, a replica
        // (no tracker) and a failed report start a new epoch: every page's next record is
        // whole or against zeros (docs/design.md, "Base cache", case 2).
        // (The next collect clears `cs.ranges` before it reuses them.)
        let base = self.base();
        cs.ranges.clear();
        // Planted bug (tests only): forget nothing, as if the report found no page.
        let peeked = self.opts.planted_fork_keeps_cache()
            || match tracker {
                Some(t) if t.mode() == crate::mem::track::TrackMode::Uffd => {
                    t.peek(base, base + extent, &mut cs.ranges).is_ok()
                }
                _ => false,
            };
        if peeked {
            cs.capture.snapshot_taken(extent as u64, base, &cs.ranges);
        } else {
            cs.capture.invalidate(extent as u64);
        }
        cs.pending = Some(Pending {
            pid,
            in_process,
            slot,
            header: plan.header,
            pages,
            started,
            fork_set,
        });
        cs.last_snapshot_at = started;
        true
    }

    /// After a fork at commit `seq`: makes the current journal durable and complete, then
    /// switches to a new journal that starts at `seq`.
    pub(super) fn rotate_journal(&self, cs: &mut CommitState, seq: u64) -> Result<()> {
        self.wait_durable(seq)?;
        // fork_snapshot refuses to fork from LAST_ROTATABLE_JOURNAL_ID on, so this cannot wrap.
        let id = cs.journal.id() + 1;
        if let Some(r) = &self.repl {
            r.rotating(id, seq, cs.chain).map_err(|e| self.poison(e))?;
        }
        let j = JournalWriter::create(&*self.vfs, &self.dir, self.meta.heap_id, id, seq).map_err(|e| self.poison(e))?;
        if let Some(r) = &self.repl {
            r.journal_opened(id, seq, j.salt(), j.path().to_path_buf(), j.end());
        }
        self.durable.rotated(j.file(), id, seq, j.end());
        cs.older_journal_bytes += cs.journal.end() - crate::disk::format::journal::FIRST_RECORD_OFFSET;
        cs.older_journal_pages += std::mem::take(&mut cs.journal_pages);
        cs.journal = j;
        self.counters.journal_bytes.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Reaps a finished snapshot writer (blocking if `block`). On success the new snapshot
    /// becomes the newest and older journals are deleted; on failure its pages are folded back
    /// into `since_snap` and its file counts as invalid; when the writer abandoned the snapshot
    /// at step 0 (hashed rung: a page changed between the collect and the fork) the pages are
    /// folded back too, the untouched file keeps its state, `Stats::snapshot_retries` grows and
    /// the next trigger tries again. Returns what went wrong, if anything.
    pub(super) fn reap(&self, cs: &mut CommitState, block: bool) -> Option<Reaped> {
        let p = cs.pending.as_ref()?;
        let ok = if p.pid == 0 {
            match p.in_process {
                Some(Written::Complete) => Ok(true),
                Some(Written::ImageChanged) => Ok(false),
                _ => Err("in-process snapshot write failed".to_string()),
            }
        } else {
            let st = if block {
                sys::wait_child(p.pid).map(Some)
            } else {
                sys::try_wait_child(p.pid)
            };
            match st {
                Ok(None) => return None,
                Ok(Some(s)) => {
                    if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == 0 {
                        Ok(true)
                    } else if libc::WIFEXITED(s) && libc::WEXITSTATUS(s) == writer::EXIT_IMAGE_CHANGED {
                        Ok(false)
                    } else {
                        Err(describe_status(s))
                    }
                }
                Err(e) => Err(format!("waitpid failed: {e}")),
            }
        };
        let p = cs.pending.take()?;
        match ok {
            Ok(true) => {
                let c = &self.counters;
                c.snapshots.fetch_add(1, Ordering::Relaxed);
                c.last_snapshot_pages.store(p.pages, Ordering::Relaxed);
                c.last_snapshot_micros
                    .store(p.started.elapsed().as_micros() as u64, Ordering::Relaxed);
                c.snapshot_generation.store(p.header.generation, Ordering::Relaxed);
                cs.snaps[p.slot] = Some(p.header);
                cs.prev_interval = Some(p.fork_set);
                cs.footprint.snapshot_reaped();
                // The chain now starts at the journal created at the fork: the current one.
                cs.older_journal_bytes = 0;
                cs.older_journal_pages = 0;
                // A replication shipper may still need older journals (within its cap).
                let first_needed = match &self.repl {
                    Some(r) => r.release_before(p.header.journal_id),
                    None => p.header.journal_id,
                };
                if block {
                    delete_journals_before(&*self.vfs, &self.dir, first_needed);
                } else {
                    // Unlinking a large journal can take tens of milliseconds (the file system
                    // frees its blocks): do it off the commit path when nobody waits for it.
                    let (vfs, dir, id) = (self.vfs.clone(), self.dir.clone(), first_needed);
                    let spawned = std::thread::Builder::new()
                        .name("snapheap-journal-gc".into())
                        .spawn(move || delete_journals_before(&*vfs, &dir, id));
                    if spawned.is_err() {
                        delete_journals_before(&*self.vfs, &self.dir, first_needed);
                    }
                }
                None
            }
            Ok(false) => {
                // Nothing was written: the target keeps whatever state it had (an older valid
                // image stays usable as the next plan's base).
                cs.since_snap.union_with(&p.fork_set);
                self.counters.snapshot_retries.fetch_add(1, Ordering::Relaxed);
                Some(Reaped::ImageChanged)
            }
            Err(why) => {
                cs.snaps[p.slot] = None;
                cs.since_snap.union_with(&p.fork_set);
                self.counters.snapshot_failures.fetch_add(1, Ordering::Relaxed);
                Some(Reaped::Failed(why))
            }
        }
    }

    /// Stops a running snapshot writer (at close, when the journal since the older snapshot is
    /// cheap enough to replay): `SIGKILL`, then reaped as a failure without counting one. Safe
    /// at any step of the writer: the older snapshot and every journal since it stay (journals
    /// are deleted only after a reaped success), and a header the writer made durable before
    /// it died is a valid newest snapshot whose journals recovery finds intact.
    pub(super) fn stop_pending(&self, cs: &mut CommitState) {
        let Some(p) = cs.pending.as_ref() else { return };
        if p.pid == 0 {
            return; // written in process: already complete
        }
        // SAFETY: kill(2) on the pid of our own unreaped child (it cannot have been reused
        // before we wait for it); no memory is involved.
        if unsafe { libc::kill(p.pid, libc::SIGKILL) } != 0 {
            return; // reaped below by the blocking wait
        }
        let _ = sys::wait_child(p.pid);
        let Some(p) = cs.pending.take() else { return };
        cs.snaps[p.slot] = None;
        cs.since_snap.union_with(&p.fork_set);
        self.counters.snapshots_stopped.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes a snapshot now and waits until it is durable (commit lock held by the caller).
    /// A writer that abandons its snapshot because other threads wrote heap memory between
    /// the collect and the fork (hashed rung) is retried at once, up to
    /// [`SNAPSHOT_ATTEMPTS`] times in all.
    pub(crate) fn snapshot_locked(&self, cs: &mut CommitState) -> Result<()> {
        self.reap(cs, true);
        if cs.journal.id() >= LAST_ROTATABLE_JOURNAL_ID {
            return Err(Error::invalid(format!(
                "no snapshot possible: journal {} has the largest id a snapshot can rotate from \
                 (the next would be {:#x}, which recovery refuses); commits keep journaling",
                cs.journal.path().display(),
                u64::MAX
            )));
        }
        if let Some(r) = &self.repl {
            // A base export reads the file this snapshot would overwrite: wait for it.
            r.wait_unpinned(cs.newest().map_or(0, |n| 1 - n));
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            self.commit_locked(cs, true)?;
            if cs.pending.is_none() {
                return Err(Error::io(
                    "fork (snapshot writer)",
                    &self.dir,
                    std::io::Error::last_os_error(),
                ));
            }
            let slot = cs.pending.as_ref().map_or(0, |p| p.slot);
            let path = self.dir.join(SNAPSHOT_FILES[slot]);
            match self.reap(cs, true) {
                None => return Ok(()),
                Some(Reaped::ImageChanged) if attempt < SNAPSHOT_ATTEMPTS => continue,
                Some(Reaped::ImageChanged) => {
                    return Err(Error::io(
                        "snapshot writer",
                        path,
                        std::io::Error::other(format!(
                            "abandoned {SNAPSHOT_ATTEMPTS} times: other threads kept writing heap memory between \
                             the commit's collect and the fork (hashed tracking; the journal holds every commit)"
                        )),
                    ))
                }
                Some(Reaped::Failed(why)) => {
                    return Err(Error::io("snapshot writer", path, std::io::Error::other(why)))
                }
            }
        }
    }

    /// Takes a snapshot now and waits until it is durable.
    pub(crate) fn snapshot(&self) -> Result<()> {
        let mut cs = lock(&self.commit);
        self.check_poison()?;
        self.snapshot_locked(&mut cs)
    }
}

/// Attempts `Heap::snapshot` makes when writers abandon the snapshot at step 0.
pub(crate) const SNAPSHOT_ATTEMPTS: u32 = 4;

/// What went wrong with a reaped snapshot writer.
#[derive(Debug)]
pub(crate) enum Reaped {
    /// Abandoned at step 0 (hashed rung): nothing was written; retried later.
    ImageChanged,
    /// It failed (the reason); its file counts as invalid.
    Failed(String),
}

impl ImageCheck for Tracker {
    fn page_matches(&self, addr: usize) -> bool {
        self.image_matches(addr)
    }
}

fn describe_status(s: libc::c_int) -> String {
    if libc::WIFEXITED(s) {
        match libc::WEXITSTATUS(s) {
            writer::EXIT_STOPPED => "writer stopped early (test hook)".to_string(),
            3 => "writer started after its parent died".to_string(),
            c if c > 10 => match Step::from_u8((c - 10) as u8) {
                Some(step) => format!("writer failed at step {step:?}"),
                None => format!("writer exited with status {c}"),
            },
            c => format!("writer exited with status {c}"),
        }
    } else if libc::WIFSIGNALED(s) {
        format!("writer killed by signal {}", libc::WTERMSIG(s))
    } else {
        format!("writer ended with wait status {s:#x}")
    }
}

/// Removes the journals of `dir` with an id below `first_needed` (the newest snapshot covers
/// them). Failures are harmless (recovery ignores and removes them later), so they are not
/// reported; a concurrent call for the same or a lower id only finds fewer files.
fn delete_journals_before(vfs: &dyn Vfs, dir: &Path, first_needed: u64) {
    let Ok(names) = vfs.list(dir) else {
        return;
    };
    let mut removed = false;
    for name in names {
        let Some(s) = name.to_str() else { continue };
        if parse_journal_file_name(s).is_some_and(|id| id < first_needed) {
            removed |= vfs.remove(&dir.join(&name)).is_ok();
        }
    }
    if removed {
        let _ = vfs.sync_dir(dir);
    }
}
