//! The flat form of the specs in a topology file, and the way to and from
//! the typed specs.
//!
//! A file writes a consumer's settings side by side (`mode = "pull"`,
//! `ack_wait = "30s"`, `max_batch = 10`), while [`ConsumerSpec`] keeps them
//! in typed parts. serde's `flatten` cannot do this and still reject unknown
//! fields, so each spec (de)serializes through a private flat struct here
//! (`#[serde(try_from, into)]`). The conversion is also where what the
//! types cannot hold is refused by name: a push setting on a pull consumer,
//! and a negative count (the old `-1` for "no limit").

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ValidationErrors;
use crate::mode::ConsumerMode;
use crate::restart::RestartKind;
use crate::spec::check::join_field;
use crate::spec::child::{ChildSettings, KeySpec};
use crate::spec::consumer::{ConsumerSpec, ServerSettings, StartPosition};
use crate::spec::priority::{Consume, PrioritySpec};
use crate::spec::pull_push::{ModeSpec, PullSpec, PushSpec};
use crate::spec::stream::{Discard, Retention, Storage, StreamSpec};

/// An integer as written in a file, of either sign, so that a negative
/// count is refused under its field's name instead of as a type error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Int(i128);

impl Serialize for Int {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // i64 first: TOML's own integer type.
        match (i64::try_from(self.0), u64::try_from(self.0)) {
            (Ok(v), _) => serializer.serialize_i64(v),
            (_, Ok(v)) => serializer.serialize_u64(v),
            _ => serializer.serialize_i128(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Int;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Int, E> {
                Ok(Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Int, E> {
                Ok(Int(v))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// The count in `value`, or an error under `field` when it is negative or
/// beyond `u64` (0 and the upper limits are the specs' own checks).
fn count(at: &str, name: &str, value: Option<Int>, errors: &mut ValidationErrors) -> Option<u64> {
    let Int(v) = value?;
    let count = u64::try_from(v).ok();
    if count.is_none() {
        let reason = if v < 0 {
            "must be positive (leave it unset for no limit or the default; -1 is no longer used)"
        } else {
            "is too large"
        };
        errors.add(join_field(at, name), v, reason);
    }
    count
}

fn int(value: Option<u64>) -> Option<Int> {
    value.map(|v| Int(v.into()))
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A stream as a file writes it.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStreamSpec {
    name: String,
    subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    storage: Option<Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retention: Option<Retention>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_messages: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_bytes: Option<Int>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    max_age: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_message_size: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    discard: Option<Discard>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replicas: Option<Int>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    duplicate_window: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

impl RawStreamSpec {
    /// The typed spec; what it cannot hold is recorded in `errors` under
    /// `at` and left unset.
    pub(crate) fn into_spec(self, at: &str, errors: &mut ValidationErrors) -> StreamSpec {
        StreamSpec {
            max_messages: count(at, "max_messages", self.max_messages, errors),
            max_bytes: count(at, "max_bytes", self.max_bytes, errors),
            max_message_size: count(at, "max_message_size", self.max_message_size, errors),
            replicas: count(at, "replicas", self.replicas, errors),
            name: self.name,
            subjects: self.subjects,
            storage: self.storage,
            retention: self.retention,
            max_age: self.max_age,
            discard: self.discard,
            duplicate_window: self.duplicate_window,
            description: self.description,
        }
    }
}

impl TryFrom<RawStreamSpec> for StreamSpec {
    type Error = ValidationErrors;

    fn try_from(raw: RawStreamSpec) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let spec = raw.into_spec("", &mut errors);
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }
}

impl From<StreamSpec> for RawStreamSpec {
    fn from(spec: StreamSpec) -> Self {
        Self {
            name: spec.name,
            subjects: spec.subjects,
            storage: spec.storage,
            retention: spec.retention,
            max_messages: int(spec.max_messages),
            max_bytes: int(spec.max_bytes),
            max_age: spec.max_age,
            max_message_size: int(spec.max_message_size),
            discard: spec.discard,
            replicas: int(spec.replicas),
            duplicate_window: spec.duplicate_window,
            description: spec.description,
        }
    }
}

/// A consumer as a file writes it: every setting flat beside `mode`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsumerSpec {
    stream: String,
    durable: String,
    mode: ConsumerMode,
    target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    filter_subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "is_default")]
    start: StartPosition,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    ack_wait: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_deliver: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ack_pending: Option<Int>,
    #[serde(default, with = "duration_list", skip_serializing_if = "Vec::is_empty")]
    backoff: Vec<Duration>,
    // Read under its old name too, so that files written for 0.1 load.
    #[serde(
        default,
        alias = "decision_timeout",
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    max_hold: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_batch: Option<Int>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    max_expires: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_waiting: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consume: Option<Consume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    priority: Option<PrioritySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deliver_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deliver_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_in_flight: Option<Int>,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    idle_heartbeat: Option<Duration>,
    #[serde(default, skip_serializing_if = "is_default")]
    restart: RestartKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dead_letter_subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    workers: Option<Int>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<KeySpec>,
    #[serde(default, skip_serializing_if = "is_default")]
    confirm_acks: bool,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    info_interval: Option<Duration>,
    #[serde(default, skip_serializing_if = "is_default")]
    advisories: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
}

impl RawConsumerSpec {
    /// The typed spec; what it cannot hold (a setting of the other mode, a
    /// negative count) is recorded in `errors` under `at` and left unset.
    pub(crate) fn into_spec(self, at: &str, errors: &mut ValidationErrors) -> ConsumerSpec {
        let mode = match self.mode {
            ConsumerMode::Pull => {
                self.refuse_settings_of(ConsumerMode::Push, at, errors);
                ModeSpec::Pull(PullSpec {
                    max_batch: count(at, "max_batch", self.max_batch, errors),
                    max_expires: self.max_expires,
                    max_waiting: count(at, "max_waiting", self.max_waiting, errors),
                    consume: self.consume.unwrap_or_default(),
                    window: count(at, "window", self.window, errors),
                    priority: self.priority,
                })
            }
            ConsumerMode::Push => {
                self.refuse_settings_of(ConsumerMode::Pull, at, errors);
                ModeSpec::Push(PushSpec {
                    deliver_subject: self.deliver_subject,
                    deliver_group: self.deliver_group,
                    idle_heartbeat: self.idle_heartbeat,
                    max_in_flight: count(at, "max_in_flight", self.max_in_flight, errors),
                })
            }
        };
        ConsumerSpec {
            mode,
            server: ServerSettings {
                max_deliver: count(at, "max_deliver", self.max_deliver, errors),
                max_ack_pending: count(at, "max_ack_pending", self.max_ack_pending, errors),
                filter_subjects: self.filter_subjects,
                start: self.start,
                ack_wait: self.ack_wait,
                backoff: self.backoff,
                description: self.description,
            },
            child: ChildSettings {
                max_hold: self.max_hold,
                restart: self.restart,
                dead_letter_subject: self.dead_letter_subject,
                workers: count(at, "workers", self.workers, errors)
                    .map(|w| u32::try_from(w).unwrap_or(u32::MAX)),
                key: self.key,
                confirm_acks: self.confirm_acks,
                info_interval: self.info_interval,
                advisories: self.advisories,
            },
            stream: self.stream,
            durable: self.durable,
            target: self.target,
        }
    }

    /// Records every setting of `other` (the mode this consumer is not)
    /// that the file sets.
    fn refuse_settings_of(&self, other: ConsumerMode, at: &str, errors: &mut ValidationErrors) {
        let set = match other {
            ConsumerMode::Push => [
                ("deliver_subject", self.deliver_subject.is_some()),
                ("deliver_group", self.deliver_group.is_some()),
                ("max_in_flight", self.max_in_flight.is_some()),
                ("idle_heartbeat", self.idle_heartbeat.is_some()),
            ]
            .to_vec(),
            ConsumerMode::Pull => [
                ("max_batch", self.max_batch.is_some()),
                ("max_expires", self.max_expires.is_some()),
                ("max_waiting", self.max_waiting.is_some()),
                ("consume", self.consume.is_some()),
                ("window", self.window.is_some()),
                ("priority", self.priority.is_some()),
            ]
            .to_vec(),
        };
        for (name, _) in set.into_iter().filter(|(_, set)| *set) {
            errors.add(
                join_field(at, name),
                "(set)",
                format!(
                    "`{name}` is a {other} setting; consumer `{}` is {}",
                    self.durable, self.mode
                ),
            );
        }
    }
}

impl TryFrom<RawConsumerSpec> for ConsumerSpec {
    type Error = ValidationErrors;

    fn try_from(raw: RawConsumerSpec) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let spec = raw.into_spec("", &mut errors);
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(errors)
        }
    }
}

impl From<ConsumerSpec> for RawConsumerSpec {
    fn from(spec: ConsumerSpec) -> Self {
        let mode = spec.mode();
        let (pull, push) = match spec.mode {
            ModeSpec::Pull(pull) => (pull, PushSpec::default()),
            ModeSpec::Push(push) => (PullSpec::default(), push),
        };
        let ConsumerSpec {
            stream,
            durable,
            target,
            server,
            child,
            ..
        } = spec;
        Self {
            stream,
            durable,
            mode,
            target,
            filter_subjects: server.filter_subjects,
            start: server.start,
            ack_wait: server.ack_wait,
            max_deliver: int(server.max_deliver),
            max_ack_pending: int(server.max_ack_pending),
            backoff: server.backoff,
            max_hold: child.max_hold,
            max_batch: int(pull.max_batch),
            max_expires: pull.max_expires,
            max_waiting: int(pull.max_waiting),
            consume: (pull.consume != Consume::Fetch).then_some(pull.consume),
            window: int(pull.window),
            priority: pull.priority,
            deliver_subject: push.deliver_subject,
            deliver_group: push.deliver_group,
            max_in_flight: int(push.max_in_flight),
            idle_heartbeat: push.idle_heartbeat,
            restart: child.restart,
            dead_letter_subject: child.dead_letter_subject,
            workers: int(child.workers.map(u64::from)),
            key: child.key,
            confirm_acks: child.confirm_acks,
            info_interval: child.info_interval,
            advisories: child.advisories,
            description: server.description,
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
