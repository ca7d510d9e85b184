//! [`NatsCluster`]: several JetStream servers on loopback, joined by routes
//! into one cluster, for replicated streams and leader failover.
//!
//! Leadership is read from each node's monitoring endpoint: a node leads a
//! stream when its own `/jsz?streams=true` names itself as the stream's
//! leader. Asking the node itself matters after a kill: the survivors keep
//! reporting the dead node as leader until they have elected a new one
//! (about 4 seconds with nats-server 2.15).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::builder::{ClusterSettings, Ports, Settings};
use crate::error::HarnessError;
use crate::ports::pick_ports;
use crate::server::{NatsServer, POLL, START_ATTEMPTS, StartFailure, unique_name};

/// How long [`NatsCluster::stream_leader`] and [`NatsCluster::meta_leader`]
/// poll before giving up.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// A JetStream cluster of `nats-server` processes on loopback, each with its
/// own ports and file store.
///
/// Dropping it kills and cleans up every node (see [`NatsServer`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use async_nats::jetstream::{self, stream};
///
/// let mut cluster = nats_harness::NatsCluster::start(3).await?;
/// // async-nats takes the list of URLs, not the comma-joined string.
/// let client = async_nats::connect(cluster.urls()).await?;
/// let js = jetstream::new(client);
/// js.get_or_create_stream(stream::Config {
///     name: "ORDERS".into(),
///     num_replicas: 3,
///     ..Default::default()
/// })
/// .await?;
/// let leader = cluster.stream_leader("ORDERS").await?;
/// cluster.kill_node(leader).await?;
/// let new_leader = cluster.stream_leader("ORDERS").await?;
/// assert_ne!(leader, new_leader);
/// cluster.restart_node(leader).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a JetStream cluster of `nodes` servers on loopback (routes
    /// between all of them, one store each) and waits until every node is
    /// healthy and they agree on a JetStream meta leader.
    ///
    /// `nodes` must be at least 2; use 3 (or more) for a cluster that keeps
    /// a quorum when one node is killed.
    pub async fn start(nodes: usize) -> Result<NatsCluster, HarnessError> {
        if nodes < 2 {
            // nats-server refuses a clustered JetStream without routes.
            return Err(HarnessError::InvalidSettings(format!(
                "a JetStream cluster needs at least 2 nodes (3 to survive losing one), not {nodes}"
            )));
        }
        let name = unique_name("c");
        let mut last_tail = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports =
                pick_ports(3 * nodes).map_err(|e| HarnessError::io("picking free ports", e))?;
            let ports: Vec<Ports> = ports
                .chunks_exact(3)
                .map(|p| Ports {
                    client: p[0],
                    monitor: p[1],
                    cluster: Some(p[2]),
                })
                .collect();
            let mut servers = Vec::with_capacity(nodes);
            for (i, own) in ports.iter().enumerate() {
                let routes = ports
                    .iter()
                    .filter(|p| p.cluster != own.cluster)
                    .filter_map(|p| p.cluster)
                    .collect();
                let settings = Settings {
                    cluster: Some(ClusterSettings {
                        name: name.clone(),
                        routes,
                    }),
                    ..Settings::default()
                };
                servers.push(NatsServer::prepare(format!("{name}-n{i}"), settings, *own)?);
            }
            let mut offsets = Vec::with_capacity(nodes);
            for server in &mut servers {
                offsets.push(server.spawn()?);
            }
            let mut clash = None;
            for (server, offset) in servers.iter_mut().zip(offsets) {
                match server.wait_ready(offset).await {
                    Ok(()) => {}
                    Err(StartFailure::PortClash { log_tail }) => {
                        clash = Some(log_tail);
                        break;
                    }
                    Err(StartFailure::Fatal(e)) => return Err(e),
                }
            }
            if let Some(log_tail) = clash {
                // Dropping `servers` kills the nodes that did start.
                last_tail = log_tail;
                continue;
            }
            let cluster = NatsCluster {
                name,
                nodes: servers,
            };
            cluster.wait_formed().await?;
            return Ok(cluster);
        }
        Err(HarnessError::PortsInUse {
            name,
            attempts: START_ATTEMPTS,
            log_tail: last_tail,
        })
    }

    /// Every node healthy, all agreeing on one meta leader that knows the
    /// whole cluster and sees every other node online and current (until
    /// then it refuses to place a replicated stream: "no suitable peers
    /// for placement, peer offline").
    async fn wait_formed(&self) -> Result<(), HarnessError> {
        let started = Instant::now();
        let timeout = self
            .nodes
            .iter()
            .map(NatsServer::ready_timeout)
            .max()
            .unwrap_or(LEADER_TIMEOUT);
        for node in &self.nodes {
            node.wait_until_healthy(timeout.saturating_sub(started.elapsed()))
                .await?;
        }
        loop {
            let mut seen = Vec::with_capacity(self.nodes.len());
            for node in &self.nodes {
                seen.push(match node.monitor_json("/jsz").await {
                    Ok(jsz) => (
                        jsz["meta_cluster"]["leader"]
                            .as_str()
                            .unwrap_or("")
                            .to_string(),
                        jsz["meta_cluster"]["cluster_size"].as_u64().unwrap_or(0),
                    ),
                    Err(e) => (format!("error: {e}"), 0),
                });
            }
            let leader = seen.first().map_or("", |(l, _)| l.as_str());
            let agreed = seen
                .iter()
                .all(|(l, size)| l == leader && *size == self.nodes.len() as u64);
            if agreed
                && let Some(index) = self.index_of(leader)
                && self.peers_current(index).await
            {
                return Ok(());
            }
            if started.elapsed() >= timeout {
                return Err(HarnessError::NoMetaLeader {
                    waited: started.elapsed(),
                    last_seen: self.describe(
                        seen.iter()
                            .map(|(l, s)| format!("leader {l:?}, cluster_size {s}")),
                    ),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Whether the meta leader (node `leader`) sees every other node as a
    /// current, online replica.
    async fn peers_current(&self, leader: usize) -> bool {
        let Some(node) = self.nodes.get(leader) else {
            return false;
        };
        let Ok(jsz) = node.monitor_json("/jsz").await else {
            return false;
        };
        let Some(replicas) = jsz["meta_cluster"]["replicas"].as_array() else {
            return false;
        };
        replicas.len() + 1 == self.nodes.len()
            && replicas.iter().all(|peer| {
                peer["current"].as_bool() == Some(true) && peer["offline"].as_bool() != Some(true)
            })
    }

    /// The cluster's name (the `cluster.name` of every node).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URL of every node, in node order. This is the form to pass
    /// to `async_nats::connect` (it takes a `Vec<String>`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The client URLs joined with commas, the form of a `NATS_URL` variable
    /// or of the `nats` CLI's `--server`.
    ///
    /// `async_nats::connect` (0.51) does **not** split on commas: it parses
    /// the whole string as one URL and fails. Pass [`NatsCluster::urls`] or
    /// [`NatsCluster::client_urls`] to it instead, or split this string.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// The same list as [`NatsCluster::urls`], named for what it is for:
    /// `async_nats::connect(cluster.client_urls())`.
    pub fn client_urls(&self) -> Vec<String> {
        self.urls()
    }

    /// Node `i`.
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`, like slice indexing.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to stop, kill, restart or pause it directly).
    ///
    /// # Panics
    ///
    /// If `i >= self.len()`, like slice indexing.
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// All nodes, in order.
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the cluster has no nodes (never true for a started cluster).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The index of the running node that leads stream `stream` (in any
    /// account), polling for up to [`LEADER_TIMEOUT`]: after the leader was
    /// killed, this waits for the election of the next one.
    pub async fn stream_leader(&self, stream: &str) -> Result<usize, HarnessError> {
        let started = Instant::now();
        loop {
            let mut seen = Vec::with_capacity(self.nodes.len());
            for (i, node) in self.nodes.iter().enumerate() {
                if node.pid().is_none() {
                    seen.push("not running".to_string());
                    continue;
                }
                match node.monitor_json("/jsz?streams=true").await {
                    Ok(jsz) => match stream_leader_in(&jsz, stream) {
                        Some(leader) if leader == node.name() => return Ok(i),
                        Some(leader) => seen.push(format!("sees leader {leader:?}")),
                        None => seen.push("has no such stream or no leader".to_string()),
                    },
                    Err(e) => seen.push(format!("error: {e}")),
                }
            }
            if started.elapsed() >= LEADER_TIMEOUT {
                return Err(HarnessError::NoStreamLeader {
                    stream: stream.to_string(),
                    waited: started.elapsed(),
                    last_seen: self.describe(seen.into_iter()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The index of the running node that is the JetStream meta leader,
    /// polling for up to [`LEADER_TIMEOUT`].
    pub async fn meta_leader(&self) -> Result<usize, HarnessError> {
        let started = Instant::now();
        loop {
            let mut seen = Vec::with_capacity(self.nodes.len());
            for (i, node) in self.nodes.iter().enumerate() {
                if node.pid().is_none() {
                    seen.push("not running".to_string());
                    continue;
                }
                match node.monitor_json("/jsz").await {
                    Ok(jsz) => match jsz["meta_cluster"]["leader"].as_str() {
                        Some(leader) if leader == node.name() => return Ok(i),
                        leader => seen.push(format!("sees leader {leader:?}")),
                    },
                    Err(e) => seen.push(format!("error: {e}")),
                }
            }
            if started.elapsed() >= LEADER_TIMEOUT {
                return Err(HarnessError::NoMetaLeader {
                    waited: started.elapsed(),
                    last_seen: self.describe(seen.into_iter()),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Kills node `i` with SIGKILL (see [`NatsServer::kill`]).
    pub async fn kill_node(&mut self, i: usize) -> Result<(), HarnessError> {
        self.get_mut(i)?.kill().await
    }

    /// Restarts node `i` on its ports and store (see
    /// [`NatsServer::restart`]), then waits until its plain `/healthz` is
    /// 200: it is current with the meta leader and has caught up the
    /// streams it holds. That needs a quorum of the other nodes running.
    pub async fn restart_node(&mut self, i: usize) -> Result<(), HarnessError> {
        let node = self.get_mut(i)?;
        node.restart().await?;
        node.wait_until_healthy(node.ready_timeout()).await
    }

    fn get_mut(&mut self, i: usize) -> Result<&mut NatsServer, HarnessError> {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .ok_or(HarnessError::NoSuchNode { index: i, len })
    }

    fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name() == server_name)
    }

    fn describe(&self, seen: impl Iterator<Item = String>) -> String {
        seen.enumerate()
            .map(|(i, s)| format!("node {i} {s}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The leader that a `/jsz?streams=true` answer names for `stream`.
fn stream_leader_in<'a>(jsz: &'a Value, stream: &str) -> Option<&'a str> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .filter(|detail| detail["name"] == stream)
        .find_map(|detail| detail["cluster"]["leader"].as_str())
        .filter(|leader| !leader.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_stream_leader_in_jsz() {
        let jsz = serde_json::json!({
            "account_details": [
                {"name": "A", "stream_detail": [{"name": "OTHER", "cluster": {"leader": "n0"}}]},
                {"name": "$G", "stream_detail": [{"name": "S", "cluster": {"leader": "n2"}}]}
            ]
        });
        assert_eq!(stream_leader_in(&jsz, "S"), Some("n2"));
        assert_eq!(stream_leader_in(&jsz, "MISSING"), None);
    }
}
