//! CLI contract: configuration errors exit 2 with file, line and key.
use std::{fs, process::Command};

use monitor_integration_tests::{assert_exit, monitor_bin, run_monitor};

fn check_config(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor.toml");
    fs::write(&path, text).unwrap();
    let out = Command::new(monitor_bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        stderr.replace(&path.display().to_string(), "FILE"),
    )
}

#[test]
fn malformed_config_exits_2_naming_file_and_line() {
    let (code, _, stderr) = check_config("[alerts]\nstdout = true\nfile = \n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("FILE:3"), "no file:line in {stderr:?}");
}

#[test]
fn unknown_key_exits_2_naming_the_key_and_line() {
    let (code, _, stderr) = check_config("[network]\nallow = []\n\n[alerts]\ncolour = \"red\"\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("FILE:5"), "no line in {stderr:?}");
    assert!(stderr.contains("colour"), "no key in {stderr:?}");
}

#[test]
fn bad_cidr_exits_2_naming_the_field() {
    let (code, _, stderr) = check_config("[network]\nallow = [{ cidr = \"300.1.1.1/8\" }]\n");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("FILE:2") && stderr.contains("cidr"),
        "{stderr:?}"
    );
}

#[test]
fn check_config_prints_the_effective_config() {
    let (code, stdout, stderr) =
        check_config("[network]\nallow = [{ cidr = \"127.0.0.1/32\", port = 8080 }]\n");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("127.0.0.1/32"), "{stdout}");
    assert!(stdout.contains("/usr/**"), "defaults missing: {stdout}");
    assert!(
        stdout.contains("127.0.0.1:9464"),
        "metrics default missing: {stdout}"
    );
}

#[test]
fn missing_config_file_exits_2() {
    let out = run_monitor(["run", "--config", "/nonexistent/monitor.toml"]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/monitor.toml"));
}

#[test]
fn usage_errors_exit_2() {
    assert_exit(&run_monitor(["exec"]), 2);
    let out = run_monitor(["--version"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("monitor "));
}

#[test]
fn shipped_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/monitor.toml");
    let out = run_monitor(["check-config", example]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("/run/monitor/declarations"));
}
