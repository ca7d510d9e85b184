//! A connection to JetStream, as the supervisor and its children hold it.
//!
//! A [`Connection`] is a JetStream context together with what the crate
//! learned about the connection under it: when it was made by
//! `ractor_jetstream::connect`, the permission violations that the server
//! reports on it. The server reports a refused publish or subscription on
//! the connection, not to the request that caused it (which would only time
//! out); with these reports a JetStream API call of this crate, or a fetch,
//! fails at once with [`ServerErrorKind::PermissionDenied`](crate::ServerErrorKind::PermissionDenied).
//!
//! A plain [`async_nats::jetstream::Context`] converts into a `Connection`
//! too: everything works the same, except that a refused request is
//! reported when it times out.
//!
//! The supervisor owns its `Connection` and hands it to its children: no
//! table keyed by connection exists anywhere.

mod denials;

use std::sync::Arc;

use async_nats::jetstream;

pub(crate) use denials::{Denial, Denials};

/// A JetStream context, with the permission reports of its connection when
/// it was made by `ractor_jetstream::connect`. See the [module docs](self).
///
/// Cloning is cheap: the context and the reports are shared.
///
/// ```no_run
/// use ractor_jetstream::{Connection, ConnectionSpec, StreamSpec, ensure_stream};
///
/// # async fn run() -> Result<(), ractor_jetstream::Error> {
/// // Made by `connect`: a refused API call fails at once.
/// let connection = ractor_jetstream::connect(&ConnectionSpec::new("nats://127.0.0.1:4222")).await?;
/// ensure_stream(&connection, &StreamSpec::new("ORDERS", ["orders.>"])).await?;
///
/// // From a context made by other means: the same calls, without the reports.
/// # let client = connection.client();
/// let plain: Connection = async_nats::jetstream::new(client).into();
/// ensure_stream(&plain, &StreamSpec::new("ORDERS", ["orders.>"])).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Connection {
    jetstream: jetstream::Context,
    /// Present when the connection was made by `connect`, which listens for
    /// the server's reports.
    denials: Option<Arc<Denials>>,
    /// The JetStream API prefix of the context (async-nats keeps its own
    /// private). Used for the one request this crate sends raw: a pull
    /// that carries a pin id, which async-nats' `BatchConfig` cannot.
    api_prefix: Arc<str>,
}

/// The JetStream API prefix without a domain.
const DEFAULT_API_PREFIX: &str = "$JS.API";

impl Connection {
    /// A connection whose permission reports are collected in `denials`.
    pub(crate) fn with_denials(jetstream: jetstream::Context, denials: Arc<Denials>) -> Self {
        Self {
            jetstream,
            denials: Some(denials),
            api_prefix: DEFAULT_API_PREFIX.into(),
        }
    }

    /// The same connection, for a context whose JetStream API prefix is
    /// `prefix` (`$JS.<domain>.API` for a domain). A context made with
    /// async-nats' `api_prefix` or `domain` needs this for pinned pull
    /// consumers; `connect` sets it from `jetstream_domain`.
    pub fn with_api_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.api_prefix = prefix.into().into();
        self
    }

    /// The JetStream API prefix (`$JS.API` unless set).
    pub fn api_prefix(&self) -> &str {
        &self.api_prefix
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The NATS client under the context.
    pub fn client(&self) -> async_nats::Client {
        self.jetstream.client()
    }

    /// Whether a refused request fails at once (the connection was made by
    /// `connect`) rather than when it times out.
    pub fn reports_permissions(&self) -> bool {
        self.denials.is_some()
    }

    /// The permission reports, when the connection collects them.
    pub(crate) fn denials(&self) -> Option<&Arc<Denials>> {
        self.denials.as_ref()
    }
}

impl From<jetstream::Context> for Connection {
    /// A context made by other means: no permission reports.
    fn from(jetstream: jetstream::Context) -> Self {
        Self {
            jetstream,
            denials: None,
            api_prefix: DEFAULT_API_PREFIX.into(),
        }
    }
}

impl From<&jetstream::Context> for Connection {
    /// A context made by other means: no permission reports.
    fn from(jetstream: &jetstream::Context) -> Self {
        Self::from(jetstream.clone())
    }
}

impl From<&Connection> for Connection {
    fn from(connection: &Connection) -> Self {
        connection.clone()
    }
}
