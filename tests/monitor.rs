//! The daemon end to end, as root: real kernel programs, real cgroups, real
//! processes. Each test has its own parent cgroup and daemon.
use std::{fs, path::Path, process::Command};

use monitor_integration_tests::*;

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn declared_file_is_quiet_and_undeclared_file_alerts_with_label_comm_and_path() {
    require_root();
    let parent = test_parent("files");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("action-1");
    let tmp = tempfile::tempdir().unwrap();
    let declared = tmp.path().join("src/declared.txt");
    let undeclared = tmp.path().join("secret/credentials");
    write(&declared, "ok");
    write(&undeclared, "secret");
    daemon.declare(&action.path, "//pkg:hello", "Genrule", &[&declared], "");

    let out = run_in(
        &action.path,
        Command::new("/usr/bin/cat").arg(&declared).arg(&undeclared),
    );
    assert!(out.status.success(), "cat failed: {out:?}");
    settle();
    let metrics = daemon.metrics_text();
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "monitor exit {status}: {stderr}");

    assert!(
        file_alerts(&alerts, &declared).is_empty(),
        "declared file alerted: {alerts:#?}"
    );
    let hits = file_alerts(&alerts, &undeclared);
    assert_eq!(
        hits.len(),
        1,
        "expected one alert for the undeclared file: {alerts:#?}"
    );
    let a = hits[0];
    assert_eq!(a["schema"], "monitor.alert/v1");
    assert_eq!(a["action"]["label"], "//pkg:hello");
    assert_eq!(a["action"]["mnemonic"], "Genrule");
    assert_eq!(a["action"]["id"], "action-1");
    assert_eq!(a["action"]["cgroup"], action.path.display().to_string());
    assert_eq!(a["process"]["comm"], "cat");
    assert_eq!(a["process"]["exe"], "/usr/bin/cat");
    assert_eq!(a["file"]["flags"], "O_RDONLY");
    assert!(a["file"]["result"].as_i64().unwrap() >= 0);
    assert_eq!(a["verdict"], "observed");
    // cat's other opens (loader, libc, locale) are all under files.allow.
    assert_eq!(alerts.len(), 1, "unexpected extra alerts: {alerts:#?}");

    assert!(metric(&metrics, "build_monitor_events_total", &[("kind", "file")]) >= 2.0);
    assert!(metric(&metrics, "build_monitor_events_total", &[("kind", "exec")]) >= 1.0);
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_violations_total",
            &[("kind", "undeclared_file"), ("mnemonic", "Genrule")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_actions_total",
            &[("mnemonic", "Genrule")]
        ),
        1.0
    );
    assert_eq!(metric(&metrics, "build_monitor_actions_active", &[]), 1.0);
    assert_eq!(
        metric(&metrics, "build_monitor_events_lost_total", &[]),
        0.0
    );
    assert_eq!(
        metric(&metrics, "build_monitor_alerts_total", &[("sink", "file")]),
        1.0
    );
}

#[test]
fn relative_opens_after_chdir_and_dirfd_opens_get_absolute_paths() {
    require_root();
    let parent = test_parent("relative");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("rel");
    daemon.declare(&action.path, "//pkg:rel", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work/sub");
    write(&work.join("a.txt"), "a");
    write(&tmp.path().join("work/b.txt"), "b");
    write(&tmp.path().join("other/c.txt"), "c");
    let script = "import os, sys\n\
        os.chdir(sys.argv[1])\n\
        os.close(os.open('a.txt', os.O_RDONLY))\n\
        os.close(os.open('./../b.txt', os.O_RDONLY))\n\
        d = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY)\n\
        os.close(os.open('c.txt', os.O_RDONLY, dir_fd=d))\n\
        try: os.open('missing.txt', os.O_RDONLY, dir_fd=d)\n\
        except FileNotFoundError: pass\n";
    let other = tmp.path().join("other");
    let out = run_in(
        &action.path,
        &mut python(script, &[work.to_str().unwrap(), other.to_str().unwrap()]),
    );
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let (_, alerts, _) = daemon.stop();
    for path in [
        work.join("a.txt"),
        tmp.path().join("work/b.txt"),
        other.join("c.txt"),
        other.join("missing.txt"),
    ] {
        let hits = file_alerts(&alerts, &path);
        assert_eq!(
            hits.len(),
            1,
            "no alert with absolute path {}: {alerts:#?}",
            path.display()
        );
        assert_eq!(hits[0]["action"]["label"], "//pkg:rel");
    }
    let missing = file_alerts(&alerts, &other.join("missing.txt"))[0];
    assert_eq!(
        missing["file"]["result"], -2,
        "ENOENT must be reported as the result"
    );
}

#[test]
fn connects_are_judged_against_the_network_policy() {
    require_root();
    let parent = test_parent("net");
    let allowed = listener();
    let denied = listener();
    let declared_port = listener();
    let daemon = Daemon::start(
        &parent.path,
        &format!("[network]\nallow = [{{ cidr = \"127.0.0.1/32\", port = {allowed} }}]\n"),
    );
    let action = parent.child("net-1");
    daemon.declare(
        &action.path,
        "//pkg:net",
        "Genrule",
        &[],
        &format!("{{\"cidr\": \"127.0.0.0/8\", \"port\": {declared_port}}}"),
    );
    let script = "import socket, sys\n\
        for p in sys.argv[1:]:\n    socket.create_connection(('127.0.0.1', int(p))).close()\n";
    let out = run_in(
        &action.path,
        &mut python(
            script,
            &[
                &allowed.to_string(),
                &denied.to_string(),
                &declared_port.to_string(),
            ],
        ),
    );
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let metrics = daemon.metrics_text();
    let (_, alerts, _) = daemon.stop();
    let net: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress")
        .collect();
    assert_eq!(
        net.len(),
        1,
        "expected exactly the denied port: {alerts:#?}"
    );
    let a = net[0];
    assert_eq!(a["net"]["port"], denied);
    assert_eq!(a["net"]["addr"], "127.0.0.1");
    assert_eq!(a["net"]["family"], "inet");
    assert_eq!(a["net"]["proto"], "tcp");
    assert_eq!(a["net"]["result"], 0);
    assert_eq!(a["action"]["label"], "//pkg:net");
    assert!(a.get("file").is_none());
    assert_eq!(
        metric(&metrics, "build_monitor_events_total", &[("kind", "net")]),
        3.0
    );
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_violations_total",
            &[("kind", "network_egress"), ("mnemonic", "Genrule")]
        ),
        1.0
    );
}

#[test]
fn ipv6_connects_are_reported() {
    require_root();
    let parent = test_parent("net6");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("v6");
    daemon.declare(&action.path, "//pkg:v6", "Genrule", &[], "");
    let port = free_port();
    // Nothing listens: the attempt itself is what counts.
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)\n\
        try: s.connect(('::1', int(sys.argv[1])))\n\
        except OSError: pass\n";
    run_in(&action.path, &mut python(script, &[&port.to_string()]));
    settle();
    let (_, alerts, _) = daemon.stop();
    let net: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress")
        .collect();
    assert_eq!(net.len(), 1, "{alerts:#?}");
    assert_eq!(net[0]["net"]["family"], "inet6");
    assert_eq!(net[0]["net"]["addr"], "::1");
    assert_eq!(net[0]["net"]["port"], port);
    assert_eq!(net[0]["net"]["result"], -111, "ECONNREFUSED");
}

#[test]
fn processes_outside_every_action_produce_no_event() {
    require_root();
    let parent = test_parent("outside");
    let daemon = Daemon::start(&parent.path, "");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    write(&secret, "x");
    // Outside every monitored cgroup, and in the parent itself (a parent is
    // not an action).
    let out = Command::new("/usr/bin/cat").arg(&secret).output().unwrap();
    assert!(out.status.success());
    let out = run_in(&parent.path, Command::new("/usr/bin/cat").arg(&secret));
    assert!(out.status.success());
    let port = listener();
    run_in(
        &parent.path,
        &mut python(
            "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])))",
            &[&port.to_string()],
        ),
    );
    settle();
    let metrics = daemon.metrics_text();
    let (_, alerts, _) = daemon.stop();
    assert!(alerts.is_empty(), "{alerts:#?}");
    for kind in ["file", "net", "exec", "exit"] {
        assert_eq!(
            metric(&metrics, "build_monitor_events_total", &[("kind", kind)]),
            0.0,
            "{kind} events seen"
        );
    }
}

#[test]
fn nested_cgroups_stay_attributed_to_their_action() {
    require_root();
    let parent = test_parent("nested");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("outer");
    let inner = action.child("inner/deeper");
    daemon.declare(&action.path, "//pkg:outer", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    write(&secret, "x");
    let out = run_in(&inner.path, Command::new("/usr/bin/cat").arg(&secret));
    assert!(out.status.success());
    settle();
    let (_, alerts, _) = daemon.stop();
    let hits = file_alerts(&alerts, &secret);
    assert_eq!(hits.len(), 1, "{alerts:#?}");
    assert_eq!(hits[0]["action"]["label"], "//pkg:outer");
    assert_eq!(
        hits[0]["action"]["cgroup"],
        action.path.display().to_string()
    );
    drop(inner);
}

#[test]
fn events_wait_for_a_declaration_that_arrives_late() {
    require_root();
    let parent = test_parent("late");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("late-1");
    let tmp = tempfile::tempdir().unwrap();
    let declared = tmp.path().join("in.txt");
    let undeclared = tmp.path().join("out.txt");
    write(&declared, "a");
    write(&undeclared, "b");
    run_in(
        &action.path,
        Command::new("/usr/bin/cat").arg(&declared).arg(&undeclared),
    );
    std::thread::sleep(std::time::Duration::from_millis(400));
    daemon.declare(&action.path, "//pkg:late", "Genrule", &[&declared], "");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (_, alerts, _) = daemon.stop();
    assert!(
        file_alerts(&alerts, &declared).is_empty(),
        "judged before the declaration came: {alerts:#?}"
    );
    let hits = file_alerts(&alerts, &undeclared);
    assert_eq!(hits.len(), 1, "{alerts:#?}");
    assert_eq!(hits[0]["action"]["label"], "//pkg:late");
}

#[test]
fn repeats_fold_into_one_alert_with_a_count() {
    require_root();
    let parent = test_parent("fold");
    let daemon = Daemon::start_with(&parent.path, "", 2000);
    let action = parent.child("fold-1");
    daemon.declare(&action.path, "//pkg:fold", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    write(&secret, "x");
    run_in(
        &action.path,
        Command::new("/usr/bin/cat")
            .arg(&secret)
            .arg(&secret)
            .arg(&secret),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    // SIGTERM before the fold window ends: pending alerts must be flushed.
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let hits = file_alerts(&alerts, &secret);
    assert_eq!(hits.len(), 1, "{alerts:#?}");
    assert_eq!(hits[0]["count"], 3);
}

#[test]
fn odd_paths_are_escaped_or_marked_never_dropped() {
    require_root();
    let parent = test_parent("odd");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("odd-1");
    daemon.declare(&action.path, "//pkg:odd", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    // A non-UTF-8 name, a path long enough to need many directory levels
    // (opened relative to a deep cwd), and one over PATH_MAX.
    let script = "import os, sys\n\
        base = sys.argv[1].encode()\n\
        p = base + b'/caf\\xe9\\xff'\n\
        open(p, 'wb').close()\n\
        deep = base\n\
        for i in range(40): deep += b'/' + b'd' * 60\n\
        os.makedirs(deep)\n\
        os.chdir(deep)\n\
        open(b'leaf.txt', 'wb').close()\n\
        try: os.open(b'/' + b'x' * 5000, os.O_RDONLY)\n\
        except OSError: pass\n";
    let out = run_in(
        &action.path,
        &mut python(script, &[tmp.path().to_str().unwrap()]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let (_, alerts, _) = daemon.stop();
    let base = tmp.path().display().to_string();
    let paths: Vec<&str> = alerts
        .iter()
        .filter_map(|a| a["file"]["path"].as_str())
        .collect();
    assert!(
        paths.contains(&format!("{base}/caf\\xe9\\xff").as_str()),
        "non-UTF-8 name not escaped: {paths:#?}"
    );
    let mut deep = base.clone();
    for _ in 0..40 {
        deep.push('/');
        deep.push_str(&"d".repeat(60));
    }
    deep.push_str("/leaf.txt");
    assert!(deep.len() > 2400);
    assert!(
        paths.contains(&deep.as_str()),
        "deep relative path not resolved whole: {paths:#?}"
    );
    let long: Vec<_> = alerts
        .iter()
        .filter(|a| {
            a["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/xxxx"))
        })
        .collect();
    assert_eq!(long.len(), 1, "over-long path not reported");
    assert_eq!(long[0]["file"]["result"], -36, "ENAMETOOLONG");
    assert!(
        long[0]["message"].as_str().unwrap().contains("truncated"),
        "{}",
        long[0]["message"]
    );
}

#[test]
fn monitor_exec_reports_egress_of_the_whole_command_and_exits_1() {
    require_root();
    let denied = listener();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let script =
        format!("import socket; socket.create_connection(('127.0.0.1', {denied})).close()");
    let out = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", &script])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{denied}")),
        "summary lacks the destination: {stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["violations"], 1);
    let alerts = report["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{report:#}");
    assert_eq!(alerts[0]["kind"], "network_egress");
    assert_eq!(alerts[0]["net"]["port"], denied);
    assert_eq!(alerts[0]["action"]["mnemonic"], "Command");

    // File opens of the command tree are not judged, and a clean command
    // passes its own exit status through.
    let out = Command::new(monitor_bin())
        .args(["exec", "--", "/usr/bin/cat", "/etc/shadow"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(monitor_bin())
        .args(["exec", "--", "/bin/sh", "-c", "exit 7"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
}

/// The raw-tracepoint fallback (for kernels that refuse BTF tracepoints)
/// reports the same events.
#[test]
fn raw_tracepoint_fallback_reports_files_and_connects() {
    require_root();
    let parent = test_parent("rawtp");
    let denied = listener();
    let daemon = Daemon::start_env(&parent.path, "", 300, &[("MONITOR_SYSCALL_HOOK", "raw")]);
    let action = parent.child("raw-1");
    daemon.declare(&action.path, "//pkg:raw", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    write(&secret, "x");
    let script = "import os, socket, sys\n\
        os.chdir(os.path.dirname(sys.argv[1]))\n\
        open(os.path.basename(sys.argv[1])).read()\n\
        socket.create_connection(('127.0.0.1', int(sys.argv[2]))).close()\n";
    let out = run_in(
        &action.path,
        &mut python(script, &[secret.to_str().unwrap(), &denied.to_string()]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let (_, alerts, stderr) = daemon.stop();
    assert!(
        stderr.contains("via Raw syscall hook"),
        "fallback not used: {stderr}"
    );
    assert_eq!(file_alerts(&alerts, &secret).len(), 1, "{alerts:#?}");
    let net: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress")
        .collect();
    assert_eq!(net.len(), 1, "{alerts:#?}");
    assert_eq!(net[0]["net"]["port"], denied);
}

/// A fake Bazel sandbox: `<tmp>/ob/sandbox/<strategy>/<id>/execroot/ws` with
/// `pkg/in.txt` a symlink to a real source file, as Bazel materialises it.
struct FakeSandbox {
    _tmp: tempfile::TempDir,
    execroot: std::path::PathBuf,
    source: std::path::PathBuf,
    undeclared: std::path::PathBuf,
}

fn fake_sandbox(strategy: &str, id: u32) -> FakeSandbox {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("workspace/pkg/in.txt");
    let undeclared = tmp.path().join("workspace/pkg/secret.txt");
    write(&source, "in");
    write(&undeclared, "secret");
    let execroot = tmp
        .path()
        .join(format!("ob/sandbox/{strategy}/{id}/execroot/ws"));
    fs::create_dir_all(execroot.join("pkg")).unwrap();
    std::os::unix::fs::symlink(&source, execroot.join("pkg/in.txt")).unwrap();
    FakeSandbox {
        _tmp: tmp,
        execroot,
        source,
        undeclared,
    }
}

/// Lineage mode: a process that execs a sandbox launcher (here a script named
/// `process-wrapper`) starts an action; its children, however short-lived,
/// belong to it and are judged against the sandbox it works in.
#[test]
fn lineage_actions_are_judged_against_their_sandbox() {
    require_root();
    let parent = test_parent("lineage");
    let daemon = Daemon::start(&parent.path, "");
    let job = parent.child("job");
    // The job's own declaration allows nothing: only the spawn's sandbox
    // makes `pkg/in.txt` legitimate.
    daemon.declare(&job.path, "//ci:job", "Job", &[], "");
    let sb = fake_sandbox("processwrapper-sandbox", 5);
    let bin = tempfile::tempdir().unwrap();
    let launcher = bin.path().join("process-wrapper");
    fs::write(
        &launcher,
        "#!/bin/sh\nwhile [ \"$1\" != \"--\" ]; do shift; done\nshift\nexec \"$@\"\n",
    )
    .unwrap();
    fs::set_permissions(
        &launcher,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let undeclared = sb.undeclared.display().to_string();
    let out = run_in(
        &job.path,
        Command::new(&launcher)
            .current_dir(&sb.execroot)
            .args(["--timeout=0", "--kill_delay=15", "--", "/bin/sh", "-c"])
            .arg(format!(
                "cat pkg/in.txt > /dev/null; (cat {undeclared}) > /dev/null; cat {} > /dev/null",
                sb.source.display()
            )),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let metrics = daemon.metrics_text();
    let (_, alerts, stderr) = daemon.stop();
    assert!(
        file_alerts(&alerts, &sb.execroot.join("pkg/in.txt")).is_empty(),
        "declared input alerted: {alerts:#?}"
    );
    assert!(
        file_alerts(&alerts, &sb.source).is_empty(),
        "symlink target alerted: {alerts:#?}"
    );
    let hits = file_alerts(&alerts, &sb.undeclared);
    assert_eq!(hits.len(), 1, "{alerts:#?}\n{stderr}");
    let a = hits[0];
    assert!(
        a["action"]["id"]
            .as_str()
            .unwrap()
            .starts_with("process-wrapper-"),
        "{a}"
    );
    assert_eq!(a["process"]["comm"], "cat");
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_events_total",
            &[("kind", "launch")]
        ),
        1.0
    );
}

/// Bazel 7+ cgroup mode: `blaze_<pid>_spawns.slice/sandbox_<id>.scope` below
/// a monitored parent. The spawn scope (not the slice) is the action, tied to
/// the sandbox with the same id that its processes work in.
#[test]
fn bazel7_spawn_cgroups_are_actions_tied_to_their_sandbox() {
    require_root();
    let parent = test_parent("spawncg");
    let daemon = Daemon::start(&parent.path, "");
    let slice = parent.child("blaze_4242_spawns.slice");
    let scope = slice.child("sandbox_9.scope");
    let sb = fake_sandbox("linux-sandbox", 9);
    let out = run_in(
        &scope.path,
        Command::new("/bin/sh")
            .current_dir(&sb.execroot)
            .arg("-c")
            .arg(format!(
                "sleep 0.3; cat pkg/in.txt {} > /dev/null",
                sb.undeclared.display()
            )),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let (_, alerts, _) = daemon.stop();
    assert!(
        file_alerts(&alerts, &sb.execroot.join("pkg/in.txt")).is_empty(),
        "declared input alerted: {alerts:#?}"
    );
    let hits = file_alerts(&alerts, &sb.undeclared);
    assert_eq!(hits.len(), 1, "{alerts:#?}");
    assert_eq!(hits[0]["action"]["id"], "sandbox_9.scope");
    assert_eq!(
        hits[0]["action"]["cgroup"],
        scope.path.display().to_string()
    );
    drop(scope);
}

/// Opens submitted through io_uring bypass the syscall hook; setting one up
/// is reported (log and metric) so the gap is never silent.
#[test]
fn io_uring_use_is_reported() {
    require_root();
    let parent = test_parent("uring");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("uring-1");
    daemon.declare(&action.path, "//pkg:uring", "Genrule", &[], "");
    // io_uring_setup(4, &params) through libc's syscall(); params is 120 bytes.
    let script = "import ctypes, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        params = ctypes.create_string_buffer(120)\n\
        fd = libc.syscall(425, 4, params)\n\
        assert fd >= 0, os.strerror(ctypes.get_errno())\n\
        os.close(fd)\n";
    let out = run_in(&action.path, &mut python(script, &[]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    settle();
    let metrics = daemon.metrics_text();
    let (_, _, stderr) = daemon.stop();
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_events_total",
            &[("kind", "io_uring")]
        ),
        1.0
    );
    assert!(stderr.contains("set up an io_uring"), "{stderr}");
}
