//! The `partitioned` example, run as member processes would be run, against
//! a server (and a 3-node cluster) the test starts: members share 20,000
//! messages over 6 partitions while one joins late, one is SIGKILLed and one
//! leaves gracefully. Every message is processed, no partition is worked on
//! by two members at overlapping times (except messages that were in flight
//! at the killed member), and the first processing of each message is in
//! stream order per key, across takeovers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use common::example_bin;

const PARTITIONS: u32 = 6;
const MESSAGES: usize = 20_000;
const KEYS: usize = 60;
/// How long a member may take to finish after it was told to stop.
const STOP_LIMIT: Duration = Duration::from_secs(60);

/// One member process, with its output lines as they come.
struct Member {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl Member {
    fn start(urls: &str, stream: &str, name: &str, record: &Path, extra: &[&str]) -> Self {
        let mut command = Command::new(example_bin("partitioned"));
        command
            .args([
                "--stream",
                stream,
                "--subjects",
                "orders.*",
                "--key-token",
                "2",
                "--partitions",
                &PARTITIONS.to_string(),
                "--member",
                name,
                "--work-ms",
                "1",
                "--priority-timeout-ms",
                "1000",
                "--record",
            ])
            .arg(record)
            .args(extra)
            .env("NATS_URL", urls)
            .env(
                "RUST_LOG",
                std::env::var("RJ_MEMBER_LOG").unwrap_or_default(),
            )
            .kill_on_drop(true)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start a member");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            name: name.to_string(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    fn pump(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
    }

    /// The partitions of the last `holds=` line.
    fn holds(&mut self) -> Option<Vec<u32>> {
        self.pump();
        let line = self.seen.iter().rev().find(|l| l.contains(" holds=["))?;
        let list = line.split("holds=[").nth(1)?.trim_end_matches(']');
        Some(
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().expect("partition"))
                .collect(),
        )
    }

    async fn wait_holding(&mut self, what: &str) -> Vec<u32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(held) = self.holds().filter(|h| !h.is_empty()) {
                return held;
            }
            assert!(
                Instant::now() < deadline,
                "{} never held a partition ({what}); output: {:?}",
                self.name,
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the member with SIGTERM and returns its summary fields.
    async fn stop(mut self) -> BTreeMap<String, String> {
        let pid = self.child.id().expect("pid");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM to {}", self.name);
        let status = tokio::time::timeout(STOP_LIMIT, self.child.wait())
            .await
            .expect("member stops in time")
            .expect("wait");
        assert!(status.success(), "{} exited with {status}", self.name);
        // The reader task ends with the process's stdout.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.pump();
        let last = self.seen.last().cloned().unwrap_or_default();
        let prefix = format!("partitioned: member={} acked=", self.name);
        assert!(
            last.starts_with(&prefix),
            "last line of {}: {last:?} ({:?})",
            self.name,
            self.seen
        );
        last.split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// One line of a record file.
#[derive(Debug, Clone)]
struct Processed {
    member: String,
    partition: u32,
    key: String,
    seq: u64,
    start: u128,
    end: u128,
}

fn read_records(paths: &[PathBuf]) -> Vec<Processed> {
    let mut all = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            // A killed member's last line may be cut short.
            if f.len() != 6 {
                continue;
            }
            let (Ok(partition), Ok(seq), Ok(start), Ok(end)) =
                (f[1].parse(), f[3].parse(), f[4].parse(), f[5].parse())
            else {
                continue;
            };
            all.push(Processed {
                member: f[0].into(),
                partition,
                key: f[2].into(),
                seq,
                start,
                end,
            });
        }
    }
    all
}

/// Publishes `MESSAGES` over `KEYS` keys once the stream exists.
async fn publish_all(js: jetstream::Context, stream: String) -> BTreeMap<u64, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.get_stream(&stream).await.is_err() {
        assert!(Instant::now() < deadline, "no member created the stream");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut keys = BTreeMap::new();
    // On a cluster the stream can be found a moment before every server
    // routes its subjects to it: the first message is published alone, and
    // again while the server answers that no stream takes it (then it was
    // not stored).
    loop {
        let key = "k0".to_string();
        let ack = js
            .publish(format!("orders.{key}"), "0".into())
            .await
            .expect("publish");
        match ack.await {
            Ok(ack) => {
                keys.insert(ack.sequence, key);
                break;
            }
            Err(err)
                if err.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(err) => panic!("the first message: {err}"),
        }
    }
    let mut acks = Vec::new();
    for i in 1..MESSAGES {
        let key = format!("k{}", i % KEYS);
        let ack = js
            .publish(format!("orders.{key}"), format!("{i}").into())
            .await
            .expect("publish");
        acks.push((ack, key));
        if acks.len() >= 500 {
            for (ack, key) in acks.drain(..) {
                keys.insert(ack.await.expect("stored").sequence, key);
            }
            // Paced, so that the run lasts long enough for joins and kills.
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }
    for (ack, key) in acks {
        keys.insert(ack.await.expect("stored").sequence, key);
    }
    keys
}

/// Every check on what the members recorded.
fn check(records: &[Processed], published: &BTreeMap<u64, String>, killed: &str) {
    // Every sequence processed, under its own key.
    let seen: BTreeSet<u64> = records.iter().map(|r| r.seq).collect();
    let missing: Vec<u64> = published
        .keys()
        .filter(|s| !seen.contains(s))
        .copied()
        .collect();
    assert!(
        missing.is_empty(),
        "{} sequences never processed, first {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for r in records {
        assert_eq!(published.get(&r.seq), Some(&r.key), "key of {r:?}");
    }
    // No partition worked on by two members at once, except messages that
    // were in flight at the killed member (processed again elsewhere).
    let mut times: BTreeMap<u64, usize> = BTreeMap::new();
    for r in records {
        *times.entry(r.seq).or_default() += 1;
    }
    let counted: Vec<&Processed> = records
        .iter()
        .filter(|r| !(r.member == killed && times[&r.seq] > 1))
        .collect();
    for partition in 0..PARTITIONS {
        let mut spans: Vec<&&Processed> = counted
            .iter()
            .filter(|r| r.partition == partition)
            .collect();
        spans.sort_by_key(|r| r.start);
        for pair in spans.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let history =
                |seq: u64| -> Vec<&Processed> { records.iter().filter(|r| r.seq == seq).collect() };
            assert!(
                a.member == b.member || a.end <= b.start,
                "partition {partition} worked on by {} and {} at once: {a:?} {b:?}; histories {:?} {:?}",
                a.member,
                b.member,
                history(a.seq),
                history(b.seq)
            );
        }
    }
    // Per key, the first processing of each message is in stream order:
    // a message is first worked on only after every earlier message of
    // its key was. (A message worked on again later, after a kill or an
    // ack wait that passed, is a duplicate, not a reordering.)
    let mut first: BTreeMap<u64, &Processed> = BTreeMap::new();
    for r in records {
        let entry = first.entry(r.seq).or_insert(r);
        if r.start < entry.start {
            *entry = r;
        }
    }
    let last = first;
    let mut by_key: BTreeMap<&str, Vec<&Processed>> = BTreeMap::new();
    for r in last.values() {
        by_key.entry(&r.key).or_default().push(r);
    }
    for (key, mut list) in by_key {
        list.sort_by_key(|r| r.start);
        for pair in list.windows(2) {
            let history =
                |seq: u64| -> Vec<&Processed> { records.iter().filter(|r| r.seq == seq).collect() };
            assert!(
                pair[0].seq < pair[1].seq,
                "key {key} out of order: {:?} then {:?}; every processing of the later: {:?}",
                pair[0],
                pair[1],
                history(pair[1].seq)
            );
        }
    }
}

async fn run_scenario(urls: String, js: jetstream::Context, stream: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = |name: &str| dir.path().join(format!("{name}.rec"));
    let mut a = Member::start(&urls, stream, "a", &record("a"), &[]);
    let mut b = Member::start(&urls, stream, "b", &record("b"), &[]);
    let publisher = tokio::spawn(publish_all(js.clone(), stream.to_string()));
    let held_a = a.wait_holding("at start").await;
    let held_b = b.wait_holding("at start").await;
    assert!(
        !held_a.is_empty() && !held_b.is_empty(),
        "{held_a:?} {held_b:?}"
    );

    // c joins late and gets its share.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = Member::start(
        &urls,
        stream,
        "c",
        &record("c"),
        &["--idle-exit-ms", "4000"],
    );
    let held_c = c.wait_holding("after joining").await;
    assert!(!held_c.is_empty());
    // b is killed mid-run.
    tokio::time::sleep(Duration::from_millis(800)).await;
    b.child.start_kill().expect("SIGKILL b");
    let _ = b.child.wait().await;
    // a leaves gracefully mid-run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a_summary = a.stop().await;
    let published = publisher.await.expect("publisher");
    // c finishes alone and stops once idle.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        c.pump();
        if c.seen.last().is_some_and(|l| l.contains(" acked=")) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = tokio::time::timeout(STOP_LIMIT, c.child.wait())
        .await
        .expect("c ends")
        .expect("wait");
    assert!(status.success());
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.pump();
    let c_last = c.seen.last().cloned().unwrap_or_default();
    assert!(
        c_last.starts_with("partitioned: member=c acked="),
        "{c_last:?}"
    );
    assert!(
        c_last.contains(&format!("partitions_held={PARTITIONS}")),
        "c ends with every partition: {c_last:?}"
    );
    let takeovers: u64 = c_last
        .split("takeovers=")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("takeovers");
    assert!(
        takeovers >= 4,
        "c took over b's and a's partitions: {c_last:?}"
    );
    let a_acked: u64 = a_summary
        .get("acked")
        .and_then(|v| v.parse().ok())
        .expect("a acked");
    assert!(
        a_acked > 0,
        "a processed its share before leaving: {a_summary:?}"
    );

    let records = read_records(&[record("a"), record("b"), record("c")]);
    check(&records, &published, "b");
    // The server agrees: every partition durable acked everything.
    for p in 0..PARTITIONS {
        let durable = format!("{stream}_{p}");
        let mut consumer: jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await
            .expect("stream")
            .get_consumer(&durable)
            .await
            .expect("partition durable");
        let info = consumer.info().await.expect("info");
        assert_eq!(
            (info.num_pending, info.num_ack_pending),
            (0, 0),
            "{durable}: {info:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_the_partitions_through_a_late_join_a_kill_and_a_graceful_leave() {
    common::init_tracing();
    let server = nats_harness::NatsServer::start().await.expect("server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    run_scenario(server.url(), jetstream::new(client), "PG").await;
}

#[tokio::test]
async fn bad_arguments_are_refused_before_connecting() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--stream",
                "S",
                "--subjects",
                "o.*",
                "--key-token",
                "1",
                "--partitions",
                "6",
                "--member",
                "a",
                "--work-ms",
                "0",
            ],
            "key_token",
        ),
        (
            &[
                "--stream",
                "S",
                "--subjects",
                "o.*",
                "--key-token",
                "2",
                "--partitions",
                "0",
                "--member",
                "a",
                "--work-ms",
                "0",
            ],
            "--partitions",
        ),
        (
            &[
                "--stream",
                "S",
                "--subjects",
                "o.*",
                "--key-token",
                "2",
                "--partitions",
                "6",
                "--member",
                "a",
            ],
            "--work-ms",
        ),
        (
            &[
                "--stream",
                "S",
                "--subjects",
                "o.*",
                "--key-token",
                "2",
                "--partitions",
                "6",
                "--member",
                "a",
                "--members",
                "b,c",
                "--work-ms",
                "0",
            ],
            "members",
        ),
        (
            &[
                "--stream",
                "S.x",
                "--subjects",
                "o.*",
                "--key-token",
                "2",
                "--partitions",
                "6",
                "--member",
                "a",
                "--work-ms",
                "0",
            ],
            "stream",
        ),
        (
            &[
                "--stream",
                "S",
                "--subjects",
                "o.*",
                "--key-token",
                "2",
                "--partitions",
                "6",
                "--member",
                "a",
                "--work-ms",
                "0",
                "--priority-timeout-ms",
                "100",
            ],
            "priority_timeout",
        ),
    ];
    for (args, names) in cases {
        let output = std::process::Command::new(example_bin("partitioned"))
            .args(*args)
            // Nothing listens here: a refusal must come before connecting.
            .env("NATS_URL", "nats://127.0.0.1:1")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} accepted");
        assert!(
            stderr.contains(names) && !stderr.contains("cannot connect"),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_three_node_cluster_with_an_r3_stream_the_same_holds() {
    common::init_tracing();
    let cluster = nats_harness::NatsCluster::start(3).await.expect("cluster");
    let client = async_nats::ConnectOptions::new()
        .connect(cluster.client_urls())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    // The members create the stream when it does not exist (with one
    // replica); this one is made first, with the members' transform and
    // three replicas. Right after forming, the cluster may refuse R3
    // placement for a moment ("peer offline"): tried again.
    let config = jetstream::stream::Config {
        name: "PGR".into(),
        subjects: vec!["orders.*".into()],
        subject_transform: Some(jetstream::stream::SubjectTransform {
            source: "orders.*".into(),
            destination: "{{partition(6,1)}}.orders.{{wildcard(1)}}".into(),
        }),
        num_replicas: 3,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => break,
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(error = %err, "R3 placement refused for now");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("R3 stream: {err}"),
        }
    }
    run_scenario(cluster.client_urls().join(","), js, "PGR").await;
}
