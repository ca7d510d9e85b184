//! A member's declaration of a partitioned group ([`GroupSpec`]), its
//! checks, the partition durables it implies, and the group's stream.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;

use super::partition::{self, durable_name};
use crate::error::{Error, ServerErrorKind, ValidationErrors};
use crate::spec::{ChildSettings, ConsumerSpec, KeySpec, PrioritySpec, PullSpec};

/// The priority group every partition durable names.
const PIN_GROUP: &str = "partition";

/// The window of each partition's child when the spec sets none.
pub const DEFAULT_GROUP_WINDOW: u64 = 64;

/// The priority timeout when the spec sets none.
pub const DEFAULT_PRIORITY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a leaving member waits for its partitions' decisions when the
/// call gives no time.
pub const DEFAULT_LEAVE_DRAIN: Duration = Duration::from_secs(30);

/// The shortest priority timeout a group takes: its members renew their
/// membership five times within it.
const MIN_GROUP_TIMEOUT: Duration = Duration::from_millis(500);

/// One member's declaration of a partitioned group.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// The stream, and the group's name.
    pub stream: String,
    /// The subject pattern publishers publish to (`orders.*`).
    pub subjects: String,
    /// The 1-based position of the key token in `subjects`; it must be a
    /// `*`.
    pub key_token: usize,
    /// How many partitions.
    pub partitions: u32,
    /// This member's name.
    pub member: String,
    /// The static member list, when there is one: its order is the
    /// assignment order, and only its members take partitions.
    pub members: Option<Vec<String>>,
    /// How long the server keeps the pin of a member that stopped pulling,
    /// and how long a member stays in the group without renewing; also the
    /// partition durables' ack wait.
    pub priority_timeout: Duration,
    /// The target (registered with the supervisor) of every partition.
    pub target: String,
    /// Each partition child's window (default 64).
    pub window: Option<u64>,
    /// The stream's and the members' bucket's replicas (default 1).
    pub replicas: Option<u64>,
    /// The child's own settings for every partition (keyed workers, hold,
    /// restart policy, ...). With `workers` set and no `key`, the keyed
    /// workers' key is the group's key token, so the keys of one partition
    /// go in parallel, each in order. A `key = { subject_token = I }`
    /// counts the tokens of the subject as stored, which begins with the
    /// partition (`3.orders.acme`: `orders` is token 1).
    pub child: ChildSettings,
}

impl GroupSpec {
    /// A group over `stream` with everything optional unset.
    pub fn new(
        stream: impl Into<String>,
        subjects: impl Into<String>,
        key_token: usize,
        partitions: u32,
        member: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        Self {
            stream: stream.into(),
            subjects: subjects.into(),
            key_token,
            partitions,
            member: member.into(),
            members: None,
            priority_timeout: DEFAULT_PRIORITY_TIMEOUT,
            target: target.into(),
            window: None,
            replicas: None,
            child: ChildSettings::default(),
        }
    }

    /// Sets the static member list.
    pub fn members<I: IntoIterator<Item = S>, S: Into<String>>(mut self, members: I) -> Self {
        self.members = Some(members.into_iter().map(Into::into).collect());
        self
    }

    /// Sets the priority timeout.
    pub fn priority_timeout(mut self, timeout: Duration) -> Self {
        self.priority_timeout = timeout;
        self
    }

    /// Sets each partition child's window.
    pub fn window(mut self, window: u64) -> Self {
        self.window = Some(window);
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        let bucket_safe = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !bucket_safe(&self.stream) {
            errors.add(
                "stream",
                format!("{:?}", self.stream),
                "must be letters, digits, `_` and `-` (it names the members' bucket too)",
            );
        }
        if !bucket_safe(&self.member) {
            errors.add(
                "member",
                format!("{:?}", self.member),
                "must be letters, digits, `_` and `-`",
            );
        }
        if self.partitions == 0 || self.partitions > 1024 {
            errors.add("partitions", self.partitions, "must be from 1 to 1024");
        }
        if partition::transform_destination(&self.subjects, self.key_token, self.partitions.max(1))
            .is_none()
        {
            errors.add(
                "key_token",
                self.key_token,
                format!(
                    "must be the 1-based position of a `*` token in `{}`",
                    self.subjects
                ),
            );
        }
        if self
            .subjects
            .split('.')
            .any(|t| t.is_empty() || t.contains('>'))
        {
            errors.add(
                "subjects",
                format!("{:?}", self.subjects),
                "must be tokens and `*` wildcards, without `>`",
            );
        }
        if let Some(members) = &self.members {
            if !members.contains(&self.member) {
                errors.add(
                    "members",
                    members.join(","),
                    format!("must include this member `{}`", self.member),
                );
            }
            let distinct: BTreeSet<&String> = members.iter().collect();
            if distinct.len() != members.len() {
                errors.add("members", members.join(","), "must not name a member twice");
            }
        }
        if self.priority_timeout < MIN_GROUP_TIMEOUT {
            errors.add(
                "priority_timeout",
                crate::error::show_duration(self.priority_timeout),
                format!(
                    "must be at least {}",
                    crate::error::show_duration(MIN_GROUP_TIMEOUT)
                ),
            );
        }
        if self.window == Some(0) {
            errors.add("window", 0, "must be positive");
        }
        if self.replicas.is_some_and(|r| r == 0 || r > 5) {
            errors.add(
                "replicas",
                self.replicas.unwrap_or(0),
                "must be from 1 to 5",
            );
        }
        // The partition specs themselves (window, child settings).
        self.partition_spec(0).validate_at("", &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Invalid(errors))
        }
    }

    /// The durable spec of partition `partition`.
    pub fn partition_spec(&self, partition: u32) -> ConsumerSpec {
        let window = self.window.unwrap_or(DEFAULT_GROUP_WINDOW);
        let pull = PullSpec::continuous()
            .window(window)
            .priority(PrioritySpec::pinned(PIN_GROUP, self.priority_timeout));
        let mut spec = ConsumerSpec::new(
            self.stream.clone(),
            durable_name(&self.stream, partition),
            self.target.clone(),
            pull,
        );
        spec.server.filter_subjects = vec![partition::filter_subject(partition)];
        spec.server.ack_wait = Some(self.priority_timeout);
        // Bounds what a new holder keeps behind its takeover barrier.
        spec.server.max_ack_pending = Some(window * 4);
        spec.child = self.child.clone();
        if spec.child.workers.is_some() && spec.child.key.is_none() {
            // Keyed workers without a key of their own take the group's:
            // the published subject's `key_token` (1-based) is token
            // `key_token` (0-based) of the stored one, behind the partition.
            spec.child.key = Some(KeySpec::SubjectToken(self.key_token));
        }
        spec
    }

    pub(crate) fn replicas(&self) -> usize {
        usize::try_from(self.replicas.unwrap_or(1)).unwrap_or(1)
    }
}

/// Makes the group's stream exist with its partition transform. A stream of
/// that name without the same transform is a conflict, left as it is.
pub async fn ensure_group_stream(js: &jetstream::Context, spec: &GroupSpec) -> Result<(), Error> {
    spec.validate()?;
    let destination =
        partition::transform_destination(&spec.subjects, spec.key_token, spec.partitions)
            .unwrap_or_default();
    let op = format!("create the group stream {}", spec.stream);
    match js.get_stream(&spec.stream).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|err| Error::server_caused(op.clone(), ServerErrorKind::Other, err))?;
            let transform = info.config.subject_transform.as_ref();
            let same = transform
                .is_some_and(|t| t.source == spec.subjects && t.destination == destination);
            if same {
                return Ok(());
            }
            Err(Error::StreamConflict {
                stream: spec.stream.clone(),
                fields: vec!["subject_transform".into()],
                detail: format!(
                    "the group needs {} -> {destination}, the stream has {:?}",
                    spec.subjects,
                    transform.map(|t| format!("{} -> {}", t.source, t.destination))
                ),
            })
        }
        Err(err)
            if matches!(err.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            let config = partition::stream_config(
                &spec.stream,
                &spec.subjects,
                destination,
                spec.replicas(),
            );
            match js.create_stream(config).await {
                Ok(_) => Ok(()),
                // Another member created it meanwhile: check it is the same.
                Err(_) => Box::pin(ensure_group_stream(js, spec)).await,
            }
        }
        Err(err) => Err(Error::server_caused(op, ServerErrorKind::Other, err)),
    }
}
