//! The pull child against a real nats-server: exact counts, clean expiry,
//! resuming from the durable offset, the decisions, and bad requests.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use ractor::{Actor, ActorRef};
use ractor_jetstream::{ConsumerArgs, ConsumerMsg, ConsumerSpec, Error, PullSpec};

/// Fetches until a fetch expires empty; returns the outcomes.
async fn fetch_all(
    child: &ActorRef<ConsumerMsg>,
    batch: u64,
) -> Vec<ractor_jetstream::FetchOutcome> {
    let mut outcomes = Vec::new();
    loop {
        let outcome = fetch(child, batch, Duration::from_millis(300))
            .await
            .expect("fetch");
        assert_eq!(
            outcome.delivered,
            outcome.acked + outcome.naked + outcome.termed + outcome.abandoned + outcome.timed_out,
            "every delivery is settled before the reply: {outcome:?}"
        );
        assert!(
            outcome.delivered <= batch,
            "{outcome:?} exceeds batch {batch}"
        );
        let done = outcome.delivered == 0;
        outcomes.push(outcome);
        if done {
            return outcomes;
        }
        assert!(outcomes.len() < 1000, "fetching never ends");
    }
}

#[tokio::test]
async fn pulling_n_forwards_exactly_n_below_at_and_above_batch() {
    let env = env().await;
    create_stream(&env.js, "EXACT", &["exact.>"]).await;
    let seqs = publish_n(&env.js, "exact.x", 250).await;
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());

    for (durable, batch, sizes) in [
        ("above", 100, vec![100, 100, 50, 0]),
        ("equal", 250, vec![250, 0]),
        ("below", 500, vec![250, 0]),
    ] {
        let (_t, target, record) = acking_target().await;
        let child = spawn_pull(&env, ConsumerSpec::pull("EXACT", durable, "t"), target).await;
        let outcomes = fetch_all(&child, batch).await;
        let delivered: Vec<u64> = outcomes.iter().map(|o| o.delivered).collect();
        assert_eq!(delivered, sizes, "{durable}: fetch sizes");
        assert!(
            outcomes.last().is_some_and(|o| o.expired),
            "{durable}: the last fetch expires empty"
        );
        assert!(
            outcomes[..outcomes.len() - 1]
                .iter()
                .all(|o| o.acked == o.delivered)
        );
        // Exactly the stream's sequences, each once.
        let seen = record.sequences();
        assert_eq!(
            seen,
            (1..=250).collect::<Vec<_>>(),
            "{durable}: forwarded in order, none twice"
        );
        let info = wait_for_consumer(&env.js, "EXACT", durable, "all acked", |i| {
            i.ack_floor.stream_sequence == 250 && i.num_ack_pending == 0
        })
        .await;
        assert_eq!(info.num_pending, 0);
        assert_eq!(info.num_redelivered, 0);
    }
}

#[tokio::test]
async fn expiry_with_nothing_available_is_a_clean_empty_outcome() {
    let env = env().await;
    create_stream(&env.js, "EMPTY", &["empty.>"]).await;
    let (_t, target, record) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("EMPTY", "idle", "t"), target).await;
    for expires in [Duration::from_millis(200), Duration::from_millis(700)] {
        let started = Instant::now();
        let outcome = fetch(&child, 10, expires)
            .await
            .expect("an empty fetch is not an error");
        let took = started.elapsed();
        assert_eq!(outcome.delivered, 0);
        assert!(outcome.expired, "{outcome:?}");
        assert!(
            took >= expires.mul_f64(0.9),
            "returned after {took:?}, before expires {expires:?}"
        );
        assert!(
            took < expires + Duration::from_millis(1500),
            "returned after {took:?}, expires {expires:?}"
        );
    }
    assert_eq!(record.count(), 0);
    let stats = child
        .call(ConsumerMsg::Stats, None)
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!((stats.fetches, stats.empty_fetches), (2, 2));
}

#[tokio::test]
async fn a_later_fetch_resumes_from_the_durable_offset_across_fetches_and_a_restart() {
    let env = env().await;
    create_stream(&env.js, "RESUME", &["resume.>"]).await;
    publish_n(&env.js, "resume.x", 30).await;
    let (_t, target, record) = acking_target().await;
    let spec = ConsumerSpec::pull("RESUME", "r", "t");
    let child = spawn_pull(&env, spec.clone(), target.clone()).await;

    let first = fetch(&child, 10, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!((first.delivered, first.acked), (10, 10));
    assert_eq!(record.sequences(), (1..=10).collect::<Vec<_>>());
    wait_for_consumer(&env.js, "RESUME", "r", "ack floor 10", |i| {
        i.ack_floor.stream_sequence == 10 && i.num_ack_pending == 0 && i.num_pending == 20
    })
    .await;

    let second = fetch(&child, 10, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(second.delivered, 10);
    assert_eq!(record.sequences(), (1..=20).collect::<Vec<_>>());

    // A new child for the same durable (as after a crash) resumes at 21.
    child.kill();
    child.wait(Some(PATIENCE)).await.expect("child stops");
    let child = spawn_pull(&env, spec, target).await;
    let third = fetch(&child, 100, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(third.delivered, 10);
    assert_eq!(record.sequences(), (1..=30).collect::<Vec<_>>());
    let info = wait_for_consumer(&env.js, "RESUME", "r", "ack floor 30", |i| {
        i.ack_floor.stream_sequence == 30 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0, "nothing acked came back");
}

#[tokio::test]
async fn nak_is_delivered_again_with_count_two_and_after_the_delay() {
    let env = env().await;
    create_stream(&env.js, "NAK", &["nak.>"]).await;
    publish_n(&env.js, "nak.x", 2).await;
    let delay = Duration::from_millis(800);
    // Seq 1 is nak'ed at once; seq 2 with a delay. Second deliveries are acked.
    let (_t, target, record) =
        spawn_target(
            move |d| match (d.info().stream_sequence, d.info().delivered) {
                (1, 1) => Action::Nak(None),
                (2, 1) => Action::Nak(Some(delay)),
                _ => Action::Ack,
            },
        )
        .await;
    let child = spawn_pull(&env, ConsumerSpec::pull("NAK", "n", "t"), target).await;
    let first = fetch(&child, 2, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!((first.delivered, first.naked), (2, 2));
    let deadline = Instant::now() + PATIENCE;
    while record.with(|r| r.seen.iter().filter(|s| s.delivered == 2).count()) < 2 {
        assert!(
            Instant::now() < deadline,
            "nak'ed messages did not come back"
        );
        fetch(&child, 2, Duration::from_millis(300))
            .await
            .expect("fetch");
    }
    let seen = record.with(|r| r.seen.clone());
    let first_of = |seq| {
        seen.iter()
            .find(|s| s.stream_sequence == seq && s.delivered == 1)
            .expect("first")
            .at
    };
    let again_of = |seq| {
        seen.iter()
            .find(|s| s.stream_sequence == seq && s.delivered == 2)
            .expect("again")
            .at
    };
    assert!(
        again_of(2).duration_since(first_of(2)) >= delay,
        "a delayed nak came back after {:?}, before its {delay:?} delay",
        again_of(2).duration_since(first_of(2))
    );
    assert_eq!(
        record.times_seen().values().copied().collect::<Vec<_>>(),
        vec![2, 2]
    );
    wait_for_consumer(&env.js, "NAK", "n", "both acked", |i| {
        i.ack_floor.stream_sequence == 2 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn term_is_never_delivered_again_and_a_dropped_delivery_is() {
    let env = env().await;
    create_stream(&env.js, "TERM", &["term.>"]).await;
    publish_n(&env.js, "term.x", 3).await;
    // 1 is termed, 2 is dropped once, 3 is acked.
    let (_t, target, record) =
        spawn_target(|d| match (d.info().stream_sequence, d.info().delivered) {
            (1, _) => Action::Term,
            (2, 1) => Action::Drop,
            _ => Action::Ack,
        })
        .await;
    let child = spawn_pull(&env, ConsumerSpec::pull("TERM", "t", "t"), target).await;
    let first = fetch(&child, 3, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(
        (first.delivered, first.termed, first.abandoned, first.acked),
        (3, 1, 1, 1)
    );
    let second = fetch(&child, 3, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(
        (second.delivered, second.acked),
        (1, 1),
        "only the dropped one comes back: {second:?}"
    );
    let empty = fetch(&child, 3, Duration::from_millis(300))
        .await
        .expect("fetch");
    assert!(empty.is_empty() && empty.expired);
    assert_eq!(
        record.times_seen(),
        [(1, 1), (2, 2), (3, 1)].into_iter().collect()
    );
    let info = wait_for_consumer(&env.js, "TERM", "t", "all settled", |i| {
        i.ack_floor.stream_sequence == 3 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
}

#[tokio::test]
async fn no_decision_within_the_timeout_is_nakd_and_delivered_again() {
    let env = env().await;
    create_stream(&env.js, "SLOW", &["slow.>"]).await;
    publish_n(&env.js, "slow.x", 2).await;
    let (_t, target, record) =
        spawn_target(|d| match (d.info().stream_sequence, d.info().delivered) {
            (1, 1) => Action::Hold,
            _ => Action::Ack,
        })
        .await;
    let spec = ConsumerSpec::pull("SLOW", "s", "t")
        .ack_wait(Duration::from_secs(30))
        .max_hold(Duration::from_millis(300));
    let child = spawn_pull(&env, spec, target).await;
    let started = Instant::now();
    let first = fetch(&child, 2, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(
        (first.delivered, first.acked, first.timed_out),
        (2, 1, 1),
        "{first:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    // It comes back long before ack_wait (30 s).
    let second = fetch(&child, 2, Duration::from_secs(2))
        .await
        .expect("fetch");
    assert_eq!((second.delivered, second.acked), (1, 1));
    assert!(started.elapsed() < Duration::from_secs(10));
    let again = record.with(|r| {
        r.seen
            .iter()
            .filter(|s| s.stream_sequence == 1)
            .map(|s| s.delivered)
            .collect::<Vec<_>>()
    });
    assert_eq!(again, vec![1, 2]);
    wait_for_consumer(&env.js, "SLOW", "s", "both acked", |i| {
        i.ack_floor.stream_sequence == 2 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn bad_requests_get_their_error_and_nothing_moves() {
    let env = env().await;
    create_stream(&env.js, "BAD", &["bad.>"]).await;
    publish_n(&env.js, "bad.x", 5).await;
    let (_t, target, record) = acking_target().await;
    let spec = ConsumerSpec::new(
        "BAD",
        "b",
        "t",
        PullSpec::default()
            .max_batch(10)
            .max_expires(Duration::from_secs(1)),
    );
    let child = spawn_pull(&env, spec, target.clone()).await;
    let invalid_field = |result: Result<_, Error>| -> String {
        let err = result.expect_err("a bad request is an error");
        let fields = err
            .validation()
            .unwrap_or_else(|| panic!("expected a validation error, got {err}"));
        fields.errors()[0].field.clone()
    };
    assert_eq!(
        invalid_field(fetch(&child, 0, Duration::from_millis(500)).await),
        "batch"
    );
    assert_eq!(
        invalid_field(fetch(&child, 11, Duration::from_millis(500)).await),
        "batch"
    );
    assert_eq!(
        invalid_field(fetch(&child, 1, Duration::ZERO).await),
        "expires"
    );
    assert_eq!(
        invalid_field(fetch(&child, 1, Duration::from_secs(2)).await),
        "expires"
    );

    // A push child answers a fetch with WrongMode.
    create_stream(&env.js, "PUSHBAD", &["pushbad.>"]).await;
    let (push_child, _) = Actor::spawn(
        None,
        ractor_jetstream::PushConsumer,
        ConsumerArgs {
            connection: env.js.clone().into(),
            spec: ConsumerSpec::push("PUSHBAD", "p", "t"),
            target: target.into(),
        },
    )
    .await
    .expect("spawn push child");
    match fetch(&push_child, 1, Duration::from_millis(500)).await {
        Err(Error::WrongMode { durable, .. }) => assert_eq!(durable, "p"),
        other => panic!("expected WrongMode, got {other:?}"),
    }

    // Nothing was delivered; everything is still pending on the server.
    assert_eq!(record.count(), 0);
    let info = consumer_info(&env.js, "BAD", "b").await;
    assert_eq!(
        (
            info.delivered.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        ),
        (0, 0, 5)
    );
    // And the child still works.
    let ok = fetch(&child, 10, Duration::from_millis(500))
        .await
        .expect("fetch");
    assert_eq!(ok.delivered, 5);
    assert_eq!(record.distinct(), (1..=5).collect::<BTreeSet<_>>());
}

/// While a fetch runs, its decisions wait in the child's outbox (at most
/// 1 ms) to leave together. A child killed with acks in it still sends
/// them: nothing acked comes again, and what was not decided does.
#[tokio::test]
async fn acks_held_in_the_outbox_survive_a_kill_in_the_middle_of_a_fetch() {
    let env = env().await;
    create_stream(&env.js, "LINGER", &["linger.>"]).await;
    let published = publish_n(&env.js, "linger.x", 10).await;
    let (target, mut rx) = forwarding_target().await;
    let spec = ConsumerSpec::pull("LINGER", "l", "t");
    let child = spawn_pull(&env, spec.clone(), target.get_derived()).await;
    let fetching = spawn_fetch(&child, 10, Duration::from_secs(5));
    let mut deliveries = Vec::new();
    for _ in 0..10 {
        deliveries.push(next(&mut rx).await);
    }
    // The first five acked; the child is killed at once, the fetch still
    // open (five undecided).
    let undecided = deliveries.split_off(5);
    for delivery in deliveries {
        delivery.ack();
    }
    child.kill();
    let _ = fetching.await;
    drop(undecided);
    let info = wait_for_consumer(&env.js, "LINGER", "l", "the five acks", |i| {
        i.ack_floor.stream_sequence == published[4]
    })
    .await;
    assert!(info.num_ack_pending <= 5, "{info:?}");

    // A new child gets the five undecided ones again, and only those.
    let (_acking, derived, record) = acking_target().await;
    let child = spawn_pull(&env, spec, derived).await;
    let deadline = Instant::now() + PATIENCE;
    while record.distinct().len() < 5 {
        assert!(Instant::now() < deadline, "{:?}", record.sequences());
        fetch(&child, 10, Duration::from_millis(300))
            .await
            .expect("fetch");
    }
    assert_eq!(
        record.distinct().into_iter().collect::<Vec<_>>(),
        published[5..].to_vec(),
        "the undecided came again, the acked did not"
    );
    wait_for_consumer(&env.js, "LINGER", "l", "everything acked", |i| {
        i.ack_floor.stream_sequence == published[9] && i.num_ack_pending == 0
    })
    .await;
}

/// A decision made while a drain waits for the others is sent at once,
/// not held in the outbox until the drain ends (which may be longer than
/// the ack wait).
#[tokio::test]
async fn a_decision_made_during_a_drain_reaches_the_server_before_the_drain_ends() {
    let env = env().await;
    create_stream(&env.js, "DRAINACK", &["drainack.>"]).await;
    let published = publish_n(&env.js, "drainack.x", 2).await;
    let (target, mut rx) = forwarding_target().await;
    let child = spawn_pull(
        &env,
        ConsumerSpec::pull("DRAINACK", "d", "t"),
        target.get_derived(),
    )
    .await;
    let fetching = spawn_fetch(&child, 2, Duration::from_secs(5));
    let (first, second) = (next(&mut rx).await, next(&mut rx).await);
    // A handle whose port is fetched now, while the child still answers.
    let pull = ractor_jetstream::PullHandle::from_child("d", child.clone());
    assert!(pull.stats().await.is_ok());
    let draining = {
        let child = child.clone();
        tokio::spawn(async move { drain(&child, Duration::from_secs(60)).await })
    };
    // The drain has begun once the child refuses new fetches (through the
    // handle's port, which does not wait for the busy child).
    let deadline = Instant::now() + PATIENCE;
    loop {
        match pull.fetch(1, None).await {
            Err(Error::Draining { .. }) => break,
            other => assert!(
                Instant::now() < deadline,
                "the drain never began: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.ack();
    // Well before the drain's 60 s: the ack is on the server while the
    // second delivery is still undecided.
    let started = Instant::now();
    loop {
        let info = consumer_info(&env.js, "DRAINACK", "d").await;
        if info.ack_floor.stream_sequence == published[0] {
            assert_eq!(info.num_ack_pending, 1, "{info:?}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the ack waited for the drain: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    second.ack();
    let report = draining.await.expect("drain task");
    assert_eq!(report.settled, 2, "{report:?}");
    let _ = fetching.await;
    wait_for_consumer(&env.js, "DRAINACK", "d", "both acked", |i| {
        i.ack_floor.stream_sequence == published[1] && i.num_ack_pending == 0
    })
    .await;
}
