//! The consumer children: one actor per durable consumer.
//!
//! A child binds to its durable consumer on the server by name (creating it
//! from its spec when it is missing), forwards each message to the target
//! actor as a [`Delivery`], and applies the target's decisions on the
//! server. There are two kinds:
//!
//! - [`PullConsumer`](crate::PullConsumer) does nothing until it gets a
//!   [`ConsumerMsg::Fetch`]. It then asks the server for at most `batch`
//!   messages, forwards each as it arrives, waits until every one is settled,
//!   and replies with a [`FetchOutcome`]. A caller that fetches again only
//!   after the reply never has more than `batch` deliveries at its target:
//!   that is the backpressure pull exists for. Concurrent fetches to one
//!   child are served in the order they arrive, one at a time.
//! - [`PushConsumer`](crate::PushConsumer) pumps the consumer's push
//!   subscription (with the server's flow control and idle heartbeats, but
//!   for a queue group, which gets neither), and
//!   keeps at most `max_in_flight` unsettled deliveries at the target.
//!
//! The data path runs in one task that the child owns (the worker); the
//! actor itself answers control messages ([`ConsumerMsg::Stats`],
//! [`ConsumerMsg::Drain`], ...) while a fetch is in progress. When the
//! child stops or crashes, the worker is aborted, and whatever it had in
//! flight is nak'ed at once, so the server delivers it again right away
//! instead of after `ack_wait`. A caller whose fetch was cut off gets
//! [`Error::FetchInterrupted`].

pub(crate) mod dead_letter;
pub(crate) mod effective;
mod fetch;
mod guard;
pub(crate) mod inflight;
pub mod pull;
pub mod push;
mod settle;

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures::FutureExt;
use ractor::{ActorProcessingErr, ActorRef, DerivedActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::delivery::Delivery;
use crate::ensure::ensure_consumer;
use crate::error::Error;
use crate::spec::{ConsumerMode, ConsumerSpec};
use effective::{Effective, SharedEffective};
pub(crate) use fetch::FetchRequest;
use fetch::validate_fetch;
pub use fetch::{FetchEnd, FetchOutcome, MAX_FETCH_BATCH, MAX_FETCH_EXPIRES, MAX_QUEUED_FETCHES};
use inflight::Settled;

/// Messages of a consumer child ([`PullConsumer`](crate::PullConsumer) or
/// [`PushConsumer`](crate::PushConsumer)).
pub enum ConsumerMsg {
    /// Pull only: fetch at most `batch` messages, waiting at most `expires`
    /// (default 5 s) for the first one, forward them, wait for every
    /// decision, and reply. A push child answers [`Error::WrongMode`].
    ///
    /// Bad requests (`batch == 0`, `batch` above the consumer's
    /// `max_batch` or [`MAX_FETCH_BATCH`], `expires` zero or above its
    /// `max_expires` or [`MAX_FETCH_EXPIRES`]) are answered with
    /// [`Error::Invalid`] and fetch nothing. Past [`MAX_QUEUED_FETCHES`]
    /// waiting fetches, a fetch is answered [`Error::Busy`]. A fetch whose
    /// caller has given up by the time its turn comes is not served, and
    /// `expires` is cut to what is left of the caller's call timeout.
    Fetch {
        /// At most this many messages.
        batch: usize,
        /// How long the server may wait for messages (default 5 s).
        expires: Option<Duration>,
        /// Where the outcome goes.
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    },
    /// The child's counters.
    Stats(RpcReplyPort<ConsumerStats>),
    /// Stop taking new messages, wait up to `timeout` for the decisions on
    /// what is in flight, nak the rest, reply, and stop.
    ///
    /// This is a normal end: under a supervisor, a `permanent` child is
    /// started again, a `transient` or `temporary` one is not. To drain for
    /// good, use [`SupervisorMsg::Drain`](crate::SupervisorMsg::Drain) or
    /// `RemoveConsumer`.
    Drain {
        /// How long to wait for outstanding decisions.
        timeout: Duration,
        /// Where the report goes.
        reply: RpcReplyPort<DrainReport>,
    },
    /// Send future deliveries to this target instead (for example after the
    /// target actor was restarted).
    SetTarget(DerivedActorRef<Delivery>),
    /// Sent by the child's own worker task when it ends. It cannot be built
    /// outside this crate.
    WorkerExited(WorkerExit),
}

impl fmt::Debug for ConsumerMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fetch { batch, expires, .. } => f
                .debug_struct("Fetch")
                .field("batch", batch)
                .field("expires", expires)
                .finish(),
            Self::Stats(_) => f.write_str("Stats"),
            Self::Drain { timeout, .. } => {
                f.debug_struct("Drain").field("timeout", timeout).finish()
            }
            Self::SetTarget(_) => f.write_str("SetTarget"),
            Self::WorkerExited(exit) => f.debug_tuple("WorkerExited").field(exit).finish(),
        }
    }
}

/// How a child's worker task ended.
#[derive(Debug)]
pub struct WorkerExit {
    failure: Option<String>,
}

/// What a drain settled and what it nak'ed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Deliveries whose decision came within the drain timeout.
    pub settled: usize,
    /// Deliveries nak'ed because no decision came in time, plus messages
    /// that arrived during the drain and were never forwarded.
    pub naked: usize,
}

impl DrainReport {
    /// Adds another child's report.
    pub fn merge(&mut self, other: DrainReport) {
        self.settled += other.settled;
        self.naked += other.naked;
    }
}

/// A child's counters since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub durable: String,
    /// Push or pull.
    pub mode: ConsumerMode,
    /// Messages forwarded to the target.
    pub delivered: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Nak'ed by the target.
    pub naked: u64,
    /// Terminated by the target.
    pub termed: u64,
    /// Dropped without a decision, or nak'ed by a drain.
    pub abandoned: u64,
    /// Not decided within the decision timeout.
    pub timed_out: u64,
    /// Forwarded and not yet settled.
    pub in_flight: u64,
    /// Fetches served (pull).
    pub fetches: u64,
    /// Fetches that ended by expiry with nothing delivered (pull).
    pub empty_fetches: u64,
    /// Push subscriptions made anew because the old one closed.
    pub resubscribes: u64,
    /// Terminated messages first published to the dead-letter subject.
    pub dead_lettered: u64,
    /// `+WPI` sent to keep deliveries the target still holds alive.
    pub kept_alive: u64,
    /// The server's ack wait the child works with: the consumer's
    /// `ack_wait`, or its shortest `backoff` step.
    pub ack_wait: Duration,
    /// How long the target may hold a delivery undecided (the decision
    /// timeout in effect).
    pub max_hold: Duration,
}

/// Lock-free counters shared by a child and its worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub naked: AtomicU64,
    pub termed: AtomicU64,
    pub abandoned: AtomicU64,
    pub timed_out: AtomicU64,
    pub fetches: AtomicU64,
    pub empty_fetches: AtomicU64,
    pub resubscribes: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub kept_alive: AtomicU64,
}

impl Counters {
    pub fn record(&self, settled: Settled) {
        let counter = match settled {
            Settled::Acked => &self.acked,
            Settled::Naked => &self.naked,
            Settled::Termed => &self.termed,
            Settled::Abandoned => &self.abandoned,
            Settled::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, spec: &ConsumerSpec, effective: &Effective) -> ConsumerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let delivered = get(&self.delivered);
        let settled = get(&self.acked)
            + get(&self.naked)
            + get(&self.termed)
            + get(&self.abandoned)
            + get(&self.timed_out);
        ConsumerStats {
            stream: spec.stream.clone(),
            durable: spec.durable.clone(),
            mode: spec.mode,
            delivered,
            acked: get(&self.acked),
            naked: get(&self.naked),
            termed: get(&self.termed),
            abandoned: get(&self.abandoned),
            timed_out: get(&self.timed_out),
            in_flight: delivered.saturating_sub(settled),
            fetches: get(&self.fetches),
            empty_fetches: get(&self.empty_fetches),
            resubscribes: get(&self.resubscribes),
            dead_lettered: get(&self.dead_lettered),
            kept_alive: get(&self.kept_alive),
            ack_wait: effective.ack_wait,
            max_hold: effective.max_hold,
        }
    }
}

/// What a consumer child is started with.
#[derive(Clone)]
pub struct ConsumerArgs {
    /// The JetStream context to bind through.
    pub js: jetstream::Context,
    /// The durable consumer.
    pub spec: ConsumerSpec,
    /// Where deliveries go.
    pub target: DerivedActorRef<Delivery>,
}

impl fmt::Debug for ConsumerArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerArgs")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// Control messages from a child to its worker.
pub(crate) enum WorkerCtl {
    Drain {
        timeout: Duration,
        reply: RpcReplyPort<DrainReport>,
    },
    SetTarget(DerivedActorRef<Delivery>),
}

/// Everything a worker needs, fixed at bind time.
pub(crate) struct WorkerCtx {
    pub js: jetstream::Context,
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
}

impl WorkerCtx {
    /// The worker's in-flight registry.
    pub fn in_flight(&self) -> inflight::InFlight {
        let dead_letters = dead_letter::DeadLetters::new(
            self.js.clone(),
            self.stream.clone(),
            self.durable.clone(),
            self.spec.dead_letter_subject.clone(),
            self.effective.max_deliver,
        );
        inflight::InFlight::new(
            self.js.client(),
            self.stream.clone(),
            self.durable.clone(),
            &self.effective,
            self.counters.clone(),
            dead_letters,
        )
    }
}

/// The channels a worker listens on.
pub(crate) struct WorkerInbox {
    pub fetches: mpsc::Receiver<FetchRequest>,
    pub control: mpsc::UnboundedReceiver<WorkerCtl>,
    pub target: DerivedActorRef<Delivery>,
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
    fetches: mpsc::Sender<FetchRequest>,
    control: mpsc::UnboundedSender<WorkerCtl>,
    limits: SharedEffective,
    draining: bool,
    /// The worker finished its work (a drain) and the child stopped itself:
    /// a normal end. A child killed or stopped from outside never sets it.
    finished: bool,
    _worker: WorkerHandle,
}

impl ConsumerState {
    /// Whether the child ended by itself, its work done.
    pub(crate) fn finished(&self) -> bool {
        self.finished
    }
}

impl fmt::Debug for ConsumerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerState")
            .field("durable", &self.durable)
            .field("mode", &self.spec.mode)
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
    let ConsumerArgs { js, spec, target } = args;
    if spec.mode != mode {
        return Err(Box::new(Error::WrongMode {
            durable: spec.durable.clone(),
            expected: mode,
            actual: spec.mode,
        }));
    }
    crate::fault_point!("rj-child-pre-start");
    let (info, action) = ensure_consumer(&js, &spec).await?;
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
    let counters = Arc::new(Counters::default());
    let durable: Arc<str> = Arc::from(spec.durable.as_str());
    let (fetch_tx, fetch_rx) = mpsc::channel(MAX_QUEUED_FETCHES);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let effective = Effective::from_server(&spec, &info.config);
    tracing::debug!(durable = %spec.durable, ?effective, "settings in effect");
    let limits = SharedEffective::new(effective.clone());
    let ctx = WorkerCtx {
        js,
        spec: spec.clone(),
        info,
        effective,
        limits: limits.clone(),
        stream: Arc::from(spec.stream.as_str()),
        durable: durable.clone(),
        counters: counters.clone(),
    };
    let inbox = WorkerInbox {
        fetches: fetch_rx,
        control: control_rx,
        target,
    };
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
        let _ = myself.cast(ConsumerMsg::WorkerExited(WorkerExit { failure }));
    });
    Ok(ConsumerState {
        spec,
        durable,
        counters,
        fetches: fetch_tx,
        control: control_tx,
        limits,
        draining: false,
        finished: false,
        _worker: WorkerHandle { task },
    })
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
            if state.spec.mode != ConsumerMode::Pull {
                let _ = reply.send(Err(Error::WrongMode {
                    durable: state.spec.durable.clone(),
                    expected: ConsumerMode::Pull,
                    actual: state.spec.mode,
                }));
                return Ok(());
            }
            if state.draining {
                let _ = reply.send(Err(Error::Draining {
                    durable: state.spec.durable.clone(),
                }));
                return Ok(());
            }
            let expires = match validate_fetch(batch, expires, &state.limits.get()) {
                Ok(expires) => expires,
                Err(err) => {
                    let _ = reply.send(Err(err));
                    return Ok(());
                }
            };
            let request = FetchRequest::new(batch, expires, reply, state.durable.clone());
            match state.fetches.try_send(request) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(request)) => {
                    request.answer(Err(Error::Busy {
                        durable: state.spec.durable.clone(),
                        queued: MAX_QUEUED_FETCHES,
                    }));
                }
                // The worker is gone: the request answers for itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        ConsumerMsg::Stats(reply) => {
            let _ = reply.send(state.counters.snapshot(&state.spec, &state.limits.get()));
        }
        ConsumerMsg::Drain { timeout, reply } => {
            state.draining = true;
            if let Err(mpsc::error::SendError(WorkerCtl::Drain { reply, .. })) =
                state.control.send(WorkerCtl::Drain { timeout, reply })
            {
                let _ = reply.send(DrainReport::default());
            }
        }
        ConsumerMsg::SetTarget(target) => {
            let _ = state.control.send(WorkerCtl::SetTarget(target));
        }
        ConsumerMsg::WorkerExited(WorkerExit { failure }) => match failure {
            Some(failure) => {
                tracing::warn!(durable = %state.durable, %failure, "consumer worker failed");
                return Err(failure.into());
            }
            None => {
                tracing::debug!(durable = %state.durable, "consumer worker finished; stopping");
                state.finished = true;
                myself.stop(Some("drained".into()));
            }
        },
    }
    Ok(())
}

/// Serves the control channel during a drain: waits up to `timeout` for the
/// decisions on what is in flight, then nak's the rest.
pub(crate) async fn drain_in_flight(
    in_flight: &mut inflight::InFlight,
    timeout: Duration,
    report: DrainReport,
) -> DrainReport {
    drain_recording(in_flight, timeout, report, |_| {}).await
}

/// [`drain_in_flight`], reporting what became of each delivery a fetch
/// counted to `record`.
pub(crate) async fn drain_recording(
    in_flight: &mut inflight::InFlight,
    timeout: Duration,
    mut report: DrainReport,
    mut record: impl FnMut(Settled),
) -> DrainReport {
    let deadline = tokio::time::Instant::now() + timeout;
    while in_flight.undecided() > 0 {
        tokio::select! {
            settlement = in_flight.next_verdict() => {
                if let Some(settled) = in_flight.apply(settlement).await {
                    report.settled += 1;
                    record(settled);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    report.naked += in_flight.settle_all(&mut record).await;
    in_flight.flush(Duration::from_secs(2)).await;
    report
}

/// A timer that is armed now and then and reused, so that waiting on a
/// deadline does not register a new timer on every loop turn.
pub(crate) struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
}

impl Alarm {
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
        }
    }

    /// Fires at `at` (replacing any earlier arming).
    pub fn arm(&mut self, at: tokio::time::Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = Some(at);
    }

    /// Fires at `at`, unless it is armed to fire sooner already.
    pub fn arm_if_earlier(&mut self, at: tokio::time::Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            self.arm(at);
        }
    }

    /// Forgets any arming.
    pub fn disarm(&mut self) {
        self.armed = None;
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Completes when the armed time comes; poll only while armed.
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
