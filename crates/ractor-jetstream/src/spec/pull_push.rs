//! The part of a consumer spec that only one mode has: [`PullSpec`] for a
//! pull consumer, [`PushSpec`] for a push consumer, and [`ModeSpec`], which
//! holds one of them.
//!
//! A push setting on a pull consumer cannot be written in code: the field
//! is not there. In a topology file, where every setting sits flat beside
//! `mode = "..."`, one is refused by name (`` `max_in_flight` is a push
//! setting; consumer `billing` is pull ``).

use std::time::Duration;

use crate::error::{ValidationErrors, show_duration};
use crate::mode::ConsumerMode;
use crate::spec::check::{
    SERVER_I64_MAX, check_count, check_duration, check_duration_opt, join_field,
};
use crate::spec::priority::{Consume, DEFAULT_WINDOW, PrioritySpec};
use crate::spec::subject::{check_literal_subject, check_name};

/// The push window when the spec does not set `max_in_flight` (and never
/// above the consumer's `max_ack_pending`).
pub const DEFAULT_MAX_IN_FLIGHT: u64 = 256;
/// The idle heartbeat of a push consumer when the spec does not set one.
pub const DEFAULT_IDLE_HEARTBEAT: Duration = Duration::from_secs(5);

/// The shortest idle heartbeat a push spec may ask for: below it the
/// heartbeats themselves become the traffic.
const MIN_IDLE_HEARTBEAT: Duration = Duration::from_millis(100);

/// Push or pull, with the settings only that mode has (`mode = "pull"` or
/// `mode = "push"` in a topology file, the settings beside it).
#[derive(Debug, Clone, PartialEq)]
pub enum ModeSpec {
    /// A pull consumer: nothing moves until a fetch asks.
    Pull(PullSpec),
    /// A push consumer: the server pushes, the child keeps a bounded window.
    Push(PushSpec),
}

impl Default for ModeSpec {
    fn default() -> Self {
        Self::Pull(PullSpec::default())
    }
}

impl From<PullSpec> for ModeSpec {
    fn from(spec: PullSpec) -> Self {
        Self::Pull(spec)
    }
}

impl From<PushSpec> for ModeSpec {
    fn from(spec: PushSpec) -> Self {
        Self::Push(spec)
    }
}

impl ModeSpec {
    /// Push or pull, without the settings.
    pub fn mode(&self) -> ConsumerMode {
        match self {
            Self::Pull(_) => ConsumerMode::Pull,
            Self::Push(_) => ConsumerMode::Push,
        }
    }

    /// The pull settings, when this is a pull consumer.
    pub fn as_pull(&self) -> Option<&PullSpec> {
        match self {
            Self::Pull(pull) => Some(pull),
            Self::Push(_) => None,
        }
    }

    /// The push settings, when this is a push consumer.
    pub fn as_push(&self) -> Option<&PushSpec> {
        match self {
            Self::Push(push) => Some(push),
            Self::Pull(_) => None,
        }
    }
}

/// What only a pull consumer has: the server's limits on each pull request.
///
/// ```
/// use ractor_jetstream::{ConsumerSpec, PullSpec};
///
/// let pull = PullSpec::default().max_batch(500).max_waiting(64);
/// let spec = ConsumerSpec::new("ORDERS", "billing", "billing-worker", pull);
/// spec.validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PullSpec {
    /// The largest `batch` a fetch may ask for (unset: no limit).
    pub max_batch: Option<u64>,
    /// The longest `expires` a fetch may ask for (unset: no limit).
    pub max_expires: Option<Duration>,
    /// How many pull requests the server keeps waiting at once (unset: the
    /// server's default, 512). Cannot be changed on an existing consumer.
    pub max_waiting: Option<u64>,
    /// Fetch-driven (the default) or continuous. Not a server setting.
    pub consume: Consume,
    /// Continuous: at most this many messages requested and unsettled at
    /// once (default 256, and never above `max_ack_pending`). Not a server
    /// setting.
    pub window: Option<u64>,
    /// The consumer's priority group (pinned client or overflow), which
    /// every pull of the child names. Cannot be added to, removed from or
    /// changed on an existing consumer, except its `timeout`.
    pub priority: Option<PrioritySpec>,
}

impl PullSpec {
    /// Sets `max_batch`.
    pub fn max_batch(mut self, max_batch: u64) -> Self {
        self.max_batch = Some(max_batch);
        self
    }

    /// Sets `max_expires`.
    pub fn max_expires(mut self, max_expires: Duration) -> Self {
        self.max_expires = Some(max_expires);
        self
    }

    /// Sets `max_waiting`.
    pub fn max_waiting(mut self, max_waiting: u64) -> Self {
        self.max_waiting = Some(max_waiting);
        self
    }

    /// A pull consumer whose child consumes continuously.
    pub fn continuous() -> Self {
        Self {
            consume: Consume::Continuous,
            ..Self::default()
        }
    }

    /// Sets the continuous window: at most this many messages requested
    /// and unsettled.
    pub fn window(mut self, window: u64) -> Self {
        self.window = Some(window);
        self
    }

    /// Sets the priority group.
    pub fn priority(mut self, priority: PrioritySpec) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The continuous window in effect for a consumer whose
    /// `max_ack_pending` is `max_ack_pending`.
    pub fn effective_window(&self, max_ack_pending: u64) -> u64 {
        self.window
            .unwrap_or_else(|| DEFAULT_WINDOW.min(max_ack_pending.max(1)))
    }

    /// Checks every field; `at` prefixes the field names. `max_ack_pending`
    /// is the consumer's, which bounds the window.
    pub(crate) fn validate_at(
        &self,
        at: &str,
        max_ack_pending: u64,
        errors: &mut ValidationErrors,
    ) {
        let field = |name: &str| join_field(at, name);
        match self.window {
            Some(_) if self.consume != Consume::Continuous => errors.add(
                field("window"),
                "(set)",
                "only a continuous consumer has a window (`consume = \"continuous\"`)",
            ),
            Some(0) => errors.add(field("window"), 0, "must be positive"),
            Some(window) if window > max_ack_pending => errors.add(
                field("window"),
                window,
                format!("must not be above max_ack_pending ({max_ack_pending})"),
            ),
            _ => {}
        }
        if let Some(priority) = &self.priority {
            priority.validate_at(&field("priority"), errors);
        }
        check_count(&field("max_batch"), self.max_batch, SERVER_I64_MAX, errors);
        check_count(
            &field("max_waiting"),
            self.max_waiting,
            SERVER_I64_MAX,
            errors,
        );
        check_duration_opt(&field("max_expires"), self.max_expires, errors);
    }
}

/// What only a push consumer has: where and how the server pushes, and the
/// child's window.
///
/// ```
/// use ractor_jetstream::{ConsumerSpec, PushSpec};
///
/// let push = PushSpec::default().window(64).deliver_group("auditors");
/// let spec = ConsumerSpec::new("ORDERS", "audit", "audit-worker", push);
/// spec.validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PushSpec {
    /// The subject the server pushes to. When unset, a new consumer gets a
    /// fresh inbox subject, and an existing one keeps its own.
    pub deliver_subject: Option<String>,
    /// A queue group, so that several subscribers (members in several
    /// processes, each running the same spec) share the deliveries, each
    /// message going to one of them.
    ///
    /// A queue-group consumer has no flow control and no idle heartbeats:
    /// the server would send each of those status messages to one random
    /// member, so idle members would miss heartbeats and a flow-control
    /// request landing on a busy member would hold back every member. The
    /// server's `max_ack_pending` bounds what is outstanding instead, and
    /// an idle member checks the consumer on the server every
    /// `idle_heartbeat` to notice that it was deleted.
    pub deliver_group: Option<String>,
    /// The server's idle heartbeat (default 5 s). After two missed
    /// heartbeats the child checks the consumer on the server. With a
    /// `deliver_group` the server sends none; this is then how often an
    /// idle child checks the consumer.
    pub idle_heartbeat: Option<Duration>,
    /// The child's window: at most this many unsettled deliveries at the
    /// target (default 256, and never above `max_ack_pending`). Not a
    /// server setting.
    pub max_in_flight: Option<u64>,
}

impl PushSpec {
    /// Sets the window (`max_in_flight`): at most this many unsettled
    /// deliveries at the target.
    pub fn window(mut self, max_in_flight: u64) -> Self {
        self.max_in_flight = Some(max_in_flight);
        self
    }

    /// Sets the subject the server pushes to.
    pub fn deliver_subject(mut self, subject: impl Into<String>) -> Self {
        self.deliver_subject = Some(subject.into());
        self
    }

    /// Sets the queue group that shares the deliveries.
    pub fn deliver_group(mut self, group: impl Into<String>) -> Self {
        self.deliver_group = Some(group.into());
        self
    }

    /// Sets the idle heartbeat.
    pub fn idle_heartbeat(mut self, heartbeat: Duration) -> Self {
        self.idle_heartbeat = Some(heartbeat);
        self
    }

    /// The window in effect for a consumer whose `max_ack_pending` is
    /// `max_ack_pending`: `max_in_flight`, or the default within it.
    pub fn effective_max_in_flight(&self, max_ack_pending: u64) -> u64 {
        self.max_in_flight
            .unwrap_or_else(|| DEFAULT_MAX_IN_FLIGHT.min(max_ack_pending.max(1)))
    }

    /// The idle heartbeat in effect.
    pub fn effective_idle_heartbeat(&self) -> Duration {
        self.idle_heartbeat.unwrap_or(DEFAULT_IDLE_HEARTBEAT)
    }

    /// Checks every field; `at` prefixes the field names. `max_ack_pending`
    /// is the consumer's, which bounds the window.
    pub(crate) fn validate_at(
        &self,
        at: &str,
        max_ack_pending: u64,
        errors: &mut ValidationErrors,
    ) {
        let field = |name: &str| join_field(at, name);
        if let Some(subject) = &self.deliver_subject {
            check_literal_subject(&field("deliver_subject"), subject, errors);
        }
        if let Some(group) = &self.deliver_group {
            check_name(&field("deliver_group"), group, errors);
        }
        match self.max_in_flight {
            Some(0) => errors.add(field("max_in_flight"), 0, "must be positive"),
            Some(window) if window > max_ack_pending => errors.add(
                field("max_in_flight"),
                window,
                format!("must not be above max_ack_pending ({max_ack_pending})"),
            ),
            _ => {}
        }
        if let Some(hb) = self.idle_heartbeat {
            check_duration(&field("idle_heartbeat"), hb, errors);
            if hb < MIN_IDLE_HEARTBEAT {
                errors.add(
                    field("idle_heartbeat"),
                    show_duration(hb),
                    format!("must be at least {}", show_duration(MIN_IDLE_HEARTBEAT)),
                );
            }
        }
    }
}
