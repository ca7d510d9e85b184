//! The supervisor: one per JetStream context.
//!
//! [`JetStreamSupervisor`] makes the topology's streams and durable
//! consumers exist, spawns one linked child per durable consumer (a
//! [`PushConsumer`](crate::PushConsumer) or a
//! [`PullConsumer`](crate::PullConsumer), named
//! `<supervisor>/<stream>/<durable>`, where `<supervisor>` is the
//! supervisor's own name, or `jetstream-<actor id>` when it has none), routes
//! [`SupervisorMsg::Fetch`] to the right pull child, and restarts children
//! that fail under its [`RestartPolicy`].
//! [`SupervisorHandle::spawn`](crate::SupervisorHandle::spawn) starts one
//! and gives a handle on it:
//!
//! ```no_run
//! use ractor_jetstream::{ConsumerSpec, StreamSpec, SupervisorArgs, SupervisorHandle, Topology};
//! use std::time::Duration;
//!
//! # async fn run(js: async_nats::jetstream::Context, target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), ractor_jetstream::Error> {
//! let topology = Topology::new()
//!     .stream(StreamSpec::new("ORDERS", ["orders.>"]))
//!     .consumer(ConsumerSpec::pull("ORDERS", "billing", "billing-worker"));
//! let args = SupervisorArgs::new(js, topology).target("billing-worker", target);
//! let (supervisor, _) = SupervisorHandle::spawn(Some("jetstream".into()), args).await?;
//!
//! // Through the supervisor: it forwards the fetch to the child registered
//! // as "jetstream/ORDERS/billing", which answers.
//! let outcome = supervisor.fetch("billing", 100, None).await?;
//! println!("fetched {}", outcome.delivered);
//!
//! // Every child's state, then a drain: in-flight decisions complete, the
//! // rest is nak'ed, and the children stop for good.
//! for child in supervisor.status().await?.children {
//!     println!("{} ({}): {:?}, {} restarts", child.durable, child.mode, child.state, child.restarts);
//! }
//! supervisor.drain(Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```
//!
//! From another actor, send [`SupervisorMsg`]s instead (the handle wraps
//! them): a `Fetch` carries its reply port, which the child answers.
//!
//! The supervisor never blocks. It never waits on a fetch: it forwards the
//! request with its reply port, and the child answers the caller directly.
//! Its slow work (JetStream API calls, spawning a child, which binds it on
//! the server, draining children) runs in tasks it owns, which report back
//! by message (see `work.rs`); its handlers only do bookkeeping. So a
//! `Fetch`, a `Status` or a child's end is handled at once, even while a
//! drain of another durable takes seconds.
//!
//! How a child ended decides whether it comes back (see
//! [`RestartKind`](crate::RestartKind)). A child ends normally only when
//! its work is done (it was drained, and stopped itself) or when the
//! supervisor retired it (`RemoveConsumer`, `Drain`). Any other end is
//! abnormal: a failure, and also a kill, or a stop from outside while it was
//! working, as in OTP, so a `transient` child comes back after those. The
//! supervisor tells them apart by what it asked for and by what the child
//! recorded in its final state, never by the text of an exit reason.

mod args;
mod children;
mod msg;
mod requests;
mod work;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinSet;

use crate::connection::Connection;
use crate::consumer::ConsumerMsg;
use crate::ensure::ensure_stream;
use crate::error::ValidationErrors;
use crate::restart::RestartPolicy;
use crate::spec::StreamSpec;
use crate::target::Target;
pub use args::SupervisorArgs;
use children::{Child, End};
pub use msg::{ChildState, ChildStatus, SupervisorMsg, SupervisorStatus};
use msg::{InternalMsg, RestartTicket};

/// The prefix of the registered names of a supervisor's children
/// (`<supervisor>/`, or `jetstream-<actor id>/` for an unnamed one).
pub(crate) fn child_name_prefix(supervisor: &ractor::ActorCell) -> String {
    supervisor.get_name().map_or_else(
        || format!("jetstream-{}/", supervisor.get_id()),
        |n| format!("{n}/"),
    )
}

/// The supervisor actor. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct JetStreamSupervisor;

/// The supervisor's state.
pub struct SupervisorState {
    connection: Connection,
    policy: RestartPolicy,
    drain_timeout: Duration,
    targets: HashMap<String, Target>,
    streams: HashMap<String, StreamSpec>,
    children: HashMap<String, Child>,
    name_prefix: String,
    drained: bool,
    /// How many times the children were drained (an add that began before
    /// a drain and ends after it is retired too).
    drains: u64,
    /// The slow work in progress; dropped (so aborted) with the state.
    tasks: JoinSet<()>,
    /// Durables whose `AddConsumer` is in progress.
    adding: HashSet<String>,
    /// How many child spawns are in progress.
    starting: usize,
    /// Children that ended before the task that spawned them reported
    /// back (their end is acted on when the report comes).
    ended_early: HashMap<ActorId, End>,
}

impl fmt::Debug for SupervisorState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorState")
            .field("children", &self.children.keys().collect::<Vec<_>>())
            .field("drained", &self.drained)
            .finish_non_exhaustive()
    }
}

impl Actor for JetStreamSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let SupervisorArgs {
            connection,
            topology,
            targets,
            restart_policy,
            drain_timeout,
        } = args;
        // Everything is checked before anything is created on the server.
        topology.validate()?;
        let mut missing = ValidationErrors::new();
        for (i, consumer) in topology.consumers.iter().enumerate() {
            if !targets.contains_key(&consumer.target) {
                missing.add(
                    format!("consumers[{i}].target"),
                    format!("{:?}", consumer.target),
                    "no target actor was registered under this name",
                );
            }
        }
        missing.into_result()?;
        for stream in &topology.streams {
            ensure_stream(&connection, stream).await?;
        }
        let mut state = SupervisorState {
            connection,
            policy: restart_policy,
            drain_timeout,
            targets,
            streams: topology
                .streams
                .iter()
                .map(|s| (s.name.clone(), s.clone()))
                .collect(),
            children: HashMap::new(),
            // Actor names are global to the process: an unnamed supervisor
            // prefixes its children with its own id, so two of them can
            // manage the same stream and durable (on two servers, say).
            name_prefix: child_name_prefix(&myself.get_cell()),
            drained: false,
            drains: 0,
            tasks: JoinSet::new(),
            adding: HashSet::new(),
            starting: 0,
            ended_early: HashMap::new(),
        };
        // Nothing else can reach the supervisor before it has started, so
        // its first children are started here, in order.
        for spec in topology.consumers {
            state.check_new(&spec)?;
            let actor = state.launch(&myself, &spec).spawn(true).await?;
            state
                .children
                .insert(spec.durable.clone(), Child::running(spec, actor));
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::EnsureStream { spec, reply } => {
                state.ensure_stream(&myself, spec, reply)
            }
            SupervisorMsg::AddConsumer {
                spec,
                target,
                reply,
            } => {
                if let Some(target) = target {
                    state.targets.insert(spec.target.clone(), target);
                }
                state.add_consumer(&myself, spec, reply);
            }
            SupervisorMsg::RemoveConsumer {
                durable,
                delete,
                drain,
                reply,
            } => state.remove_consumer(&myself, durable, delete, drain, reply),
            SupervisorMsg::Lookup { durable, reply } => {
                let child = state.children.get(&durable).and_then(|c| c.actor.clone());
                let _ = reply.send(child);
            }
            SupervisorMsg::Fetch {
                durable,
                batch,
                expires,
                reply,
            } => state.route_fetch(durable, batch, expires, reply),
            SupervisorMsg::SetTarget { name, target } => {
                for child in state.children.values().filter(|c| c.spec.target == name) {
                    if let Some(actor) = &child.actor {
                        let _ = actor.cast(ConsumerMsg::SetTarget(target.clone()));
                    }
                }
                state.targets.insert(name, target);
            }
            SupervisorMsg::Status(reply) => {
                let mut status = state.status();
                let running = state.running_children();
                // Each running child's lag, asked for off the supervisor's
                // own loop.
                state.spawn_task(async move {
                    for child in &mut status.children {
                        let Some(actor) = running.get(&child.durable) else {
                            continue;
                        };
                        if let Ok(ractor::rpc::CallResult::Success(stats)) = actor
                            .call(ConsumerMsg::Stats, Some(std::time::Duration::from_secs(1)))
                            .await
                        {
                            child.server = stats.server;
                        }
                    }
                    let _ = reply.send(status);
                });
            }
            SupervisorMsg::Drain { timeout, reply } => {
                let actors = state.retire_all();
                state.spawn_task(async move {
                    let _ = reply.send(work::retire_all(actors, timeout).await);
                });
            }
            SupervisorMsg::Internal(internal) => match internal.0 {
                InternalMsg::RestartDue(ticket) => state.restart_due(&myself, ticket),
                InternalMsg::Done(done) => state.done(&myself, done)?,
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, end) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, End::Abnormal(err.to_string())),
            SupervisionEvent::ActorTerminated(cell, last_state, reason) => {
                tracing::debug!(?reason, "a consumer child stopped");
                (cell, End::of_terminated(last_state))
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {
                return Ok(());
            }
        };
        match state.durable_of(&cell) {
            Some(durable) => state.child_ended(&myself, &durable, end)?,
            // Spawned by a task that has not reported back yet: its report
            // acts on this end.
            None if state.starting > 0 => {
                state.ended_early.insert(cell.get_id(), end);
            }
            None => {}
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A graceful stop drains the children, so that nothing waits for
        // ack_wait. (A killed supervisor's children are killed with it;
        // their drop guards nak what they held.) Nothing else is served
        // any more, so this is awaited here.
        if !state.drained {
            let actors = state.retire_all();
            let report = work::retire_all(actors, state.drain_timeout).await;
            tracing::debug!(?report, "supervisor stopped; children drained");
        }
        state.tasks.abort_all();
        Ok(())
    }
}
