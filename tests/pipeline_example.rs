//! The `pipeline` example, run as a user would run it, against a server the
//! test starts (through `NATS_URL`): killed with SIGKILL at random moments
//! while its input is published, and run again each time on the same
//! durable, it leaves each result in the output stream exactly once and
//! every input acked; without message ids nothing is lost, but a result
//! may be stored twice. Bad arguments, and an output stream whose
//! duplicate window is too short, are refused in one line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::process::{Output, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use tokio::process::Command;

use common::{Env, PATIENCE, consumer_info, create_stream, env, example_bin, wait_for_consumer};

/// How long one run of the example may take.
const RUN_LIMIT: Duration = Duration::from_secs(90);
/// Inputs published in the kill test.
const MESSAGES: usize = 20_000;
/// Processes killed before the last run.
const KILLS: usize = 10;
/// The last run stops after this long without a message: longer than the
/// example's 5 s ack wait, after which the last killed process's unacked
/// inputs come back.
const FINAL_IDLE_MS: &str = "7000";

/// The example as a command against `url`; with `with_ids` false, the
/// comparison switch that publishes without message ids.
fn pipeline(url: &str, args: &[String], with_ids: bool) -> Command {
    let mut command = Command::new(example_bin("pipeline"));
    command
        .args(args)
        .env("NATS_URL", url)
        .kill_on_drop(true)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if !with_ids {
        command.env("RJ_PIPELINE_NO_MSG_ID", "1");
    }
    command
}

/// Runs the example to its end (within [`RUN_LIMIT`]); returns its output.
async fn run_to_end(url: &str, args: &[String], with_ids: bool) -> Output {
    let child = pipeline(url, args, with_ids).spawn().expect("run pipeline");
    tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("pipeline {args:?} still running after {RUN_LIMIT:?}"))
        .expect("wait for pipeline")
}

/// The fields of the summary, which must be the last line of `stdout`.
fn summary(stdout: &str) -> BTreeMap<String, u64> {
    let line = stdout.lines().last().unwrap_or_default();
    let rest = line
        .strip_prefix("pipeline: ")
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
    assert_eq!(
        names,
        ["consumed", "duplicates_suppressed", "late_acks", "produced"],
        "{line}"
    );
    fields
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The names one pipeline works with.
struct Names {
    input: &'static str,
    subject: &'static str,
    durable: &'static str,
    output: &'static str,
    out_subject: &'static str,
}

impl Names {
    /// The example's arguments for these names, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut list = args(&[
            "--in-stream",
            self.input,
            "--in-subjects",
            self.subject,
            "--durable",
            self.durable,
            "--out-stream",
            self.output,
            "--out-subject",
            self.out_subject,
        ]);
        list.extend(args(extra));
        list
    }
}

/// A small xorshift generator for the kill moments, seeded from the clock
/// (the seed is printed).
struct Rng(u64);

impl Rng {
    fn from_clock() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("the clock is past 1970")
            .as_nanos();
        let seed = (nanos as u64) | 1;
        eprintln!("kill moments from seed {seed}");
        Self(seed)
    }

    /// A number in `low..=high`.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low + 1)
    }
}

/// Publishes `in-0` .. `in-{n-1}` to `subject`, each confirmed stored.
async fn publish_inputs(js: jetstream::Context, subject: &'static str, n: usize) {
    let mut acks = Vec::new();
    for i in 0..n {
        let ack = js
            .publish(subject, format!("in-{i}").into())
            .await
            .expect("publish an input");
        acks.push(ack);
        if acks.len() == 500 || i + 1 == n {
            for ack in acks.drain(..) {
                ack.await.expect("input stored");
            }
        }
    }
}

/// How many messages `name` holds.
async fn stored(js: &jetstream::Context, name: &str) -> u64 {
    let mut stream = js.get_stream(name).await.expect("get stream");
    stream.info().await.expect("stream info").state.messages
}

/// Every payload in the stream `name`, in stream order (read with an
/// ordered consumer).
async fn payloads(js: &jetstream::Context, name: &str) -> Vec<String> {
    let count = stored(js, name).await as usize;
    let reader = js
        .get_stream(name)
        .await
        .expect("get stream")
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .expect("ordered consumer");
    let mut messages = reader.messages().await.expect("ordered messages");
    let mut payloads = Vec::with_capacity(count);
    while payloads.len() < count {
        let message = tokio::time::timeout(PATIENCE, messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{name}: only {} of {count} messages read back in {PATIENCE:?}",
                    payloads.len()
                )
            })
            .expect("the ordered consumer goes on")
            .expect("a message");
        payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
    }
    payloads
}

/// What a run of the kill test left.
struct Outcome {
    /// The last run's summary.
    last_run: BTreeMap<String, u64>,
    /// The output stream's payloads.
    results: Vec<String>,
    /// The input durable as the server has it at the end.
    input: consumer::Info,
}

/// Publishes [`MESSAGES`] inputs while the example runs and is killed
/// (SIGKILL) [`KILLS`] times at random moments, each time started again on
/// the same durable; then runs it to its end (idle). Checks that every
/// input was acked.
async fn killed_and_finished(env: &Env, names: &Names, rng: &mut Rng, with_ids: bool) -> Outcome {
    // Another program made the input stream, with just a name and a subject.
    create_stream(&env.js, names.input, &[names.subject]).await;
    let publisher = tokio::spawn(publish_inputs(env.js.clone(), names.subject, MESSAGES));
    let url = env.server.url();
    // Work slow enough that the kills come while inputs remain: at most
    // 50 inputs per 40 ms, 1,250 a second, so at most 11,250 in the
    // killed runs' 9 s.
    let run_args = names.args(&["--batch", "50", "--work-ms", "40"]);

    for round in 1..=KILLS {
        let mut child = pipeline(&url, &run_args, with_ids)
            .spawn()
            .expect("run pipeline");
        let moment = Duration::from_millis(rng.between(150, 900));
        tokio::time::sleep(moment).await;
        if let Some(status) = child.try_wait().expect("poll the pipeline") {
            let output = child.wait_with_output().await.expect("its output");
            panic!(
                "round {round}: the pipeline ended by itself ({status}) before its kill at {moment:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        child.start_kill().expect("SIGKILL");
        let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
            .await
            .expect("the killed pipeline ends")
            .expect("wait for the killed pipeline");
        assert_eq!(
            output.status.signal(),
            Some(9),
            "round {round}: not ended by the kill: {}",
            output.status
        );
    }
    tokio::time::timeout(RUN_LIMIT, publisher)
        .await
        .expect("every input published in time")
        .expect("the publisher");
    let after_kills = stored(&env.js, names.output).await;
    assert!(
        after_kills > 0 && after_kills < MESSAGES as u64,
        "the kills must come while inputs remain: {after_kills} results stored after {KILLS} killed runs"
    );

    // The last run, to the end.
    let output = run_to_end(
        &url,
        &names.args(&["--batch", "50", "--idle-exit-ms", FINAL_IDLE_MS]),
        with_ids,
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the last run failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let last_run = summary(&stdout);
    assert_eq!(
        last_run["consumed"],
        last_run["produced"] + last_run["duplicates_suppressed"],
        "each input consumed had its result published once: {last_run:?}"
    );

    let input = wait_for_consumer(
        &env.js,
        names.input,
        names.durable,
        "every input acked",
        |i| {
            i.ack_floor.stream_sequence == MESSAGES as u64
                && i.num_ack_pending == 0
                && i.num_pending == 0
        },
    )
    .await;
    // The kills left inputs unacked, and the server delivered them again.
    assert!(
        input.delivered.consumer_sequence > MESSAGES as u64,
        "no input was delivered twice: {:?}",
        input.delivered
    );
    eprintln!(
        "{} ids: {after_kills} results stored after {KILLS} kills; {} deliveries in all; last run {last_run:?}",
        if with_ids { "with" } else { "without" },
        input.delivered.consumer_sequence
    );
    Outcome {
        last_run,
        results: payloads(&env.js, names.output).await,
        input,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_holds_each_result_once_across_kills() {
    let env = env().await;
    let mut rng = Rng::from_clock();
    example_bin("pipeline");
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("out:in-{i}")).collect();

    // With message ids: each result exactly once.
    let with_ids = killed_and_finished(
        &env,
        &Names {
            input: "IN",
            subject: "in.work",
            durable: "transform",
            output: "OUT",
            out_subject: "out.results",
        },
        &mut rng,
        true,
    )
    .await;
    assert_eq!(
        with_ids.results.len(),
        MESSAGES,
        "the output stream holds one result per input"
    );
    let mut results = with_ids.results.clone();
    results.sort_unstable();
    let mut wanted = expected.clone();
    wanted.sort_unstable();
    assert!(
        results == wanted,
        "each result once: {}",
        differences(&results, &wanted)
    );
    assert_eq!(with_ids.input.ack_floor.stream_sequence, MESSAGES as u64);

    // Without: nothing missing, but a result published before a kill and
    // again after it is stored twice.
    let without = killed_and_finished(
        &env,
        &Names {
            input: "PLAIN_IN",
            subject: "plain.work",
            durable: "plain",
            output: "PLAIN_OUT",
            out_subject: "plain.results",
        },
        &mut rng,
        false,
    )
    .await;
    let present: BTreeSet<&String> = without.results.iter().collect();
    let missing: Vec<&String> = expected.iter().filter(|r| !present.contains(r)).collect();
    assert!(missing.is_empty(), "results missing: {missing:?}");
    assert!(
        present.len() == MESSAGES,
        "results that are no input's: {:?}",
        present
            .iter()
            .filter(|r| !expected.contains(r))
            .collect::<Vec<_>>()
    );
    assert_eq!(without.last_run["duplicates_suppressed"], 0);
    eprintln!(
        "exactly-once: {} stored with ids, {} without ({} duplicates)",
        with_ids.results.len(),
        without.results.len(),
        without.results.len() - MESSAGES
    );
}

/// What `got` has twice, and what it lacks, of `wanted` (both sorted).
fn differences(got: &[String], wanted: &[String]) -> String {
    let twice: Vec<&String> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let got: BTreeSet<&String> = got.iter().collect();
    let missing: Vec<&String> = wanted.iter().filter(|r| !got.contains(r)).collect();
    format!(
        "{} stored twice {:?}, {} missing {:?}",
        twice.len(),
        &twice[..twice.len().min(10)],
        missing.len(),
        &missing[..missing.len().min(10)]
    )
}

/// Bad arguments are refused in one line on stderr naming the argument,
/// before anything connects (the server address is unreachable).
#[tokio::test]
async fn bad_arguments_are_refused_in_one_line_without_connecting() {
    let good = [
        ("--in-stream", "IN"),
        ("--in-subjects", "in.>"),
        ("--durable", "d"),
        ("--out-stream", "OUT"),
        ("--out-subject", "out.results"),
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
    let mut no_value = with("", None);
    no_value.push("--batch".into());
    let cases = [
        ("--in-stream", with("--in-stream", None)),
        ("--out-subject", with("--out-subject", None)),
        ("--batch", with("--batch", Some("0"))),
        ("--batch", no_value),
        ("--work-ms", with("--work-ms", Some("soon"))),
        ("--max-messages", with("--max-messages", Some("0"))),
        ("--idle-exit-ms", with("--idle-exit-ms", Some("-5"))),
        ("--bogus", with("--bogus", Some("1"))),
        ("--in-stream", with("--in-stream", Some("BAD.NAME"))),
        ("--durable", with("--durable", Some("a.b"))),
        ("--in-subjects", with("--in-subjects", Some("in..x"))),
        // The input would capture its own results.
        ("--out-subject", with("--out-subject", Some("in.results"))),
        ("--out-subject", with("--out-subject", Some("out.*"))),
        ("--out-stream", with("--out-stream", Some("IN"))),
    ];
    for (named, list) in cases {
        let started = std::time::Instant::now();
        let output = run_to_end("nats://127.0.0.1:1", &list, true).await;
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

/// An existing output stream whose duplicate window is shorter than the
/// input's redelivery horizon is refused before anything is consumed.
#[tokio::test]
async fn an_output_stream_whose_window_is_too_short_is_refused() {
    let env = env().await;
    create_stream(&env.js, "IN", &["in.work"]).await;
    common::publish_n(&env.js, "in.work", 10).await;
    env.js
        .create_stream(stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.results".into()],
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        })
        .await
        .expect("create the output stream");

    let names = Names {
        input: "IN",
        subject: "in.work",
        durable: "transform",
        output: "OUT",
        out_subject: "out.results",
    };
    let output = run_to_end(
        &env.server.url(),
        &names.args(&["--idle-exit-ms", "1000"]),
        true,
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a 1 s window was accepted: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("duplicate_window"), "{stderr}");
    assert!(output.stdout.is_empty(), "printed a summary: {stderr}");

    // Nothing was consumed: the inputs wait, none delivered or acked, and
    // no result was stored.
    let info = consumer_info(&env.js, "IN", "transform").await;
    assert_eq!(
        (
            info.ack_floor.stream_sequence,
            info.delivered.stream_sequence,
            info.num_ack_pending,
            info.num_pending
        ),
        (0, 0, 0, 10),
        "{info:?}"
    );
    assert_eq!(stored(&env.js, "IN").await, 10);
    assert_eq!(stored(&env.js, "OUT").await, 0);
}
