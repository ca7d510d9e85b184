//! A push durable feeding a chain of two actors, acked only after the
//! second one is done: at-least-once through a pipeline.
//!
//! The push child forwards each reading to `Parse`, which decodes it and
//! hands the delivery on, with the parsed value, to `Store`. Only `Store`
//! acks, after it has stored the value, so a crash anywhere in the chain
//! leaves the message unacked, and the server delivers it again (the same
//! rule as storing a Kafka offset only after processing).
//!
//! ```text
//! cargo run --example push_pipeline -- [--messages N]
//! ```
//!
//! It uses `NATS_URL` when set, or an embedded server. The last line is
//! `push_pipeline: published=P stored=S acked=A`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Delivery, PushSpec, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
};

/// Stage one: decodes the reading and passes the delivery on.
struct Parse;

impl Actor for Parse {
    type Msg = Delivery;
    type State = ActorRef<StoreMsg>;
    type Arguments = ActorRef<StoreMsg>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        next: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(next)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        delivery: Delivery,
        next: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A reading that does not parse is terminated with the reason.
        let value = match std::str::from_utf8(delivery.payload())
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
        {
            Some(value) => value,
            None => {
                delivery.term("not a number");
                return Ok(());
            }
        };
        // Not acked here: the delivery travels with the value.
        next.cast(StoreMsg { delivery, value })?;
        Ok(())
    }
}

/// Stage two's message: the delivery and what stage one made of it.
struct StoreMsg {
    delivery: Delivery,
    value: f64,
}

/// Stage two: stores the value, then acks.
struct Store;

struct StoreState {
    total: f64,
    stored: Arc<AtomicU64>,
}

impl Actor for Store {
    type Msg = StoreMsg;
    type State = StoreState;
    type Arguments = Arc<AtomicU64>;

    async fn pre_start(
        &self,
        _: ActorRef<StoreMsg>,
        stored: Arc<AtomicU64>,
    ) -> Result<StoreState, ActorProcessingErr> {
        Ok(StoreState { total: 0.0, stored })
    }

    async fn handle(
        &self,
        _: ActorRef<StoreMsg>,
        msg: StoreMsg,
        state: &mut StoreState,
    ) -> Result<(), ActorProcessingErr> {
        // "Storing": add it up. Then, and only then, ack.
        state.total += msg.value;
        state.stored.fetch_add(1, Ordering::Relaxed);
        msg.delivery.ack();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut messages: u64 = 1000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--messages", Some(n)) => {
                messages = n
                    .parse()
                    .map_err(|_| format!("--messages needs a number, got {n:?}"))?
            }
            _ => return Err(format!("usage: push_pipeline [--messages N]; got {flag:?}").into()),
        }
    }

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
    let _ = js.delete_stream("PIPELINE").await;

    // 2. The chain, the last stage first.
    let stored = Arc::new(AtomicU64::new(0));
    let (store, _) = Actor::spawn(None, Store, stored.clone()).await?;
    let (parse, _) = Actor::spawn(None, Parse, store.clone()).await?;

    // 3. A push durable whose target is the first stage.
    let topology = Topology::new()
        .stream(StreamSpec::new("PIPELINE", ["readings.>"]))
        .consumer(ConsumerSpec::new(
            "PIPELINE",
            "pipeline",
            "parse",
            PushSpec::default().window(64),
        ));
    let args = SupervisorArgs::new(js.clone(), topology).target("parse", parse.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(None, args).await?;

    // 4. Publish readings; the push child starts forwarding at once.
    let mut acks = Vec::new();
    for i in 0..messages {
        acks.push(
            js.publish("readings.temperature", format!("{}.5", i % 40).into())
                .await?,
        );
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }

    // 5. Wait until everything is stored, then check the server agrees.
    let started = Instant::now();
    while stored.load(Ordering::Relaxed) < messages {
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "only {} of {messages} stored after 30 s",
                stored.load(Ordering::Relaxed)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stream = js.get_stream("PIPELINE").await?;
    let mut acked = 0;
    while started.elapsed() < Duration::from_secs(30) {
        let info = stream.consumer_info("pipeline").await?;
        acked = info.ack_floor.consumer_sequence;
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await?;
    println!(
        "push_pipeline: published={messages} stored={} acked={acked}",
        stored.load(Ordering::Relaxed)
    );
    Ok(())
}
