//! A worker that fetches only when it is ready: pull-based backpressure.
//!
//! It makes sure the stream and the durable pull consumer exist (through
//! the supervisor), then loops: fetch up to `--batch` messages, let the
//! worker actor process each one, and fetch again only after every decision
//! of the last batch is applied. Processing a message means appending its
//! stream sequence to the `--record` file, flushed before the ack, so the
//! record is at-least-once like the library: a kill between the write and
//! the ack leaves a duplicate line, never a gap.
//!
//! ```text
//! cargo run --release --example pull_worker -- --stream ORDERS --subjects 'orders.>' --durable workers \
//!   --batch 100 --expires-ms 500 [--max-messages N] [--idle-exit-ms 2000] [--record FILE] [--nak-every K] \
//!   [--metrics-addr HOST:PORT]
//! ```
//!
//! With `--metrics-addr`, the library's metrics (see the `telemetry`
//! module) are served as Prometheus text at `http://HOST:PORT/metrics`
//! for as long as it runs, the consumer's lag included.
//!
//! It uses the server at `NATS_URL`, or starts an embedded one when that is
//! unset. It stops after `--max-messages` acks, or once `--idle-exit-ms`
//! passes with only empty fetches. Its last line is
//! `pull_worker: fetches=F delivered=D acked=A naked=N termed=T empty_fetches=E`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Delivery, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
};

/// The command line, validated before anything connects.
#[derive(Debug)]
struct Args {
    stream: String,
    subjects: Vec<String>,
    durable: String,
    batch: u64,
    expires: Duration,
    max_messages: Option<u64>,
    idle_exit: Duration,
    record: Option<PathBuf>,
    nak_every: Option<u64>,
    metrics_addr: Option<std::net::SocketAddr>,
}

const USAGE: &str = "usage: pull_worker --stream NAME --subjects SUBJ[,SUBJ..] --durable NAME --batch N --expires-ms MS \
[--max-messages N] [--idle-exit-ms MS] [--record FILE] [--nak-every K] [--metrics-addr HOST:PORT]";

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        stream: String::new(),
        subjects: Vec::new(),
        durable: String::new(),
        batch: 0,
        expires: Duration::ZERO,
        max_messages: None,
        idle_exit: Duration::from_millis(2000),
        record: None,
        nak_every: None,
        metrics_addr: None,
    };
    let number = |flag: &str, value: &str| -> Result<u64, String> {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} must be a positive integer, got {value:?}"))
    };
    while let Some(flag) = argv.next() {
        let value = argv
            .next()
            .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
        match flag.as_str() {
            "--stream" => args.stream = value,
            "--subjects" => args.subjects = value.split(',').map(str::to_string).collect(),
            "--durable" => args.durable = value,
            "--batch" => args.batch = number(&flag, &value)?,
            "--expires-ms" => args.expires = Duration::from_millis(number(&flag, &value)?),
            "--max-messages" => args.max_messages = Some(number(&flag, &value)?),
            "--idle-exit-ms" => args.idle_exit = Duration::from_millis(number(&flag, &value)?),
            "--record" => args.record = Some(PathBuf::from(value)),
            "--nak-every" => args.nak_every = Some(number(&flag, &value)?),
            "--metrics-addr" => {
                args.metrics_addr = Some(value.parse().map_err(|_| {
                    format!(
                        "--metrics-addr must be an IP address and port (HOST:PORT), got {value:?}"
                    )
                })?)
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    for (flag, missing) in [
        ("--stream", args.stream.is_empty()),
        ("--subjects", args.subjects.is_empty()),
        ("--durable", args.durable.is_empty()),
        ("--batch", args.batch == 0),
        ("--expires-ms", args.expires.is_zero()),
    ] {
        if missing {
            return Err(format!("{flag} is required; {USAGE}"));
        }
    }
    Ok(args)
}

/// The worker's messages: its own enum, with deliveries coming in through
/// a `DerivedActorRef<Delivery>`.
enum WorkerMsg {
    Job(Delivery),
}

impl From<Delivery> for WorkerMsg {
    fn from(delivery: Delivery) -> Self {
        WorkerMsg::Job(delivery)
    }
}

impl TryFrom<WorkerMsg> for Delivery {
    type Error = WorkerMsg;
    fn try_from(msg: WorkerMsg) -> Result<Self, WorkerMsg> {
        match msg {
            WorkerMsg::Job(delivery) => Ok(delivery),
        }
    }
}

struct Worker;

struct WorkerState {
    record: Option<File>,
    nak_every: Option<u64>,
    first_deliveries: u64,
}

impl Actor for Worker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = (Option<File>, Option<u64>);

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        (record, nak_every): Self::Arguments,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            record,
            nak_every,
            first_deliveries: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<WorkerMsg>,
        WorkerMsg::Job(delivery): WorkerMsg,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        // Every K-th first delivery is nak'ed; it is acked when it comes
        // again.
        if delivery.delivered() == 1 {
            state.first_deliveries += 1;
            if state
                .nak_every
                .is_some_and(|k| state.first_deliveries.is_multiple_of(k))
            {
                delivery.nak();
                return Ok(());
            }
        }
        // "Processing": record the sequence, flushed before the ack.
        if let Some(file) = &mut state.record {
            writeln!(file, "{}", delivery.stream_sequence())?;
            file.flush()?;
        }
        delivery.ack();
        Ok(())
    }
}

#[derive(Default)]
struct Totals {
    fetches: u64,
    delivered: u64,
    acked: u64,
    naked: u64,
    termed: u64,
    empty_fetches: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pull_worker: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // 1. Validate the arguments before connecting anywhere.
    let args = parse_args(std::env::args().skip(1))?;
    let topology = Topology::new()
        .stream(StreamSpec::new(&args.stream, args.subjects.clone()))
        .consumer(match args.metrics_addr {
            // With metrics, the lag from the server too.
            Some(_) => ConsumerSpec::pull(&args.stream, &args.durable, "worker")
                .info_interval(Duration::from_secs(1)),
            None => ConsumerSpec::pull(&args.stream, &args.durable, "worker"),
        });
    topology.validate().map_err(|e| e.to_string())?;
    let record = match &args.record {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open --record {}: {e}", path.display()))?,
        ),
        None => None,
    };

    if let Some(addr) = args.metrics_addr {
        // Prometheus text on `addr` for as long as the process runs.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
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
    let js = async_nats::jetstream::new(client);

    // 3. The worker, and the supervisor that ensures the stream and the
    //    durable consumer.
    let (worker, _) = Actor::spawn(None, Worker, (record, args.nak_every))
        .await
        .map_err(|e| e.to_string())?;
    let supervisor_args = SupervisorArgs::new(js, topology).target("worker", worker.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(None, supervisor_args)
        .await
        .map_err(|e| e.to_string())?;
    let workers = supervisor
        .pull(&args.durable)
        .await
        .map_err(|e| e.to_string())?;

    // 4. Fetch, one batch at a time, only when the last one is settled.
    //    The answer comes when every delivery of the batch is decided, so
    //    the call has no timeout that could cut off a slow batch.
    let mut totals = Totals::default();
    let mut idle_since: Option<Instant> = None;
    loop {
        if args.max_messages.is_some_and(|max| totals.acked >= max) {
            break;
        }
        let outcome = workers
            .fetch(args.batch, Some(args.expires))
            .await
            .map_err(|e| e.to_string())?;
        totals.fetches += 1;
        totals.delivered += outcome.delivered;
        totals.acked += outcome.acked;
        totals.naked += outcome.naked;
        totals.termed += outcome.termed;
        if outcome.delivered == 0 {
            totals.empty_fetches += 1;
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= args.idle_exit {
                break;
            }
        } else {
            idle_since = None;
        }
    }

    // 5. Shut down: stopping the supervisor drains its child.
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?;
    worker.stop(None);
    println!(
        "pull_worker: fetches={} delivered={} acked={} naked={} termed={} empty_fetches={}",
        totals.fetches,
        totals.delivered,
        totals.acked,
        totals.naked,
        totals.termed,
        totals.empty_fetches
    );
    Ok(())
}
