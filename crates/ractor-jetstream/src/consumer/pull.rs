//! The pull child: fetches only when asked.
//!
//! Each [`ConsumerMsg::Fetch`] becomes one pull request to the server for at
//! most `batch` messages. The server answers with whatever is available, up
//! to `batch`; when nothing is, it waits up to `expires` and then reports
//! the expiry, which becomes the clean empty
//! [`FetchOutcome`](super::FetchOutcome) (`delivered == 0`,
//! `end == FetchEnd::Expired`). Messages are forwarded as they arrive,
//! without waiting for one decision before forwarding the next; the reply
//! is sent once every forwarded message is decided. The outcome's
//! [`FetchEnd`](super::FetchEnd) says why the fetch ended.
//!
//! While a fetch runs, its decisions wait in the child's outbox (at most
//! 1 ms, `ACK_LINGER`) and leave together, in fewer writes; all are sent
//! before the answer (see `inflight/outbox.rs`).
//!
//! Fetches are served one at a time, in the order they reach the child;
//! one whose caller gave up by its turn is skipped. A fetch is never sent
//! to the server while the target is not running: it is answered
//! [`Error::Unavailable`] instead, so a retry loop against a dead target
//! does not spend the messages' deliveries.
//!
//! One fetch is a small state machine over its pull request
//! (`Request`): open (messages may come), waiting (the server refused it
//! for now, asked again after a pause, within `expires`), or closed; the
//! fetch ends when the request is closed and every delivery is settled.
//! That state machine is in `pull/request.rs`; serving one fetch from
//! request to answer is in `pull/serve.rs`; this file holds the actor and
//! the worker's loop between fetches.
//!
//! ```no_run
//! use ractor::Actor;
//! use ractor_jetstream::{ConsumerArgs, ConsumerSpec, PullConsumer, PullHandle};
//! # async fn run(js: async_nats::jetstream::Context, target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), ractor_jetstream::Error> {
//! // A child of its own, without a supervisor (usually the supervisor
//! // spawns it, and `SupervisorHandle::pull` gives the handle).
//! let args = ConsumerArgs { connection: js.into(), spec: ConsumerSpec::pull("ORDERS", "billing", "worker"), target: target.into() };
//! let (child, _) = Actor::spawn(None, PullConsumer, args).await?;
//! let billing = PullHandle::from_child("billing", child);
//! let outcome = billing.fetch(100, None).await?;
//! println!("{} delivered, {} acked, ended by {:?}", outcome.delivered, outcome.acked, outcome.end);
//! # Ok(()) }
//! ```

mod barrier;
mod continuous;
mod desk;
mod pin;
mod replies;
mod request;
mod serve;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, FromConsumer, pull};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::effective::Effective;
use super::inflight::{ACK_LINGER, InFlight};
use super::{
    Alarm, ConsumerArgs, ConsumerMsg, ConsumerState, WorkerCtx, WorkerInbox, handle_child_msg,
    start_child,
};
use crate::ensure::consumer_info;
use crate::error::{Error, ServerErrorKind, UnavailableReason};
use crate::spec::{Consume, ConsumerMode};
pub(crate) use desk::{Desk, ServeHere};

/// The pull consumer child. Its messages are [`ConsumerMsg`]; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct PullConsumer;

impl Actor for PullConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // The desk is shared by the worker and the child's fetch port, so
        // that a caller can serve its fetch there when the worker is idle.
        let desk = Arc::new(Desk::default());
        let worker_desk = Arc::clone(&desk);
        let state = start_child(myself, args, ConsumerMode::Pull, move |ctx, inbox| {
            run(ctx, inbox, worker_desk)
        })
        .await?;
        Ok(state.with_desk(desk))
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        handle_child_msg(&myself, message, state)
    }
}

/// How long past `expires` the child waits for the server's end-of-request
/// status before it considers the request lost.
const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// How many ready messages a fetch-driven child forwards before its worker
/// yields, so that the target (often on the same thread) starts on them
/// while the rest of the fetch arrives. At 64, pull batches 100 and 500
/// measured within the noise of 16 on the throughput bench, with the time
/// to the target (p99) at batch 500 up from about 40 µs to 640 to 810 µs.
/// A continuous child takes more at once (`CONTINUOUS_BURST`).
const FORWARD_BURST: usize = 16;

/// How often an open fetch checks whether the connection was re-established
/// (which loses the pull request on the server).
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// The first pause before asking again after the server refused a request
/// for now (`409 Exceeded MaxWaiting`, `409 Leadership Change`, `503`);
/// each further refusal doubles it, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The pull worker's future: serves fetches until drained or aborted, at
/// its desk (see `pull/desk.rs`), or consumes continuously. Set up at
/// once, so that the desk is open by the time the child has started.
fn run(
    ctx: WorkerCtx,
    mut inbox: WorkerInbox,
    desk: Arc<Desk>,
) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send>> {
    let config = match pull::Config::try_from_consumer_config(ctx.info.config.clone()) {
        Ok(config) => config,
        Err(err) => {
            let op = format!("bind consumer {}/{}", ctx.stream, ctx.durable);
            return Box::pin(std::future::ready(Err(Error::server(
                op,
                ServerErrorKind::Other,
                err,
            ))));
        }
    };
    let consumer =
        consumer::Consumer::new(config, ctx.info.clone(), ctx.connection.jetstream().clone());
    let mut in_flight = ctx.in_flight();
    // Decisions wait (briefly) to leave together, fetch-driven or
    // continuous; see `inflight/outbox.rs`.
    in_flight.linger(ACK_LINGER);
    let continuous = ctx
        .spec
        .mode
        .as_pull()
        .is_some_and(|p| p.consume == Consume::Continuous);
    let mut worker = Worker {
        client: ctx.connection.client(),
        denials: ctx.connection.denials().cloned(),
        pin: ctx
            .spec
            .mode
            .as_pull()
            .and_then(|p| p.priority.clone())
            .map(pin::Pin::new),
        ctx: Arc::new(ctx),
        consumer,
        in_flight,
        alarm: Alarm::new(),
        replies: None,
    };
    if continuous {
        return Box::pin(async move { worker.consume(&mut inbox).await.ends().unwrap_or(Ok(())) });
    }
    Box::pin(desk.open(worker, inbox))
}

/// How serving one fetch ended for the worker.
enum Served {
    /// Answered; ready for the next.
    Done,
    /// A drain arrived during the fetch; the worker ends.
    Drained,
    /// The child stopped during the fetch (its controls closed); the
    /// worker ends, and the fetch's caller is told
    /// [`Error::FetchInterrupted`].
    Stopped,
    /// A failure that ends the child (it is restarted and binds again).
    Failed(Error),
}

impl Served {
    /// How the worker ends after this, if it does.
    fn ends(self) -> Option<Result<(), Error>> {
        match self {
            Served::Done => None,
            Served::Drained | Served::Stopped => Some(Ok(())),
            Served::Failed(err) => Some(Err(err)),
        }
    }
}

/// The pull worker's state while it serves fetches.
struct Worker {
    /// The reply subscription every fetch shares, once the first fetch
    /// opened it (again after it closed). Declared (so dropped) before
    /// `in_flight`: what it still receives for a request, once dropped,
    /// is nak'ed through `in_flight`'s drop guard.
    replies: Option<replies::Replies>,
    in_flight: InFlight,
    ctx: Arc<WorkerCtx>,
    consumer: consumer::Consumer<pull::Config>,
    /// One timer for every deadline (expiry, retries, reconnect checks,
    /// keep-alives and holds), reused from fetch to fetch.
    alarm: Alarm,
    client: async_nats::Client,
    /// The connection's permission reports, when it was made by
    /// `connect`.
    denials: Option<std::sync::Arc<crate::connection::Denials>>,
    /// The child's place in the consumer's priority group, when it has one.
    pin: Option<pin::Pin>,
}

impl Worker {
    fn op(&self) -> String {
        format!("fetch from {}/{}", self.ctx.stream, self.ctx.durable)
    }

    fn unavailable(&self) -> Error {
        Error::Unavailable {
            durable: self.ctx.durable.to_string(),
            reason: UnavailableReason::TargetNotRunning,
        }
    }

    /// Sends the pull request for `batch` more messages within `expires`.
    async fn send_request(
        &mut self,
        batch: usize,
        expires: Duration,
        inbox: &str,
    ) -> Result<(), Error> {
        let request = pull::BatchConfig {
            batch,
            expires: Some(expires),
            no_wait: true,
            ..Default::default()
        };
        self.send_pull(request, inbox).await
    }

    /// Sends one pull request (fetch-driven or continuous), with the group
    /// and the pin when the consumer has a priority group.
    async fn send_pull(&mut self, request: pull::BatchConfig, inbox: &str) -> Result<(), Error> {
        // What waits in the outbox goes first, in the same write.
        self.in_flight.send_outbox().await;
        // Noted before it is sent: a worker killed right after sending it
        // must still wait for what it delivers.
        if let Some(replies) = self.replies.as_mut()
            && let Some(expires) = request.expires
        {
            replies.expect(inbox, request.batch, expires);
        }
        match &self.pin {
            Some(pin) => {
                let ctx = &self.ctx;
                pin.request(&ctx.connection, &ctx.stream, &ctx.durable, &request, inbox)
                    .await
                    .map_err(|err| {
                        Error::server_caused(self.op(), ServerErrorKind::Connection, err)
                    })
            }
            None => self
                .consumer
                .request_batch(request, inbox.to_string().into())
                .await
                .map_err(|err| Error::server_caused(self.op(), ServerErrorKind::Connection, err)),
        }
    }

    /// Reads the pin off a delivered message; true when the server just
    /// pinned this child.
    fn observe_pin(&mut self, message: &async_nats::Message) -> bool {
        let acquired = self
            .pin
            .as_mut()
            .is_some_and(|pin| pin.observe(message) == pin::PinChange::Acquired);
        if acquired {
            self.ctx.counters.pin_acquired();
            tracing::info!(durable = %self.ctx.durable, "pinned: this child now gets the messages");
        }
        acquired
    }

    /// A `423`: the pin moved on, and the child stands by.
    fn pin_moved(&mut self) {
        if self.pin.as_mut().is_some_and(pin::Pin::mismatch) {
            self.ctx.counters.pin_gone(true);
            tracing::info!(durable = %self.ctx.durable, "the pin moved on; standing by");
        }
    }

    /// Releases the pin, when the child holds one (at a drain).
    async fn release_pin(&mut self) {
        if let Some(pin) = self.pin.as_mut() {
            let ctx = &self.ctx;
            pin.release(&ctx.connection, &ctx.stream, &ctx.durable)
                .await;
            ctx.counters.pin_gone(false);
        }
    }

    /// For a status that may mean the durable is gone (`consumer
    /// deleted`, no responders): the error that ends the child, once the
    /// server confirms it is gone. The lookup is boxed, as this sits on
    /// the per-message path (see "Small futures" in `consumer.rs`).
    async fn deleted_consumer(&self, status: async_nats::StatusCode, lower: &str) -> Option<Error> {
        if !(lower.contains("consumer deleted") || status == async_nats::StatusCode::NO_RESPONDERS)
        {
            return None;
        }
        let ctx = &self.ctx;
        match Box::pin(consumer_info(&ctx.connection, &ctx.stream, &ctx.durable)).await {
            Ok(None) => Some(Error::server(
                self.op(),
                ServerErrorKind::ConsumerNotFound,
                "the durable consumer was deleted on the server",
            )),
            _ => None,
        }
    }

    /// Reads the consumer's settings from the server again.
    async fn refresh_limits(&self) {
        if let Ok(Some(info)) =
            consumer_info(&self.ctx.connection, &self.ctx.stream, &self.ctx.durable).await
        {
            let fresh = Effective::from_server(&self.ctx.spec, &info.config);
            tracing::info!(durable = %self.ctx.durable, ?fresh, "the consumer's settings changed on the server");
            self.ctx.limits.set(fresh);
        }
    }
}

/// Whether the server will refuse a pull request however often it is
/// sent: a limit of the consumer (changed since the child bound), or a
/// malformed request. `lower` is the status description in lower case.
fn refused_for_good(code: u16, lower: &str) -> bool {
    code == 400
        || lower.contains("exceeded maxrequestbatch")
        || lower.contains("exceeded maxrequestexpires")
        || lower.contains("exceeded maxrequestmaxbytes")
}

/// The next message of the shared reply subscription (pending forever
/// without one).
async fn next_reply(replies: &mut Option<replies::Replies>) -> Option<async_nats::Message> {
    match replies.as_mut() {
        Some(replies) => replies.next().await,
        None => std::future::pending().await,
    }
}
