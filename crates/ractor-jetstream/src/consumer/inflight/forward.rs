//! Forwarding: a message becomes a tracked [`Delivery`] at the target, or,
//! when no target can take it, is nak'ed or kept for the next one.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use ractor::MessagingErr;
use tokio::time::Instant;

use super::super::settle::{self, Plan, Seen};
use super::{Entry, ForwardError, InFlight, Settled, Slot, Stage, split, token};
use crate::delivery::{AckMeta, Decision, Deliveries, Delivery, Token};
use crate::target::Recipient;
use async_nats::jetstream::AckKind;

/// The most deliveries handed to a batch target in one message; a worker
/// that forwards more before it waits hands them over in parts.
pub(crate) const MAX_BATCH: usize = 256;

impl InFlight {
    /// Forwards one message to the target, tracking it until it is settled.
    pub fn forward(
        &mut self,
        message: async_nats::Message,
        target: &Recipient,
    ) -> Result<u64, ForwardError> {
        self.use_target(target);
        let (token, info, now) = self.track(&message)?;
        if !self.target_running() {
            self.unseen(token, message);
            return Err(ForwardError::TargetGone);
        }
        self.send_to_target(token, message, info, now)
    }

    /// Tracks a message without handing it to the target yet: it is kept
    /// (and kept alive on the server) until [`forward_kept`](Self::forward_kept)
    /// hands the kept ones over, in the order they came.
    pub fn hold_back(&mut self, message: async_nats::Message) -> Result<(), ForwardError> {
        let (token, _, _) = self.track(&message)?;
        if let Some(entry) = self.current_mut(token) {
            entry.stage = Stage::Kept(Box::new(message));
        }
        self.kept.push_back(token);
        Ok(())
    }

    /// The stream sequences of the kept deliveries.
    pub fn kept_sequences(&self) -> std::collections::BTreeSet<u64> {
        self.kept
            .iter()
            .filter_map(|token| self.current(*token))
            .map(|entry| entry.stream_sequence)
            .collect()
    }

    /// Puts the kept deliveries in stream order, so that
    /// [`forward_kept`](Self::forward_kept) hands them over in that order.
    pub fn sort_kept(&mut self) {
        let mut kept: Vec<(u64, Token)> = self
            .kept
            .iter()
            .filter_map(|token| self.current(*token).map(|e| (e.stream_sequence, *token)))
            .collect();
        kept.sort_unstable();
        self.kept = kept.into_iter().map(|(_, token)| token).collect();
    }

    /// Starts tracking a message: its entry, its keep-alive, its count.
    /// Returns its token, its metadata and the time it was taken in.
    fn track(
        &mut self,
        message: &async_nats::Message,
    ) -> Result<(Token, crate::DeliveryInfo, Instant), ForwardError> {
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
            arrived: now,
            hold_until: now + self.max_hold,
            renew_at: now + self.keep_alive,
            renewed: now,
            reached: false,
            superseded: false,
            stage: Stage::AtTarget,
        });
        let token = token(index, slot.generation);
        if delivered > 1 {
            self.supersede(stream_sequence, token);
        }
        self.live += 1;
        self.renewals.push_back((now + self.keep_alive, token));
        self.count_deadlines();
        self.counters.forwarded(delivered);
        Ok((token, info, now))
    }

    /// A message came again while an earlier delivery of it is still out
    /// (the server's ack wait passed for that one): marks the earlier one,
    /// whose decision is then late. Only on a redelivery, so the scan
    /// costs nothing on the common path.
    fn supersede(&mut self, stream_sequence: u64, newer: Token) {
        let (newer_index, _) = split(newer);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if index != newer_index
                && let Some(entry) = &mut slot.entry
                && entry.stream_sequence == stream_sequence
                && matches!(entry.stage, Stage::AtTarget)
            {
                entry.superseded = true;
            }
        }
    }

    /// Hands kept deliveries to the target, at most `max`. Returns how
    /// many reached it.
    pub fn forward_kept(&mut self, max: usize, target: &Recipient) -> usize {
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
        self.hand_over();
        forwarded
    }

    /// Whether the target takes batches.
    pub fn hands_over_batches(&self) -> bool {
        matches!(self.target, Some(Recipient::Batches(_)))
    }

    /// Hands what waits for a batch target over to it, in one message.
    /// Only a batch target has anything waiting: a per-delivery target
    /// gets each at once, and a change of target hands over to the old one
    /// first. When the target is gone the batch is dropped, and each of its
    /// deliveries reports itself abandoned through the settlement channel:
    /// nak'ed, or kept for the next target, as one that found no target.
    ///
    /// Every wait of a worker goes through [`next_verdict`](Self::next_verdict),
    /// which hands over first, so nothing waits here while the worker
    /// sleeps.
    pub fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        // The next batch starts with room for the largest so far: growing
        // from empty costs a reallocation (and a copy of every delivery so
        // far) at each doubling. A delivery is a pointer, so that is at
        // most 2 KiB.
        self.batch_room = self.batch_room.max(self.batch.len());
        let room = Vec::with_capacity(self.batch_room);
        let batch = Deliveries::new(std::mem::replace(&mut self.batch, room));
        if let Some(Recipient::Batches(actor)) = &self.target {
            // On failure the batch comes back in the error, dropped here.
            if actor.send_message(batch).is_ok() {
                self.counters.batches.fetch_add(1, Ordering::Relaxed);
            }
        }
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
        #[cfg(feature = "otel")]
        crate::otel::continue_trace(&span, message.headers.as_ref());
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
        if let Some(router) = &mut self.router {
            router.arrived(delivery);
            router.dispatch();
            return Ok(stream_sequence);
        }
        let actor = match self.target.as_ref() {
            Some(Recipient::One(actor)) => actor,
            Some(Recipient::Batches(_)) => {
                self.batch.push(delivery);
                if self.batch.len() >= MAX_BATCH {
                    self.hand_over();
                }
                return Ok(stream_sequence);
            }
            None => return Err(ForwardError::TargetGone),
        };
        match actor.send_message(delivery) {
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
    pub(super) fn unseen(&mut self, token: Token, message: async_nats::Message) -> Option<Settled> {
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
                self.publish_now_or_later(entry.reply, Bytes::from(AckKind::Nak(None)));
                self.counters.record(Settled::Abandoned);
                reached.then_some(Settled::Abandoned)
            }
        }
    }
}
