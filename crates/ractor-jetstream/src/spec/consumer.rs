//! A durable consumer that must exist, and the actor its messages go to:
//! [`ConsumerSpec`].
//!
//! A spec has three parts, so that a reader sees at once what goes to the
//! server and what only the child uses:
//!
//! - [`ServerSettings`]: the consumer's settings on the server that both
//!   modes share (filters, start, ack wait, redelivery limits);
//! - [`ModeSpec`]: push or pull, with the settings only that mode has
//!   ([`PushSpec`], [`PullSpec`]);
//! - [`ChildSettings`]: the child's own knobs (the longest hold, restart,
//!   dead letters), which the server never sees.
//!
//! In a topology file all of them sit flat beside `mode = "..."`.

use std::time::Duration;

use async_nats::jetstream::consumer;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ValidationErrors};
use crate::mode::ConsumerMode;
use crate::restart::RestartKind;
use crate::spec::check::{
    SERVER_I64_MAX, check_count, check_duration, check_duration_opt, join_field, quoted,
};
use crate::spec::child::{ChildSettings, KeySpec, MAX_WORKERS};
use crate::spec::priority::PriorityPolicy;
use crate::spec::pull_push::{ModeSpec, PullSpec, PushSpec};
use crate::spec::raw::RawConsumerSpec;
use crate::spec::subject::{check_literal_subject, check_name, check_subject, subject_is_subset};

/// The `ack_wait` a consumer gets when its spec does not set one (the
/// server's own default).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a target may hold a delivery undecided when the spec does not
/// set `max_hold` (the child keeps it alive on the server meanwhile). Five
/// minutes, like Kafka's `max.poll.interval.ms`: long enough for slow work,
/// short enough that a stuck target gives its messages back.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(300);
/// The `expires` of a fetch that does not set one.
pub const DEFAULT_FETCH_EXPIRES: Duration = Duration::from_secs(5);
/// The server's `max_ack_pending` when the spec does not set one.
pub const DEFAULT_MAX_ACK_PENDING: u64 = 1000;

/// Where a newly created durable consumer starts. Ignored when the consumer
/// already exists: a bound consumer resumes from its own ack floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// From the first message in the stream. The default.
    #[default]
    All,
    /// From the last message in the stream.
    Last,
    /// Only messages published after the consumer was created.
    New,
    /// From the last message of each subject.
    LastPerSubject,
    /// From this stream sequence (`start = { sequence = 42 }`).
    Sequence(u64),
}

/// The consumer's settings on the server that both modes share.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServerSettings {
    /// Only these subjects of the stream (empty: all of them).
    pub filter_subjects: Vec<String>,
    /// Where a newly created consumer starts.
    pub start: StartPosition,
    /// How long the server waits for an ack before delivering again
    /// (default 30 s).
    pub ack_wait: Option<Duration>,
    /// How many times a message is delivered at most (unset: no limit).
    pub max_deliver: Option<u64>,
    /// How many messages may be delivered and unacknowledged at once
    /// (unset: 1000, the server's default).
    pub max_ack_pending: Option<u64>,
    /// Redelivery delays after missed acks (`["1s", "5s", "30s"]`).
    pub backoff: Vec<Duration>,
    /// A description shown by the server's tools.
    pub description: Option<String>,
}

/// A durable consumer that must exist, and the actor its messages go to.
///
/// Built from [`ConsumerSpec::pull`], [`ConsumerSpec::push`] or
/// [`ConsumerSpec::new`] (with a [`PullSpec`] or [`PushSpec`]), then the
/// chainable setters of the common settings:
///
/// ```
/// use ractor_jetstream::{ConsumerSpec, PushSpec};
/// use std::time::Duration;
///
/// let billing = ConsumerSpec::pull("ORDERS", "billing", "billing-worker")
///     .filter(["orders.created"])
///     .ack_wait(Duration::from_secs(10))
///     .max_deliver(5);
/// billing.validate()?;
///
/// let audit = ConsumerSpec::new("ORDERS", "audit", "audit-worker", PushSpec::default().window(64))
///     .max_hold(Duration::from_secs(60));
/// audit.validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawConsumerSpec", into = "RawConsumerSpec")]
pub struct ConsumerSpec {
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable name; the consumer is bound by this name after a restart.
    /// Unique among the consumers of one supervisor.
    pub durable: String,
    /// The name of the target actor, as registered with the supervisor.
    pub target: String,
    /// Push or pull, with the settings only that mode has.
    pub mode: ModeSpec,
    /// The consumer's settings on the server that both modes share.
    pub server: ServerSettings,
    /// The child's own knobs.
    pub child: ChildSettings,
}

impl ConsumerSpec {
    /// A consumer in `mode` (a [`PullSpec`] or a [`PushSpec`]) with
    /// everything else default.
    pub fn new(
        stream: impl Into<String>,
        durable: impl Into<String>,
        target: impl Into<String>,
        mode: impl Into<ModeSpec>,
    ) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            target: target.into(),
            mode: mode.into(),
            ..Default::default()
        }
    }

    /// A pull consumer with everything else default.
    pub fn pull(
        stream: impl Into<String>,
        durable: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self::new(stream, durable, target, PullSpec::default())
    }

    /// A push consumer with everything else default.
    pub fn push(
        stream: impl Into<String>,
        durable: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self::new(stream, durable, target, PushSpec::default())
    }

    /// Push or pull.
    pub fn mode(&self) -> ConsumerMode {
        self.mode.mode()
    }

    /// Only these subjects of the stream.
    pub fn filter<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.server.filter_subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// Sets where a newly created consumer starts.
    pub fn start(mut self, start: StartPosition) -> Self {
        self.server.start = start;
        self
    }

    /// Sets the server's `ack_wait`.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.server.ack_wait = Some(ack_wait);
        self
    }

    /// Sets the most deliveries of one message.
    pub fn max_deliver(mut self, max_deliver: u64) -> Self {
        self.server.max_deliver = Some(max_deliver);
        self
    }

    /// Sets the most unacknowledged messages at once.
    pub fn max_ack_pending(mut self, max_ack_pending: u64) -> Self {
        self.server.max_ack_pending = Some(max_ack_pending);
        self
    }

    /// Sets the redelivery delays after missed acks.
    pub fn backoff(mut self, backoff: impl IntoIterator<Item = Duration>) -> Self {
        self.server.backoff = backoff.into_iter().collect();
        self
    }

    /// Sets the description shown by the server's tools.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.server.description = Some(description.into());
        self
    }

    /// Sets the longest a target may hold a delivery undecided.
    pub fn max_hold(mut self, max_hold: Duration) -> Self {
        self.child.max_hold = Some(max_hold);
        self
    }

    /// Sets whether the child is restarted when it stops.
    pub fn restart(mut self, restart: RestartKind) -> Self {
        self.child.restart = restart;
        self
    }

    /// Feeds `workers` workers instead of one target, in order per `key`
    /// (see the `keyed` module).
    pub fn workers(mut self, workers: u32, key: KeySpec) -> Self {
        self.child.workers = Some(workers);
        self.child.key = Some(key);
        self
    }

    /// Sends every ack for the server to confirm (see
    /// [`ChildSettings::confirm_acks`]).
    pub fn confirm_acks(mut self, confirm: bool) -> Self {
        self.child.confirm_acks = confirm;
        self
    }

    /// Reads the consumer's lag from the server every `interval` (see
    /// [`ChildSettings::info_interval`]).
    pub fn info_interval(mut self, interval: Duration) -> Self {
        self.child.info_interval = Some(interval);
        self
    }

    /// Watches the server's advisories for this durable (see
    /// [`ChildSettings::advisories`]).
    pub fn advisories(mut self, watch: bool) -> Self {
        self.child.advisories = watch;
        self
    }

    /// Sets where poison messages go before they are terminated.
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.child.dead_letter_subject = Some(subject.into());
        self
    }

    /// The `ack_wait` in effect.
    pub fn effective_ack_wait(&self) -> Duration {
        self.server.ack_wait.unwrap_or(DEFAULT_ACK_WAIT)
    }

    /// The longest hold in effect: how long a target may hold a delivery
    /// undecided.
    pub fn effective_max_hold(&self) -> Duration {
        self.child.max_hold.unwrap_or(DEFAULT_MAX_HOLD)
    }

    /// The `max_ack_pending` in effect.
    pub fn effective_max_ack_pending(&self) -> u64 {
        self.server
            .max_ack_pending
            .unwrap_or(DEFAULT_MAX_ACK_PENDING)
    }

    /// Checks every field; `at` prefixes the field names (for example
    /// `consumers[2]`).
    pub fn validate_at(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| join_field(at, name);
        check_name(&field("stream"), &self.stream, errors);
        check_name(&field("durable"), &self.durable, errors);
        if self.target.trim().is_empty() {
            errors.add(
                field("target"),
                quoted(&self.target),
                "a consumer needs a target actor name",
            );
        }
        self.validate_server(at, errors);
        check_duration_opt(&field("max_hold"), self.child.max_hold, errors);
        self.validate_keyed(at, errors);
        if let Some(subject) = &self.child.dead_letter_subject {
            check_literal_subject(&field("dead_letter_subject"), subject, errors);
            if self
                .server
                .filter_subjects
                .iter()
                .any(|f| subject_is_subset(subject, f))
            {
                errors.add(
                    field("dead_letter_subject"),
                    quoted(subject),
                    "this consumer's own filter captures it: dead letters would come back to it",
                );
            }
        }
        match &self.mode {
            ModeSpec::Pull(pull) => pull.validate_at(at, self.effective_max_ack_pending(), errors),
            ModeSpec::Push(push) => push.validate_at(at, self.effective_max_ack_pending(), errors),
        }
    }

    fn validate_keyed(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| join_field(at, name);
        match (self.child.workers, &self.child.key) {
            (Some(workers), _) if workers == 0 || workers > MAX_WORKERS => errors.add(
                field("workers"),
                workers,
                format!("between 1 and {MAX_WORKERS}"),
            ),
            (None, Some(key)) => errors.add(
                field("key"),
                format!("{key:?}"),
                "a key needs `workers` (the number of workers it spreads the messages over)",
            ),
            _ => {}
        }
        if let Some(KeySpec::Header(name)) = &self.child.key
            && (name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == ':'))
        {
            errors.add(
                field("key.header"),
                quoted(name),
                "a header name: not empty, without spaces or ':'",
            );
        }
    }

    fn validate_server(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| join_field(at, name);
        let server = &self.server;
        for (i, subject) in server.filter_subjects.iter().enumerate() {
            check_subject(&field(&format!("filter_subjects[{i}]")), subject, errors);
        }
        check_duration_opt(&field("ack_wait"), server.ack_wait, errors);
        check_count(
            &field("max_deliver"),
            server.max_deliver,
            SERVER_I64_MAX,
            errors,
        );
        check_count(
            &field("max_ack_pending"),
            server.max_ack_pending,
            SERVER_I64_MAX,
            errors,
        );
        for (i, d) in server.backoff.iter().enumerate() {
            check_duration(&field(&format!("backoff[{i}]")), *d, errors);
        }
        // The server needs a delivery left after the last backoff step.
        if let Some(max_deliver) = server.max_deliver
            && !server.backoff.is_empty()
            && max_deliver <= server.backoff.len() as u64
        {
            errors.add(
                field("backoff"),
                format!("{} entries", server.backoff.len()),
                format!(
                    "max_deliver ({max_deliver}) must be larger than the number of backoff entries"
                ),
            );
        }
        if let StartPosition::Sequence(0) = server.start {
            errors.add(field("start"), "sequence 0", "stream sequences start at 1");
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        self.validate_at("", &mut errors);
        errors.into_result()
    }

    /// The async-nats configuration that creates this consumer.
    /// `deliver_subject` is the push subject to use when the spec sets none.
    pub fn to_config(&self, deliver_subject: Option<String>) -> consumer::Config {
        // Validation keeps every count within the server's range; a value
        // past it (an unvalidated spec) is clamped rather than wrapped.
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let server = &self.server;
        let (filter_subject, filter_subjects) = match server.filter_subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let mut config = consumer::Config {
            durable_name: Some(self.durable.clone()),
            name: Some(self.durable.clone()),
            description: server.description.clone(),
            deliver_policy: match server.start {
                StartPosition::All => consumer::DeliverPolicy::All,
                StartPosition::Last => consumer::DeliverPolicy::Last,
                StartPosition::New => consumer::DeliverPolicy::New,
                StartPosition::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
                StartPosition::Sequence(start_sequence) => {
                    consumer::DeliverPolicy::ByStartSequence { start_sequence }
                }
            },
            ack_policy: consumer::AckPolicy::Explicit,
            // With backoff, the server waits backoff[0] for the first ack
            // and reports it as the ack wait; say the same, so that a bind
            // finds nothing to update.
            ack_wait: server
                .backoff
                .first()
                .copied()
                .unwrap_or_else(|| self.effective_ack_wait()),
            // 0 leaves it to the server: no limit.
            max_deliver: server.max_deliver.map_or(0, to_i64),
            filter_subject,
            filter_subjects,
            max_ack_pending: to_i64(self.effective_max_ack_pending()),
            backoff: server.backoff.clone(),
            ..Default::default()
        };
        match &self.mode {
            ModeSpec::Pull(pull) => {
                config.max_batch = pull.max_batch.map_or(0, to_i64);
                config.max_expires = pull.max_expires.unwrap_or(Duration::ZERO);
                config.max_waiting = pull.max_waiting.map_or(0, to_i64);
                if let Some(priority) = &pull.priority {
                    config.priority_policy = match priority.policy {
                        PriorityPolicy::PinnedClient => consumer::PriorityPolicy::PinnedClient,
                        PriorityPolicy::Overflow => consumer::PriorityPolicy::Overflow,
                    };
                    config.priority_groups = vec![priority.group.clone()];
                    config.priority_timeout = priority.timeout.unwrap_or(Duration::ZERO);
                }
            }
            ModeSpec::Push(push) => {
                config.deliver_subject = push.deliver_subject.clone().or(deliver_subject);
                config.deliver_group = push.deliver_group.clone();
                // Status messages reach one member of a queue group only;
                // see `PushSpec::deliver_group`.
                let grouped = push.deliver_group.is_some();
                config.flow_control = !grouped;
                config.idle_heartbeat = if grouped {
                    Duration::ZERO
                } else {
                    push.effective_idle_heartbeat()
                };
            }
        }
        config
    }
}
