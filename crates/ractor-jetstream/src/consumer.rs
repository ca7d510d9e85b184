//! The consumer children: one actor per durable consumer.
//!
//! A child binds to its durable consumer on the server by name (creating it
//! from its spec when it is missing), forwards each message to the target
//! actor as a [`Delivery`](crate::Delivery), and applies the target's decisions on the
//! server. There are two kinds:
//!
//! - [`PullConsumer`](crate::PullConsumer) does nothing until it gets a
//!   [`ConsumerMsg::Fetch`]. It then asks the server for at most `batch`
//!   messages, forwards each as it arrives, waits until every one is settled,
//!   and replies with a [`FetchOutcome`]. A caller that fetches again only
//!   after the reply never has more than `batch` deliveries at its target:
//!   that is the backpressure pull exists for. Concurrent fetches to one
//!   child are served in the order they arrive, one at a time.
//! - [`PushConsumer`](crate::PushConsumer) pumps the consumer's push
//!   subscription (with the server's flow control and idle heartbeats, but
//!   for a queue group, which gets neither), and
//!   keeps at most `max_in_flight` unsettled deliveries at the target.
//!
//! The data path runs in one task that the child owns (the worker); the
//! actor itself answers control messages ([`ConsumerMsg::Stats`],
//! [`ConsumerMsg::Drain`], ...) while a fetch is in progress. When the
//! child stops or crashes, the worker is aborted, and whatever it had in
//! flight is nak'ed at once, so the server delivers it again right away
//! instead of after `ack_wait`. A caller whose fetch was cut off gets
//! [`Error::FetchInterrupted`].
//!
//! # Small futures
//!
//! An `async fn`'s future holds room for the largest future it awaits,
//! and calling one moves the callee's whole future into its caller's. On
//! the per-message path (a message's `on_message`, a verdict's `apply`
//! down to its publish) rare branches had made those futures add up to
//! about 11 KiB per message (sizes from `cargo +nightly rustc -p
//! ractor-jetstream --lib --release -- -Zprint-type-sizes`). So the rare
//! and large awaits on that path (a refusal's consumer lookup, a drain,
//! the alarms, a confirmed ack, a resubscribe) are boxed where they are
//! called, paid for only when taken. In a build with incremental
//! compilation that took about a tenth off the client CPU per message of
//! pull batch 100 and push (the bench's `client_us_actor`); in the plain
//! release build, whose optimizer removes more of those copies, the
//! difference was within the noise.

mod alarm;
mod child;
mod confirm;
pub(crate) mod dead_letter;
mod drain;
pub(crate) mod effective;
mod fetch;
mod guard;
pub(crate) mod inflight;
mod port;
pub mod pull;
pub mod push;
mod settle;
mod stats;

use std::time::Duration;

use ractor::RpcReplyPort;

use crate::connection::Connection;
use crate::error::Error;
use crate::spec::ConsumerSpec;
use crate::target::Target;
pub(crate) use alarm::Alarm;
pub use child::ConsumerState;
pub(crate) use child::{Internal, check_keyed_target};
pub(crate) use child::{WorkerCtl, WorkerCtx, WorkerInbox, handle_child_msg, start_child};
pub use confirm::CONFIRM_WITHIN;
pub(crate) use drain::{drain_in_flight, drain_recording};
pub(crate) use fetch::FetchRequest;
pub use fetch::{FetchEnd, FetchOutcome, MAX_FETCH_BATCH, MAX_FETCH_EXPIRES, MAX_QUEUED_FETCHES};
pub(crate) use port::FetchPort;
pub(crate) use stats::Counters;
pub use stats::{ConsumerStats, ServerLag};

/// Messages of a consumer child ([`PullConsumer`](crate::PullConsumer) or
/// [`PushConsumer`](crate::PushConsumer)).
#[derive(Debug)]
#[non_exhaustive]
pub enum ConsumerMsg {
    /// Pull only: fetch at most `batch` messages, waiting at most `expires`
    /// (default 5 s) for the first one, forward them, wait for every
    /// decision, and reply. A push child answers [`Error::WrongMode`].
    ///
    /// Bad requests (`batch == 0`, `batch` above the consumer's
    /// `max_batch` or [`MAX_FETCH_BATCH`], `expires` zero or above its
    /// `max_expires` or [`MAX_FETCH_EXPIRES`]) are answered with
    /// [`Error::Invalid`] and fetch nothing. Past [`MAX_QUEUED_FETCHES`]
    /// waiting fetches, a fetch is answered [`Error::Busy`]. A fetch whose
    /// caller has given up by the time its turn comes is not served, and
    /// `expires` is cut to what is left of the caller's call timeout.
    Fetch {
        /// At most this many messages.
        batch: u64,
        /// How long the server may wait for messages (default 5 s).
        expires: Option<Duration>,
        /// Where the outcome goes.
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    },
    /// The child's counters.
    Stats(RpcReplyPort<ConsumerStats>),
    /// Stop taking new messages, wait up to `timeout` for the decisions on
    /// what is in flight, nak the rest, reply, and stop.
    ///
    /// This is a normal end: under a supervisor, a `permanent` child is
    /// started again, a `transient` or `temporary` one is not. To drain for
    /// good, use [`SupervisorMsg::Drain`](crate::SupervisorMsg::Drain) or
    /// `RemoveConsumer`.
    Drain {
        /// How long to wait for outstanding decisions.
        timeout: Duration,
        /// Where the report goes.
        reply: RpcReplyPort<DrainReport>,
    },
    /// Send future deliveries to this target instead (for example after the
    /// target actor was restarted).
    SetTarget(Target),
    /// What the child's own worker task sends it (that it ended). It
    /// cannot be built outside this crate.
    #[doc(hidden)]
    Internal(Internal),
}

/// What a drain settled and what it nak'ed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Deliveries whose decision came within the drain timeout.
    pub settled: u64,
    /// Deliveries nak'ed because no decision came in time, plus messages
    /// that arrived during the drain and were never forwarded.
    pub naked: u64,
}

impl DrainReport {
    /// Adds another child's report.
    pub fn merge(&mut self, other: DrainReport) {
        self.settled += other.settled;
        self.naked += other.naked;
    }
}

/// What a consumer child is started with.
#[derive(Debug, Clone)]
pub struct ConsumerArgs {
    /// The connection to bind through (a plain JetStream context converts
    /// into one: `js.into()`).
    pub connection: Connection,
    /// The durable consumer.
    pub spec: ConsumerSpec,
    /// Where deliveries go.
    pub target: Target,
}
