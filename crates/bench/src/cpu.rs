//! Where a run's CPU went: this process (the client side, raw loop or
//! library) and the nats-server process, read from `/proc` before and
//! after, plus the context switches of this process's threads.
//!
//! On a 2-core machine the server takes most of the CPU, so a throughput
//! ratio hides whether the library costs more client CPU per message or
//! leaves the server idle between requests (latency). These figures tell
//! the two apart. Linux only; elsewhere they read as zero.

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on every
/// Linux the project runs on).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU and switch counters at one moment.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    client_ticks: u64,
    server_ticks: u64,
    switches: u64,
    writes: u64,
}

/// What one run used, per message.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This process's CPU (user + system), µs per message.
    pub client_us: f64,
    /// The server's CPU, µs per message (0 without a local server).
    pub server_us: f64,
    /// Context switches of this process's threads, per message.
    pub switches: f64,
    /// Write syscalls of this process (`syscw`), per message: its socket
    /// writes and the runtime's wake-ups of parked threads (an eventfd
    /// write each).
    pub writes: f64,
}

impl CpuMark {
    /// The counters now; `server` is the nats-server's pid, when local.
    pub fn now(server: Option<u32>) -> Self {
        Self {
            client_ticks: ticks("self").unwrap_or(0),
            server_ticks: server.and_then(|pid| ticks(&pid.to_string())).unwrap_or(0),
            switches: switches(),
            writes: writes(),
        }
    }

    /// What was used from this mark to now, for `messages` messages.
    pub fn used(&self, server: Option<u32>, messages: u64) -> CpuUse {
        let now = Self::now(server);
        let n = messages.max(1) as f64;
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SECOND * 1e6 / n;
        CpuUse {
            client_us: us(now.client_ticks.saturating_sub(self.client_ticks)),
            server_us: us(now.server_ticks.saturating_sub(self.server_ticks)),
            switches: now.switches.saturating_sub(self.switches) as f64 / n,
            writes: now.writes.saturating_sub(self.writes) as f64 / n,
        }
    }
}

impl CpuUse {
    /// Nothing measured (a side left out).
    pub const ZERO: Self = Self {
        client_us: 0.0,
        server_us: 0.0,
        switches: 0.0,
        writes: 0.0,
    };

    /// The median of each figure over `runs`.
    pub fn median(runs: &[CpuUse]) -> CpuUse {
        let median = |figure: fn(&CpuUse) -> f64| {
            let mut values: Vec<f64> = runs.iter().map(figure).collect();
            crate::median(&mut values)
        };
        CpuUse {
            client_us: median(|c| c.client_us),
            server_us: median(|c| c.server_us),
            switches: median(|c| c.switches),
            writes: median(|c| c.writes),
        }
    }
}

/// utime + stime of a process (all its threads), in clock ticks.
fn ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Voluntary and involuntary context switches of this process's threads.
/// Write syscalls of this process so far (`syscw` of `/proc/self/io`).
fn writes() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("syscw:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}
