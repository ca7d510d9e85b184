//! How a pull child takes its messages ([`Consume`]: fetch-driven or
//! continuous) and the consumer's priority group ([`PrioritySpec`]: a
//! pinned client with standbys, or overflow).
//!
//! Both are pull settings: in a topology file `consume = "continuous"`,
//! `window = 256` and `priority = { policy = "pinned_client", group = "G",
//! timeout = "2s" }` sit beside `mode = "pull"`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{ValidationErrors, show_duration};
use crate::spec::check::{SERVER_I64_MAX, check_count, check_duration, join_field};

/// The continuous window when the spec does not set `window` (and never
/// above the consumer's `max_ack_pending`).
pub const DEFAULT_WINDOW: u64 = 256;

/// The shortest `priority.timeout`: a pinned child renews its pull within
/// half of it, and below this the renewals become the traffic.
const MIN_PRIORITY_TIMEOUT: Duration = Duration::from_millis(200);

/// How a pull child takes messages (`consume = "fetch"` or
/// `"continuous"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Consume {
    /// Only when asked: each [`PullHandle::fetch`](crate::PullHandle::fetch)
    /// is one pull request (the default; pull exists for backpressure).
    #[default]
    Fetch,
    /// On its own: the child keeps up to its `window` of messages requested
    /// and unsettled, and asks for more before what it asked for runs out.
    /// A fetch to such a child is refused.
    Continuous,
}

/// A server priority policy (ADR-42), as a spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum PriorityPolicy {
    /// One pulling client at a time gets the messages; the others stand by
    /// and one of them takes over when the pinned one stops pulling for
    /// `timeout`, or at once when it releases the pin (a graceful drain
    /// does). Use it for one active worker per durable with hot standbys.
    PinnedClient,
    /// A pull is served only while the consumer is behind: `num_pending` at
    /// least `min_pending`, or `num_ack_pending` at least
    /// `min_ack_pending`. Use it for helpers that take over only when the
    /// regular workers fall behind (another region, a spare machine).
    Overflow,
}

/// The consumer's priority group: `priority = { policy = "pinned_client",
/// group = "G", timeout = "2s" }` or `priority = { policy = "overflow",
/// group = "G", min_pending = 1000 }`.
///
/// ```
/// use ractor_jetstream::{ConsumerSpec, PrioritySpec, PullSpec};
/// use std::time::Duration;
///
/// let pull = PullSpec::continuous()
///     .priority(PrioritySpec::pinned("workers", Duration::from_secs(2)));
/// ConsumerSpec::new("ORDERS", "billing", "billing-worker", pull).validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrioritySpec {
    /// Pinned client or overflow.
    pub policy: PriorityPolicy,
    /// The group every pull of this consumer names.
    pub group: String,
    /// Pinned client: how long the server keeps the pin of a client that
    /// stopped pulling (the server's default, 2 minutes, when unset).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Overflow: serve this child's pulls only while at least this many
    /// messages wait on the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_pending: Option<u64>,
    /// Overflow: serve this child's pulls only while at least this many
    /// messages are delivered and not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ack_pending: Option<u64>,
}

impl PrioritySpec {
    /// A pinned-client group whose pin moves after `timeout` without pulls.
    pub fn pinned(group: impl Into<String>, timeout: Duration) -> Self {
        Self {
            policy: PriorityPolicy::PinnedClient,
            group: group.into(),
            timeout: Some(timeout),
            min_pending: None,
            min_ack_pending: None,
        }
    }

    /// An overflow group; set its thresholds with
    /// [`min_pending`](Self::min_pending) and
    /// [`min_ack_pending`](Self::min_ack_pending).
    pub fn overflow(group: impl Into<String>) -> Self {
        Self {
            policy: PriorityPolicy::Overflow,
            group: group.into(),
            timeout: None,
            min_pending: None,
            min_ack_pending: None,
        }
    }

    /// Sets `min_pending` (overflow).
    pub fn min_pending(mut self, min_pending: u64) -> Self {
        self.min_pending = Some(min_pending);
        self
    }

    /// Sets `min_ack_pending` (overflow).
    pub fn min_ack_pending(mut self, min_ack_pending: u64) -> Self {
        self.min_ack_pending = Some(min_ack_pending);
        self
    }

    /// Whether this is a pinned-client group.
    pub fn is_pinned(&self) -> bool {
        self.policy == PriorityPolicy::PinnedClient
    }

    /// Checks every field; `at` is the field's own name (`priority`).
    pub(crate) fn validate_at(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| join_field(at, name);
        // What the server takes for a group name (ADR-42): at most 16 of
        // these characters.
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '=' | '-');
        if self.group.is_empty() || self.group.len() > 16 || !self.group.chars().all(valid) {
            errors.add(
                field("group"),
                crate::spec::check::quoted(&self.group),
                "must be 1 to 16 characters of letters, digits, `/`, `_`, `=` and `-`",
            );
        }
        check_count(
            &field("min_pending"),
            self.min_pending,
            SERVER_I64_MAX,
            errors,
        );
        check_count(
            &field("min_ack_pending"),
            self.min_ack_pending,
            SERVER_I64_MAX,
            errors,
        );
        match self.policy {
            PriorityPolicy::PinnedClient => {
                if let Some(timeout) = self.timeout {
                    check_duration(&field("timeout"), timeout, errors);
                    if timeout < MIN_PRIORITY_TIMEOUT {
                        errors.add(
                            field("timeout"),
                            show_duration(timeout),
                            format!("must be at least {}", show_duration(MIN_PRIORITY_TIMEOUT)),
                        );
                    }
                }
                for (name, set) in [
                    ("min_pending", self.min_pending.is_some()),
                    ("min_ack_pending", self.min_ack_pending.is_some()),
                ] {
                    if set {
                        errors.add(field(name), "(set)", "only an overflow group has it");
                    }
                }
            }
            PriorityPolicy::Overflow => {
                if self.timeout.is_some() {
                    errors.add(
                        field("timeout"),
                        "(set)",
                        "only a pinned_client group has it",
                    );
                }
            }
        }
    }
}
