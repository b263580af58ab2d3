//! Group commit and the background flusher.
//!
//! A commit writes its journal group under the commit lock and then, outside it, waits until
//! its sequence number is durable. The first waiter becomes the *syncer*: it notes the last
//! written sequence number, runs one `fdatasync` on the current journal, and publishes that
//! number as durable; waiters that arrived meanwhile are covered by the same sync. This is how
//! concurrent committers share one sync.
//!
//! # Invariants
//!
//! - `durable_seq <= written_seq`; both only grow.
//! - `durable_end` is a byte offset of the *current* journal that an `fdatasync` covered; it
//!   is recorded in each new record's `synced` field, which recovery uses to tell a torn tail
//!   from corruption.
//! - At most one thread syncs at a time (`syncing`).
//!
//! # Safety
//!
//! [`Engine::start_flusher`] hands the flusher thread the engine's address: the engine is
//! boxed (stable address) and `close`/`drop` join the flusher before the box is freed.

use super::{lock, Engine};
use crate::error::{Error, Result};
use crate::io::VFile;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub(super) struct DurableState {
    /// The current journal file.
    pub file: Arc<dyn VFile>,
    pub journal_id: u64,
    pub written_seq: u64,
    pub written_end: u64,
    pub durable_seq: u64,
    pub durable_end: u64,
    syncing: bool,
    stop: bool,
}

pub(super) struct Durable {
    pub state: Mutex<DurableState>,
    cv: Condvar,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl Durable {
    pub(super) fn new(file: Arc<dyn VFile>, journal_id: u64, seq: u64, end: u64) -> Durable {
        Durable {
            state: Mutex::new(DurableState {
                file,
                journal_id,
                written_seq: seq,
                written_end: end,
                durable_seq: seq,
                durable_end: end,
                syncing: false,
                stop: false,
            }),
            cv: Condvar::new(),
            flusher: Mutex::new(None),
        }
    }

    /// `(written_seq, durable_seq)`.
    pub(super) fn seqs(&self) -> (u64, u64) {
        let s = lock(&self.state);
        (s.written_seq, s.durable_seq)
    }

    /// Publishes a group written to the current journal.
    pub(super) fn written(&self, seq: u64, end: u64) {
        let mut s = lock(&self.state);
        s.written_seq = seq;
        s.written_end = end;
    }

    /// The durable offset of the current journal (for new records' `synced` field).
    pub(super) fn durable_end(&self) -> u64 {
        lock(&self.state).durable_end
    }

    /// Switches to a new journal whose start (`seq`, `end`) is already durable.
    pub(super) fn rotated(&self, file: Arc<dyn VFile>, journal_id: u64, seq: u64, end: u64) {
        let mut s = lock(&self.state);
        s.file = file;
        s.journal_id = journal_id;
        s.written_seq = seq;
        s.written_end = end;
        s.durable_seq = s.durable_seq.max(seq);
        s.durable_end = end;
        self.cv.notify_all();
    }

    pub(super) fn stop_flusher(&self) {
        lock(&self.state).stop = true;
        self.cv.notify_all();
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
    }
}

impl Engine {
    /// Blocks until commit `seq` is durable, syncing the journal if no other thread is.
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<()> {
        let d = &self.durable;
        let mut s = lock(&d.state);
        loop {
            if s.durable_seq >= seq {
                return Ok(());
            }
            self.check_poison()?;
            if s.syncing {
                s = d.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            s.syncing = true;
            let (file, target_seq, target_end, jid) = (s.file.clone(), s.written_seq, s.written_end, s.journal_id);
            drop(s);
            let r = if self.opts.planted_skip_journal_sync() {
                Ok(()) // planted bug (tests only): acknowledge without syncing
            } else {
                file.sync_data()
            };
            s = lock(&d.state);
            s.syncing = false;
            match r {
                Ok(()) => {
                    s.durable_seq = s.durable_seq.max(target_seq);
                    if s.journal_id == jid {
                        s.durable_end = s.durable_end.max(target_end);
                    }
                    if let Some(r) = &self.repl {
                        r.durable(s.durable_seq);
                    }
                }
                Err(e) => {
                    d.cv.notify_all();
                    drop(s);
                    return Err(self.poison(Error::io("fdatasync (journal)", &self.dir, e)));
                }
            }
            d.cv.notify_all();
        }
    }

    /// Starts the background flusher of `Durability::Eventual`.
    ///
    /// # Safety
    ///
    /// The engine stays at this address until [`Durable::stop_flusher`] has returned (the
    /// engine is boxed and `close`/`drop` stop the flusher first).
    pub(super) unsafe fn start_flusher(&self, every: Duration) {
        let addr = self as *const Engine as usize;
        let h = std::thread::Builder::new()
            .name("snapheap-flush".into())
            .spawn(move || {
                // SAFETY: the engine outlives this thread (function contract).
                let e = unsafe { &*(addr as *const Engine) };
                let d = &e.durable;
                let mut s = lock(&d.state);
                loop {
                    if s.stop {
                        return;
                    }
                    let (g, _) = d.cv.wait_timeout(s, every).unwrap_or_else(|p| p.into_inner());
                    s = g;
                    if s.stop {
                        return;
                    }
                    if s.written_seq > s.durable_seq && !e.is_poisoned() {
                        let target = s.written_seq;
                        drop(s);
                        let _ = e.wait_durable(target);
                        s = lock(&d.state);
                    }
                }
            });
        if let Ok(h) = h {
            *lock(&self.durable.flusher) = Some(h);
        }
    }
}
