//! The supervisor against a real nats-server: ensuring streams and durable
//! consumers, naming and looking up children, routing fetches, adding and
//! removing consumers, and restarting a crashed child.

mod common;

use std::time::Duration;

use common::*;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{
    ChildState, ConsumerMode, ConsumerSpec, Error, JetStreamSupervisor, RestartKind, Retention,
    Storage, StreamAction, StreamSpec, SupervisorArgs, SupervisorMsg, Topology, UnavailableReason,
    ensure_stream,
};

async fn status(supervisor: &ActorRef<SupervisorMsg>) -> ractor_jetstream::SupervisorStatus {
    supervisor
        .call(SupervisorMsg::Status, None)
        .await
        .expect("status")
        .success_or_panic()
}

#[tokio::test]
async fn streams_are_created_reused_updated_and_never_replaced() {
    let env = env().await;
    let spec = StreamSpec {
        max_messages: Some(1000),
        ..StreamSpec::new("ENS", ["ens.>"])
    };
    assert_eq!(
        ensure_stream(&env.js, &spec).await.expect("create"),
        StreamAction::Created
    );
    publish_n(&env.js, "ens.x", 3).await;
    assert_eq!(
        ensure_stream(&env.js, &spec).await.expect("reuse"),
        StreamAction::Unchanged
    );

    let bigger = StreamSpec {
        max_messages: Some(2000),
        subjects: vec!["ens.>".into(), "more.>".into()],
        ..spec.clone()
    };
    match ensure_stream(&env.js, &bigger).await.expect("update") {
        StreamAction::Updated(fields) => {
            assert_eq!(fields, vec!["subjects".to_string(), "max_messages".into()])
        }
        other => panic!("expected an update, got {other:?}"),
    }
    let info = env
        .js
        .get_stream("ENS")
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info");
    assert_eq!(info.config.max_messages, 2000);
    assert_eq!(info.state.messages, 3, "an update keeps the messages");

    // Storage and retention cannot change in place: a conflict naming them,
    // and the stream is left as it is.
    let conflicting = StreamSpec {
        storage: Some(Storage::Memory),
        retention: Some(Retention::WorkQueue),
        ..bigger.clone()
    };
    match ensure_stream(&env.js, &conflicting).await {
        Err(Error::StreamConflict { stream, fields, .. }) => {
            assert_eq!(stream, "ENS");
            assert_eq!(fields, vec!["storage".to_string(), "retention".into()]);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let info = env
        .js
        .get_stream("ENS")
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info");
    assert_eq!(info.state.messages, 3);
    assert_eq!(
        info.config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
}

#[tokio::test]
async fn supervisor_spawns_named_children_routes_fetches_and_reports_status() {
    let env = env().await;
    publish_n(&env.js, "nothing.yet", 0).await;
    let (_t, target, record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("ORD", ["ord.>"]))
        .consumer(ConsumerSpec::pull("ORD", "billing", "worker").filter(["ord.created"]))
        .consumer(ConsumerSpec::push("ORD", "audit", "worker"));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("worker", target.clone());
    let (supervisor, _) = Actor::spawn(Some("sup-route".into()), JetStreamSupervisor, args)
        .await
        .expect("supervisor starts");

    // The durable consumers exist on the server, in their modes.
    let billing = consumer_info(&env.js, "ORD", "billing").await;
    assert!(billing.config.deliver_subject.is_none());
    let audit = consumer_info(&env.js, "ORD", "audit").await;
    assert!(audit.config.deliver_subject.is_some());

    // Children are named after the stream and the durable.
    let child = lookup(&supervisor, "billing").await.expect("billing child");
    let by_name = ractor::registry::where_is("sup-route/ORD/billing").expect("registered by name");
    assert_eq!(by_name.get_id(), child.get_id());
    assert!(ractor::registry::where_is("sup-route/ORD/audit").is_some());

    publish(
        &env.js,
        ["ord.created", "ord.created", "ord.shipped"].map(String::from),
    )
    .await;
    let outcome = fetch_via(&supervisor, "billing", 10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (2, 2));
    match fetch_via(&supervisor, "audit", 10, Duration::from_millis(500)).await {
        Err(Error::WrongMode { actual, .. }) => assert_eq!(actual, ConsumerMode::Push),
        other => panic!("expected WrongMode, got {other:?}"),
    }
    match fetch_via(&supervisor, "nobody", 10, Duration::from_millis(500)).await {
        Err(Error::UnknownConsumer { durable }) => assert_eq!(durable, "nobody"),
        other => panic!("expected UnknownConsumer, got {other:?}"),
    }
    // The push durable got all three.
    wait_until("push delivers", PATIENCE, || record.count() >= 5).await;

    let report = status(&supervisor).await;
    assert_eq!(report.children.len(), 2);
    assert!(
        report
            .children
            .iter()
            .all(|c| c.state == ChildState::Running && c.restarts == 0)
    );

    // Add and remove at run time.
    let added = supervisor
        .call(
            |reply| SupervisorMsg::AddConsumer {
                spec: ConsumerSpec::pull("ORD", "late", "worker"),
                target: None,
                reply,
            },
            None,
        )
        .await
        .expect("add")
        .success_or_panic()
        .expect("consumer added");
    assert!(
        ractor::registry::where_is("sup-route/ORD/late")
            .is_some_and(|c| c.get_id() == added.get_id())
    );
    let late = fetch_via(&supervisor, "late", 10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(late.delivered, 3);
    let duplicate = supervisor
        .call(
            |reply| SupervisorMsg::AddConsumer {
                spec: ConsumerSpec::pull("ORD", "late", "worker"),
                target: None,
                reply,
            },
            None,
        )
        .await
        .expect("add")
        .success_or_panic();
    assert!(
        matches!(duplicate, Err(Error::DuplicateConsumer { .. })),
        "{duplicate:?}"
    );
    supervisor
        .call(
            |reply| SupervisorMsg::RemoveConsumer {
                durable: "late".into(),
                delete: true,
                drain: Duration::from_secs(1),
                reply,
            },
            None,
        )
        .await
        .expect("remove")
        .success_or_panic()
        .expect("removed");
    assert!(lookup(&supervisor, "late").await.is_none());
    let stream = env.js.get_stream("ORD").await.expect("stream");
    assert!(
        stream.consumer_info("late").await.is_err(),
        "deleted on the server"
    );
    assert_eq!(status(&supervisor).await.children.len(), 2);
}

#[tokio::test]
async fn a_push_spec_against_a_pull_consumer_is_a_clear_error() {
    let env = env().await;
    create_stream(&env.js, "MODE", &["mode.>"]).await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new().consumer(ConsumerSpec::pull("MODE", "d", "t"));
    let (first, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target.clone()),
    )
    .await
    .expect("supervisor");
    first.stop(None);
    let topology = Topology::new().consumer(ConsumerSpec::push("MODE", "d", "t"));
    let err = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect_err("mode mismatch");
    let text = err.to_string();
    assert!(
        text.contains("is a pull consumer on the server") && text.contains("push"),
        "{text}"
    );
    // The existing consumer is untouched.
    assert!(
        consumer_info(&env.js, "MODE", "d")
            .await
            .config
            .deliver_subject
            .is_none()
    );
}

#[tokio::test]
async fn an_invalid_topology_or_missing_target_creates_nothing() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("GOOD", ["good.>"]))
        .consumer(ConsumerSpec::pull("GOOD", "ok", "t"))
        .consumer(ConsumerSpec::pull("GOOD", "bad.name", "t"));
    let err = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect_err("invalid topology");
    assert!(err.to_string().contains("consumers[1].durable"), "{err}");
    let topology = Topology::new()
        .stream(StreamSpec::new("GOOD", ["good.>"]))
        .consumer(ConsumerSpec::pull("GOOD", "ok", "nobody"));
    let err = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology),
    )
    .await
    .expect_err("missing target");
    assert!(err.to_string().contains("consumers[0].target"), "{err}");
    assert!(
        env.js.get_stream("GOOD").await.is_err(),
        "nothing was created on the server"
    );
}

#[tokio::test]
async fn a_crashed_child_is_restarted_and_resumes_from_the_durable() {
    let env = env().await;
    let (_t, target, record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("CRASH", ["crash.>"]))
        .consumer(ConsumerSpec::pull("CRASH", "c", "t"));
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    publish_n(&env.js, "crash.x", 20).await;
    let first = fetch_via(&supervisor, "c", 10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(first.delivered, 10);

    let child = lookup(&supervisor, "c").await.expect("child");
    child.kill();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let restarted = loop {
        if let Some(new) = lookup(&supervisor, "c").await
            && new.get_id() != child.get_id()
        {
            break new;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "child was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // An unnamed supervisor names its children after its own id.
    let name = format!("jetstream-{}/CRASH/c", supervisor.get_id());
    assert!(
        ractor::registry::where_is(name.clone()).is_some_and(|c| c.get_id() == restarted.get_id()),
        "{name} is the restarted child"
    );
    let second = fetch_via(&supervisor, "c", 100, Duration::from_millis(500))
        .await
        .expect("fetch after restart");
    assert_eq!(second.delivered, 10);
    assert_eq!(record.sequences(), (1..=20).collect::<Vec<_>>());
    let report = status(&supervisor).await;
    assert_eq!(report.child("c").map(|c| c.restarts), Some(1));
    wait_for_consumer(&env.js, "CRASH", "c", "ack floor 20", |i| {
        i.ack_floor.stream_sequence == 20 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn restart_kinds_decide_which_children_come_back() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("KINDS", ["kinds.>"]))
        .consumer(ConsumerSpec::pull("KINDS", "temporary", "t").restart(RestartKind::Temporary))
        .consumer(ConsumerSpec::pull("KINDS", "transient", "t").restart(RestartKind::Transient))
        .consumer(
            ConsumerSpec::pull("KINDS", "transient-drained", "t").restart(RestartKind::Transient),
        );
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    // Killed: a temporary child stays down, a transient one comes back.
    lookup(&supervisor, "temporary")
        .await
        .expect("child")
        .kill();
    lookup(&supervisor, "transient")
        .await
        .expect("child")
        .kill();
    // Drained (a normal end): a transient child stays down.
    let drained = lookup(&supervisor, "transient-drained")
        .await
        .expect("child");
    drained
        .call(
            |reply| ractor_jetstream::ConsumerMsg::Drain {
                timeout: Duration::from_secs(1),
                reply,
            },
            None,
        )
        .await
        .expect("drain");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = status(&supervisor).await;
        let state = |d: &str| report.child(d).map(|c| (c.state.clone(), c.restarts));
        if state("temporary") == Some((ChildState::Stopped, 0))
            && state("transient") == Some((ChildState::Running, 1))
            && state("transient-drained") == Some((ChildState::Stopped, 0))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "unexpected states: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lookup(&supervisor, "temporary").await.is_none());
    assert!(lookup(&supervisor, "transient-drained").await.is_none());
    match fetch_via(&supervisor, "temporary", 1, Duration::from_millis(200)).await {
        Err(Error::Unavailable { reason, .. }) => {
            assert_eq!(reason, UnavailableReason::Stopped, "{reason}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Sends `RemoveConsumer` with a reply port of our own, so that the
/// messages sent after it are queued behind it. Returns where its reply
/// comes.
fn start_removal(
    supervisor: &ActorRef<SupervisorMsg>,
    durable: &str,
    drain: Duration,
    delete: bool,
) -> tokio::sync::oneshot::Receiver<Result<ractor_jetstream::DrainReport, Error>> {
    let (tx, rx) = ractor::concurrency::oneshot();
    supervisor
        .cast(SupervisorMsg::RemoveConsumer {
            durable: durable.into(),
            delete,
            drain,
            reply: tx.into(),
        })
        .expect("the supervisor takes RemoveConsumer");
    rx
}

/// A topology whose push durable `slow` goes to a target that holds every
/// delivery, so that draining `slow` takes its whole drain timeout.
fn with_slow_durable(topology: Topology, stream: &str) -> Topology {
    topology.consumer(
        ConsumerSpec::push(stream, "slow", "holder")
            .filter([format!("{}.slow", stream.to_lowercase())]),
    )
}

#[tokio::test]
async fn a_slow_drain_blocks_neither_fetches_nor_status() {
    let env = env().await;
    let (_h, holder, held) = spawn_target(|_| Action::Hold).await;
    let (_t, target, record) = acking_target().await;
    let topology = with_slow_durable(
        Topology::new()
            .stream(StreamSpec::new("BUSY", ["busy.>"]))
            .consumer(ConsumerSpec::pull("BUSY", "fast", "t").filter(["busy.fast"])),
        "BUSY",
    );
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology)
            .target("holder", holder)
            .target("t", target),
    )
    .await
    .expect("supervisor");
    publish_n(&env.js, "busy.slow", 3).await;
    let fast = publish_n(&env.js, "busy.fast", 2).await;
    wait_until(
        "the slow durable's target holds 3 deliveries",
        PATIENCE,
        || held.count() == 3,
    )
    .await;

    // The drain of `slow` waits 5 s for decisions that never come.
    let drain = Duration::from_secs(5);
    let removal_started = tokio::time::Instant::now();
    let mut removal = start_removal(&supervisor, "slow", drain, true);

    let asked = tokio::time::Instant::now();
    let report = supervisor
        .call(SupervisorMsg::Status, Some(PATIENCE))
        .await
        .expect("status")
        .success_or_panic();
    let status_took = asked.elapsed();
    let asked = tokio::time::Instant::now();
    let outcome = fetch_via(&supervisor, "fast", 2, Duration::from_secs(2))
        .await
        .expect("fetch from the other durable");
    let fetch_took = asked.elapsed();
    assert!(
        status_took < Duration::from_millis(100) && fetch_took < Duration::from_millis(100),
        "while `slow` drains, Status took {status_took:?} and a Fetch to `fast` took {fetch_took:?} (limit 100ms each)"
    );
    assert!(
        removal.try_recv().is_err(),
        "the removal was still draining while Status and Fetch were answered"
    );
    assert_eq!((outcome.delivered, outcome.acked), (2, 2));
    assert_eq!(record.sequences(), fast);
    assert!(
        report
            .child("fast")
            .is_some_and(|c| c.state == ChildState::Running)
    );

    // The removal itself ends after its drain, and nak's what was held.
    let removed = tokio::time::timeout(drain + PATIENCE, removal)
        .await
        .expect("the removal ends")
        .expect("the removal answers")
        .expect("removed");
    assert_eq!((removed.settled, removed.naked), (0, 3));
    assert!(
        removal_started.elapsed() >= drain - Duration::from_millis(500),
        "the drain really waited: {:?}",
        removal_started.elapsed()
    );
    assert!(status(&supervisor).await.child("slow").is_none());
    let stream = env.js.get_stream("BUSY").await.expect("stream");
    assert!(
        stream.consumer_info("slow").await.is_err(),
        "deleted on the server"
    );
}

#[tokio::test]
async fn a_killed_push_child_forwards_nothing_after_its_kill() {
    let env = env().await;
    let (_h, holder, held) = spawn_target(|_| Action::Hold).await;
    let (_t, target, record) = acking_target().await;
    let topology = with_slow_durable(
        Topology::new()
            .stream(StreamSpec::new("KILL", ["kill.>"]))
            .consumer(
                ConsumerSpec::push("KILL", "victim", "t")
                    .filter(["kill.victim"])
                    // Not restarted: whatever reaches the target after the
                    // kill came from the killed child.
                    .restart(RestartKind::Temporary),
            ),
        "KILL",
    );
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology)
            .target("holder", holder)
            .target("t", target),
    )
    .await
    .expect("supervisor");
    let victim = lookup(&supervisor, "victim").await.expect("victim child");

    // A steady stream of messages for the victim, until the test ends.
    let js = env.js.clone();
    let publisher = tokio::spawn(async move {
        loop {
            if let Ok(ack) = js.publish("kill.victim", "tick".into()).await {
                let _ = ack.await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    wait_until("the victim forwards", PATIENCE, || record.count() >= 20).await;

    // Keep the supervisor busy (a 5 s drain of `slow`), then kill the
    // victim.
    publish_n(&env.js, "kill.slow", 3).await;
    wait_until(
        "the slow durable's target holds 3 deliveries",
        PATIENCE,
        || held.count() == 3,
    )
    .await;
    let removal = start_removal(&supervisor, "slow", Duration::from_secs(5), false);
    // (3 of the stream's messages went to the slow durable.)
    kill_and_watch_nothing_forwarded(&env, &victim, &record, "KILL", 3).await;
    publisher.abort();
    let removed = tokio::time::timeout(PATIENCE, removal)
        .await
        .expect("the removal ends")
        .expect("the removal answers");
    assert!(removed.is_ok(), "{removed:?}");
    assert_eq!(
        status(&supervisor)
            .await
            .child("victim")
            .map(|c| c.state.clone()),
        Some(ChildState::Stopped)
    );
}

/// A parent that is busy (sleeping in its handler) whenever told to be.
struct BusyParent;

impl Actor for BusyParent {
    type Msg = Duration;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Duration>,
        _args: (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Duration>,
        busy_for: Duration,
        _state: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        tokio::time::sleep(busy_for).await;
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Duration>,
        _event: ractor::SupervisionEvent,
        _state: &mut (),
    ) -> Result<(), ractor::ActorProcessingErr> {
        Ok(())
    }
}

#[tokio::test]
async fn a_killed_push_child_stops_forwarding_however_busy_its_parent_is() {
    let env = env().await;
    create_stream(&env.js, "ORPHAN", &["orphan.>"]).await;
    let (_t, target, record) = acking_target().await;
    let (parent, _) = Actor::spawn(None, BusyParent, ()).await.expect("parent");
    let (child, _) = Actor::spawn_linked(
        None,
        ractor_jetstream::PushConsumer,
        ractor_jetstream::ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::push("ORPHAN", "child", "t"),
            target: target.into(),
        },
        parent.get_cell(),
    )
    .await
    .expect("push child");
    let js = env.js.clone();
    let publisher = tokio::spawn(async move {
        loop {
            if let Ok(ack) = js.publish("orphan.x", "tick".into()).await {
                let _ = ack.await;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    wait_until("the child forwards", PATIENCE, || record.count() >= 20).await;

    // The parent cannot look at the child's end for 5 s: whatever stops
    // the worker must not depend on it.
    parent
        .cast(Duration::from_secs(5))
        .expect("the parent takes work");
    kill_and_watch_nothing_forwarded(&env, &child, &record, "ORPHAN", 0).await;
    publisher.abort();
}

#[tokio::test]
async fn a_child_stopped_from_outside_while_working_comes_back_like_a_killed_one() {
    let env = env().await;
    let (_t, target, record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("OUTSIDE", ["outside.>"]))
        .consumer(ConsumerSpec::pull("OUTSIDE", "p", "t").restart(RestartKind::Transient));
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    // Neither the supervisor nor a drain asked for this stop: an abnormal
    // end, whatever the reason text says.
    let child = lookup(&supervisor, "p").await.expect("child");
    child.stop(Some("drained".into()));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = status(&supervisor).await;
        let p = report.child("p").cloned();
        if p.as_ref()
            .is_some_and(|p| p.state == ChildState::Running && p.restarts == 1)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transient child stopped from outside was not restarted: {p:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seqs = publish_n(&env.js, "outside.x", 3).await;
    let outcome = fetch_via(&supervisor, "p", 3, Duration::from_secs(2))
        .await
        .expect("fetch from the restarted child");
    assert_eq!(outcome.acked, 3);
    assert_eq!(record.sequences(), seqs);
}

#[tokio::test]
async fn a_second_add_of_a_durable_being_added_is_a_duplicate() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new().stream(StreamSpec::new("TWICE", ["twice.>"]));
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    // Both are queued before the first can have finished binding.
    let add = || {
        let (tx, rx) = ractor::concurrency::oneshot();
        supervisor
            .cast(SupervisorMsg::AddConsumer {
                spec: ConsumerSpec::pull("TWICE", "d", "t"),
                target: None,
                reply: tx.into(),
            })
            .expect("the supervisor takes AddConsumer");
        rx
    };
    let (first, second) = (add(), add());
    let second = tokio::time::timeout(PATIENCE, second)
        .await
        .expect("the second add is answered")
        .expect("reply");
    assert!(
        matches!(&second, Err(Error::DuplicateConsumer { durable }) if durable == "d"),
        "{second:?}"
    );
    let first = tokio::time::timeout(PATIENCE, first)
        .await
        .expect("the first add is answered")
        .expect("reply")
        .expect("the first add succeeds");
    assert_eq!(
        lookup(&supervisor, "d").await.map(|c| c.get_id()),
        Some(first.get_id())
    );
    let report = status(&supervisor).await;
    assert_eq!(report.children.len(), 1);
    assert!(
        consumer_info(&env.js, "TWICE", "d")
            .await
            .config
            .deliver_subject
            .is_none()
    );
}

#[tokio::test]
async fn a_removal_during_a_restart_waits_for_the_new_child_and_retires_it() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("RACE", ["race.>"]))
        .consumer(ConsumerSpec::pull("RACE", "r", "t"));
    let policy = ractor_jetstream::RestartPolicy {
        initial_backoff: Duration::from_millis(200),
        jitter: 0.0,
        ..Default::default()
    };
    let (supervisor, _) = Actor::spawn(
        Some("sup-race".into()),
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology)
            .target("t", target)
            .restart_policy(policy),
    )
    .await
    .expect("supervisor");
    let old = lookup(&supervisor, "r").await.expect("child");

    // With the server frozen, the restart's new child hangs in its
    // pre_start (binding the consumer). Its name is registered as soon as
    // its spawn begins.
    env.server.pause().expect("pause");
    old.kill();
    let name = String::from("sup-race/RACE/r");
    wait_until("the restart spawns a new child", PATIENCE, || {
        ractor::registry::where_is(name.clone()).is_some_and(|c| c.get_id() != old.get_id())
    })
    .await;
    let asked = tokio::time::Instant::now();
    let during = supervisor
        .call(SupervisorMsg::Status, Some(Duration::from_secs(2)))
        .await
        .expect("status");
    let status_took = asked.elapsed();
    let mut removal = start_removal(&supervisor, "r", Duration::from_secs(1), true);
    let removal_pending = removal.try_recv().is_err();
    env.server.resume().expect("resume");
    let ractor::rpc::CallResult::Success(during) = during else {
        panic!(
            "Status was not answered while a restart was binding: {during:?} after {status_took:?}"
        );
    };
    assert!(
        status_took < Duration::from_millis(100),
        "Status took {status_took:?} while a restart was binding"
    );
    assert_eq!(
        during.child("r").map(|c| c.state.clone()),
        Some(ChildState::Restarting)
    );
    assert!(removal_pending, "the removal waits for the new child");

    // The removal retires the new child once it has bound, then deletes.
    let removed = tokio::time::timeout(PATIENCE, removal)
        .await
        .expect("the removal ends")
        .expect("the removal answers");
    assert!(removed.is_ok(), "{removed:?}");
    assert!(lookup(&supervisor, "r").await.is_none());
    assert!(status(&supervisor).await.child("r").is_none());
    wait_until("the new child is gone", PATIENCE, || {
        ractor::registry::where_is(name.clone()).is_none()
    })
    .await;
    let stream = env.js.get_stream("RACE").await.expect("stream");
    assert!(
        stream.consumer_info("r").await.is_err(),
        "deleted on the server, and not re-created by the new child"
    );
}

/// Kills `child`, waits until it is gone, then watches the target for 2 s:
/// what was already in the target's mailbox lands at once, anything later
/// was forwarded by a worker that outlived its actor. Also checks that the
/// publisher kept the stream growing (`others` of its messages went to
/// other durables), so there was something to forward all along.
async fn kill_and_watch_nothing_forwarded(
    env: &Env,
    child: &ActorRef<ractor_jetstream::ConsumerMsg>,
    record: &Record,
    stream: &str,
    others: usize,
) {
    child.kill();
    child
        .wait(Some(PATIENCE))
        .await
        .expect("the killed child ends");
    let dead_at = std::time::Instant::now();
    let seen_at_death = record.count();
    let grace = Duration::from_millis(500);
    let watch = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch {
        let late = record.with(|r| r.seen.iter().filter(|s| s.at > dead_at + grace).count());
        assert_eq!(
            late, 0,
            "{late} deliveries reached the target more than {grace:?} after the child was killed ({seen_at_death} before)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = env
        .js
        .get_stream(stream)
        .await
        .expect("stream")
        .get_info()
        .await
        .expect("info")
        .state
        .messages;
    assert!(
        stored as usize > seen_at_death + others + 50,
        "the publisher kept going: {stored} stored, {seen_at_death} forwarded"
    );
}

#[tokio::test]
async fn status_reports_each_childs_lag_from_the_server() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("LAG", ["lag.>"]))
        .consumer(
            ConsumerSpec::pull("LAG", "lagging", "worker")
                .info_interval(Duration::from_millis(100)),
        )
        .consumer(ConsumerSpec::pull("LAG", "unpolled", "worker"));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("worker", target);
    let (supervisor, _) = ractor_jetstream::SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor starts");
    publish_n(&env.js, "lag.a", 10).await;
    // Before any fetch: 10 pending on the server.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut fetched = false;
    loop {
        let status = supervisor.status().await.expect("status");
        let lag = status.child("lagging").and_then(|c| c.server);
        assert_eq!(status.child("unpolled").and_then(|c| c.server), None);
        match (lag, fetched) {
            (Some(lag), false) if lag.num_pending == 10 => {
                let handle = supervisor.pull("lagging").await.expect("pull handle");
                let outcome = handle
                    .fetch(10, Some(Duration::from_millis(500)))
                    .await
                    .expect("fetch");
                assert_eq!(outcome.acked, 10);
                fetched = true;
            }
            (Some(lag), true) if lag.ack_floor == 10 => {
                assert_eq!((lag.num_pending, lag.num_ack_pending), (0, 0));
                break;
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "status never showed the lag: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
