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

mod work;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use ractor::actor::messages::BoxedState;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, MessagingErr,
    RpcReplyPort, SupervisionEvent,
};
use tokio::task::JoinSet;

use crate::consumer::{ConsumerMsg, ConsumerState, DrainReport, FetchOutcome};
use crate::delivery::Delivery;
use crate::ensure::{StreamAction, ensure_stream};
use crate::error::{Error, ValidationErrors};
use crate::restart::{RestartPolicy, RestartTracker};
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec, Topology, check_filters_covered};
pub use work::WorkDone;
use work::{Done, Launch, Start};

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
    /// given, is registered under the spec's target name first. While one
    /// `AddConsumer` of a durable is in progress, another of the same
    /// durable is answered with [`Error::DuplicateConsumer`].
    AddConsumer {
        /// The consumer.
        spec: ConsumerSpec,
        /// Its target, when not registered yet.
        target: Option<DerivedActorRef<Delivery>>,
        /// The new child.
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
    },
    /// Stop a consumer's child (after draining it for up to `drain`), and
    /// delete the durable consumer on the server when `delete` is set. The
    /// child is not restarted meanwhile; a second `RemoveConsumer` of the
    /// same durable while the first is in progress is answered with
    /// [`Error::Unavailable`].
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
    /// Slow work that the supervisor started in a task has finished. Sent
    /// by those tasks; it cannot be built outside this crate.
    Done(WorkDone),
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
            Self::Done(done) => f.debug_tuple("Done").field(done).finish(),
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
    /// Bumped on every end and every restart attempt, so that a stale
    /// restart (ticket or spawned child) is told from the current one.
    generation: u64,
    /// A stop was asked for (remove or drain): do not restart.
    retiring: bool,
    /// A `RemoveConsumer` is in progress.
    removing: bool,
    /// A restart is spawning its child.
    starting: bool,
    /// A `RemoveConsumer` that waits for that spawn, so that it drains the
    /// new child (and a delete cannot run before the new child binds).
    pending_removal: Option<Removal>,
}

/// A `RemoveConsumer`'s request.
struct Removal {
    delete: bool,
    drain: Duration,
    reply: RpcReplyPort<Result<DrainReport, Error>>,
}

impl Child {
    fn running(spec: ConsumerSpec, actor: ActorRef<ConsumerMsg>) -> Self {
        Self {
            spec,
            actor: Some(actor),
            state: ChildState::Running,
            restarts: 0,
            tracker: RestartTracker::default(),
            last_failure: None,
            generation: 0,
            retiring: false,
            removing: false,
            starting: false,
            pending_removal: None,
        }
    }
}

/// How a child ended, as far as restarting it goes.
#[derive(Debug)]
enum End {
    /// Its work was done: it was drained and stopped itself.
    Normal,
    /// It failed, was killed, or was stopped from outside while working.
    Abnormal(String),
}

impl End {
    /// A terminated child's end, read from the final state ractor hands
    /// over. A killed child's state never says it finished.
    fn of_terminated(last_state: Option<BoxedState>) -> Self {
        let finished = last_state
            .and_then(|mut state| state.take::<ConsumerState>().ok())
            .is_some_and(|state| state.finished());
        if finished {
            Self::Normal
        } else {
            Self::Abnormal("killed, or stopped from outside before its work was done".into())
        }
    }
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
                let _ = reply.send(state.status());
            }
            SupervisorMsg::Drain { timeout, reply } => {
                let actors = state.retire_all();
                state.spawn_task(async move {
                    let _ = reply.send(work::retire_all(actors, timeout).await);
                });
            }
            SupervisorMsg::RestartDue(ticket) => state.restart_due(&myself, ticket),
            SupervisorMsg::Done(WorkDone(done)) => state.done(&myself, done)?,
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

    /// Starts a task that owns its work; finished tasks are reaped first, so
    /// that the set only holds what is in progress.
    fn spawn_task(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(task);
    }

    fn ensure_stream(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: StreamSpec,
        reply: RpcReplyPort<Result<StreamAction, Error>>,
    ) {
        let js = self.js.clone();
        let myself = myself.clone();
        self.spawn_task(async move {
            let result = ensure_stream(&js, &spec).await;
            let done = Done::StreamEnsured {
                spec,
                result,
                reply,
            };
            let _ = myself.cast(SupervisorMsg::Done(WorkDone(done)));
        });
    }

    /// Whether `spec` may be added: valid, covered by its stream's
    /// subjects, not a durable managed (or being added) already, and with a
    /// registered target.
    fn check_new(&self, spec: &ConsumerSpec) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        spec.validate_at("", &mut errors);
        if let Some(stream) = self.streams.get(&spec.stream) {
            check_filters_covered("", spec, stream, &mut errors);
        }
        errors.into_result()?;
        if self.children.contains_key(&spec.durable) || self.adding.contains(&spec.durable) {
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
        Ok(())
    }

    fn launch(&self, myself: &ActorRef<SupervisorMsg>, spec: &ConsumerSpec) -> Launch {
        Launch {
            js: self.js.clone(),
            spec: spec.clone(),
            target: self.targets.get(&spec.target).cloned(),
            name: self.child_name(spec),
            supervisor: myself.get_cell(),
        }
    }

    fn add_consumer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
    ) {
        if let Err(err) = self.check_new(&spec) {
            let _ = reply.send(Err(err));
            return;
        }
        self.adding.insert(spec.durable.clone());
        let drains = self.drains;
        self.start_child(myself, spec, Start::Add { reply, drains });
    }

    /// Spawns a child in a task, which reports back with
    /// [`Done::ChildStarted`]. An added consumer is bound first.
    fn start_child(&mut self, myself: &ActorRef<SupervisorMsg>, spec: ConsumerSpec, start: Start) {
        let launch = self.launch(myself, &spec);
        let bind = matches!(start, Start::Add { .. });
        let myself = myself.clone();
        self.starting += 1;
        self.spawn_task(async move {
            let result = launch.spawn(bind).await;
            let done = Done::ChildStarted {
                spec,
                start,
                result,
            };
            let _ = myself.cast(SupervisorMsg::Done(WorkDone(done)));
        });
    }

    /// Books what a task did.
    fn done(&mut self, myself: &ActorRef<SupervisorMsg>, done: Done) -> Result<(), Error> {
        match done {
            Done::StreamEnsured {
                spec,
                result,
                reply,
            } => {
                if result.is_ok() {
                    self.streams.insert(spec.name.clone(), spec);
                }
                let _ = reply.send(result);
            }
            Done::ChildStarted {
                spec,
                start,
                result,
            } => return self.child_started(myself, spec, start, result),
            Done::Removed {
                durable,
                result,
                reply,
            } => {
                if let Some(Child {
                    actor: Some(actor), ..
                }) = self.children.remove(&durable)
                {
                    // Out of the map: its end is not acted on.
                    actor.stop(Some("removed".into()));
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    fn child_started(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
        start: Start,
        result: Result<ActorRef<ConsumerMsg>, Error>,
    ) -> Result<(), Error> {
        self.starting = self.starting.saturating_sub(1);
        let ended = match &result {
            Ok(actor) => self.ended_early.remove(&actor.get_id()),
            Err(_) => None,
        };
        if self.starting == 0 {
            self.ended_early.clear();
        }
        let durable = spec.durable.clone();
        match start {
            Start::Add { reply, drains } => {
                self.adding.remove(&durable);
                let actor = match result {
                    Ok(actor) => actor,
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return Ok(());
                    }
                };
                let mut child = Child::running(spec, actor.clone());
                if drains != self.drains {
                    // The children were drained while this one started: it
                    // is retired with them.
                    child.retiring = true;
                    actor.stop(Some("drained while starting".into()));
                    let _ = reply.send(Err(Error::Unavailable {
                        durable: durable.clone(),
                        reason: "the supervisor was drained while the consumer was being added"
                            .into(),
                    }));
                } else {
                    let _ = reply.send(Ok(actor));
                }
                self.children.insert(durable.clone(), child);
            }
            Start::Restart { generation } => {
                let current = self
                    .children
                    .get_mut(&durable)
                    .filter(|c| c.generation == generation && c.actor.is_none());
                let Some(child) = current else {
                    // Superseded while it started: not wanted.
                    if let Ok(actor) = result {
                        actor.stop(Some("superseded while starting".into()));
                    }
                    return Ok(());
                };
                child.starting = false;
                if child.retiring {
                    // Removed or drained while it started. The new child is
                    // booked, so that its end is, and then retired.
                    let actor = result.ok();
                    child.actor = actor.clone();
                    if actor.is_none() {
                        child.state = ChildState::Stopped;
                    }
                    match child.pending_removal.take() {
                        Some(removal) => {
                            self.start_removal(myself, durable.clone(), actor, removal)
                        }
                        None => {
                            if let Some(actor) = actor {
                                actor.stop(Some("drained while starting".into()));
                            }
                        }
                    }
                    return match ended {
                        Some(end) => self.child_ended(myself, &durable, end),
                        None => Ok(()),
                    };
                }
                match result {
                    Ok(actor) => {
                        child.actor = Some(actor);
                        child.state = ChildState::Running;
                        child.restarts += 1;
                    }
                    // Could not start (server unreachable, consumer
                    // conflict...): counts as another failure.
                    Err(err) => {
                        let end = End::Abnormal(format!("restart failed: {err}"));
                        return self.child_ended(myself, &durable, end);
                    }
                }
            }
        }
        match ended {
            Some(end) => self.child_ended(myself, &durable, end),
            None => Ok(()),
        }
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

    /// A child ended. Decides whether and when it is restarted; fails the
    /// supervisor when the restart intensity is exceeded.
    fn child_ended(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: &str,
        end: End,
    ) -> Result<(), Error> {
        let policy = self.policy.clone();
        let Some(child) = self.children.get_mut(durable) else {
            return Ok(());
        };
        child.actor = None;
        child.generation += 1;
        if child.retiring {
            // Its supervisor asked for this end.
            child.state = ChildState::Stopped;
            return Ok(());
        }
        let failed = match end {
            End::Normal => false,
            End::Abnormal(failure) => {
                tracing::warn!(%durable, %failure, "consumer child failed");
                child.last_failure = Some(failure);
                true
            }
        };
        if !child.spec.restart.restarts_after(failed) {
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

    fn restart_due(&mut self, myself: &ActorRef<SupervisorMsg>, ticket: RestartTicket) {
        let Some(child) = self.children.get_mut(&ticket.durable) else {
            return;
        };
        if child.generation != ticket.generation || child.actor.is_some() || child.retiring {
            return;
        }
        // A new generation for the attempt: a second ticket for the same
        // end cannot start a second child.
        child.generation += 1;
        child.starting = true;
        let start = Start::Restart {
            generation: child.generation,
        };
        let spec = child.spec.clone();
        self.start_child(myself, spec, start);
    }

    fn remove_consumer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: String,
        delete: bool,
        drain: Duration,
        reply: RpcReplyPort<Result<DrainReport, Error>>,
    ) {
        let Some(child) = self.children.get_mut(&durable) else {
            let _ = reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        if child.removing {
            let _ = reply.send(Err(Error::Unavailable {
                durable,
                reason: "it is being removed already".into(),
            }));
            return;
        }
        child.retiring = true;
        child.removing = true;
        let removal = Removal {
            delete,
            drain,
            reply,
        };
        if child.starting {
            child.pending_removal = Some(removal);
            return;
        }
        let actor = child.actor.clone();
        self.start_removal(myself, durable, actor, removal);
    }

    /// Retires a child in a task, deletes its consumer when asked, and
    /// reports back with [`Done::Removed`].
    fn start_removal(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: String,
        actor: Option<ActorRef<ConsumerMsg>>,
        removal: Removal,
    ) {
        let Some(stream) = self.children.get(&durable).map(|c| c.spec.stream.clone()) else {
            let _ = removal.reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        let Removal {
            delete,
            drain,
            reply,
        } = removal;
        let js = self.js.clone();
        let myself = myself.clone();
        self.spawn_task(async move {
            let report = match &actor {
                Some(actor) => work::retire(actor, drain).await,
                None => DrainReport::default(),
            };
            let result = if delete {
                work::delete_consumer(&js, &stream, &durable)
                    .await
                    .map(|()| report)
            } else {
                Ok(report)
            };
            let done = Done::Removed {
                durable,
                result,
                reply,
            };
            let _ = myself.cast(SupervisorMsg::Done(WorkDone(done)));
        });
    }

    /// Marks the supervisor drained and every child retiring; returns the
    /// running children, to be retired.
    fn retire_all(&mut self) -> Vec<ActorRef<ConsumerMsg>> {
        self.drained = true;
        self.drains += 1;
        let mut actors = Vec::new();
        for child in self.children.values_mut() {
            child.retiring = true;
            actors.extend(child.actor.clone());
        }
        actors
    }
}
