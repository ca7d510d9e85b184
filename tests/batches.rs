//! Batch targets (`Target::batches`): a child hands what it has ready to
//! the target in one actor message, and every delivery in it is still
//! settled on its own, with the same guarantees as one that came alone.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::{
    ConsumerSpec, Deliveries, PullHandle, PullSpec, PushSpec, StreamSpec, SupervisorArgs,
    SupervisorHandle, Target, Topology,
};

/// What a batch target does with one delivery, given its stream sequence
/// and how many times it was delivered.
type Decide = Arc<dyn Fn(u64, u64) -> Verdict + Send + Sync>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Verdict {
    Ack,
    Nak,
    Term,
    /// Dropped without a decision.
    Drop,
}

/// Each of `sequences` twice, in order.
fn twice(sequences: &[u64]) -> Vec<u64> {
    sequences.iter().flat_map(|s| [*s, *s]).collect()
}

/// What a batch target saw: each batch's stream sequences, in order.
#[derive(Clone, Default)]
struct Batches(Arc<Mutex<Vec<Vec<u64>>>>);

impl Batches {
    fn all(&self) -> Vec<Vec<u64>> {
        self.0.lock().expect("batches").clone()
    }

    fn sequences(&self) -> Vec<u64> {
        self.all().into_iter().flatten().collect()
    }

    /// Every sequence seen, in order of sequence.
    fn sorted(&self) -> Vec<u64> {
        let mut sequences = self.sequences();
        sequences.sort_unstable();
        sequences
    }

    fn count(&self, sequence: u64) -> usize {
        self.sequences().iter().filter(|s| **s == sequence).count()
    }
}

struct BatchTarget;

impl Actor for BatchTarget {
    type Msg = Deliveries;
    /// What it saw, what it decides, and how long it works on a batch.
    type State = (Batches, Decide, Duration);
    type Arguments = (Batches, Decide, Duration);

    async fn pre_start(
        &self,
        _: ActorRef<Deliveries>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Deliveries>,
        batch: Deliveries,
        (seen, decide, work): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        assert!(!batch.is_empty(), "a batch is never empty");
        let sequences: Vec<u64> = batch.iter().map(|d| d.stream_sequence()).collect();
        seen.0.lock().expect("batches").push(sequences);
        if !work.is_zero() {
            tokio::time::sleep(*work).await;
        }
        for delivery in batch {
            match decide(delivery.stream_sequence(), delivery.delivered()) {
                Verdict::Ack => delivery.ack(),
                Verdict::Nak => delivery.nak(),
                Verdict::Term => delivery.term("bad"),
                Verdict::Drop => drop(delivery),
            }
        }
        Ok(())
    }
}

async fn batch_target(
    name: Option<String>,
    decide: impl Fn(u64, u64) -> Verdict + Send + Sync + 'static,
) -> (ActorRef<Deliveries>, Batches) {
    let seen = Batches::default();
    let (target, _) = Actor::spawn(
        name,
        BatchTarget,
        (seen.clone(), Arc::new(decide), Duration::ZERO),
    )
    .await
    .expect("batch target");
    (target, seen)
}

/// A batch target that acks after working `work` on each batch,
/// registered as `name` (retried while a killed predecessor releases it)
/// and a member of the process group `{name}-group`.
async fn slow_batch_target(name: &str, work: Duration) -> (ActorRef<Deliveries>, Batches) {
    let seen = Batches::default();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let decide: Decide = Arc::new(|_, _| Verdict::Ack);
        match Actor::spawn(
            Some(name.to_string()),
            BatchTarget,
            (seen.clone(), decide, work),
        )
        .await
        {
            Ok((target, _)) => {
                ractor::pg::join(format!("{name}-group"), vec![target.get_cell()]);
                return (target, seen);
            }
            Err(err) => {
                assert!(tokio::time::Instant::now() < deadline, "{err}");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// A supervisor with a fetch-driven child of the durable `worker` on the
/// stream `BT`, feeding `target` in batches, and a handle to fetch with.
async fn fetch_driven(env: &Env, target: &ActorRef<Deliveries>) -> (SupervisorHandle, PullHandle) {
    fetch_driven_with(env, target, ConsumerSpec::pull("BT", "worker", "t")).await
}

/// [`fetch_driven`], with `spec` for the durable `worker` (target `t`).
async fn fetch_driven_with(
    env: &Env,
    target: &ActorRef<Deliveries>,
    spec: ConsumerSpec,
) -> (SupervisorHandle, PullHandle) {
    let topology = Topology::new()
        .stream(StreamSpec::new("BT", ["bt.>"]))
        .consumer(spec);
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", Target::batches(target.get_derived()));
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let pull = supervisor.pull("worker").await.expect("pull handle");
    (supervisor, pull)
}

/// Waits until the server shows every one of `n` messages settled.
async fn wait_settled(env: &Env, stream: &str, durable: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = consumer_info(&env.js, stream, durable).await;
        if info.ack_floor.stream_sequence == n && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: ack floor {}, {} unacked, {} pending",
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn fetches_reach_a_batch_target_in_batches_each_settled_on_its_own() {
    let env = env().await;
    let (target, seen) = batch_target(None, |seq, delivered| match seq {
        // Nak'ed once, then acked: it comes again.
        7 if delivered == 1 => Verdict::Nak,
        // Never to be processed.
        9 => Verdict::Term,
        // Dropped once without a decision: nak'ed, so it comes again.
        11 if delivered == 1 => Verdict::Drop,
        _ => Verdict::Ack,
    })
    .await;
    let (_supervisor, pull) = fetch_driven(&env, &target).await;
    let published = publish_n(&env.js, "bt.x", 200).await;

    let first = pull
        .fetch(100, Some(Duration::from_secs(2)))
        .await
        .expect("fetch");
    assert_eq!(
        (
            first.delivered,
            first.acked,
            first.naked,
            first.termed,
            first.abandoned
        ),
        (100, 97, 1, 1, 1),
        "{first:?}"
    );
    let mut total = first.delivered;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while total < 202 {
        let outcome = pull
            .fetch(100, Some(Duration::from_millis(500)))
            .await
            .expect("fetch");
        total += outcome.delivered;
        assert!(tokio::time::Instant::now() < deadline, "stuck at {total}");
    }
    wait_settled(&env, "BT", "worker", 200).await;

    let batches = seen.all();
    assert!(
        batches.iter().any(|b| b.len() > 1),
        "several deliveries in one message: {batches:?}"
    );
    assert!(
        batches.iter().all(|b| b.len() <= 100),
        "never more than the fetch"
    );
    let mut distinct = seen.sequences();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, published, "every message reached the target");
    assert_eq!(
        (seen.count(7), seen.count(9), seen.count(11), seen.count(8)),
        (2, 1, 2, 1),
        "the nak'ed and the dropped one came again, the termed one did not"
    );
    // In the order the server sent them, within each batch.
    for batch in &batches {
        assert!(batch.windows(2).all(|w| w[0] < w[1]), "in order: {batch:?}");
    }
    let info = consumer_info(&env.js, "BT", "worker").await;
    assert_eq!((info.num_pending, info.num_redelivered), (0, 0));
    // Every batch the target saw, and no other, is counted.
    let stats = pull.stats().await.expect("stats");
    assert_eq!(
        (stats.batches, stats.delivered),
        (batches.len() as u64, 202),
        "{stats:?}"
    );
}

/// A push or continuous child (`spec`) feeding a batch target registered
/// under `name`: every message reaches it, each settled on its own, in
/// batches no larger than `window`.
async fn a_batch_target_gets_everything(
    spec: impl FnOnce() -> ConsumerSpec,
    name: &str,
    window: usize,
) {
    let env = env().await;
    let (_target, seen) = batch_target(Some(name.to_string()), |seq, delivered| {
        if seq % 50 == 0 && delivered == 1 {
            Verdict::Nak
        } else {
            Verdict::Ack
        }
    })
    .await;
    let topology = Topology::new()
        .stream(StreamSpec::new("BT", ["bt.>"]))
        .consumer(spec());
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", Target::registered_batches::<Deliveries>(name));
    let (_supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let published = publish_n(&env.js, "bt.x", 500).await;
    wait_settled(&env, "BT", "worker", 500).await;

    let batches = seen.all();
    assert!(
        batches.iter().any(|b| b.len() > 1),
        "several deliveries in one message: {batches:?}"
    );
    assert!(
        batches.iter().all(|b| b.len() <= window),
        "never more than the window of {window}"
    );
    let mut distinct = seen.sequences();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, published, "every message reached the target");
    for seq in published {
        let expected = if seq % 50 == 0 { 2 } else { 1 };
        assert_eq!(seen.count(seq), expected, "sequence {seq}");
    }
}

#[tokio::test]
async fn a_push_child_hands_a_registered_batch_target_its_window_at_most() {
    a_batch_target_gets_everything(
        || ConsumerSpec::new("BT", "worker", "t", PushSpec::default().window(32)),
        "batch-push",
        32,
    )
    .await;
}

#[tokio::test]
async fn a_continuous_child_hands_a_registered_batch_target_its_window_at_most() {
    a_batch_target_gets_everything(
        || ConsumerSpec::new("BT", "worker", "t", PullSpec::continuous().window(64)),
        "batch-continuous",
        64,
    )
    .await;
}

#[tokio::test]
async fn a_registered_batch_target_killed_with_batches_in_hand_loses_nothing() {
    killed_with_batches_in_hand("batch-killed", |name| {
        Target::registered_batches::<Deliveries>(name)
    })
    .await;
}

#[tokio::test]
async fn a_process_group_batch_target_killed_with_batches_in_hand_loses_nothing() {
    killed_with_batches_in_hand("batch-killed-pg", |name| {
        Target::group_batches::<Deliveries>(format!("{name}-group"))
    })
    .await;
}

/// A push child feeding the batch target that `target` names: the target
/// is killed while it works on a batch, with more in its mailbox, and its
/// successor (under the same name, in the same group) gets what it held.
async fn killed_with_batches_in_hand(name: &str, target: impl FnOnce(&str) -> Target) {
    let env = env().await;
    let (first, first_seen) = slow_batch_target(name, Duration::from_millis(20)).await;
    let topology = Topology::new()
        .stream(StreamSpec::new("BT", ["bt.>"]))
        .consumer(ConsumerSpec::new(
            "BT",
            "worker",
            "t",
            PushSpec::default().window(32),
        ));
    let args = SupervisorArgs::new(env.js.clone(), topology).target("t", target(name));
    let (_supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    let published = publish_n(&env.js, "bt.x", 300).await;
    wait_until("the first target has had two batches", PATIENCE, || {
        first_seen.all().len() >= 2
    })
    .await;
    // Killed while it works on a batch, with more in its mailbox.
    first.kill();
    let (_second, second_seen) = slow_batch_target(name, Duration::ZERO).await;
    wait_settled(&env, "BT", "worker", 300).await;

    let mut distinct: Vec<u64> = first_seen
        .sequences()
        .into_iter()
        .chain(second_seen.sequences())
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct, published, "nothing lost");
    assert!(
        !second_seen.all().is_empty(),
        "the successor got what the first one held undecided"
    );
}

/// How a [`WholeBatches`] target settles the batches it gets, each whole.
#[derive(Clone, Copy)]
enum Whole {
    /// Nak'ed for the delay the first time a batch is seen, termed with
    /// one reason the second.
    NakAfterThenTerm(Duration),
    /// Acked, after sleeping this long on the first batch.
    AckSleepingOnFirst(Duration),
}

/// A batch target that settles each batch whole, as `Whole` says.
struct WholeBatches;

impl Actor for WholeBatches {
    type Msg = Deliveries;
    type State = (Batches, Whole);
    type Arguments = (Batches, Whole);

    async fn pre_start(
        &self,
        _: ActorRef<Deliveries>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _: ActorRef<Deliveries>,
        batch: Deliveries,
        (seen, whole): &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let sequences: Vec<u64> = batch.iter().map(|d| d.stream_sequence()).collect();
        let first_batch = {
            let mut seen = seen.0.lock().expect("batches");
            seen.push(sequences);
            seen.len() == 1
        };
        match *whole {
            Whole::NakAfterThenTerm(delay) => {
                if batch.iter().all(|d| d.delivered() == 1) {
                    batch.nak_all_after(delay);
                } else {
                    batch.term_all("the batch's write failed twice");
                }
            }
            Whole::AckSleepingOnFirst(sleep) => {
                if first_batch {
                    tokio::time::sleep(sleep).await;
                }
                batch.ack_all();
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_is_nak_ed_after_a_delay_and_termed_whole() {
    use futures::StreamExt;
    let env = env().await;
    let delay = Duration::from_secs(2);
    let seen = Batches::default();
    let whole = Whole::NakAfterThenTerm(delay);
    let (target, _) = Actor::spawn(None, WholeBatches, (seen.clone(), whole))
        .await
        .expect("batch target");
    let mut advisories = env
        .client
        .subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.BT.worker")
        .await
        .expect("subscribe to advisories");
    env.client.flush().await.expect("flush");
    let (_supervisor, pull) = fetch_driven(&env, &target).await;
    let published = publish_n(&env.js, "bt.x", 10).await;

    let first = pull
        .fetch(10, Some(Duration::from_secs(2)))
        .await
        .expect("fetch");
    let naked_at = tokio::time::Instant::now();
    assert_eq!((first.delivered, first.naked), (10, 10), "{first:?}");
    // Not before the delay: a fetch that ends well within it gets nothing.
    let early = pull
        .fetch(10, Some(Duration::from_millis(500)))
        .await
        .expect("fetch");
    assert_eq!(early.delivered, 0, "{early:?}");
    let second = pull
        .fetch(10, Some(Duration::from_secs(5)))
        .await
        .expect("fetch");
    assert_eq!((second.delivered, second.termed), (10, 10), "{second:?}");
    assert!(
        naked_at.elapsed() >= delay - Duration::from_millis(200),
        "came again after {:?}, before the delay of {delay:?}",
        naked_at.elapsed()
    );

    assert_eq!(
        seen.sorted(),
        twice(&published),
        "each seen twice: nak'ed, then termed"
    );
    for _ in &published {
        let advisory = tokio::time::timeout(PATIENCE, advisories.next())
            .await
            .expect("an advisory in time")
            .expect("the subscription is open");
        let json: serde_json::Value =
            serde_json::from_slice(&advisory.payload).expect("the advisory is JSON");
        assert_eq!(json["reason"], "the batch's write failed twice");
    }
    wait_settled(&env, "BT", "worker", 10).await;
}

/// `ack_all` settles a batch in one message to the child, which applies
/// the decision to each delivery as if it had come alone: a batch acked
/// after the child gave up on it counts as late decisions and is not
/// applied, so it comes again; acked in time, every delivery is acked.
#[tokio::test]
async fn ack_all_acks_each_delivery_and_a_late_batch_is_not_applied() {
    let env = env().await;
    let seen = Batches::default();
    let max_hold = Duration::from_millis(500);
    let whole = Whole::AckSleepingOnFirst(max_hold * 3);
    let (target, _) = Actor::spawn(None, WholeBatches, (seen.clone(), whole))
        .await
        .expect("batch target");
    let spec = ConsumerSpec::pull("BT", "worker", "t").max_hold(max_hold);
    let (_supervisor, pull) = fetch_driven_with(&env, &target, spec).await;
    let published = publish_n(&env.js, "bt.x", 10).await;

    // The target sleeps past the hold on this batch: the child gives up
    // on all ten (nak'ed), and their acks come late.
    let first = pull
        .fetch(10, Some(Duration::from_secs(2)))
        .await
        .expect("fetch");
    assert_eq!((first.delivered, first.timed_out), (10, 10), "{first:?}");
    // The acks reach the child once the target wakes.
    let stats = wait_for_stats(pull.consumer(), "late acks counted", |s| {
        s.late_decisions == 10
    })
    .await;
    assert_eq!(stats.acked, 0, "{stats:?}");

    let second = pull
        .fetch(10, Some(Duration::from_secs(5)))
        .await
        .expect("fetch");
    assert_eq!((second.delivered, second.acked), (10, 10), "{second:?}");
    // Each seen twice (in one batch or more: a fetch's messages can reach
    // the child in parts).
    assert_eq!(seen.sorted(), twice(&published), "{:?}", seen.all());
    let stats = pull.stats().await.expect("stats");
    assert_eq!((stats.acked, stats.late_decisions), (10, 10), "{stats:?}");
    wait_settled(&env, "BT", "worker", 10).await;
}

/// A drain waits for a whole-batch decision as for any other: a push
/// child drained while its batch target sleeps on its first batch counts
/// every delivery the target acked whole, and the server holds those acks.
#[tokio::test]
async fn a_drain_counts_and_applies_whole_batch_acks() {
    let env = env().await;
    let seen = Batches::default();
    let whole = Whole::AckSleepingOnFirst(Duration::from_millis(500));
    let (target, _) = Actor::spawn(None, WholeBatches, (seen.clone(), whole))
        .await
        .expect("batch target");
    let topology = Topology::new()
        .stream(StreamSpec::new("BT", ["bt.>"]))
        .consumer(ConsumerSpec::new(
            "BT",
            "worker",
            "t",
            PushSpec::default().window(32),
        ));
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", Target::batches(target.get_derived()));
    let (supervisor, _) = SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor");
    publish_n(&env.js, "bt.x", 100).await;
    wait_until("the target has its first batch", PATIENCE, || {
        !seen.all().is_empty()
    })
    .await;

    let consumer = supervisor
        .consumer("worker")
        .await
        .expect("consumer handle");
    let report = consumer
        .drain(Duration::from_secs(10))
        .await
        .expect("drain");
    let acked = seen.sorted();
    let forwarded = acked.len() as u64;
    assert!(forwarded > 0 && forwarded <= 32, "{acked:?}");
    assert_eq!(
        acked,
        (1..=forwarded).collect::<Vec<u64>>(),
        "each forwarded once, in order"
    );
    assert_eq!(report.settled, forwarded, "{report:?}");
    // The server holds every ack the drain counted.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = consumer_info(&env.js, "BT", "worker").await;
        if info.ack_floor.stream_sequence == forwarded {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ack floor {} against {forwarded} acked",
            info.ack_floor.stream_sequence
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
