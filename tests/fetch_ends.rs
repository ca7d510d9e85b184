//! How a fetch ends, in the configurations a user can write: several
//! workers on one durable, a consumer whose limits changed under the child,
//! requests the server refuses, callers that gave up, a dead target, a
//! drain in the middle of a fetch, and stale permission reports.

mod common;

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull};
use common::*;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{
    ConsumerMsg, ConsumerSpec, Error, FetchEnd, FetchOutcome, JetStreamSupervisor, StreamSpec,
    SupervisorArgs, SupervisorMsg, Topology,
};

/// A fetch with an explicit call timeout (the common helper adds
/// `expires` to it, which overflows for the largest durations).
async fn fetch_within(
    child: &ActorRef<ConsumerMsg>,
    batch: u64,
    expires: Option<Duration>,
    within: Duration,
) -> Result<FetchOutcome, Error> {
    child
        .call(
            |reply| ConsumerMsg::Fetch {
                batch,
                expires,
                reply,
            },
            Some(within),
        )
        .await
        .expect("fetch call")
        .success_or_panic()
}

/// Creates the pull durable directly, with `max_waiting`, as another
/// service would; the children then bind to it as it is.
async fn create_pull_durable(env: &Env, stream: &str, durable: &str, max_waiting: i64) {
    env.js
        .get_stream(stream)
        .await
        .expect("stream")
        .create_consumer(pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_waiting,
            ..Default::default()
        })
        .await
        .expect("create the durable");
}

/// Four workers loop on fetch against an empty stream for 3 s; returns
/// each worker's outcomes.
async fn idle_workers(max_waiting: i64) -> Vec<Vec<FetchOutcome>> {
    let env = env().await;
    create_stream(&env.js, "IDLE", &["idle.>"]).await;
    create_pull_durable(&env, "IDLE", "w", max_waiting).await;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (target_ref, target, _) = acking_target().await;
        let child = spawn_pull(&env, ConsumerSpec::pull("IDLE", "w", "t"), target).await;
        workers.push((target_ref, child));
    }
    let until = Instant::now() + Duration::from_secs(3);
    let loops = workers.iter().map(|(_, child)| async move {
        let mut outcomes = Vec::new();
        while Instant::now() < until {
            let outcome = fetch(child, 10, Duration::from_secs(1))
                .await
                .expect("an idle fetch is not an error");
            outcomes.push(outcome);
            assert!(outcomes.len() < 10_000, "spinning");
        }
        outcomes
    });
    futures::future::join_all(loops).await
}

fn check_idle(max_waiting: i64, workers: &[Vec<FetchOutcome>]) {
    for (i, outcomes) in workers.iter().enumerate() {
        // 3 s of 1 s fetches: 3 or 4 each (and a few more when a refused
        // request retries), never hundreds.
        assert!(
            (2..=8).contains(&outcomes.len()),
            "max_waiting {max_waiting}: worker {i} made {} fetches in 3 s: {:?}",
            outcomes.len(),
            &outcomes[..outcomes.len().min(5)]
        );
        for outcome in outcomes {
            assert_eq!(outcome.delivered, 0);
            // Every outcome says why it ended: its own expiry, or the
            // server's refusal it waited out (other workers' requests fill
            // the consumer's waiting list).
            let refused_for_now = matches!(
                &outcome.end,
                FetchEnd::Status { code: 409, description } if description.contains("MaxWaiting")
            );
            assert!(
                outcome.end == FetchEnd::Expired || (max_waiting == 1 && refused_for_now),
                "max_waiting {max_waiting}: {outcome:?}"
            );
        }
    }
}

#[tokio::test]
async fn four_workers_on_one_durable_idle_without_spinning_with_max_waiting_1() {
    check_idle(1, &idle_workers(1).await);
}

#[tokio::test]
async fn four_workers_on_one_durable_idle_without_spinning_with_the_default_max_waiting() {
    check_idle(0, &idle_workers(0).await);
}

#[tokio::test]
async fn no_request_can_crash_the_worker() {
    let env = env().await;
    create_stream(&env.js, "BOUNDS", &["bounds.>"]).await;
    publish_n(&env.js, "bounds.x", 3).await;
    let (_t, target, record) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("BOUNDS", "b", "t"), target).await;
    let within = Duration::from_secs(10);
    let huge_expires = fetch_within(&child, 1, Some(Duration::MAX), within).await;
    assert!(
        huge_expires.is_err(),
        "an expires beyond any deadline is refused: {huge_expires:?}"
    );
    let huge_batch = fetch_within(&child, u64::MAX, None, within).await;
    assert!(
        huge_batch.is_err(),
        "a batch the server cannot take is refused: {huge_batch:?}"
    );
    assert_eq!(record.count(), 0, "nothing was delivered");
    // The child is still there and serves the next fetch.
    let outcome = fetch(&child, 3, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (3, 3));
}

#[tokio::test]
async fn a_max_batch_lowered_on_the_server_after_binding_is_a_clear_error() {
    let env = env().await;
    create_stream(&env.js, "LOWER", &["lower.>"]).await;
    publish_n(&env.js, "lower.x", 20).await;
    let (_t, target, record) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("LOWER", "l", "t"), target).await;
    // Another service lowers max_batch after the child bound.
    let stream = env.js.get_stream("LOWER").await.expect("stream");
    let mut config = stream
        .consumer_info("l")
        .await
        .expect("consumer")
        .config
        .clone();
    config.max_batch = 5;
    stream
        .update_consumer(config)
        .await
        .expect("lower max_batch");
    let started = Instant::now();
    let refused = fetch(&child, 10, Duration::from_secs(1)).await;
    match &refused {
        Err(Error::FetchRefused {
            code, description, ..
        }) => {
            assert_eq!(*code, 409, "{description}");
            assert!(description.contains("MaxRequestBatch"), "{description}");
        }
        other => panic!("a fetch the server refuses is an error with its code: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_millis(900));
    // The child read the new limit back: above it is refused before
    // anything reaches the server.
    let invalid = fetch(&child, 10, Duration::from_secs(1)).await;
    assert!(
        invalid
            .as_ref()
            .err()
            .and_then(Error::validation)
            .is_some_and(|v| v.has_field("batch")),
        "{invalid:?}"
    );
    // The child learned the new limit: a fetch within it works.
    let outcome = fetch(&child, 5, Duration::from_secs(1))
        .await
        .expect("a fetch within the new limit");
    assert_eq!((outcome.delivered, outcome.acked), (5, 5));
    assert_eq!(record.sequences(), vec![1, 2, 3, 4, 5]);
}

#[tokio::test]
async fn fetches_whose_callers_gave_up_are_not_served() {
    let env = env().await;
    create_stream(&env.js, "GONE", &["gone.>"]).await;
    publish_n(&env.js, "gone.x", 40).await;
    // Each delivery takes 1 s to ack: the first fetch keeps the child busy.
    let (_t, target, record) =
        spawn_target(|_| Action::AckAfter(Duration::from_millis(1000))).await;
    let child = spawn_pull(&env, ConsumerSpec::pull("GONE", "g", "t"), target).await;
    let busy = spawn_fetch(&child, 5, Duration::from_secs(1));
    wait_until("the first fetch is served", PATIENCE, || {
        record.count() == 5
    })
    .await;
    // Impatient callers: each gives up after 50 ms.
    for _ in 0..5 {
        let result = child
            .call(
                |reply| ConsumerMsg::Fetch {
                    batch: 5,
                    expires: Some(Duration::from_secs(1)),
                    reply,
                },
                Some(Duration::from_millis(50)),
            )
            .await
            .expect("call");
        assert!(matches!(result, ractor::rpc::CallResult::Timeout));
    }
    let first = busy.await.expect("join").expect("first fetch");
    assert_eq!(first.acked, 5);
    // A patient caller is served next, and only its fetch.
    let next = fetch(&child, 5, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(next.acked, 5);
    assert_eq!(
        record.sequences(),
        (1..=10).collect::<Vec<_>>(),
        "nothing was pulled for the callers that gave up"
    );
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!(stats.fetches, 2, "{stats:?}");
}

#[tokio::test]
async fn expires_is_cut_to_the_callers_own_timeout() {
    let env = env().await;
    create_stream(&env.js, "CUT", &["cut.>"]).await;
    let (_t, target, _) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("CUT", "c", "t"), target).await;
    // The caller waits 800 ms for a fetch that may wait 5 s: it gets the
    // clean empty outcome in time instead of a timed-out call.
    let started = Instant::now();
    let result = child
        .call(
            |reply| ConsumerMsg::Fetch {
                batch: 1,
                expires: Some(Duration::from_secs(5)),
                reply,
            },
            Some(Duration::from_millis(800)),
        )
        .await
        .expect("call");
    let outcome = match result {
        ractor::rpc::CallResult::Success(outcome) => outcome.expect("fetch"),
        other => panic!("the caller's timeout cut off its own fetch: {other:?}"),
    };
    assert_eq!(outcome.end, FetchEnd::Expired, "{outcome:?}");
    assert!(started.elapsed() < Duration::from_millis(800));
}

#[tokio::test]
async fn the_fetch_queue_is_bounded() {
    let env = env().await;
    create_stream(&env.js, "QUEUE", &["queue.>"]).await;
    let (_t, target, _) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("QUEUE", "q", "t"), target).await;
    // 200 fetches at once on an empty stream: the child keeps a bounded
    // queue and answers the rest at once.
    let calls = (0..200).map(|_| fetch(&child, 1, Duration::from_millis(200)));
    let started = Instant::now();
    let results = futures::future::join_all(calls).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Error::Busy { queued, .. }) if *queued == ractor_jetstream::MAX_QUEUED_FETCHES))
        .count();
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Ok(o) if o.end == FetchEnd::Expired)
                || matches!(r, Err(Error::Busy { .. }))),
        "every fetch expired empty or was refused as busy"
    );
    assert!(
        refused > 0,
        "200 queued fetches were all accepted (served one after another for {:?})",
        started.elapsed()
    );
}

/// A pull durable with `max_deliver` whose target is stopped: fetches
/// answer an error again and again, and when a target is there again,
/// every message reaches it.
async fn dead_target_loses_nothing(max_deliver: u64) {
    let env = env().await;
    let durable = format!("dead{max_deliver}");
    let spec = ConsumerSpec::pull("DEAD", &durable, "t").max_deliver(max_deliver);
    let (first_ref, first, _) = acking_target().await;
    let topology = Topology::new()
        .stream(StreamSpec::new("DEAD", ["dead.>"]))
        .consumer(spec);
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", first),
    )
    .await
    .expect("supervisor");
    publish_n(&env.js, "dead.x", 5).await;
    first_ref.stop(None);
    wait_until("the target stopped", PATIENCE, || {
        first_ref.get_status() == ractor::ActorStatus::Stopped
    })
    .await;
    // The shape of the examples' fetch loops: retry on error.
    for attempt in 0..(max_deliver + 2) {
        let result = fetch_via(&supervisor, &durable, 10, Duration::from_millis(200)).await;
        assert!(
            matches!(result, Err(Error::Unavailable { .. })),
            "attempt {attempt}: a fetch for a stopped target is refused: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_second_ref, second, record) = acking_target().await;
    supervisor
        .cast(SupervisorMsg::SetTarget {
            name: "t".into(),
            target: second.into(),
        })
        .expect("set target");
    let deadline = Instant::now() + PATIENCE;
    while record.distinct().len() < 5 && Instant::now() < deadline {
        let _ = fetch_via(&supervisor, &durable, 10, Duration::from_millis(300)).await;
    }
    assert_eq!(
        record.distinct().into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "max_deliver {max_deliver}: every message reached the new target"
    );
    let info = wait_for_consumer(&env.js, "DEAD", &durable, "all acked", |i| {
        i.ack_floor.stream_sequence == 5 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn a_dead_target_costs_no_message_its_deliveries_with_max_deliver_2() {
    dead_target_loses_nothing(2).await;
}

#[tokio::test]
async fn a_dead_target_costs_no_message_its_deliveries_with_max_deliver_3() {
    dead_target_loses_nothing(3).await;
}

#[tokio::test]
async fn a_drain_in_the_middle_of_a_fetch_keeps_its_counts() {
    let env = env().await;
    create_stream(&env.js, "MIDDRAIN", &["middrain.>"]).await;
    publish_n(&env.js, "middrain.x", 5).await;
    let (_t, target, record) = spawn_target(|d| match d.info().stream_sequence {
        1 | 2 => Action::Ack,
        _ => Action::Hold,
    })
    .await;
    let spec =
        ConsumerSpec::pull("MIDDRAIN", "m", "t").restart(ractor_jetstream::RestartKind::Temporary);
    let child = spawn_pull(&env, spec, target).await;
    let fetching = spawn_fetch(&child, 5, Duration::from_secs(1));
    wait_until("all five delivered", PATIENCE, || record.count() == 5).await;
    let report = drain(&child, Duration::from_millis(300)).await;
    assert_eq!(report.naked, 3, "{report:?}");
    let outcome = fetching
        .await
        .expect("join")
        .expect("a drained fetch reports what it did");
    assert_eq!(
        (outcome.delivered, outcome.acked, outcome.abandoned),
        (5, 2, 3),
        "{outcome:?}"
    );
    assert_eq!(outcome.end, FetchEnd::Drained);
    // The three nak'ed come back at once (not after ack_wait) to the next
    // child, and only they.
    let (_t, target, again) = acking_target().await;
    let next = spawn_pull(&env, ConsumerSpec::pull("MIDDRAIN", "m", "t"), target).await;
    let started = Instant::now();
    let outcome = fetch(&next, 5, Duration::from_secs(2))
        .await
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (3, 3), "{outcome:?}");
    // Within this one fetch, so long before the 30 s ack wait; the fetch
    // itself may run to its `expires` on a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(again.sequences(), vec![3, 4, 5]);
    wait_for_consumer(&env.js, "MIDDRAIN", "m", "all acked", |i| {
        i.ack_floor.stream_sequence == 5 && i.num_ack_pending == 0
    })
    .await;
}
