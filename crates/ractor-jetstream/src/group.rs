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
//! about when its partitions move. The server does not hold later
//! messages back for them, so the new holder does: its takeover barrier
//! (see `consumer/pull/continuous.rs`) keeps what arrives until every
//! earlier message of the partition is acknowledged or in its hands, then
//! hands them over in stream order. So the first processing of each
//! message is in order per key across a takeover; what the dead member was
//! working on is worked on again (a duplicate, never a gap). Each
//! partition durable's `max_ack_pending` is four windows, which bounds what
//! a barrier keeps.
//!
//! **When a member leaves** ([`GroupHandle::leave`]), it deletes its key
//! first (the others start pulling its partitions, on standby), then drains
//! each partition's child (waits for the decisions in flight, nak's what
//! was not forwarded) and releases the pin: a standby takes over at once.
//! A member that joins is given its share the same way by the others.
//!
//! Inside a member, a partition can feed keyed workers: set `workers` in
//! [`GroupSpec::child`], and the keys of one partition (the group's key
//! token, unless `key` says otherwise) go in parallel, each in stream
//! order, across a handover too.

mod assign;
mod membership;
mod partition;
mod spec;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::Connection;
use crate::consumer::DrainReport;
use crate::error::{ActorErrorKind, Error};
use crate::handle::SupervisorHandle;

pub use partition::{durable_name, split_stored_subject};
pub use spec::{
    DEFAULT_GROUP_WINDOW, DEFAULT_LEAVE_DRAIN, DEFAULT_PRIORITY_TIMEOUT, GroupSpec,
    ensure_group_stream,
};

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
        /// Answered once every partition is drained and released, with
        /// what the drains did.
        reply: RpcReplyPort<DrainReport>,
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
                let report = state.leave(drain).await;
                let _ = reply.send(report);
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
    async fn release(&mut self, partition: u32, drain: Duration) -> DrainReport {
        let durable = durable_name(&self.spec.stream, partition);
        self.held.remove(&partition);
        match self
            .supervisor
            .remove_consumer(&durable, false, drain)
            .await
        {
            Ok(report) => report,
            Err(err) => {
                tracing::warn!(member = %self.spec.member, partition, error = %err, "could not drain a partition");
                DrainReport::default()
            }
        }
    }

    async fn leave(&mut self, drain: Duration) -> DrainReport {
        let mut report = DrainReport::default();
        if self.left {
            return report;
        }
        self.left = true;
        if let Some(task) = self.membership.take() {
            task.abort();
        }
        membership::leave(&self.store, &self.spec.member).await;
        let held: Vec<u32> = self.held.iter().copied().collect();
        for partition in held {
            report.merge(self.release(partition, drain).await);
        }
        self.publish();
        report
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
    /// to `drain` for each). Returns what the drains did.
    pub async fn leave(&self, drain: Duration) -> Result<DrainReport, Error> {
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
