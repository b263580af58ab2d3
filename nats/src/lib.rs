//! snapheap-nats: a hot standby for a snapheap heap through NATS JetStream.
//!
//! The primary's shipper sends every commit group to a JetStream stream, split into frames
//! (durable groups; with `Durability::Replicated` each group as soon as it is written, while
//! its `fdatasync` runs, and a restarted primary that lost groups the log holds is refused);
//! a standby's follower bootstraps from the base in the object store and applies the groups
//! in order; a promotion takes the next epoch in a KV bucket by compare-and-set,
//! drains the stream, writes an epoch record that fences the old primary, and opens the
//! replica as a writable heap. Tokio and `async-nats` run inside; the API is blocking.
//!
//! | file | owns |
//! |---|---|
//! | `config.rs` | [`NatsConfig`]: server URLs, the log's names, limits |
//! | `frame.rs` | the frame format, splitting and reassembly (pure) |
//! | `transport.rs` | the stream, the leader key and the base object (async) |
//! | `shipper.rs` | [`Shipper`]: the primary's background publisher, fencing, retention |
//! | `follower.rs` | [`Follower`]: bootstrap, apply in order, gap/divergence, promotion |
//! | `testing.rs` | `nats-server` processes for tests (feature `testing`) |

#![deny(unsafe_code)]

pub mod config;
pub mod error;
pub mod follower;
pub mod frame;
pub mod shipper;
#[cfg(feature = "testing")]
pub mod testing;
pub mod transport;

pub use config::NatsConfig;
pub use error::{Error, Result};
pub use follower::{Follower, FollowerStatus, Promoted};
pub use shipper::{Shipper, ShipperStatus};
