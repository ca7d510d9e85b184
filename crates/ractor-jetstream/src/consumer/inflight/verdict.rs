//! Verdicts: the target's decisions (and the registry's own reports: an
//! unread message, a dead letter done, a dropped delivery) applied on the
//! server through the one settle policy.

use bytes::Bytes;
use tokio::time::Instant;

use super::super::confirm::Waiter;
use super::super::dead_letter::{DeadLetterQueue, Job};
use super::super::settle::{self, Plan, Seen};
use super::{InFlight, Settled, Stage, split};
use crate::delivery::{Decision, ORPHAN, Settlement, Token, Verdict};
use crate::keyed::Outcome;
use async_nats::jetstream::AckKind;

/// Why a decision on a delivery the child no longer has is late.
const GAVE_UP: &str = "the child had given up on the delivery (its hold ended, or it was drained) and nak'ed it; not applied";

impl InFlight {
    /// Waits for the next verdict. Never ends: the registry holds a sender.
    /// Hands what waits for a batch target over first: every worker waits
    /// through here.
    pub async fn next_verdict(&mut self) -> Settlement {
        self.hand_over();
        loop {
            if let Some(settlement) = self.taken_apart.pop_front() {
                return settlement;
            }
            match self.settle_rx.recv().await {
                Some(settlement) => self.take_apart(settlement),
                // Unreachable while `self.settle_tx` lives; wait forever
                // rather than spin.
                None => std::future::pending().await,
            }
        }
    }

    /// A verdict that is already waiting, if any.
    pub fn try_verdict(&mut self) -> Option<Settlement> {
        if self.taken_apart.is_empty() {
            let settlement = self.settle_rx.try_recv().ok()?;
            self.take_apart(settlement);
        }
        self.taken_apart.pop_front()
    }

    /// Queues a settlement as one per delivery: a batch's one decision
    /// ([`Verdict::DecidedAll`]) becomes a `Decided` for each of its
    /// deliveries, in order, so that each is applied as if it had come
    /// alone.
    pub(super) fn take_apart(&mut self, settlement: Settlement) {
        match settlement.verdict {
            Verdict::DecidedAll(decision, settled) => {
                for (token, stream_sequence) in settled {
                    self.taken_apart.push_back(Settlement {
                        token,
                        stream_sequence,
                        verdict: Verdict::Decided(decision.clone()),
                    });
                }
            }
            _ => self.taken_apart.push_back(settlement),
        }
    }

    /// Applies one verdict on the server. Returns what became of the
    /// delivery for the fetch that counted it, or `None` for a stale token,
    /// an in-progress extension, or a delivery no fetch counted.
    pub async fn apply(&mut self, settlement: Settlement) -> Option<Settled> {
        crate::fault_point!("rj-before-apply");
        if self.router.is_none() {
            return self.apply_verdict(settlement).await;
        }
        // With keyed workers the router sees the outcome too, once it is
        // applied: it frees the key and its worker, or blocks the key.
        let token = settlement.token;
        let wake = matches!(settlement.verdict, Verdict::Wake);
        let outcome = Outcome::of(&settlement.verdict, self.current(token).is_some());
        let settled = self.apply_verdict(settlement).await;
        if let Some(router) = &mut self.router {
            if wake {
                router.woken();
            }
            if let Some(outcome) = outcome {
                router.settled(token, outcome);
            }
            router.dispatch();
        }
        settled
    }

    async fn apply_verdict(&mut self, settlement: Settlement) -> Option<Settled> {
        let Settlement {
            token,
            stream_sequence,
            verdict,
        } = settlement;
        let decided = matches!(verdict, Verdict::Decided(_));
        let (decision, settled) = match verdict {
            Verdict::Wake => return None,
            // Taken apart before it is applied (`next_verdict`); one that
            // came here anyway is queued to be, delivery by delivery.
            verdict @ Verdict::DecidedAll(..) => {
                self.take_apart(Settlement {
                    token,
                    stream_sequence,
                    verdict,
                });
                return None;
            }
            Verdict::Unread(reply) => {
                self.publish(reply, Bytes::from(AckKind::Nak(None))).await;
                return None;
            }
            Verdict::Tail(held) => {
                self.after_tail(held);
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
            Verdict::AckConfirmed(waiter) => {
                if self.current(token).is_none() {
                    self.late(stream_sequence, "ack", GAVE_UP, Some(waiter));
                    return None;
                }
                let now = Instant::now();
                if let Some(entry) = self.current(token) {
                    self.counters
                        .metrics
                        .decided_after(now.saturating_duration_since(entry.arrived));
                }
                let mut waiter = Some(waiter);
                if let Some(superseded) =
                    self.superseded(token, stream_sequence, &Decision::Ack, &mut waiter, now)
                {
                    return superseded;
                }
                return self
                    .settle_with(token, Decision::Ack, Settled::Acked, waiter)
                    .await;
            }
            Verdict::Decided(decision) => {
                let settled = match decision {
                    Decision::Ack => Settled::Acked,
                    Decision::Nak(_) => Settled::Naked,
                    Decision::Term(_) => Settled::Termed,
                };
                if self.current(token).is_none() && token != ORPHAN {
                    self.late(stream_sequence, name(&decision), GAVE_UP, None);
                    return None;
                }
                (decision, settled)
            }
        };
        let entry = self.current(token)?;
        if !matches!(entry.stage, Stage::AtTarget) {
            return None;
        }
        // One clock read serves both checks of a decision.
        let now = Instant::now();
        if decided {
            self.counters
                .metrics
                .decided_after(now.saturating_duration_since(entry.arrived));
        }
        if decided
            && let Some(superseded) =
                self.superseded(token, stream_sequence, &decision, &mut None, now)
        {
            return superseded;
        }
        self.settle(token, decision, settled).await
    }

    /// A decision on a delivery the server has delivered again since
    /// (superseded): not applied, counted late; the newer delivery's
    /// decision is the one that counts. Also counts (and applies) one made
    /// after the server's ack wait passed without a keep-alive. `None`
    /// when the decision is to be applied.
    fn superseded(
        &mut self,
        token: Token,
        stream_sequence: u64,
        decision: &Decision,
        waiter: &mut Option<Waiter>,
        now: Instant,
    ) -> Option<Option<Settled>> {
        let entry = self.current(token)?;
        let what = name(decision);
        if !entry.superseded {
            if now.saturating_duration_since(entry.renewed) > self.ack_wait {
                // The server may have delivered it again already; applied,
                // as it may still count, but not taken for done unseen.
                self.late(
                    stream_sequence,
                    what,
                    "the server's ack wait passed without a keep-alive; it may have delivered the message again; applied anyway",
                    None,
                );
            }
            return None;
        }
        let reached = entry.reached;
        self.release(split(token).0)?;
        self.counters.record(Settled::Abandoned);
        self.late(
            stream_sequence,
            what,
            "the server delivered the message again meanwhile; the newer delivery's decision counts; not applied",
            waiter.take(),
        );
        Some(reached.then_some(Settled::Abandoned))
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
    pub(super) async fn settle(
        &mut self,
        token: Token,
        decision: Decision,
        settled: Settled,
    ) -> Option<Settled> {
        self.settle_with(token, decision, settled, None).await
    }

    /// Settles a delivery; an ack's `waiter`, if any, is told whether the
    /// server confirmed it.
    async fn settle_with(
        &mut self,
        token: Token,
        decision: Decision,
        settled: Settled,
        waiter: Option<Waiter>,
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
                self.send_decision(entry.reply, payload, settled, entry.stream_sequence, waiter)
                    .await;
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
            self.counters.dead_lettered();
        }
        self.publish(entry.reply, payload).await;
        self.counters.record(settled);
        reached.then_some(settled)
    }
}

/// A decision's name, for the log of a late one.
fn name(decision: &Decision) -> &'static str {
    match decision {
        Decision::Ack => "ack",
        Decision::Nak(_) => "nak",
        Decision::Term(_) => "term",
    }
}
