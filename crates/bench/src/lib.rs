//! Throughput, latency and memory of ractor-jetstream, measured side by side
//! with a hand-written async-nats loop doing the same work.
//!
//! Each case fills a fresh stream with `--messages` messages of 128 bytes,
//! then consumes them all with explicit acks, alternately with the raw loop
//! and with the library (raw, actor, raw, actor, ...), `--rounds` times each,
//! and reports the medians. Only the ratio of two medians measured in one
//! run means anything on a shared machine.
//!
//! - pull: `fetch().max_messages(b).expires(..)` with `ack()` per message,
//!   against a [`PullConsumer`] driven by `Fetch` calls in a loop, for each
//!   batch size `b`;
//! - push: a push consumer's `messages()` with `ack()`, against a
//!   [`PushConsumer`] with `max_in_flight` 256;
//! - restart: the time from killing a pull child under the supervisor to
//!   the next delivery at the target, median over `--crashes` crashes;
//! - keyed: a pull child feeding N keyed workers
//!   (`ConsumerSpec::pull(..).workers(N, KeySpec::SubjectToken(2))`) on 64
//!   keys, with 1 ms of (sleeping) work per message for N = 1, 4, 8, 16,
//!   and with none for N = 1 against a plain pull child; every row counts
//!   the order violations the workers saw. See the `keyed` module, and
//!   `--cases keyed` to run it alone.
//! - pipeline: one pull child whose target acks plainly, with the spec's
//!   `confirm_acks`, with `ack_confirmed().await`, or publishes each
//!   result to an output stream with `output::Output::publish_and_ack`
//!   (awaited, or in a task per delivery); each against plain acks. See the
//!   `pipeline` module, and `--cases pipeline` to run it alone.
//! - metrics (`--cases metrics`, not in the default set): pull batch 100
//!   and push with the library's metrics recorded by a Prometheus recorder,
//!   against none; see the `metrics_cost` module.
//! - continuous (`--cases continuous`, not in the default set): a
//!   continuous pull child (`PullSpec::continuous().window(W)`) under a
//!   supervisor, against async-nats' `consumer.stream()
//!   .max_messages_per_batch(W).messages()` with `ack()` per message, `W`
//!   being `--window`; see the `continuous` module.
//! - handwritten (`--cases handwritten`, not in the default set): the
//!   raw pull (each `--batches` size), push and continuous loops, the
//!   same loops sending each message to a plain ractor actor that acks it
//!   (what a ractor application writes without this library), and the
//!   library, side by side in each round; see the `handwritten` module.
//! - failover (`--cases failover`, not in the default set): how long the
//!   partitions of a member of `examples/partitioned.rs` (3 processes, 6
//!   partitions) go unprocessed when it is killed, and when it leaves on
//!   SIGTERM, over `--failovers` rounds of each; see the `failover` module.
//!
//! In the pull and push library cases the target is a trivial actor that
//! acks at once.
//!
//! Every pull, push and continuous row also says where the CPU went, per
//! message, for each side: `client_us_*` (this process, user and system),
//! `server_us_*` (the embedded nats-server) and, for pull and push,
//! `switches_*` (this process's context switches). On 2 cores the server
//! takes most of the CPU, so these tell a client that costs more CPU from
//! one that leaves the server waiting. `--side raw` or `--side library`
//! runs one side of the pull, push and continuous cases alone, for a profiler
//! (`perf record ... throughput --side library --cases pull --batches 100`).
//! `--caller task` runs every case in a spawned task instead of on the
//! thread that calls `block_on` (`--caller main`, the default): the place
//! an actor's fetch loop runs, where both sides' hand-offs to other tasks
//! stay on the runtime's own threads (and where a pull handle serves an
//! idle child's fetch in the calling task; see `consumer/pull/desk.rs`).
//! Latency is measured from a message's arrival at the child to the target
//! receiving it. Peak RSS is this process's (the server is another one),
//! reset before each measured run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_jetstream::{
    ConsumerArgs, ConsumerMsg, ConsumerSpec, Deliveries, Delivery, JetStreamSupervisor,
    PullConsumer, PushConsumer, PushSpec, RestartPolicy, SupervisorArgs, SupervisorMsg, Topology,
};
use tokio::sync::oneshot;

mod continuous;
pub mod cpu;
mod failover;
mod handwritten;
mod keyed;
mod metrics_cost;
mod pipeline;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Messages per run (batch sizes below 100 use fewer; see
    /// [`Options::messages_for`]).
    pub messages: u64,
    /// Runs per side per case.
    pub rounds: usize,
    /// Pull batch sizes.
    pub batches: Vec<usize>,
    /// The push window.
    pub window: usize,
    /// Crashes for the restart case.
    pub crashes: usize,
    /// The keyed case's fetch batch (and its plain pull baseline's).
    pub keyed_batch: usize,
    /// The keyed case's messages per worker in its 1 ms rows (workers=16
    /// runs on 16 times as many as workers=1).
    pub keyed_messages: u64,
    /// Rounds of each kind of stop in the failover case.
    pub failovers: usize,
    /// Which cases: any of `pull`, `push`, `restart`, `keyed`, `handwritten`,
    /// `pipeline`, `metrics`, `continuous`, `failover`.
    pub cases: Vec<String>,
    /// Where the table and the plot go.
    pub out_dir: PathBuf,
    /// Which side of the pull, push and continuous cases runs: `both` (the default),
    /// or only `raw` or `library`, to profile one side alone (`--side`).
    pub side: Side,
    /// Where the cases run: on the `block_on` thread (`main`, the
    /// default) or in a spawned task (`task`); `--caller`.
    pub caller: Caller,
    /// Whether the library's target in the pull, push, continuous and
    /// handwritten cases takes one delivery per message (`each`, the
    /// default) or batches (`batches`: `Target::batches`); `--target`.
    pub batch_target: bool,
    /// The embedded nats-server's pid (set by [`run`], not a flag), for
    /// the CPU figures.
    pub server_pid: Option<u32>,
}

/// Where the cases run (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// On the thread that calls `block_on`, outside any task.
    Main,
    /// In a task spawned on the runtime, as an actor's handler would be.
    Task,
}

/// Which side of a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Raw and library, interleaved.
    Both,
    /// Only the raw async-nats loop.
    Raw,
    /// Only the library.
    Library,
}

impl Side {
    fn raw(self) -> bool {
        self != Side::Library
    }

    fn library(self) -> bool {
        self != Side::Raw
    }
}

/// The payload size of every message.
pub const PAYLOAD: usize = 128;

impl Options {
    /// Parses `--messages N --rounds R --batches 1,10,100,500 --window W
    /// --crashes C --keyed-batch B --keyed-messages M --failovers K
    /// --cases pull,push,restart,keyed,pipeline --out DIR --side both
    /// --caller main`. Unknown
    /// arguments (such as the `--bench` that `cargo bench` passes) are
    /// ignored.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            messages: 100_000,
            rounds: 3,
            batches: vec![1, 10, 100, 500],
            window: 256,
            crashes: 20,
            keyed_batch: 500,
            keyed_messages: 1_000,
            failovers: 5,
            cases: vec![
                "pull".into(),
                "push".into(),
                "restart".into(),
                "keyed".into(),
                "pipeline".into(),
            ],
            out_dir: default_out_dir(),
            server_pid: None,
            side: Side::Both,
            caller: Caller::Main,
            batch_target: false,
        };
        let mut args = args.peekable();
        while let Some(flag) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            let number = |name: &str, v: String| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name} must be a positive integer, got {v:?}"))
            };
            match flag.as_str() {
                "--messages" => options.messages = number(&flag, value(&flag)?)?,
                "--rounds" => options.rounds = number(&flag, value(&flag)?)? as usize,
                "--window" => options.window = number(&flag, value(&flag)?)? as usize,
                "--crashes" => options.crashes = number(&flag, value(&flag)?)? as usize,
                "--keyed-batch" => options.keyed_batch = number(&flag, value(&flag)?)? as usize,
                "--keyed-messages" => options.keyed_messages = number(&flag, value(&flag)?)?,
                "--failovers" => options.failovers = number(&flag, value(&flag)?)? as usize,
                "--batches" => {
                    options.batches = value(&flag)?
                        .split(',')
                        .map(|b| number("--batches", b.to_string()).map(|n| n as usize))
                        .collect::<Result<_, _>>()?
                }
                "--cases" => options.cases = value(&flag)?.split(',').map(str::to_string).collect(),
                "--out" => options.out_dir = PathBuf::from(value(&flag)?),
                "--caller" => {
                    options.caller = match value(&flag)?.as_str() {
                        "main" => Caller::Main,
                        "task" => Caller::Task,
                        other => {
                            return Err(format!("--caller takes main or task, got {other:?}"));
                        }
                    }
                }
                "--target" => {
                    options.batch_target = match value(&flag)?.as_str() {
                        "each" => false,
                        "batches" => true,
                        other => {
                            return Err(format!("--target takes each or batches, got {other:?}"));
                        }
                    }
                }
                "--side" => {
                    options.side = match value(&flag)?.as_str() {
                        "both" => Side::Both,
                        "raw" => Side::Raw,
                        "library" => Side::Library,
                        other => {
                            return Err(format!(
                                "--side takes both, raw or library, got {other:?}"
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(options)
    }

    /// Messages for one run of a pull case: small batches are slow (one
    /// round trip per batch), so they run on fewer messages.
    pub fn messages_for(&self, batch: usize) -> u64 {
        match batch {
            1 => self.messages.min(20_000),
            2..=10 => self.messages.min(50_000),
            _ => self.messages,
        }
    }
}

fn default_out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            manifest.join("../../target")
        });
    target.join("bench")
}

/// One line of results.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// `pull` or `push`.
    pub mode: &'static str,
    /// Batch size (pull) or window (push).
    pub size: usize,
    /// Messages per run.
    pub messages: u64,
    /// Median raw throughput.
    pub raw: f64,
    /// Median library throughput.
    pub actor: f64,
    /// Median latency from arrival at the child to the target, µs.
    pub p50_us: f64,
    /// 99th percentile of the same.
    pub p99_us: f64,
    /// Largest peak RSS of the library runs, MiB.
    pub peak_rss_mib: f64,
    /// Largest number of unsettled deliveries seen at once.
    pub max_in_flight: u64,
    /// Median of the per-round ratios (each round's library run against
    /// the raw run just before it, which share the machine's state).
    pub paired_ratio: f64,
    /// Median CPU and context switches per message of the raw runs.
    pub raw_cpu: cpu::CpuUse,
    /// The same for the library runs.
    pub actor_cpu: cpu::CpuUse,
}

impl CaseResult {
    fn ratio(&self) -> f64 {
        self.actor / self.raw
    }

    fn line(&self) -> String {
        let size = if self.mode == "pull" {
            "batch"
        } else {
            "window"
        };
        format!(
            "RESULT mode={} {size}={} raw_msgs_per_s={:.0} actor_msgs_per_s={:.0} ratio={:.3} p50_us={:.1} p99_us={:.1} peak_rss_mib={:.1} max_in_flight={} messages={} paired_ratio={:.3} client_us_raw={:.2} client_us_actor={:.2} server_us_raw={:.2} server_us_actor={:.2} switches_raw={:.2} switches_actor={:.2}",
            self.mode,
            self.size,
            self.raw,
            self.actor,
            self.ratio(),
            self.p50_us,
            self.p99_us,
            self.peak_rss_mib,
            self.max_in_flight,
            self.messages,
            self.paired_ratio,
            self.raw_cpu.client_us,
            self.actor_cpu.client_us,
            self.raw_cpu.server_us,
            self.actor_cpu.server_us,
            self.raw_cpu.switches,
            self.actor_cpu.switches,
        )
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Runs every selected case, prints one `RESULT` line per case, and writes
/// the table and the plot.
pub async fn run(options: Options) -> Result<(), BoxError> {
    if fail::has_failpoints() {
        // `cargo bench` from the top level builds the test package too, and
        // cargo unifies its features: the library then evaluates a failpoint
        // (a lock and a lookup) once or twice per message.
        eprintln!(
            "throughput: note: the library was built with its failpoints (the tests' `fault-injection` feature); \
             `cargo bench -p ractor-jetstream-bench --bench throughput` measures it as applications build it"
        );
    }
    match options.caller {
        Caller::Main => run_cases(options).await,
        Caller::Task => tokio::spawn(run_cases(options)).await?,
    }
}

async fn run_cases(mut options: Options) -> Result<(), BoxError> {
    // The server: NATS_URL, or an embedded one with file storage.
    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_harness::NatsServer::start().await?;
            let url = server.url();
            options.server_pid = server.pid();
            (Some(server), url)
        }
    };
    let client = async_nats::connect(&url).await?;
    let js = jetstream::new(client.clone());
    let mut results = Vec::new();
    if options.cases.iter().any(|c| c == "pull") {
        for &batch in &options.batches {
            let result = pull_case(&js, &options, batch).await?;
            println!("{}", result.line());
            results.push(result);
        }
    }
    if options.cases.iter().any(|c| c == "push") {
        let result = push_case(&js, &options).await?;
        println!("{}", result.line());
        results.push(result);
    }
    let mut restart = None;
    if options.cases.iter().any(|c| c == "restart") {
        let median = restart_case(&js, &options).await?;
        println!(
            "RESULT mode=restart median_ms={median:.1} crashes={}",
            options.crashes
        );
        restart = Some(median);
    }
    let mut keyed_rows = Vec::new();
    if options.cases.iter().any(|c| c == "keyed") {
        keyed_rows = keyed::keyed_case(&js, &options).await?;
        for row in &keyed_rows {
            println!("{}", row.line());
        }
    }
    let mut pipeline_rows = Vec::new();
    if options.cases.iter().any(|c| c == "pipeline") {
        pipeline_rows = pipeline::pipeline_case(&js, &options).await?;
        for row in &pipeline_rows {
            println!("{}", row.line());
        }
    }
    if options.cases.iter().any(|c| c == "continuous") {
        let row = continuous::continuous_case(&js, &options).await?;
        println!("{}", row.line());
    }
    if options.cases.iter().any(|c| c == "handwritten") {
        handwritten::handwritten_case(&js, &options).await?;
    }
    if options.cases.iter().any(|c| c == "failover") {
        for row in failover::failover_case(&options).await? {
            println!("{}", row.line());
        }
    }
    // Last: it installs the process's one metrics recorder.
    if options.cases.iter().any(|c| c == "metrics") {
        for row in metrics_cost::metrics_case(&js, &options).await? {
            for line in row.lines() {
                println!("{line}");
            }
        }
    }
    write_reports(&options, &results, restart, &keyed_rows, &pipeline_rows)?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The actors and probes of one library run.
struct ActorRun {
    child: ActorRef<ConsumerMsg>,
    target: ActorRef<TargetMsg>,
    probe: Probe,
    sampler: InFlightSampler,
    /// What the run used, per message.
    cpu: cpu::CpuUse,
}

impl ActorRun {
    /// Ends a run: stops the sampler, checks the server saw every one of
    /// the `n` acks, stops the actors. Returns the most deliveries the
    /// sampler saw unsettled at once.
    async fn finish(self, js: &jetstream::Context, n: u64) -> Result<u64, BoxError> {
        let max_in_flight = self.sampler.stop().await;
        check_all_acked(js, "actor", n).await?;
        self.child.stop(None);
        self.target.stop(None);
        Ok(max_in_flight)
    }
}

/// What the rounds of one case measured.
#[derive(Default)]
struct Rounds {
    raw: Vec<f64>,
    actor: Vec<f64>,
    latencies: Vec<u32>,
    peak: f64,
    max_in_flight: u64,
    raw_cpu: Vec<cpu::CpuUse>,
    actor_cpu: Vec<cpu::CpuUse>,
}

impl Rounds {
    /// Records a raw run that took `elapsed` for `n` messages and used
    /// `cpu`.
    fn raw_run(&mut self, n: u64, elapsed: Duration, cpu: cpu::CpuUse) {
        self.raw.push(n as f64 / elapsed.as_secs_f64());
        self.raw_cpu.push(cpu);
    }

    /// Records a library run that took `elapsed` for `n` messages, collects
    /// its latencies, memory and window, checks the server saw every ack,
    /// and stops its actors.
    async fn finish_actor_run(
        &mut self,
        label: &str,
        js: &jetstream::Context,
        n: u64,
        elapsed: Duration,
        run: ActorRun,
    ) -> Result<(), BoxError> {
        self.actor.push(n as f64 / elapsed.as_secs_f64());
        self.actor_cpu.push(run.cpu);
        let (raw, actor) = (
            self.raw_cpu.last().copied().unwrap_or_default(),
            self.actor_cpu.last().copied().unwrap_or_default(),
        );
        eprintln!(
            "round: {label} raw={:.0} actor={:.0} client_us raw={:.2} actor={:.2} server_us raw={:.2} actor={:.2} switches raw={:.2} actor={:.2}",
            self.raw.last().copied().unwrap_or_default(),
            self.actor.last().copied().unwrap_or_default(),
            raw.client_us,
            actor.client_us,
            raw.server_us,
            actor.server_us,
            raw.switches,
            actor.switches,
        );
        self.peak = self.peak.max(peak_rss_mib());
        self.latencies
            .extend(run.probe.latencies(&run.target).await?);
        self.max_in_flight = self.max_in_flight.max(run.finish(js, n).await?);
        Ok(())
    }

    fn result(mut self, mode: &'static str, size: usize, messages: u64) -> CaseResult {
        let (p50_us, p99_us) = percentiles(&mut self.latencies);
        let mut paired: Vec<f64> = self
            .actor
            .iter()
            .zip(&self.raw)
            .map(|(a, r)| a / r)
            .collect();
        CaseResult {
            mode,
            size,
            messages,
            raw_cpu: cpu::CpuUse::median(&self.raw_cpu),
            actor_cpu: cpu::CpuUse::median(&self.actor_cpu),
            paired_ratio: median(&mut paired),
            raw: median(&mut self.raw),
            actor: median(&mut self.actor),
            p50_us,
            p99_us,
            peak_rss_mib: self.peak,
            max_in_flight: self.max_in_flight,
        }
    }
}

async fn pull_case(
    js: &jetstream::Context,
    options: &Options,
    batch: usize,
) -> Result<CaseResult, BoxError> {
    let n = options.messages_for(batch);
    let mut rounds = Rounds::default();
    for _ in 0..options.rounds {
        if options.side.raw() {
            fill(js, n).await?;
            let stream = js.get_stream("BENCH").await?;
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some("raw".into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ..Default::default()
                })
                .await?;
            reset_peak_rss();
            let cpu = cpu::CpuMark::now(options.server_pid);
            let started = Instant::now();
            let mut done = 0;
            while done < n {
                let mut messages = consumer
                    .fetch()
                    .max_messages(batch)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await?;
                while let Some(message) = messages.next().await {
                    message?.ack().await?;
                    done += 1;
                }
            }
            js.client().flush().await?;
            rounds.raw_run(n, started.elapsed(), cpu.used(options.server_pid, n));
            check_all_acked(js, "raw", n).await?;
        }
        if options.side.library() {
            let (elapsed, run) = pull_library(js, options, n, batch).await?;
            let label = format!("pull batch={batch}");
            rounds.finish_actor_run(&label, js, n, elapsed, run).await?;
        }
    }
    Ok(rounds.result("pull", batch, n))
}

/// One library run of the pull case: a pull child fetched from `batch` at
/// a time until `n` messages were delivered.
async fn pull_library(
    js: &jetstream::Context,
    options: &Options,
    n: u64,
    batch: usize,
) -> Result<(Duration, ActorRun), BoxError> {
    fill(js, n).await?;
    let (target, probe) = spawn_target(n).await?;
    let spec = ConsumerSpec::pull("BENCH", "actor", "bench");
    let child = spawn_pull_child(js, spec, library_target(options, &target)).await?;
    reset_peak_rss();
    let sampler = InFlightSampler::start(child.clone());
    let cpu = cpu::CpuMark::now(options.server_pid);
    let elapsed = fetch_all(js, "actor", &child, n, batch).await?;
    let cpu = cpu.used(options.server_pid, n);
    let run = ActorRun {
        child,
        target,
        probe,
        sampler,
        cpu,
    };
    Ok((elapsed, run))
}

async fn push_case(js: &jetstream::Context, options: &Options) -> Result<CaseResult, BoxError> {
    let n = options.messages;
    let mut rounds = Rounds::default();
    for _ in 0..options.rounds {
        if options.side.raw() {
            fill(js, n).await?;
            let stream = js.get_stream("BENCH").await?;
            let deliver = js.client().new_inbox();
            let consumer: consumer::PushConsumer = stream
                .create_consumer(consumer::push::Config {
                    durable_name: Some("raw".into()),
                    deliver_subject: deliver,
                    ack_policy: consumer::AckPolicy::Explicit,
                    flow_control: true,
                    idle_heartbeat: Duration::from_secs(5),
                    ..Default::default()
                })
                .await?;
            reset_peak_rss();
            let cpu = cpu::CpuMark::now(options.server_pid);
            let started = Instant::now();
            let mut messages = consumer.messages().await?;
            let mut done = 0;
            while done < n {
                match messages.next().await {
                    Some(message) => {
                        message?.ack().await?;
                        done += 1;
                    }
                    None => return Err("push subscription ended".into()),
                }
            }
            js.client().flush().await?;
            rounds.raw_run(n, started.elapsed(), cpu.used(options.server_pid, n));
            drop(messages);
            check_all_acked(js, "raw", n).await?;
        }
        if options.side.library() {
            let (elapsed, run) = push_library(js, options, n, options.window).await?;
            let label = format!("push window={}", options.window);
            rounds.finish_actor_run(&label, js, n, elapsed, run).await?;
        }
    }
    Ok(rounds.result("push", options.window, n))
}

/// One library run of the push case: a push child with `window` until its
/// target has acked `n` messages.
async fn push_library(
    js: &jetstream::Context,
    options: &Options,
    n: u64,
    window: usize,
) -> Result<(Duration, ActorRun), BoxError> {
    fill(js, n).await?;
    let (target, mut probe) = spawn_target(n).await?;
    reset_peak_rss();
    let cpu = cpu::CpuMark::now(options.server_pid);
    let started = Instant::now();
    let child = spawn_push_child_to(js, "actor", window, library_target(options, &target)).await?;
    let sampler = InFlightSampler::start(child.clone());
    probe.wait_all().await?;
    js.client().flush().await?;
    let elapsed = started.elapsed();
    let cpu = cpu.used(options.server_pid, n);
    let run = ActorRun {
        child,
        target,
        probe,
        sampler,
        cpu,
    };
    Ok((elapsed, run))
}

/// The time from killing a pull child to the next delivery, median over
/// `--crashes` crashes. The supervisor restarts at once (no backoff, so that
/// the figure is the mechanism's, not the policy's).
async fn restart_case(js: &jetstream::Context, options: &Options) -> Result<f64, BoxError> {
    fill(js, 1_000_000.min(options.messages * 10)).await?;
    // Every delivery's time: the probe waits for the first one after a
    // crash.
    let (target, probe) = spawn_target_noting(u64::MAX, 1).await?;
    let topology = Topology::new().consumer(ConsumerSpec::pull("BENCH", "restart", "bench"));
    let policy = RestartPolicy {
        max_restarts: 10_000,
        initial_backoff: Duration::ZERO,
        jitter: 0.0,
        ..RestartPolicy::default()
    };
    let args = SupervisorArgs::new(js.clone(), topology)
        .target("bench", target.get_derived())
        .restart_policy(policy);
    let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args).await?;
    let fetching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fetcher = {
        let (supervisor, fetching) = (supervisor.clone(), fetching.clone());
        tokio::spawn(async move {
            while fetching.load(Ordering::Relaxed) {
                let _ = supervisor
                    .call(
                        |reply| SupervisorMsg::Fetch {
                            durable: "restart".into(),
                            batch: 10,
                            expires: Some(Duration::from_millis(200)),
                            reply,
                        },
                        Some(Duration::from_secs(10)),
                    )
                    .await;
            }
        })
    };
    let mut samples = Vec::new();
    for _ in 0..options.crashes {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let child = match supervisor
            .call(
                |reply| SupervisorMsg::Lookup {
                    durable: "restart".into(),
                    reply,
                },
                None,
            )
            .await?
        {
            ractor::rpc::CallResult::Success(Some(child)) => child,
            other => return Err(format!("no child to crash: {other:?}").into()),
        };
        let crashed = Instant::now();
        child.kill();
        let resumed = probe.next_after(crashed, Duration::from_secs(10)).await?;
        samples.push(resumed.duration_since(crashed).as_secs_f64() * 1000.0);
    }
    fetching.store(false, Ordering::Relaxed);
    let _ = fetcher.await;
    supervisor.stop(None);
    target.stop(None);
    Ok(median(&mut samples))
}

/// Deletes and re-creates the stream, and publishes `n` messages of
/// [`PAYLOAD`] bytes to `bench.data`.
async fn fill(js: &jetstream::Context, n: u64) -> Result<(), BoxError> {
    let subject = async_nats::Subject::from_static("bench.data");
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    fill_with(js, n, |_| (subject.clone(), payload.clone())).await
}

/// Deletes and re-creates the stream (`bench.>`), and publishes `n`
/// messages into it: the `i`-th (from 0) is `message(i)`, its subject and
/// payload.
async fn fill_with(
    js: &jetstream::Context,
    n: u64,
    message: impl Fn(u64) -> (async_nats::Subject, bytes::Bytes),
) -> Result<(), BoxError> {
    let _ = js.delete_stream("BENCH").await;
    js.create_stream(stream::Config {
        name: "BENCH".into(),
        subjects: vec!["bench.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let mut pending = Vec::with_capacity(1024);
    for i in 0..n {
        let (subject, payload) = message(i);
        pending.push(js.publish(subject, payload).await?);
        if pending.len() == 1024 || i + 1 == n {
            for ack in pending.drain(..) {
                ack.await?;
            }
        }
    }
    Ok(())
}

/// Spawns a pull child of its own (no supervisor) for `spec`, feeding
/// `target`.
async fn spawn_pull_child(
    js: &jetstream::Context,
    spec: ConsumerSpec,
    target: ractor_jetstream::Target,
) -> Result<ActorRef<ConsumerMsg>, BoxError> {
    let (child, _) = Actor::spawn(
        None,
        PullConsumer,
        ConsumerArgs {
            connection: js.clone().into(),
            spec,
            target,
        },
    )
    .await?;
    Ok(child)
}

/// The library's target in a run: the bench's target, taking one
/// delivery per message or, with `--target batches`, batches.
fn library_target(options: &Options, target: &ActorRef<TargetMsg>) -> ractor_jetstream::Target {
    if options.batch_target {
        ractor_jetstream::Target::batches(target.get_derived())
    } else {
        target.get_derived().into()
    }
}

/// Spawns a push child of its own (no supervisor) on the durable
/// `durable` with `window`, feeding `target`: it starts consuming at once.
async fn spawn_push_child(
    js: &jetstream::Context,
    durable: &str,
    window: usize,
    target: &ActorRef<TargetMsg>,
) -> Result<ActorRef<ConsumerMsg>, BoxError> {
    spawn_push_child_to(js, durable, window, target.get_derived().into()).await
}

/// [`spawn_push_child`] with any kind of target.
async fn spawn_push_child_to(
    js: &jetstream::Context,
    durable: &str,
    window: usize,
    target: ractor_jetstream::Target,
) -> Result<ActorRef<ConsumerMsg>, BoxError> {
    let spec = ConsumerSpec::new(
        "BENCH",
        durable,
        "bench",
        PushSpec::default().window(window as u64),
    );
    let (child, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            connection: js.clone().into(),
            spec,
            target,
        },
    )
    .await?;
    Ok(child)
}

/// Fetches `batch` at a time from `child` until `n` messages were
/// delivered, then flushes the connection; returns the time from the first
/// fetch to the flush. A fetch answers once every message it delivered is
/// settled, so by then every one was acked.
async fn fetch_all(
    js: &jetstream::Context,
    durable: &str,
    child: &ActorRef<ConsumerMsg>,
    n: u64,
    batch: usize,
) -> Result<Duration, BoxError> {
    // The path a user gets: a pull handle on the child.
    let pull = ractor_jetstream::PullHandle::from_child(durable, child.clone());
    let started = Instant::now();
    let mut delivered = 0u64;
    while delivered < n {
        let outcome = pull
            .fetch(batch as u64, Some(Duration::from_secs(1)))
            .await?;
        delivered += outcome.delivered;
    }
    js.client().flush().await?;
    Ok(started.elapsed())
}

async fn check_all_acked(js: &jetstream::Context, durable: &str, n: u64) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = js.get_stream("BENCH").await?.consumer_info(durable).await?;
        if info.ack_floor.stream_sequence == n && info.num_ack_pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{durable}: the server shows ack floor {} and {} unacked, expected {n} and 0",
                info.ack_floor.stream_sequence, info.num_ack_pending
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The trivial target: acks at once, notes the latency.
struct Target;

/// The target's messages.
#[allow(clippy::large_enum_variant)] // ractor boxes every message anyway
pub enum TargetMsg {
    /// A delivery.
    Delivery(Delivery),
    /// Deliveries, with `--target batches`.
    Batch(Deliveries),
    /// Hand over the recorded latencies (µs).
    Latencies(RpcReplyPort<Vec<u32>>),
}

impl From<Delivery> for TargetMsg {
    fn from(delivery: Delivery) -> Self {
        TargetMsg::Delivery(delivery)
    }
}

impl From<Deliveries> for TargetMsg {
    fn from(batch: Deliveries) -> Self {
        TargetMsg::Batch(batch)
    }
}

impl TryFrom<TargetMsg> for Deliveries {
    type Error = TargetMsg;
    fn try_from(msg: TargetMsg) -> Result<Self, TargetMsg> {
        match msg {
            TargetMsg::Batch(batch) => Ok(batch),
            other => Err(other),
        }
    }
}

impl TryFrom<TargetMsg> for Delivery {
    type Error = TargetMsg;
    fn try_from(msg: TargetMsg) -> Result<Self, TargetMsg> {
        match msg {
            TargetMsg::Delivery(delivery) => Ok(delivery),
            other => Err(other),
        }
    }
}

struct TargetState {
    expected: u64,
    received: u64,
    /// Deliveries seen, for the sampling.
    noted: u64,
    /// Every how many deliveries the latency (a clock read) is noted.
    sample_every: u64,
    latencies: Vec<u32>,
    done: Option<oneshot::Sender<()>>,
    last_received: Arc<AtomicU64>,
    epoch: Instant,
}

impl TargetState {
    /// Notes the latency of every `sample_every`-th delivery, acks it,
    /// counts it.
    fn take(&mut self, delivery: Delivery) {
        self.note(&delivery);
        delivery.ack();
        self.count(1);
    }

    /// Notes the batch's latencies as `take` does, acks it whole (as a
    /// batch target does), counts it.
    fn take_batch(&mut self, batch: Deliveries) {
        for delivery in batch.iter() {
            self.note(delivery);
        }
        let n = batch.len() as u64;
        batch.ack_all();
        self.count(n);
    }

    /// Notes the latency of every `sample_every`-th delivery.
    fn note(&mut self, delivery: &Delivery) {
        self.noted += 1;
        if !(self.noted - 1).is_multiple_of(self.sample_every) {
            return;
        }
        let now = Instant::now();
        let waited = now.saturating_duration_since(delivery.received_at());
        if self.latencies.len() < 2_000_000 {
            self.latencies
                .push(waited.as_micros().min(u128::from(u32::MAX)) as u32);
        }
        self.last_received.store(
            now.duration_since(self.epoch).as_nanos() as u64,
            Ordering::Relaxed,
        );
    }

    /// Counts `n` acked deliveries; says so when all expected are.
    fn count(&mut self, n: u64) {
        self.received += n;
        if self.received >= self.expected
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
    }
}

impl Actor for Target {
    type Msg = TargetMsg;
    type State = TargetState;
    type Arguments = TargetState;

    async fn pre_start(
        &self,
        _: ActorRef<TargetMsg>,
        state: TargetState,
    ) -> Result<TargetState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<TargetMsg>,
        msg: TargetMsg,
        state: &mut TargetState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TargetMsg::Delivery(delivery) => state.take(delivery),
            TargetMsg::Batch(batch) => state.take_batch(batch),
            TargetMsg::Latencies(reply) => {
                let _ = reply.send(std::mem::take(&mut state.latencies));
            }
        }
        Ok(())
    }
}

/// The bench's view of a target.
struct Probe {
    done: Option<oneshot::Receiver<()>>,
    last_received: Arc<AtomicU64>,
    epoch: Instant,
}

impl Probe {
    /// Waits until the target has received every expected delivery.
    async fn wait_all(&mut self) -> Result<(), BoxError> {
        let done = self.done.take().ok_or("already waited")?;
        tokio::time::timeout(Duration::from_secs(300), done)
            .await
            .map_err(|_| "the target did not receive everything in 300 s")?
            .map_err(|_| "the target stopped early")?;
        Ok(())
    }

    async fn latencies(&self, target: &ActorRef<TargetMsg>) -> Result<Vec<u32>, BoxError> {
        match target
            .call(TargetMsg::Latencies, Some(Duration::from_secs(10)))
            .await?
        {
            ractor::rpc::CallResult::Success(latencies) => Ok(latencies),
            other => Err(format!("latencies: {other:?}").into()),
        }
    }

    /// Waits for the first delivery received after `after`.
    async fn next_after(&self, after: Instant, timeout: Duration) -> Result<Instant, BoxError> {
        let deadline = Instant::now() + timeout;
        loop {
            let at = self.epoch + Duration::from_nanos(self.last_received.load(Ordering::Relaxed));
            if at > after {
                return Ok(at);
            }
            if Instant::now() > deadline {
                return Err("no delivery after the crash".into());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

/// The bench's target, noting the latency of one delivery in
/// [`LATENCY_EVERY`]: the raw loops read no clock per message, so the
/// library's side should not pay one for the bench's own figures.
async fn spawn_target(expected: u64) -> Result<(ActorRef<TargetMsg>, Probe), BoxError> {
    spawn_target_noting(expected, LATENCY_EVERY).await
}

/// Every how many deliveries the bench's target notes a latency.
const LATENCY_EVERY: u64 = 16;

/// The bench's target, noting the latency (and the time) of every
/// `sample_every`-th delivery.
async fn spawn_target_noting(
    expected: u64,
    sample_every: u64,
) -> Result<(ActorRef<TargetMsg>, Probe), BoxError> {
    let (tx, rx) = oneshot::channel();
    let last_received = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let sample_every = sample_every.max(1);
    let state = TargetState {
        expected,
        received: 0,
        noted: 0,
        sample_every,
        latencies: Vec::with_capacity((expected / sample_every + 1).min(2_000_000) as usize),
        done: Some(tx),
        last_received: last_received.clone(),
        epoch,
    };
    let (target, _) = Actor::spawn(None, Target, state).await?;
    Ok((
        target,
        Probe {
            done: Some(rx),
            last_received,
            epoch,
        },
    ))
}

/// How often the sampler asks a child for its stats. Each ask is a call
/// to the child that the raw side does not pay for, so it is kept rare
/// enough not to weigh on the library's figures (every 2 ms cost about 3 %
/// of pull batch 100's rate), and frequent enough to see the window fill.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// Samples a child's unsettled deliveries every [`SAMPLE_EVERY`].
struct InFlightSampler {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl InFlightSampler {
    fn start(child: ActorRef<ConsumerMsg>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut max = 0;
            loop {
                if let Ok(ractor::rpc::CallResult::Success(stats)) = child
                    .call(ConsumerMsg::Stats, Some(Duration::from_secs(1)))
                    .await
                {
                    max = max.max(stats.in_flight);
                }
                tokio::select! {
                    _ = &mut stopped => return max,
                    _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                }
            }
        });
        Self { stop, task }
    }

    async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

fn percentiles(values: &mut [u32]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_unstable();
    let at = |q: f64| f64::from(values[((values.len() - 1) as f64 * q) as usize]);
    (at(0.5), at(0.99))
}

/// Resets the process's peak RSS (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last reset, in MiB (`VmHWM`).
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

fn write_reports(
    options: &Options,
    results: &[CaseResult],
    restart: Option<f64>,
    keyed_rows: &[keyed::KeyedRow],
    pipeline_rows: &[pipeline::PipelineRow],
) -> Result<(), BoxError> {
    std::fs::create_dir_all(&options.out_dir)?;
    let mut table = String::new();
    writeln!(
        table,
        "Machine: {}; nats-server on loopback, file storage; {PAYLOAD}-byte messages; median of {} interleaved runs per side.",
        machine(),
        options.rounds
    )?;
    if !results.is_empty() {
        writeln!(table)?;
        writeln!(
            table,
            "| case | messages | raw async-nats msg/s | ractor-jetstream msg/s | ratio | paired ratio | p50 µs | p99 µs | peak RSS MiB | max in flight |"
        )?;
        writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    }
    for r in results {
        let case = if r.mode == "pull" {
            format!("pull, batch {}", r.size)
        } else {
            format!("push, window {}", r.size)
        };
        writeln!(
            table,
            "| {case} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {} |",
            r.messages,
            r.raw,
            r.actor,
            r.ratio(),
            r.paired_ratio,
            r.p50_us,
            r.p99_us,
            r.peak_rss_mib,
            r.max_in_flight
        )?;
    }
    if let Some(median) = restart {
        writeln!(table)?;
        writeln!(
            table,
            "Restart to resume (kill a pull child, next delivery at the target): median {median:.1} ms over {} crashes.",
            options.crashes
        )?;
    }
    if !keyed_rows.is_empty() {
        writeln!(table)?;
        keyed::write_table(&mut table, options, keyed_rows)?;
    }
    if !pipeline_rows.is_empty() {
        writeln!(table)?;
        pipeline::write_table(&mut table, options, pipeline_rows)?;
    }
    let table_path = options.out_dir.join("throughput.md");
    std::fs::write(&table_path, &table)?;
    println!("wrote {}", table_path.display());
    let pulls: Vec<&CaseResult> = results.iter().filter(|r| r.mode == "pull").collect();
    if !pulls.is_empty() {
        let plot_path = options.out_dir.join("throughput.svg");
        plot(
            &plot_path,
            &pulls,
            results.iter().find(|r| r.mode == "push"),
        )?;
        println!("wrote {}", plot_path.display());
    }
    Ok(())
}

fn plot(path: &Path, pulls: &[&CaseResult], push: Option<&CaseResult>) -> Result<(), BoxError> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_batch = pulls.iter().map(|r| r.size).max().unwrap_or(1) as f64 * 1.5;
    let max_rate = pulls
        .iter()
        .flat_map(|r| [r.raw, r.actor])
        .chain(push.iter().flat_map(|r| [r.raw, r.actor]))
        .fold(1.0, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Pull: msg/s against batch size (push shown at right, dashed)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8f64..max_batch).log_scale(), 0f64..max_rate)?;
    chart
        .configure_mesh()
        .x_desc("batch size (log scale)")
        .y_desc("messages per second")
        .draw()?;
    let raw: Vec<(f64, f64)> = pulls.iter().map(|r| (r.size as f64, r.raw)).collect();
    let actor: Vec<(f64, f64)> = pulls.iter().map(|r| (r.size as f64, r.actor)).collect();
    chart
        .draw_series(LineSeries::new(raw.clone(), BLUE.stroke_width(2)))?
        .label("raw async-nats")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart.draw_series(raw.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))?;
    chart
        .draw_series(LineSeries::new(actor.clone(), RED.stroke_width(2)))?
        .label("ractor-jetstream")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart.draw_series(actor.iter().map(|p| Circle::new(*p, 4, RED.filled())))?;
    if let Some(push) = push {
        for (rate, color) in [(push.raw, BLUE), (push.actor, RED)] {
            chart.draw_series(DashedLineSeries::new(
                vec![(0.8, rate), (max_batch, rate)],
                6,
                4,
                color.stroke_width(1),
            ))?;
        }
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    root.present()?;
    Ok(())
}
