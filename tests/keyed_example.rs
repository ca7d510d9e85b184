//! The `keyed_workers` example, run as a user would run it, against a
//! server the test starts (through `NATS_URL`): every message acked once
//! and each key's messages worked on in stream order, in pull and in push
//! mode, through naks, and across a kill of the process.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use tokio::process::Command;

use common::{env, example_bin, wait_for_consumer};

/// Generous bound for anything that should happen "soon".
const PATIENCE: Duration = Duration::from_secs(30);
/// How long one run of the example may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The example as a command against `url`.
fn keyed_workers(url: &str, args: &[String]) -> Command {
    let mut command = Command::new(example_bin("keyed_workers"));
    command
        .args(args)
        .env("NATS_URL", url)
        .kill_on_drop(true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    command
}

/// Runs the example to its end (within [`RUN_LIMIT`]); returns its output.
async fn run_to_end(url: &str, args: &[String]) -> Output {
    let child = keyed_workers(url, args).spawn().expect("run keyed_workers");
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("keyed_workers {args:?} still running after {RUN_LIMIT:?}"))
        .expect("wait for keyed_workers")
}

/// Runs the example to a successful end; returns the fields of its last
/// line.
async fn run_successfully(url: &str, args: &[String]) -> BTreeMap<String, u64> {
    let output = run_to_end(url, args).await;
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(
        output.status.success(),
        "keyed_workers failed ({}): {stderr}\n{stdout}",
        output.status
    );
    summary(&stdout)
}

/// The fields of the summary, which must be the last line of `stdout`.
fn summary(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout.lines().last().unwrap_or_default();
    let rest = line
        .strip_prefix("keyed_workers: ")
        .unwrap_or_else(|| panic!("last line {line:?} is not the summary: {stdout}"));
    let fields: BTreeMap<String, u64> = rest
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("{kv:?} in {line:?} is not key=value"));
            let v = v
                .parse()
                .unwrap_or_else(|_| panic!("{k}={v} in {line:?} is not a number"));
            (k.to_string(), v)
        })
        .collect();
    let names: Vec<&str> = fields.keys().map(String::as_str).collect();
    let mut expected = [
        "delivered",
        "acked",
        "naked",
        "workers",
        "keys",
        "max_parallel",
        "order_violations",
    ];
    expected.sort_unstable();
    assert_eq!(names, expected, "{line}");
    fields
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Publishes `messages` messages, round robin over `keys` keys
/// (`<prefix>.k<i>.event`, keyed by token 1), each confirmed stored.
/// Returns each key's stream sequences, in stream order.
async fn publish_keyed(
    js: &jetstream::Context,
    prefix: &str,
    keys: usize,
    messages: usize,
) -> BTreeMap<String, Vec<u64>> {
    let mut acks = Vec::new();
    for i in 0..messages {
        let key = format!("k{}", i % keys);
        let ack = js
            .publish(format!("{prefix}.{key}.event"), format!("{i}").into())
            .await
            .expect("publish");
        acks.push((key, ack));
    }
    let mut by_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, ack) in acks {
        let sequence = ack.await.expect("publish ack").sequence;
        by_key.entry(key).or_default().push(sequence);
    }
    by_key
}

/// The record file: one `(key, stream sequence)` per line, in file order.
fn read_record(path: &Path) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let (key, sequence) = line
                .split_once(' ')
                .unwrap_or_else(|| panic!("record line {line:?} is not `KEY SEQ`"));
            let sequence = sequence
                .parse()
                .unwrap_or_else(|_| panic!("record line {line:?}: not a sequence"));
            (key.to_string(), sequence)
        })
        .collect()
}

/// Each key's recorded sequences, in the order they were recorded.
fn by_key(record: &[(String, u64)]) -> BTreeMap<String, Vec<u64>> {
    let mut keys: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (key, sequence) in record {
        keys.entry(key.clone()).or_default().push(*sequence);
    }
    keys
}

async fn wait_for_stream(js: &jetstream::Context, name: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(err) = js.get_stream(name).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {name} never appeared: {err}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const KEYS: usize = 64;
const MESSAGES: usize = 2000;
const WORKERS: u64 = 8;

/// A full run over 64 keys and 2000 messages with every 7th first delivery
/// nak'ed; checks the summary, the record and the server's view.
async fn every_message_once_in_key_order(mode: &str) {
    let env = env().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.txt");
    let durable = format!("{mode}-workers");
    let run_args = args(&[
        "--stream",
        "KEYED",
        "--subjects",
        "keyed.>",
        "--durable",
        &durable,
        "--workers",
        &WORKERS.to_string(),
        "--key-token",
        "1",
        "--work-ms",
        "2",
        "--mode",
        mode,
        "--batch",
        "100",
        "--max-messages",
        &MESSAGES.to_string(),
        "--idle-exit-ms",
        "10000",
        "--record",
        record.to_str().expect("utf-8 path"),
        "--nak-every",
        "7",
    ]);
    example_bin("keyed_workers");
    let url = env.server.url();
    let (published, fields) = if mode == "pull" {
        // Another program made the stream, with just a name and subjects,
        // and published; the example uses the stream as it is.
        env.js
            .create_stream(jetstream::stream::Config {
                name: "KEYED".into(),
                subjects: vec!["keyed.>".into()],
                ..Default::default()
            })
            .await
            .expect("create stream");
        let published = publish_keyed(&env.js, "keyed", KEYS, MESSAGES).await;
        (published, run_successfully(&url, &run_args).await)
    } else {
        // The example makes the stream; publish once it exists.
        let run = tokio::spawn(async move { run_successfully(&url, &run_args).await });
        wait_for_stream(&env.js, "KEYED").await;
        let published = publish_keyed(&env.js, "keyed", KEYS, MESSAGES).await;
        (published, run.await.expect("join the run"))
    };

    eprintln!("{mode}: {fields:?}");
    assert_eq!(fields["acked"], MESSAGES as u64, "{fields:?}");
    assert_eq!(fields["order_violations"], 0, "{fields:?}");
    assert_eq!(fields["keys"], KEYS as u64, "{fields:?}");
    assert_eq!(fields["workers"], WORKERS, "{fields:?}");
    assert!(
        fields["max_parallel"] > 1 && fields["max_parallel"] <= WORKERS,
        "max_parallel must be within 2..={WORKERS}: {fields:?}"
    );
    // Every 7th first delivery a worker got; a message nak'ed behind an
    // earlier one of its key never reaches a worker the first time.
    assert!(
        (1..=MESSAGES as u64 / 7).contains(&fields["naked"]),
        "every 7th first delivery is nak'ed: {fields:?}"
    );
    assert_eq!(
        fields["delivered"],
        fields["acked"] + fields["naked"],
        "each delivery a worker got was acked or nak'ed: {fields:?}"
    );

    // The record: every sequence exactly once, under its key, and each
    // key's in stream order.
    let recorded = by_key(&read_record(&record));
    assert_eq!(
        recorded, published,
        "each key's messages recorded once each, in stream order"
    );

    wait_for_consumer(&env.js, "KEYED", &durable, "every message acked", |i| {
        i.num_pending == 0 && i.num_ack_pending == 0
    })
    .await;
}

#[tokio::test]
async fn pull_workers_process_every_message_once_in_key_order() {
    every_message_once_in_key_order("pull").await;
}

#[tokio::test]
async fn push_workers_process_every_message_once_in_key_order() {
    every_message_once_in_key_order("push").await;
}

/// Bad arguments are refused in one line on stderr naming the argument,
/// before anything connects (the server address is unreachable).
#[tokio::test]
async fn bad_arguments_are_refused_in_one_line_without_connecting() {
    let good = [
        ("--stream", "S"),
        ("--subjects", "s.>"),
        ("--durable", "d"),
        ("--workers", "4"),
        ("--key-token", "1"),
        ("--work-ms", "1"),
    ];
    let with = |flag: &str, value: Option<&str>| -> Vec<String> {
        let mut list = Vec::new();
        for (f, v) in good {
            if f != flag {
                list.extend([f.to_string(), v.to_string()]);
            }
        }
        if let Some(value) = value {
            list.extend([flag.to_string(), value.to_string()]);
        }
        list
    };
    let cases = [
        ("--workers", with("--workers", Some("0"))),
        ("--workers", with("--workers", Some("many"))),
        ("--stream", with("--stream", None)),
        ("--key-token", with("--key-token", None)),
        ("--mode", with("--mode", Some("sideways"))),
        ("--batch", with("--batch", Some("0"))),
        ("--nak-every", with("--nak-every", Some("-1"))),
        ("--bogus", with("--bogus", Some("1"))),
        ("streams[0].name", with("--stream", Some("BAD.NAME"))),
    ];
    for (named, list) in cases {
        let started = std::time::Instant::now();
        let output = run_to_end("nats://127.0.0.1:1", &list).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{list:?} was accepted: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{list:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "{list:?} should name {named}: {stderr}"
        );
        assert!(
            !stderr.contains("cannot connect"),
            "{list:?} tried to connect: {stderr}"
        );
        assert!(output.stdout.is_empty(), "{list:?}: printed a summary");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{list:?} took {:?} to be refused",
            started.elapsed()
        );
    }
}

/// Polls the record file until it has at least `lines` lines.
async fn wait_for_record(path: &Path, lines: usize) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = std::fs::read_to_string(path)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if now >= lines {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {now} of {lines} records after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A process killed mid-run (SIGKILL: no drain, no nak) leaves messages
/// unacknowledged; the next process on the same durable processes each
/// key's messages in stream order still: it repeats only messages that
/// were unacknowledged at the kill, in order, and before anything newer of
/// their key.
#[tokio::test]
async fn each_keys_order_survives_a_killed_process() {
    const KEYS: usize = 32;
    const MESSAGES: usize = 3000;
    let env = env().await;
    let url = env.server.url();
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.txt");

    // The stream, and the durable as the example binds it (pull, explicit
    // acks, max_ack_pending of max(2 × batch, 256) = 256 for the default
    // batch of 100) but with a short ack_wait, which the example keeps.
    let stream = env
        .js
        .create_stream(jetstream::stream::Config {
            name: "KILLED".into(),
            subjects: vec!["kill.>".into()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("survivor".into()),
            name: Some("survivor".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(3),
            max_ack_pending: 256,
            ..Default::default()
        })
        .await
        .expect("create durable");
    let published = publish_keyed(&env.js, "kill", KEYS, MESSAGES).await;
    let mut run_args = args(&[
        "--stream",
        "KILLED",
        "--subjects",
        "kill.>",
        "--durable",
        "survivor",
        "--workers",
        "8",
        "--key-token",
        "1",
        "--work-ms",
        "2",
        "--record",
        record.to_str().expect("utf-8 path"),
    ]);

    // The first process, killed once it has recorded a few hundred (in
    // the middle of a batch).
    let mut first = keyed_workers(&url, &run_args)
        .spawn()
        .expect("run keyed_workers");
    wait_for_record(&record, 350).await;
    first.start_kill().expect("SIGKILL");
    let status = tokio::time::timeout(PATIENCE, first.wait())
        .await
        .expect("the killed process ends")
        .expect("wait");
    assert!(!status.success(), "killed: {status}");
    let before = read_record(&record);
    assert!(
        before.len() < MESSAGES,
        "the kill came after everything was done ({} records)",
        before.len()
    );
    let at_kill = wait_for_consumer(&env.js, "KILLED", "survivor", "the consumer", |_| true).await;
    let ack_floor = at_kill.ack_floor.stream_sequence;
    assert!(
        at_kill.num_ack_pending > 0,
        "the kill left nothing unacknowledged: {at_kill:?}"
    );

    // The second process on the same durable, until it idles.
    run_args.extend(args(&["--idle-exit-ms", "8000"]));
    let fields = run_successfully(&url, &run_args).await;
    eprintln!(
        "killed after {} records; at the kill: ack floor {ack_floor}, {} unacknowledged; second run: {fields:?}",
        before.len(),
        at_kill.num_ack_pending
    );
    assert_eq!(fields["order_violations"], 0, "{fields:?}");

    // Per key: the first process recorded a prefix of the key's messages,
    // the second a suffix, which starts no later than where the first
    // stopped (no gap); what both recorded was unacknowledged at the kill.
    let all = read_record(&record);
    let (first_run, second_run) = all.split_at(before.len());
    assert_eq!(first_run, before.as_slice(), "the record is append-only");
    let (first_run, second_run) = (by_key(first_run), by_key(second_run));
    let mut repeated = 0;
    for (key, messages) in &published {
        let done = first_run.get(key).map(Vec::as_slice).unwrap_or_default();
        let rest = second_run.get(key).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            done,
            &messages[..done.len()],
            "key {key}: the first process worked on a prefix, in order"
        );
        let from = rest.first().map_or(messages.len(), |first| {
            messages
                .iter()
                .position(|s| s == first)
                .unwrap_or_else(|| panic!("key {key}: #{first} is not one of its messages"))
        });
        let upto = (from + rest.len()).min(messages.len());
        assert_eq!(
            rest,
            &messages[from..upto],
            "key {key}: the second process worked on consecutive messages, in order"
        );
        assert!(
            from <= done.len(),
            "key {key}: a gap: the first process stopped at {:?}, the second started at #{}",
            done.last(),
            messages[from]
        );
        assert_eq!(
            upto,
            messages.len(),
            "key {key}: never processed: {:?}",
            &messages[upto..]
        );
        let again = &messages[from..done.len()];
        assert!(
            again.iter().all(|s| *s > ack_floor),
            "key {key}: repeated {again:?}, but the ack floor at the kill was {ack_floor}"
        );
        repeated += again.len();
    }
    assert!(
        repeated <= at_kill.num_ack_pending,
        "{repeated} repeated, but only {} were unacknowledged at the kill",
        at_kill.num_ack_pending
    );
    let total: BTreeSet<u64> = all.iter().map(|(_, s)| *s).collect();
    assert_eq!(total.len(), MESSAGES, "every message recorded");

    let info = wait_for_consumer(&env.js, "KILLED", "survivor", "every message acked", |i| {
        i.num_pending == 0 && i.num_ack_pending == 0
    })
    .await;
    // Both processes bound the durable as it was.
    assert_eq!(
        (info.config.ack_wait, info.config.max_ack_pending),
        (Duration::from_secs(3), 256),
        "{:?}",
        info.config
    );
}
