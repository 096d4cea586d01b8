//! Failed probes below an action's own sandbox, and failed reads below a
//! directory `files.allow` lets every action read, are counted in the
//! kernel instead of reported (`monitor-ebpf/src/sandbox.rs`,
//! `allowed.rs`), exactly, and only those: every other failed open is
//! still reported and judged. Real kernel programs, a launcher script and
//! a fake Bazel sandbox, as root.
use std::{
    fs,
    io::Write as _,
    path::Path,
    process::{Child, Command, Stdio},
};

use monitor_integration_tests::*;

const FOLDED: &str = "build_monitor_probes_folded_total";
const SANDBOXES: &str = "build_monitor_kernel_sandboxes";

/// Starts `argv` through the `process-wrapper` launcher in `cgroup`, with
/// `cwd` and a piped stdin (the script waits for a line on it).
fn launch(cgroup: &Path, cwd: &Path, launcher: &Path, argv: &[&str]) -> Child {
    in_cgroup(
        Command::new(launcher)
            .current_dir(cwd)
            .args(["--timeout=0", "--"])
            .args(argv),
        cgroup,
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Lets the action go once the kernel counts its sandbox's probes, and
/// waits for it to succeed.
fn go_when_registered(daemon: &Daemon, mut child: Child) {
    daemon.wait_for_metric(SANDBOXES, &[], 1.0);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// 500 header-style probes in the sandbox are counted once each in the
/// kernel (and in `events_total`), raise nothing, and reach no ring; a
/// probe with `..`, an absolute one and one from a directory outside are
/// reported as before (the last one, undeclared, alerts: the positive
/// control). The sandbox is unregistered when its launcher exits.
#[test]
fn probes_below_the_own_sandbox_are_counted_exactly_in_the_kernel() {
    require_root();
    let parent = test_parent("probes");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let sb = fake_sandbox("processwrapper-sandbox", 7);
    let outside = sb.tmp.path().join("workspace/pkg");
    let bin = tempfile::tempdir().unwrap();
    let launcher = process_wrapper(bin.path());
    // `true < name` is one open of the name (dash), failing with ENOENT.
    let script = format!(
        "read go
         i=0
         while [ $i -lt 500 ]; do true < probe_$i 2>/dev/null; i=$((i+1)); done
         true < pkg/../dotdot 2>/dev/null
         true < {root}/absolute_missing 2>/dev/null
         true < pkg/in.txt
         cd {outside} && true < outside_missing 2>/dev/null
         exit 0",
        root = sb.execroot.display(),
        outside = outside.display(),
    );
    let child = launch(
        &job.path,
        &sb.execroot,
        &launcher,
        &["/bin/sh", "-c", &script],
    );
    go_when_registered(&daemon, child);
    daemon.wait_for_file_alert(&outside.join("outside_missing"));
    let metrics = daemon.wait_for_metrics("500 probes folded, the sandbox unregistered", |m| {
        m.sum(FOLDED, &[]) >= 500.0 && m.sum(SANDBOXES, &[]) == 0.0
    });
    assert_eq!(metrics.sum(FOLDED, &[]), 500.0, "each probe counted once");
    let file_events = metrics.sum("build_monitor_events_total", &[("kind", "file")]);
    assert!(
        file_events >= 500.0 + 4.0,
        "the folded probes are file events: {file_events}"
    );
    let (_, alerts, stderr) = daemon.stop();
    assert_eq!(
        file_alerts(&alerts, &outside.join("outside_missing")).len(),
        1,
        "{alerts:#?}\n{stderr}"
    );
    for quiet in [
        "probe_0",
        "probe_499",
        "dotdot",
        "absolute_missing",
        "pkg/in.txt",
    ] {
        assert!(
            file_alerts(&alerts, &sb.execroot.join(quiet)).is_empty(),
            "{quiet} alerted: {alerts:#?}"
        );
    }
}

/// Hostile routes: the directory a name is looked up from decides, not the
/// process's cwd nor a name inside the sandbox. A probe relative to a
/// dirfd outside (cwd inside), and one from a cwd reached through a
/// symlink planted in the sandbox, are reported and alert; a probe
/// relative to the sandbox from the same process is counted (the control
/// that the action's sandbox is registered).
#[test]
fn a_probe_looked_up_outside_the_sandbox_is_reported_whatever_the_cwd() {
    require_root();
    let parent = test_parent("probes-out");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let sb = fake_sandbox("processwrapper-sandbox", 8);
    let outside = sb.tmp.path().join("workspace/pkg");
    let bin = tempfile::tempdir().unwrap();
    let launcher = process_wrapper(bin.path());
    let script = "import os, sys
sys.stdin.readline()
outside = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
for name, base in (('in_sandbox', None), ('by_dirfd', outside)):
    try:
        os.open(name, os.O_RDONLY, dir_fd=base)
    except FileNotFoundError:
        pass
os.symlink(sys.argv[1], 'escape')
os.chdir('escape')
try:
    open('through_link')
except FileNotFoundError:
    pass
";
    let child = launch(
        &job.path,
        &sb.execroot,
        &launcher,
        &[
            "/usr/bin/python3",
            "-c",
            script,
            &outside.display().to_string(),
        ],
    );
    go_when_registered(&daemon, child);
    for name in ["by_dirfd", "through_link"] {
        daemon.wait_for_file_alert(&outside.join(name));
    }
    let metrics = daemon.wait_for_metric(FOLDED, &[], 1.0);
    let (_, alerts, _) = daemon.stop();
    assert!(
        file_alerts(&alerts, &sb.execroot.join("in_sandbox")).is_empty(),
        "{alerts:#?}"
    );
    assert!(metrics.sum(FOLDED, &[]) >= 1.0);
}

/// Bazel 7+ cgroup mode: the spawn scope (`sandbox_<id>.scope`) is the
/// action, keyed by its cgroup in the kernel as in the registry; its probes
/// are counted once its sandbox is read, until the scope is removed.
#[test]
fn a_bazel7_spawn_scopes_probes_are_counted_until_the_scope_goes() {
    require_root();
    let parent = test_parent("probes-scope");
    let daemon = Daemon::start(&parent.path, "");
    let slice = parent.child("blaze_4343_spawns.slice");
    let scope = slice.child("sandbox_11.scope");
    let sb = fake_sandbox("linux-sandbox", 11);
    let script = "read go
        i=0
        while [ $i -lt 300 ]; do true < probe_$i 2>/dev/null; i=$((i+1)); done
        cat pkg/in.txt > /dev/null";
    let child = in_cgroup(
        Command::new("/bin/sh")
            .current_dir(&sb.execroot)
            .args(["-c", script]),
        &scope.path,
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    go_when_registered(&daemon, child);
    let metrics = daemon.wait_for_metric(FOLDED, &[], 300.0);
    assert_eq!(metrics.sum(FOLDED, &[]), 300.0, "each probe counted once");
    drop(scope);
    daemon.wait_for_metrics("the scope's sandbox unregistered", |m| {
        m.sum(SANDBOXES, &[]) == 0.0
    });
    let (_, alerts, stderr) = daemon.stop();
    assert!(alerts.is_empty(), "{alerts:#?}\n{stderr}");
}

/// No registration outlives its action: a launcher that exits at once,
/// while its large sandbox (40,000 links) is still being read, leaves
/// nothing registered once that read is done (its held event, an
/// undeclared read, alerts only then), and neither does one that ran to
/// its end (the positive control that registrations happen at all).
#[test]
fn no_sandbox_stays_registered_after_its_action() {
    require_root();
    let parent = test_parent("probes-gone");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let bin = tempfile::tempdir().unwrap();
    let launcher = process_wrapper(bin.path());
    let sb = fake_sandbox("processwrapper-sandbox", 13);
    let child = launch(
        &job.path,
        &sb.execroot,
        &launcher,
        &["/bin/sh", "-c", "read go"],
    );
    go_when_registered(&daemon, child);
    let quick = fake_sandbox("processwrapper-sandbox", 12);
    for i in 0..40_000 {
        std::os::unix::fs::symlink(&quick.source, quick.execroot.join(format!("pkg/l{i}")))
            .unwrap();
    }
    run_ok_in(
        &job.path,
        Command::new(&launcher)
            .current_dir(&quick.execroot)
            .args(["--timeout=0", "--", "/bin/cat"])
            .arg(&quick.undeclared)
            .stdout(Stdio::null()),
    );
    daemon.wait_for_file_alert(&quick.undeclared);
    daemon.wait_for_metrics("no sandbox registered once both actions ended", |m| {
        m.sum(SANDBOXES, &[]) == 0.0
    });
    daemon.stop();
}

/// A compile's system-header probes: failed reads of names below a
/// `files.allow` directory (`/usr/**` by default) are counted in the
/// kernel, exactly (400), with no sandbox registered. Hostile routes stay
/// reported and judged: a `..` climbing out (alerts), a failed write
/// below the directory (alerts as a write), and names the kernel does not
/// take as normal (`//`, `.`, a hidden name: reported, judged allowed, so
/// the count stays 400). Positive control: a probe elsewhere alerts.
#[test]
fn failed_reads_below_an_allowed_directory_are_counted_in_the_kernel() {
    require_root();
    let parent = test_parent("probes-allowed");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let outside = tempfile::tempdir().unwrap();
    // dash opens `< name` read-only and `> name` with O_CREAT|O_TRUNC; it
    // probes nothing at start (no failed open of its own).
    let script = format!(
        "i=0
         while [ $i -lt 400 ]; do true < /usr/include/monitor-probe-$i.h; i=$((i+1)); done
         true < /usr/../monitor-probe-dotdot
         true < /usr//include/monitor-probe-double.h
         true < /usr/./include/monitor-probe-dot.h
         true < /usr/include/.monitor-probe-hidden.h
         true > /usr/monitor-probe-missing-dir/out
         true < {outside}/monitor-probe-outside
         exit 0",
        outside = outside.path().display(),
    );
    let out = in_cgroup(Command::new("/bin/sh").args(["-c", &script]), &job.path)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let outside_probe = outside.path().join("monitor-probe-outside");
    daemon.wait_for_file_alert(&outside_probe);
    let metrics = daemon.wait_for_metric(FOLDED, &[], 400.0);
    assert_eq!(metrics.sum(FOLDED, &[]), 400.0, "each probe counted once");
    assert_eq!(
        metrics.sum(SANDBOXES, &[]),
        0.0,
        "no sandbox: only allow-list folds"
    );
    let file_events = metrics.sum("build_monitor_events_total", &[("kind", "file")]);
    assert!(
        file_events >= 400.0 + 6.0,
        "the folded probes are file events: {file_events}"
    );
    let (_, alerts, stderr) = daemon.stop();
    for alerted in [Path::new("/monitor-probe-dotdot"), &outside_probe] {
        assert_eq!(
            file_alerts(&alerts, alerted).len(),
            1,
            "{alerts:#?}\n{stderr}"
        );
    }
    let writes: Vec<_> = alerts
        .iter()
        .filter(|a| {
            a["kind"] == "undeclared_write"
                && a["file"]["path"] == "/usr/monitor-probe-missing-dir/out"
        })
        .collect();
    assert_eq!(writes.len(), 1, "{alerts:#?}");
    let under_usr = alerts
        .iter()
        .filter(|a| a["kind"] == "undeclared_file")
        .filter(|a| {
            a["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/usr/"))
        })
        .count();
    assert_eq!(under_usr, 0, "{alerts:#?}");
}

/// A reload that drops a directory from `files.allow` takes it out of the
/// kernel too: a probe below it is reported and alerts afterwards, while
/// one below a directory still listed stays counted (the control that the
/// fold still works).
#[test]
fn a_directory_reloaded_out_of_the_allow_list_is_no_longer_counted() {
    require_root();
    let parent = test_parent("probes-reload");
    let mut daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let probe = |names: &[&str]| {
        let mut script: String = names.iter().map(|n| format!("true < {n}\n")).collect();
        script.push_str("exit 0\n");
        let out = in_cgroup(Command::new("/bin/sh").args(["-c", &script]), &job.path)
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success());
    };
    probe(&[
        "/usr/include/monitor-reload-0.h",
        "/usr/include/monitor-reload-1.h",
    ]);
    daemon.wait_for_metric(FOLDED, &[], 2.0);

    let config = daemon.config_path();
    let text = fs::read_to_string(&config).unwrap();
    // What dash itself opens stays allowed; /usr/include is no longer.
    let allow = r#"["/usr/lib/**", "/usr/bin/**", "/lib/**", "/bin/**", "/etc/ld.so.cache"]"#;
    fs::write(&config, format!("{text}[files]\nallow = {allow}\n")).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_metric(
        "build_monitor_config_reloads_total",
        &[("result", "ok")],
        1.0,
    );
    probe(&[
        "/usr/include/monitor-reload-2.h",
        "/usr/lib/monitor-reload-3.h",
    ]);
    let dropped = Path::new("/usr/include/monitor-reload-2.h");
    daemon.wait_for_file_alert(dropped);
    let metrics = daemon.wait_for_metric(FOLDED, &[], 3.0);
    assert_eq!(
        metrics.sum(FOLDED, &[]),
        3.0,
        "only the listed directory's probe"
    );
    let (_, alerts, stderr) = daemon.stop();
    assert_eq!(
        file_alerts(&alerts, dropped).len(),
        1,
        "{alerts:#?}\n{stderr}"
    );
    let before = Path::new("/usr/include/monitor-reload-0.h");
    assert!(file_alerts(&alerts, before).is_empty(), "{alerts:#?}");
}
