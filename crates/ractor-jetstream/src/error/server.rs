//! The classes of failure the NATS server and client report.

use std::fmt;

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
    /// [`Error::ConsumerConflict`](super::Error::ConsumerConflict) instead.
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
