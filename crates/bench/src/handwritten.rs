//! The handwritten case: how much of the library's distance from a raw
//! async-nats loop is the hop to an actor that every ractor application
//! pays, and how much is the library's own.
//!
//! The pull, push and continuous cases compare the library, which hands
//! each message to a target actor and waits for its decision, with a loop
//! that acks each message where it reads it. A ractor application that
//! does not use the library still hands its messages to an actor. This
//! case runs, for each mode, three sides in one round, in an order that
//! rotates from round to round:
//!
//! - raw: the loop of the pull, push or continuous case, acking in place;
//! - handwritten: the same loop, but each message is sent to a plain
//!   ractor actor whose handler acks it (`message.ack().await`) and counts
//!   it. The pull loop waits until the actor has acked a fetch's messages
//!   before the next fetch (as a library fetch answers once its deliveries
//!   are settled); the push and continuous loops never wait;
//! - batched: the handwritten loop, but the messages that are ready
//!   together (a fetch's, or what the stream has at hand, up to the
//!   batch or window) go to the actor in one ractor message, which acks
//!   them in turn: what one actor message per several deliveries would be
//!   worth;
//! - library: the pull, push or continuous case's library side (the same
//!   child, the same trivial target).
//!
//! It prints, for each mode (`kind=pull size=B`, `kind=push`,
//! `kind=continuous`; the push window and the continuous batch are
//! `--window`):
//!
//! ```text
//! RESULT mode=handwritten kind=K size=S messages=N raw=R handwritten=H batched=B library=L library_vs_raw=.. library_vs_handwritten=.. handwritten_vs_raw=.. batched_vs_raw=.. client_us_raw=.. client_us_handwritten=.. client_us_batched=.. client_us_library=.. server_us_..
//! ```
//!
//! Rates are medians over `--rounds` (messages per second); the ratios are
//! medians of the per-round ratios, and the CPU figures per message, as in
//! the other cases. Run it with `--cases handwritten`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::{FutureExt, Stream, StreamExt};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Notify;

use super::cpu::{CpuMark, CpuUse};
use super::{BoxError, Options, check_all_acked, fill, median};

/// The longest one run may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

/// Which loop a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Raw,
    Handwritten,
    Batched,
    Library,
}

/// The sides, in the order of the figures.
const SIDES: [Side; 4] = [Side::Raw, Side::Handwritten, Side::Batched, Side::Library];

/// Which mode a row measures.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Pull(usize),
    Push(usize),
    Continuous(usize),
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Pull(batch) => format!("kind=pull size={batch}"),
            Kind::Push(window) => format!("kind=push size={window}"),
            Kind::Continuous(window) => format!("kind=continuous size={window}"),
        }
    }
}

/// One row of the case; figures in the order of [`SIDES`].
#[derive(Debug, Clone)]
pub struct HandwrittenRow {
    kind: Kind,
    messages: u64,
    rates: [f64; 4],
    /// Medians of the per-round ratios: library / raw, library /
    /// handwritten, handwritten / raw, batched / raw.
    paired: [f64; 4],
    cpu: [CpuUse; 4],
}

impl HandwrittenRow {
    /// The `RESULT` line.
    pub fn line(&self) -> String {
        let [raw, handwritten, batched, library] = self.rates;
        let [lib_raw, lib_hand, hand_raw, batched_raw] = self.paired;
        let [c_raw, c_hand, c_batched, c_lib] = self.cpu.map(|c| c.client_us);
        let [s_raw, s_hand, s_batched, s_lib] = self.cpu.map(|c| c.server_us);
        format!(
            "RESULT mode=handwritten {} messages={} raw={raw:.0} handwritten={handwritten:.0} batched={batched:.0} library={library:.0} library_vs_raw={lib_raw:.3} library_vs_handwritten={lib_hand:.3} handwritten_vs_raw={hand_raw:.3} batched_vs_raw={batched_raw:.3} client_us_raw={c_raw:.2} client_us_handwritten={c_hand:.2} client_us_batched={c_batched:.2} client_us_library={c_lib:.2} server_us_raw={s_raw:.2} server_us_handwritten={s_hand:.2} server_us_batched={s_batched:.2} server_us_library={s_lib:.2}",
            self.kind.label(),
            self.messages,
        )
    }
}

/// Runs the case: a row per `--batches` size, then push, then continuous.
pub(crate) async fn handwritten_case(
    js: &jetstream::Context,
    options: &Options,
) -> Result<Vec<HandwrittenRow>, BoxError> {
    let mut kinds: Vec<Kind> = options.batches.iter().map(|b| Kind::Pull(*b)).collect();
    kinds.push(Kind::Push(options.window));
    kinds.push(Kind::Continuous(options.window));
    let mut rows = Vec::new();
    for kind in kinds {
        let row = row(js, options, kind).await?;
        println!("{}", row.line());
        rows.push(row);
    }
    Ok(rows)
}

async fn row(
    js: &jetstream::Context,
    options: &Options,
    kind: Kind,
) -> Result<HandwrittenRow, BoxError> {
    let n = match kind {
        Kind::Pull(batch) => options.messages_for(batch),
        _ => options.messages,
    };
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpus: [Vec<CpuUse>; 4] = Default::default();
    let mut paired: [Vec<f64>; 4] = Default::default();
    for round in 0..options.rounds {
        let mut this = [0.0; 4];
        for i in 0..SIDES.len() {
            // The order rotates, so that a drift of the machine favours
            // no side.
            let at = (round + i) % SIDES.len();
            let side = SIDES[at];
            let (rate, cpu) = tokio::time::timeout(RUN_LIMIT, run(js, options, kind, side, n))
                .await
                .map_err(|_| format!("{kind:?} {side:?}: not done within {RUN_LIMIT:?}"))??;
            this[at] = rate;
            rates[at].push(rate);
            cpus[at].push(cpu);
        }
        let [raw, handwritten, batched, library] = this;
        eprintln!(
            "round: handwritten {} raw={raw:.0} handwritten={handwritten:.0} batched={batched:.0} library={library:.0}",
            kind.label(),
        );
        paired[0].push(library / raw);
        paired[1].push(library / handwritten);
        paired[2].push(handwritten / raw);
        paired[3].push(batched / raw);
    }
    Ok(HandwrittenRow {
        kind,
        messages: n,
        rates: rates.map(|mut r| median(&mut r)),
        paired: paired.map(|mut r| median(&mut r)),
        cpu: cpus.map(|c| CpuUse::median(&c)),
    })
}

/// One run of one side; returns its rate and CPU per message.
async fn run(
    js: &jetstream::Context,
    options: &Options,
    kind: Kind,
    side: Side,
    n: u64,
) -> Result<(f64, CpuUse), BoxError> {
    let server = options.server_pid;
    if side == Side::Library {
        return match kind {
            Kind::Pull(batch) => {
                finished(js, n, super::pull_library(js, options, n, batch).await?).await
            }
            Kind::Push(window) => {
                finished(js, n, super::push_library(js, options, n, window).await?).await
            }
            Kind::Continuous(window) => {
                let (rate, cpu, _) = super::continuous::library_run(js, options, n, window).await?;
                Ok((rate, cpu))
            }
        };
    }
    fill(js, n).await?;
    let stream = js.get_stream("BENCH").await?;
    let durable = if side == Side::Raw { "raw" } else { "hand" };
    let mut sink = match side {
        Side::Raw => Sink::Inline,
        Side::Batched => Sink::actor(true).await?,
        _ => Sink::actor(false).await?,
    };
    let cpu = CpuMark::now(server);
    let started = Instant::now();
    match kind {
        Kind::Pull(batch) => {
            let consumer = pull_durable(&stream, durable).await?;
            let mut done = 0;
            while done < n {
                let messages = consumer
                    .fetch()
                    .max_messages(batch)
                    .expires(Duration::from_secs(1))
                    .messages()
                    .await?;
                done += sink.take(messages, n - done).await?;
                sink.settled(done).await;
            }
        }
        Kind::Push(_) => {
            let consumer: consumer::PushConsumer = stream
                .create_consumer(consumer::push::Config {
                    durable_name: Some(durable.into()),
                    deliver_subject: js.client().new_inbox(),
                    ack_policy: consumer::AckPolicy::Explicit,
                    flow_control: true,
                    idle_heartbeat: Duration::from_secs(5),
                    ..Default::default()
                })
                .await?;
            sink.take(consumer.messages().await?, n).await?;
            sink.settled(n).await;
        }
        Kind::Continuous(window) => {
            let consumer = pull_durable(&stream, durable).await?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(window)
                .messages()
                .await?;
            sink.take(messages, n).await?;
            sink.settled(n).await;
        }
    }
    js.client().flush().await?;
    let elapsed = started.elapsed();
    let used = cpu.used(server, n);
    sink.stop();
    check_all_acked(js, durable, n).await?;
    Ok((n as f64 / elapsed.as_secs_f64(), used))
}

/// Ends a library run of `n` messages that took `elapsed`; returns its
/// rate and CPU.
async fn finished(
    js: &jetstream::Context,
    n: u64,
    (elapsed, run): (Duration, super::ActorRun),
) -> Result<(f64, CpuUse), BoxError> {
    let cpu = run.cpu;
    run.finish(js, n).await?;
    Ok((n as f64 / elapsed.as_secs_f64(), cpu))
}

/// A fresh pull durable with explicit acks.
async fn pull_durable(
    stream: &jetstream::stream::Stream,
    durable: &str,
) -> Result<consumer::PullConsumer, BoxError> {
    let config = consumer::pull::Config {
        durable_name: Some(durable.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    Ok(stream.create_consumer(config).await?)
}

/// Where a loop's messages go: acked in place, or to an actor that acks
/// them, one message or a batch at a time.
enum Sink {
    Inline,
    Actor {
        actor: ActorRef<ToAck>,
        /// Whether what is ready goes in one message.
        batched: bool,
        acked: Arc<AtomicU64>,
        notify: Arc<Notify>,
    },
}

/// What the acking actor gets: one message, or a batch.
#[allow(clippy::large_enum_variant)] // ractor boxes every message anyway
enum ToAck {
    One(jetstream::Message),
    Batch(Vec<jetstream::Message>),
}

/// What an acking actor shares with its loop: how many it acked, and a
/// wake-up after each message it handled.
type Count = (Arc<AtomicU64>, Arc<Notify>);

impl Sink {
    async fn actor(batched: bool) -> Result<Self, BoxError> {
        let (acked, notify) = (Arc::new(AtomicU64::new(0)), Arc::new(Notify::new()));
        let (actor, _) = Actor::spawn(None, Acker, (acked.clone(), notify.clone())).await?;
        Ok(Sink::Actor {
            actor,
            batched,
            acked,
            notify,
        })
    }

    /// Takes up to `max` messages from `messages` (all it yields, for a
    /// fetch); returns how many.
    async fn take<S, E>(&mut self, mut messages: S, max: u64) -> Result<u64, BoxError>
    where
        S: Stream<Item = Result<jetstream::Message, E>> + Unpin,
        E: Into<BoxError>,
    {
        let mut taken = 0;
        while taken < max {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(Into::into)?;
            taken += 1;
            let (actor, batched) = match self {
                Sink::Inline => {
                    message.ack().await?;
                    continue;
                }
                Sink::Actor { actor, batched, .. } => (actor, *batched),
            };
            let to_ack = if batched {
                // With it, whatever else is ready now.
                let mut batch = vec![message];
                while taken < max {
                    match messages.next().now_or_never() {
                        Some(Some(message)) => {
                            batch.push(message.map_err(Into::into)?);
                            taken += 1;
                        }
                        _ => break,
                    }
                }
                ToAck::Batch(batch)
            } else {
                ToAck::One(message)
            };
            actor
                .send_message(to_ack)
                .map_err(|_| "the acking actor is gone")?;
        }
        Ok(taken)
    }

    /// Waits until the actor has acked `count` messages in all.
    async fn settled(&self, count: u64) {
        if let Sink::Actor { acked, notify, .. } = self {
            while acked.load(Ordering::Acquire) < count {
                notify.notified().await;
            }
        }
    }

    fn stop(&self) {
        if let Sink::Actor { actor, .. } = self {
            actor.stop(None);
        }
    }
}

/// The handwritten and batched sides' actor: acks each message it gets,
/// in turn, and counts them.
struct Acker;

impl Actor for Acker {
    type Msg = ToAck;
    type State = Count;
    type Arguments = Count;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        count: Count,
    ) -> Result<Count, ActorProcessingErr> {
        Ok(count)
    }

    async fn handle(
        &self,
        _: ActorRef<Self::Msg>,
        to_ack: ToAck,
        (acked, notify): &mut Count,
    ) -> Result<(), ActorProcessingErr> {
        let n = match to_ack {
            ToAck::One(message) => {
                message.ack().await?;
                1
            }
            ToAck::Batch(batch) => {
                let n = batch.len() as u64;
                for message in batch {
                    message.ack().await?;
                }
                n
            }
        };
        acked.fetch_add(n, Ordering::Release);
        notify.notify_one();
        Ok(())
    }
}
