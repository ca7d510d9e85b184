//! The dispatcher: the consumer child's target when it has workers. It
//! keeps a queue per key, hands the oldest waiting key to an idle worker,
//! and sees each decision on its way back; see the [module docs](super).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, MessagingErr,
    SupervisionEvent,
};
use tokio::time::Instant;

use super::{Keyer, Workers};
use crate::delivery::{Delivery, Outcome};

/// The dispatcher actor; see the module docs.
pub(crate) struct Dispatcher;

/// What the dispatcher receives: deliveries from the child, and the
/// outcome of each delivery it handed to a worker. A delivery is not boxed:
/// it is the message of the hot path, one allocation each would cost more
/// than the larger enum.
#[allow(clippy::large_enum_variant)]
pub(crate) enum DispatchMsg {
    Delivery(Delivery),
    Settled(Settled),
}

impl From<Delivery> for DispatchMsg {
    fn from(delivery: Delivery) -> Self {
        Self::Delivery(delivery)
    }
}

impl TryFrom<DispatchMsg> for Delivery {
    type Error = DispatchMsg;
    fn try_from(msg: DispatchMsg) -> Result<Self, DispatchMsg> {
        match msg {
            DispatchMsg::Delivery(delivery) => Ok(delivery),
            other => Err(other),
        }
    }
}

/// A delivery a worker settled.
pub(crate) struct Settled {
    worker: usize,
    generation: u64,
    key: Arc<str>,
    stream_sequence: u64,
    outcome: Outcome,
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

pub(crate) struct DispatchArgs {
    pub durable: Arc<str>,
    pub count: usize,
    pub workers: Workers,
    pub keyer: Keyer,
    pub leftover: Option<Leftover>,
    /// How long after its delay a nak'ed message must be back.
    pub redelivery: Duration,
}

struct Worker {
    actor: Option<DerivedActorRef<Delivery>>,
    id: Option<ActorId>,
    /// Bumped at each respawn: an outcome from an earlier one is not this
    /// one's.
    generation: u64,
    busy: bool,
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

pub(crate) struct DispatchState {
    myself: ActorRef<DispatchMsg>,
    durable: Arc<str>,
    spawner: Workers,
    keyer: Keyer,
    workers: Vec<Worker>,
    /// Where the search for an idle worker starts (round robin).
    next_worker: usize,
    keys: HashMap<Arc<str>, Key>,
    /// Keys with a message waiting and nothing at a worker, oldest first.
    ready: VecDeque<Arc<str>>,
    leftover: Option<Leftover>,
    redelivery: Duration,
    /// Messages handled, for the sweep.
    handled: u64,
}

/// How many messages the dispatcher handles between two sweeps of its
/// keys.
const SWEEP_EVERY: u64 = 4096;

impl Actor for Dispatcher {
    type Msg = DispatchMsg;
    type State = DispatchState;
    type Arguments = DispatchArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DispatchMsg>,
        args: DispatchArgs,
    ) -> Result<DispatchState, ActorProcessingErr> {
        let mut workers = Vec::with_capacity(args.count);
        for index in 0..args.count {
            let actor = args.workers.spawn(index, myself.get_cell()).await?;
            workers.push(Worker {
                id: Some(actor.get_id()),
                actor: Some(actor),
                generation: 0,
                busy: false,
            });
        }
        if let Some(leftover) = &args.leftover {
            tracing::info!(
                durable = %args.durable,
                unacknowledged = leftover.remaining,
                "messages left unacknowledged by an earlier process: newer ones wait until they are back"
            );
        }
        Ok(DispatchState {
            myself,
            durable: args.durable,
            spawner: args.workers,
            keyer: args.keyer,
            workers,
            next_worker: 0,
            keys: HashMap::new(),
            ready: VecDeque::new(),
            leftover: args.leftover,
            redelivery: args.redelivery,
            handled: 0,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DispatchMsg>,
        state: &mut DispatchState,
    ) -> Result<(), ActorProcessingErr> {
        // What waits here is dropped, and so nak'ed by the child.
        state.keys.clear();
        myself.stop_children(Some("the consumer's dispatcher stopped".into()));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<DispatchMsg>,
        message: DispatchMsg,
        state: &mut DispatchState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            DispatchMsg::Delivery(delivery) => state.arrived(delivery),
            DispatchMsg::Settled(settled) => state.settled(settled),
        }
        state.dispatch();
        state.sweep();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<DispatchMsg>,
        event: SupervisionEvent,
        state: &mut DispatchState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        state.respawn(&cell, &why, myself.get_cell()).await?;
        state.dispatch();
        Ok(())
    }
}

impl DispatchState {
    /// A delivery from the child.
    fn arrived(&mut self, delivery: Delivery) {
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

    /// A worker settled a delivery of `key`.
    fn settled(&mut self, settled: Settled) {
        let Settled {
            worker,
            generation,
            key,
            stream_sequence,
            outcome,
        } = settled;
        if let Some(slot) = self.workers.get_mut(worker)
            && slot.generation == generation
        {
            slot.busy = false;
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

    /// Hands the oldest waiting keys to idle workers.
    fn dispatch(&mut self) {
        while !self.ready.is_empty() {
            let Some(worker) = self.idle_worker() else {
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
            let Some(mut delivery) = entry.waiting.pop_front() else {
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
            let Some(actor) = slot.actor.clone() else {
                entry.waiting.push_front(delivery);
                continue;
            };
            let myself = self.myself.clone();
            let settled_key = key.clone();
            let generation = slot.generation;
            let stream_sequence = delivery.stream_sequence();
            delivery.observe(Box::new(move |outcome| {
                let _ = myself.cast(DispatchMsg::Settled(Settled {
                    worker,
                    generation,
                    key: settled_key,
                    stream_sequence,
                    outcome,
                }));
            }));
            match actor.send_message(delivery) {
                Ok(()) => {
                    slot.busy = true;
                    entry.busy = true;
                }
                Err(err) => {
                    // The worker is stopping; its respawn takes over.
                    slot.actor = None;
                    if let MessagingErr::SendErr(mut delivery) = err {
                        delivery.unobserve();
                        entry.waiting.push_front(delivery);
                    }
                    if !entry.waiting.is_empty() {
                        entry.ready = true;
                        self.ready.push_front(key);
                    }
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

    fn idle_worker(&mut self) -> Option<usize> {
        let count = self.workers.len();
        let found = (0..count)
            .map(|i| (self.next_worker + i) % count)
            .find(|&i| !self.workers[i].busy && self.workers[i].actor.is_some())?;
        self.next_worker = (found + 1) % count;
        Some(found)
    }

    /// A worker stopped or failed: spawns it again. What it held was
    /// dropped (nak'ed by the child); its outcome reaches `settled`.
    async fn respawn(
        &mut self,
        cell: &ActorCell,
        why: &str,
        parent: ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let id = cell.get_id();
        let Some(index) = self.workers.iter().position(|w| w.id == Some(id)) else {
            return Ok(());
        };
        tracing::warn!(durable = %self.durable, worker = index, reason = %why, "keyed worker stopped; spawning it again");
        let actor = self.spawner.spawn(index, parent).await?;
        let slot = &mut self.workers[index];
        slot.id = Some(actor.get_id());
        slot.actor = Some(actor);
        slot.generation += 1;
        slot.busy = false;
        Ok(())
    }
}

/// How long a message that came back ahead of an earlier nak'ed one of its
/// key waits before it comes again.
const AHEAD_PAUSE: Duration = Duration::from_millis(20);

/// Nak's a delivery so that it comes back no earlier than `until`.
fn nak_until(delivery: Delivery, until: Instant, now: Instant) {
    if until > now {
        delivery.nak_after(until - now);
    } else {
        delivery.nak();
    }
}
