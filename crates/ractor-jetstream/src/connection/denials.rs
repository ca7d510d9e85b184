//! The permission violations that the server reported on one connection.
//!
//! The server answers a refused publish or subscription with an `-ERR` on
//! the connection, which async-nats hands to the connection's event
//! callback; the request itself gets no answer. This log keeps the recent
//! reports so that a request that is waiting, or has just given up, can be
//! told "denied" rather than "timed out". It is parsed from the server's
//! text because that is the only form the server gives it in.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use async_nats::{Event, ServerError};

use crate::error::{Error, ServerErrorKind};

/// What the server refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeniedAction {
    Publish,
    Subscribe,
}

impl DeniedAction {
    pub(crate) fn verb(self) -> &'static str {
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
    pub(crate) fn parse(text: &str) -> Option<Denial> {
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
/// `connect`, so that an API request can tell "denied" from "no answer".
#[derive(Debug)]
pub(crate) struct Denials {
    inbox_prefix: String,
    log: Mutex<DenialLog>,
    changed: tokio::sync::Notify,
}

impl Denials {
    pub(crate) fn new(inbox_prefix: String) -> Self {
        Self {
            inbox_prefix,
            log: Mutex::new(DenialLog::default()),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DenialLog> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records `event` when it is a permission violation.
    pub(crate) fn observe(&self, event: &Event) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
