//! Streams, durable consumers and whole topologies, as plain data.
//!
//! A [`StreamSpec`] says which stream must exist, a [`ConsumerSpec`] which
//! durable consumer must exist on it and which actor gets its messages, and a
//! [`Topology`] is a list of both that loads from TOML or JSON:
//!
//! ```
//! use ractor_jetstream::{ConsumerMode, Topology};
//!
//! let topology = Topology::from_toml_str(r#"
//!     [[streams]]
//!     name = "ORDERS"
//!     subjects = ["orders.>"]
//!
//!     [[consumers]]
//!     stream = "ORDERS"
//!     durable = "billing"
//!     mode = "pull"
//!     target = "billing-worker"
//!     filter_subjects = ["orders.created"]
//!     ack_wait = "30s"
//! "#)?;
//! assert_eq!(topology.consumers[0].mode, ConsumerMode::Pull);
//! # Ok::<(), ractor_jetstream::Error>(())
//! ```
//!
//! Every spec is validated before anything is sent to the server
//! ([`Topology::validate`]); a topology with one bad entry creates nothing.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use serde::{Deserialize, Serialize};

use crate::connect::ConnectionSpec;
use crate::error::{Error, FieldError, ValidationErrors, show_duration};
use crate::restart::RestartKind;

pub use crate::mode::ConsumerMode;

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk; survives a server restart. The default.
    #[default]
    File,
    /// In memory only.
    Memory,
}

/// When a stream lets go of its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Retention {
    /// Until a limit (count, bytes, age) is reached. The default.
    #[default]
    Limits,
    /// Until every consumer with interest has acknowledged it.
    Interest,
    /// Until one consumer acknowledges it.
    WorkQueue,
}

/// What a stream does when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Drop the oldest messages. The default.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

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

/// A stream that must exist.
///
/// Only `name` and `subjects` are required. A field left `None` keeps the
/// server's default when the stream is created, and is not compared with an
/// existing stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// The stream's name: no `.`, `*`, `>`, whitespace or path separators,
    /// at most 255 bytes.
    pub name: String,
    /// The subjects the stream captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// File or memory storage. Cannot be changed on an existing stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Storage>,
    /// Retention policy. Cannot be changed on an existing stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// Maximum number of messages kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<i64>,
    /// Maximum total size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<i64>,
    /// Maximum age of a message (`"24h"`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_age: Option<Duration>,
    /// Maximum size of one message in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_size: Option<i32>,
    /// What to do when a limit is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discard: Option<Discard>,
    /// Number of replicas in a cluster (1 to 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Window for de-duplicating by `Nats-Msg-Id` (`"2m"`).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub duplicate_window: Option<Duration>,
    /// A description shown by the server's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl StreamSpec {
    /// A stream with this name and these subjects, everything else default.
    pub fn new<S: Into<String>>(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = S>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    /// Checks every field; `at` prefixes the field names (for example
    /// `streams[0]`).
    pub fn validate_at(&self, at: &str, errors: &mut ValidationErrors) {
        let field = |name: &str| join_field(at, name);
        check_name(&field("name"), &self.name, errors);
        if self.subjects.is_empty() {
            errors.add(
                field("subjects"),
                "[]",
                "a stream needs at least one subject",
            );
        }
        for (i, subject) in self.subjects.iter().enumerate() {
            check_subject(&field(&format!("subjects[{i}]")), subject, errors);
        }
        check_positive_opt(&field("max_messages"), self.max_messages, errors);
        check_positive_opt(&field("max_bytes"), self.max_bytes, errors);
        check_positive_opt(
            &field("max_message_size"),
            self.max_message_size.map(i64::from),
            errors,
        );
        check_duration_opt(&field("max_age"), self.max_age, errors);
        check_duration_opt(&field("duplicate_window"), self.duplicate_window, errors);
        if let Some(replicas) = self.replicas
            && !(1..=5).contains(&replicas)
        {
            errors.add(
                field("replicas"),
                replicas,
                "replicas must be between 1 and 5",
            );
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        self.validate_at("", &mut errors);
        errors.into_result()
    }

    /// Whether `subject` (which may hold wildcards) is captured by this
    /// stream.
    pub fn covers(&self, subject: &str) -> bool {
        self.subjects.iter().any(|s| subject_is_subset(subject, s))
    }

    /// The async-nats configuration that creates this stream.
    pub fn to_config(&self) -> stream::Config {
        let mut config = stream::Config {
            name: self.name.clone(),
            subjects: self.subjects.clone(),
            description: self.description.clone(),
            ..Default::default()
        };
        self.apply_to(&mut config);
        config
    }

    /// Writes the fields this spec sets onto an existing configuration.
    pub(crate) fn apply_to(&self, config: &mut stream::Config) {
        config.subjects = self.subjects.clone();
        if let Some(storage) = self.storage {
            config.storage = match storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            };
        }
        if let Some(retention) = self.retention {
            config.retention = retention_config(retention);
        }
        if let Some(v) = self.max_messages {
            config.max_messages = v;
        }
        if let Some(v) = self.max_bytes {
            config.max_bytes = v;
        }
        if let Some(v) = self.max_age {
            config.max_age = v;
        }
        if let Some(v) = self.max_message_size {
            config.max_message_size = v;
        }
        if let Some(discard) = self.discard {
            config.discard = match discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            };
        }
        if let Some(v) = self.replicas {
            config.num_replicas = v;
        }
        if let Some(v) = self.duplicate_window {
            config.duplicate_window = v;
        }
        if self.description.is_some() {
            config.description = self.description.clone();
        }
    }

    /// The fields this spec sets that differ from `existing`, split into
    /// those the server can change in place and those it cannot.
    pub(crate) fn diff(&self, existing: &stream::Config) -> StreamDiff {
        let mut diff = StreamDiff::default();
        let wanted: HashSet<&String> = self.subjects.iter().collect();
        let have: HashSet<&String> = existing.subjects.iter().collect();
        if wanted != have {
            diff.mutable.push("subjects".into());
        }
        let desired = self.to_config();
        if self.storage.is_some() && desired.storage != existing.storage {
            diff.immutable.push("storage".into());
        }
        if self.retention.is_some() && desired.retention != existing.retention {
            diff.immutable.push("retention".into());
        }
        let mut check = |set: bool, differs: bool, name: &str| {
            if set && differs {
                diff.mutable.push(name.to_string());
            }
        };
        check(
            self.max_messages.is_some(),
            desired.max_messages != existing.max_messages,
            "max_messages",
        );
        check(
            self.max_bytes.is_some(),
            desired.max_bytes != existing.max_bytes,
            "max_bytes",
        );
        check(
            self.max_age.is_some(),
            desired.max_age != existing.max_age,
            "max_age",
        );
        check(
            self.max_message_size.is_some(),
            desired.max_message_size != existing.max_message_size,
            "max_message_size",
        );
        check(
            self.discard.is_some(),
            desired.discard != existing.discard,
            "discard",
        );
        check(
            self.replicas.is_some(),
            desired.num_replicas.max(1) != existing.num_replicas.max(1),
            "replicas",
        );
        check(
            self.duplicate_window.is_some(),
            desired.duplicate_window != existing.duplicate_window,
            "duplicate_window",
        );
        check(
            self.description.is_some(),
            desired.description != existing.description,
            "description",
        );
        diff
    }
}

/// How an existing stream differs from its spec.
#[derive(Debug, Default)]
pub(crate) struct StreamDiff {
    /// Fields the server can update in place.
    pub mutable: Vec<String>,
    /// Fields that cannot change on an existing stream.
    pub immutable: Vec<String>,
}

fn retention_config(retention: Retention) -> stream::RetentionPolicy {
    match retention {
        Retention::Limits => stream::RetentionPolicy::Limits,
        Retention::Interest => stream::RetentionPolicy::Interest,
        Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
    }
}

/// The `ack_wait` a consumer gets when its spec does not set one (the
/// server's own default).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// How long a target may hold a delivery undecided when the spec does not
/// set `decision_timeout` (the child keeps it alive on the server
/// meanwhile). Five minutes, like Kafka's `max.poll.interval.ms`: long
/// enough for slow work, short enough that a stuck target gives its
/// messages back.
pub const DEFAULT_DECISION_TIMEOUT: Duration = Duration::from_secs(300);
/// The `expires` of a fetch that does not set one.
pub const DEFAULT_FETCH_EXPIRES: Duration = Duration::from_secs(5);
/// The push window when the spec does not set `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 256;
/// The server's `max_ack_pending` when the spec does not set one.
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1000;
/// The idle heartbeat of a push consumer when the spec does not set one.
pub const DEFAULT_IDLE_HEARTBEAT: Duration = Duration::from_secs(5);

/// A durable consumer that must exist, and the actor its messages go to.
///
/// ```
/// use ractor_jetstream::ConsumerSpec;
/// use std::time::Duration;
///
/// let spec = ConsumerSpec {
///     ack_wait: Some(Duration::from_secs(10)),
///     max_batch: Some(100),
///     ..ConsumerSpec::pull("ORDERS", "billing", "billing-worker")
/// };
/// spec.validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSpec {
    /// The stream the consumer reads.
    pub stream: String,
    /// The durable name; the consumer is bound by this name after a restart.
    /// Unique among the consumers of one supervisor.
    pub durable: String,
    /// Push or pull.
    pub mode: ConsumerMode,
    /// The name of the target actor, as registered with the supervisor.
    pub target: String,
    /// Only these subjects of the stream (empty: all of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    /// Where a newly created consumer starts.
    #[serde(default, skip_serializing_if = "is_default")]
    pub start: StartPosition,
    /// How long the server waits for an ack before delivering again
    /// (default 30 s).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub ack_wait: Option<Duration>,
    /// How many times a message is delivered at most (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliver: Option<i64>,
    /// How many messages may be delivered and unacknowledged at once
    /// (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ack_pending: Option<i64>,
    /// Redelivery delays after missed acks (`["1s", "5s", "30s"]`).
    #[serde(default, with = "duration_list", skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<Duration>,
    /// How long the target may hold a delivery without deciding before the
    /// child nak's it (default 5 minutes). Meanwhile the child keeps the
    /// delivery alive on the server (`+WPI` every half of the server's ack
    /// wait), so a slow target never gets a message redelivered to another
    /// worker while it still holds it. [`Delivery::in_progress`](crate::Delivery::in_progress)
    /// starts this time over.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub decision_timeout: Option<Duration>,
    /// Pull only: the largest `batch` a fetch may ask for (unset: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch: Option<i64>,
    /// Pull only: the longest `expires` a fetch may ask for (unset: no
    /// limit).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_expires: Option<Duration>,
    /// Push only: the subject the server pushes to. When unset, a new
    /// consumer gets a fresh inbox subject, and an existing one keeps its
    /// own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_subject: Option<String>,
    /// Push only: a queue group, so that several subscribers (members in
    /// several processes, each running the same spec) share the
    /// deliveries, each message going to one of them.
    ///
    /// A queue-group consumer has no flow control and no idle heartbeats:
    /// the server would send each of those status messages to one random
    /// member, so idle members would miss heartbeats and a flow-control
    /// request landing on a busy member would hold back every member. The
    /// server's `max_ack_pending` bounds what is outstanding instead, and
    /// an idle member checks the consumer on the server every
    /// `idle_heartbeat` to notice that it was deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliver_group: Option<String>,
    /// Push only: at most this many unsettled deliveries at the target
    /// (default 256, and never above `max_ack_pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Push only: the server's idle heartbeat (default 5 s). After two
    /// missed heartbeats the child checks the consumer on the server. With
    /// a `deliver_group` the server sends none; this is then how often an
    /// idle child checks the consumer.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub idle_heartbeat: Option<Duration>,
    /// Whether the child is restarted when it stops (default: permanent).
    #[serde(default, skip_serializing_if = "is_default")]
    pub restart: RestartKind,
    /// Where poison messages go before they are terminated: a message the
    /// target terms, and one whose last allowed delivery (`max_deliver`)
    /// fails. A stream must capture this subject (the publish is confirmed
    /// before the term); the consumer itself must not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_subject: Option<String>,
    /// A description shown by the server's tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Default for ConsumerSpec {
    fn default() -> Self {
        Self {
            stream: String::new(),
            durable: String::new(),
            mode: ConsumerMode::Pull,
            target: String::new(),
            filter_subjects: Vec::new(),
            start: StartPosition::All,
            ack_wait: None,
            max_deliver: None,
            max_ack_pending: None,
            backoff: Vec::new(),
            decision_timeout: None,
            max_batch: None,
            max_expires: None,
            deliver_subject: None,
            deliver_group: None,
            max_in_flight: None,
            idle_heartbeat: None,
            restart: RestartKind::default(),
            dead_letter_subject: None,
            description: None,
        }
    }
}

impl ConsumerSpec {
    /// A pull consumer with everything else default.
    pub fn pull(
        stream: impl Into<String>,
        durable: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            mode: ConsumerMode::Pull,
            target: target.into(),
            ..Default::default()
        }
    }

    /// A push consumer with everything else default.
    pub fn push(
        stream: impl Into<String>,
        durable: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            mode: ConsumerMode::Push,
            target: target.into(),
            ..Default::default()
        }
    }

    /// Only these subjects of the stream.
    pub fn with_filter<S: Into<String>>(mut self, subjects: impl IntoIterator<Item = S>) -> Self {
        self.filter_subjects = subjects.into_iter().map(Into::into).collect();
        self
    }

    /// The `ack_wait` in effect.
    pub fn effective_ack_wait(&self) -> Duration {
        self.ack_wait.unwrap_or(DEFAULT_ACK_WAIT)
    }

    /// The decision timeout in effect: the longest a target may hold a
    /// delivery undecided.
    pub fn effective_decision_timeout(&self) -> Duration {
        self.decision_timeout.unwrap_or(DEFAULT_DECISION_TIMEOUT)
    }

    /// The `max_ack_pending` in effect.
    pub fn effective_max_ack_pending(&self) -> i64 {
        self.max_ack_pending.unwrap_or(DEFAULT_MAX_ACK_PENDING)
    }

    /// The push window in effect.
    pub fn effective_max_in_flight(&self) -> usize {
        self.max_in_flight.unwrap_or_else(|| {
            let pending =
                usize::try_from(self.effective_max_ack_pending()).unwrap_or(DEFAULT_MAX_IN_FLIGHT);
            DEFAULT_MAX_IN_FLIGHT.min(pending.max(1))
        })
    }

    /// The push idle heartbeat in effect.
    pub fn effective_idle_heartbeat(&self) -> Duration {
        self.idle_heartbeat.unwrap_or(DEFAULT_IDLE_HEARTBEAT)
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
        for (i, subject) in self.filter_subjects.iter().enumerate() {
            check_subject(&field(&format!("filter_subjects[{i}]")), subject, errors);
        }
        check_duration_opt(&field("ack_wait"), self.ack_wait, errors);
        check_duration_opt(&field("decision_timeout"), self.decision_timeout, errors);
        if let Some(v) = self.max_deliver
            && (v == 0 || v < -1)
        {
            errors.add(
                field("max_deliver"),
                v,
                "must be positive (or -1 for no limit)",
            );
        }
        if let Some(v) = self.max_ack_pending
            && (v == 0 || v < -1)
        {
            errors.add(
                field("max_ack_pending"),
                v,
                "must be positive (or -1 for no limit)",
            );
        }
        for (i, d) in self.backoff.iter().enumerate() {
            check_duration(&field(&format!("backoff[{i}]")), *d, errors);
        }
        if !self.backoff.is_empty()
            && let Some(max_deliver) = self.max_deliver
            && max_deliver > 0
            && (max_deliver as usize) <= self.backoff.len()
        {
            errors.add(
                field("backoff"),
                format!("{} entries", self.backoff.len()),
                format!(
                    "max_deliver ({max_deliver}) must be larger than the number of backoff entries"
                ),
            );
        }
        if let Some(subject) = &self.dead_letter_subject {
            check_subject(&field("dead_letter_subject"), subject, errors);
            if subject.contains(['*', '>']) {
                errors.add(
                    field("dead_letter_subject"),
                    quoted(subject),
                    "may not contain wildcards",
                );
            }
            if self
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
        if let StartPosition::Sequence(0) = self.start {
            errors.add(field("start"), "sequence 0", "stream sequences start at 1");
        }
        match self.mode {
            ConsumerMode::Pull => {
                if let Some(v) = self.max_batch
                    && v <= 0
                {
                    errors.add(field("max_batch"), v, "must be positive");
                }
                check_duration_opt(&field("max_expires"), self.max_expires, errors);
                let push_only = [
                    ("deliver_subject", self.deliver_subject.is_some()),
                    ("deliver_group", self.deliver_group.is_some()),
                    ("max_in_flight", self.max_in_flight.is_some()),
                    ("idle_heartbeat", self.idle_heartbeat.is_some()),
                ];
                for (name, set) in push_only {
                    if set {
                        errors.add(field(name), "set", "is a push setting, but mode = \"pull\"");
                    }
                }
            }
            ConsumerMode::Push => {
                let pull_only = [
                    ("max_batch", self.max_batch.is_some()),
                    ("max_expires", self.max_expires.is_some()),
                ];
                for (name, set) in pull_only {
                    if set {
                        errors.add(field(name), "set", "is a pull setting, but mode = \"push\"");
                    }
                }
                if let Some(subject) = &self.deliver_subject {
                    check_subject(&field("deliver_subject"), subject, errors);
                    if subject.contains(['*', '>']) {
                        errors.add(
                            field("deliver_subject"),
                            quoted(subject),
                            "may not contain wildcards",
                        );
                    }
                }
                if let Some(group) = &self.deliver_group {
                    check_name(&field("deliver_group"), group, errors);
                }
                if let Some(window) = self.max_in_flight {
                    if window == 0 {
                        errors.add(field("max_in_flight"), window, "must be positive");
                    }
                    let pending = self.effective_max_ack_pending();
                    if pending > 0 && i64::try_from(window).map_or(true, |w| w > pending) {
                        errors.add(
                            field("max_in_flight"),
                            window,
                            format!("must not be above max_ack_pending ({pending})"),
                        );
                    }
                }
                if let Some(hb) = self.idle_heartbeat {
                    check_duration(&field("idle_heartbeat"), hb, errors);
                    if hb < Duration::from_millis(100) {
                        errors.add(
                            field("idle_heartbeat"),
                            show_duration(hb),
                            "must be at least 100ms",
                        );
                    }
                }
            }
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
        let (filter_subject, filter_subjects) = match self.filter_subjects.as_slice() {
            [one] => (one.clone(), Vec::new()),
            many => (String::new(), many.to_vec()),
        };
        let push = self.mode == ConsumerMode::Push;
        consumer::Config {
            durable_name: Some(self.durable.clone()),
            name: Some(self.durable.clone()),
            description: self.description.clone(),
            deliver_subject: if push {
                self.deliver_subject.clone().or(deliver_subject)
            } else {
                None
            },
            deliver_group: if push {
                self.deliver_group.clone()
            } else {
                None
            },
            deliver_policy: match self.start {
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
            ack_wait: self
                .backoff
                .first()
                .copied()
                .unwrap_or_else(|| self.effective_ack_wait()),
            max_deliver: self.max_deliver.unwrap_or(0),
            filter_subject,
            filter_subjects,
            max_ack_pending: self.effective_max_ack_pending(),
            max_batch: if push { 0 } else { self.max_batch.unwrap_or(0) },
            max_expires: if push {
                Duration::ZERO
            } else {
                self.max_expires.unwrap_or(Duration::ZERO)
            },
            // Status messages reach one member of a queue group only; see
            // `deliver_group`.
            flow_control: push && self.deliver_group.is_none(),
            idle_heartbeat: if push && self.deliver_group.is_none() {
                self.effective_idle_heartbeat()
            } else {
                Duration::ZERO
            },
            backoff: self.backoff.clone(),
            ..Default::default()
        }
    }
}

/// The whole set of streams and durable consumers one supervisor manages.
///
/// Loads from TOML ([`Topology::from_toml_str`]) and JSON
/// ([`Topology::from_json_str`]); unknown fields are rejected with their
/// name and line. Loading validates: a topology with any invalid entry is
/// rejected as a whole, before anything reaches the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    /// The streams that must exist.
    #[serde(default)]
    pub streams: Vec<StreamSpec>,
    /// The durable consumers that must exist, one child each.
    #[serde(default)]
    pub consumers: Vec<ConsumerSpec>,
    /// How to reach the server (`[connection]` in TOML), for
    /// [`connect`](crate::connect()); unset when the caller connects by other means.
    /// Its secrets are redacted in `Debug` output but kept when
    /// serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSpec>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a stream.
    pub fn stream(mut self, spec: StreamSpec) -> Self {
        self.streams.push(spec);
        self
    }

    /// Adds a consumer.
    pub fn consumer(mut self, spec: ConsumerSpec) -> Self {
        self.consumers.push(spec);
        self
    }

    /// Parses and validates a TOML topology.
    pub fn from_toml_str(text: &str) -> Result<Self, Error> {
        let topology: Topology =
            toml::from_str(text).map_err(|err| parse_error("toml", &err.to_string()))?;
        topology.validate()?;
        Ok(topology)
    }

    /// Parses and validates a JSON topology.
    pub fn from_json_str(text: &str) -> Result<Self, Error> {
        let topology: Topology =
            serde_json::from_str(text).map_err(|err| parse_error("json", &err.to_string()))?;
        topology.validate()?;
        Ok(topology)
    }

    /// Reads, parses and validates a topology file: JSON when the file name
    /// ends in `.json`, TOML otherwise.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|err| Error::invalid("path", path.display(), format!("cannot read: {err}")))?;
        if path.extension().is_some_and(|ext| ext == "json") {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        }
    }

    /// The topology as TOML.
    pub fn to_toml_string(&self) -> Result<String, Error> {
        toml::to_string(self).map_err(|err| Error::invalid("topology", "(value)", err.to_string()))
    }

    /// Checks every stream and consumer, and how they fit together (each
    /// consumer's stream is declared or assumed to exist; filters fall
    /// within the stream's subjects; durable names are unique). Returns every
    /// failed field at once.
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        let mut stream_names = HashSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = format!("streams[{i}]");
            stream.validate_at(&at, &mut errors);
            if !stream_names.insert(stream.name.as_str()) {
                errors.add(format!("{at}.name"), quoted(&stream.name), "declared twice");
            }
        }
        let mut durables = HashSet::new();
        for (i, consumer) in self.consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            consumer.validate_at(&at, &mut errors);
            if !durables.insert(consumer.durable.as_str()) {
                errors.add(
                    format!("{at}.durable"),
                    quoted(&consumer.durable),
                    "durable names must be unique within a topology",
                );
            }
            if let Some(stream) = self.streams.iter().find(|s| s.name == consumer.stream) {
                check_filters_covered(&at, consumer, stream, &mut errors);
            }
        }
        if let Some(connection) = &self.connection {
            connection.validate_at("connection", &mut errors);
        }
        errors.into_result()
    }
}

/// Checks that each of a consumer's filters is captured by its stream.
pub(crate) fn check_filters_covered(
    at: &str,
    consumer: &ConsumerSpec,
    stream: &StreamSpec,
    errors: &mut ValidationErrors,
) {
    if let Some(subject) = &consumer.dead_letter_subject
        && consumer.filter_subjects.is_empty()
        && stream.covers(subject)
    {
        errors.add(
            join_field(at, "dead_letter_subject"),
            quoted(subject),
            format!(
                "stream `{}` captures it and this consumer reads the whole stream: dead letters would come back to it",
                stream.name
            ),
        );
    }
    for (j, filter) in consumer.filter_subjects.iter().enumerate() {
        if is_valid_subject(filter) && !stream.covers(filter) {
            errors.add(
                join_field(at, &format!("filter_subjects[{j}]")),
                quoted(filter),
                format!(
                    "stream `{}` does not capture it (its subjects: {})",
                    stream.name,
                    stream.subjects.join(", ")
                ),
            );
        }
    }
}

fn parse_error(format: &str, message: &str) -> Error {
    // Both toml and serde_json name the offending field and its position
    // in their message; keep it whole, on one line.
    let message = message.trim().replace('\n', " ");
    let field = unknown_field_name(&message).unwrap_or_else(|| "topology".to_string());
    Error::Invalid(ValidationErrors::single(FieldError::new(
        field,
        format!("({format})"),
        message,
    )))
}

/// Pulls the field name out of serde's "unknown field `x`, expected ..."
/// message. The name itself may hold backticks, and may be empty (then it
/// is reported as `""`, so that the error still names something).
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.split_once("unknown field `")?.1;
    let end = ["`, expected", "`, there are no fields"]
        .iter()
        .filter_map(|tail| rest.find(tail))
        .min()
        .or_else(|| rest.rfind('`'))?;
    let name = &rest[..end];
    Some(if name.is_empty() {
        "\"\"".to_string()
    } else {
        name.to_string()
    })
}

fn join_field(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// Checks a stream, consumer or queue-group name: non-empty, at most 255
/// characters, no `.`, `*`, `>`, whitespace or path separators.
pub(crate) fn check_name(field: &str, name: &str, errors: &mut ValidationErrors) {
    if name.is_empty() {
        errors.add(field, "\"\"", "must not be empty");
    } else if name.len() > 255 {
        // The server counts bytes, not characters.
        errors.add(
            field,
            format!("({} bytes)", name.len()),
            "must be at most 255 bytes",
        );
    } else if let Some(bad) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        errors.add(field, quoted(name), format!("must not contain {bad:?}"));
    }
}

/// Whether `subject` is a valid NATS subject (wildcards allowed).
pub(crate) fn is_valid_subject(subject: &str) -> bool {
    let mut tokens = subject.split('.').peekable();
    if subject.is_empty() {
        return false;
    }
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return false;
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return false;
        }
        if token == ">" && tokens.peek().is_some() {
            return false;
        }
    }
    true
}

pub(crate) fn check_subject(field: &str, subject: &str, errors: &mut ValidationErrors) {
    if !is_valid_subject(subject) {
        errors.add(
            field,
            quoted(subject),
            "not a valid subject (dot-separated non-empty tokens, no whitespace; `*` and `>` only as whole tokens, `>` last)",
        );
    }
}

fn check_positive_opt(field: &str, value: Option<i64>, errors: &mut ValidationErrors) {
    if let Some(v) = value
        && v <= 0
        && v != -1
    {
        errors.add(field, v, "must be positive (or -1 for no limit)");
    }
}

fn check_duration(field: &str, value: Duration, errors: &mut ValidationErrors) {
    if value.is_zero() {
        errors.add(field, "0s", "must be longer than zero");
    }
}

fn check_duration_opt(field: &str, value: Option<Duration>, errors: &mut ValidationErrors) {
    if let Some(d) = value {
        check_duration(field, d, errors);
    }
}

/// Whether every subject matched by `filter` is also matched by `pattern`.
pub(crate) fn subject_is_subset(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Serde for a list of humantime durations (`["1s", "5s"]`).
mod duration_list {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, ser::SerializeSeq};

    pub fn serialize<S: Serializer>(value: &[Duration], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(value.len()))?;
        for d in value {
            seq.serialize_element(
                &humantime_serde::re::humantime::format_duration(*d).to_string(),
            )?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Duration>, D::Error> {
        let texts = Vec::<String>::deserialize(deserializer)?;
        texts
            .iter()
            .map(|t| {
                humantime_serde::re::humantime::parse_duration(t).map_err(serde::de::Error::custom)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_rules() {
        assert!(subject_is_subset("orders.created", "orders.>"));
        assert!(subject_is_subset("orders.*", "orders.>"));
        assert!(subject_is_subset("orders.*", "orders.*"));
        assert!(subject_is_subset("orders.a.b", "orders.>"));
        assert!(!subject_is_subset("orders", "orders.>"));
        assert!(!subject_is_subset("orders.>", "orders.*"));
        assert!(!subject_is_subset("payments.x", "orders.>"));
        assert!(!subject_is_subset("orders.*", "orders.created"));
        assert!(subject_is_subset("a.b", "*.b"));
    }

    #[test]
    fn names_and_subjects() {
        let mut errors = ValidationErrors::new();
        check_name("name", "ORDERS", &mut errors);
        assert!(errors.is_empty());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b"] {
            let mut errors = ValidationErrors::new();
            check_name("name", bad, &mut errors);
            assert!(errors.has_field("name"), "{bad:?} should be rejected");
        }
        assert!(is_valid_subject("orders.>"));
        assert!(is_valid_subject("orders.*.x"));
        assert!(!is_valid_subject("orders..x"));
        assert!(!is_valid_subject("orders.>.x"));
        assert!(!is_valid_subject("orders.a*"));
        assert!(!is_valid_subject(""));
    }

    #[test]
    fn topology_round_trips_and_rejects_unknown_fields() {
        let text = r#"
            [[streams]]
            name = "ORDERS"
            subjects = ["orders.>"]
            max_age = "1h"

            [[consumers]]
            stream = "ORDERS"
            durable = "billing"
            mode = "pull"
            target = "billing"
            filter_subjects = ["orders.created"]
            ack_wait = "30s"
            backoff = ["1s", "5s"]
            start = { sequence = 10 }
        "#;
        let topology = Topology::from_toml_str(text).expect("valid topology");
        assert_eq!(
            topology.consumers[0].backoff,
            vec![Duration::from_secs(1), Duration::from_secs(5)]
        );
        assert_eq!(topology.consumers[0].start, StartPosition::Sequence(10));
        let again = Topology::from_toml_str(&topology.to_toml_string().expect("serializes"))
            .expect("round trip");
        assert_eq!(topology, again);
        let json = serde_json::to_string(&topology).expect("json");
        assert_eq!(
            Topology::from_json_str(&json).expect("json round trip"),
            topology
        );

        let err = Topology::from_toml_str(&text.replace("ack_wait", "ack_wiat"))
            .expect_err("unknown field");
        let errors = err.validation().expect("validation error");
        assert!(errors.has_field("ack_wiat"), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
    }

    #[test]
    fn collects_one_error_per_field() {
        let topology = Topology::new()
            .stream(StreamSpec::new("BAD.NAME", ["orders.>"]))
            .stream(StreamSpec::new("ORDERS", ["orders.>"]))
            .consumer(ConsumerSpec {
                max_in_flight: Some(2000),
                ..ConsumerSpec::push("ORDERS", "d 1", "t").with_filter(["payments.x"])
            });
        let err = topology.validate().expect_err("invalid");
        let errors = err.validation().expect("validation");
        assert!(errors.has_field("streams[0].name"), "{err}");
        assert!(errors.has_field("consumers[0].durable"), "{err}");
        assert!(errors.has_field("consumers[0].max_in_flight"), "{err}");
        assert!(errors.has_field("consumers[0].filter_subjects[0]"), "{err}");
        assert_eq!(errors.errors().len(), 4, "{err}");
    }

    #[test]
    fn mode_specific_fields() {
        let spec = ConsumerSpec {
            max_batch: Some(10),
            ..ConsumerSpec::push("S", "d", "t")
        };
        assert!(
            spec.validate()
                .expect_err("pull field on push")
                .validation()
                .is_some_and(|e| e.has_field("max_batch"))
        );
        let spec = ConsumerSpec {
            max_in_flight: Some(10),
            ..ConsumerSpec::pull("S", "d", "t")
        };
        assert!(spec.validate().is_err());
        let config = ConsumerSpec::push("S", "d", "t").to_config(Some("deliver.x".into()));
        assert_eq!(config.deliver_subject.as_deref(), Some("deliver.x"));
        assert!(config.flow_control);
        assert!(!config.idle_heartbeat.is_zero());
        let grouped = ConsumerSpec {
            deliver_group: Some("g".into()),
            idle_heartbeat: Some(Duration::from_secs(1)),
            ..ConsumerSpec::push("S", "d", "t")
        }
        .to_config(Some("deliver.x".into()));
        assert!(!grouped.flow_control && grouped.idle_heartbeat.is_zero());
        let config = ConsumerSpec::pull("S", "d", "t").to_config(Some("ignored".into()));
        assert_eq!(config.deliver_subject, None);
    }
}
