//! Shared helpers for the integration tests: a real server per test, a
//! recording target actor whose decisions each test chooses, and waits with
//! deadlines.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use nats_harness::NatsServer;
use ractor::{Actor, ActorProcessingErr, ActorRef, DerivedActorRef};
use ractor_jetstream::{ConsumerMsg, Delivery, FetchOutcome, SupervisorMsg};

/// Generous bound for anything that should happen "soon".
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Turns on log output for a test when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One fresh JetStream server and a connection to it.
pub struct Env {
    pub server: NatsServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

pub async fn env() -> Env {
    init_tracing();
    let server = NatsServer::start().await.expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(client.clone());
    Env { server, client, js }
}

/// Creates a plain file-storage stream directly (not through the library).
pub async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[&str]) {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// Publishes one message per subject and waits for each to be stored.
/// Returns the stream sequences.
pub async fn publish(
    js: &jetstream::Context,
    subjects: impl IntoIterator<Item = String>,
) -> Vec<u64> {
    let mut acks = Vec::new();
    for (i, subject) in subjects.into_iter().enumerate() {
        let ack = js
            .publish(subject, format!("payload-{i}").into())
            .await
            .expect("publish");
        acks.push(ack);
    }
    let mut seqs = Vec::new();
    for ack in acks {
        seqs.push(ack.await.expect("publish ack").sequence);
    }
    seqs
}

/// Publishes `n` messages to `subject`.
pub async fn publish_n(js: &jetstream::Context, subject: &str, n: usize) -> Vec<u64> {
    publish(js, (0..n).map(|_| subject.to_string())).await
}

/// The server's view of a consumer.
pub async fn consumer_info(js: &jetstream::Context, stream: &str, durable: &str) -> consumer::Info {
    let stream = js.get_stream(stream).await.expect("get stream");
    stream.consumer_info(durable).await.expect("consumer info")
}

/// The server's view of a consumer, or what kept the server from giving it.
pub async fn try_consumer_info(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
) -> Result<consumer::Info, String> {
    let stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
    stream
        .consumer_info(durable)
        .await
        .map_err(|e| e.to_string())
}

/// Polls the consumer info until `check` holds, or panics after
/// [`PATIENCE`] with the last info.
pub async fn wait_for_consumer(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    what: &str,
    check: impl Fn(&consumer::Info) -> bool,
) -> consumer::Info {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        // A request that fails (a timeout on a loaded machine, a server
        // just restarted) is one more poll, not the end of the wait.
        let last = match try_consumer_info(js, stream, durable).await {
            Ok(info) if check(&info) => return info,
            Ok(info) => format!(
                "ack_floor.stream={} num_ack_pending={} num_pending={} num_redelivered={}",
                info.ack_floor.stream_sequence,
                info.num_ack_pending,
                info.num_pending,
                info.num_redelivered
            ),
            Err(e) => format!("no consumer info: {e}"),
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls `check` until it holds, or panics after `timeout` naming `what`.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls a child's stats until `check` holds, or panics after
/// [`PATIENCE`] naming `what`. Returns the stats that passed.
pub async fn wait_for_stats(
    consumer: &ractor_jetstream::ConsumerHandle,
    what: &str,
    check: impl Fn(&ractor_jetstream::ConsumerStats) -> bool,
) -> ractor_jetstream::ConsumerStats {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stats = consumer.stats().await.expect("stats");
        if check(&stats) {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; stats {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches through a child.
pub async fn fetch(
    child: &ActorRef<ConsumerMsg>,
    batch: u64,
    expires: Duration,
) -> Result<FetchOutcome, ractor_jetstream::Error> {
    child
        .call(
            |reply| ConsumerMsg::Fetch {
                batch,
                expires: Some(expires),
                reply,
            },
            Some(expires + PATIENCE),
        )
        .await
        .expect("fetch call")
        .success_or_panic()
}

/// Starts a fetch through a child in a task of its own, for a test that
/// acts on the deliveries while the fetch is open.
pub fn spawn_fetch(
    child: &ActorRef<ConsumerMsg>,
    batch: u64,
    expires: Duration,
) -> tokio::task::JoinHandle<Result<FetchOutcome, ractor_jetstream::Error>> {
    let child = child.clone();
    tokio::spawn(async move { fetch(&child, batch, expires).await })
}

/// Starts a fetch through a pull handle in a task of its own: from a task,
/// a fetch that finds the child idle is served in that task.
pub fn spawn_handle_fetch(
    pull: &ractor_jetstream::PullHandle,
    batch: u64,
    expires: Duration,
) -> tokio::task::JoinHandle<Result<FetchOutcome, ractor_jetstream::Error>> {
    let pull = pull.clone();
    tokio::spawn(async move { pull.fetch(batch, Some(expires)).await })
}

/// One fetch through a pull handle, in a task of its own, while its child
/// may be restarting: an answer that the child is not up (`Unavailable`,
/// `FetchInterrupted`) is fine; any other error fails the test.
pub async fn handle_fetch_while_restarting(
    pull: &ractor_jetstream::PullHandle,
    batch: u64,
    expires: Duration,
) {
    match spawn_handle_fetch(pull, batch, expires)
        .await
        .expect("fetch task")
    {
        Ok(_)
        | Err(
            ractor_jetstream::Error::Unavailable { .. }
            | ractor_jetstream::Error::FetchInterrupted { .. },
        ) => {}
        Err(err) => panic!("fetch failed: {err}"),
    }
}

/// Fetches through the supervisor.
pub async fn fetch_via(
    supervisor: &ActorRef<SupervisorMsg>,
    durable: &str,
    batch: u64,
    expires: Duration,
) -> Result<FetchOutcome, ractor_jetstream::Error> {
    supervisor
        .call(
            |reply| SupervisorMsg::Fetch {
                durable: durable.into(),
                batch,
                expires: Some(expires),
                reply,
            },
            Some(expires + PATIENCE),
        )
        .await
        .expect("fetch call")
        .success_or_panic()
}

pub trait CallResultExt<T> {
    fn success_or_panic(self) -> T;
}

impl<T> CallResultExt<T> for ractor::rpc::CallResult<T> {
    fn success_or_panic(self) -> T {
        match self {
            ractor::rpc::CallResult::Success(v) => v,
            ractor::rpc::CallResult::Timeout => panic!("call timed out"),
            ractor::rpc::CallResult::SenderError => panic!("reply port dropped"),
        }
    }
}

/// What the recording target does with one delivery.
#[derive(Debug, Clone)]
pub enum Action {
    Ack,
    Nak(Option<Duration>),
    Term,
    /// Drop it without a decision.
    Drop,
    /// Keep it and never decide (the decision timeout must fire).
    Hold,
    /// Panic in the target's handler.
    Panic,
    /// Ack after a delay, from a task (the target goes on meanwhile).
    AckAfter(Duration),
    /// Term after a delay, from a task (the target goes on meanwhile).
    TermAfter(Duration),
}

/// One delivery as the target saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub subject: String,
    pub stream_sequence: u64,
    pub delivered: u64,
    pub at: std::time::Instant,
}

#[derive(Debug, Default)]
pub struct RecordInner {
    pub seen: Vec<Seen>,
    /// Deliveries received and not yet settled by the target.
    pub outstanding: usize,
    pub max_outstanding: usize,
}

/// What the recording target saw, readable from the test.
#[derive(Debug, Default, Clone)]
pub struct Record(pub Arc<Mutex<RecordInner>>);

impl Record {
    pub fn with<R>(&self, f: impl FnOnce(&RecordInner) -> R) -> R {
        f(&self.0.lock().expect("record lock"))
    }

    pub fn count(&self) -> usize {
        self.with(|r| r.seen.len())
    }

    /// Stream sequences seen, in arrival order.
    pub fn sequences(&self) -> Vec<u64> {
        self.with(|r| r.seen.iter().map(|s| s.stream_sequence).collect())
    }

    /// Stream sequences seen at least once.
    pub fn distinct(&self) -> BTreeSet<u64> {
        self.sequences().into_iter().collect()
    }

    /// How often each stream sequence was seen.
    pub fn times_seen(&self) -> BTreeMap<u64, usize> {
        let mut map = BTreeMap::new();
        for seq in self.sequences() {
            *map.entry(seq).or_default() += 1;
        }
        map
    }

    pub fn max_outstanding(&self) -> usize {
        self.with(|r| r.max_outstanding)
    }
}

pub type Decide = Arc<dyn Fn(&Delivery) -> Action + Send + Sync>;

/// The recording target's messages: its own enum, reached through a
/// `DerivedActorRef<Delivery>` like a user's actor.
pub enum TargetMsg {
    Delivery(Box<Delivery>),
    /// Settle everything held back by `batch_ack`.
    Flush,
}

impl From<Delivery> for TargetMsg {
    fn from(d: Delivery) -> Self {
        TargetMsg::Delivery(Box::new(d))
    }
}

impl TryFrom<TargetMsg> for Delivery {
    type Error = TargetMsg;
    fn try_from(msg: TargetMsg) -> Result<Self, TargetMsg> {
        match msg {
            TargetMsg::Delivery(d) => Ok(*d),
            other => Err(other),
        }
    }
}

pub struct RecordingTarget;

pub struct TargetArgs {
    pub decide: Decide,
    pub record: Record,
    /// Hold acked deliveries and settle them all this long after the first
    /// one was held (to keep a window full and measure it).
    pub batch_ack: Option<Duration>,
}

pub struct TargetState {
    decide: Decide,
    record: Record,
    batch_ack: Option<Duration>,
    held: Vec<Delivery>,
    never: Vec<Delivery>,
}

impl Actor for RecordingTarget {
    type Msg = TargetMsg;
    type State = TargetState;
    type Arguments = TargetArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TargetMsg>,
        args: TargetArgs,
    ) -> Result<TargetState, ActorProcessingErr> {
        Ok(TargetState {
            decide: args.decide,
            record: args.record,
            batch_ack: args.batch_ack,
            held: Vec::new(),
            never: Vec::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TargetMsg>,
        msg: TargetMsg,
        state: &mut TargetState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TargetMsg::Delivery(delivery) => {
                let delivery = *delivery;
                {
                    let mut r = state.record.0.lock().expect("record lock");
                    r.seen.push(Seen {
                        subject: delivery.subject().to_string(),
                        stream_sequence: delivery.info().stream_sequence,
                        delivered: delivery.info().delivered,
                        at: std::time::Instant::now(),
                    });
                    r.outstanding += 1;
                    r.max_outstanding = r.max_outstanding.max(r.outstanding);
                }
                let action = (state.decide)(&delivery);
                // Settled right here, as opposed to held, panicked on, or
                // settled later.
                let later = matches!(
                    action,
                    Action::Hold | Action::Panic | Action::AckAfter(_) | Action::TermAfter(_)
                ) || (matches!(action, Action::Ack) && state.batch_ack.is_some());
                if !later {
                    state.record.0.lock().expect("record lock").outstanding -= 1;
                }
                match action {
                    Action::Ack => match state.batch_ack {
                        Some(after) => {
                            if state.held.is_empty() {
                                myself.send_after(after, || TargetMsg::Flush);
                            }
                            state.held.push(delivery);
                        }
                        None => delivery.ack(),
                    },
                    Action::Nak(Some(delay)) => delivery.nak_after(delay),
                    Action::Nak(None) => delivery.nak(),
                    Action::Term => delivery.term("test terminated it"),
                    Action::Drop => drop(delivery),
                    Action::Hold => state.never.push(delivery),
                    Action::Panic => panic!(
                        "target panics on stream sequence {}",
                        delivery.info().stream_sequence
                    ),
                    Action::AckAfter(delay) => {
                        let record = state.record.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            record.0.lock().expect("record lock").outstanding -= 1;
                            delivery.ack();
                        });
                    }
                    Action::TermAfter(delay) => {
                        let record = state.record.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            record.0.lock().expect("record lock").outstanding -= 1;
                            delivery.term("test terminated it");
                        });
                    }
                }
            }
            TargetMsg::Flush => {
                let held = std::mem::take(&mut state.held);
                state.record.0.lock().expect("record lock").outstanding -= held.len();
                for delivery in held {
                    delivery.ack();
                }
            }
        }
        Ok(())
    }
}

/// Spawns a recording target with a decision function.
pub async fn spawn_target(
    decide: impl Fn(&Delivery) -> Action + Send + Sync + 'static,
) -> (ActorRef<TargetMsg>, DerivedActorRef<Delivery>, Record) {
    spawn_target_with(Arc::new(decide), None).await
}

pub async fn spawn_target_with(
    decide: Decide,
    batch_ack: Option<Duration>,
) -> (ActorRef<TargetMsg>, DerivedActorRef<Delivery>, Record) {
    let record = Record::default();
    let (actor, _) = Actor::spawn(
        None,
        RecordingTarget,
        TargetArgs {
            decide,
            record: record.clone(),
            batch_ack,
        },
    )
    .await
    .expect("spawn target");
    let derived = actor.get_derived();
    (actor, derived, record)
}

/// A target that acks everything.
pub async fn acking_target() -> (ActorRef<TargetMsg>, DerivedActorRef<Delivery>, Record) {
    spawn_target(|_| Action::Ack).await
}

/// The running child of a durable consumer, as the supervisor knows it.
pub async fn lookup(
    supervisor: &ActorRef<SupervisorMsg>,
    durable: &str,
) -> Option<ActorRef<ConsumerMsg>> {
    supervisor
        .call(
            |reply| SupervisorMsg::Lookup {
                durable: durable.into(),
                reply,
            },
            None,
        )
        .await
        .expect("lookup")
        .success_or_panic()
}

/// Spawns a pull child directly, without a supervisor.
pub async fn spawn_pull(
    env: &Env,
    spec: ractor_jetstream::ConsumerSpec,
    target: DerivedActorRef<Delivery>,
) -> ActorRef<ConsumerMsg> {
    spawn_child(env, ractor_jetstream::PullConsumer, spec, target).await
}

/// Spawns a push child directly, without a supervisor: it consumes at once.
pub async fn spawn_push(
    env: &Env,
    spec: ractor_jetstream::ConsumerSpec,
    target: DerivedActorRef<Delivery>,
) -> ActorRef<ConsumerMsg> {
    spawn_child(env, ractor_jetstream::PushConsumer, spec, target).await
}

async fn spawn_child<A>(
    env: &Env,
    child: A,
    spec: ractor_jetstream::ConsumerSpec,
    target: DerivedActorRef<Delivery>,
) -> ActorRef<ConsumerMsg>
where
    A: Actor<Msg = ConsumerMsg, Arguments = ractor_jetstream::ConsumerArgs>,
{
    let (child, _) = Actor::spawn(
        None,
        child,
        ractor_jetstream::ConsumerArgs {
            connection: env.js.clone().into(),
            spec,
            target: target.into(),
        },
    )
    .await
    .expect("spawn consumer child");
    child
}

/// Drains a child directly and returns its report.
pub async fn drain(
    child: &ActorRef<ConsumerMsg>,
    timeout: Duration,
) -> ractor_jetstream::DrainReport {
    child
        .call(
            |reply| ConsumerMsg::Drain { timeout, reply },
            Some(timeout + PATIENCE),
        )
        .await
        .expect("drain")
        .success_or_panic()
}

/// A target that works through its deliveries one at a time, taking `pace`
/// for each before acking it, like a consumer slower than the server.
pub struct PacedTarget;

impl Actor for PacedTarget {
    type Msg = TargetMsg;
    type State = (Record, Duration);
    type Arguments = (Record, Duration);

    async fn pre_start(
        &self,
        _myself: ActorRef<TargetMsg>,
        args: (Record, Duration),
    ) -> Result<(Record, Duration), ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TargetMsg>,
        msg: TargetMsg,
        (record, pace): &mut (Record, Duration),
    ) -> Result<(), ActorProcessingErr> {
        if let TargetMsg::Delivery(delivery) = msg {
            record.0.lock().expect("record lock").seen.push(Seen {
                subject: delivery.subject().to_string(),
                stream_sequence: delivery.info().stream_sequence,
                delivered: delivery.info().delivered,
                at: std::time::Instant::now(),
            });
            tokio::time::sleep(*pace).await;
            delivery.ack();
        }
        Ok(())
    }
}

/// Spawns a [`PacedTarget`].
pub async fn paced_target(
    pace: Duration,
) -> (ActorRef<TargetMsg>, DerivedActorRef<Delivery>, Record) {
    let record = Record::default();
    let (actor, _) = Actor::spawn(None, PacedTarget, (record.clone(), pace))
        .await
        .expect("spawn paced target");
    let derived = actor.get_derived();
    (actor, derived, record)
}

/// One member of a shared durable, as a separate process would run it: its
/// own connection, supervisor and recording target (registered as `"t"`).
pub struct Member {
    pub client: async_nats::Client,
    pub supervisor: ActorRef<SupervisorMsg>,
    pub target: ActorRef<TargetMsg>,
    pub record: Record,
}

/// Starts a [`Member`] on the test's server with `topology`.
pub async fn spawn_member(env: &Env, topology: ractor_jetstream::Topology) -> Member {
    let client = async_nats::connect(env.server.url())
        .await
        .expect("member connects");
    let (target, derived, record) = acking_target().await;
    let args = ractor_jetstream::SupervisorArgs::new(jetstream::new(client.clone()), topology)
        .target("t", derived);
    let (supervisor, _) = Actor::spawn(None, ractor_jetstream::JetStreamSupervisor, args)
        .await
        .expect("member's supervisor starts");
    Member {
        client,
        supervisor,
        target,
        record,
    }
}

/// How often each stream sequence was seen, across several records.
pub fn times_seen_across(records: &[&Record]) -> BTreeMap<u64, usize> {
    let mut map = BTreeMap::new();
    for record in records {
        for (seq, n) in record.times_seen() {
            *map.entry(seq).or_default() += n;
        }
    }
    map
}

/// The compiled example, building it first when `cargo test` was asked
/// for only some targets.
pub fn example_bin(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("examples").join(name);
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building example {name} failed");
    }
    bin
}

/// A target that hands each delivery to the test, which decides on it.
pub struct Forward;

impl Actor for Forward {
    type Msg = Delivery;
    type State = tokio::sync::mpsc::UnboundedSender<Delivery>;
    type Arguments = tokio::sync::mpsc::UnboundedSender<Delivery>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        to_test: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(to_test)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        to_test: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = to_test.send(delivery);
        Ok(())
    }
}

pub async fn forwarding_target() -> (
    ActorRef<Delivery>,
    tokio::sync::mpsc::UnboundedReceiver<Delivery>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (actor, _) = Actor::spawn(None, Forward, tx)
        .await
        .expect("spawn forwarding target");
    (actor, rx)
}

/// The next delivery a forwarding target handed over.
pub async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Delivery>) -> Delivery {
    tokio::time::timeout(PATIENCE, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("the target is running")
}
