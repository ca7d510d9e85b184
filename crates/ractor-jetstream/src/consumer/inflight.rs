//! The deliveries a child has forwarded and not yet settled.
//!
//! [`InFlight`] is the one place that knows which messages are out at the
//! target. It hands each [`Delivery`] a token, applies the target's verdicts
//! on the server (publishing `+ACK`, `-NAK`, `+TERM` or `+WPI` to the
//! message's reply subject; publishes are queued, never flushed one by one),
//! nak's what is not decided within the maximum hold, and, when it is
//! dropped (the child stopped, crashed or was aborted), settles everything
//! it still holds at once, so that the server delivers it again right away
//! instead of after `ack_wait`. Every path settles through the one policy
//! in [`super::settle`].
//!
//! While the target holds a delivery undecided, the registry keeps it alive
//! on the server: a `+WPI` every [`Effective::keep_alive`] (half the
//! server's ack wait), so the server never hands a message the target is
//! still working on to another worker. That lasts up to the maximum hold
//! (the spec's `max_hold`); past it, the delivery is nak'ed. A
//! target's own [`Delivery::in_progress`] starts the hold over, and is sent
//! on only when no `+WPI` went out for that delivery within the last
//! period, however often the target calls it.
//!
//! A message that reaches the child when its target is not running is not
//! forwarded: it is nak'ed, or kept (alive) when it is on its last allowed
//! delivery, and handed to the target on the next fetch once it runs
//! again. So a dead target never costs a message its deliveries.
//!
//! Slots are reused; a token carries the slot's generation, so a late
//! verdict for a delivery that already timed out cannot settle the slot's
//! next occupant.
//!
//! By concern: forwarding in `inflight/forward.rs`, applying verdicts in
//! `inflight/verdict.rs`, keep-alives and holds in `inflight/keepalive.rs`,
//! what a stopping child settles in `inflight/stopping.rs`; this file holds
//! the registry's slots and its publishes.

mod forward;
mod keepalive;
mod outbox;
mod stopping;
mod verdict;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Counters;
use super::confirm::{self, Confirmer, Waiter};
use super::dead_letter::{DeadLetterQueue, DeadLetters};
use super::effective::Effective;
pub(crate) use super::guard::{GuardedSubscription, UnreadSink};
use super::settle;
use crate::delivery::{Decision, Delivery, Settlement, Token};
use crate::keyed::{Router, Routing};
use crate::target::Recipient;
pub(crate) use crate::target::is_running;
pub(crate) use forward::MAX_BATCH;
pub(crate) use outbox::ACK_LINGER;

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
    /// The target actor is not running; the message was nak'ed, or kept
    /// for the next target when it was on its last allowed delivery.
    TargetGone,
}

/// Where one delivery stands.
enum Stage {
    /// At the target, waiting for its decision.
    AtTarget,
    /// No target could take it and it was on its last allowed delivery:
    /// kept (and kept alive) until a target can.
    Kept(Box<async_nats::Message>),
    /// Being published to the dead-letter subject; settled with `then`
    /// once that is confirmed.
    DeadLettering { then: Decision, settled: Settled },
}

struct Entry {
    reply: Subject,
    stream_sequence: u64,
    delivered: u64,
    /// When it reached the child (for the decision latency).
    arrived: Instant,
    /// When the child gives up on it and nak's it.
    hold_until: Instant,
    /// When it is next kept alive on the server.
    renew_at: Instant,
    /// When the server last heard of it (delivered, or a `+WPI`).
    renewed: Instant,
    /// Whether a fetch counted it as delivered to the target.
    reached: bool,
    /// The server delivered the message again meanwhile (to this child):
    /// the newer delivery is the one that counts.
    superseded: bool,
    stage: Stage,
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
    /// The target of the latest forward.
    target: Option<Recipient>,
    /// For a batch target: what was forwarded and not yet handed over
    /// (see [`hand_over`](Self::hand_over)).
    batch: Vec<Delivery>,
    /// The largest batch handed over so far: the room the next one starts
    /// with.
    batch_room: usize,
    settle_tx: mpsc::UnboundedSender<Settlement>,
    settle_rx: mpsc::UnboundedReceiver<Settlement>,
    /// Settlements received and not yet applied: a batch's one decision,
    /// taken apart into one per delivery (see `take_apart`).
    taken_apart: VecDeque<Settlement>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
    /// Tokens of kept deliveries, oldest first.
    kept: VecDeque<Token>,
    /// Hold deadlines, in the order they were set (which is time order:
    /// each is now plus the same `max_hold`). Entries that moved or were
    /// settled are skipped when they reach the front.
    deadlines: VecDeque<(Instant, Token)>,
    /// Keep-alive times, in time order like `deadlines`.
    renewals: VecDeque<(Instant, Token)>,
    max_hold: Duration,
    keep_alive: Duration,
    /// The server's ack wait (its shortest step, with backoff).
    ack_wait: Duration,
    counters: Arc<Counters>,
    dead_letters: DeadLetters,
    /// Dead-letter publishes, sent in order by a task started on the
    /// first one; each reports back through the settlement channel.
    dead_lettering: Option<DeadLetterQueue>,
    /// With keyed workers: what takes the deliveries instead of the
    /// target, and sees each decision (see [`crate::keyed`]).
    router: Option<Router>,
    /// Whether every ack is sent for confirmation.
    confirm_acks: bool,
    /// Confirmed acks, from the first one on.
    confirmer: Option<Confirmer>,
    /// Publishes held for the next pull request, when the child lingers.
    outbox: outbox::Outbox,
}

fn token(index: u32, generation: u32) -> Token {
    (u64::from(generation) << 32) | u64::from(index)
}

fn split(token: Token) -> (usize, u32) {
    ((token & 0xffff_ffff) as usize, (token >> 32) as u32)
}

impl InFlight {
    pub fn new(
        client: async_nats::Client,
        stream: Arc<str>,
        consumer: Arc<str>,
        effective: &Effective,
        counters: Arc<Counters>,
        dead_letters: DeadLetters,
    ) -> Self {
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        Self {
            client,
            stream,
            consumer,
            target: None,
            batch: Vec::new(),
            batch_room: 0,
            settle_tx,
            settle_rx,
            taken_apart: VecDeque::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            kept: VecDeque::new(),
            deadlines: VecDeque::new(),
            renewals: VecDeque::new(),
            max_hold: effective.max_hold,
            keep_alive: effective.keep_alive,
            ack_wait: effective.ack_wait,
            counters,
            dead_letters,
            dead_lettering: None,
            router: None,
            confirm_acks: effective.confirm_acks,
            confirmer: None,
            outbox: outbox::Outbox::default(),
        }
    }

    /// Hands deliveries to keyed workers through `routing` instead of to
    /// the target.
    pub fn route(&mut self, routing: Routing) {
        routing.table.wake_with(self.settle_tx.clone());
        self.router = Some(Router::new(routing));
    }

    /// Wraps a subscription so that its unread messages are nak'ed by this
    /// registry when it is dropped.
    pub fn guard(&self, subscription: async_nats::Subscriber) -> GuardedSubscription {
        GuardedSubscription::new(
            subscription,
            self.settle_tx.clone(),
            self.client.clone(),
            self.keep_alive,
        )
    }

    /// Where a message read from a subscription but not forwarded goes to
    /// be nak'ed with this registry's own deliveries.
    pub fn unread_sink(&self) -> UnreadSink {
        UnreadSink::new(self.settle_tx.clone())
    }

    /// Points the registry at `target`, when it is another actor; what
    /// waits for the previous one is handed to it first.
    fn use_target(&mut self, target: &Recipient) {
        if self.target.as_ref().is_none_or(|t| t.id() != target.id()) {
            self.hand_over();
            self.target = Some(target.clone());
        }
    }

    /// Whether the target actor can take deliveries.
    pub fn target_running(&self) -> bool {
        self.target.as_ref().is_none_or(is_running)
    }

    /// How many deliveries are out and unsettled (kept ones included).
    pub fn live(&self) -> usize {
        self.live
    }

    /// How many deliveries wait for a decision or a dead letter: those
    /// out, less those kept for a target to come.
    pub fn undecided(&self) -> usize {
        self.live - self.kept.len()
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
        if matches!(entry.stage, Stage::Kept(_)) {
            let token = token(index as u32, slot.generation.wrapping_sub(1));
            self.kept.retain(|t| *t != token);
        }
        Some(entry)
    }

    /// Sends a decision's payload to its delivery's reply subject: an ack
    /// (`settled` is [`Settled::Acked`]) as `+ACK`, for the server to
    /// confirm, when the spec says so or a target waits for it (`waiter`);
    /// anything else as it is.
    async fn send_decision(
        &mut self,
        reply: Subject,
        payload: Bytes,
        settled: Settled,
        stream_sequence: u64,
        waiter: Option<Waiter>,
    ) {
        if settled != Settled::Acked || !(self.confirm_acks || waiter.is_some()) {
            return self.publish(reply, payload).await;
        }
        let ack = Bytes::from(async_nats::jetstream::AckKind::Ack);
        // Boxed: rare and large (see "Small futures" in `consumer.rs`).
        Box::pin(self.send_confirmed(reply, ack, stream_sequence, waiter)).await;
    }

    /// Sends an ack for the server to confirm, starting the confirmer on
    /// first use.
    async fn send_confirmed(
        &mut self,
        reply: Subject,
        payload: Bytes,
        stream_sequence: u64,
        waiter: Option<Waiter>,
    ) {
        // What was decided before this ack goes before it.
        self.send_outbox().await;
        if self.confirmer.is_none() {
            match Confirmer::start(
                self.client.clone(),
                self.consumer.clone(),
                self.counters.clone(),
            )
            .await
            {
                Ok(confirmer) => self.confirmer = Some(confirmer),
                Err(err) => {
                    // Sent unconfirmed, so that nothing waits on it.
                    self.publish(reply, payload).await;
                    self.counters.ack_unconfirmed();
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(Err(confirm::unconfirmed(
                            &self.consumer,
                            stream_sequence,
                            format!("could not subscribe for confirmations: {err}"),
                        )));
                    }
                    return;
                }
            }
        }
        if let Some(confirmer) = &mut self.confirmer {
            confirmer
                .ack(reply, payload, stream_sequence, waiter, &self.counters)
                .await;
        }
    }

    /// A decision that came too late: after the child gave up on its
    /// delivery, after the server delivered it again, or after the
    /// server's ack wait passed. Counted and logged with `why`.
    fn late(&self, stream_sequence: u64, what: &str, why: &str, waiter: Option<Waiter>) {
        self.counters.late_decision();
        tracing::warn!(
            stream = %self.stream,
            durable = %self.consumer,
            stream_sequence,
            decision = what,
            why,
            "a decision came too late"
        );
        if let Some(waiter) = waiter {
            let _ = waiter.send(Err(confirm::unconfirmed(
                &self.consumer,
                stream_sequence,
                format!("too late: {why}"),
            )));
        }
    }

    /// The longest the registry waits for a dropped subscription's tail
    /// (its hold is at most `keep_alive`).
    fn tail_wait(&self) -> Duration {
        self.keep_alive + Duration::from_secs(3)
    }

    /// Nak's what a dropped subscription's tail held, once it has
    /// unsubscribed (see `consumer/guard.rs`).
    fn after_tail(&self, held: tokio::sync::oneshot::Receiver<Vec<Subject>>) {
        settle::settle_stopped(
            &self.client,
            &self.dead_letters,
            Vec::new(),
            Vec::new(),
            Some(settle::AfterTail {
                held,
                wait: self.tail_wait(),
            }),
        );
    }

    /// Queues a publish from a context that does not wait.
    fn publish_now_or_later(&self, subject: Subject, payload: Bytes) {
        settle::settle_stopped(
            &self.client,
            &self.dead_letters,
            vec![(subject, payload)],
            Vec::new(),
            None,
        );
    }

    /// Flushes the connection, so that the decisions applied so far have
    /// reached the server. Bounded by `timeout`.
    pub async fn flush(&mut self, timeout: Duration) {
        self.send_outbox().await;
        if tokio::time::timeout(timeout, self.client.flush())
            .await
            .is_err()
        {
            tracing::debug!(stream = %self.stream, durable = %self.consumer, "flush timed out");
        }
    }
}
