//! Quickstart: one message through JetStream, acknowledged only after it was
//! processed.
//!
//! It creates a stream, publishes a message and waits for the server to
//! confirm it is stored, reads it back through a durable pull consumer, acks
//! it, and checks on the server that the consumer has nothing left pending.
//! This is the at-least-once round trip that ractor-jetstream runs inside
//! supervised actors; until the library's actors land, this example uses
//! plain async-nats.
//!
//! Run it with `cargo xtask demo` (installs nats-server into `.tools/` if
//! needed), or `cargo run --example quickstart`, which starts a throwaway
//! nats-server with nats-harness. To use your own server instead:
//! `NATS_URL=nats://host:4222 cargo run --example quickstart` (several URLs
//! may be given, comma-separated).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;
use nats_harness::NatsServer;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    // 1. Connect to NATS_URL when it is set, else to a throwaway local
    //    server that lives until the end of `main`.
    let (_local_server, urls) = match std::env::var("NATS_URL") {
        Ok(list) => (
            None,
            list.split(',').map(|u| u.trim().to_string()).collect(),
        ),
        Err(_) => {
            let server = NatsServer::start().await?;
            let url = server.url();
            (Some(server), vec![url])
        }
    };
    let client = async_nats::connect(urls.clone())
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", urls.join(",")))?;
    let js = jetstream::new(client);

    // 2. A stream that stores every message published under `quickstart.>`.
    let stream = js
        .get_or_create_stream(stream::Config {
            name: "QUICKSTART".into(),
            subjects: vec!["quickstart.>".into()],
            ..Default::default()
        })
        .await?;

    // 3. Publish, and wait for the server's acknowledgement: from here on the
    //    message is stored, whatever happens to this process.
    let stored = js
        .publish("quickstart.greeting", "hello, JetStream".into())
        .await?
        .await?;

    // 4. A durable pull consumer: the server remembers how far it got, so a
    //    restarted reader resumes after the last acknowledged message.
    let consumer = stream
        .get_or_create_consumer(
            "quickstart",
            pull::Config {
                durable_name: Some("quickstart".into()),
                ..Default::default()
            },
        )
        .await?;

    // 5. Fetch until our message arrives (on a long-lived server, older
    //    unacknowledged messages may come first), acking each one only after
    //    it was handled: here, printed.
    let (payload, delivered) = loop {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(5))
            .messages()
            .await?;
        let message = batch
            .next()
            .await
            .ok_or("no message arrived within 5 s")??;
        let (sequence, delivered) = {
            let info = message.info()?;
            (info.stream_sequence, info.delivered)
        };
        let payload = String::from_utf8_lossy(&message.payload).into_owned();
        // 6. Ack, and wait for the server to confirm it recorded the ack.
        message.double_ack().await?;
        if sequence == stored.sequence {
            break (payload, delivered);
        }
    };

    // 7. Ask the server, not our own bookkeeping, whether anything is left.
    let mut consumer = consumer;
    let state = consumer.info().await?;
    println!(
        "quickstart: {payload:?} stored as QUICKSTART #{}, delivered {delivered}x to durable \
         \"quickstart\" and acked; server reports {} pending, {} awaiting ack ({})",
        stored.sequence,
        state.num_pending,
        state.num_ack_pending,
        urls.join(",")
    );
    Ok(())
}
