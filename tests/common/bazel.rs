//! What the real-Bazel tests share: where Bazel is, startup options that
//! keep every file in the test's temp dir, `monitor exec` in a workspace,
//! stopping the server a build left, and reading the report it wrote.
use std::{fs, path::Path, process::Command};

use serde_json::Value;

/// Debian's `bazel-bootstrap` (4.2.3), installed by `cargo xtask setup`.
pub const BAZEL: &str = "/usr/bin/bazel";

/// Root, and Bazel installed: else the test fails loudly.
pub fn require_bazel() {
    crate::require_root();
    assert!(
        Path::new(BAZEL).exists(),
        "{BAZEL} missing: run `cargo xtask setup` (installs bazel-bootstrap)"
    );
}

/// Copies a fixture workspace (files and directories) to `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// Bazel startup options that keep every file in the test's temp dir `t`.
pub fn startup_args(t: &Path) -> [String; 3] {
    [
        format!("--output_base={}", t.join("ob").display()),
        format!("--output_user_root={}", t.join("root").display()),
        format!(
            "--host_jvm_args=-Djava.io.tmpdir={}",
            t.join("jtmp").display()
        ),
    ]
}

/// Stops the server a build in `ws` started (`monitor exec` stops it too;
/// make sure), with `HOME` at `t`.
pub fn shutdown(ws: &Path, t: &Path, startup: &[String]) {
    let _ = Command::new(BAZEL)
        .current_dir(ws)
        .env("HOME", t)
        .args(startup)
        .arg("shutdown")
        .output();
}

/// `monitor exec` in the workspace, with `config` (a TOML text) if given.
pub fn monitor_exec(t: &Path, ws: &Path, config: Option<&str>) -> Command {
    let mut monitor = Command::new(crate::monitor_bin());
    monitor
        .current_dir(ws)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", t)
        .arg("exec");
    if let Some(text) = config {
        let file = t.join("monitor.toml");
        fs::write(&file, text).unwrap();
        monitor.arg("--config").arg(file);
    }
    monitor
}

/// The JSON report at `path`, or a panic that shows what the monitor said.
pub fn read_report(path: &Path, stderr: &str) -> Value {
    serde_json::from_slice(&fs::read(path).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}); monitor said:\n{stderr}"))
}
