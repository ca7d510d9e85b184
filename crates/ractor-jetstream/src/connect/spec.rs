//! [`ConnectionSpec`]: where the servers are and how to prove who you are,
//! as plain data.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::server_url::ServerUrl;

/// How long one connection attempt may take when the spec does not say.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JetStream API request may take when the spec does not say.
pub const DEFAULT_JETSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach NATS and prove who you are. See the [module docs](super).
///
/// At most one way to authenticate may be set: `user` with `password`,
/// `token`, `nkey_seed` (or `nkey_seed_file`), or `creds_file`. File paths
/// are read when connecting, relative to the process's working directory.
///
/// The secrets (`password`, `token`, `nkey_seed`) are
/// [`SecretString`]s: `Debug` prints them as `[REDACTED]`, and they are
/// left out when the spec is serialized, so that writing a topology out
/// never writes a secret. Credentials in a server URL are redacted when
/// printed (see [`ServerUrl`]) but serialized as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSpec {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); at least one.
    /// A URL may carry `user:password@`, which is redacted when printed.
    #[serde(default)]
    pub servers: Vec<ServerUrl>,
    /// The connection's name, shown by the server's monitoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// User name, with `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Password, with `user`. Secret: never printed, never serialized.
    #[serde(default, skip_serializing)]
    pub password: Option<SecretString>,
    /// Authentication token. Secret: never printed, never serialized.
    #[serde(default, skip_serializing)]
    pub token: Option<SecretString>,
    /// A user nkey seed (`SU...`). Secret: never printed, never serialized.
    #[serde(default, skip_serializing)]
    pub nkey_seed: Option<SecretString>,
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
    /// How long a JetStream API request may take, for the connection's
    /// JetStream context (default 5 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub jetstream_timeout: Option<Duration>,
    /// The JetStream domain of the connection's JetStream context (unset:
    /// the account's own JetStream).
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

/// Field by field, secrets by their value. Written out because
/// [`SecretString`] has no `PartialEq` (it guards against comparing secrets
/// in variable time, which comparing two configurations does not need); the
/// destructuring makes a new field a compile error here until it is
/// compared.
impl PartialEq for ConnectionSpec {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            servers,
            name,
            user,
            password,
            token,
            nkey_seed,
            nkey_seed_file,
            creds_file,
            tls_required,
            root_ca_file,
            client_cert_file,
            client_key_file,
            connection_timeout,
            jetstream_timeout,
            jetstream_domain,
            max_reconnects,
            ping_interval,
            inbox_prefix,
        } = self;
        let secret = |a: &Option<SecretString>, b: &Option<SecretString>| {
            a.as_ref().map(ExposeSecret::expose_secret)
                == b.as_ref().map(ExposeSecret::expose_secret)
        };
        *servers == other.servers
            && *name == other.name
            && *user == other.user
            && secret(password, &other.password)
            && secret(token, &other.token)
            && secret(nkey_seed, &other.nkey_seed)
            && *nkey_seed_file == other.nkey_seed_file
            && *creds_file == other.creds_file
            && *tls_required == other.tls_required
            && *root_ca_file == other.root_ca_file
            && *client_cert_file == other.client_cert_file
            && *client_key_file == other.client_key_file
            && *connection_timeout == other.connection_timeout
            && *jetstream_timeout == other.jetstream_timeout
            && *jetstream_domain == other.jetstream_domain
            && *max_reconnects == other.max_reconnects
            && *ping_interval == other.ping_interval
            && *inbox_prefix == other.inbox_prefix
    }
}

/// The ways to authenticate, for the "only one of them" check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthMethod {
    UserPassword,
    Token,
    Nkey,
    Creds,
}

impl AuthMethod {
    pub(super) fn describe(self) -> &'static str {
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
    pub fn new(server: impl Into<ServerUrl>) -> Self {
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
        let urls: Vec<String> = self.servers.iter().map(ToString::to_string).collect();
        urls.join(", ")
    }

    /// The ways to authenticate that are set, each with the field that
    /// sets it.
    pub(super) fn auth_methods(&self) -> Vec<(AuthMethod, &'static str)> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "SUAIO3FHUX5PNV2LQIIP7TZ3N4L7TX3W53MQGEIVYFIGA635OZCKEYHFLM";

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
            assert!(text.contains("[REDACTED]"), "{text}");
            assert!(text.contains("alice"), "{text}");
        }
    }

    #[test]
    fn serializing_leaves_secrets_out() {
        let text = r#"
            servers = ["nats://127.0.0.1:4222"]
            user = "app"
            password = "pw"
            connection_timeout = "2s"
            max_reconnects = 10
        "#;
        let spec: ConnectionSpec = toml::from_str(text).expect("parses");
        assert_eq!(spec.connection_timeout, Some(Duration::from_secs(2)));
        assert_eq!(
            spec.password.as_ref().map(ExposeSecret::expose_secret),
            Some("pw")
        );
        let written = toml::to_string(&spec).expect("serializes");
        assert!(!written.contains("pw"), "{written}");
        let again: ConnectionSpec = toml::from_str(&written).expect("round trip");
        assert_eq!(
            again,
            ConnectionSpec {
                password: None,
                ..spec.clone()
            }
        );
        assert_ne!(again, spec, "the secret takes part in the comparison");
        let err = toml::from_str::<ConnectionSpec>("servers = []\npasword = \"x\"")
            .expect_err("unknown field");
        assert!(err.to_string().contains("pasword"), "{err}");
    }
}
