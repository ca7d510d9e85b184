//! The supervisor's messages and the status it reports.

use std::time::Duration;

use ractor::{ActorRef, RpcReplyPort};

use super::work::Done;
use crate::consumer::{ConsumerMsg, DrainReport, FetchOutcome, ServerLag};
use crate::ensure::StreamAction;
use crate::error::Error;
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec};
use crate::target::Target;

/// Messages of the [`JetStreamSupervisor`](super::JetStreamSupervisor).
// Specs travel by value for a readable API; ractor boxes each message
// anyway, so the variants' sizes cost nothing extra.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
#[non_exhaustive]
pub enum SupervisorMsg {
    /// Make a stream exist (create, reuse, or update in place).
    EnsureStream {
        /// The stream.
        spec: StreamSpec,
        /// What was done.
        reply: RpcReplyPort<Result<StreamAction, Error>>,
    },
    /// Make a durable consumer exist and spawn its child. `target`, when
    /// given, is registered under the spec's target name first. While one
    /// `AddConsumer` of a durable is in progress, another of the same
    /// durable is answered with [`Error::DuplicateConsumer`].
    AddConsumer {
        /// The consumer.
        spec: ConsumerSpec,
        /// Its target, when not registered yet.
        target: Option<Target>,
        /// The new child.
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
    },
    /// Stop a consumer's child (after draining it for up to `drain`), and
    /// delete the durable consumer on the server when `delete` is set. The
    /// child is not restarted meanwhile; a second `RemoveConsumer` of the
    /// same durable while the first is in progress is answered with
    /// [`Error::Unavailable`].
    RemoveConsumer {
        /// The durable name.
        durable: String,
        /// Also delete the consumer on the server.
        delete: bool,
        /// How long to wait for in-flight decisions.
        drain: Duration,
        /// What the drain settled and nak'ed.
        reply: RpcReplyPort<Result<DrainReport, Error>>,
    },
    /// The running child of a durable consumer, if any.
    Lookup {
        /// The durable name.
        durable: String,
        /// The child.
        reply: RpcReplyPort<Option<ActorRef<ConsumerMsg>>>,
    },
    /// Fetch from a pull consumer; forwarded to its child with the reply
    /// port, which the child answers.
    Fetch {
        /// The durable name.
        durable: String,
        /// At most this many messages.
        batch: u64,
        /// How long the server may wait (default 5 s).
        expires: Option<Duration>,
        /// Where the outcome goes.
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    },
    /// Register (or replace) a target by name, and point every child that
    /// uses it at the new actor.
    SetTarget {
        /// The target name used in consumer specs.
        name: String,
        /// The actor.
        target: Target,
    },
    /// Every child's state.
    Status(RpcReplyPort<SupervisorStatus>),
    /// Drain every child: stop taking messages, wait up to `timeout` for
    /// decisions, nak the rest, stop the children. Children are not
    /// restarted afterwards.
    Drain {
        /// How long to wait for outstanding decisions.
        timeout: Duration,
        /// What was settled and nak'ed, over all children.
        reply: RpcReplyPort<DrainReport>,
    },
    /// What the supervisor sends itself (a restart coming due, a task's
    /// report). It cannot be built outside this crate.
    #[doc(hidden)]
    Internal(Internal),
}

/// A message the supervisor sends itself; opaque outside this crate.
#[derive(Debug)]
pub struct Internal(pub(super) InternalMsg);

/// What an [`Internal`] carries.
#[derive(Debug)]
// A task report carries its spec and reply; ractor boxes every message
// anyway, so the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum InternalMsg {
    /// A delayed restart coming due.
    RestartDue(RestartTicket),
    /// Slow work that the supervisor started in a task has finished.
    Done(Done),
}

impl SupervisorMsg {
    /// A delayed restart of `ticket`'s child coming due.
    pub(super) fn restart_due(ticket: RestartTicket) -> Self {
        Self::Internal(Internal(InternalMsg::RestartDue(ticket)))
    }

    /// A task's report.
    pub(super) fn done(done: Done) -> Self {
        Self::Internal(Internal(InternalMsg::Done(done)))
    }
}

/// Identifies one scheduled restart.
#[derive(Debug, Clone)]
pub(super) struct RestartTicket {
    pub(super) durable: String,
    pub(super) generation: u64,
}

/// The state of one child, as reported by [`SupervisorMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChildState {
    /// Running.
    Running,
    /// Failed or stopped, and waiting for its restart.
    Restarting,
    /// Stopped for good (drained, removed, or not to be restarted).
    Stopped,
}

/// One child in a [`SupervisorStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub durable: String,
    /// Push or pull.
    pub mode: ConsumerMode,
    /// Running, restarting or stopped.
    pub state: ChildState,
    /// How many times it was restarted.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_failure: Option<String>,
    /// Its lag as the server last reported it to the child, when its spec
    /// sets `info_interval` and it runs.
    pub server: Option<ServerLag>,
}

/// The reply to [`SupervisorMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SupervisorStatus {
    /// One entry per durable consumer, sorted by durable name.
    pub children: Vec<ChildStatus>,
    /// Whether the supervisor was drained.
    pub drained: bool,
}

impl SupervisorStatus {
    /// The entry of one durable consumer.
    pub fn child(&self, durable: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.durable == durable)
    }
}
