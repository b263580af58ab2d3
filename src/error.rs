//! The crate's one error type.
//!
//! Every fallible public operation returns [`Error`]. Messages name the file, the byte offset
//! or the address range involved, so that a user reading a log line can tell what went wrong
//! and where without a debugger.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong when opening, committing or snapshotting a heap.
#[non_exhaustive]
#[derive(Debug)]
pub enum Error {
    /// An operating-system call failed (`op` names the call, `path` the file, if any).
    Io {
        /// The operation that failed, e.g. `"fdatasync"`.
        op: &'static str,
        /// The file or directory involved (empty when none).
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file of the heap is damaged: a checksum, magic number, length or field is wrong.
    Corrupt {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset in that file where the damage was found.
        offset: u64,
        /// What was wrong.
        what: String,
    },
    /// The heap was created by another program, root type, schema or format version.
    Incompatible {
        /// What differs, with the expected and found values.
        what: String,
    },
    /// The heap's fixed address range is occupied by another mapping in this process.
    AddressInUse {
        /// First byte of the range.
        start: usize,
        /// One past the last byte of the range.
        end: usize,
    },
    /// Another handle (in this or another process) holds the heap's exclusive lock.
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier write or sync failed; the heap refuses further commits. Reopen it to
    /// recover the last durable state.
    Poisoned {
        /// The failure that poisoned the heap.
        cause: String,
    },
    /// An option or argument is out of range.
    InvalidArgument {
        /// What was wrong.
        what: String,
    },
    /// The heap's maximum size is exhausted.
    OutOfSpace {
        /// What needed the space.
        what: String,
    },
    /// A schema migration closure panicked while opening the heap. Nothing was committed:
    /// the heap still holds the state from before the migration.
    MigrationFailed {
        /// The step that failed, `"Old (schema \"s\") -> New"`.
        step: String,
        /// The panic message.
        cause: String,
    },
    /// This process closed or dropped the heap earlier, values allocated from it may still
    /// point into its memory (which stays mapped, see `docs/design.md`, "Closing"), and that
    /// memory cannot be taken over by the new handle (`reason` says why: dropped with
    /// uncommitted changes, files changed by another process since, ...). Mapping the files
    /// over it would alias those values. Reopen the heap in another process, or release the
    /// old memory first with [`release_detached`](crate::release_detached) (`unsafe`: the
    /// caller guarantees that no such value is used any more).
    Detached {
        /// The heap's directory.
        dir: PathBuf,
        /// Why the memory of the earlier handle cannot be adopted.
        reason: String,
    },
    /// Replication: the group a shipper asked for (`wanted`) is no longer in the primary's
    /// journals (a snapshot deleted them, or the backlog held for the shipper passed
    /// `OpenOptions::replication_backlog_bytes`). The oldest group still available is
    /// `oldest`. Send the standby a new base (`ReplicationSource::export_base`).
    BacklogTrimmed {
        /// The sequence number asked for.
        wanted: u64,
        /// The oldest sequence number still available.
        oldest: u64,
    },
    /// Replication: a replica at position `expected - 1` was given group `got`, later than the
    /// next one; groups in between are missing. Nothing was applied.
    ReplicaGap {
        /// The sequence number the replica needs next.
        expected: u64,
        /// The sequence number it was given.
        got: u64,
    },
    /// Replication: group `seq` does not continue the replica's history (its chain hash names
    /// another past: a group of an old primary after a failover, or of another copy of the
    /// heap). Nothing was applied; bootstrap the replica again from a base of the right primary.
    ReplicaDiverged {
        /// The sequence number of the refused group.
        seq: u64,
        /// The replica's and the group's chain hashes.
        what: String,
    },
    /// `Durability::Replicated`: commit `seq` is durable on the local disk, but the replicated
    /// log did not acknowledge it within the timeout. It is *not* rolled back: a restart keeps it.
    ReplicationTimeout {
        /// The commit's sequence number.
        seq: u64,
    },
    /// `Durability::Replicated`: the shipper reported that this primary was fenced (a newer
    /// primary exists). Commits in the replicated mode are refused from then on.
    Fenced {
        /// What the shipper reported.
        reason: String,
    },
    /// The heap (or replica) this handle belongs to was closed.
    Closed {
        /// What was asked of the closed handle.
        what: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::Io`].
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Builds an [`Error::Corrupt`].
    pub(crate) fn corrupt(file: impl Into<PathBuf>, offset: u64, what: impl Into<String>) -> Self {
        Error::Corrupt {
            file: file.into(),
            offset,
            what: what.into(),
        }
    }

    /// Builds an [`Error::Incompatible`].
    pub(crate) fn incompatible(what: impl Into<String>) -> Self {
        Error::Incompatible { what: what.into() }
    }

    /// Builds an [`Error::InvalidArgument`].
    pub(crate) fn invalid(what: impl Into<String>) -> Self {
        Error::InvalidArgument { what: what.into() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { op, path, source } if path.as_os_str().is_empty() => {
                write!(f, "{op} failed: {source}")
            }
            Error::Io { op, path, source } => {
                write!(f, "{op} failed on {}: {source}", path.display())
            }
            Error::Corrupt { file, offset, what } => {
                write!(f, "{} is corrupt at byte offset {offset}: {what}", file.display())
            }
            Error::Incompatible { what } => write!(f, "incompatible heap: {what}"),
            Error::AddressInUse { start, end } => write!(
                f,
                "the heap's address range {start:#x}..{end:#x} is already mapped in this process"
            ),
            Error::Locked { path } => write!(
                f,
                "the heap is locked by another handle or process (lock file {})",
                path.display()
            ),
            Error::Poisoned { cause } => write!(
                f,
                "the heap refuses further commits after an earlier failure ({cause}); reopen it to recover the last durable state"
            ),
            Error::InvalidArgument { what } => write!(f, "invalid argument: {what}"),
            Error::OutOfSpace { what } => write!(f, "the heap's maximum size is exhausted: {what}"),
            Error::MigrationFailed { step, cause } => write!(
                f,
                "the migration {step} panicked ({cause}); nothing was committed, the heap still holds its state from before the migration"
            ),
            Error::Detached { dir, reason } => write!(
                f,
                "the heap in {} was closed earlier in this process and its memory may still be referenced by values \
                 allocated from it, but it cannot be reopened over that memory: {reason}; reopen it in another \
                 process, or call `snapheap::release_detached` (unsafe) once no such value is used any more",
                dir.display()
            ),
            Error::BacklogTrimmed { wanted, oldest } => write!(
                f,
                "replication: group {wanted} is no longer in the primary's journals (the oldest available is {oldest}); \
                 send the standby a new base"
            ),
            Error::ReplicaGap { expected, got } => write!(
                f,
                "replication: the replica needs group {expected} next but was given group {got} (groups are missing); nothing was applied"
            ),
            Error::ReplicaDiverged { seq, what } => write!(
                f,
                "replication: group {seq} does not continue the replica's history ({what}); nothing was applied, \
                 bootstrap the replica again"
            ),
            Error::ReplicationTimeout { seq } => write!(
                f,
                "replication: commit {seq} is durable locally but the replicated log did not acknowledge it in time"
            ),
            Error::Fenced { reason } => write!(f, "replication: this primary was fenced ({reason})"),
            Error::Closed { what } => write!(f, "{what}: the heap was closed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
