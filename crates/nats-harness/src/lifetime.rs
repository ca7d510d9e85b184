//! Servers never outlive the program that started them.
//!
//! Dropping a [`crate::NatsServer`] kills it, but a program killed with
//! SIGKILL (or ended by a signal it does not handle) runs no destructors.
//! On Linux every server is therefore started with `PR_SET_PDEATHSIG` set to
//! SIGKILL, so the kernel kills it when its parent goes away.
//!
//! The kernel counts the *thread* that forked the child as its parent: a
//! server spawned from a tokio worker or blocking thread would be killed when
//! that thread exits, which the runtime does whenever it likes. So every
//! server is spawned from one dedicated thread that lives as long as the
//! process, and dies only with it.
//!
//! The temporary directories of a killed program stay behind; the next
//! program that uses the harness removes them ([`remove_stale_dirs`]).

use std::io;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{Sender, channel};

/// The prefix of every temporary directory the harness creates; the next
/// dash-separated field after the kind is the owning process id.
pub(crate) const DIR_PREFIX: &str = "nh-";

/// One spawn request: the command, and where to send the result.
type Request = (Command, Sender<io::Result<Child>>);

/// Starts `command` as a child that dies with this process.
pub(crate) fn spawn(command: Command) -> io::Result<Child> {
    let (reply, result) = channel();
    spawner()?
        .send((command, reply))
        .map_err(|_| io::Error::other("the nats-server spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| io::Error::other("the nats-server spawner thread dropped a request"))?
}

/// The channel to the spawner thread, started on first use.
fn spawner() -> io::Result<&'static Sender<Request>> {
    static SPAWNER: OnceLock<Sender<Request>> = OnceLock::new();
    if let Some(sender) = SPAWNER.get() {
        return Ok(sender);
    }
    let (sender, requests) = channel::<Request>();
    // The sender stays in the static, so `recv` never fails and the thread
    // never returns: it ends only with the process.
    std::thread::Builder::new()
        .name("nats-harness-spawner".into())
        .spawn(move || {
            while let Ok((mut command, reply)) = requests.recv() {
                die_with_parent(&mut command);
                let _ = reply.send(command.spawn());
            }
        })?;
    // A caller that loses a race to start the thread drops its sender
    // here, so its own thread ends at once, having spawned nothing.
    Ok(SPAWNER.get_or_init(|| sender))
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    use rustix::process::{Signal, getpid, getppid, set_parent_process_death_signal};
    use std::os::unix::process::CommandExt as _;

    let parent = getpid();
    // SAFETY: the closure runs between fork and exec and makes only raw
    // system calls (prctl, getppid), which are async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The parent may have died before prctl took effect.
            if getppid() != Some(parent) {
                return Err(io::Error::other(
                    "the program that started nats-server is gone",
                ));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {
    // No parent-death signal outside Linux: only Drop takes servers down.
}

/// Removes the temporary directories (config, log, store) that servers of
/// programs no longer running left behind, and returns them. A directory
/// whose owner process is still alive is never touched.
///
/// The harness calls this once per process, before its first server
/// starts; call it again to clean up after a program you just killed.
pub fn remove_stale_dirs() -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        if owner != std::process::id() && !process_exists(owner) {
            let path = entry.path();
            if std::fs::remove_dir_all(&path).is_ok() {
                removed.push(path);
            }
        }
    }
    removed
}

/// Removes stale directories the first time any server of this process is
/// prepared.
pub(crate) fn remove_stale_dirs_once() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        remove_stale_dirs();
    });
}

/// The owning process id in a harness directory name,
/// `nh-<kind>-<pid>-<n>-...`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(DIR_PREFIX)?;
    let mut fields = rest.split('-');
    let _kind = fields.next()?;
    fields.next()?.parse().ok()
}

/// Whether a process with this id exists (a zombie counts: its parent may
/// still be about to clean up).
fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        // Alive, but not ours to signal.
        Err(rustix::io::Errno::PERM) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_owner_from_a_directory_name() {
        assert_eq!(owner_pid("nh-s-1234-0-AbCdEf"), Some(1234));
        assert_eq!(owner_pid("nh-c-77-3-n2-xyz"), Some(77));
        assert_eq!(owner_pid("nh-s-x-0-abc"), None);
        assert_eq!(owner_pid("other-s-1-0"), None);
    }

    #[test]
    fn a_server_spawned_here_is_our_child() -> io::Result<()> {
        let mut child = spawn(Command::new("true"))?;
        assert!(child.wait()?.success());
        Ok(())
    }
}
