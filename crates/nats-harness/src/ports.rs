//! Picking free loopback ports.
//!
//! Ports are drawn at random from below the kernel's ephemeral range
//! (`/proc/sys/net/ipv4/ip_local_port_range`), so that they never collide
//! with the local port of an outgoing connection, which matters when a
//! stopped server must come back on the same port while clients keep trying
//! to reconnect to it. A candidate is checked by binding it; a process-wide
//! set makes sure one process never hands out the same port twice. Another
//! process can still take a port between the check and the server's own
//! bind: the server then exits with "address already in use" and the caller
//! starts it again with new ports.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::TcpListener;
use std::sync::{Mutex, PoisonError};

/// Lowest port ever handed out.
const LOW: u16 = 10_000;
/// Used when the ephemeral range cannot be read.
const DEFAULT_EPHEMERAL_START: u16 = 32_768;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Returns `count` distinct ports that were free a moment ago.
pub(crate) fn pick_ports(count: usize) -> io::Result<Vec<u16>> {
    let high = ephemeral_start().max(LOW + 1_000);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    let mut picked = Vec::with_capacity(count);
    let mut tries = 0u32;
    while picked.len() < count {
        tries += 1;
        if tries > 10_000 {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("no free loopback port found in {LOW}..{high}"),
            ));
        }
        let port = LOW + (random() % u64::from(high - LOW)) as u16;
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        picked.push(port);
    }
    Ok(picked)
}

fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(DEFAULT_EPHEMERAL_START)
}

/// A random number from std's randomly keyed hasher (no `rand` dependency).
fn random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(elapsed) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(elapsed.as_nanos());
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_below_the_ephemeral_range() {
        let ports = pick_ports(50).expect("free ports");
        let unique: HashSet<_> = ports.iter().collect();
        assert_eq!(unique.len(), 50);
        assert!(
            ports
                .iter()
                .all(|&p| p >= LOW && p < ephemeral_start().max(LOW + 1_000))
        );
    }
}
