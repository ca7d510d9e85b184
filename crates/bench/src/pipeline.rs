//! The pipeline case: what confirmed acks, and the exactly-once output of
//! a consume-transform-produce pipeline (`ractor_jetstream::output`),
//! cost against plain acks.
//!
//! Every variant runs one pull child on a fresh stream of 128-byte
//! messages, with the same consumer (`max_deliver` 5, `ack_wait` and
//! `max_hold` 10 s, `max_ack_pending` twice the fetch batch); only what the
//! target does with each delivery differs:
//!
//! - `plain`: `delivery.ack()`, sent and forgotten. The baseline.
//! - `confirm_acks`: the same target, under
//!   `ConsumerSpec::confirm_acks(true)`: the child sends every ack with a
//!   reply subject and counts the server's answers, all on one
//!   subscription, so the acks of a fetch are in flight together. Its cost
//!   is the reply traffic and its bookkeeping, not a round trip each.
//! - `ack_confirmed`: `delivery.ack_confirmed().await` in the target's
//!   `handle`. An actor handles one message at a time, so each delivery
//!   waits a round trip to the server before the next one starts: the rate
//!   is bound by that latency. It is what a simple target gets.
//! - `publish_and_ack`: the target publishes one result per input to an
//!   output stream with `Output::publish_and_ack(delivery, ..)`, awaited in
//!   `handle`: a publish that waits for the output stream's ack, then a
//!   confirmed ack, one delivery after the other (two round trips each).
//! - `publish_and_ack_concurrent`: the same call in a tokio task per
//!   delivery, so the deliveries of one fetch (at most [`BATCH`]) are
//!   published and acked concurrently.
//!
//! The output stream's `duplicate_window` is the consumer's redelivery
//! horizon (`output::redelivery_horizon`: 5 deliveries of 10 s), which
//! `Output::bind` checks, so that a redelivered input's result would be
//! stored once.
//!
//! It prints one line per variant:
//!
//! ```text
//! RESULT mode=pipeline variant=V msgs_per_s=R ratio=X baseline=plain messages=N batch=B paired_ratio=P
//! ```
//!
//! The variants that keep a fetch's deliveries in flight together
//! (`confirm_acks`, `publish_and_ack_concurrent`) run on [`MESSAGES`]
//! messages, the serialized ones (`ack_confirmed`, `publish_and_ack`) on
//! [`SERIAL_MESSAGES`] (fewer with `--messages`); each group has its own
//! `plain` runs on its own count, so there are two `variant=plain` lines.
//! In each round every variant of a group runs once, in an order that is
//! reversed every other round (so that a drift of the machine favours
//! none), over at least [`MIN_ROUNDS`] rounds. `msgs_per_s` is the median
//! rate, `ratio` its quotient by the median `plain` rate of the group, and
//! `paired_ratio` the median of the per-round quotients (each run against
//! the `plain` run of its round).
//!
//! A run's time goes from the first fetch until the target has finished
//! every delivery (for the concurrent variant: every task) and, when acks
//! are confirmed, until the child has counted every answer (polled every
//! millisecond once the last fetch returned). A run fails unless the
//! target saw no error and no duplicate, the child counted every ack as
//! confirmed and none unconfirmed or late (for `plain`: none sent for
//! confirmation), the server shows every message acked, and the output
//! stream holds exactly one message per input.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use ractor::{Actor, ActorRef};
use ractor_jetstream::output::{Output, redelivery_horizon};
use ractor_jetstream::{ConsumerMsg, ConsumerSpec, ConsumerStats};

use super::keyed::{stop, within};
use super::{BoxError, Options, check_all_acked, fetch_all, fill, median, spawn_pull_child};

/// Messages per run of the variants that keep a fetch in flight together.
const MESSAGES: u64 = 20_000;

/// Messages per run of the variants that wait a round trip per delivery.
const SERIAL_MESSAGES: u64 = 5_000;

/// The fetch batch of every run.
pub const BATCH: usize = 500;

/// The fewest rounds: the fast runs are short, and what else runs on the
/// machine moves one run by a third.
const MIN_ROUNDS: usize = 5;

/// The input consumer's `max_deliver`: finite, so that its redelivery
/// horizon is, and an output stream's duplicate window can cover it.
const MAX_DELIVER: u64 = 5;

/// The input consumer's `ack_wait`, and the child's `max_hold`.
const HOLD: Duration = Duration::from_secs(10);

/// The durable consumer of every run.
const DURABLE: &str = "pipeline";

/// The output stream, and the subject its results are published to (not
/// under the input stream's `bench.>`).
const OUTPUT_STREAM: &str = "BENCH_OUT";
const OUTPUT_SUBJECT: &str = "bench_out.results";

mod target;
use target::{PipelineMsg, PipelineState, PipelineTarget, Tally};

/// What the target does with each delivery; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `ack()`.
    Plain,
    /// `ack()`, with the spec's `confirm_acks(true)`.
    ConfirmAcks,
    /// `ack_confirmed().await` in `handle`.
    AckConfirmed,
    /// `Output::publish_and_ack(..).await` in `handle`.
    PublishAndAck,
    /// `Output::publish_and_ack(..)` in a task per delivery.
    PublishAndAckConcurrent,
}

impl Variant {
    /// Its name in the `RESULT` line.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::ConfirmAcks => "confirm_acks",
            Variant::AckConfirmed => "ack_confirmed",
            Variant::PublishAndAck => "publish_and_ack",
            Variant::PublishAndAckConcurrent => "publish_and_ack_concurrent",
        }
    }

    /// What the target does, for the table.
    fn what(self) -> &'static str {
        match self {
            Variant::Plain => "`ack()`",
            Variant::ConfirmAcks => "`ack()`, spec `confirm_acks(true)`",
            Variant::AckConfirmed => "`ack_confirmed().await` in `handle`",
            Variant::PublishAndAck => "`publish_and_ack(..).await` in `handle`",
            Variant::PublishAndAckConcurrent => "`publish_and_ack(..)` in a task per delivery",
        }
    }

    /// Whether every ack is sent for the server to confirm.
    fn confirms(self) -> bool {
        self != Variant::Plain
    }

    /// Whether the target publishes to the output stream.
    fn publishes(self) -> bool {
        matches!(
            self,
            Variant::PublishAndAck | Variant::PublishAndAckConcurrent
        )
    }
}

/// The variants that keep a fetch's deliveries in flight together, and
/// their baseline.
const CONCURRENT: [Variant; 3] = [
    Variant::Plain,
    Variant::ConfirmAcks,
    Variant::PublishAndAckConcurrent,
];

/// The variants that wait a round trip per delivery, and their baseline.
const SERIAL: [Variant; 3] = [
    Variant::Plain,
    Variant::AckConfirmed,
    Variant::PublishAndAck,
];

/// One row of the pipeline case.
#[derive(Debug, Clone)]
pub struct PipelineRow {
    /// What the target did.
    pub variant: Variant,
    /// Messages per run.
    pub messages: u64,
    /// Median rate, messages per second.
    pub rate: f64,
    /// The rate over the median `plain` rate on the same count.
    pub ratio: f64,
    /// The median of the per-round ratios to `plain`.
    pub paired_ratio: f64,
}

impl PipelineRow {
    /// The `RESULT` line.
    pub fn line(&self) -> String {
        format!(
            "RESULT mode=pipeline variant={} msgs_per_s={:.0} ratio={:.3} baseline=plain messages={} batch={BATCH} paired_ratio={:.3}",
            self.variant.name(),
            self.rate,
            self.ratio,
            self.messages,
            self.paired_ratio
        )
    }
}

/// Runs the pipeline case: the concurrent group, then the serial one.
pub(crate) async fn pipeline_case(
    js: &jetstream::Context,
    options: &Options,
) -> Result<Vec<PipelineRow>, BoxError> {
    let rounds = options.rounds.max(MIN_ROUNDS);
    let mut rows = group(js, &CONCURRENT, options.messages.min(MESSAGES), rounds).await?;
    rows.extend(group(js, &SERIAL, options.messages.min(SERIAL_MESSAGES), rounds).await?);
    Ok(rows)
}

/// Runs `variants` (the first is `plain`) on `n` messages each, `rounds`
/// times, in an order reversed every other round.
async fn group(
    js: &jetstream::Context,
    variants: &[Variant],
    n: u64,
    rounds: usize,
) -> Result<Vec<PipelineRow>, BoxError> {
    let mut rates = vec![Vec::new(); variants.len()];
    let mut paired = vec![Vec::new(); variants.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut this_round = vec![0.0; variants.len()];
        for i in order {
            this_round[i] = pipeline_run(js, variants[i], n).await?;
        }
        eprintln!(
            "round: pipeline messages={n} {}",
            variants
                .iter()
                .zip(&this_round)
                .map(|(v, rate)| format!("{}={rate:.0}", v.name()))
                .collect::<Vec<_>>()
                .join(" ")
        );
        for (i, rate) in this_round.iter().enumerate() {
            rates[i].push(*rate);
            paired[i].push(rate / this_round[0]);
        }
    }
    let medians: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    Ok(variants
        .iter()
        .enumerate()
        .map(|(i, &variant)| PipelineRow {
            variant,
            messages: n,
            rate: medians[i],
            ratio: medians[i] / medians[0],
            paired_ratio: median(&mut paired[i]),
        })
        .collect())
}

/// The input consumer of every run; `confirm_acks` only for that variant.
fn input_spec(variant: Variant) -> ConsumerSpec {
    ConsumerSpec::pull("BENCH", DURABLE, "bench")
        .max_deliver(MAX_DELIVER)
        .ack_wait(HOLD)
        .max_hold(HOLD)
        .max_ack_pending(2 * BATCH as u64)
        .confirm_acks(variant == Variant::ConfirmAcks)
}

/// Fills the stream with `n` messages, consumes them with `variant`'s
/// target, checks everything the module docs list, and returns the rate.
async fn pipeline_run(js: &jetstream::Context, variant: Variant, n: u64) -> Result<f64, BoxError> {
    let label = format!("pipeline variant={} messages={n}", variant.name());
    fill(js, n).await?;
    let spec = input_spec(variant);
    if variant.publishes() {
        create_output_stream(js, &spec).await?;
    }
    let tally = Arc::new(Tally::default());
    let (target, _) = Actor::spawn(
        None,
        PipelineTarget,
        PipelineState {
            variant,
            output: None,
            tally: tally.clone(),
        },
    )
    .await?;
    let child = spawn_pull_child(js, spec.clone(), target.get_derived().into()).await?;
    if variant.publishes() {
        // The consumer exists now: bind checks its redelivery horizon.
        let output = Output::bind(js, OUTPUT_STREAM, &spec).await?;
        target.cast(PipelineMsg::Output(Arc::new(output)))?;
    }

    let started = Instant::now();
    within(
        format!("{label}: fetching"),
        fetch_all(js, DURABLE, &child, n, BATCH),
    )
    .await?;
    let stats = within(
        format!("{label}: finishing"),
        finished(&child, &tally, n, variant.confirms()),
    )
    .await?;
    let elapsed = started.elapsed();

    tally.check(&label, n)?;
    let (confirmed, unconfirmed) = (stats.acks_confirmed, stats.acks_unconfirmed);
    let expected = if variant.confirms() { n } else { 0 };
    if confirmed != expected || unconfirmed != 0 || stats.late_decisions != 0 || stats.acked != n {
        return Err(format!(
            "{label}: the child counted {} acked, {confirmed} confirmed, {unconfirmed} unconfirmed and {} late; expected {n}, {expected}, 0 and 0",
            stats.acked, stats.late_decisions
        )
        .into());
    }
    check_all_acked(js, DURABLE, n).await?;
    if variant.publishes() {
        let stored = js
            .get_stream(OUTPUT_STREAM)
            .await?
            .info()
            .await?
            .state
            .messages;
        if stored != n {
            return Err(format!(
                "{label}: the output stream holds {stored} messages, expected {n}"
            )
            .into());
        }
    }
    stop(&child).await?;
    target
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await
        .map_err(|err| format!("{label}: stopping the target: {err}"))?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Creates the output stream afresh, its duplicate window the input
/// consumer's redelivery horizon.
async fn create_output_stream(
    js: &jetstream::Context,
    input: &ConsumerSpec,
) -> Result<(), BoxError> {
    let duplicate_window =
        redelivery_horizon(&input.to_config(None), input.effective_max_hold())
            .ok_or("the input consumer has unlimited max_deliver: no duplicate window covers it")?;
    let _ = js.delete_stream(OUTPUT_STREAM).await;
    js.create_stream(stream::Config {
        name: OUTPUT_STREAM.into(),
        subjects: vec!["bench_out.>".into()],
        storage: stream::StorageType::File,
        duplicate_window,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Waits until the target has finished `n` deliveries and, if `confirms`,
/// the child has an answer for each of `n` acks; returns the child's
/// stats then.
async fn finished(
    child: &ActorRef<ConsumerMsg>,
    tally: &Tally,
    n: u64,
    confirms: bool,
) -> Result<ConsumerStats, BoxError> {
    loop {
        if tally.finished() >= n {
            let stats = ractor::call_t!(child, ConsumerMsg::Stats, 10_000)?;
            if !confirms || stats.acks_confirmed + stats.acks_unconfirmed >= n {
                return Ok(stats);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Appends the pipeline rows to the report's table.
pub(crate) fn write_table(
    table: &mut String,
    options: &Options,
    rows: &[PipelineRow],
) -> Result<(), std::fmt::Error> {
    writeln!(
        table,
        "Pipeline: one pull child, fetch batch {BATCH}, max_deliver {MAX_DELIVER}, ack_wait and max_hold {HOLD:?}; median of {} rounds, each variant against plain acks on the same count (paired: against the plain run of the same round). The serialized variants await a round trip per delivery in the target's `handle`.",
        options.rounds.max(MIN_ROUNDS)
    )?;
    writeln!(table)?;
    writeln!(
        table,
        "| variant | the target per delivery | messages | msg/s | ratio to plain | paired ratio |"
    )?;
    writeln!(table, "|---|---|---:|---:|---:|---:|")?;
    for row in rows {
        writeln!(
            table,
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} |",
            row.variant.name(),
            row.variant.what(),
            row.messages,
            row.rate,
            row.ratio,
            row.paired_ratio
        )?;
    }
    Ok(())
}
