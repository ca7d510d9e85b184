//! The one error type of the crate.
//!
//! Every fallible call, and every reply port that can carry a failure
//! (`Fetch`, `AddConsumer`, `EnsureStream`, ...), uses [`Error`]. Callers match
//! on its variants, never on its message text: each variant names what was
//! wrong and with which value.
//!
//! As in async-nats, [`Error::kind`] gives the class of a failure as a
//! plain [`ErrorKind`] to match on, and [`std::error::Error::source`] keeps
//! the async-nats or ractor error underneath, where there is one. Errors
//! that come back from the NATS server are classified further into
//! [`ServerErrorKind`], so that "the stream does not exist" and "you may not
//! publish there" can be told apart without parsing strings.

mod kind;
mod server;
mod validation;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::mode::ConsumerMode;
pub use kind::{ActorErrorKind, ErrorKind, UnavailableReason};
pub use server::ServerErrorKind;
pub use validation::{FieldError, ValidationErrors};

/// The error underneath one of ours, shared so that [`Error`] stays
/// `Clone` (a fetch's failure answers every request queued behind it).
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything a caller of this crate can get back as a failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more fields of a spec, a topology or a request failed
    /// validation. Nothing was sent to the server.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),

    /// A `Fetch` was sent to a push consumer, or a push-only request to a
    /// pull consumer.
    #[error(
        "consumer `{durable}` is a {actual} consumer; this request needs a {expected} consumer"
    )]
    WrongMode {
        /// The durable consumer the request was sent to.
        durable: String,
        /// The mode the request needs.
        expected: ConsumerMode,
        /// The mode the consumer has.
        actual: ConsumerMode,
    },

    /// A `Fetch` was sent to a pull consumer that consumes continuously
    /// (`consume = "continuous"`): its child asks for messages itself.
    #[error("consumer `{durable}` consumes continuously; it takes no fetch")]
    ConsumesContinuously {
        /// The durable consumer the fetch was sent to.
        durable: String,
    },

    /// The stream exists on the server with a configuration that the spec
    /// cannot be reconciled with, either because the fields cannot be changed
    /// on an existing stream, or because the server refused the update. The
    /// stream was left as it is.
    #[error("stream `{stream}` exists with a conflicting config ({}): {detail}", fields.join(", "))]
    StreamConflict {
        /// The stream's name.
        stream: String,
        /// The fields that differ between the spec and the server.
        fields: Vec<String>,
        /// What the server or the check said.
        detail: String,
    },

    /// The durable consumer exists on the server in the other mode: a push
    /// spec against a pull consumer, or the reverse.
    #[error(
        "consumer `{durable}` on stream `{stream}` is a {actual} consumer on the server, but the spec asks for {expected}"
    )]
    ModeMismatch {
        /// The stream's name.
        stream: String,
        /// The durable consumer's name.
        durable: String,
        /// The mode in the spec.
        expected: ConsumerMode,
        /// The mode on the server.
        actual: ConsumerMode,
    },

    /// The durable consumer exists on the server with a configuration that
    /// the spec cannot be reconciled with.
    #[error("consumer `{durable}` on stream `{stream}` exists with a conflicting config ({}): {detail}", fields.join(", "))]
    ConsumerConflict {
        /// The stream's name.
        stream: String,
        /// The durable consumer's name.
        durable: String,
        /// The fields that differ between the spec and the server.
        fields: Vec<String>,
        /// What the server or the check said.
        detail: String,
    },

    /// No consumer with this durable name is managed by the supervisor.
    #[error("no consumer named `{durable}` is managed here")]
    UnknownConsumer {
        /// The durable name that was asked for.
        durable: String,
    },

    /// A consumer spec names a target that was not registered.
    #[error("consumer `{durable}` names target `{target}`, which was not registered")]
    UnknownTarget {
        /// The durable consumer's name.
        durable: String,
        /// The target name in its spec.
        target: String,
    },

    /// A consumer with this durable name is already managed by the
    /// supervisor.
    #[error("a consumer named `{durable}` is already managed here")]
    DuplicateConsumer {
        /// The durable name.
        durable: String,
    },

    /// The consumer's child cannot serve the request at the moment: it is
    /// being restarted, it was stopped, or its target actor is not running.
    /// [`UnavailableReason`] says which; a restarting one is worth a retry.
    #[error("consumer `{durable}` is not available: {reason}")]
    Unavailable {
        /// The durable consumer's name.
        durable: String,
        /// Why it is not available.
        reason: UnavailableReason,
    },

    /// The supervisor gave up on a child: it failed more often than its
    /// [`RestartPolicy`](crate::RestartPolicy) allows. The supervisor
    /// itself fails with this error, so that its own parent can act on it
    /// (see [`Error::of_actor_failure`]).
    #[error(
        "gave up on consumer `{durable}` after {restarts} restarts within {}; last failure: {}",
        show_duration(*within),
        last_failure.as_deref().unwrap_or("none recorded")
    )]
    GaveUp {
        /// The durable consumer's name.
        durable: String,
        /// The restarts the policy allows within `within`.
        restarts: u64,
        /// The window of the restart policy.
        within: Duration,
        /// The last failure of the child, as it was reported.
        last_failure: Option<String>,
    },

    /// A fetch was cut short because its child stopped or crashed. What was
    /// in flight was nak'ed, and will be delivered again.
    #[error("fetch on `{durable}` was interrupted: {reason}")]
    FetchInterrupted {
        /// The durable consumer's name.
        durable: String,
        /// What happened to the child.
        reason: String,
    },

    /// A pull child already has [`MAX_QUEUED_FETCHES`](crate::MAX_QUEUED_FETCHES)
    /// fetches waiting; retry once one of them was answered.
    #[error("consumer `{durable}` has {queued} fetches waiting already; retry later")]
    Busy {
        /// The durable consumer's name.
        durable: String,
        /// How many fetches are waiting.
        queued: u64,
    },

    /// The server refused a pull request (for example a batch above a
    /// `max_batch` that was lowered on the server after the child bound,
    /// or a request it cannot parse). Nothing was delivered.
    #[error("the server refused a fetch on `{durable}`: {code} {description}")]
    FetchRefused {
        /// The durable consumer's name.
        durable: String,
        /// The server's status code.
        code: u16,
        /// The server's description.
        description: String,
    },

    /// An ack sent for confirmation ([`Delivery::ack_confirmed`](crate::Delivery::ack_confirmed),
    /// or any ack with `confirm_acks`) was not confirmed by the server: no
    /// reply in time, no consumer to take it (deleted meanwhile), or the
    /// child gone before it was sent. The message may be delivered again.
    #[error(
        "the ack of stream sequence {stream_sequence} on `{durable}` was not confirmed: {reason}"
    )]
    AckUnconfirmed {
        /// The durable consumer's name.
        durable: String,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// Why.
        reason: String,
    },

    /// The consumer child is draining or stopping and takes no new work.
    #[error("consumer `{durable}` is draining and takes no new fetches")]
    Draining {
        /// The durable consumer's name.
        durable: String,
    },

    /// A payload did not decode into the expected type.
    #[error("stream sequence {stream_sequence} does not decode as {type_name}: {source}")]
    Decode {
        /// The type it should have decoded into.
        type_name: &'static str,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// What the decoder said.
        source: Source,
    },

    /// A call to the NATS server failed.
    #[error("{op}: {kind}: {detail}")]
    Server {
        /// What was being done, with the names involved (for example
        /// `create stream ORDERS`).
        op: String,
        /// The class of failure.
        kind: ServerErrorKind,
        /// What the server or the client said, in one line.
        detail: String,
        /// The async-nats error, where there is one.
        #[source]
        source: Option<Source>,
    },

    /// A call or a message to an actor failed, or an actor could not be
    /// spawned.
    #[error("{op}: {kind}")]
    Actor {
        /// What was being done (for example `fetch from billing`).
        op: String,
        /// The class of failure.
        kind: ActorErrorKind,
        /// The ractor error, where there is one.
        #[source]
        source: Option<Source>,
    },
}

impl Error {
    /// The class of this error, to match on.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::WrongMode { .. } | Self::ConsumesContinuously { .. } => ErrorKind::WrongMode,
            Self::StreamConflict { .. } => ErrorKind::StreamConflict,
            Self::ModeMismatch { .. } => ErrorKind::ModeMismatch,
            Self::ConsumerConflict { .. } => ErrorKind::ConsumerConflict,
            Self::UnknownConsumer { .. } => ErrorKind::UnknownConsumer,
            Self::UnknownTarget { .. } => ErrorKind::UnknownTarget,
            Self::DuplicateConsumer { .. } => ErrorKind::DuplicateConsumer,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::GaveUp { .. } => ErrorKind::GaveUp,
            Self::FetchInterrupted { .. } => ErrorKind::FetchInterrupted,
            Self::Busy { .. } => ErrorKind::Busy,
            Self::FetchRefused { .. } => ErrorKind::FetchRefused,
            Self::Draining { .. } => ErrorKind::Draining,
            Self::AckUnconfirmed { .. } => ErrorKind::AckUnconfirmed,
            Self::Decode { .. } => ErrorKind::Decode,
            Self::Server { .. } => ErrorKind::Server,
            Self::Actor { .. } => ErrorKind::Actor,
        }
    }

    /// Builds a [`Error::Server`] from our own description of what failed.
    pub(crate) fn server(
        op: impl Into<String>,
        kind: ServerErrorKind,
        detail: impl fmt::Display,
    ) -> Self {
        Self::Server {
            op: op.into(),
            kind,
            detail: detail.to_string(),
            source: None,
        }
    }

    /// Builds a [`Error::Server`] caused by an async-nats error, which it
    /// keeps as its source.
    pub(crate) fn server_caused(
        op: impl Into<String>,
        kind: ServerErrorKind,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Server {
            op: op.into(),
            kind,
            detail: one_line_chain(&source),
            source: Some(Arc::new(source)),
        }
    }

    /// Builds a [`Error::Actor`].
    pub(crate) fn actor(op: impl Into<String>, kind: ActorErrorKind) -> Self {
        Self::Actor {
            op: op.into(),
            kind,
            source: None,
        }
    }

    /// The server error kind, when this is a [`Error::Server`].
    pub fn server_kind(&self) -> Option<ServerErrorKind> {
        match self {
            Self::Server { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// The validation failures, when this is an [`Error::Invalid`].
    pub fn validation(&self) -> Option<&ValidationErrors> {
        match self {
            Self::Invalid(errors) => Some(errors),
            _ => None,
        }
    }

    /// Whether the same request may succeed if retried later, unchanged:
    /// the child is restarting or busy, the server timed out or is not
    /// reachable right now.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { reason, .. } => reason.is_transient(),
            Self::Busy { .. } | Self::FetchInterrupted { .. } => true,
            Self::Server { kind, .. } => matches!(
                kind,
                ServerErrorKind::Timeout
                    | ServerErrorKind::Connection
                    | ServerErrorKind::NoResponders
            ),
            Self::Actor { kind, .. } => *kind == ActorErrorKind::Timeout,
            _ => false,
        }
    }

    /// This crate's error inside an actor's failure, for example the
    /// [`Error::GaveUp`] a [`JetStreamSupervisor`](crate::JetStreamSupervisor)
    /// fails with, as its parent sees it in
    /// [`SupervisionEvent::ActorFailed`](ractor::SupervisionEvent::ActorFailed).
    pub fn of_actor_failure<'a>(
        failure: &'a (dyn std::error::Error + Send + Sync + 'static),
    ) -> Option<&'a Self> {
        failure.downcast_ref::<Error>()
    }

    /// A single-field validation failure.
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self::Invalid(ValidationErrors::single(FieldError::new(
            field, value, reason,
        )))
    }
}

/// A spawn that failed in the actor's own start (`pre_start`) with this
/// crate's error is that error: a supervisor whose topology is invalid, or
/// whose server refused a stream, fails to spawn with [`Error::Invalid`] or
/// [`Error::Server`], not with an opaque [`ractor::SpawnErr`].
impl From<ractor::SpawnErr> for Error {
    fn from(err: ractor::SpawnErr) -> Self {
        match err {
            ractor::SpawnErr::StartupFailed(failure) => match failure.downcast::<Error>() {
                Ok(ours) => *ours,
                Err(other) => Self::Actor {
                    op: "spawn an actor".into(),
                    kind: ActorErrorKind::StartupFailed,
                    source: Some(Arc::from(other)),
                },
            },
            other => Self::Actor {
                op: "spawn an actor".into(),
                kind: ActorErrorKind::StartupFailed,
                source: Some(Arc::new(other)),
            },
        }
    }
}

impl<T> From<ractor::MessagingErr<T>> for Error {
    fn from(err: ractor::MessagingErr<T>) -> Self {
        Self::Actor {
            op: "send to an actor".into(),
            kind: ActorErrorKind::NotRunning,
            source: Some(Arc::new(messaging_err(err))),
        }
    }
}

/// A call through ractor (`call!`, `call_t!`, [`ractor::ActorRef::call`])
/// becomes one `Result<_, Error>`: `call_t!(...)?` works in a function that
/// returns this crate's error.
impl<T> From<ractor::RactorErr<T>> for Error {
    fn from(err: ractor::RactorErr<T>) -> Self {
        match err {
            ractor::RactorErr::Spawn(err) => err.into(),
            ractor::RactorErr::Messaging(err) => err.into(),
            ractor::RactorErr::Actor(err) => Self::Actor {
                op: "call an actor".into(),
                kind: ActorErrorKind::Failed,
                source: Some(Arc::new(err)),
            },
            ractor::RactorErr::Timeout => Self::actor("call an actor", ActorErrorKind::Timeout),
        }
    }
}

/// The same error without the message it failed to deliver, which may be
/// neither `Send` nor `'static` enough to keep.
fn messaging_err<T>(err: ractor::MessagingErr<T>) -> ractor::MessagingErr<()> {
    match err {
        ractor::MessagingErr::SendErr(_) => ractor::MessagingErr::SendErr(()),
        ractor::MessagingErr::ChannelClosed => ractor::MessagingErr::ChannelClosed,
        ractor::MessagingErr::InvalidActorType => ractor::MessagingErr::InvalidActorType,
    }
}

/// An error and its sources on one line (`a: b: c`), for a log or a
/// [`Error::Server`]'s detail.
pub(crate) fn one_line_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text.replace('\n', " ")
}

/// Formats a duration the way specs write it (`"30s"`, `"250ms"`).
pub(crate) fn show_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}
