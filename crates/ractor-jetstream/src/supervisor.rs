//! The supervisor: one per JetStream context.
//!
//! [`JetStreamSupervisor`] makes the topology's streams and durable
//! consumers exist, spawns one linked child per durable consumer (a
//! [`PushConsumer`] or a [`PullConsumer`], named
//! `<supervisor>/<stream>/<durable>`, where `<supervisor>` is the
//! supervisor's own name, or `jetstream-<actor id>` when it has none), routes
//! [`SupervisorMsg::Fetch`] to the right pull child, and restarts children
//! that fail under its [`RestartPolicy`].
//!
//! ```no_run
//! use ractor::{Actor, call_t};
//! use ractor_jetstream::{
//!     ConsumerSpec, JetStreamSupervisor, StreamSpec, SupervisorArgs, SupervisorMsg, Topology,
//! };
//! # async fn run(target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), Box<dyn std::error::Error>> {
//! let client = async_nats::connect("nats://127.0.0.1:4222").await?;
//! let js = async_nats::jetstream::new(client);
//! let topology = Topology::new()
//!     .stream(StreamSpec::new("ORDERS", ["orders.>"]))
//!     .consumer(ConsumerSpec::pull("ORDERS", "billing", "billing-worker"));
//! let args = SupervisorArgs::new(js, topology).target("billing-worker", target);
//! let (supervisor, _) = Actor::spawn(Some("jetstream".into()), JetStreamSupervisor, args).await?;
//!
//! // Fetch through the supervisor: the reply comes from the pull child.
//! let outcome = call_t!(supervisor, |reply| SupervisorMsg::Fetch {
//!     durable: "billing".into(),
//!     batch: 100,
//!     expires: None,
//!     reply,
//! }, 10_000)??;
//! println!("fetched {}", outcome.delivered);
//! # Ok(()) }
//! ```
//!
//! The supervisor never waits on a fetch: it forwards the request with its
//! reply port, and the child answers the caller directly.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use futures::future::join_all;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, DerivedActorRef, MessagingErr, RpcReplyPort,
    SupervisionEvent,
};
use tokio::time::Instant;

use crate::consumer::{ConsumerArgs, ConsumerMsg, DrainReport, FetchOutcome};
use crate::delivery::Delivery;
use crate::ensure::{StreamAction, ensure_consumer, ensure_stream};
use crate::error::{Error, ValidationErrors};
use crate::restart::{RestartPolicy, RestartTracker};
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec, Topology, check_filters_covered};
use crate::{PullConsumer, PushConsumer};

/// The supervisor actor. See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct JetStreamSupervisor;

/// What a [`JetStreamSupervisor`] is started with.
pub struct SupervisorArgs {
    /// The JetStream context every child binds through.
    pub js: jetstream::Context,
    /// The streams and consumers to make exist at start.
    pub topology: Topology,
    /// Target actors by name; each consumer spec names one.
    pub targets: HashMap<String, DerivedActorRef<Delivery>>,
    /// How children are restarted.
    pub restart_policy: RestartPolicy,
    /// How long a shutdown waits for in-flight decisions before nak'ing
    /// them.
    pub drain_timeout: Duration,
}

impl SupervisorArgs {
    /// Arguments with no targets yet, the default restart policy and a 5 s
    /// drain timeout.
    pub fn new(js: jetstream::Context, topology: Topology) -> Self {
        Self {
            js,
            topology,
            targets: HashMap::new(),
            restart_policy: RestartPolicy::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// Registers a target actor under a name.
    pub fn target(mut self, name: impl Into<String>, target: DerivedActorRef<Delivery>) -> Self {
        self.targets.insert(name.into(), target);
        self
    }

    /// Sets the restart policy.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = policy;
        self
    }
}

impl fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorArgs")
            .field("topology", &self.topology)
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .field("restart_policy", &self.restart_policy)
            .finish_non_exhaustive()
    }
}

/// Messages of the [`JetStreamSupervisor`].
// Specs travel by value for a readable API; ractor boxes each message
// anyway, so the variants' sizes cost nothing extra.
#[allow(clippy::large_enum_variant)]
pub enum SupervisorMsg {
    /// Make a stream exist (create, reuse, or update in place).
    EnsureStream {
        /// The stream.
        spec: StreamSpec,
        /// What was done.
        reply: RpcReplyPort<Result<StreamAction, Error>>,
    },
    /// Make a durable consumer exist and spawn its child. `target`, when
    /// given, is registered under the spec's target name first.
    AddConsumer {
        /// The consumer.
        spec: ConsumerSpec,
        /// Its target, when not registered yet.
        target: Option<DerivedActorRef<Delivery>>,
        /// The new child.
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
    },
    /// Stop a consumer's child (after draining it for up to `drain`), and
    /// delete the durable consumer on the server when `delete` is set.
    RemoveConsumer {
        /// The durable name.
        durable: String,
        /// Also delete the consumer on the server.
        delete: bool,
        /// How long to wait for in-flight decisions.
        drain: Duration,
        /// What the drain settled and nak'ed.
        reply: RpcReplyPort<Result<DrainReport, Error>>,
    },
    /// The running child of a durable consumer, if any.
    Lookup {
        /// The durable name.
        durable: String,
        /// The child.
        reply: RpcReplyPort<Option<ActorRef<ConsumerMsg>>>,
    },
    /// Fetch from a pull consumer; forwarded to its child with the reply
    /// port, which the child answers.
    Fetch {
        /// The durable name.
        durable: String,
        /// At most this many messages.
        batch: usize,
        /// How long the server may wait (default 5 s).
        expires: Option<Duration>,
        /// Where the outcome goes.
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    },
    /// Register (or replace) a target by name, and point every child that
    /// uses it at the new actor.
    SetTarget {
        /// The target name used in consumer specs.
        name: String,
        /// The actor.
        target: DerivedActorRef<Delivery>,
    },
    /// Every child's state.
    Status(RpcReplyPort<SupervisorStatus>),
    /// Drain every child: stop taking messages, wait up to `timeout` for
    /// decisions, nak the rest, stop the children. Children are not
    /// restarted afterwards.
    Drain {
        /// How long to wait for outstanding decisions.
        timeout: Duration,
        /// What was settled and nak'ed, over all children.
        reply: RpcReplyPort<DrainReport>,
    },
    /// A delayed restart coming due. Sent by the supervisor to itself; it
    /// cannot be built outside this crate.
    RestartDue(RestartTicket),
}

impl fmt::Debug for SupervisorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EnsureStream { spec, .. } => f
                .debug_struct("EnsureStream")
                .field("stream", &spec.name)
                .finish(),
            Self::AddConsumer { spec, .. } => f
                .debug_struct("AddConsumer")
                .field("durable", &spec.durable)
                .finish(),
            Self::RemoveConsumer { durable, .. } => f
                .debug_struct("RemoveConsumer")
                .field("durable", durable)
                .finish(),
            Self::Lookup { durable, .. } => {
                f.debug_struct("Lookup").field("durable", durable).finish()
            }
            Self::Fetch { durable, batch, .. } => f
                .debug_struct("Fetch")
                .field("durable", durable)
                .field("batch", batch)
                .finish(),
            Self::SetTarget { name, .. } => {
                f.debug_struct("SetTarget").field("name", name).finish()
            }
            Self::Status(_) => f.write_str("Status"),
            Self::Drain { timeout, .. } => {
                f.debug_struct("Drain").field("timeout", timeout).finish()
            }
            Self::RestartDue(ticket) => f.debug_tuple("RestartDue").field(ticket).finish(),
        }
    }
}

/// Identifies one scheduled restart.
#[derive(Debug, Clone)]
pub struct RestartTicket {
    durable: String,
    generation: u64,
}

/// The state of one child, as reported by [`SupervisorMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildState {
    /// Running.
    Running,
    /// Failed or stopped, and waiting for its restart.
    Restarting,
    /// Stopped for good (drained, removed, or not to be restarted).
    Stopped,
}

/// One child in a [`SupervisorStatus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildStatus {
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub durable: String,
    /// Push or pull.
    pub mode: ConsumerMode,
    /// Running, restarting or stopped.
    pub state: ChildState,
    /// How many times it was restarted.
    pub restarts: u64,
    /// The last failure, if any.
    pub last_failure: Option<String>,
}

/// The reply to [`SupervisorMsg::Status`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SupervisorStatus {
    /// One entry per durable consumer, sorted by durable name.
    pub children: Vec<ChildStatus>,
    /// Whether the supervisor was drained.
    pub drained: bool,
}

impl SupervisorStatus {
    /// The entry of one durable consumer.
    pub fn child(&self, durable: &str) -> Option<&ChildStatus> {
        self.children.iter().find(|c| c.durable == durable)
    }
}

struct Child {
    spec: ConsumerSpec,
    actor: Option<ActorRef<ConsumerMsg>>,
    state: ChildState,
    restarts: u64,
    tracker: RestartTracker,
    last_failure: Option<String>,
    generation: u64,
    /// A stop was asked for (remove or drain): do not restart.
    retiring: bool,
}

/// The supervisor's state.
pub struct SupervisorState {
    js: jetstream::Context,
    policy: RestartPolicy,
    drain_timeout: Duration,
    targets: HashMap<String, DerivedActorRef<Delivery>>,
    streams: HashMap<String, StreamSpec>,
    children: HashMap<String, Child>,
    name_prefix: String,
    drained: bool,
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
            js,
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
            ensure_stream(&js, stream).await?;
        }
        let mut state = SupervisorState {
            js,
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
            name_prefix: myself.get_name().map_or_else(
                || format!("jetstream-{}/", myself.get_id()),
                |n| format!("{n}/"),
            ),
            drained: false,
        };
        for spec in topology.consumers {
            state.add_consumer(&myself, spec).await?;
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
                let result = ensure_stream(&state.js, &spec).await;
                if result.is_ok() {
                    state.streams.insert(spec.name.clone(), spec);
                }
                let _ = reply.send(result);
            }
            SupervisorMsg::AddConsumer {
                spec,
                target,
                reply,
            } => {
                if let Some(target) = target {
                    state.targets.insert(spec.target.clone(), target);
                }
                let result = state.add_consumer(&myself, spec).await;
                let _ = reply.send(result);
            }
            SupervisorMsg::RemoveConsumer {
                durable,
                delete,
                drain,
                reply,
            } => {
                let result = state.remove_consumer(&durable, delete, drain).await;
                let _ = reply.send(result);
            }
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
                let _ = reply.send(state.status());
            }
            SupervisorMsg::Drain { timeout, reply } => {
                let report = state.drain_all(timeout).await;
                let _ = reply.send(report);
            }
            SupervisorMsg::RestartDue(ticket) => state.restart_due(&myself, ticket).await?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(durable) = state.durable_of(&cell) {
                    state.child_ended(&myself, &durable, Some(err.to_string()))?;
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(durable) = state.durable_of(&cell) {
                    tracing::debug!(%durable, ?reason, "consumer child stopped");
                    // A kill is an abnormal end, as in OTP: a transient
                    // child is restarted after it, a drained one is not.
                    let failure =
                        (reason.as_deref() == Some("killed")).then(|| "killed".to_string());
                    state.child_ended(&myself, &durable, failure)?;
                }
            }
            SupervisionEvent::ActorStarted(_) | SupervisionEvent::ProcessGroupChanged(_) => {}
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
        // their drop guards nak what they held.)
        if !state.drained {
            let timeout = state.drain_timeout;
            let report = state.drain_all(timeout).await;
            tracing::debug!(?report, "supervisor stopped; children drained");
        }
        Ok(())
    }
}

impl SupervisorState {
    fn durable_of(&self, cell: &ActorCell) -> Option<String> {
        let id = cell.get_id();
        self.children
            .iter()
            .find(|(_, c)| c.actor.as_ref().is_some_and(|a| a.get_id() == id))
            .map(|(durable, _)| durable.clone())
    }

    fn child_name(&self, spec: &ConsumerSpec) -> String {
        format!("{}{}/{}", self.name_prefix, spec.stream, spec.durable)
    }

    async fn add_consumer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
    ) -> Result<ActorRef<ConsumerMsg>, Error> {
        let mut errors = ValidationErrors::new();
        spec.validate_at("", &mut errors);
        if let Some(stream) = self.streams.get(&spec.stream) {
            check_filters_covered("", &spec, stream, &mut errors);
        }
        errors.into_result()?;
        if self.children.contains_key(&spec.durable) {
            return Err(Error::DuplicateConsumer {
                durable: spec.durable.clone(),
            });
        }
        if !self.targets.contains_key(&spec.target) {
            return Err(Error::UnknownTarget {
                durable: spec.durable.clone(),
                target: spec.target.clone(),
            });
        }
        // Create or bind here, so that a conflict comes back as a typed
        // error; the child binds again by name when it starts.
        ensure_consumer(&self.js, &spec).await?;
        let actor = self.spawn_child(myself, &spec).await?;
        self.children.insert(
            spec.durable.clone(),
            Child {
                spec,
                actor: Some(actor.clone()),
                state: ChildState::Running,
                restarts: 0,
                tracker: RestartTracker::default(),
                last_failure: None,
                generation: 0,
                retiring: false,
            },
        );
        Ok(actor)
    }

    async fn spawn_child(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        spec: &ConsumerSpec,
    ) -> Result<ActorRef<ConsumerMsg>, Error> {
        let target =
            self.targets
                .get(&spec.target)
                .cloned()
                .ok_or_else(|| Error::UnknownTarget {
                    durable: spec.durable.clone(),
                    target: spec.target.clone(),
                })?;
        let args = ConsumerArgs {
            js: self.js.clone(),
            spec: spec.clone(),
            target,
        };
        let name = Some(self.child_name(spec));
        let supervisor = myself.get_cell();
        let (actor, _) = match spec.mode {
            ConsumerMode::Pull => Actor::spawn_linked(name, PullConsumer, args, supervisor).await?,
            ConsumerMode::Push => Actor::spawn_linked(name, PushConsumer, args, supervisor).await?,
        };
        Ok(actor)
    }

    fn route_fetch(
        &self,
        durable: String,
        batch: usize,
        expires: Option<Duration>,
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    ) {
        let Some(child) = self.children.get(&durable) else {
            let _ = reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        if child.spec.mode != ConsumerMode::Pull {
            let _ = reply.send(Err(Error::WrongMode {
                durable,
                expected: ConsumerMode::Pull,
                actual: child.spec.mode,
            }));
            return;
        }
        let unavailable = |reply: RpcReplyPort<Result<FetchOutcome, Error>>, reason: String| {
            let _ = reply.send(Err(Error::Unavailable {
                durable: durable.clone(),
                reason,
            }));
        };
        let Some(actor) = &child.actor else {
            let reason = match (&child.state, &child.last_failure) {
                (ChildState::Restarting, Some(failure)) => format!("restarting after: {failure}"),
                (ChildState::Restarting, None) => "restarting".to_string(),
                _ => "stopped".to_string(),
            };
            unavailable(reply, reason);
            return;
        };
        // Forward with the caller's reply port: the child answers directly.
        if let Err(MessagingErr::SendErr(ConsumerMsg::Fetch { reply, .. })) =
            actor.cast(ConsumerMsg::Fetch {
                batch,
                expires,
                reply,
            })
        {
            unavailable(reply, "the child has just stopped".into());
        }
    }

    fn status(&self) -> SupervisorStatus {
        let mut children: Vec<ChildStatus> = self
            .children
            .iter()
            .map(|(durable, c)| ChildStatus {
                stream: c.spec.stream.clone(),
                durable: durable.clone(),
                mode: c.spec.mode,
                state: c.state.clone(),
                restarts: c.restarts,
                last_failure: c.last_failure.clone(),
            })
            .collect();
        children.sort_by(|a, b| a.durable.cmp(&b.durable));
        SupervisorStatus {
            children,
            drained: self.drained,
        }
    }

    /// A child stopped (`failure` is `None`) or failed. Decides whether and
    /// when it is restarted; fails the supervisor when the restart
    /// intensity is exceeded.
    fn child_ended(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: &str,
        failure: Option<String>,
    ) -> Result<(), Error> {
        let policy = self.policy.clone();
        let Some(child) = self.children.get_mut(durable) else {
            return Ok(());
        };
        child.actor = None;
        child.generation += 1;
        if let Some(failure) = &failure {
            tracing::warn!(%durable, %failure, "consumer child failed");
            child.last_failure = Some(failure.clone());
        }
        if child.retiring || !child.spec.restart.restarts_after(failure.is_some()) {
            child.state = ChildState::Stopped;
            return Ok(());
        }
        let Some(delay) = child.tracker.on_failure(&policy, std::time::Instant::now()) else {
            child.state = ChildState::Stopped;
            return Err(Error::Unavailable {
                durable: durable.to_string(),
                reason: format!(
                    "restart intensity exceeded ({} restarts within {:?}); last failure: {}",
                    policy.max_restarts,
                    policy.within,
                    child.last_failure.as_deref().unwrap_or("stopped")
                ),
            });
        };
        child.state = ChildState::Restarting;
        let ticket = RestartTicket {
            durable: durable.to_string(),
            generation: child.generation,
        };
        tracing::info!(%durable, ?delay, "restarting consumer child");
        if delay.is_zero() {
            let _ = myself.cast(SupervisorMsg::RestartDue(ticket));
        } else {
            myself.send_after(delay, move || SupervisorMsg::RestartDue(ticket));
        }
        Ok(())
    }

    async fn restart_due(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        ticket: RestartTicket,
    ) -> Result<(), Error> {
        let spec = match self.children.get(&ticket.durable) {
            Some(child)
                if child.generation == ticket.generation
                    && child.actor.is_none()
                    && !child.retiring =>
            {
                child.spec.clone()
            }
            _ => return Ok(()),
        };
        match self.spawn_child(myself, &spec).await {
            Ok(actor) => {
                if let Some(child) = self.children.get_mut(&ticket.durable) {
                    child.actor = Some(actor);
                    child.state = ChildState::Running;
                    child.restarts += 1;
                }
                Ok(())
            }
            // Could not start (server unreachable, consumer conflict...):
            // counts as another failure.
            Err(err) => self.child_ended(
                myself,
                &ticket.durable,
                Some(format!("restart failed: {err}")),
            ),
        }
    }

    async fn remove_consumer(
        &mut self,
        durable: &str,
        delete: bool,
        drain: Duration,
    ) -> Result<DrainReport, Error> {
        let Some(child) = self.children.get_mut(durable) else {
            return Err(Error::UnknownConsumer {
                durable: durable.to_string(),
            });
        };
        child.retiring = true;
        let report = match child.actor.clone() {
            Some(actor) => drain_child(&actor, drain).await,
            None => DrainReport::default(),
        };
        let Some(child) = self.children.remove(durable) else {
            return Ok(report);
        };
        if let Some(actor) = &child.actor {
            // Already gone from the map, so its termination is not acted on.
            actor.stop(Some("removed".into()));
        }
        if delete {
            let op = format!("delete consumer {}/{}", child.spec.stream, durable);
            let subject = format!("CONSUMER.DELETE.{}.{}", child.spec.stream, durable);
            let _: serde_json::Value =
                crate::ensure::api_request(&self.js, &op, subject, &serde_json::json!({})).await?;
        }
        Ok(report)
    }

    async fn drain_all(&mut self, timeout: Duration) -> DrainReport {
        self.drained = true;
        let mut actors = Vec::new();
        for child in self.children.values_mut() {
            child.retiring = true;
            if let Some(actor) = &child.actor {
                actors.push(actor.clone());
            }
        }
        let reports = join_all(actors.iter().map(|actor| drain_child(actor, timeout))).await;
        let mut total = DrainReport::default();
        for report in reports {
            total.merge(report);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for actor in actors {
            // Children stop by themselves after a drain; wait for it,
            // bounded.
            let _ = tokio::time::timeout_at(deadline, actor.wait(None)).await;
        }
        total
    }
}

/// Asks one child to drain and waits for its report, bounded by the drain
/// timeout plus a margin.
async fn drain_child(actor: &ActorRef<ConsumerMsg>, timeout: Duration) -> DrainReport {
    let margin = Duration::from_secs(5);
    match actor
        .call(
            |reply| ConsumerMsg::Drain { timeout, reply },
            Some(timeout + margin),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(report)) => report,
        _ => DrainReport::default(),
    }
}
