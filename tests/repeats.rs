//! Repeated opens are counted in the kernel, not reported one by one
//! (`monitor-ebpf/src/seen.rs`): counts and `events_total` stay exact, a
//! new object behind the same name is a new object, and a failed probe is
//! reported beside the later successful open. A static C program makes
//! the opens, so no loader open blurs the numbers.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use monitor_integration_tests::*;
use serde_json::Value;

/// Static: no loader opens (libc6-dev has libc.a).
fn compile_reopen(dir: &Path) -> PathBuf {
    let out = dir.join("reopen");
    compile_c("fixtures/reopen.c", &out, &["-static"]);
    out
}

/// Declares `inputs` for `cgroup` and waits until the daemon has read it.
fn declare_read(daemon: &Daemon, cgroup: &Path, inputs: &[&Path]) {
    daemon.declare(cgroup, "//repeats:t", "Genrule", inputs, "");
    let name = cgroup.file_name().unwrap().to_string_lossy().to_string();
    let needle = format!(
        "declaration {} read",
        daemon.declarations.join(format!("{name}.json")).display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(daemon.dir.path().join("monitor.stderr"))
        .is_ok_and(|e| e.contains(&needle))
    {
        assert!(Instant::now() < deadline, "declaration never read");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_sum(alerts: &[&Value]) -> u64 {
    alerts.iter().map(|a| a["count"].as_u64().unwrap()).sum()
}

fn file_events(daemon: &Daemon) -> f64 {
    metric(
        &daemon.metrics_text(),
        "build_monitor_events_total",
        &[("kind", "file")],
    )
}

/// Runs `cmd` in `action`, which makes `opens` opens: every one is counted
/// in `events_total` exactly once the process's repeats are taken at its
/// end. Returns `build_monitor_repeats_total` then.
fn run_counting(daemon: &Daemon, action: &Path, cmd: &mut Command, opens: f64) -> f64 {
    let before = file_events(daemon);
    run_ok_in(action, cmd);
    daemon.wait_for_metric(
        "build_monitor_events_total",
        &[("kind", "file")],
        before + opens,
    );
    assert_eq!(file_events(daemon), before + opens);
    metric(&daemon.metrics_text(), "build_monitor_repeats_total", &[])
}

#[test]
fn repeated_opens_cost_two_events_and_counts_stay_exact() {
    require_root();
    let parent = test_parent("repeats");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let declared = tmp.path().join("d/ok.txt");
    let secret = tmp.path().join("secret.txt");
    write(&declared, "ok");
    write(&secret, "secret");
    declare_read(&daemon, &action.path, &[&declared, &program]);
    let repeats = run_counting(
        &daemon,
        &action.path,
        Command::new(&program)
            // One CPU: the counting starts at the second open on a CPU.
            .arg("c:0")
            .arg(format!("o:{}:10000", declared.display()))
            .arg(format!("o:{}:1000", secret.display())),
        11_000.0,
    );
    // Reported in full: the first two opens of each (the second starts the
    // counting); the rest only counted.
    assert_eq!(repeats, 9_998.0 + 998.0);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &secret)),
        1_000,
        "{alerts:#?}"
    );
    // Positive control of "nothing": the declared file raised nothing.
    assert!(file_alerts(&alerts, &declared).is_empty(), "{alerts:#?}");
}

/// The counting starts at a process's second open of an object on one
/// CPU: an object opened twice is reported twice and counts no repeat; one
/// opened on CPUs 0 and 1 in turn is reported three times (its first open
/// on each CPU, then its second on CPU 0) and the rest counted. Counts
/// stay exact either way.
#[test]
fn counting_starts_at_the_second_open_on_one_cpu() {
    require_root();
    let parent = test_parent("repeats-cpus");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let twice = tmp.path().join("twice.txt");
    let hopping = tmp.path().join("hopping.txt");
    write(&twice, "twice");
    write(&hopping, "hopping");
    declare_read(&daemon, &action.path, &[&program]);
    let repeats = run_counting(
        &daemon,
        &action.path,
        Command::new(&program)
            .arg("c:0")
            .arg(format!("o:{}:2", twice.display()))
            .arg(format!("h:{}:1000", hopping.display())),
        1_002.0,
    );
    assert_eq!(repeats, 997.0);
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(count_sum(&file_alerts(&alerts, &twice)), 2, "{alerts:#?}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &hopping)),
        1_000,
        "{alerts:#?}"
    );
}

/// A declared file replaced (from outside the action) between two batches
/// of one process's opens: the new object under the declared name is not
/// the declared one, so the second batch alerts; the first batch is its
/// positive control. A failed probe of a missing file and its successful
/// open once it exists are both counted.
#[test]
fn a_new_object_behind_the_same_name_and_a_failed_probe_are_reported() {
    require_root();
    let parent = test_parent("repeats-new");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reopen");
    let tmp = tempfile::tempdir().unwrap();
    let program = compile_reopen(tmp.path());
    let declared = tmp.path().join("d/x.txt");
    let late = tmp.path().join("late.txt");
    write(&declared, "first object");
    declare_read(&daemon, &action.path, &[&declared, &program]);
    let mut cmd = Command::new(&program);
    cmd.arg(format!("o:{}:5", declared.display()))
        .arg(format!("o:{}:1", late.display()))
        .arg("w")
        .arg(format!("o:{}:5", declared.display()))
        .arg(format!("o:{}:1", late.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = in_cgroup(&mut cmd, &action.path).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    // A new object under the declared name, and the missing file created.
    let replacement = tmp.path().join("d/x.txt.new");
    write(&replacement, "second object");
    std::fs::rename(&replacement, &declared).unwrap();
    write(&late, "now here");
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        count_sum(&file_alerts(&alerts, &declared)),
        5,
        "{alerts:#?}"
    );
    let late_alerts = file_alerts(&alerts, &late);
    assert_eq!(count_sum(&late_alerts), 2, "{alerts:#?}");
    // The first is the failed probe (ENOENT).
    assert_eq!(late_alerts[0]["file"]["result"], -2, "{alerts:#?}");
}
