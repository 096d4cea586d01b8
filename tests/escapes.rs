//! An action that leaves its cgroup stays that action: a process that
//! writes itself into another cgroup's `cgroup.procs` (outside every scope,
//! or into another action whose declaration allows what it then reads), and
//! a child created straight into another cgroup (`clone3` with
//! `CLONE_INTO_CGROUP`), are judged as the action they left, their children
//! too. Before, each was invisible from its move on.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use monitor_integration_tests::*;
use serde_json::Value;

/// The undeclared-file alerts for `path`, with the action they name.
fn alerts_on<'a>(alerts: &'a [Value], path: &Path) -> Vec<(&'a Value, &'a Value)> {
    file_alerts(alerts, path)
        .into_iter()
        .map(|a| (a, &a["action"]["cgroup"]))
        .collect()
}

fn count_sum(alerts: &[(&Value, &Value)]) -> u64 {
    alerts
        .iter()
        .map(|(a, _)| a["count"].as_u64().unwrap())
        .sum()
}

struct Scene {
    _dir: tempfile::TempDir,
    program: PathBuf,
    secrets: PathBuf,
}

fn scene() -> Scene {
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("bin/escape");
    // Static: no loader opens to declare.
    compile_c("fixtures/escape.c", &program, &["-static"]);
    let secrets = dir.path().join("secrets");
    fs::create_dir_all(&secrets).unwrap();
    for name in ["moved", "allowed-elsewhere", "cloned", "stayed"] {
        write(&secrets.join(name), "s");
    }
    Scene {
        _dir: dir,
        program,
        secrets,
    }
}

#[test]
fn processes_that_leave_their_actions_cgroup_are_still_judged_as_the_action() {
    require_root();
    let parent = test_parent("escapes");
    // A cgroup outside every scope the daemon watches.
    let outside = test_parent("escapes-out");
    let daemon = Daemon::start(&parent.path, "");
    let (mover, cloner, other) = (
        parent.child("mover"),
        parent.child("cloner"),
        parent.child("other"),
    );
    let sc = scene();
    let secret = |name: &str| sc.secrets.join(name);
    daemon.declare_read(&mover.path, &[&sc.program]);
    daemon.declare_read(&cloner.path, &[&sc.program]);
    // The other action may read what the mover then reads in its cgroup.
    let elsewhere = secret("allowed-elsewhere");
    daemon.declare_read(&other.path, &[&sc.program, &elsewhere]);

    let escape = |action: &Path, args: &[&Path]| {
        run_ok_in(action, Command::new(&sc.program).args(args));
    };
    escape(
        &mover.path,
        &[Path::new("move"), &outside.path, &secret("moved")],
    );
    escape(&mover.path, &[Path::new("move"), &other.path, &elsewhere]);
    escape(
        &cloner.path,
        &[Path::new("clone"), &outside.path, &secret("cloned")],
    );
    // Control: the same program staying in its action (alerts as before),
    // and the other action reading what it declares (no alert).
    run_ok_in(&cloner.path, Command::new("cat").arg(secret("stayed")));
    run_ok_in(
        &other.path,
        Command::new(&sc.program).args([Path::new("clone"), &other.path, &elsewhere]),
    );

    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let name = |c: &TestCgroup| Value::from(c.path.display().to_string());
    let stayed = alerts_on(&alerts, &secret("stayed"));
    assert_eq!(count_sum(&stayed), 1, "control: {alerts:#?}");
    // Moved out of every scope: the process and its child after the move.
    let moved = alerts_on(&alerts, &secret("moved"));
    assert_eq!(count_sum(&moved), 2, "{alerts:#?}");
    assert!(moved.iter().all(|(_, c)| **c == name(&mover)), "{moved:#?}");
    // Moved into an action that declares the file: judged as the mover.
    let into_other = alerts_on(&alerts, &elsewhere);
    assert_eq!(count_sum(&into_other), 2, "{alerts:#?}");
    assert!(
        into_other.iter().all(|(_, c)| **c == name(&mover)),
        "{into_other:#?}"
    );
    // Created outside the action: judged as the action of its parent.
    let cloned = alerts_on(&alerts, &secret("cloned"));
    assert_eq!(count_sum(&cloned), 1, "{alerts:#?}");
    assert!(
        cloned.iter().all(|(_, c)| **c == name(&cloner)),
        "{cloned:#?}"
    );
}

/// The syscall hook keeps a task's last verdict (`monitor-ebpf/src/
/// verdicts.rs`). A process outside every action, pinned to one CPU, opens
/// its destination's `cgroup.procs` (a watched open: "no action" is kept
/// for it there), writes itself into an action's cgroup and reads a file
/// the action does not declare at once, then again in a child: both reads
/// are the action's. A verdict kept across the move would hide the first.
#[test]
fn a_process_moved_into_an_action_is_judged_from_its_next_syscall() {
    require_root();
    let parent = test_parent("moved-in");
    let outside = test_parent("moved-in-out");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("action");
    let sc = scene();
    let secret = sc.secrets.join("moved");
    daemon.declare_read(&action.path, &[&sc.program]);
    let mut pinned = Command::new("taskset");
    pinned.args(["-c", "0"]).arg(&sc.program);
    pinned.args([Path::new("move"), &action.path, &secret]);
    run_ok_in(&outside.path, &mut pinned);
    // Control: the same read made inside the action from the start.
    run_ok_in(
        &action.path,
        Command::new("cat").arg(sc.secrets.join("stayed")),
    );

    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let name = Value::from(action.path.display().to_string());
    let stayed = alerts_on(&alerts, &sc.secrets.join("stayed"));
    assert_eq!(count_sum(&stayed), 1, "control: {alerts:#?}");
    let moved = alerts_on(&alerts, &secret);
    assert_eq!(count_sum(&moved), 2, "the mover and its child: {alerts:#?}");
    assert!(moved.iter().all(|(_, c)| **c == name), "{moved:#?}");
}
