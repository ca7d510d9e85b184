//! The push child: pumps the consumer's push subscription.
//!
//! The server pushes to the consumer's deliver subject; the child reads the
//! subscription and forwards each message in order, but never has more than
//! `max_in_flight` unsettled deliveries at the target. While the window is
//! full it stops reading, and the server's own limit (`max_ack_pending`,
//! above the window) and flow control hold the rest back, so a fast server
//! cannot overrun a slow target's mailbox.
//!
//! The server's idle heartbeats tell a quiet consumer from a lost one: when
//! two heartbeats are missed while the child is reading, it checks the
//! consumer on the server and rebuilds the subscription. A consumer that was
//! deleted under a running child makes the child fail; its supervisor
//! restarts it, and the restarted child re-creates the consumer from its
//! spec (logging a warning), so nothing is lost, though messages may be
//! delivered again from the spec's start position.
//!
//! A push child answers [`ConsumerMsg::Fetch`] with
//! [`Error::WrongMode`].
//!
//! Limits: a message that is on the wire when the child's process dies (or
//! when a subscription is dropped abruptly) was never seen by the child, so
//! nobody can nak it; the server delivers it again after `ack_wait`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use tokio::time::Instant;

use super::inflight::{ForwardError, GuardedSubscription, InFlight};
use super::{
    Alarm, ConsumerArgs, ConsumerMsg, ConsumerState, DrainReport, WorkerCtl, WorkerCtx,
    WorkerInbox, drain_in_flight, handle_child_msg, start_child,
};
use crate::delivery::Delivery;
use crate::ensure::consumer_info;
use crate::error::{Error, ServerErrorKind};
use crate::spec::ConsumerMode;

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

/// The push worker: pumps until drained or aborted.
async fn run(ctx: WorkerCtx, mut inbox: WorkerInbox) -> Result<(), Error> {
    let deliver_subject = ctx.info.config.deliver_subject.clone().ok_or_else(|| {
        Error::server(
            op(&ctx),
            ServerErrorKind::Other,
            "the consumer has no deliver subject",
        )
    })?;
    let client = ctx.js.client();
    let in_flight = ctx.in_flight();
    let group = ctx.info.config.deliver_group.clone();
    let subscription =
        in_flight.guard(subscribe(&ctx, &client, &deliver_subject, group.as_deref()).await?);
    let mut pump = Pump {
        heartbeat: ctx.info.config.idle_heartbeat,
        window: ctx.spec.effective_max_in_flight().max(1),
        ctx: &ctx,
        client,
        deliver_subject,
        group,
        subscription,
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
    heartbeat: Duration,
    window: usize,
    // Declared before `in_flight`, so dropped first: its unread messages
    // are handed to `in_flight`, which nak's them with its own.
    subscription: GuardedSubscription,
    in_flight: InFlight,
    /// Something arrived (or the subscription was not read, the window
    /// being full) since the heartbeat alarm was last armed.
    active: bool,
}

impl Pump<'_> {
    async fn run(&mut self, inbox: &mut WorkerInbox) -> Result<(), Error> {
        let mut heartbeat_alarm = Alarm::new();
        if !self.heartbeat.is_zero() {
            heartbeat_alarm.arm(Instant::now() + self.heartbeat_grace());
        }
        let mut decision_alarm = Alarm::new();
        loop {
            // Do all the work that is ready before waiting: apply the
            // decisions that came in, then forward what arrived, within the
            // window.
            while let Some(settlement) = self.in_flight.try_verdict() {
                self.in_flight.apply(settlement).await;
            }
            while self.in_flight.live() < self.window {
                match self.subscription.try_next() {
                    Some(Some(message)) => self.on_message(message, &inbox.target).await?,
                    Some(None) => self.resubscribe("the push subscription closed").await?,
                    None => break,
                }
            }
            if !decision_alarm.is_armed()
                && let Some(deadline) = self.in_flight.next_deadline()
            {
                decision_alarm.arm(deadline);
            }
            let window_open = self.in_flight.live() < self.window;
            if !window_open {
                // Not reading: silence from the server says nothing now.
                self.active = true;
            }
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target = target,
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        let naked = self.subscription.drain_and_nak().await;
                        let report = DrainReport { settled: 0, naked };
                        let report = drain_in_flight(&mut self.in_flight, timeout, report).await;
                        let _ = reply.send(report);
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                settlement = self.in_flight.next_verdict() => {
                    self.in_flight.apply(settlement).await;
                }
                message = self.subscription.next(), if window_open => match message {
                    Some(message) => self.on_message(message, &inbox.target).await?,
                    None => self.resubscribe("the push subscription closed").await?,
                },
                () = heartbeat_alarm.fired(), if heartbeat_alarm.is_armed() => {
                    if !std::mem::take(&mut self.active) {
                        self.ctx.counters.resubscribes.fetch_add(1, Ordering::Relaxed);
                        self.resubscribe("missed idle heartbeats").await?;
                    }
                    heartbeat_alarm.arm(Instant::now() + self.heartbeat_grace());
                }
                () = decision_alarm.fired(), if decision_alarm.is_armed() => {
                    self.in_flight.expire_due(Instant::now(), |_| {}).await;
                }
            }
        }
    }

    /// How long without a message or heartbeat counts as missed heartbeats.
    fn heartbeat_grace(&self) -> Duration {
        self.heartbeat * 2 + HEARTBEAT_SLACK
    }

    async fn on_message(
        &mut self,
        message: async_nats::Message,
        target: &DerivedActorRef<Delivery>,
    ) -> Result<(), Error> {
        self.active = true;
        match message.status {
            None | Some(StatusCode::OK) => match self.in_flight.forward(message, target) {
                Ok(_) => {
                    crate::fault_point!("rj-push-after-forward");
                }
                Err(ForwardError::TargetGone) => {
                    return Err(Error::Unavailable {
                        durable: self.ctx.durable.to_string(),
                        reason: "the target actor is not running".into(),
                    });
                }
                Err(ForwardError::NotJetStream) => {
                    tracing::warn!(durable = %self.ctx.durable, "ignored a message without JetStream metadata");
                }
            },
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

    /// Rebuilds the subscription: checks that the consumer still exists,
    /// subscribes anew, then drains the old subscription, nak'ing whatever
    /// the server had already sent to it, so it comes back through the new
    /// one instead of waiting for ack_wait.
    async fn resubscribe(&mut self, why: &str) -> Result<(), Error> {
        tracing::warn!(durable = %self.ctx.durable, why, "rebuilding the push subscription");
        if let Ok(None) = consumer_info(&self.ctx.js, &self.ctx.stream, &self.ctx.durable).await {
            return Err(Error::server(
                op(self.ctx),
                ServerErrorKind::ConsumerNotFound,
                "the consumer was deleted on the server",
            ));
        }
        let fresh = subscribe(
            self.ctx,
            &self.client,
            &self.deliver_subject,
            self.group.as_deref(),
        )
        .await?;
        crate::fault_point!("rj-push-resubscribed");
        let fresh = self.in_flight.guard(fresh);
        let mut old = std::mem::replace(&mut self.subscription, fresh);
        old.drain_and_nak().await;
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
    result.map_err(|err| Error::server(op(ctx), ServerErrorKind::Connection, err))
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
