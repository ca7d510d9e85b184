//! Metrics (the `telemetry` module) against a real server: what a child
//! records equals its own stats and what the server's consumer info says.
//! The recorder is `metrics-util`'s in-memory one, installed for the whole
//! test binary (the facade takes one global recorder). Its snapshots reset
//! what they read, so this binary has one test, which reads once.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use ractor::ActorRef;
use ractor_jetstream::telemetry::names;
use ractor_jetstream::{ConsumerMsg, ConsumerSpec, ConsumerStats};

use common::{
    Action, CallResultExt, PATIENCE, consumer_info, create_stream, env, fetch, publish_n,
    spawn_pull, spawn_target,
};

/// A keyed worker that acks everything.
struct Acker;

impl ractor::Actor for Acker {
    type Msg = ractor_jetstream::Delivery;
    type State = ();
    type Arguments = ();
    async fn pre_start(
        &self,
        _: ActorRef<ractor_jetstream::Delivery>,
        _: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
    async fn handle(
        &self,
        _: ActorRef<ractor_jetstream::Delivery>,
        delivery: ractor_jetstream::Delivery,
        _: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        delivery.ack();
        Ok(())
    }
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only metrics recorder");
        snapshotter
    })
}

/// One durable's series, by metric name.
struct Series(Vec<(CompositeKey, DebugValue)>);

impl Series {
    fn of(durable: &str) -> Self {
        let all = snapshotter().snapshot().into_vec();
        Self(
            all.into_iter()
                .filter(|(key, ..)| {
                    key.key()
                        .labels()
                        .any(|l| l.key() == "durable" && l.value() == durable)
                })
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    fn find(&self, kind: MetricKind, name: &str) -> Option<&DebugValue> {
        self.0
            .iter()
            .find(|(key, _)| key.kind() == kind && key.key().name() == name)
            .map(|(_, value)| value)
    }

    fn counter(&self, name: &str) -> u64 {
        match self.find(MetricKind::Counter, name) {
            Some(DebugValue::Counter(n)) => *n,
            other => panic!("{name}: {other:?}"),
        }
    }

    /// A counter with a `kind` label; 0 when it was not touched since the
    /// last snapshot.
    fn counter_of_kind(&self, name: &str, kind: &str) -> u64 {
        self.0
            .iter()
            .find(|(key, _)| {
                key.kind() == MetricKind::Counter
                    && key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "kind" && l.value() == kind)
            })
            .map_or(0, |(_, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
    }

    fn gauge(&self, name: &str) -> f64 {
        match self.find(MetricKind::Gauge, name) {
            Some(DebugValue::Gauge(v)) => v.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn samples(&self, name: &str) -> usize {
        match self.find(MetricKind::Histogram, name) {
            Some(DebugValue::Histogram(values)) => values.len(),
            other => panic!("{name}: {other:?}"),
        }
    }

    fn labels(&self, name: &str) -> Vec<(String, String)> {
        let (key, _) = self
            .0
            .iter()
            .find(|(key, _)| key.key().name() == name)
            .unwrap_or_else(|| panic!("no series {name}"));
        let mut labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect();
        labels.sort();
        labels
    }
}

async fn stats(child: &ActorRef<ConsumerMsg>) -> ConsumerStats {
    child
        .call(ConsumerMsg::Stats, Some(PATIENCE))
        .await
        .expect("stats call")
        .success_or_panic()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_childs_metrics_equal_its_stats_and_the_servers_consumer_info() {
    snapshotter();
    let env = env().await;
    create_stream(&env.js, "M", &["m.>"]).await;
    publish_n(&env.js, "m.a", 50).await;
    // Every tenth message is nak'ed once, so it is delivered twice.
    let (_target, derived, record) =
        spawn_target(|d| match (d.stream_sequence() % 10, d.delivered()) {
            (0, 1) => Action::Nak(None),
            _ => Action::Ack,
        })
        .await;
    let spec = ConsumerSpec::pull("M", "measured", "t").info_interval(Duration::from_millis(100));
    let child = spawn_pull(&env, spec, derived).await;
    while record.distinct().len() < 50 || record.count() < 55 {
        fetch(&child, 20, Duration::from_millis(300))
            .await
            .expect("fetch");
    }
    // The poll catches up with the server's view: everything acked.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let stats = loop {
        let now = stats(&child).await;
        if now
            .server
            .is_some_and(|s| s.ack_floor == 50 && s.num_ack_pending == 0)
        {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the poll never saw the ack floor at 50: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let info = consumer_info(&env.js, "M", "measured").await;
    let series = Series::of("measured");
    assert_eq!(
        series.labels(names::ACKED),
        vec![
            ("durable".to_string(), "measured".to_string()),
            ("mode".to_string(), "pull".to_string()),
            ("stream".to_string(), "M".to_string()),
        ]
    );
    assert_eq!((stats.delivered, stats.acked, stats.naked), (55, 50, 5));
    assert_eq!(series.counter(names::DELIVERED), stats.delivered);
    assert_eq!(series.counter(names::ACKED), stats.acked);
    assert_eq!(series.counter(names::NAKED), stats.naked);
    assert_eq!(series.counter(names::REDELIVERED), 5);
    assert_eq!(series.gauge(names::IN_FLIGHT), 0.0);
    assert_eq!(series.samples(names::DECISION_SECONDS), 55);
    assert_eq!(series.samples(names::FETCH_SECONDS) as u64, stats.fetches);
    // The lag, as the server has it.
    assert_eq!(info.ack_floor.stream_sequence, 50);
    assert_eq!(series.gauge(names::ACK_FLOOR), 50.0);
    assert_eq!(
        series.gauge(names::NUM_ACK_PENDING),
        info.num_ack_pending as f64
    );
    assert_eq!(series.gauge(names::NUM_PENDING), info.num_pending as f64);
    assert_eq!(series.gauge(names::NUM_PENDING), 0.0);
    assert_eq!(
        series.gauge(names::NUM_REDELIVERED),
        info.num_redelivered as f64
    );

    // A child without an info interval never asks for its lag.
    let quiet = spawn_pull(
        &env,
        ConsumerSpec::pull("M", "quiet", "t"),
        spawn_target(|_| Action::Ack).await.1,
    )
    .await;
    fetch(&quiet, 1, Duration::from_millis(100))
        .await
        .expect("fetch");
    assert_eq!(self::stats(&quiet).await.server, None);

    // Advisories: the target's term and the child's own on a last
    // delivery both reach the server's advisory, and the child that
    // watches them counts them.
    let (_target, derived, _record) = spawn_target(|d| match d.stream_sequence() {
        1 => Action::Term,
        _ => Action::Nak(None),
    })
    .await;
    create_stream(&env.js, "P", &["p.>"]).await;
    publish_n(&env.js, "p.a", 2).await;
    let spec = ConsumerSpec::pull("P", "poison", "t")
        .max_deliver(2)
        .advisories(true);
    let poison = spawn_pull(&env, spec, derived).await;
    let mut terminated = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while terminated < 2 {
        let _ = fetch(&poison, 2, Duration::from_millis(200)).await;
        // Each snapshot resets what it read: add them up.
        terminated += Series::of("poison").counter_of_kind(names::ADVISORIES, "terminated");
        assert!(
            tokio::time::Instant::now() < deadline,
            "{terminated} terminated advisories counted, not 2"
        );
    }
    assert_eq!(terminated, 2);

    // Keyed workers: what each worker was handed.
    create_stream(&env.js, "K", &["k.>"]).await;
    for key in 0..4 {
        publish_n(&env.js, &format!("k.{key}"), 5).await;
    }
    let keyed = ractor::Actor::spawn(
        None,
        ractor_jetstream::PullConsumer,
        ractor_jetstream::ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::pull("K", "keyed", "workers")
                .workers(2, ractor_jetstream::KeySpec::SubjectToken(1)),
            target: ractor_jetstream::Workers::new(|_| (Acker, ())).into(),
        },
    )
    .await
    .expect("spawn keyed child")
    .0;
    let mut acked = 0;
    while acked < 20 {
        acked += fetch(&keyed, 20, Duration::from_millis(300))
            .await
            .expect("fetch")
            .acked;
    }
    let handed: u64 = snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| {
            key.key().name() == names::KEYED_WORKER_DELIVERIES
                && key
                    .key()
                    .labels()
                    .any(|l| l.key() == "durable" && l.value() == "keyed")
        })
        .map(|(_, _, _, value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(handed, 20);

    let info = consumer_info(&env.js, "P", "poison").await;
    assert_eq!(
        (info.ack_floor.stream_sequence, info.num_ack_pending),
        (2, 0)
    );
}
