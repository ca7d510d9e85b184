//! NATS JetStream consumers inside a supervised [ractor] actor tree.
//!
//! A durable JetStream consumer delivers its messages into one of your
//! actors, which decides on each: ack, nak (now or after a delay), term, or
//! "still working on it". The consumer itself lives in the actor tree: a
//! crash restarts it, and it resumes from where the durable consumer stands
//! on the server.
//!
//! # The tree
//!
//! ```text
//! SupervisorHandle ─▶ JetStreamSupervisor "<sup>"            one per JetStream context
//!                      ├─ ensures streams and durable consumers
//!                      ├─ PushConsumer "<sup>/<stream>/<durable>" ──Delivery──▶ target actor
//!                      ├─ PullConsumer "<sup>/<stream>/<durable>" ──Delivery──▶ target actor
//!                      │        ▲
//!                      │        └─ fetch ◀─ PullHandle (finds the child by its name)
//!                      └─ restarts failed children under a RestartPolicy
//! ```
//!
//! - [`JetStreamSupervisor`] makes the [`Topology`]'s streams and durable
//!   consumers exist, and spawns one child per durable, registered in ractor
//!   as `<sup>/<stream>/<durable>`, where `<sup>` is the supervisor's own
//!   name (`jetstream-<actor id>` when it has none).
//!   [`SupervisorHandle::spawn`] starts it and gives a handle whose calls
//!   ([`fetch`](SupervisorHandle::fetch),
//!   [`status`](SupervisorHandle::status),
//!   [`add_consumer`](SupervisorHandle::add_consumer),
//!   [`drain`](SupervisorHandle::drain), ...) each answer one
//!   `Result<_, Error>`.
//! - [`PullConsumer`] does nothing until it is asked to fetch, through a
//!   [`PullHandle`] (from [`SupervisorHandle::pull`]); then it fetches at
//!   most `batch` messages, forwards them, waits for every decision and
//!   answers with a [`FetchOutcome`]. An expired fetch with nothing in it is
//!   a clean empty outcome, not an error.
//! - [`PushConsumer`] pumps a push subscription and never has more than its
//!   window ([`PushSpec::window`]) of unsettled deliveries at its target.
//! - The target is any actor that takes a [`Delivery`] through a
//!   [`ractor::DerivedActorRef<Delivery>`], so it keeps its own message enum
//!   (see [Targets](#targets)).
//!
//! The handles wrap the actors' messages ([`SupervisorMsg`],
//! [`ConsumerMsg`]) for code that wants an answer. An actor that talks to
//! the tree by message can send a `Fetch` with a reply port and go on
//! handling its mailbox: the child answers the port when the fetch is done.
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
//! - [`Delivery::nak`], [`Delivery::nak_after`]: not now; delivered again
//!   (at once, or after the delay).
//! - [`Delivery::term`]: never; not delivered again (dead-lettered first
//!   when the consumer has a `dead_letter_subject`).
//! - [`Delivery::in_progress`]: more time; the server waits another
//!   `ack_wait` and the child's hold on it starts over.
//! - dropped without a decision, or held past the consumer's `max_hold`:
//!   nak'ed.
//!
//! The child applies each decision on the server. A pull child answers a
//! fetch only when every delivery of it is settled, so a caller that fetches
//! again only after the answer never has more than `batch` deliveries at its
//! target. A push child keeps at most its window unsettled.
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
//! # A pull consumer
//!
//! A stream, a pull durable on it, a target that acks everything, and one
//! fetch of at most 10 messages. `js` is a JetStream context
//! (`async_nats::jetstream::new(client)`; a [`ConnectionSpec`] describes a
//! connection with credentials and TLS as data):
//!
//! ```no_run
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//! use ractor_jetstream::{ConsumerSpec, Delivery, StreamSpec, SupervisorArgs, SupervisorHandle, Topology};
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
//! async fn run(js: async_nats::jetstream::Context) -> Result<(), ractor_jetstream::Error> {
//!     let (worker, _) = Actor::spawn(None, Worker, ()).await?;
//!     let topology = Topology::new()
//!         .stream(StreamSpec::new("ORDERS", ["orders.>"]))
//!         .consumer(ConsumerSpec::pull("ORDERS", "billing", "worker"));
//!     let args = SupervisorArgs::new(js, topology).target("worker", worker.get_derived());
//!     let (supervisor, _) = SupervisorHandle::spawn(Some("shop".into()), args).await?;
//!
//!     // The child is registered as "shop/ORDERS/billing"; the handle finds
//!     // it again after a restart.
//!     let outcome = supervisor.pull("billing").await?.fetch(10, None).await?;
//!     assert_eq!(outcome.delivered, outcome.acked);
//!     Ok(())
//! }
//! ```
//!
//! # A push consumer
//!
//! The same kind of target works for push; the child starts pumping as soon
//! as it is spawned, and keeps at most its window of unsettled deliveries
//! at the target:
//!
//! ```no_run
//! use ractor_jetstream::{ConsumerSpec, PushSpec, StreamSpec, SupervisorArgs, SupervisorHandle, Topology};
//!
//! # async fn run(js: async_nats::jetstream::Context, mailer: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), ractor_jetstream::Error> {
//! let topology = Topology::new()
//!     .stream(StreamSpec::new("MAIL", ["mail.>"]))
//!     .consumer(ConsumerSpec::new("MAIL", "mailer", "mailer", PushSpec::default().window(32)));
//! let args = SupervisorArgs::new(js, topology).target("mailer", mailer);
//! let (supervisor, _) = SupervisorHandle::spawn(Some("mail".into()), args).await?;
//! let stats = supervisor.consumer("mailer").await?.stats().await?;
//! println!("{} delivered so far", stats.delivered);
//! # Ok(()) }
//! ```
//!
//! # Targets
//!
//! A consumer's spec names its target; [`SupervisorArgs::target`] (or
//! [`SupervisorHandle::set_target`] later) says which actor that name is,
//! as a [`Target`]:
//!
//! - an actor ([`Target::actor`], or `.into()` from a
//!   `DerivedActorRef<Delivery>`): that actor for good; when it is
//!   restarted, its successor needs a `set_target`;
//! - a registered name ([`Target::registered`]): whatever actor is
//!   registered in ractor under that name, looked up again whenever the one
//!   in hand has stopped;
//! - a process group ([`Target::group`]): a running member of a ractor
//!   process group, the same one until it stops.
//!
//! The type parameter of the last two is the actor's own message type
//! (`Delivery`, or an enum that converts from and into it).
//!
//! A batch target ([`Target::batches`], [`Target::registered_batches`],
//! [`Target::group_batches`])
//! gets [`Deliveries`] instead: what the child has ready at one moment,
//! in one actor message, each delivery still settled on its own. It pays
//! the cost of an actor message once per batch rather than once per
//! delivery.
//!
//! So a target that its own supervisor restarts under the same name (or
//! into the same group) gets the deliveries with no application code:
//!
//! ```no_run
//! use ractor_jetstream::{Delivery, SupervisorArgs, Target, Topology};
//!
//! # fn run(js: async_nats::jetstream::Context, topology: Topology, mailer: ractor::ActorRef<Delivery>) {
//! let args = SupervisorArgs::new(js, topology)
//!     // This actor, and no other.
//!     .target("mailer", mailer.get_derived())
//!     // The actor registered as "billing-worker" when a delivery goes out.
//!     .target("billing", Target::registered::<Delivery>("billing-worker"))
//!     // A running member of the process group "auditors".
//!     .target("audit", Target::group::<Delivery>("auditors"));
//! # }
//! ```
//!
//! A message that finds no running target is not forwarded: it is nak'ed
//! (or, on its last allowed delivery, kept for the next target), and a pull
//! child sends no pull request while its target is not running. A dead
//! target never costs a message its deliveries.
//!
//! # Errors
//!
//! Every call answers this crate's one [`Error`]. Match on its
//! [`kind`](Error::kind) (an [`ErrorKind`]), never on its text;
//! [`Error::is_transient`] says whether the same request may succeed later
//! (a child restarting, a fetch cut short by a crash, a busy child, a
//! server timeout), and [`std::error::Error::source`] keeps the async-nats
//! or ractor error underneath:
//!
//! ```no_run
//! use std::time::Duration;
//! use ractor_jetstream::{Error, ErrorKind, PullHandle};
//!
//! /// Fetches until a fetch comes back empty; returns how many were acked.
//! async fn work_off_backlog(billing: &PullHandle) -> Result<u64, Error> {
//!     let mut acked = 0;
//!     loop {
//!         match billing.fetch(100, Some(Duration::from_secs(1))).await {
//!             Ok(outcome) if outcome.is_empty() => return Ok(acked),
//!             Ok(outcome) => acked += outcome.acked,
//!             // Restarting, cut short (what it held comes back), busy: again.
//!             Err(err) if err.is_transient() => tokio::time::sleep(Duration::from_millis(100)).await,
//!             // The consumer is being drained: stop fetching.
//!             Err(err) if err.kind() == ErrorKind::Draining => return Ok(acked),
//!             Err(err) => return Err(err),
//!         }
//!     }
//! }
//! ```
//!
//! A supervisor that gave up on a child (it failed more often than its
//! [`RestartPolicy`] allows) fails itself with [`Error::GaveUp`], which its
//! own parent reads with [`Error::of_actor_failure`].
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
#![warn(missing_docs)]

/// A named failpoint for fault-injection tests; compiled out unless the
/// `fault-injection` feature is on. Configure it with the `fail` crate
/// (`fail::cfg("rj-pull-after-forward", "2*off->panic")`).
macro_rules! fault_point {
    ($name:literal) => {
        #[cfg(feature = "fault-injection")]
        fail::fail_point!($name);
    };
    ($name:literal, $on:expr) => {
        #[cfg(feature = "fault-injection")]
        fail::fail_point!($name, $on);
    };
}
pub(crate) use fault_point;

pub mod connect;
pub mod connection;
pub mod consumer;
pub mod delivery;
pub mod ensure;
pub mod error;
pub mod group;
pub mod handle;
pub mod keyed;
mod mode;
#[cfg(feature = "otel")]
pub mod otel;
pub mod output;
pub mod restart;
pub mod spec;
mod status;
pub mod supervisor;
pub mod target;
pub mod telemetry;

pub use connect::{ConnectionSpec, ServerUrl, connect};
pub use connection::Connection;
pub use consumer::pull::PullConsumer;
pub use consumer::push::PushConsumer;
pub use consumer::{
    CONFIRM_WITHIN, ConsumerArgs, ConsumerMsg, ConsumerState, ConsumerStats, DrainReport, FetchEnd,
    FetchOutcome, MAX_FETCH_BATCH, MAX_FETCH_EXPIRES, MAX_QUEUED_FETCHES, ServerLag,
};
pub use delivery::{Decision, Deliveries, Delivery, DeliveryInfo};
pub use ensure::{ConsumerAction, StreamAction, ensure_consumer, ensure_stream};
pub use error::{
    ActorErrorKind, Error, ErrorKind, FieldError, ServerErrorKind, UnavailableReason,
    ValidationErrors,
};
pub use group::{GroupArgs, GroupHandle, GroupSpec, GroupStatus, PartitionedGroup};
pub use handle::{ConsumerHandle, PullHandle, SupervisorHandle};
pub use keyed::{KeyFn, Workers};
pub use restart::{RestartKind, RestartPolicy};
pub use spec::{
    ChildSettings, Consume, ConsumerMode, ConsumerSpec, Discard, KeySpec, ModeSpec, PriorityPolicy,
    PrioritySpec, PullSpec, PushSpec, Retention, ServerSettings, StartPosition, Storage,
    StreamSpec, Topology,
};
pub use supervisor::{
    ChildState, ChildStatus, JetStreamSupervisor, SupervisorArgs, SupervisorMsg, SupervisorState,
    SupervisorStatus,
};
pub use target::Target;
