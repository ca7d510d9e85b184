//! The pull child: fetches only when asked.
//!
//! Each [`ConsumerMsg::Fetch`] becomes one pull request to the server for at
//! most `batch` messages. The server answers with whatever is available, up
//! to `batch`; when nothing is, it waits up to `expires` and then reports
//! the expiry, which becomes the clean empty [`FetchOutcome`] (`delivered ==
//! 0`, `expired == true`). Messages are forwarded as they arrive, without
//! waiting for one decision before forwarding the next; the reply is sent
//! once every forwarded message is settled on the server.
//!
//! Fetches are served one at a time, in the order they reach the child.
//!
//! ```no_run
//! use ractor::{Actor, call_t};
//! use ractor_jetstream::{ConsumerArgs, ConsumerMsg, ConsumerSpec, PullConsumer};
//! # async fn run(js: async_nats::jetstream::Context, target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), Box<dyn std::error::Error>> {
//! let args = ConsumerArgs { js, spec: ConsumerSpec::pull("ORDERS", "billing", "worker"), target };
//! let (child, _) = Actor::spawn(None, PullConsumer, args).await?;
//! let outcome = call_t!(child, |reply| ConsumerMsg::Fetch { batch: 100, expires: None, reply }, 10_000)??;
//! println!("{} delivered, {} acked", outcome.delivered, outcome.acked);
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream::consumer::{self, FromConsumer, pull};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::time::Instant;

use super::inflight::{ForwardError, InFlight};
use super::{
    Alarm, ConsumerArgs, ConsumerMsg, ConsumerState, DrainReport, FetchOutcome, FetchRequest,
    WorkerCtl, WorkerCtx, WorkerInbox, drain_in_flight, handle_child_msg, start_child,
};
use crate::delivery::Delivery;
use crate::ensure::consumer_info;
use crate::error::{Error, ServerErrorKind};
use crate::spec::ConsumerMode;

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
        start_child(myself, args, ConsumerMode::Pull, run).await
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

/// How many ready messages are forwarded before the worker yields.
const FORWARD_BURST: usize = 16;

/// How often an open fetch checks whether the connection was re-established
/// (which loses the pull request on the server).
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// The pull worker: serves fetches until drained or aborted.
async fn run(ctx: WorkerCtx, mut inbox: WorkerInbox) -> Result<(), Error> {
    let config =
        pull::Config::try_from_consumer_config(ctx.info.config.clone()).map_err(|err| {
            Error::server(
                format!("bind consumer {}/{}", ctx.stream, ctx.durable),
                ServerErrorKind::Other,
                err,
            )
        })?;
    let consumer = consumer::Consumer::new(config, ctx.info.clone(), ctx.js.clone());
    let mut in_flight = ctx.in_flight();
    let mut fetcher = Fetcher {
        ctx: &ctx,
        consumer: &consumer,
        in_flight: &mut in_flight,
        alarm: Alarm::new(),
        client: ctx.js.client(),
        denials: crate::connect::denials_of(&ctx.js.client()),
    };
    loop {
        tokio::select! {
            biased;
            control = inbox.control.recv() => match control {
                Some(WorkerCtl::SetTarget(target)) => inbox.target = target,
                Some(WorkerCtl::Drain { timeout, reply }) => {
                    let report = drain_in_flight(fetcher.in_flight, timeout, DrainReport::default()).await;
                    let _ = reply.send(report);
                    return Ok(());
                }
                None => return Ok(()),
            },
            request = inbox.fetches.recv() => match request {
                Some(request) => {
                    if let Some(drain) = fetcher.fetch(request, &mut inbox).await? {
                        return drain;
                    }
                }
                None => return Ok(()),
            },
            // Verdicts that arrive between fetches are stale (their
            // deliveries timed out); applying them is a no-op.
            settlement = fetcher.in_flight.next_verdict() => {
                fetcher.in_flight.apply(settlement).await;
            }
        }
    }
}

struct Fetcher<'a> {
    ctx: &'a WorkerCtx,
    consumer: &'a consumer::Consumer<pull::Config>,
    in_flight: &'a mut InFlight,
    /// One timer for every deadline of a fetch (expiry, reconnect check,
    /// decision timeouts), reused from fetch to fetch.
    alarm: Alarm,
    client: async_nats::Client,
    /// The connection's permission reports, when it was made by
    /// [`crate::connect`].
    denials: Option<std::sync::Arc<crate::connect::Denials>>,
}

impl Fetcher<'_> {
    /// Sends the pull request for what is still missing of a fetch.
    async fn send_request(
        &self,
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
        self.consumer
            .request_batch(request, inbox.to_string().into())
            .await
            .map_err(|err| Error::server(self.op(), ServerErrorKind::Connection, err))
    }

    fn op(&self) -> String {
        format!("fetch from {}/{}", self.ctx.stream, self.ctx.durable)
    }

    /// Serves one fetch. Returns `Some(result)` when a drain arrived during
    /// the fetch and the worker must end with that result.
    async fn fetch(
        &mut self,
        request: FetchRequest,
        inbox: &mut WorkerInbox,
    ) -> Result<Option<Result<(), Error>>, Error> {
        let ctx = self.ctx;
        ctx.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let client = &self.client;
        let statistics = client.statistics();
        let inbox_subject = client.new_inbox();
        let mut subscription = match client.subscribe(inbox_subject.clone()).await {
            Ok(subscription) => self.in_flight.guard(subscription),
            Err(err) => {
                request.answer(Err(Error::server(
                    self.op(),
                    ServerErrorKind::Connection,
                    err,
                )));
                return Ok(None);
            }
        };
        let mut connected = statistics.connects.load(Ordering::Relaxed);
        // Permission violations come back on the connection, not to the
        // request; remember where the connection's reports stand.
        let denials = self.denials.clone();
        let denials_since = denials.as_ref().map_or(0, |d| d.mark());
        if let Err(err) = self
            .send_request(request.batch, request.expires, &inbox_subject)
            .await
        {
            request.answer(Err(err));
            return Ok(None);
        }
        let expires_at = Instant::now() + request.expires;
        let mut give_up = expires_at + EXPIRY_GRACE;
        let mut next_check = Instant::now() + RECONNECT_CHECK;
        self.alarm.disarm();
        let mut state = FetchState {
            batch: request.batch,
            outcome: FetchOutcome::default(),
            open: true,
            expired: false,
            failure: None,
            refused: None,
        };
        loop {
            // Do all the work that is ready before waiting: apply the
            // decisions that came in, then forward what arrived.
            while let Some(settlement) = self.in_flight.try_verdict() {
                if let Some(settled) = self.in_flight.apply(settlement).await {
                    state.outcome.record(settled);
                }
            }
            let mut forwarded = 0;
            while state.open && forwarded < FORWARD_BURST {
                match subscription.try_next() {
                    Some(Some(message)) => {
                        self.on_message(message, &inbox.target, &mut state).await;
                        forwarded += 1;
                    }
                    Some(None) => state.open = false,
                    None => break,
                }
            }
            if forwarded == FORWARD_BURST {
                // Let the target (often scheduled on this same thread) start
                // on what it got, so that deciding overlaps forwarding.
                tokio::task::yield_now().await;
            }
            if !state.open && self.in_flight.live() == 0 {
                break;
            }
            // The alarm is set for the earliest thing to check. It may go off
            // early (a decision came in meanwhile); each check below looks
            // at the clock.
            let mut wake = self.in_flight.next_deadline();
            if state.open {
                wake = Some(wake.map_or(next_check, |w| w.min(next_check)).min(give_up));
            }
            if let Some(wake) = wake {
                self.alarm.arm_if_earlier(wake);
            }
            let open = state.open;
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target = target,
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        // Stop taking messages: whatever the server still
                        // sends for this request is nak'ed, not forwarded.
                        let mut report = DrainReport::default();
                        if open {
                            report.naked += subscription.drain_and_nak().await;
                        }
                        let report = drain_in_flight(self.in_flight, timeout, report).await;
                        let _ = reply.send(report);
                        request.answer(Err(Error::Draining { durable: ctx.durable.to_string() }));
                        return Ok(Some(Ok(())));
                    }
                    None => return Ok(Some(Ok(()))),
                },
                settlement = self.in_flight.next_verdict() => {
                    if let Some(settled) = self.in_flight.apply(settlement).await {
                        state.outcome.record(settled);
                    }
                }
                message = subscription.next(), if open => match message {
                    Some(message) => self.on_message(message, &inbox.target, &mut state).await,
                    None => state.open = false,
                },
                () = self.alarm.fired(), if self.alarm.is_armed() => {
                    let now = Instant::now();
                    self.in_flight.expire_due(now, |settled| state.outcome.record(settled)).await;
                    if state.open && now >= next_check {
                        next_check = now + RECONNECT_CHECK;
                        // A reconnect loses the pull request on the server:
                        // ask again for what is still missing, within what
                        // is left of `expires`.
                        let now_connected = statistics.connects.load(Ordering::Relaxed);
                        if now_connected != connected {
                            connected = now_connected;
                            let left = expires_at.saturating_duration_since(now);
                            let missing = state.batch - state.outcome.delivered;
                            if left < Duration::from_millis(10) {
                                state.end(true);
                            } else if self.send_request(missing, left, &inbox_subject).await.is_ok() {
                                tracing::debug!(durable = %ctx.durable, missing, "reconnected; pull request sent again");
                                give_up = Instant::now() + left + EXPIRY_GRACE;
                            }
                        }
                    }
                    if state.open && now >= give_up {
                        tracing::debug!(durable = %ctx.durable, "no end-of-request from the server; treating the fetch as expired");
                        state.end(true);
                    }
                }
            }
        }
        let FetchState {
            mut outcome,
            expired,
            failure,
            mut refused,
            ..
        } = state;
        if outcome.delivered == 0 && refused.is_none() {
            // Nothing came: was the request, or its reply subject, denied?
            let subject = format!("CONSUMER.MSG.NEXT.{}.{}", ctx.stream, ctx.durable);
            if let Some(denial) = denials.and_then(|d| d.find(denials_since, &subject, true)) {
                refused = Some(denial.to_error(&self.op()));
            }
        }
        outcome.expired = expired;
        if outcome.delivered == 0 && outcome.expired {
            ctx.counters.empty_fetches.fetch_add(1, Ordering::Relaxed);
        }
        drop(subscription);
        match (failure, refused) {
            (Some(err), _) => {
                request.answer(Err(err.clone()));
                Err(err)
            }
            (None, Some(err)) if outcome.delivered == 0 => {
                request.answer(Err(err));
                Ok(None)
            }
            _ => {
                request.answer(Ok(outcome));
                Ok(None)
            }
        }
    }

    /// Handles one message of a fetch's subscription: forwards a JetStream
    /// message, or reads a status that ends the request.
    async fn on_message(
        &mut self,
        message: async_nats::Message,
        target: &DerivedActorRef<Delivery>,
        state: &mut FetchState,
    ) {
        let ctx = self.ctx;
        match message.status {
            None | Some(StatusCode::OK) => {
                match self.in_flight.forward(message, target) {
                    Ok(_) => state.outcome.delivered += 1,
                    Err(ForwardError::TargetGone) => {
                        state.outcome.delivered += 1;
                        state.failure.get_or_insert(Error::Unavailable {
                            durable: ctx.durable.to_string(),
                            reason: "the target actor is not running".into(),
                        });
                    }
                    Err(ForwardError::NotJetStream) => {
                        tracing::warn!(durable = %ctx.durable, "ignored a message without JetStream metadata");
                    }
                }
                crate::fault_point!("rj-pull-after-forward");
                if state.outcome.delivered >= state.batch {
                    state.end(false);
                }
            }
            Some(StatusCode::TIMEOUT) => state.end(true),
            Some(StatusCode::NOT_FOUND) => state.end(false),
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(status) => {
                let description = message.description.unwrap_or_default();
                tracing::debug!(durable = %ctx.durable, %status, %description, "pull request ended by the server");
                state.end(false);
                let deleted = description
                    .to_ascii_lowercase()
                    .contains("consumer deleted");
                if deleted || status == StatusCode::NO_RESPONDERS {
                    match consumer_info(&ctx.js, &ctx.stream, &ctx.durable).await {
                        Ok(None) => {
                            state.failure.get_or_insert(Error::server(
                                self.op(),
                                ServerErrorKind::ConsumerNotFound,
                                "the durable consumer was deleted on the server",
                            ));
                        }
                        _ => {
                            state.refused.get_or_insert(Error::Unavailable {
                                durable: ctx.durable.to_string(),
                                reason: format!("the server answered {status} {description}"),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Where one fetch stands.
struct FetchState {
    batch: usize,
    outcome: FetchOutcome,
    /// The pull request may still bring messages.
    open: bool,
    /// It ended because `expires` passed.
    expired: bool,
    /// A failure that ends the child (it is restarted and binds again).
    failure: Option<Error>,
    /// A failure of this fetch only.
    refused: Option<Error>,
}

impl FetchState {
    fn end(&mut self, expired: bool) {
        if self.open {
            self.open = false;
            self.expired = expired;
        }
    }
}
