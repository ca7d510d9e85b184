//! The one error type of the crate.
//!
//! Every fallible call, and every reply port that can carry a failure
//! (`Fetch`, `AddConsumer`, `EnsureStream`, ...), uses [`Error`]. Callers match
//! on its variants, never on its message text: each variant names what was
//! wrong and with which value.
//!
//! Errors that come back from the NATS server are classified into
//! [`ServerErrorKind`], so that "the stream does not exist" and "you may not
//! publish there" can be told apart without parsing strings.

use std::fmt;
use std::time::Duration;

use crate::mode::ConsumerMode;

/// Everything a caller of this crate can get back as a failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
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

    /// The consumer's child is not running at the moment (it is being
    /// restarted, or gave up). Retry later.
    #[error("consumer `{durable}` is not running: {reason}")]
    Unavailable {
        /// The durable consumer's name.
        durable: String,
        /// Why it is not running.
        reason: String,
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
        queued: usize,
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

    /// The consumer child is draining or stopping and takes no new work.
    #[error("consumer `{durable}` is draining and takes no new fetches")]
    Draining {
        /// The durable consumer's name.
        durable: String,
    },

    /// A payload did not decode into the expected type.
    #[error("stream sequence {stream_sequence} does not decode as {type_name}: {detail}")]
    Decode {
        /// The type it should have decoded into.
        type_name: &'static str,
        /// The message's stream sequence.
        stream_sequence: u64,
        /// What the decoder said.
        detail: String,
    },

    /// A call to the NATS server failed.
    #[error("{op}: {kind}: {detail}")]
    Server {
        /// What was being done, with the names involved (for example
        /// `create stream ORDERS`).
        op: String,
        /// The class of failure.
        kind: ServerErrorKind,
        /// What the server or the client said.
        detail: String,
    },

    /// An actor could not be reached or spawned.
    #[error("actor: {0}")]
    Actor(String),
}

/// The class of a failure reported by the NATS server or the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerErrorKind {
    /// JetStream is not enabled on the server or for the account, or not
    /// reachable in the requested domain: nothing answers on its API.
    JetStreamNotEnabled,
    /// The stream does not exist.
    StreamNotFound,
    /// The consumer does not exist.
    ConsumerNotFound,
    /// The server refused to create a consumer because one of that name
    /// exists (a create that raced another). An existing durable whose
    /// configuration conflicts with a spec is reported as
    /// [`Error::ConsumerConflict`] instead.
    ConsumerNameTaken,
    /// The user may not publish or subscribe on a subject.
    PermissionDenied,
    /// Nobody listens on the subject a request went to. (On the JetStream
    /// API this is reported as [`ServerErrorKind::JetStreamNotEnabled`].)
    NoResponders,
    /// The server did not answer in time.
    Timeout,
    /// An account limit (streams, consumers, storage, memory) was exceeded.
    LimitsExceeded,
    /// The server rejected the request as invalid.
    BadRequest,
    /// The connection failed or was closed.
    Connection,
    /// The server refused the credentials (wrong or missing user and
    /// password, token, nkey or creds file), or the client could not sign
    /// the server's challenge with them.
    AuthenticationFailed,
    /// The TLS handshake failed: the server's certificate is not trusted,
    /// the server wants a client certificate, or the two sides do not agree
    /// on TLS.
    Tls,
    /// Anything else.
    Other,
}

impl fmt::Display for ServerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::JetStreamNotEnabled => "JetStream not enabled",
            Self::StreamNotFound => "stream not found",
            Self::ConsumerNotFound => "consumer not found",
            Self::ConsumerNameTaken => "consumer name taken with another config",
            Self::PermissionDenied => "permission denied",
            Self::NoResponders => "no responders",
            Self::Timeout => "timed out",
            Self::LimitsExceeded => "account limits exceeded",
            Self::BadRequest => "bad request",
            Self::Connection => "connection failed",
            Self::AuthenticationFailed => "authentication failed",
            Self::Tls => "TLS handshake failed",
            Self::Other => "server error",
        };
        f.write_str(text)
    }
}

impl Error {
    /// Builds a [`Error::Server`].
    pub(crate) fn server(
        op: impl Into<String>,
        kind: ServerErrorKind,
        detail: impl fmt::Display,
    ) -> Self {
        Self::Server {
            op: op.into(),
            kind,
            detail: detail.to_string(),
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

impl From<ractor::SpawnErr> for Error {
    fn from(err: ractor::SpawnErr) -> Self {
        Self::Actor(err.to_string())
    }
}

impl<T> From<ractor::MessagingErr<T>> for Error {
    fn from(err: ractor::MessagingErr<T>) -> Self {
        Self::Actor(err.to_string())
    }
}

/// One field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Where the field is, for example `consumers[1].max_batch` or `batch`.
    pub field: String,
    /// The offending value, as written.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    /// Builds a field error.
    pub fn new(
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}: {}", self.field, self.value, self.reason)
    }
}

/// All the fields that failed validation, one entry per field, so that a
/// whole file can be fixed in one go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ValidationErrors {
    errors: Vec<FieldError>,
}

impl ValidationErrors {
    /// No errors yet.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn single(error: FieldError) -> Self {
        Self {
            errors: vec![error],
        }
    }

    /// Records one failed field.
    pub fn push(&mut self, error: FieldError) {
        self.errors.push(error);
    }

    /// Records one failed field from its parts.
    pub fn add(
        &mut self,
        field: impl Into<String>,
        value: impl fmt::Display,
        reason: impl Into<String>,
    ) {
        self.push(FieldError::new(field, value, reason));
    }

    /// Appends every error of `other`.
    pub fn extend(&mut self, other: ValidationErrors) {
        self.errors.extend(other.errors);
    }

    /// The failed fields, in the order they were found.
    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Whether a field of this exact name failed.
    pub fn has_field(&self, field: &str) -> bool {
        self.errors.iter().any(|e| e.field == field)
    }

    /// Whether nothing failed.
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    /// `Ok(())` when nothing failed, the errors otherwise.
    pub fn into_result(self) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(self))
        }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errors.as_slice() {
            [] => f.write_str("invalid input"),
            [one] => write!(f, "invalid {one}"),
            many => {
                write!(f, "{} invalid fields: ", many.len())?;
                for (i, e) in many.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ValidationErrors {}

/// Formats a duration the way specs write it (`"30s"`, `"250ms"`).
pub(crate) fn show_duration(d: Duration) -> String {
    humantime_serde::re::humantime::format_duration(d).to_string()
}
