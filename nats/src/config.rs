//! Where the log lives and how this node talks to it.

use crate::error::{Error, Result};
use std::time::Duration;

/// The default of [`NatsConfig::stale_promotion_after`].
pub const DEFAULT_STALE_PROMOTION_AFTER: Duration = Duration::from_secs(5);

/// The NATS side of one replicated heap. Every node (primary and standbys) of one heap uses
/// the same `servers` and `name` and its own `node`.
#[derive(Clone, Debug)]
pub struct NatsConfig {
    /// Server URLs, comma separated (`nats://127.0.0.1:4222,nats://127.0.0.1:4223`).
    pub servers: String,
    /// The log's name (`[A-Za-z0-9_-]+`): stream `SNAPHEAP_<name>` on subject
    /// `snapheap.<name>.log`, KV bucket `snapheap_<name>` (key `leader`), object store
    /// `snapheap_<name>_base` (object `base`).
    pub name: String,
    /// This node's name, recorded in the leader key (`[A-Za-z0-9_-]+`).
    pub node: String,
    /// Stream, KV and object store replicas: 1 for one server, 3 for a three-node cluster.
    pub replicas: usize,
    /// Payload bytes per frame (at most `frame::MAX_PAYLOAD`); smaller values make tests
    /// exercise multi-frame groups with small heaps.
    pub frame_payload: usize,
    /// Frames published before waiting for the oldest acknowledgement.
    pub pipeline: usize,
    /// After this many bytes shipped since the last base, the shipper ships a new base and
    /// purges the stream below the base before it (two bases stay bootstrappable).
    pub base_every_bytes: u64,
    /// Timeout of one NATS request or publish acknowledgement.
    pub request_timeout: Duration,
    /// Longest pause between two reconnection attempts (the backoff doubles up to it).
    pub max_backoff: Duration,
    /// Tests: a pause between reading the leader key and the compare-and-set in a promotion,
    /// so that two candidates racing each other both read before either writes (0 in use).
    pub promote_pause: Duration,
    /// Largest group a follower accepts (guards memory against a bad frame header).
    pub max_group_bytes: u64,
    /// How long a promotion waits on a stale promotion before taking it over (default 5 s).
    /// When the leader key holds an epoch newer than the log's newest epoch record and
    /// another node holds it, that node won its compare-and-set and has not written its
    /// epoch record: it is promoting right now, or it died in between. The candidate watches
    /// the key's revision and the log for up to this long (its own monotonic clock only; no
    /// clocks of different machines are compared); if the key is unchanged and no record of
    /// that epoch appeared, it takes the next epoch by compare-and-set on that same revision.
    /// If the record appears or the key changes meanwhile, the promotion returns
    /// [`Error::NotLeader`]. Make it well above the time a promotion takes between its
    /// compare-and-set and its epoch record (a drain of the log: milliseconds for a
    /// caught-up standby, seconds for one far behind); a slow holder that is taken over
    /// anyway loses cleanly (see `docs/design.md`, "Promotion"). 0 takes over at once.
    pub stale_promotion_after: Duration,
    /// Tests (feature `testing`): what a promotion does right after it won the
    /// compare-and-set on the leader key.
    #[cfg(feature = "testing")]
    pub after_cas: AfterCas,
    /// Tests (feature `testing`): promotion events are sent here as they happen:
    /// `stale-wait epoch=E` (the wait on a stale promotion of epoch `E` begins),
    /// `cas epoch=E` (the compare-and-set to `E` won).
    #[cfg(feature = "testing")]
    pub events: Option<std::sync::mpsc::Sender<String>>,
}

/// Tests (feature `testing`): [`NatsConfig::after_cas`].
#[cfg(feature = "testing")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterCas {
    /// Go on as in use.
    #[default]
    Continue,
    /// Return an error at once, leaving the leader key at the new epoch with no epoch
    /// record in the log (as if the candidate died there).
    Die,
    /// Wait (polling, at most 60 s) until the log's last message is an
    /// epoch record of a newer epoch than this candidate's, then go on (a slow holder that
    /// was taken over).
    HoldUntilNewerRecord,
    /// Sleep this long, then go on (a holder slow enough to look stale to another
    /// candidate, whose own record may still come first).
    HoldFor(Duration),
}

impl NatsConfig {
    /// Defaults for one log on `servers`, node `node`.
    pub fn new(servers: &str, name: &str, node: &str) -> NatsConfig {
        NatsConfig {
            servers: servers.to_string(),
            name: name.to_string(),
            node: node.to_string(),
            replicas: 1,
            frame_payload: crate::frame::MAX_PAYLOAD,
            pipeline: 64,
            base_every_bytes: 256 << 20,
            request_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(2),
            max_group_bytes: 1 << 30,
            promote_pause: Duration::ZERO,
            stale_promotion_after: DEFAULT_STALE_PROMOTION_AFTER,
            #[cfg(feature = "testing")]
            after_cas: AfterCas::Continue,
            #[cfg(feature = "testing")]
            events: None,
        }
    }

    /// Checks names and numbers.
    pub fn validate(&self) -> Result<()> {
        let ok = |s: &str| {
            !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !ok(&self.name) {
            return Err(Error::Config {
                what: format!("log name {:?} (want 1-64 of [A-Za-z0-9_-])", self.name),
            });
        }
        if !ok(&self.node) {
            return Err(Error::Config {
                what: format!("node name {:?} (want 1-64 of [A-Za-z0-9_-])", self.node),
            });
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(Error::Config {
                what: format!("replicas {} (want 1..=5)", self.replicas),
            });
        }
        if self.frame_payload == 0 || self.frame_payload > crate::frame::MAX_PAYLOAD {
            return Err(Error::Config {
                what: format!(
                    "frame_payload {} (want 1..={})",
                    self.frame_payload,
                    crate::frame::MAX_PAYLOAD
                ),
            });
        }
        if self.pipeline == 0 {
            return Err(Error::Config {
                what: "pipeline 0".into(),
            });
        }
        if self.servers.trim().is_empty() {
            return Err(Error::Config {
                what: "no server URL".into(),
            });
        }
        Ok(())
    }

    /// The stream's name.
    pub fn stream(&self) -> String {
        format!("SNAPHEAP_{}", self.name)
    }
    /// The subject every frame and epoch record is published on.
    pub fn subject(&self) -> String {
        format!("snapheap.{}.log", self.name)
    }
    /// The KV bucket holding the leader key.
    pub fn kv_bucket(&self) -> String {
        format!("snapheap_{}", self.name)
    }
    /// The object store bucket holding the base.
    pub fn base_bucket(&self) -> String {
        format!("snapheap_{}_base", self.name)
    }
}
