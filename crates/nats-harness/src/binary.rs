//! Finding the `nats-server` binary and checking its version.
//!
//! The search order is:
//!
//! 1. the environment variable `NATS_SERVER_BIN` (when set and not empty, it
//!    must name an executable file: a wrong value is an error, not a reason
//!    to look elsewhere; make it an absolute path, since tests run in their
//!    crate's directory);
//! 2. the project-local install, `.tools/bin/nats-server` at the workspace
//!    root;
//! 3. the directories of `PATH`;
//! 4. when none of these holds a recent enough binary, the pinned version is
//!    installed into `.tools/bin` (see [`install_nats_server`](crate::install_nats_server)),
//!    with one line on stderr saying so.
//!
//! [`nats_server_binary`] runs the search once per process and caches the
//! result; [`find_or_install_nats_server`] is the same for any tools
//! directory, uncached; [`find_nats_server_in`] is the search of steps 1 to
//! 3 as a pure function of its inputs, for tests and tools.

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::error::{DiscoveryError, HarnessError};
use crate::install::install_nats_server;

/// The oldest `nats-server` the harness accepts.
pub const MINIMUM_VERSION: Version = Version {
    major: 2,
    minor: 10,
    patch: 0,
};

/// The environment variable that names the binary explicitly.
pub const BIN_ENV: &str = "NATS_SERVER_BIN";

/// A `nats-server` version, as printed by `nats-server --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major version.
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch version.
    pub patch: u32,
}

impl Version {
    /// Parses the output of `nats-server --version`, e.g.
    /// `nats-server: v2.15.1`. Returns `None` when no version is found.
    ///
    /// ```
    /// use nats_harness::Version;
    /// let v = Version::parse_version_output("nats-server: v2.15.1\n").unwrap();
    /// assert_eq!((v.major, v.minor, v.patch), (2, 15, 1));
    /// ```
    pub fn parse_version_output(output: &str) -> Option<Version> {
        output.split_whitespace().find_map(|word| {
            let digits = word.trim_start_matches('v');
            // Drop a pre-release or build suffix: 2.11.0-RC.1, 2.10.3+build.
            let core = digits.split(['-', '+']).next()?;
            let mut parts = core.split('.');
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            let patch = parts.next().map_or(Some(0), |p| p.parse().ok())?;
            Some(Version {
                major,
                minor,
                patch,
            })
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A `nats-server` binary that was found and whose version was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerBinary {
    path: PathBuf,
    version: Version,
}

impl ServerBinary {
    pub(crate) fn new(path: PathBuf, version: Version) -> Self {
        Self { path, version }
    }

    /// Where the binary is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version it reported.
    pub fn version(&self) -> Version {
        self.version
    }
}

/// The project-local tools directory, `<workspace root>/.tools`.
pub fn local_tools_dir() -> PathBuf {
    // This crate lives in `<root>/crates/nats-harness`.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .join(".tools")
}

/// The project-local install directory, `<workspace root>/.tools/bin`.
pub fn local_bin_dir() -> PathBuf {
    local_tools_dir().join("bin")
}

/// Finds and checks `nats-server` once per process (see the module docs for
/// the search order), then returns the cached result.
///
/// The cache means that changing `NATS_SERVER_BIN` after the first call has
/// no effect in this process; use [`find_nats_server_in`] to test the search
/// itself.
pub fn nats_server_binary() -> Result<&'static ServerBinary, HarnessError> {
    static FOUND: OnceLock<Result<ServerBinary, DiscoveryError>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let env = std::env::var_os(BIN_ENV);
            let path_var = std::env::var_os("PATH");
            find_or_install_nats_server(env.as_deref(), &local_tools_dir(), path_var.as_deref())
        })
        .as_ref()
        .map_err(|e| HarnessError::Discovery(e.clone()))
}

/// The whole search of the module docs, uncached: `env_value` is the value
/// of `NATS_SERVER_BIN`, `tools_dir` the project-local tools directory
/// (whose `bin/` is searched, and installed into) and `path_var` the value
/// of `PATH`.
///
/// A set `NATS_SERVER_BIN` is used or reported, never replaced. Otherwise
/// the first recent enough binary of `<tools_dir>/bin` and `PATH` is used,
/// and when there is none, nats-server
/// [`PINNED_VERSION`](crate::PINNED_VERSION) is installed.
pub fn find_or_install_nats_server(
    env_value: Option<&OsStr>,
    tools_dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<ServerBinary, DiscoveryError> {
    if env_value.is_some_and(|v| !v.is_empty()) {
        let path = find_nats_server_in(env_value, &tools_dir.join("bin"), path_var)?;
        let version = check_version(&path)?;
        return Ok(ServerBinary { path, version });
    }
    let on_path = path_var
        .map(|p| std::env::split_paths(p).collect::<Vec<_>>())
        .unwrap_or_default();
    let candidates = std::iter::once(tools_dir.join("bin"))
        .chain(on_path)
        .map(|dir| dir.join("nats-server"));
    for path in candidates {
        if is_executable_file(&path)
            && let Ok(version) = check_version(&path)
        {
            return Ok(ServerBinary { path, version });
        }
    }
    install_nats_server(tools_dir)
}

/// The search of [`nats_server_binary`] as a pure function: `env_value` is the
/// value of `NATS_SERVER_BIN`, `local_dir` the directory of the project-local
/// install and `path_var` the value of `PATH`. Returns the binary's path
/// without running it.
///
/// ```
/// use std::path::Path;
/// use nats_harness::{DiscoveryError, find_nats_server_in};
///
/// let err = find_nats_server_in(None, Path::new("/nonexistent"), None).unwrap_err();
/// assert!(matches!(err, DiscoveryError::NotFound { .. }));
/// assert!(err.to_string().contains("cargo xtask install-nats"));
/// ```
pub fn find_nats_server_in(
    env_value: Option<&OsStr>,
    local_dir: &Path,
    path_var: Option<&OsStr>,
) -> Result<PathBuf, DiscoveryError> {
    if let Some(value) = env_value.filter(|v| !v.is_empty()) {
        let path = PathBuf::from(value);
        return if is_executable_file(&path) {
            Ok(path)
        } else {
            Err(DiscoveryError::EnvNotExecutable { path })
        };
    }
    let local = local_dir.join("nats-server");
    if is_executable_file(&local) {
        return Ok(local);
    }
    if let Some(path_var) = path_var {
        for dir in std::env::split_paths(path_var) {
            let candidate = dir.join("nats-server");
            if is_executable_file(&candidate) {
                return Ok(candidate);
            }
        }
    }
    Err(DiscoveryError::NotFound { local })
}

/// Runs `path --version` and checks the result against [`MINIMUM_VERSION`].
pub fn check_version(path: &Path) -> Result<Version, DiscoveryError> {
    let unreadable = |detail: String| DiscoveryError::VersionUnreadable {
        path: path.to_path_buf(),
        detail,
    };
    let output = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| unreadable(e.to_string()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = Version::parse_version_output(&text).ok_or_else(|| {
        let first_line = text.lines().next().unwrap_or("").trim().to_string();
        unreadable(format!("exit {}, output {first_line:?}", output.status))
    })?;
    if version < MINIMUM_VERSION {
        return Err(DiscoveryError::TooOld {
            path: path.to_path_buf(),
            found: version,
        });
    }
    Ok(version)
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_release_and_prerelease_versions() {
        let v = |s| Version::parse_version_output(s);
        assert_eq!(
            v("nats-server: v2.15.1"),
            Some(Version {
                major: 2,
                minor: 15,
                patch: 1
            })
        );
        assert_eq!(
            v("nats-server: v2.11.0-RC.2\n"),
            Some(Version {
                major: 2,
                minor: 11,
                patch: 0
            })
        );
        assert_eq!(v("something else entirely"), None);
        assert!(v("nats-server: v2.9.25").is_some_and(|v| v < MINIMUM_VERSION));
    }
}
