//! Metrics, through the [`metrics`] facade: the library records, the
//! application chooses the exporter (for example
//! `metrics-exporter-prometheus`) and installs it before it starts the
//! supervisor. Without one, recording costs next to nothing.
//!
//! Every consumer child records under the labels `stream`, `durable` and
//! `mode` (`push` or `pull`). The names follow Prometheus' usual shape
//! (`_total` for counters, `_seconds` for durations); [`names`] lists
//! them, and the README has the table.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `jetstream_consumer_delivered_total` | counter | messages forwarded to the target |
//! | `jetstream_consumer_redelivered_total` | counter | of those, deliveries with a delivery count above 1 |
//! | `jetstream_consumer_acked_total` | counter | acked |
//! | `jetstream_consumer_naked_total` | counter | nak'ed by the target |
//! | `jetstream_consumer_termed_total` | counter | terminated (by the target, or on a last delivery that failed) |
//! | `jetstream_consumer_abandoned_total` | counter | dropped undecided, drained, or never seen by a target |
//! | `jetstream_consumer_timed_out_total` | counter | held past `max_hold` |
//! | `jetstream_consumer_dead_lettered_total` | counter | published to the dead-letter subject |
//! | `jetstream_consumer_acks_confirmed_total` | counter | acks the server confirmed |
//! | `jetstream_consumer_acks_unconfirmed_total` | counter | acks sent for confirmation and not confirmed |
//! | `jetstream_consumer_late_decisions_total` | counter | decisions after the child gave up on, or the server re-sent, their delivery |
//! | `jetstream_consumer_in_flight` | gauge | forwarded and not yet settled |
//! | `jetstream_consumer_decision_seconds` | histogram | from the message's arrival at the child to the target's decision |
//! | `jetstream_consumer_fetch_seconds` | histogram | from a fetch's start to its answer (pull) |
//! | `jetstream_consumer_restarts_total` | counter | the child restarted by its supervisor |
//! | `jetstream_supervisor_give_ups_total` | counter | the supervisor gave up on a child (labels `durable`) |
//! | `jetstream_keyed_worker_deliveries_total` | counter | deliveries handed to each keyed worker (labels `durable`, `worker`) |
//! | `jetstream_consumer_num_pending` | gauge | the server's `num_pending` (lag), from the consumer-info poll |
//! | `jetstream_consumer_num_ack_pending` | gauge | the server's `num_ack_pending`, from the poll |
//! | `jetstream_consumer_num_redelivered` | gauge | the server's `num_redelivered`, from the poll |
//! | `jetstream_consumer_ack_floor` | gauge | the server's ack floor (stream sequence), from the poll |
//!
//! With `advisories = true` on a consumer, its child also counts the
//! server's advisories for the durable in
//! `jetstream_consumer_advisories_total`, with a `kind` label:
//! `max_deliveries` (a message reached `max_deliver`), `terminated` (a
//! message was terminated; the reason is logged), `deleted` (the consumer
//! was deleted).
//!
//! The last four come from a consumer-info request per child every
//! `info_interval` of its spec (off unless set): one request per interval
//! per durable, never on the data path.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Label};

use crate::spec::ConsumerMode;

/// The metric names; see the [module docs](self).
pub mod names {
    /// Messages forwarded to the target.
    pub const DELIVERED: &str = "jetstream_consumer_delivered_total";
    /// Deliveries with a delivery count above 1.
    pub const REDELIVERED: &str = "jetstream_consumer_redelivered_total";
    /// Acked.
    pub const ACKED: &str = "jetstream_consumer_acked_total";
    /// Nak'ed by the target.
    pub const NAKED: &str = "jetstream_consumer_naked_total";
    /// Terminated.
    pub const TERMED: &str = "jetstream_consumer_termed_total";
    /// Dropped undecided, drained, or never seen by a target.
    pub const ABANDONED: &str = "jetstream_consumer_abandoned_total";
    /// Held past `max_hold`.
    pub const TIMED_OUT: &str = "jetstream_consumer_timed_out_total";
    /// Published to the dead-letter subject.
    pub const DEAD_LETTERED: &str = "jetstream_consumer_dead_lettered_total";
    /// Acks the server confirmed.
    pub const ACKS_CONFIRMED: &str = "jetstream_consumer_acks_confirmed_total";
    /// Acks sent for confirmation and not confirmed.
    pub const ACKS_UNCONFIRMED: &str = "jetstream_consumer_acks_unconfirmed_total";
    /// Decisions that came too late.
    pub const LATE_DECISIONS: &str = "jetstream_consumer_late_decisions_total";
    /// Forwarded and not yet settled.
    pub const IN_FLIGHT: &str = "jetstream_consumer_in_flight";
    /// Arrival at the child to the target's decision.
    pub const DECISION_SECONDS: &str = "jetstream_consumer_decision_seconds";
    /// A fetch's start to its answer.
    pub const FETCH_SECONDS: &str = "jetstream_consumer_fetch_seconds";
    /// Restarts of the child by its supervisor.
    pub const RESTARTS: &str = "jetstream_consumer_restarts_total";
    /// The supervisor gave up on a child.
    pub const GIVE_UPS: &str = "jetstream_supervisor_give_ups_total";
    /// The server's `num_pending`.
    pub const NUM_PENDING: &str = "jetstream_consumer_num_pending";
    /// The server's `num_ack_pending`.
    pub const NUM_ACK_PENDING: &str = "jetstream_consumer_num_ack_pending";
    /// The server's `num_redelivered`.
    pub const NUM_REDELIVERED: &str = "jetstream_consumer_num_redelivered";
    /// The server's ack floor (stream sequence).
    pub const ACK_FLOOR: &str = "jetstream_consumer_ack_floor";
    /// Deliveries handed to each keyed worker (labels `durable`,
    /// `worker`).
    pub const KEYED_WORKER_DELIVERIES: &str = "jetstream_keyed_worker_deliveries_total";
    /// The server's advisories for the durable, by `kind`.
    pub const ADVISORIES: &str = "jetstream_consumer_advisories_total";
}

/// One child's metric handles, registered once with its labels.
#[derive(Clone)]
pub(crate) struct ChildMetrics {
    pub delivered: Counter,
    pub redelivered: Counter,
    pub acked: Counter,
    pub naked: Counter,
    pub termed: Counter,
    pub abandoned: Counter,
    pub timed_out: Counter,
    pub dead_lettered: Counter,
    pub acks_confirmed: Counter,
    pub acks_unconfirmed: Counter,
    pub late_decisions: Counter,
    pub in_flight: Gauge,
    pub decision_seconds: Histogram,
    pub fetch_seconds: Histogram,
    pub num_pending: Gauge,
    pub num_ack_pending: Gauge,
    pub num_redelivered: Gauge,
    pub ack_floor: Gauge,
}

impl ChildMetrics {
    pub fn new(stream: &str, durable: &str, mode: ConsumerMode) -> Self {
        let labels = labels(stream, durable, mode);
        let counter = |name: &'static str| metrics::counter!(name, labels.iter());
        let gauge = |name: &'static str| metrics::gauge!(name, labels.iter());
        let histogram = |name: &'static str| metrics::histogram!(name, labels.iter());
        Self {
            delivered: counter(names::DELIVERED),
            redelivered: counter(names::REDELIVERED),
            acked: counter(names::ACKED),
            naked: counter(names::NAKED),
            termed: counter(names::TERMED),
            abandoned: counter(names::ABANDONED),
            timed_out: counter(names::TIMED_OUT),
            dead_lettered: counter(names::DEAD_LETTERED),
            acks_confirmed: counter(names::ACKS_CONFIRMED),
            acks_unconfirmed: counter(names::ACKS_UNCONFIRMED),
            late_decisions: counter(names::LATE_DECISIONS),
            in_flight: gauge(names::IN_FLIGHT),
            decision_seconds: histogram(names::DECISION_SECONDS),
            fetch_seconds: histogram(names::FETCH_SECONDS),
            num_pending: gauge(names::NUM_PENDING),
            num_ack_pending: gauge(names::NUM_ACK_PENDING),
            num_redelivered: gauge(names::NUM_REDELIVERED),
            ack_floor: gauge(names::ACK_FLOOR),
        }
    }

    /// Records a decision's latency.
    pub fn decided_after(&self, latency: Duration) {
        self.decision_seconds.record(latency.as_secs_f64());
    }
}

impl Default for ChildMetrics {
    /// Handles that record nowhere (for counters made without labels).
    fn default() -> Self {
        Self {
            delivered: Counter::noop(),
            redelivered: Counter::noop(),
            acked: Counter::noop(),
            naked: Counter::noop(),
            termed: Counter::noop(),
            abandoned: Counter::noop(),
            timed_out: Counter::noop(),
            dead_lettered: Counter::noop(),
            acks_confirmed: Counter::noop(),
            acks_unconfirmed: Counter::noop(),
            late_decisions: Counter::noop(),
            in_flight: Gauge::noop(),
            decision_seconds: Histogram::noop(),
            fetch_seconds: Histogram::noop(),
            num_pending: Gauge::noop(),
            num_ack_pending: Gauge::noop(),
            num_redelivered: Gauge::noop(),
            ack_floor: Gauge::noop(),
        }
    }
}

impl std::fmt::Debug for ChildMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChildMetrics")
    }
}

fn labels(stream: &str, durable: &str, mode: ConsumerMode) -> Vec<Label> {
    vec![
        Label::new("stream", stream.to_string()),
        Label::new("durable", durable.to_string()),
        Label::new("mode", mode.to_string()),
    ]
}

/// Counts a restart of the child of `durable` by its supervisor.
pub(crate) fn restarted(stream: &str, durable: &str, mode: ConsumerMode) {
    metrics::counter!(names::RESTARTS, labels(stream, durable, mode).iter()).increment(1);
}

/// Counts a supervisor giving up on the child of `durable`.
pub(crate) fn gave_up(durable: &str) {
    metrics::counter!(names::GIVE_UPS, "durable" => durable.to_string()).increment(1);
}

/// Watches the server's advisories for one durable; see the module docs.
/// Ends when the subscription does (or the child aborts it).
pub(crate) async fn watch_advisories(
    client: async_nats::Client,
    stream: std::sync::Arc<str>,
    durable: std::sync::Arc<str>,
    mode: ConsumerMode,
) {
    use futures::StreamExt;
    let subject = format!("$JS.EVENT.ADVISORY.CONSUMER.*.{stream}.{durable}");
    let mut advisories = match client.subscribe(subject.clone()).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(%durable, %subject, error = %err, "cannot watch the consumer's advisories");
            return;
        }
    };
    let counter = |kind: &'static str| {
        let mut labels = labels(&stream, &durable, mode);
        labels.push(Label::new("kind", kind));
        metrics::counter!(names::ADVISORIES, labels.iter())
    };
    let (max_deliveries, terminated, deleted) = (
        counter("max_deliveries"),
        counter("terminated"),
        counter("deleted"),
    );
    while let Some(advisory) = advisories.next().await {
        let kind = advisory.subject.split('.').nth(4).unwrap_or_default();
        let body: serde_json::Value = serde_json::from_slice(&advisory.payload).unwrap_or_default();
        let sequence = body["stream_seq"].as_u64().unwrap_or_default();
        match kind {
            "MAX_DELIVERIES" => {
                max_deliveries.increment(1);
                tracing::warn!(%stream, %durable, stream_sequence = sequence, deliveries = body["deliveries"].as_u64().unwrap_or_default(), "advisory: a message reached max_deliver");
            }
            "MSG_TERMINATED" => {
                terminated.increment(1);
                tracing::info!(%stream, %durable, stream_sequence = sequence, reason = body["reason"].as_str().unwrap_or_default(), "advisory: a message was terminated");
            }
            "DELETED" => {
                deleted.increment(1);
                tracing::warn!(%stream, %durable, "advisory: the consumer was deleted");
            }
            _ => {}
        }
    }
}
