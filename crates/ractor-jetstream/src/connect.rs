//! Connecting to NATS: servers, credentials and TLS, as plain data.
//!
//! A [`ConnectionSpec`] says where the servers are and how to prove who you
//! are: a user and password, a token, an nkey seed, or a `.creds` file (a
//! user JWT and its seed), optionally over TLS with your own root CA and a
//! client certificate. It loads from the `[connection]` table of a topology
//! file, or is built in code, and [`connect`] turns it into a
//! [`Connection`]: a JetStream context with the spec's API timeout and
//! domain, ready for [`SupervisorArgs::new`](crate::SupervisorArgs::new).
//!
//! ```toml
//! [connection]
//! servers = ["tls://nats.internal:4222"]
//! name = "billing"
//! creds_file = "/etc/billing/billing.creds"
//! root_ca_file = "/etc/billing/ca.pem"
//! connection_timeout = "5s"
//! ```
//!
//! ```no_run
//! use ractor_jetstream::{ConnectionSpec, connect};
//!
//! # async fn run() -> Result<(), ractor_jetstream::Error> {
//! let spec = ConnectionSpec {
//!     user: Some("billing".into()),
//!     password: std::env::var("NATS_PASSWORD").ok().map(Into::into),
//!     root_ca_file: Some("/etc/billing/ca.pem".into()),
//!     tls_required: true,
//!     ..ConnectionSpec::new("nats://nats.internal:4222")
//! };
//! let connection = connect(&spec).await?;
//! let js = connection.jetstream();
//! # drop(js); Ok(()) }
//! ```
//!
//! # Failing fast
//!
//! The first connection is tried once per server, each attempt bounded by
//! `connection_timeout`: wrong credentials come back as
//! [`ServerErrorKind::AuthenticationFailed`] within one round trip, an
//! untrusted certificate as [`ServerErrorKind::Tls`], a server that is not
//! there as [`ServerErrorKind::Connection`] or [`ServerErrorKind::Timeout`].
//! Every failure is an [`Error::Server`] whose `op` names the servers (never
//! a credential). Once connected, a lost connection is re-established in the
//! background, at most `max_reconnects` times in a row (no limit when
//! unset); a server that then rejects the credentials is logged at `error`
//! level on every attempt.
//!
//! # Permissions
//!
//! When the server refuses a publish or a subscription, it says so on the
//! connection, not to the request that caused it, which would just time out.
//! A [`Connection`] made by [`connect`] listens for these reports, so a
//! JetStream API call of this crate through it that the account may not
//! make fails at once with [`ServerErrorKind::PermissionDenied`], naming the
//! subject, instead of waiting for its timeout. A JetStream context made
//! otherwise still gets [`ServerErrorKind::Timeout`].
//!
//! # Secrets
//!
//! `password`, `token` and `nkey_seed` are [`secrecy::SecretString`]s: they
//! never appear in logs, in error messages, or in the `Debug` output of a
//! [`ConnectionSpec`] (or of a [`crate::Topology`] holding one), which shows
//! `[REDACTED]`; so are user names and passwords written into a server URL
//! ([`ServerUrl`]). Serializing a spec (for example with
//! [`crate::Topology::to_toml_string`]) leaves the three secrets out: a file
//! written by the program never holds one. Prefer `creds_file` or
//! `nkey_seed_file` to secrets inline in a topology file.
//!
//! [`Error::Server`]: crate::Error::Server
//! [`ServerErrorKind::AuthenticationFailed`]: crate::ServerErrorKind::AuthenticationFailed
//! [`ServerErrorKind::Tls`]: crate::ServerErrorKind::Tls
//! [`ServerErrorKind::Connection`]: crate::ServerErrorKind::Connection
//! [`ServerErrorKind::Timeout`]: crate::ServerErrorKind::Timeout
//! [`ServerErrorKind::PermissionDenied`]: crate::ServerErrorKind::PermissionDenied
//! [`Connection`]: crate::Connection

mod dial;
mod server_url;
mod spec;
mod validate;

pub use dial::connect;
pub use server_url::ServerUrl;
pub use spec::{ConnectionSpec, DEFAULT_CONNECTION_TIMEOUT, DEFAULT_JETSTREAM_TIMEOUT};
