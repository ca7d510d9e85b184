//! [`ServerBuilder`]: the settings of one server and the config file they
//! turn into.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::HarnessError;
use crate::server::NatsServer;

/// How long a server may take to become ready, unless changed with
/// [`ServerBuilder::ready_timeout`].
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Settings for one `nats-server`, turned into a config file by
/// [`ServerBuilder::start`].
///
/// Every builder method takes `self` by value; the chain ends in one async
/// call.
///
/// ```no_run
/// # async fn demo() -> Result<(), nats_harness::HarnessError> {
/// let server = nats_harness::NatsServer::builder()
///     .user_password("app", "s3cret")
///     .max_payload(64 * 1024)
///     .start()
///     .await?;
/// println!("listening on {}", server.url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct ServerBuilder {
    pub(crate) settings: Settings,
}

/// Everything that goes into a server's config file, except its ports.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) jetstream: bool,
    pub(crate) user_password: Option<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) snippets: Vec<String>,
    pub(crate) max_payload: Option<u32>,
    pub(crate) ready_timeout: Duration,
    pub(crate) cluster: Option<ClusterSettings>,
}

/// The cluster block of a cluster node.
#[derive(Debug, Clone)]
pub(crate) struct ClusterSettings {
    /// The cluster's name, the same on every node.
    pub(crate) name: String,
    /// The cluster (route) ports of the other nodes.
    pub(crate) routes: Vec<u16>,
}

/// The ports one server listens on.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) client: u16,
    pub(crate) monitor: u16,
    pub(crate) cluster: Option<u16>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            jetstream: true,
            user_password: None,
            token: None,
            tls: None,
            tls_ca: None,
            snippets: Vec::new(),
            max_payload: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            cluster: None,
        }
    }
}

impl ServerBuilder {
    pub(crate) fn new() -> Self {
        ServerBuilder {
            settings: Settings::default(),
        }
    }

    /// Enables or disables JetStream (default: enabled, with a file store in
    /// the server's temporary directory).
    pub fn jetstream(mut self, on: bool) -> Self {
        self.settings.jetstream = on;
        self
    }

    /// Requires clients to log in with this user and password.
    pub fn user_password(mut self, user: &str, password: &str) -> Self {
        self.settings.user_password = Some((user.to_string(), password.to_string()));
        self
    }

    /// Requires clients to present this token.
    pub fn token(mut self, token: &str) -> Self {
        self.settings.token = Some(token.to_string());
        self
    }

    /// Serves TLS on the client port with this certificate and private key
    /// (PEM files). Clients must trust the certificate's issuer.
    pub fn tls(
        mut self,
        cert_pem_path: impl Into<PathBuf>,
        key_pem_path: impl Into<PathBuf>,
    ) -> Self {
        self.settings.tls = Some((cert_pem_path.into(), key_pem_path.into()));
        self
    }

    /// Requires every client to present a certificate signed by this CA
    /// (PEM file). Needs [`ServerBuilder::tls`] as well.
    pub fn tls_verify_clients(mut self, ca_pem_path: impl Into<PathBuf>) -> Self {
        self.settings.tls_ca = Some(ca_pem_path.into());
        self
    }

    /// Appends raw `nats-server` configuration (accounts, permissions,
    /// limits, ...) to the generated config file. May be called more than
    /// once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), nats_harness::HarnessError> {
    /// let server = nats_harness::NatsServer::builder()
    ///     .config_snippet("max_connections: 10")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn config_snippet(mut self, text: &str) -> Self {
        self.settings.snippets.push(text.to_string());
        self
    }

    /// Sets the largest message payload the server accepts, in bytes.
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.settings.max_payload = Some(bytes);
        self
    }

    /// How long [`ServerBuilder::start`] and [`NatsServer::restart`] wait for
    /// the server to become ready (default [`DEFAULT_READY_TIMEOUT`]).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.settings.ready_timeout = timeout;
        self
    }

    /// Starts the server on free loopback ports and waits until it is ready:
    /// its monitoring endpoint answers `/healthz` (with JetStream enabled
    /// when JetStream is on) and its client port sends its `INFO`.
    ///
    /// A port taken by another process between the harness's check and the
    /// server's bind is retried with new ports.
    pub async fn start(self) -> Result<NatsServer, HarnessError> {
        self.settings.validate()?;
        NatsServer::start_with(self.settings).await
    }
}

impl Settings {
    pub(crate) fn validate(&self) -> Result<(), HarnessError> {
        if self.user_password.is_some() && self.token.is_some() {
            return Err(HarnessError::InvalidSettings(
                "user_password and token cannot both be set".to_string(),
            ));
        }
        if self.tls_ca.is_some() && self.tls.is_none() {
            return Err(HarnessError::InvalidSettings(
                "tls_verify_clients needs tls(cert, key) as well".to_string(),
            ));
        }
        Ok(())
    }

    /// The config file for a server named `name` listening on `ports`,
    /// with its JetStream store in `store_dir`.
    pub(crate) fn render(&self, name: &str, ports: Ports, store_dir: &Path) -> String {
        let mut c = String::from("# Generated by nats-harness.\n");
        // Writing to a String cannot fail, hence the ignored results.
        let _ = writeln!(c, "server_name: {}", quote(name));
        let _ = writeln!(c, "listen: \"127.0.0.1:{}\"", ports.client);
        let _ = writeln!(c, "http: \"127.0.0.1:{}\"", ports.monitor);
        if let Some(bytes) = self.max_payload {
            let _ = writeln!(c, "max_payload: {bytes}");
        }
        if self.jetstream {
            let _ = writeln!(
                c,
                "jetstream {{\n  store_dir: {}\n}}",
                quote_path(store_dir)
            );
        }
        if let Some((user, password)) = &self.user_password {
            let _ = writeln!(
                c,
                "authorization {{\n  user: {}\n  password: {}\n}}",
                quote(user),
                quote(password)
            );
        }
        if let Some(token) = &self.token {
            let _ = writeln!(c, "authorization {{\n  token: {}\n}}", quote(token));
        }
        if let Some((cert, key)) = &self.tls {
            let _ = writeln!(c, "tls {{");
            let _ = writeln!(c, "  cert_file: {}", quote_path(cert));
            let _ = writeln!(c, "  key_file: {}", quote_path(key));
            if let Some(ca) = &self.tls_ca {
                let _ = writeln!(c, "  ca_file: {}", quote_path(ca));
                let _ = writeln!(c, "  verify: true");
            }
            let _ = writeln!(c, "  timeout: 5\n}}");
        }
        if let (Some(cluster), Some(port)) = (&self.cluster, ports.cluster) {
            let routes: Vec<String> = cluster
                .routes
                .iter()
                .map(|p| quote(&format!("nats-route://127.0.0.1:{p}")))
                .collect();
            let _ = writeln!(
                c,
                "cluster {{\n  name: {}\n  listen: \"127.0.0.1:{port}\"\n  routes: [{}]\n}}",
                quote(&cluster.name),
                routes.join(", ")
            );
        }
        for snippet in &self.snippets {
            let _ = writeln!(c, "{snippet}");
        }
        c
    }
}

/// A double-quoted config string; the config format accepts JSON escapes.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// A quoted absolute path, so the server does not resolve it against its
/// own working directory.
fn quote_path(path: &Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    quote(&absolute.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_section() {
        let settings = Settings {
            user_password: Some(("u".into(), "p\"w".into())),
            tls: Some(("/c.pem".into(), "/k.pem".into())),
            tls_ca: Some("/ca.pem".into()),
            max_payload: Some(1024),
            snippets: vec!["max_connections: 5".into()],
            cluster: Some(ClusterSettings {
                name: "c1".into(),
                routes: vec![7001, 7002],
            }),
            ..Settings::default()
        };
        let ports = Ports {
            client: 4000,
            monitor: 5000,
            cluster: Some(7000),
        };
        let text = settings.render("n0", ports, Path::new("/tmp/store"));
        for expected in [
            "server_name: \"n0\"",
            "listen: \"127.0.0.1:4000\"",
            "http: \"127.0.0.1:5000\"",
            "max_payload: 1024",
            "store_dir: \"/tmp/store\"",
            "password: \"p\\\"w\"",
            "ca_file: \"/ca.pem\"",
            "verify: true",
            "listen: \"127.0.0.1:7000\"",
            "routes: [\"nats-route://127.0.0.1:7001\", \"nats-route://127.0.0.1:7002\"]",
            "max_connections: 5",
        ] {
            assert!(
                text.contains(expected),
                "{expected:?} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn rejects_conflicting_settings() {
        let both = ServerBuilder::new().token("t").user_password("u", "p");
        assert!(matches!(
            both.settings.validate(),
            Err(HarnessError::InvalidSettings(_))
        ));
        let ca_only = ServerBuilder::new().tls_verify_clients("/ca.pem");
        assert!(matches!(
            ca_only.settings.validate(),
            Err(HarnessError::InvalidSettings(_))
        ));
    }
}
