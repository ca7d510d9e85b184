//! The push child: pumps the consumer's push subscription.
//!
//! The server pushes to the consumer's deliver subject; the child reads the
//! subscription and forwards each message in order, but never has more than
//! `max_in_flight` unsettled deliveries at the target, so a fast server
//! cannot overrun a slow target's mailbox.
//!
//! # Messages waiting in the child
//!
//! The server sends up to the consumer's `max_ack_pending` (1000 by
//! default), usually more than the window (256 by default), and it starts
//! each message's ack timer when it sends it. The child reads everything
//! the server sends into its own buffer, at once, and keeps what waits
//! there alive with `+WPI` (see the `unread` module), so that a target slower than
//! the server gets no second copy of a message it has not yet seen. The
//! timings come from the consumer as the server reports it after binding
//! (its ack wait and backoff, its `max_ack_pending`), not from the spec, so
//! a consumer that someone else created with a larger `max_ack_pending` is
//! bound as it is and handled the same way. The buffer holds at most
//! `max_ack_pending` messages (10,000 when the consumer sets no limit);
//! beyond that the child stops reading, and flow control holds the server
//! back.
//!
//! # Lost subscriptions
//!
//! The server's idle heartbeats tell a quiet consumer from a lost one: when
//! two heartbeats are missed, the child checks the consumer on the server.
//! A consumer that was deleted (or now delivers elsewhere) makes the child
//! fail; its supervisor restarts it, and the restarted child re-creates the
//! consumer from its spec (logging a warning), so nothing is lost, though
//! messages may be delivered again from the spec's start position. A
//! consumer that is still there keeps its subscription: async-nats restores
//! subscriptions after a reconnect, and a second subscription on the same
//! subject would receive every message twice until the first one is gone.
//! Only a subscription that closed is made anew (the old one gets nothing
//! more by then).
//!
//! # Queue groups
//!
//! With a `deliver_group`, several children (in several processes) share
//! the consumer: the server sends each message to one of them. Such a
//! consumer has no flow control and no heartbeats, which the server would
//! send to one random member only; an idle child checks the consumer every
//! `idle_heartbeat` instead.
//!
//! A push child answers [`ConsumerMsg::Fetch`] with
//! [`Error::WrongMode`].
//!
//! Limits: a message that is on the wire when the child's process dies (or
//! when a subscription is dropped abruptly) was never seen by the child, so
//! nobody can nak it; the server delivers it again after `ack_wait`.

mod unread;

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::inflight::{ForwardError, GuardedSubscription, InFlight};
use super::{
    Alarm, ConsumerArgs, ConsumerMsg, ConsumerState, DrainReport, WorkerCtl, WorkerCtx,
    WorkerInbox, drain_in_flight, handle_child_msg, start_child,
};
use crate::ensure::consumer_info;
use crate::error::{Error, ServerErrorKind, UnavailableReason};
use crate::spec::ConsumerMode;
use crate::target::Recipient;
use unread::Unread;

/// The push consumer child. Its messages are [`ConsumerMsg`]; see the
/// [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct PushConsumer;

impl Actor for PushConsumer {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ConsumerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: ConsumerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        start_child(myself, args, ConsumerMode::Push, run).await
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

/// Slack on top of two heartbeat intervals before a heartbeat counts as
/// missed.
const HEARTBEAT_SLACK: Duration = Duration::from_millis(500);

/// The most messages held unread when the consumer sets no
/// `max_ack_pending`.
const UNREAD_CAP: usize = 10_000;

/// The push worker: pumps until drained or aborted.
async fn run(ctx: WorkerCtx, mut inbox: WorkerInbox) -> Result<(), Error> {
    let config = &ctx.info.config;
    let deliver_subject = config.deliver_subject.clone().ok_or_else(|| {
        Error::server(
            op(&ctx),
            ServerErrorKind::Other,
            "the consumer has no deliver subject",
        )
    })?;
    let client = ctx.connection.client();
    let in_flight = ctx.in_flight();
    let group = config.deliver_group.clone();
    // start_child refused a pull spec, so this is the spec's own push part.
    let push = ctx.spec.mode.as_push().cloned().unwrap_or_default();
    let window = push.effective_max_in_flight(ctx.spec.effective_max_ack_pending());
    let window = usize::try_from(window).unwrap_or(usize::MAX).max(1);
    let unread = Unread::new(
        client.clone(),
        in_flight.unread_sink(),
        ctx.effective.ack_wait,
    );
    let subscription =
        in_flight.guard(subscribe(&ctx, &client, &deliver_subject, group.as_deref()).await?);
    let mut pump = Pump {
        check_every: if config.idle_heartbeat.is_zero() {
            push.effective_idle_heartbeat()
        } else {
            config.idle_heartbeat
        },
        window,
        unread_cap: ctx
            .effective
            .max_ack_pending
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(UNREAD_CAP)
            .max(window),
        ctx: &ctx,
        client,
        deliver_subject,
        group,
        subscription,
        unread,
        in_flight,
        active: true,
    };
    pump.run(&mut inbox).await
}

fn op(ctx: &WorkerCtx) -> String {
    format!("push consumer {}/{}", ctx.stream, ctx.durable)
}

struct Pump<'a> {
    ctx: &'a WorkerCtx,
    client: async_nats::Client,
    deliver_subject: String,
    group: Option<String>,
    /// The server's idle heartbeat, or (queue group: none) how often an
    /// idle child checks the consumer.
    check_every: Duration,
    window: usize,
    unread_cap: usize,
    // Declared before `in_flight`, so dropped first: their unread messages
    // are handed to `in_flight`, which nak's them with its own.
    subscription: GuardedSubscription,
    unread: Unread,
    in_flight: InFlight,
    /// Something arrived (or the subscription was not read, the buffer
    /// being full) since the silence alarm was last armed.
    active: bool,
}

impl Pump<'_> {
    async fn run(&mut self, inbox: &mut WorkerInbox) -> Result<(), Error> {
        let mut silence_alarm = Alarm::new();
        silence_alarm.arm(Instant::now() + self.silence_grace());
        let mut decision_alarm = Alarm::new();
        let mut keep_alive_alarm = Alarm::new();
        loop {
            // Do all the work that is ready before waiting: apply the
            // decisions that came in, read what arrived, then forward
            // within the window.
            while let Some(settlement) = self.in_flight.try_verdict() {
                self.in_flight.apply(settlement).await;
            }
            while self.unread.len() < self.unread_cap {
                match self.subscription.try_next() {
                    Some(Some(message)) => self.on_message(message, inbox.target.get()).await?,
                    Some(None) => Box::pin(self.resubscribe()).await?,
                    None => break,
                }
            }
            while self.in_flight.live() < self.window {
                let Some(message) = self.unread.pop().await else {
                    break;
                };
                self.forward(message, inbox.target.get())?;
            }
            // Asked every time round, not only when the alarm is unarmed:
            // asking drops the settled deliveries from the front of the
            // registry's deadline queues, which otherwise grow by one entry
            // per delivery until the alarm next goes off (a keep-alive
            // period, 15 s by default, later).
            if let Some(deadline) = self.in_flight.next_deadline() {
                decision_alarm.arm_if_earlier(deadline);
            }
            if self.unread.len() > 0 && !keep_alive_alarm.is_armed() {
                keep_alive_alarm.arm(Instant::now() + self.unread.period());
            }
            let reading = self.unread.len() < self.unread_cap;
            if !reading {
                // Not reading: silence from the server says nothing now.
                self.active = true;
            }
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target.set(target),
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        // Boxed: rare and large (see "Small futures" in
                        // `consumer.rs`).
                        let report = Box::pin(self.drain(timeout)).await;
                        let _ = reply.send(report);
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                settlement = self.in_flight.next_verdict() => {
                    self.in_flight.apply(settlement).await;
                }
                message = self.subscription.next(), if reading => match message {
                    Some(message) => self.on_message(message, inbox.target.get()).await?,
                    None => Box::pin(self.resubscribe()).await?,
                },
                () = silence_alarm.fired(), if silence_alarm.is_armed() => {
                    if !std::mem::take(&mut self.active) {
                        Box::pin(self.check_consumer("no message or heartbeat came")).await?;
                    }
                    silence_alarm.arm(Instant::now() + self.silence_grace());
                }
                () = decision_alarm.fired(), if decision_alarm.is_armed() => {
                    Box::pin(self.in_flight.expire_due(Instant::now(), |_| {})).await;
                }
                () = keep_alive_alarm.fired(), if keep_alive_alarm.is_armed() => {
                    Box::pin(self.unread.keep_alive()).await;
                }
            }
        }
    }

    /// Drains: nak's what was not forwarded, then settles what is out.
    async fn drain(&mut self, timeout: Duration) -> DrainReport {
        let naked = self.unread.nak_all() + self.subscription.drain_and_nak().await;
        let report = DrainReport {
            settled: 0,
            naked: naked as u64,
        };
        drain_in_flight(&mut self.in_flight, timeout, report).await
    }

    /// How long without a message or heartbeat counts as missed heartbeats.
    fn silence_grace(&self) -> Duration {
        self.check_every * 2 + HEARTBEAT_SLACK
    }

    /// Takes in one message from the subscription: a JetStream message goes
    /// to the target when the window has room and nothing waits before it,
    /// and waits in the unread buffer otherwise; a status message is
    /// answered here.
    async fn on_message(
        &mut self,
        message: async_nats::Message,
        target: Option<&Recipient>,
    ) -> Result<(), Error> {
        self.active = true;
        match message.status {
            // With room in the window and nothing waiting before it, the
            // message goes straight to the target: the buffer is only for
            // what the window holds back.
            None | Some(StatusCode::OK)
                if self.unread.len() == 0 && self.in_flight.live() < self.window =>
            {
                self.forward(message, target)?;
            }
            None | Some(StatusCode::OK) => self.unread.push(message),
            Some(StatusCode::IDLE_HEARTBEAT) => answer_flow_control(&self.client, &message).await,
            Some(status) => {
                let description = message.description.clone().unwrap_or_default();
                if description
                    .to_ascii_lowercase()
                    .contains("consumer deleted")
                {
                    return Err(Error::server(
                        op(self.ctx),
                        ServerErrorKind::ConsumerNotFound,
                        format!("{status} {description}"),
                    ));
                }
                tracing::debug!(durable = %self.ctx.durable, %status, %description, "status message on the push subscription");
            }
        }
        Ok(())
    }

    fn target_not_running(&self) -> Error {
        Error::Unavailable {
            durable: self.ctx.durable.to_string(),
            reason: UnavailableReason::TargetNotRunning,
        }
    }

    fn forward(
        &mut self,
        message: async_nats::Message,
        target: Option<&Recipient>,
    ) -> Result<(), Error> {
        let Some(target) = target else {
            return Err(self.target_not_running());
        };
        match self.in_flight.forward(message, target) {
            Ok(_) => {
                crate::fault_point!("rj-push-after-forward");
            }
            Err(ForwardError::TargetGone) => return Err(self.target_not_running()),
            Err(ForwardError::NotJetStream) => {
                tracing::warn!(durable = %self.ctx.durable, "ignored a message without JetStream metadata");
            }
        }
        Ok(())
    }

    /// Checks the consumer on the server after a silence. A consumer that
    /// is gone, or that now delivers to another subject, ends the worker
    /// (the restarted child binds anew). One that is there keeps the
    /// subscription as it is: see the module docs. A check that fails (the
    /// server does not answer) is repeated after the next silence.
    async fn check_consumer(&mut self, why: &str) -> Result<(), Error> {
        match consumer_info(&self.ctx.connection, &self.ctx.stream, &self.ctx.durable).await {
            Ok(None) => Err(Error::server(
                op(self.ctx),
                ServerErrorKind::ConsumerNotFound,
                "the consumer was deleted on the server",
            )),
            Ok(Some(info))
                if info.config.deliver_subject.as_deref() != Some(&self.deliver_subject) =>
            {
                Err(Error::ConsumerConflict {
                    stream: self.ctx.stream.to_string(),
                    durable: self.ctx.durable.to_string(),
                    fields: vec!["deliver_subject".into()],
                    detail: format!(
                        "the consumer now delivers to {:?}, but this child reads {}; a restarted child binds anew",
                        info.config.deliver_subject, self.deliver_subject
                    ),
                })
            }
            Ok(Some(_)) => {
                tracing::debug!(durable = %self.ctx.durable, why, "the consumer is there; keeping the subscription");
                Ok(())
            }
            Err(err) => {
                tracing::warn!(durable = %self.ctx.durable, why, error = %err, "could not check the consumer; checking again later");
                Ok(())
            }
        }
    }

    /// Subscribes anew after the subscription closed. The old one gets
    /// nothing more, so no message can reach both.
    async fn resubscribe(&mut self) -> Result<(), Error> {
        tracing::warn!(durable = %self.ctx.durable, "the push subscription closed; subscribing anew");
        self.check_consumer("the push subscription closed").await?;
        let fresh = subscribe(
            self.ctx,
            &self.client,
            &self.deliver_subject,
            self.group.as_deref(),
        )
        .await?;
        crate::fault_point!("rj-push-resubscribed");
        self.subscription = self.in_flight.guard(fresh);
        self.ctx
            .counters
            .resubscribes
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn subscribe(
    ctx: &WorkerCtx,
    client: &async_nats::Client,
    subject: &str,
    group: Option<&str>,
) -> Result<async_nats::Subscriber, Error> {
    let subject = subject.to_string();
    let result = match group {
        Some(group) => client.queue_subscribe(subject, group.to_string()).await,
        None => client.subscribe(subject).await,
    };
    result.map_err(|err| Error::server_caused(op(ctx), ServerErrorKind::Connection, err))
}

/// Answers a flow-control request, or a heartbeat that reports a stalled
/// flow control, so that the server goes on pushing.
async fn answer_flow_control(client: &async_nats::Client, message: &async_nats::Message) {
    let stalled = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Consumer-Stalled"))
        .map(|v| Subject::from(v.as_str()));
    for reply in message.reply.clone().into_iter().chain(stalled) {
        if let Err(err) = client.publish(reply, Bytes::new()).await {
            tracing::debug!(error = %err, "could not answer flow control");
        }
    }
}
