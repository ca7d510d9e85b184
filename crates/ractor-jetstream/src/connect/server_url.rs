//! A server URL that never prints the credentials written into it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What is printed instead of a secret, the same marker as
/// [`secrecy`]'s `Debug` output.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// A NATS server URL (`nats://host:4222`, `tls://host:4222`).
///
/// A URL may carry `user:password@`; its `Debug` and `Display` output show
/// that part as `[REDACTED]`, so that a spec, a log line or an error naming
/// the server never shows a password. [`ServerUrl::as_str`] gives the URL as
/// it is, for connecting. Serialized, it is the plain string.
///
/// ```
/// use ractor_jetstream::connect::ServerUrl;
///
/// let url = ServerUrl::from("nats://app:secret@nats.internal:4222");
/// assert_eq!(url.to_string(), "nats://[REDACTED]@nats.internal:4222");
/// assert_eq!(url.as_str(), "nats://app:secret@nats.internal:4222");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// The URL as written, credentials included.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ServerUrl {
    fn from(url: String) -> Self {
        Self(url)
    }
}

impl From<&str> for ServerUrl {
    fn from(url: &str) -> Self {
        Self(url.to_string())
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_url(&self.0), f)
    }
}

/// `url` with the user information (`user:password@`) replaced by
/// `[REDACTED]@`.
fn redact_url(url: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact_url("nats://u:p@h:4222"), "nats://[REDACTED]@h:4222");
        assert_eq!(redact_url("u:p@h"), "[REDACTED]@h");
        assert_eq!(redact_url("tls://h:4222"), "tls://h:4222");
        assert_eq!(
            redact_url("nats://u:p@q@h:1/path@x"),
            "nats://[REDACTED]@h:1/path@x"
        );
        let url = ServerUrl::from("nats://bob:pa55@h:4222");
        for text in [format!("{url}"), format!("{url:?}"), format!("{url:#?}")] {
            assert!(!text.contains("pa55") && !text.contains("bob"), "{text}");
        }
    }
}
