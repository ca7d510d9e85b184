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

mod stopping;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use ractor::{ActorStatus, DerivedActorRef, MessagingErr};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Counters;
use super::dead_letter::{DeadLetterQueue, DeadLetters, Job};
use super::effective::Effective;
use super::guard::ORPHAN;
pub(crate) use super::guard::{GuardedSubscription, UnreadSink};
use super::settle::{self, NAK, PROGRESS, Plan, Seen};
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
    /// When the child gives up on it and nak's it.
    hold_until: Instant,
    /// When it is next kept alive on the server.
    renew_at: Instant,
    /// When the server last heard of it (delivered, or a `+WPI`).
    renewed: Instant,
    /// Whether a fetch counted it as delivered to the target.
    reached: bool,
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
    target: Option<DerivedActorRef<Delivery>>,
    settle_tx: mpsc::UnboundedSender<Settlement>,
    settle_rx: mpsc::UnboundedReceiver<Settlement>,
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
    counters: Arc<Counters>,
    dead_letters: DeadLetters,
    /// Dead-letter publishes, sent in order by a task started on the
    /// first one; each reports back through the settlement channel.
    dead_lettering: Option<DeadLetterQueue>,
}

/// Whether an actor can take messages.
pub(crate) fn is_running(target: &DerivedActorRef<Delivery>) -> bool {
    matches!(
        target.get_status(),
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
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
            settle_tx,
            settle_rx,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            kept: VecDeque::new(),
            deadlines: VecDeque::new(),
            renewals: VecDeque::new(),
            max_hold: effective.max_hold,
            keep_alive: effective.keep_alive,
            counters,
            dead_letters,
            dead_lettering: None,
        }
    }

    /// Wraps a subscription so that its unread messages are nak'ed by this
    /// registry when it is dropped.
    pub fn guard(&self, subscription: async_nats::Subscriber) -> GuardedSubscription {
        GuardedSubscription::new(subscription, self.settle_tx.clone(), self.client.clone())
    }

    /// Where a message read from a subscription but not forwarded goes to
    /// be nak'ed with this registry's own deliveries.
    pub fn unread_sink(&self) -> UnreadSink {
        UnreadSink::new(self.settle_tx.clone())
    }

    /// Points the registry at `target`, when it is another actor.
    fn use_target(&mut self, target: &DerivedActorRef<Delivery>) {
        if self
            .target
            .as_ref()
            .is_none_or(|t| t.get_id() != target.get_id())
        {
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

    /// Forwards one message to the target, tracking it until it is settled.
    pub fn forward(
        &mut self,
        message: async_nats::Message,
        target: &DerivedActorRef<Delivery>,
    ) -> Result<u64, ForwardError> {
        self.use_target(target);
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
            hold_until: now + self.max_hold,
            renew_at: now + self.keep_alive,
            renewed: now,
            reached: false,
            stage: Stage::AtTarget,
        });
        let token = token(index, slot.generation);
        self.live += 1;
        self.renewals.push_back((now + self.keep_alive, token));
        self.counters.delivered.fetch_add(1, Ordering::Relaxed);
        if !self.target_running() {
            self.unseen(token, message);
            return Err(ForwardError::TargetGone);
        }
        self.send_to_target(token, message, info, now)
    }

    /// Hands kept deliveries to the target, at most `max`. Returns how
    /// many reached it.
    pub fn forward_kept(&mut self, max: usize, target: &DerivedActorRef<Delivery>) -> usize {
        self.use_target(target);
        let mut forwarded = 0;
        while forwarded < max && self.target_running() {
            let Some(token) = self.kept.pop_front() else {
                break;
            };
            let Some(entry) = self.current_mut(token) else {
                continue;
            };
            let Stage::Kept(message) = std::mem::replace(&mut entry.stage, Stage::AtTarget) else {
                continue;
            };
            let Some(meta) = AckMeta::parse(entry.reply.as_str()) else {
                continue;
            };
            let info = meta.into_info();
            if self
                .send_to_target(token, *message, info, Instant::now())
                .is_ok()
            {
                forwarded += 1;
            }
        }
        forwarded
    }

    fn send_to_target(
        &mut self,
        token: Token,
        message: async_nats::Message,
        info: crate::DeliveryInfo,
        now: Instant,
    ) -> Result<u64, ForwardError> {
        let hold_until = now + self.max_hold;
        if let Some(entry) = self.current_mut(token) {
            entry.hold_until = hold_until;
            entry.reached = true;
        }
        self.deadlines.push_back((hold_until, token));
        let span = tracing::debug_span!(
            "delivery",
            stream = %self.stream,
            durable = %self.consumer,
            stream_sequence = info.stream_sequence,
            delivered = info.delivered,
        );
        let stream_sequence = info.stream_sequence;
        let delivery = Delivery::new(
            message,
            info,
            token,
            self.settle_tx.clone(),
            span,
            now.into_std(),
            self.max_hold,
        );
        let Some(target) = self.target.as_ref() else {
            return Err(ForwardError::TargetGone);
        };
        match target.send_message(delivery) {
            Ok(()) => Ok(stream_sequence),
            Err(MessagingErr::SendErr(delivery)) => {
                let message = delivery.into_message();
                if let Some(entry) = self.current_mut(token) {
                    entry.reached = false;
                }
                self.unseen(token, message);
                Err(ForwardError::TargetGone)
            }
            // The delivery was dropped on the way, which queued its
            // abandonment; applied while the target is not running, it is
            // taken as unseen.
            Err(_) => {
                if let Some(entry) = self.current_mut(token) {
                    entry.reached = false;
                }
                Err(ForwardError::TargetGone)
            }
        }
    }

    /// A message no target took: kept when a nak would lose it, nak'ed
    /// otherwise. Returns what the fetch that counted it should record.
    fn unseen(&mut self, token: Token, message: async_nats::Message) -> Option<Settled> {
        let entry = self.current(token)?;
        let (delivered, reached) = (entry.delivered, entry.reached);
        match settle::plan(
            &self.dead_letters,
            delivered,
            Decision::Nak(None),
            Settled::Abandoned,
            Seen::No,
        ) {
            Plan::Keep => {
                if let Some(entry) = self.current_mut(token) {
                    tracing::warn!(
                        stream_sequence = entry.stream_sequence,
                        "the target is not running and this is the message's last allowed delivery; kept for the next target"
                    );
                    entry.stage = Stage::Kept(Box::new(message));
                    entry.reached = false;
                }
                self.kept.push_back(token);
                reached.then_some(Settled::Abandoned)
            }
            _ => {
                let entry = self.release(split(token).0)?;
                self.publish_now_or_later(entry.reply, Bytes::from_static(NAK));
                self.counters.record(Settled::Abandoned);
                reached.then_some(Settled::Abandoned)
            }
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
    /// delivery for the fetch that counted it, or `None` for a stale token,
    /// an in-progress extension, or a delivery no fetch counted.
    pub async fn apply(&mut self, settlement: Settlement) -> Option<Settled> {
        crate::fault_point!("rj-before-apply");
        let Settlement { token, verdict } = settlement;
        let (decision, settled) = match verdict {
            Verdict::Unread(reply) => {
                self.publish(reply, Bytes::from_static(NAK)).await;
                return None;
            }
            Verdict::Progress => {
                self.progress(token).await;
                return None;
            }
            Verdict::DeadLettered(confirmed) => return self.dead_lettered(token, confirmed).await,
            Verdict::Abandoned(message) => {
                if !self.target_running() && token != ORPHAN {
                    // Dropped in a dead target's mailbox: never seen.
                    return self.unseen(token, *message);
                }
                (Decision::Nak(None), Settled::Abandoned)
            }
            Verdict::Decided(decision) => {
                let settled = match decision {
                    Decision::Ack => Settled::Acked,
                    Decision::Nak(_) => Settled::Naked,
                    Decision::Term(_) => Settled::Termed,
                };
                (decision, settled)
            }
        };
        let entry = self.current(token)?;
        if !matches!(entry.stage, Stage::AtTarget) {
            return None;
        }
        self.settle(token, decision, settled).await
    }

    /// The target asked for more time.
    async fn progress(&mut self, token: Token) {
        let now = Instant::now();
        let (max_hold, keep_alive) = (self.max_hold, self.keep_alive);
        let Some(entry) = self.current_mut(token) else {
            return;
        };
        if !matches!(entry.stage, Stage::AtTarget) {
            return;
        }
        entry.hold_until = now + max_hold;
        // Coalesced: the server hears at most one `+WPI` per delivery per
        // keep-alive period.
        let renew = now.duration_since(entry.renewed) >= keep_alive;
        self.deadlines.push_back((now + max_hold, token));
        if renew {
            self.renew(token, now).await;
        }
    }

    /// Settles a delivery the target had, through the settle policy.
    async fn settle(
        &mut self,
        token: Token,
        decision: Decision,
        settled: Settled,
    ) -> Option<Settled> {
        let entry = self.current(token)?;
        let plan = settle::plan(
            &self.dead_letters,
            entry.delivered,
            decision,
            settled,
            Seen::Yes,
        );
        match plan {
            Plan::Publish(payload, settled) => {
                let entry = self.release(split(token).0)?;
                tracing::trace!(stream_sequence = entry.stream_sequence, ?settled, "settled");
                self.publish(entry.reply, payload).await;
                self.counters.record(settled);
                Some(settled)
            }
            Plan::DeadLetter { why, then, settled } => {
                self.start_dead_letter(token, why, then, settled);
                None
            }
            Plan::Keep => None,
        }
    }

    /// Queues the dead-letter publish of a delivery; the
    /// delivery stays out (and kept alive) until it reports back.
    fn start_dead_letter(&mut self, token: Token, why: String, then: Decision, settled: Settled) {
        let last = self
            .current(token)
            .is_some_and(|e| self.dead_letters.last_delivery(e.delivered).is_some());
        let Some(entry) = self.current_mut(token) else {
            return;
        };
        entry.stage = Stage::DeadLettering { then, settled };
        let (sequence, delivered) = (entry.stream_sequence, entry.delivered);
        // A term that is not stored is nak'ed and comes back, so one
        // attempt will do; on a last delivery a nak would lose the message,
        // so the child keeps trying (and keeps it alive) up to its hold.
        let until = if last {
            entry.hold_until
        } else {
            Instant::now()
        };
        let job = Job {
            token,
            sequence,
            delivered,
            why,
            until,
        };
        let (dead_letters, report) = (&self.dead_letters, &self.settle_tx);
        self.dead_lettering
            .get_or_insert_with(|| DeadLetterQueue::start(dead_letters.clone(), report.clone()))
            .push(job);
    }

    /// A dead-letter publish finished: term the delivery, or nak it when
    /// the dead letter was not stored.
    async fn dead_lettered(&mut self, token: Token, confirmed: bool) -> Option<Settled> {
        let entry = self.current(token)?;
        let Stage::DeadLettering { then, settled } = &entry.stage else {
            return None;
        };
        let (payload, settled) = settle::after_dead_letter(confirmed, then, *settled);
        let reached = entry.reached;
        let entry = self.release(split(token).0)?;
        if confirmed {
            self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        }
        self.publish(entry.reply, payload).await;
        self.counters.record(settled);
        reached.then_some(settled)
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

    /// The next time something is due: a delivery kept alive on the
    /// server, or one whose hold runs out.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let hold = self.next_hold();
        let renewal = self.next_renewal();
        match (hold, renewal) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest hold runs out, if any delivery is at the target.
    fn next_hold(&mut self) -> Option<Instant> {
        while let Some(&(at, token)) = self.deadlines.front() {
            if self
                .current(token)
                .is_some_and(|e| e.hold_until == at && matches!(e.stage, Stage::AtTarget))
            {
                return Some(at);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// When the next delivery is to be kept alive, if any is out.
    fn next_renewal(&mut self) -> Option<Instant> {
        while let Some(&(at, token)) = self.renewals.front() {
            if self.current(token).is_some_and(|e| e.renew_at == at) {
                return Some(at);
            }
            self.renewals.pop_front();
        }
        None
    }

    /// Sends `+WPI` for a delivery and schedules its next keep-alive.
    async fn renew(&mut self, token: Token, now: Instant) {
        let renew_at = now + self.keep_alive;
        let Some(entry) = self.current_mut(token) else {
            return;
        };
        entry.renewed = now;
        entry.renew_at = renew_at;
        let reply = entry.reply.clone();
        self.renewals.push_back((renew_at, token));
        self.counters.kept_alive.fetch_add(1, Ordering::Relaxed);
        self.publish(reply, Bytes::from_static(PROGRESS)).await;
    }

    /// Keeps alive every delivery whose keep-alive is due, and nak's every
    /// delivery whose hold has run out (or settles it as the policy says,
    /// when it was its last allowed delivery), reporting each of those to
    /// `record`.
    pub async fn expire_due(&mut self, now: Instant, mut record: impl FnMut(Settled)) {
        while let Some(at) = self.next_renewal() {
            if at > now {
                break;
            }
            let Some((_, token)) = self.renewals.pop_front() else {
                break;
            };
            self.renew(token, now).await;
        }
        while let Some(deadline) = self.next_hold() {
            if deadline > now {
                break;
            }
            let Some((_, token)) = self.deadlines.pop_front() else {
                break;
            };
            if let Some(entry) = self.current(token) {
                tracing::debug!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = entry.stream_sequence,
                    "no decision within the decision timeout (the maximum hold); nak'ed"
                );
            }
            if let Some(settled) = self
                .settle(token, Decision::Nak(None), Settled::TimedOut)
                .await
            {
                record(settled);
            }
        }
    }

    async fn publish(&self, subject: Subject, payload: Bytes) {
        if let Err(err) = self.client.publish(subject, payload).await {
            // The connection is closed: the server will redeliver after
            // ack_wait. Nothing else can be done from here.
            tracing::warn!(stream = %self.stream, durable = %self.consumer, error = %err, "could not send a decision");
        }
    }

    /// Queues a publish from a context that does not wait.
    fn publish_now_or_later(&self, subject: Subject, payload: Bytes) {
        settle::settle_stopped(
            &self.client,
            &self.dead_letters,
            vec![(subject, payload)],
            Vec::new(),
        );
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
