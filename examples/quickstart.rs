//! Quickstart: 10,000 orders through a supervised pull consumer and a push
//! consumer, with a crash in the middle, and nothing lost.
//!
//! It loads `examples/topology.toml` (one stream, a pull durable and a push
//! durable on different subjects), starts the supervisor with one worker
//! actor as the target of both, and publishes 10,000 orders. The worker
//! nak's every 50th order the first time it sees it (so it comes back), and
//! acks everything else. Halfway through, the pull consumer's child is
//! killed: the supervisor restarts it, and it resumes from the durable
//! consumer's position on the server. The last line is
//! `quickstart: published=P acked=A redelivered=R restarts=K lost=0`.
//!
//! Run it with `cargo xtask demo`, or `cargo run --example quickstart`,
//! which start a throwaway nats-server. To use your own server:
//! `NATS_URL=nats://host:4222 cargo run --example quickstart` (it creates,
//! and deletes on start, its own stream `QUICKSTART_ORDERS`).
//!
//! `--metrics-addr HOST:PORT` serves the library's metrics (see the
//! `telemetry` module) as Prometheus text at `http://HOST:PORT/metrics`
//! for as long as it runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{Delivery, SupervisorArgs, SupervisorHandle, Topology};

const ORDERS: u64 = 10_000;

/// What the worker has done, shared with `main` for the progress lines.
#[derive(Default)]
struct Tally {
    acked: HashSet<u64>,
    acked_pull: u64,
    redelivered: u64,
}

/// The worker: processes an order, and decides.
struct Worker;

impl Actor for Worker {
    type Msg = Delivery;
    type State = Arc<Mutex<Tally>>;
    type Arguments = Arc<Mutex<Tally>>;

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        tally: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tally)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        order: Delivery,
        tally: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let first_time = order.delivered() == 1;
        let number: u64 = std::str::from_utf8(order.payload())?.parse()?;
        // Every 50th order cannot be handled the first time: nak it, and it
        // comes back.
        if first_time && number.is_multiple_of(50) {
            order.nak();
            return Ok(());
        }
        let mut tally = tally.lock().map_err(|_| "tally lock poisoned")?;
        if !first_time {
            tally.redelivered += 1;
        }
        if tally.acked.insert(number) && order.consumer() == "fulfilment" {
            tally.acked_pull += 1;
        }
        drop(tally);
        order.ack();
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 0. The one option: where to serve metrics, if anywhere.
    let mut argv = std::env::args().skip(1);
    match (argv.next().as_deref(), argv.next(), argv.next()) {
        (None, ..) => {}
        (Some("--metrics-addr"), Some(addr), None) => {
            let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
                format!("--metrics-addr must be an IP address and port (HOST:PORT), got {addr:?}")
            })?;
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .with_http_listener(addr)
                .install()?;
        }
        (Some("--metrics-addr"), None, _) => {
            return Err("--metrics-addr needs a value (HOST:PORT)".into());
        }
        (Some(other), ..) => {
            return Err(format!(
                "unknown argument {other:?}; usage: quickstart [--metrics-addr HOST:PORT]"
            )
            .into());
        }
    }

    // 1. The server: NATS_URL, or a throwaway one.
    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_harness::NatsServer::start().await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url.split(',').map(str::trim).collect::<Vec<_>>())
        .await?;
    let js = async_nats::jetstream::new(client);

    // 2. The topology, validated as a whole before anything is created.
    let topology = Topology::from_path(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/topology.toml"
    ))?;
    // The demo's own stream starts empty on every run.
    let _ = js.delete_stream("QUICKSTART_ORDERS").await;

    // 3. The worker, and the supervisor that makes the stream and both
    //    durables exist and spawns their children.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let (worker, _) = Actor::spawn(None, Worker, tally.clone()).await?;
    let args = SupervisorArgs::new(js.clone(), topology).target("worker", worker.get_derived());
    let (supervisor, _) = SupervisorHandle::spawn(Some("quickstart".into()), args).await?;
    println!("quickstart: supervisor up: pull durable `fulfilment`, push durable `audit`");

    // 4. Publish the orders: even ones to Europe (pull), odd ones to the US
    //    (push), each confirmed stored by the server.
    //    Acks are awaited a window at a time: the client bounds how many
    //    may be outstanding.
    let mut acks = Vec::new();
    for number in 1..=ORDERS {
        let region = if number.is_multiple_of(2) { "eu" } else { "us" };
        acks.push(
            js.publish(
                format!("quickstart.orders.{region}"),
                number.to_string().into(),
            )
            .await?,
        );
        if acks.len() == 500 || number == ORDERS {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    println!("quickstart: published {ORDERS} orders");

    // 5. Fetch the Europe orders in batches, the way a worker that pulls
    //    only when ready does. Kill the pull child halfway through. The
    //    handle reaches the child directly, and finds the restarted one by
    //    its registered name, `quickstart/QUICKSTART_ORDERS/fulfilment`.
    let fulfilment = supervisor.pull("fulfilment").await?;
    let started = Instant::now();
    let mut killed = false;
    let mut resumed = false;
    let mut last_progress = Instant::now();
    // On a terminal, a live bar; otherwise (a pipe, a test) a line every
    // 50 ms.
    let bar = std::io::IsTerminal::is_terminal(&std::io::stdout()).then(|| {
        let bar = indicatif::ProgressBar::new(ORDERS);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "quickstart: [{bar:40}] {pos:>5}/{len} acked  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    let say = |line: String| match &bar {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    };
    loop {
        let (acked, acked_pull, redelivered) = {
            let tally = tally.lock().map_err(|_| "tally lock poisoned")?;
            (
                tally.acked.len() as u64,
                tally.acked_pull,
                tally.redelivered,
            )
        };
        if acked == ORDERS {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            break;
        }
        if started.elapsed() > Duration::from_secs(50) {
            return Err(format!("only {acked} of {ORDERS} orders acked after 50 s").into());
        }
        if !killed && acked_pull >= ORDERS / 4 {
            killed = true;
            if let Some(child) = fulfilment.consumer().child() {
                say(format!(
                    "quickstart: killing the pull child halfway (at {acked_pull} of {} Europe orders)",
                    ORDERS / 2
                ));
                child.kill();
            }
        }
        if last_progress.elapsed() >= Duration::from_millis(50) {
            last_progress = Instant::now();
            match &bar {
                Some(bar) => {
                    let restarts = if resumed || killed { 1 } else { 0 };
                    bar.set_position(acked);
                    bar.set_message(format!("{redelivered} redelivered, {restarts} restart(s)"));
                }
                None => println!(
                    "quickstart: {acked:>5}/{ORDERS} orders acked, {redelivered} redelivered"
                ),
            }
        }
        // A fetch that a crash cuts off fails with FetchInterrupted; one sent
        // while the child restarts, with Unavailable. Either way nothing is
        // lost; fetch again.
        match fulfilment
            .fetch(100, Some(Duration::from_millis(200)))
            .await
        {
            Ok(outcome) => {
                if killed && !resumed && outcome.delivered > 0 {
                    resumed = true;
                    let floor = js
                        .get_stream("QUICKSTART_ORDERS")
                        .await?
                        .consumer_info("fulfilment")
                        .await?
                        .ack_floor
                        .stream_sequence;
                    say(format!(
                        "quickstart: the restarted pull child resumed from the durable's position (ack floor at stream sequence {floor}) and fetched {}",
                        outcome.delivered
                    ));
                }
            }
            // While the child restarts, the supervisor says so; try again.
            Err(err) => {
                say(format!(
                    "quickstart: fetch refused ({:?}: {err}); retrying",
                    err.kind()
                ));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // 6. What the server says, and the summary.
    let status = supervisor.status().await?;
    let restarts: u64 = status.children.iter().map(|c| c.restarts).sum();
    for child in &status.children {
        println!(
            "quickstart: {} ({}) restarted {} time(s){}",
            child.durable,
            child.mode,
            child.restarts,
            child
                .last_failure
                .as_ref()
                .map(|f| format!(", last stop: {f}"))
                .unwrap_or_default()
        );
    }
    let stream = js.get_stream("QUICKSTART_ORDERS").await?;
    println!(
        "quickstart: server: {:<12} {:>8} {:>8} {:>12} {:>10}",
        "durable", "pending", "unacked", "redelivered", "ack floor"
    );
    for durable in ["fulfilment", "audit"] {
        let info = stream.consumer_info(durable).await?;
        println!(
            "quickstart: server: {durable:<12} {:>8} {:>8} {:>12} {:>10}",
            info.num_pending,
            info.num_ack_pending,
            info.num_redelivered,
            info.ack_floor.stream_sequence
        );
    }
    supervisor
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(10)))
        .await?;
    let tally = tally.lock().map_err(|_| "tally lock poisoned")?;
    let acked = tally.acked.len() as u64;
    println!(
        "quickstart: published={ORDERS} acked={acked} redelivered={} restarts={restarts} lost={}",
        tally.redelivered,
        ORDERS - acked
    );
    Ok(())
}
