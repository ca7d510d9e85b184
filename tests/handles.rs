//! The typed handles: one `Result<_, Error>` per call, no call timeout that
//! can cut off a fetch, the library's own error for a stopped child or a
//! failed start, and a pull handle that finds its child again after a
//! restart.

mod common;

use std::time::Duration;

use common::*;
use ractor::Actor;
use ractor_jetstream::{
    ConsumerSpec, Error, ErrorKind, JetStreamSupervisor, PullHandle, StreamSpec, SupervisorArgs,
    SupervisorHandle, SupervisorMsg, Topology, UnavailableReason,
};

fn topology(stream: &str, subjects: &str, durable: &str) -> Topology {
    Topology::new()
        .stream(StreamSpec::new(stream, [subjects]))
        .consumer(ConsumerSpec::pull(stream, durable, "t"))
}

#[tokio::test]
async fn a_pull_handle_fetches_exactly_what_was_published_and_an_expired_fetch_is_empty() {
    let env = env().await;
    let (_t, target, record) = acking_target().await;
    let args = SupervisorArgs::new(env.js.clone(), topology("H", "h.>", "h")).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let published = publish_n(&env.js, "h.x", 7).await;
    let pull = supervisor.pull("h").await.expect("pull handle");

    let outcome = pull
        .fetch(10, Some(Duration::from_millis(300)))
        .await
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (7, 7), "{outcome:?}");
    assert_eq!(record.sequences(), published);
    let empty = pull
        .fetch(10, Some(Duration::from_millis(100)))
        .await
        .expect("an expired fetch is not an error");
    assert!(empty.is_empty() && empty.expired, "{empty:?}");

    let stats = pull.stats().await.expect("stats");
    assert_eq!((stats.delivered, stats.acked, stats.fetches), (7, 7, 2));
    // The server takes acks in from a queue of its own, so a consumer info
    // asked right after them on the same connection may not show them yet.
    wait_for_consumer(&env.js, "H", "h", "all 7 acked", |info| {
        (info.num_ack_pending, info.ack_floor.stream_sequence) == (0, 7)
    })
    .await;
}

#[tokio::test]
async fn a_fetch_through_a_handle_is_never_cut_off_while_the_target_still_decides() {
    let env = env().await;
    // The target takes 3 s per message, far past the fetch's `expires`;
    // a call timeout of `expires` plus a margin would have cut it off.
    let (_t, target, record) = spawn_target(|_| Action::AckAfter(Duration::from_secs(3))).await;
    let args = SupervisorArgs::new(env.js.clone(), topology("SLOWH", "slowh.>", "slow"))
        .target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let published = publish_n(&env.js, "slowh.x", 2).await;
    let outcome = supervisor
        .fetch("slow", 2, Some(Duration::from_millis(200)))
        .await
        .expect("fetch");
    assert_eq!((outcome.delivered, outcome.acked), (2, 2), "{outcome:?}");
    assert_eq!(record.sequences(), published);
    // The acks are sent when the fetch answers; the server applies them
    // a moment later.
    let info = wait_for_consumer(&env.js, "SLOWH", "slow", "both acked", |i| {
        i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 2
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
}

#[tokio::test]
async fn a_pull_handle_finds_its_child_again_after_a_restart_and_nothing_is_lost() {
    let env = env().await;
    let (_t, target, record) = acking_target().await;
    let args =
        SupervisorArgs::new(env.js.clone(), topology("RH", "rh.>", "rh")).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(Some("handles-restart".into()), args)
        .await
        .expect("supervisor");
    let pull = supervisor.pull("rh").await.expect("pull handle");
    let first = publish_n(&env.js, "rh.x", 3).await;
    assert_eq!(pull.fetch(3, None).await.expect("fetch").acked, 3);

    let old = pull.consumer().child().expect("a running child");
    assert_eq!(
        old.get_name().as_deref(),
        Some("handles-restart/RH/rh"),
        "the documented registered name"
    );
    old.kill();
    let second = publish_n(&env.js, "rh.x", 4).await;
    // While the child restarts, a fetch is answered `Unavailable
    // (Restarting)` by the supervisor, or served by the new child.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let outcome = loop {
        match pull.fetch(10, Some(Duration::from_millis(300))).await {
            Ok(outcome) if outcome.delivered > 0 => break outcome,
            Ok(_) => {}
            Err(Error::Unavailable {
                reason: UnavailableReason::Restarting { .. },
                ..
            }) => {}
            Err(err) => panic!("unexpected error while the child restarts: {err}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the handle never reached the new child"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(outcome.acked, 4, "{outcome:?}");
    let new = pull.consumer().child().expect("the new child");
    assert_ne!(new.get_id(), old.get_id());
    let all: Vec<u64> = first.iter().chain(&second).copied().collect();
    assert_eq!(record.sequences(), all, "every message once, in order");
    // The acks may not show yet (see above).
    wait_for_consumer(&env.js, "RH", "rh", "every message acked", |info| {
        (info.num_ack_pending, info.ack_floor.stream_sequence) == (0, 7)
    })
    .await;
}

#[tokio::test]
async fn a_call_to_a_stopped_child_is_answered_with_the_librarys_error() {
    let env = env().await;
    create_stream(&env.js, "STOPPED", &["stopped.>"]).await;
    let (_t, target, _record) = acking_target().await;
    let child = spawn_pull(&env, ConsumerSpec::pull("STOPPED", "s", "t"), target).await;
    let pull = PullHandle::from_child("s", child.clone());
    child.stop(None);
    child.wait(Some(PATIENCE)).await.expect("stopped");

    for err in [
        pull.fetch(1, Some(Duration::from_millis(100)))
            .await
            .expect_err("fetch from a stopped child"),
        pull.stats().await.expect_err("stats of a stopped child"),
    ] {
        assert!(
            matches!(
                &err,
                Error::Unavailable {
                    durable,
                    reason: UnavailableReason::Stopped,
                } if durable == "s"
            ),
            "{err:?}"
        );
        assert_eq!(err.kind(), ErrorKind::Unavailable);
    }
}

#[tokio::test]
async fn a_failed_start_is_the_librarys_error_without_a_downcast() {
    let env = env().await;
    // The consumer's stream does not cover its filter: refused before
    // anything is created.
    let topology = Topology::new()
        .stream(StreamSpec::new("START", ["start.>"]))
        .consumer(ConsumerSpec::pull("START", "s", "t").filter(["elsewhere.>"]));
    let (_t, target, _record) = acking_target().await;
    let args = SupervisorArgs::new(env.js.clone(), topology.clone()).target("t", target.clone());
    let err = SupervisorHandle::spawn(None, args)
        .await
        .expect_err("an invalid topology");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        err.validation()
            .is_some_and(|v| v.has_field("consumers[0].filter_subjects[0]")),
        "{err}"
    );
    // The same through ractor's own spawn, converted by `From<SpawnErr>`.
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let spawned = Actor::spawn(None, JetStreamSupervisor, args).await;
    let err = Error::from(spawned.expect_err("an invalid topology"));
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(
        common::try_consumer_info(&env.js, "START", "s")
            .await
            .is_err(),
        "nothing was created"
    );
}

/// A call through ractor's own macros needs no `??` into `Box<dyn Error>`.
async fn status_via_macro(supervisor: &ractor::ActorRef<SupervisorMsg>) -> Result<usize, Error> {
    let status = ractor::call_t!(supervisor, SupervisorMsg::Status, 5_000)?;
    Ok(status.children.len())
}

#[tokio::test]
async fn a_ractor_call_converts_into_the_librarys_error() {
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let args =
        SupervisorArgs::new(env.js.clone(), topology("CONV", "conv.>", "c")).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    assert_eq!(
        status_via_macro(supervisor.actor()).await.expect("status"),
        1
    );
    supervisor.actor().stop(None);
    supervisor
        .actor()
        .wait(Some(PATIENCE))
        .await
        .expect("stopped");
    let err = status_via_macro(supervisor.actor())
        .await
        .expect_err("the supervisor is gone");
    assert_eq!(err.kind(), ErrorKind::Actor, "{err}");
    let err = supervisor
        .status()
        .await
        .expect_err("the supervisor is gone");
    assert_eq!(err.kind(), ErrorKind::Actor, "{err}");
}
