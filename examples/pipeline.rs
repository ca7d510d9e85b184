//! Exactly-once output: a consume-transform-produce pipeline whose output
//! stream holds each result once, however often the process is killed and
//! its input delivered again.
//!
//! For each input message it publishes one result, `out:` followed by the
//! input's payload, to `--out-subject`, through an
//! [`Output`](ractor_jetstream::output::Output): with a `Nats-Msg-Id` made
//! of the input's stream and stream sequence, waiting for the output
//! stream's ack, and only then acking the input, confirmed by the server.
//! A kill between the publish and the ack leaves the input unacked; it
//! comes back, its result is published again under the same id, and the
//! output stream drops it as a duplicate. That holds as long as the
//! repeat comes within the output stream's duplicate window, so the window
//! must cover the input's redelivery horizon: the durable delivers an
//! input at most 10 times, each delivery lasting at most the longer of its
//! 5 s ack wait and the 10 s a delivery may be worked on (`max_hold`),
//! 100 s in all (an existing durable is given these settings). A missing output stream is created with that horizon plus 20 s; an
//! existing one with a shorter window is refused, in one line, before
//! anything is consumed.
//!
//! ```text
//! cargo run --release --example pipeline -- --in-stream NAME --in-subjects SUBJ[,SUBJ..] --durable NAME \
//!   --out-stream NAME --out-subject SUBJ [--batch B] [--work-ms W] [--max-messages M] [--idle-exit-ms MS]
//! ```
//!
//! It uses the server at `NATS_URL`, or starts an embedded one when that is
//! unset. It uses the input stream if it exists, and creates it otherwise.
//! It fetches `--batch` messages at a time (default 100) and works on the
//! messages of a batch at once, each after a sleep of `--work-ms` (the
//! shape of I/O-bound work). Work longer than the 10 s hold is given up
//! on: the child nak's the input, the ack that comes after is counted
//! late and not applied, and the input comes back. It stops after
//! `--max-messages` inputs acked, after `--idle-exit-ms` without a
//! message, or on Ctrl-C; then it drains the supervisor and prints, as its
//! last line,
//! `pipeline: consumed=C produced=P duplicates_suppressed=D late_acks=L`:
//! inputs acked, results stored as new, results the output stream already
//! had, and acks that came after the child had given up on their delivery.
//!
//! A demonstration switch, not part of the interface: with
//! `RJ_PIPELINE_NO_MSG_ID=1` the results are published without a message
//! id (a plain JetStream publish, still waiting for the stream's ack before
//! the confirmed ack of the input), so a kill between the publish and the
//! ack stores that result twice.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::GetStreamErrorKind};
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::output::{Output, Published, redelivery_horizon};
use ractor_jetstream::spec::DEFAULT_MAX_ACK_PENDING;
use ractor_jetstream::{
    ConsumerSpec, Delivery, Error, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
    ensure_consumer, ensure_stream,
};

/// The name the target is registered under with the supervisor.
const TARGET: &str = "pipeline";
/// The most deliveries of one input: what bounds the redelivery horizon.
const MAX_DELIVER: u64 = 10;
/// How long the server waits for an input's ack (after a kill, say)
/// before delivering it again.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long one delivery may be worked on before the child gives it up.
const MAX_HOLD: Duration = Duration::from_secs(10);
/// Added to the horizon for the window of an output stream made here: a
/// repeat's publish comes a little after its delivery began.
const WINDOW_MARGIN: Duration = Duration::from_secs(20);
/// How long one fetch waits on the server for messages.
const FETCH_EXPIRES: Duration = Duration::from_millis(500);
/// How long the end waits for the work and the decisions still due.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

const USAGE: &str = "usage: pipeline --in-stream NAME --in-subjects SUBJ[,SUBJ..] --durable NAME \
--out-stream NAME --out-subject SUBJ [--batch B] [--work-ms W] [--max-messages M] [--idle-exit-ms MS]";

/// The command line, validated before anything connects.
#[derive(Debug)]
struct Args {
    in_stream: String,
    in_subjects: Vec<String>,
    durable: String,
    out_stream: String,
    out_subject: String,
    batch: u64,
    work: Duration,
    max_messages: Option<u64>,
    idle_exit: Option<Duration>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut in_stream, mut in_subjects, mut durable) = (None, None, None);
    let (mut out_stream, mut out_subject) = (None, None);
    let (mut batch, mut work_ms, mut max_messages, mut idle_exit_ms) = (100, 0, None, None);
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
            "--in-stream" => in_stream = Some(value),
            "--in-subjects" => in_subjects = Some(value.split(',').map(str::to_string).collect()),
            "--durable" => durable = Some(value),
            "--out-stream" => out_stream = Some(value),
            "--out-subject" => out_subject = Some(value),
            "--batch" => batch = number(&flag, &value, 1)?,
            "--work-ms" => work_ms = number(&flag, &value, 0)?,
            "--max-messages" => max_messages = Some(number(&flag, &value, 1)?),
            "--idle-exit-ms" => idle_exit_ms = Some(number(&flag, &value, 1)?),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let required = |flag: &str| format!("{flag} is required; {USAGE}");
    Ok(Args {
        in_stream: in_stream.ok_or_else(|| required("--in-stream"))?,
        in_subjects: in_subjects.ok_or_else(|| required("--in-subjects"))?,
        durable: durable.ok_or_else(|| required("--durable"))?,
        out_stream: out_stream.ok_or_else(|| required("--out-stream"))?,
        out_subject: out_subject.ok_or_else(|| required("--out-subject"))?,
        batch,
        work: Duration::from_millis(work_ms),
        max_messages,
        idle_exit: idle_exit_ms.map(Duration::from_millis),
    })
}

/// The input stream, the durable and the output stream the arguments
/// describe, each checked, with a failure named by its flag.
fn specs(args: &Args) -> Result<(StreamSpec, ConsumerSpec, StreamSpec), String> {
    let input = StreamSpec::new(&args.in_stream, args.in_subjects.clone());
    input
        .validate()
        .map_err(|e| by_flag(e, &[("name", "--in-stream"), ("subjects", "--in-subjects")]))?;
    let consumer = ConsumerSpec::pull(&args.in_stream, &args.durable, TARGET)
        .ack_wait(ACK_WAIT)
        .max_hold(MAX_HOLD)
        .max_deliver(MAX_DELIVER)
        // Room for the batch worked on here and for those a killed
        // predecessor left unacked until their ack wait ends.
        .max_ack_pending(args.batch.saturating_mul(4).max(DEFAULT_MAX_ACK_PENDING));
    consumer.validate().map_err(|e| {
        by_flag(
            e,
            &[("durable", "--durable"), ("max_ack_pending", "--batch")],
        )
    })?;
    let horizon = redelivery_horizon(&consumer.to_config(None), consumer.effective_max_hold())
        .ok_or("the durable's max_deliver must be limited")?;
    let output = StreamSpec {
        duplicate_window: Some(horizon + WINDOW_MARGIN),
        ..StreamSpec::new(&args.out_stream, [&args.out_subject])
    };
    output.validate().map_err(|e| {
        by_flag(
            e,
            &[("name", "--out-stream"), ("subjects", "--out-subject")],
        )
    })?;
    if args.out_subject.split('.').any(|t| t == "*" || t == ">") {
        return Err(format!(
            "--out-subject must be a subject to publish to, without wildcards, got {:?}",
            args.out_subject
        ));
    }
    if input.covers(&args.out_subject) {
        return Err(format!(
            "--out-subject {:?} is one of the input's subjects ({}): every result would be consumed again",
            args.out_subject,
            args.in_subjects.join(",")
        ));
    }
    if args.out_stream == args.in_stream {
        return Err(format!(
            "--out-stream must differ from --in-stream, both are {:?}",
            args.out_stream
        ));
    }
    Ok((input, consumer, output))
}

/// A spec's validation failure in one line, each field named by the flag
/// it came from (`flags`: field prefix, flag).
fn by_flag(err: Error, flags: &[(&str, &str)]) -> String {
    let Some(fields) = err.validation() else {
        return err.to_string();
    };
    let named: Vec<String> = fields
        .errors()
        .iter()
        .map(|e| {
            let flag = flags
                .iter()
                .find(|(prefix, _)| e.field.starts_with(prefix))
                .map_or(e.field.as_str(), |(_, flag)| flag);
            format!("{flag} {}: {}", e.value, e.reason)
        })
        .collect();
    named.join("; ")
}

/// How the results are published.
enum Sink {
    /// With a message id per input, through the library's output.
    WithIds(Output),
    /// Without one (`RJ_PIPELINE_NO_MSG_ID=1`): a plain JetStream publish.
    Plain(jetstream::Context),
}

impl Sink {
    /// Publishes the result of `input`, waits for the output stream's ack,
    /// then acks `input` and waits for the server to confirm it.
    async fn publish_and_ack(
        &self,
        input: Delivery,
        subject: &str,
        payload: Bytes,
    ) -> Result<Published, String> {
        match self {
            Sink::WithIds(output) => output
                .publish_and_ack(input, subject.to_string(), payload)
                .await
                .map_err(|e| e.to_string()),
            Sink::Plain(js) => {
                let ack = js
                    .publish(subject.to_string(), payload)
                    .await
                    .map_err(|e| format!("publish to {subject}: {e}"))?
                    .await
                    .map_err(|e| format!("publish to {subject}: {e}"))?;
                input.ack_confirmed().await.map_err(|e| e.to_string())?;
                Ok(Published {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            }
        }
    }
}

/// What the target and its tasks share: where the results go, the work,
/// and the counters of the summary.
struct Shared {
    sink: Sink,
    out_subject: String,
    work: Duration,
    consumed: AtomicU64,
    produced: AtomicU64,
    duplicates: AtomicU64,
    /// Deliveries a task is working on.
    working: AtomicU64,
}

impl Shared {
    /// One input: the work, then its result published and the input acked.
    async fn transform(&self, input: Delivery) {
        tokio::time::sleep(self.work).await;
        let sequence = input.stream_sequence();
        let payload = Bytes::from([b"out:".as_slice(), input.payload()].concat());
        match self
            .sink
            .publish_and_ack(input, &self.out_subject, payload)
            .await
        {
            Ok(published) => {
                let counter = if published.duplicate {
                    &self.duplicates
                } else {
                    &self.produced
                };
                counter.fetch_add(1, Ordering::Relaxed);
                self.consumed.fetch_add(1, Ordering::Relaxed);
            }
            // Unacked, the input comes back; a result already stored is
            // then found a duplicate.
            Err(err) => eprintln!("pipeline: input #{sequence} not done: {err}"),
        }
    }
}

/// The target: each delivery goes to a task of its own, so that the
/// messages of a batch are worked on at once.
struct Transform;

impl Actor for Transform {
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
        input: Delivery,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        let shared = shared.clone();
        shared.working.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            shared.transform(input).await;
            shared.working.fetch_sub(1, Ordering::SeqCst);
        });
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("pipeline: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // 1. Validate the arguments and what they describe before connecting
    //    anywhere.
    let args = parse_args(std::env::args().skip(1))?;
    let (input_spec, consumer_spec, output_spec) = specs(&args)?;
    let with_ids = std::env::var_os("RJ_PIPELINE_NO_MSG_ID").is_none_or(|v| v != "1");
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
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

    // 3. The streams as they are when they exist (another program may have
    //    made them), created from the arguments otherwise. An existing
    //    output stream must capture the output subject.
    if existing_stream(&js, &args.in_stream).await?.is_none() {
        ensure_stream(&js, &input_spec)
            .await
            .map_err(|e| e.to_string())?;
    }
    match existing_stream(&js, &args.out_stream).await? {
        Some(existing) => {
            let subjects = existing.cached_info().config.subjects.clone();
            if !StreamSpec::new(&args.out_stream, subjects.clone()).covers(&args.out_subject) {
                return Err(format!(
                    "--out-subject {:?} is not captured by the existing output stream {} (its subjects: {})",
                    args.out_subject,
                    args.out_stream,
                    subjects.join(",")
                ));
            }
        }
        None => {
            ensure_stream(&js, &output_spec)
                .await
                .map_err(|e| e.to_string())?;
        }
    }

    // 4. The durable, created or bound now, so that the output stream's
    //    window is checked against its settings on the server before
    //    anything is consumed.
    ensure_consumer(&js, &consumer_spec)
        .await
        .map_err(|e| e.to_string())?;
    let output = Output::bind(&js, &args.out_stream, &consumer_spec)
        .await
        .map_err(|e| e.to_string())?;

    // 5. The target, and the supervisor that runs the durable's child.
    let shared = Arc::new(Shared {
        sink: if with_ids {
            Sink::WithIds(output)
        } else {
            Sink::Plain(js.clone())
        },
        out_subject: args.out_subject.clone(),
        work: args.work,
        consumed: AtomicU64::new(0),
        produced: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        working: AtomicU64::new(0),
    });
    let (transform, _) = Actor::spawn(None, Transform, shared.clone())
        .await
        .map_err(|e| e.to_string())?;
    let topology = Topology::new().consumer(consumer_spec);
    let supervisor_args = SupervisorArgs::new(js, topology).target(TARGET, transform.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(None, supervisor_args)
        .await
        .map_err(|e| e.to_string())?;
    let pull = supervisor
        .pull(&args.durable)
        .await
        .map_err(|e| e.to_string())?;

    // 6. Fetch a batch at a time; the answer comes when every input of it
    //    is decided. No more than --max-messages in all.
    let consumed = || shared.consumed.load(Ordering::Relaxed);
    let mut last_message = Instant::now();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let wanted = match args.max_messages {
            Some(max) => args.batch.min(max.saturating_sub(consumed())),
            None => args.batch,
        };
        if wanted == 0
            || args
                .idle_exit
                .is_some_and(|idle| last_message.elapsed() >= idle)
        {
            break;
        }
        let step = async {
            match pull.fetch(wanted, Some(FETCH_EXPIRES)).await {
                Ok(outcome) => Ok(outcome.delivered),
                // A child restarting, a fetch cut short: fetch again.
                Err(err) if err.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(0)
                }
                Err(err) => Err(err.to_string()),
            }
        };
        tokio::select! {
            delivered = step => if delivered? > 0 {
                last_message = Instant::now();
            },
            _ = &mut interrupted => break,
        }
    }

    // 7. The end: the tasks still working finish (a late one's ack is
    //    counted by the child), then the child drains and stops.
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    while shared.working.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let late_acks = pull
        .stats()
        .await
        .map_err(|e| e.to_string())?
        .late_decisions;
    supervisor
        .drain(DRAIN_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    supervisor
        .actor()
        .stop_and_wait(None, Some(DRAIN_TIMEOUT))
        .await
        .map_err(|e| e.to_string())?;
    transform.stop(None);
    println!(
        "pipeline: consumed={} produced={} duplicates_suppressed={} late_acks={late_acks}",
        consumed(),
        shared.produced.load(Ordering::Relaxed),
        shared.duplicates.load(Ordering::Relaxed),
    );
    Ok(())
}

/// The stream `name`, or `None` when the server has no such stream.
async fn existing_stream(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<jetstream::stream::Stream>, String> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(err)
            if matches!(err.kind(), GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            Ok(None)
        }
        Err(err) => Err(format!("stream {name}: {err}")),
    }
}
