//! Targets named the way ractor names actors: a target killed under its own
//! supervisor is found again under its registered name (or in its process
//! group), and the deliveries go on to its successor with nothing lost and
//! no `SetTarget`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_jetstream::{
    ConsumerSpec, StreamSpec, SupervisorArgs, SupervisorHandle, Target, Topology,
};

/// The application's own supervisor of the target: it restarts the target
/// under the same registered name (and in the same process group) whenever
/// it ends.
struct TargetSupervisor;

struct TargetSupervisorArgs {
    name: String,
    group: String,
    record: Record,
    incarnations: Arc<AtomicUsize>,
}

impl TargetSupervisor {
    async fn start_target(
        myself: &ActorRef<()>,
        args: &TargetSupervisorArgs,
    ) -> Result<(), ActorProcessingErr> {
        // The old target's name is released as it stops; retry briefly.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let target = loop {
            let spawned = Actor::spawn_linked(
                Some(args.name.clone()),
                RecordingTarget,
                TargetArgs {
                    decide: Arc::new(|_| Action::Ack),
                    record: args.record.clone(),
                    batch_ack: None,
                },
                myself.get_cell(),
            )
            .await;
            match spawned {
                Ok((target, _)) => break target,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(%err, "target name not released yet");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(err) => return Err(err.into()),
            }
        };
        ractor::pg::join(args.group.clone(), vec![target.get_cell()]);
        args.incarnations.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl Actor for TargetSupervisor {
    type Msg = ();
    type State = TargetSupervisorArgs;
    type Arguments = TargetSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        args: TargetSupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Self::start_target(&myself, &args).await?;
        Ok(args)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorTerminated(..) | SupervisionEvent::ActorFailed(..) = event {
            Self::start_target(&myself, state).await?;
        }
        Ok(())
    }
}

struct Scenario {
    record: Record,
    incarnations: Arc<AtomicUsize>,
    name: String,
    _target_supervisor: ActorRef<()>,
}

async fn scenario(name: &str) -> Scenario {
    let record = Record::default();
    let incarnations = Arc::new(AtomicUsize::new(0));
    let (target_supervisor, _) = Actor::spawn(
        None,
        TargetSupervisor,
        TargetSupervisorArgs {
            name: name.to_string(),
            group: format!("{name}-group"),
            record: record.clone(),
            incarnations: incarnations.clone(),
        },
    )
    .await
    .expect("target supervisor");
    Scenario {
        record,
        incarnations,
        name: name.to_string(),
        _target_supervisor: target_supervisor,
    }
}

impl Scenario {
    fn target(&self) -> ActorRef<TargetMsg> {
        ActorRef::where_is(self.name.clone()).expect("a registered target")
    }

    /// Kills the target and waits for its successor under the same name.
    async fn kill_target(&self) {
        let old = self.target();
        old.kill();
        let old_id = old.get_id();
        wait_until("the target's successor is registered", PATIENCE, || {
            ActorRef::<TargetMsg>::where_is(self.name.clone()).is_some_and(|t| t.get_id() != old_id)
        })
        .await;
        assert_eq!(self.incarnations.load(Ordering::SeqCst), 2);
    }
}

async fn pull_goes_on_to_the_successor(target: impl FnOnce(&Scenario) -> Target, label: &str) {
    let env = env().await;
    let stream = format!("NT{label}");
    let subject = format!("nt{label}");
    let scenario = scenario(&format!("pull-target-{label}")).await;
    let topology = Topology::new()
        .stream(StreamSpec::new(&stream, [format!("{subject}.>")]))
        .consumer(ConsumerSpec::pull(&stream, "worker", "t"));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target(&scenario));
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let pull = supervisor.pull("worker").await.expect("pull handle");
    let published = publish_n(&env.js, &format!("{subject}.x"), 20).await;

    let first = pull.fetch(8, None).await.expect("first fetch");
    assert_eq!(first.acked, 8, "{first:?}");
    scenario.kill_target().await;
    let mut acked = first.acked;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while acked < 20 {
        let outcome = pull
            .fetch(8, Some(Duration::from_millis(300)))
            .await
            .expect("a fetch after the target's restart needs no SetTarget");
        acked += outcome.acked;
        assert!(tokio::time::Instant::now() < deadline, "stuck at {acked}");
    }
    assert_eq!(
        scenario.record.sequences(),
        published,
        "each once, in order"
    );
    // The server takes acks in from a queue of its own, so a consumer info
    // asked right after them on the same connection may not show them yet.
    wait_for_consumer(&env.js, &stream, "worker", "all 20 acked", |info| {
        (
            info.num_ack_pending,
            info.num_pending,
            info.ack_floor.stream_sequence,
        ) == (0, 0, 20)
    })
    .await;
    let status = supervisor.status().await.expect("status");
    assert_eq!(status.child("worker").map(|c| c.restarts), Some(0));
}

#[tokio::test]
async fn a_pull_consumer_follows_a_registered_target_through_its_restart() {
    pull_goes_on_to_the_successor(|s| Target::registered::<TargetMsg>(s.name.clone()), "reg").await;
}

#[tokio::test]
async fn a_pull_consumer_follows_a_process_group_target_through_its_restart() {
    pull_goes_on_to_the_successor(
        |s| Target::group::<TargetMsg>(format!("{}-group", s.name)),
        "pg",
    )
    .await;
}

#[tokio::test]
async fn a_push_consumer_follows_a_registered_target_through_its_restart() {
    let env = env().await;
    let scenario = scenario("push-target").await;
    let topology = Topology::new()
        .stream(StreamSpec::new("NTPUSH", ["ntpush.>"]))
        .consumer(ConsumerSpec::push("NTPUSH", "worker", "t"));
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", Target::registered::<TargetMsg>("push-target"));
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let first = publish_n(&env.js, "ntpush.x", 50).await;
    wait_until("the first target acked the first batch", PATIENCE, || {
        scenario.record.distinct().len() == 50
    })
    .await;
    scenario.kill_target().await;
    let second = publish_n(&env.js, "ntpush.x", 50).await;
    wait_for_consumer(&env.js, "NTPUSH", "worker", "every message acked", |info| {
        info.ack_floor.stream_sequence == 100 && info.num_ack_pending == 0
    })
    .await;
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(
        scenario.record.distinct().into_iter().collect::<Vec<_>>(),
        all,
        "nothing lost"
    );
    let status = supervisor.status().await.expect("status");
    assert_eq!(
        status.child("worker").map(|c| c.restarts),
        Some(0),
        "the consumer child did not need a restart"
    );
}
