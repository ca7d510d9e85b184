//! Keyed parallelism: N workers behind one durable, in order per key.
//!
//! A consumer whose spec sets `workers = N` (and a `key`) feeds N worker
//! actors instead of one target. Each message has a key (a subject token,
//! a header, or a function given in code); the messages of one key are
//! handled one at a time and in stream order, different keys in parallel.
//! The tree is the same one, a level deeper:
//!
//! ```text
//! JetStreamSupervisor
//!   └─ consumer child (pull or push)      the window, keep-alives, settling,
//!        │                                 and the routing: keys, order,
//!        │                                 which worker has room
//!        └─ worker pool                    spawns the workers, and again
//!             ├─ worker 0                  the application's actor
//!             ├─ ...
//!             └─ worker N-1
//! ```
//!
//! The child's worker task routes the deliveries itself: where a plain
//! consumer casts a delivery to its one target, a keyed one hands it to a
//! router that casts it to a worker, and the router sees each decision as
//! the child applies it (it comes back on the child's one settlement
//! channel). So a delivery takes the same hops as to a plain target, and
//! every guarantee of a plain consumer holds unchanged (the window or the
//! fetch's batch bounds what is unsettled, the child keeps what waits
//! alive on the server, a crash nak's what was in flight). The router adds
//! the order:
//!
//! - **One at a time per key.** A key whose delivery is at a worker is
//!   busy, and its next message waits (in stream order) until that one is
//!   settled. A worker holds a few deliveries at once, each of another
//!   key (the one it works on, and the next ones in its mailbox: up to 32
//!   for one worker, 2 each for 16 or more), so that a fast worker never
//!   waits on the child between two messages. The worker with the fewest
//!   takes the oldest waiting key, so a hot key holds one worker at a
//!   time and the other keys go on around it.
//! - **A nak keeps the order.** When a delivery of key K is nak'ed (or its
//!   worker fails with it, or it is decided after its hold ended), the
//!   messages of K waiting behind it are nak'ed too, in stream order and
//!   with the same delay, and K is blocked until all of them are back: a
//!   message of K is taken only when no nak'ed message of K before it is
//!   still out; a later one is nak'ed as well (with what is left of the
//!   delay) and is waited for in turn. So K resumes in stream order
//!   however the server interleaves redeliveries with new messages. A
//!   term lets the next one through. A block is given up one redelivery
//!   period (the ack wait, or the longest backoff step) after its delay,
//!   should a message not come back (terminated meanwhile, or taken by
//!   another process).
//! - **A worker that fails** is spawned again by the pool (its
//!   supervisor); the deliveries it held are nak'ed by the child at once,
//!   and their keys are blocked as for a nak.
//! - **Messages a dead process left unacknowledged.** The child binds the
//!   durable and reads `num_ack_pending`: messages another process (one
//!   killed, most likely) received and never settled. They come back only
//!   after their ack wait, while new messages come at once. Until they are
//!   all back (at most one redelivery period), every message newer than the
//!   last one delivered before this process bound is nak'ed with a delay
//!   that ends when they must all be back, so a key's earlier message is
//!   never processed after a later one.
//!
//! Why a router of our own rather than `ractor::factory`: the factory's
//! `KeyPersistentRouting` keeps a key on one worker and its queue, which
//! orders a key only as long as nothing is nak'ed. Keeping the order
//! across a nak needs the router to see each decision and act on the rest
//! of the key before anything of that key reaches a worker again; the
//! factory's queue would hold deliveries the child already bounds with its
//! window; and a factory is one more actor, two more mailbox hops per
//! message. (A first version was such an actor, a dispatcher between the
//! child and the workers: with no work per message, one worker ran at
//! 0.72 of a plain target's rate; routing in the child runs at about the
//! plain rate.) The router here is the factory's routing and queue
//! reduced to that: per-key queues, a busy flag per key, a count per
//! worker, and the decision of each delivery seen as it is applied.
//!
//! **Deliveries it costs.** Keeping a key's order after a nak means nak'ing
//! the messages of that key waiting behind it, and each such nak spends one
//! of their deliveries. With `max_deliver` set, a message held back this
//! way often enough reaches its last delivery without any worker having
//! failed on it (it is then dead-lettered when a dead-letter subject is
//! set, as any last delivery that fails). Give keyed consumers a
//! `max_deliver` well above the naks a key is expected to see, or none.
//!
//! **Across processes.** The order holds within one process. Several
//! processes bound to one durable each get some of a key's messages, and
//! nothing orders their work; partitioned consumer groups (one durable per
//! partition, one process per partition at a time) are the way to keep it
//! across processes.
//!
//! ```no_run
//! use ractor::{Actor, ActorProcessingErr, ActorRef};
//! use ractor_jetstream::{ConsumerSpec, Delivery, KeySpec, SupervisorArgs, Topology, Workers};
//!
//! struct OrderWorker;
//!
//! impl Actor for OrderWorker {
//!     type Msg = Delivery;
//!     type State = ();
//!     type Arguments = usize;
//!     async fn pre_start(&self, _: ActorRef<Delivery>, _index: usize) -> Result<(), ActorProcessingErr> {
//!         Ok(())
//!     }
//!     async fn handle(&self, _: ActorRef<Delivery>, order: Delivery, _: &mut ()) -> Result<(), ActorProcessingErr> {
//!         // Orders of one customer (the subject's third token) arrive one
//!         // at a time, in stream order.
//!         order.ack();
//!         Ok(())
//!     }
//! }
//!
//! # fn run(js: async_nats::jetstream::Context) {
//! let topology = Topology::new().consumer(
//!     ConsumerSpec::pull("ORDERS", "orders", "order-workers").workers(8, KeySpec::SubjectToken(2)),
//! );
//! let args = SupervisorArgs::new(js, topology)
//!     .target("order-workers", Workers::new(|index| (OrderWorker, index)));
//! # }
//! ```

mod pool;
mod router;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use ractor::{Actor, ActorCell, DerivedActorRef, SpawnErr};

use crate::delivery::Delivery;
use crate::spec::KeySpec;

pub(crate) use pool::{Pool, PoolArgs, WorkerTable};
pub(crate) use router::{Leftover, Outcome, Router, Routing};

/// A key computed in code from a delivery.
pub type KeyFn = Arc<dyn Fn(&Delivery) -> String + Send + Sync>;

type SpawnWorker = Arc<
    dyn Fn(usize, ActorCell) -> BoxFuture<'static, Result<DerivedActorRef<Delivery>, SpawnErr>>
        + Send
        + Sync,
>;

/// How to start one worker of a keyed consumer: registered with the
/// supervisor under the consumer's target name
/// ([`SupervisorArgs::target`](crate::SupervisorArgs::target)). See the
/// [module docs](self).
#[derive(Clone)]
pub struct Workers {
    spawn: SpawnWorker,
    key: Option<KeyFn>,
}

impl Workers {
    /// Workers built by `build` from their index (0 to N-1): the actor and
    /// its arguments. Each is spawned linked to the consumer's worker pool,
    /// which spawns it again when it fails. Its message type takes
    /// deliveries the way a target's does (`From<Delivery>`).
    pub fn new<A, F>(build: F) -> Self
    where
        A: Actor,
        A::Msg: From<Delivery>,
        Delivery: TryFrom<A::Msg>,
        F: Fn(usize) -> (A, A::Arguments) + Send + Sync + 'static,
    {
        let build = Arc::new(build);
        Self {
            spawn: Arc::new(move |index, parent| {
                let (actor, args) = build(index);
                async move {
                    let (worker, _) = Actor::spawn_linked(None, actor, args, parent).await?;
                    Ok(worker.get_derived())
                }
                .boxed()
            }),
            key: None,
        }
    }

    /// Keys messages with a function instead of the spec's `key`.
    pub fn key_fn(mut self, key: impl Fn(&Delivery) -> String + Send + Sync + 'static) -> Self {
        self.key = Some(Arc::new(key));
        self
    }

    /// Whether a key function is given in code.
    pub(crate) fn has_key_fn(&self) -> bool {
        self.key.is_some()
    }

    pub(crate) async fn spawn(
        &self,
        index: usize,
        parent: ActorCell,
    ) -> Result<DerivedActorRef<Delivery>, SpawnErr> {
        (self.spawn)(index, parent).await
    }

    /// The key of a delivery: by the function given in code, else by the
    /// spec's key.
    pub(crate) fn keyer(&self, spec: Option<&KeySpec>) -> Keyer {
        match (&self.key, spec) {
            (Some(key), _) => Keyer::Code(key.clone()),
            (None, Some(KeySpec::SubjectToken(index))) => Keyer::SubjectToken(*index),
            (None, Some(KeySpec::Header(name))) => Keyer::Header(name.clone()),
            (None, None) => Keyer::Code(Arc::new(|_| String::new())),
        }
    }
}

impl fmt::Debug for Workers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Workers")
            .field("key_fn", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// Computes a delivery's key.
#[derive(Clone)]
pub(crate) enum Keyer {
    SubjectToken(usize),
    Header(String),
    Code(KeyFn),
}

impl Keyer {
    /// The key, borrowed from the delivery where it can be.
    pub fn key<'a>(&self, delivery: &'a Delivery) -> Cow<'a, str> {
        match self {
            Self::SubjectToken(index) => Cow::Borrowed(
                delivery
                    .subject()
                    .split('.')
                    .nth(*index)
                    .unwrap_or_default(),
            ),
            Self::Header(name) => Cow::Borrowed(
                delivery
                    .headers()
                    .and_then(|headers| headers.get(name.as_str()))
                    .map(|value| value.as_str())
                    .unwrap_or_default(),
            ),
            Self::Code(key) => Cow::Owned(key(delivery)),
        }
    }
}

/// How long after its delay a nak'ed message must be back: the ack wait,
/// or the longest backoff step, with a margin.
pub(crate) fn redelivery_bound(ack_wait: Duration, backoff: &[Duration]) -> Duration {
    let longest = backoff.iter().copied().max().unwrap_or_default();
    ack_wait.max(longest) + Duration::from_secs(1)
}
