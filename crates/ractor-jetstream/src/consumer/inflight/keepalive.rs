//! Deadlines of deliveries out at the target: a `+WPI` every keep-alive
//! period while the target holds one undecided, and a nak once its maximum
//! hold has run out.
//!
//! Both queues are plain `VecDeque`s in time order rather than a timer per
//! delivery: every deadline is "now plus the same period", so pushing at
//! the back keeps them sorted, and an entry that moved or was settled is
//! skipped when it reaches the front. The worker arms one timer for the
//! front of both.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use super::{InFlight, Settled, Stage};
use crate::delivery::{Decision, Token};
use async_nats::jetstream::AckKind;

impl InFlight {
    /// The next time something is due: a delivery kept alive on the
    /// server, one whose hold runs out, or the outbox.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let hold = self.next_hold();
        let renewal = self.next_renewal();
        self.count_deadlines();
        [hold, renewal, self.outbox_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Tells the stats how many deadlines the queues hold.
    pub(super) fn count_deadlines(&self) {
        let held = (self.deadlines.len() + self.renewals.len()) as u64;
        self.counters.deadlines_held.store(held, Ordering::Relaxed);
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
    pub(super) async fn renew(&mut self, token: Token, now: Instant) {
        // A lost keep-alive, for tests of what comes after the ack wait.
        crate::fault_point!("rj-skip-keep-alive", |_| {});
        let renew_at = now + self.keep_alive;
        let Some(entry) = self.current_mut(token) else {
            return;
        };
        entry.renewed = now;
        entry.renew_at = renew_at;
        let reply = entry.reply.clone();
        self.renewals.push_back((renew_at, token));
        self.counters.kept_alive.fetch_add(1, Ordering::Relaxed);
        self.publish(reply, Bytes::from(AckKind::Progress)).await;
    }

    /// Keeps alive every delivery whose keep-alive is due, and nak's every
    /// delivery whose hold has run out (or settles it as the policy says,
    /// when it was its last allowed delivery), reporting each of those to
    /// `record`; sends the outbox when it is due.
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
        self.send_outbox_if_due(now).await;
    }
}
