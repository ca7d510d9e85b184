//! The push child against a real nats-server: everything forwarded in
//! order, the window held at the target, push beside pull on one stream,
//! messages waiting unread in the client kept alive, queue groups shared by
//! several members (processes), and a rebuilt subscription that delivers
//! nothing twice.

mod common;

use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use ractor::Actor;
use ractor_jetstream::{
    ConsumerArgs, ConsumerMsg, ConsumerSpec, PullConsumer, PushConsumer, PushSpec, StreamSpec,
    Topology, ensure_consumer,
};
use tokio::time::Instant;

#[tokio::test]
async fn push_forwards_everything_in_order_within_the_window() {
    let env = env().await;
    create_stream(&env.js, "PUSH", &["push.>"]).await;
    let total = 600;
    publish(&env.js, (0..total).map(|i| format!("push.{}", i % 3))).await;
    let window: usize = 16;
    // The target holds what it acks and settles it all 20 ms later, so the
    // window fills up; if the child ever forwarded more than `window`
    // unsettled deliveries, the target would hold more.
    let (_t, target, record) =
        spawn_target_with(Arc::new(|_| Action::Ack), Some(Duration::from_millis(20))).await;
    let spec = ConsumerSpec::new("PUSH", "p", "t", PushSpec::default().window(window as u64));
    let child = spawn_push(&env, spec, target).await;
    wait_until("all messages reach the target", PATIENCE, || {
        record.count() >= total
    })
    .await;
    let info = wait_for_consumer(&env.js, "PUSH", "p", "all acked", |i| {
        i.ack_floor.stream_sequence == total as u64 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(
        record.sequences(),
        (1..=total as u64).collect::<Vec<_>>(),
        "in order, each once"
    );
    assert_eq!(
        record.max_outstanding(),
        window,
        "the target held exactly the window at most"
    );
    // Order per subject is the publish order.
    let seen = record.with(|r| r.seen.clone());
    for subject in ["push.0", "push.1", "push.2"] {
        let seqs: Vec<u64> = seen
            .iter()
            .filter(|s| s.subject == subject)
            .map(|s| s.stream_sequence)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{subject} out of order"
        );
        assert_eq!(seqs.len(), total / 3);
    }
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!(
        (stats.delivered, stats.acked, stats.in_flight),
        (total as u64, total as u64, 0)
    );
    let consumer = consumer_info(&env.js, "PUSH", "p").await;
    assert!(
        consumer.config.deliver_subject.is_some(),
        "a push consumer has a deliver subject"
    );
    assert!(consumer.config.flow_control && !consumer.config.idle_heartbeat.is_zero());
}

#[tokio::test]
async fn push_and_pull_on_one_stream_each_get_their_own_subjects() {
    let env = env().await;
    create_stream(&env.js, "BOTH", &["both.>"]).await;
    let subjects: Vec<String> = (0..40)
        .map(|i| {
            if i % 2 == 0 {
                "both.push".into()
            } else {
                "both.pull".into()
            }
        })
        .collect();
    let seqs = publish(&env.js, subjects.clone()).await;
    let expect = |which: &str| -> Vec<u64> {
        seqs.iter()
            .zip(&subjects)
            .filter(|(_, s)| s.ends_with(which))
            .map(|(q, _)| *q)
            .collect()
    };
    let (_pt, push_target, push_record) = acking_target().await;
    let (_lt, pull_target, pull_record) = acking_target().await;
    let (_push, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::push("BOTH", "pusher", "t").filter(["both.push"]),
            target: push_target.into(),
        },
    )
    .await
    .expect("push child");
    let (pull, _) = Actor::spawn(
        None,
        PullConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::pull("BOTH", "puller", "t").filter(["both.pull"]),
            target: pull_target.into(),
        },
    )
    .await
    .expect("pull child");
    let outcome = fetch(&pull, 100, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(outcome.delivered, 20);
    wait_until("push delivers its 20", PATIENCE, || {
        push_record.count() >= 20
    })
    .await;
    assert_eq!(push_record.sequences(), expect("push"));
    assert_eq!(pull_record.sequences(), expect("pull"));
    assert!(push_record.with(|r| r.seen.iter().all(|s| s.subject == "both.push")));
    assert!(pull_record.with(|r| r.seen.iter().all(|s| s.subject == "both.pull")));
    for durable in ["pusher", "puller"] {
        wait_for_consumer(&env.js, "BOTH", durable, "20 acked, nothing pending", |i| {
            i.num_ack_pending == 0 && i.num_pending == 0 && i.delivered.consumer_sequence == 20
        })
        .await;
    }
}

#[tokio::test]
async fn push_messages_waiting_unread_in_the_client_are_not_redelivered() {
    let env = env().await;
    create_stream(&env.js, "SLOW", &["slow.>"]).await;
    let total = 200;
    publish_n(&env.js, "slow.x", total).await;
    // 20 messages a second, a window of 10 and the server's default
    // max_ack_pending (1000): the server sends all 200 at once, 190 of them
    // wait in the client for up to 10 s, five times the ack wait.
    let (_t, target, record) = paced_target(Duration::from_millis(50)).await;
    let spec = ConsumerSpec::new("SLOW", "slow", "t", PushSpec::default().window(10))
        .ack_wait(Duration::from_secs(2));
    let (_child, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec,
            target: target.into(),
        },
    )
    .await
    .expect("spawn push child");
    // The server's count of redelivered messages is of those pending now,
    // so it is watched all along.
    let mut max_redelivered = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    let info = loop {
        let info = consumer_info(&env.js, "SLOW", "slow").await;
        max_redelivered = max_redelivered.max(info.num_redelivered);
        if info.ack_floor.stream_sequence == total as u64 && info.num_ack_pending == 0 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "the 20 msg/s target did not get through 200 messages: ack floor {}",
            info.ack_floor.stream_sequence
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let twice: Vec<u64> = record
        .times_seen()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(seq, _)| seq)
        .collect();
    assert_eq!(
        (max_redelivered, twice.len()),
        (0, 0),
        "nothing redelivered (the server's num_redelivered, at most); seen more than once: {twice:?}"
    );
    assert_eq!(record.distinct().len(), total);
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn push_keeps_unread_messages_alive_by_the_bound_consumers_own_ack_wait() {
    let env = env().await;
    create_stream(&env.js, "BOUND", &["bound.>"]).await;
    // Someone else created the consumer: a 2 s ack wait and the default
    // max_ack_pending; the spec sets neither, so the child must go by what
    // the server reports, not by the spec's 30 s default.
    let inbox = env.client.new_inbox();
    env.js
        .get_stream("BOUND")
        .await
        .expect("stream")
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            durable_name: Some("bound".into()),
            deliver_subject: inbox,
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(2),
            flow_control: true,
            idle_heartbeat: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .expect("create the consumer directly");
    let total = 150;
    publish_n(&env.js, "bound.x", total).await;
    let (_t, target, record) = paced_target(Duration::from_millis(50)).await;
    let spec = ConsumerSpec::new("BOUND", "bound", "t", PushSpec::default().window(10));
    let (_child, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec,
            target: target.into(),
        },
    )
    .await
    .expect("spawn push child");
    let mut max_redelivered = 0;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let info = consumer_info(&env.js, "BOUND", "bound").await;
        max_redelivered = max_redelivered.max(info.num_redelivered);
        if info.ack_floor.stream_sequence == total as u64 && info.num_ack_pending == 0 {
            assert_eq!(
                info.config.ack_wait,
                Duration::from_secs(2),
                "bound as it is"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the 20 msg/s target did not get through {total} messages: ack floor {}",
            info.ack_floor.stream_sequence
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let twice = record.times_seen().values().filter(|n| **n > 1).count();
    assert_eq!(
        (max_redelivered, twice),
        (0, 0),
        "nothing redelivered (the server's num_redelivered, at most), nothing seen twice"
    );
}

/// The topology each member of a queue group runs: the same push durable
/// with a `deliver_group` and no `deliver_subject`.
fn group_topology() -> Topology {
    Topology::new()
        .stream(StreamSpec::new("GROUP", ["group.>"]))
        .consumer(ConsumerSpec::new(
            "GROUP",
            "shared",
            "t",
            PushSpec::default()
                .deliver_group("workers")
                .idle_heartbeat(Duration::from_millis(500))
                .window(64),
        ))
}

/// Starts `n` members at once (so that they race to create the durable).
async fn spawn_members(env: &Env, n: usize) -> Vec<Member> {
    futures::future::join_all((0..n).map(|_| spawn_member(env, group_topology()))).await
}

/// Every member's record, for [`times_seen_across`].
fn records(members: &[Member]) -> Vec<&Record> {
    members.iter().map(|m| &m.record).collect()
}

async fn a_queue_group_shares_the_work(members: usize) {
    let env = env().await;
    let members = spawn_members(&env, members).await;
    let total = 5000;
    publish_n(&env.js, "group.x", total).await;
    let started = Instant::now();
    let deadline = Duration::from_secs(30);
    wait_until(
        "every message processed by some member (a stall stops short)",
        deadline,
        || times_seen_across(&records(&members)).len() >= total,
    )
    .await;
    let info = wait_for_consumer(&env.js, "GROUP", "shared", "all acked", |i| {
        i.ack_floor.stream_sequence == total as u64 && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    let seen = times_seen_across(&records(&members));
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "processed more than once: {twice:?}");
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>()
    );
    assert_eq!(info.num_redelivered, 0);
    for (i, member) in members.iter().enumerate() {
        assert!(member.record.count() > 0, "member {i} got nothing");
    }
    assert!(
        !info.config.flow_control && info.config.idle_heartbeat.is_zero(),
        "no flow control or heartbeats on a queue group"
    );
    tracing::info!(elapsed = ?started.elapsed(), "shared 5000");
}

#[tokio::test]
async fn a_queue_group_of_two_shares_5000_messages_each_processed_once() {
    a_queue_group_shares_the_work(2).await;
}

#[tokio::test]
async fn a_queue_group_of_three_shares_5000_messages_each_processed_once() {
    a_queue_group_shares_the_work(3).await;
}

#[tokio::test]
async fn a_queue_group_loses_nothing_when_a_member_is_killed() {
    let env = env().await;
    let members = spawn_members(&env, 3).await;
    let total = 5000;
    publish_n(&env.js, "group.x", total).await;
    wait_until("the work is under way", PATIENCE, || {
        times_seen_across(&records(&members)).len() >= total / 3
    })
    .await;
    // The killed member's children die with its supervisor; their drop
    // guards nak what they held.
    members[0].supervisor.kill();
    wait_until(
        "every message processed by some member",
        Duration::from_secs(40),
        || times_seen_across(&records(&members)).len() >= total,
    )
    .await;
    wait_for_consumer(&env.js, "GROUP", "shared", "all acked", |i| {
        i.ack_floor.stream_sequence == total as u64 && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    let killed = members[0].record.distinct();
    let seen = times_seen_across(&records(&members));
    let twice: Vec<u64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(seq, _)| *seq)
        .collect();
    let not_held: Vec<u64> = twice
        .iter()
        .copied()
        .filter(|seq| !killed.contains(seq))
        .collect();
    assert!(
        not_held.is_empty(),
        "processed twice though the killed member never had them: {not_held:?}"
    );
    assert!(
        twice.len() <= 64,
        "more duplicates ({}) than the killed member's window (64)",
        twice.len()
    );
}

#[tokio::test]
async fn two_processes_creating_one_push_durable_do_not_conflict() {
    let env = env().await;
    create_stream(&env.js, "RACE", &["race.>"]).await;
    let other = async_nats::jetstream::new(
        async_nats::connect(env.server.url())
            .await
            .expect("second connection"),
    );
    for round in 0..10 {
        let spec = ConsumerSpec::new(
            "RACE",
            format!("d{round}"),
            "t",
            PushSpec::default().deliver_group("workers"),
        );
        let (a, b) = tokio::join!(
            ensure_consumer(&env.js, &spec),
            ensure_consumer(&other, &spec)
        );
        let (a, _) = a.unwrap_or_else(|err| panic!("round {round}, first: {err}"));
        let (b, _) = b.unwrap_or_else(|err| panic!("round {round}, second: {err}"));
        assert_eq!(
            a.config.deliver_subject, b.config.deliver_subject,
            "round {round}: both bind one deliver subject"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_rebuilt_after_missed_heartbeats_delivers_nothing_twice() {
    // Widens the moment when a new subscription is made (200 ms, on the
    // child's task only), so that a new and an old subscription, if they
    // ever coexist, both get what the server pushes meanwhile.
    let _scenario = fail::FailScenario::setup();
    fail::cfg("rj-push-resubscribed", "sleep(200)").expect("failpoint");
    let env = env().await;
    create_stream(&env.js, "HB", &["hb.>"]).await;
    let (_t, target, record) = acking_target().await;
    let heartbeat = Duration::from_millis(300);
    let spec = ConsumerSpec::new(
        "HB",
        "hb",
        "t",
        PushSpec::default().idle_heartbeat(heartbeat),
    );
    let (child, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec,
            target: target.into(),
        },
    )
    .await
    .expect("spawn push child");
    // A steady stream of messages, so that the server is pushing when it
    // comes back from each pause.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let js = env.js.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                let ack = match js.publish("hb.x", "m".into()).await {
                    Ok(ack) => ack.await,
                    Err(_) => continue,
                };
                if let Ok(ack) = ack {
                    last = ack.sequence;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            last
        })
    };
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        env.server.pause().expect("SIGSTOP");
        tokio::time::sleep(heartbeat * 6).await;
        env.server.resume().expect("SIGCONT");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let last = publisher.await.expect("publisher");
    wait_until(
        "every published message reached the target",
        Duration::from_secs(40),
        || record.distinct().len() as u64 >= last,
    )
    .await;
    wait_for_consumer(&env.js, "HB", "hb", "all acked", |i| {
        i.ack_floor.stream_sequence >= last && i.num_ack_pending == 0
    })
    .await;
    let twice: Vec<(u64, usize)> = record
        .times_seen()
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert!(
        twice.is_empty(),
        "{} of {last} sequences reached the target more than once (subscriptions made anew: {}): {:?}",
        twice.len(),
        stats.resubscribes,
        &twice[..twice.len().min(20)]
    );
    // The consumer was there after every silence, so the subscription was
    // kept (async-nats restores it after a reconnect).
    assert_eq!(stats.resubscribes, 0);
    fail::remove("rj-push-resubscribed");
}

#[tokio::test]
async fn idle_queue_group_members_notice_that_their_consumer_was_deleted() {
    let env = env().await;
    let members = spawn_members(&env, 2).await;
    publish_n(&env.js, "group.x", 10).await;
    wait_until("the first 10 processed", PATIENCE, || {
        times_seen_across(&records(&members)).len() >= 10
    })
    .await;
    // Without heartbeats, only the members' own checks (every
    // idle_heartbeat while idle) can tell that the consumer is gone; each
    // child then fails, and its restart re-creates the consumer (one of the
    // two creates wins, the other binds).
    env.js
        .get_stream("GROUP")
        .await
        .expect("stream")
        .delete_consumer("shared")
        .await
        .expect("delete the consumer");
    let deadline = Instant::now() + PATIENCE;
    while env
        .js
        .get_stream("GROUP")
        .await
        .expect("stream")
        .consumer_info("shared")
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "no member re-created the deleted consumer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish_n(&env.js, "group.x", 10).await;
    // The re-created consumer starts from the beginning again (the spec's
    // start position): the first 10 come a second time, the next 10 once.
    wait_for_consumer(&env.js, "GROUP", "shared", "all 20 acked", |i| {
        i.ack_floor.stream_sequence == 20 && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    let seen = times_seen_across(&records(&members));
    assert_eq!(
        seen,
        (1..=20u64)
            .map(|seq| (seq, if seq <= 10 { 2 } else { 1 }))
            .collect(),
        "the first 10 again from the re-created consumer, the next 10 once"
    );
}

/// The child's registry drops the deadlines of settled deliveries as it
/// goes, so what it holds stays bounded by its window, not by how many
/// deliveries went through. (A push child used to keep every one until
/// its keep-alive alarm went off, 15 s later: some 6,000 here.)
#[tokio::test]
async fn a_push_childs_deadlines_stay_bounded_by_its_window() {
    let env = env().await;
    create_stream(&env.js, "HELD", &["held.>"]).await;
    let (total, window) = (3_000u64, 32u64);
    let (_t, target, _record) = acking_target().await;
    let spec = ConsumerSpec::new("HELD", "h", "t", PushSpec::default().window(window));
    let child = spawn_push(&env, spec, target).await;
    publish_n(&env.js, "held.x", total as usize).await;
    let deadline = Instant::now() + PATIENCE;
    let mut most = 0;
    let stats = loop {
        let stats = child
            .call(ConsumerMsg::Stats, None)
            .await
            .expect("stats")
            .success_or_panic();
        most = most.max(stats.deadlines_held);
        if stats.acked == total && stats.in_flight == 0 {
            break stats;
        }
        assert!(Instant::now() < deadline, "stuck: {stats:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // A hold and a keep-alive per delivery out, for what one round of the
    // worker's loop forwards on top of what is out: 4 × the window.
    assert!(
        most <= 4 * window,
        "held {most} deadlines at most, for a window of {window}"
    );
    assert_eq!(stats.deadlines_held, 0, "none once everything is settled");
    wait_for_consumer(&env.js, "HELD", "h", "all acked", |i| {
        i.ack_floor.stream_sequence == total && i.num_ack_pending == 0
    })
    .await;
}
