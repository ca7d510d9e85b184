//! The push child against a real nats-server: everything forwarded in
//! order, the window held at the target, and push beside pull on one
//! stream.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ractor::Actor;
use ractor_jetstream::{ConsumerArgs, ConsumerMsg, ConsumerSpec, PullConsumer, PushConsumer};

#[tokio::test]
async fn push_forwards_everything_in_order_within_the_window() {
    let env = env().await;
    create_stream(&env.js, "PUSH", &["push.>"]).await;
    let total = 600;
    publish(&env.js, (0..total).map(|i| format!("push.{}", i % 3))).await;
    let window = 16;
    // The target holds what it acks and settles it all 20 ms later, so the
    // window fills up; if the child ever forwarded more than `window`
    // unsettled deliveries, the target would hold more.
    let (_t, target, record) =
        spawn_target_with(Arc::new(|_| Action::Ack), Some(Duration::from_millis(20))).await;
    let spec = ConsumerSpec {
        max_in_flight: Some(window),
        ..ConsumerSpec::push("PUSH", "p", "t")
    };
    let (child, _) = Actor::spawn(
        None,
        PushConsumer,
        ConsumerArgs {
            js: env.js.clone(),
            spec,
            target,
        },
    )
    .await
    .expect("spawn push child");
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
            js: env.js.clone(),
            spec: ConsumerSpec::push("BOTH", "pusher", "t").with_filter(["both.push"]),
            target: push_target,
        },
    )
    .await
    .expect("push child");
    let (pull, _) = Actor::spawn(
        None,
        PullConsumer,
        ConsumerArgs {
            js: env.js.clone(),
            spec: ConsumerSpec::pull("BOTH", "puller", "t").with_filter(["both.pull"]),
            target: pull_target,
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
