//! A child's counters: the lock-free ones it shares with its worker, and
//! the [`ConsumerStats`] snapshot it reports.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::effective::Effective;
use super::inflight::Settled;
use crate::spec::{ConsumerMode, ConsumerSpec};
use crate::telemetry::ChildMetrics;

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
    /// Batches handed to a batch target
    /// ([`Target::batches`](crate::Target::batches)), each one actor
    /// message; `delivered / batches` is their mean size. 0 for any other
    /// target.
    pub batches: u64,
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
    /// Of the fetches, those served in the caller's own task, because the
    /// child's worker was idle when they came (pull; see
    /// [`PullHandle::fetch`](crate::PullHandle::fetch)).
    pub fetches_in_caller: u64,
    /// Push subscriptions made anew because the old one closed.
    pub resubscribes: u64,
    /// Terminated messages first published to the dead-letter subject.
    pub dead_lettered: u64,
    /// `+WPI` sent to keep deliveries the target still holds alive.
    pub kept_alive: u64,
    /// Deadlines the child's registry holds: a hold and a keep-alive for
    /// each delivery out at the target, and those of settled deliveries
    /// not dropped yet. About twice `in_flight` while the child works; a
    /// figure that keeps growing is memory the child does not give back.
    pub deadlines_held: u64,
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
    /// Times the server pinned this child (a consumer with a
    /// `pinned_client` priority group; each pin is a new id).
    pub pins_acquired: u64,
    /// Times the child learned that its pin had moved on (`423`), and
    /// went back to standing by.
    pub pins_lost: u64,
    /// Whether the child holds the pin now.
    pub pinned: bool,
    /// The server's ack wait the child works with: the consumer's
    /// `ack_wait`, or its shortest `backoff` step.
    pub ack_wait: Duration,
    /// How long the target may hold a delivery undecided (the decision
    /// timeout in effect).
    pub max_hold: Duration,
    /// The consumer as the server last reported it, when the spec sets
    /// `info_interval`.
    pub server: Option<ServerLag>,
}

/// The consumer's lag as the server reports it (its consumer info).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLag {
    /// Messages in the stream not yet delivered to this consumer.
    pub num_pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub num_ack_pending: u64,
    /// Messages delivered more than once.
    pub num_redelivered: u64,
    /// The stream sequence below which every message is acknowledged.
    pub ack_floor: u64,
}

/// Lock-free counters shared by a child and its worker.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: AtomicU64,
    pub batches: AtomicU64,
    pub acked: AtomicU64,
    pub naked: AtomicU64,
    pub termed: AtomicU64,
    pub abandoned: AtomicU64,
    pub timed_out: AtomicU64,
    pub fetches: AtomicU64,
    pub empty_fetches: AtomicU64,
    pub fetches_in_caller: AtomicU64,
    pub resubscribes: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub kept_alive: AtomicU64,
    /// Set by the registry as its deadline queues change.
    pub deadlines_held: AtomicU64,
    pub acks_confirmed: AtomicU64,
    pub acks_unconfirmed: AtomicU64,
    pub late_decisions: AtomicU64,
    pub pins_acquired: AtomicU64,
    pub pins_lost: AtomicU64,
    pub pinned: std::sync::atomic::AtomicBool,
    /// The same, and more, as metrics (see [`crate::telemetry`]).
    pub metrics: ChildMetrics,
    /// The latest lag from the server, when polled.
    pub lag: std::sync::Mutex<Option<ServerLag>>,
}

impl Counters {
    /// Counters that also record as metrics under these labels.
    pub fn labelled(stream: &str, durable: &str, mode: ConsumerMode) -> Self {
        Self {
            metrics: ChildMetrics::new(stream, durable, mode),
            ..Self::default()
        }
    }

    pub fn record(&self, settled: Settled) {
        let (counter, metric) = match settled {
            Settled::Acked => (&self.acked, &self.metrics.acked),
            Settled::Naked => (&self.naked, &self.metrics.naked),
            Settled::Termed => (&self.termed, &self.metrics.termed),
            Settled::Abandoned => (&self.abandoned, &self.metrics.abandoned),
            Settled::TimedOut => (&self.timed_out, &self.metrics.timed_out),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metric.increment(1);
        self.metrics.in_flight.set(self.in_flight() as f64);
    }

    /// Forwarded and not yet settled.
    fn in_flight(&self) -> u64 {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let settled = get(&self.acked)
            + get(&self.naked)
            + get(&self.termed)
            + get(&self.abandoned)
            + get(&self.timed_out);
        get(&self.delivered).saturating_sub(settled)
    }

    /// A message forwarded (`delivered` is its delivery count).
    pub fn forwarded(&self, delivered: u64) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.metrics.delivered.increment(1);
        if delivered > 1 {
            self.metrics.redelivered.increment(1);
        }
        self.metrics.in_flight.set(self.in_flight() as f64);
    }

    /// The consumer's info, as the poll read it.
    pub fn polled(&self, info: &async_nats::jetstream::consumer::Info) {
        let lag = ServerLag {
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending as u64,
            num_redelivered: info.num_redelivered as u64,
            ack_floor: info.ack_floor.stream_sequence,
        };
        self.metrics.num_pending.set(lag.num_pending as f64);
        self.metrics.num_ack_pending.set(lag.num_ack_pending as f64);
        self.metrics.num_redelivered.set(lag.num_redelivered as f64);
        self.metrics.ack_floor.set(lag.ack_floor as f64);
        *self
            .lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(lag);
    }

    pub fn dead_lettered(&self) {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.metrics.dead_lettered.increment(1);
    }

    pub fn ack_confirmed(&self) {
        self.acks_confirmed.fetch_add(1, Ordering::Relaxed);
        self.metrics.acks_confirmed.increment(1);
    }

    pub fn ack_unconfirmed(&self) {
        self.acks_unconfirmed.fetch_add(1, Ordering::Relaxed);
        self.metrics.acks_unconfirmed.increment(1);
    }

    pub fn late_decision(&self) {
        self.late_decisions.fetch_add(1, Ordering::Relaxed);
        self.metrics.late_decisions.increment(1);
    }

    /// The server pinned this child.
    pub fn pin_acquired(&self) {
        self.pins_acquired.fetch_add(1, Ordering::Relaxed);
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// The child no longer holds the pin: it moved on (`lost`), or the
    /// child released it.
    pub fn pin_gone(&self, lost: bool) {
        if lost {
            self.pins_lost.fetch_add(1, Ordering::Relaxed);
        }
        self.pinned.store(false, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, spec: &ConsumerSpec, effective: &Effective) -> ConsumerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let delivered = get(&self.delivered);
        ConsumerStats {
            stream: spec.stream.clone(),
            durable: spec.durable.clone(),
            mode: spec.mode(),
            delivered,
            batches: get(&self.batches),
            acked: get(&self.acked),
            naked: get(&self.naked),
            termed: get(&self.termed),
            abandoned: get(&self.abandoned),
            timed_out: get(&self.timed_out),
            in_flight: self.in_flight(),
            fetches: get(&self.fetches),
            empty_fetches: get(&self.empty_fetches),
            fetches_in_caller: get(&self.fetches_in_caller),
            resubscribes: get(&self.resubscribes),
            dead_lettered: get(&self.dead_lettered),
            kept_alive: get(&self.kept_alive),
            deadlines_held: get(&self.deadlines_held),
            acks_confirmed: get(&self.acks_confirmed),
            acks_unconfirmed: get(&self.acks_unconfirmed),
            late_decisions: get(&self.late_decisions),
            pins_acquired: get(&self.pins_acquired),
            pins_lost: get(&self.pins_lost),
            pinned: self.pinned.load(Ordering::Relaxed),
            ack_wait: effective.ack_wait,
            max_hold: effective.max_hold,
            server: *self
                .lag
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        }
    }
}

/// Reads the consumer's info every `interval`, for its lag (see
/// [`crate::telemetry`]). A failed read is logged and tried again at the
/// next interval.
pub(crate) async fn poll_info(
    connection: crate::connection::Connection,
    stream: std::sync::Arc<str>,
    durable: std::sync::Arc<str>,
    interval: Duration,
    counters: std::sync::Arc<Counters>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match crate::ensure::consumer_info(&connection, &stream, &durable).await {
            Ok(Some(info)) => counters.polled(&info),
            Ok(None) => tracing::debug!(%durable, "consumer info: no such consumer (yet)"),
            Err(err) => tracing::debug!(%durable, error = %err, "consumer info failed"),
        }
    }
}
