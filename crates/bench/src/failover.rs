//! The failover case: how long the partitions of a member of a partitioned
//! group go unprocessed when the member dies (SIGKILL) or leaves (SIGTERM),
//! with real processes of `examples/partitioned.rs`.
//!
//! The case builds the example (`cargo build --release --example
//! partitioned` in the workspace root), starts a nats-server of its own and
//! [`MEMBERS`] members `m1`, `m2`, `m3`:
//!
//! ```text
//! partitioned --stream FO --subjects 'fo.*' --key-token 2 --partitions 6 --member mN \
//!   --work-ms 0 --priority-timeout-ms 1000 --record DIR/mN.rec
//! ```
//!
//! (`m1` first, until it holds partitions, as it creates the stream). A
//! publisher then publishes to `fo.k{i % 60}` every 2 ms, its acks awaited
//! 50 at a time, for the whole case. Once the group is balanced (every
//! member holds partitions, together each of the 6 once, and no holds line
//! changed for 1.5 s), each of `--failovers` rounds (default 5) takes the
//! members in turn: it notes the partitions the member holds (by its last
//! `holds=[..]` line), the time, and stops it; a partition's failover time
//! is from then to the start of the first message of that partition
//! another member records. Once the two others are balanced among
//! themselves, the member is started again (same name, same record file)
//! and the group balanced again. The kill rounds come first, then the same
//! rounds with SIGTERM (sent with `kill -s TERM`, the time taken before it
//! starts), after which the member leaves the group: it deletes its
//! membership key, drains its partitions and releases their pins.
//!
//! Each round prints a line on stderr: when the member exited, per
//! partition it held the failover time and the time until a survivor's
//! holds line named it (a member prints that line once it has started
//! what it gained and drained what it lost), and per partition the longest
//! time without a message of it starting, from the stop until the member
//! was started again, and from then until the group was balanced again.
//! The case prints:
//!
//! ```text
//! RESULT mode=failover partitions=6 members=3 median_ms=T p99_ms=U samples=S
//! RESULT mode=failover_graceful partitions=6 members=3 median_ms=T p99_ms=U samples=S
//! ```
//!
//! `median_ms` is the upper median over the samples (one per partition per
//! round), `p99_ms` the nearest-rank 99th percentile (the largest, below
//! 100 samples). Every child process is killed when the case ends, well
//! or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{BoxError, Options, median};

mod member;
mod record;
use member::{Member, Stop};
use record::{Record, RecordTail};

/// The group's stream, and the subjects it stores.
const STREAM: &str = "FO";
const SUBJECTS: &str = "fo.*";

/// The key is the second token of `fo.<key>`.
const KEY_TOKEN: usize = 2;

/// Partitions of the stream.
const PARTITIONS: u32 = 6;

/// Member processes.
const MEMBERS: usize = 3;

/// The group's priority timeout: a dead member's key and pins age out
/// after it.
const PRIORITY_TIMEOUT_MS: u64 = 1_000;

/// Distinct keys the publisher cycles through.
const KEYS: u64 = 60;

/// The publisher's pace, and how many acks it awaits at once.
const PUBLISH_EVERY: Duration = Duration::from_millis(2);
const PUBLISH_ACKS: usize = 50;

/// How long no holds line may change before the group counts as balanced.
const SETTLED: Duration = Duration::from_millis(1_500);

/// The longest wait for a balanced group.
const BALANCE_LIMIT: Duration = Duration::from_secs(60);

/// The longest wait for the survivors to process a stopped member's
/// partitions.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// The longest wait for a member to exit once signalled (the example
/// drains for at most 30 s when it leaves).
const EXIT_LIMIT: Duration = Duration::from_secs(40);

/// How often the record files are read while waiting.
const POLL: Duration = Duration::from_millis(5);

/// The failover times of one kind of stop.
#[derive(Debug, Clone)]
pub struct FailoverRow {
    /// `failover` (SIGKILL) or `failover_graceful` (SIGTERM).
    pub mode: &'static str,
    /// One per partition per round, ms.
    pub samples: Vec<f64>,
}

impl FailoverRow {
    /// The `RESULT` line.
    pub fn line(&self) -> String {
        let mut samples = self.samples.clone();
        let median_ms = median(&mut samples);
        let rank = ((samples.len() as f64 * 0.99).ceil() as usize).max(1);
        let p99_ms = samples.get(rank - 1).copied().unwrap_or(0.0);
        format!(
            "RESULT mode={} partitions={PARTITIONS} members={MEMBERS} median_ms={median_ms:.1} p99_ms={p99_ms:.1} samples={}",
            self.mode,
            samples.len()
        )
    }
}

/// Runs the case; see the module docs.
pub(crate) async fn failover_case(options: &Options) -> Result<Vec<FailoverRow>, BoxError> {
    let exe = build_example().await?;
    let server = nats_harness::NatsServer::start().await?;
    let dir =
        std::env::temp_dir().join(format!("ractor-jetstream-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    eprintln!("failover: records and member logs in {}", dir.display());
    let mut group = Group::new(exe, server.url(), dir.clone());
    let result = group.run(options).await;
    group.shut_down().await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Builds the example in release mode; returns its path.
async fn build_example() -> Result<PathBuf, BoxError> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root
        .canonicalize()
        .map_err(|err| format!("the workspace root {}: {err}", root.display()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = tokio::process::Command::new(&cargo)
        .args(["build", "-j", "2", "--release", "--example", "partitioned"])
        .current_dir(&root)
        .status()
        .await
        .map_err(|err| format!("cannot run cargo: {err}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build --release --example partitioned in {}: {status}",
            root.display()
        )
        .into());
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let exe = target.join("release/examples/partitioned");
    if !exe.is_file() {
        return Err(format!("the example was built, but {} is not there", exe.display()).into());
    }
    Ok(exe)
}

/// The member processes, their record files, and the publisher.
struct Group {
    exe: PathBuf,
    url: String,
    dir: PathBuf,
    members: Vec<Member>,
    /// One per member name, for the whole case (a restarted member appends
    /// to its file).
    tails: Vec<RecordTail>,
    publisher: Option<Publisher>,
}

/// What one round measured.
struct Round {
    /// Per partition of the stopped member: the failover time, and the
    /// time until a survivor's holds line named it (if one did), ms.
    taken_over: BTreeMap<u32, (f64, Option<f64>)>,
    /// Per partition: the longest time without a message of it starting,
    /// from the stop until the member was started again, ms.
    gaps_without: BTreeMap<u32, f64>,
    /// The same from its start until the group was balanced again.
    gaps_rejoin: BTreeMap<u32, f64>,
    /// From the stop to the process's exit, ms.
    exited_ms: f64,
}

impl Round {
    /// The round's line on stderr.
    fn describe(&self, mode: &str, victim: &str) -> String {
        let taken_over: Vec<String> = self
            .taken_over
            .iter()
            .map(|(p, (ms, assigned))| match assigned {
                Some(a) => format!("p{p}={ms:.1}ms (holds line {a:.1}ms)"),
                None => format!("p{p}={ms:.1}ms (no holds line)"),
            })
            .collect();
        let gaps = |gaps: &BTreeMap<u32, f64>| {
            gaps.iter()
                .map(|(p, ms)| format!("p{p}={ms:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "round: {mode} {victim} exited after {:.1} ms; taken over: {}; longest gaps (ms) until it restarted: {}, from then until balanced: {}",
            self.exited_ms,
            taken_over.join(" "),
            gaps(&self.gaps_without),
            gaps(&self.gaps_rejoin)
        )
    }
}

impl Group {
    fn new(exe: PathBuf, url: String, dir: PathBuf) -> Self {
        let tails = (1..=MEMBERS)
            .map(|i| RecordTail::new(member::files(&dir, &name(i - 1)).0))
            .collect();
        Self {
            exe,
            url,
            dir,
            members: Vec::new(),
            tails,
            publisher: None,
        }
    }

    async fn run(&mut self, options: &Options) -> Result<Vec<FailoverRow>, BoxError> {
        // m1 creates the stream; the others join once it has.
        self.members.push(self.start(0)?);
        self.wait_until("m1 holds partitions", BALANCE_LIMIT, None, |g| {
            g.members[0]
                .holds()
                .is_some_and(|h| !h.partitions.is_empty())
        })
        .await?;
        for i in 1..MEMBERS {
            self.members.push(self.start(i)?);
        }
        self.publisher = Some(Publisher::start(&self.url).await?);
        self.wait_balanced(None).await?;

        let mut rows = Vec::new();
        for (mode, stop) in [("failover", Stop::Kill), ("failover_graceful", Stop::Term)] {
            let mut samples = Vec::new();
            for round in 0..options.failovers {
                let victim = round % MEMBERS;
                let measured = self.round(victim, stop).await?;
                eprintln!("{}", measured.describe(mode, &name(victim)));
                samples.extend(measured.taken_over.values().map(|(ms, _)| *ms));
            }
            rows.push(FailoverRow { mode, samples });
        }
        if let Some(publisher) = self.publisher.take() {
            let published = publisher.stop().await?;
            eprintln!("failover: {published} messages published");
        }
        Ok(rows)
    }

    /// Stops member `victim` with `stop`, measures how long its
    /// partitions go unprocessed, starts it again and waits for the group
    /// to be balanced.
    async fn round(&mut self, victim: usize, stop: Stop) -> Result<Round, BoxError> {
        let victim_name = name(victim);
        let held = self.members[victim]
            .holds()
            .map(|h| h.partitions)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("{victim_name} holds no partition"))?;
        // What was processed before the stop is of no interest.
        for tail in &mut self.tails {
            tail.read_new()?;
        }
        let mut records = Vec::new();
        let (stopped_at, signalling) = self.members[victim].stop(stop).await?;
        // The records carry their own times: reading them later loses
        // nothing.
        let exited_at = self.members[victim].wait_exit(EXIT_LIMIT).await?;
        if stop == Stop::Term {
            eprintln!(
                "failover: {victim_name}: SIGTERM took {:.1} ms to send; its last line: {}",
                signalling.as_secs_f64() * 1e3,
                self.members[victim].last_line().unwrap_or_default()
            );
        }
        let first = self
            .first_records_elsewhere(&victim_name, &held, stopped_at, &mut records)
            .await?;
        // The survivors settle among themselves before the member returns.
        self.wait_balanced(Some(victim)).await?;

        let restarted_at = unix_ns();
        let restarted = self.start(victim)?;
        std::mem::replace(&mut self.members[victim], restarted)
            .kill()
            .await;
        self.wait_balanced(None).await?;
        let balanced_at = unix_ns();
        for tail in &mut self.tails {
            records.extend(tail.read_new()?);
        }

        let ms = |at: u128| at.saturating_sub(stopped_at) as f64 / 1e6;
        let taken_over = first
            .iter()
            .map(|(&p, &start)| {
                let assigned = self
                    .members
                    .iter()
                    .filter(|m| m.name != victim_name)
                    .filter_map(|m| m.took(p, stopped_at, restarted_at))
                    .min();
                (p, (ms(start), assigned.map(ms)))
            })
            .collect();
        Ok(Round {
            taken_over,
            gaps_without: gaps(&records, stopped_at, restarted_at),
            gaps_rejoin: gaps(&records, restarted_at, balanced_at),
            exited_ms: ms(exited_at),
        })
    }

    /// Reads the record files until another member than `victim` recorded
    /// a message of each partition of `held` that started after
    /// `after_unix_ns`; returns those starts.
    async fn first_records_elsewhere(
        &mut self,
        victim: &str,
        held: &BTreeSet<u32>,
        after_unix_ns: u128,
        records: &mut Vec<Record>,
    ) -> Result<BTreeMap<u32, u128>, BoxError> {
        let deadline = Instant::now() + FAILOVER_LIMIT;
        let mut first: BTreeMap<u32, u128> = BTreeMap::new();
        loop {
            for tail in &mut self.tails {
                for record in tail.read_new()? {
                    if record.member != victim
                        && held.contains(&record.partition)
                        && record.start_unix_ns > after_unix_ns
                    {
                        let start = first.entry(record.partition).or_insert(u128::MAX);
                        *start = (*start).min(record.start_unix_ns);
                    }
                    records.push(record);
                }
            }
            if first.len() == held.len() {
                return Ok(first);
            }
            if Instant::now() > deadline {
                let missing: Vec<&u32> = held.iter().filter(|p| !first.contains_key(p)).collect();
                return Err(format!(
                    "{victim} stopped: no other member processed partitions {missing:?} within {FAILOVER_LIMIT:?}; {}",
                    self.describe()
                )
                .into());
            }
            self.check_publisher()?;
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until every member but `except` holds partitions, together
    /// each once, and no holds line of theirs changed for [`SETTLED`].
    async fn wait_balanced(&self, except: Option<usize>) -> Result<(), BoxError> {
        let what = match except {
            Some(i) => format!("a group balanced without {}", name(i)),
            None => "a balanced group".to_string(),
        };
        self.wait_until(&what, BALANCE_LIMIT, except, |g| {
            let holds: Option<Vec<_>> = g
                .members
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != except)
                .map(|(_, m)| m.holds())
                .collect();
            let Some(holds) = holds else { return false };
            let settled = holds.iter().all(|h| h.at.elapsed() >= SETTLED);
            let each_some = holds.iter().all(|h| !h.partitions.is_empty());
            let total: usize = holds.iter().map(|h| h.partitions.len()).sum();
            let union: BTreeSet<u32> = holds.iter().flat_map(|h| h.partitions.clone()).collect();
            settled && each_some && total == PARTITIONS as usize && union.len() == total
        })
        .await
    }

    /// Polls `done` until it holds; fails after `limit`, or when a member
    /// (but `except`) or the publisher stopped.
    async fn wait_until(
        &self,
        what: &str,
        limit: Duration,
        except: Option<usize>,
        done: impl Fn(&Self) -> bool,
    ) -> Result<(), BoxError> {
        let deadline = Instant::now() + limit;
        while !done(self) {
            let mut others = (self.members.iter().enumerate()).filter(|(i, _)| Some(*i) != except);
            if let Some((_, gone)) = others.find(|(_, m)| m.ended()) {
                return Err(format!(
                    "waiting for {what}: {} exited; {}",
                    gone.name,
                    self.describe()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!("no {what} within {limit:?}; {}", self.describe()).into());
            }
            self.check_publisher()?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Fails when the publisher stopped.
    fn check_publisher(&self) -> Result<(), BoxError> {
        match &self.publisher {
            Some(publisher) if publisher.task.is_finished() => {
                Err("the publisher stopped early (publishing failed)".into())
            }
            _ => Ok(()),
        }
    }

    /// What each member holds, and where their logs are.
    fn describe(&self) -> String {
        let holds: Vec<String> = self
            .members
            .iter()
            .map(|m| match m.holds() {
                Some(h) => format!(
                    "{} holds {:?} (for {:.1} s)",
                    m.name,
                    h.partitions,
                    h.at.elapsed().as_secs_f64()
                ),
                None => format!("{} printed no holds line", m.name),
            })
            .collect();
        format!(
            "{}; member logs in {}",
            holds.join(", "),
            self.dir.display()
        )
    }

    /// Starts member `i` (`m{i+1}`).
    fn start(&self, i: usize) -> Result<Member, BoxError> {
        let name = name(i);
        let (record, stderr) = member::files(&self.dir, &name);
        Member::start(&self.exe, &self.url, &name, &record, &stderr)
    }

    /// Stops the publisher and kills every member.
    async fn shut_down(&mut self) {
        if let Some(publisher) = self.publisher.take() {
            let _ = publisher.stop().await;
        }
        for member in self.members.drain(..) {
            member.kill().await;
        }
    }
}

/// Per partition, the longest time (ms) without a message of it starting
/// between `from_unix_ns` and `until_unix_ns` (whoever processed them).
fn gaps(records: &[Record], from_unix_ns: u128, until_unix_ns: u128) -> BTreeMap<u32, f64> {
    let mut starts: BTreeMap<u32, Vec<u128>> = BTreeMap::new();
    for record in records {
        if record.start_unix_ns > from_unix_ns && record.start_unix_ns <= until_unix_ns {
            starts
                .entry(record.partition)
                .or_default()
                .push(record.start_unix_ns);
        }
    }
    starts
        .into_iter()
        .map(|(partition, mut starts)| {
            starts.sort_unstable();
            let longest = starts
                .iter()
                .chain(std::iter::once(&until_unix_ns))
                .scan(from_unix_ns, |previous, &start| {
                    let gap = start - *previous;
                    *previous = start;
                    Some(gap)
                })
                .max()
                .unwrap_or(0);
            (partition, longest as f64 / 1e6)
        })
        .collect()
}

/// The name of member `i` (from 0).
fn name(i: usize) -> String {
    format!("m{}", i + 1)
}

/// Now, in ns since the epoch (the clock of the record files).
fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Publishes to `fo.k{i % KEYS}` every [`PUBLISH_EVERY`] until stopped.
struct Publisher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<u64, BoxError>>,
}

impl Publisher {
    async fn start(url: &str) -> Result<Self, BoxError> {
        let js = jetstream::new(async_nats::connect(url).await?);
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let payload = bytes::Bytes::from_static(b"failover");
            let mut ticks = tokio::time::interval(PUBLISH_EVERY);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut pending = Vec::with_capacity(PUBLISH_ACKS);
            let mut published = 0u64;
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = ticks.tick() => {}
                }
                let subject = format!("fo.k{}", published % KEYS);
                pending.push(js.publish(subject, payload.clone()).await?);
                published += 1;
                if pending.len() == PUBLISH_ACKS {
                    for ack in pending.drain(..) {
                        ack.await?;
                    }
                }
            }
            for ack in pending {
                ack.await?;
            }
            Ok(published)
        });
        Ok(Self { stop, task })
    }

    /// Stops it; returns how many messages it published.
    async fn stop(self) -> Result<u64, BoxError> {
        let _ = self.stop.send(());
        self.task.await?
    }
}
