//! Typed handles for the common calls: one `Result<_, Error>` each, and no
//! call timeout to choose.
//!
//! The message enums ([`SupervisorMsg`], [`ConsumerMsg`]) stay the way to
//! talk to the actors from other actors; the handles wrap them for code that
//! simply wants an answer:
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
//! let billing = supervisor.pull("billing").await?;
//! let outcome = billing.fetch(100, Some(Duration::from_secs(1))).await?;
//! println!("{} delivered, {} acked", outcome.delivered, outcome.acked);
//! # Ok(()) }
//! ```
//!
//! # Why the calls have no timeout
//!
//! A fetch replies only when every delivery of it is decided, and a target
//! may keep a delivery for as long as it calls
//! [`Delivery::in_progress`](crate::Delivery::in_progress): no timeout
//! chosen here could be sure not to cut off a fetch the child is still
//! serving. None is needed either. The supervisor and the children never
//! block their mailboxes (slow work runs in their tasks), their own waits
//! on the server are bounded, and an actor that stops drops the reply
//! ports it holds, which the handle answers with
//! [`Error::Unavailable`] or [`Error::FetchInterrupted`].
//!
//! # Finding a child after a restart
//!
//! A [`PullHandle`] or [`ConsumerHandle`] from a supervisor names its child
//! by the name the supervisor registers it under
//! (`<supervisor>/<stream>/<durable>`, or `jetstream-<actor id>/...` for an
//! unnamed supervisor), and finds it again in ractor's registry when the
//! child was restarted. While no child runs, a fetch goes through the
//! supervisor, which answers why ([`UnavailableReason`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::consumer::{ConsumerMsg, ConsumerStats, DrainReport, FetchOutcome, FetchPort, Internal};
use crate::ensure::StreamAction;
use crate::error::{ActorErrorKind, Error, UnavailableReason};
use crate::mode::ConsumerMode;
use crate::spec::{ConsumerSpec, StreamSpec};
use crate::supervisor::{
    JetStreamSupervisor, SupervisorArgs, SupervisorMsg, SupervisorStatus, child_name_prefix,
};
use crate::target::Target;

/// A handle on a running [`JetStreamSupervisor`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SupervisorHandle {
    actor: ActorRef<SupervisorMsg>,
}

impl From<ActorRef<SupervisorMsg>> for SupervisorHandle {
    fn from(actor: ActorRef<SupervisorMsg>) -> Self {
        Self { actor }
    }
}

impl SupervisorHandle {
    /// Spawns a supervisor. A failed start (an invalid topology, a stream
    /// the server refused, a consumer that conflicts) is this crate's
    /// [`Error`], as the supervisor reported it.
    pub async fn spawn(
        name: Option<String>,
        args: SupervisorArgs,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let (actor, join) = Actor::spawn(name, JetStreamSupervisor, args).await?;
        Ok((Self { actor }, join))
    }

    /// Spawns a supervisor linked to `parent`, which is told when it fails
    /// (with [`Error::GaveUp`] when a child failed too often; see
    /// [`Error::of_actor_failure`]).
    pub async fn spawn_linked(
        name: Option<String>,
        args: SupervisorArgs,
        parent: ActorCell,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let (actor, join) = Actor::spawn_linked(name, JetStreamSupervisor, args, parent).await?;
        Ok((Self { actor }, join))
    }

    /// The supervisor actor, for messages the handle does not wrap, and for
    /// linking and stopping it.
    pub fn actor(&self) -> &ActorRef<SupervisorMsg> {
        &self.actor
    }

    /// Fetches from a pull consumer through the supervisor. For many
    /// fetches, a [`PullHandle`] from [`SupervisorHandle::pull`] goes to
    /// the child directly.
    pub async fn fetch(
        &self,
        durable: &str,
        batch: u64,
        expires: Option<Duration>,
    ) -> Result<FetchOutcome, Error> {
        let durable_name = durable.to_string();
        self.ask("fetch", |reply| SupervisorMsg::Fetch {
            durable: durable_name,
            batch,
            expires,
            reply,
        })
        .await?
    }

    /// A handle on a pull consumer's child, which goes to the child
    /// directly and finds it again after a restart. Fails with
    /// [`Error::UnknownConsumer`] or [`Error::WrongMode`].
    pub async fn pull(&self, durable: &str) -> Result<PullHandle, Error> {
        let consumer = self.consumer(durable).await?;
        if consumer.mode != ConsumerMode::Pull {
            return Err(Error::WrongMode {
                durable: durable.to_string(),
                expected: ConsumerMode::Pull,
                actual: consumer.mode,
            });
        }
        Ok(PullHandle {
            consumer,
            port: Arc::new(Mutex::new(None)),
        })
    }

    /// A handle on a consumer's child of either mode (its stats, a drain).
    /// Fails with [`Error::UnknownConsumer`].
    pub async fn consumer(&self, durable: &str) -> Result<ConsumerHandle, Error> {
        let status = self.status().await?;
        let child = status
            .child(durable)
            .ok_or_else(|| Error::UnknownConsumer {
                durable: durable.to_string(),
            })?;
        let name = format!(
            "{}{}/{}",
            child_name_prefix(&self.actor.get_cell()),
            child.stream,
            child.durable
        );
        Ok(ConsumerHandle {
            durable: child.durable.clone(),
            mode: child.mode,
            route: Route::Named {
                name,
                supervisor: self.actor.clone(),
                cached: Arc::new(Mutex::new(None)),
            },
        })
    }

    /// Every child's state.
    pub async fn status(&self) -> Result<SupervisorStatus, Error> {
        self.ask("status", SupervisorMsg::Status).await
    }

    /// Makes a stream exist (create, reuse, or update in place).
    pub async fn ensure_stream(&self, spec: StreamSpec) -> Result<StreamAction, Error> {
        self.ask("ensure a stream", |reply| SupervisorMsg::EnsureStream {
            spec,
            reply,
        })
        .await?
    }

    /// Makes a durable consumer exist and starts its child; `target`, when
    /// given, is registered under the spec's target name first.
    pub async fn add_consumer(
        &self,
        spec: ConsumerSpec,
        target: Option<Target>,
    ) -> Result<ConsumerHandle, Error> {
        let durable = spec.durable.clone();
        self.ask("add a consumer", |reply| SupervisorMsg::AddConsumer {
            spec,
            target,
            reply,
        })
        .await??;
        self.consumer(&durable).await
    }

    /// Stops a consumer's child after draining it for up to `drain`, and
    /// deletes the durable consumer on the server when `delete` is set.
    pub async fn remove_consumer(
        &self,
        durable: &str,
        delete: bool,
        drain: Duration,
    ) -> Result<DrainReport, Error> {
        let durable = durable.to_string();
        self.ask("remove a consumer", |reply| SupervisorMsg::RemoveConsumer {
            durable,
            delete,
            drain,
            reply,
        })
        .await?
    }

    /// Registers (or replaces) a target by name, and points every child
    /// that uses it at the new actor.
    pub fn set_target(
        &self,
        name: impl Into<String>,
        target: impl Into<Target>,
    ) -> Result<(), Error> {
        self.actor
            .cast(SupervisorMsg::SetTarget {
                name: name.into(),
                target: target.into(),
            })
            .map_err(|_| supervisor_gone("set a target"))
    }

    /// Drains every child (waiting up to `timeout` for decisions, nak'ing
    /// the rest) and stops them; they are not restarted afterwards.
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, Error> {
        self.ask("drain", |reply| SupervisorMsg::Drain { timeout, reply })
            .await
    }

    /// One call to the supervisor, waiting for its answer (see the module
    /// docs for why without a timeout).
    async fn ask<R: Send + 'static>(
        &self,
        op: &str,
        message: impl FnOnce(RpcReplyPort<R>) -> SupervisorMsg,
    ) -> Result<R, Error> {
        match self.actor.call(message, None).await {
            Ok(CallResult::Success(answer)) => Ok(answer),
            Ok(CallResult::Timeout) => Err(Error::actor(op, ActorErrorKind::Timeout)),
            Ok(CallResult::SenderError) | Err(_) => Err(supervisor_gone(op)),
        }
    }
}

fn supervisor_gone(op: &str) -> Error {
    Error::actor(
        format!("{op} through the JetStream supervisor"),
        ActorErrorKind::NotRunning,
    )
}

/// How a consumer handle reaches its child.
#[derive(Debug, Clone)]
enum Route {
    /// A supervisor's child, by its registered name; found again after a
    /// restart, and reached through the supervisor while none runs.
    Named {
        name: String,
        supervisor: ActorRef<SupervisorMsg>,
        /// The child last found under `name`.
        cached: Arc<Mutex<Option<ActorRef<ConsumerMsg>>>>,
    },
    /// A child spawned directly, without a supervisor.
    Fixed(ActorRef<ConsumerMsg>),
}

/// A handle on one consumer child, push or pull: its stats and a drain.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConsumerHandle {
    durable: String,
    mode: ConsumerMode,
    route: Route,
}

impl ConsumerHandle {
    /// A handle on a child spawned directly (without a supervisor); it is
    /// not found again if that actor is restarted.
    pub fn from_child(
        durable: impl Into<String>,
        mode: ConsumerMode,
        child: ActorRef<ConsumerMsg>,
    ) -> Self {
        Self {
            durable: durable.into(),
            mode,
            route: Route::Fixed(child),
        }
    }

    /// The durable consumer's name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    /// Push or pull.
    pub fn mode(&self) -> ConsumerMode {
        self.mode
    }

    /// The running child, if any.
    pub fn child(&self) -> Option<ActorRef<ConsumerMsg>> {
        match &self.route {
            Route::Fixed(child) => Some(child.clone()),
            Route::Named { name, cached, .. } => {
                let mut cached = cached.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(child) = cached.as_ref().filter(|c| is_running(c)) {
                    return Some(child.clone());
                }
                *cached = ActorRef::<ConsumerMsg>::where_is(name.clone());
                cached.clone()
            }
        }
    }

    /// The child's counters, and the settings it works with.
    pub async fn stats(&self) -> Result<ConsumerStats, Error> {
        self.ask(ConsumerMsg::Stats).await
    }

    /// Stops the child taking new messages, waits up to `timeout` for the
    /// decisions on what is in flight, nak's the rest, and stops it. Under
    /// a supervisor this is a normal end (a `permanent` child is started
    /// again); to stop for good, use [`SupervisorHandle::remove_consumer`].
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, Error> {
        self.ask(|reply| ConsumerMsg::Drain { timeout, reply })
            .await
    }

    /// One call to the child, answered [`Error::Unavailable`] when there is
    /// none or it stops before answering.
    async fn ask<R: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<R>) -> ConsumerMsg,
    ) -> Result<R, Error> {
        let Some(child) = self.child() else {
            return Err(self.unavailable());
        };
        match child.call(message, None).await {
            Ok(CallResult::Success(answer)) => Ok(answer),
            Ok(CallResult::Timeout) => Err(Error::actor(
                format!("call consumer {}", self.durable),
                ActorErrorKind::Timeout,
            )),
            Ok(CallResult::SenderError) | Err(_) => Err(self.unavailable()),
        }
    }

    fn unavailable(&self) -> Error {
        Error::Unavailable {
            durable: self.durable.clone(),
            reason: UnavailableReason::Stopped,
        }
    }
}

fn is_running(actor: &ActorRef<ConsumerMsg>) -> bool {
    matches!(
        actor.get_status(),
        ractor::ActorStatus::Running | ractor::ActorStatus::Upgrading
    )
}

/// A handle on a pull consumer's child: fetch, stats, drain. Cheap to
/// clone; every clone reaches the same child.
#[derive(Debug, Clone)]
pub struct PullHandle {
    consumer: ConsumerHandle,
    /// The child's way into its worker's queue, shared by the clones.
    port: Arc<Mutex<Option<FetchPort>>>,
}

impl PullHandle {
    /// A handle on a pull child spawned directly (without a supervisor).
    pub fn from_child(durable: impl Into<String>, child: ActorRef<ConsumerMsg>) -> Self {
        Self {
            consumer: ConsumerHandle::from_child(durable, ConsumerMode::Pull, child),
            port: Arc::new(Mutex::new(None)),
        }
    }

    /// Fetches at most `batch` messages, waiting at most `expires` (default
    /// 5 s, or the consumer's `max_expires` if that is shorter) for them,
    /// forwards them to the target, and answers once every one is decided.
    /// An expired fetch with nothing in it is an empty `Ok`.
    ///
    /// The fetch goes straight into the queue of the child's worker (whose
    /// way in the handle asks the child for once), not through the child's
    /// mailbox; the checks and the answers are the same as for a
    /// [`ConsumerMsg::Fetch`]. Called from a task (an actor's handler, a
    /// spawned task) while the worker is idle, the fetch is served in the
    /// calling task itself, by the same code, which spares it two hand-offs
    /// between tasks ([`ConsumerStats::fetches_in_caller`] counts these).
    /// Dropped before its answer, such a fetch goes on in a task of its
    /// own, as a queued one would.
    pub async fn fetch(
        &self,
        batch: u64,
        expires: Option<Duration>,
    ) -> Result<FetchOutcome, Error> {
        // A closed port means the child stopped: find its successor once.
        for _ in 0..2 {
            let Some(port) = self.port().await else {
                break;
            };
            let (reply, answer) = ractor::concurrency::oneshot();
            match port.submit_or_serve(batch, expires, reply.into()) {
                // The worker answers every request it took, or the request
                // answers for itself (`FetchInterrupted`) when dropped.
                // When the worker was idle, this task serves the fetch.
                Ok(here) => {
                    if let Some(here) = here {
                        here.await;
                    }
                    return answer
                        .await
                        .unwrap_or_else(|_| Err(self.consumer.unavailable()));
                }
                Err(_) => self.forget_port(),
            }
        }
        // No child runs: the supervisor says why, or serves it from a child
        // that has just started.
        self.fetch_via_supervisor(batch, expires).await
    }

    /// The current child's fetch port, asked for when the one in hand is
    /// closed.
    async fn port(&self) -> Option<FetchPort> {
        let cached = self
            .port
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .filter(FetchPort::is_open);
        if cached.is_some() {
            return cached;
        }
        let child = self.consumer.child()?;
        let port = match child
            .call(|reply| ConsumerMsg::Internal(Internal::port(reply)), None)
            .await
        {
            Ok(CallResult::Success(port)) => port,
            _ => return None,
        };
        *self.port.lock().unwrap_or_else(PoisonError::into_inner) = Some(port.clone());
        Some(port)
    }

    fn forget_port(&self) {
        *self.port.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn fetch_via_supervisor(
        &self,
        batch: u64,
        expires: Option<Duration>,
    ) -> Result<FetchOutcome, Error> {
        match &self.consumer.route {
            Route::Named { supervisor, .. } => {
                SupervisorHandle::from(supervisor.clone())
                    .fetch(&self.consumer.durable, batch, expires)
                    .await
            }
            Route::Fixed(_) => Err(self.consumer.unavailable()),
        }
    }

    /// The child's counters, and the settings it works with.
    pub async fn stats(&self) -> Result<ConsumerStats, Error> {
        self.consumer.stats().await
    }

    /// Drains the child (see [`ConsumerHandle::drain`]).
    pub async fn drain(&self, timeout: Duration) -> Result<DrainReport, Error> {
        self.consumer.drain(timeout).await
    }

    /// The same child, as a handle of either mode.
    pub fn consumer(&self) -> &ConsumerHandle {
        &self.consumer
    }
}
