//! A fetch through a `PullHandle` from a task, while the child's worker is
//! idle, is served in the calling task itself (the worker's desk, in
//! `consumer/pull/desk.rs`). These tests hold it to what a queued fetch
//! promises: the same outcomes and server state; a caller that gives up
//! halfway loses nothing; a child killed meanwhile gives back what it held
//! at once; and between such fetches the worker's task still hears late
//! decisions and a drain.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use ractor::DerivedActorRef;
use ractor_jetstream::{
    ConsumerSpec, Delivery, Error, PullHandle, StreamSpec, SupervisorArgs, SupervisorHandle,
    Topology,
};

/// A supervisor over `stream` with one pull durable, and a handle on its
/// child.
async fn supervised_pull(
    env: &Env,
    stream: StreamSpec,
    spec: ConsumerSpec,
    target: DerivedActorRef<Delivery>,
) -> (SupervisorHandle, PullHandle) {
    let durable = spec.durable.clone();
    let topology = Topology::new().stream(stream).consumer(spec);
    let (supervisor, _) = SupervisorHandle::spawn(
        None,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    let pull = supervisor.pull(&durable).await.expect("pull handle");
    (supervisor, pull)
}

/// Fetches from a task of its own until `done` holds for the server's view
/// of the consumer, and returns how many fetches it made.
async fn fetch_in_task_until(
    pull: &PullHandle,
    env: &Env,
    stream: &'static str,
    durable: &'static str,
    done: impl Fn(&async_nats::jetstream::consumer::Info) -> bool + Send + Sync + 'static,
) -> u64 {
    let pull = pull.clone();
    let js = env.js.clone();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut fetches = 0;
        loop {
            let outcome = pull
                .fetch(8, Some(Duration::from_millis(200)))
                .await
                .expect("fetch");
            fetches += 1;
            if outcome.is_empty() && done(&consumer_info(&js, stream, durable).await) {
                return fetches;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not done after {fetches} fetches"
            );
        }
    })
    .await
    .expect("fetch task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_from_a_task_is_served_there_and_settles_as_a_queued_one_would() {
    let env = env().await;
    // Every fifth is termed, every seventh (not fifth) nak'ed once, the
    // rest acked.
    let (_t, target, record) = spawn_target(|d| {
        let info = d.info();
        match (info.stream_sequence, info.delivered) {
            (s, _) if s % 5 == 0 => Action::Term,
            (s, 1) if s % 7 == 0 => Action::Nak(None),
            _ => Action::Ack,
        }
    })
    .await;
    let (_supervisor, pull) = supervised_pull(
        &env,
        StreamSpec::new("DESK", ["desk.>"]),
        ConsumerSpec::pull("DESK", "d", "t"),
        target,
    )
    .await;
    let published = publish_n(&env.js, "desk.x", 60).await;

    let fetches = fetch_in_task_until(&pull, &env, "DESK", "d", |i| {
        i.ack_floor.stream_sequence == 60 && i.num_ack_pending == 0
    })
    .await;

    let naked: Vec<u64> = published
        .iter()
        .copied()
        .filter(|s| s % 7 == 0 && s % 5 != 0)
        .collect();
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for sequence in record.sequences() {
        *times.entry(sequence).or_default() += 1;
    }
    for &sequence in &published {
        let expected = if naked.contains(&sequence) { 2 } else { 1 };
        assert_eq!(
            times.get(&sequence),
            Some(&expected),
            "stream sequence {sequence}"
        );
    }
    let stats = pull.stats().await.expect("stats");
    assert_eq!(stats.fetches, fetches, "{stats:?}");
    // A fetch finds the worker busy only while its task handles something
    // between fetches (a timer, a stray reply): rarely.
    assert!(
        stats.fetches_in_caller * 2 >= stats.fetches,
        "most fetches found the worker idle and were served in the caller's task: {stats:?}"
    );
    assert_eq!(stats.termed, 12);
    assert_eq!(stats.naked, naked.len() as u64);
    assert_eq!(stats.acked, 60 - 12);
    // The server's side: everything settled, nothing left to deliver (its
    // count of redelivered messages covers only unacked ones, so it is 0).
    let info = consumer_info(&env.js, "DESK", "d").await;
    assert_eq!(
        (
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        ),
        (60, 0, 0)
    );
    assert_eq!(info.delivered.consumer_sequence, 60 + naked.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_halfway_leaves_the_fetch_to_finish_and_nothing_is_lost() {
    let env = env().await;
    // Each decision takes 150 ms; the caller gives up after 100 ms.
    let (_t, target, record) = spawn_target(|_| Action::AckAfter(Duration::from_millis(150))).await;
    let (_supervisor, pull) = supervised_pull(
        &env,
        StreamSpec::new("GIVEUP", ["giveup.>"]),
        ConsumerSpec::pull("GIVEUP", "g", "t").ack_wait(Duration::from_secs(30)),
        target,
    )
    .await;
    let first = publish_n(&env.js, "giveup.x", 5).await;

    let caller = pull.clone();
    let gave_up = tokio::spawn(async move {
        tokio::time::timeout(
            Duration::from_millis(100),
            caller.fetch(5, Some(Duration::from_secs(1))),
        )
        .await
    })
    .await
    .expect("fetch task");
    assert!(
        gave_up.is_err(),
        "the caller gave up before the answer: {gave_up:?}"
    );

    // The fetch went on without its caller: all five acked, none again.
    let info = wait_for_consumer(&env.js, "GIVEUP", "g", "the first five acked", |i| {
        i.ack_floor.stream_sequence == 5 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(record.sequences(), first);

    // And the desk was left as it should be: the next fetch is served.
    let second = publish_n(&env.js, "giveup.x", 3).await;
    let outcome = spawn_handle_fetch(&pull, 3, Duration::from_secs(2))
        .await
        .expect("fetch task")
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (3, 3), "{outcome:?}");
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(record.sequences(), all, "every message once, in order");
    let stats = pull.stats().await.expect("stats");
    assert_eq!(
        (stats.fetches, stats.fetches_in_caller),
        (2, 2),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_killed_while_a_caller_serves_its_fetch_gives_back_what_it_held_at_once() {
    let env = env().await;
    // Held on first delivery (in flight when the child dies), acked after.
    let (_t, target, record) = spawn_target(|d| match d.info().delivered {
        1 => Action::Hold,
        _ => Action::Ack,
    })
    .await;
    let (_supervisor, pull) = supervised_pull(
        &env,
        StreamSpec::new("KILLD", ["killd.>"]),
        ConsumerSpec::pull("KILLD", "k", "t").ack_wait(Duration::from_secs(30)),
        target,
    )
    .await;
    let published = publish_n(&env.js, "killd.x", 4).await;
    let old = pull.consumer().child().expect("a running child");

    let fetching = spawn_handle_fetch(&pull, 4, Duration::from_secs(5));
    wait_until("all four delivered once", PATIENCE, || {
        record.sequences().len() == 4
    })
    .await;
    let stats = pull.stats().await.expect("stats");
    assert_eq!(
        stats.fetches_in_caller, 1,
        "served in the caller's task: {stats:?}"
    );
    old.kill();
    let killed_at = tokio::time::Instant::now();
    match fetching.await.expect("the caller's task does not fail") {
        Err(Error::FetchInterrupted { durable, .. }) => assert_eq!(durable, "k"),
        other => panic!("the caller gets a clear error, got {other:?}"),
    }

    // The restarted child gets all four again at once, not after the
    // 30 s ack wait.
    while record.with(|r| r.seen.iter().filter(|s| s.delivered == 2).count()) < 4 {
        assert!(
            killed_at.elapsed() < Duration::from_secs(10),
            "what the killed child held did not come back"
        );
        handle_fetch_while_restarting(&pull, 4, Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again: Vec<u64> = record.with(|r| {
        r.seen
            .iter()
            .filter(|s| s.delivered == 2)
            .map(|s| s.stream_sequence)
            .collect()
    });
    assert_eq!(again, published, "each held message again, in order");
    let new = pull.consumer().child().expect("the new child");
    assert_ne!(new.get_id(), old.get_id());
    wait_for_consumer(&env.js, "KILLD", "k", "all four acked", |i| {
        i.ack_floor.stream_sequence == 4 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_fetches_served_by_callers_the_worker_still_hears_late_decisions_and_a_drain() {
    let env = env().await;
    create_stream(&env.js, "LATE", &["late.>"]).await;
    publish_n(&env.js, "late.x", 2).await;
    let (target, mut rx) = forwarding_target().await;
    let spec = ConsumerSpec::pull("LATE", "l", "t")
        .ack_wait(Duration::from_secs(5))
        .max_hold(Duration::from_millis(300));
    let child = spawn_pull(&env, spec, target.get_derived()).await;
    let pull = PullHandle::from_child("l", child.clone());

    // Both are held past the hold: the fetch, served in its caller's task,
    // ends with them timed out.
    let fetching = spawn_handle_fetch(&pull, 2, Duration::from_secs(1));
    let first = next(&mut rx).await;
    let second = next(&mut rx).await;
    let outcome = fetching.await.expect("fetch task").expect("fetch");
    assert_eq!(outcome.timed_out, 2, "{outcome:?}");

    // Decided only now, with no fetch open: the worker's own task must
    // hear them (its channels were handed back when the caller left).
    first.ack();
    second.ack();
    let stats = wait_for_stats(pull.consumer(), "the late decisions were not heard", |s| {
        s.late_decisions == 2
    })
    .await;
    assert_eq!(
        (stats.fetches, stats.fetches_in_caller),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.acked, 0, "a late ack is not counted as an ack");

    // A drain, with no fetch open, reaches the worker's task too.
    let report = tokio::time::timeout(PATIENCE, pull.drain(Duration::from_secs(1)))
        .await
        .expect("the drain is answered")
        .expect("drain");
    assert_eq!((report.settled, report.naked), (0, 0), "{report:?}");
    wait_until("the drained child stops", PATIENCE, || {
        child.get_status() == ractor::ActorStatus::Stopped
    })
    .await;
}
