//! The deliveries a child has forwarded and not yet settled.
//!
//! [`InFlight`] is the one place that knows which messages are out at the
//! target. It hands each [`Delivery`] a token, applies the target's verdicts
//! on the server (publishing `+ACK`, `-NAK`, `+TERM` or `+WPI` to the
//! message's reply subject; publishes are queued, never flushed one by one),
//! nak's what is not decided within the decision timeout, and, when it is
//! dropped (the child stopped, crashed or was aborted), nak's everything it
//! still holds, so that the server delivers it again at once instead of
//! after `ack_wait`.
//!
//! Slots are reused; a token carries the slot's generation, so a late
//! verdict for a delivery that already timed out cannot settle the slot's
//! next occupant.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use ractor::DerivedActorRef;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Counters;
use super::dead_letter::DeadLetters;
use crate::delivery::{AckMeta, Decision, Delivery, Settlement, Token, Verdict};

/// What became of one delivery, for the tally of a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    Acked,
    Naked,
    Termed,
    Abandoned,
    TimedOut,
}

/// Why a message could not be forwarded.
#[derive(Debug)]
pub(crate) enum ForwardError {
    /// The message has no `$JS.ACK` reply subject; it was skipped.
    NotJetStream,
    /// The target actor is gone; the message was nak'ed.
    TargetGone,
}

struct Entry {
    reply: Subject,
    stream_sequence: u64,
    delivered: u64,
    deadline: Instant,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

pub(crate) struct InFlight {
    client: async_nats::Client,
    stream: Arc<str>,
    consumer: Arc<str>,
    settle_tx: mpsc::UnboundedSender<Settlement>,
    settle_rx: mpsc::UnboundedReceiver<Settlement>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    deadlines: VecDeque<(Instant, Token)>,
    decision_timeout: Duration,
    counters: Arc<Counters>,
    dead_letters: DeadLetters,
}

/// The token of an unread message handed over by a subscription guard.
const ORPHAN: Token = Token::MAX;

fn token(index: u32, generation: u32) -> Token {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split(token: Token) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

const ACK: &[u8] = b"+ACK";
const NAK: &[u8] = b"-NAK";
const TERM: &[u8] = b"+TERM";
const PROGRESS: &[u8] = b"+WPI";

/// The payload that applies a decision on the server.
fn decision_payload(decision: &Decision) -> Bytes {
    match decision {
        Decision::Ack => Bytes::from_static(ACK),
        Decision::Nak(None) => Bytes::from_static(NAK),
        Decision::Nak(Some(delay)) => format!("-NAK {{\"delay\":{}}}", delay.as_nanos()).into(),
        Decision::Term(None) => Bytes::from_static(TERM),
        Decision::Term(Some(reason)) => {
            format!("+TERM {}", reason.replace(['\r', '\n'], " ")).into()
        }
    }
}

impl InFlight {
    pub fn new(
        client: async_nats::Client,
        stream: Arc<str>,
        consumer: Arc<str>,
        decision_timeout: Duration,
        counters: Arc<Counters>,
        dead_letters: DeadLetters,
    ) -> Self {
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        Self {
            client,
            stream,
            consumer,
            settle_tx,
            settle_rx,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            deadlines: VecDeque::new(),
            decision_timeout,
            counters,
            dead_letters,
        }
    }

    /// Wraps a subscription so that its unread messages are nak'ed by this
    /// registry when it is dropped.
    pub fn guard(&self, subscription: async_nats::Subscriber) -> GuardedSubscription {
        GuardedSubscription {
            subscription: Some(subscription),
            orphans: self.settle_tx.clone(),
            client: self.client.clone(),
        }
    }

    /// Where a message read from a subscription but not forwarded goes to
    /// be nak'ed with this registry's own deliveries.
    pub fn unread_sink(&self) -> UnreadSink {
        UnreadSink(self.settle_tx.clone())
    }

    /// How many deliveries are out and unsettled.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Forwards one message to the target, tracking it until it is settled.
    pub fn forward(
        &mut self,
        message: async_nats::Message,
        target: &DerivedActorRef<Delivery>,
    ) -> Result<u64, ForwardError> {
        let Some(reply) = message.reply.clone() else {
            return Err(ForwardError::NotJetStream);
        };
        let Some(meta) = AckMeta::parse(reply.as_str()) else {
            return Err(ForwardError::NotJetStream);
        };
        let stream_sequence = meta.stream_sequence;
        let delivered = meta.delivered;
        let info = meta.into_info();
        let now = Instant::now();
        let deadline = now + self.decision_timeout;
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.entry = Some(Entry {
            reply,
            stream_sequence,
            delivered,
            deadline,
        });
        let token = token(index, slot.generation);
        self.live += 1;
        self.deadlines.push_back((deadline, token));
        self.counters
            .delivered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = tracing::debug_span!(
            "delivery",
            stream = %self.stream,
            durable = %self.consumer,
            stream_sequence,
            delivered = info.delivered,
        );
        let delivery = Delivery::new(
            message,
            info,
            token,
            self.settle_tx.clone(),
            span,
            now.into_std(),
        );
        match target.send_message(delivery) {
            Ok(()) => Ok(stream_sequence),
            // The returned delivery is dropped here, which queues its
            // abandonment; the nak goes out when the verdict is applied.
            Err(_) => Err(ForwardError::TargetGone),
        }
    }

    /// Waits for the next verdict. Never ends: the registry holds a sender.
    pub async fn next_verdict(&mut self) -> Settlement {
        match self.settle_rx.recv().await {
            Some(settlement) => settlement,
            // Unreachable while `self.settle_tx` lives; wait forever rather
            // than spin.
            None => std::future::pending().await,
        }
    }

    /// A verdict that is already waiting, if any.
    pub fn try_verdict(&mut self) -> Option<Settlement> {
        self.settle_rx.try_recv().ok()
    }

    /// Applies one verdict on the server. Returns what became of the
    /// delivery, or `None` for a stale token or an in-progress extension.
    pub async fn apply(&mut self, settlement: Settlement) -> Option<Settled> {
        crate::fault_point!("rj-before-apply");
        let Settlement { token, verdict } = settlement;
        let (decision, settled) = match verdict {
            Verdict::Unread(reply) => {
                self.publish(reply, Bytes::from_static(NAK)).await;
                return None;
            }
            Verdict::Progress => {
                let deadline = Instant::now() + self.decision_timeout;
                let entry = self.current_mut(token)?;
                entry.deadline = deadline;
                let reply = entry.reply.clone();
                self.deadlines.push_back((deadline, token));
                self.publish(reply, Bytes::from_static(PROGRESS)).await;
                return None;
            }
            Verdict::Abandoned => (Decision::Nak(None), Settled::Abandoned),
            Verdict::Decided(decision) => {
                let settled = match decision {
                    Decision::Ack => Settled::Acked,
                    Decision::Nak(_) => Settled::Naked,
                    Decision::Term(_) => Settled::Termed,
                };
                (decision, settled)
            }
        };
        self.current_mut(token)?;
        let entry = self.release(split(token).0)?;
        let settled = self.finish(entry, decision, settled).await;
        Some(settled)
    }

    /// Applies a decision on a released entry; a term may become a dead
    /// letter, and a failed last delivery a term (see [`DeadLetters`]).
    async fn finish(&mut self, entry: Entry, decision: Decision, settled: Settled) -> Settled {
        let (payload, settled) = match decision {
            Decision::Term(reason) if self.dead_letters.enabled() => {
                let why = reason
                    .clone()
                    .unwrap_or_else(|| "terminated by the target".into());
                self.dead_letter(&entry, &why, Decision::Term(reason), settled)
                    .await
            }
            Decision::Nak(_) if self.dead_letters.last_delivery(entry.delivered).is_some() => {
                let max = self
                    .dead_letters
                    .last_delivery(entry.delivered)
                    .unwrap_or_default();
                let how = match settled {
                    Settled::Abandoned => "dropped without a decision",
                    Settled::TimedOut => "not decided within the decision timeout",
                    _ => "nak'ed",
                };
                let reason = format!("max_deliver ({max}) reached and the last delivery was {how}");
                if self.dead_letters.enabled() {
                    self.dead_letter(
                        &entry,
                        &reason,
                        Decision::Term(Some(reason.clone())),
                        settled,
                    )
                    .await
                } else {
                    tracing::warn!(
                        stream = %self.stream,
                        durable = %self.consumer,
                        stream_sequence = entry.stream_sequence,
                        %reason,
                        "terminated (no dead-letter subject is configured)"
                    );
                    (
                        decision_payload(&Decision::Term(Some(reason))),
                        Settled::Termed,
                    )
                }
            }
            other => (decision_payload(&other), settled),
        };
        tracing::trace!(stream_sequence = entry.stream_sequence, ?settled, "settled");
        self.publish(entry.reply, payload).await;
        self.counters.record(settled);
        settled
    }

    /// Publishes the message to the dead-letter subject, then settles it
    /// with `then`; if the dead letter is not confirmed, nak's it instead.
    async fn dead_letter(
        &self,
        entry: &Entry,
        why: &str,
        then: Decision,
        settled: Settled,
    ) -> (Bytes, Settled) {
        match self
            .dead_letters
            .send(entry.stream_sequence, entry.delivered, why)
            .await
        {
            Ok(()) => {
                self.counters
                    .dead_lettered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = entry.stream_sequence,
                    reason = %why,
                    "dead-lettered"
                );
                (decision_payload(&then), Settled::Termed)
            }
            Err(err) => {
                tracing::error!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = entry.stream_sequence,
                    error = %err,
                    "could not dead-letter; nak'ed instead"
                );
                let settled = if settled == Settled::Termed {
                    Settled::Naked
                } else {
                    settled
                };
                (Bytes::from_static(NAK), settled)
            }
        }
    }

    /// The entry a token names, unless it was settled already.
    fn current(&self, token: Token) -> Option<&Entry> {
        let (index, generation) = split(token);
        self.slots
            .get(index)
            .filter(|slot| slot.generation == generation)
            .and_then(|slot| slot.entry.as_ref())
    }

    /// The entry a token names, unless it was settled already.
    fn current_mut(&mut self, token: Token) -> Option<&mut Entry> {
        let (index, generation) = split(token);
        self.slots
            .get_mut(index)
            .filter(|slot| slot.generation == generation)
            .and_then(|slot| slot.entry.as_mut())
    }

    fn release(&mut self, index: usize) -> Option<Entry> {
        let slot = self.slots.get_mut(index)?;
        let entry = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.live -= 1;
        Some(entry)
    }

    /// When the oldest unsettled delivery runs out of time, if any is out.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(deadline, token)) = self.deadlines.front() {
            if self.is_current(token, deadline) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    fn is_current(&self, token: Token, deadline: Instant) -> bool {
        self.current(token).is_some_and(|e| e.deadline == deadline)
    }

    /// Nak's every delivery whose decision timeout has passed (or terms it,
    /// when it was its last allowed delivery), reporting each to `record`.
    pub async fn expire_due(&mut self, now: Instant, mut record: impl FnMut(Settled)) {
        while let Some(deadline) = self.next_deadline() {
            if deadline > now {
                break;
            }
            let Some((_, token)) = self.deadlines.pop_front() else {
                break;
            };
            let (index, _) = split(token);
            if let Some(entry) = self.release(index) {
                tracing::debug!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = entry.stream_sequence,
                    "no decision within the decision timeout; nak'ed"
                );
                record(
                    self.finish(entry, Decision::Nak(None), Settled::TimedOut)
                        .await,
                );
            }
        }
    }

    /// Nak's every delivery still out (used by drain). Returns how many.
    pub async fn nak_all(&mut self) -> usize {
        let mut naked = 0;
        for index in 0..self.slots.len() {
            if let Some(entry) = self.release(index) {
                self.publish(entry.reply, Bytes::from_static(NAK)).await;
                self.counters.record(Settled::Abandoned);
                naked += 1;
            }
        }
        self.deadlines.clear();
        naked
    }

    async fn publish(&self, subject: Subject, payload: Bytes) {
        if let Err(err) = self.client.publish(subject, payload).await {
            // The connection is closed: the server will redeliver after
            // ack_wait. Nothing else can be done from here.
            tracing::warn!(stream = %self.stream, durable = %self.consumer, error = %err, "could not send a decision");
        }
    }

    /// Flushes the connection, so that the decisions applied so far have
    /// reached the server. Bounded by `timeout`.
    pub async fn flush(&self, timeout: Duration) {
        if tokio::time::timeout(timeout, self.client.flush())
            .await
            .is_err()
        {
            tracing::debug!(stream = %self.stream, durable = %self.consumer, "flush timed out");
        }
    }
}

/// Queues a publish without waiting: succeeds when the client's outbound
/// queue has room, which is the case unless the connection is saturated.
fn publish_now(client: &async_nats::Client, subject: Subject, payload: Bytes) -> bool {
    tokio::task::unconstrained(client.publish(subject, payload))
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

impl Drop for InFlight {
    /// The drop guard: whatever is still out is settled now. Verdicts that
    /// already arrived are applied; everything else is nak'ed, so that it
    /// comes back at once rather than after `ack_wait`.
    fn drop(&mut self) {
        let mut pending: Vec<(u64, Subject, Bytes)> = Vec::new();
        while let Ok(settlement) = self.settle_rx.try_recv() {
            if let Verdict::Unread(reply) = settlement.verdict {
                let sequence = AckMeta::parse(reply.as_str()).map_or(0, |m| m.stream_sequence);
                pending.push((sequence, reply, Bytes::from_static(NAK)));
                continue;
            }
            if self.current(settlement.token).is_none() {
                continue;
            }
            let index = split(settlement.token).0;
            let decision = match settlement.verdict {
                Verdict::Decided(decision) => decision,
                Verdict::Abandoned | Verdict::Unread(_) => Decision::Nak(None),
                Verdict::Progress => continue,
            };
            if let Some(entry) = self.release(index) {
                pending.push((
                    entry.stream_sequence,
                    entry.reply,
                    decision_payload(&decision),
                ));
            }
        }
        for index in 0..self.slots.len() {
            if let Some(entry) = self.release(index) {
                pending.push((entry.stream_sequence, entry.reply, Bytes::from_static(NAK)));
            }
        }
        if pending.is_empty() {
            return;
        }
        // In stream order, so that the server delivers them again in the
        // order they were first delivered.
        pending.sort_unstable_by_key(|(sequence, _, _)| *sequence);
        tracing::debug!(
            stream = %self.stream,
            durable = %self.consumer,
            count = pending.len(),
            "settling in-flight deliveries of a stopped consumer child"
        );
        publish_all_now(
            &self.client,
            pending
                .into_iter()
                .map(|(_, subject, payload)| (subject, payload))
                .collect(),
        );
    }
}

/// Queues every publish at once, from a context that cannot wait (a drop
/// guard). When the client's outbound queue is full, the remainder goes to
/// a short task that exists only to queue them and ends as soon as they
/// are queued (async-nats' own `Subscriber` drop does the same).
fn publish_all_now(client: &async_nats::Client, publishes: Vec<(Subject, Bytes)>) {
    let mut rest = Vec::new();
    for (subject, payload) in publishes {
        if !publish_now(client, subject.clone(), payload.clone()) {
            rest.push((subject, payload));
        }
    }
    if rest.is_empty() {
        return;
    }
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        let client = client.clone();
        handle.spawn(async move {
            for (subject, payload) in rest {
                let _ = client.publish(subject, payload).await;
            }
        });
    } else {
        tracing::warn!(
            count = rest.len(),
            "no runtime to settle in-flight deliveries; they return after ack_wait"
        );
    }
}

/// A subscription whose unread messages are nak'ed when it is dropped.
///
/// On drop it takes the JetStream messages still buffered in it, hands them
/// to its [`InFlight`] (which nak's them together with its own deliveries,
/// in stream order), and only then unsubscribes, so that nothing nak'ed is
/// pushed straight back into the dying subscription.
pub(crate) struct GuardedSubscription {
    subscription: Option<async_nats::Subscriber>,
    orphans: mpsc::UnboundedSender<Settlement>,
    client: async_nats::Client,
}

impl GuardedSubscription {
    /// The next message; `None` when the subscription is closed.
    pub async fn next(&mut self) -> Option<async_nats::Message> {
        match self.subscription.as_mut() {
            Some(subscription) => subscription.next().await,
            None => None,
        }
    }

    /// A message that has already arrived: `Some(Some(_))`, `Some(None)` when
    /// the subscription is closed, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<async_nats::Message>> {
        match self.subscription.as_mut() {
            Some(subscription) => subscription.next().now_or_never(),
            None => Some(None),
        }
    }

    /// Stops the subscription and nak's whatever it still delivers, without
    /// forwarding it (used by drain). Bounded: gives up after two seconds.
    /// Returns how many messages were nak'ed.
    pub async fn drain_and_nak(&mut self) -> usize {
        let Some(mut subscription) = self.subscription.take() else {
            return 0;
        };
        if subscription.drain().await.is_err() {
            return 0;
        }
        let mut naked = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.next()).await {
            if let Some(reply) = js_reply(&message) {
                let _ = self.client.publish(reply, Bytes::from_static(NAK)).await;
                naked += 1;
            }
        }
        naked
    }
}

/// Hands messages that were read but never forwarded over to an
/// [`InFlight`], which nak's them (at once, or when it is dropped).
pub(crate) struct UnreadSink(mpsc::UnboundedSender<Settlement>);

impl UnreadSink {
    /// Hands one message over to be nak'ed.
    pub fn nak(&self, message: &async_nats::Message) {
        if let Some(reply) = js_reply(message) {
            // The registry is gone only once the worker ends; then the
            // message returns after ack_wait.
            let _ = self.0.send(Settlement {
                token: ORPHAN,
                verdict: Verdict::Unread(reply),
            });
        }
    }
}

/// The `$JS.ACK` reply subject of a JetStream message (not of a status
/// message).
fn js_reply(message: &async_nats::Message) -> Option<Subject> {
    message
        .reply
        .clone()
        .filter(|reply| message.status.is_none() && reply.as_str().starts_with("$JS.ACK."))
}

impl Drop for GuardedSubscription {
    fn drop(&mut self) {
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        while let Some(Some(message)) = subscription.next().now_or_never() {
            if let Some(reply) = js_reply(&message) {
                // The registry outlives this guard (declared first, dropped
                // last); if it is gone, the message returns after ack_wait.
                let _ = self.orphans.send(Settlement {
                    token: ORPHAN,
                    verdict: Verdict::Unread(reply),
                });
            }
        }
        // Dropping the subscriber unsubscribes.
        drop(subscription);
    }
}
