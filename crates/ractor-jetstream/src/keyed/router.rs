//! The router: the keyed dispatch, run by the consumer child's worker task
//! itself. It keeps a queue per key, hands the oldest waiting key to a
//! worker with room, and sees each decision as the child applies it; see
//! the [module docs](super).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{DerivedActorRef, MessagingErr};
use tokio::time::Instant;

use super::Keyer;
use super::pool::WorkerTable;
use crate::delivery::{Decision, Delivery, Token, Verdict};

/// What the router needs to start: cloned into each worker task the child
/// starts (one at a time).
#[derive(Clone)]
pub(crate) struct Routing {
    pub durable: Arc<str>,
    pub keyer: Keyer,
    pub table: Arc<WorkerTable>,
    pub leftover: Option<Leftover>,
    /// How long after its delay a nak'ed message must be back.
    pub redelivery: Duration,
}

/// Messages a dead process left unacknowledged, still to come back.
#[derive(Debug, Clone)]
pub(crate) struct Leftover {
    /// How many (the consumer's `num_ack_pending` when the child bound).
    pub remaining: u64,
    /// The last stream sequence delivered before the child bound: the
    /// left-over messages are at or below it.
    pub last_delivered: u64,
    /// When they must all be back.
    pub until: Instant,
    /// The left-over messages seen back so far (each counted once).
    pub back: HashSet<u64>,
}

/// What became of a delivery a worker had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ack,
    Nak(Option<Duration>),
    Term,
    /// Dropped undecided (its worker failed): nak'ed by the child.
    Abandoned,
    /// Decided after the child had given up on it (its hold ended): the
    /// child nak'ed it then, so it comes back whatever the decision was.
    Late,
}

impl Outcome {
    /// The outcome of a verdict on a delivery, given whether the child
    /// still had it (it has not, once it gave up on it). `None` for what
    /// is not a worker's last word on its delivery.
    pub fn of(verdict: &Verdict, still_held: bool) -> Option<Self> {
        let outcome = match verdict {
            Verdict::Decided(_) | Verdict::AckConfirmed(_) | Verdict::Abandoned(_)
                if !still_held =>
            {
                Self::Late
            }
            Verdict::Decided(Decision::Ack) | Verdict::AckConfirmed(_) => Self::Ack,
            Verdict::Decided(Decision::Nak(delay)) => Self::Nak(*delay),
            Verdict::Decided(Decision::Term(_)) => Self::Term,
            Verdict::Abandoned(_) => Self::Abandoned,
            _ => return None,
        };
        Some(outcome)
    }
}

/// One worker, as the router last saw it.
struct Worker {
    actor: Option<DerivedActorRef<Delivery>>,
    /// Deliveries handed to it (`jetstream_keyed_worker_deliveries_total`).
    handed: metrics::Counter,
    generation: u64,
    /// Deliveries at it and not yet settled, each of another key (at most
    /// the router's `depth`).
    held: usize,
}

/// A delivery at a worker.
struct AtWorker {
    worker: usize,
    generation: u64,
    key: Arc<str>,
    stream_sequence: u64,
}

#[derive(Default)]
struct Key {
    /// In stream order.
    waiting: VecDeque<Delivery>,
    /// One of its deliveries is at a worker.
    busy: bool,
    /// In the ready queue.
    ready: bool,
    blocked: Option<Block>,
}

impl Key {
    /// Blocks the key until `stream_sequence`, nak'ed with `delay`, is back;
    /// the key's waiting messages are nak'ed after it, in stream order.
    fn block(&mut self, stream_sequence: u64, delay: Duration, redelivery: Duration) {
        let now = Instant::now();
        let block = self.blocked.get_or_insert_with(|| Block {
            out: BTreeSet::new(),
            delay_ends: now,
            until: now,
        });
        block.out.insert(stream_sequence);
        block.delay_ends = block.delay_ends.max(now + delay);
        block.until = block.delay_ends + redelivery;
        for waiting in self.waiting.drain(..) {
            block.out.insert(waiting.stream_sequence());
            nak_until(waiting, block.delay_ends, now);
        }
    }
}

/// A key waiting for its nak'ed messages to come back.
struct Block {
    /// The key's nak'ed messages not yet back. Only a message at or below
    /// the first of them is taken; a later one is nak'ed and joins them.
    out: BTreeSet<u64>,
    /// When the nak's delay ends (a later message of the key is nak'ed
    /// with a delay that ends then too).
    delay_ends: Instant,
    /// When the block is given up (a message was terminated meanwhile,
    /// or went elsewhere).
    until: Instant,
}

/// The router; see the module docs.
pub(crate) struct Router {
    durable: Arc<str>,
    keyer: Keyer,
    table: Arc<WorkerTable>,
    workers: Vec<Worker>,
    /// How many deliveries a worker holds at most.
    depth: usize,
    /// Where the search for a worker starts (round robin among equals).
    next_worker: usize,
    keys: HashMap<Arc<str>, Key>,
    /// Keys with a message waiting and nothing at a worker, oldest first.
    ready: VecDeque<Arc<str>>,
    at_workers: HashMap<Token, AtWorker>,
    leftover: Option<Leftover>,
    redelivery: Duration,
    /// Messages handled, for the sweep.
    handled: u64,
}

/// How many messages the router handles between two sweeps of its keys.
const SWEEP_EVERY: u64 = 4096;

/// How many deliveries the workers hold in all, about: each holds the one
/// it works on and the next ones, of other keys, waiting in its mailbox.
/// More than one keeps a fast worker from waiting on the child between two
/// messages; a few at most keep a slow message from holding many others
/// back while another worker is idle. So one worker holds up to 32, and
/// 16 workers up to 2 each (see [`depth`]).
const AT_WORKERS: usize = 32;

/// How many deliveries each of `workers` holds at most.
fn depth(workers: usize) -> usize {
    (AT_WORKERS / workers.max(1)).max(2)
}

/// How long a message that came back ahead of an earlier nak'ed one of its
/// key waits before it comes again.
const AHEAD_PAUSE: Duration = Duration::from_millis(20);

impl Router {
    pub fn new(routing: Routing) -> Self {
        let Routing {
            durable,
            keyer,
            table,
            leftover,
            redelivery,
        } = routing;
        if let Some(leftover) = &leftover {
            tracing::info!(
                %durable,
                unacknowledged = leftover.remaining,
                "messages left unacknowledged by an earlier process: newer ones wait until they are back"
            );
        }
        let workers = (0..table.len())
            .map(|index| {
                let spawned = table.get(index);
                Worker {
                    handed: metrics::counter!(
                        crate::telemetry::names::KEYED_WORKER_DELIVERIES,
                        "durable" => durable.to_string(),
                        "worker" => index.to_string()
                    ),
                    generation: spawned.as_ref().map_or(0, |s| s.generation),
                    actor: spawned.map(|s| s.actor),
                    held: 0,
                }
            })
            .collect::<Vec<_>>();
        Self {
            durable,
            keyer,
            table,
            depth: depth(workers.len()),
            workers,
            next_worker: 0,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            at_workers: HashMap::new(),
            leftover,
            redelivery,
            handled: 0,
        }
    }

    /// A delivery the child forwards.
    pub fn arrived(&mut self, delivery: Delivery) {
        self.sweep();
        let now = Instant::now();
        let sequence = delivery.stream_sequence();
        if let Some(leftover) = &mut self.leftover {
            if now >= leftover.until {
                self.leftover = None;
            } else if sequence <= leftover.last_delivered {
                if delivery.delivered() > 1 && leftover.back.insert(sequence) {
                    leftover.remaining = leftover.remaining.saturating_sub(1);
                    if leftover.remaining == 0 {
                        tracing::info!(durable = %self.durable, "the messages an earlier process left are back");
                        self.leftover = None;
                    }
                }
            } else {
                // Newer than anything the earlier process had: after them,
                // and after its key's earlier ones that come back with it
                // (delayed naks end in no particular order).
                let until = leftover.until;
                let key = self.key_of(&delivery);
                let redelivery = self.redelivery;
                let entry = self.keys.entry(key).or_default();
                let block = entry.blocked.get_or_insert_with(|| Block {
                    out: BTreeSet::new(),
                    delay_ends: until,
                    until: until + redelivery,
                });
                block.out.insert(sequence);
                nak_until(delivery, until, now);
                return;
            }
        }
        let key = self.key_of(&delivery);
        let entry = self.keys.entry(key.clone()).or_default();
        if let Some(block) = &mut entry.blocked {
            match block.out.first() {
                _ if now >= block.until => entry.blocked = None,
                Some(&first) if sequence > first => {
                    // Ahead of a nak'ed message of its key: after it (not
                    // at once, so that it does not spin while it waits).
                    block.out.insert(sequence);
                    nak_until(delivery, block.delay_ends.max(now + AHEAD_PAUSE), now);
                    return;
                }
                _ => {
                    block.out.remove(&sequence);
                    if block.out.is_empty() {
                        entry.blocked = None;
                    }
                }
            }
        }
        // In stream order: a redelivered message goes before later ones.
        let at = entry
            .waiting
            .iter()
            .rposition(|d| d.stream_sequence() < sequence)
            .map_or(0, |i| i + 1);
        entry.waiting.insert(at, delivery);
        if !entry.busy && !entry.ready {
            entry.ready = true;
            self.ready.push_back(key);
        }
    }

    /// The delivery's key, shared with the map's own when the key is known
    /// (no allocation per message).
    fn key_of(&self, delivery: &Delivery) -> Arc<str> {
        let key = self.keyer.key(delivery);
        match self.keys.get_key_value(key.as_ref()) {
            Some((known, _)) => known.clone(),
            None => Arc::from(key.as_ref()),
        }
    }

    /// The child applied a worker's last word on a delivery (or gave up on
    /// it before).
    pub fn settled(&mut self, token: Token, outcome: Outcome) {
        let Some(AtWorker {
            worker,
            generation,
            key,
            stream_sequence,
        }) = self.at_workers.remove(&token)
        else {
            return;
        };
        if let Some(slot) = self.workers.get_mut(worker)
            && slot.generation == generation
        {
            slot.held = slot.held.saturating_sub(1);
        }
        let Some(entry) = self.keys.get_mut(&key) else {
            return;
        };
        entry.busy = false;
        let delay = match outcome {
            Outcome::Ack | Outcome::Term => None,
            Outcome::Nak(delay) => Some(delay.unwrap_or_default()),
            Outcome::Abandoned | Outcome::Late => Some(Duration::ZERO),
        };
        if let Some(delay) = delay {
            entry.block(stream_sequence, delay, self.redelivery);
        }
        // An idle key stays (the sweep forgets it), so that the next
        // message of it finds it without an allocation.
        if !entry.waiting.is_empty() && !entry.ready {
            entry.ready = true;
            self.ready.push_back(key);
        }
    }

    /// The pool spawned a worker again: takes it up.
    pub fn woken(&mut self) {
        for index in 0..self.workers.len() {
            self.refresh(index);
        }
    }

    /// Hands the oldest waiting keys to workers with room.
    pub fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some(worker) = self.free_worker() else {
                return;
            };
            let Some(key) = self.ready.pop_front() else {
                return;
            };
            let Some(entry) = self.keys.get_mut(&key) else {
                continue;
            };
            entry.ready = false;
            // What waits of a blocked key is at or below its first nak'ed
            // message: it may go.
            if entry.busy {
                continue;
            }
            let Some(delivery) = entry.waiting.pop_front() else {
                continue;
            };
            if std::time::Instant::now() > delivery.deadline() {
                // It waited past the child's hold: the child nak'ed it, and
                // it comes back. The rest of the key waits for it.
                let sequence = delivery.stream_sequence();
                drop(delivery);
                entry.block(sequence, Duration::ZERO, self.redelivery);
                continue;
            }
            let slot = &mut self.workers[worker];
            let Some(actor) = &slot.actor else {
                entry.waiting.push_front(delivery);
                continue;
            };
            let token = delivery.token();
            let stream_sequence = delivery.stream_sequence();
            match actor.send_message(delivery) {
                Ok(()) => {
                    slot.held += 1;
                    slot.handed.increment(1);
                    entry.busy = true;
                    self.at_workers.insert(
                        token,
                        AtWorker {
                            worker,
                            generation: slot.generation,
                            key,
                            stream_sequence,
                        },
                    );
                }
                Err(err) => {
                    // The worker is stopping: its respawn takes over.
                    slot.actor = None;
                    if let MessagingErr::SendErr(delivery) = err {
                        entry.waiting.push_front(delivery);
                    }
                    if !entry.waiting.is_empty() {
                        entry.ready = true;
                        self.ready.push_front(key);
                    }
                    self.refresh(worker);
                }
            }
        }
    }

    /// Now and then, forgets idle keys (nothing waiting or at work, no
    /// block, or one given up because a nak'ed message never came back),
    /// so that many keys seen once do not stay in memory.
    fn sweep(&mut self) {
        self.handled += 1;
        if !self.handled.is_multiple_of(SWEEP_EVERY) {
            return;
        }
        let now = Instant::now();
        self.keys.retain(|_, key| {
            key.busy
                || !key.waiting.is_empty()
                || key.blocked.as_ref().is_some_and(|b| now < b.until)
        });
    }

    /// The running worker with the fewest deliveries in hand, if it has
    /// room for another; among equals, the next in turn.
    fn free_worker(&mut self) -> Option<usize> {
        let count = self.workers.len();
        for index in 0..count {
            if self.workers[index]
                .actor
                .as_ref()
                .is_some_and(|actor| !is_running(actor))
            {
                self.refresh(index);
            }
        }
        let found = (0..count)
            .map(|i| (self.next_worker + i) % count)
            .filter(|&i| self.workers[i].actor.is_some() && self.workers[i].held < self.depth)
            .min_by_key(|&i| self.workers[i].held)?;
        self.next_worker = (found + 1) % count;
        Some(found)
    }

    /// Takes up the pool's latest spawn of worker `index`, if it runs (a
    /// new spawn has nothing in hand yet).
    fn refresh(&mut self, index: usize) {
        let Some(slot) = self.workers.get_mut(index) else {
            return;
        };
        match self.table.get(index) {
            Some(spawned) if is_running(&spawned.actor) => {
                if spawned.generation != slot.generation {
                    slot.generation = spawned.generation;
                    slot.held = 0;
                }
                slot.actor = Some(spawned.actor);
            }
            _ => slot.actor = None,
        }
    }
}

fn is_running(worker: &DerivedActorRef<Delivery>) -> bool {
    crate::status::takes_messages(worker.get_status())
}

/// Nak's a delivery so that it comes back no earlier than `until`.
fn nak_until(delivery: Delivery, until: Instant, now: Instant) {
    if until > now {
        delivery.nak_after(until - now);
    } else {
        delivery.nak();
    }
}
