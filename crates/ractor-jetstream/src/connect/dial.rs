//! Turning a [`ConnectionSpec`] into a [`Connection`]: the async-nats
//! options, the first connection, and what its failure was.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::{ConnectErrorKind, ConnectOptions, Event, ServerAddr, ServerError};
use secrecy::ExposeSecret;

use super::spec::ConnectionSpec;
use crate::connection::{Connection, Denial, Denials};
use crate::error::{Error, ServerErrorKind, ValidationErrors, one_line_chain, show_duration};

/// Validates the spec and connects to the first server that answers.
///
/// The first connection is tried once per server, each attempt bounded by
/// the spec's `connection_timeout`; nothing is retried in the background.
/// Failures are [`Error::Invalid`] for a bad spec or an unreadable file,
/// and otherwise [`Error::Server`] with
/// [`ServerErrorKind::AuthenticationFailed`] (the server refused the
/// credentials), [`ServerErrorKind::Tls`] (handshake failed, certificate
/// not trusted), [`ServerErrorKind::Timeout`] or
/// [`ServerErrorKind::Connection`]. See the [module docs](super).
///
/// The [`Connection`] holds a JetStream context with the spec's
/// `jetstream_timeout` and `jetstream_domain`, and reports the server's
/// permission violations to the calls made through it.
pub async fn connect(spec: &ConnectionSpec) -> Result<Connection, Error> {
    let mut errors = ValidationErrors::new();
    spec.validate_at("connection", &mut errors);
    errors.into_result()?;
    let servers: Vec<ServerAddr> = spec
        .servers
        .iter()
        .map(|s| ServerAddr::from_str(s.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|err| {
            Error::invalid("connection.servers", spec.servers_label(), err.to_string())
        })?;
    let op = format!("connect to {}", spec.servers_label());
    let denials = Arc::new(Denials::new(
        spec.inbox_prefix.clone().unwrap_or_else(|| "_INBOX".into()),
    ));
    let options = options(spec, denials.clone()).await?;
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
    tracing::info!(
        servers = %spec.servers_label(),
        auth = spec.auth_label(),
        "connected to NATS"
    );
    let connection = Connection::with_denials(jetstream_context(spec, client), denials);
    Ok(match &spec.jetstream_domain {
        Some(domain) => connection.with_api_prefix(format!("$JS.{domain}.API")),
        None => connection,
    })
}

impl ConnectionSpec {
    /// Validates the spec and connects; see [`connect`].
    pub async fn connect(&self) -> Result<Connection, Error> {
        connect(self).await
    }
}

/// A JetStream context on `client` with the spec's `jetstream_timeout` and
/// `jetstream_domain`.
fn jetstream_context(spec: &ConnectionSpec, client: async_nats::Client) -> jetstream::Context {
    let timeout = spec.effective_jetstream_timeout();
    match &spec.jetstream_domain {
        Some(domain) => jetstream::ContextBuilder::new()
            .domain(domain)
            .timeout(timeout)
            .build(client),
        None => jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client),
    }
}

/// The async-nats options for `spec`. Reads the nkey seed and creds files.
/// The event callback feeds `denials` and logs what happens to the
/// connection.
async fn options(spec: &ConnectionSpec, denials: Arc<Denials>) -> Result<ConnectOptions, Error> {
    let mut options = ConnectOptions::new()
        .connection_timeout(spec.effective_connection_timeout())
        .max_reconnects(spec.max_reconnects)
        .require_tls(spec.tls_required);
    if let Some(name) = &spec.name {
        options = options.name(name);
    }
    if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
        options = options.user_and_password(user.clone(), password.expose_secret().to_string());
    }
    if let Some(token) = &spec.token {
        options = options.token(token.expose_secret().to_string());
    }
    if let Some(seed) = &spec.nkey_seed {
        options = options.nkey(seed.expose_secret().to_string());
    }
    if let Some(path) = &spec.nkey_seed_file {
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
    if let Some(path) = &spec.creds_file {
        let text = read_file("connection.creds_file", path).await?;
        options = options.credentials(&text).map_err(|err| {
            Error::invalid(
                "connection.creds_file",
                path.display(),
                format!("not a valid .creds file: {err}"),
            )
        })?;
    }
    if let Some(path) = &spec.root_ca_file {
        options = options.add_root_certificates(path.clone());
    }
    if let (Some(cert), Some(key)) = (&spec.client_cert_file, &spec.client_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if let Some(interval) = spec.ping_interval {
        options = options.ping_interval(interval);
    }
    if let Some(prefix) = &spec.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    let servers = spec.servers_label();
    options = options.event_callback(move |event| {
        denials.observe(&event);
        log_event(&servers, &event);
        async {}
    });
    Ok(options)
}

async fn read_file(field: &str, path: &Path) -> Result<String, Error> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|err| Error::invalid(field, path.display(), format!("cannot read: {err}")))
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
    Error::server(op, kind, one_line(&one_line_chain(err)))
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

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
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
