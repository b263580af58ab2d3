//! The primary's shipper: a background thread that publishes every durable commit group to
//! the stream and reports the acknowledgements to the heap.
//!
//! Start ([`Shipper::start`]): connect; take the leader key (create it at epoch 1 when it is
//! missing; a key held by another node is [`Error::NotLeader`]); read the stream's last
//! message to learn where the log is (the last complete group, a partly published one, an
//! epoch record); ship a base when the object store has none; `hold_from` the last group in
//! the log.
//!
//! Loop: take the next durable group (`next_group`), split it into frames, publish up to
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
//!   `acknowledge(s)` is called only for `s <= stored`;
//! - frame `(seq, index)` is published only after every frame before it in the log was
//!   stored (in flight or acknowledged), so the stream holds each group's frames in order.

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use crate::frame::{self, Kind};
use crate::transport::{ack, AckFuture, BaseInfo, Conn, Leader, PublishFailure};
use snapheap::ReplicationSource;
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// What the shipper has done so far.
#[derive(Clone, Debug, Default)]
pub struct ShipperStatus {
    /// The epoch this primary ships in.
    pub epoch: u64,
    /// Last group acknowledged by the log.
    pub shipped: u64,
    /// Frames published and acknowledged.
    pub frames: u64,
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
}

/// A running shipper; stop it with [`Shipper::stop`] (or drop).
pub struct Shipper {
    stop: Arc<AtomicBool>,
    status: Arc<Mutex<ShipperStatus>>,
    thread: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Connects, takes or checks the leader key and starts the shipping thread.
    pub fn start(source: ReplicationSource, cfg: &NatsConfig) -> Result<Shipper> {
        let rt = runtime()?;
        let cfg = cfg.clone();
        let mut st = rt.block_on(State::start(source, &cfg))?;
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(ShipperStatus {
            epoch: st.epoch,
            shipped: st.stored,
            ..Default::default()
        }));
        st.status = status.clone();
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
            status,
            thread: Some(thread),
        })
    }

    /// A copy of the status.
    pub fn status(&self) -> ShipperStatus {
        self.status.lock().unwrap().clone()
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
    groups: BTreeMap<u64, Vec<(frame::Header, Vec<u8>)>>,
    /// Stream sequence of the first frame of recent groups (for base starts).
    first_frame: BTreeMap<u64, u64>,
    /// Start of the base currently in the object store (purge target after the next one).
    base_start: Option<u64>,
    bytes_since_base: u64,
    status: Arc<Mutex<ShipperStatus>>,
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
                match h.kind {
                    Kind::Epoch => st.stored = h.seq,
                    Kind::Data if h.index + 1 == h.count => st.stored = h.seq,
                    Kind::Data => {
                        st.stored = h.seq - 1;
                        st.partial = h.index + 1;
                    }
                }
                let durable = st.source.durable_seq();
                if st.stored > durable {
                    return Err(Error::Fenced {
                        reason: format!(
                            "the log holds commit {} but this heap only {durable}: it lost \
                             commits or is an old copy; bootstrap it as a standby",
                            st.stored
                        ),
                    });
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
        self.known_last = sseq;
        if h.kind == Kind::Data && h.epoch == self.epoch {
            // One of our own frames: everything before it is stored, and it too.
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
        let mut bytes = 0;
        let done: Vec<u64> = self.groups.range(..=seq).map(|(s, _)| *s).collect();
        for s in done {
            if let Some(fr) = self.groups.remove(&s) {
                bytes += fr.first().map(|(h, _)| h.group_len).unwrap_or(0);
            }
        }
        self.stored = seq;
        self.partial = 0;
        self.bytes_since_base += bytes;
        self.source.acknowledge(seq);
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
                    // The runtime's worker thread drives the connection meanwhile.
                    let g = src.next_group(after, wait);
                    match g {
                        Ok(Some(g)) => {
                            let frames =
                                frame::split(self.heap_id, self.epoch, g.seq, &g.bytes, self.cfg.frame_payload);
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
                let expected = self.known_last + pending.len() as u64;
                let fut = self
                    .conn
                    .publish(&frame::msg_id(h), expected, bytes.clone())
                    .await
                    .map_err(|e| format!("publish: {e:?}"))?;
                pending.push_back(InFlight {
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
