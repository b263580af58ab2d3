//! The crate's error type.
//!
//! Errors from the core crate pass through as [`Error::Core`]; NATS failures name the
//! operation and the server's answer; anything wrong with bytes read off the network is
//! [`Error::Corrupt`] naming the stream sequence it came from.

use std::fmt;

/// Everything that can go wrong shipping, following or promoting.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// The core crate refused (bootstrap, apply, open, commit ...).
    Core(snapheap::Error),
    /// A NATS operation failed (`op` names it: "connect", "publish", "kv update" ...).
    Nats {
        /// The operation.
        op: &'static str,
        /// The client's or server's message.
        detail: String,
    },
    /// A message in the log, the KV entry or the base object is not what this crate writes.
    Corrupt {
        /// Where: `"stream seq 17"`, `"kv key leader"`, `"object base"`.
        at: String,
        /// What was wrong.
        what: String,
    },
    /// A newer epoch owns the log: this node must not write to it.
    Fenced {
        /// Why (names the epoch and node that own the log now).
        reason: String,
    },
    /// Another node holds the leader key: this node may not start shipping, or lost a
    /// promotion race.
    NotLeader {
        /// The epoch in the KV bucket.
        epoch: u64,
        /// The node that holds it.
        owner: String,
    },
    /// The log holds history this heap does not: commits it shipped and then lost (with
    /// `Durability::Replicated` a group is published while its `fdatasync` runs, so a machine
    /// crash or power loss of the primary can take from its disk a group the log holds), or a
    /// different commit under the same seq. The shipper refuses to start (and fences the
    /// heap's replicated commits) instead of continuing another history under the log's seqs.
    /// Promote a standby, or delete this heap's directory and start it as a standby.
    HeapBehindLog {
        /// The commit the log holds (completely or in part).
        log_seq: u64,
        /// The last commit in this heap's journal.
        heap_seq: u64,
        /// What differs.
        detail: String,
    },
    /// The log or the base belongs to another heap than this directory.
    WrongHeap {
        /// The heap id found.
        found: u64,
        /// The heap id expected.
        expected: u64,
    },
    /// Nothing to bootstrap from: no base in the object store.
    NoBase {
        /// The object store bucket.
        bucket: String,
    },
    /// The operation did not complete in time.
    Timeout {
        /// What was waited for.
        what: String,
    },
    /// The configuration is unusable.
    Config {
        /// What is wrong with it.
        what: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Core(e) => write!(f, "{e}"),
            Error::Nats { op, detail } => write!(f, "NATS {op} failed: {detail}"),
            Error::Corrupt { at, what } => write!(f, "corrupt replication data at {at}: {what}"),
            Error::Fenced { reason } => write!(f, "fenced: {reason}"),
            Error::NotLeader { epoch, owner } => {
                write!(f, "not the leader: epoch {epoch} belongs to node {owner:?}")
            }
            Error::HeapBehindLog {
                log_seq,
                heap_seq,
                detail,
            } => write!(
                f,
                "the log is ahead of this heap: it holds commit {log_seq}, this heap's journal \
                 ends at {heap_seq} ({detail}); the heap lost commits it had shipped (machine \
                 crash or power loss before their fdatasync): promote a standby, or delete this \
                 directory and start it as a standby"
            ),
            Error::WrongHeap { found, expected } => write!(
                f,
                "replication data of heap {found:#018x}, expected heap {expected:#018x}"
            ),
            Error::NoBase { bucket } => {
                write!(f, "no base in object store {bucket:?} to bootstrap from")
            }
            Error::Timeout { what } => write!(f, "timed out waiting for {what}"),
            Error::Config { what } => write!(f, "bad replication configuration: {what}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Core(e) => Some(e),
            _ => None,
        }
    }
}

impl From<snapheap::Error> for Error {
    fn from(e: snapheap::Error) -> Error {
        Error::Core(e)
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// A NATS error for operation `op`.
pub(crate) fn nats(op: &'static str, e: impl fmt::Display) -> Error {
    Error::Nats {
        op,
        detail: e.to_string(),
    }
}
