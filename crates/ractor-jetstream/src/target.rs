//! Where a consumer's deliveries go: one actor, or the actor found under a
//! name the way ractor names actors.
//!
//! A [`Target::actor`] is that actor for good: when it is restarted, its
//! successor is a new actor, and the consumer needs a `SetTarget` to reach
//! it. A [`Target::registered`] or [`Target::group`] target is looked up
//! again whenever the actor in hand has stopped, so a target restarted by
//! its own supervisor under the same registered name (or joining the same
//! process group) gets the deliveries without any application code:
//!
//! ```no_run
//! use ractor_jetstream::{Delivery, SupervisorArgs, Target, Topology};
//!
//! // The target's own message type; deliveries reach it through `From`.
//! enum WorkerMsg {
//!     Delivery(Delivery),
//! }
//! impl From<Delivery> for WorkerMsg {
//!     fn from(delivery: Delivery) -> Self {
//!         Self::Delivery(delivery)
//!     }
//! }
//! impl TryFrom<WorkerMsg> for Delivery {
//!     type Error = ();
//!     fn try_from(msg: WorkerMsg) -> Result<Self, ()> {
//!         match msg {
//!             WorkerMsg::Delivery(delivery) => Ok(delivery),
//!         }
//!     }
//! }
//!
//! # fn run(js: async_nats::jetstream::Context, topology: Topology) {
//! // Whatever actor is registered as "billing-worker" when a delivery goes out.
//! let args = SupervisorArgs::new(js, topology)
//!     .target("billing-worker", Target::registered::<WorkerMsg>("billing-worker"));
//! # }
//! ```
//!
//! A message that finds no running target is handled as before (see the
//! consumer docs): nak'ed or kept for the next target, never lost.
//!
//! A batch target ([`Target::batches`], [`Target::registered_batches`],
//! [`Target::group_batches`]) gets [`Deliveries`]: what the child has
//! ready at one moment, in one actor message, each delivery still settled
//! on its own.

use std::fmt;
use std::sync::Arc;

use ractor::{ActorId, ActorRef, ActorStatus, DerivedActorRef, Message};

use crate::delivery::{Deliveries, Delivery};
use crate::keyed::Workers;

/// Where a consumer's deliveries go. Built from an actor
/// ([`Target::actor`], or `.into()` from a [`DerivedActorRef<Delivery>`]),
/// a registered name ([`Target::registered`]) or a process group
/// ([`Target::group`]).
#[derive(Clone)]
pub struct Target {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Actor(Recipient),
    /// Keyed workers, started by the child (see [`Workers`]).
    Workers(Workers),
    Lookup {
        /// What is looked up, for logs and `Debug`.
        label: String,
        resolve: Arc<dyn Fn() -> Option<Recipient> + Send + Sync>,
    },
}

/// The actor a child hands its deliveries to: one message per delivery,
/// or one per batch.
#[derive(Clone)]
pub(crate) enum Recipient {
    One(DerivedActorRef<Delivery>),
    Batches(DerivedActorRef<Deliveries>),
}

impl Recipient {
    pub fn id(&self) -> ActorId {
        match self {
            Recipient::One(actor) => actor.get_id(),
            Recipient::Batches(actor) => actor.get_id(),
        }
    }

    fn status(&self) -> ActorStatus {
        match self {
            Recipient::One(actor) => actor.get_status(),
            Recipient::Batches(actor) => actor.get_status(),
        }
    }
}

impl Target {
    /// This actor, and no other: a successor after a restart needs a
    /// `SetTarget`.
    pub fn actor(actor: DerivedActorRef<Delivery>) -> Self {
        Self {
            kind: Kind::Actor(Recipient::One(actor)),
        }
    }

    /// This actor, and no other, taking [`Deliveries`]: what the child has
    /// ready at one moment, in one message (see [`Deliveries`]). A
    /// successor after a restart needs a `SetTarget`. (There is no `From`
    /// for it: `get_derived().into()` would no longer know which kind of
    /// target it makes.)
    pub fn batches(actor: DerivedActorRef<Deliveries>) -> Self {
        Self {
            kind: Kind::Actor(Recipient::Batches(actor)),
        }
    }

    /// The actor registered in ractor under `name`, whose message type is
    /// `M`, taking [`Deliveries`]. Looked up when a child starts and again
    /// whenever the actor in hand has stopped.
    pub fn registered_batches<M>(name: impl Into<String>) -> Self
    where
        M: Message + From<Deliveries>,
        Deliveries: TryFrom<M>,
    {
        let name = name.into();
        let key = name.clone();
        Self::lookup(format!("registered `{name}` (batches)"), move || {
            ActorRef::<M>::where_is(key.clone())
                .map(|actor| Recipient::Batches(actor.get_derived()))
        })
    }

    /// The actor registered in ractor under `name`, whose message type is
    /// `M`. Looked up when a child starts and again whenever the actor in
    /// hand has stopped.
    pub fn registered<M>(name: impl Into<String>) -> Self
    where
        M: Message + From<Delivery>,
        Delivery: TryFrom<M>,
    {
        let name = name.into();
        let key = name.clone();
        Self::lookup(format!("registered `{name}`"), move || {
            ActorRef::<M>::where_is(key.clone()).map(|actor| Recipient::One(actor.get_derived()))
        })
    }

    /// A running member of the ractor process group `group`, whose message
    /// type is `M`. Every delivery of one child goes to the same member
    /// until that member stops; then another running member is chosen.
    pub fn group<M>(group: impl Into<String>) -> Self
    where
        M: Message + From<Delivery>,
        Delivery: TryFrom<M>,
    {
        let group = group.into();
        let key = group.clone();
        Self::lookup(format!("process group `{group}`"), move || {
            running_member::<M>(&key).map(|actor| Recipient::One(actor.get_derived()))
        })
    }

    /// A running member of the ractor process group `group`, whose message
    /// type is `M`, taking [`Deliveries`]; chosen as [`Target::group`]
    /// chooses.
    pub fn group_batches<M>(group: impl Into<String>) -> Self
    where
        M: Message + From<Deliveries>,
        Deliveries: TryFrom<M>,
    {
        let group = group.into();
        let key = group.clone();
        Self::lookup(format!("process group `{group}` (batches)"), move || {
            running_member::<M>(&key).map(|actor| Recipient::Batches(actor.get_derived()))
        })
    }

    fn lookup(
        label: String,
        resolve: impl Fn() -> Option<Recipient> + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: Kind::Lookup {
                label,
                resolve: Arc::new(resolve),
            },
        }
    }

    /// The actor now, if one is found and it takes deliveries one at a
    /// time (`None` for [`Workers`], which the consumer child starts
    /// itself, and for a batch target).
    pub fn resolve(&self) -> Option<DerivedActorRef<Delivery>> {
        match self.recipient()? {
            Recipient::One(actor) => Some(actor),
            Recipient::Batches(_) => None,
        }
    }

    /// The actor now, if one is found.
    pub(crate) fn recipient(&self) -> Option<Recipient> {
        match &self.kind {
            Kind::Actor(actor) => Some(actor.clone()),
            Kind::Lookup { resolve, .. } => resolve(),
            Kind::Workers(_) => None,
        }
    }

    /// The keyed workers, when this target is [`Workers`].
    pub fn workers(&self) -> Option<&Workers> {
        match &self.kind {
            Kind::Workers(workers) => Some(workers),
            _ => None,
        }
    }
}

impl From<Workers> for Target {
    fn from(workers: Workers) -> Self {
        Self {
            kind: Kind::Workers(workers),
        }
    }
}

impl From<DerivedActorRef<Delivery>> for Target {
    fn from(actor: DerivedActorRef<Delivery>) -> Self {
        Self::actor(actor)
    }
}

impl From<ActorRef<Delivery>> for Target {
    fn from(actor: ActorRef<Delivery>) -> Self {
        Self::actor(actor.get_derived())
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Actor(Recipient::One(actor)) => write!(f, "Target::actor({})", actor.get_id()),
            Kind::Actor(Recipient::Batches(actor)) => {
                write!(f, "Target::batches({})", actor.get_id())
            }
            Kind::Lookup { label, .. } => write!(f, "Target({label})"),
            Kind::Workers(_) => write!(f, "Target::workers"),
        }
    }
}

/// A running member of the process group `group`, as an actor of message
/// type `M`.
fn running_member<M: Message>(group: &String) -> Option<ActorRef<M>> {
    ractor::pg::get_members(group)
        .into_iter()
        .map(ActorRef::<M>::from)
        .find(|actor| running(actor.get_status()))
}

/// Whether a target can take deliveries.
pub(crate) fn is_running(target: &Recipient) -> bool {
    running(target.status())
}

fn running(status: ActorStatus) -> bool {
    crate::status::takes_messages(status)
}

/// A worker's target: the actor in hand, looked up again when it stopped.
pub(crate) struct TargetSlot {
    target: Target,
    current: Option<Recipient>,
}

impl TargetSlot {
    pub fn new(target: Target) -> Self {
        let current = target.recipient();
        Self { target, current }
    }

    /// Points at another target from now on.
    pub fn set(&mut self, target: Target) {
        *self = Self::new(target);
    }

    /// The actor to deliver to: the one in hand while it runs; otherwise
    /// the one the target names now, if any. `None` when no actor was ever
    /// found (a name nobody registered yet).
    pub fn get(&mut self) -> Option<&Recipient> {
        let stale = self
            .current
            .as_ref()
            .is_none_or(|actor| !running(actor.status()));
        if stale && let Some(found) = self.target.recipient() {
            self.current = Some(found);
        }
        self.current.as_ref()
    }
}
