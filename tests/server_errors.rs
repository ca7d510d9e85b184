//! Errors that come back from a real server are classified into typed
//! kinds: JetStream not enabled (or not reachable), a missing stream, a
//! durable consumer that exists with another config, a permission the
//! account lacks, a server that does not answer, and an account limit.
//!
//! Each test matches on the kind (`Error::server_kind`) or the variant,
//! never on message text, and checks that nothing was created on the server
//! that should not have been.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt;
use nats_harness::NatsServer;
use ractor::Actor;
use ractor_jetstream::{
    ConnectionSpec, ConsumerAction, ConsumerMode, ConsumerSpec, Error, JetStreamSupervisor,
    PullSpec, ServerErrorKind, StreamSpec, SupervisorArgs, Topology, ensure_consumer,
    ensure_stream,
};

/// Well below any timeout in these tests: an error that comes back faster
/// than this was an answer, not a timeout.
const PROMPT: Duration = Duration::from_secs(3);

fn spec_for(server: &NatsServer) -> ConnectionSpec {
    ConnectionSpec::new(server.url())
}

fn with_login(server: &NatsServer, user: &str, password: &str) -> ConnectionSpec {
    ConnectionSpec {
        user: Some(user.into()),
        password: Some(password.into()),
        ..spec_for(server)
    }
}

/// The names of the streams the server has.
async fn stream_names(js: &jetstream::Context) -> Vec<String> {
    let mut names: Vec<String> = js.stream_names().try_collect().await.expect("list streams");
    names.sort();
    names
}

/// The names of the consumers a stream has.
async fn consumer_names(js: &jetstream::Context, stream: &str) -> Vec<String> {
    let stream = js.get_stream(stream).await.expect("get stream");
    let mut names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .expect("list consumers");
    names.sort();
    names
}

/// Spawns a supervisor and returns its startup error, which must be our
/// `Error`.
async fn supervisor_startup_error(
    connection: impl Into<ractor_jetstream::Connection>,
    topology: Topology,
) -> Error {
    let (_target_ref, target, _) = common::acking_target().await;
    let args = SupervisorArgs::new(connection, topology).target("worker", target);
    let started = tokio::time::timeout(
        common::PATIENCE,
        Actor::spawn(None, JetStreamSupervisor, args),
    )
    .await
    .expect("the supervisor neither started nor failed in time");
    let Err(ractor::SpawnErr::StartupFailed(err)) = started else {
        panic!("the supervisor started, or failed otherwise: {started:?}");
    };
    err.downcast_ref::<Error>()
        .cloned()
        .unwrap_or_else(|| panic!("startup failed with a foreign error: {err}"))
}

#[tokio::test]
async fn jetstream_not_enabled_on_the_server() {
    common::init_tracing();
    let server = NatsServer::builder()
        .jetstream(false)
        .start()
        .await
        .expect("start nats-server");
    let js = spec_for(&server).connect().await.expect("connect");

    // $JS.API has no responders on this server: that is reported as
    // "JetStream not enabled", promptly, not as a timeout.
    let started = Instant::now();
    let err = ensure_stream(&js, &StreamSpec::new("ORDERS", ["orders.>"]))
        .await
        .expect_err("no JetStream");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::JetStreamNotEnabled),
        "{err}"
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());

    // The supervisor fails to start with the same error.
    let topology = Topology::new()
        .stream(StreamSpec::new("ORDERS", ["orders.>"]))
        .consumer(ConsumerSpec::pull("ORDERS", "billing", "worker"));
    let err = supervisor_startup_error(js, topology).await;
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::JetStreamNotEnabled),
        "{err}"
    );
}

#[tokio::test]
async fn jetstream_not_enabled_for_the_account() {
    common::init_tracing();
    let server = NatsServer::builder()
        .config_snippet(
            r#"accounts {
                 WITH_JS: { jetstream: enabled, users: [ { user: "js", password: "js" } ] }
                 WITHOUT_JS: { users: [ { user: "plain", password: "plain" } ] }
               }"#,
        )
        .start()
        .await
        .expect("start nats-server");
    let js = with_login(&server, "plain", "plain")
        .connect()
        .await
        .expect("connect");
    let err = ensure_stream(&js, &StreamSpec::new("ORDERS", ["orders.>"]))
        .await
        .expect_err("no JetStream for this account");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::JetStreamNotEnabled),
        "{err}"
    );

    // Nothing was created in the account that has JetStream either.
    let js_account = with_login(&server, "js", "js")
        .connect()
        .await
        .expect("connect");
    assert!(stream_names(js_account.jetstream()).await.is_empty());
}

#[tokio::test]
async fn a_domain_nobody_serves_is_not_reachable() {
    let env = common::env().await;
    let spec = ConnectionSpec {
        jetstream_domain: Some("elsewhere".into()),
        ..spec_for(&env.server)
    };
    let js = spec.connect().await.expect("connect");
    let started = Instant::now();
    let err = ensure_stream(&js, &StreamSpec::new("ORDERS", ["orders.>"]))
        .await
        .expect_err("no JetStream in that domain");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::JetStreamNotEnabled),
        "{err}"
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    assert!(stream_names(&env.js).await.is_empty());
}

#[tokio::test]
async fn consumer_on_a_missing_stream() {
    let env = common::env().await;
    let spec = ConsumerSpec::pull("MISSING", "billing", "worker");
    let err = ensure_consumer(&env.js, &spec)
        .await
        .expect_err("no such stream");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::StreamNotFound),
        "{err}"
    );

    // Through the supervisor, with the stream not declared in the topology.
    let err = supervisor_startup_error(env.js.clone(), Topology::new().consumer(spec)).await;
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::StreamNotFound),
        "{err}"
    );
    assert!(
        stream_names(&env.js).await.is_empty(),
        "a stream was created"
    );
}

#[tokio::test]
async fn durable_taken_with_another_config() {
    let env = common::env().await;
    common::create_stream(&env.js, "ORDERS", &["orders.>"]).await;
    let stream = env.js.get_stream("ORDERS").await.expect("get stream");

    // A pull durable that acks nothing: this library needs explicit acks.
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("no-acks".into()),
            ack_policy: consumer::AckPolicy::None,
            deliver_policy: consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("create durable");
    let err = ensure_consumer(&env.js, &ConsumerSpec::pull("ORDERS", "no-acks", "worker"))
        .await
        .expect_err("ack policy conflict");
    match &err {
        Error::ConsumerConflict {
            stream,
            durable,
            fields,
            ..
        } => {
            assert_eq!((stream.as_str(), durable.as_str()), ("ORDERS", "no-acks"));
            assert_eq!(fields, &vec!["ack_policy".to_string()], "{err}");
        }
        other => panic!("expected ConsumerConflict, got {other:?}"),
    }
    let info = common::consumer_info(&env.js, "ORDERS", "no-acks").await;
    assert_eq!(info.config.ack_policy, consumer::AckPolicy::None);
    assert_eq!(info.config.deliver_policy, consumer::DeliverPolicy::New);

    // A push durable asked for as pull.
    stream
        .create_consumer(consumer::push::Config {
            durable_name: Some("pushed".into()),
            deliver_subject: "deliver.pushed".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create push durable");
    let err = ensure_consumer(&env.js, &ConsumerSpec::pull("ORDERS", "pushed", "worker"))
        .await
        .expect_err("mode conflict");
    assert!(
        matches!(
            &err,
            Error::ModeMismatch {
                expected: ConsumerMode::Pull,
                actual: ConsumerMode::Push,
                ..
            }
        ),
        "{err:?}"
    );
    let info = common::consumer_info(&env.js, "ORDERS", "pushed").await;
    assert_eq!(
        info.config.deliver_subject.as_deref(),
        Some("deliver.pushed")
    );

    // The supervisor refuses to start on either, and creates nothing else.
    let topology = Topology::new().consumer(ConsumerSpec::pull("ORDERS", "no-acks", "worker"));
    let err = supervisor_startup_error(env.js.clone(), topology).await;
    assert!(matches!(err, Error::ConsumerConflict { .. }), "{err:?}");
    assert_eq!(
        consumer_names(&env.js, "ORDERS").await,
        vec!["no-acks".to_string(), "pushed".to_string()]
    );
}

#[tokio::test]
async fn permission_denied_on_the_jetstream_api() {
    common::init_tracing();
    let server = NatsServer::builder()
        .config_snippet(
            r#"authorization {
                 users = [
                   { user: "admin", password: "admin" }
                   { user: "no-api", password: "no-api",
                     permissions: { publish: { deny: ["$JS.API.>"] } } }
                   { user: "no-replies", password: "no-replies",
                     permissions: { subscribe: { deny: ["_INBOX.>"] } } }
                 ]
               }"#,
        )
        .start()
        .await
        .expect("start nats-server");
    // A long API timeout: a denial must not wait for it.
    let spec = |user: &str| ConnectionSpec {
        jetstream_timeout: Some(Duration::from_secs(20)),
        ..with_login(&server, user, user)
    };
    let stream = StreamSpec::new("ORDERS", ["orders.>"]);

    let js = spec("no-api").connect().await.expect("connect");
    let started = Instant::now();
    let err = ensure_stream(&js, &stream)
        .await
        .expect_err("may not publish to the API");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::PermissionDenied),
        "{err}"
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    let Error::Server { detail, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        detail.contains("$JS.API.STREAM.INFO.ORDERS"),
        "the subject is not named: {err}"
    );

    let js = spec("no-replies").connect().await.expect("connect");
    let started = Instant::now();
    let err = ensure_stream(&js, &stream)
        .await
        .expect_err("may not get replies");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::PermissionDenied),
        "{err}"
    );
    assert!(started.elapsed() < PROMPT, "took {:?}", started.elapsed());
    let Error::Server { detail, .. } = &err else {
        panic!("{err:?}");
    };
    assert!(
        detail.contains("_INBOX."),
        "the subject is not named: {err}"
    );

    // The reply subscription is made once per connection: later requests
    // on it are denied too, once their (short) timeout passes.
    let quick = ConnectionSpec {
        jetstream_timeout: Some(Duration::from_millis(500)),
        ..with_login(&server, "no-replies", "no-replies")
    }
    .connect()
    .await
    .expect("connect");
    for attempt in 0..2 {
        let err = ensure_stream(&quick, &stream)
            .await
            .expect_err("may not get replies");
        assert_eq!(
            err.server_kind(),
            Some(ServerErrorKind::PermissionDenied),
            "attempt {attempt}: {err}"
        );
    }

    // Each request failed at its first step, the stream info: nothing was
    // created.
    let admin = spec("admin").connect().await.expect("connect");
    assert!(stream_names(admin.jetstream()).await.is_empty());
}

#[tokio::test]
async fn a_server_that_does_not_answer_times_out() {
    let env = common::env().await;
    let spec = ConnectionSpec {
        jetstream_timeout: Some(Duration::from_millis(500)),
        ..spec_for(&env.server)
    };
    let js = spec.connect().await.expect("connect");
    ensure_stream(&js, &StreamSpec::new("ORDERS", ["orders.>"]))
        .await
        .expect("create while the server answers");

    env.server.pause().expect("pause");
    let started = Instant::now();
    let result = ensure_stream(&js, &StreamSpec::new("OTHER", ["other.>"])).await;
    let elapsed = started.elapsed();
    env.server.resume().expect("resume");
    let err = result.expect_err("paused server");
    assert_eq!(err.server_kind(), Some(ServerErrorKind::Timeout), "{err}");
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < PROMPT,
        "took {elapsed:?}"
    );

    // A plain JetStream context with a short timeout does the same.
    let mut plain = jetstream::new(env.client.clone());
    plain.set_timeout(Duration::from_millis(300));
    env.server.pause().expect("pause");
    let result = ensure_stream(&plain, &StreamSpec::new("THIRD", ["third.>"])).await;
    env.server.resume().expect("resume");
    assert_eq!(
        result.expect_err("paused").server_kind(),
        Some(ServerErrorKind::Timeout)
    );

    // Only stream info requests were sent while paused: nothing new exists.
    assert_eq!(stream_names(&env.js).await, vec!["ORDERS".to_string()]);
}

#[tokio::test]
async fn account_limits_exceeded() {
    common::init_tracing();
    let server = NatsServer::builder()
        .config_snippet(
            r#"accounts {
                 APP: {
                   jetstream: { max_streams: 1, max_file: 1MB, max_mem: 1MB }
                   users: [ { user: "app", password: "app" } ]
                 }
               }"#,
        )
        .start()
        .await
        .expect("start nats-server");
    let js = with_login(&server, "app", "app")
        .connect()
        .await
        .expect("connect");

    // More storage than the account may have.
    let big = StreamSpec {
        max_bytes: Some(64 * 1024 * 1024),
        ..StreamSpec::new("BIG", ["big.>"])
    };
    let err = ensure_stream(&js, &big).await.expect_err("too big");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::LimitsExceeded),
        "{err}"
    );

    // One stream is allowed, a second is not.
    let small = |name: &str, subject: &str| StreamSpec {
        max_bytes: Some(64 * 1024),
        ..StreamSpec::new(name, [subject])
    };
    ensure_stream(&js, &small("FIRST", "first.>"))
        .await
        .expect("first stream");
    let err = ensure_stream(&js, &small("SECOND", "second.>"))
        .await
        .expect_err("one stream too many");
    assert_eq!(
        err.server_kind(),
        Some(ServerErrorKind::LimitsExceeded),
        "{err}"
    );
    assert_eq!(
        stream_names(js.jetstream()).await,
        vec!["FIRST".to_string()]
    );
}

/// `max_waiting` reaches the server when the consumer is created, binds
/// unchanged, and a spec that asks for another value is a conflict that
/// names it (the server cannot change it in place), leaving the consumer as
/// it was.
#[tokio::test]
async fn max_waiting_is_created_and_a_change_is_a_conflict() {
    let env = common::env().await;
    common::create_stream(&env.js, "WAIT", &["wait.>"]).await;
    let spec = |max_waiting| {
        ConsumerSpec::new(
            "WAIT",
            "w",
            "t",
            PullSpec::default().max_waiting(max_waiting),
        )
    };
    let (info, action) = ensure_consumer(&env.js, &spec(7)).await.expect("create");
    assert_eq!(action, ConsumerAction::Created);
    assert_eq!(info.config.max_waiting, 7);
    let (_, action) = ensure_consumer(&env.js, &spec(7)).await.expect("bind");
    assert_eq!(action, ConsumerAction::Bound);
    // A spec that leaves it unset binds to whatever the server has.
    let (_, action) = ensure_consumer(&env.js, &ConsumerSpec::pull("WAIT", "w", "t"))
        .await
        .expect("bind unset");
    assert_eq!(action, ConsumerAction::Bound);

    let err = ensure_consumer(&env.js, &spec(8))
        .await
        .expect_err("max_waiting cannot change");
    match &err {
        Error::ConsumerConflict {
            durable, fields, ..
        } => {
            assert_eq!(durable, "w");
            assert_eq!(fields, &vec!["max_waiting".to_string()], "{err}");
        }
        other => panic!("expected ConsumerConflict, got {other:?}"),
    }
    let info = common::consumer_info(&env.js, "WAIT", "w").await;
    assert_eq!(
        info.config.max_waiting, 7,
        "the consumer was left as it was"
    );
}
