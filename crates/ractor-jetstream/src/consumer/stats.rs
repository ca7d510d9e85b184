//! A child's counters: the lock-free ones it shares with its worker, and
//! the [`ConsumerStats`] snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::effective::Effective;
use super::inflight::Settled;
use crate::spec::{ConsumerMode, ConsumerSpec};

/// A child's counters since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    /// The stream.
    pub stream: String,
    /// The durable consumer.
    pub durable: String,
    /// Push or pull.
    pub mode: ConsumerMode,
    /// Messages forwarded to the target.
    pub delivered: u64,
    /// Acknowledged.
    pub acked: u64,
    /// Nak'ed by the target.
    pub naked: u64,
    /// Terminated by the target.
    pub termed: u64,
    /// Dropped without a decision, or nak'ed by a drain.
    pub abandoned: u64,
    /// Not decided within the decision timeout.
    pub timed_out: u64,
    /// Forwarded and not yet settled.
    pub in_flight: u64,
    /// Fetches served (pull).
    pub fetches: u64,
    /// Fetches that ended by expiry with nothing delivered (pull).
    pub empty_fetches: u64,
    /// Push subscriptions made anew because the old one closed.
    pub resubscribes: u64,
    /// Terminated messages first published to the dead-letter subject.
    pub dead_lettered: u64,
    /// `+WPI` sent to keep deliveries the target still holds alive.
    pub kept_alive: u64,
    /// Acks the server confirmed (sent for confirmation: with
    /// `confirm_acks`, or by [`Delivery::ack_confirmed`](crate::Delivery::ack_confirmed)).
    pub acks_confirmed: u64,
    /// Acks sent for confirmation that the server did not confirm (no
    /// reply in time, or no consumer to take them).
    pub acks_unconfirmed: u64,
    /// Decisions that came after the child had given up on their delivery
    /// (its hold ended, so it was nak'ed and may have been delivered again
    /// meanwhile): not applied, and logged with their stream sequence.
    pub late_decisions: u64,
    /// The server's ack wait the child works with: the consumer's
    /// `ack_wait`, or its shortest `backoff` step.
    pub ack_wait: Duration,
    /// How long the target may hold a delivery undecided (the decision
    /// timeout in effect).
    pub max_hold: Duration,
}

/// Lock-free counters shared by a child and its worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub naked: AtomicU64,
    pub termed: AtomicU64,
    pub abandoned: AtomicU64,
    pub timed_out: AtomicU64,
    pub fetches: AtomicU64,
    pub empty_fetches: AtomicU64,
    pub resubscribes: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub kept_alive: AtomicU64,
    pub acks_confirmed: AtomicU64,
    pub acks_unconfirmed: AtomicU64,
    pub late_decisions: AtomicU64,
}

impl Counters {
    pub fn record(&self, settled: Settled) {
        let counter = match settled {
            Settled::Acked => &self.acked,
            Settled::Naked => &self.naked,
            Settled::Termed => &self.termed,
            Settled::Abandoned => &self.abandoned,
            Settled::TimedOut => &self.timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, spec: &ConsumerSpec, effective: &Effective) -> ConsumerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let delivered = get(&self.delivered);
        let settled = get(&self.acked)
            + get(&self.naked)
            + get(&self.termed)
            + get(&self.abandoned)
            + get(&self.timed_out);
        ConsumerStats {
            stream: spec.stream.clone(),
            durable: spec.durable.clone(),
            mode: spec.mode(),
            delivered,
            acked: get(&self.acked),
            naked: get(&self.naked),
            termed: get(&self.termed),
            abandoned: get(&self.abandoned),
            timed_out: get(&self.timed_out),
            in_flight: delivered.saturating_sub(settled),
            fetches: get(&self.fetches),
            empty_fetches: get(&self.empty_fetches),
            resubscribes: get(&self.resubscribes),
            dead_lettered: get(&self.dead_lettered),
            kept_alive: get(&self.kept_alive),
            acks_confirmed: get(&self.acks_confirmed),
            acks_unconfirmed: get(&self.acks_unconfirmed),
            late_decisions: get(&self.late_decisions),
            ack_wait: effective.ack_wait,
            max_hold: effective.max_hold,
        }
    }
}
