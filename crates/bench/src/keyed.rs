//! The keyed case: one pull child feeding N keyed workers
//! (`ConsumerSpec::pull(..).workers(N, KeySpec::SubjectToken(2))`, the
//! target registered as `Workers::new(|_| (KeyedWorker, ..))`), on messages
//! spread over [`KEYS`] keys (`bench.keyed.0` to `bench.keyed.63`).
//!
//! It prints one line per row:
//!
//! ```text
//! RESULT mode=keyed workers=N work_us=U msgs_per_s=R speedup=S order_violations=V speedup_vs=.. [baseline_msgs_per_s=.. paired_speedup=..] messages=M batch=B
//! ```
//!
//! - `work_us=1000`, workers 1, 4, 8 and 16: each message's work is a 1 ms
//!   tokio sleep, which holds a worker but not a core (I/O-shaped), so the
//!   ideal speedup is N even on 2 cores. (Such a sleep lasts about 2.1 ms:
//!   tokio's timer ticks every millisecond and rounds up, so the rates are
//!   about half of 1000 per worker.) `speedup` (`speedup_vs=workers_1`)
//!   is the row's rate over the workers=1 row's. Each row runs on
//!   `--keyed-messages` messages per worker, so that every row takes about
//!   as long; the rounds go through the worker counts in turn, so that a
//!   drift of the machine hits every count alike.
//! - `work_us=0`, workers 1: the worker acks at once. `speedup`
//!   (`speedup_vs=pull_child`) is the row's rate over a plain pull child's
//!   (the pull case's library side: one target actor that acks at once),
//!   measured in this case, on the same stream, batch and count, in pairs
//!   of runs (at least 5); `baseline_msgs_per_s` is that child's median
//!   rate, `speedup` the ratio of the two medians, and `paired_speedup` the
//!   median of the per-pair ratios. It is what the routing by key costs.
//!
//! Both sides fetch `--keyed-batch` messages at a time (default 500: enough
//! to keep 16 workers busy, about 8 messages per key per fetch), with
//! `max_ack_pending` at twice that. Rates are medians over `--rounds` runs
//! (at least 5 pairs in the row without work).
//!
//! `order_violations` is counted from what the workers saw: a message of a
//! key started while an earlier message of that key was not yet acked, or
//! after a later one was acked. The `i`-th message published (from 0) is
//! message `i / KEYS` of key `i % KEYS`, and carries that index in its
//! payload, so each key's messages are in stream order and numbered.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{ConsumerMsg, ConsumerSpec, Delivery, KeySpec, Workers};

use super::{
    BoxError, Options, PAYLOAD, check_all_acked, fetch_all, fill_with, median, spawn_pull_child,
    spawn_target,
};

/// How many keys the messages are spread over.
pub const KEYS: u64 = 64;

/// The subject token that is the key: `bench.keyed.<key>`.
const KEY_TOKEN: usize = 2;

/// The worker counts of the rows with work.
const WORKERS: [u32; 4] = [1, 4, 8, 16];

/// The work of one message in the rows with work: a sleep.
const WORK: Duration = Duration::from_millis(1);

/// The most messages of the row without work (fewer with `--messages`).
const NO_WORK_MESSAGES: u64 = 30_000;

/// The fewest pairs of runs of the row without work: its runs are short,
/// and what else runs on the machine moves one run by a third.
const NO_WORK_ROUNDS: usize = 5;

/// The longest one run may take before the case gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// What `speedup` is measured against.
#[derive(Debug, Clone, Copy)]
pub enum Baseline {
    /// The workers=1 row with the same work.
    OneWorker,
    /// A plain pull child (one target actor).
    PullChild {
        /// Its median rate.
        rate: f64,
        /// The median of the per-pair ratios (each keyed run against the
        /// plain run next to it, which shared the machine's state).
        paired: f64,
    },
}

/// One row of the keyed case.
#[derive(Debug, Clone)]
pub struct KeyedRow {
    /// Workers behind the child.
    pub workers: u32,
    /// Each message's work, µs.
    pub work_us: u128,
    /// Messages per run.
    pub messages: u64,
    /// The fetch batch.
    pub batch: usize,
    /// Median rate, messages per second.
    pub rate: f64,
    /// The rate over the baseline's.
    pub speedup: f64,
    /// What `speedup` is measured against.
    pub baseline: Baseline,
    /// Order violations the workers saw, over every round.
    pub order_violations: u64,
}

impl KeyedRow {
    /// The `RESULT` line.
    pub fn line(&self) -> String {
        let against = match self.baseline {
            Baseline::OneWorker => "speedup_vs=workers_1".to_string(),
            Baseline::PullChild { rate, paired } => format!(
                "speedup_vs=pull_child baseline_msgs_per_s={rate:.0} paired_speedup={paired:.3}"
            ),
        };
        format!(
            "RESULT mode=keyed workers={} work_us={} msgs_per_s={:.0} speedup={:.3} order_violations={} {against} messages={} batch={}",
            self.workers,
            self.work_us,
            self.rate,
            self.speedup,
            self.order_violations,
            self.messages,
            self.batch
        )
    }
}

/// Runs the keyed case: the rows with work, then the row without.
pub(crate) async fn keyed_case(
    js: &jetstream::Context,
    options: &Options,
) -> Result<Vec<KeyedRow>, BoxError> {
    let batch = options.keyed_batch;
    let mut rows = Vec::new();

    // With work: the rounds go through every worker count in turn.
    let mut rates = vec![Vec::new(); WORKERS.len()];
    let mut violations = vec![0; WORKERS.len()];
    for _ in 0..options.rounds {
        for (i, &workers) in WORKERS.iter().enumerate() {
            let n = options.keyed_messages * u64::from(workers);
            let run = keyed_run(js, workers, WORK, n, batch).await?;
            eprintln!(
                "round: keyed workers={workers} work_us={} rate={:.0} violations={}",
                WORK.as_micros(),
                run.rate,
                run.order_violations
            );
            rates[i].push(run.rate);
            violations[i] += run.order_violations;
        }
    }
    let rates: Vec<f64> = rates.iter_mut().map(|r| median(r)).collect();
    for (i, &workers) in WORKERS.iter().enumerate() {
        rows.push(KeyedRow {
            workers,
            work_us: WORK.as_micros(),
            messages: options.keyed_messages * u64::from(workers),
            batch,
            rate: rates[i],
            speedup: rates[i] / rates[0],
            baseline: Baseline::OneWorker,
            order_violations: violations[i],
        });
    }

    // Without work: one worker against a plain pull child, in pairs whose
    // order alternates (so that a drift favours neither side).
    let n = options.messages.min(NO_WORK_MESSAGES);
    let (mut plain, mut keyed, mut paired, mut violations) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 0..options.rounds.max(NO_WORK_ROUNDS) {
        let (pull_child, run) = if round % 2 == 0 {
            let pull_child = plain_run(js, n, batch).await?;
            (
                pull_child,
                keyed_run(js, 1, Duration::ZERO, n, batch).await?,
            )
        } else {
            let run = keyed_run(js, 1, Duration::ZERO, n, batch).await?;
            (plain_run(js, n, batch).await?, run)
        };
        eprintln!(
            "round: keyed workers=1 work_us=0 rate={:.0} pull_child={:.0} violations={}",
            run.rate, pull_child, run.order_violations
        );
        plain.push(pull_child);
        keyed.push(run.rate);
        paired.push(run.rate / pull_child);
        violations += run.order_violations;
    }
    let (plain, keyed) = (median(&mut plain), median(&mut keyed));
    rows.push(KeyedRow {
        workers: 1,
        work_us: 0,
        messages: n,
        batch,
        rate: keyed,
        speedup: keyed / plain,
        baseline: Baseline::PullChild {
            rate: plain,
            paired: median(&mut paired),
        },
        order_violations: violations,
    });
    Ok(rows)
}

/// What one keyed run measured.
struct KeyedRun {
    rate: f64,
    order_violations: u64,
}

/// The consumer's `max_ack_pending` for a fetch batch: room for one whole
/// fetch while the acks of the one before it reach the server.
fn max_ack_pending(batch: usize) -> u64 {
    2 * batch as u64
}

/// Fills the stream with `n` keyed messages, consumes them with `workers`
/// keyed workers that each take `work` per message, and checks the order
/// they saw and that the server has every ack.
async fn keyed_run(
    js: &jetstream::Context,
    workers: u32,
    work: Duration,
    n: u64,
    batch: usize,
) -> Result<KeyedRun, BoxError> {
    fill_keyed(js, n).await?;
    let log = Arc::new(OrderLog::new(KEYS as usize));
    let spec = ConsumerSpec::pull("BENCH", "keyed", "bench")
        .max_ack_pending(max_ack_pending(batch))
        .workers(workers, KeySpec::SubjectToken(KEY_TOKEN));
    let target = {
        let log = log.clone();
        Workers::new(move |_| {
            (
                KeyedWorker,
                WorkerState {
                    work,
                    log: log.clone(),
                },
            )
        })
    };
    let child = spawn_pull_child(js, spec, target.into()).await?;
    let elapsed = within(
        format!("keyed workers={workers}: {n} messages"),
        fetch_all(js, "keyed", &child, n, batch),
    )
    .await?;
    check_all_acked(js, "keyed", n).await?;
    stop(&child).await?;
    let acked = log.distinct_acked();
    if acked != n {
        return Err(format!(
            "keyed workers={workers}: the workers acked {acked} distinct messages, expected {n}"
        )
        .into());
    }
    Ok(KeyedRun {
        rate: n as f64 / elapsed.as_secs_f64(),
        order_violations: log.violations.load(Ordering::Relaxed),
    })
}

/// The baseline of the row without work: the same messages through a
/// plain pull child and one target that acks at once (the pull case's
/// library side). Returns its rate.
async fn plain_run(js: &jetstream::Context, n: u64, batch: usize) -> Result<f64, BoxError> {
    fill_keyed(js, n).await?;
    let (target, _probe) = spawn_target(n).await?;
    let spec = ConsumerSpec::pull("BENCH", "pull", "bench").max_ack_pending(max_ack_pending(batch));
    let child = spawn_pull_child(js, spec, target.get_derived().into()).await?;
    let elapsed = within(
        format!("plain pull child: {n} messages"),
        fetch_all(js, "pull", &child, n, batch),
    )
    .await?;
    check_all_acked(js, "pull", n).await?;
    stop(&child).await?;
    target.stop(None);
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Runs `run` for at most [`RUN_LIMIT`].
pub(super) async fn within<T>(
    what: String,
    run: impl Future<Output = Result<T, BoxError>>,
) -> Result<T, BoxError> {
    tokio::time::timeout(RUN_LIMIT, run)
        .await
        .map_err(|_| format!("{what}: not consumed within {RUN_LIMIT:?}"))?
}

/// Stops a child and waits for it (and so its worker pool and workers) to
/// be gone, so that the next run has the machine to itself.
pub(super) async fn stop(child: &ActorRef<ConsumerMsg>) -> Result<(), BoxError> {
    child
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await
        .map_err(|err| format!("stopping the child: {err}"))?;
    Ok(())
}

/// Fills the stream with `n` messages over [`KEYS`] keys: the `i`-th is
/// message `i / KEYS` of key `i % KEYS`, that index in its payload's first
/// 8 bytes.
async fn fill_keyed(js: &jetstream::Context, n: u64) -> Result<(), BoxError> {
    let subjects: Vec<async_nats::Subject> = (0..KEYS)
        .map(|key| async_nats::Subject::from(format!("bench.keyed.{key}")))
        .collect();
    fill_with(js, n, |i| {
        let mut payload = vec![b'x'; PAYLOAD];
        payload[..8].copy_from_slice(&(i / KEYS).to_be_bytes());
        (subjects[(i % KEYS) as usize].clone(), payload.into())
    })
    .await
}

/// A delivery's key and its index within the key.
fn key_and_index(delivery: &Delivery) -> Result<(usize, u64), String> {
    let key = delivery
        .subject()
        .split('.')
        .nth(KEY_TOKEN)
        .and_then(|token| token.parse::<usize>().ok())
        .filter(|&key| key < KEYS as usize)
        .ok_or_else(|| format!("no key in subject {:?}", delivery.subject()))?;
    let index = delivery
        .payload()
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| format!("no index in the payload of {:?}", delivery.subject()))?;
    Ok((key, index))
}

/// What the workers of one run saw, per key; shared by them.
struct OrderLog {
    keys: Mutex<Vec<KeyOrder>>,
    violations: AtomicU64,
}

/// The acks of one key, as its workers made them.
#[derive(Default)]
struct KeyOrder {
    /// Every index below this one was acked.
    acked_below: u64,
    /// Acked indexes above `acked_below` (there are some only if the key
    /// was acked out of order).
    acked_above: BTreeSet<u64>,
    /// The highest index acked.
    highest: Option<u64>,
}

impl OrderLog {
    fn new(keys: usize) -> Self {
        Self {
            keys: Mutex::new((0..keys).map(|_| KeyOrder::default()).collect()),
            violations: AtomicU64::new(0),
        }
    }

    /// A worker starts on message `index` of `key`: a violation if an
    /// earlier one of the key is not acked yet, or a later one is.
    fn started(&self, key: usize, index: u64) {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let order = &keys[key];
        let earlier_unacked = index > order.acked_below;
        let later_acked = order.highest.is_some_and(|highest| highest > index);
        if earlier_unacked || later_acked {
            self.violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A worker is about to ack message `index` of `key` (noted before
    /// the ack, which frees the key for its next message).
    fn acked(&self, key: usize, index: u64) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let order = &mut keys[key];
        if index == order.acked_below {
            order.acked_below += 1;
            while order.acked_above.remove(&order.acked_below) {
                order.acked_below += 1;
            }
        } else if index > order.acked_below {
            order.acked_above.insert(index);
        }
        order.highest = order.highest.max(Some(index));
    }

    /// How many distinct messages were acked.
    fn distinct_acked(&self) -> u64 {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.iter()
            .map(|order| order.acked_below + order.acked_above.len() as u64)
            .sum()
    }
}

/// One keyed worker: notes the start, works, notes the ack, acks.
struct KeyedWorker;

/// A worker's state: its work per message and the run's order log.
struct WorkerState {
    work: Duration,
    log: Arc<OrderLog>,
}

impl Actor for KeyedWorker {
    type Msg = Delivery;
    type State = WorkerState;
    type Arguments = WorkerState;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        state: WorkerState,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        let (key, index) = key_and_index(&delivery)?;
        state.log.started(key, index);
        if !state.work.is_zero() {
            tokio::time::sleep(state.work).await;
        }
        state.log.acked(key, index);
        delivery.ack();
        Ok(())
    }
}

/// Appends the keyed rows to the report's table.
pub(crate) fn write_table(
    table: &mut String,
    options: &Options,
    rows: &[KeyedRow],
) -> Result<(), std::fmt::Error> {
    writeln!(
        table,
        "Keyed workers: one pull child, {KEYS} keys, fetch batch {}, median of {} runs (without work: of {} pairs). Work is a tokio sleep; speedup with work is against 1 worker, without work against a plain pull child (one target) on the same messages.",
        options.keyed_batch,
        options.rounds,
        options.rounds.max(NO_WORK_ROUNDS)
    )?;
    writeln!(table)?;
    writeln!(
        table,
        "| workers | work µs | messages | msg/s | speedup | against | order violations |"
    )?;
    writeln!(table, "|---:|---:|---:|---:|---:|---|---:|")?;
    for row in rows {
        let against = match row.baseline {
            Baseline::OneWorker => "1 worker".to_string(),
            Baseline::PullChild { rate, paired } => {
                format!("pull child, {rate:.0} msg/s (paired ratio {paired:.2})")
            }
        };
        writeln!(
            table,
            "| {} | {} | {} | {:.0} | {:.2} | {against} | {} |",
            row.workers, row.work_us, row.messages, row.rate, row.speedup, row.order_violations
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn violations(log: &OrderLog) -> u64 {
        log.violations.load(Ordering::Relaxed)
    }

    #[test]
    fn in_order_is_no_violation() {
        let log = OrderLog::new(2);
        for index in 0..5 {
            log.started(0, index);
            log.started(1, index);
            log.acked(0, index);
            log.acked(1, index);
        }
        assert_eq!(violations(&log), 0);
        assert_eq!(log.distinct_acked(), 10);
    }

    #[test]
    fn started_before_the_earlier_one_is_acked() {
        let log = OrderLog::new(1);
        log.started(0, 0);
        log.started(0, 1);
        assert_eq!(violations(&log), 1, "1 started while 0 was not acked");
    }

    #[test]
    fn started_after_a_later_one_was_acked() {
        let log = OrderLog::new(1);
        log.started(0, 1);
        log.acked(0, 1);
        assert_eq!(violations(&log), 1, "1 started before 0 was acked");
        log.started(0, 0);
        assert_eq!(violations(&log), 2, "0 started after 1 was acked");
        log.acked(0, 0);
        assert_eq!(log.distinct_acked(), 2);
    }
}
