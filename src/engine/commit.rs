//! The commit path.
//!
//! 1. Take the commit lock (one commit at a time; the typed API also holds the root lock, so
//!    no thread mutates the root meanwhile).
//! 2. Pause the allocator: no thread is inside `alloc`/`dealloc`, so the allocator's state in
//!    the region is consistent.
//! 3. Collect the pages written since the last commit from the tracker (which re-protects them
//!    atomically) and capture them into the journal's encode buffer, each whole or as a delta
//!    against its cached base (`capture.rs`). If a snapshot is due, fork the snapshot writer
//!    now, while the image is this commit (up to unguarded writes since the collect, which the
//!    sticky rungs report next time and the hashed rung's writer checks for, `snapshot.rs`),
//!    with the tracker still locked.
//! 4. Resume the allocator and write the encoded group to the journal with one write.
//! 5. Release the commit lock, then (with `Durability::Immediate`) wait until the group is
//!    durable, sharing the sync with concurrent committers (`durable.rs`).
//!
//! What a crash at each step leaves is analysed in `docs/design.md` ("Commit protocol").
//!
//! # Safety
//!
//! The capture reads dirty ranges of the region while the allocator is paused: the ranges lie
//! inside the mapped extent (the tracker reports only armed pages); the commit lock excludes
//! mutation of the root, so the only concurrent writes are into blocks unreachable from it,
//! whose pages the next collect reports again.

use super::{lock, CommitState, Engine};
use crate::error::{Error, Result};
use crate::options::Durability;
use std::sync::atomic::Ordering;

impl Engine {
    /// Commits every change made since the last commit; returns its sequence number. A commit
    /// with nothing to capture writes nothing and returns the previous sequence number (after
    /// making it durable when the durability mode asks for it).
    pub(crate) fn commit(&self) -> Result<u64> {
        self.commit_inner(false)
    }

    /// A commit asked for by the user: with `Durability::Replicated`, refused when fenced and
    /// waiting for the acknowledgement; otherwise [`Engine::commit`]. (Commits inside `open`
    /// and `close` do not wait for a shipper.)
    pub(crate) fn commit_user(&self) -> Result<u64> {
        let Durability::Replicated { timeout } = self.opts.durability else {
            return self.commit_inner(false);
        };
        let repl = self
            .repl
            .as_ref()
            .expect("Replicated durability keeps the replication state");
        repl.check_fenced()?;
        // A shipper waiting for groups wakes now, during the commit's work (`repl.rs`).
        let committing = repl.commit_begin();
        let seq = self.commit_inner_then(false, move || drop(committing))?;
        repl.wait_ack(seq, timeout)?;
        Ok(seq)
    }

    /// Commits and waits until the commit is durable, whatever the durability mode (the
    /// format upgrade needs the root record durable before it rewrites `meta`).
    pub(crate) fn commit_durable(&self) -> Result<u64> {
        let seq = self.commit_inner(false)?;
        self.wait_durable(seq)?;
        Ok(seq)
    }

    pub(super) fn commit_inner(&self, force_snapshot: bool) -> Result<u64> {
        self.commit_inner_then(force_snapshot, || {})
    }

    /// [`Self::commit_inner`], calling `written` once the group is written (or the commit
    /// failed before), before waiting for it to be durable.
    fn commit_inner_then(&self, force_snapshot: bool, written: impl FnOnce()) -> Result<u64> {
        let mut cs = lock(&self.commit);
        let r = self
            .check_poison()
            .and_then(|()| self.commit_locked(&mut cs, force_snapshot));
        drop(cs);
        written();
        let seq = r?;
        if self.opts.durability.syncs() {
            self.wait_durable(seq)?;
        }
        Ok(seq)
    }

    /// Steps 2-4 of the commit path, with the commit lock held by the caller.
    pub(super) fn commit_locked(&self, cs: &mut CommitState, force_snapshot: bool) -> Result<u64> {
        if self.frozen.load(Ordering::Acquire) {
            return Err(Error::invalid(
                "commit refused: a root migration is running (its closure must not commit)",
            ));
        }
        // Back-pressure: if the journal has grown to twice the snapshot threshold while the
        // snapshot writer still runs, wait for it, so that disk use stays bounded by two
        // snapshot files and about three thresholds of journal however slow the writer is.
        let journal_bytes = cs.journal.end() - crate::disk::format::journal::FIRST_RECORD_OFFSET;
        let block = cs.pending.is_some() && journal_bytes >= self.opts.snapshot_after_journal_bytes.saturating_mul(2);
        self.reap(cs, block);
        let base = self.base();
        let mut forked = false;
        let mut pages = 0u64;
        let mut chain = cs.chain;
        let seq;
        {
            let _pause = self.arena.pause();
            let extent = self.arena.extent();
            cs.ranges.clear();
            let mut tracker = lock(&self.grow.tracker);
            let r = tracker.collect(base, base + extent, &mut cs.ranges);
            if let Err(e) = r {
                return Err(self.poison(Error::io("collect changed pages (PAGEMAP_SCAN or pagemap read)", "", e)));
            }
            let wrote = !cs.ranges.is_empty();
            seq = if wrote { cs.last_seq + 1 } else { cs.last_seq };
            if wrote {
                cs.journal.begin_group(seq, self.durable.durable_end());
                // The hashed rung copied the reported pages during the collect and made the
                // copies' digests its baselines: capture exactly those bytes (see
                // mem/track/hashed.rs), not a later read of the live pages.
                let staged = tracker.staged();
                let mut at = 0usize;
                for &(a, b) in cs.ranges.iter() {
                    debug_assert!(a >= base && b <= base + extent && a < b);
                    let src = match staged {
                        Some(s) => {
                            at += b - a;
                            s[at - (b - a)..at].as_ptr()
                        }
                        // The allocator is paused and the commit lock excludes mutation of the
                        // root, so the only concurrent writes possible are by other threads into
                        // blocks unreachable from the root; such pages are reported again by
                        // the next collect, and the capture reads each page once (`capture.rs`).
                        None => a as *const u8,
                    };
                    // SAFETY: [a, b) is page-aligned and lies inside [base, base + extent), mapped
                    // read-write for the engine's lifetime; `src` is either `a` itself or the
                    // staged copy of [a, b), `b - a` bytes that live until the next collect.
                    unsafe { cs.capture.capture(&mut cs.journal, base, a, b, src, &cs.since_snap) };
                    cs.since_snap.insert_range(a, b);
                    pages += ((b - a) / crate::sys::OS_PAGE) as u64;
                }
                debug_assert!(
                    staged.is_none_or(|s| s.len() == at),
                    "staged bytes do not match the ranges"
                );
                cs.journal.finish_group(extent as u64);
                if self.repl.is_some() {
                    chain = crate::disk::format::wire::chain_step(cs.chain, seq, cs.journal.encoded());
                }
            }
            if force_snapshot || (wrote && cs.pending.is_none() && self.snapshot_due(cs, Some(pages))) {
                self.opts.run_test_before_fork();
                // The tracker stays locked through the fork: the hashed rung's writer checks
                // its image against the baselines of this collect (`snapshot.rs`).
                forked = self.fork_snapshot(cs, Some(&mut tracker), seq, extent);
            }
            drop(tracker);
        }
        if seq != cs.last_seq {
            let start = cs.journal.end();
            match cs.journal.write_encoded() {
                Ok(end) => {
                    if let Some(r) = &self.repl {
                        r.group_written(seq, cs.journal.id(), start, end, chain, cs.journal.encoded());
                        cs.chain = chain;
                    }
                    self.durable.written(seq, end);
                    cs.last_seq = seq;
                    self.counters.journal_bytes.store(
                        end - crate::disk::format::journal::FIRST_RECORD_OFFSET,
                        Ordering::Relaxed,
                    );
                }
                Err(e) => {
                    // Nothing follows an unwritten group (the heap is poisoned); the cache
                    // must not run ahead of the journal all the same.
                    cs.capture.invalidate(self.arena.extent() as u64);
                    return Err(self.poison(e));
                }
            }
            self.counters.commits.fetch_add(1, Ordering::Relaxed);
            self.counters.last_commit_pages.store(pages, Ordering::Relaxed);
            cs.journal_pages += pages;
            self.counters.publish_capture(&cs.capture);
        }
        if forked {
            self.rotate_journal(cs, seq)?;
        }
        Ok(seq)
    }
}

/// A commit of at most this many pages counts as quiet for the page-record snapshot trigger.
pub(super) const QUIET_COMMIT_PAGES: u64 = 32;

impl Engine {
    /// Whether the journal volume (bytes, or page records: what an open would replay) or the
    /// interval asks for a snapshot at a commit that captured `pages` pages (`None`: a
    /// replica's applied group, which counts no page records). The current journal is the
    /// chain since the last fork. Page records count at a quiet commit (at most
    /// [`QUIET_COMMIT_PAGES`] pages: the end of a burst of writes, when a fork costs least,
    /// docs/design.md "Restart without a snapshot") or at four times the threshold.
    pub(super) fn snapshot_due(&self, cs: &CommitState, pages: Option<u64>) -> bool {
        let bytes = cs.journal.end() - crate::disk::format::journal::FIRST_RECORD_OFFSET;
        if bytes >= self.opts.snapshot_after_journal_bytes {
            return true;
        }
        let records = self.opts.snapshot_after_journal_pages;
        let due = |pages: u64| {
            cs.journal_pages >= records.saturating_mul(4)
                || (cs.journal_pages >= records && pages <= QUIET_COMMIT_PAGES)
        };
        if records > 0 && pages.is_some_and(due) {
            return true;
        }
        matches!(self.opts.snapshot_interval, Some(every) if cs.last_snapshot_at.elapsed() >= every)
    }
}
