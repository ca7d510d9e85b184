//! Faults outside the actor tree, against real nats-servers: the server
//! killed and restarted on its store, the server paused, the consumer
//! deleted under a running child, the stream leader killed in a 3-node
//! cluster, a fresh actor system taking over a durable, and two supervisors
//! sharing one.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nats_harness::NatsCluster;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, JetStreamSupervisor, PushSpec, StreamSpec, SupervisorArgs, SupervisorMsg,
    Topology,
};
use tokio::task::JoinHandle;

/// Fetches in a loop until stopped, ignoring errors (they are expected
/// while the server is down).
fn fetch_loop(
    supervisor: ActorRef<SupervisorMsg>,
    durable: &'static str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let result = supervisor
                .call(
                    |reply| SupervisorMsg::Fetch {
                        durable: durable.into(),
                        batch: 20,
                        expires: Some(Duration::from_millis(300)),
                        reply,
                    },
                    Some(Duration::from_secs(30)),
                )
                .await;
            if !matches!(result, Ok(ractor::rpc::CallResult::Success(Ok(_)))) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    })
}

/// Publishes, retrying each message until the server stores it (with a
/// message id, so a retry is not stored twice).
async fn publish_retrying(
    js: &async_nats::jetstream::Context,
    subject: &str,
    ids: std::ops::Range<usize>,
) {
    for i in ids {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let attempt = async {
                let headers = {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("Nats-Msg-Id", format!("{subject}-{i}").as_str());
                    h
                };
                js.publish_with_headers(subject.to_string(), headers, format!("m{i}").into())
                    .await
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            };
            match attempt.await {
                Ok(_) => break,
                Err(err) => {
                    assert!(
                        Instant::now() < deadline,
                        "could not publish {subject} #{i}: {err}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[tokio::test]
async fn consumption_resumes_by_itself_after_the_server_is_killed_and_restarted() {
    let mut env = env().await;
    let (_pt, pull_target, pull_record) = acking_target().await;
    let (_ht, push_target, push_record) = acking_target().await;
    let short = Duration::from_secs(2);
    let topology = Topology::new()
        .stream(StreamSpec::new("KILL", ["kill.>"]))
        .consumer(
            ConsumerSpec::pull("KILL", "puller", "pull")
                .filter(["kill.pull"])
                .ack_wait(short),
        )
        .consumer(
            ConsumerSpec::new(
                "KILL",
                "pusher",
                "push",
                PushSpec::default().idle_heartbeat(Duration::from_millis(500)),
            )
            .filter(["kill.push"])
            .ack_wait(short),
        );
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("pull", pull_target)
        .target("push", push_target);
    let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args)
        .await
        .expect("supervisor");
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = fetch_loop(supervisor.clone(), "puller", stop.clone());

    publish_retrying(&env.js, "kill.pull", 0..100).await;
    publish_retrying(&env.js, "kill.push", 0..100).await;
    wait_until("consumption under way", PATIENCE, || {
        pull_record.count() > 20 && push_record.count() > 20
    })
    .await;

    env.server.kill().await.expect("SIGKILL");
    env.server
        .restart()
        .await
        .expect("restart on the same store");

    publish_retrying(&env.js, "kill.pull", 100..200).await;
    publish_retrying(&env.js, "kill.push", 100..200).await;
    for (durable, record) in [("puller", &pull_record), ("pusher", &push_record)] {
        let deadline = Instant::now() + Duration::from_secs(40);
        while record.distinct().len() < 200 {
            assert!(
                Instant::now() < deadline,
                "{durable} saw only {} of 200 messages",
                record.distinct().len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_for_consumer(&env.js, "KILL", durable, "all 200 acked", |i| {
            i.num_ack_pending == 0 && i.num_pending == 0 && i.ack_floor.consumer_sequence > 0
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    fetcher.await.expect("fetcher");
    // No gaps: the two durables together saw every stream sequence.
    let all: BTreeSet<u64> = pull_record
        .distinct()
        .union(&push_record.distinct())
        .copied()
        .collect();
    assert_eq!(all, (1..=400).collect());
    let status = supervisor
        .call(SupervisorMsg::Status, None)
        .await
        .expect("status")
        .success_or_panic();
    assert!(
        status
            .children
            .iter()
            .all(|c| c.state == ractor_jetstream::ChildState::Running),
        "{status:?}"
    );
}

#[tokio::test]
async fn consumption_recovers_after_the_server_is_paused_longer_than_the_heartbeat() {
    let env = env().await;
    let (_ht, push_target, push_record) = acking_target().await;
    let (_pt, pull_target, pull_record) = acking_target().await;
    let heartbeat = Duration::from_millis(300);
    let topology = Topology::new()
        .stream(StreamSpec::new("PAUSE", ["pause.>"]))
        .consumer(
            ConsumerSpec::new(
                "PAUSE",
                "pusher",
                "push",
                PushSpec::default().idle_heartbeat(heartbeat),
            )
            .filter(["pause.push"]),
        )
        .consumer(ConsumerSpec::pull("PAUSE", "puller", "pull").filter(["pause.pull"]));
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("push", push_target)
        .target("pull", pull_target);
    let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args)
        .await
        .expect("supervisor");
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = fetch_loop(supervisor.clone(), "puller", stop.clone());
    publish_retrying(&env.js, "pause.push", 0..50).await;
    publish_retrying(&env.js, "pause.pull", 0..50).await;
    wait_until("the first 50 of each", PATIENCE, || {
        push_record.distinct().len() == 50 && pull_record.distinct().len() == 50
    })
    .await;

    env.server.pause().expect("SIGSTOP");
    tokio::time::sleep(heartbeat * 5).await;
    env.server.resume().expect("SIGCONT");

    publish_retrying(&env.js, "pause.push", 50..100).await;
    publish_retrying(&env.js, "pause.pull", 50..100).await;
    wait_until(
        "all 100 of each after the pause",
        Duration::from_secs(40),
        || push_record.distinct().len() == 100 && pull_record.distinct().len() == 100,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    fetcher.await.expect("fetcher");
    for durable in ["pusher", "puller"] {
        wait_for_consumer(&env.js, "PAUSE", durable, "all acked", |i| {
            i.num_ack_pending == 0 && i.num_pending == 0
        })
        .await;
    }
}

#[tokio::test]
async fn a_consumer_deleted_under_a_running_child_is_recreated_from_its_spec() {
    let env = env().await;
    let (_pt, pull_target, pull_record) = acking_target().await;
    let (_ht, push_target, push_record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("DEL", ["del.>"]))
        .consumer(ConsumerSpec::pull("DEL", "puller", "pull").filter(["del.pull"]))
        .consumer(
            ConsumerSpec::new(
                "DEL",
                "pusher",
                "push",
                PushSpec::default().idle_heartbeat(Duration::from_millis(300)),
            )
            .filter(["del.push"]),
        );
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("pull", pull_target)
        .target("push", push_target);
    let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args)
        .await
        .expect("supervisor");
    publish_retrying(&env.js, "del.pull", 0..10).await;
    publish_retrying(&env.js, "del.push", 0..10).await;
    let first = fetch_via(&supervisor, "puller", 100, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(first.acked, 10);
    wait_until("push got its 10", PATIENCE, || {
        push_record.distinct().len() == 10
    })
    .await;

    let stream = env.js.get_stream("DEL").await.expect("stream");
    stream
        .delete_consumer("puller")
        .await
        .expect("delete pull consumer");
    stream
        .delete_consumer("pusher")
        .await
        .expect("delete push consumer");
    publish_retrying(&env.js, "del.pull", 10..20).await;
    publish_retrying(&env.js, "del.push", 10..20).await;

    // Pull: fetches fail until the child has been restarted and has
    // re-created the consumer; then everything (from the spec's start
    // position: the beginning) is delivered.
    let deadline = Instant::now() + PATIENCE;
    while pull_record.distinct().len() < 20 || push_record.distinct().len() < 20 {
        assert!(
            Instant::now() < deadline,
            "after the deletion: pull saw {}, push saw {}",
            pull_record.distinct().len(),
            push_record.distinct().len()
        );
        let _ = fetch_via(&supervisor, "puller", 100, Duration::from_millis(300)).await;
    }
    for durable in ["puller", "pusher"] {
        assert!(
            stream.consumer_info(durable).await.is_ok(),
            "{durable} exists again"
        );
        wait_for_consumer(
            &env.js,
            "DEL",
            durable,
            "re-created consumer caught up",
            |i| i.num_ack_pending == 0 && i.num_pending == 0,
        )
        .await;
    }
    let status = supervisor
        .call(SupervisorMsg::Status, None)
        .await
        .expect("status")
        .success_or_panic();
    for durable in ["puller", "pusher"] {
        let child = status.child(durable).expect("child");
        assert!(child.restarts >= 1, "{child:?}");
        let failure = child.last_failure.clone().unwrap_or_default();
        assert!(
            failure.contains("consumer not found"),
            "{durable}: {failure}"
        );
    }
    // Re-created from the start: the first ten came again (duplicates,
    // never gaps).
    assert_eq!(
        pull_record
            .times_seen()
            .values()
            .filter(|n| **n == 2)
            .count(),
        10
    );
}

#[tokio::test]
async fn consumption_goes_on_when_the_stream_leader_of_a_cluster_is_killed() {
    init_tracing();
    let mut cluster = NatsCluster::start(3).await.expect("cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.client_urls())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let (_t, target, record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec {
            replicas: Some(3),
            ..StreamSpec::new("R3", ["r3.>"])
        })
        .consumer(ConsumerSpec::pull("R3", "r3", "t").ack_wait(Duration::from_secs(3)));
    // Right after forming, the meta leader may still count a peer offline
    // and refuse to place an R3 stream ("no suitable peers"): the
    // supervisor's start fails then, and is tried again.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let supervisor = loop {
        match Actor::spawn(
            None,
            JetStreamSupervisor,
            SupervisorArgs::new(js.clone(), topology.clone()).target("t", target.clone()),
        )
        .await
        {
            Ok((supervisor, _)) => break supervisor,
            Err(err) if tokio::time::Instant::now() < deadline => {
                eprintln!("supervisor start refused, trying again: {err}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => panic!("supervisor: {err}"),
        }
    };
    publish_retrying(&js, "r3.x", 0..100).await;
    let stop = Arc::new(AtomicBool::new(false));
    let fetcher = fetch_loop(supervisor.clone(), "r3", stop.clone());
    wait_until("consumption under way", PATIENCE, || record.count() >= 30).await;

    let leader = cluster.stream_leader("R3").await.expect("leader");
    cluster.kill_node(leader).await.expect("kill the leader");
    publish_retrying(&js, "r3.x", 100..200).await;
    wait_until("all 200 consumed", Duration::from_secs(60), || {
        record.distinct().len() == 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    fetcher.await.expect("fetcher");
    assert_eq!(
        record.distinct(),
        (1..=200).collect::<BTreeSet<_>>(),
        "no gaps"
    );
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let info = js.get_stream("R3").await.ok();
        let consumer = match info {
            Some(stream) => stream.consumer_info("r3").await.ok(),
            None => None,
        };
        if consumer
            .as_ref()
            .is_some_and(|c| c.ack_floor.stream_sequence == 200 && c.num_ack_pending == 0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the consumer never showed everything acked: {consumer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .restart_node(leader)
        .await
        .expect("restart the node");
}

#[tokio::test]
async fn a_fresh_actor_system_continues_from_the_ack_floor() {
    let env = env().await;
    create_stream(&env.js, "FRESH", &["fresh.>"]).await;
    publish_n(&env.js, "fresh.x", 30).await;
    let topology = Topology::new().consumer(ConsumerSpec::pull("FRESH", "f", "t"));

    // The first "process": its own connection and supervisor; acks 10,
    // then holds 5 in flight when it dies.
    {
        let client = async_nats::connect(env.server.url())
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client.clone());
        let (_t, target, record) = spawn_target(|d| {
            if d.info().stream_sequence <= 10 {
                Action::Ack
            } else {
                Action::Hold
            }
        })
        .await;
        let (supervisor, _) = Actor::spawn(
            None,
            JetStreamSupervisor,
            SupervisorArgs::new(js, topology.clone()).target("t", target),
        )
        .await
        .expect("first supervisor");
        assert_eq!(
            fetch_via(&supervisor, "f", 10, Duration::from_millis(500))
                .await
                .expect("fetch")
                .acked,
            10
        );
        let held = supervisor.call(
            |reply| SupervisorMsg::Fetch {
                durable: "f".into(),
                batch: 5,
                expires: Some(Duration::from_millis(500)),
                reply,
            },
            None,
        );
        // Kill while the second fetch is in flight.
        let kill = async {
            wait_until("5 held", PATIENCE, || record.count() == 15).await;
            supervisor.kill();
        };
        let (result, ()) = tokio::join!(held, kill);
        assert!(
            !matches!(result, Ok(ractor::rpc::CallResult::Success(Ok(_)))),
            "the cut fetch is not a success"
        );
        supervisor.wait(Some(PATIENCE)).await.expect("gone");
        client.flush().await.expect("flush");
    }

    // The second "process": a new connection and supervisor.
    let client = async_nats::connect(env.server.url())
        .await
        .expect("connect");
    let js = async_nats::jetstream::new(client);
    let (_t, target, record) = acking_target().await;
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(js.clone(), topology).target("t", target),
    )
    .await
    .expect("second supervisor");
    let started = Instant::now();
    while record.distinct().len() < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second process stalled at {:?}",
            record.distinct()
        );
        fetch_via(&supervisor, "f", 10, Duration::from_millis(300))
            .await
            .expect("fetch");
    }
    assert_eq!(
        record.distinct(),
        (11..=30).collect::<BTreeSet<_>>(),
        "nothing acked came back"
    );
    let info = wait_for_consumer(&js, "FRESH", "f", "all acked", |i| {
        i.ack_floor.stream_sequence == 30 && i.num_ack_pending == 0
    })
    .await;
    assert!(info.num_redelivered <= 5);
}

#[tokio::test]
async fn two_supervisors_share_one_durable_and_each_message_is_processed_once() {
    let env = env().await;
    create_stream(&env.js, "SHARE", &["share.>"]).await;
    let record = Record::default();
    let topology = Topology::new().consumer(ConsumerSpec::pull("SHARE", "shared", "t"));
    let mut supervisors = Vec::new();
    let mut counts = Vec::new();
    for name in ["share-a", "share-b"] {
        let own = Record::default();
        let (both, mine) = (record.clone(), own.clone());
        let (_t, target, _) = spawn_target_with(
            Arc::new(move |d| {
                for r in [&both, &mine] {
                    r.0.lock().expect("lock").seen.push(Seen {
                        subject: d.subject().into(),
                        stream_sequence: d.info().stream_sequence,
                        delivered: d.info().delivered,
                        at: std::time::Instant::now(),
                    });
                }
                Action::Ack
            }),
            None,
        )
        .await;
        let (supervisor, _) = Actor::spawn(
            Some(name.into()),
            JetStreamSupervisor,
            SupervisorArgs::new(env.js.clone(), topology.clone()).target("t", target),
        )
        .await
        .expect("supervisor");
        supervisors.push(supervisor);
        counts.push(own);
    }
    publish_n(&env.js, "share.x", 400).await;
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = supervisors
        .iter()
        .map(|s| fetch_loop(s.clone(), "shared", stop.clone()))
        .collect();
    wait_until("all 400 processed", PATIENCE, || {
        record.distinct().len() == 400
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.expect("fetch loop");
    }
    assert_eq!(record.count(), 400, "each message processed once");
    assert!(
        counts.iter().all(|c| c.count() > 0),
        "both shared the work: {:?}",
        counts.iter().map(|c| c.count()).collect::<Vec<_>>()
    );
    wait_for_consumer(&env.js, "SHARE", "shared", "all acked", |i| {
        i.ack_floor.stream_sequence == 400 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn a_pull_request_lost_to_a_reconnect_is_sent_again() {
    let mut env = env().await;
    create_stream(&env.js, "RESEND", &["resend.>"]).await;
    let (_t, target, record) = acking_target().await;
    let (child, _) = Actor::spawn(
        None,
        ractor_jetstream::PullConsumer,
        ractor_jetstream::ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::pull("RESEND", "r", "t"),
            target: target.into(),
        },
    )
    .await
    .expect("pull child");
    // A fetch that waits (nothing is there yet) while the server dies and
    // comes back: its pull request is gone with the old server process.
    let waiting = spawn_fetch(&child, 5, Duration::from_secs(8));
    wait_for_consumer(&env.js, "RESEND", "r", "the request is waiting", |i| {
        i.num_waiting == 1
    })
    .await;
    env.server.kill().await.expect("SIGKILL");
    env.server.restart().await.expect("restart");
    wait_until("the client reconnected", PATIENCE, || {
        env.client.statistics().connects.load(Ordering::Relaxed) >= 2
    })
    .await;
    wait_for_consumer(&env.js, "RESEND", "r", "the request was sent again", |i| {
        i.num_waiting == 1
    })
    .await;
    publish_retrying(&env.js, "resend.x", 0..3).await;
    // The same fetch gets messages: the request was sent again. (It ends as
    // soon as it has some.)
    let outcome = waiting.await.expect("join").expect("fetch");
    assert!(
        outcome.delivered >= 1 && outcome.acked == outcome.delivered,
        "{outcome:?}"
    );
    assert!(!outcome.expired, "{outcome:?}");
    while record.distinct().len() < 3 {
        fetch(&child, 5, Duration::from_millis(500))
            .await
            .expect("fetch");
    }
    assert_eq!(record.distinct(), (1..=3).collect::<BTreeSet<_>>());
}
