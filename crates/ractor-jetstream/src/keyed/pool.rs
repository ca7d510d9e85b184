//! The workers' supervisor: spawns the N workers of a keyed consumer,
//! spawns one again when it fails, and keeps the table the router reads
//! them from; see the [module docs](super).

use std::sync::{Arc, Mutex, PoisonError};

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, DerivedActorRef, SupervisionEvent,
};

use super::Workers;
use crate::delivery::{Delivery, ORPHAN, SettleSender, Settlement, Verdict};

/// The pool actor. It stands as the consumer child's target (so that the
/// child sees a running target while the pool runs), but deliveries reach
/// the workers through the router, never through its mailbox; one that
/// arrives there anyway is dropped, and so nak'ed.
pub(crate) struct Pool;

pub(crate) struct PoolArgs {
    pub durable: Arc<str>,
    pub count: usize,
    pub workers: Workers,
    pub table: Arc<WorkerTable>,
}

pub(crate) struct PoolState {
    durable: Arc<str>,
    spawner: Workers,
    table: Arc<WorkerTable>,
    ids: Vec<ActorId>,
}

/// One worker as spawned: the actor, and which spawn of its index it is.
#[derive(Clone)]
pub(crate) struct Spawned {
    pub actor: DerivedActorRef<Delivery>,
    /// Bumped at each respawn: an outcome from an earlier spawn is not
    /// this one's.
    pub generation: u64,
}

/// The workers as the pool last spawned them, shared with the router, and
/// how to wake the router when one was spawned again.
#[derive(Default)]
pub(crate) struct WorkerTable {
    workers: Mutex<Vec<Option<Spawned>>>,
    wake: Mutex<Option<SettleSender>>,
}

impl WorkerTable {
    /// The worker at `index`, as last spawned.
    pub fn get(&self, index: usize) -> Option<Spawned> {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.get(index).cloned().flatten()
    }

    /// How many workers there are.
    pub fn len(&self) -> usize {
        self.workers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Where the router wants to be woken (its child's settlement channel).
    pub fn wake_with(&self, settle: SettleSender) {
        *self.wake.lock().unwrap_or_else(PoisonError::into_inner) = Some(settle);
    }

    fn put(&self, index: usize, actor: DerivedActorRef<Delivery>) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if workers.len() <= index {
            workers.resize(index + 1, None);
        }
        let generation = workers[index].as_ref().map_or(0, |w| w.generation + 1);
        workers[index] = Some(Spawned { actor, generation });
    }

    fn wake(&self) {
        if let Some(settle) = &*self.wake.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = settle.send(Settlement {
                token: ORPHAN,
                stream_sequence: 0,
                verdict: Verdict::Wake,
            });
        }
    }
}

impl Actor for Pool {
    type Msg = Delivery;
    type State = PoolState;
    type Arguments = PoolArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Delivery>,
        args: PoolArgs,
    ) -> Result<PoolState, ActorProcessingErr> {
        let mut ids = Vec::with_capacity(args.count);
        for index in 0..args.count {
            let actor = args.workers.spawn(index, myself.get_cell()).await?;
            ids.push(actor.get_id());
            args.table.put(index, actor);
        }
        Ok(PoolState {
            durable: args.durable,
            spawner: args.workers,
            table: args.table,
            ids,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Delivery>,
        _state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children(Some("the consumer's worker pool stopped".into()));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Delivery>,
        delivery: Delivery,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        tracing::debug!(durable = %state.durable, stream_sequence = delivery.stream_sequence(), "a delivery reached the worker pool itself; dropped (nak'ed)");
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Delivery>,
        event: SupervisionEvent,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        state.respawn(&cell, &why, myself.get_cell()).await
    }
}

impl PoolState {
    /// A worker stopped or failed: spawns it again and wakes the router.
    /// What it held was dropped (nak'ed by the child, and its key blocked
    /// by the router).
    async fn respawn(
        &mut self,
        cell: &ActorCell,
        why: &str,
        parent: ActorCell,
    ) -> Result<(), ActorProcessingErr> {
        let id = cell.get_id();
        let Some(index) = self.ids.iter().position(|known| *known == id) else {
            return Ok(());
        };
        tracing::warn!(durable = %self.durable, worker = index, reason = %why, "keyed worker stopped; spawning it again");
        let actor = self.spawner.spawn(index, parent).await?;
        self.ids[index] = actor.get_id();
        self.table.put(index, actor);
        self.table.wake();
        Ok(())
    }
}
