//! The continuous case: the library's continuous pull consume against the
//! same work written with async-nats' own continuous pull.
//!
//! - raw: a pull durable with explicit acks,
//!   `consumer.stream().max_messages_per_batch(W).messages()`, and
//!   `message.ack().await` for each message (one plain ack, no reply
//!   asked for) until every message is acked.
//! - library: a supervisor ([`SupervisorHandle::spawn`]) with one consumer,
//!   `ConsumerSpec::new(.., PullSpec::continuous().window(W))`, feeding the
//!   bench's trivial target, which acks each delivery at once and counts
//!   them; the run ends when it has counted every message.
//!
//! `W` is `--window` (default 256) on both sides: the raw side's batch
//! (async-nats asks for the next batch once half of one is consumed) and
//! the library's window (at most that many requested and unsettled, asked
//! for again once half is free). Both sides have the server's default
//! `max_ack_pending` (1000).
//!
//! Every run gets a fresh stream with `--messages` messages of 128 bytes
//! and a fresh durable. Its clock starts before the durable is created
//! (the supervisor creates its durable as it starts) and stops once every
//! message is acked and the connection flushed; the server must then show
//! every message acked. Each of `--rounds` rounds runs both sides, raw
//! first in even rounds and the library first in odd ones, so that a drift
//! of the machine favours neither. It prints:
//!
//! ```text
//! RESULT mode=continuous msgs_per_s=R ratio=X paired_ratio=Y messages=N window=W ... p50_us=P p99_us=Q
//! ```
//!
//! `msgs_per_s` is the library's median rate, `ratio` that over the raw
//! side's median, and `paired_ratio` the median of the per-round ratios.
//! `p50_us` and `p99_us` are the time from a message's arrival at the
//! child to the target receiving it, over every library run.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use ractor_jetstream::{ConsumerSpec, PullSpec, SupervisorArgs, SupervisorHandle, Topology};

use super::cpu::{CpuMark, CpuUse};
use super::{BoxError, Options, Side, check_all_acked, fill, median, spawn_target};

/// The raw side's durable.
const RAW: &str = "raw";

/// The library side's durable.
const LIBRARY: &str = "continuous";

/// The name the target is registered under with the supervisor.
const TARGET: &str = "t";

/// A side that `--side` left out: no rate, no CPU.
const SKIPPED: (f64, CpuUse) = (f64::NAN, CpuUse::ZERO);

/// The longest one run may take before the case gives up on it.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// The result of the case.
#[derive(Debug, Clone)]
pub struct ContinuousRow {
    /// Messages per run.
    pub messages: u64,
    /// The raw batch and the library's window.
    pub window: usize,
    /// The raw side's median rate, messages per second.
    pub raw: f64,
    /// The library's median rate.
    pub library: f64,
    /// The median of the per-round ratios library / raw.
    pub paired_ratio: f64,
    /// Median CPU per message of the raw runs.
    pub raw_cpu: CpuUse,
    /// The same for the library runs.
    pub library_cpu: CpuUse,
    /// Time from arrival at the child to the target, µs: median and 99th
    /// percentile over every library run.
    pub p50_us: f64,
    pub p99_us: f64,
}

impl ContinuousRow {
    /// The `RESULT` line.
    pub fn line(&self) -> String {
        format!(
            "RESULT mode=continuous msgs_per_s={:.0} ratio={:.3} paired_ratio={:.3} messages={} window={} client_us_raw={:.2} client_us_library={:.2} server_us_raw={:.2} server_us_library={:.2} p50_us={:.1} p99_us={:.1}",
            self.library,
            self.library / self.raw,
            self.paired_ratio,
            self.messages,
            self.window,
            self.raw_cpu.client_us,
            self.library_cpu.client_us,
            self.raw_cpu.server_us,
            self.library_cpu.server_us,
            self.p50_us,
            self.p99_us,
        )
    }
}

/// Runs the case; see the module docs.
pub(crate) async fn continuous_case(
    js: &jetstream::Context,
    options: &Options,
) -> Result<ContinuousRow, BoxError> {
    let (n, window) = (options.messages, options.window);
    let (mut raw, mut library, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_cpus, mut library_cpus) = (Vec::new(), Vec::new());
    let mut latencies = Vec::new();
    let pid = options.server_pid;
    for round in 0..options.rounds {
        let mut library_run = async || {
            let (rate, cpu, mut waited) = library_run(js, options, n, window).await?;
            latencies.append(&mut waited);
            Ok::<_, BoxError>((rate, cpu))
        };
        let ((raw_rate, raw_cpu), (library_rate, library_cpu)) = match options.side {
            Side::Raw => (raw_run(js, n, window, pid).await?, SKIPPED),
            Side::Library => (SKIPPED, library_run().await?),
            Side::Both if round % 2 == 0 => {
                let raw_run = raw_run(js, n, window, pid).await?;
                (raw_run, library_run().await?)
            }
            Side::Both => {
                let library_run = library_run().await?;
                (raw_run(js, n, window, pid).await?, library_run)
            }
        };
        eprintln!(
            "round: continuous window={window} raw={raw_rate:.0} library={library_rate:.0} client_us raw={:.2} library={:.2} server_us raw={:.2} library={:.2} switches raw={:.2} library={:.2} writes raw={:.3} library={:.3}",
            raw_cpu.client_us,
            library_cpu.client_us,
            raw_cpu.server_us,
            library_cpu.server_us,
            raw_cpu.switches,
            library_cpu.switches,
            raw_cpu.writes,
            library_cpu.writes,
        );
        raw.push(raw_rate);
        library.push(library_rate);
        paired.push(library_rate / raw_rate);
        raw_cpus.push(raw_cpu);
        library_cpus.push(library_cpu);
    }
    let (p50_us, p99_us) = super::percentiles(&mut latencies);
    Ok(ContinuousRow {
        messages: n,
        window,
        raw: median(&mut raw),
        library: median(&mut library),
        paired_ratio: median(&mut paired),
        raw_cpu: CpuUse::median(&raw_cpus),
        library_cpu: CpuUse::median(&library_cpus),
        p50_us,
        p99_us,
    })
}

/// What the client had sent the server at one moment, from async-nats'
/// own statistics: messages (acks and pull requests; one per message
/// consumed is the acks alone) and bytes. async-nats counts a publish's
/// subject and payload when it is queued and every byte again when it is
/// written, so `bytes_per_message` is a figure to compare the two sides
/// by, not what went over the wire.
struct Sent {
    messages: u64,
    bytes: u64,
}

impl Sent {
    fn now(js: &jetstream::Context) -> Self {
        let statistics = js.client().statistics();
        Self {
            messages: statistics.out_messages.load(Ordering::Relaxed),
            bytes: statistics.out_bytes.load(Ordering::Relaxed),
        }
    }

    /// Prints what was sent since, per message consumed.
    fn report(&self, js: &jetstream::Context, side: &str, n: u64) {
        let now = Self::now(js);
        let n = n.max(1) as f64;
        eprintln!(
            "run: continuous side={side} sent_per_message={:.3} bytes_per_message={:.1}",
            now.messages.saturating_sub(self.messages) as f64 / n,
            now.bytes.saturating_sub(self.bytes) as f64 / n,
        );
    }
}

/// One raw run: async-nats' continuous pull with a plain ack per message.
/// Returns its rate.
async fn raw_run(
    js: &jetstream::Context,
    n: u64,
    batch: usize,
    server: Option<u32>,
) -> Result<(f64, CpuUse), BoxError> {
    fill(js, n).await?;
    let stream = js.get_stream("BENCH").await?;
    let cpu = CpuMark::now(server);
    let sent = Sent::now(js);
    let started = Instant::now();
    let consumer: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(RAW.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await?;
    let consume = async {
        let mut acked = 0;
        while acked < n {
            match messages.next().await {
                Some(message) => {
                    message?.ack().await?;
                    acked += 1;
                }
                None => return Err(format!("the raw stream ended after {acked} of {n}").into()),
            }
        }
        js.client().flush().await?;
        Ok::<_, BoxError>(())
    };
    tokio::time::timeout(RUN_LIMIT, consume)
        .await
        .map_err(|_| format!("raw continuous: {n} messages not acked within {RUN_LIMIT:?}"))??;
    let elapsed = started.elapsed();
    let used = cpu.used(server, n);
    sent.report(js, "raw", n);
    drop(messages);
    check_all_acked(js, RAW, n).await?;
    Ok((n as f64 / elapsed.as_secs_f64(), used))
}

/// One library run: a supervisor with a continuous pull child and the
/// bench's acking target. Returns its rate, its CPU use and each
/// message's time to the target (µs).
pub(crate) async fn library_run(
    js: &jetstream::Context,
    options: &Options,
    n: u64,
    window: usize,
) -> Result<(f64, CpuUse, Vec<u32>), BoxError> {
    let server = options.server_pid;
    fill(js, n).await?;
    let (target, mut probe) = spawn_target(n).await?;
    let spec = ConsumerSpec::new(
        "BENCH",
        LIBRARY,
        TARGET,
        PullSpec::continuous().window(window as u64),
    );
    let args = SupervisorArgs::new(js.clone(), Topology::new().consumer(spec))
        .target(TARGET, super::library_target(options, &target));
    let cpu = CpuMark::now(server);
    let sent = Sent::now(js);
    let started = Instant::now();
    let (supervisor, _) = SupervisorHandle::spawn(None, args).await?;
    // The target counts, and says when it has acked every message (within
    // its own limit of 300 s).
    probe.wait_all().await?;
    js.client().flush().await?;
    let elapsed = started.elapsed();
    let used = cpu.used(server, n);
    sent.report(js, "library", n);
    check_all_acked(js, LIBRARY, n).await?;
    let latencies = probe.latencies(&target).await?;
    // Gone before the next run deletes the stream under it.
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await
        .map_err(|err| format!("stopping the supervisor: {err}"))?;
    target.stop(None);
    Ok((n as f64 / elapsed.as_secs_f64(), used, latencies))
}
