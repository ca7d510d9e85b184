//! A program that started servers through the harness takes them down when
//! it dies, however it dies: SIGTERM without a handler, or SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long a server may outlive the program that started it.
const GRACE: Duration = Duration::from_secs(1);

/// The helper program, its servers' pids and their directories.
struct Held {
    program: Child,
    servers: Vec<(u32, PathBuf)>,
}

/// Runs `nats-harness-hold` and reads its servers until it says `ready`.
fn hold() -> Result<Held, Box<dyn std::error::Error>> {
    let mut program = Command::new(env!("CARGO_BIN_EXE_nats-harness-hold"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = program.stdout.take().ok_or("no stdout")?;
    let mut servers = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line == "ready" {
            return Ok(Held { program, servers });
        }
        let mut words = line.splitn(3, ' ');
        if let (Some("server"), Some(pid), Some(dir)) = (words.next(), words.next(), words.next()) {
            servers.push((pid.parse()?, PathBuf::from(dir)));
        }
    }
    let _ = program.kill();
    Err(format!(
        "nats-harness-hold exited before `ready`: {:?}",
        program.wait()?
    )
    .into())
}

/// Whether `pid` is a live process (a zombie that nobody reaped is dead).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Signals the program, reaps it, and polls until none of its servers is
/// alive, for at most [`GRACE`].
fn kill_and_check(signal: Signal) -> TestResult {
    let mut held = hold()?;
    assert_eq!(
        held.servers.len(),
        4,
        "one single server and 3 cluster nodes"
    );
    assert!(held.servers.iter().all(|(pid, _)| alive(*pid)));
    let pid = Pid::from_child(&held.program);
    rustix::process::kill_process(pid, signal)?;
    let status = held.program.wait()?;
    assert!(!status.success(), "{signal:?} ended it: {status}");

    let deadline = Instant::now() + GRACE;
    loop {
        let survivors: Vec<u32> = held
            .servers
            .iter()
            .map(|(pid, _)| *pid)
            .filter(|pid| alive(*pid))
            .collect();
        if survivors.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            // Leave nothing behind for the next run, then fail.
            for pid in &survivors {
                if let Some(pid) = Pid::from_raw(*pid as i32) {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
            panic!(
                "nats-server pids {survivors:?} still alive {GRACE:?} after {signal:?} of the program that started them"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Their directories are removed by the next program that uses the harness.
    let removed = nats_harness::remove_stale_dirs();
    for (_, dir) in &held.servers {
        assert!(
            !dir.exists(),
            "{} was left behind (removed: {removed:?})",
            dir.display()
        );
    }
    Ok(())
}

#[test]
fn sigterm_of_the_program_takes_its_servers_down() -> TestResult {
    kill_and_check(Signal::TERM)
}

#[test]
fn sigkill_of_the_program_takes_its_servers_down() -> TestResult {
    kill_and_check(Signal::KILL)
}
