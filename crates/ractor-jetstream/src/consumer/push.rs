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
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::time::Instant;

use super::inflight::{ForwardError, InFlight};
use super::{
    ConsumerArgs, ConsumerMsg, ConsumerState, DrainReport, WorkerCtl, WorkerCtx, WorkerInbox,
    drain_in_flight, handle_child_msg, sleep_until_opt, start_child,
};
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
    let op = || format!("push consumer {}/{}", ctx.stream, ctx.durable);
    let deliver_subject = ctx.info.config.deliver_subject.clone().ok_or_else(|| {
        Error::server(
            op(),
            ServerErrorKind::Other,
            "the consumer has no deliver subject",
        )
    })?;
    let group = ctx.info.config.deliver_group.clone();
    let heartbeat = ctx.info.config.idle_heartbeat;
    let window = ctx.spec.effective_max_in_flight().max(1);
    let client = ctx.js.client();
    let mut in_flight = InFlight::new(
        client.clone(),
        ctx.stream.clone(),
        ctx.durable.clone(),
        ctx.spec.effective_decision_timeout(),
        ctx.counters.clone(),
    );
    let mut subscription =
        in_flight.guard(subscribe(&client, &deliver_subject, group.as_deref(), &op).await?);
    let mut last_activity = Instant::now();
    loop {
        let window_open = in_flight.live() < window;
        let heartbeat_deadline =
            (!heartbeat.is_zero()).then(|| last_activity + heartbeat * 2 + HEARTBEAT_SLACK);
        let decision_deadline = in_flight.next_deadline();
        tokio::select! {
            biased;
            control = inbox.control.recv() => match control {
                Some(WorkerCtl::SetTarget(target)) => inbox.target = target,
                Some(WorkerCtl::Drain { timeout, reply }) => {
                    let naked = subscription.drain_and_nak().await;
                    let report = DrainReport { settled: 0, naked };
                    let report = drain_in_flight(&mut in_flight, timeout, report).await;
                    let _ = reply.send(report);
                    return Ok(());
                }
                None => return Ok(()),
            },
            settlement = in_flight.next_verdict() => {
                in_flight.apply(settlement).await;
                if !window_open {
                    // The subscription was not read while the window was
                    // full; heartbeats count from now.
                    last_activity = Instant::now();
                }
            }
            message = subscription.next(), if window_open => {
                last_activity = Instant::now();
                let Some(message) = message else {
                    tracing::warn!(durable = %ctx.durable, "push subscription closed; subscribing again");
                    subscription = in_flight.guard(subscribe(&client, &deliver_subject, group.as_deref(), &op).await?);
                    continue;
                };
                match message.status {
                    None | Some(StatusCode::OK) => match in_flight.forward(message, &inbox.target) {
                        Ok(_) => {
                            crate::fault_point!("rj-push-after-forward");
                        }
                        Err(ForwardError::TargetGone) => {
                            return Err(Error::Unavailable {
                                durable: ctx.durable.to_string(),
                                reason: "the target actor is not running".into(),
                            });
                        }
                        Err(ForwardError::NotJetStream) => {
                            tracing::warn!(durable = %ctx.durable, "ignored a message without JetStream metadata");
                        }
                    },
                    Some(StatusCode::IDLE_HEARTBEAT) => answer_flow_control(&client, &message).await,
                    Some(status) => {
                        let description = message.description.clone().unwrap_or_default();
                        if description.to_ascii_lowercase().contains("consumer deleted") {
                            return Err(Error::server(op(), ServerErrorKind::ConsumerNotFound, format!("{status} {description}")));
                        }
                        tracing::debug!(durable = %ctx.durable, %status, %description, "status message on the push subscription");
                    }
                }
            }
            _ = sleep_until_opt(heartbeat_deadline), if window_open && heartbeat_deadline.is_some() => {
                tracing::warn!(durable = %ctx.durable, "missed idle heartbeats; rebuilding the push subscription");
                ctx.counters.resubscribes.fetch_add(1, Ordering::Relaxed);
                if let Ok(None) = consumer_info(&ctx.js, &ctx.stream, &ctx.durable).await {
                    return Err(Error::server(op(), ServerErrorKind::ConsumerNotFound, "the consumer was deleted on the server"));
                }
                // Subscribe anew first, then drain the old subscription:
                // whatever the server had already sent to it is nak'ed and
                // comes back through the new one, so nothing in transit is
                // left to ack_wait.
                let fresh = in_flight.guard(subscribe(&client, &deliver_subject, group.as_deref(), &op).await?);
                let mut old = std::mem::replace(&mut subscription, fresh);
                old.drain_and_nak().await;
                last_activity = Instant::now();
            }
            _ = sleep_until_opt(decision_deadline), if decision_deadline.is_some() => {
                in_flight.expire_due(Instant::now()).await;
            }
        }
    }
}

async fn subscribe(
    client: &async_nats::Client,
    subject: &str,
    group: Option<&str>,
    op: &impl Fn() -> String,
) -> Result<async_nats::Subscriber, Error> {
    let subject = subject.to_string();
    let result = match group {
        Some(group) => client.queue_subscribe(subject, group.to_string()).await,
        None => client.subscribe(subject).await,
    };
    result.map_err(|err| Error::server(op(), ServerErrorKind::Connection, err))
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
