//! The requests the supervisor serves itself: ensuring streams, adding
//! consumers, routing fetches, reporting status.

use std::time::Duration;

use ractor::{ActorCell, ActorRef, MessagingErr, RpcReplyPort};

use super::children::Child;
use super::work::{Done, Launch, Start};
use super::{ChildState, ChildStatus, SupervisorMsg, SupervisorState, SupervisorStatus};
use crate::consumer::{ConsumerMsg, FetchOutcome, Internal};
use crate::ensure::{StreamAction, ensure_stream};
use crate::error::{Error, UnavailableReason, ValidationErrors};
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec, check_filters_covered};

impl SupervisorState {
    pub(super) fn durable_of(&self, cell: &ActorCell) -> Option<String> {
        let id = cell.get_id();
        self.children
            .iter()
            .find(|(_, c)| c.actor.as_ref().is_some_and(|a| a.get_id() == id))
            .map(|(durable, _)| durable.clone())
    }

    pub(super) fn child_name(&self, spec: &ConsumerSpec) -> String {
        format!("{}{}/{}", self.name_prefix, spec.stream, spec.durable)
    }

    /// Starts a task that owns its work; finished tasks are reaped first, so
    /// that the set only holds what is in progress.
    pub(super) fn spawn_task(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        while self.tasks.try_join_next().is_some() {}
        self.tasks.spawn(task);
    }

    pub(super) fn ensure_stream(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: StreamSpec,
        reply: RpcReplyPort<Result<StreamAction, Error>>,
    ) {
        let connection = self.connection.clone();
        let myself = myself.clone();
        self.spawn_task(async move {
            let result = ensure_stream(&connection, &spec).await;
            let done = Done::StreamEnsured {
                spec,
                result,
                reply,
            };
            let _ = myself.cast(SupervisorMsg::done(done));
        });
    }

    /// Whether `spec` may be added: valid, covered by its stream's
    /// subjects, not a durable managed (or being added) already, and with a
    /// registered target.
    pub(super) fn check_new(&self, spec: &ConsumerSpec) -> Result<(), Error> {
        let mut errors = ValidationErrors::new();
        spec.validate_at("", &mut errors);
        if let Some(stream) = self.streams.get(&spec.stream) {
            check_filters_covered("", spec, stream, &mut errors);
        }
        errors.into_result()?;
        if self.children.contains_key(&spec.durable) || self.adding.contains(&spec.durable) {
            return Err(Error::DuplicateConsumer {
                durable: spec.durable.clone(),
            });
        }
        if !self.targets.contains_key(&spec.target) {
            return Err(Error::UnknownTarget {
                durable: spec.durable.clone(),
                target: spec.target.clone(),
            });
        }
        Ok(())
    }

    pub(super) fn launch(&self, myself: &ActorRef<SupervisorMsg>, spec: &ConsumerSpec) -> Launch {
        Launch {
            connection: self.connection.clone(),
            spec: spec.clone(),
            target: self.targets.get(&spec.target).cloned(),
            name: self.child_name(spec),
            supervisor: myself.get_cell(),
        }
    }

    pub(super) fn add_consumer(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
    ) {
        if let Err(err) = self.check_new(&spec) {
            let _ = reply.send(Err(err));
            return;
        }
        self.adding.insert(spec.durable.clone());
        let drains = self.drains;
        self.start_child(myself, spec, Start::Add { reply, drains });
    }

    /// Spawns a child in a task, which reports back with
    /// [`Done::ChildStarted`]. An added consumer is bound first.
    pub(super) fn start_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        spec: ConsumerSpec,
        start: Start,
    ) {
        let launch = self.launch(myself, &spec);
        let bind = matches!(start, Start::Add { .. });
        let myself = myself.clone();
        self.starting += 1;
        self.spawn_task(async move {
            let result = launch.spawn(bind).await;
            let done = Done::ChildStarted {
                spec,
                start,
                result,
            };
            let _ = myself.cast(SupervisorMsg::done(done));
        });
    }

    /// Books what a task did.
    pub(super) fn done(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        done: Done,
    ) -> Result<(), Error> {
        match done {
            Done::StreamEnsured {
                spec,
                result,
                reply,
            } => {
                if result.is_ok() {
                    self.streams.insert(spec.name.clone(), spec);
                }
                let _ = reply.send(result);
            }
            Done::ChildStarted {
                spec,
                start,
                result,
            } => return self.child_started(myself, spec, start, result),
            Done::Removed {
                durable,
                result,
                reply,
            } => {
                if let Some(Child {
                    actor: Some(actor), ..
                }) = self.children.remove(&durable)
                {
                    // Out of the map: its end is not acted on.
                    actor.stop(Some("removed".into()));
                }
                let _ = reply.send(result);
            }
        }
        Ok(())
    }

    pub(super) fn route_fetch(
        &self,
        durable: String,
        batch: u64,
        expires: Option<Duration>,
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
    ) {
        let Some(child) = self.children.get(&durable) else {
            let _ = reply.send(Err(Error::UnknownConsumer { durable }));
            return;
        };
        if child.spec.mode() != ConsumerMode::Pull {
            let _ = reply.send(Err(Error::WrongMode {
                durable,
                expected: ConsumerMode::Pull,
                actual: child.spec.mode(),
            }));
            return;
        }
        let unavailable = |reply: RpcReplyPort<Result<FetchOutcome, Error>>,
                           reason: UnavailableReason| {
            let _ = reply.send(Err(Error::Unavailable {
                durable: durable.clone(),
                reason,
            }));
        };
        let Some(actor) = &child.actor else {
            let reason = match child.state {
                ChildState::Restarting => UnavailableReason::Restarting {
                    last_failure: child.last_failure.clone(),
                },
                _ => UnavailableReason::Stopped,
            };
            unavailable(reply, reason);
            return;
        };
        // Forward with the caller's reply port: the child answers directly,
        // and a child that stops before it reads the fetch answers it
        // `FetchInterrupted` (the forwarded fetch's drop guard), so the
        // caller never sees a dropped reply port.
        let forwarded = Internal::fetch(&durable, batch, expires, reply);
        if let Err(MessagingErr::SendErr(ConsumerMsg::Internal(message))) =
            actor.cast(ConsumerMsg::Internal(forwarded))
            && let Some(reply) = message.into_fetch_reply()
        {
            unavailable(reply, UnavailableReason::Stopped);
        }
    }

    /// The running children, by durable.
    pub(super) fn running_children(
        &self,
    ) -> std::collections::HashMap<String, ractor::ActorRef<crate::consumer::ConsumerMsg>> {
        self.children
            .iter()
            .filter_map(|(durable, c)| Some((durable.clone(), c.actor.clone()?)))
            .collect()
    }

    pub(super) fn status(&self) -> SupervisorStatus {
        let mut children: Vec<ChildStatus> = self
            .children
            .iter()
            .map(|(durable, c)| ChildStatus {
                stream: c.spec.stream.clone(),
                durable: durable.clone(),
                mode: c.spec.mode(),
                state: c.state.clone(),
                restarts: c.restarts,
                last_failure: c.last_failure.clone(),
                server: None,
            })
            .collect();
        children.sort_by(|a, b| a.durable.cmp(&b.durable));
        SupervisorStatus {
            children,
            drained: self.drained,
        }
    }
}
