//! The NATS side of one log: the stream of frames, the leader key, the base object (async;
//! the blocking types above run these on their own Tokio runtime).
//!
//! - **Stream** `SNAPHEAP_<name>`, one subject `snapheap.<name>.log`, file storage, `R`
//!   replicas, limits retention with no size or age limit: the shipper bounds it by purging
//!   below the start of the base before the newest ([`Conn::purge_below`]).
//! - **KV** bucket `snapheap_<name>`, key `leader` = `snapheap-leader v1 epoch=E node=N`;
//!   changed only by compare-and-set on the entry's revision.
//! - **Object store** `snapheap_<name>_base`, object `base`: the core's base bytes, with the
//!   description `snapheap-base v1 heap=H seq=S epoch=E start=Q` (a follower that loads it
//!   reads the stream from sequence `Q`, skipping groups `<= S`).
//!
//! nats-server 2.9.10 (Debian's) does not send the account fields the client's
//! `create_key_value` expects, so the KV stream is created by hand (the same configuration
//! the client would ask for) and then opened; the client's 2.10+ stream fields are compiled
//! out (no `server_2_10` feature) so 2.9 accepts every configuration sent.
//!
//! # Invariants
//! - every publish of a frame carries `Nats-Msg-Id` = `frame::msg_id` and
//!   `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the last message on the
//!   subject as this writer knows it, so a writer whose knowledge is stale (another leader
//!   wrote) is refused with error 10071 instead of interleaving.

use crate::config::NatsConfig;
use crate::error::{nats, Error, Result};
use async_nats::jetstream::{self, consumer, kv, object_store, stream};
use async_nats::HeaderMap;
use futures::StreamExt;
use tokio::io::AsyncReadExt;

/// The leader key's name in the KV bucket.
pub const LEADER_KEY: &str = "leader";
/// The base object's name in the object store.
pub const BASE_OBJECT: &str = "base";

/// An open connection with the three stores of one log.
pub struct Conn {
    /// The client (kept for flush and for the connection state).
    pub client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    kv: kv::Store,
    obj: object_store::ObjectStore,
    subject: String,
}

/// The leader key's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The epoch.
    pub epoch: u64,
    /// The node that holds it.
    pub node: String,
}

impl Leader {
    fn encode(&self) -> String {
        format!("snapheap-leader v1 epoch={} node={}", self.epoch, self.node)
    }

    fn decode(b: &[u8]) -> Result<Leader> {
        let bad = |what: &str| Error::Corrupt {
            at: format!("kv key {LEADER_KEY}"),
            what: format!("{what}: {:?}", String::from_utf8_lossy(&b[..b.len().min(100)])),
        };
        let s = std::str::from_utf8(b).map_err(|_| bad("not UTF-8"))?;
        let mut it = s.split(' ');
        if it.next() != Some("snapheap-leader") || it.next() != Some("v1") {
            return Err(bad("not a snapheap leader record"));
        }
        let epoch = it
            .next()
            .and_then(|x| x.strip_prefix("epoch="))
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| bad("no epoch"))?;
        let node = it
            .next()
            .and_then(|x| x.strip_prefix("node="))
            .ok_or_else(|| bad("no node"))?
            .to_string();
        if it.next().is_some() || node.is_empty() {
            return Err(bad("trailing fields"));
        }
        Ok(Leader { epoch, node })
    }
}

/// What the base object's description says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseInfo {
    /// The heap.
    pub heap_id: u64,
    /// The commit seq the base holds.
    pub seq: u64,
    /// The epoch it was shipped in.
    pub epoch: u64,
    /// The stream sequence to read from after loading it.
    pub start: u64,
}

impl BaseInfo {
    fn encode(&self) -> String {
        format!(
            "snapheap-base v1 heap={:x} seq={} epoch={} start={}",
            self.heap_id, self.seq, self.epoch, self.start
        )
    }

    fn decode(s: &str) -> Result<BaseInfo> {
        let bad = |what: &str| Error::Corrupt {
            at: format!("object {BASE_OBJECT}"),
            what: format!("{what}: {:?}", &s[..s.len().min(100)]),
        };
        let mut it = s.split(' ');
        if it.next() != Some("snapheap-base") || it.next() != Some("v1") {
            return Err(bad("not a snapheap base description"));
        }
        let mut field = |k: &str, radix: u32| {
            it.next()
                .and_then(|x| x.strip_prefix(k))
                .and_then(|x| u64::from_str_radix(x, radix).ok())
                .ok_or_else(|| bad(k))
        };
        let heap_id = field("heap=", 16)?;
        let seq = field("seq=", 10)?;
        let epoch = field("epoch=", 10)?;
        let start = field("start=", 10)?;
        Ok(BaseInfo {
            heap_id,
            seq,
            epoch,
            start,
        })
    }
}

/// How a publish failed.
#[derive(Debug)]
pub enum PublishFailure {
    /// Error 10071: the expected last subject sequence did not match (another writer, or our
    /// own earlier publish whose acknowledgement was lost).
    WrongLastSequence(String),
    /// Anything else (server down, timeout): retry after reconnecting.
    Transient(String),
}

/// The server's answer to a stored publish.
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    /// Stream sequence of the message.
    pub seq: u64,
    /// True when the server had it already (same `Nats-Msg-Id` in the duplicate window).
    pub duplicate: bool,
}

/// An acknowledgement still to come.
pub type AckFuture = jetstream::context::PublishAckFuture;

/// Waits for a publish's acknowledgement and classifies a failure.
pub async fn ack(f: AckFuture) -> std::result::Result<Ack, PublishFailure> {
    match f.await {
        Ok(a) => Ok(Ack {
            seq: a.sequence,
            duplicate: a.duplicate,
        }),
        Err(e) => Err(classify(e)),
    }
}

fn classify(e: jetstream::context::PublishError) -> PublishFailure {
    use jetstream::context::PublishErrorKind as K;
    match e.kind() {
        K::WrongLastSequence | K::WrongLastMessageId => PublishFailure::WrongLastSequence(e.to_string()),
        _ => PublishFailure::Transient(e.to_string()),
    }
}

impl Conn {
    /// Connects and opens (creating when missing) the stream, the KV bucket and the object
    /// store of `cfg`'s log.
    pub async fn open(cfg: &NatsConfig) -> Result<Conn> {
        cfg.validate()?;
        let addrs = cfg
            .servers
            .split(',')
            .map(|s| s.trim().parse::<async_nats::ServerAddr>())
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Config {
                what: format!("server URL list {:?}: {e}", cfg.servers),
            })?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(cfg.request_timeout)
            .request_timeout(Some(cfg.request_timeout))
            .connect(addrs)
            .await
            .map_err(|e| nats("connect", e))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(cfg.request_timeout)
            .build(client.clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: cfg.stream(),
                subjects: vec![cfg.subject()],
                storage: stream::StorageType::File,
                num_replicas: cfg.replicas,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|e| nats("create stream", e))?;
        let kv = open_kv(&js, cfg).await?;
        let obj = match js.get_object_store(cfg.base_bucket()).await {
            Ok(o) => o,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: cfg.base_bucket(),
                    num_replicas: cfg.replicas,
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| nats("create object store", e))?,
        };
        Ok(Conn {
            client,
            js,
            stream,
            kv,
            obj,
            subject: cfg.subject(),
        })
    }

    /// Publishes one frame with its message id and the expected last subject sequence;
    /// returns once the message is on its way (await the result with [`ack`]).
    pub async fn publish(
        &self,
        msg_id: &str,
        expected_last: u64,
        frame: impl Into<bytes::Bytes>,
    ) -> std::result::Result<AckFuture, PublishFailure> {
        self.publish_after(msg_id, expected_last, None, frame).await
    }

    /// [`Conn::publish`], and with `after` also the message id the stream's last message
    /// must have (`Nats-Expected-Last-Msg-Id`): a frame published behind another one still
    /// in flight is stored only right after it. The expected sequence alone does not give
    /// that: if the frame ahead is refused because another writer's message took its place,
    /// the next frame's expected sequence matches that message and it would be stored after
    /// it.
    pub async fn publish_after(
        &self,
        msg_id: &str,
        expected_last: u64,
        after: Option<&str>,
        frame: impl Into<bytes::Bytes>,
    ) -> std::result::Result<AckFuture, PublishFailure> {
        let mut h = HeaderMap::new();
        h.insert("Nats-Msg-Id", msg_id);
        h.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected_last.to_string().as_str(),
        );
        if let Some(id) = after {
            h.insert("Nats-Expected-Last-Msg-Id", id);
        }
        self.js
            .publish_with_headers(self.subject.clone(), h, frame.into())
            .await
            .map_err(classify)
    }

    /// The last message on the subject: its stream sequence and payload (None: empty).
    pub async fn tail(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.stream.get_last_raw_message_by_subject(self.subject.as_str()).await {
            Ok(m) => Ok(Some((m.sequence, m.payload.to_vec()))),
            Err(e) => match e.kind() {
                stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                _ => Err(nats("read the stream's last message", e)),
            },
        }
    }

    /// The message at stream sequence `seq` (None: no such message, e.g. purged or deleted).
    pub async fn message(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        match self.stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m.payload.to_vec())),
            Err(e) => match e.kind() {
                stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
                _ => Err(nats("read a stream message", e)),
            },
        }
    }

    /// The stream's first and last sequence (first > last when it is empty).
    pub async fn bounds(&self) -> Result<(u64, u64)> {
        let mut s = self.stream.clone();
        let info = s.info().await.map_err(|e| nats("stream info", e))?;
        Ok((info.state.first_sequence, info.state.last_sequence))
    }

    /// Removes every message with a stream sequence below `seq`.
    pub async fn purge_below(&self, seq: u64) -> Result<u64> {
        let r = self.stream.purge().sequence(seq).await.map_err(|e| nats("purge", e))?;
        Ok(r.purged)
    }

    /// An ordered consumer delivering the subject from stream sequence `start` (the server
    /// starts at the first retained message when `start` was purged: callers check `seq`).
    pub async fn messages_from(&self, start: u64) -> Result<consumer::pull::Ordered> {
        let c = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ..Default::default()
            })
            .await
            .map_err(|e| nats("create consumer", e))?;
        c.messages().await.map_err(|e| nats("consume", e))
    }

    /// The leader key and its revision (None: never set).
    pub async fn leader(&self) -> Result<Option<(Leader, u64)>> {
        let e = self.kv.entry(LEADER_KEY).await.map_err(|e| nats("kv get", e))?;
        match e {
            Some(e) if e.operation == kv::Operation::Put => Ok(Some((Leader::decode(&e.value)?, e.revision))),
            _ => Ok(None),
        }
    }

    /// Sets the leader key to `new` if its revision is still `revision` (0: if it does not
    /// exist). Ok(false): someone else changed it first.
    pub async fn cas_leader(&self, new: &Leader, revision: u64) -> Result<bool> {
        let v: bytes::Bytes = new.encode().into_bytes().into();
        let r = if revision == 0 {
            self.kv.create(LEADER_KEY, v).await.map(|_| ()).map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    None
                } else {
                    Some(nats("kv create", e))
                }
            })
        } else {
            self.kv.update(LEADER_KEY, v, revision).await.map(|_| ()).map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    None
                } else {
                    Some(nats("kv update", e))
                }
            })
        };
        match r {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    /// Stores `bytes` as the base object, described by `info`.
    pub async fn put_base(&self, info: &BaseInfo, bytes: &[u8]) -> Result<()> {
        let meta = object_store::ObjectMetadata {
            name: BASE_OBJECT.to_string(),
            description: Some(info.encode()),
            chunk_size: Some(512 << 10),
            ..Default::default()
        };
        let mut r = bytes;
        self.obj.put(meta, &mut r).await.map_err(|e| nats("object put", e))?;
        Ok(())
    }

    /// Loads the base object (None: there is none).
    pub async fn get_base(&self) -> Result<Option<(BaseInfo, Vec<u8>)>> {
        let mut o = match self.obj.get(BASE_OBJECT).await {
            Ok(o) => o,
            Err(e) if e.kind() == object_store::GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(nats("object get", e)),
        };
        let desc = o.info().description.clone().unwrap_or_default();
        let info = BaseInfo::decode(&desc)?;
        let mut bytes = Vec::with_capacity(o.info().size);
        o.read_to_end(&mut bytes).await.map_err(|e| nats("object read", e))?;
        Ok(Some((info, bytes)))
    }

    /// Deletes one message (operators and tests: simulating a server that lost its tail).
    pub async fn delete_message(&self, seq: u64) -> Result<bool> {
        self.stream
            .delete_message(seq)
            .await
            .map_err(|e| nats("delete message", e))
    }

    /// Flushes the connection (everything published has reached the server's socket).
    pub async fn flush(&self) -> Result<()> {
        self.client.flush().await.map_err(|e| nats("flush", e))
    }
}

/// Opens the KV bucket, creating its stream by hand when it is missing (see the module doc).
async fn open_kv(js: &jetstream::Context, cfg: &NatsConfig) -> Result<kv::Store> {
    let bucket = cfg.kv_bucket();
    if let Ok(s) = js.get_key_value(&bucket).await {
        return Ok(s);
    }
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: cfg.replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    })
    .await
    .map_err(|e| nats("create kv stream", e))?;
    js.get_key_value(&bucket).await.map_err(|e| nats("open kv bucket", e))
}

/// Delivers the next message of an ordered consumer: its stream sequence and payload.
pub async fn next_message(m: &mut consumer::pull::Ordered) -> Result<(u64, Vec<u8>)> {
    match m.next().await {
        Some(Ok(msg)) => {
            let seq = msg.info().map_err(|e| nats("message info", e))?.stream_sequence;
            Ok((seq, msg.payload.to_vec()))
        }
        Some(Err(e)) => Err(nats("consume", e)),
        None => Err(nats("consume", "the consumer ended")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_and_base_records_round_trip_and_refuse_garbage() {
        let l = Leader {
            epoch: 7,
            node: "b-2".into(),
        };
        assert_eq!(Leader::decode(l.encode().as_bytes()).unwrap(), l);
        for bad in [
            "",
            "snapheap-leader v2 epoch=1 node=a",
            "snapheap-leader v1 epoch=x node=a",
            "snapheap-leader v1 epoch=1",
            "snapheap-leader v1 epoch=1 node=a extra",
            "\u{ff}",
        ] {
            assert!(Leader::decode(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let b = BaseInfo {
            heap_id: 0xdead_beef_0123,
            seq: 99,
            epoch: 3,
            start: 1234,
        };
        assert_eq!(BaseInfo::decode(&b.encode()).unwrap(), b);
        for bad in [
            "",
            "snapheap-base v1 heap=zz seq=1 epoch=1 start=1",
            "snapheap-base v1 heap=1 seq=1 epoch=1",
        ] {
            assert!(BaseInfo::decode(bad).is_err(), "{bad:?}");
        }
    }
}
