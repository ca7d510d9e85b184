//! Poison messages against a real nats-server: undecodable payloads termed
//! with the reason, dead letters confirmed before the term, the last
//! delivery of `max_deliver` dead-lettered instead of dropped, and nothing
//! lost when the dead letter cannot be stored.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::*;
use futures::StreamExt;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{ConsumerMsg, ConsumerSpec, Delivery, Topology};

#[derive(serde::Deserialize)]
struct Order {
    id: u64,
}

/// Reads every message of a dead-letter stream.
async fn dead_letters(js: &jetstream::Context, stream: &str) -> Vec<async_nats::Message> {
    let stream = js.get_stream(stream).await.expect("dlq stream");
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config::default())
        .await
        .expect("dlq reader");
    let mut batch = consumer
        .fetch()
        .max_messages(100)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .expect("fetch dlq");
    let mut out = Vec::new();
    while let Some(message) = batch.next().await {
        out.push(message.expect("dlq message").message);
    }
    out
}

fn header<'a>(message: &'a async_nats::Message, name: &str) -> &'a str {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str())
        .unwrap_or_else(|| panic!("dead letter lacks {name}"))
}

#[tokio::test]
async fn undecodable_payloads_are_termed_with_the_reason_and_dead_lettered_first() {
    let env = env().await;
    create_stream(&env.js, "ORDERS", &["orders.>"]).await;
    create_stream(&env.js, "DLQ", &["dlq.>"]).await;
    let payloads: [&[u8]; 5] = [
        br#"{"id":1}"#,
        b"not json",
        br#"{"id":3}"#,
        b"\xff\xfe",
        br#"{"wrong":5}"#,
    ];
    let mut seqs = Vec::new();
    for payload in payloads {
        let ack = env
            .js
            .publish("orders.new", payload.to_vec().into())
            .await
            .expect("publish");
        seqs.push(ack.await.expect("stored").sequence);
    }
    let record = Record::default();
    // A target that decodes with json_or_term.
    let (target, _) = Actor::spawn(None, JsonTarget, record.clone())
        .await
        .expect("json target");
    let spec = ConsumerSpec::pull("ORDERS", "decoder", "t").dead_letter("dlq.orders");
    let child = spawn_pull(&env, spec, target.get_derived()).await;
    let outcome = fetch(&child, 10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(
        (outcome.delivered, outcome.acked, outcome.termed),
        (5, 2, 3),
        "{outcome:?}"
    );

    let letters = dead_letters(&env.js, "DLQ").await;
    let sequences: Vec<u64> = letters
        .iter()
        .map(|m| header(m, "Nats-DLQ-Sequence").parse().expect("number"))
        .collect();
    assert_eq!(sequences, vec![seqs[1], seqs[3], seqs[4]]);
    for (letter, payload) in letters.iter().zip([payloads[1], payloads[3], payloads[4]]) {
        assert_eq!(
            letter.payload.as_ref(),
            payload,
            "the original payload, unchanged"
        );
        assert_eq!(header(letter, "Nats-DLQ-Stream"), "ORDERS");
        assert_eq!(header(letter, "Nats-DLQ-Consumer"), "decoder");
        assert_eq!(header(letter, "Nats-DLQ-Subject"), "orders.new");
        assert_eq!(header(letter, "Nats-DLQ-Delivered"), "1");
        assert!(
            header(letter, "Nats-DLQ-Error").contains("does not decode as"),
            "{}",
            header(letter, "Nats-DLQ-Error")
        );
    }
    // Nothing comes back, nothing is pending.
    let again = fetch(&child, 10, Duration::from_millis(300))
        .await
        .expect("fetch");
    assert!(again.is_empty());
    let info = wait_for_consumer(&env.js, "ORDERS", "decoder", "all settled", |i| {
        i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    assert_eq!(info.ack_floor.stream_sequence, 5);
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!((stats.termed, stats.dead_lettered), (3, 3));
}

/// Decodes orders; records the ids it acked in the record's `seen`.
struct JsonTarget;

impl Actor for JsonTarget {
    type Msg = Delivery;
    type State = Record;
    type Arguments = Record;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        record: Record,
    ) -> Result<Record, ractor::ActorProcessingErr> {
        Ok(record)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        record: &mut Record,
    ) -> Result<(), ractor::ActorProcessingErr> {
        let Some((order, delivery)) = delivery.json_or_term::<Order>() else {
            return Ok(());
        };
        record.0.lock().expect("lock").seen.push(Seen {
            subject: delivery.subject().into(),
            stream_sequence: order.id,
            delivered: delivery.info().delivered,
            at: std::time::Instant::now(),
        });
        delivery.ack();
        Ok(())
    }
}

#[tokio::test]
async fn the_last_delivery_of_max_deliver_is_dead_lettered_not_dropped() {
    let env = env().await;
    create_stream(&env.js, "WORK", &["work.>"]).await;
    create_stream(&env.js, "DEAD", &["dead.>"]).await;
    publish_n(&env.js, "work.x", 2).await;
    // Seq 1 always fails (nak'ed); seq 2 is acked.
    let (_t, target, record) = spawn_target(|d| {
        if d.stream_sequence() == 1 {
            Action::Nak(None)
        } else {
            Action::Ack
        }
    })
    .await;
    let spec = ConsumerSpec::pull("WORK", "w", "t")
        .max_deliver(3)
        .dead_letter("dead.work");
    let child = spawn_pull(&env, spec, target).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while record.with(|r| r.seen.iter().filter(|s| s.stream_sequence == 1).count()) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "seq 1 was not delivered three times"
        );
        fetch(&child, 10, Duration::from_millis(300))
            .await
            .expect("fetch");
    }
    // No fourth delivery, and the third one went to the dead-letter subject.
    let empty = fetch(&child, 10, Duration::from_millis(300))
        .await
        .expect("fetch");
    assert!(empty.is_empty());
    assert_eq!(record.times_seen(), [(1, 3), (2, 1)].into_iter().collect());
    let letters = dead_letters(&env.js, "DEAD").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(header(&letters[0], "Nats-DLQ-Sequence"), "1");
    assert_eq!(header(&letters[0], "Nats-DLQ-Delivered"), "3");
    assert!(header(&letters[0], "Nats-DLQ-Error").contains("max_deliver (3) reached"));
    let info = wait_for_consumer(&env.js, "WORK", "w", "all settled", |i| {
        i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    assert_eq!(info.ack_floor.stream_sequence, 2);
}

#[tokio::test]
async fn without_a_dead_letter_subject_the_last_delivery_is_termed_with_the_reason() {
    let env = env().await;
    create_stream(&env.js, "NODLQ", &["nodlq.>"]).await;
    publish_n(&env.js, "nodlq.x", 1).await;
    let (_t, target, record) = spawn_target(|_| Action::Drop).await;
    let spec = ConsumerSpec::pull("NODLQ", "n", "t").max_deliver(2);
    let child = spawn_pull(&env, spec, target).await;
    let first = fetch(&child, 1, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(first.abandoned, 1);
    let second = fetch(&child, 1, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(
        (second.delivered, second.termed),
        (1, 1),
        "the last delivery is termed: {second:?}"
    );
    assert!(
        fetch(&child, 1, Duration::from_millis(300))
            .await
            .expect("fetch")
            .is_empty()
    );
    assert_eq!(record.count(), 2);
    wait_for_consumer(&env.js, "NODLQ", "n", "settled", |i| {
        i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_nobody_stores_is_nakd_so_nothing_is_lost() {
    let env = env().await;
    create_stream(&env.js, "LOST", &["lost.>"]).await;
    publish_n(&env.js, "lost.x", 1).await;
    // Terms on the first delivery, acks on the second.
    let (_t, target, record) = spawn_target(|d| {
        if d.info().delivered == 1 {
            Action::Term
        } else {
            Action::Ack
        }
    })
    .await;
    let spec = ConsumerSpec::pull("LOST", "l", "t").dead_letter("nowhere.stored");
    let child = spawn_pull(&env, spec, target).await;
    let first = fetch(&child, 1, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(
        (first.delivered, first.naked, first.termed),
        (1, 1, 0),
        "{first:?}"
    );
    let second = fetch(&child, 1, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(second.acked, 1, "it came back: {second:?}");
    assert_eq!(
        record.with(|r| r.seen.iter().map(|s| s.delivered).collect::<Vec<_>>()),
        vec![1, 2]
    );
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!(stats.dead_lettered, 0);
}

#[tokio::test]
async fn a_backoff_list_and_dead_letter_checks_reach_the_server_and_the_validator() {
    let env = env().await;
    create_stream(&env.js, "BACK", &["back.>"]).await;
    let spec = ConsumerSpec::pull("BACK", "b", "t")
        .max_deliver(4)
        .backoff([
            Duration::from_secs(1),
            Duration::from_secs(5),
            Duration::from_secs(30),
        ]);
    ractor_jetstream::ensure_consumer(&env.js, &spec)
        .await
        .expect("ensure");
    let info = consumer_info(&env.js, "BACK", "b").await;
    assert_eq!(info.config.backoff, spec.server.backoff);
    assert_eq!(info.config.max_deliver, 4);

    // A dead-letter subject the consumer itself reads is rejected up front.
    let text = r#"
        [[streams]]
        name = "S"
        subjects = ["s.>"]
        [[consumers]]
        stream = "S"
        durable = "d"
        mode = "pull"
        target = "t"
        dead_letter_subject = "s.dead"
    "#;
    let err = Topology::from_toml_str(text).expect_err("loops back");
    assert!(
        err.validation()
            .is_some_and(|e| e.has_field("consumers[0].dead_letter_subject")),
        "{err}"
    );
}
