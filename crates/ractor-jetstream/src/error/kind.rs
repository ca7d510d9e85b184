//! The plain classes of [`Error`](super::Error) that callers match on.

use std::fmt;

/// The class of an [`Error`](super::Error), as [`Error::kind`](super::Error::kind)
/// reports it: one per variant, without the details, so that a caller can
/// match on it and keep working when variants gain fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A spec, a topology or a request failed validation; nothing was sent.
    Invalid,
    /// A request for the other mode (a fetch to a push consumer).
    WrongMode,
    /// The stream exists with a configuration the spec cannot be
    /// reconciled with.
    StreamConflict,
    /// The durable exists on the server in the other mode.
    ModeMismatch,
    /// The durable exists with a configuration the spec cannot be
    /// reconciled with.
    ConsumerConflict,
    /// No consumer of that durable name is managed here.
    UnknownConsumer,
    /// A consumer names a target that is not registered.
    UnknownTarget,
    /// A consumer of that durable name is managed here already.
    DuplicateConsumer,
    /// The child cannot serve the request now (restarting, stopped, target
    /// not running).
    Unavailable,
    /// The supervisor gave up restarting a child.
    GaveUp,
    /// A fetch was cut short because its child stopped or crashed.
    FetchInterrupted,
    /// Too many fetches are waiting for one child.
    Busy,
    /// The server refused a pull request.
    FetchRefused,
    /// The child is draining and takes no new fetches.
    Draining,
    /// An ack was not confirmed by the server.
    AckUnconfirmed,
    /// A payload did not decode into the expected type.
    Decode,
    /// A call to the NATS server failed; see
    /// [`Error::server_kind`](super::Error::server_kind).
    Server,
    /// A call or a message to an actor failed.
    Actor,
}

/// Why a consumer's child cannot serve a request, in an
/// [`Error::Unavailable`](super::Error::Unavailable).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnavailableReason {
    /// The child failed (or was stopped) and is waiting for its restart.
    Restarting {
        /// Its last failure, as it was reported.
        last_failure: Option<String>,
    },
    /// The child was stopped for good (drained, removed, or not to be
    /// restarted), or stopped just as the request came.
    Stopped,
    /// The child's target actor is not running, so nothing would reach it.
    TargetNotRunning,
    /// The consumer is being removed.
    BeingRemoved,
    /// The supervisor was drained while the consumer was being added.
    Drained,
}

impl UnavailableReason {
    /// Whether the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Restarting { .. } | Self::TargetNotRunning)
    }
}

impl fmt::Display for UnavailableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Restarting {
                last_failure: Some(failure),
            } => write!(f, "restarting after: {failure}"),
            Self::Restarting { last_failure: None } => f.write_str("restarting"),
            Self::Stopped => f.write_str("stopped"),
            Self::TargetNotRunning => f.write_str("its target actor is not running"),
            Self::BeingRemoved => f.write_str("being removed"),
            Self::Drained => {
                f.write_str("the supervisor was drained while the consumer was being added")
            }
        }
    }
}

/// The class of an [`Error::Actor`](super::Error::Actor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ActorErrorKind {
    /// The actor is not running (stopped, or never started).
    NotRunning,
    /// The actor did not answer in time.
    Timeout,
    /// The actor failed while handling the call.
    Failed,
    /// The actor could not be spawned.
    StartupFailed,
}

impl fmt::Display for ActorErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotRunning => "the actor is not running",
            Self::Timeout => "the actor did not answer in time",
            Self::Failed => "the actor failed while handling the call",
            Self::StartupFailed => "the actor could not be started",
        })
    }
}
