//! What a target can read off a delivery and how it decides: `delivered()`,
//! `deadline()` (moved on by `in_progress`), `nak()` and `nak_after(delay)`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ractor_jetstream::{ConsumerSpec, StreamSpec, SupervisorArgs, SupervisorHandle, Topology};

/// One delivery as the decision function saw it.
#[derive(Debug, Clone, Copy)]
struct Sight {
    sequence: u64,
    delivered: u64,
    received_at: Instant,
    deadline: Instant,
    deadline_after_progress: Option<Instant>,
}

#[tokio::test]
async fn a_delivery_tells_how_often_it_came_and_until_when_it_may_be_held() {
    let env = env().await;
    let max_hold = Duration::from_secs(30);
    let delay = Duration::from_millis(400);
    let sights = Arc::new(Mutex::new(Vec::<Sight>::new()));
    let seen = sights.clone();
    // Sequence 1 is nak'ed for `delay` on its first delivery, sequence 2
    // nak'ed at once, sequence 3 asks for more time before its ack.
    let (_t, target, _record) = spawn_target(move |d| {
        let mut sight = Sight {
            sequence: d.stream_sequence(),
            delivered: d.delivered(),
            received_at: d.received_at(),
            deadline: d.deadline(),
            deadline_after_progress: None,
        };
        let action = match (sight.sequence, sight.delivered) {
            (1, 1) => Action::Nak(Some(delay)),
            (2, 1) => Action::Nak(None),
            (3, _) => {
                std::thread::sleep(Duration::from_millis(20));
                d.in_progress();
                sight.deadline_after_progress = Some(d.deadline());
                Action::Ack
            }
            _ => Action::Ack,
        };
        seen.lock().expect("sights").push(sight);
        action
    })
    .await;
    let topology = Topology::new()
        .stream(StreamSpec::new("DLV", ["dlv.>"]))
        .consumer(ConsumerSpec::pull("DLV", "d", "t").max_hold(max_hold));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target);
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    publish_n(&env.js, "dlv.x", 3).await;
    let pull = supervisor.pull("d").await.expect("pull");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut acked = 0;
    while acked < 3 {
        acked += pull
            .fetch(3, Some(Duration::from_millis(200)))
            .await
            .expect("fetch")
            .acked;
        assert!(tokio::time::Instant::now() < deadline, "acked {acked}");
    }

    let sights = sights.lock().expect("sights").clone();
    let of = |sequence: u64, delivered: u64| {
        sights
            .iter()
            .find(|s| s.sequence == sequence && s.delivered == delivered)
            .copied()
            .unwrap_or_else(|| panic!("no delivery {delivered} of {sequence}: {sights:?}"))
    };
    for sight in &sights {
        assert_eq!(sight.deadline, sight.received_at + max_hold, "{sight:?}");
    }
    // nak_after: the second delivery came no sooner than the delay.
    let (first, second) = (of(1, 1), of(1, 2));
    assert!(
        second.received_at.duration_since(first.received_at) >= delay,
        "{first:?} {second:?}"
    );
    // nak(): delivered again, without waiting for the ack wait (30 s).
    let (first, second) = (of(2, 1), of(2, 2));
    assert!(
        second.received_at.duration_since(first.received_at) < Duration::from_secs(5),
        "{first:?} {second:?}"
    );
    // in_progress moved the deadline on by the time the target took.
    let third = of(3, 1);
    let moved = third.deadline_after_progress.expect("in progress");
    assert!(
        moved >= third.deadline + Duration::from_millis(20),
        "{third:?}"
    );
    assert!(sights.iter().all(|s| s.delivered <= 2), "{sights:?}");
    // The server takes acks in from a queue of its own, so a consumer info
    // asked right after them on the same connection may not show them yet.
    wait_for_consumer(&env.js, "DLV", "d", "all 3 acked", |info| {
        (
            info.num_ack_pending,
            info.ack_floor.stream_sequence,
            info.num_redelivered,
        ) == (0, 3, 0)
    })
    .await;
}
