//! Continuous pull consume and priority groups against a real nats-server:
//! a continuous child delivers without fetches and within its window; a
//! pinned-client group gives every message to one member while another
//! stands by, hands over at once when the pinned member drains, and lets a
//! child that lost its pin stand by without restarting; an overflow child
//! is served only while the consumer is behind; a durable created
//! without the group is refused, and every bad setting is named.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PriorityPolicy as ServerPriorityPolicy};
use common::*;
use ractor_jetstream::{
    ConsumerSpec, ConsumerStats, Error, ErrorKind, ModeSpec, PrioritySpec, PullSpec, StreamSpec,
    SupervisorArgs, SupervisorHandle, Topology,
};

/// The pin's timeout in the pinned tests: a takeover well below it was
/// caused by the release, not by the timeout.
const PIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Polls an async `check` until it holds, or panics after `timeout`
/// naming `what`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One stream and one continuous pull durable on it, for target `"t"`.
fn continuous_topology(stream: &str, subjects: &str, durable: &str, pull: PullSpec) -> Topology {
    Topology::new()
        .stream(StreamSpec::new(stream, [subjects]))
        .consumer(ConsumerSpec::new(stream, durable, "t", pull))
}

/// A continuous durable in the pinned-client group `G`.
fn pinned_topology(stream: &str, subjects: &str, durable: &str) -> Topology {
    continuous_topology(
        stream,
        subjects,
        durable,
        PullSpec::continuous()
            .window(8)
            .priority(PrioritySpec::pinned("G", PIN_TIMEOUT)),
    )
}

/// The member's child's counters.
async fn stats(member: &Member, durable: &str) -> ConsumerStats {
    SupervisorHandle::from(member.supervisor.clone())
        .consumer(durable)
        .await
        .expect("consumer handle")
        .stats()
        .await
        .expect("stats")
}

/// How often the member's child was restarted.
async fn restarts(member: &Member, durable: &str) -> u64 {
    let status = SupervisorHandle::from(member.supervisor.clone())
        .status()
        .await
        .expect("status");
    status.child(durable).expect("the child's status").restarts
}

/// Two members of one pinned durable, and the 200 messages published to
/// them delivered, every one once and all to the same member. Returns the
/// members, pinned one first, and the sequences.
async fn pinned_pair(env: &Env, topology: Topology, subject: &str) -> (Member, Member, Vec<u64>) {
    let first = spawn_member(env, topology.clone()).await;
    let second = spawn_member(env, topology).await;
    let published = publish_n(&env.js, subject, 200).await;
    wait_until(
        "200 messages delivered across the members",
        PATIENCE,
        || times_seen_across(&[&first.record, &second.record]).len() == 200,
    )
    .await;
    let (pinned, standby) = if first.record.count() > 0 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(
        pinned.record.sequences(),
        published,
        "every message once, in order, at the pinned member"
    );
    assert_eq!(
        standby.record.count(),
        0,
        "the standby got none: {:?}",
        standby.record.sequences()
    );
    (pinned, standby, published)
}

#[tokio::test]
async fn a_continuous_child_delivers_every_message_once_without_a_fetch_and_refuses_fetches() {
    let env = env().await;
    create_stream(&env.js, "CONT", &["cont.>"]).await;
    let before = publish_n(&env.js, "cont.x", 300).await;
    let (_t, target, record) = acking_target().await;
    let topology = continuous_topology("CONT", "cont.>", "c", PullSpec::continuous());
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let after = publish_n(&env.js, "cont.x", 200).await;

    wait_until("500 distinct sequences at the target", PATIENCE, || {
        record.distinct().len() == 500
    })
    .await;
    let all: Vec<u64> = before.iter().chain(&after).copied().collect();
    assert_eq!(record.distinct(), all.iter().copied().collect());
    assert!(
        record.times_seen().values().all(|&n| n == 1),
        "a sequence seen twice: {:?}",
        record
            .times_seen()
            .iter()
            .filter(|(_, n)| **n > 1)
            .collect::<Vec<_>>()
    );
    let info = wait_for_consumer(&env.js, "CONT", "c", "all 500 acked", |i| {
        i.ack_floor.stream_sequence == 500 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!((info.num_pending, info.num_redelivered), (0, 0));

    let pull = supervisor.pull("c").await.expect("pull handle");
    let err = pull
        .fetch(10, None)
        .await
        .expect_err("a fetch to a continuous child");
    assert_eq!(err.kind(), ErrorKind::WrongMode, "{err}");
    assert!(
        matches!(&err, Error::ConsumesContinuously { durable } if durable == "c"),
        "{err:?}"
    );
    let stats = pull.stats().await.expect("stats");
    assert_eq!(
        (stats.delivered, stats.acked, stats.fetches, stats.batches),
        (500, 500, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn the_window_bounds_what_the_target_holds_undecided() {
    let env = env().await;
    create_stream(&env.js, "WIN", &["win.>"]).await;
    let published = publish_n(&env.js, "win.x", 40).await;
    let (_t, target, record) = spawn_target(|_| Action::AckAfter(Duration::from_millis(50))).await;
    let topology = continuous_topology("WIN", "win.>", "w", PullSpec::continuous().window(4));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let (_supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");

    // The server's count of unacknowledged deliveries, watched meanwhile
    // and only reported: the server applies acks and pull requests on
    // separate goroutines, so right after the child acked four and asked
    // for four more it may briefly count eight, although the acks went out
    // first.
    let max_ack_pending = Arc::new(AtomicI64::new(0));
    let watcher = {
        let js = env.js.clone();
        let max_ack_pending = max_ack_pending.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(info) = try_consumer_info(&js, "WIN", "w").await {
                    max_ack_pending.fetch_max(info.num_ack_pending as i64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let info = wait_for_consumer(&env.js, "WIN", "w", "all 40 acked", |i| {
        i.ack_floor.stream_sequence == 40 && i.num_ack_pending == 0
    })
    .await;
    watcher.abort();

    assert_eq!(
        record.sequences(),
        published,
        "every message once, in order"
    );
    assert_eq!(info.num_redelivered, 0);
    let held = record.max_outstanding();
    let server_held = max_ack_pending.load(Ordering::Relaxed);
    println!(
        "window 4: at most {held} undecided at the target, {server_held} ack pending on the server"
    );
    assert!(held <= 4, "the target held {held} undecided, window 4");
    assert!(held >= 2, "the window was not used: at most {held} at once");
}

#[tokio::test]
async fn a_pinned_member_gets_everything_and_its_drain_hands_over_to_the_standby_at_once() {
    let env = env().await;
    let (pinned, standby, _) =
        pinned_pair(&env, pinned_topology("PIN", "pin.>", "p"), "pin.x").await;
    let (a, b) = (stats(&pinned, "p").await, stats(&standby, "p").await);
    assert!(
        a.pinned && !b.pinned,
        "pinned: {} and {}",
        a.pinned,
        b.pinned
    );
    assert_eq!((a.pins_acquired, b.pins_acquired), (1, 0));
    let info = consumer_info(&env.js, "PIN", "p").await;
    assert_eq!(
        info.config.priority_policy,
        ServerPriorityPolicy::PinnedClient
    );
    assert_eq!(info.config.priority_groups, vec!["G".to_string()]);
    assert_eq!(info.config.priority_timeout, PIN_TIMEOUT);
    assert!(
        info.priority_groups
            .iter()
            .any(|g| g.group == "G" && g.pinned_client_id.is_some()),
        "{:?}",
        info.priority_groups
    );

    let started = std::time::Instant::now();
    let report = SupervisorHandle::from(pinned.supervisor.clone())
        .remove_consumer("p", false, Duration::from_secs(5))
        .await
        .expect("drain the pinned member's child");
    let drained = std::time::Instant::now();
    assert_eq!(report.naked, 0, "{report:?}");
    // Released, not timed out: no message is waiting, so the server has
    // picked no one else yet, and the old pin would still be there.
    let info = consumer_info(&env.js, "PIN", "p").await;
    assert!(
        info.priority_groups
            .iter()
            .all(|g| g.pinned_client_id.is_none()),
        "the drain returned with the pin still held: {:?}",
        info.priority_groups
    );
    let second = publish_n(&env.js, "pin.x", 200).await;
    wait_until("200 more at the standby", Duration::from_secs(5), || {
        standby.record.count() == 200
    })
    .await;
    let took = drained.elapsed();
    println!(
        "drain took {:?}; the standby had all 200 new messages {took:?} after it returned",
        drained - started
    );
    assert!(
        took <= Duration::from_secs(1),
        "the standby took {took:?} after the drain to get the messages (pin timeout {PIN_TIMEOUT:?})"
    );
    assert_eq!(standby.record.sequences(), second, "in order, once");
    assert_eq!(
        pinned.record.count(),
        200,
        "nothing more at the drained member"
    );
    let seen = times_seen_across(&[&pinned.record, &standby.record]);
    assert_eq!(seen.len(), 400);
    assert!(seen.values().all(|&n| n == 1), "seen twice: {seen:?}");
    let b = stats(&standby, "p").await;
    assert!(b.pinned && b.pins_acquired == 1, "{b:?}");
    let info = wait_for_consumer(&env.js, "PIN", "p", "all 400 acked", |i| {
        i.ack_floor.stream_sequence == 400 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
}

#[tokio::test]
async fn a_child_that_loses_its_pin_stands_by_without_restarting() {
    let env = env().await;
    // The same spec as `pinned_topology`, from a topology file.
    let topology = Topology::from_toml_str(
        r#"
        [[streams]]
        name = "LOSE"
        subjects = ["lose.>"]

        [[consumers]]
        stream = "LOSE"
        durable = "l"
        mode = "pull"
        target = "t"
        consume = "continuous"
        window = 8
        priority = { policy = "pinned_client", group = "G", timeout = "2s" }
        "#,
    )
    .expect("a valid topology");
    assert_eq!(topology, pinned_topology("LOSE", "lose.>", "l"));
    let (pinned, standby, first) = pinned_pair(&env, topology, "lose.x").await;
    assert!(stats(&pinned, "l").await.pinned);
    let pin_id = |info: consumer::Info| {
        info.priority_groups
            .into_iter()
            .find(|g| g.group == "G")
            .and_then(|g| g.pinned_client_id)
    };
    let old_pin = pin_id(consumer_info(&env.js, "LOSE", "l").await).expect("a pin");

    env.js
        .get_stream("LOSE")
        .await
        .expect("stream")
        .unpin_consumer("l", "G")
        .await
        .expect("unpin");
    let second = publish_n(&env.js, "lose.x", 100).await;
    wait_until("100 more at the other member", PATIENCE, || {
        standby.record.count() == 100
    })
    .await;
    assert_eq!(standby.record.sequences(), second, "in order, once");
    let new_pin = pin_id(consumer_info(&env.js, "LOSE", "l").await);
    assert!(
        new_pin.as_ref().is_some_and(|id| *id != old_pin),
        "the server's pin: {old_pin} before, {new_pin:?} after"
    );
    eventually(
        "the first member to learn it lost the pin",
        PATIENCE,
        || async {
            let s = stats(&pinned, "l").await;
            s.pins_lost >= 1 && !s.pinned
        },
    )
    .await;
    let (a, b) = (stats(&pinned, "l").await, stats(&standby, "l").await);
    assert!(
        !a.pinned && a.pins_lost >= 1 && a.pins_acquired == 1,
        "{a:?}"
    );
    assert!(
        b.pinned && b.pins_acquired == 1 && b.pins_lost == 0,
        "{b:?}"
    );
    assert_eq!(
        pinned.record.count(),
        first.len(),
        "nothing more at the first"
    );
    assert_eq!(
        (restarts(&pinned, "l").await, restarts(&standby, "l").await),
        (0, 0),
        "a lost pin restarted a child"
    );
    let seen = times_seen_across(&[&pinned.record, &standby.record]);
    assert_eq!(seen.len(), 300);
    assert!(seen.values().all(|&n| n == 1), "seen twice: {seen:?}");
    let info = wait_for_consumer(&env.js, "LOSE", "l", "all 300 acked", |i| {
        i.ack_floor.stream_sequence == 300 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
}

#[tokio::test]
async fn an_existing_durable_without_the_priority_group_is_refused_and_left_alone() {
    let env = env().await;
    create_stream(&env.js, "PRIO", &["prio.>"]).await;
    env.js
        .get_stream("PRIO")
        .await
        .expect("stream")
        .create_consumer(consumer::pull::Config {
            durable_name: Some("d".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("create the plain durable");
    let before = consumer_info(&env.js, "PRIO", "d").await;

    let (_t, target, record) = acking_target().await;
    let args = SupervisorArgs::new(env.js.clone(), pinned_topology("PRIO", "prio.>", "d"))
        .target("t", target);
    let err = SupervisorHandle::spawn(None, args)
        .await
        .expect_err("a priority group on a durable created without one");
    assert_eq!(err.kind(), ErrorKind::ConsumerConflict, "{err}");
    match &err {
        Error::ConsumerConflict {
            stream,
            durable,
            fields,
            ..
        } => {
            assert_eq!((stream.as_str(), durable.as_str()), ("PRIO", "d"));
            assert_eq!(fields, &vec!["priority".to_string()], "{err}");
        }
        other => panic!("expected ConsumerConflict, got {other:?}"),
    }

    let after = consumer_info(&env.js, "PRIO", "d").await;
    assert_eq!(after.config, before.config, "the server's consumer changed");
    assert_eq!(after.created, before.created, "the consumer was replaced");
    assert_eq!(after.config.priority_policy, ServerPriorityPolicy::None);
    assert!(after.config.priority_groups.is_empty());
    assert_eq!(record.count(), 0);
}

/// The one field a spec is refused for.
fn refused_field(result: Result<(), Error>) -> String {
    let err = result.expect_err("an invalid spec");
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let errors = err.validation().expect("validation errors").errors();
    assert_eq!(errors.len(), 1, "one field expected: {err}");
    errors[0].field.clone()
}

#[tokio::test]
async fn every_bad_continuous_or_priority_setting_is_refused_by_name() {
    let spec = |pull: PullSpec| ConsumerSpec::new("S", "d", "t", pull);
    let pinned = |group: &str| PrioritySpec::pinned(group, PIN_TIMEOUT);

    // The good ones pass, a 16-character group name included.
    spec(PullSpec::continuous().window(8).priority(pinned("G")))
        .validate()
        .expect("a valid pinned continuous spec");
    spec(PullSpec::continuous().priority(pinned(&"g".repeat(16))))
        .validate()
        .expect("a 16-character group");
    spec(PullSpec::continuous().priority(PrioritySpec::overflow("G").min_pending(10)))
        .validate()
        .expect("a valid overflow spec");
    spec(PullSpec::continuous().window(50))
        .max_ack_pending(50)
        .validate()
        .expect("a window of max_ack_pending");

    let cases: [(&str, ConsumerSpec, &str); 6] = [
        (
            "a window without continuous",
            spec(PullSpec::default().window(8)),
            "window",
        ),
        (
            "a window of 0",
            spec(PullSpec::continuous().window(0)),
            "window",
        ),
        (
            "a window above max_ack_pending",
            spec(PullSpec::continuous().window(51)).max_ack_pending(50),
            "window",
        ),
        (
            "a 17-character group",
            spec(PullSpec::continuous().priority(pinned(&"g".repeat(17)))),
            "priority.group",
        ),
        (
            "min_pending on a pinned group",
            spec(PullSpec::continuous().priority(pinned("G").min_pending(10))),
            "priority.min_pending",
        ),
        (
            "a timeout on an overflow group",
            spec(PullSpec::continuous().priority(PrioritySpec {
                timeout: Some(PIN_TIMEOUT),
                ..PrioritySpec::overflow("G")
            })),
            "priority.timeout",
        ),
    ];
    for (what, spec, field) in cases {
        assert_eq!(refused_field(spec.validate()), field, "{what}");
    }

    // In a topology file, the field is named by its place in the file.
    let file = |settings: &str| {
        format!(
            "[[streams]]\nname = \"S\"\nsubjects = [\"s.>\"]\n\n\
             [[consumers]]\nstream = \"S\"\ndurable = \"d\"\nmode = \"pull\"\ntarget = \"t\"\n{settings}\n"
        )
    };
    let loaded = |settings: &str| Topology::from_toml_str(&file(settings)).map(|_| ());
    assert_eq!(refused_field(loaded("window = 8")), "consumers[0].window");
    assert_eq!(
        refused_field(loaded(
            "consume = \"continuous\"\npriority = { policy = \"overflow\", group = \"G\", timeout = \"2s\" }"
        )),
        "consumers[0].priority.timeout"
    );
    let topology = Topology::from_toml_str(&file(
        "consume = \"continuous\"\nwindow = 8\npriority = { policy = \"pinned_client\", group = \"G\", timeout = \"2s\" }",
    ))
    .expect("a valid file");
    assert_eq!(
        topology.consumers[0].mode,
        ModeSpec::Pull(PullSpec::continuous().window(8).priority(pinned("G")))
    );
}

/// Known library bug, kept as a reproduction: a continuous child always has
/// a pull request open, and its drain holds the reply subscription until
/// that request runs out (half the pin timeout, or 30 s, capped at half the
/// ack wait), whatever the drain timeout. With a 60 s pin and a 1 s drain
/// the supervisor gives up on the drain after 6 s and stops the child before
/// it releases the pin, so the standby waits for the pin's timeout.
#[tokio::test]
async fn a_short_drain_of_a_long_pinned_child_still_hands_over_at_once() {
    let env = env().await;
    let topology = continuous_topology(
        "LONG",
        "long.>",
        "p",
        PullSpec::continuous().priority(PrioritySpec::pinned("G", Duration::from_secs(60))),
    );
    let (pinned, standby, _) = pinned_pair(&env, topology, "long.x").await;

    let asked = std::time::Instant::now();
    SupervisorHandle::from(pinned.supervisor.clone())
        .remove_consumer("p", false, Duration::from_secs(1))
        .await
        .expect("drain the pinned member's child");
    let drain_took = asked.elapsed();
    let second = publish_n(&env.js, "long.x", 50).await;
    wait_until("50 more at the standby", Duration::from_secs(5), || {
        standby.record.count() == 50
    })
    .await;
    println!(
        "drain took {drain_took:?}; the standby had the new messages {:?} after the drain was asked for",
        asked.elapsed()
    );
    assert!(
        drain_took <= Duration::from_secs(2),
        "a 1 s drain of an idle child took {drain_took:?}"
    );
    assert_eq!(standby.record.sequences(), second);
}

#[tokio::test]
async fn a_continuous_child_killed_mid_stream_is_restarted_and_loses_nothing() {
    let env = env().await;
    create_stream(&env.js, "CKILL", &["ckill.>"]).await;
    let published = publish_n(&env.js, "ckill.x", 2000).await;
    // A target slow enough that the kill lands mid-stream.
    let (_t, target, record) = spawn_target(|_| Action::AckAfter(Duration::from_millis(2))).await;
    let mut spec = ConsumerSpec::new("CKILL", "ck", "t", PullSpec::continuous().window(32));
    spec.server.ack_wait = Some(Duration::from_secs(2));
    let topology = Topology::new()
        .stream(StreamSpec::new("CKILL", ["ckill.>"]))
        .consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    wait_until("a first part delivered", PATIENCE, || {
        record.distinct().len() >= 300
    })
    .await;
    let handle = supervisor.consumer("ck").await.expect("handle");
    handle.child().expect("a running child").kill();

    // Everything is processed in the end, by the restarted child; what was
    // in flight at the kill may come twice, nothing is missing.
    let info = wait_for_consumer(&env.js, "CKILL", "ck", "all 2000 acked", |i| {
        i.ack_floor.stream_sequence == 2000 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
    assert_eq!(
        record.distinct(),
        published.iter().copied().collect(),
        "every sequence reached the target"
    );
    let status = supervisor.status().await.expect("status");
    let child = status.child("ck").expect("the child's status");
    assert!(child.restarts >= 1, "the child was restarted: {child:?}");
    let twice = record.times_seen().values().filter(|&&n| n > 1).count();
    assert!(twice <= 64, "{twice} seen twice: more than was in flight");
}

#[tokio::test]
async fn an_overflow_child_is_served_only_while_the_consumer_is_behind() {
    let env = env().await;
    let pull = PullSpec::continuous()
        .window(16)
        .priority(PrioritySpec::overflow("O").min_pending(100));
    let topology = continuous_topology("OVER", "over.>", "o", pull);
    let (_t, target, record) = acking_target().await;
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let (_supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    publish_n(&env.js, "over.x", 50).await;
    // The child's pull waits on the server, and is not served while fewer
    // than 100 messages are pending.
    let info = wait_for_consumer(&env.js, "OVER", "o", "the child's pull waiting", |i| {
        i.num_waiting >= 1 && i.num_pending == 50
    })
    .await;
    assert_eq!(info.num_ack_pending, 0, "{info:?}");
    assert_eq!(record.count(), 0, "nothing delivered below min_pending");

    // Behind by 150: served until fewer than 100 are pending.
    publish_n(&env.js, "over.x", 100).await;
    wait_until("some delivered", PATIENCE, || record.count() > 0).await;
    let info = wait_for_consumer(&env.js, "OVER", "o", "served down to the threshold", |i| {
        i.num_ack_pending == 0 && i.num_pending < 100
    })
    .await;
    let delivered = record.count() as u64;
    assert_eq!(
        delivered + info.num_pending,
        150,
        "what was not delivered is still pending: {info:?}"
    );
    assert!(
        info.num_pending >= 99 - 16,
        "served only while behind (at most a window past the threshold): {info:?}"
    );
}
