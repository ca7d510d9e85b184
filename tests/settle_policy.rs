//! One settle policy on every path: a decision applied while the child
//! runs, a drain, a kill. Dead letters never stall other deliveries, and a
//! stale permission report never turns an empty fetch into an error.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream;
use common::*;
use futures::StreamExt;
use nats_harness::NatsServer;
use ractor::ActorRef;
use ractor_jetstream::{ConnectionSpec, ConsumerMsg, ConsumerSpec};

/// How many messages a stream holds, polled until it is `want` or the
/// deadline passes.
async fn wait_for_stream_count(js: &jetstream::Context, stream: &str, want: u64) -> u64 {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut handle = js.get_stream(stream).await.expect("stream");
        let count = handle.info().await.expect("stream info").state.messages;
        if count == want || Instant::now() > deadline {
            return count;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A pull child whose only message sits at its target on its last allowed
/// delivery (max_deliver 2: nak'ed once, then held).
async fn last_delivery_held(
    env: &Env,
    durable: &str,
) -> (ActorRef<ConsumerMsg>, ActorRef<TargetMsg>) {
    let (target_ref, target, record) = spawn_target(|d| match d.info().delivered {
        1 => Action::Nak(None),
        _ => Action::Hold,
    })
    .await;
    let spec = ConsumerSpec::pull("LASTD", durable, "t")
        .max_deliver(2)
        .dead_letter(format!("dlq.{durable}"));
    let child = spawn_pull(env, spec, target).await;
    let first = fetch(&child, 1, Duration::from_secs(1))
        .await
        .expect("first fetch");
    assert_eq!(first.naked, 1, "{first:?}");
    let held = child.clone();
    tokio::spawn(async move {
        let _ = fetch(&held, 1, Duration::from_secs(1)).await;
    });
    wait_until("the last delivery is held", PATIENCE, || {
        record.with(|r| r.seen.iter().any(|s| s.delivered == 2))
    })
    .await;
    (child, target_ref)
}

#[tokio::test]
async fn a_last_delivery_held_at_a_drain_is_dead_lettered_not_dropped() {
    let env = env().await;
    create_stream(&env.js, "LASTD", &["lastd.>"]).await;
    create_stream(&env.js, "DLQ", &["dlq.>"]).await;
    publish_n(&env.js, "lastd.x", 1).await;
    let (child, _target) = last_delivery_held(&env, "drained").await;
    let report = drain(&child, Duration::from_millis(200)).await;
    assert_eq!(report.naked, 1, "{report:?}");
    assert_eq!(
        wait_for_stream_count(&env.js, "DLQ", 1).await,
        1,
        "the last delivery reached the dead-letter stream"
    );
    let info = wait_for_consumer(&env.js, "LASTD", "drained", "settled", |i| {
        i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn a_last_delivery_held_at_a_kill_is_dead_lettered_not_dropped() {
    let env = env().await;
    create_stream(&env.js, "LASTD", &["lastd.>"]).await;
    create_stream(&env.js, "DLQ", &["dlq.>"]).await;
    publish_n(&env.js, "lastd.x", 1).await;
    let (child, _target) = last_delivery_held(&env, "killed").await;
    child.kill();
    assert_eq!(
        wait_for_stream_count(&env.js, "DLQ", 1).await,
        1,
        "the last delivery reached the dead-letter stream"
    );
    wait_for_consumer(&env.js, "LASTD", "killed", "settled", |i| {
        i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn a_term_decided_during_a_drain_reaches_the_dead_letter_subject() {
    let env = env().await;
    create_stream(&env.js, "TDRAIN", &["tdrain.>"]).await;
    create_stream(&env.js, "DLQ", &["dlq.>"]).await;
    publish_n(&env.js, "tdrain.x", 3).await;
    // Sequence 2 is termed 300 ms after it arrives: during the drain.
    let (_t, target, record) = spawn_target(|d| match d.info().stream_sequence {
        2 => Action::TermAfter(Duration::from_millis(300)),
        _ => Action::Ack,
    })
    .await;
    let spec = ConsumerSpec::pull("TDRAIN", "td", "t").dead_letter("dlq.tdrain");
    let child = spawn_pull(&env, spec, target).await;
    let fetching = spawn_fetch(&child, 3, Duration::from_secs(1));
    wait_until("three delivered", PATIENCE, || record.count() == 3).await;
    let report = drain(&child, Duration::from_secs(2)).await;
    assert_eq!(report.naked, 0, "{report:?}");
    let outcome = fetching.await.expect("join").expect("drained fetch");
    assert_eq!((outcome.acked, outcome.termed), (2, 1), "{outcome:?}");
    assert_eq!(wait_for_stream_count(&env.js, "DLQ", 1).await, 1);
    wait_for_consumer(&env.js, "TDRAIN", "td", "settled", |i| {
        i.ack_floor.stream_sequence == 3 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_stream_that_does_not_answer_does_not_stall_other_deliveries() {
    let env = env().await;
    create_stream(&env.js, "STALL", &["stall.>"]).await;
    publish_n(&env.js, "stall.x", 20).await;
    // Something listens on the dead-letter subject but never confirms: a
    // publish there waits out its whole timeout.
    let mut silent = env.client.subscribe("silent.dlq").await.expect("subscribe");
    tokio::spawn(async move { while silent.next().await.is_some() {} });
    let (_t, target, record) = spawn_target(|d| match d.info().stream_sequence {
        1 => Action::Term,
        _ => Action::Ack,
    })
    .await;
    let spec = ConsumerSpec::pull("STALL", "s", "t").dead_letter("silent.dlq");
    let child = spawn_pull(&env, spec, target).await;
    let started = Instant::now();
    let fetching = spawn_fetch(&child, 20, Duration::from_secs(1));
    // All 20 are forwarded, and the other 19 acked on the server, while the
    // dead letter of the first one still waits for its confirmation (which
    // gives up after 5 s).
    wait_until("twenty delivered", PATIENCE, || record.count() == 20).await;
    wait_for_consumer(&env.js, "STALL", "s", "the other 19 acked", |i| {
        i.num_ack_pending <= 1 && i.ack_floor.consumer_sequence == 0
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "deliveries and acks waited {:?} for the dead letter",
        started.elapsed()
    );
    // The dead letter is never confirmed: the first is nak'ed, not lost.
    let outcome = fetching.await.expect("join").expect("fetch");
    assert_eq!((outcome.acked, outcome.naked), (19, 1), "{outcome:?}");
}

#[tokio::test]
async fn an_old_inbox_denial_does_not_turn_later_empty_fetches_into_errors() {
    init_tracing();
    let server = NatsServer::builder()
        .config_snippet(
            r#"authorization {
                 users = [
                   { user: "app", password: "app",
                     permissions: {
                       publish: { allow: ["$JS.API.>", "$JS.ACK.>", "stale.>"] }
                       subscribe: { allow: ["_INBOX.>"], deny: ["_INBOX.denied.>"] }
                     } }
                 ]
               }"#,
        )
        .start()
        .await
        .expect("start nats-server");
    let spec = ConnectionSpec {
        user: Some("app".into()),
        password: Some("app".into()),
        ..ConnectionSpec::new(server.url())
    };
    let connection = spec.connect().await.expect("connect");
    let js = connection.jetstream().clone();
    let client = js.client();
    js.create_stream(jetstream::stream::Config {
        name: "STALE".into(),
        subjects: vec!["stale.>".into()],
        ..Default::default()
    })
    .await
    .expect("stream");
    let (_t, target, _) = acking_target().await;
    let child = {
        let (child, _) = ractor::Actor::spawn(
            None,
            ractor_jetstream::PullConsumer,
            ractor_jetstream::ConsumerArgs {
                connection,
                spec: ConsumerSpec::pull("STALE", "st", "t"),
                target: target.into(),
            },
        )
        .await
        .expect("spawn");
        child
    };
    // One denied subscription on an inbox subject, once.
    let _denied = client
        .subscribe("_INBOX.denied.once")
        .await
        .expect("the client sends the subscription");
    client.flush().await.expect("flush");
    // Every later empty fetch is the clean empty outcome.
    for i in 0..5 {
        let outcome = fetch(&child, 1, Duration::from_millis(300)).await;
        if i == 0 {
            // The report may arrive during the first fetch.
            continue;
        }
        let outcome = outcome.expect("an empty fetch is not a permission error");
        assert!(outcome.is_empty() && outcome.expired, "{outcome:?}");
    }
}
