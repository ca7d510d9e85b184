//! A stream that must exist: [`StreamSpec`], its storage, retention and
//! discard policies, the async-nats configuration it becomes, and how an
//! existing stream differs from it.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::stream;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ValidationErrors};
use crate::spec::check::{SERVER_I64_MAX, check_count, check_duration_opt, join_field};
use crate::spec::raw::RawStreamSpec;
use crate::spec::subject::{check_name, check_subject, subject_is_subset};

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

/// The largest `max_message_size` the server takes (it stores a signed
/// 32-bit number).
pub(crate) const MAX_MESSAGE_SIZE_LIMIT: u64 = i32::MAX as u64;

/// A stream that must exist.
///
/// Only `name` and `subjects` are required. A field left `None` keeps the
/// server's default when the stream is created (no limit, for the limits),
/// and is not compared with an existing stream.
///
/// ```
/// use ractor_jetstream::StreamSpec;
///
/// let spec = StreamSpec {
///     max_messages: Some(1_000_000),
///     ..StreamSpec::new("ORDERS", ["orders.>"])
/// };
/// spec.validate()?;
/// # Ok::<(), ractor_jetstream::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawStreamSpec", into = "RawStreamSpec")]
pub struct StreamSpec {
    /// The stream's name: no `.`, `*`, `>`, whitespace or path separators,
    /// at most 255 bytes.
    pub name: String,
    /// The subjects the stream captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// File or memory storage. Cannot be changed on an existing stream.
    pub storage: Option<Storage>,
    /// Retention policy. Cannot be changed on an existing stream.
    pub retention: Option<Retention>,
    /// Maximum number of messages kept (unset: no limit).
    pub max_messages: Option<u64>,
    /// Maximum total size in bytes (unset: no limit).
    pub max_bytes: Option<u64>,
    /// Maximum age of a message (`"24h"`; unset: no limit).
    pub max_age: Option<Duration>,
    /// Maximum size of one message in bytes, at most `i32::MAX` (unset: the
    /// server's own limit).
    pub max_message_size: Option<u64>,
    /// What to do when a limit is reached.
    pub discard: Option<Discard>,
    /// Number of replicas in a cluster (1 to 5).
    pub replicas: Option<u64>,
    /// Window for de-duplicating by `Nats-Msg-Id` (`"2m"`).
    pub duplicate_window: Option<Duration>,
    /// A description shown by the server's tools.
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
        check_count(
            &field("max_messages"),
            self.max_messages,
            SERVER_I64_MAX,
            errors,
        );
        check_count(&field("max_bytes"), self.max_bytes, SERVER_I64_MAX, errors);
        check_count(
            &field("max_message_size"),
            self.max_message_size,
            MAX_MESSAGE_SIZE_LIMIT,
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
        // Validation keeps every count within the server's range; a value
        // past it (an unvalidated spec) is clamped rather than wrapped.
        let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        config.subjects = self.subjects.clone();
        if let Some(storage) = self.storage {
            config.storage = match storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            };
        }
        if let Some(retention) = self.retention {
            config.retention = match retention {
                Retention::Limits => stream::RetentionPolicy::Limits,
                Retention::Interest => stream::RetentionPolicy::Interest,
                Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            };
        }
        if let Some(v) = self.max_messages {
            config.max_messages = to_i64(v);
        }
        if let Some(v) = self.max_bytes {
            config.max_bytes = to_i64(v);
        }
        if let Some(v) = self.max_age {
            config.max_age = v;
        }
        if let Some(v) = self.max_message_size {
            config.max_message_size = i32::try_from(v).unwrap_or(i32::MAX);
        }
        if let Some(discard) = self.discard {
            config.discard = match discard {
                Discard::Old => stream::DiscardPolicy::Old,
                Discard::New => stream::DiscardPolicy::New,
            };
        }
        if let Some(v) = self.replicas {
            config.num_replicas = usize::try_from(v).unwrap_or(usize::MAX);
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
