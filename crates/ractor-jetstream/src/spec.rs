//! Streams, durable consumers and whole topologies, as plain data.
//!
//! A [`StreamSpec`] says which stream must exist, a [`ConsumerSpec`] which
//! durable consumer must exist on it and which actor gets its messages, and a
//! [`Topology`] is a list of both that loads from TOML or JSON:
//!
//! ```
//! use ractor_jetstream::{ConsumerMode, Topology};
//! use std::time::Duration;
//!
//! let topology = Topology::from_toml_str(r#"
//!     [[streams]]
//!     name = "ORDERS"
//!     subjects = ["orders.>"]
//!
//!     [[consumers]]
//!     stream = "ORDERS"
//!     durable = "billing"
//!     mode = "pull"
//!     target = "billing-worker"
//!     filter_subjects = ["orders.created"]
//!     ack_wait = "30s"
//!     max_batch = 100
//! "#)?;
//! let billing = &topology.consumers[0];
//! assert_eq!(billing.mode(), ConsumerMode::Pull);
//! assert_eq!(billing.server.ack_wait, Some(Duration::from_secs(30)));
//! assert_eq!(billing.mode.as_pull().and_then(|p| p.max_batch), Some(100));
//! # Ok::<(), ractor_jetstream::Error>(())
//! ```
//!
//! Every spec is validated before anything is sent to the server
//! ([`Topology::validate`]); a topology with one bad entry creates nothing.
//! Counts are `u64`, unset meaning the server's default or no limit.
//!
//! Where each concern lives: `spec/stream.rs` (streams), `spec/consumer.rs`
//! (consumers), `spec/pull_push.rs` (the settings of one mode),
//! `spec/topology.rs` (whole topologies and loading), `spec/raw.rs` (the flat
//! file form), `spec/subject.rs` (the subject and name grammar) and
//! `spec/check.rs` (the field checks they share).

mod check;
mod child;
mod consumer;
mod priority;
mod pull_push;
mod raw;
mod stream;
mod subject;
mod topology;

pub use crate::mode::ConsumerMode;
pub use child::{ChildSettings, KeySpec, MAX_WORKERS};
pub use consumer::{
    ConsumerSpec, DEFAULT_ACK_WAIT, DEFAULT_FETCH_EXPIRES, DEFAULT_MAX_ACK_PENDING,
    DEFAULT_MAX_HOLD, ServerSettings, StartPosition,
};
pub use priority::{Consume, DEFAULT_WINDOW, PriorityPolicy, PrioritySpec};
pub use pull_push::{DEFAULT_IDLE_HEARTBEAT, DEFAULT_MAX_IN_FLIGHT, ModeSpec, PullSpec, PushSpec};
pub use stream::{Discard, Retention, Storage, StreamSpec};
pub use topology::Topology;

pub(crate) use topology::check_filters_covered;
