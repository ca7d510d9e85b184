//! Starts one server and a 3-node cluster through the harness, prints each
//! server's pid and directory, then waits to be killed.
//!
//! The lifetime test (`tests/lifetime.rs`) sends it SIGTERM or SIGKILL and
//! checks that none of its servers outlives it. By hand:
//!
//! ```text
//! cargo run -p nats-harness --bin nats-harness-hold
//! ```
//!
//! Output, one line per server, then `ready`:
//! `server PID DIR` (DIR is the temporary directory holding its store).

use std::process::ExitCode;

use nats_harness::{NatsCluster, NatsServer};

#[tokio::main]
async fn main() -> ExitCode {
    // 1. Start a single server and a cluster, as a test or example would.
    let single = match NatsServer::start().await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("nats-harness-hold: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cluster = match NatsCluster::start(3).await {
        Ok(cluster) => cluster,
        Err(e) => {
            eprintln!("nats-harness-hold: {e}");
            return ExitCode::FAILURE;
        }
    };
    // 2. Say which processes and directories belong to this run.
    for server in std::iter::once(&single).chain(cluster.nodes()) {
        let dir = server.config_path().parent().unwrap_or(server.store_dir());
        println!(
            "server {} {}",
            server.pid().unwrap_or_default(),
            dir.display()
        );
    }
    println!("ready");
    // 3. Wait for a signal; whatever it is, the servers must not outlive us.
    std::future::pending::<()>().await;
    ExitCode::SUCCESS
}
