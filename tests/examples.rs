//! The example binaries, run as a user would run them, against a server the
//! test starts (through `NATS_URL`).

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;

/// Runs an example to completion; returns its stdout, panicking with its
/// stderr when it fails.
fn run_example(name: &str, url: &str, args: &[String]) -> String {
    let output = Command::new(example_bin(name))
        .args(args)
        .env("NATS_URL", url)
        .output()
        .expect("run example");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{name} failed: {stderr}\n{stdout}");
    stdout
}

fn last_line_fields(stdout: &str, prefix: &str) -> BTreeMap<String, u64> {
    let line = stdout.lines().last().unwrap_or_default();
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("last line {line:?} lacks {prefix:?}"));
    rest.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.parse()
                    .unwrap_or_else(|_| panic!("{k}={v} is not a number")),
            )
        })
        .collect()
}

#[tokio::test]
async fn pull_worker_records_each_message_once_and_a_second_run_idles() {
    let env = env().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let record = dir.path().join("record.txt");
    let record_arg = record.to_str().expect("utf-8 path").to_string();
    let args: Vec<String> = [
        "--stream",
        "ORDERS",
        "--subjects",
        "orders.>",
        "--durable",
        "workers",
        "--batch",
        "100",
        "--expires-ms",
        "300",
        "--idle-exit-ms",
        "600",
        "--record",
        &record_arg,
        "--nak-every",
        "7",
    ]
    .map(String::from)
    .to_vec();
    let second_args = args.clone();
    example_bin("pull_worker");
    // The first run creates the stream; publish after it exists.
    let first_run_url = env.server.url();
    let publisher = {
        let js = env.js.clone();
        tokio::spawn(async move {
            wait_for_stream(&js, "ORDERS").await;
            publish_n(&js, "orders.new", 250).await
        })
    };
    let stdout =
        tokio::task::spawn_blocking(move || run_example("pull_worker", &first_run_url, &args))
            .await
            .expect("join");
    let seqs = publisher.await.expect("publisher");
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
    let fields = last_line_fields(&stdout, "pull_worker: ");
    assert_eq!(fields["acked"], 250, "{stdout}");
    assert_eq!(fields["naked"], 250 / 7, "{stdout}");
    let lines: Vec<u64> = std::fs::read_to_string(&record)
        .expect("record")
        .lines()
        .map(|l| l.parse().expect("a sequence per line"))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (1..=250).collect::<Vec<_>>(),
        "each sequence recorded exactly once"
    );
    wait_for_consumer(&env.js, "ORDERS", "workers", "all acked", |i| {
        i.ack_floor.stream_sequence == 250 && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;

    // A second run finds nothing new and ends by idling.
    let url = env.server.url();
    let stdout =
        tokio::task::spawn_blocking(move || run_example("pull_worker", &url, &second_args))
            .await
            .expect("join");
    let fields = last_line_fields(&stdout, "pull_worker: ");
    assert_eq!((fields["delivered"], fields["acked"]), (0, 0), "{stdout}");
    assert!(fields["empty_fetches"] >= 1);
    let after = std::fs::read_to_string(&record)
        .expect("record")
        .lines()
        .count();
    assert_eq!(after, 250, "the second run recorded nothing");
}

#[tokio::test]
async fn pull_worker_rejects_bad_arguments_and_an_unreachable_server_in_one_line() {
    let bin = example_bin("pull_worker");
    let bad = Command::new(&bin)
        .args([
            "--stream",
            "BAD.NAME",
            "--subjects",
            "x.>",
            "--durable",
            "d",
            "--batch",
            "10",
            "--expires-ms",
            "100",
        ])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("streams[0].name"), "{stderr}");

    let zero = Command::new(&bin)
        .args(["--batch", "0"])
        .output()
        .expect("run");
    assert!(!zero.status.success());
    assert!(String::from_utf8_lossy(&zero.stderr).contains("--batch"));

    let started = std::time::Instant::now();
    let unreachable = Command::new(&bin)
        .args([
            "--stream",
            "S",
            "--subjects",
            "x.>",
            "--durable",
            "d",
            "--batch",
            "10",
            "--expires-ms",
            "100",
        ])
        .env("NATS_URL", "nats://127.0.0.1:1")
        .output()
        .expect("run");
    assert!(!unreachable.status.success());
    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

async fn wait_for_stream(js: &async_nats::jetstream::Context, name: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while let Err(err) = js.get_stream(name).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {name} never appeared: {err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn chaos_at_a_small_size_loses_nothing() {
    let stdout = run_embedded(
        "chaos",
        &[
            "--messages",
            "4000",
            "--fault-every-ms",
            "250",
            "--min-faults",
            "8",
            "--seed",
            "42",
        ],
    )
    .await;
    let fields = last_line_fields(&stdout, "chaos: ");
    assert_eq!(fields["published"], 4000, "{stdout}");
    assert_eq!(fields["acked"], 4000, "{stdout}");
    assert_eq!(fields["lost"], 0, "{stdout}");
    assert!(fields["faults"] >= 8, "{stdout}");
    // Duplicates are bounded by what can be in flight per fault: a pull
    // batch (100) plus what the server may have pushed and not had acked
    // (max_ack_pending, 1000).
    assert!(fields["duplicates"] <= fields["faults"] * 1100, "{stdout}");
    for durable in ["chaos-pull", "chaos-push"] {
        assert!(
            stdout.contains(&format!("{durable}: ack floor")),
            "{stdout}"
        );
        assert!(stdout.contains("0 pending, 0 unacked"), "{stdout}");
    }
}

#[tokio::test]
async fn quickstart_ends_with_nothing_lost() {
    let stdout = run_embedded("quickstart", &[]).await;
    let fields = last_line_fields(&stdout, "quickstart: ");
    assert_eq!(fields["published"], 10_000, "{stdout}");
    assert_eq!(fields["acked"], 10_000, "{stdout}");
    assert_eq!(fields["lost"], 0, "{stdout}");
    // Every 50th order is nak'ed once (200). The kill may cut one fetch of
    // 100 whose messages the server had sent: those come back at once
    // (nak'ed by the dying child), delivered a second time.
    assert!(
        (200..=300).contains(&fields["redelivered"]),
        "every 50th order is nak'ed once, and at most one fetch is cut by the kill: {stdout}"
    );
    assert!(
        fields["restarts"] >= 1,
        "the pull child was killed and restarted: {stdout}"
    );
    assert!(
        stdout.contains("resumed from the durable's position"),
        "{stdout}"
    );
    // The server's table: nothing pending or unacked for either durable.
    for durable in ["fulfilment", "audit"] {
        let row: Vec<&str> = stdout
            .lines()
            .filter_map(|line| line.strip_prefix("quickstart: server: "))
            .map(|row| row.split_whitespace().collect::<Vec<_>>())
            .find(|cells| cells.first() == Some(&durable))
            .unwrap_or_else(|| panic!("no server row for {durable}: {stdout}"));
        assert_eq!(
            &row[1..3],
            ["0", "0"],
            "pending, unacked of {durable}: {stdout}"
        );
    }
}

/// Runs an example against its own embedded server; returns its stdout.
async fn run_embedded(name: &'static str, args: &'static [&'static str]) -> String {
    let bin = example_bin(name);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(args)
            .env_remove("NATS_URL")
            .output()
            .expect("run example")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{name} failed: {stderr}\n{stdout}");
    stdout
}

#[tokio::test]
async fn scale_out_with_two_workers_shares_the_work_and_loses_nothing() {
    let stdout = run_embedded("scale_out", &["--workers", "2", "--messages", "3000"]).await;
    let fields = last_line_fields_loose(&stdout, "scale_out: ");
    assert_eq!(fields["published"], "3000", "{stdout}");
    assert_eq!(fields["processed"], "3000", "{stdout}");
    assert_eq!(fields["lost"], "0", "{stdout}");
    assert_eq!(fields["duplicates"], "0", "{stdout}");
    let split: Vec<u64> = fields["split"]
        .split(',')
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(split.len(), 2);
    assert_eq!(split.iter().sum::<u64>(), 3000);
    assert!(
        split.iter().all(|n| *n > 0),
        "both workers got work: {split:?}"
    );
    assert!(
        stdout.contains("ack floor 3000, 0 pending, 0 unacked"),
        "{stdout}"
    );
}

#[tokio::test]
async fn scale_out_with_four_idle_workers_does_not_spin() {
    let stdout = run_embedded(
        "scale_out",
        &["--workers", "4", "--messages", "0", "--idle-ms", "3000"],
    )
    .await;
    let fields = last_line_fields_loose(&stdout, "scale_out: ");
    assert_eq!(fields["processed"], "0", "{stdout}");
    let fetches: u64 = fields["fetches"].parse().expect("fetch count");
    // 4 workers × 3 s / 200 ms expiry = 60 fetches if each waits out its
    // expiry; a spinning loop makes thousands.
    assert!(
        (20..=120).contains(&fetches),
        "4 idle workers made {fetches} fetches in 3 s: {stdout}"
    );
}

#[tokio::test]
async fn push_pipeline_acks_only_after_the_second_stage() {
    let stdout = run_embedded("push_pipeline", &["--messages", "1500"]).await;
    let fields = last_line_fields(&stdout, "push_pipeline: ");
    assert_eq!(
        (fields["published"], fields["stored"], fields["acked"]),
        (1500, 1500, 1500),
        "{stdout}"
    );
}

#[tokio::test]
async fn typed_terms_and_dead_letters_what_does_not_decode() {
    let stdout = run_embedded("typed", &[]).await;
    let fields = last_line_fields(&stdout, "typed: ");
    assert_eq!(
        (
            fields["published"],
            fields["decoded"],
            fields["dead_lettered"]
        ),
        (5, 2, 3),
        "{stdout}"
    );
    assert!(stdout.contains("missing field `quantity`"), "{stdout}");
}

/// Like `last_line_fields`, for values that are not all numbers.
fn last_line_fields_loose(stdout: &str, prefix: &str) -> BTreeMap<String, String> {
    let line = stdout.lines().last().unwrap_or_default();
    let rest = line
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("last line {line:?} lacks {prefix:?}"));
    rest.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs chaos with `args` and no faults to speak of, until its first
/// progress line; then `end(pid)` (nothing, or a signal). Returns how it
/// exited, its stdout and stderr, and how long it took after `end`.
fn chaos_until_ended(
    args: &[&str],
    end: impl FnOnce(u32),
) -> (
    std::process::ExitStatus,
    String,
    String,
    std::time::Duration,
) {
    use std::io::{BufRead, BufReader, Read};
    use std::process::Stdio;

    let mut child = Command::new(example_bin("chaos"))
        .args(args)
        .env_remove("NATS_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run chaos");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let read = stdout.read_line(&mut line).expect("read stdout");
        seen.push_str(&line);
        if read == 0 || line.contains("published=") {
            break;
        }
    }
    assert!(seen.contains("published="), "no progress line: {seen}");
    let ended = std::time::Instant::now();
    end(child.id());
    let deadline = ended + PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("chaos still running {PATIENCE:?} after it should have ended: {seen}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let took = ended.elapsed();
    stdout.read_to_string(&mut seen).expect("read stdout");
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        pipe.read_to_string(&mut stderr).expect("read stderr");
    }
    (status, seen, stderr, took)
}

/// The summary's fields, all of them, whatever their values.
fn assert_summary(stdout: &str) {
    let fields = last_line_fields(stdout, "chaos: ");
    for key in [
        "published",
        "acked",
        "lost",
        "duplicates",
        "faults",
        "restarts",
    ] {
        assert!(fields.contains_key(key), "{key} missing: {stdout}");
    }
    assert!(fields["published"] > 0, "{stdout}");
}

#[tokio::test]
async fn chaos_ends_with_its_summary_on_sigterm() {
    let (status, stdout, stderr, took) = tokio::task::spawn_blocking(|| {
        chaos_until_ended(
            &["--messages", "10000000", "--fault-every-ms", "600000"],
            |pid| {
                let sent = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .expect("run kill");
                assert!(sent.success(), "kill -TERM {pid}: {sent}");
            },
        )
    })
    .await
    .expect("join");
    assert!(
        status.code().is_some_and(|c| c != 0),
        "an interrupted run exits with a failure code, not {status}: {stderr}\n{stdout}"
    );
    assert!(stderr.contains("SIGTERM"), "{stderr}");
    assert_summary(&stdout);
    assert!(
        took < std::time::Duration::from_secs(10),
        "took {took:?} to end"
    );
}

#[tokio::test]
async fn chaos_out_of_time_ends_at_once_with_its_summary() {
    let (status, stdout, stderr, took) = tokio::task::spawn_blocking(|| {
        chaos_until_ended(
            &[
                "--messages",
                "10000000",
                "--fault-every-ms",
                "600000",
                "--budget-s",
                "3",
            ],
            |_| {},
        )
    })
    .await
    .expect("join");
    assert_eq!(status.code(), Some(1), "{stderr}\n{stdout}");
    assert!(stderr.contains("out of time"), "{stderr}");
    assert_summary(&stdout);
    assert!(
        took < std::time::Duration::from_secs(15),
        "took {took:?} to end after a 3 s budget"
    );
}

/// The value of `name`'s series for `durable` in a Prometheus text page.
fn scraped(page: &str, name: &str, durable: &str) -> Option<f64> {
    let label = format!("durable=\"{durable}\"");
    page.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(&label))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// `GET /metrics` from `addr` (HTTP/1.0: the body ends with the
/// connection).
async fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

#[tokio::test]
async fn pull_worker_serves_metrics_that_agree_with_its_summary_and_the_server() {
    let env = env().await;
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        probe.local_addr().expect("its address")
    };
    let args: Vec<String> = [
        "--stream",
        "METERED",
        "--subjects",
        "metered.>",
        "--durable",
        "metered",
        "--batch",
        "50",
        "--expires-ms",
        "300",
        "--idle-exit-ms",
        "4000",
        "--nak-every",
        "7",
        "--metrics-addr",
        &addr.to_string(),
    ]
    .map(String::from)
    .to_vec();
    example_bin("pull_worker");
    let url = env.server.url();
    let worker = tokio::task::spawn_blocking(move || run_example("pull_worker", &url, &args));
    wait_for_stream(&env.js, "METERED").await;
    publish_n(&env.js, "metered.new", 250).await;
    let info = wait_for_consumer(&env.js, "METERED", "metered", "all acked", |i| {
        i.ack_floor.stream_sequence == 250 && i.num_ack_pending == 0 && i.num_pending == 0
    })
    .await;
    // The exporter shows what the server says once the child's next poll
    // has run (every second).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let page = loop {
        let page = scrape(addr).await.unwrap_or_default();
        let floor = scraped(&page, "jetstream_consumer_ack_floor", "metered");
        let acked = scraped(&page, "jetstream_consumer_acked_total", "metered");
        if floor == Some(250.0) && acked == Some(250.0) {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the metrics never caught up with the server: {page}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let metric = |name: &str| {
        scraped(&page, name, "metered").unwrap_or_else(|| panic!("no {name} in {page}"))
    };
    assert_eq!(
        metric("jetstream_consumer_num_pending"),
        info.num_pending as f64
    );
    assert_eq!(
        metric("jetstream_consumer_num_ack_pending"),
        info.num_ack_pending as f64
    );
    assert_eq!(metric("jetstream_consumer_in_flight"), 0.0);
    let stdout = worker.await.expect("join");
    let fields = last_line_fields(&stdout, "pull_worker: ");
    assert_eq!(fields["acked"], 250, "{stdout}");
    assert_eq!(
        metric("jetstream_consumer_acked_total"),
        fields["acked"] as f64
    );
    assert_eq!(
        metric("jetstream_consumer_naked_total"),
        fields["naked"] as f64
    );
    assert_eq!(
        metric("jetstream_consumer_delivered_total"),
        fields["delivered"] as f64
    );
    // Each nak'ed message came back once.
    assert_eq!(
        metric("jetstream_consumer_redelivered_total"),
        fields["naked"] as f64
    );
}
