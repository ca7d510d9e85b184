//! NATS JetStream consumers inside a supervised [ractor] actor tree.
//!
//! A durable JetStream consumer delivers its messages into one of your
//! actors, which decides on each: ack, nak (optionally delayed), term, or
//! "still working on it". The consumer itself lives in the actor tree: a
//! crash restarts it, and it resumes from where the durable consumer stands
//! on the server.
//!
//! # The tree
//!
//! ```text
//! JetStreamSupervisor                 one per JetStream context
//!  ├─ ensures streams and durable consumers
//!  ├─ PushConsumer child   per push durable  ──Delivery──▶ target actor
//!  ├─ PullConsumer child   per pull durable  ──Delivery──▶ target actor
//!  │        ▲ Fetch RPC (direct, or routed through the supervisor)
//!  └─ restarts failed children under a RestartPolicy
//! ```
//!
//! - [`JetStreamSupervisor`] makes the [`Topology`]'s streams and durable
//!   consumers exist, and spawns one child per durable.
//! - [`PullConsumer`] does nothing until it gets a
//!   [`ConsumerMsg::Fetch`] (or [`SupervisorMsg::Fetch`]); then it fetches at
//!   most `batch` messages, forwards them, waits for every decision and
//!   replies with a [`FetchOutcome`]. An expired fetch with nothing in it is
//!   a clean empty outcome, not an error.
//! - [`PushConsumer`] pumps a push subscription and never has more than
//!   `max_in_flight` unsettled deliveries at its target.
//! - The target is any actor that takes a [`Delivery`] through a
//!   [`ractor::DerivedActorRef<Delivery>`], so it keeps its own message enum.
//!
//! # Push or pull
//!
//! Use **pull** when the application should decide when work comes in:
//! fetch only when downstream is ready, in batches you choose. It suits
//! slow or bursty consumers, and several processes can bind the same
//! durable to share its work. Use **push** for a steady flow with the least
//! latency, bounded by the child's window.
//!
//! # The handshake
//!
//! Every message reaches the target as a [`Delivery`], and the child waits
//! for the target's decision on it:
//!
//! - [`Delivery::ack`]: done; never delivered again.
//! - [`Delivery::nak`]: not now; delivered again (after the delay, if any).
//! - [`Delivery::term`]: never; not delivered again (dead-lettered first
//!   when the consumer has a `dead_letter_subject`).
//! - [`Delivery::in_progress`]: more time; the server waits another
//!   `ack_wait` and the child's decision timeout starts over.
//! - dropped without a decision, or not decided within the decision
//!   timeout: nak'ed.
//!
//! The child applies each decision on the server. A pull child replies to a
//! fetch only when every delivery of it is settled, so a caller that fetches
//! again only after the reply never has more than `batch` deliveries at its
//! target. A push child keeps at most `max_in_flight` unsettled.
//!
//! ```no_run
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//! use ractor_jetstream::Delivery;
//! use std::time::Duration;
//!
//! struct Mailer;
//!
//! impl Actor for Mailer {
//!     type Msg = Delivery;
//!     type State = ();
//!     type Arguments = ();
//!
//!     async fn pre_start(&self, _: ActorRef<Delivery>, _: ()) -> Result<(), ActorProcessingErr> {
//!         Ok(())
//!     }
//!
//!     async fn handle(&self, _: ActorRef<Delivery>, mail: Delivery, _: &mut ()) -> Result<(), ActorProcessingErr> {
//!         match std::str::from_utf8(mail.payload()) {
//!             // Not an address at all: it will never work.
//!             Err(_) => mail.term("payload is not UTF-8"),
//!             // The mail server is busy: try again in a minute.
//!             Ok(address) if address.ends_with(".invalid") => mail.nak_after(Duration::from_secs(60)),
//!             Ok(_) => mail.ack(),
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//!
//! # A push consumer
//!
//! The same target works for push; the child starts pumping as soon as it
//! is spawned, and keeps at most `max_in_flight` unsettled deliveries at
//! the target:
//!
//! ```no_run
//! use ractor::Actor;
//! use ractor_jetstream::{ConsumerSpec, JetStreamSupervisor, PushSpec, StreamSpec, SupervisorArgs, Topology};
//!
//! # async fn run(target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), Box<dyn std::error::Error>> {
//! let js = async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
//! let topology = Topology::new()
//!     .stream(StreamSpec::new("MAIL", ["mail.>"]))
//!     .consumer(ConsumerSpec::new("MAIL", "mailer", "mailer", PushSpec::default().window(32)));
//! let args = SupervisorArgs::new(js, topology).target("mailer", target);
//! let (_supervisor, _) = Actor::spawn(Some("mail".into()), JetStreamSupervisor, args).await?;
//! # Ok(()) }
//! ```
//!
//! # Guarantees
//!
//! At-least-once. What was acked is never delivered again; what was in
//! flight when a child stopped or crashed is nak'ed at once and delivered
//! again, so it returns in well under a second rather than after
//! `ack_wait`. A restarted child binds to the same durable consumer by
//! name, so it resumes from the consumer's ack floor on the server. Only a
//! killed process (or a lost connection) leaves its in-flight messages to
//! the server's `ack_wait`; they still come back, later. Duplicates are
//! possible after faults; gaps are not.
//!
//! # Example
//!
//! ```no_run
//! use ractor::{Actor, ActorProcessingErr, ActorRef, call_t};
//! use ractor_jetstream::{
//!     ConsumerSpec, Delivery, JetStreamSupervisor, StreamSpec, SupervisorArgs, SupervisorMsg,
//!     Topology,
//! };
//!
//! /// A target that acks everything it gets.
//! struct Worker;
//!
//! impl Actor for Worker {
//!     type Msg = Delivery;
//!     type State = ();
//!     type Arguments = ();
//!
//!     async fn pre_start(&self, _: ActorRef<Delivery>, _: ()) -> Result<(), ActorProcessingErr> {
//!         Ok(())
//!     }
//!
//!     async fn handle(&self, _: ActorRef<Delivery>, delivery: Delivery, _: &mut ()) -> Result<(), ActorProcessingErr> {
//!         println!("{} #{}", delivery.subject(), delivery.stream_sequence());
//!         delivery.ack();
//!         Ok(())
//!     }
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let js = async_nats::jetstream::new(async_nats::connect("nats://127.0.0.1:4222").await?);
//! let (worker, _) = Actor::spawn(None, Worker, ()).await?;
//! let topology = Topology::new()
//!     .stream(StreamSpec::new("ORDERS", ["orders.>"]))
//!     .consumer(ConsumerSpec::pull("ORDERS", "billing", "worker"));
//! let args = SupervisorArgs::new(js, topology).target("worker", worker.get_derived());
//! let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args).await?;
//! let outcome = call_t!(supervisor, |reply| SupervisorMsg::Fetch {
//!     durable: "billing".into(),
//!     batch: 10,
//!     expires: None,
//!     reply,
//! }, 10_000)??;
//! assert_eq!(outcome.delivered, outcome.acked);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

/// A named failpoint for fault-injection tests; compiled out unless the
/// `fault-injection` feature is on. Configure it with the `fail` crate
/// (`fail::cfg("rj-pull-after-forward", "2*off->panic")`).
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(feature = "fault-injection")]
        fail::fail_point!($name);
    };
}
pub(crate) use fault_point;

pub mod connect;
pub mod consumer;
pub mod delivery;
pub mod ensure;
pub mod error;
pub mod handle;
mod mode;
pub mod restart;
pub mod spec;
pub mod supervisor;
pub mod target;

pub use connect::{ConnectionSpec, connect, connect_jetstream};
pub use consumer::pull::PullConsumer;
pub use consumer::push::PushConsumer;
pub use consumer::{
    ConsumerArgs, ConsumerMsg, ConsumerState, ConsumerStats, DrainReport, FetchEnd, FetchOutcome,
    MAX_FETCH_BATCH, MAX_FETCH_EXPIRES, MAX_QUEUED_FETCHES,
};
pub use delivery::{Decision, Delivery, DeliveryInfo};
pub use ensure::{ConsumerAction, StreamAction, ensure_consumer, ensure_stream};
pub use error::{
    ActorErrorKind, Error, ErrorKind, FieldError, ServerErrorKind, UnavailableReason,
    ValidationErrors,
};
pub use handle::{ConsumerHandle, PullHandle, SupervisorHandle};
pub use restart::{RestartKind, RestartPolicy};
pub use spec::{
    ChildSettings, ConsumerMode, ConsumerSpec, Discard, ModeSpec, PullSpec, PushSpec, Retention,
    ServerSettings, StartPosition, Storage, StreamSpec, Topology,
};
pub use supervisor::{
    ChildState, ChildStatus, JetStreamSupervisor, SupervisorArgs, SupervisorMsg, SupervisorState,
    SupervisorStatus,
};
pub use target::Target;
