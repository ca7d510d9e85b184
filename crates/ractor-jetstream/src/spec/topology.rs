//! A whole topology: the streams and durable consumers one supervisor
//! manages, loaded from TOML or JSON and checked as a whole.
//!
//! Loading reports every failed field at once, each under its path
//! (`consumers[2].max_in_flight`): the parse (an unknown field, with its
//! line), what the typed specs cannot hold (a setting of the other mode, a
//! negative count), and validation.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::connect::ConnectionSpec;
use crate::error::{Error, FieldError, ValidationErrors};
use crate::spec::check::{join_field, quoted};
use crate::spec::consumer::ConsumerSpec;
use crate::spec::raw::{RawConsumerSpec, RawStreamSpec};
use crate::spec::stream::StreamSpec;
use crate::spec::subject::is_valid_subject;

/// The whole set of streams and durable consumers one supervisor manages.
///
/// Loads from TOML ([`Topology::from_toml_str`]) and JSON
/// ([`Topology::from_json_str`]); unknown fields are rejected with their
/// name and line. Loading validates: a topology with any invalid entry is
/// rejected as a whole, before anything reaches the server.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawTopology")]
pub struct Topology {
    /// The streams that must exist.
    pub streams: Vec<StreamSpec>,
    /// The durable consumers that must exist, one child each.
    pub consumers: Vec<ConsumerSpec>,
    /// How to reach the server (`[connection]` in TOML), for
    /// [`connect`](crate::connect()); unset when the caller connects by other means.
    /// Its secrets are redacted in `Debug` output and left out when
    /// serialized.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionSpec>,
}

/// A topology as a file writes it, before its specs are typed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    #[serde(default)]
    streams: Vec<RawStreamSpec>,
    #[serde(default)]
    consumers: Vec<RawConsumerSpec>,
    #[serde(default)]
    connection: Option<ConnectionSpec>,
}

impl RawTopology {
    /// The typed topology; what its specs cannot hold is recorded in
    /// `errors`, each under its path.
    fn into_topology(self, errors: &mut ValidationErrors) -> Topology {
        Topology {
            streams: (self.streams.into_iter().enumerate())
                .map(|(i, raw)| raw.into_spec(&format!("streams[{i}]"), errors))
                .collect(),
            consumers: (self.consumers.into_iter().enumerate())
                .map(|(j, raw)| raw.into_spec(&format!("consumers[{j}]"), errors))
                .collect(),
            connection: self.connection,
        }
    }

    /// The typed and validated topology, or every failed field.
    fn load(self) -> Result<Topology, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let topology = self.into_topology(&mut errors);
        topology.validate_into(&mut errors);
        if errors.is_empty() {
            Ok(topology)
        } else {
            Err(errors)
        }
    }
}

impl TryFrom<RawTopology> for Topology {
    type Error = ValidationErrors;

    fn try_from(raw: RawTopology) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let topology = raw.into_topology(&mut errors);
        if errors.is_empty() {
            Ok(topology)
        } else {
            Err(errors)
        }
    }
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
        let raw: RawTopology =
            toml::from_str(text).map_err(|err| parse_error("toml", &err.to_string()))?;
        Ok(raw.load()?)
    }

    /// Parses and validates a JSON topology.
    pub fn from_json_str(text: &str) -> Result<Self, Error> {
        let raw: RawTopology =
            serde_json::from_str(text).map_err(|err| parse_error("json", &err.to_string()))?;
        Ok(raw.load()?)
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
        self.validate_into(&mut errors);
        errors.into_result()
    }

    fn validate_into(&self, errors: &mut ValidationErrors) {
        let mut stream_names = HashSet::new();
        for (i, stream) in self.streams.iter().enumerate() {
            let at = format!("streams[{i}]");
            stream.validate_at(&at, errors);
            if !stream_names.insert(stream.name.as_str()) {
                errors.add(format!("{at}.name"), quoted(&stream.name), "declared twice");
            }
        }
        let mut durables = HashSet::new();
        for (i, consumer) in self.consumers.iter().enumerate() {
            let at = format!("consumers[{i}]");
            consumer.validate_at(&at, errors);
            if !durables.insert(consumer.durable.as_str()) {
                errors.add(
                    format!("{at}.durable"),
                    quoted(&consumer.durable),
                    "durable names must be unique within a topology",
                );
            }
            if let Some(stream) = self.streams.iter().find(|s| s.name == consumer.stream) {
                check_filters_covered(&at, consumer, stream, errors);
            }
        }
        if let Some(connection) = &self.connection {
            connection.validate_at("connection", errors);
        }
    }
}

/// Checks that each of a consumer's filters is captured by its stream, and
/// that its dead letters would not come back to it.
pub(crate) fn check_filters_covered(
    at: &str,
    consumer: &ConsumerSpec,
    stream: &StreamSpec,
    errors: &mut ValidationErrors,
) {
    let filters = &consumer.server.filter_subjects;
    if let Some(subject) = &consumer.child.dead_letter_subject
        && filters.is_empty()
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
    for (j, filter) in filters.iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spec::{PullSpec, PushSpec, StartPosition};

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
            topology.consumers[0].server.backoff,
            vec![Duration::from_secs(1), Duration::from_secs(5)]
        );
        assert_eq!(
            topology.consumers[0].server.start,
            StartPosition::Sequence(10)
        );
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
            .consumer(
                ConsumerSpec::new("ORDERS", "d 1", "t", PushSpec::default().window(2000))
                    .filter(["payments.x"]),
            );
        let err = topology.validate().expect_err("invalid");
        let errors = err.validation().expect("validation");
        assert!(errors.has_field("streams[0].name"), "{err}");
        assert!(errors.has_field("consumers[0].durable"), "{err}");
        assert!(errors.has_field("consumers[0].max_in_flight"), "{err}");
        assert!(errors.has_field("consumers[0].filter_subjects[0]"), "{err}");
        assert_eq!(errors.errors().len(), 4, "{err}");
    }

    #[test]
    fn a_setting_of_the_other_mode_is_named_with_the_mode() {
        let text = r#"
            [[consumers]]
            stream = "S"
            durable = "billing"
            mode = "pull"
            target = "t"
            max_in_flight = 10
            max_batch = -1

            [[consumers]]
            stream = "S"
            durable = "audit"
            mode = "push"
            target = "t"
            max_waiting = 5
        "#;
        let err = Topology::from_toml_str(text).expect_err("mixed modes");
        let errors = err.validation().expect("validation");
        let reason = |field: &str| {
            errors
                .errors()
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.reason.clone())
        };
        assert_eq!(
            reason("consumers[0].max_in_flight").as_deref(),
            Some("`max_in_flight` is a push setting; consumer `billing` is pull"),
            "{err}"
        );
        assert!(reason("consumers[0].max_batch").is_some(), "{err}");
        assert_eq!(
            reason("consumers[1].max_waiting").as_deref(),
            Some("`max_waiting` is a pull setting; consumer `audit` is push"),
            "{err}"
        );
        assert_eq!(errors.errors().len(), 3, "{err}");
    }

    #[test]
    fn mode_settings_reach_the_server_config() {
        let config = ConsumerSpec::push("S", "d", "t").to_config(Some("deliver.x".into()));
        assert_eq!(config.deliver_subject.as_deref(), Some("deliver.x"));
        assert!(config.flow_control);
        assert!(!config.idle_heartbeat.is_zero());
        let grouped = PushSpec::default()
            .deliver_group("g")
            .idle_heartbeat(Duration::from_secs(1));
        let grouped = ConsumerSpec::new("S", "d", "t", grouped).to_config(Some("deliver.x".into()));
        assert!(!grouped.flow_control && grouped.idle_heartbeat.is_zero());
        let pull = PullSpec::default().max_batch(10).max_waiting(7);
        let config = ConsumerSpec::new("S", "d", "t", pull).to_config(Some("ignored".into()));
        assert_eq!(config.deliver_subject, None);
        assert_eq!((config.max_batch, config.max_waiting), (10, 7));
        assert_eq!(config.max_ack_pending, 1000);
    }
}
