//! A typed target: payloads are decoded from JSON into a serde type, and
//! what does not decode is terminated with the reason and kept in a
//! dead-letter stream, never silently dropped.
//!
//! The target calls [`Delivery::json_or_term`]: a payload that decodes
//! becomes an `Order`; one that does not is terminated with the decoder's
//! message, after the child has stored the original in the dead-letter
//! subject (`dlq.orders`, captured by the `DLQ` stream) with headers naming
//! the stream, the sequence, the delivery count and the error.
//!
//! ```text
//! cargo run --example typed
//! ```
//!
//! It uses `NATS_URL` when set, or an embedded server. The last line is
//! `typed: published=P decoded=D dead_lettered=L`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Delivery, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
};
use serde::Deserialize;

/// What an order message must look like.
#[derive(Debug, Deserialize)]
struct Order {
    id: u64,
    item: String,
    quantity: u32,
}

struct Orders;

impl Actor for Orders {
    type Msg = Delivery;
    type State = Arc<AtomicU64>;
    type Arguments = Arc<AtomicU64>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        decoded: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(decoded)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        decoded: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Decode, or terminate with the reason (dead-lettered first).
        let Some((order, delivery)) = delivery.json_or_term::<Order>() else {
            return Ok(());
        };
        println!(
            "typed: order {} for {} x {}",
            order.id, order.quantity, order.item
        );
        decoded.fetch_add(1, Ordering::Relaxed);
        delivery.ack();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // 1. The server: NATS_URL, or an embedded one.
    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_harness::NatsServer::start().await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    for stream in ["TYPED_ORDERS", "DLQ"] {
        let _ = js.delete_stream(stream).await;
    }

    // 2. The orders stream, a dead-letter stream, and a pull durable whose
    //    poison messages go to `dlq.orders`.
    let decoded = Arc::new(AtomicU64::new(0));
    let (orders, _) = Actor::spawn(None, Orders, decoded.clone()).await?;
    let topology = Topology::new()
        .stream(StreamSpec::new("TYPED_ORDERS", ["typed.orders.>"]))
        .stream(StreamSpec::new("DLQ", ["dlq.>"]))
        .consumer(ConsumerSpec::pull("TYPED_ORDERS", "typed", "orders").dead_letter("dlq.orders"));
    let args = SupervisorArgs::new(js.clone(), topology).target("orders", orders.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(None, args).await?;

    // 3. Some good orders, and some that are not orders at all.
    let payloads = [
        r#"{"id":1,"item":"tea","quantity":2}"#,
        r#"{"id":2,"item":"cups"}"#,
        r#"{"id":3,"item":"milk","quantity":1}"#,
        "tea, two please",
        r#"{"id":5,"item":"sugar","quantity":-1}"#,
    ];
    for payload in payloads {
        js.publish("typed.orders.new", payload.into())
            .await?
            .await?;
    }

    // 4. One fetch takes them all (through the supervisor, which hands it
    //    to the pull child).
    let outcome = supervisor
        .fetch("typed", 10, Some(Duration::from_millis(500)))
        .await?;
    println!(
        "typed: fetched {}: {} acked, {} terminated",
        outcome.delivered, outcome.acked, outcome.termed
    );

    // 5. What landed in the dead-letter stream, and why.
    let dlq = js.get_stream("DLQ").await?;
    let reader: async_nats::jetstream::consumer::PullConsumer =
        dlq.create_consumer(Default::default()).await?;
    let mut letters = reader
        .fetch()
        .max_messages(10)
        .expires(Duration::from_millis(300))
        .messages()
        .await?;
    let mut dead_lettered = 0;
    while let Some(letter) = letters.next().await {
        let letter = letter?;
        let error = letter
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-DLQ-Error"))
            .map(|v| v.to_string())
            .unwrap_or_default();
        println!(
            "typed: dead letter {:?}: {error}",
            String::from_utf8_lossy(&letter.payload)
        );
        letter.ack().await?;
        dead_lettered += 1;
    }
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await?;
    println!(
        "typed: published={} decoded={} dead_lettered={dead_lettered}",
        payloads.len(),
        decoded.load(Ordering::Relaxed)
    );
    Ok(())
}
