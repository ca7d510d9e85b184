//! A 3-node cluster: an R3 stream survives the loss of its leader.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use nats_harness::{NatsCluster, eventually};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const FAILOVER: Duration = Duration::from_secs(30);
/// How long a healthy cluster may take to store a message: a freshly created
/// R3 stream may still be electing its first leader, and a loaded machine
/// answers slowly.
const SETTLE: Duration = Duration::from_secs(20);

/// Publishes with a message id, so that a retried publish is stored once.
async fn publish(js: &jetstream::Context, i: u64) -> Result<u64, String> {
    let ack = js
        .send_publish(
            format!("orders.{i}"),
            PublishMessage::build()
                .message_id(format!("order-{i}"))
                .payload(format!("order {i}").into()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let ack = tokio::time::timeout(Duration::from_secs(2), ack)
        .await
        .map_err(|_| "ack timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(ack.sequence)
}

#[tokio::test]
async fn r3_stream_survives_the_loss_of_its_leader() -> TestResult {
    let mut cluster = NatsCluster::start(3).await?;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.url(), cluster.urls().join(","));

    let client = async_nats::connect(cluster.client_urls()).await?;
    let js = jetstream::new(client);
    // Right after forming, the meta leader may still count a peer offline
    // for placement ("no suitable peers"); the stream is placed once it
    // does not.
    eventually("create the R3 stream", SETTLE, || async {
        js.get_or_create_stream(stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .await?;
    for i in 1..=20 {
        eventually(&format!("publish {i} to the new stream"), SETTLE, || {
            publish(&js, i)
        })
        .await?;
    }

    let leader = cluster.stream_leader("ORDERS").await?;
    cluster.kill_node(leader).await?;
    assert_eq!(cluster.node(leader).pid(), None);

    // Writable again once a new leader is elected.
    for i in 21..=30 {
        eventually(&format!("publish {i} after failover"), FAILOVER, || {
            publish(&js, i)
        })
        .await?;
    }
    let new_leader = cluster.stream_leader("ORDERS").await?;
    assert_ne!(new_leader, leader);

    // Readable: every message is there exactly once.
    let info = eventually("stream info after failover", FAILOVER, || async {
        let mut stream = js.get_stream("ORDERS").await.map_err(|e| e.to_string())?;
        stream
            .info()
            .await
            .map(|i| i.state.clone())
            .map_err(|e| e.to_string())
    })
    .await?;
    assert_eq!((info.messages, info.last_sequence), (30, 30));
    let stream = js.get_stream("ORDERS").await?;
    let last = stream.get_last_raw_message_by_subject("orders.30").await?;
    assert_eq!(last.payload, "order 30".as_bytes());

    // The old leader comes back and catches up.
    cluster.restart_node(leader).await?;
    assert!(cluster.node(leader).pid().is_some());
    // Healthy means current with the meta leader; the stream's replica on
    // this node may still be catching up, so its count is polled.
    let direct = jetstream::new(async_nats::connect(cluster.node(leader).url()).await?);
    let messages = eventually(
        "the restarted node holds all 30 messages",
        FAILOVER,
        || async {
            let mut stream = direct
                .get_stream("ORDERS")
                .await
                .map_err(|e| e.to_string())?;
            let messages = stream
                .info()
                .await
                .map_err(|e| e.to_string())?
                .state
                .messages;
            if messages == 30 {
                Ok(messages)
            } else {
                Err(format!("{messages} messages"))
            }
        },
    )
    .await?;
    assert_eq!(messages, 30);
    Ok(())
}

#[tokio::test]
async fn comma_joined_url_is_not_a_valid_async_nats_address() -> TestResult {
    let cluster = NatsCluster::start(3).await?;
    assert!(async_nats::connect(cluster.url()).await.is_err());
    let meta = cluster.meta_leader().await?;
    assert!(meta < cluster.len());
    for too_small in [0, 1] {
        assert!(matches!(
            NatsCluster::start(too_small).await,
            Err(nats_harness::HarnessError::InvalidSettings(_))
        ));
    }
    Ok(())
}
