//! The plumbing shared by both kinds of child: binding the durable,
//! starting the worker task, and the messages the actor itself answers.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::FutureExt;
use ractor::{ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::effective::{Effective, SharedEffective};
use super::fetch::{self, FetchRequest, MAX_QUEUED_FETCHES};
use super::inflight::{self};
use super::port::{FetchPort, FetchReply};
use super::{ConsumerArgs, ConsumerMsg, Counters, DrainReport, dead_letter};
use crate::connection::Connection;
use crate::ensure::ensure_consumer;
use crate::error::Error;
use crate::keyed;
use crate::spec::{ConsumerMode, ConsumerSpec};
use crate::target::{Target, TargetSlot};

/// A message that only this crate sends a child (its worker's end, a
/// handle asking for the fetch port); opaque outside this crate.
#[derive(Debug)]
pub struct Internal(InternalMsg);

#[derive(Debug)]
enum InternalMsg {
    WorkerExited(WorkerExit),
    Port(RpcReplyPort<FetchPort>),
    Fetch(ForwardedFetch),
}

impl Internal {
    /// Asks a child for its [`FetchPort`].
    pub(crate) fn port(reply: RpcReplyPort<FetchPort>) -> Self {
        Self(InternalMsg::Port(reply))
    }

    /// A fetch the supervisor forwards. Unlike a bare
    /// [`ConsumerMsg::Fetch`], it is answered even when the child stops
    /// before it reads it (a stopped actor's mailbox is dropped unread):
    /// with [`Error::FetchInterrupted`], instead of a dropped reply port.
    pub(crate) fn fetch(
        durable: &str,
        batch: u64,
        expires: Option<Duration>,
        reply: FetchReply,
    ) -> Self {
        Self(InternalMsg::Fetch(ForwardedFetch {
            durable: durable.to_string(),
            batch,
            expires,
            reply: Some(reply),
        }))
    }
}

impl Internal {
    /// The reply port of a forwarded fetch that was never sent.
    pub(crate) fn into_fetch_reply(self) -> Option<FetchReply> {
        match self.0 {
            InternalMsg::Fetch(mut forwarded) => forwarded.reply.take(),
            _ => None,
        }
    }
}

/// A fetch on its way through a child's mailbox; answered
/// [`Error::FetchInterrupted`] if it is dropped unread.
#[derive(Debug)]
struct ForwardedFetch {
    durable: String,
    batch: u64,
    expires: Option<Duration>,
    reply: Option<FetchReply>,
}

impl Drop for ForwardedFetch {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(fetch::interrupted(&self.durable)));
        }
    }
}

/// How a child's worker task ended.
#[derive(Debug)]
struct WorkerExit {
    failure: Option<String>,
}

/// Control messages from a child to its worker.
pub(crate) enum WorkerCtl {
    Drain {
        timeout: Duration,
        reply: RpcReplyPort<DrainReport>,
    },
    SetTarget(Target),
}

/// Everything a worker needs, fixed at bind time.
pub(crate) struct WorkerCtx {
    pub connection: Connection,
    pub spec: ConsumerSpec,
    pub info: jetstream::consumer::Info,
    /// The settings in effect when the child bound, from the server's view
    /// of the consumer.
    pub effective: Effective,
    /// The same, as the worker keeps them up to date.
    pub limits: SharedEffective,
    pub stream: Arc<str>,
    pub durable: Arc<str>,
    pub counters: Arc<Counters>,
    /// With keyed workers, how the worker routes deliveries to them.
    pub routing: Option<keyed::Routing>,
}

impl WorkerCtx {
    /// The worker's in-flight registry.
    pub fn in_flight(&self) -> inflight::InFlight {
        let dead_letters = dead_letter::DeadLetters::new(
            self.connection.jetstream().clone(),
            self.stream.clone(),
            self.durable.clone(),
            self.spec.child.dead_letter_subject.clone(),
            self.effective.max_deliver,
        );
        let mut in_flight = inflight::InFlight::new(
            self.connection.client(),
            self.stream.clone(),
            self.durable.clone(),
            &self.effective,
            self.counters.clone(),
            dead_letters,
        );
        if let Some(routing) = &self.routing {
            in_flight.route(routing.clone());
        }
        in_flight
    }
}

/// The channels a worker listens on.
pub(crate) struct WorkerInbox {
    pub fetches: mpsc::Receiver<FetchRequest>,
    pub control: mpsc::UnboundedReceiver<WorkerCtl>,
    pub target: TargetSlot,
}

/// The child's handle on its worker task: aborts it when dropped.
struct WorkerHandle {
    task: JoinHandle<()>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The state of a consumer child.
pub struct ConsumerState {
    spec: ConsumerSpec,
    durable: Arc<str>,
    counters: Arc<Counters>,
    port: FetchPort,
    control: mpsc::UnboundedSender<WorkerCtl>,
    limits: SharedEffective,
    draining: bool,
    /// The keyed workers' pool, when the consumer has workers.
    _pool: Option<PoolHandle>,
    /// The worker finished its work (a drain) and the child stopped itself:
    /// a normal end. A child killed or stopped from outside never sets it.
    finished: bool,
    _worker: WorkerHandle,
    /// The consumer-info poll, when the spec sets `info_interval`.
    _poll: Option<WorkerHandle>,
    /// The advisory watch, when the spec sets `advisories`.
    _advisories: Option<WorkerHandle>,
}

impl ConsumerState {
    /// A pull child's state, with the worker's desk, where its port may
    /// serve a fetch in the caller's task (see `pull/desk.rs`).
    pub(crate) fn with_desk(mut self, desk: Arc<super::pull::Desk>) -> Self {
        self.port.lend_desk(desk);
        self
    }

    /// Whether the child ended by itself, its work done.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }
}

impl fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerState")
            .field("durable", &self.durable)
            .field("mode", &self.spec.mode())
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

/// Binds the durable consumer and starts the worker (shared `pre_start`).
pub(crate) async fn start_child<F, Fut>(
    myself: ActorRef<ConsumerMsg>,
    args: ConsumerArgs,
    mode: ConsumerMode,
    run: F,
) -> Result<ConsumerState, ActorProcessingErr>
where
    F: FnOnce(WorkerCtx, WorkerInbox) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let ConsumerArgs {
        connection,
        spec,
        target,
    } = args;
    if spec.mode() != mode {
        return Err(Box::new(Error::WrongMode {
            durable: spec.durable.clone(),
            expected: mode,
            actual: spec.mode(),
        }));
    }
    check_keyed_target(&spec, &target)?;
    crate::fault_point!("rj-child-pre-start");
    let (info, action) = ensure_consumer(&connection, &spec).await?;
    if action == crate::ensure::ConsumerAction::Created {
        // Normally the supervisor creates the consumer before spawning the
        // child; a child that finds it missing re-creates it from its spec.
        tracing::warn!(
            stream = %spec.stream,
            durable = %spec.durable,
            "the durable consumer did not exist; created it from its spec (it starts from the spec's start position)"
        );
    }
    tracing::debug!(stream = %spec.stream, durable = %spec.durable, ?action, "consumer child bound");
    let (target, pool, routing) = start_pool(&myself, &spec, &info, target).await?;
    let counters = Arc::new(Counters::labelled(&spec.stream, &spec.durable, mode));
    let durable: Arc<str> = Arc::from(spec.durable.as_str());
    let (fetch_tx, fetch_rx) = mpsc::channel(MAX_QUEUED_FETCHES as usize);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let effective = Effective::from_server(&spec, &info.config);
    tracing::debug!(durable = %spec.durable, ?effective, "settings in effect");
    let limits = SharedEffective::new(effective.clone());
    let ctx = WorkerCtx {
        connection,
        spec: spec.clone(),
        info,
        effective,
        limits: limits.clone(),
        stream: Arc::from(spec.stream.as_str()),
        durable: durable.clone(),
        counters: counters.clone(),
        routing,
    };
    let inbox = WorkerInbox {
        fetches: fetch_rx,
        control: control_rx,
        target: TargetSlot::new(target),
    };
    let poll = spec.child.info_interval.map(|interval| WorkerHandle {
        task: tokio::spawn(super::stats::poll_info(
            ctx.connection.clone(),
            ctx.stream.clone(),
            durable.clone(),
            interval,
            counters.clone(),
        )),
    });
    let advisories = spec.child.advisories.then(|| WorkerHandle {
        task: tokio::spawn(crate::telemetry::watch_advisories(
            ctx.connection.client(),
            ctx.stream.clone(),
            durable.clone(),
            mode,
        )),
    });
    let work = run(ctx, inbox);
    let task = tokio::spawn(async move {
        let failure = tokio::select! {
            result = AssertUnwindSafe(work).catch_unwind() => match result {
                Ok(Ok(())) => None,
                Ok(Err(err)) => Some(err.to_string()),
                Err(panic) => Some(panic_message(panic.as_ref())),
            },
            // A killed actor's state (this task's handle with it) travels
            // to its supervisor inside the termination event, so the worker
            // ends itself with its actor instead of waiting for that.
            _ = myself.wait(None) => return,
        };
        // The actor may be gone already; then there is nobody to tell.
        let _ = myself.cast(ConsumerMsg::Internal(Internal(InternalMsg::WorkerExited(
            WorkerExit { failure },
        ))));
    });
    Ok(ConsumerState {
        port: FetchPort::new(fetch_tx, limits.clone(), durable.clone(), mode),
        spec,
        durable,
        counters,
        control: control_tx,
        limits,
        draining: false,
        finished: false,
        _worker: WorkerHandle { task },
        _poll: poll,
        _advisories: advisories,
        _pool: pool,
    })
}

/// With keyed workers, starts their pool (linked to the child), which
/// stands as the target, and says how the worker routes to them; see
/// [`crate::keyed`].
async fn start_pool(
    myself: &ActorRef<ConsumerMsg>,
    spec: &ConsumerSpec,
    info: &jetstream::consumer::Info,
    target: Target,
) -> Result<(Target, Option<PoolHandle>, Option<keyed::Routing>), ActorProcessingErr> {
    let Some(workers) = target.workers() else {
        return Ok((target, None, None));
    };
    // By the durable as the server has it (the spec may leave the ack wait
    // and backoff to a durable made elsewhere).
    let ack_wait = match info.config.ack_wait {
        zero if zero.is_zero() => spec.effective_ack_wait(),
        ack_wait => ack_wait,
    };
    let redelivery = keyed::redelivery_bound(ack_wait, &info.config.backoff);
    let leftover = (info.num_ack_pending > 0).then(|| keyed::Leftover {
        remaining: info.num_ack_pending as u64,
        last_delivered: info.delivered.stream_sequence,
        until: tokio::time::Instant::now() + redelivery,
        back: Default::default(),
    });
    let durable: Arc<str> = Arc::from(spec.durable.as_str());
    let table = Arc::new(keyed::WorkerTable::default());
    let args = keyed::PoolArgs {
        durable: durable.clone(),
        count: spec.child.workers.unwrap_or(1) as usize,
        workers: workers.clone(),
        table: table.clone(),
    };
    let routing = keyed::Routing {
        durable,
        keyer: workers.keyer(spec.child.key.as_ref()),
        table,
        leftover,
        redelivery,
    };
    let (pool, _) = ractor::Actor::spawn_linked(None, keyed::Pool, args, myself.get_cell()).await?;
    let target = Target::actor(pool.get_derived());
    Ok((target, Some(PoolHandle(pool.get_cell())), Some(routing)))
}

/// The child's handle on its worker pool: kills it and its workers when
/// the child's state goes, however the child ended. Killed, not stopped:
/// the child has nak'ed what they hold, and its successor's workers get it
/// again, so these must not go on working on it.
struct PoolHandle(ractor::ActorCell);

impl Drop for PoolHandle {
    fn drop(&mut self) {
        for worker in self.0.get_children() {
            worker.kill();
        }
        self.0.kill();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("worker panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("worker panicked: {s}")
    } else {
        "worker panicked".to_string()
    }
}

/// Handles one message (shared `handle`).
pub(crate) fn handle_child_msg(
    myself: &ActorRef<ConsumerMsg>,
    message: ConsumerMsg,
    state: &mut ConsumerState,
) -> Result<(), ActorProcessingErr> {
    match message {
        ConsumerMsg::Fetch {
            batch,
            expires,
            reply,
        } => {
            if let Err(reply) = state.port.submit(batch, expires, reply) {
                // The worker is gone; the child is about to stop.
                let _ = reply.send(Err(fetch::interrupted(&state.durable)));
            }
        }
        ConsumerMsg::Stats(reply) => {
            let _ = reply.send(state.counters.snapshot(&state.spec, &state.limits.get()));
        }
        ConsumerMsg::Drain { timeout, reply } => {
            state.draining = true;
            state.port.start_draining();
            if let Err(mpsc::error::SendError(WorkerCtl::Drain { reply, .. })) =
                state.control.send(WorkerCtl::Drain { timeout, reply })
            {
                let _ = reply.send(DrainReport::default());
            }
        }
        ConsumerMsg::SetTarget(target) => {
            let _ = state.control.send(WorkerCtl::SetTarget(target));
        }
        ConsumerMsg::Internal(Internal(InternalMsg::WorkerExited(WorkerExit { failure }))) => {
            match failure {
                Some(failure) => {
                    tracing::warn!(durable = %state.durable, %failure, "consumer worker failed");
                    return Err(failure.into());
                }
                None => {
                    tracing::debug!(durable = %state.durable, "consumer worker finished; stopping");
                    state.finished = true;
                    myself.stop(Some("drained".into()));
                }
            }
        }
        ConsumerMsg::Internal(Internal(InternalMsg::Port(reply))) => {
            let _ = reply.send(state.port.clone());
        }
        ConsumerMsg::Internal(Internal(InternalMsg::Fetch(mut forwarded))) => {
            if let Some(reply) = forwarded.reply.take()
                && let Err(reply) = state.port.submit(forwarded.batch, forwarded.expires, reply)
            {
                let _ = reply.send(Err(fetch::interrupted(&state.durable)));
            }
        }
    }
    Ok(())
}

/// Checks that a consumer's spec and its target agree on keyed workers:
/// `workers` in the spec and [`Workers`] as the target, with a key.
pub(crate) fn check_keyed_target(spec: &ConsumerSpec, target: &Target) -> Result<(), Error> {
    let field = |name: &str| format!("consumers[{}].{name}", spec.durable);
    match (spec.child.workers, target.workers()) {
        (Some(workers), None) => Err(Error::invalid(
            field("workers"),
            workers,
            format!(
                "the target `{}` is one actor; register keyed workers under that name (`Workers::new`)",
                spec.target
            ),
        )),
        (None, Some(_)) => Err(Error::invalid(
            field("workers"),
            "unset",
            format!(
                "the target `{}` is keyed workers; say how many (`workers = N`) and the key",
                spec.target
            ),
        )),
        (Some(workers), Some(keyed)) if spec.child.key.is_none() && !keyed.has_key_fn() => {
            Err(Error::invalid(
                field("key"),
                "unset",
                format!(
                    "{workers} workers need a key (`key = {{ subject_token = I }}`, `key = {{ header = \"H\" }}`, or `Workers::key_fn`)"
                ),
            ))
        }
        _ => Ok(()),
    }
}
