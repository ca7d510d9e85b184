//! Checking a [`ConnectionSpec`] before anything is sent: every field at
//! once, secrets never echoed.

use std::path::Path;
use std::str::FromStr;

use async_nats::ServerAddr;
use secrecy::ExposeSecret;

use super::server_url::REDACTED;
use super::spec::ConnectionSpec;
use crate::error::{Error, ValidationErrors};

impl ConnectionSpec {
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
            if let Err(err) = ServerAddr::from_str(server.as_str()) {
                errors.add(
                    field(&format!("servers[{i}]")),
                    format!("{server:?}"),
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
            && token.expose_secret().is_empty()
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
            match nkeys::KeyPair::from_seed(seed.expose_secret()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::FieldError;
    use std::time::Duration;

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
}
