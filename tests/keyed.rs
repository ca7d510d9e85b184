//! Keyed workers against a real nats-server: N workers behind one durable,
//! in order per key, with naks, a worker that panics, a child killed
//! mid-batch, a hot key, push and pull, messages a dead process left
//! unacknowledged, and the partitions of a partitioned group. Each test
//! asserts what the workers saw per key and what the server's consumer
//! info says.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Delivery, Error, ErrorKind, GroupArgs, GroupHandle, GroupSpec, KeySpec, PushSpec,
    StreamSpec, SupervisorArgs, SupervisorHandle, Topology, Workers,
};

/// What a worker does with one delivery.
#[derive(Debug, Clone, Copy)]
enum Plan {
    /// Works this long, then acks.
    Ack(Duration),
    /// Nak's at once.
    Nak,
    /// Panics (the worker pool spawns the worker again).
    Panic,
}

type Decide = Arc<dyn Fn(&Delivery) -> Plan + Send + Sync>;

/// What the workers saw, shared by all of them.
#[derive(Default)]
struct Seen {
    /// Per key, the message being processed now.
    working: HashMap<String, u64>,
    /// Per key, the stream sequences acked, in the order they were acked.
    acked: BTreeMap<String, Vec<u64>>,
    /// When each stream sequence was acked.
    acked_at: HashMap<u64, Instant>,
    /// Everything that broke the order, described.
    violations: Vec<String>,
    deliveries: u64,
    naked: u64,
    now: usize,
    max_parallel: usize,
}

#[derive(Clone, Default)]
struct Book(Arc<Mutex<Seen>>);

impl Book {
    fn with<R>(&self, f: impl FnOnce(&mut Seen) -> R) -> R {
        f(&mut self.0.lock().expect("book"))
    }

    /// How many distinct messages were acked.
    fn acked_count(&self) -> usize {
        self.with(|s| s.acked_at.len())
    }

    /// Every key's acks in stream order (a message decided after the
    /// child's hold ended comes again at once, so it may be acked twice in
    /// a row); no violation.
    fn assert_in_order(&self) {
        self.with(|s| {
            assert!(s.violations.is_empty(), "order broken: {:?}", s.violations);
            for (key, acked) in &s.acked {
                assert!(
                    acked.windows(2).all(|w| w[0] <= w[1]),
                    "key {key} acked out of stream order: {acked:?}"
                );
            }
        });
    }
}

/// A worker that processes each delivery as the test's plan says and
/// records it in the [`Book`] under the key `$key` gives it.
macro_rules! recording_worker {
    ($worker:ty, $key:expr) => {
        impl Actor for $worker {
            type Msg = Delivery;
            type State = (Book, Decide);
            type Arguments = (Book, Decide);

            async fn pre_start(
                &self,
                _: ActorRef<Delivery>,
                args: (Book, Decide),
            ) -> Result<Self::State, ActorProcessingErr> {
                Ok(args)
            }

            async fn handle(
                &self,
                _: ActorRef<Delivery>,
                delivery: Delivery,
                (book, decide): &mut Self::State,
            ) -> Result<(), ActorProcessingErr> {
                let key: fn(&Delivery) -> String = $key;
                work(book, decide, key(&delivery), delivery).await;
                Ok(())
            }
        }
    };
}

/// Records what it processes, keyed by the subject's second token.
struct KeyedWorker;

recording_worker!(KeyedWorker, key_of);

/// Processes one delivery as the decision says, recording what was seen.
async fn work(book: &Book, decide: &Decide, key: String, delivery: Delivery) {
    let seq = delivery.stream_sequence();
    book.with(|s| {
        s.deliveries += 1;
        if let Some(other) = s.working.insert(key.clone(), seq) {
            s.violations.push(format!(
                "key {key}: {seq} started while {other} was at work"
            ));
        }
        if let Some(last) = s.acked.get(&key).and_then(|a| a.last())
            && *last > seq
        {
            s.violations.push(format!(
                "key {key}: {seq} (delivery {}) started after {last} was acked",
                delivery.delivered()
            ));
        }
        s.now += 1;
        s.max_parallel = s.max_parallel.max(s.now);
    });
    // A worker killed mid-work (its child died) leaves the key too.
    let at_work = AtWork {
        book: book.clone(),
        key: key.clone(),
    };
    let plan = decide(&delivery);
    if let Plan::Ack(work) = plan
        && !work.is_zero()
    {
        tokio::time::sleep(work).await;
    }
    drop(at_work);
    book.with(|s| match plan {
        Plan::Ack(_) => {
            s.acked.entry(key.clone()).or_default().push(seq);
            s.acked_at.insert(seq, Instant::now());
        }
        Plan::Nak => s.naked += 1,
        Plan::Panic => {}
    });
    match plan {
        Plan::Ack(_) => delivery.ack(),
        Plan::Nak => delivery.nak(),
        Plan::Panic => panic!("injected worker panic at {seq}"),
    }
}

/// A message at work: the key is free again when it is dropped.
struct AtWork {
    book: Book,
    key: String,
}

impl Drop for AtWork {
    fn drop(&mut self) {
        self.book.with(|s| {
            s.now -= 1;
            s.working.remove(&self.key);
        });
    }
}

/// The key: the subject's second token (`keyed.<key>`).
fn key_of(delivery: &Delivery) -> String {
    delivery
        .subject()
        .split('.')
        .nth(1)
        .unwrap_or("")
        .to_string()
}

fn workers(book: &Book, decide: impl Fn(&Delivery) -> Plan + Send + Sync + 'static) -> Workers {
    let book = book.clone();
    let decide: Decide = Arc::new(decide);
    Workers::new(move |_| (KeyedWorker, (book.clone(), decide.clone())))
}

/// Publishes `per_key` messages for each of `keys` keys, interleaved
/// (`keyed.k0`, `keyed.k1`, ..., `keyed.k0`, ...).
async fn publish_keys(env: &Env, keys: usize, per_key: usize) -> Vec<u64> {
    publish(
        &env.js,
        (0..per_key).flat_map(|_| (0..keys).map(|k| format!("keyed.k{k}"))),
    )
    .await
}

async fn start(env: &Env, spec: ConsumerSpec, workers: Workers) -> SupervisorHandle {
    let topology = Topology::new()
        .stream(StreamSpec::new("KEYED", ["keyed.>"]))
        .consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w", workers);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    supervisor
}

/// Fetches until `done` holds, retrying while the child restarts.
async fn fetch_until(supervisor: &SupervisorHandle, batch: u64, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    while !done() {
        assert!(Instant::now() < deadline, "not done in time");
        match supervisor
            .fetch("k", batch, Some(Duration::from_millis(200)))
            .await
        {
            Ok(_) => {}
            Err(err) if err.is_transient() => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(err) => panic!("fetch failed: {err}"),
        }
    }
}

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE * 2;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_all_acked(env: &Env, total: u64) {
    let info = wait_for_consumer(&env.js, "KEYED", "k", "everything acked", |i| {
        i.ack_floor.stream_sequence == total && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn pull_workers_keep_each_keys_order_through_naks() {
    let env = env().await;
    let book = Book::default();
    // Every 5th message is nak'ed on its first delivery.
    let keyed = workers(&book, |d| {
        if d.delivered() == 1 && d.stream_sequence().is_multiple_of(5) {
            Plan::Nak
        } else {
            Plan::Ack(Duration::from_millis(1))
        }
    });
    let spec = ConsumerSpec::pull("KEYED", "k", "w").workers(8, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let seqs = publish_keys(&env, 16, 25).await;
    let total = seqs.len();
    fetch_until(&supervisor, 64, || book.acked_count() == total).await;

    book.assert_in_order();
    book.with(|s| {
        assert_eq!(s.acked.len(), 16, "every key");
        assert!(s.acked.values().all(|a| a.len() == 25));
        // A message nak'ed behind an earlier one of its key comes to a
        // worker first on a later delivery, which the rule does not nak.
        assert!(
            (1..=(total / 5) as u64).contains(&s.naked),
            "{} nak'ed",
            s.naked
        );
        assert!(s.deliveries > total as u64, "the nak'ed came again");
        assert!(s.max_parallel > 1, "keys went in parallel");
        assert!(s.max_parallel <= 8, "at most one per worker");
    });
    assert_all_acked(&env, total as u64).await;
}

#[tokio::test]
async fn push_workers_keep_each_keys_order_through_naks_within_the_window() {
    let env = env().await;
    let book = Book::default();
    let keyed = workers(&book, |d| {
        if d.delivered() == 1 && d.stream_sequence().is_multiple_of(7) {
            Plan::Nak
        } else {
            Plan::Ack(Duration::from_millis(2))
        }
    });
    let spec = ConsumerSpec::new("KEYED", "k", "w", PushSpec::default().window(32))
        .workers(4, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let seqs = publish_keys(&env, 12, 30).await;
    let total = seqs.len();
    // The window bounds what is at the workers and waiting for one: never
    // more at once, and it fills (the workers are the slow part).
    let consumer = supervisor.consumer("k").await.expect("consumer handle");
    let deadline = Instant::now() + PATIENCE * 2;
    let mut most = 0;
    while book.acked_count() < total {
        assert!(Instant::now() < deadline, "not done in time");
        if let Ok(stats) = consumer.stats().await {
            assert!(
                stats.in_flight <= 32,
                "more unsettled than the window: {}",
                stats.in_flight
            );
            most = most.max(stats.in_flight);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most > 8, "the window filled up: at most {most}");
    book.assert_in_order();
    book.with(|s| {
        assert_eq!(s.acked.len(), 12);
        assert!(s.max_parallel <= 4);
    });
    assert_all_acked(&env, total as u64).await;
}

#[tokio::test]
async fn a_worker_that_panics_is_spawned_again_and_its_key_resumes_in_order() {
    let env = env().await;
    let book = Book::default();
    // Message 10 and 23 make their worker panic on their first delivery.
    let keyed = workers(&book, |d| match (d.stream_sequence(), d.delivered()) {
        (10 | 23, 1) => Plan::Panic,
        _ => Plan::Ack(Duration::from_millis(2)),
    });
    let spec = ConsumerSpec::pull("KEYED", "k", "w").workers(4, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let seqs = publish_keys(&env, 6, 10).await;
    let total = seqs.len();
    fetch_until(&supervisor, 30, || book.acked_count() == total).await;
    book.assert_in_order();
    assert_all_acked(&env, total as u64).await;
    // The panics cost nothing but a redelivery, and the child was not
    // restarted for them.
    let info = consumer_info(&env.js, "KEYED", "k").await;
    assert_eq!(info.num_redelivered, 0, "all back and acked");
    let status = supervisor.status().await.expect("status");
    assert_eq!(status.child("k").map(|c| c.restarts), Some(0));
}

#[tokio::test]
async fn a_hot_key_holds_one_worker_and_the_cold_keys_finish_first() {
    let env = env().await;
    let book = Book::default();
    // Key k0 is hot: 30 messages of 50 ms each (1.5 s in all); 63 cold
    // keys have 3 messages of 1 ms each.
    let keyed = workers(&book, |d| {
        if key_of(d) == "hot" {
            Plan::Ack(Duration::from_millis(50))
        } else {
            Plan::Ack(Duration::from_millis(1))
        }
    });
    let spec = ConsumerSpec::pull("KEYED", "k", "w").workers(8, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let hot: Vec<String> = (0..30).map(|_| "keyed.hot".to_string()).collect();
    let cold: Vec<String> = (0..3)
        .flat_map(|_| (1..64).map(|k| format!("keyed.c{k}")))
        .collect();
    // Hot messages first, so that the cold ones queue behind them in the
    // stream.
    let seqs = publish(&env.js, hot.into_iter().chain(cold)).await;
    let total = seqs.len();
    fetch_until(&supervisor, 256, || book.acked_count() == total).await;
    book.assert_in_order();
    book.with(|s| {
        let last_hot = s.acked["hot"]
            .iter()
            .map(|q| s.acked_at[q])
            .max()
            .expect("hot acked");
        let last_cold = s
            .acked
            .iter()
            .filter(|(k, _)| k.as_str() != "hot")
            .flat_map(|(_, a)| a.iter().map(|q| s.acked_at[q]))
            .max()
            .expect("cold acked");
        assert!(
            last_cold < last_hot,
            "the cold keys finished {:?} after the hot one",
            last_cold - last_hot
        );
        assert_eq!(s.acked.len(), 64);
    });
    assert_all_acked(&env, total as u64).await;
}

#[tokio::test]
async fn a_child_killed_mid_batch_resumes_each_key_in_order() {
    let env = env().await;
    let book = Book::default();
    let keyed = workers(&book, |_| Plan::Ack(Duration::from_millis(3)));
    let spec = ConsumerSpec::pull("KEYED", "k", "w")
        .ack_wait(Duration::from_secs(30))
        .workers(4, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let seqs = publish_keys(&env, 8, 40).await;
    let total = seqs.len();
    let pull = supervisor.pull("k").await.expect("pull handle");
    // A fetch runs while the child is killed, once some are acked.
    let fetching = {
        let pull = pull.clone();
        tokio::spawn(async move { pull.fetch(100, Some(Duration::from_secs(2))).await })
    };
    wait_until("some acked", || book.acked_count() >= 20).await;
    let killed_at = Instant::now();
    pull.consumer().child().expect("child").kill();
    let cut = fetching.await.expect("fetch task");
    assert!(
        matches!(cut, Err(Error::FetchInterrupted { .. }) | Ok(_)),
        "{cut:?}"
    );
    fetch_until(&supervisor, 100, || book.acked_count() == total).await;
    // What was in flight came back at once, not after the 30 s ack wait.
    assert!(killed_at.elapsed() < Duration::from_secs(25));
    book.assert_in_order();
    assert_all_acked(&env, total as u64).await;
    let status = supervisor.status().await.expect("status");
    assert_eq!(status.child("k").map(|c| c.restarts), Some(1));
}

/// Messages a dead process left unacknowledged come back after the ack
/// wait; newer messages of the same keys wait for them.
#[tokio::test]
async fn messages_a_dead_process_left_are_processed_before_newer_ones_of_their_keys() {
    let env = env().await;
    create_stream(&env.js, "KEYED", &["keyed.>"]).await;
    let first = publish_keys(&env, 4, 5).await;
    let spec = ConsumerSpec::pull("KEYED", "k", "w")
        .ack_wait(Duration::from_secs(2))
        .workers(4, KeySpec::SubjectToken(1));
    // "The dead process": binds the same durable, takes 20 messages and
    // never settles them.
    ractor_jetstream::ensure_consumer(&ractor_jetstream::Connection::from(env.js.clone()), &spec)
        .await
        .expect("durable");
    {
        use futures::StreamExt;
        let consumer: async_nats::jetstream::consumer::PullConsumer = env
            .js
            .get_stream("KEYED")
            .await
            .expect("stream")
            .get_consumer("k")
            .await
            .expect("consumer");
        let mut batch = consumer
            .fetch()
            .max_messages(20)
            .messages()
            .await
            .expect("fetch");
        let mut taken = 0;
        while let Some(message) = batch.next().await {
            message.expect("message");
            taken += 1;
        }
        assert_eq!(taken, 20);
    }
    let info = consumer_info(&env.js, "KEYED", "k").await;
    assert_eq!(info.num_ack_pending, 20);
    // Newer messages of the same keys, available at once.
    let newer = publish_keys(&env, 4, 5).await;
    let total = first.len() + newer.len();

    let book = Book::default();
    let keyed = workers(&book, |_| Plan::Ack(Duration::ZERO));
    let topology = Topology::new().consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w", keyed);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    fetch_until(&supervisor, 40, || book.acked_count() == total).await;
    book.assert_in_order();
    book.with(|s| {
        for (key, acked) in &s.acked {
            assert_eq!(acked.len(), 10, "key {key}: {acked:?}");
        }
    });
    assert_all_acked(&env, total as u64).await;
}

#[tokio::test]
async fn workers_without_keyed_target_or_key_are_refused_and_nothing_is_created() {
    let env = env().await;
    let book = Book::default();
    // `workers` in the spec, but the target is one actor.
    let (_t, target, _record) = spawn_target(|_| Action::Ack).await;
    let topology = Topology::new()
        .stream(StreamSpec::new("KEYED", ["keyed.>"]))
        .consumer(ConsumerSpec::pull("KEYED", "k", "w").workers(4, KeySpec::SubjectToken(1)));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w", target);
    let err = SupervisorHandle::spawn(None, args)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("workers"), "{err}");
    // Keyed workers, but no key anywhere.
    let mut spec = ConsumerSpec::pull("KEYED", "k2", "w");
    spec.child.workers = Some(4);
    let topology = Topology::new().consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("w", workers(&book, |_| Plan::Ack(Duration::ZERO)));
    let err = SupervisorHandle::spawn(None, args)
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("key"), "{err}");
    // Neither durable exists on the server.
    let stream = env.js.get_stream("KEYED").await;
    if let Ok(stream) = stream {
        assert!(stream.consumer_info("k").await.is_err());
        assert!(stream.consumer_info("k2").await.is_err());
    }
    // A spec that names a key without workers is invalid by itself.
    let mut spec = ConsumerSpec::pull("KEYED", "k3", "w");
    spec.child.key = Some(KeySpec::SubjectToken(1));
    assert!(spec.validate().is_err());
    let zero = ConsumerSpec::pull("KEYED", "k4", "w").workers(0, KeySpec::SubjectToken(1));
    assert!(zero.validate().is_err());
}

#[tokio::test]
async fn a_header_key_and_a_key_function_given_in_code_order_their_keys() {
    let env = env().await;
    create_stream(&env.js, "KEYED", &["keyed.>"]).await;
    // Keys in a header: one subject, 5 keys.
    let mut acks = Vec::new();
    for i in 0..100u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Key", format!("h{}", i % 5).as_str());
        acks.push(
            env.js
                .publish_with_headers("keyed.all", headers, i.to_string().into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
    let book = Book::default();
    let by_header = Book::default();
    // The test's own book keys by the subject; record by header instead.
    let keyed = {
        let by_header = by_header.clone();
        let decide: Decide = Arc::new(|d| {
            if d.delivered() == 1 && d.stream_sequence().is_multiple_of(9) {
                Plan::Nak
            } else {
                Plan::Ack(Duration::from_millis(1))
            }
        });
        Workers::new(move |_| (HeaderWorker, (by_header.clone(), decide.clone())))
    };
    let spec = ConsumerSpec::pull("KEYED", "k", "w").workers(4, KeySpec::Header("Nats-Key".into()));
    let topology = Topology::new().consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w", keyed);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    fetch_until(&supervisor, 40, || by_header.acked_count() == 100).await;
    by_header.assert_in_order();
    by_header.with(|s| assert_eq!(s.acked.len(), 5, "five header keys"));
    assert_all_acked(&env, 100).await;
    drop(book);

    // A key function given in code: the payload's parity, over a second
    // durable.
    let parity = Book::default();
    let keyed = {
        let parity = parity.clone();
        let decide: Decide = Arc::new(|_| Plan::Ack(Duration::from_millis(1)));
        Workers::new(move |_| (ParityWorker, (parity.clone(), decide.clone()))).key_fn(|d| {
            let n: u64 = std::str::from_utf8(d.payload())
                .ok()
                .and_then(|p| p.parse().ok())
                .unwrap_or_default();
            format!("p{}", n % 2)
        })
    };
    let mut spec = ConsumerSpec::pull("KEYED", "k2", "w2");
    spec.child.workers = Some(4);
    let topology = Topology::new().consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w2", keyed);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let deadline = Instant::now() + PATIENCE * 2;
    while parity.acked_count() < 100 {
        assert!(Instant::now() < deadline, "not done in time");
        let _ = supervisor
            .fetch("k2", 40, Some(Duration::from_millis(200)))
            .await;
    }
    parity.assert_in_order();
    parity.with(|s| {
        assert_eq!(s.acked.len(), 2, "two parity keys");
        assert!(s.max_parallel <= 2, "one at a time per key, two keys");
    });
}

/// Records like [`KeyedWorker`], keyed by the `Nats-Key` header.
struct HeaderWorker;

/// Records like [`KeyedWorker`], keyed by the payload's parity.
struct ParityWorker;

recording_worker!(HeaderWorker, |d| d
    .headers()
    .and_then(|h| h.get("Nats-Key"))
    .map(|v| v.as_str().to_string())
    .unwrap_or_default());
recording_worker!(ParityWorker, |d| {
    let n: u64 = std::str::from_utf8(d.payload())
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or_default();
    format!("p{}", n % 2)
});

#[test]
fn a_topology_file_declares_workers_and_their_key() {
    let topology = ractor_jetstream::Topology::from_toml_str(
        r#"
        [[streams]]
        name = "ORDERS"
        subjects = ["orders.>"]

        [[consumers]]
        stream = "ORDERS"
        durable = "by-customer"
        target = "order-workers"
        mode = "pull"
        workers = 8
        key = { subject_token = 2 }

        [[consumers]]
        stream = "ORDERS"
        durable = "by-header"
        target = "order-workers"
        mode = "push"
        workers = 3
        key = { header = "Nats-Key" }
        "#,
    )
    .expect("parses");
    let consumers = &topology.consumers;
    assert_eq!(consumers[0].child.workers, Some(8));
    assert_eq!(consumers[0].child.key, Some(KeySpec::SubjectToken(2)));
    assert_eq!(consumers[1].child.workers, Some(3));
    assert_eq!(
        consumers[1].child.key,
        Some(KeySpec::Header("Nats-Key".into()))
    );
    let bad = ractor_jetstream::Topology::from_toml_str(
        r#"
        [[consumers]]
        stream = "ORDERS"
        durable = "bad"
        target = "w"
        mode = "pull"
        workers = 0
        key = { subject_token = 2 }
        "#,
    );
    let err = bad.expect_err("0 workers");
    assert!(err.to_string().contains("workers"), "{err}");
}

#[tokio::test]
async fn each_keys_order_holds_across_a_supervisor_restart() {
    let env = env().await;
    let book = Book::default();
    let decide = |d: &Delivery| {
        if d.delivered() == 1 && d.stream_sequence().is_multiple_of(11) {
            Plan::Nak
        } else {
            Plan::Ack(Duration::from_millis(2))
        }
    };
    let spec = ConsumerSpec::pull("KEYED", "k", "w")
        .ack_wait(Duration::from_secs(30))
        .workers(4, KeySpec::SubjectToken(1));
    let first = start(&env, spec.clone(), workers(&book, decide)).await;
    let seqs = publish_keys(&env, 8, 30).await;
    let total = seqs.len();
    // The first supervisor works a while, then stops in the middle of a
    // fetch.
    let fetching = {
        let first = first.clone();
        tokio::spawn(async move {
            loop {
                if first
                    .fetch("k", 50, Some(Duration::from_millis(200)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        })
    };
    wait_until("some acked", || book.acked_count() >= 60).await;
    first
        .actor()
        .stop_and_wait(None, Some(PATIENCE))
        .await
        .expect("stopped");
    let _ = fetching.await;
    let stopped_at = Instant::now();
    // A second one on the same durable takes over.
    let second = start(&env, spec, workers(&book, decide)).await;
    fetch_until(&second, 50, || book.acked_count() == total).await;
    // What was in flight came back at once, not after the 30 s ack wait.
    assert!(stopped_at.elapsed() < Duration::from_secs(25));
    book.assert_in_order();
    assert_all_acked(&env, total as u64).await;
}

/// Messages that wait behind a slow one of their key longer than the
/// child's hold are nak'ed by the child; they are not handed to a worker
/// afterwards, and their key waits for them to come back.
#[tokio::test]
async fn messages_that_waited_past_the_hold_are_not_worked_on_out_of_order() {
    let env = env().await;
    let book = Book::default();
    let keyed = workers(&book, |_| Plan::Ack(Duration::from_millis(250)));
    let spec = ConsumerSpec::pull("KEYED", "k", "w")
        .ack_wait(Duration::from_secs(30))
        .max_hold(Duration::from_millis(600))
        .workers(2, KeySpec::SubjectToken(1));
    let supervisor = start(&env, spec, keyed).await;
    let seqs = publish(&env.js, (0..8).map(|_| "keyed.slow".to_string())).await;
    let total = seqs.len();
    fetch_until(&supervisor, 8, || book.acked_count() == total).await;
    // An ack that came after the hold ended was not taken: that message is
    // delivered again, and acked again, before the server is done.
    let deadline = Instant::now() + PATIENCE * 2;
    loop {
        let info = try_consumer_info(&env.js, "KEYED", "k").await;
        if info.is_ok_and(|i| i.ack_floor.stream_sequence == total as u64 && i.num_ack_pending == 0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the server never saw every ack");
        let _ = supervisor
            .fetch("k", 8, Some(Duration::from_millis(200)))
            .await;
    }
    book.assert_in_order();
    book.with(|s| {
        let mut acked = s.acked["slow"].clone();
        acked.dedup();
        assert_eq!(acked, (1..=8).collect::<Vec<u64>>());
        // Some waited past the hold and came again.
        assert!(s.deliveries >= 8);
    });
    assert_all_acked(&env, total as u64).await;
    let stats = supervisor
        .consumer("k")
        .await
        .expect("consumer")
        .stats()
        .await
        .expect("stats");
    assert!(stats.timed_out > 0, "some waited past the hold: {stats:?}");
}

/// The waits come from the durable as the server has it: a durable created
/// elsewhere with a 3 s ack wait, bound by a spec that says nothing of it.
/// Newer messages wait for the leftovers about 3 s, not the 30 s default.
#[tokio::test]
async fn leftovers_are_waited_for_by_the_durables_own_ack_wait() {
    let env = env().await;
    create_stream(&env.js, "KEYED", &["keyed.>"]).await;
    let first = publish_keys(&env, 4, 5).await;
    let stream = env.js.get_stream("KEYED").await.expect("stream");
    let consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("k".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            ..Default::default()
        })
        .await
        .expect("durable");
    {
        use futures::StreamExt;
        let mut batch = consumer
            .fetch()
            .max_messages(20)
            .messages()
            .await
            .expect("fetch");
        while let Some(message) = batch.next().await {
            message.expect("message");
        }
    }
    let newer = publish_keys(&env, 4, 5).await;
    let total = first.len() + newer.len();
    let book = Book::default();
    let keyed = workers(&book, |_| Plan::Ack(Duration::ZERO));
    // The spec does not set ack_wait.
    let spec = ConsumerSpec::pull("KEYED", "k", "w").workers(4, KeySpec::SubjectToken(1));
    let topology = Topology::new().consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("w", keyed);
    let started = Instant::now();
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let deadline = started + Duration::from_secs(20);
    while book.acked_count() < total {
        assert!(
            Instant::now() < deadline,
            "{} of {total} acked after 20 s: the newer messages waited by the spec's default ack wait (30 s), not the durable's 3 s",
            book.acked_count()
        );
        let _ = supervisor
            .fetch("k", 40, Some(Duration::from_millis(200)))
            .await;
    }
    book.assert_in_order();
    assert_all_acked(&env, total as u64).await;
}

/// Records what it processes, keyed by the published subject's second
/// token (`kp.<key>`, stored by a partitioned group as `<p>.kp.<key>`).
struct PartitionWorker;

recording_worker!(PartitionWorker, |d| {
    ractor_jetstream::group::split_stored_subject(d.subject())
        .and_then(|(_, published)| published.split('.').nth(1))
        .unwrap_or("")
        .to_string()
});

/// One member of the group `KPG` (2 partitions over `kp.*`, members `a`
/// and `b`) on a connection of its own, whose partitions feed 4 keyed
/// workers. The spec sets `workers` and no key: the group's key is used.
async fn keyed_member(
    env: &Env,
    name: &str,
    book: &Book,
) -> (async_nats::Client, SupervisorHandle, GroupHandle) {
    let client = async_nats::connect(env.server.url())
        .await
        .expect("member connects");
    let js = async_nats::jetstream::new(client.clone());
    let mut spec = GroupSpec::new("KPG", "kp.*", 2, 2, name, "w")
        .members(["a", "b"])
        .priority_timeout(Duration::from_secs(1));
    spec.child.workers = Some(4);
    let book = book.clone();
    let decide: Decide = Arc::new(|_| Plan::Ack(Duration::from_millis(3)));
    let keyed = Workers::new(move |_| (PartitionWorker, (book.clone(), decide.clone())));
    let args = SupervisorArgs::new(js.clone(), Topology::new()).target("w", keyed);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("member's supervisor");
    let (group, _) = GroupHandle::spawn(GroupArgs {
        spec,
        supervisor: supervisor.clone(),
        connection: js.into(),
    })
    .await
    .expect("member joins");
    (client, supervisor, group)
}

/// A partition of a partitioned group feeds keyed workers: the keys of
/// one partition go in parallel, each key in stream order, and when one
/// member leaves mid-run the other takes its partition over with each
/// key's order kept and nothing lost.
#[tokio::test]
async fn partitions_feed_keyed_workers_in_order_per_key_through_a_handover() {
    let env = env().await;
    let book = Book::default();
    let (_ca, _sa, a) = keyed_member(&env, "a", &book).await;
    let (_cb, _sb, b) = keyed_member(&env, "b", &book).await;
    for (name, member) in [("a", &a), ("b", &b)] {
        let mut holds = member.holds();
        let deadline = Instant::now() + PATIENCE;
        while holds.borrow_and_update().is_empty() {
            assert!(Instant::now() < deadline, "{name} holds no partition");
            let _ = tokio::time::timeout(Duration::from_millis(100), holds.changed()).await;
        }
    }
    let (keys, per_key) = (16, 30);
    let seqs = publish(
        &env.js,
        (0..per_key).flat_map(|_| (0..keys).map(|k| format!("kp.k{k}"))),
    )
    .await;
    let total = seqs.len();
    wait_until("a third acked", || book.acked_count() >= total / 3).await;
    b.leave(Duration::from_secs(10)).await.expect("b leaves");
    let status = b.status().await.expect("b's status");
    assert!(status.held.is_empty(), "b left: {status:?}");
    wait_until("a holds both partitions", || a.holds().borrow().len() == 2).await;
    wait_until("every message acked", || book.acked_count() == total).await;

    book.assert_in_order();
    book.with(|s| {
        assert_eq!(s.acked.len(), keys, "every key: {:?}", s.acked.keys());
        for (key, acked) in &s.acked {
            let distinct: std::collections::BTreeSet<_> = acked.iter().collect();
            assert_eq!(distinct.len(), per_key, "key {key}: {acked:?}");
        }
        assert!(
            s.max_parallel > 2,
            "keys of a partition went in parallel: {}",
            s.max_parallel
        );
        assert!(s.max_parallel <= 8, "at most 4 workers per member");
    });
    assert!(a.status().await.expect("a's status").takeovers >= 1);
    for partition in 0..2 {
        let durable = ractor_jetstream::group::durable_name("KPG", partition);
        let info = wait_for_consumer(&env.js, "KPG", &durable, "everything acked", |i| {
            i.num_ack_pending == 0 && i.num_pending == 0
        })
        .await;
        assert!(
            info.ack_floor.stream_sequence > 0,
            "{durable} acked: {info:?}"
        );
    }
}
