//! One member process of the partitioned example: started with the case's
//! command line, its stdout read line by line for the
//! `partitioned: member=NAME holds=[0,3]` lines, stopped with SIGKILL or
//! SIGTERM.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::{KEY_TOKEN, PARTITIONS, PRIORITY_TIMEOUT_MS, STREAM, SUBJECTS, unix_ns};
use crate::BoxError;

/// How the member is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// SIGKILL: it dies on the spot, its key and pins age out.
    Kill,
    /// SIGTERM: it leaves the group (deletes its key, drains, releases its
    /// pins) and exits.
    Term,
}

/// One change of the partitions a member holds, as its stdout said.
#[derive(Debug, Clone)]
pub(super) struct HoldsChange {
    /// When the bench read the line.
    pub(super) at: Instant,
    pub(super) at_unix_ns: u128,
    pub(super) partitions: BTreeSet<u32>,
}

/// What a member's stdout said so far.
#[derive(Debug, Default)]
struct Log {
    changes: Vec<HoldsChange>,
    /// Its last line of any kind (after a graceful leave: its tally).
    last_line: Option<String>,
    /// Its stdout closed.
    ended: bool,
}

/// A running member process.
pub(super) struct Member {
    pub(super) name: String,
    child: Child,
    log: Arc<Mutex<Log>>,
    reader: JoinHandle<()>,
}

impl Member {
    /// Starts member `name` of the group on the server at `url`, appending
    /// its records to `record` and its stderr to `stderr`.
    pub(super) fn start(
        exe: &Path,
        url: &str,
        name: &str,
        record: &Path,
        stderr: &Path,
    ) -> Result<Self, BoxError> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .map_err(|err| format!("{}: {err}", stderr.display()))?;
        let partitions = PARTITIONS.to_string();
        let key_token = KEY_TOKEN.to_string();
        let timeout = PRIORITY_TIMEOUT_MS.to_string();
        let mut child = Command::new(exe)
            .args(["--stream", STREAM, "--subjects", SUBJECTS])
            .args(["--key-token", &key_token, "--partitions", &partitions])
            .args(["--member", name, "--work-ms", "0"])
            .args(["--priority-timeout-ms", &timeout])
            .arg("--record")
            .arg(record)
            .env("NATS_URL", url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the member's stdout is not piped")?;
        let log = Arc::new(Mutex::new(Log::default()));
        let reader = {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let partitions = holds(&line);
                    let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(partitions) = partitions {
                        log.changes.push(HoldsChange {
                            at: Instant::now(),
                            at_unix_ns: unix_ns(),
                            partitions,
                        });
                    }
                    log.last_line = Some(line);
                }
                log.lock().unwrap_or_else(PoisonError::into_inner).ended = true;
            })
        };
        Ok(Self {
            name: name.to_string(),
            child,
            log,
            reader,
        })
    }

    /// What it holds now, by its last holds line (none before the first).
    pub(super) fn holds(&self) -> Option<HoldsChange> {
        self.log().changes.last().cloned()
    }

    /// When it first said it holds `partition` between `after_unix_ns`
    /// and `before_unix_ns`.
    pub(super) fn took(
        &self,
        partition: u32,
        after_unix_ns: u128,
        before_unix_ns: u128,
    ) -> Option<u128> {
        self.log()
            .changes
            .iter()
            .filter(|c| c.at_unix_ns > after_unix_ns && c.at_unix_ns < before_unix_ns)
            .find(|c| c.partitions.contains(&partition))
            .map(|c| c.at_unix_ns)
    }

    /// Whether its stdout closed (it exited, or is about to).
    pub(super) fn ended(&self) -> bool {
        self.log().ended
    }

    /// Its last line of stdout.
    pub(super) fn last_line(&self) -> Option<String> {
        self.log().last_line.clone()
    }

    /// Sends the signal; returns the time just before it was sent (unix ns)
    /// and how long sending took.
    pub(super) async fn stop(&mut self, stop: Stop) -> Result<(u128, Duration), BoxError> {
        let pid = self
            .child
            .id()
            .ok_or_else(|| format!("{} has exited already", self.name))?;
        let (at, started) = (unix_ns(), Instant::now());
        match stop {
            Stop::Kill => self.child.start_kill()?,
            // Without a signal API among the bench's dependencies, `kill`
            // sends it; the time is taken before it starts, so the figure
            // includes starting it.
            Stop::Term => {
                let status = Command::new("kill")
                    .args(["-s", "TERM", &pid.to_string()])
                    .status()
                    .await
                    .map_err(|err| format!("cannot run kill: {err}"))?;
                if !status.success() {
                    return Err(format!("kill -s TERM {pid} ({}): {status}", self.name).into());
                }
            }
        }
        Ok((at, started.elapsed()))
    }

    /// Waits at most `limit` for the process to exit; returns when it
    /// did (unix ns, as the bench saw it).
    pub(super) async fn wait_exit(&mut self, limit: Duration) -> Result<u128, BoxError> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .map_err(|_| format!("{} did not exit within {limit:?}", self.name))??;
        let exited = unix_ns();
        // Its last lines are read before anyone asks for them.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        if !status.success() && status.code().is_some() {
            return Err(format!("{} exited with {status}", self.name).into());
        }
        Ok(exited)
    }

    /// Kills it (if it still runs) and reaps it.
    pub(super) async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.reader.abort();
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The partitions of a `partitioned: member=NAME holds=[0,3,5]` line.
fn holds(line: &str) -> Option<BTreeSet<u32>> {
    let rest = line.strip_prefix("partitioned: member=")?;
    let list = rest.split_once(" holds=[")?.1.strip_suffix(']')?;
    list.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().ok())
        .collect()
}

/// The paths of member `name`'s files in `dir`.
pub(super) fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.rec")),
        dir.join(format!("{name}.err")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_lines_are_parsed() {
        assert_eq!(
            holds("partitioned: member=m1 holds=[0,3,5]"),
            Some(BTreeSet::from([0, 3, 5]))
        );
        assert_eq!(
            holds("partitioned: member=m2 holds=[]"),
            Some(BTreeSet::new())
        );
        assert_eq!(
            holds("partitioned: member=m1 acked=3 naked=0 partitions_held=2 takeovers=1"),
            None
        );
    }
}
