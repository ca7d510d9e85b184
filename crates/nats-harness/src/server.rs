//! [`NatsServer`]: one `nats-server` child process, its ports, its temporary
//! directory (config file, log file, JetStream store) and the faults a test
//! can inject into it (stop, kill, restart, pause).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tempfile::TempDir;

use crate::binary::nats_server_binary;
use crate::builder::{Ports, ServerBuilder, Settings};
use crate::error::HarnessError;
use crate::lifetime;
use crate::ports::pick_ports;
use crate::probe;

/// How often readiness and exit are polled.
pub(crate) const POLL: Duration = Duration::from_millis(25);
/// How long [`NatsServer::stop`] waits after SIGTERM before it kills.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a fresh start is tried when a port turns out to be taken.
pub(crate) const START_ATTEMPTS: u32 = 5;
/// How many lines of log a panicking test prints per server.
const PANIC_LOG_LINES: usize = 200;

/// One `nats-server` process on loopback, started by the harness.
///
/// The server runs from a generated config file in its own temporary
/// directory, which also holds its log and its JetStream file store.
/// Dropping the value kills the process (SIGKILL), reaps it and deletes the
/// directory. A program that dies without dropping it (SIGKILL, an unhandled
/// signal) takes the server down with it on Linux, and the next program
/// using the harness deletes the directory (see [`crate::remove_stale_dirs`]); when the drop happens during a panic (a failing test), the last
/// lines of the server's log are printed to stderr first.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let mut server = nats_harness::NatsServer::start().await?;
/// let client = async_nats::connect(server.url()).await?;
/// // ... use JetStream, then inject a fault:
/// server.kill().await?;
/// server.restart().await?; // same port, same store
/// # drop(client); Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    binary: PathBuf,
    settings: Settings,
    ports: Ports,
    config_path: PathBuf,
    log_path: PathBuf,
    store_dir: PathBuf,
    child: Option<Child>,
    // Last: deleted after the process has been killed.
    dir: TempDir,
}

/// Why one start attempt failed.
pub(crate) enum StartFailure {
    /// A port was taken: try again (new ports for a fresh start, the same
    /// ones after a short pause for a restart).
    PortClash { log_tail: String },
    /// Anything else: give up.
    Fatal(HarnessError),
}

impl From<HarnessError> for StartFailure {
    fn from(e: HarnessError) -> Self {
        StartFailure::Fatal(e)
    }
}

/// A name no other server of this process has.
pub(crate) fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}{kind}-{}-{}",
        lifetime::DIR_PREFIX,
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl NatsServer {
    /// Starts a JetStream-enabled server on free loopback ports with a
    /// temporary file store, and waits until it is ready.
    pub async fn start() -> Result<NatsServer, HarnessError> {
        Self::builder().start().await
    }

    /// A builder for a server with non-default settings (auth, TLS, no
    /// JetStream, extra config).
    pub fn builder() -> ServerBuilder {
        ServerBuilder::new()
    }

    pub(crate) async fn start_with(settings: Settings) -> Result<NatsServer, HarnessError> {
        let name = unique_name("s");
        let mut last_tail = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports = pick_ports(2).map_err(|e| HarnessError::io("picking free ports", e))?;
            let ports = Ports {
                client: ports[0],
                monitor: ports[1],
                cluster: None,
            };
            let mut server = NatsServer::prepare(name.clone(), settings.clone(), ports)?;
            let offset = server.spawn()?;
            match server.wait_ready(offset).await {
                Ok(()) => return Ok(server),
                Err(StartFailure::PortClash { log_tail }) => last_tail = log_tail,
                Err(StartFailure::Fatal(e)) => return Err(e),
            }
        }
        Err(HarnessError::PortsInUse {
            name,
            attempts: START_ATTEMPTS,
            log_tail: last_tail,
        })
    }

    /// Creates the temporary directory and writes the config file; does not
    /// start the process.
    pub(crate) fn prepare(
        name: String,
        settings: Settings,
        ports: Ports,
    ) -> Result<NatsServer, HarnessError> {
        let binary = nats_server_binary()?.path().to_path_buf();
        lifetime::remove_stale_dirs_once();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir()
            .map_err(|e| HarnessError::io("creating a temporary directory", e))?;
        let config_path = dir.path().join("nats-server.conf");
        let log_path = dir.path().join("nats-server.log");
        let store_dir = dir.path().join("store");
        let config = settings.render(&name, ports, &store_dir);
        std::fs::write(&config_path, config)
            .map_err(|e| HarnessError::io(format!("writing {}", config_path.display()), e))?;
        Ok(NatsServer {
            name,
            binary,
            settings,
            ports,
            config_path,
            log_path,
            store_dir,
            child: None,
            dir,
        })
    }

    /// Spawns the process with stdout and stderr appended to the log file.
    /// Returns the log's length before the spawn, where this run's output
    /// begins.
    pub(crate) fn spawn(&mut self) -> Result<u64, HarnessError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| HarnessError::io(format!("opening {}", self.log_path.display()), e))?;
        let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        let stderr = log
            .try_clone()
            .map_err(|e| HarnessError::io("duplicating the log file handle", e))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-c")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        // Not `command.spawn()`: the server must die with this process.
        let child = lifetime::spawn(command)
            .map_err(|e| HarnessError::io(format!("starting {}", self.binary.display()), e))?;
        self.child = Some(child);
        Ok(offset)
    }

    /// Polls until the process is ready: `/healthz` answers 200 on the
    /// monitoring port and `/varz` there names this server, then the client
    /// port sends an `INFO` naming this server. The name checks catch a port
    /// that another process answered on.
    pub(crate) async fn wait_ready(&mut self, log_offset: u64) -> Result<(), StartFailure> {
        let started = Instant::now();
        let deadline = started + self.settings.ready_timeout;
        let health = if self.settings.jetstream {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let mut last = String::from("no answer yet");
        let mut monitor_ok = false;
        loop {
            self.check_alive(log_offset)?;
            if !monitor_ok {
                match probe::http_get(self.ports.monitor, health).await {
                    Ok(r) if r.status == 200 => {
                        match probe::http_get_json(self.ports.monitor, "/varz").await {
                            Ok(varz) if varz["server_name"] == self.name.as_str() => {
                                monitor_ok = true
                            }
                            Ok(varz) => return Err(self.clash("monitoring", &varz)),
                            Err(e) => last = format!("GET /varz: {e}"),
                        }
                    }
                    Ok(r) => {
                        last = format!("GET {health} answered {}: {}", r.status, r.body.trim())
                    }
                    Err(e) => last = format!("GET {health}: {e}"),
                }
            }
            if monitor_ok {
                match probe::read_info(self.ports.client).await {
                    Ok(info) if info["server_name"] == self.name.as_str() => return Ok(()),
                    Ok(info) => return Err(self.clash("client", &info)),
                    Err(e) => last = format!("reading INFO on the client port: {e}"),
                }
            }
            if Instant::now() >= deadline {
                return Err(StartFailure::Fatal(HarnessError::NotReady {
                    name: self.name.clone(),
                    waited: started.elapsed(),
                    reason: last,
                    log_tail: self.log_tail(40),
                }));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn clash(&mut self, which: &str, answer: &serde_json::Value) -> StartFailure {
        self.kill_now();
        StartFailure::PortClash {
            log_tail: format!(
                "the {which} port was answered by another server, {}",
                answer["server_name"]
            ),
        }
    }

    /// Fails when the process has exited; a port clash is recognised in the
    /// log of this run.
    fn check_alive(&mut self, log_offset: u64) -> Result<(), StartFailure> {
        let Some(child) = self.child.as_mut() else {
            return Err(StartFailure::Fatal(HarnessError::NotRunning {
                name: self.name.clone(),
                action: "waited for",
            }));
        };
        let status = match child.try_wait() {
            Ok(None) => return Ok(()),
            Ok(Some(status)) => status,
            Err(e) => {
                return Err(
                    HarnessError::io(format!("checking on nats-server {}", self.name), e).into(),
                );
            }
        };
        self.child = None;
        let this_run = self.log_since(log_offset);
        let log_tail = tail(&this_run, 40);
        if this_run.contains("address already in use") {
            Err(StartFailure::PortClash { log_tail })
        } else {
            Err(StartFailure::Fatal(HarnessError::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                log_tail,
            }))
        }
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.ports.client)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.ports.client
    }

    /// The HTTP monitoring port (`/varz`, `/jsz`, `/healthz`, ...).
    pub fn monitor_port(&self) -> u16 {
        self.ports.monitor
    }

    /// The cluster (route) port, for a node of a [`crate::NatsCluster`].
    pub fn cluster_port(&self) -> Option<u16> {
        self.ports.cluster
    }

    /// The server's `server_name`, unique within the test process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The JetStream store directory; it survives [`NatsServer::kill`] and
    /// [`NatsServer::restart`] and is deleted on drop.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The log file (stdout and stderr of every run, in order).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id, or `None` while the server is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server gracefully: SIGTERM, then waits up to
    /// [`STOP_TIMEOUT`] for it to exit. If it does not, it is killed and
    /// [`HarnessError::StopTimedOut`] is returned. Does nothing when already
    /// stopped.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        if self.child.is_none() {
            return Ok(());
        }
        self.signal(Signal::TERM, "SIGTERM")?;
        // A paused process only acts on SIGTERM once it runs again.
        self.signal(Signal::CONT, "SIGCONT")?;
        if self.wait_exit(STOP_TIMEOUT).await?.is_some() {
            self.child = None;
            return Ok(());
        }
        self.kill().await?;
        Err(HarnessError::StopTimedOut {
            name: self.name.clone(),
            waited: STOP_TIMEOUT,
        })
    }

    /// Kills the server with SIGKILL and waits for it to exit. Its store is
    /// left as the crash left it. Does nothing when already stopped.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        child
            .kill()
            .map_err(|e| HarnessError::io(format!("killing nats-server {}", self.name), e))?;
        match self.wait_exit(STOP_TIMEOUT).await? {
            Some(_) => {
                self.child = None;
                Ok(())
            }
            None => Err(HarnessError::io(
                format!("waiting for nats-server {} to die", self.name),
                std::io::Error::new(std::io::ErrorKind::TimedOut, "still running after SIGKILL"),
            )),
        }
    }

    /// Starts the server again on the same ports with the same store, so
    /// streams and durable consumers survive, and waits until it is ready.
    /// A running server is killed first.
    ///
    /// If the port is briefly taken by another process, the start is retried
    /// on the same port.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill().await?;
        self.append_log_marker("restarting");
        let mut last_tail = String::new();
        for attempt in 0..START_ATTEMPTS * 4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let offset = self.spawn()?;
            match self.wait_ready(offset).await {
                Ok(()) => return Ok(()),
                Err(StartFailure::PortClash { log_tail }) => last_tail = log_tail,
                Err(StartFailure::Fatal(e)) => {
                    self.kill_now();
                    return Err(e);
                }
            }
        }
        Err(HarnessError::PortsInUse {
            name: self.name.clone(),
            attempts: START_ATTEMPTS * 4,
            log_tail: last_tail,
        })
    }

    /// Freezes the process with SIGSTOP: connections stay open but nothing
    /// is answered, like a hung server or a network partition. Returns once
    /// every thread of the process has stopped.
    pub fn pause(&self) -> Result<(), HarnessError> {
        self.signal(Signal::STOP, "SIGSTOP")?;
        let Some(child) = self.child.as_ref() else {
            return Ok(());
        };
        // `kill` only queues the signal: a thread running on another core
        // can still answer a request or two. The parent is told once the
        // whole process has stopped; NOWAIT leaves that report (or an exit)
        // for later waits.
        let options = WaitIdOptions::STOPPED | WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
        loop {
            match rustix::process::waitid(WaitId::Pid(Pid::from_child(child)), options) {
                Ok(_) => return Ok(()),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(HarnessError::Signal {
                        name: self.name.clone(),
                        signal: "SIGSTOP",
                        pid: child.id(),
                        source: e.into(),
                    });
                }
            }
        }
    }

    /// Lets a paused process run again with SIGCONT.
    pub fn resume(&self) -> Result<(), HarnessError> {
        self.signal(Signal::CONT, "SIGCONT")
    }

    /// The server's log so far (every run since the first start).
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => format!("(could not read {}: {e})", self.log_path.display()),
        }
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Polls the plain `/healthz` endpoint (JetStream enabled, and in a
    /// cluster: current with the meta leader and with every stream and
    /// consumer this node holds) until it answers 200.
    pub async fn wait_until_healthy(&self, timeout: Duration) -> Result<(), HarnessError> {
        let started = Instant::now();
        loop {
            let last = match probe::http_get(self.ports.monitor, "/healthz").await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("GET /healthz answered {}: {}", r.status, r.body.trim()),
                Err(e) => format!("GET /healthz: {e}"),
            };
            if started.elapsed() >= timeout {
                return Err(HarnessError::NotReady {
                    name: self.name.clone(),
                    waited: started.elapsed(),
                    reason: last,
                    log_tail: self.log_tail(40),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET path` on the monitoring port, parsed as JSON.
    pub(crate) async fn monitor_json(&self, path: &str) -> std::io::Result<serde_json::Value> {
        probe::http_get_json(self.ports.monitor, path).await
    }

    pub(crate) fn ready_timeout(&self) -> Duration {
        self.settings.ready_timeout
    }

    fn signal(&self, signal: Signal, label: &'static str) -> Result<(), HarnessError> {
        let Some(child) = self.child.as_ref() else {
            return Err(HarnessError::NotRunning {
                name: self.name.clone(),
                action: match label {
                    "SIGSTOP" => "paused",
                    "SIGCONT" => "resumed",
                    _ => "signalled",
                },
            });
        };
        rustix::process::kill_process(Pid::from_child(child), signal).map_err(|e| {
            HarnessError::Signal {
                name: self.name.clone(),
                signal: label,
                pid: child.id(),
                source: e.into(),
            }
        })
    }

    /// Polls for the process's exit for up to `timeout`; `None` if it is
    /// still running then.
    async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>, HarnessError> {
        let started = Instant::now();
        loop {
            let Some(child) = self.child.as_mut() else {
                return Ok(None);
            };
            match child.try_wait() {
                Ok(Some(status)) => return Ok(Some(status)),
                Ok(None) if started.elapsed() >= timeout => return Ok(None),
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => {
                    return Err(HarnessError::io(
                        format!("waiting for nats-server {}", self.name),
                        e,
                    ));
                }
            }
        }
    }

    /// SIGKILL and reap, blocking; for drop and failed starts.
    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Errors mean the process is already gone; nothing else to do.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_since(&self, offset: u64) -> String {
        let log = self.log();
        let start = usize::try_from(offset).unwrap_or(0).min(log.len());
        log.get(start..).unwrap_or(&log).to_string()
    }

    fn append_log_marker(&self, what: &str) {
        if let Ok(mut file) = OpenOptions::new().append(true).open(&self.log_path) {
            let _ = writeln!(file, "----- nats-harness: {what} {} -----", self.name);
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill_now();
        if std::thread::panicking() {
            eprintln!(
                "\n===== nats-server {} (client port {}, monitor port {}): last {PANIC_LOG_LINES} log lines =====\n{}\n===== end of nats-server {} log =====",
                self.name,
                self.ports.client,
                self.ports.monitor,
                self.log_tail(PANIC_LOG_LINES),
                self.name
            );
        }
    }
}

/// The last `lines` lines of `text`.
pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
