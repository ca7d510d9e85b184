//! The supervisor's slow work, done in tasks that report back by message.
//!
//! Making a stream exist, binding a durable consumer, spawning a child
//! (whose `pre_start` binds it on the server), draining children and
//! deleting a consumer each take one JetStream round trip or more, a drain
//! up to its whole timeout. Were they awaited in the supervisor's handlers,
//! every routed [`Fetch`](super::SupervisorMsg::Fetch), every `Status` and
//! every child's end would wait behind them. So the supervisor starts each
//! in a task it owns (a [`JoinSet`](tokio::task::JoinSet) in its state,
//! aborted with it), and the task reports back with
//! a message to the supervisor; the handlers only do
//! bookkeeping.

use std::time::Duration;

use futures::future::join_all;
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};

use crate::connection::Connection;
use crate::consumer::{ConsumerArgs, ConsumerMsg, DrainReport};
use crate::ensure::{StreamAction, api_request, ensure_consumer};
use crate::error::Error;
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec};
use crate::target::Target;
use crate::{PullConsumer, PushConsumer};

/// How long past its drain timeout a child may take to answer the drain, and
/// then to stop.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// What a task did.
// One report per slow operation, and ractor boxes each message anyway: the
// variants' sizes cost nothing worth a box of their own.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Done {
    /// A stream was made to exist (or could not be).
    StreamEnsured {
        spec: StreamSpec,
        result: Result<StreamAction, Error>,
        reply: RpcReplyPort<Result<StreamAction, Error>>,
    },
    /// A child was spawned (or could not be).
    ChildStarted {
        spec: ConsumerSpec,
        start: Start,
        result: Result<ActorRef<ConsumerMsg>, Error>,
    },
    /// A consumer's child was drained and stopped, and the consumer deleted
    /// on the server when that was asked for.
    Removed {
        durable: String,
        result: Result<DrainReport, Error>,
        reply: RpcReplyPort<Result<DrainReport, Error>>,
    },
}

/// Why a child is being started.
#[derive(Debug)]
pub(super) enum Start {
    /// `AddConsumer`: the caller waits for the child. `drains` is the
    /// supervisor's drain count when the add began.
    Add {
        reply: RpcReplyPort<Result<ActorRef<ConsumerMsg>, Error>>,
        drains: u64,
    },
    /// A restart, valid only while the child is still at this generation.
    Restart { generation: u64 },
}

/// Everything spawning one child takes, owned, so that a task can do it.
pub(super) struct Launch {
    pub connection: Connection,
    pub spec: ConsumerSpec,
    pub target: Option<Target>,
    pub name: String,
    pub supervisor: ActorCell,
}

impl Launch {
    /// Spawns the child, linked to the supervisor. With `bind`, the durable
    /// consumer is created or bound first, so that a conflict comes back as
    /// a typed error (the child binds again by name when it starts).
    pub async fn spawn(self, bind: bool) -> Result<ActorRef<ConsumerMsg>, Error> {
        let Launch {
            connection,
            spec,
            target,
            name,
            supervisor,
        } = self;
        let target = target.ok_or_else(|| Error::UnknownTarget {
            durable: spec.durable.clone(),
            target: spec.target.clone(),
        })?;
        crate::consumer::check_keyed_target(&spec, &target)?;
        if bind {
            ensure_consumer(&connection, &spec).await?;
        }
        let mode = spec.mode();
        let args = ConsumerArgs {
            connection,
            spec,
            target,
        };
        // `spawn_linked` awaits the child's `pre_start`, which binds it.
        let (actor, _) = match mode {
            ConsumerMode::Pull => {
                Actor::spawn_linked(Some(name), PullConsumer, args, supervisor).await?
            }
            ConsumerMode::Push => {
                Actor::spawn_linked(Some(name), PushConsumer, args, supervisor).await?
            }
        };
        Ok(actor)
    }
}

/// Drains one child for up to `timeout` and waits for it to stop. A child
/// that does not answer the drain in time is stopped.
pub(super) async fn retire(actor: &ActorRef<ConsumerMsg>, timeout: Duration) -> DrainReport {
    let answer = actor
        .call(
            |reply| ConsumerMsg::Drain { timeout, reply },
            Some(timeout + STOP_MARGIN),
        )
        .await;
    let report = match answer {
        Ok(ractor::rpc::CallResult::Success(report)) => report,
        _ => {
            actor.stop(Some("retired".into()));
            DrainReport::default()
        }
    };
    // A drained child stops by itself once its worker is done.
    if actor.wait(Some(STOP_MARGIN)).await.is_err() {
        actor.stop(Some("retired".into()));
    }
    report
}

/// [`retire`] for several children at once; the reports added up.
pub(super) async fn retire_all(
    actors: Vec<ActorRef<ConsumerMsg>>,
    timeout: Duration,
) -> DrainReport {
    let reports = join_all(actors.iter().map(|actor| retire(actor, timeout))).await;
    let mut total = DrainReport::default();
    for report in reports {
        total.merge(report);
    }
    total
}

/// Deletes a durable consumer on the server.
pub(super) async fn delete_consumer(
    connection: &Connection,
    stream: &str,
    durable: &str,
) -> Result<(), Error> {
    let op = format!("delete consumer {stream}/{durable}");
    let subject = format!("CONSUMER.DELETE.{stream}.{durable}");
    let _: serde_json::Value =
        api_request(connection, &op, subject, &serde_json::json!({})).await?;
    Ok(())
}
