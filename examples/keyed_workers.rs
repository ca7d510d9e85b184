//! Keyed workers: N worker actors behind one durable consumer, the messages
//! of each key handled one at a time and in stream order, different keys in
//! parallel.
//!
//! The key is one token of the subject (`--key-token 1` keys
//! `orders.42.created` by `42`). The consumer child hands each key to one
//! worker at a time; this example checks, from what the workers
//! see, that the order holds: a message of a key is never worked on while
//! an earlier message of that key is still unacknowledged here, nor after a
//! later one was acked. Work is a sleep of `--work-ms` (the shape of
//! I/O-bound work). With `--record FILE`, each processed message appends
//! `KEY STREAM_SEQ` to the file, flushed before the ack: a kill between the
//! write and the ack leaves a duplicate line, never a gap.
//!
//! ```text
//! cargo run --release --example keyed_workers -- --stream NAME --subjects SUBJ[,SUBJ..] --durable NAME \
//!   --workers N --key-token I --work-ms W [--mode pull|push] [--batch B] [--max-messages M] \
//!   [--idle-exit-ms MS] [--record FILE] [--nak-every K] [--metrics-addr HOST:PORT]
//! ```
//!
//! With `--metrics-addr`, the library's metrics (see the `telemetry`
//! module) are served as Prometheus text at `http://HOST:PORT/metrics`
//! for as long as it runs, the consumer's lag included.
//!
//! It uses the server at `NATS_URL`, or starts an embedded one when that is
//! unset. It uses the stream if it exists, and creates it otherwise. The
//! durable has explicit acks and a `max_ack_pending` of twice the batch (at
//! least 256); an existing durable keeps its `ack_wait`. In pull mode it
//! fetches `--batch` messages at a time (default 100); in push mode the
//! server pushes (`--batch` only sizes `max_ack_pending`). `--nak-every K`
//! nak's every K-th message received for the first time, to show that a
//! nak keeps its key's order. It stops after `--max-messages` acks, after
//! `--idle-exit-ms` without a message processed, or on Ctrl-C; then it
//! drains the supervisor and prints, as its last line,
//! `keyed_workers: delivered=D acked=A naked=N workers=W keys=K max_parallel=P order_violations=V`.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::GetStreamErrorKind};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::spec::{DEFAULT_MAX_IN_FLIGHT, MAX_WORKERS};
use ractor_jetstream::{
    ConsumerSpec, Delivery, KeySpec, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
    Workers,
};

/// The name the workers are registered under with the supervisor.
const TARGET: &str = "keyed-workers";
/// How long one fetch waits on the server for messages.
const FETCH_EXPIRES: Duration = Duration::from_millis(500);
/// How long the final drain waits for the workers' decisions.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: keyed_workers --stream NAME --subjects SUBJ[,SUBJ..] --durable NAME \
--workers N --key-token I --work-ms W [--mode pull|push] [--batch B] [--max-messages M] \
[--idle-exit-ms MS] [--record FILE] [--nak-every K] [--metrics-addr HOST:PORT]";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pull,
    Push,
}

/// The command line, validated before anything connects.
#[derive(Debug)]
struct Args {
    stream: String,
    subjects: Vec<String>,
    durable: String,
    workers: u32,
    key_token: usize,
    work: Duration,
    mode: Mode,
    batch: u64,
    max_messages: Option<u64>,
    idle_exit: Option<Duration>,
    record: Option<PathBuf>,
    nak_every: Option<u64>,
    metrics_addr: Option<std::net::SocketAddr>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut stream, mut subjects, mut durable) = (None, None, None);
    let (mut workers, mut key_token, mut work_ms) = (None, None, None);
    let mut args = Args {
        stream: String::new(),
        subjects: Vec::new(),
        durable: String::new(),
        workers: 0,
        key_token: 0,
        work: Duration::ZERO,
        mode: Mode::Pull,
        batch: 100,
        max_messages: None,
        idle_exit: None,
        record: None,
        nak_every: None,
        metrics_addr: None,
    };
    let number = |flag: &str, value: &str, least: u64| -> Result<u64, String> {
        let kind = if least == 0 {
            "non-negative"
        } else {
            "positive"
        };
        value
            .parse::<u64>()
            .ok()
            .filter(|n| *n >= least)
            .ok_or_else(|| format!("{flag} must be a {kind} integer, got {value:?}"))
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--stream" => stream = Some(value),
            "--subjects" => subjects = Some(value.split(',').map(str::to_string).collect()),
            "--durable" => durable = Some(value),
            "--workers" => {
                let n = number(&flag, &value, 1)?;
                workers = Some(
                    u32::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_WORKERS)
                        .ok_or_else(|| {
                            format!("--workers must be between 1 and {MAX_WORKERS}, got {n}")
                        })?,
                );
            }
            "--key-token" => key_token = Some(number(&flag, &value, 0)? as usize),
            "--work-ms" => work_ms = Some(number(&flag, &value, 0)?),
            "--mode" => {
                args.mode = match value.as_str() {
                    "pull" => Mode::Pull,
                    "push" => Mode::Push,
                    other => return Err(format!("--mode must be pull or push, got {other:?}")),
                }
            }
            "--batch" => args.batch = number(&flag, &value, 1)?,
            "--max-messages" => args.max_messages = Some(number(&flag, &value, 1)?),
            "--idle-exit-ms" => {
                args.idle_exit = Some(Duration::from_millis(number(&flag, &value, 1)?))
            }
            "--record" => args.record = Some(PathBuf::from(value)),
            "--nak-every" => args.nak_every = Some(number(&flag, &value, 1)?),
            "--metrics-addr" => args.metrics_addr = Some(metrics_addr(&value)?),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let required = |flag: &str| format!("{flag} is required; {USAGE}");
    args.stream = stream.ok_or_else(|| required("--stream"))?;
    args.subjects = subjects.ok_or_else(|| required("--subjects"))?;
    args.durable = durable.ok_or_else(|| required("--durable"))?;
    args.workers = workers.ok_or_else(|| required("--workers"))?;
    args.key_token = key_token.ok_or_else(|| required("--key-token"))?;
    args.work = Duration::from_millis(work_ms.ok_or_else(|| required("--work-ms"))?);
    Ok(args)
}

/// What the workers saw of one key.
#[derive(Default)]
struct KeySeen {
    /// Stream sequences received and not acked yet (a nak'ed one stays
    /// until it comes back and is acked).
    unacked: BTreeSet<u64>,
    /// The highest stream sequence acked.
    last_acked: u64,
}

/// What every worker shares: the settings of the work, the counters of the
/// summary, and what was seen of each key.
struct Shared {
    key_token: usize,
    work: Duration,
    nak_every: Option<u64>,
    record: Option<Mutex<File>>,
    started: Instant,
    delivered: AtomicU64,
    acked: AtomicU64,
    naked: AtomicU64,
    first_deliveries: AtomicU64,
    working: AtomicU64,
    max_parallel: AtomicU64,
    order_violations: AtomicU64,
    /// Milliseconds from `started` to the last message a worker handled.
    last_handled_ms: AtomicU64,
    keys: Mutex<HashMap<String, KeySeen>>,
}

impl Shared {
    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_handled_ms.fetch_max(now, Ordering::Relaxed);
    }

    /// How long since a worker last handled a message (or since the start).
    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_handled_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    fn keys(&self) -> Result<std::sync::MutexGuard<'_, HashMap<String, KeySeen>>, &'static str> {
        self.keys.lock().map_err(|_| "key table lock poisoned")
    }
}

/// One keyed worker: the library hands it one delivery at a time.
struct KeyedWorker;

impl Actor for KeyedWorker {
    type Msg = Delivery;
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        shared.delivered.fetch_add(1, Ordering::Relaxed);
        shared.touch();
        let sequence = delivery.stream_sequence();
        let key = delivery
            .subject()
            .split('.')
            .nth(shared.key_token)
            .unwrap_or_default()
            .to_string();
        shared
            .keys()?
            .entry(key.clone())
            .or_default()
            .unacked
            .insert(sequence);

        // Every K-th first delivery is nak'ed: it comes back, and its key
        // waits for it.
        if delivery.delivered() == 1 {
            let nth = shared.first_deliveries.fetch_add(1, Ordering::Relaxed) + 1;
            if shared.nak_every.is_some_and(|k| nth.is_multiple_of(k)) {
                shared.naked.fetch_add(1, Ordering::Relaxed);
                delivery.nak();
                return Ok(());
            }
        }

        // The order check: nothing earlier of this key still unacked here,
        // nothing later of it acked already.
        if let Some(seen) = shared.keys()?.get(&key) {
            let earlier = seen.unacked.range(..sequence).next_back().copied();
            if earlier.is_some() || seen.last_acked > sequence {
                shared.order_violations.fetch_add(1, Ordering::Relaxed);
                eprintln!(
                    "keyed_workers: order violation: key {key} #{sequence} while #{earlier:?} unacked, last acked #{}",
                    seen.last_acked
                );
            }
        }

        // The work, counted while it runs.
        let working = shared.working.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_parallel.fetch_max(working, Ordering::SeqCst);
        tokio::time::sleep(shared.work).await;
        shared.working.fetch_sub(1, Ordering::SeqCst);

        // Record, flushed, then mark it acked here before the ack itself:
        // the key's next message may reach another worker as soon as the
        // ack is applied.
        if let Some(record) = &shared.record {
            let mut file = record.lock().map_err(|_| "record lock poisoned")?;
            file.write_all(format!("{key} {sequence}\n").as_bytes())?;
            file.flush()?;
        }
        {
            let mut keys = shared.keys()?;
            let seen = keys.entry(key).or_default();
            seen.unacked.remove(&sequence);
            seen.last_acked = seen.last_acked.max(sequence);
        }
        shared.acked.fetch_add(1, Ordering::Relaxed);
        shared.touch();
        delivery.ack();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keyed_workers: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // 1. Validate the arguments, the stream and the consumer before
    //    connecting anywhere.
    let args = parse_args(std::env::args().skip(1))?;
    let stream_spec = StreamSpec::new(&args.stream, args.subjects.clone());
    let key = KeySpec::SubjectToken(args.key_token);
    let consumer_spec = match args.mode {
        Mode::Pull => ConsumerSpec::pull(&args.stream, &args.durable, TARGET),
        Mode::Push => ConsumerSpec::push(&args.stream, &args.durable, TARGET),
    }
    .workers(args.workers, key)
    // Room for a batch at the workers and as many nak'ed ones waiting to
    // come back, and at least the push child's window; no more than that
    // goes out unacknowledged.
    .max_ack_pending((2 * args.batch).max(DEFAULT_MAX_IN_FLIGHT));
    // With metrics, the lag from the server too.
    let consumer_spec = match args.metrics_addr {
        Some(_) => consumer_spec.info_interval(Duration::from_secs(1)),
        None => consumer_spec,
    };
    Topology::new()
        .stream(stream_spec.clone())
        .consumer(consumer_spec.clone())
        .validate()
        .map_err(|e| e.to_string())?;
    let record = match &args.record {
        Some(path) => Some(Mutex::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open --record {}: {e}", path.display()))?,
        )),
        None => None,
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }

    if let Some(addr) = args.metrics_addr {
        serve_metrics(addr)?;
    }

    // 2. Connect: NATS_URL, or an embedded server.
    let (_embedded, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_harness::NatsServer::start()
                .await
                .map_err(|e| e.to_string())?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .connect(&url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let js = jetstream::new(client);

    // 3. The stream as it is when it exists (another program may have made
    //    it), created from the arguments otherwise. An existing durable
    //    keeps its ack_wait and backoff (the spec does not set them).
    let mut topology = Topology::new();
    match js.get_stream(&args.stream).await {
        Ok(_) => {}
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            topology = topology.stream(stream_spec);
        }
        Err(err) => return Err(format!("stream {}: {err}", args.stream)),
    }
    let topology = topology.consumer(consumer_spec);

    // 4. The workers, spawned by the consumer's worker pool, and the
    //    supervisor that makes the durable exist and starts its child.
    let shared = Arc::new(Shared {
        key_token: args.key_token,
        work: args.work,
        nak_every: args.nak_every,
        record,
        started: Instant::now(),
        delivered: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        naked: AtomicU64::new(0),
        first_deliveries: AtomicU64::new(0),
        working: AtomicU64::new(0),
        max_parallel: AtomicU64::new(0),
        order_violations: AtomicU64::new(0),
        last_handled_ms: AtomicU64::new(0),
        keys: Mutex::new(HashMap::new()),
    });
    let workers = {
        let shared = shared.clone();
        Workers::new(move |_index| (KeyedWorker, shared.clone()))
    };
    let supervisor_args = SupervisorArgs::new(js, topology).target(TARGET, workers);
    let (supervisor, _) = SupervisorHandle::spawn(None, supervisor_args)
        .await
        .map_err(|e| e.to_string())?;

    // 5. Work until done: pull fetches a batch at a time (the answer comes
    //    when every delivery of it is decided); push just waits.
    let done = || {
        args.max_messages
            .is_some_and(|max| shared.acked.load(Ordering::Relaxed) >= max)
            || args.idle_exit.is_some_and(|idle| shared.idle() >= idle)
    };
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let pull = match args.mode {
        Mode::Pull => Some(
            supervisor
                .pull(&args.durable)
                .await
                .map_err(|e| e.to_string())?,
        ),
        Mode::Push => None,
    };
    while !done() {
        let step = async {
            match &pull {
                Some(pull) => match pull.fetch(args.batch, Some(FETCH_EXPIRES)).await {
                    Ok(_) => Ok(()),
                    // A child restarting, a fetch cut short: fetch again.
                    Err(err) if err.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Ok(())
                    }
                    Err(err) => Err(err.to_string()),
                },
                None => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok(())
                }
            }
        };
        tokio::select! {
            result = step => result?,
            _ = &mut interrupted => break,
        }
    }

    // 6. Drain: the decisions still due are waited for (nak'ed past the
    //    timeout), and the children stop.
    supervisor
        .drain(DRAIN_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())?;
    let keys = shared.keys()?.len();
    println!(
        "keyed_workers: delivered={} acked={} naked={} workers={} keys={keys} max_parallel={} order_violations={}",
        shared.delivered.load(Ordering::Relaxed),
        shared.acked.load(Ordering::Relaxed),
        shared.naked.load(Ordering::Relaxed),
        args.workers,
        shared.max_parallel.load(Ordering::SeqCst),
        shared.order_violations.load(Ordering::SeqCst),
    );
    Ok(())
}

/// Parses `--metrics-addr`.
fn metrics_addr(value: &str) -> Result<std::net::SocketAddr, String> {
    value.parse().map_err(|_| {
        format!("--metrics-addr must be an IP address and port (HOST:PORT), got {value:?}")
    })
}

/// Serves the library's metrics as Prometheus text on `addr` for as long
/// as the process runs.
fn serve_metrics(addr: std::net::SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}
