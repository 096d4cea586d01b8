//! The daemon end to end, as root: real kernel programs, real cgroups, real
//! processes. Each test has its own parent cgroup and daemon.
use std::{
    fs,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, SystemTime},
};

use monitor_integration_tests::*;

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

    let before = SystemTime::now();
    run_ok_in(
        &action.path,
        Command::new("/usr/bin/cat").arg(&declared).arg(&undeclared),
    );
    let after = SystemTime::now();
    daemon.wait_for_file_alert(&undeclared);
    daemon.wait_for_metric("build_monitor_alerts_total", &[("sink", "file")], 1.0);
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
    assert_time_within(a, before, after);
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

/// The alert's `time` is when the kernel saw the open: between `before`
/// and `after`, less the one kernel tick a file event's time may be early
/// (`emit::file_time`; 10 ms at `CONFIG_HZ=100`) and the millisecond the
/// format cuts off.
fn assert_time_within(alert: &serde_json::Value, before: SystemTime, after: SystemTime) {
    let text = alert["time"].as_str().expect("alert without a time");
    let time = humantime::parse_rfc3339(text).expect("alert time not RFC 3339");
    let earliest = before - Duration::from_millis(11);
    assert!(
        earliest <= time && time <= after,
        "alert time {text} outside {} .. {}",
        humantime::format_rfc3339_millis(earliest),
        humantime::format_rfc3339_millis(after)
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
    run_ok_in(
        &action.path,
        &mut python(script, &[work.to_str().unwrap(), other.to_str().unwrap()]),
    );
    daemon.wait_for_file_alert(&other.join("missing.txt"));
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
    run_ok_in(
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
    daemon.wait_for_metric("build_monitor_events_total", &[("kind", "net")], 3.0);
    daemon.wait_for_alerts("the denied connect's alert", |a| !net_alerts(a).is_empty());
    let metrics = daemon.metrics_text();
    // Stopping drains and judges everything: the allowed and declared
    // connects (traced, as the count shows) raised nothing.
    let (_, alerts, _) = daemon.stop();
    let net = net_alerts(&alerts);
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
    run_ok_in(&action.path, &mut python(script, &[&port.to_string()]));
    daemon.wait_for_alerts("the IPv6 connect's alert", |a| !net_alerts(a).is_empty());
    let (_, alerts, _) = daemon.stop();
    let net = net_alerts(&alerts);
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
    let inside = tmp.path().join("inside");
    write(&secret, "x");
    write(&inside, "y");
    let port = listener();
    let open_and_connect = "import socket, sys\n\
        open(sys.argv[1]).read()\n\
        socket.create_connection(('127.0.0.1', int(sys.argv[2]))).close()\n";
    // Outside every monitored cgroup, and in the parent itself (a parent is
    // not an action).
    let out = Command::new("/usr/bin/cat").arg(&secret).output().unwrap();
    assert!(out.status.success());
    run_ok_in(&parent.path, Command::new("/usr/bin/cat").arg(&secret));
    let port_arg = port.to_string();
    let secret_arg = secret.to_str().unwrap();
    run_ok_in(
        &parent.path,
        &mut python(open_and_connect, &[secret_arg, &port_arg]),
    );
    // Positive control, after them in the same run: the same work inside an
    // action is seen. Events are read in order, so once the control's are
    // judged, the outside ones would have been counted.
    let action = parent.child("inside-1");
    daemon.declare(&action.path, "//pkg:inside", "Genrule", &[], "");
    let inside_arg = inside.to_str().unwrap();
    run_ok_in(
        &action.path,
        &mut python(open_and_connect, &[inside_arg, &port_arg]),
    );
    daemon.wait_for_alerts("the control's file and connect alerts", |a| {
        !file_alerts(a, &inside).is_empty() && !net_alerts(a).is_empty()
    });
    let metrics = daemon.metrics_text();
    let (_, alerts, _) = daemon.stop();
    assert!(
        alerts.iter().all(|a| a["action"]["id"] == "inside-1"),
        "only the control alerts: {alerts:#?}"
    );
    assert_eq!(net_alerts(&alerts).len(), 1, "{alerts:#?}");
    assert_eq!(file_alerts(&alerts, &inside).len(), 1, "{alerts:#?}");
    assert!(file_alerts(&alerts, &secret).is_empty(), "{alerts:#?}");
    // The control's one process and one connect, nothing from outside.
    for kind in ["exec", "net"] {
        assert_eq!(
            metric(&metrics, "build_monitor_events_total", &[("kind", kind)]),
            1.0,
            "{kind} events other than the control's seen"
        );
    }
    assert!(metric(&metrics, "build_monitor_events_total", &[("kind", "exit")]) <= 1.0);
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
    run_ok_in(&inner.path, Command::new("/usr/bin/cat").arg(&secret));
    daemon.wait_for_file_alert(&secret);
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
    // cat's exit comes after its opens: once it is counted, they are held
    // waiting for the declaration.
    daemon.wait_for_metric("build_monitor_events_total", &[("kind", "exit")], 1.0);
    daemon.declare(&action.path, "//pkg:late", "Genrule", &[&declared], "");
    daemon.wait_for_file_alert(&undeclared);
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
    // All three opens are judged; SIGTERM before the 2 s fold window ends:
    // the pending alert must be flushed.
    daemon.wait_for_metric(
        "build_monitor_violations_total",
        &[("kind", "undeclared_file")],
        3.0,
    );
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
    run_ok_in(
        &action.path,
        &mut python(script, &[tmp.path().to_str().unwrap()]),
    );
    daemon.wait_for_alerts("the over-long path's alert", |a| {
        a.iter().any(|a| a["file"]["result"] == -36)
    });
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

/// A file more directories down than the kernel's walk takes steps
/// (`MAX_DIR_DEPTH`, 48): the walk stops, and the alert says its path is
/// cut short instead of passing a partial path off as whole. A hostile
/// action could nest its way past the walk; it gets a marked alert. The
/// same action's file 40 levels down (under the limit) is the positive
/// control: resolved whole, not marked.
#[test]
fn a_file_deeper_than_the_walk_is_marked_truncated() {
    require_root();
    let parent = test_parent("deep");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("deep-1");
    daemon.declare(&action.path, "//pkg:deep", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let script = "import os, sys\n\
        base = sys.argv[1]\n\
        for levels, leaf in ((40, 'shallow.txt'), (60, 'deep.txt')):\n\
        \x20   d = base + '/' + leaf[:-4] + '/d' * levels\n\
        \x20   os.makedirs(d)\n\
        \x20   os.chdir(d)\n\
        \x20   open(leaf, 'wb').close()\n";
    run_ok_in(
        &action.path,
        &mut python(script, &[tmp.path().to_str().unwrap()]),
    );
    let on_leaf = |alerts: &[serde_json::Value], leaf: &str| -> Vec<serde_json::Value> {
        alerts
            .iter()
            .filter(|a| {
                a["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{leaf}")))
            })
            .cloned()
            .collect()
    };
    daemon.wait_for_alerts("both leaves' alerts", |a| {
        !on_leaf(a, "shallow.txt").is_empty() && !on_leaf(a, "deep.txt").is_empty()
    });
    let (_, alerts, _) = daemon.stop();
    let shallow = format!(
        "{}/shallow{}/shallow.txt",
        tmp.path().display(),
        "/d".repeat(40)
    );
    let shallow_alerts = on_leaf(&alerts, "shallow.txt");
    assert_eq!(shallow_alerts[0]["file"]["path"], shallow.as_str());
    assert!(
        !shallow_alerts[0]["message"]
            .as_str()
            .unwrap()
            .contains("truncated"),
        "{}",
        shallow_alerts[0]["message"]
    );
    let deep_alerts = on_leaf(&alerts, "deep.txt");
    let deep_path = deep_alerts[0]["file"]["path"].as_str().unwrap();
    assert!(
        !deep_path.contains(&tmp.path().display().to_string()),
        "a walk past its steps cannot reach the top: {deep_path}"
    );
    assert!(
        deep_alerts[0]["message"]
            .as_str()
            .unwrap()
            .contains("truncated"),
        "{}",
        deep_alerts[0]["message"]
    );
}

/// The BTF walk copies a name kept inline in its dentry (under 40 bytes)
/// with word loads, a longer one with the helper: names of every length
/// around the words' and the inline buffer's edges, and non-UTF-8 bytes,
/// come back whole and in order.
#[test]
fn names_of_every_length_are_walked_whole() {
    require_root();
    let parent = test_parent("names");
    let daemon = Daemon::start(&parent.path, "");
    let action = parent.child("names-1");
    daemon.declare(&action.path, "//pkg:names", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let lengths = [1, 7, 8, 9, 31, 32, 33, 39, 40, 41, 47, 100, 255];
    let script = "import os, sys\n\
        d = os.fsencode(sys.argv[1])\n\
        for n in (1, 7, 8, 9, 31, 32, 33, 39, 40, 41, 47, 100, 255):\n\
        \x20   name = bytes((97 + (n + i) % 26) for i in range(n - 1)) + b'\\xff'\n\
        \x20   d = d + b'/' + name\n\
        \x20   os.mkdir(d)\n\
        os.chdir(d)\n\
        open(b'leaf-' + b'y' * 33, 'wb').close()\n";
    run_ok_in(
        &action.path,
        &mut python(script, &[tmp.path().to_str().unwrap()]),
    );
    // As alerts print them: a byte that is not UTF-8 as `\xff`.
    let mut want = tmp.path().display().to_string();
    for n in lengths {
        want.push('/');
        want.extend((0..n - 1).map(|i| char::from(b'a' + ((n + i) % 26) as u8)));
        want.push_str("\\xff");
    }
    want.push_str(&format!("/leaf-{}", "y".repeat(33)));
    let leaf = format!("/leaf-{}", "y".repeat(33));
    let on_leaf = |alerts: &[serde_json::Value]| {
        alerts
            .iter()
            .find(|a| {
                a["file"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&leaf))
            })
            .cloned()
    };
    daemon.wait_for_alerts("the leaf's alert", |a| on_leaf(a).is_some());
    let (_, alerts, _) = daemon.stop();
    let alert = on_leaf(&alerts).unwrap();
    let path = alert["file"]["path"].as_str().unwrap();
    assert_eq!(path, want);
    assert!(
        !alert["message"].as_str().unwrap().contains("truncated"),
        "{}",
        alert["message"]
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
    let child = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let monitor_pid = child.id();
    let out = child.wait_with_output().unwrap();
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
    // The command is `monitor exec`'s own child: the connect path reads
    // the parent by probe reads.
    assert_eq!(alerts[0]["process"]["ppid"], monitor_pid, "{report:#}");

    // File opens of the command tree are not judged: /etc/shadow raises
    // nothing, while the connect after it in the same run (the control) is
    // reported.
    let shadow_then_connect =
        format!("cat /etc/shadow > /dev/null && /usr/bin/python3 -S -c \"{script}\"");
    let report = tmp.path().join("report2.json");
    let out = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/bin/sh", "-c", &shadow_then_connect])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let alerts = report["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only the connect: {report:#}");
    assert_eq!(alerts[0]["kind"], "network_egress");

    // A command without violations passes its own exit status through.
    assert_exit(&run_monitor(["exec", "--", "/bin/sh", "-c", "exit 7"]), 7);
    assert_exit(&run_monitor(["exec", "--", "/bin/true"]), 0);
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
    run_ok_in(
        &action.path,
        &mut python(script, &[secret.to_str().unwrap(), &denied.to_string()]),
    );
    daemon.wait_for_alerts("the connect's alert", |a| !net_alerts(a).is_empty());
    let (_, alerts, stderr) = daemon.stop();
    assert!(
        stderr.contains("via Raw syscall hook"),
        "fallback not used: {stderr}"
    );
    assert_eq!(file_alerts(&alerts, &secret).len(), 1, "{alerts:#?}");
    let net = net_alerts(&alerts);
    assert_eq!(net.len(), 1, "{alerts:#?}");
    assert_eq!(net[0]["net"]["port"], denied);
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
    let launcher = process_wrapper(bin.path());
    let undeclared = sb.undeclared.display().to_string();
    run_ok_in(
        &job.path,
        Command::new(&launcher)
            .current_dir(&sb.execroot)
            .args(["--timeout=0", "--kill_delay=15", "--", "/bin/sh", "-c"])
            .arg(format!(
                "cat pkg/in.txt > /dev/null; (cat {undeclared}) > /dev/null; cat {} > /dev/null",
                sb.source.display()
            )),
    );
    daemon.wait_for_file_alert(&sb.undeclared);
    let metrics = daemon.metrics_text();
    // Stopping drains and judges the rest (the symlink target's open).
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
    // The monitor finds the sandbox through the first process's working
    // directory: the shell waits on stdin until its first opens (the
    // loader's) have been counted, so it is still alive when they are
    // routed.
    let mut shell = in_cgroup(
        Command::new("/bin/sh")
            .current_dir(&sb.execroot)
            .arg("-c")
            .arg(format!(
                "read go; cat pkg/in.txt {} > /dev/null",
                sb.undeclared.display()
            )),
        &scope.path,
    )
    .stdin(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    daemon.wait_for_metric("build_monitor_events_total", &[("kind", "file")], 1.0);
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    daemon.wait_for_file_alert(&sb.undeclared);
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
    run_ok_in(&action.path, &mut python(script, &[]));
    daemon.wait_for_metric("build_monitor_events_total", &[("kind", "io_uring")], 1.0);
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

/// The harness's port scheme: a metrics port taken by someone else is
/// reported as taken (so another is tried), not as a failure, and a free
/// one starts the monitor.
#[test]
fn a_taken_metrics_port_is_retried_by_the_harness() {
    use testkit::{monitor::Monitor, ports::Attempt};
    require_root();
    let parent = test_parent("port");
    let dir = tempfile::tempdir().unwrap();
    let alerts = dir.path().join("alerts.jsonl");
    let config = |metrics: std::net::SocketAddr| {
        format!(
            "[attribution]\ncgroup_parents = [{:?}]\n[alerts]\nstdout = false\nfile = {:?}\n\
             [metrics]\nlisten = \"{metrics}\"\n",
            parent.path.display().to_string(),
            alerts.display().to_string()
        )
    };
    let base = || {
        let mut cmd = Command::new(monitor_bin());
        cmd.stdout(Stdio::null());
        cmd
    };
    let start = |port| {
        Monitor::start_on(
            port,
            &base,
            dir.path(),
            "monitor",
            &config,
            &alerts,
            std::time::Duration::from_secs(30),
        )
        .unwrap()
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    match start(taken.local_addr().unwrap().port()) {
        Attempt::PortTaken(stderr) => assert!(stderr.contains("metrics.listen"), "{stderr}"),
        Attempt::Started(_) => panic!("the monitor started on a port that was taken"),
    }
    drop(taken);
    // Control: the same launch on a free port starts.
    match start(testkit::ports::free_port().unwrap()) {
        Attempt::Started(monitor) => {
            let stopped = monitor.stop(std::time::Duration::from_secs(30)).unwrap();
            assert!(stopped.status.success(), "{}", stopped.stderr);
        }
        Attempt::PortTaken(stderr) => panic!("a free port was reported taken: {stderr}"),
    }
}

/// `monitor exec`'s report says what the monitor itself cost: the start
/// (loading and verifying the programs) apart from the whole run, whose
/// events (2,000 refused loopback connects here) cost more on top.
#[test]
fn the_exec_report_gives_the_monitors_own_cost() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.json");
    let port = free_port().to_string();
    let script = "import socket, sys\n\
        for i in range(2000):\n\
        \x20   s = socket.socket()\n\
        \x20   s.connect_ex(('127.0.0.1', int(sys.argv[1])))\n\
        \x20   s.close()\n";
    let out = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", script, &port])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap())
        .unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    let cost = &report["monitor"];
    let startup = cost["startup_cpu_s"].as_f64().unwrap();
    let total = cost["cpu_s"].as_f64().unwrap();
    assert!(startup > 0.0, "loading the programs costs CPU: {cost}");
    assert!(total > startup, "the events cost more on top: {cost}");
    assert!(cost["peak_rss_mib"].as_f64().unwrap() > 1.0, "{cost}");
    assert!(
        report["events"]["net"].as_u64().unwrap() >= 2000,
        "{}",
        report["events"]
    );
}

/// A stand-in `bazel` that answers `--version` with the file `release`
/// (after a connect to `denied`), `canonicalize-flags` by whether the
/// flag's name is a line of `takes` (noting its arguments and cgroup in
/// `asked`), refuses a build given an unsorted log flag `takes` does not
/// name (exit code 2, as Bazel refuses an unknown option), and notes each
/// other command line in `args`.
struct FakeBazel {
    dir: tempfile::TempDir,
    bazel: std::path::PathBuf,
}

impl FakeBazel {
    fn new(denied: u16) -> FakeBazel {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let bazel = bin.join("bazel");
        let file = |name: &str| dir.path().join(name).display().to_string();
        let connect =
            format!("import socket; socket.create_connection(('127.0.0.1', {denied})).close()");
        fs::write(
            &bazel,
            format!(
                "#!/bin/sh\nif [ \"$1\" = --version ]; then\n  /usr/bin/python3 -S -c \"{connect}\"\n  cat {release}\n  exit 0\nfi\n\
                 if [ \"$2\" = canonicalize-flags ]; then\n  printf '%s ' \"$@\" >> {asked}\n  cat /proc/self/cgroup >> {asked}\n  \
                 grep -qxF -- \"${{5%%=*}}\" {takes} && exit 0\n  exit 2\nfi\n\
                 echo run >> {runs}\n\
                 for a in \"$@\"; do case \"$a\" in --experimental_execution_log_file=*|--noexecution_log_sort)\n  \
                 grep -qxF -- \"${{a%%=*}}\" {takes} || {{ echo \"ERROR: Unrecognized option: $a\" >&2; exit 2; }};; esac; done\n\
                 printf '%s\\n' \"$@\" > {args}\n\
                 if [ -e {fail} ]; then exit 2; fi\n",
                release = file("release"),
                args = file("args"),
                takes = file("takes"),
                asked = file("asked"),
                runs = file("runs"),
                fail = file("fail"),
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&bazel, fs::Permissions::from_mode(0o755)).unwrap();
        FakeBazel { dir, bazel }
    }

    /// `monitor exec -- bazel --output_base=/ob build //...` with the
    /// `--version` answer `release` and the flags `takes` names: the
    /// report, the build's arguments, stderr and what was asked.
    fn build(&self, release: &str, takes: &str) -> (serde_json::Value, String, String, String) {
        let file = |name: &str| self.dir.path().join(name);
        fs::write(file("release"), release).unwrap();
        fs::write(file("takes"), takes).unwrap();
        let _ = fs::remove_file(file("asked"));
        let _ = fs::remove_file(file("args"));
        let _ = fs::remove_file(file("runs"));
        let report = file("report.json");
        let out = Command::new(monitor_bin())
            .args(["exec", "--report"])
            .arg(&report)
            .arg("--")
            .arg(&self.bazel)
            .args(["--output_base=/ob", "build", "//..."])
            .output()
            .unwrap();
        let report: serde_json::Value =
            serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let asked = fs::read_to_string(file("asked")).unwrap_or_default();
        (
            report,
            fs::read_to_string(file("args")).unwrap_or_default(),
            stderr,
            asked,
        )
    }
}

impl FakeBazel {
    /// How many times the last `build` ran the build command.
    fn runs(&self) -> usize {
        let runs = fs::read_to_string(self.dir.path().join("runs")).unwrap_or_default();
        runs.lines().count()
    }

    /// Makes each build fail (exit code 2) after noting its arguments.
    fn fail_builds(&self) {
        fs::write(self.dir.path().join("fail"), "").unwrap();
    }
}

fn has_arg(args: &str, flag: &str) -> bool {
    args.lines().any(|a| a.starts_with(flag))
}

/// `monitor exec` asks a Bazel command's release (`CMD --version`) to pick
/// the unsorted execution log's flag. CMD may be a wrapper that does more
/// than answer (a workspace's `tools/bazel`): that call runs inside the
/// job, watched, and its connect alerts under the job's `@bazel` label.
/// A release before 7 gets `--experimental_execution_log_file`, and no
/// question about flags.
#[test]
fn the_bazel_release_is_asked_inside_the_watched_job() {
    require_root();
    let denied = listener();
    let fake = FakeBazel::new(denied);
    let both = "--experimental_execution_log_file\n--noexecution_log_sort\n";
    let (report, args, stderr, asked) = fake.build("bazel 6.5.0\n", both);
    let alerts = report["alerts"].as_array().unwrap();
    let probe: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress" && a["net"]["port"] == denied)
        .collect();
    assert_eq!(probe.len(), 1, "{report:#}\n{stderr}");
    assert_eq!(probe[0]["action"]["label"], "@bazel", "{report:#}");
    assert_eq!(asked, "", "a named release is not asked about flags");
    assert!(
        has_arg(&args, "--experimental_execution_log_file="),
        "{args}"
    );
    assert!(!has_arg(&args, "--execution_log_binary_file"), "{args}");
}

/// A Bazel whose `--version` names no release (`bazel no_version`) is
/// asked, inside the job and with the command's startup options, whether
/// it takes each unsorted log flag (`canonicalize-flags`), and gets the
/// sorted one when it takes neither.
#[test]
fn a_bazel_without_a_release_is_asked_which_log_flag_it_takes() {
    require_root();
    let fake = FakeBazel::new(listener());
    let both = "--experimental_execution_log_file\n--noexecution_log_sort\n";
    let (_, args, _, asked) = fake.build("bazel no_version\n", both);
    assert!(
        has_arg(&args, "--experimental_execution_log_file="),
        "{args}"
    );
    assert!(!has_arg(&args, "--execution_log_binary_file"), "{args}");
    // Asked with the startup options, for the command, inside the job.
    assert!(
        asked.starts_with(
            "--output_base=/ob canonicalize-flags --for_command=build -- --experimental_execution_log_file="
        ),
        "{asked}"
    );
    assert!(asked.contains("/build-monitor/"), "{asked}");

    // Other Bazels (each its own file: an answer is kept per file).
    let fake = FakeBazel::new(listener());
    let (_, args, _, _) = fake.build("bazel no_version\n", "--noexecution_log_sort\n");
    assert!(has_arg(&args, "--execution_log_binary_file="), "{args}");
    assert!(has_arg(&args, "--noexecution_log_sort"), "{args}");

    let fake = FakeBazel::new(listener());
    let (_, args, _, asked) = fake.build("bazel no_version\n", "");
    assert_eq!(asked.matches("canonicalize-flags").count(), 2, "{asked}");
    assert!(has_arg(&args, "--execution_log_binary_file="), "{args}");
    assert!(
        !has_arg(&args, "--experimental_execution_log_file"),
        "{args}"
    );
    assert!(!has_arg(&args, "--noexecution_log_sort"), "{args}");
}

/// The answer of a Bazel that names no release is kept for its file: the
/// next build is not asked again. When the file's Bazel refuses the kept
/// flag (a wrapper now running another Bazel: exit code 2, no log), it is
/// asked again and the command runs once more with the flags it takes,
/// which are kept; a build that fails with 2 for a reason of its own is
/// asked but not run again.
#[test]
fn a_kept_log_flag_answer_is_used_until_the_bazel_refuses_it() {
    require_root();
    let fake = FakeBazel::new(listener());
    let both = "--experimental_execution_log_file\n--noexecution_log_sort\n";
    let (_, args, _, asked) = fake.build("bazel no_version\n", both);
    assert_eq!(asked.matches("canonicalize-flags").count(), 1, "{asked}");
    assert!(
        has_arg(&args, "--experimental_execution_log_file="),
        "{args}"
    );

    // Kept: not asked, the same flag.
    let (_, args, _, asked) = fake.build("bazel no_version\n", both);
    assert_eq!(asked, "", "a kept answer is not asked again");
    assert!(
        has_arg(&args, "--experimental_execution_log_file="),
        "{args}"
    );
    assert_eq!(fake.runs(), 1);

    // The Bazel behind the same file changed: the kept flag is refused.
    let no_sort = "--noexecution_log_sort\n";
    let (report, args, stderr, asked) = fake.build("bazel no_version\n", no_sort);
    assert_eq!(asked.matches("canonicalize-flags").count(), 2, "{asked}");
    assert_eq!(fake.runs(), 2, "{stderr}");
    assert!(has_arg(&args, "--execution_log_binary_file="), "{args}");
    assert!(has_arg(&args, "--noexecution_log_sort"), "{args}");
    assert!(stderr.contains("running the command once more"), "{stderr}");
    assert_eq!(report["command_exit_status"], 0, "{report:#}");
    // The rest of the command as it ran: the other flag monitor exec adds
    // is still there, the refused one gone.
    assert!(
        has_arg(&args, "--experimental_workspace_rules_log_file="),
        "{args}"
    );
    assert!(
        !has_arg(&args, "--experimental_execution_log_file"),
        "{args}"
    );
    assert!(args.lines().any(|a| a == "//..."), "{args}");

    // The new answer is kept.
    let (_, args, _, asked) = fake.build("bazel no_version\n", no_sort);
    assert_eq!(asked, "", "{asked}");
    assert!(has_arg(&args, "--noexecution_log_sort"), "{args}");
    assert_eq!(fake.runs(), 1);

    // A build failing with 2 for a reason of its own: asked, answered the
    // same, not run again; its exit status is the command's.
    fake.fail_builds();
    let (report, args, stderr, asked) = fake.build("bazel no_version\n", no_sort);
    assert_eq!(asked.matches("canonicalize-flags").count(), 2, "{asked}");
    assert_eq!(fake.runs(), 1, "{stderr}");
    assert!(has_arg(&args, "--noexecution_log_sort"), "{args}");
    assert!(!stderr.contains("once more"), "{stderr}");
    assert_eq!(report["command_exit_status"], 2, "{report:#}");
}
