//! The supervisor against a real nats-server: ensuring streams and durable
//! consumers, naming and looking up children, routing fetches, adding and
//! removing consumers, and restarting a crashed child.

mod common;

use std::time::Duration;

use common::*;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{
    ChildState, ConsumerMode, ConsumerSpec, Error, JetStreamSupervisor, RestartKind, Retention,
    Storage, StreamAction, StreamSpec, SupervisorArgs, SupervisorMsg, Topology, ensure_stream,
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
        .consumer(ConsumerSpec::pull("ORD", "billing", "worker").with_filter(["ord.created"]))
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
        .consumer(ConsumerSpec {
            restart: RestartKind::Temporary,
            ..ConsumerSpec::pull("KINDS", "temporary", "t")
        })
        .consumer(ConsumerSpec {
            restart: RestartKind::Transient,
            ..ConsumerSpec::pull("KINDS", "transient", "t")
        })
        .consumer(ConsumerSpec {
            restart: RestartKind::Transient,
            ..ConsumerSpec::pull("KINDS", "transient-drained", "t")
        });
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
        Err(Error::Unavailable { reason, .. }) => assert!(reason.contains("stopped"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
}
