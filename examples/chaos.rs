//! A chaos soak: nothing is lost while things keep breaking.
//!
//! It publishes `--messages` messages (default 100,000) to one stream while a
//! pull durable and a push durable consume them through the supervisor, and
//! injects a random fault every `--fault-every-ms` (default 1000): a consumer
//! child killed, the target actor panicking, nats-server SIGKILLed and
//! restarted on its store, nats-server paused past the heartbeat, and with
//! `--cluster` the stream leader of a 3-node cluster killed. Every acked
//! stream sequence is marked in a bitset; at the end, a gap fails the run.
//! Duplicates are allowed and counted.
//!
//! ```text
//! cargo run --release --example chaos -- [--messages 100000] [--fault-every-ms 1000] [--cluster] [--seed N] [--min-faults K] [--budget-s S]
//! ```
//!
//! Server faults need a server this program controls, so it always starts
//! its own (a single node, or a 3-node cluster with `--cluster`). Its last
//! line is `chaos: published=P acked=A lost=L duplicates=D faults=F restarts=R`,
//! and it exits non-zero when `lost` is not 0, when it ran out of time
//! (`--budget-s`; by default 2 minutes, plus 1 ms per 10 messages, plus
//! the fault interval and 3 s per `--min-faults`), or when SIGTERM or
//! ctrl-c ended it early; each of these still prints the summary.
//!
//! The publisher keeps a window of messages awaiting their acks through
//! every fault: a failed publish is retried alongside the others, not one
//! after another, and its message id lets the server store it only once.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use nats_harness::{NatsCluster, NatsServer};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_jetstream::{
    ConsumerHandle, ConsumerSpec, Delivery, PullHandle, PushSpec, RestartPolicy, StreamSpec,
    SupervisorArgs, SupervisorHandle, Target, Topology,
};
use tokio::signal::unix::{SignalKind, signal};

/// How many publishes await their acks at once.
const PUBLISH_WINDOW: usize = 1024;
/// How long one publish waits for its ack before it is sent again: past a
/// pause of the server (1.5 s), short of stalling the window for long.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// The pause before a failed publish is sent again.
const PUBLISH_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How long each step of the final report may take once the run has ended.
/// Long enough for a cluster to elect a new leader for a consumer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The ractor process group the worker joins; both consumers deliver to
/// its running member.
const WORKERS: &str = "chaos-workers";

struct Args {
    messages: u64,
    fault_every: Duration,
    cluster: bool,
    seed: u64,
    min_faults: u64,
    /// How long the run may take; `None` for the default, which grows with
    /// the number of messages.
    budget: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 100_000,
        fault_every: Duration::from_millis(1000),
        cluster: false,
        min_faults: 0,
        budget: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let mut argv = std::env::args().skip(1);
    let number = |flag: &str, value: Option<String>| -> Result<u64, String> {
        value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive integer"))
    };
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--messages" => args.messages = number(&flag, argv.next())?,
            "--fault-every-ms" => {
                args.fault_every = Duration::from_millis(number(&flag, argv.next())?)
            }
            "--seed" => args.seed = number(&flag, argv.next())?,
            "--min-faults" => args.min_faults = number(&flag, argv.next())?,
            "--budget-s" => args.budget = Some(Duration::from_secs(number(&flag, argv.next())?)),
            "--cluster" => args.cluster = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

/// Which stream sequences were acked, and how many times.
struct Ledger {
    acked: Mutex<Vec<u64>>,
    distinct: AtomicU64,
    duplicates: AtomicU64,
}

impl Ledger {
    fn new(size: u64) -> Self {
        Self {
            acked: Mutex::new(vec![0; (size as usize).div_ceil(64) + 1]),
            distinct: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    fn mark(&self, sequence: u64) {
        let Ok(mut bits) = self.acked.lock() else {
            return;
        };
        let (word, bit) = ((sequence / 64) as usize, sequence % 64);
        if word >= bits.len() {
            bits.resize(word + 1, 0);
        }
        if bits[word] & (1 << bit) == 0 {
            bits[word] |= 1 << bit;
            self.distinct.fetch_add(1, Ordering::Relaxed);
        } else {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn missing(&self, upto: u64) -> Vec<u64> {
        let Ok(bits) = self.acked.lock() else {
            return Vec::new();
        };
        (1..=upto)
            .filter(|s| {
                bits.get((s / 64) as usize)
                    .is_none_or(|w| w & (1 << (s % 64)) == 0)
            })
            .collect()
    }
}

/// The target: acks everything, and panics when told to.
struct Worker;

struct WorkerArgs {
    ledger: Arc<Ledger>,
    panic_next: Arc<AtomicBool>,
}

impl Actor for Worker {
    type Msg = Delivery;
    type State = WorkerArgs;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        args: WorkerArgs,
    ) -> Result<WorkerArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        state: &mut WorkerArgs,
    ) -> Result<(), ActorProcessingErr> {
        if state.panic_next.swap(false, Ordering::Relaxed) {
            panic!(
                "chaos: injected target panic at stream sequence {}",
                delivery.stream_sequence()
            );
        }
        state.ledger.mark(delivery.stream_sequence());
        delivery.ack();
        Ok(())
    }
}

/// Keeps the worker alive: respawns it after a panic into the process
/// group [`WORKERS`], where the consumers' target finds it (no `SetTarget`).
struct Keeper;

struct KeeperState {
    worker: ActorRef<Delivery>,
    ledger: Arc<Ledger>,
    panic_next: Arc<AtomicBool>,
}

impl Keeper {
    async fn spawn_worker(
        myself: &ActorRef<()>,
        ledger: &Arc<Ledger>,
        panic_next: &Arc<AtomicBool>,
    ) -> Result<ActorRef<Delivery>, ActorProcessingErr> {
        let args = WorkerArgs {
            ledger: ledger.clone(),
            panic_next: panic_next.clone(),
        };
        let (worker, _) = Actor::spawn_linked(None, Worker, args, myself.get_cell()).await?;
        ractor::pg::join(WORKERS.to_string(), vec![worker.get_cell()]);
        Ok(worker)
    }
}

impl Actor for Keeper {
    type Msg = ();
    type State = KeeperState;
    type Arguments = (Arc<Ledger>, Arc<AtomicBool>);

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (ledger, panic_next): Self::Arguments,
    ) -> Result<KeeperState, ActorProcessingErr> {
        let worker = Self::spawn_worker(&myself, &ledger, &panic_next).await?;
        Ok(KeeperState {
            worker,
            ledger,
            panic_next,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut KeeperState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, _) = event
            && cell.get_id() == state.worker.get_id()
        {
            state.worker = Self::spawn_worker(&myself, &state.ledger, &state.panic_next).await?;
        }
        Ok(())
    }
}

/// The servers this run controls.
enum Servers {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Servers {
    fn urls(&self) -> Vec<String> {
        match self {
            Servers::Single(server) => vec![server.url()],
            Servers::Cluster(cluster) => cluster.client_urls(),
        }
    }
}

/// A small deterministic generator, so a seed replays a run's faults.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Why the fault loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Everything was published and acked, after at least `--min-faults`.
    Finished,
    /// The time budget ran out first.
    OutOfTime,
    /// SIGTERM or ctrl-c.
    Interrupted,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok((End::Finished, 0)) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("chaos: error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(End, u64), String> {
    let args = parse_args()?;
    // Listen before any server starts, so an early SIGTERM also ends the
    // run through the summary (and the servers' drop).
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    // Injected panics are expected: one line each instead of a backtrace.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if message.starts_with("chaos: injected") {
            eprintln!("{message}");
        } else {
            default_hook(info);
        }
    }));
    let text = |e: &dyn std::fmt::Display| e.to_string();

    // 1. Servers, a connection, and a stream replicated when clustered.
    let mut servers = if args.cluster {
        Servers::Cluster(NatsCluster::start(3).await.map_err(|e| text(&e))?)
    } else {
        Servers::Single(Box::new(NatsServer::start().await.map_err(|e| text(&e))?))
    };
    let client = async_nats::ConnectOptions::new()
        .connect(servers.urls())
        .await
        .map_err(|e| text(&e))?;
    let js = jetstream::new(client);
    let ack_wait = Duration::from_secs(2);
    let topology = Topology::new()
        .stream(StreamSpec {
            replicas: Some(if args.cluster { 3 } else { 1 }),
            ..StreamSpec::new("CHAOS", ["chaos.>"])
        })
        .consumer(
            ConsumerSpec::pull("CHAOS", "chaos-pull", "worker")
                .filter(["chaos.pull"])
                .ack_wait(ack_wait),
        )
        .consumer(
            ConsumerSpec::new(
                "CHAOS",
                "chaos-push",
                "worker",
                PushSpec::default().idle_heartbeat(Duration::from_millis(500)),
            )
            .filter(["chaos.push"])
            .ack_wait(ack_wait),
        );

    // 2. The worker under its keeper, and the supervisor, whose consumers
    //    deliver to whichever worker runs in the process group, and handles
    //    on its two children (found again by name after every restart).
    let ledger = Arc::new(Ledger::new(args.messages));
    let panic_next = Arc::new(AtomicBool::new(false));
    let (keeper, _) = Actor::spawn(None, Keeper, (ledger.clone(), panic_next.clone()))
        .await
        .map_err(|e| text(&e))?;
    let policy = RestartPolicy {
        max_restarts: 1000,
        ..RestartPolicy::default()
    };
    let supervisor_args = SupervisorArgs::new(js.clone(), topology)
        .target("worker", Target::group::<Delivery>(WORKERS))
        .restart_policy(policy);
    let (supervisor, _) = SupervisorHandle::spawn(Some("chaos".into()), supervisor_args)
        .await
        .map_err(|e| text(&e))?;
    let chaos_pull = supervisor.pull("chaos-pull").await.map_err(|e| text(&e))?;
    let chaos_push = supervisor
        .consumer("chaos-push")
        .await
        .map_err(|e| text(&e))?;

    // 3. Publish in the background (retrying through faults; the message
    //    id makes a retry idempotent), and fetch in a loop. The publisher
    //    has its own context, whose timeout bounds each ack wait.
    let published = Arc::new(AtomicU64::new(0));
    let publish_js = jetstream::ContextBuilder::new()
        .timeout(PUBLISH_ACK_TIMEOUT)
        .build(js.client());
    let publisher = tokio::spawn(publish_all(publish_js, args.messages, published.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = tokio::spawn(fetch_loop(chaos_pull.clone(), stop.clone()));

    // 4. Faults, until everything is published and acked (or time is up).
    let started = Instant::now();
    let budget = args.budget.unwrap_or_else(|| default_budget(&args));
    let mut rng = Rng(args.seed | 1);
    let mut faults = 0u64;
    let mut last_report = Instant::now();
    let mut last_fault = Instant::now();
    let end = loop {
        let all_acked =
            publisher.is_finished() && ledger.distinct.load(Ordering::Relaxed) >= args.messages;
        if all_acked && faults >= args.min_faults {
            break End::Finished;
        }
        if started.elapsed() > budget {
            eprintln!("chaos: out of time after {budget:?}");
            break End::OutOfTime;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = terminate.recv() => {
                eprintln!("chaos: SIGTERM, ending the run");
                break End::Interrupted;
            }
            _ = interrupt.recv() => {
                eprintln!("chaos: interrupted, ending the run");
                break End::Interrupted;
            }
        }
        if last_fault.elapsed() >= args.fault_every {
            last_fault = Instant::now();
            faults += 1;
            let children = [chaos_pull.consumer(), &chaos_push];
            inject(&mut rng, &mut servers, children, &panic_next).await;
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            last_report = Instant::now();
            println!(
                "chaos: {:>5.1}s published={} acked={} faults={faults}",
                started.elapsed().as_secs_f64(),
                published.load(Ordering::Relaxed),
                ledger.distinct.load(Ordering::Relaxed)
            );
        }
    };
    // A finished run lets the last fetch end; an unfinished one ends now.
    stop.store(true, Ordering::Relaxed);
    if end == End::Finished {
        let _ = fetcher.await;
    } else {
        fetcher.abort();
    }
    publisher.abort();
    let published = published.load(Ordering::Relaxed);

    // 5. The verdict, from the ledger and from the server. Every step is
    //    bounded, so that a run that ended badly still prints its summary.
    let status = tokio::time::timeout(REPORT_TIMEOUT, supervisor.status()).await;
    let restarts: u64 = match status {
        Ok(Ok(status)) => status.children.iter().map(|c| c.restarts).sum(),
        _ => 0,
    };
    let missing = ledger.missing(published);
    if !missing.is_empty() {
        eprintln!(
            "chaos: {} gaps, first: {:?}",
            missing.len(),
            &missing[..missing.len().min(20)]
        );
    }
    for durable in ["chaos-pull", "chaos-push"] {
        let report = tokio::time::timeout(REPORT_TIMEOUT, async {
            let stream = js.get_stream("CHAOS").await.map_err(|e| text(&e))?;
            let info = stream.get_info().await.map_err(|e| text(&e))?;
            let consumer = stream.consumer_info(durable).await.map_err(|e| text(&e))?;
            Ok::<_, String>(format!(
                "ack floor {} of {} stream messages, {} pending, {} unacked",
                consumer.ack_floor.stream_sequence,
                info.state.messages,
                consumer.num_pending,
                consumer.num_ack_pending
            ))
        })
        .await;
        match report {
            Ok(Ok(line)) => println!("chaos: {durable}: {line}"),
            Ok(Err(e)) => eprintln!("chaos: {durable}: no consumer info: {e}"),
            Err(_) => eprintln!("chaos: {durable}: no consumer info within {REPORT_TIMEOUT:?}"),
        }
    }
    if let Err(e) = supervisor
        .actor()
        .stop_and_wait(None, Some(REPORT_TIMEOUT))
        .await
    {
        eprintln!("chaos: the supervisor did not stop: {e}");
    }
    keeper.stop(None);
    let lost = missing.len() as u64;
    println!(
        "chaos: published={published} acked={} lost={lost} duplicates={} faults={faults} restarts={restarts}",
        ledger.distinct.load(Ordering::Relaxed),
        ledger.duplicates.load(Ordering::Relaxed),
    );
    Ok((end, lost))
}

/// Two minutes, plus 1 ms per 10 messages, plus for each fault asked for
/// with `--min-faults` its interval and 3 s to carry it out (restarting a
/// cluster node and waiting for it to catch up takes about that).
fn default_budget(args: &Args) -> Duration {
    let per_fault = args.fault_every + Duration::from_secs(3);
    let faults = per_fault.saturating_mul(u32::try_from(args.min_faults).unwrap_or(u32::MAX));
    (Duration::from_secs(120) + Duration::from_millis(args.messages / 10)).saturating_add(faults)
}

/// One random fault. `children` are the pull and the push consumer's.
async fn inject(
    rng: &mut Rng,
    servers: &mut Servers,
    children: [&ConsumerHandle; 2],
    panic_next: &AtomicBool,
) {
    let kinds = if matches!(servers, Servers::Cluster(_)) {
        5
    } else {
        4
    };
    match rng.below(kinds) {
        0 => {
            let consumer = children[rng.below(2) as usize];
            if let Some(child) = consumer.child() {
                println!("chaos: fault: kill the {} child", consumer.durable());
                child.kill();
            }
        }
        1 => {
            println!("chaos: fault: the target panics");
            panic_next.store(true, Ordering::Relaxed);
        }
        2 => {
            println!("chaos: fault: SIGKILL nats-server and restart it on its store");
            let result = match servers {
                Servers::Single(server) => {
                    async {
                        server.kill().await?;
                        server.restart().await
                    }
                    .await
                }
                Servers::Cluster(cluster) => {
                    let i = rng.below(cluster.len() as u64) as usize;
                    async {
                        cluster.kill_node(i).await?;
                        cluster.restart_node(i).await
                    }
                    .await
                }
            };
            if let Err(err) = result {
                eprintln!("chaos: restart failed: {err}");
            }
        }
        3 => {
            println!("chaos: fault: pause nats-server for 1.5 s");
            let node = match servers {
                Servers::Single(server) => &*server,
                Servers::Cluster(cluster) => cluster.node(rng.below(cluster.len() as u64) as usize),
            };
            if node.pause().is_ok() {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = node.resume();
            }
        }
        _ => {
            if let Servers::Cluster(cluster) = servers
                && let Ok(leader) = cluster.stream_leader("CHAOS").await
            {
                println!("chaos: fault: kill the stream leader (node {leader}) and restart it");
                let _ = cluster.kill_node(leader).await;
                let _ = cluster.restart_node(leader).await;
            }
        }
    }
}

/// Publishes messages `0..total`, keeping [`PUBLISH_WINDOW`] of them
/// awaiting their acks. A failed one goes back into the window at once, so a
/// fault costs the window one ack timeout, not one per message; `published`
/// counts the messages the server confirmed.
async fn publish_all(js: jetstream::Context, total: u64, published: Arc<AtomicU64>) {
    let mut in_flight = FuturesUnordered::new();
    let mut next = 0u64;
    let mut stored = 0u64;
    while stored < total {
        while in_flight.len() < PUBLISH_WINDOW && next < total {
            in_flight.push(store(js.clone(), next, Duration::ZERO));
            next += 1;
        }
        match in_flight.next().await {
            Some(Ok(())) => {
                stored += 1;
                published.store(stored, Ordering::Relaxed);
            }
            Some(Err(i)) => in_flight.push(store(js.clone(), i, PUBLISH_RETRY_PAUSE)),
            None => break,
        }
    }
}

/// One attempt to have message `i` stored, after `pause`; `Err(i)` when it
/// must be sent again.
async fn store(js: jetstream::Context, i: u64, pause: Duration) -> Result<(), u64> {
    if !pause.is_zero() {
        tokio::time::sleep(pause).await;
    }
    let ack = publish_one(&js, i).await.map_err(|_| i)?;
    ack.await.map(|_| ()).map_err(|_| i)
}

async fn publish_one(
    js: &jetstream::Context,
    i: u64,
) -> Result<jetstream::context::PublishAckFuture, String> {
    let subject = if i.is_multiple_of(2) {
        "chaos.pull"
    } else {
        "chaos.push"
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("chaos-{i}").as_str());
    js.publish_with_headers(subject, headers, format!("{i}").into())
        .await
        .map_err(|e| e.to_string())
}

/// Fetches from the pull child until `stop`; a failed fetch (the child
/// restarting, a fetch cut short by a fault) is tried again after a pause.
async fn fetch_loop(chaos_pull: PullHandle, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        // Bounded, as every wait of this run is: a soak ends with its
        // summary whatever a fault did.
        let fetch = chaos_pull.fetch(100, Some(Duration::from_millis(500)));
        let result = tokio::time::timeout(Duration::from_secs(30), fetch).await;
        if !matches!(result, Ok(Ok(_))) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
