//! Partitioned consumer groups: a stream split into `P` partitions by a key,
//! each partition processed by one member process at a time, in order, with
//! the others standing by.
//!
//! Every member runs a [`JetStreamSupervisor`](crate::JetStreamSupervisor)
//! and a [`PartitionedGroup`] with the same [`GroupSpec`] (only `member`
//! differs). The group is built on the server's own features:
//!
//! - **Partition by key, fixed when stored:** the stream has a subject
//!   transform `{{partition(P, k)}}` over the key token, so each message is
//!   stored under its partition number (see `group/partition.rs`).
//! - **One durable per partition** (`<stream>_<p>`, filtered on `p.>`),
//!   pulled continuously, with a `pinned_client` priority group: the server
//!   delivers a partition to one pulling member at a time.
//! - **Membership** in a key-value bucket (`rj-members-<stream>`): each
//!   member renews its key every fifth of the priority timeout; one whose
//!   key is older than the timeout, or deleted, is gone
//!   (`group/membership.rs`).
//! - **Assignment** is a function of the live members only (partition `p`
//!   to member `p mod n`, in the order of the static member list when there
//!   is one, by name otherwise; `group/assign.rs`), so members agree without
//!   talking to each other. A member runs a child for each partition it is
//!   assigned. Where two members' views differ for a moment, the pin still
//!   gives the partition to one of them only.
//!
//! **When a member dies,** its key ages out after the priority timeout and
//! its pins expire after the same timeout without pulls: the survivors
//! assigned its partitions start pulling and the server pins them. The
//! partition durables use the priority timeout as their ack wait (the child
//! keeps held deliveries alive), so what the dead member held comes back
//! about when its partitions move; the server redelivers those before
//! later messages, so order per key holds across a takeover.
//!
//! **When a member leaves** ([`GroupHandle::leave`]), it deletes its key
//! first (the others start pulling its partitions, on standby), then drains
//! each partition's child (waits for the decisions in flight, nak's what
//! was not forwarded) and releases the pin: a standby takes over at once.
//! A member that joins is given its share the same way by the others.
//!
//! Inside a member, a partition can feed keyed workers: set `workers` and
//! `key` in [`GroupSpec::child`].

mod assign;
mod membership;
mod partition;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::error::{ActorErrorKind, Error, ServerErrorKind, ValidationErrors};
use crate::handle::SupervisorHandle;
use crate::spec::{ChildSettings, ConsumerSpec, PrioritySpec, PullSpec};

pub use partition::{durable_name, split_stored_subject};

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
    /// restart policy, ...).
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
        let pull = PullSpec::continuous()
            .window(self.window.unwrap_or(DEFAULT_GROUP_WINDOW))
            .priority(PrioritySpec::pinned(PIN_GROUP, self.priority_timeout));
        let mut spec = ConsumerSpec::new(
            self.stream.clone(),
            durable_name(&self.stream, partition),
            self.target.clone(),
            pull,
        );
        spec.server.filter_subjects = vec![partition::filter_subject(partition)];
        spec.server.ack_wait = Some(self.priority_timeout);
        spec.child = self.child.clone();
        spec
    }

    fn replicas(&self) -> usize {
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

/// What a member knows about its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// This member.
    pub member: String,
    /// The live members, in assignment order, as this member sees them.
    pub members: Vec<String>,
    /// The partitions this member holds.
    pub held: Vec<u32>,
    /// Partitions this member took over from another after its first
    /// assignment.
    pub takeovers: u64,
}

/// The group actor's messages.
#[derive(Debug)]
#[non_exhaustive]
pub enum GroupMsg {
    /// Reports the member's [`GroupStatus`].
    Status(RpcReplyPort<GroupStatus>),
    /// Leaves the group: see [`GroupHandle::leave`].
    Leave {
        /// How long to wait for each partition's decisions.
        drain: Duration,
        /// Answered once every partition is drained and released.
        reply: RpcReplyPort<()>,
    },
    /// A new view of the members (from the membership task).
    #[doc(hidden)]
    View(Members),
}

/// The live members, in assignment order; sent only by this crate.
#[derive(Debug)]
pub struct Members(Vec<String>);

/// The arguments of a [`PartitionedGroup`].
#[derive(Debug)]
pub struct GroupArgs {
    /// The declaration.
    pub spec: GroupSpec,
    /// The member's supervisor, which runs the partition children.
    pub supervisor: SupervisorHandle,
    /// The connection (for the stream and the members' bucket).
    pub connection: Connection,
}

/// One member of a partitioned group; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionedGroup;

/// The group actor's state.
#[derive(Debug)]
pub struct GroupState {
    spec: GroupSpec,
    supervisor: SupervisorHandle,
    store: jetstream::kv::Store,
    membership: Option<JoinHandle<()>>,
    members: Vec<String>,
    held: BTreeSet<u32>,
    assigned_once: bool,
    takeovers: u64,
    holds: watch::Sender<Vec<u32>>,
    left: bool,
}

impl Actor for PartitionedGroup {
    type Msg = GroupMsg;
    type State = GroupState;
    type Arguments = (GroupArgs, watch::Sender<Vec<u32>>);

    async fn pre_start(
        &self,
        myself: ActorRef<GroupMsg>,
        (args, holds): Self::Arguments,
    ) -> Result<GroupState, ActorProcessingErr> {
        let GroupArgs {
            spec,
            supervisor,
            connection,
        } = args;
        let js = connection.jetstream().clone();
        ensure_group_stream(&js, &spec).await?;
        let store =
            membership::open_bucket(&js, &spec.stream, spec.priority_timeout, spec.replicas())
                .await?;
        let task = tokio::spawn(membership::run(
            store.clone(),
            spec.member.clone(),
            spec.members.clone(),
            spec.priority_timeout,
            move |view| myself.cast(GroupMsg::View(Members(view))).is_ok(),
        ));
        Ok(GroupState {
            spec,
            supervisor,
            store,
            membership: Some(task),
            members: Vec::new(),
            held: BTreeSet::new(),
            assigned_once: false,
            takeovers: 0,
            holds,
            left: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GroupMsg>,
        message: GroupMsg,
        state: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            GroupMsg::Status(reply) => {
                let _ = reply.send(GroupStatus {
                    member: state.spec.member.clone(),
                    members: state.members.clone(),
                    held: state.held.iter().copied().collect(),
                    takeovers: state.takeovers,
                });
            }
            GroupMsg::View(Members(members)) if !state.left => {
                state.members = members;
                state.rebalance().await;
            }
            GroupMsg::View(_) => {}
            GroupMsg::Leave { drain, reply } => {
                state.leave(drain).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<GroupMsg>,
        state: &mut GroupState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(task) = state.membership.take() {
            task.abort();
        }
        Ok(())
    }
}

impl GroupState {
    /// Starts the children of the partitions this member gained, then
    /// drains those it lost.
    async fn rebalance(&mut self) {
        let spec = &self.spec;
        let desired: BTreeSet<u32> =
            assign::partitions_of(&spec.member, &self.members, spec.partitions)
                .into_iter()
                .collect();
        let gained: Vec<u32> = desired.difference(&self.held).copied().collect();
        let lost: Vec<u32> = self.held.difference(&desired).copied().collect();
        for &partition in &gained {
            match self
                .supervisor
                .add_consumer(spec.partition_spec(partition), None)
                .await
            {
                Ok(_) => {
                    self.held.insert(partition);
                    if self.assigned_once {
                        self.takeovers += 1;
                    }
                }
                Err(err) if err.kind() == crate::ErrorKind::DuplicateConsumer => {
                    self.held.insert(partition);
                }
                Err(err) => {
                    tracing::warn!(member = %spec.member, partition, error = %err, "could not start a partition; trying at the next change");
                }
            }
        }
        self.assigned_once = true;
        for &partition in &lost {
            self.release(partition, DEFAULT_LEAVE_DRAIN).await;
        }
        self.publish();
    }

    /// Drains one partition's child (which releases its pin) and stops it.
    async fn release(&mut self, partition: u32, drain: Duration) {
        let durable = durable_name(&self.spec.stream, partition);
        if let Err(err) = self
            .supervisor
            .remove_consumer(&durable, false, drain)
            .await
        {
            tracing::warn!(member = %self.spec.member, partition, error = %err, "could not drain a partition");
        }
        self.held.remove(&partition);
    }

    async fn leave(&mut self, drain: Duration) {
        if self.left {
            return;
        }
        self.left = true;
        if let Some(task) = self.membership.take() {
            task.abort();
        }
        membership::leave(&self.store, &self.spec.member).await;
        let held: Vec<u32> = self.held.iter().copied().collect();
        for partition in held {
            self.release(partition, drain).await;
        }
        self.publish();
    }

    fn publish(&self) {
        let held: Vec<u32> = self.held.iter().copied().collect();
        self.holds.send_if_modified(|current| {
            if *current == held {
                return false;
            }
            *current = held;
            true
        });
    }
}

/// A handle on one member of a partitioned group.
#[derive(Debug, Clone)]
pub struct GroupHandle {
    actor: ActorRef<GroupMsg>,
    holds: watch::Receiver<Vec<u32>>,
}

impl GroupHandle {
    /// Makes the stream and the members' bucket exist and joins the group.
    /// The member takes its partitions once it has seen the others.
    pub async fn spawn(args: GroupArgs) -> Result<(Self, JoinHandle<()>), Error> {
        args.spec.validate()?;
        let (tx, rx) = watch::channel(Vec::new());
        let (actor, join) = Actor::spawn(None, PartitionedGroup, (args, tx)).await?;
        Ok((Self { actor, holds: rx }, join))
    }

    /// The partitions this member holds; changes each time they do.
    pub fn holds(&self) -> watch::Receiver<Vec<u32>> {
        self.holds.clone()
    }

    /// The member's view of the group.
    pub async fn status(&self) -> Result<GroupStatus, Error> {
        self.ask("group status", GroupMsg::Status).await
    }

    /// Leaves the group gracefully: the others see it go at once, and each
    /// partition is handed over after its decisions in flight (waiting up
    /// to `drain` for each).
    pub async fn leave(&self, drain: Duration) -> Result<(), Error> {
        self.ask("leave the group", |reply| GroupMsg::Leave { drain, reply })
            .await
    }

    /// The group actor.
    pub fn actor(&self) -> &ActorRef<GroupMsg> {
        &self.actor
    }

    async fn ask<R: Send + 'static>(
        &self,
        op: &str,
        message: impl FnOnce(RpcReplyPort<R>) -> GroupMsg,
    ) -> Result<R, Error> {
        match self.actor.call(message, None).await {
            Ok(CallResult::Success(answer)) => Ok(answer),
            Ok(CallResult::Timeout) => Err(Error::actor(op, ActorErrorKind::Timeout)),
            Ok(CallResult::SenderError) | Err(_) => Err(Error::actor(
                format!("{op} through the group actor"),
                ActorErrorKind::NotRunning,
            )),
        }
    }
}
