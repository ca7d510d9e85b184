//! Scale out: several workers bind one durable pull consumer and share its
//! work; none of it is lost and none is done twice.
//!
//! Each worker is what would be its own process in production: its own
//! connection, its own `JetStreamSupervisor` (named `worker-<i>`, since
//! actor names are unique within one process), its own target actor and its
//! own fetch loop. They all bind the same durable by name, so the server
//! hands each message to one of them. The run prints how the messages
//! split, and checks every one was processed. With `--idle-ms`, the workers
//! go on fetching that long once the work is done (or from the start, with
//! `--messages 0`): an idle fetch waits out its `expires` on the server, so
//! the fetch count stays near `workers × idle / expires` instead of
//! spinning.
//!
//! ```text
//! cargo run --example scale_out -- [--workers N] [--messages M] [--idle-ms I]
//! ```
//!
//! It uses `NATS_URL` when set, or an embedded server. The last line is
//! `scale_out: published=M processed=P workers=N split=a,b,... lost=L duplicates=D fetches=F`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Delivery, StreamSpec, SupervisorArgs, SupervisorHandle, Topology,
};

/// Every worker records which stream sequences it processed.
type Ledger = Arc<Mutex<HashMap<u64, Vec<usize>>>>;

struct Worker;

impl Actor for Worker {
    type Msg = Delivery;
    type State = (usize, Ledger);
    type Arguments = (usize, Ledger);

    async fn pre_start(
        &self,
        _: ActorRef<Delivery>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Delivery>,
        job: Delivery,
        (me, ledger): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        ledger
            .lock()
            .map_err(|_| "ledger lock poisoned")?
            .entry(job.stream_sequence())
            .or_default()
            .push(*me);
        job.ack();
        Ok(())
    }
}

/// How long one idle fetch waits on the server.
const EXPIRES: Duration = Duration::from_millis(200);

struct Args {
    workers: usize,
    messages: u64,
    idle: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut parsed = Args {
        workers: 3,
        messages: 3000,
        idle: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value
            .parse()
            .ok()
            .ok_or_else(|| format!("{flag} must be a whole number, got {value:?}"))?;
        match flag.as_str() {
            "--workers" if n > 0 => parsed.workers = n as usize,
            "--workers" => return Err("--workers must be at least 1".into()),
            "--messages" => parsed.messages = n,
            "--idle-ms" => parsed.idle = Duration::from_millis(n),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: scale_out [--workers N] [--messages M] [--idle-ms I]"
                ));
            }
        }
    }
    Ok(parsed)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Args {
        workers,
        messages,
        idle,
    } = parse_args()?;

    // 1. The server: NATS_URL, or an embedded one. The stream starts empty.
    let (_server, url) = match std::env::var("NATS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = nats_harness::NatsServer::start().await?;
            let url = server.url();
            (Some(server), url)
        }
    };
    let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
    let _ = js.delete_stream("JOBS").await;
    let topology = Topology::new()
        .stream(StreamSpec::new("JOBS", ["jobs.>"]))
        .consumer(ConsumerSpec::pull("JOBS", "shared", "worker"));

    // 2. The workers: each its own connection, supervisor and target, and
    //    a handle on its own pull child of the shared durable.
    let ledger: Ledger = Arc::default();
    let mut supervisors = Vec::new();
    let mut pulls = Vec::new();
    for i in 0..workers {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await?);
        let (worker, _) = Actor::spawn(None, Worker, (i, ledger.clone())).await?;
        let args = SupervisorArgs::new(js, topology.clone()).target("worker", worker.get_derived());
        let (supervisor, _) = SupervisorHandle::spawn(Some(format!("worker-{i}")), args).await?;
        pulls.push(supervisor.pull("shared").await?);
        supervisors.push(supervisor);
    }

    // 3. Publish the jobs.
    let mut acks = Vec::new();
    for i in 0..messages {
        acks.push(js.publish("jobs.new", i.to_string().into()).await?);
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }

    // 4. Every worker fetches in its own loop until all jobs are done, and
    //    then for `--idle-ms` more. Each counts its fetches.
    let started = Instant::now();
    let loops: Vec<_> = pulls
        .into_iter()
        .map(|shared| {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                let mut fetches = 0u64;
                let mut done_at = None;
                while started.elapsed() < Duration::from_secs(60) {
                    let done = ledger
                        .lock()
                        .map(|l| (l.len() as u64) >= messages)
                        .unwrap_or(true);
                    if done {
                        let done_at = *done_at.get_or_insert_with(Instant::now);
                        if done_at.elapsed() >= idle {
                            break;
                        }
                    }
                    fetches += 1;
                    let _ = shared.fetch(50, Some(EXPIRES)).await;
                }
                fetches
            })
        })
        .collect();
    let mut fetches = 0;
    for handle in loops {
        fetches += handle.await?;
    }

    // 5. How the work split, and whether any was lost or done twice.
    let ledger = ledger.lock().map_err(|_| "ledger lock poisoned")?.clone();
    let mut split = vec![0u64; workers];
    let mut duplicates = 0;
    for processed_by in ledger.values() {
        for worker in processed_by {
            split[*worker] += 1;
        }
        duplicates += processed_by.len() as u64 - 1;
    }
    let lost = (1..=messages)
        .filter(|seq| !ledger.contains_key(seq))
        .count();
    for supervisor in &supervisors {
        supervisor.actor().stop(None);
    }
    let info = js.get_stream("JOBS").await?.consumer_info("shared").await?;
    println!(
        "scale_out: server: ack floor {}, {} pending, {} unacked",
        info.ack_floor.stream_sequence, info.num_pending, info.num_ack_pending
    );
    let split: Vec<String> = split.iter().map(u64::to_string).collect();
    println!(
        "scale_out: published={messages} processed={} workers={workers} split={} lost={lost} duplicates={duplicates} fetches={fetches}",
        ledger.len(),
        split.join(",")
    );
    Ok(())
}
