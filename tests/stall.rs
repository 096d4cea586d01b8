//! The reader never waits on slow work: a spawn whose sandbox holds 100,000
//! entries starts (its tree is read while it runs) while another action
//! opens files as fast as it can, and no event is lost; both actions are
//! judged correctly (the big sandbox's declaration is complete, the busy
//! action's one undeclared open is reported once).
use std::{
    fs,
    os::unix::fs::symlink,
    path::Path,
    process::{Command, Stdio},
};

use monitor_integration_tests::*;

const SANDBOX_ENTRIES: usize = 100_000;
const BUSY_OPENS: usize = 200_000;

/// A processwrapper-style sandbox with `SANDBOX_ENTRIES` symlinks to one
/// shared input, and one more to `unique` (found only by a complete walk).
fn big_sandbox(root: &Path, unique: &Path) -> std::path::PathBuf {
    let shared = root.join("workspace/shared.txt");
    write(&shared, "shared");
    let execroot = root.join("ob/sandbox/processwrapper-sandbox/9/execroot/ws");
    let inputs = execroot.join("inputs");
    fs::create_dir_all(&inputs).unwrap();
    for i in 0..SANDBOX_ENTRIES {
        symlink(&shared, inputs.join(format!("in-{i}"))).unwrap();
    }
    symlink(unique, inputs.join("the-one")).unwrap();
    execroot
}

/// Opens the 8 files of `dir` `BUSY_OPENS` times in all, then `secret`,
/// from a process in `cgroup`.
fn start_flood(cgroup: &Path, dir: &Path, secret: &Path) -> std::process::Child {
    let script = "import os,sys\nd,n,secret=sys.argv[1],int(sys.argv[2]),sys.argv[3]\n\
                  names=[os.path.join(d,'f%d'%i) for i in range(8)]\n\
                  for i in range(n):\n  os.close(os.open(names[i%8],os.O_RDONLY))\n\
                  os.close(os.open(secret,os.O_RDONLY))\n";
    let args = [
        dir.display().to_string(),
        BUSY_OPENS.to_string(),
        secret.display().to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    in_cgroup(&mut python(script, &args), cgroup)
        .stdout(Stdio::null())
        .spawn()
        .expect("start the flood")
}

/// Runs a `process-wrapper` spawn in `execroot` that reads `declared` files
/// and then `secret`.
fn run_spawn(cgroup: &Path, root: &Path, execroot: &Path, declared: &[&Path], secret: &Path) {
    let launcher = process_wrapper(root);
    let declared: Vec<String> = declared.iter().map(|p| p.display().to_string()).collect();
    run_ok_in(
        cgroup,
        Command::new(&launcher)
            .current_dir(execroot)
            .args(["--timeout=0", "--", "/bin/sh", "-c"])
            .arg(format!(
                "cat {} > /dev/null; cat {} > /dev/null",
                declared.join(" "),
                secret.display()
            )),
    );
}

#[test]
fn a_huge_sandbox_read_while_another_action_floods_loses_nothing() {
    require_root();
    let parent = test_parent("stall");
    let daemon = Daemon::start(&parent.path, "");
    let tmp = tempfile::tempdir().unwrap();
    let unique = tmp.path().join("workspace/unique.txt");
    let spawn_secret = tmp.path().join("secret/spawn.txt");
    let busy_secret = tmp.path().join("secret/busy.txt");
    for file in [&unique, &spawn_secret, &busy_secret] {
        write(file, "x");
    }
    let execroot = big_sandbox(tmp.path(), &unique);
    let busy_dir = tmp.path().join("busy");
    for i in 0..8 {
        write(&busy_dir.join(format!("f{i}")), "x");
    }
    let busy = parent.child("busy");
    let spawns = parent.child("spawns");
    daemon.declare(
        &busy.path,
        "//t:busy",
        "Genrule",
        &[&busy_dir.join("**")],
        "",
    );
    daemon.declare(&spawns.path, "//t:job", "Job", &[], "");

    let mut flood = start_flood(&busy.path, &busy_dir, &busy_secret);
    // The spawn starts while the flood runs.
    daemon.wait_for_metric("build_monitor_events_total", &[("kind", "file")], 10_001.0);
    let in_77 = execroot.join("inputs/in-77");
    run_spawn(
        &spawns.path,
        tmp.path(),
        &execroot,
        &[&unique, &in_77],
        &spawn_secret,
    );
    assert!(flood.wait().unwrap().success(), "the flood failed");

    daemon.wait_for_alerts("both undeclared opens alerted", |alerts| {
        !file_alerts(alerts, &spawn_secret).is_empty()
            && !file_alerts(alerts, &busy_secret).is_empty()
    });
    let metrics = daemon.metrics_text();
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    check_nothing_lost_and_judged_right(
        &metrics,
        &alerts,
        &stderr,
        [&busy_secret, &spawn_secret, &unique, &busy_dir.join("f0")],
    );
}

/// `paths`: the busy action's secret, the spawn's secret, the input only a
/// complete sandbox walk declares, a declared file of the busy action.
fn check_nothing_lost_and_judged_right(
    metrics: &str,
    alerts: &[serde_json::Value],
    stderr: &str,
    [busy_secret, spawn_secret, unique, busy_declared]: [&Path; 4],
) {
    assert_eq!(
        metric(metrics, "build_monitor_events_lost_total", &[]),
        0.0,
        "events were lost: {stderr}"
    );
    let file_events = metric(metrics, "build_monitor_events_total", &[("kind", "file")]);
    assert!(
        file_events >= BUSY_OPENS as f64,
        "only {file_events} file events"
    );
    assert_eq!(file_alerts(alerts, busy_secret).len(), 1, "{alerts:#?}");
    let spawn_hits = file_alerts(alerts, spawn_secret);
    assert_eq!(spawn_hits.len(), 1, "{alerts:#?}");
    assert!(
        spawn_hits[0]["action"]["id"]
            .as_str()
            .unwrap()
            .starts_with("process-wrapper-"),
        "{}",
        spawn_hits[0]
    );
    // Declared only through a link the walk of 100,001 entries had to find.
    assert!(
        file_alerts(alerts, unique).is_empty(),
        "sandbox read incomplete: {alerts:#?}"
    );
    assert!(file_alerts(alerts, busy_declared).is_empty(), "{alerts:#?}");
}
