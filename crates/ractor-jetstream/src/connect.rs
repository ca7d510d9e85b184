//! Connecting to NATS: servers, credentials and TLS, as plain data.
//!
//! A [`ConnectionSpec`] says where the servers are and how to prove who you
//! are: a user and password, a token, an nkey seed, or a `.creds` file (a
//! user JWT and its seed), optionally over TLS with your own root CA and a
//! client certificate. It loads from the `[connection]` table of a topology
//! file, or is built in code, and [`connect`] turns it into an
//! [`async_nats::Client`]:
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
//!     password: std::env::var("NATS_PASSWORD").ok(),
//!     root_ca_file: Some("/etc/billing/ca.pem".into()),
//!     tls_required: true,
//!     ..ConnectionSpec::new("nats://nats.internal:4222")
//! };
//! let client = connect(&spec).await?;
//! // Or straight to a JetStream context with the spec's API timeout:
//! let js = spec.jetstream().await?;
//! # drop((client, js)); Ok(()) }
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
//! A connection made by [`connect`] listens for these reports, so a
//! JetStream API call of this crate that the account may not make fails at
//! once with [`ServerErrorKind::PermissionDenied`], naming the subject,
//! instead of waiting for its timeout. Connections made otherwise still get
//! [`ServerErrorKind::Timeout`].
//!
//! # Secrets
//!
//! `password`, `token` and `nkey_seed` never appear in logs, in error
//! messages, or in the `Debug` output of a [`ConnectionSpec`] (or of a
//! [`crate::Topology`] holding one): they print as `<redacted>`, and so do
//! user names and passwords written into a server URL. Serializing a spec
//! (for example with [`crate::Topology::to_toml_string`]) writes them back
//! as they are: it is the user's own file. Prefer `creds_file` or
//! `nkey_seed_file` to secrets inline in a topology file.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError, Statistics};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ServerErrorKind, ValidationErrors, show_duration};

/// How long one connection attempt may take when the spec does not say.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JetStream API request may take when the spec does not say.
pub const DEFAULT_JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// What `Debug` prints instead of a secret.
const REDACTED: &str = "<redacted>";

/// How to reach NATS and prove who you are. See the [module docs](self).
///
/// At most one way to authenticate may be set: `user` with `password`,
/// `token`, `nkey_seed` (or `nkey_seed_file`), or `creds_file`. File paths
/// are read when connecting, relative to the process's working directory.
/// Its `Debug` output redacts every secret; its serialized form keeps them.
#[derive(Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); at least one.
    /// A URL may carry `user:password@`, which is redacted when printed.
    #[serde(default)]
    pub servers: Vec<String>,
    /// The connection's name, shown by the server's monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// User name, with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password, with `user`. Secret: never logged or printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Authentication token. Secret: never logged or printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A user nkey seed (`SU...`). Secret: never logged or printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<String>,
    /// A file holding a user nkey seed, read when connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (a user JWT and its nkey seed), read when connecting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// Refuse to talk to a server without TLS.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_required: bool,
    /// PEM file of the CA certificates that the server's certificate must
    /// chain to (in addition to the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_ca_file: Option<PathBuf>,
    /// PEM file of the client certificate, for servers that verify clients;
    /// with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key; with
    /// `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// How long one connection attempt may take (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_timeout: Option<Duration>,
    /// How long a JetStream API request may take, for the context made by
    /// [`ConnectionSpec::jetstream`] (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub jetstream_timeout: Option<Duration>,
    /// The JetStream domain, for [`ConnectionSpec::jetstream`] (unset: the
    /// account's own JetStream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream_domain: Option<String>,
    /// How many reconnect attempts in a row before giving up, once
    /// connected (unset: no limit). The first connection is never retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_reconnects: Option<usize>,
    /// How often the client pings the server (default 60 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ping_interval: Option<Duration>,
    /// Prefix of the reply subjects (default `_INBOX`), for accounts that
    /// may only subscribe below a prefix of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbox_prefix: Option<String>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Prints `<redacted>` in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

fn redacted<T>(secret: &Option<T>) -> Option<Redacted> {
    secret.as_ref().map(|_| Redacted)
}

impl fmt::Debug for ConnectionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        f.debug_struct("ConnectionSpec")
            .field("servers", &servers)
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &redacted(&self.password))
            .field("token", &redacted(&self.token))
            .field("nkey_seed", &redacted(&self.nkey_seed))
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("creds_file", &self.creds_file)
            .field("tls_required", &self.tls_required)
            .field("root_ca_file", &self.root_ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("connection_timeout", &self.connection_timeout)
            .field("jetstream_timeout", &self.jetstream_timeout)
            .field("jetstream_domain", &self.jetstream_domain)
            .field("max_reconnects", &self.max_reconnects)
            .field("ping_interval", &self.ping_interval)
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

/// The ways to authenticate, for the "only one of them" check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthMethod {
    UserPassword,
    Token,
    Nkey,
    Creds,
}

impl AuthMethod {
    fn describe(self) -> &'static str {
        match self {
            Self::UserPassword => "user/password",
            Self::Token => "token",
            Self::Nkey => "nkey",
            Self::Creds => "creds file",
        }
    }
}

impl ConnectionSpec {
    /// A spec for one server, with no credentials and default settings.
    pub fn new(server: impl Into<String>) -> Self {
        Self {
            servers: vec![server.into()],
            ..Default::default()
        }
    }

    /// The connection timeout in force: the spec's, or
    /// [`DEFAULT_CONNECTION_TIMEOUT`].
    pub fn effective_connection_timeout(&self) -> Duration {
        self.connection_timeout
            .unwrap_or(DEFAULT_CONNECTION_TIMEOUT)
    }

    /// The JetStream API timeout in force: the spec's, or
    /// [`DEFAULT_JETSTREAM_TIMEOUT`].
    pub fn effective_jetstream_timeout(&self) -> Duration {
        self.jetstream_timeout.unwrap_or(DEFAULT_JETSTREAM_TIMEOUT)
    }

    /// The servers, with any credentials in their URLs redacted, joined
    /// by `, `: what error messages and logs name.
    pub fn servers_label(&self) -> String {
        if self.servers.is_empty() {
            return "(no server)".into();
        }
        let urls: Vec<String> = self.servers.iter().map(|s| redact_url(s)).collect();
        urls.join(", ")
    }

    /// The ways to authenticate that are set, each with the field that
    /// sets it.
    fn auth_methods(&self) -> Vec<(AuthMethod, &'static str)> {
        let mut methods = Vec::new();
        if self.user.is_some() || self.password.is_some() {
            let field = if self.user.is_some() {
                "user"
            } else {
                "password"
            };
            methods.push((AuthMethod::UserPassword, field));
        }
        if self.token.is_some() {
            methods.push((AuthMethod::Token, "token"));
        }
        if self.nkey_seed.is_some() {
            methods.push((AuthMethod::Nkey, "nkey_seed"));
        } else if self.nkey_seed_file.is_some() {
            methods.push((AuthMethod::Nkey, "nkey_seed_file"));
        }
        if self.creds_file.is_some() {
            methods.push((AuthMethod::Creds, "creds_file"));
        }
        methods
    }

    /// How this spec authenticates, for logs: `none`, `user/password`,
    /// `token`, `nkey` or `creds file`. Never a secret.
    pub fn auth_label(&self) -> &'static str {
        self.auth_methods()
            .first()
            .map_or("none", |(method, _)| method.describe())
    }

    /// Checks every field; `at` prefixes the field names (for example
    /// `connection`). Secrets are never echoed in the errors.
    pub fn validate_at(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| {
            if at.is_empty() {
                name.to_string()
            } else {
                format!("{at}.{name}")
            }
        };
        if self.servers.is_empty() {
            errors.add(field("servers"), "[]", "at least one server URL is needed");
        }
        for (i, server) in self.servers.iter().enumerate() {
            if let Err(err) = ServerAddr::from_str(server) {
                errors.add(
                    field(&format!("servers[{i}]")),
                    format!("{:?}", redact_url(server)),
                    format!("not a NATS server URL: {err}"),
                );
            }
        }
        if let Some(name) = &self.name
            && name.trim().is_empty()
        {
            errors.add(field("name"), "\"\"", "must not be empty when set");
        }
        match (&self.user, &self.password) {
            (Some(_), None) => errors.add(
                field("user"),
                format!("{:?}", self.user.as_deref().unwrap_or_default()),
                "a user needs a `password` as well",
            ),
            (None, Some(_)) => errors.add(
                field("password"),
                REDACTED,
                "a password needs a `user` as well",
            ),
            _ => {}
        }
        if let Some(user) = &self.user
            && user.is_empty()
        {
            errors.add(field("user"), "\"\"", "must not be empty when set");
        }
        if let Some(token) = &self.token
            && token.is_empty()
        {
            errors.add(field("token"), "\"\"", "must not be empty when set");
        }
        let methods = self.auth_methods();
        if let Some(((first, first_field), rest)) = methods.split_first() {
            for (method, name) in rest {
                errors.add(
                    field(name),
                    value_for(name),
                    format!(
                        "only one way to authenticate may be set; `{first_field}` sets {} already, this sets {}",
                        first.describe(),
                        method.describe()
                    ),
                );
            }
        }
        if let Some(seed) = &self.nkey_seed {
            match nkeys::KeyPair::from_seed(seed) {
                Ok(pair) if pair.key_pair_type() == nkeys::KeyPairType::User => {}
                Ok(_) => errors.add(
                    field("nkey_seed"),
                    REDACTED,
                    "not a user nkey seed (a user seed starts with `SU`)",
                ),
                Err(_) => errors.add(
                    field("nkey_seed"),
                    REDACTED,
                    "not a valid nkey seed (a user seed starts with `SU`)",
                ),
            }
            if self.nkey_seed_file.is_some() {
                errors.add(
                    field("nkey_seed_file"),
                    path_value(self.nkey_seed_file.as_deref()),
                    "set either `nkey_seed` or `nkey_seed_file`, not both",
                );
            }
        }
        for (name, path) in [
            ("nkey_seed_file", &self.nkey_seed_file),
            ("creds_file", &self.creds_file),
            ("root_ca_file", &self.root_ca_file),
            ("client_cert_file", &self.client_cert_file),
            ("client_key_file", &self.client_key_file),
        ] {
            if let Some(path) = path
                && !path.is_file()
            {
                let reason = if path.exists() {
                    "not a regular file"
                } else {
                    "no such file"
                };
                errors.add(field(name), path_value(Some(path)), reason);
            }
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => errors.add(
                field("client_cert_file"),
                path_value(self.client_cert_file.as_deref()),
                "a client certificate needs `client_key_file` as well",
            ),
            (None, Some(_)) => errors.add(
                field("client_key_file"),
                path_value(self.client_key_file.as_deref()),
                "a client key needs `client_cert_file` as well",
            ),
            _ => {}
        }
        for (name, value) in [
            ("connection_timeout", self.connection_timeout),
            ("jetstream_timeout", self.jetstream_timeout),
            ("ping_interval", self.ping_interval),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                errors.add(field(name), "0s", "must be longer than zero");
            }
        }
        if self.max_reconnects == Some(0) {
            errors.add(
                field("max_reconnects"),
                0,
                "must be at least 1; leave it out for no limit",
            );
        }
        for (name, value) in [
            ("jetstream_domain", &self.jetstream_domain),
            ("inbox_prefix", &self.inbox_prefix),
        ] {
            if let Some(value) = value
                && (value.is_empty()
                    || value
                        .chars()
                        .any(|c| c.is_whitespace() || matches!(c, '*' | '>')))
            {
                errors.add(
                    field(name),
                    format!("{value:?}"),
                    "must be non-empty, without whitespace, `*` or `>`",
                );
            }
        }
    }

    /// Checks every field; see [`ConnectionSpec::validate_at`].
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        self.validate_at("", &mut errors);
        errors.into_result()
    }

    /// Validates the spec and connects; see [`connect`].
    pub async fn connect(&self) -> Result<async_nats::Client, Error> {
        connect(self).await
    }

    /// Connects, and returns a JetStream context with the spec's
    /// `jetstream_timeout` and `jetstream_domain`.
    pub async fn jetstream(&self) -> Result<jetstream::Context, Error> {
        let client = connect(self).await?;
        Ok(self.jetstream_context(client))
    }

    /// A JetStream context on `client` with the spec's `jetstream_timeout`
    /// and `jetstream_domain`.
    pub fn jetstream_context(&self, client: async_nats::Client) -> jetstream::Context {
        let timeout = self.effective_jetstream_timeout();
        match &self.jetstream_domain {
            Some(domain) => jetstream::ContextBuilder::new()
                .domain(domain)
                .timeout(timeout)
                .build(client),
            None => jetstream::ContextBuilder::new()
                .timeout(timeout)
                .build(client),
        }
    }

    /// The async-nats options for this spec. Reads the nkey seed and creds
    /// files.
    async fn options(&self, denials: Arc<Denials>) -> Result<ConnectOptions, Error> {
        let mut options = ConnectOptions::new()
            .connection_timeout(self.effective_connection_timeout())
            .max_reconnects(self.max_reconnects)
            .require_tls(self.tls_required);
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.nkey_seed_file {
            let text = read_file("connection.nkey_seed_file", path).await?;
            let seed = text.trim();
            if !matches!(nkeys::KeyPair::from_seed(seed), Ok(pair) if pair.key_pair_type() == nkeys::KeyPairType::User)
            {
                return Err(Error::invalid(
                    "connection.nkey_seed_file",
                    path.display(),
                    "the file does not hold a user nkey seed (a user seed starts with `SU`)",
                ));
            }
            options = options.nkey(seed.to_string());
        }
        if let Some(path) = &self.creds_file {
            let text = read_file("connection.creds_file", path).await?;
            options = options.credentials(&text).map_err(|err| {
                Error::invalid(
                    "connection.creds_file",
                    path.display(),
                    format!("not a valid .creds file: {err}"),
                )
            })?;
        }
        if let Some(path) = &self.root_ca_file {
            options = options.add_root_certificates(path.clone());
        }
        if let (Some(cert), Some(key)) = (&self.client_cert_file, &self.client_key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(interval) = self.ping_interval {
            options = options.ping_interval(interval);
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        let servers = self.servers_label();
        options = options.event_callback(move |event| {
            denials.observe(&event);
            log_event(&servers, &event);
            async {}
        });
        Ok(options)
    }
}

/// Validates the spec and connects to the first server that answers.
///
/// The first connection is tried once per server, each attempt bounded by
/// the spec's `connection_timeout`; nothing is retried in the background.
/// Failures are [`Error::Invalid`] for a bad spec or an unreadable file,
/// and otherwise [`Error::Server`] with
/// [`ServerErrorKind::AuthenticationFailed`] (the server refused the
/// credentials), [`ServerErrorKind::Tls`] (handshake failed, certificate
/// not trusted), [`ServerErrorKind::Timeout`] or
/// [`ServerErrorKind::Connection`]. See the [module docs](self).
pub async fn connect(spec: &ConnectionSpec) -> Result<async_nats::Client, Error> {
    let mut errors = ValidationErrors::new();
    spec.validate_at("connection", &mut errors);
    errors.into_result()?;
    let servers: Vec<ServerAddr> = spec
        .servers
        .iter()
        .map(|s| ServerAddr::from_str(s))
        .collect::<Result<_, _>>()
        .map_err(|err| {
            Error::invalid("connection.servers", spec.servers_label(), err.to_string())
        })?;
    let op = format!("connect to {}", spec.servers_label());
    let denials = Arc::new(Denials::new(
        spec.inbox_prefix.clone().unwrap_or_else(|| "_INBOX".into()),
    ));
    let options = spec.options(denials.clone()).await?;
    tracing::debug!(
        servers = %spec.servers_label(),
        auth = spec.auth_label(),
        tls_required = spec.tls_required,
        connection_timeout = %show_duration(spec.effective_connection_timeout()),
        "connecting to NATS"
    );
    // Each server gets one attempt bounded by the connection timeout; the
    // outer bound only guards against a stall outside those attempts.
    let attempts = u32::try_from(servers.len()).unwrap_or(u32::MAX);
    let bound = spec
        .effective_connection_timeout()
        .saturating_mul(attempts.saturating_add(1));
    let client = match tokio::time::timeout(bound, options.connect(servers)).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => {
            let err = connect_error(&op, &err);
            tracing::warn!(servers = %spec.servers_label(), error = %err, "could not connect to NATS");
            return Err(err);
        }
        Err(_) => {
            return Err(Error::server(
                op,
                ServerErrorKind::Timeout,
                format!("no server answered within {}", show_duration(bound)),
            ));
        }
    };
    register(&client, denials);
    tracing::info!(
        servers = %spec.servers_label(),
        auth = spec.auth_label(),
        "connected to NATS"
    );
    Ok(client)
}

/// Connects and returns a JetStream context; see
/// [`ConnectionSpec::jetstream`].
pub async fn connect_jetstream(spec: &ConnectionSpec) -> Result<jetstream::Context, Error> {
    spec.jetstream().await
}

async fn read_file(field: &str, path: &Path) -> Result<String, Error> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|err| Error::invalid(field, path.display(), format!("cannot read: {err}")))
}

/// What a validation error shows as the value of an auth field.
fn value_for(field: &str) -> String {
    match field {
        "password" | "token" | "nkey_seed" => REDACTED.into(),
        _ => "(set)".into(),
    }
}

fn path_value(path: Option<&Path>) -> String {
    path.map_or_else(String::new, |p| format!("{:?}", p.display().to_string()))
}

/// Classifies a failed first connection.
fn connect_error(op: &str, err: &async_nats::ConnectError) -> Error {
    let kind = match err.kind() {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
            ServerErrorKind::AuthenticationFailed
        }
        ConnectErrorKind::Tls => ServerErrorKind::Tls,
        ConnectErrorKind::TimedOut => ServerErrorKind::Timeout,
        ConnectErrorKind::ServerParse => ServerErrorKind::BadRequest,
        // async-nats reports a rejected certificate or a refused handshake
        // as an I/O error; the rustls error inside tells them apart.
        ConnectErrorKind::Io if caused_by_tls(err) => ServerErrorKind::Tls,
        ConnectErrorKind::Dns | ConnectErrorKind::Io | ConnectErrorKind::MaxReconnects => {
            ServerErrorKind::Connection
        }
    };
    Error::server(op, kind, one_line(&error_chain(err)))
}

/// Whether a rustls error is somewhere in the chain of `err`.
fn caused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(current) = next {
        if current.is::<async_nats::rustls::Error>() {
            return true;
        }
        // `io::Error::source` skips the error it wraps; look at it too.
        if let Some(io) = current.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && caused_by_tls(inner)
        {
            return true;
        }
        next = current.source();
    }
    false
}

/// The error and its sources, `: `-separated, skipping repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut next = err.source();
    while let Some(current) = next {
        let part = current.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        next = current.source();
    }
    text
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `url` with the user information (`user:password@`) replaced by
/// `<redacted>@`.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}{REDACTED}{}{tail}", &authority[at..]),
        None => url.to_string(),
    }
}

fn log_event(servers: &str, event: &Event) {
    match event {
        Event::Connected => tracing::debug!(%servers, "NATS connection (re)established"),
        Event::Disconnected => tracing::warn!(%servers, "NATS connection lost; reconnecting"),
        Event::LameDuckMode => tracing::warn!(%servers, "NATS server entered lame duck mode"),
        Event::ServerError(ServerError::AuthorizationViolation) => {
            tracing::error!(%servers, "NATS server refused the credentials")
        }
        Event::ServerError(err) => match Denial::parse(&err.to_string()) {
            Some(denial) => tracing::warn!(
                %servers,
                subject = %denial.subject,
                action = denial.action.verb(),
                "NATS server denied permission"
            ),
            None => tracing::warn!(%servers, error = %err, "NATS server error"),
        },
        Event::ClientError(err) => tracing::error!(%servers, error = %err, "NATS client error"),
        _ => tracing::debug!(%servers, %event, "NATS connection event"),
    }
}

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeniedAction {
    Publish,
    Subscribe,
}

impl DeniedAction {
    fn verb(self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Subscribe => "subscribe",
        }
    }
}

/// One permission violation the server reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Denial {
    seq: u64,
    pub(crate) action: DeniedAction,
    pub(crate) subject: String,
}

impl Denial {
    /// Parses the server's `Permissions Violation for Publish to "x"` (or
    /// `for Subscription to "x"`, possibly with a queue group).
    fn parse(text: &str) -> Option<Denial> {
        const MARKER: &str = "permissions violation for ";
        let lower = text.to_ascii_lowercase();
        let start = lower.find(MARKER)? + MARKER.len();
        let rest = &text[start..];
        let action = if rest.to_ascii_lowercase().starts_with("publish") {
            DeniedAction::Publish
        } else if rest.to_ascii_lowercase().starts_with("subscription") {
            DeniedAction::Subscribe
        } else {
            return None;
        };
        let quoted = rest.split('"').nth(1)?;
        Some(Denial {
            seq: 0,
            action,
            subject: quoted.to_string(),
        })
    }

    /// The error an API call gets when the server denied it.
    pub(crate) fn to_error(&self, op: &str) -> Error {
        let detail = match self.action {
            DeniedAction::Publish => format!(
                "the server denied permission to publish to `{}`",
                self.subject
            ),
            DeniedAction::Subscribe => format!(
                "the server denied permission to subscribe to `{}`, where the replies come",
                self.subject
            ),
        };
        Error::server(op, ServerErrorKind::PermissionDenied, detail)
    }
}

/// How many reports a connection keeps.
const DENIALS_KEPT: usize = 64;

#[derive(Debug, Default)]
struct DenialLog {
    next: u64,
    recent: VecDeque<Denial>,
}

/// The permission violations reported on one connection made by
/// [`connect`], so that an API request can tell "denied" from "no answer".
#[derive(Debug)]
pub(crate) struct Denials {
    inbox_prefix: String,
    log: Mutex<DenialLog>,
    changed: tokio::sync::Notify,
}

impl Denials {
    fn new(inbox_prefix: String) -> Self {
        Self {
            inbox_prefix,
            log: Mutex::new(DenialLog::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DenialLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn observe(&self, event: &Event) {
        let Event::ServerError(ServerError::Other(text)) = event else {
            return;
        };
        let Some(mut denial) = Denial::parse(text) else {
            return;
        };
        {
            let mut log = self.lock();
            denial.seq = log.next;
            log.next += 1;
            if log.recent.len() == DENIALS_KEPT {
                log.recent.pop_front();
            }
            log.recent.push_back(denial);
        }
        self.changed.notify_waiters();
    }

    /// A mark: reports from now on have this sequence or a later one.
    pub(crate) fn mark(&self) -> u64 {
        self.lock().next
    }

    /// A report since `since` that explains a failed request to the API
    /// subject `subject` (without its `$JS.API.` prefix): a publish to it
    /// was denied, or so was the subscription its reply needs. With
    /// `any_inbox`, a denied reply subscription counts whenever it was
    /// reported: the client subscribes once per connection, so one denial
    /// explains every later request that timed out.
    pub(crate) fn find(&self, since: u64, subject: &str, any_inbox: bool) -> Option<Denial> {
        let suffix = format!(".{subject}");
        self.lock()
            .recent
            .iter()
            .find(|d| match d.action {
                DeniedAction::Publish => {
                    d.seq >= since && (d.subject == subject || d.subject.ends_with(&suffix))
                }
                DeniedAction::Subscribe => {
                    (any_inbox || d.seq >= since) && d.subject.starts_with(&self.inbox_prefix)
                }
            })
            .cloned()
    }

    /// Waits for a report since `since` that [`Denials::find`] would
    /// return.
    pub(crate) async fn wait(&self, since: u64, subject: &str) -> Denial {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(denial) = self.find(since, subject, false) {
                return denial;
            }
            changed.await;
        }
    }
}

type Registry = Vec<(Weak<Statistics>, Arc<Denials>)>;

/// Connections made by [`connect`], by the identity of their statistics
/// (one allocation per connection, shared by every clone of its client).
static CONNECTIONS: Mutex<Registry> = Mutex::new(Vec::new());

fn register(client: &async_nats::Client, denials: Arc<Denials>) {
    let mut connections = CONNECTIONS.lock().unwrap_or_else(PoisonError::into_inner);
    connections.retain(|(stats, _)| stats.strong_count() > 0);
    connections.push((Arc::downgrade(&client.statistics()), denials));
}

/// The permission reports of `client`, when it was made by [`connect`].
pub(crate) fn denials_of(client: &async_nats::Client) -> Option<Arc<Denials>> {
    let stats = client.statistics();
    let connections = CONNECTIONS.lock().unwrap_or_else(PoisonError::into_inner);
    // A live weak pointer keeps its allocation, so an equal address is the
    // same connection.
    connections
        .iter()
        .find(|(weak, _)| std::ptr::eq(weak.as_ptr(), Arc::as_ptr(&stats)))
        .map(|(_, denials)| denials.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;

    const SEED: &str = "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM";

    fn check(spec: &ConnectionSpec) -> ValidationErrors {
        let mut errors = ValidationErrors::new();
        spec.validate_at("connection", &mut errors);
        errors
    }

    fn fields(spec: &ConnectionSpec) -> Vec<String> {
        check(spec)
            .errors()
            .iter()
            .map(|e: &FieldError| e.field.clone())
            .collect()
    }

    #[test]
    fn a_plain_spec_is_valid() {
        assert!(fields(&ConnectionSpec::new("nats://127.0.0.1:4222")).is_empty());
        let spec = ConnectionSpec {
            nkey_seed: Some(SEED.into()),
            ..ConnectionSpec::new("tls://127.0.0.1:4222")
        };
        assert!(fields(&spec).is_empty(), "{:?}", fields(&spec));
    }

    #[test]
    fn one_error_per_bad_field() {
        let spec = ConnectionSpec {
            servers: vec!["nats://ok:4222".into(), "http://wrong".into()],
            password: Some("hunter2".into()),
            token: Some("tok".into()),
            client_cert_file: Some("/no/such/cert.pem".into()),
            connection_timeout: Some(Duration::ZERO),
            max_reconnects: Some(0),
            ..Default::default()
        };
        let errors = check(&spec);
        let text = errors.to_string();
        for field in [
            "connection.servers[1]",
            "connection.password",
            "connection.token",
            "connection.client_cert_file",
            "connection.connection_timeout",
            "connection.max_reconnects",
        ] {
            assert!(errors.has_field(field), "{field} missing: {text}");
        }
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("tok\""), "{text}");
    }

    #[test]
    fn bad_seed_is_rejected_without_echo() {
        let spec = ConnectionSpec {
            nkey_seed: Some("SAnotaseed".into()),
            ..ConnectionSpec::new("nats://x:4222")
        };
        let errors = check(&spec);
        assert!(errors.has_field("connection.nkey_seed"), "{errors}");
        assert!(!errors.to_string().contains("SAnotaseed"), "{errors}");
    }

    #[test]
    fn debug_redacts_secrets() {
        let spec = ConnectionSpec {
            servers: vec!["nats://bob:pa55@host:4222/x".into()],
            user: Some("alice".into()),
            password: Some("hunter2".into()),
            token: Some("tok-123".into()),
            nkey_seed: Some(SEED.into()),
            ..Default::default()
        };
        for text in [format!("{spec:?}"), format!("{spec:#?}")] {
            for secret in ["hunter2", "tok-123", SEED, "pa55", "bob"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
            assert!(text.contains("<redacted>"), "{text}");
            assert!(text.contains("alice"), "{text}");
        }
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://<redacted>@h:4222");
        assert_eq!(redact_url("u:p@h"), "<redacted>@h");
        assert_eq!(redact_url("tls://h:4222"), "tls://h:4222");
        assert_eq!(
            redact_url("nats://u:p@q@h:1/path@x"),
            "nats://<redacted>@h:1/path@x"
        );
    }

    #[test]
    fn parses_permission_violations() {
        let d = Denial::parse(r#"Permissions Violation for Publish to "$JS.API.STREAM.INFO.X""#)
            .expect("publish");
        assert_eq!(d.action, DeniedAction::Publish);
        assert_eq!(d.subject, "$JS.API.STREAM.INFO.X");
        let d = Denial::parse(
            r#"Permissions Violation for Subscription to "_INBOX.abc.*" using queue "q""#,
        )
        .expect("subscribe");
        assert_eq!(d.action, DeniedAction::Subscribe);
        assert_eq!(d.subject, "_INBOX.abc.*");
        assert_eq!(Denial::parse("Authorization Violation"), None);
    }

    #[test]
    fn finds_denials_for_a_request() {
        let denials = Denials::new("_INBOX".into());
        let since = denials.mark();
        denials.observe(&Event::ServerError(ServerError::Other(
            r#"Permissions Violation for Publish to "$JS.API.STREAM.INFO.A""#.into(),
        )));
        assert!(denials.find(since, "STREAM.INFO.A", false).is_some());
        assert!(denials.find(since, "STREAM.INFO.B", false).is_none());
        assert!(
            denials
                .find(denials.mark(), "STREAM.INFO.A", true)
                .is_none()
        );
        denials.observe(&Event::ServerError(ServerError::Other(
            r#"Permissions Violation for Subscription to "_INBOX.x.*""#.into(),
        )));
        let found = denials
            .find(since, "STREAM.INFO.B", false)
            .expect("inbox denial");
        assert_eq!(found.action, DeniedAction::Subscribe);
        let later = denials.mark();
        assert!(denials.find(later, "STREAM.INFO.B", false).is_none());
        assert!(denials.find(later, "STREAM.INFO.B", true).is_some());
    }

    #[test]
    fn toml_round_trip_keeps_secrets() {
        let text = r#"
            servers = ["nats://127.0.0.1:4222"]
            user = "app"
            password = "pw"
            connection_timeout = "2s"
            max_reconnects = 10
        "#;
        let spec: ConnectionSpec = toml::from_str(text).expect("parses");
        assert_eq!(spec.connection_timeout, Some(Duration::from_secs(2)));
        let again: ConnectionSpec =
            toml::from_str(&toml::to_string(&spec).expect("serializes")).expect("round trip");
        assert_eq!(again, spec);
        assert_eq!(again.password.as_deref(), Some("pw"));
        let err = toml::from_str::<ConnectionSpec>("servers = []\npasword = \"x\"")
            .expect_err("unknown field");
        assert!(err.to_string().contains("pasword"), "{err}");
    }
}
