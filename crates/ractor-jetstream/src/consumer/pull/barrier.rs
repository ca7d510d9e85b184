//! The takeover barrier of a pinned continuous child; see
//! `continuous.rs`, whose module docs say why and how.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Worker;
use crate::consumer::WorkerInbox;
use crate::ensure::consumer_info;

/// How often a takeover barrier asks the server whether the previous
/// holder's deliveries are settled.
const BARRIER_CHECK: Duration = Duration::from_millis(100);

/// After a pin moved to this child, new messages wait until what the
/// previous holder had in flight is settled: its redeliveries go to the
/// target first, so order per key holds across the takeover.
pub(super) struct Barrier {
    /// The stream sequence of the first new message under the new pin:
    /// everything the previous holder had is below it.
    pub(super) first_new: Option<u64>,
    pub(super) next_check: Instant,
    /// Lifted regardless at this point (the previous holder's deliveries
    /// have long come back by then).
    pub(super) give_up: Instant,
}

impl Worker {
    /// Lifts the takeover barrier once the server counts no delivery
    /// pending beyond this child's own.
    pub(super) async fn check_barrier(
        &mut self,
        slot: &mut Option<Barrier>,
        inbox: &mut WorkerInbox,
        now: Instant,
    ) {
        let Some(barrier) = slot.as_mut() else {
            return;
        };
        if now < barrier.next_check {
            return;
        }
        barrier.next_check = now + BARRIER_CHECK;
        let first_new = barrier.first_new;
        let settled_elsewhere = self.all_in_hand_below(first_new).await;
        if !settled_elsewhere && now < barrier.give_up {
            return;
        }
        if !settled_elsewhere {
            tracing::warn!(durable = %self.ctx.durable, "the previous holder's deliveries are still pending; going on");
        }
        *slot = None;
        self.in_flight.sort_kept();
        if let Some(target) = inbox.target.get().cloned() {
            let released = self.in_flight.forward_kept(usize::MAX, &target);
            tracing::debug!(durable = %self.ctx.durable, first_new, released, "takeover barrier lifted");
        }
    }

    /// Whether every message of this consumer below the barrier's bound
    /// is acknowledged or kept here: walking the consumer's subject from
    /// the ack floor (below which all are acknowledged), every message
    /// before the bound must be one this child holds. The bound is the
    /// first new message, or, before one came, the last the server
    /// delivered. With several filters (no single subject to walk), whether
    /// the server counts nothing pending beyond what this child holds.
    async fn all_in_hand_below(&self, first_new: Option<u64>) -> bool {
        let ctx = Arc::clone(&self.ctx);
        let Ok(Some(info)) = consumer_info(&ctx.connection, &ctx.stream, &ctx.durable).await else {
            return false;
        };
        let bound = first_new.unwrap_or(info.delivered.stream_sequence + 1);
        let filters = &info.config.filter_subjects;
        let filter = match (info.config.filter_subject.as_str(), filters.as_slice()) {
            ("", [one]) => one.clone(),
            ("", []) => ">".to_string(),
            ("", _) => return info.num_ack_pending <= self.in_flight.live(),
            (one, _) => one.to_string(),
        };
        let Ok(stream) = ctx
            .connection
            .jetstream()
            .get_stream(ctx.stream.as_ref())
            .await
        else {
            return false;
        };
        let held = self.in_flight.kept_sequences();
        let mut at = info.ack_floor.stream_sequence + 1;
        while at < bound {
            let next = stream
                .raw_message_builder()
                .sequence(at)
                .next_by_subject(filter.clone())
                .send()
                .await;
            match next {
                Ok(next) if next.sequence >= bound => return true,
                Ok(next) if held.contains(&next.sequence) => at = next.sequence + 1,
                // Still out elsewhere (or acknowledged out of order).
                Ok(_) => return false,
                Err(err) => {
                    return matches!(
                        err.kind(),
                        async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound
                    );
                }
            }
        }
        true
    }
}
