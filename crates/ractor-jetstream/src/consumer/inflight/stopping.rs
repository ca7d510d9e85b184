//! How a stopping child settles what it still holds: [`InFlight::settle_all`]
//! when it drains (it can wait, so dead letters are sent here), and the
//! drop guard when it is stopped or aborted (it cannot wait, so what needs
//! a dead letter goes to one short task; see [`settle_stopped`]). Both go
//! through the one settle policy, [`settle::plan`].

use async_nats::Subject;
use bytes::Bytes;

use super::super::settle::{self, PendingDeadLetter, Plan, Seen, settle_stopped};
use super::{InFlight, Settled, Stage, split};
use crate::delivery::{AckMeta, Decision, Verdict};
use async_nats::jetstream::AckKind;

impl InFlight {
    /// Settles every delivery still out, as a stopping child must (used by
    /// drain): decided ones as decided, the rest as abandoned, each through
    /// the settle policy, with dead letters awaited here. Reports what
    /// became of each delivery a fetch counted to `record`; returns how
    /// many were not decided by the target.
    pub async fn settle_all(&mut self, mut record: impl FnMut(Settled)) -> usize {
        // Decisions that arrived meanwhile are applied as decided.
        while let Some(settlement) = self.try_verdict() {
            if let Some(settled) = self.apply(settlement).await {
                record(settled);
            }
        }
        // Dead letters still queued are sent here, in order, below.
        self.dead_lettering = None;
        let mut abandoned = 0;
        for index in 0..self.slots.len() {
            let Some(entry) = self.slots[index].entry.as_ref() else {
                continue;
            };
            let (seen, decision, settled) = match &entry.stage {
                Stage::AtTarget => (Seen::Yes, Decision::Nak(None), Settled::Abandoned),
                Stage::Kept(_) => (Seen::NoAndStopping, Decision::Nak(None), Settled::Abandoned),
                Stage::DeadLettering { then, settled } => (Seen::Yes, then.clone(), *settled),
            };
            let (delivered, reached) = (entry.delivered, entry.reached);
            let Some(entry) = self.release(index) else {
                continue;
            };
            if seen != Seen::Yes || matches!(decision, Decision::Nak(_)) {
                abandoned += 1;
            }
            let (payload, settled) =
                match settle::plan(&self.dead_letters, delivered, decision, settled, seen) {
                    Plan::Publish(payload, settled) => (payload, settled),
                    Plan::DeadLetter { why, then, settled } => {
                        let confirmed = self
                            .dead_letters
                            .send_once(entry.stream_sequence, delivered, &why)
                            .await;
                        if confirmed {
                            self.counters.dead_lettered();
                        }
                        settle::after_dead_letter(confirmed, &then, settled)
                    }
                    Plan::Keep => (Bytes::from(AckKind::Nak(None)), Settled::Abandoned),
                };
            self.publish(entry.reply, payload).await;
            self.counters.record(settled);
            if reached {
                record(settled);
            }
        }
        self.deadlines.clear();
        self.renewals.clear();
        self.kept.clear();
        abandoned
    }
}

impl Drop for InFlight {
    /// The drop guard: whatever is still out is settled now, through the
    /// settle policy. Verdicts that already arrived are applied; everything
    /// else is nak'ed (so that it comes back at once rather than after
    /// `ack_wait`), or dead-lettered when a nak would lose it.
    fn drop(&mut self) {
        let mut publishes: Vec<(u64, Subject, Bytes)> = Vec::new();
        let mut letters = Vec::new();
        let mut decided: Vec<Option<(Decision, Settled)>> = vec![None; self.slots.len()];
        let mut tail = None;
        // Decisions held for the next pull request go with the rest (a
        // keep-alive no longer matters).
        for (reply, payload) in self.outbox.take() {
            if payload.as_ref() == b"+WPI" {
                continue;
            }
            let sequence = AckMeta::parse(reply.as_str()).map_or(0, |m| m.stream_sequence);
            publishes.push((sequence, reply, payload));
        }
        while let Ok(settlement) = self.settle_rx.try_recv() {
            self.take_apart(settlement);
        }
        while let Some(settlement) = self.taken_apart.pop_front() {
            match settlement.verdict {
                Verdict::Tail(held) => {
                    tail = Some(settle::AfterTail {
                        held,
                        wait: self.tail_wait(),
                    });
                }
                Verdict::Unread(reply) => {
                    let sequence = AckMeta::parse(reply.as_str()).map_or(0, |m| m.stream_sequence);
                    publishes.push((sequence, reply, Bytes::from(AckKind::Nak(None))));
                }
                Verdict::Decided(decision) if self.current(settlement.token).is_some() => {
                    let settled = match decision {
                        Decision::Ack => Settled::Acked,
                        Decision::Nak(_) => Settled::Naked,
                        Decision::Term(_) => Settled::Termed,
                    };
                    if let Some(slot) = decided.get_mut(split(settlement.token).0) {
                        *slot = Some((decision, settled));
                    }
                }
                _ => {}
            }
        }
        for (slot, decided) in self.slots.iter_mut().zip(decided) {
            let Some(entry) = slot.entry.take() else {
                continue;
            };
            let (decision, settled, seen) = match (&entry.stage, decided) {
                (Stage::Kept(_), _) => {
                    (Decision::Nak(None), Settled::Abandoned, Seen::NoAndStopping)
                }
                (Stage::DeadLettering { then, settled }, _) => (then.clone(), *settled, Seen::Yes),
                (Stage::AtTarget, Some((decision, settled))) => (decision, settled, Seen::Yes),
                (Stage::AtTarget, None) => (Decision::Nak(None), Settled::Abandoned, Seen::Yes),
            };
            match settle::plan(&self.dead_letters, entry.delivered, decision, settled, seen) {
                Plan::Publish(payload, _) => {
                    publishes.push((entry.stream_sequence, entry.reply, payload));
                }
                Plan::DeadLetter { why, then, .. } => letters.push(PendingDeadLetter {
                    reply: entry.reply,
                    stream_sequence: entry.stream_sequence,
                    delivered: entry.delivered,
                    why,
                    then,
                }),
                Plan::Keep => {
                    publishes.push((
                        entry.stream_sequence,
                        entry.reply,
                        Bytes::from(AckKind::Nak(None)),
                    ));
                }
            }
        }
        if publishes.is_empty() && letters.is_empty() && tail.is_none() {
            return;
        }
        // In stream order, so that the server delivers them again in the
        // order they were first delivered.
        publishes.sort_unstable_by_key(|(sequence, _, _)| *sequence);
        letters.sort_unstable_by_key(|letter| letter.stream_sequence);
        tracing::debug!(
            stream = %self.stream,
            durable = %self.consumer,
            count = publishes.len(),
            dead_letters = letters.len(),
            "settling in-flight deliveries of a stopped consumer child"
        );
        settle_stopped(
            &self.client,
            &self.dead_letters,
            publishes
                .into_iter()
                .map(|(_, subject, payload)| (subject, payload))
                .collect(),
            letters,
            tail,
        );
    }
}
