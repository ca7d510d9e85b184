//! One member of a partitioned consumer group: run several, in several
//! processes or on several machines, and each key is processed by one of
//! them at a time, in order; when one dies, the others take over its
//! partitions within the priority timeout.
//!
//! ```text
//! cargo run --release --example partitioned -- --stream NAME --subjects SUBJ --key-token I --partitions P \
//!   --member NAME [--members A,B,C] --work-ms W [--priority-timeout-ms T] [--record FILE] \
//!   [--max-messages M] [--idle-exit-ms MS]
//! ```
//!
//! It uses the servers at `NATS_URL` (a comma-separated list for a
//! cluster), or starts an embedded one when that is unset. The first member
//! creates the stream `--stream` on `--subjects`, with the subject
//! transform that stores each message under its partition: the
//! `--key-token`th token (1-based, a `*` of the pattern) hashed into
//! `--partitions` partitions by the server. Publishers publish to the
//! subjects as they are, once the stream exists.
//!
//! Members find each other in a key-value bucket; with `--members` the
//! group is that static list (in that order), otherwise whoever is alive.
//! Partition `p` goes to the `p mod n`th live member. Each message is
//! worked on for `--work-ms` (one partition at a time in order, the
//! partitions side by side), then recorded and acked. With `--record FILE`
//! a line `MEMBER PARTITION KEY STREAM_SEQ START_UNIX_NS END_UNIX_NS` is
//! appended for each processed message, written and flushed before its
//! ack.
//!
//! It prints `partitioned: member=NAME holds=[0,3,5]` each time its set of
//! partitions changes. It stops after `--max-messages` messages acked,
//! after `--idle-exit-ms` without a message, or on Ctrl-C or SIGTERM; then
//! it leaves the group gracefully (the others take its partitions at
//! once) and prints, as its last line,
//! `partitioned: member=NAME acked=A naked=N partitions_held=H takeovers=T`:
//! messages acked, messages nak'ed when it left (handed over unprocessed),
//! the partitions it held when it stopped, and the partitions it took over
//! from another member after its first assignment.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::group::split_stored_subject;
use ractor_jetstream::{
    Delivery, GroupArgs, GroupHandle, GroupSpec, SupervisorArgs, SupervisorHandle, Topology,
};
use tokio::sync::mpsc;

/// The name the target is registered under with the supervisor.
const TARGET: &str = "partition-worker";
/// How long leaving waits for the decisions in flight of each partition.
const LEAVE_DRAIN: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: partitioned --stream NAME --subjects SUBJ --key-token I --partitions P \
--member NAME [--members A,B,C] --work-ms W [--priority-timeout-ms T] [--record FILE] \
[--max-messages M] [--idle-exit-ms MS]";

/// The command line, validated before anything connects.
#[derive(Debug)]
struct Args {
    spec: GroupSpec,
    work: Duration,
    record: Option<String>,
    max_messages: Option<u64>,
    idle_exit: Option<Duration>,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut stream, mut subjects, mut key_token, mut partitions) = (None, None, None, None);
    let (mut member, mut members, mut work_ms, mut timeout_ms) = (None, None, None, None);
    let (mut record, mut max_messages, mut idle_exit_ms) = (None, None, None);
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
            "--subjects" => subjects = Some(value),
            "--key-token" => key_token = Some(number(&flag, &value, 1)?),
            "--partitions" => partitions = Some(number(&flag, &value, 1)?),
            "--member" => member = Some(value),
            "--members" => members = Some(value.split(',').map(str::to_string).collect::<Vec<_>>()),
            "--work-ms" => work_ms = Some(number(&flag, &value, 0)?),
            "--priority-timeout-ms" => timeout_ms = Some(number(&flag, &value, 1)?),
            "--record" => record = Some(value),
            "--max-messages" => max_messages = Some(number(&flag, &value, 1)?),
            "--idle-exit-ms" => idle_exit_ms = Some(number(&flag, &value, 1)?),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let required = |flag: &str| format!("{flag} is required; {USAGE}");
    let partitions = partitions.ok_or_else(|| required("--partitions"))?;
    let mut spec = GroupSpec::new(
        stream.ok_or_else(|| required("--stream"))?,
        subjects.ok_or_else(|| required("--subjects"))?,
        usize::try_from(key_token.ok_or_else(|| required("--key-token"))?).unwrap_or(usize::MAX),
        u32::try_from(partitions)
            .map_err(|_| format!("--partitions is too large: {partitions}"))?,
        member.ok_or_else(|| required("--member"))?,
        TARGET,
    );
    if let Some(members) = members {
        spec = spec.members(members);
    }
    if let Some(ms) = timeout_ms {
        spec = spec.priority_timeout(Duration::from_millis(ms));
    }
    let work_ms = work_ms.ok_or_else(|| required("--work-ms"))?;
    spec.validate().map_err(|err| err.to_string())?;
    Ok(Args {
        spec,
        work: Duration::from_millis(work_ms),
        record,
        max_messages,
        idle_exit: idle_exit_ms.map(Duration::from_millis),
    })
}

/// What the worker shares with `main`.
struct Shared {
    member: String,
    key_token: usize,
    work: Duration,
    record: Option<Mutex<std::fs::File>>,
    acked: AtomicU64,
    last_message: Mutex<Instant>,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Shared {
    /// Works on one message, records it, and acks it.
    async fn process(&self, delivery: Delivery) {
        let start = unix_ns();
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let end = unix_ns();
        let (partition, key) = match split_stored_subject(delivery.subject()) {
            Some((partition, published)) => (
                partition.to_string(),
                published
                    .split('.')
                    .nth(self.key_token - 1)
                    .unwrap_or("-")
                    .to_string(),
            ),
            None => ("-".to_string(), "-".to_string()),
        };
        if let Some(record) = &self.record {
            let line = format!(
                "{} {partition} {key} {} {start} {end}\n",
                self.member,
                delivery.stream_sequence()
            );
            let written = match record.lock() {
                Ok(mut file) => file.write_all(line.as_bytes()).and_then(|()| file.flush()),
                Err(_) => Err(std::io::Error::other("record lock poisoned")),
            };
            if let Err(err) = written {
                // Not recorded: not acked either, so it comes back.
                eprintln!("partitioned: cannot write the record: {err}");
                delivery.nak();
                return;
            }
        }
        delivery.ack();
        self.acked.fetch_add(1, Ordering::Relaxed);
    }
}

/// The target: one queue per partition, worked on in order, the partitions
/// side by side.
struct Worker;

struct WorkerState {
    shared: Arc<Shared>,
    queues: HashMap<String, mpsc::UnboundedSender<Delivery>>,
}

impl Actor for Worker {
    type Msg = Delivery;
    type State = WorkerState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        shared: Arc<Shared>,
    ) -> Result<WorkerState, ActorProcessingErr> {
        Ok(WorkerState {
            shared,
            queues: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        state: &mut WorkerState,
    ) -> Result<(), ActorProcessingErr> {
        if let Ok(mut last) = state.shared.last_message.lock() {
            *last = Instant::now();
        }
        let partition = delivery
            .subject()
            .split('.')
            .next()
            .unwrap_or("")
            .to_string();
        let queue = state.queues.entry(partition).or_insert_with(|| {
            let (tx, mut rx) = mpsc::unbounded_channel::<Delivery>();
            let shared = state.shared.clone();
            tokio::spawn(async move {
                while let Some(delivery) = rx.recv().await {
                    shared.process(delivery).await;
                }
            });
            tx
        });
        if let Err(returned) = queue.send(delivery) {
            returned.0.nak();
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("partitioned: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    // 1. The arguments, validated before connecting anywhere.
    let args = parse_args(std::env::args().skip(1))?;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let record = match &args.record {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open --record {path}: {e}"))?,
        )),
        None => None,
    };

    // 2. Connect: NATS_URL (one server or a list), or an embedded server.
    let (_embedded, urls) = match std::env::var("NATS_URL") {
        Ok(urls) => (None, urls),
        Err(_) => {
            let server = nats_harness::NatsServer::start()
                .await
                .map_err(|e| e.to_string())?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.trim().parse().map_err(|e| format!("NATS_URL {u:?}: {e}")))
        .collect::<Result<_, _>>()?;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(3))
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .map_err(|e| format!("cannot connect to {urls}: {e}"))?;
    let js = jetstream::new(client);

    // 3. The worker, the supervisor that runs the partition children, and
    //    the group that decides which partitions this member runs.
    let shared = Arc::new(Shared {
        member: args.spec.member.clone(),
        key_token: args.spec.key_token,
        work: args.work,
        record,
        acked: AtomicU64::new(0),
        last_message: Mutex::new(Instant::now()),
    });
    let (worker, _) = Actor::spawn(None, Worker, shared.clone())
        .await
        .map_err(|e| e.to_string())?;
    let supervisor_args =
        SupervisorArgs::new(js.clone(), Topology::new()).target(TARGET, worker.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(None, supervisor_args)
        .await
        .map_err(|e| e.to_string())?;
    let member = args.spec.member.clone();
    let (group, _) = GroupHandle::spawn(GroupArgs {
        spec: args.spec,
        supervisor: supervisor.clone(),
        connection: js.into(),
    })
    .await
    .map_err(|e| e.to_string())?;

    // 4. Run until told to stop, printing each change of the partitions.
    let mut holds = group.holds();
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut held_at_end = 0;
    loop {
        tokio::select! {
            changed = holds.changed() => {
                if changed.is_err() {
                    break;
                }
                let held = holds.borrow_and_update().clone();
                held_at_end = held.len();
                let list: Vec<String> = held.iter().map(u32::to_string).collect();
                println!("partitioned: member={member} holds=[{}]", list.join(","));
            }
            _ = ticks.tick() => {
                let acked = shared.acked.load(Ordering::Relaxed);
                if args.max_messages.is_some_and(|max| acked >= max) {
                    break;
                }
                let idle = shared.last_message.lock().map(|t| t.elapsed()).unwrap_or_default();
                if args.idle_exit.is_some_and(|limit| idle >= limit) {
                    break;
                }
            }
            _ = &mut interrupted => break,
            _ = terminate.recv() => break,
        }
    }

    // 5. Leave gracefully: the others take the partitions at once.
    let report = group.leave(LEAVE_DRAIN).await.map_err(|e| e.to_string())?;
    let status = group.status().await.map_err(|e| e.to_string())?;
    group.actor().stop(None);
    supervisor
        .actor()
        .stop_and_wait(None, Some(LEAVE_DRAIN))
        .await
        .map_err(|e| e.to_string())?;
    worker.stop(None);
    println!(
        "partitioned: member={member} acked={} naked={} partitions_held={held_at_end} takeovers={}",
        shared.acked.load(Ordering::Relaxed),
        report.naked,
        status.takeovers,
    );
    Ok(())
}
