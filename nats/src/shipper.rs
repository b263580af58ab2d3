//! The primary's shipper: a background thread that publishes every commit group to the
//! stream (durable ones; with `Durability::Replicated` written ones, while their `fdatasync`
//! runs) and reports the acknowledgements to the heap.
//!
//! Start ([`Shipper::start`]): connect; take the leader key (create it at epoch 1 when it is
//! missing; a key held by another node is [`Error::NotLeader`]); read the stream's last
//! message to learn where the log is (the last complete group, a partly published one, an
//! epoch record) and check that the heap holds that history ([`Error::HeapBehindLog`]
//! otherwise: a machine crash took from its disk groups the log holds); ship a base when the
//! object store has none; `hold_from` the last group in the log.
//!
//! Loop: take the next group (`next_group`), split it into frames, publish up to
//! `pipeline` frames ahead, each with `Nats-Msg-Id` = heap-epoch-seq-index and
//! `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the message before it;
//! when a group's last frame is acknowledged, `acknowledge(seq)` (this releases the
//! `Durability::Replicated` commits waiting for it). Any failure (server down, timeout,
//! error 10071) drops the frames in flight and *resynchronises from the stream's tail*,
//! retrying with a doubling backoff: the tail says which frame was stored last, so the
//! shipper continues with exactly the next one (no duplicate, no hole, whatever was lost in
//! flight); a tail written in a newer epoch means another node was promoted:
//! `source.fence(reason)` and the thread stops. Local commits never wait for NATS
//! (`Immediate` commits keep working while it is down; `Replicated` ones time out).
//!
//! Retention: after `base_every_bytes` shipped, a new base goes to the object store and the
//! stream is purged below the start of the *previous* base, so the two newest bases are
//! always bootstrappable (a bootstrap in progress never loses the log it needs).
//!
//! # Invariants
//! - `stored` (last complete group known to be in the stream) only grows, and
//!   `acknowledge(s)` is called only by `complete(s)`, for a group `s` known to be in the
//!   stream (it then sets `stored = s`; it acknowledges first so that the waiting
//!   `Replicated` commits return before the bookkeeping);
//! - frame `(seq, index)` is published only after every frame before it in the log was
//!   stored (in flight or acknowledged), so the stream holds each group's frames in order.

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use crate::frame::{self, Kind};
use crate::transport::{ack, AckFuture, BaseInfo, Conn, Leader, PublishFailure};
use snapheap::ReplicationSource;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Length of the core's wire group header and offset of its `chain` field
/// (`docs/design.md`, "Wire group").
const WIRE_HEADER_LEN: usize = 64;
const WIRE_CHAIN_OFFSET: usize = 40;

/// What the shipper has done so far.
#[derive(Clone, Debug, Default)]
pub struct ShipperStatus {
    /// The epoch this primary ships in.
    pub epoch: u64,
    /// Last group acknowledged by the log.
    pub shipped: u64,
    /// Frames published and acknowledged.
    pub frames: u64,
    /// Groups published whole and acknowledged (commits a base covered are not counted).
    pub groups: u64,
    /// Group bytes acknowledged.
    pub bytes: u64,
    /// Bases shipped to the object store.
    pub bases: u64,
    /// Resynchronisations after a failure.
    pub resyncs: u64,
    /// Set when this primary was fenced (the thread has stopped).
    pub fenced: Option<String>,
    /// The last error seen (cleared when shipping resumes).
    pub last_error: Option<String>,
    /// True once the thread has stopped.
    pub stopped: bool,
    /// Tests (`Shipper::stall_mid_group`): `(seq, frames)` once the shipper stalled after
    /// publishing frames `0..frames` of group `seq`.
    pub stalled: Option<(u64, u32)>,
}

/// A running shipper; stop it with [`Shipper::stop`] (or drop).
pub struct Shipper {
    stop: Arc<AtomicBool>,
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    stall: Arc<AtomicU32>,
    status: Arc<Mutex<ShipperStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Connects, takes or checks the leader key and starts the shipping thread.
    pub fn start(source: ReplicationSource, cfg: &NatsConfig) -> Result<Shipper> {
        let rt = shipper_runtime()?;
        let cfg = cfg.clone();
        let mut st = rt.block_on(State::start(source, &cfg))?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(ShipperStatus {
            epoch: st.epoch,
            shipped: st.stored,
            ..Default::default()
        }));
        st.status = status.clone();
        let stall = st.stall.clone();
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("snapheap-shipper".into())
            .spawn(move || {
                rt.block_on(st.run(&s2));
                st.status.lock().unwrap().stopped = true;
            })
            .map_err(|e| Error::Config {
                what: format!("cannot start the shipper thread: {e}"),
            })?;
        Ok(Shipper {
            stop,
            stall,
            status,
            thread: Some(thread),
        })
    }

    /// A copy of the status.
    pub fn status(&self) -> ShipperStatus {
        self.status.lock().unwrap().clone()
    }

    /// Tests: the next group of more than `frames` frames is published up to frame
    /// `frames - 1` only, then the shipper publishes nothing more (as if the process died
    /// right there), so that a test can kill a primary in the middle of a multi-frame group
    /// at a point it controls. 0 disarms.
    #[cfg(feature = "testing")]
    pub fn stall_mid_group(&self, frames: u32) {
        self.stall.store(frames, Ordering::Release);
    }

    /// Stops the thread after the frames in flight were acknowledged (or failed).
    pub fn stop(mut self) -> ShipperStatus {
        self.halt();
        self.status()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The shipper's runtime: one thread, the shipper's own, drives the connection too. A
/// `Replicated` commit waits for the publish of its group, so the hops matter: the thread
/// woken by the written group publishes, reads the acknowledgement off the socket and
/// acknowledges, with no hand-over to a worker thread and back (two thread wake-ups fewer
/// per commit). It blocks in `next_group` only while nothing is in flight, for at most
/// 50 ms (woken as a `Replicated` commit starts, it spins there for up to 300 us until the
/// commit has written its group: the core's `repl.rs`), and after such an idle wait sleeps
/// 1 ms on the runtime so that the connection is driven (keep-alive, reconnection): the
/// first commit after an idle spell may wait for that millisecond.
fn shipper_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config {
            what: format!("cannot start a Tokio runtime: {e}"),
        })
}

/// A runtime whose one worker thread drives the NATS connection while the thread that called
/// `block_on` may block in the core's calls (`next_group`, `apply`).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Config {
            what: format!("cannot start a Tokio runtime: {e}"),
        })
}

struct InFlight {
    msg_id: String,
    seq: u64,
    index: u32,
    count: u32,
    len: u64,
    fut: AckFuture,
}

struct State {
    source: ReplicationSource,
    cfg: NatsConfig,
    conn: Conn,
    heap_id: u64,
    epoch: u64,
    /// Last complete group in the stream.
    stored: u64,
    /// Frames of group `stored + 1` already in the stream.
    partial: u32,
    /// Stream sequence of the last message on the subject, as far as we know.
    known_last: u64,
    /// Frames of groups `> stored` that were fetched, by seq.
    groups: BTreeMap<u64, Vec<(frame::Header, bytes::Bytes)>>,
    /// Stream sequence of the first frame of recent groups (for base starts).
    first_frame: BTreeMap<u64, u64>,
    /// Start of the base currently in the object store (purge target after the next one).
    base_start: Option<u64>,
    bytes_since_base: u64,
    status: Arc<Mutex<ShipperStatus>>,
    /// Tests (`Shipper::stall_mid_group`): stop after this many frames of a larger group.
    stall: Arc<AtomicU32>,
}

enum Tail {
    /// Nothing changes: continue from where we are.
    Continue,
    Fenced(String),
}

impl State {
    async fn start(source: ReplicationSource, cfg: &NatsConfig) -> Result<State> {
        let conn = Conn::open(cfg).await?;
        let heap_id = source.heap_id();
        let epoch = loop {
            match conn.leader().await? {
                None => {
                    let l = Leader {
                        epoch: 1,
                        node: cfg.node.clone(),
                    };
                    if conn.cas_leader(&l, 0).await? {
                        break 1;
                    }
                }
                Some((l, _)) if l.node == cfg.node => break l.epoch,
                Some((l, _)) => {
                    return Err(Error::NotLeader {
                        epoch: l.epoch,
                        owner: l.node,
                    })
                }
            }
        };
        let mut st = State {
            source,
            cfg: cfg.clone(),
            conn,
            heap_id,
            epoch,
            stored: 0,
            partial: 0,
            known_last: 0,
            groups: BTreeMap::new(),
            first_frame: BTreeMap::new(),
            base_start: None,
            bytes_since_base: 0,
            status: Arc::new(Mutex::new(ShipperStatus::default())),
            stall: Arc::new(AtomicU32::new(0)),
        };
        let tail = st.conn.tail().await?;
        let fresh = tail.is_none();
        match tail {
            None => {}
            Some((sseq, bytes)) => {
                let f = frame::decode(&bytes).map_err(|e| Error::Corrupt {
                    at: format!("stream seq {sseq}"),
                    what: e.to_string(),
                })?;
                let h = f.header;
                if h.heap_id != heap_id {
                    return Err(Error::WrongHeap {
                        found: h.heap_id,
                        expected: heap_id,
                    });
                }
                if h.epoch > epoch {
                    return Err(Error::Fenced {
                        reason: format!("the log is at epoch {}, this node holds {epoch}", h.epoch),
                    });
                }
                st.known_last = sseq;
                if h.kind == Kind::Data && h.seq == 0 {
                    return Err(Error::Corrupt {
                        at: format!("stream seq {sseq}"),
                        what: "a data frame of commit 0".into(),
                    });
                }
                match h.kind {
                    Kind::Epoch => st.stored = h.seq,
                    Kind::Data if h.index + 1 == h.count => st.stored = h.seq,
                    Kind::Data => {
                        st.stored = h.seq - 1;
                        st.partial = h.index + 1;
                    }
                }
                if let Err(e) = st.check_tail(sseq, &h, &bytes).await {
                    if let Error::HeapBehindLog { .. } = &e {
                        st.source.fence(&e.to_string());
                    }
                    return Err(e);
                }
            }
        }
        match st.conn.get_base().await? {
            Some((info, _)) if info.heap_id == heap_id && !fresh => {
                st.base_start = Some(info.start);
            }
            _ => {
                let base = st.source.export_base()?;
                if fresh {
                    st.stored = base.seq;
                }
                st.put_base(&base).await?;
            }
        }
        st.source.hold_from(st.stored);
        if st.partial == 0 {
            st.source.acknowledge(st.stored);
        }
        Ok(st)
    }

    /// At start: the log's tail (stream seq `sseq`, header `h`, the message `tail`) must be history this heap
    /// holds. Refused ([`Error::HeapBehindLog`]): a complete group after the heap's last
    /// commit; a partly published group the heap does not have; a group or partial group
    /// whose bytes differ from the heap's under the same seq (the heap lost commits and made
    /// others). Not checkable (the heap's journals no longer reach back): accepted, the
    /// shipper then finds the backlog trimmed and ships a new base past it.
    async fn check_tail(&mut self, sseq: u64, h: &frame::Header, tail: &[u8]) -> Result<()> {
        let heap_seq = self.source.durable_seq();
        let behind = |log_seq: u64, detail: String| Error::HeapBehindLog {
            log_seq,
            heap_seq,
            detail,
        };
        if self.stored > heap_seq {
            return Err(behind(
                self.stored,
                format!("commits {}..={} are missing", heap_seq + 1, self.stored),
            ));
        }
        if h.kind != Kind::Data {
            return Ok(());
        }
        if self.partial > 0 && h.seq > heap_seq {
            return Err(behind(
                h.seq,
                format!(
                    "frames 0..={} of {} of commit {} are in the log",
                    h.index, h.count, h.seq
                ),
            ));
        }
        // The log's bytes of group `h.seq` from its first frame up to the tail (the whole
        // group if complete, its published prefix otherwise), or just its wire header.
        let complete = h.index + 1 == h.count;
        let want = if complete { WIRE_HEADER_LEN } else { usize::MAX };
        let mut log_bytes: Vec<u8> = Vec::new();
        let first = sseq.checked_sub(u64::from(h.index)).ok_or_else(|| Error::Corrupt {
            at: format!("stream seq {sseq}"),
            what: format!(
                "frame {} of commit {} cannot be at this stream sequence",
                h.index, h.seq
            ),
        })?;
        for (i, s) in (first..=sseq).enumerate() {
            if log_bytes.len() >= want {
                break;
            }
            let m = if s == sseq {
                Some(tail.to_vec())
            } else {
                self.conn.message(s).await?
            };
            let Some(m) = m else {
                return Err(Error::Corrupt {
                    at: format!("stream seq {s}"),
                    what: format!("frame {i} of commit {} is missing", h.seq),
                });
            };
            let f = frame::decode(&m).map_err(|e| Error::Corrupt {
                at: format!("stream seq {s}"),
                what: e.to_string(),
            })?;
            let fh = f.header;
            if fh.kind != Kind::Data || fh.seq != h.seq || fh.index as usize != i || fh.count != h.count {
                return Err(Error::Corrupt {
                    at: format!("stream seq {s}"),
                    what: format!("expected frame {i} of commit {}, found {fh:?}", h.seq),
                });
            }
            log_bytes.extend_from_slice(f.payload);
        }
        if complete {
            let Some(ours) = self.source.chain_at(h.seq) else {
                return Ok(()); // before the heap's newest snapshot: not checkable
            };
            if log_bytes.len() < WIRE_HEADER_LEN {
                return Err(Error::Corrupt {
                    at: format!("stream seq {first}"),
                    what: format!("commit {} is shorter than a wire group header", h.seq),
                });
            }
            let mut c = [0u8; 8];
            c.copy_from_slice(&log_bytes[WIRE_CHAIN_OFFSET..WIRE_CHAIN_OFFSET + 8]);
            let theirs = u64::from_le_bytes(c);
            if theirs != ours {
                return Err(behind(
                    h.seq,
                    format!(
                        "the log's commit {} has chain hash {theirs:#018x}, this heap's {ours:#018x}: \
                         another history",
                        h.seq
                    ),
                ));
            }
            return Ok(());
        }
        match self.source.next_group(h.seq - 1, Duration::ZERO) {
            Ok(Some(g)) if g.bytes.starts_with(&log_bytes) => Ok(()),
            Ok(Some(_)) => Err(behind(
                h.seq,
                format!(
                    "the published frames 0..={} of commit {} differ from this heap's commit {}",
                    h.index, h.seq, h.seq
                ),
            )),
            // Trimmed locally: the shipper ships a new base, followers drop the partial group.
            Err(snapheap::Error::BacklogTrimmed { .. }) => Ok(()),
            Ok(None) => Err(behind(h.seq, format!("commit {} is not readable", h.seq))),
            Err(e) => Err(e.into()),
        }
    }

    /// Ships `base` and purges below the previous base's start.
    async fn put_base(&mut self, base: &snapheap::Base) -> Result<()> {
        let start = if base.seq >= self.stored {
            self.known_last + 1
        } else {
            match self.first_frame.get(&(base.seq + 1)) {
                Some(s) => *s,
                None => self.base_start.unwrap_or(1),
            }
        };
        let info = BaseInfo {
            heap_id: self.heap_id,
            seq: base.seq,
            epoch: self.epoch,
            start,
        };
        self.conn.put_base(&info, &base.bytes).await?;
        if let Some(prev) = self.base_start {
            if prev > 1 {
                self.conn.purge_below(prev.min(start)).await?;
            }
        }
        self.base_start = Some(start);
        self.bytes_since_base = 0;
        let keep = base.seq;
        self.first_frame = self.first_frame.split_off(&keep);
        self.status.lock().unwrap().bases += 1;
        Ok(())
    }

    async fn run(&mut self, stop: &AtomicBool) {
        let mut backoff = Duration::from_millis(10);
        loop {
            match self.ship(stop).await {
                Ok(()) => return,
                Err(e) => {
                    self.status.lock().unwrap().last_error = Some(e);
                }
            }
            // Resynchronise from the tail, with backoff, until it works or we are told to
            // stop (or fenced).
            loop {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.cfg.max_backoff);
                match self.resync().await {
                    Ok(Tail::Continue) => break,
                    Ok(Tail::Fenced(reason)) => {
                        self.source.fence(&reason);
                        let mut s = self.status.lock().unwrap();
                        s.fenced = Some(reason);
                        return;
                    }
                    Err(e) => self.status.lock().unwrap().last_error = Some(e.to_string()),
                }
            }
            self.status.lock().unwrap().resyncs += 1;
            backoff = Duration::from_millis(10);
        }
    }

    /// The messages after stream seq `from` (our last acknowledged frame) up to `to` (the
    /// tail, one of our frames) must be our frames of this epoch in publishing order,
    /// continuing group `stored + 1` at frame `partial`. `Some(reason)` to fence: the first
    /// newer epoch's message among them, else the first message that is not that.
    async fn foreign_in_run(&self, from: u64, to: u64) -> Result<Option<String>> {
        let (mut seq, mut index) = (self.stored + 1, self.partial);
        let mut count: Option<u32> = None;
        let mut foreign: Option<String> = None;
        for sseq in from.saturating_add(1)..=to {
            let header = match self.conn.message(sseq).await? {
                Some(bytes) => frame::decode(&bytes).ok().map(|f| f.header),
                None => None,
            };
            if let Some(h) = header.filter(|h| h.heap_id == self.heap_id && h.epoch > self.epoch) {
                return Ok(Some(format!(
                    "epoch {} started at stream seq {sseq} (this primary holds epoch {})",
                    h.epoch, self.epoch
                )));
            }
            if foreign.is_some() {
                continue;
            }
            if count == Some(index) {
                (seq, index, count) = (seq + 1, 0, None);
            }
            let ours = header.is_some_and(|h| {
                h.heap_id == self.heap_id
                    && h.kind == Kind::Data
                    && h.epoch == self.epoch
                    && h.seq == seq
                    && h.index == index
                    && count.is_none_or(|c| c == h.count)
            });
            match header {
                Some(h) if ours => {
                    count = Some(h.count);
                    index += 1;
                }
                _ => {
                    foreign = Some(format!(
                        "stream seq {sseq}, between this primary's frames, is not its frame {index} of commit {seq}"
                    ))
                }
            }
        }
        Ok(foreign)
    }

    /// Learns from the stream's last message where the log is.
    async fn resync(&mut self) -> Result<Tail> {
        let tail = self.conn.tail().await?;
        let Some((sseq, bytes)) = tail else {
            self.known_last = 0;
            return Ok(Tail::Continue);
        };
        let f = match frame::decode(&bytes) {
            Ok(f) => f,
            Err(e) => return Ok(Tail::Fenced(format!("stream seq {sseq} is not a snapheap frame ({e})"))),
        };
        let h = f.header;
        if h.heap_id != self.heap_id {
            return Ok(Tail::Fenced(format!("the log now holds heap {:#018x}", h.heap_id)));
        }
        if h.epoch > self.epoch {
            return Ok(Tail::Fenced(format!(
                "epoch {} started at stream seq {sseq} (this primary holds epoch {})",
                h.epoch, self.epoch
            )));
        }
        let acked_last = self.known_last;
        self.known_last = sseq;
        if h.kind == Kind::Data && h.epoch == self.epoch {
            // One of our own frames. Frames published in a pipeline carry consecutive
            // expected sequences, so after one was refused (a new primary's epoch record took
            // its place) the next could still be stored after that record: the log must hold
            // exactly our frames, in order, from the last one acknowledged to the tail before
            // the tail proves that everything up to it is stored. Anything else between
            // them fences this primary (republishing would not help: the stray frames' ids
            // are in the de-duplication window, so a new publish of them stores nothing).
            if let Some(reason) = self.foreign_in_run(acked_last, sseq).await? {
                return Ok(Tail::Fenced(reason));
            }
            // Everything before it is stored, and it too.
            let done = if h.index + 1 == h.count { h.seq } else { h.seq - 1 };
            if done > self.stored {
                self.complete(done);
            }
            self.partial = if h.seq == self.stored + 1 { h.index + 1 } else { 0 };
        } else {
            // An epoch record or an older epoch's frame: our next frame starts a group.
            self.partial = 0;
        }
        Ok(Tail::Continue)
    }

    fn complete(&mut self, seq: u64) {
        debug_assert!(seq >= self.stored, "stored only grows");
        // First: this releases the `Replicated` commits waiting for it.
        self.source.acknowledge(seq);
        let mut bytes = 0;
        while let Some(e) = self.groups.first_entry() {
            if *e.key() > seq {
                break;
            }
            bytes += e.remove().first().map(|(h, _)| h.group_len).unwrap_or(0);
        }
        self.stored = seq;
        self.partial = 0;
        self.bytes_since_base += bytes;
        let mut st = self.status.lock().unwrap();
        st.shipped = seq;
        st.last_error = None;
    }

    /// Publishes and acknowledges until stopped (Ok) or a failure (Err: resync).
    async fn ship(&mut self, stop: &AtomicBool) -> std::result::Result<(), String> {
        let mut pending: VecDeque<InFlight> = VecDeque::new();
        let (mut send_seq, mut send_index) = (self.stored + 1, self.partial);
        loop {
            // Fill the pipeline.
            while pending.len() < self.cfg.pipeline {
                if !self.groups.contains_key(&send_seq) {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let wait = if pending.is_empty() {
                        Duration::from_millis(50)
                    } else {
                        Duration::ZERO
                    };
                    let src = self.source.clone();
                    let after = send_seq - 1;
                    // Blocks the runtime's only thread: nothing is in flight when `wait` > 0.
                    let g = src.next_group(after, wait);
                    match g {
                        Ok(Some(g)) => {
                            let frames =
                                frame::split(self.heap_id, self.epoch, g.seq, &g.bytes, self.cfg.frame_payload);
                            // Kept until acknowledged (a resync publishes them again); a
                            // publish takes a reference, not a copy.
                            let frames = frames.into_iter().map(|(h, b)| (h, bytes::Bytes::from(b))).collect();
                            self.groups.insert(g.seq, frames);
                        }
                        Ok(None) => break,
                        Err(snapheap::Error::BacklogTrimmed { .. }) if pending.is_empty() => {
                            // The journals were deleted before we shipped them: a new base
                            // replaces them (standbys behind it see the gap and re-bootstrap).
                            let base = self.source.export_base().map_err(|e| e.to_string())?;
                            self.put_base(&base).await.map_err(|e| e.to_string())?;
                            self.stored = self.stored.max(base.seq);
                            self.complete(self.stored);
                            self.source.hold_from(self.stored);
                            send_seq = self.stored + 1;
                            send_index = 0;
                            continue;
                        }
                        Err(snapheap::Error::BacklogTrimmed { .. }) => break,
                        Err(e) => {
                            // Closed heap: nothing more will come.
                            self.status.lock().unwrap().last_error = Some(e.to_string());
                            return Ok(());
                        }
                    }
                }
                let frames = &self.groups[&send_seq];
                if send_index as usize >= frames.len() {
                    send_seq += 1;
                    send_index = 0;
                    continue;
                }
                let (h, bytes) = &frames[send_index as usize];
                let stall = self.stall.load(Ordering::Acquire);
                if stall > 0 && h.index == stall && h.count > stall {
                    // Tests: frames 0..stall of this group are published; nothing more is.
                    self.status.lock().unwrap().stalled = Some((h.seq, stall));
                    while !stop.load(Ordering::Acquire) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    return Ok(());
                }
                let expected = self.known_last + pending.len() as u64;
                // Behind a frame in flight, also expect that frame's id as the last message
                // (`Conn::publish_after`): nothing of ours lands after a refused frame.
                let ahead = pending.back().map(|p: &InFlight| p.msg_id.clone());
                let msg_id = frame::msg_id(h);
                let fut = self
                    .conn
                    .publish_after(&msg_id, expected, ahead.as_deref(), bytes.clone())
                    .await
                    .map_err(|e| format!("publish: {e:?}"))?;
                pending.push_back(InFlight {
                    msg_id,
                    seq: h.seq,
                    index: h.index,
                    count: h.count,
                    len: h.group_len,
                    fut,
                });
                send_index += 1;
            }
            let Some(p) = pending.pop_front() else {
                if stop.load(Ordering::Acquire) {
                    return Ok(());
                }
                // Idle (no group for 50 ms): the runtime has one thread, blocked in
                // `next_group` until now; let it drive the connection (keep-alive pings,
                // reconnection) before the next wait.
                tokio::time::sleep(Duration::from_millis(1)).await;
                if self.bytes_since_base >= self.cfg.base_every_bytes {
                    let base = self.source.export_base().map_err(|e| e.to_string())?;
                    self.put_base(&base).await.map_err(|e| e.to_string())?;
                }
                continue;
            };
            match ack(p.fut).await {
                Ok(a) => {
                    self.known_last = self.known_last.max(a.seq);
                    if p.index == 0 {
                        self.first_frame.insert(p.seq, a.seq);
                    }
                    {
                        let mut st = self.status.lock().unwrap();
                        st.frames += 1;
                        if p.index + 1 == p.count {
                            st.groups += 1;
                            st.bytes += p.len;
                        }
                    }
                    if p.index + 1 == p.count {
                        self.complete(p.seq);
                        if self.bytes_since_base >= self.cfg.base_every_bytes {
                            // With frames in flight the start is conservative (at or before
                            // the next group's first frame): followers skip what they hold.
                            let base = self.source.export_base().map_err(|e| e.to_string())?;
                            self.put_base(&base).await.map_err(|e| e.to_string())?;
                        }
                    } else {
                        self.partial = p.index + 1;
                    }
                }
                Err(PublishFailure::WrongLastSequence(e)) => return Err(format!("publish refused (10071): {e}")),
                Err(PublishFailure::Transient(e)) => return Err(format!("publish: {e}")),
            }
        }
    }
}
