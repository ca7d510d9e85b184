//! Faults inside the actor tree, against a real nats-server: a child that
//! panics mid-fetch, a target that panics, a push child killed with a full
//! window, a child that fails on every start, and a graceful drain.
//!
//! Failpoints (the `fault-injection` feature) are process-global; each test
//! that sets one holds a `fail::FailScenario` for its whole run, which
//! serializes those tests.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_jetstream::{
    ConsumerSpec, Error, JetStreamSupervisor, PushSpec, RestartPolicy, StreamSpec, SupervisorArgs,
    SupervisorMsg, Topology,
};

/// Fetches through the supervisor, retrying while the child is restarting.
async fn fetch_when_up(
    supervisor: &ActorRef<SupervisorMsg>,
    durable: &str,
    batch: u64,
    expires: Duration,
) -> ractor_jetstream::FetchOutcome {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match fetch_via(supervisor, durable, batch, expires).await {
            Ok(outcome) => return outcome,
            Err(Error::Unavailable { .. } | Error::FetchInterrupted { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(err) => panic!("fetch failed: {err}"),
        }
    }
}

/// The same panic, in a fetch served in its caller's task (a `PullHandle`
/// from a task, the worker idle): the caller's task does not panic, it
/// gets `FetchInterrupted`; the child fails and is restarted as if its own
/// task had panicked; what it held comes back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_fetch_served_in_its_callers_task_fails_the_child_not_the_caller() {
    let scenario = fail::FailScenario::setup();
    let env = env().await;
    let (_t, target, record) = spawn_target(|d| match d.info().delivered {
        1 => Action::Hold,
        _ => Action::Ack,
    })
    .await;
    let topology = Topology::new()
        .stream(StreamSpec::new("PANICC", ["panicc.>"]))
        .consumer(ConsumerSpec::pull("PANICC", "p", "t").ack_wait(Duration::from_secs(30)));
    let (supervisor, _) = ractor_jetstream::SupervisorHandle::spawn(
        None,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    let published = publish_n(&env.js, "panicc.x", 6).await;
    let pull = supervisor.pull("p").await.expect("pull handle");
    let before = pull.consumer().child().expect("child");

    // The child panics right after forwarding its third message.
    fail::cfg("rj-pull-after-forward", "2*off->panic(injected)").expect("failpoint");
    let cut = spawn_handle_fetch(&pull, 6, Duration::from_secs(1))
        .await
        .expect("the caller's task does not panic");
    let crashed_at = Instant::now();
    match cut {
        Err(Error::FetchInterrupted { durable, .. }) => assert_eq!(durable, "p"),
        other => panic!("the caller gets a clear error, got {other:?}"),
    }
    fail::remove("rj-pull-after-forward");

    // Restarted: the three it forwarded come back at once (not after the
    // 30 s ack wait), and the other three, on the wire when it panicked,
    // soon after.
    while record.with(|r| r.seen.iter().filter(|s| s.delivered == 2).count()) < 3
        || record.distinct().len() < 6
    {
        assert!(
            crashed_at.elapsed() < Duration::from_secs(10),
            "in-flight messages did not come back: {:?}",
            record.with(|r| r.seen.clone())
        );
        handle_fetch_while_restarting(&pull, 6, Duration::from_millis(300)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(record.distinct().into_iter().collect::<Vec<_>>(), published);
    let after = pull.consumer().child().expect("restarted child");
    assert_ne!(after.get_id(), before.get_id(), "a new child");
    scenario.teardown();
}

#[tokio::test]
async fn a_pull_child_that_panics_mid_fetch_is_restarted_and_nothing_acked_returns() {
    let scenario = fail::FailScenario::setup();
    let env = env().await;
    publish_n(&env.js, "none", 0).await;
    // Seqs 6..=15 are held by the target on first delivery (in flight when
    // the child crashes); everything else is acked.
    let (_t, target, record) =
        spawn_target(|d| match (d.info().stream_sequence, d.info().delivered) {
            (6..=15, 1) => Action::Hold,
            _ => Action::Ack,
        })
        .await;
    let spec = ConsumerSpec::pull("PANIC", "p", "t").ack_wait(Duration::from_secs(30));
    let topology = Topology::new()
        .stream(StreamSpec::new("PANIC", ["panic.>"]))
        .consumer(spec);
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    publish_n(&env.js, "panic.x", 20).await;

    let first = fetch_via(&supervisor, "p", 5, Duration::from_secs(1))
        .await
        .expect("fetch");
    assert_eq!(first.acked, 5);
    wait_for_consumer(&env.js, "PANIC", "p", "1..=5 acked", |i| {
        i.ack_floor.stream_sequence == 5
    })
    .await;
    let before = lookup(&supervisor, "p").await.expect("child");

    // The child panics right after forwarding its fourth message.
    fail::cfg("rj-pull-after-forward", "3*off->panic(injected)").expect("failpoint");
    let cut = fetch_via(&supervisor, "p", 10, Duration::from_secs(1)).await;
    let crashed_at = Instant::now();
    match cut {
        Err(Error::FetchInterrupted { durable, .. }) => assert_eq!(durable, "p"),
        other => panic!("the caller gets a clear error, got {other:?}"),
    }
    fail::remove("rj-pull-after-forward");

    // The child is restarted; the next fetch (through the supervisor)
    // resumes, and what was in flight comes back at once despite ack_wait
    // being 30 s.
    let mut delivered = 0;
    while record.with(|r| r.seen.iter().filter(|s| s.delivered == 2).count()) < 10 {
        assert!(
            crashed_at.elapsed() < Duration::from_secs(10),
            "in-flight messages did not come back"
        );
        delivered += fetch_when_up(&supervisor, "p", 20, Duration::from_millis(300))
            .await
            .delivered;
    }
    assert!(delivered >= 15);
    let after = lookup(&supervisor, "p").await.expect("restarted child");
    assert_ne!(after.get_id(), before.get_id(), "a new child");
    let seen = record.with(|r| r.seen.clone());
    let back = seen
        .iter()
        .filter(|s| s.delivered == 2)
        .map(|s| s.at)
        .max()
        .expect("redelivered");
    assert!(
        back.duration_since(crashed_at) < Duration::from_secs(1),
        "in-flight messages came back after {:?}",
        back.duration_since(crashed_at)
    );
    // Acked before the crash: never again.
    let times = record.times_seen();
    for seq in 1..=5 {
        assert_eq!(
            times[&seq], 1,
            "seq {seq} was acked before the crash and came back"
        );
    }
    // 6..=9 had reached the target; 10..=15 had reached the child but not
    // the target. All of them were nak'ed at the crash.
    for seq in 6..=9 {
        assert_eq!(times[&seq], 2, "seq {seq} was in flight at the target");
    }
    let max_delivered = |seq: u64| {
        record.with(|r| {
            r.seen
                .iter()
                .filter(|s| s.stream_sequence == seq)
                .map(|s| s.delivered)
                .max()
        })
    };
    for seq in 6..=15 {
        assert_eq!(
            max_delivered(seq),
            Some(2),
            "seq {seq} was in flight at the crash"
        );
    }
    while record.distinct().len() < 20 {
        fetch_when_up(&supervisor, "p", 20, Duration::from_millis(300)).await;
    }
    let info = wait_for_consumer(&env.js, "PANIC", "p", "all acked", |i| {
        i.ack_floor.stream_sequence == 20 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
    let status = supervisor
        .call(SupervisorMsg::Status, None)
        .await
        .expect("status")
        .success_or_panic();
    assert_eq!(status.child("p").map(|c| c.restarts), Some(1));
    assert!(
        status
            .child("p")
            .and_then(|c| c.last_failure.clone())
            .is_some_and(|f| f.contains("injected"))
    );
    scenario.teardown();
}

/// The child is killed just after its worker sent a pull request, while
/// the server's answer is on the wire: messages the server sends to an
/// inbox that is going away. Swept over delays from 0 to 3 ms between the
/// request and the kill, so that some rounds die before the answer
/// arrives and some while it arrives. Whatever was sent comes back at once
/// (nak'ed by the dying reply subscription), not after the 30 s ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_child_killed_with_its_batch_on_the_wire_gets_it_back_at_once() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let scenario = fail::FailScenario::setup();
    let env = env().await;
    let (_t, target, record) = spawn_target(|_| Action::Ack).await;
    let spec = ConsumerSpec::pull("TRANSIT", "p", "t").ack_wait(Duration::from_secs(30));
    let topology = Topology::new()
        .stream(StreamSpec::new("TRANSIT", ["transit.>"]))
        .consumer(spec);
    // Thirty kills in a row: let the supervisor restart them all, fast.
    let policy = RestartPolicy {
        max_restarts: 100,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(5),
        jitter: 0.0,
        ..RestartPolicy::default()
    };
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", target)
        .restart_policy(policy);
    let (supervisor, _) = Actor::spawn(None, JetStreamSupervisor, args)
        .await
        .expect("supervisor");
    const TOTAL: usize = 1000;
    const ROUNDS: u64 = 30;
    publish_n(&env.js, "transit.x", TOTAL).await;

    let mut killed = HashSet::new();
    for delay_us in (0..ROUNDS).map(|round| round * 100) {
        // The child of this round: a new one after each kill.
        let deadline = Instant::now() + PATIENCE;
        let child = loop {
            match lookup(&supervisor, "p").await {
                Some(child) if !killed.contains(&child.get_id()) => break child,
                _ => {
                    assert!(Instant::now() < deadline, "no child after a kill");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        killed.insert(child.get_id());
        let armed = Arc::new(AtomicBool::new(true));
        let once = armed.clone();
        let victim = child.clone();
        fail::cfg_callback("rj-pull-after-request", move || {
            if once.swap(false, Ordering::SeqCst) {
                std::thread::sleep(Duration::from_micros(delay_us));
                victim.kill();
            }
        })
        .expect("failpoint");
        // Served or cut off, as the kill falls; either way nothing may be
        // lost.
        let _ = fetch_when_up_or_cut(&supervisor, "p", 30).await;
        assert!(
            !armed.load(Ordering::SeqCst),
            "round {delay_us} us: the failpoint fired"
        );
    }
    fail::remove("rj-pull-after-request");
    let killed_at = Instant::now();

    while record.distinct().len() < TOTAL {
        if killed_at.elapsed() > Duration::from_secs(15) {
            let seen = record.distinct();
            let missing: Vec<u64> = (1..=TOTAL as u64).filter(|s| !seen.contains(s)).collect();
            let info = try_consumer_info(&env.js, "TRANSIT", "p").await;
            panic!(
                "{} of {TOTAL} never came back within 15 s (ack wait 30 s): {missing:?}; the server: {info:?}",
                missing.len()
            );
        }
        fetch_when_up(&supervisor, "p", 100, Duration::from_millis(300)).await;
    }
    let info = wait_for_consumer(&env.js, "TRANSIT", "p", "all acked", |i| {
        i.ack_floor.stream_sequence == TOTAL as u64 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
    scenario.teardown();
}

/// One fetch through the supervisor once the child is up: its own result,
/// whether served or cut off by a crash.
async fn fetch_when_up_or_cut(
    supervisor: &ActorRef<SupervisorMsg>,
    durable: &str,
    batch: u64,
) -> Result<ractor_jetstream::FetchOutcome, Error> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match fetch_via(supervisor, durable, batch, Duration::from_secs(1)).await {
            Err(Error::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            other => return other,
        }
    }
}

/// Keeps a recording target alive: respawns it when it panics and points
/// the JetStream supervisor at the new one.
struct Keeper;

struct KeeperState {
    decide: Decide,
    record: Record,
    target: ActorRef<TargetMsg>,
    supervisor: Arc<Mutex<Option<ActorRef<SupervisorMsg>>>>,
    respawns: Arc<Mutex<usize>>,
}

impl Actor for Keeper {
    type Msg = ();
    type State = KeeperState;
    type Arguments = (
        Decide,
        Record,
        Arc<Mutex<Option<ActorRef<SupervisorMsg>>>>,
        Arc<Mutex<usize>>,
    );

    async fn pre_start(
        &self,
        myself: ActorRef<()>,
        (decide, record, supervisor, respawns): Self::Arguments,
    ) -> Result<KeeperState, ActorProcessingErr> {
        let target = spawn_linked_target(&myself, decide.clone(), record.clone()).await?;
        Ok(KeeperState {
            decide,
            record,
            target,
            supervisor,
            respawns,
        })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        state: &mut KeeperState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, _) = event
            && cell.get_id() == state.target.get_id()
        {
            state.target =
                spawn_linked_target(&myself, state.decide.clone(), state.record.clone()).await?;
            *state.respawns.lock().expect("lock") += 1;
            if let Some(supervisor) = state.supervisor.lock().expect("lock").as_ref() {
                supervisor.cast(SupervisorMsg::SetTarget {
                    name: "t".into(),
                    target: state.target.get_derived().into(),
                })?;
            }
        }
        Ok(())
    }
}

async fn spawn_linked_target(
    keeper: &ActorRef<()>,
    decide: Decide,
    record: Record,
) -> Result<ActorRef<TargetMsg>, ActorProcessingErr> {
    let (target, _) = Actor::spawn_linked(
        None,
        RecordingTarget,
        TargetArgs {
            decide,
            record,
            batch_ack: None,
        },
        keeper.get_cell(),
    )
    .await?;
    Ok(target)
}

#[tokio::test]
async fn messages_a_target_panics_on_are_delivered_again_and_acked_ones_are_not() {
    // Failpoints are process-wide: run alone.
    let _scenario = fail::FailScenario::setup();
    let env = env().await;
    create_stream(&env.js, "TPANIC", &["tpanic.>"]).await;
    publish_n(&env.js, "tpanic.x", 30).await;
    // The target panics the first time it meets 7 or 19; it acks the rest.
    let met: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let acked: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let decide: Decide = {
        let (met, acked) = (met.clone(), acked.clone());
        Arc::new(move |d| {
            let seq = d.info().stream_sequence;
            if matches!(seq, 7 | 19) && met.lock().expect("lock").insert(seq) {
                return Action::Panic;
            }
            acked.lock().expect("lock").insert(seq, d.info().delivered);
            Action::Ack
        })
    };
    let record = Record::default();
    let supervisor_slot: Arc<Mutex<Option<ActorRef<SupervisorMsg>>>> = Arc::default();
    let respawns = Arc::new(Mutex::new(0));
    let (keeper, _) = Actor::spawn(
        None,
        Keeper,
        (
            decide,
            record.clone(),
            supervisor_slot.clone(),
            respawns.clone(),
        ),
    )
    .await
    .expect("keeper");
    let first_target = keeper_target(&record, &keeper).await;
    let topology = Topology::new().consumer(ConsumerSpec::pull("TPANIC", "tp", "t"));
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", first_target),
    )
    .await
    .expect("supervisor");
    *supervisor_slot.lock().expect("lock") = Some(supervisor.clone());

    let deadline = Instant::now() + PATIENCE;
    while acked.lock().expect("lock").len() < 30 {
        assert!(
            Instant::now() < deadline,
            "not everything was acked: {:?}",
            acked.lock().expect("lock").keys().collect::<Vec<_>>()
        );
        let _ = fetch_via(&supervisor, "tp", 10, Duration::from_millis(300)).await;
    }
    assert_eq!(
        *respawns.lock().expect("lock"),
        2,
        "the target panicked twice"
    );
    // Every message was acked exactly once, and none was delivered after
    // its ack.
    let times = record.times_seen();
    let acked = acked.lock().expect("lock").clone();
    for (seq, acked_on) in &acked {
        let seen = record.with(|r| {
            r.seen
                .iter()
                .filter(|s| s.stream_sequence == *seq)
                .map(|s| s.delivered)
                .max()
        });
        assert_eq!(
            seen,
            Some(*acked_on),
            "seq {seq} was delivered again after its ack"
        );
    }
    assert!(
        times[&7] >= 2 && times[&19] >= 2,
        "the messages the target panicked on came back: {times:?}"
    );
    wait_for_consumer(&env.js, "TPANIC", "tp", "all acked", |i| {
        i.ack_floor.stream_sequence == 30 && i.num_ack_pending == 0
    })
    .await;
}

/// The keeper's first target, as a derived ref (looked up through a
/// throwaway recording of the keeper's children).
async fn keeper_target(
    _record: &Record,
    keeper: &ActorRef<()>,
) -> ractor::DerivedActorRef<ractor_jetstream::Delivery> {
    let child = keeper
        .get_children()
        .into_iter()
        .next()
        .expect("keeper has its target");
    let target: ActorRef<TargetMsg> = child.into();
    target.get_derived()
}

#[tokio::test]
async fn a_killed_push_child_gets_its_window_back_without_gaps_and_in_order() {
    // Failpoints are process-wide: run alone.
    let _scenario = fail::FailScenario::setup();
    let env = env().await;
    let total = 150u64;
    let window = 10;
    // The first window is held (never settled by the target); once the
    // child is killed and restarted, everything is acked.
    let (_t, target, record) =
        spawn_target(
            move |d| match (d.info().stream_sequence, d.info().delivered) {
                (1..=10, 1) => Action::Hold,
                _ => Action::Ack,
            },
        )
        .await;
    // The server's max_ack_pending equals the window, so that when the
    // window is full nothing is in transit between the server and the
    // child. (A message on the wire when a process dies can only come back
    // after ack_wait; nobody has its reply subject to nak it.)
    let spec = ConsumerSpec::new(
        "PKILL",
        "pk",
        "t",
        PushSpec::default().window(window as u64),
    )
    .max_ack_pending(window as u64)
    .ack_wait(Duration::from_secs(30));
    let topology = Topology::new()
        .stream(StreamSpec::new("PKILL", ["pkill.>"]))
        .consumer(spec);
    let (supervisor, _) = Actor::spawn(
        None,
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target),
    )
    .await
    .expect("supervisor");
    publish(&env.js, (0..total).map(|i| format!("pkill.{}", i % 3))).await;
    wait_until("the window fills", PATIENCE, || record.count() >= window).await;
    wait_for_consumer(&env.js, "PKILL", "pk", "the window is out", |i| {
        i.num_ack_pending == window
    })
    .await;
    assert_eq!(record.count(), window, "only the window reached the target");

    let child = lookup(&supervisor, "pk").await.expect("child");
    let killed_at = Instant::now();
    let before_kill = record.count();
    child.kill();
    let deadline = Instant::now() + PATIENCE;
    while !(record.distinct().len() as u64 == total && record.count() >= total as usize + window) {
        if Instant::now() > deadline {
            let info = consumer_info(&env.js, "PKILL", "pk").await;
            panic!(
                "not everything came back: distinct={} count={} ack_floor={} ack_pending={} pending={} redelivered={} status={:?}",
                record.distinct().len(),
                record.count(),
                info.ack_floor.stream_sequence,
                info.num_ack_pending,
                info.num_pending,
                info.num_redelivered,
                supervisor
                    .call(SupervisorMsg::Status, None)
                    .await
                    .expect("status")
                    .success_or_panic()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(10),
        "recovery waited for ack_wait"
    );
    let info = wait_for_consumer(&env.js, "PKILL", "pk", "all acked", |i| {
        i.ack_floor.stream_sequence == total && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(info.num_pending, 0);
    // Nothing skipped; the held window came back (delivered twice).
    let times = record.times_seen();
    assert_eq!(
        times.keys().copied().collect::<BTreeSet<_>>(),
        (1..=total).collect()
    );
    for seq in 1..=10 {
        assert_eq!(times[&seq], 2, "seq {seq} was in the window");
    }
    // After the restart, each subject's deliveries are in stream order.
    let after: Vec<Seen> = record.with(|r| r.seen[before_kill..].to_vec());
    for subject in ["pkill.0", "pkill.1", "pkill.2"] {
        let seqs: Vec<u64> = after
            .iter()
            .filter(|s| s.subject == subject)
            .map(|s| s.stream_sequence)
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{subject} out of order after the restart: {seqs:?}"
        );
    }
}

/// Records how its child supervisor ended.
struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = Arc<Mutex<Option<(String, Option<Error>)>>>;
    type Arguments = Arc<Mutex<Option<(String, Option<Error>)>>>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        slot: Self::State,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(slot)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        slot: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(_, err) = event {
            // The library's own error, without parsing the text.
            let ours = Error::of_actor_failure(err.as_ref()).cloned();
            *slot.lock().expect("lock") = Some((err.to_string(), ours));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_child_that_fails_on_every_start_makes_the_supervisor_fail_with_a_clear_error() {
    let scenario = fail::FailScenario::setup();
    let env = env().await;
    let (_t, target, _record) = acking_target().await;
    let failure = Arc::new(Mutex::new(None));
    let (parent, _) = Actor::spawn(None, Parent, failure.clone())
        .await
        .expect("parent");
    let policy = RestartPolicy {
        max_restarts: 3,
        within: Duration::from_secs(30),
        initial_backoff: Duration::from_millis(20),
        factor: 2.0,
        jitter: 0.0,
        ..RestartPolicy::default()
    };
    let topology = Topology::new()
        .stream(StreamSpec::new("FLAKY", ["flaky.>"]))
        .consumer(ConsumerSpec::pull("FLAKY", "flaky", "t"));
    let args = SupervisorArgs::new(env.js.clone(), topology)
        .target("t", target)
        .restart_policy(policy);
    let (supervisor, _) = Actor::spawn_linked(None, JetStreamSupervisor, args, parent.get_cell())
        .await
        .expect("supervisor");

    // From now on every start of the child fails.
    fail::cfg("rj-child-pre-start", "panic(cannot start)").expect("failpoint");
    let started = Instant::now();
    lookup(&supervisor, "flaky").await.expect("child").kill();
    wait_until("the supervisor fails to its parent", PATIENCE, || {
        failure.lock().expect("lock").is_some()
    })
    .await;
    let (text, error) = failure.lock().expect("lock").clone().unwrap_or_default();
    assert!(text.contains("flaky"), "names the child: {text}");
    assert!(text.contains("gave up"), "{text}");
    assert!(
        text.contains("cannot start"),
        "names the last failure: {text}"
    );
    let Some(Error::GaveUp {
        durable,
        restarts,
        within,
        last_failure,
    }) = error
    else {
        panic!("the parent gets Error::GaveUp, got {error:?} ({text})");
    };
    assert_eq!(
        (durable.as_str(), restarts, within),
        ("flaky", 3, Duration::from_secs(30))
    );
    assert!(
        last_failure
            .as_deref()
            .is_some_and(|f| f.contains("cannot start")),
        "{last_failure:?}"
    );
    // Three restarts with growing delays (20, 40, 80 ms) came first.
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    supervisor
        .wait(Some(PATIENCE))
        .await
        .expect("supervisor stopped");
    fail::remove("rj-child-pre-start");
    scenario.teardown();
}

#[tokio::test]
async fn drain_completes_decisions_naks_the_rest_and_a_new_supervisor_gets_them_at_once() {
    // Failpoints are process-wide: run alone.
    let _scenario = fail::FailScenario::setup();
    let env = env().await;
    let total = 30u64;
    // Of the window of 10: 1..=5 are acked 200 ms later, 6..=10 are never
    // decided.
    let (_t, target, record) = spawn_target(|d| match d.info().stream_sequence {
        1..=5 => Action::AckAfter(Duration::from_millis(200)),
        _ => Action::Hold,
    })
    .await;
    let spec = ConsumerSpec::new("DRAIN", "d", "t", PushSpec::default().window(10))
        .ack_wait(Duration::from_secs(30));
    let topology = Topology::new()
        .stream(StreamSpec::new("DRAIN", ["drain.>"]))
        .consumer(spec.clone());
    let (supervisor, _) = Actor::spawn(
        Some("drain-a".into()),
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology.clone()).target("t", target),
    )
    .await
    .expect("supervisor");
    publish_n(&env.js, "drain.x", total as usize).await;
    wait_until("the window fills", PATIENCE, || record.count() >= 10).await;
    wait_for_consumer(&env.js, "DRAIN", "d", "everything pushed", |i| {
        i.num_ack_pending as u64 == total
    })
    .await;

    let report = supervisor
        .call(
            |reply| SupervisorMsg::Drain {
                timeout: Duration::from_secs(1),
                reply,
            },
            Some(PATIENCE),
        )
        .await
        .expect("drain")
        .success_or_panic();
    let drained_at = Instant::now();
    assert_eq!(report.settled, 5, "{report:?}");
    assert_eq!(report.naked, total - 5, "{report:?}");
    let status = supervisor
        .call(SupervisorMsg::Status, None)
        .await
        .expect("status")
        .success_or_panic();
    assert!(status.drained);
    assert!(
        lookup(&supervisor, "d").await.is_none(),
        "the child stopped"
    );
    wait_for_consumer(&env.js, "DRAIN", "d", "5 acked, the rest nak'ed", |i| {
        i.ack_floor.stream_sequence == 5
    })
    .await;
    supervisor.stop(None);

    // A new supervisor gets everything that was nak'ed, at once.
    let (_t2, target2, record2) = acking_target().await;
    let (_second, _) = Actor::spawn(
        Some("drain-b".into()),
        JetStreamSupervisor,
        SupervisorArgs::new(env.js.clone(), topology).target("t", target2),
    )
    .await
    .expect("second supervisor");
    wait_until(
        "the new supervisor gets the rest",
        Duration::from_secs(5),
        || record2.distinct().len() as u64 == total - 5,
    )
    .await;
    assert!(
        drained_at.elapsed() < Duration::from_secs(5),
        "nothing waited for ack_wait"
    );
    assert_eq!(record2.distinct(), (6..=total).collect::<BTreeSet<_>>());
    wait_for_consumer(&env.js, "DRAIN", "d", "all acked", |i| {
        i.ack_floor.stream_sequence == total && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_on_a_delivery_the_server_sent_again_is_late_and_not_applied() {
    let scenario = fail::FailScenario::setup();
    // No keep-alive reaches the server: it delivers the held message again
    // after its ack wait, to the same child.
    fail::cfg("rj-skip-keep-alive", "return").expect("failpoint");
    let env = env().await;
    create_stream(&env.js, "LATE", &["late.>"]).await;
    publish_n(&env.js, "late.a", 1).await;
    let (target, mut rx) = forwarding_target().await;
    // Push: the server sends the redelivery to the same subscription while
    // the target still holds the first delivery.
    let spec = ConsumerSpec::push("LATE", "again", "t")
        .ack_wait(Duration::from_secs(1))
        .max_hold(Duration::from_secs(30));
    let (child, _) = Actor::spawn(
        None,
        ractor_jetstream::PushConsumer,
        ractor_jetstream::ConsumerArgs {
            connection: env.js.clone().into(),
            spec,
            target: target.get_derived().into(),
        },
    )
    .await
    .expect("spawn push child");
    let first = next(&mut rx).await;
    let again = next(&mut rx).await;
    assert_eq!(
        (first.stream_sequence(), first.delivered()),
        (1, 1),
        "the first delivery"
    );
    assert_eq!(
        (again.stream_sequence(), again.delivered()),
        (1, 2),
        "the server's second delivery of the same message"
    );
    let err = first
        .ack_confirmed()
        .await
        .expect_err("the first delivery's ack is not the one that counts");
    assert!(
        err.to_string().contains("delivered the message again"),
        "{err}"
    );
    again
        .ack_confirmed()
        .await
        .expect("the newer delivery's ack");
    let stats = child
        .call(ractor_jetstream::ConsumerMsg::Stats, Some(PATIENCE))
        .await
        .expect("stats")
        .success_or_panic();
    assert_eq!(
        (stats.late_decisions, stats.acks_confirmed),
        (1, 1),
        "{stats:?}"
    );
    let info = consumer_info(&env.js, "LATE", "again").await;
    assert_eq!(info.ack_floor.stream_sequence, 1);
    assert_eq!(info.num_ack_pending, 0);
    scenario.teardown();
}
