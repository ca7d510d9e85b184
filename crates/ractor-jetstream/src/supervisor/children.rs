//! The children's lifecycle: a child started, ended, is restarted or
//! retired, and a consumer removed.

use std::time::Duration;

use ractor::actor::messages::BoxedState;
use ractor::{ActorRef, RpcReplyPort};

use super::work::{self, Done, Start};
use super::{ChildState, RestartTicket, SupervisorMsg, SupervisorState};
use crate::consumer::{ConsumerMsg, ConsumerState, DrainReport};
use crate::error::{Error, UnavailableReason};
use crate::restart::RestartTracker;
use crate::spec::ConsumerSpec;

pub(super) struct Child {
    pub(super) spec: ConsumerSpec,
    pub(super) actor: Option<ActorRef<ConsumerMsg>>,
    pub(super) state: ChildState,
    pub(super) restarts: u64,
    pub(super) tracker: RestartTracker,
    pub(super) last_failure: Option<String>,
    /// Bumped on every end and every restart attempt, so that a stale
    /// restart (ticket or spawned child) is told from the current one.
    pub(super) generation: u64,
    /// A stop was asked for (remove or drain): do not restart.
    pub(super) retiring: bool,
    /// A `RemoveConsumer` is in progress.
    pub(super) removing: bool,
    /// A restart is spawning its child.
    pub(super) starting: bool,
    /// A `RemoveConsumer` that waits for that spawn, so that it drains the
    /// new child (and a delete cannot run before the new child binds).
    pub(super) pending_removal: Option<Removal>,
}

/// A `RemoveConsumer`'s request.
pub(super) struct Removal {
    pub(super) delete: bool,
    pub(super) drain: Duration,
    pub(super) reply: RpcReplyPort<Result<DrainReport, Error>>,
}

impl Child {
    pub(super) fn running(spec: ConsumerSpec, actor: ActorRef<ConsumerMsg>) -> Self {
        Self {
            spec,
            actor: Some(actor),
            state: ChildState::Running,
            restarts: 0,
            tracker: RestartTracker::default(),
            last_failure: None,
            generation: 0,
            retiring: false,
            removing: false,
            starting: false,
            pending_removal: None,
        }
    }
}

/// How a child ended, as far as restarting it goes.
#[derive(Debug)]
pub(super) enum End {
    /// Its work was done: it was drained and stopped itself.
    Normal,
    /// It failed, was killed, or was stopped from outside while working.
    Abnormal(String),
}

impl End {
    /// A terminated child's end, read from the final state ractor hands
    /// over. A killed child's state never says it finished.
    pub(super) fn of_terminated(last_state: Option<BoxedState>) -> Self {
        let finished = last_state
            .and_then(|mut state| state.take::<ConsumerState>().ok())
            .is_some_and(|state| state.finished());
        if finished {
            Self::Normal
        } else {
            Self::Abnormal("killed, or stopped from outside before its work was done".into())
        }
    }
}

impl SupervisorState {
    pub(super) fn child_started(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
        start: Start,
        result: Result<ActorRef<ConsumerMsg>, Error>,
    ) -> Result<(), Error> {
        self.starting = self.starting.saturating_sub(1);
        let ended = match &result {
            Ok(actor) => self.ended_early.remove(&actor.get_id()),
            Err(_) => None,
        };
        if self.starting == 0 {
            self.ended_early.clear();
        }
        let durable = spec.durable.clone();
        match start {
            Start::Add { reply, drains } => {
                self.adding.remove(&durable);
                let actor = match result {
                    Ok(actor) => actor,
                    Err(err) => {
                        let _ = reply.send(Err(err));
                        return Ok(());
                    }
                };
                let mut child = Child::running(spec, actor.clone());
                if drains != self.drains {
                    // The children were drained while this one started: it
                    // is retired with them.
                    child.retiring = true;
                    actor.stop(Some("drained while starting".into()));
                    let _ = reply.send(Err(Error::Unavailable {
                        durable: durable.clone(),
                        reason: UnavailableReason::Drained,
                    }));
                } else {
                    let _ = reply.send(Ok(actor));
                }
                self.children.insert(durable.clone(), child);
            }
            Start::Restart { generation } => {
                let current = self
                    .children
                    .get_mut(&durable)
                    .filter(|c| c.generation == generation && c.actor.is_none());
                let Some(child) = current else {
                    // Superseded while it started: not wanted.
                    if let Ok(actor) = result {
                        actor.stop(Some("superseded while starting".into()));
                    }
                    return Ok(());
                };
                child.starting = false;
                if child.retiring {
                    // Removed or drained while it started. The new child is
                    // booked, so that its end is, and then retired.
                    let actor = result.ok();
                    child.actor = actor.clone();
                    if actor.is_none() {
                        child.state = ChildState::Stopped;
                    }
                    match child.pending_removal.take() {
                        Some(removal) => {
                            self.start_removal(myself, durable.clone(), actor, removal)
                        }
                        None => {
                            if let Some(actor) = actor {
                                actor.stop(Some("drained while starting".into()));
                            }
                        }
                    }
                    return match ended {
                        Some(end) => self.child_ended(myself, &durable, end),
                        None => Ok(()),
                    };
                }
                match result {
                    Ok(actor) => {
                        child.actor = Some(actor);
                        child.state = ChildState::Running;
                        child.restarts += 1;
                    }
                    // Could not start (server unreachable, consumer
                    // conflict...): counts as another failure.
                    Err(err) => {
                        let end = End::Abnormal(format!(
                            "restart failed: {}",
                            crate::error::one_line_chain(&err)
                        ));
                        return self.child_ended(myself, &durable, end);
                    }
                }
            }
        }
        match ended {
            Some(end) => self.child_ended(myself, &durable, end),
            None => Ok(()),
        }
    }

    /// A child ended. Decides whether and when it is restarted; fails the
    /// supervisor when the restart intensity is exceeded.
    pub(super) fn child_ended(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: &str,
        end: End,
    ) -> Result<(), Error> {
        let policy = self.policy.clone();
        let Some(child) = self.children.get_mut(durable) else {
            return Ok(());
        };
        child.actor = None;
        child.generation += 1;
        if child.retiring {
            // Its supervisor asked for this end.
            child.state = ChildState::Stopped;
            return Ok(());
        }
        let failed = match end {
            End::Normal => false,
            End::Abnormal(failure) => {
                tracing::warn!(%durable, %failure, "consumer child failed");
                child.last_failure = Some(failure);
                true
            }
        };
        if !child.spec.child.restart.restarts_after(failed) {
            child.state = ChildState::Stopped;
            return Ok(());
        }
        let Some(delay) = child.tracker.on_failure(&policy, std::time::Instant::now()) else {
            child.state = ChildState::Stopped;
            crate::telemetry::gave_up(durable);
            return Err(Error::GaveUp {
                durable: durable.to_string(),
                restarts: u64::from(policy.max_restarts),
                within: policy.within,
                last_failure: child.last_failure.clone(),
            });
        };
        child.state = ChildState::Restarting;
        let ticket = RestartTicket {
            durable: durable.to_string(),
            generation: child.generation,
        };
        tracing::info!(%durable, ?delay, "restarting consumer child");
        crate::telemetry::restarted(&child.spec.stream, durable, child.spec.mode());
        if delay.is_zero() {
            let _ = myself.cast(SupervisorMsg::restart_due(ticket));
        } else {
            myself.send_after(delay, move || SupervisorMsg::restart_due(ticket));
        }
        Ok(())
    }

    pub(super) fn restart_due(&mut self, myself: &ActorRef<SupervisorMsg>, ticket: RestartTicket) {
        let Some(child) = self.children.get_mut(&ticket.durable) else {
            return;
        };
        if child.generation != ticket.generation || child.actor.is_some() || child.retiring {
            return;
        }
        // A new generation for the attempt: a second ticket for the same
        // end cannot start a second child.
        child.generation += 1;
        child.starting = true;
        let start = Start::Restart {
            generation: child.generation,
        };
        let spec = child.spec.clone();
        self.start_child(myself, spec, start);
    }

    pub(super) fn remove_consumer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: String,
        delete: bool,
        drain: Duration,
        reply: RpcReplyPort<Result<DrainReport, Error>>,
    ) {
        let Some(child) = self.children.get_mut(&durable) else {
            let _ = reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        if child.removing {
            let _ = reply.send(Err(Error::Unavailable {
                durable,
                reason: UnavailableReason::BeingRemoved,
            }));
            return;
        }
        child.retiring = true;
        child.removing = true;
        let removal = Removal {
            delete,
            drain,
            reply,
        };
        if child.starting {
            child.pending_removal = Some(removal);
            return;
        }
        let actor = child.actor.clone();
        self.start_removal(myself, durable, actor, removal);
    }

    /// Retires a child in a task, deletes its consumer when asked, and
    /// reports back with [`Done::Removed`].
    pub(super) fn start_removal(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        durable: String,
        actor: Option<ActorRef<ConsumerMsg>>,
        removal: Removal,
    ) {
        let Some(stream) = self.children.get(&durable).map(|c| c.spec.stream.clone()) else {
            let _ = removal.reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        let Removal {
            delete,
            drain,
            reply,
        } = removal;
        let connection = self.connection.clone();
        let myself = myself.clone();
        self.spawn_task(async move {
            let report = match &actor {
                Some(actor) => work::retire(actor, drain).await,
                None => DrainReport::default(),
            };
            let result = if delete {
                work::delete_consumer(&connection, &stream, &durable)
                    .await
                    .map(|()| report)
            } else {
                Ok(report)
            };
            let done = Done::Removed {
                durable,
                result,
                reply,
            };
            let _ = myself.cast(SupervisorMsg::done(done));
        });
    }

    /// Marks the supervisor drained and every child retiring; returns the
    /// running children, to be retired.
    pub(super) fn retire_all(&mut self) -> Vec<ActorRef<ConsumerMsg>> {
        self.drained = true;
        self.drains += 1;
        let mut actors = Vec::new();
        for child in self.children.values_mut() {
            child.retiring = true;
            actors.extend(child.actor.clone());
        }
        actors
    }
}
