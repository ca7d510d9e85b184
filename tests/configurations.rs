//! The guarantees in configurations other than the defaults: backoff, a
//! slow target holding deliveries past the server's ack wait, several
//! workers on one durable.
//!
//! Each test here failed on the code before the mechanism it covers was
//! fixed; the closing note of the issue names how.

mod common;

use std::time::Duration;

use common::*;
use ractor_jetstream::{ConsumerAction, ConsumerSpec, ensure_consumer};

/// Runs one fetch of `batch` on a first pull child whose target takes
/// `hold` to ack each delivery, while a second child on the same durable
/// fetches again and again until the first fetch is over. A delivery the
/// first target still holds must not reach the second.
///
/// Returns the sequences seen by the first and the second target.
async fn contested_fetch(
    env: &Env,
    spec: ConsumerSpec,
    batch: u64,
    hold: Duration,
) -> (Record, Record) {
    let (_slow, slow_target, slow) = spawn_target(move |_| Action::AckAfter(hold)).await;
    let (_other, other_target, other) = acking_target().await;
    let first = spawn_pull(env, spec.clone(), slow_target).await;
    let second = spawn_pull(env, spec, other_target).await;
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let slow_fetch = async {
        let outcome = fetch(&first, batch, Duration::from_secs(2))
            .await
            .expect("the slow target's fetch");
        let _ = done_tx.send(true);
        outcome
    };
    let competing = async {
        // Only once the first target holds the whole batch.
        wait_until("the slow target holds the batch", PATIENCE, || {
            slow.count() as u64 >= batch
        })
        .await;
        let mut fetches = 0;
        while !*done_rx.borrow_and_update() {
            fetch(&second, batch, Duration::from_millis(300))
                .await
                .expect("the competing fetch");
            fetches += 1;
            assert!(fetches < 1000, "the competing fetch loop spins");
        }
    };
    let (outcome, ()) = tokio::join!(slow_fetch, competing);
    assert_eq!(
        (outcome.delivered, outcome.acked),
        (batch, batch),
        "the slow target got the whole batch and acked it: {outcome:?}"
    );
    (slow, other)
}

#[tokio::test]
async fn with_backoff_the_child_keeps_deliveries_alive_by_the_servers_ack_wait() {
    let env = env().await;
    create_stream(&env.js, "BACKOFF", &["backoff.>"]).await;
    publish_n(&env.js, "backoff.x", 5).await;
    // The server waits backoff[0] = 1 s for the first ack; the target takes
    // 3 s.
    let spec = ConsumerSpec::pull("BACKOFF", "b", "t")
        // The server ignores this ack_wait: backoff[0] is the first one.
        .ack_wait(Duration::from_secs(30))
        .backoff([Duration::from_secs(1), Duration::from_secs(5)])
        .max_deliver(4);
    let (slow, other) = contested_fetch(&env, spec.clone(), 5, Duration::from_secs(3)).await;
    assert_eq!(
        slow.sequences(),
        vec![1, 2, 3, 4, 5],
        "the slow target saw each message once"
    );
    assert_eq!(
        other.sequences(),
        Vec::<u64>::new(),
        "nothing the slow target held was delivered to the other worker"
    );
    let info = wait_for_consumer(&env.js, "BACKOFF", "b", "all acked", |i| {
        i.ack_floor.stream_sequence == 5 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0, "the server redelivered nothing");

    // Binding again finds the consumer as the spec wants it: nothing to
    // update (the server reports ack_wait = backoff[0]).
    let (_, action) = ensure_consumer(&env.js, &spec).await.expect("bind again");
    assert_eq!(action, ConsumerAction::Bound);
}

#[tokio::test]
async fn a_slow_target_keeps_its_deliveries_past_the_ack_wait() {
    let env = env().await;
    create_stream(&env.js, "SLOWT", &["slowt.>"]).await;
    publish_n(&env.js, "slowt.x", 20).await;
    let spec = ConsumerSpec::pull("SLOWT", "s", "t").ack_wait(Duration::from_secs(1));
    let (slow, other) = contested_fetch(&env, spec, 20, Duration::from_secs(4)).await;
    assert_eq!(
        slow.sequences(),
        (1..=20).collect::<Vec<_>>(),
        "the slow target saw each message once"
    );
    assert_eq!(
        other.sequences(),
        Vec::<u64>::new(),
        "nothing the slow target held was delivered to the other worker"
    );
    let info = wait_for_consumer(&env.js, "SLOWT", "s", "all acked", |i| {
        i.ack_floor.stream_sequence == 20 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_redelivered, 0, "the server redelivered nothing");
}
