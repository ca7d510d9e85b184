//! The pull child: fetches only when asked.
//!
//! Each [`ConsumerMsg::Fetch`] becomes one pull request to the server for at
//! most `batch` messages. The server answers with whatever is available, up
//! to `batch`; when nothing is, it waits up to `expires` and then reports
//! the expiry, which becomes the clean empty [`FetchOutcome`] (`delivered ==
//! 0`, `end == FetchEnd::Expired`). Messages are forwarded as they arrive,
//! without waiting for one decision before forwarding the next; the reply
//! is sent once every forwarded message is settled on the server. The
//! outcome's [`FetchEnd`] says why the fetch ended.
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
//!
//! ```no_run
//! use ractor::Actor;
//! use ractor_jetstream::{ConsumerArgs, ConsumerSpec, PullConsumer, PullHandle};
//! # async fn run(js: async_nats::jetstream::Context, target: ractor::DerivedActorRef<ractor_jetstream::Delivery>) -> Result<(), ractor_jetstream::Error> {
//! // A child of its own, without a supervisor (usually the supervisor
//! // spawns it, and `SupervisorHandle::pull` gives the handle).
//! let args = ConsumerArgs { js, spec: ConsumerSpec::pull("ORDERS", "billing", "worker"), target: target.into() };
//! let (child, _) = Actor::spawn(None, PullConsumer, args).await?;
//! let billing = PullHandle::from_child("billing", child);
//! let outcome = billing.fetch(100, None).await?;
//! println!("{} delivered, {} acked, ended by {:?}", outcome.delivered, outcome.acked, outcome.end);
//! # Ok(()) }
//! ```

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::delivery::Delivery;
use async_nats::StatusCode;
use async_nats::jetstream::consumer::{self, FromConsumer, pull};
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::time::Instant;

use super::effective::Effective;
use super::fetch::validate_fetch;
use super::inflight::{ForwardError, GuardedSubscription, InFlight, is_running};
use super::{
    Alarm, ConsumerArgs, ConsumerMsg, ConsumerState, DrainReport, FetchEnd, FetchOutcome,
    FetchRequest, WorkerCtl, WorkerCtx, WorkerInbox, drain_in_flight, drain_recording,
    handle_child_msg, start_child,
};
use crate::ensure::consumer_info;
use crate::error::{Error, ServerErrorKind, UnavailableReason};
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

/// The first pause before asking again after the server refused a request
/// for now (`409 Exceeded MaxWaiting`, `409 Leadership Change`, `503`);
/// each further refusal doubles it, up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(1);

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
    let mut worker = Worker {
        ctx: &ctx,
        consumer: &consumer,
        in_flight: &mut in_flight,
        alarm: Alarm::new(),
        client: ctx.js.client(),
        denials: crate::connect::denials_of(&ctx.js.client()),
    };
    loop {
        // Deliveries kept for a target to come are kept alive meanwhile.
        match worker.in_flight.next_deadline() {
            Some(at) => worker.alarm.arm_if_earlier(at),
            None => worker.alarm.disarm(),
        }
        tokio::select! {
            biased;
            control = inbox.control.recv() => match control {
                Some(WorkerCtl::SetTarget(target)) => inbox.target.set(target),
                Some(WorkerCtl::Drain { timeout, reply }) => {
                    let report = drain_in_flight(worker.in_flight, timeout, DrainReport::default()).await;
                    let _ = reply.send(report);
                    return Ok(());
                }
                None => return Ok(()),
            },
            request = inbox.fetches.recv() => match request {
                Some(request) => match worker.serve(request, &mut inbox).await {
                    Served::Done => {}
                    Served::Drained => return Ok(()),
                    Served::Failed(err) => return Err(err),
                },
                None => return Ok(()),
            },
            // Verdicts that arrive between fetches are stale (their
            // deliveries timed out), or from deliveries kept for the
            // next target.
            settlement = worker.in_flight.next_verdict() => {
                worker.in_flight.apply(settlement).await;
            }
            () = worker.alarm.fired(), if worker.alarm.is_armed() => {
                worker.in_flight.expire_due(Instant::now(), |_| {}).await;
            }
        }
    }
}

/// How serving one fetch ended for the worker.
enum Served {
    /// Answered; ready for the next.
    Done,
    /// A drain arrived during the fetch; the worker ends.
    Drained,
    /// A failure that ends the child (it is restarted and binds again).
    Failed(Error),
}

struct Worker<'a> {
    ctx: &'a WorkerCtx,
    consumer: &'a consumer::Consumer<pull::Config>,
    in_flight: &'a mut InFlight,
    /// One timer for every deadline (expiry, retries, reconnect checks,
    /// keep-alives and holds), reused from fetch to fetch.
    alarm: Alarm,
    client: async_nats::Client,
    /// The connection's permission reports, when it was made by
    /// [`crate::connect`].
    denials: Option<std::sync::Arc<crate::connect::Denials>>,
}

/// Where a fetch's pull request stands.
enum Request {
    /// Sent; messages or an end-of-request status may come. Considered
    /// lost at `give_up`.
    Open { give_up: Instant },
    /// The server refused it for now; asked again at `retry_at` (within
    /// `expires`).
    Waiting {
        retry_at: Instant,
        pause: Duration,
        code: u16,
        description: String,
    },
    /// Nothing more comes for this fetch.
    Closed,
}

/// Where one fetch stands.
struct Fetch {
    batch: usize,
    expires_at: Instant,
    outcome: FetchOutcome,
    request: Request,
    end: FetchEnd,
    /// The target actor this fetch delivers to (a successor gets the next
    /// fetch).
    target: DerivedActorRef<Delivery>,
    /// The target stopped during the fetch.
    target_gone: bool,
    /// A failure that ends the child.
    failure: Option<Error>,
    /// A failure of this fetch only.
    refused: Option<Error>,
}

impl Fetch {
    fn close(&mut self, end: FetchEnd) {
        if !matches!(self.request, Request::Closed) {
            self.request = Request::Closed;
            self.end = end;
        }
    }

    fn missing(&self) -> usize {
        self.batch
            .saturating_sub(usize::try_from(self.outcome.delivered).unwrap_or(usize::MAX))
    }
}

impl Worker<'_> {
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
            .map_err(|err| Error::server_caused(self.op(), ServerErrorKind::Connection, err))
    }

    /// Serves one fetch, unless its caller is gone.
    async fn serve(&mut self, request: FetchRequest, inbox: &mut WorkerInbox) -> Served {
        if request.abandoned() {
            tracing::debug!(durable = %self.ctx.durable, "skipped a fetch whose caller gave up");
            return Served::Done;
        }
        // The consumer's limits may have changed since the child took it.
        if let Err(err) = validate_fetch(
            request.batch as u64,
            Some(request.expires),
            &self.ctx.limits.get(),
        ) {
            request.answer(Err(err));
            return Served::Done;
        }
        let Some(expires) = request.expires_now() else {
            tracing::debug!(durable = %self.ctx.durable, "skipped a fetch whose caller's timeout has passed");
            return Served::Done;
        };
        let Some(target) = inbox.target.get().filter(|t| is_running(t)).cloned() else {
            request.answer(Err(self.unavailable()));
            return Served::Done;
        };
        let ctx = self.ctx;
        ctx.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let mut fetch = Fetch {
            batch: request.batch,
            expires_at: Instant::now() + expires,
            outcome: FetchOutcome::default(),
            request: Request::Closed,
            end: FetchEnd::Filled,
            target,
            target_gone: false,
            failure: None,
            refused: None,
        };
        // Deliveries kept while the target was gone go first.
        fetch.outcome.delivered += self.in_flight.forward_kept(fetch.batch, &fetch.target) as u64;
        let denials_since = self.denials.as_ref().map_or(0, |d| d.mark());
        let mut subscription = None;
        if fetch.missing() > 0 {
            match self.open(&mut fetch, expires).await {
                Ok(opened) => subscription = Some(opened),
                Err(err) => {
                    request.answer(Err(err));
                    return Served::Done;
                }
            }
        }
        let served = self.run_fetch(&mut fetch, subscription, inbox).await;
        if let Some(report) = served {
            // A drain: what was delivered was settled or nak'ed, and the
            // caller learns how.
            fetch.outcome.end = FetchEnd::Drained;
            request.answer(Ok(fetch.outcome));
            return report;
        }
        self.finish(fetch, request, denials_since)
    }

    /// Subscribes the fetch's inbox and sends its first pull request.
    async fn open(
        &mut self,
        fetch: &mut Fetch,
        expires: Duration,
    ) -> Result<(GuardedSubscription, String), Error> {
        let inbox_subject = self.client.new_inbox();
        let subscription = self
            .client
            .subscribe(inbox_subject.clone())
            .await
            .map_err(|err| Error::server_caused(self.op(), ServerErrorKind::Connection, err))?;
        let subscription = self.in_flight.guard(subscription);
        self.send_request(fetch.missing(), expires, &inbox_subject)
            .await?;
        fetch.request = Request::Open {
            give_up: fetch.expires_at + EXPIRY_GRACE,
        };
        Ok((subscription, inbox_subject))
    }

    /// Runs a fetch until its request is closed and every delivery is
    /// settled. Returns `Some` when a drain ended it.
    async fn run_fetch(
        &mut self,
        fetch: &mut Fetch,
        mut subscription: Option<(GuardedSubscription, String)>,
        inbox: &mut WorkerInbox,
    ) -> Option<Served> {
        let statistics = self.client.statistics();
        let mut connected = statistics.connects.load(Ordering::Relaxed);
        let mut next_check = Instant::now() + RECONNECT_CHECK;
        self.alarm.disarm();
        loop {
            // Do all the work that is ready before waiting: apply the
            // decisions that came in, then forward what arrived.
            while let Some(settlement) = self.in_flight.try_verdict() {
                if let Some(settled) = self.in_flight.apply(settlement).await {
                    fetch.outcome.record(settled);
                }
            }
            let mut forwarded = 0;
            while matches!(fetch.request, Request::Open { .. }) && forwarded < FORWARD_BURST {
                let Some((sub, _)) = subscription.as_mut() else {
                    break;
                };
                match sub.try_next() {
                    Some(Some(message)) => {
                        self.on_message(message, fetch, inbox).await;
                        forwarded += 1;
                    }
                    Some(None) => fetch.close(FetchEnd::Expired),
                    None => break,
                }
            }
            if forwarded == FORWARD_BURST {
                // Let the target (often scheduled on this same thread) start
                // on what it got, so that deciding overlaps forwarding.
                tokio::task::yield_now().await;
            }
            if matches!(fetch.request, Request::Closed) && self.in_flight.undecided() == 0 {
                return None;
            }
            // The alarm is set for the earliest thing to check. It may go off
            // early (a decision came in meanwhile); each check below looks
            // at the clock.
            let mut wake = self.in_flight.next_deadline();
            let request_wake = match &fetch.request {
                Request::Open { give_up } => Some(next_check.min(*give_up)),
                Request::Waiting { retry_at, .. } => Some((*retry_at).min(fetch.expires_at)),
                Request::Closed => None,
            };
            if let Some(at) = request_wake {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if let Some(wake) = wake {
                self.alarm.arm_if_earlier(wake);
            }
            let open = matches!(fetch.request, Request::Open { .. });
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target.set(target),
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        // Stop taking messages: whatever the server still
                        // sends for this request is nak'ed, not forwarded.
                        let mut report = DrainReport::default();
                        if let Some((mut sub, _)) = subscription.take() {
                            report.naked += sub.drain_and_nak().await as u64;
                        }
                        let outcome = &mut fetch.outcome;
                        let report = drain_recording(self.in_flight, timeout, report, |s| outcome.record(s)).await;
                        let _ = reply.send(report);
                        return Some(Served::Drained);
                    }
                    None => return Some(Served::Drained),
                },
                settlement = self.in_flight.next_verdict() => {
                    if let Some(settled) = self.in_flight.apply(settlement).await {
                        fetch.outcome.record(settled);
                    }
                }
                message = next_message(&mut subscription), if open => match message {
                    Some(message) => self.on_message(message, fetch, inbox).await,
                    None => fetch.close(FetchEnd::Expired),
                },
                () = self.alarm.fired(), if self.alarm.is_armed() => {
                    let now = Instant::now();
                    let outcome = &mut fetch.outcome;
                    self.in_flight.expire_due(now, |settled| outcome.record(settled)).await;
                    self.on_alarm(fetch, &subscription, now, &mut next_check, &mut connected).await;
                }
            }
        }
    }

    /// The request's own deadlines: a retry due, a reconnect to make up
    /// for, an end-of-request status that never came.
    async fn on_alarm(
        &mut self,
        fetch: &mut Fetch,
        subscription: &Option<(GuardedSubscription, String)>,
        now: Instant,
        next_check: &mut Instant,
        connected: &mut u64,
    ) {
        let inbox_subject = subscription
            .as_ref()
            .map(|(_, s)| s.as_str())
            .unwrap_or_default();
        match &mut fetch.request {
            Request::Waiting {
                retry_at,
                pause,
                code,
                description,
            } => {
                if now >= fetch.expires_at {
                    let end = FetchEnd::Status {
                        code: *code,
                        description: std::mem::take(description),
                    };
                    fetch.close(end);
                } else if now >= *retry_at {
                    let left = fetch.expires_at.saturating_duration_since(now);
                    let pause = *pause;
                    match self
                        .send_request(fetch.missing(), left, inbox_subject)
                        .await
                    {
                        Ok(()) => {
                            fetch.request = Request::Open {
                                give_up: now + left + EXPIRY_GRACE,
                            }
                        }
                        Err(_) => {
                            if let Request::Waiting { retry_at, .. } = &mut fetch.request {
                                *retry_at = now + pause;
                            }
                        }
                    }
                }
            }
            Request::Open { .. } => {
                let missing = fetch.missing();
                if now >= *next_check {
                    *next_check = now + RECONNECT_CHECK;
                    // A reconnect loses the pull request on the server: ask
                    // again for what is still missing, within what is left
                    // of `expires`.
                    let now_connected = self.client.statistics().connects.load(Ordering::Relaxed);
                    if now_connected != *connected {
                        *connected = now_connected;
                        let left = fetch.expires_at.saturating_duration_since(now);
                        if left < Duration::from_millis(10) {
                            fetch.close(FetchEnd::Expired);
                            return;
                        }
                        if self
                            .send_request(missing, left, inbox_subject)
                            .await
                            .is_ok()
                        {
                            tracing::debug!(durable = %self.ctx.durable, missing, "reconnected; pull request sent again");
                            fetch.request = Request::Open {
                                give_up: Instant::now() + left + EXPIRY_GRACE,
                            };
                        }
                    }
                }
                if let Request::Open { give_up } = fetch.request
                    && now >= give_up
                {
                    tracing::debug!(durable = %self.ctx.durable, "no end-of-request from the server; treating the fetch as expired");
                    fetch.close(FetchEnd::Expired);
                }
            }
            Request::Closed => {}
        }
    }

    /// Handles one message of a fetch's subscription: forwards a JetStream
    /// message, or reads a status about the request.
    async fn on_message(
        &mut self,
        message: async_nats::Message,
        fetch: &mut Fetch,
        _inbox: &WorkerInbox,
    ) {
        let ctx = self.ctx;
        match message.status {
            None | Some(StatusCode::OK) => {
                match self.in_flight.forward(message, &fetch.target) {
                    Ok(_) => fetch.outcome.delivered += 1,
                    Err(ForwardError::TargetGone) => {
                        // The rest of this request is nak'ed (or kept, on a
                        // last delivery) as it comes, never forwarded.
                        if !fetch.target_gone {
                            fetch.target_gone = true;
                            tracing::warn!(durable = %ctx.durable, "the target stopped during a fetch");
                        }
                    }
                    Err(ForwardError::NotJetStream) => {
                        tracing::warn!(durable = %ctx.durable, "ignored a message without JetStream metadata");
                    }
                }
                crate::fault_point!("rj-pull-after-forward");
                if fetch.outcome.delivered >= fetch.batch as u64 {
                    fetch.close(FetchEnd::Filled);
                }
            }
            Some(StatusCode::TIMEOUT) => fetch.close(FetchEnd::Expired),
            Some(StatusCode::NOT_FOUND) => fetch.close(FetchEnd::NoMoreMessages),
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(status) => {
                let description = message.description.unwrap_or_default();
                tracing::debug!(durable = %ctx.durable, %status, %description, "pull request ended by the server");
                self.on_refusal(fetch, status, description).await;
            }
        }
    }

    /// The server ended the request with a status other than expiry or
    /// "no more messages".
    async fn on_refusal(&mut self, fetch: &mut Fetch, status: StatusCode, description: String) {
        let code = status.as_u16();
        let lower = description.to_ascii_lowercase();
        let deleted = lower.contains("consumer deleted");
        if (deleted || status == StatusCode::NO_RESPONDERS)
            && let Ok(None) = consumer_info(&self.ctx.js, &self.ctx.stream, &self.ctx.durable).await
        {
            fetch.failure.get_or_insert(Error::server(
                self.op(),
                ServerErrorKind::ConsumerNotFound,
                "the durable consumer was deleted on the server",
            ));
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        // A request the server will refuse however often it is sent: a
        // limit of the consumer (changed since the child bound), or a
        // malformed request.
        let refused_for_good = code == 400
            || lower.contains("exceeded maxrequestbatch")
            || lower.contains("exceeded maxrequestexpires")
            || lower.contains("exceeded maxrequestmaxbytes");
        if refused_for_good {
            self.refresh_limits().await;
            fetch.refused.get_or_insert(Error::FetchRefused {
                durable: self.ctx.durable.to_string(),
                code,
                description: description.clone(),
            });
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        if fetch.outcome.delivered > 0 {
            // Something came: end here rather than wait, and say why.
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        // Refused for now (other requests wait on the consumer, a leader
        // changed): ask again after a pause, within `expires`, so that a
        // loop of fetches does not spin on it.
        let pause = match &fetch.request {
            Request::Waiting { pause, .. } => (*pause * 2).min(RETRY_MAX),
            _ => RETRY_FIRST,
        };
        fetch.request = Request::Waiting {
            retry_at: Instant::now() + pause,
            pause,
            code,
            description,
        };
    }

    /// Reads the consumer's settings from the server again.
    async fn refresh_limits(&self) {
        if let Ok(Some(info)) =
            consumer_info(&self.ctx.js, &self.ctx.stream, &self.ctx.durable).await
        {
            let fresh = Effective::from_server(&self.ctx.spec, &info.config);
            tracing::info!(durable = %self.ctx.durable, ?fresh, "the consumer's settings changed on the server");
            self.ctx.limits.set(fresh);
        }
    }

    /// Answers the fetch.
    fn finish(&mut self, fetch: Fetch, request: FetchRequest, denials_since: u64) -> Served {
        let ctx = self.ctx;
        let Fetch {
            mut outcome,
            end,
            target_gone,
            failure,
            mut refused,
            ..
        } = fetch;
        if target_gone {
            refused.get_or_insert(self.unavailable());
        }
        if outcome.delivered == 0 && refused.is_none() {
            // Nothing came: was the request, or its reply subject, denied
            // since this fetch began?
            let subject = format!("CONSUMER.MSG.NEXT.{}.{}", ctx.stream, ctx.durable);
            if let Some(denial) = self
                .denials
                .as_ref()
                .and_then(|d| d.find(denials_since, &subject, false))
            {
                refused = Some(denial.to_error(&self.op()));
            }
        }
        outcome.expired = end == FetchEnd::Expired;
        outcome.end = end;
        if outcome.delivered == 0 && outcome.expired {
            ctx.counters.empty_fetches.fetch_add(1, Ordering::Relaxed);
        }
        match (failure, refused) {
            (Some(err), _) => {
                request.answer(Err(err.clone()));
                Served::Failed(err)
            }
            (None, Some(err)) if outcome.delivered == 0 || target_gone => {
                request.answer(Err(err));
                Served::Done
            }
            _ => {
                request.answer(Ok(outcome));
                Served::Done
            }
        }
    }
}

/// The next message of a fetch's subscription (pending forever without
/// one; only polled while the request is open).
async fn next_message(
    subscription: &mut Option<(GuardedSubscription, String)>,
) -> Option<async_nats::Message> {
    match subscription.as_mut() {
        Some((sub, _)) => sub.next().await,
        None => std::future::pending().await,
    }
}
