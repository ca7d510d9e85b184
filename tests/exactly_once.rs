//! Confirmed acks, late decisions, and output with message ids (the
//! `output` module), against a real server: what the server confirmed,
//! what it did not, and what the output stream holds.

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use ractor::ActorRef;
use ractor_jetstream::output::{Output, redelivery_horizon};
use ractor_jetstream::{ConsumerMsg, ConsumerSpec, ConsumerStats, ErrorKind};

use common::{
    CallResultExt, PATIENCE, acking_target, consumer_info, create_stream, env, fetch,
    forwarding_target, next, publish_n, spawn_fetch, spawn_pull,
};

async fn stats(child: &ActorRef<ConsumerMsg>) -> ConsumerStats {
    child
        .call(ConsumerMsg::Stats, Some(PATIENCE))
        .await
        .expect("stats call")
        .success_or_panic()
}

/// Waits until the child's stats satisfy `check`.
async fn wait_for_stats(
    child: &ActorRef<ConsumerMsg>,
    what: &str,
    check: impl Fn(&ConsumerStats) -> bool,
) -> ConsumerStats {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = stats(child).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {PATIENCE:?}; stats {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_confirm_acks_every_ack_is_confirmed_by_the_server() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 100).await;
    let (_target, derived, record) = acking_target().await;
    let spec = ConsumerSpec::pull("IN", "confirming", "t").confirm_acks(true);
    let child = spawn_pull(&env, spec, derived).await;
    while record.count() < 100 {
        fetch(&child, 50, Duration::from_millis(500))
            .await
            .expect("fetch");
    }
    let stats = wait_for_stats(&child, "100 confirmations", |s| s.acks_confirmed == 100).await;
    assert_eq!((stats.acked, stats.acks_unconfirmed), (100, 0));
    let info = consumer_info(&env.js, "IN", "confirming").await;
    assert_eq!(info.ack_floor.stream_sequence, 100);
    assert_eq!(info.num_ack_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_confirmed_returns_once_the_server_took_each_ack() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 20).await;
    let (target, mut rx) = forwarding_target().await;
    let child = spawn_pull(
        &env,
        ConsumerSpec::pull("IN", "awaiting", "t"),
        target.get_derived(),
    )
    .await;
    let fetching = spawn_fetch(&child, 20, Duration::from_secs(2));
    let mut acks = Vec::new();
    for _ in 0..20 {
        let delivery = next(&mut rx).await;
        let sequence = delivery.stream_sequence();
        acks.push(tokio::spawn(async move {
            (sequence, delivery.ack_confirmed().await)
        }));
    }
    let mut confirmed = Vec::new();
    for ack in acks {
        let (sequence, result) = ack.await.expect("ack task");
        result.unwrap_or_else(|err| panic!("stream sequence {sequence}: {err}"));
        confirmed.push(sequence);
    }
    confirmed.sort_unstable();
    assert_eq!(confirmed, (1..=20).collect::<Vec<u64>>());
    let outcome = fetching.await.expect("fetch task").expect("fetch");
    assert_eq!(outcome.acked, 20);
    let stats = stats(&child).await;
    assert_eq!((stats.acks_confirmed, stats.acks_unconfirmed), (20, 0));
    let info = consumer_info(&env.js, "IN", "awaiting").await;
    assert_eq!(info.ack_floor.stream_sequence, 20);
    assert_eq!(info.num_ack_pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_for_a_consumer_deleted_meanwhile_is_reported_unconfirmed() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 1).await;
    let (target, mut rx) = forwarding_target().await;
    let child = spawn_pull(
        &env,
        ConsumerSpec::pull("IN", "doomed", "t"),
        target.get_derived(),
    )
    .await;
    // A batch of one: the pull request is filled, so the child has nothing
    // on the server to notice the deletion by.
    let fetching = spawn_fetch(&child, 1, Duration::from_secs(2));
    let delivery = next(&mut rx).await;
    env.js
        .delete_consumer_from_stream("doomed", "IN")
        .await
        .expect("delete the consumer");
    let err = delivery
        .ack_confirmed()
        .await
        .expect_err("nobody can confirm an ack for a deleted consumer");
    assert_eq!(err.kind(), ErrorKind::AckUnconfirmed, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("stream sequence 1") && text.contains("no consumer took it"),
        "{text}"
    );
    let _ = fetching.await;
    let stats = wait_for_stats(&child, "the unconfirmed ack counted", |s| {
        s.acks_unconfirmed == 1
    })
    .await;
    assert_eq!(stats.acks_confirmed, 0);
    // The message is still in the stream, for a consumer made anew.
    let info = env
        .js
        .get_stream("IN")
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .clone();
    assert_eq!(info.state.messages, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_after_the_child_gave_up_is_counted_late_and_not_taken_for_done() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 2).await;
    let (target, mut rx) = forwarding_target().await;
    let spec = ConsumerSpec::pull("IN", "slow", "t")
        .ack_wait(Duration::from_secs(5))
        .max_hold(Duration::from_millis(300));
    let child = spawn_pull(&env, spec, target.get_derived()).await;

    // Both are held past the hold: the child nak's them, and the fetch
    // ends with them timed out.
    let outcome = {
        let fetching = spawn_fetch(&child, 2, Duration::from_secs(1));
        let first = next(&mut rx).await;
        let second = next(&mut rx).await;
        let outcome = fetching.await.expect("fetch task").expect("fetch");
        // Decided only now: too late for the child.
        let confirmed = first.ack_confirmed().await;
        let err = confirmed.expect_err("an ack after the hold is not confirmed");
        assert_eq!(err.kind(), ErrorKind::AckUnconfirmed);
        assert!(err.to_string().contains("too late"), "{err}");
        second.ack();
        outcome
    };
    assert_eq!(outcome.timed_out, 2, "{outcome:?}");
    let stats = wait_for_stats(&child, "two late decisions", |s| s.late_decisions == 2).await;
    assert_eq!(stats.acked, 0, "a late ack is not counted as an ack");

    // The server delivers both again (delivery count 2), and this time
    // the acks are taken.
    let fetching = spawn_fetch(&child, 2, Duration::from_secs(2));
    for _ in 0..2 {
        let delivery = next(&mut rx).await;
        assert_eq!(delivery.delivered(), 2);
        delivery.ack_confirmed().await.expect("an ack in time");
    }
    fetching.await.expect("fetch task").expect("fetch");
    let info = consumer_info(&env.js, "IN", "slow").await;
    assert_eq!(info.ack_floor.stream_sequence, 2);
    assert_eq!(info.num_ack_pending, 0);
    assert_eq!(stats.late_decisions, 2);
}

/// Creates the output stream with a duplicate window.
async fn create_output(js: &jetstream::Context, window: Duration) {
    js.create_stream(stream::Config {
        name: "OUT".into(),
        subjects: vec!["out.>".into()],
        duplicate_window: window,
        ..Default::default()
    })
    .await
    .expect("create output stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_window_must_cover_the_inputs_redelivery_horizon() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    let (target, _rx) = forwarding_target().await;
    // 3 deliveries of at most 2 s each: 6 s.
    let bounded = ConsumerSpec::pull("IN", "bounded", "t")
        .ack_wait(Duration::from_secs(2))
        .max_hold(Duration::from_secs(1))
        .max_deliver(3);
    let unbounded = ConsumerSpec::pull("IN", "unbounded", "t");
    let _a = spawn_pull(&env, bounded.clone(), target.get_derived()).await;
    let _b = spawn_pull(&env, unbounded.clone(), target.get_derived()).await;
    let config = consumer_info(&env.js, "IN", "bounded").await.config;
    assert_eq!(
        redelivery_horizon(&config, Duration::from_secs(1)),
        Some(Duration::from_secs(6))
    );
    // With backoff, each step (the last one repeated) is a delivery's wait.
    let mut with_backoff = config.clone();
    with_backoff.backoff = vec![Duration::from_secs(1), Duration::from_secs(4)];
    assert_eq!(
        redelivery_horizon(&with_backoff, Duration::from_secs(2)),
        Some(Duration::from_secs(2 + 4 + 4))
    );

    create_output(&env.js, Duration::from_secs(5)).await;
    let err = Output::bind(&env.js, "OUT", &bounded)
        .await
        .expect_err("5 s does not cover 6 s");
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let text = err.to_string();
    assert!(
        text.contains("duplicate_window") && text.contains("6s"),
        "{text}"
    );
    let err = Output::bind(&env.js, "OUT", &unbounded)
        .await
        .expect_err("nothing covers unlimited redeliveries");
    assert!(err.to_string().contains("unlimited max_deliver"), "{err}");

    let mut out = env.js.get_stream("OUT").await.expect("output stream");
    let mut config = out.info().await.expect("info").config.clone();
    config.duplicate_window = Duration::from_secs(6);
    env.js
        .update_stream(&config)
        .await
        .expect("widen the window");
    let output = Output::bind(&env.js, "OUT", &bounded)
        .await
        .expect("6 s covers 6 s");
    assert_eq!(
        output.window(),
        (Duration::from_secs(6), Duration::from_secs(6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_published_again_for_a_redelivered_input_is_stored_once() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 1).await;
    create_output(&env.js, Duration::from_secs(120)).await;
    let (target, mut rx) = forwarding_target().await;
    let spec = ConsumerSpec::pull("IN", "transform", "t")
        .ack_wait(Duration::from_secs(5))
        .max_hold(Duration::from_secs(5))
        .max_deliver(5);
    let child = spawn_pull(&env, spec.clone(), target.get_derived()).await;
    let output = Output::bind(&env.js, "OUT", &spec).await.expect("bind");

    // First delivery: the result is stored, then the input is nak'ed (as
    // if the process died before its ack).
    let fetching = spawn_fetch(&child, 1, Duration::from_secs(2));
    let first = next(&mut rx).await;
    assert_eq!(Output::message_id(&first, 0), "IN:1:0");
    let stored = output
        .publish(&first, 0, "out.a", "out:0".into())
        .await
        .expect("publish");
    assert!(!stored.duplicate);
    first.nak();
    fetching.await.expect("fetch task").expect("fetch");

    // Redelivered: the same result again is a duplicate, and the input is
    // acked (confirmed).
    let fetching = spawn_fetch(&child, 1, Duration::from_secs(2));
    let again = next(&mut rx).await;
    assert_eq!(again.delivered(), 2);
    let repeated = output
        .publish_and_ack(again, "out.a", "out:0".into())
        .await
        .expect("publish and ack");
    assert!(repeated.duplicate);
    assert_eq!(repeated.sequence, stored.sequence);
    fetching.await.expect("fetch task").expect("fetch");

    let out = env
        .js
        .get_stream("OUT")
        .await
        .expect("output stream")
        .info()
        .await
        .expect("info")
        .clone();
    assert_eq!(out.state.messages, 1);
    let message = env
        .js
        .get_stream("OUT")
        .await
        .expect("output stream")
        .get_raw_message(1)
        .await
        .expect("the result");
    let id = message
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_string());
    assert_eq!(id.as_deref(), Some("IN:1:0"));
    let info = consumer_info(&env.js, "IN", "transform").await;
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(info.num_ack_pending, 0);
}

/// The `reason` of the next terminated-message advisory on `subscriber`.
async fn terminated_reason(subscriber: &mut async_nats::Subscriber) -> (u64, String) {
    use futures::StreamExt;
    let advisory = tokio::time::timeout(PATIENCE, subscriber.next())
        .await
        .expect("an advisory in time")
        .expect("the subscription is open");
    let json: serde_json::Value =
        serde_json::from_slice(&advisory.payload).expect("the advisory is JSON");
    (
        json["stream_seq"].as_u64().unwrap_or_default(),
        json["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_term_carries_its_reason_to_the_servers_advisory() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.>"]).await;
    publish_n(&env.js, "in.a", 2).await;
    let mut advisories = env
        .client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.IN.terms")
        .await
        .expect("subscribe to advisories");
    env.client.flush().await.expect("flush");
    let (target, mut rx) = forwarding_target().await;
    let spec = ConsumerSpec::pull("IN", "terms", "t").max_deliver(1);
    let child = spawn_pull(&env, spec, target.get_derived()).await;
    let fetching = spawn_fetch(&child, 2, Duration::from_secs(2));
    // The target's own term, and a nak on the last allowed delivery, which
    // the child turns into a term with its reason.
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    first.term("payload is not an order");
    second.nak();
    fetching.await.expect("fetch task").expect("fetch");
    let mut reasons = [
        terminated_reason(&mut advisories).await,
        terminated_reason(&mut advisories).await,
    ];
    reasons.sort();
    assert_eq!(reasons[0], (1, "payload is not an order".to_string()));
    assert_eq!(reasons[1].0, 2);
    assert!(
        reasons[1].1.contains("max_deliver (1) reached"),
        "{:?}",
        reasons[1]
    );
    let info = consumer_info(&env.js, "IN", "terms").await;
    assert_eq!(info.ack_floor.stream_sequence, 2);
    assert_eq!(info.num_ack_pending, 0);
}
