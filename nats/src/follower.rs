//! The standby's follower, and promotion.
//!
//! [`Follower::start`] opens the replica in `dir` (or bootstraps it from the base in the
//! object store when `dir` is missing or empty, or when a bootstrap was interrupted: the
//! file `<dir>.bootstrapping` exists), then a background thread reads the stream from the
//! base's start sequence, reassembles frames into groups and applies them in `seq` order
//! (`Replica::apply` is durable before it returns, so a restart resumes from
//! `Replica::position`; groups at or below it come back as duplicates).
//!
//! Re-bootstrap (replica deleted and loaded again from the newest base) when the log cannot
//! continue this replica: a **gap** (the next group in the stream is later than
//! `position + 1`: the stream was purged below the position, or the primary shipped a new
//! base past a trimmed backlog), or a **divergence** (the core's chain hash does not
//! continue, or an epoch record says the new leader's history ends before this replica's
//! position). Nothing of a refused group is applied.
//!
//! [`Follower::promote`]: read the leader key (revision `r`, epoch `E`) first; stop the
//! thread; drain the stream to its last message; if another node holds `E` and the log has
//! no epoch record of `E` (it won its compare-and-set and has not written its record: it is
//! promoting, or died in between), watch the key and the log for
//! `NatsConfig::stale_promotion_after`: [`Error::NotLeader`] if the record appears or the key
//! changes, else take over; take epoch `max(E, log's epoch) + 1` in the leader key by
//! compare-and-set on `r` (a second candidate racing us, or anyone who changed the key since
//! the call began, makes it fail: [`Error::NotLeader`], the replica untouched);
//! publish the epoch record `(E + 1, position)` with `Nats-Expected-Last-Subject-Sequence`
//! = that last message (if the old primary published meanwhile, drain again and retry;
//! if the log then holds another node's epoch record of an epoch at least ours, we were a
//! slow holder taken over: [`Error::NotLeader`]);
//! then `Replica::promote`. The old primary's next publish is refused (10071), its shipper
//! reads the epoch record at the tail and fences it.
//!
//! # Invariants
//! - a group is applied only if its seq is `position + 1` and the core accepts its chain;
//! - the thread holds the replica only through `Shared::replica`, so a promotion or a
//!   re-bootstrap waits for readers to drop their `Arc`s.

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use crate::frame::{self, Event, Reassembler};
use crate::shipper::runtime;
use crate::transport::{ack, next_message, Conn, Leader, PublishFailure};
use snapheap::{Applied, Heap, OpenOptions, Persist, Replica};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the follower has done so far.
#[derive(Clone, Debug, Default)]
pub struct FollowerStatus {
    /// Last applied seq.
    pub position: u64,
    /// Highest epoch seen in the log.
    pub epoch: u64,
    /// Groups applied since start.
    pub applied: u64,
    /// Re-bootstraps since start (gap or divergence), with the last reason.
    pub rebootstraps: u64,
    /// Why the last re-bootstrap happened.
    pub last_rebootstrap: Option<String>,
    /// Stream sequence of the last message processed.
    pub stream_seq: u64,
    /// The last error (NATS down, damaged frame).
    pub last_error: Option<String>,
    /// True once the thread stopped on an error it cannot retry.
    pub failed: bool,
}

struct Shared<T: Persist> {
    replica: Mutex<Option<Arc<Replica<T>>>>,
    status: Mutex<FollowerStatus>,
    cv: Condvar,
}

/// A running standby.
pub struct Follower<T: Persist + Send + Sync + 'static> {
    shared: Arc<Shared<T>>,
    stop: Arc<AtomicBool>,
    /// Wakes the thread out of its wait for the next message when `stop` is set.
    wake: Arc<tokio::sync::Notify>,
    thread: Option<JoinHandle<(Applier<T>, tokio::runtime::Runtime)>>,
    cfg: NatsConfig,
    /// `promote` reads the leader key on it (see there).
    promo: Conn,
    /// The follower runtime's handle (`promo` lives on it).
    handle: tokio::runtime::Handle,
}

/// The result of a promotion.
pub struct Promoted<T: Persist> {
    /// The writable heap (replication on: start a `Shipper` on its source).
    pub heap: Heap<T>,
    /// The epoch this node now holds.
    pub epoch: u64,
    /// The commit seq the new epoch starts after.
    pub seq: u64,
    /// Time from the start of `promote` to the open heap.
    pub took: Duration,
    /// Where that time went, in order: `leader` (read the leader key), `halt` (stop the
    /// follower thread), `drain` (apply the rest of the log), `stale` (only when taking over
    /// a stale promotion: the wait of `NatsConfig::stale_promotion_after`), `cas` (take the epoch),
    /// `record` (drain again, write the epoch record), `open` (`Replica::promote`: close the
    /// replica, open the heap).
    pub phases: Vec<(&'static str, Duration)>,
}

impl<T: Persist + Send + Sync + 'static> Follower<T> {
    /// Opens or bootstraps the replica in `dir` and starts following the log of `cfg`.
    /// `opts` are the replica's open options (snapshot thresholds).
    pub fn start(dir: impl AsRef<Path>, opts: &OpenOptions, cfg: &NatsConfig) -> Result<Self> {
        let rt = runtime()?;
        let shared = Arc::new(Shared {
            replica: Mutex::new(None),
            status: Mutex::new(FollowerStatus::default()),
            cv: Condvar::new(),
        });
        let mut ap = rt.block_on(Applier::open(
            dir.as_ref().to_path_buf(),
            opts.clone(),
            cfg.clone(),
            shared.clone(),
        ))?;
        // A connection of its own for `promote`'s first step, opened now so that a promotion
        // does not pay a connection set-up (its tasks run on the follower's runtime).
        let promo = rt.block_on(Conn::open(cfg))?;
        let handle = rt.handle().clone();
        let stop = Arc::new(AtomicBool::new(false));
        let wake = Arc::new(tokio::sync::Notify::new());
        let (s2, w2) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("snapheap-follower".into())
            .spawn(move || {
                rt.block_on(ap.run(&s2, &w2));
                // The runtime goes back with the applier: its connection lives on it.
                (ap, rt)
            })
            .map_err(|e| Error::Config {
                what: format!("cannot start the follower thread: {e}"),
            })?;
        Ok(Follower {
            shared,
            stop,
            wake,
            thread: Some(thread),
            cfg: cfg.clone(),
            promo,
            handle,
        })
    }

    /// A copy of the status.
    pub fn status(&self) -> FollowerStatus {
        self.shared.status.lock().unwrap().clone()
    }

    /// The replica, for reads (`Replica::read`); hold the `Arc` briefly: a re-bootstrap or
    /// a promotion waits for it.
    pub fn replica(&self) -> Option<Arc<Replica<T>>> {
        self.shared.replica.lock().unwrap().clone()
    }

    /// Waits until the replica's position reaches `seq`; false on timeout.
    pub fn wait_for(&self, seq: u64, timeout: Duration) -> bool {
        let t0 = Instant::now();
        let mut st = self.shared.status.lock().unwrap();
        while st.position < seq {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() || st.failed {
                return false;
            }
            st = self.shared.cv.wait_timeout(st, left).unwrap().0;
        }
        true
    }

    fn halt(&mut self) -> Option<(Applier<T>, tokio::runtime::Runtime)> {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
        self.thread.take().and_then(|t| t.join().ok())
    }

    /// Stops following; the replica directory stays (reopen with `start`).
    pub fn stop(mut self) -> FollowerStatus {
        drop(self.halt());
        self.status()
    }

    /// Promotes this standby (see the module doc). On [`Error::NotLeader`] another node won
    /// the epoch; this replica is closed untouched (start a follower on it again).
    pub fn promote(mut self, opts: &OpenOptions) -> Result<Promoted<T>> {
        let t0 = Instant::now();
        let mut laps = Laps::new();
        // Read the leader key first, on a connection of our own, before anything else: the
        // compare-and-set later succeeds only if nobody changed it since this call began.
        let cfg = self.cfg.clone();
        let seen = self.handle.block_on(self.promo.leader())?;
        laps.mark("leader");
        let (mut ap, rt) = self.halt().ok_or_else(|| Error::Config {
            what: "the follower thread is gone".into(),
        })?;
        laps.mark("halt");
        let (seq, epoch) = rt.block_on(ap.elect_and_drain(&cfg, seen, &mut laps))?;
        let replica = ap.take_replica()?;
        let heap = replica.promote(opts)?;
        laps.mark("open");
        Ok(Promoted {
            heap,
            epoch,
            seq,
            took: t0.elapsed(),
            phases: laps.phases,
        })
    }
}

impl<T: Persist + Send + Sync + 'static> Drop for Follower<T> {
    fn drop(&mut self) {
        drop(self.halt());
    }
}

/// Sends a promotion event to `NatsConfig::events` (feature `testing`; nothing otherwise).
fn event(cfg: &NatsConfig, what: String) {
    #[cfg(feature = "testing")]
    if let Some(tx) = &cfg.events {
        let _ = tx.send(what);
    }
    #[cfg(not(feature = "testing"))]
    let _ = (cfg, what);
}

/// Where a promotion's time goes.
struct Laps {
    lap: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Laps {
    fn new() -> Laps {
        Laps {
            lap: Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Records the time since the last mark as phase `name`.
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.phases.push((name, now - self.lap));
        self.lap = now;
    }
}

struct Applier<T: Persist + Send + Sync + 'static> {
    conn: Conn,
    dir: PathBuf,
    opts: OpenOptions,
    cfg: NatsConfig,
    shared: Arc<Shared<T>>,
    reasm: Reassembler,
    epoch: u64,
    /// Next stream sequence to read.
    next_stream: u64,
    /// True after a group was applied (not a duplicate) since the consumer started: the
    /// follower is reading new history and can judge epoch records.
    live: bool,
    /// The newest epoch record read since the last bootstrap: (epoch, node).
    record: Option<(u64, String)>,
}

enum Outcome {
    Ok,
    Rebootstrap(String),
}

fn marker(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".bootstrapping");
    PathBuf::from(s)
}

fn dir_is_empty(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut it) => it.next().is_none(),
        Err(_) => true,
    }
}

impl<T: Persist + Send + Sync + 'static> Applier<T> {
    async fn open(dir: PathBuf, opts: OpenOptions, cfg: NatsConfig, shared: Arc<Shared<T>>) -> Result<Self> {
        let conn = Conn::open(&cfg).await?;
        let mut ap = Applier {
            conn,
            dir,
            opts,
            reasm: Reassembler::new(0, cfg.max_group_bytes),
            cfg,
            shared,
            epoch: 0,
            next_stream: 1,
            live: false,
            record: None,
        };
        if dir_is_empty(&ap.dir) || marker(&ap.dir).exists() {
            ap.bootstrap().await?;
        } else {
            let r = Replica::<T>::open_with(&ap.opts, &ap.dir)?;
            ap.reasm = Reassembler::new(r.heap_id(), ap.cfg.max_group_bytes);
            match ap.conn.get_base().await? {
                Some((info, _)) if info.heap_id == r.heap_id() => {
                    ap.next_stream = info.start;
                    ap.epoch = info.epoch;
                }
                Some((info, _)) => {
                    return Err(Error::WrongHeap {
                        found: info.heap_id,
                        expected: r.heap_id(),
                    })
                }
                None => ap.next_stream = 1,
            }
            ap.install(r);
        }
        Ok(ap)
    }

    fn install(&mut self, r: Replica<T>) {
        {
            let mut st = self.shared.status.lock().unwrap();
            st.position = r.position();
            st.epoch = st.epoch.max(self.epoch);
        }
        *self.shared.replica.lock().unwrap() = Some(Arc::new(r));
        self.shared.cv.notify_all();
    }

    /// Takes the replica out of the shared slot, waiting for readers to drop theirs.
    fn take_replica(&self) -> Result<Replica<T>> {
        let mut a = self
            .shared
            .replica
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| Error::Config {
                what: "no replica open".into(),
            })?;
        loop {
            match Arc::try_unwrap(a) {
                Ok(r) => return Ok(r),
                Err(back) => {
                    a = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Deletes the replica (if any) and loads the newest base.
    async fn bootstrap(&mut self) -> Result<()> {
        if self.shared.replica.lock().unwrap().is_some() {
            drop(self.take_replica()?);
        }
        let (info, bytes) = self.conn.get_base().await?.ok_or_else(|| Error::NoBase {
            bucket: self.cfg.base_bucket(),
        })?;
        let m = marker(&self.dir);
        std::fs::write(&m, b"bootstrap in progress\n").map_err(|e| Error::Config {
            what: format!("cannot write {}: {e}", m.display()),
        })?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| Error::Config {
                what: format!("cannot remove {}: {e}", self.dir.display()),
            })?;
        }
        let r = Replica::<T>::bootstrap_with(&self.opts, &self.dir, &bytes)?;
        let _ = std::fs::remove_file(&m);
        if r.heap_id() != info.heap_id {
            return Err(Error::WrongHeap {
                found: r.heap_id(),
                expected: info.heap_id,
            });
        }
        self.reasm = Reassembler::new(r.heap_id(), self.cfg.max_group_bytes);
        self.next_stream = info.start;
        // The epoch as of the base; epoch records after `start` move it forward.
        self.epoch = info.epoch;
        self.shared.status.lock().unwrap().epoch = info.epoch;
        self.live = false;
        self.record = None;
        self.install(r);
        Ok(())
    }

    fn replica(&self) -> Arc<Replica<T>> {
        self.shared
            .replica
            .lock()
            .unwrap()
            .clone()
            .expect("the applier always has a replica between bootstraps")
    }

    /// Handles one message of the stream.
    fn handle(&mut self, sseq: u64, payload: &[u8]) -> Result<Outcome> {
        self.next_stream = sseq + 1;
        self.shared.status.lock().unwrap().stream_seq = sseq;
        let f = match frame::decode(payload) {
            Ok(f) => f,
            Err(e) => {
                // A damaged message: its group will be incomplete and the next one a gap.
                self.reasm.reset();
                self.shared.status.lock().unwrap().last_error = Some(format!("stream seq {sseq}: {e}"));
                return Ok(Outcome::Ok);
            }
        };
        let ev = match self.reasm.push(&f) {
            Ok(ev) => ev,
            Err(e) => {
                return Err(Error::Corrupt {
                    at: format!("stream seq {sseq}"),
                    what: e.to_string(),
                })
            }
        };
        let r = self.replica();
        let pos = r.position();
        match ev {
            Event::Partial | Event::Ignored(_) => Ok(Outcome::Ok),
            Event::Epoch { epoch, seq, node } => {
                if self.record.as_ref().is_none_or(|(e, _)| epoch > *e) {
                    self.record = Some((epoch, node.clone()));
                }
                if epoch > self.epoch {
                    self.epoch = epoch;
                    self.shared.status.lock().unwrap().epoch = epoch;
                    if self.live && seq < pos {
                        return Ok(Outcome::Rebootstrap(format!(
                            "epoch {epoch} of {node} continues after seq {seq}, this replica \
                             is at {pos} (diverged)"
                        )));
                    }
                    if seq > pos {
                        return Ok(Outcome::Rebootstrap(format!(
                            "epoch {epoch} of {node} continues after seq {seq}, this replica \
                             is at {pos} (gap)"
                        )));
                    }
                }
                Ok(Outcome::Ok)
            }
            Event::Group { epoch, seq, bytes } => {
                if epoch < self.epoch {
                    // Cannot be in a fenced log; never applied.
                    return Ok(Outcome::Ok);
                }
                if seq > pos + 1 {
                    return Ok(Outcome::Rebootstrap(format!(
                        "gap: the log continues with seq {seq}, this replica is at {pos}"
                    )));
                }
                match r.apply(&bytes) {
                    Ok(Applied::Applied(s)) => {
                        self.epoch = self.epoch.max(epoch);
                        self.live = true;
                        let mut st = self.shared.status.lock().unwrap();
                        st.position = s;
                        st.applied += 1;
                        st.epoch = self.epoch;
                        drop(st);
                        self.shared.cv.notify_all();
                        Ok(Outcome::Ok)
                    }
                    Ok(Applied::Duplicate(_)) => Ok(Outcome::Ok),
                    Err(e @ snapheap::Error::ReplicaGap { .. }) | Err(e @ snapheap::Error::ReplicaDiverged { .. }) => {
                        Ok(Outcome::Rebootstrap(e.to_string()))
                    }
                    Err(e @ snapheap::Error::Corrupt { .. }) => Ok(Outcome::Rebootstrap(format!(
                        "group {seq} at stream seq {sseq} refused: {e}"
                    ))),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    async fn rebootstrap(&mut self, why: String) -> Result<()> {
        {
            let mut st = self.shared.status.lock().unwrap();
            st.rebootstraps += 1;
            st.last_rebootstrap = Some(why);
        }
        self.bootstrap().await
    }

    async fn run(&mut self, stop: &AtomicBool, wake: &tokio::sync::Notify) {
        let mut backoff = Duration::from_millis(10);
        'outer: while !stop.load(Ordering::Acquire) {
            let mut msgs = match self.conn.messages_from(self.next_stream).await {
                Ok(m) => m,
                Err(e) => {
                    self.shared.status.lock().unwrap().last_error = Some(e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.cfg.max_backoff);
                    continue;
                }
            };
            // The reassembler keeps a partial group: `next_stream` is right after its last
            // frame processed, so the new consumer continues it.
            self.live = false;
            while !stop.load(Ordering::Acquire) {
                let m = tokio::select! {
                    m = tokio::time::timeout(Duration::from_millis(20), next_message(&mut msgs)) => m,
                    // `halt`: check `stop` now, not at the next timeout.
                    _ = wake.notified() => continue,
                };
                let (sseq, payload) = match m {
                    Err(_) => continue,
                    Ok(Ok(x)) => x,
                    Ok(Err(e)) => {
                        self.shared.status.lock().unwrap().last_error = Some(e.to_string());
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.cfg.max_backoff);
                        continue 'outer;
                    }
                };
                backoff = Duration::from_millis(10);
                match self.handle(sseq, &payload) {
                    Ok(Outcome::Ok) => {}
                    Ok(Outcome::Rebootstrap(why)) => {
                        if let Err(e) = self.rebootstrap(why).await {
                            self.shared.status.lock().unwrap().last_error = Some(e.to_string());
                            tokio::time::sleep(self.cfg.max_backoff).await;
                            // Retry the bootstrap from the top (the base may be replaced).
                            if self.shared.replica.lock().unwrap().is_none() {
                                while !stop.load(Ordering::Acquire) {
                                    match self.bootstrap().await {
                                        Ok(()) => break,
                                        Err(e) => {
                                            self.shared.status.lock().unwrap().last_error = Some(e.to_string());
                                            tokio::time::sleep(self.cfg.max_backoff).await;
                                        }
                                    }
                                }
                            }
                        }
                        continue 'outer;
                    }
                    Err(e) => {
                        let mut st = self.shared.status.lock().unwrap();
                        st.last_error = Some(e.to_string());
                        if !matches!(e, Error::Corrupt { .. }) {
                            st.failed = true;
                            drop(st);
                            self.shared.cv.notify_all();
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Applies everything in the stream up to its last message.
    async fn drain(&mut self) -> Result<u64> {
        // The last message that exists (the stream's last sequence may be a deleted one).
        let Some((last, _)) = self.conn.tail().await? else {
            return Ok(0);
        };
        if last < self.next_stream {
            return Ok(last);
        }
        let mut msgs = self.conn.messages_from(self.next_stream).await?;
        while self.next_stream <= last {
            let (sseq, payload) = tokio::time::timeout(self.cfg.request_timeout, next_message(&mut msgs))
                .await
                .map_err(|_| Error::Timeout {
                    what: format!("stream message {} while draining", self.next_stream),
                })??;
            if let Outcome::Rebootstrap(why) = self.handle(sseq, &payload)? {
                return Err(Error::Fenced {
                    reason: format!(
                        "this standby cannot continue the log ({why}); it must re-bootstrap, not be promoted"
                    ),
                });
            }
        }
        Ok(last)
    }

    /// The leader key (revision `rev`) holds epoch `epoch` of `owner`, newer than the log's
    /// newest epoch record: watches the key and the log for `stale_promotion_after`. Ok: the
    /// key kept `rev` and no record (nor group) of `epoch` appeared, the caller takes over by
    /// compare-and-set on `rev`. `NotLeader` as soon as either moves. Only this process's
    /// monotonic clock is read.
    async fn await_stale_promotion(&mut self, cfg: &NatsConfig, epoch: u64, owner: &str, rev: u64) -> Result<()> {
        event(cfg, format!("stale-wait epoch={epoch}"));
        let after = cfg.stale_promotion_after;
        let poll = (after / 10).clamp(Duration::from_millis(1), Duration::from_millis(100));
        let t0 = Instant::now();
        loop {
            match self.conn.leader().await? {
                Some((_, r)) if r == rev => {}
                Some((l, _)) => {
                    return Err(Error::NotLeader {
                        epoch: l.epoch,
                        owner: l.node,
                    })
                }
                None => {
                    return Err(Error::NotLeader {
                        epoch,
                        owner: owner.to_string(),
                    })
                }
            }
            self.drain().await?;
            if self.epoch >= epoch {
                // Its record arrived: the holder finished its promotion (or, if a newer
                // record is there, someone else took over; name the newest).
                let (epoch, owner) = match &self.record {
                    Some((e, n)) if *e >= epoch => (*e, n.clone()),
                    _ => (epoch, owner.to_string()),
                };
                return Err(Error::NotLeader { epoch, owner });
            }
            let waited = t0.elapsed();
            if waited >= after {
                return Ok(());
            }
            tokio::time::sleep(poll.min(after - waited)).await;
        }
    }

    /// Takes the next epoch, drains, writes the epoch record. Returns (seq, epoch).
    async fn elect_and_drain(
        &mut self,
        cfg: &NatsConfig,
        seen: Option<(Leader, u64)>,
        laps: &mut Laps,
    ) -> Result<(u64, u64)> {
        let heap_id = self.replica().heap_id();
        let (cur_epoch, cur_node, rev) = match seen {
            Some((l, rev)) => (l.epoch, l.node, rev),
            None => (0, String::new(), 0),
        };
        // Catch up, so that `self.epoch` is the newest epoch the log shows.
        self.drain().await?;
        laps.mark("drain");
        if cur_epoch > self.epoch && cur_node != cfg.node {
            // The key's holder has not written its epoch record: it is promoting right now,
            // or it died between its compare-and-set and its record. Wait; take over if
            // nothing moves.
            self.await_stale_promotion(cfg, cur_epoch, &cur_node, rev).await?;
            laps.mark("stale");
        }
        if !cfg.promote_pause.is_zero() {
            tokio::time::sleep(cfg.promote_pause).await;
        }
        let new = Leader {
            epoch: cur_epoch.max(self.epoch) + 1,
            node: cfg.node.clone(),
        };
        let won = self.conn.cas_leader(&new, rev).await?;
        laps.mark("cas");
        if !won {
            let (l, _) = self.conn.leader().await?.ok_or_else(|| Error::Nats {
                op: "kv get",
                detail: "the leader key vanished".into(),
            })?;
            return Err(Error::NotLeader {
                epoch: l.epoch,
                owner: l.node,
            });
        }
        event(cfg, format!("cas epoch={}", new.epoch));
        #[cfg(feature = "testing")]
        match cfg.after_cas {
            crate::config::AfterCas::Continue => {}
            crate::config::AfterCas::Die => {
                return Err(Error::Config {
                    what: format!(
                        "testing: stopped right after the compare-and-set to epoch {} (AfterCas::Die)",
                        new.epoch
                    ),
                })
            }
            crate::config::AfterCas::HoldFor(d) => tokio::time::sleep(d).await,
            crate::config::AfterCas::HoldUntilNewerRecord => {
                // Reads (does not apply) the log past what was drained until a newer epoch
                // record is in it.
                let t0 = Instant::now();
                'hold: while t0.elapsed() < Duration::from_secs(60) {
                    if let Ok(Some((last, _))) = self.conn.tail().await {
                        if last >= self.next_stream {
                            let mut msgs = self.conn.messages_from(self.next_stream).await?;
                            loop {
                                let (sseq, p) = tokio::time::timeout(cfg.request_timeout, next_message(&mut msgs))
                                    .await
                                    .map_err(|_| Error::Timeout {
                                        what: "a stream message (AfterCas::HoldUntilNewerRecord)".into(),
                                    })??;
                                if frame::decode(&p)
                                    .is_ok_and(|f| f.header.kind == frame::Kind::Epoch && f.header.epoch > new.epoch)
                                {
                                    break 'hold;
                                }
                                if sseq >= last {
                                    break;
                                }
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let mut last_err = String::new();
        for _ in 0..100 {
            let last = match self.drain().await {
                Ok(l) => l,
                Err(e @ Error::Fenced { .. }) => return Err(e),
                Err(e) => {
                    last_err = e.to_string();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Another candidate took this promotion over (we were slow, see
            // `await_stale_promotion`) and its epoch record is in the log: never publish an
            // older epoch after a newer one. Our publish below expects the tail we drained
            // to, so a record written after this check makes it fail and we come back here.
            if let Some((e, node)) = &self.record {
                if *e >= new.epoch && *node != cfg.node {
                    return Err(Error::NotLeader {
                        epoch: *e,
                        owner: node.clone(),
                    });
                }
            }
            let pos = self.replica().position();
            let (h, f) = frame::epoch_record(heap_id, new.epoch, pos, &cfg.node);
            let r = match self.conn.publish(&frame::msg_id(&h), last, f).await {
                Ok(fut) => ack(fut).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(_) => {
                    laps.mark("record");
                    return Ok((pos, new.epoch));
                }
                // The old primary (or a lost ack of ours) moved the tail: drain again.
                Err(PublishFailure::WrongLastSequence(e)) => last_err = e,
                Err(PublishFailure::Transient(e)) => {
                    last_err = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        Err(Error::Timeout {
            what: format!("writing the epoch record of epoch {} ({last_err})", new.epoch),
        })
    }
}
