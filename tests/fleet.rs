//! The node agent on a fleet, as root with the real kernel programs: live
//! config reload on SIGHUP (a changed policy applies to the next verdict; a
//! broken config is rejected and the running one kept; no event is lost
//! across either), and the fleet metrics.
use std::{fs, path::Path, process::Child};

use monitor_integration_tests::*;

/// Connects to each port in turn from inside `cgroup`.
fn connect_all(cgroup: &Path, ports: &[u16]) {
    let script = "import socket, sys\n\
        for p in sys.argv[1:]:\n    socket.create_connection(('127.0.0.1', int(p))).close()\n";
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let args: Vec<&str> = ports.iter().map(String::as_str).collect();
    run_ok_in(cgroup, &mut python(script, &args));
}

/// Total `count` of the network alerts for `port`.
fn port_count(alerts: &[serde_json::Value], port: u16) -> u64 {
    net_alerts(alerts)
        .iter()
        .filter(|a| a["net"]["port"] == port)
        .map(|a| a["count"].as_u64().unwrap_or(0))
        .sum()
}

/// Starts, in `cgroup`, a process that tries to open `n` distinct missing
/// paths under `dir`, 4 ms apart (each one is an undeclared-file alert, so
/// every event of the stream is accounted for).
fn open_stream(cgroup: &Path, dir: &Path, n: usize) -> Child {
    let script = "import os, sys, time\n\
        d, n = sys.argv[1], int(sys.argv[2])\n\
        for i in range(n):\n    try: os.open(f'{d}/miss-{i}', os.O_RDONLY)\n    except OSError: pass\n    time.sleep(0.004)\n";
    in_cgroup(
        &mut python(script, &[dir.to_str().unwrap(), &n.to_string()]),
        cgroup,
    )
    .spawn()
    .unwrap()
}

fn stream_alerts(alerts: &[serde_json::Value], dir: &Path) -> usize {
    let prefix = format!("{}/miss-", dir.display());
    let mut paths: Vec<&str> = alerts
        .iter()
        .filter_map(|a| a["file"]["path"].as_str())
        .filter(|p| p.starts_with(&prefix))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths.len()
}

/// The reload time the daemon logged, for the report.
fn logged_reload_ms(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.split("config reloaded in ").nth(1))
        .filter_map(|rest| rest.split(" ms").next())
        .map(str::to_owned)
        .collect()
}

/// Below the default per-action alert budget (300 a minute), so every open
/// is its own alert.
const STREAM: usize = 200;

#[test]
fn sighup_with_a_changed_allow_list_changes_the_next_verdict_and_loses_nothing() {
    require_root();
    let parent = test_parent("reload-ok");
    let (first, second) = (listener(), listener());
    let mut daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reload-1");
    daemon.declare(&action.path, "//pkg:reload", "Genrule", &[], "");
    // Positive control before: port `first` is denied.
    connect_all(&action.path, &[first]);
    daemon.wait_for_alerts("the first connect's alert", |a| port_count(a, first) == 1);

    let scratch = tempfile::tempdir().unwrap();
    let mut stream = open_stream(&action.path, scratch.path(), STREAM);
    let config = daemon.config_path();
    let text = fs::read_to_string(&config).unwrap();
    fs::write(
        &config,
        format!("{text}[network]\nallow = [{{ cidr = \"127.0.0.1/32\", port = {first} }}]\n"),
    )
    .unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_metric(
        "build_monitor_config_reloads_total",
        &[("result", "ok")],
        1.0,
    );
    assert!(stream.wait().unwrap().success());

    // After: `first` is allowed now; `second` (positive control) is not.
    connect_all(&action.path, &[first, second]);
    daemon.wait_for_alerts("the second port's alert", |a| port_count(a, second) == 1);
    daemon.wait_for_alerts("every open of the stream", |a| {
        stream_alerts(a, scratch.path()) == STREAM
    });
    let metrics = daemon.metrics_text();
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        port_count(&alerts, first),
        1,
        "the reloaded allow list must pass the later connect: {alerts:#?}"
    );
    assert_eq!(stream_alerts(&alerts, scratch.path()), STREAM);
    assert_eq!(
        metric(&metrics, "build_monitor_events_lost_total", &[]),
        0.0
    );
    assert!(metric(&metrics, "build_monitor_events_total", &[("kind", "net")]) >= 3.0);
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_config_reloads_total",
            &[("result", "error")]
        ),
        0.0
    );
    let times = logged_reload_ms(&stderr);
    assert_eq!(times.len(), 1, "{stderr}");
    eprintln!("reload applied in {} ms", times[0]);
}

#[test]
fn sighup_with_a_broken_config_keeps_the_running_one_and_loses_nothing() {
    require_root();
    let parent = test_parent("reload-bad");
    let (first, second) = (listener(), listener());
    let mut daemon = Daemon::start(&parent.path, "");
    let action = parent.child("reload-2");
    daemon.declare(&action.path, "//pkg:reload", "Genrule", &[], "");
    connect_all(&action.path, &[first]);
    daemon.wait_for_alerts("the first connect's alert", |a| port_count(a, first) == 1);

    let scratch = tempfile::tempdir().unwrap();
    let mut stream = open_stream(&action.path, scratch.path(), STREAM);
    // Would allow `first` if half-applied; the unknown key makes it invalid.
    let config = daemon.config_path();
    let good = fs::read_to_string(&config).unwrap();
    let bad = format!(
        "{good}[network]\nallow = [{{ cidr = \"127.0.0.1/32\", port = {first} }}]\nbogus = 1\n"
    );
    let bad_line = bad.lines().count();
    fs::write(&config, &bad).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_metric(
        "build_monitor_config_reloads_total",
        &[("result", "error")],
        1.0,
    );
    assert!(stream.wait().unwrap().success());

    connect_all(&action.path, &[first, second]);
    daemon.wait_for_alerts("the second port's alert", |a| port_count(a, second) == 1);
    daemon.wait_for_alerts("every open of the stream", |a| {
        stream_alerts(a, scratch.path()) == STREAM
    });
    assert_eq!(
        http_get(daemon.metrics, "/healthz").map(|r| r.0),
        Some(200),
        "still serving"
    );
    let metrics = daemon.metrics_text();
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(
        port_count(&alerts, first),
        2,
        "the old policy (deny all) must still judge: {alerts:#?}"
    );
    assert_eq!(stream_alerts(&alerts, scratch.path()), STREAM);
    assert_eq!(
        metric(&metrics, "build_monitor_events_lost_total", &[]),
        0.0
    );
    assert_eq!(
        metric(
            &metrics,
            "build_monitor_config_reloads_total",
            &[("result", "ok")]
        ),
        0.0
    );
    let rejected = stderr
        .lines()
        .find(|l| l.contains("reload rejected"))
        .unwrap_or_else(|| panic!("no rejection logged: {stderr}"));
    assert!(
        rejected.contains(&format!("{}:{bad_line}:", config.display()))
            && rejected.contains("bogus"),
        "the message names file, line and key: {rejected}"
    );
}

/// The capabilities `monitor run` asks for (kernel/privileges.rs).
const LISTED_CAPS: [&str; 5] = [
    "bpf",
    "perfmon",
    "net_admin",
    "dac_read_search",
    "sys_ptrace",
];
const NOBODY: u32 = 65534;

/// `setpriv` running the monitor as `nobody` with exactly `caps` (ambient,
/// so they survive the exec).
fn as_nobody_with(caps: &[&str]) -> std::process::Command {
    let list: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let list = format!("-all,{}", list.join(","));
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={list}"))
        .arg(format!("--ambient-caps={list}"))
        .arg(monitor_bin())
        .stdout(std::process::Stdio::null());
    cmd
}

/// Hands `path` to `nobody`, as systemd's `Delegate=` hands a cgroup to a
/// service's user: the directory and the files a delegate writes.
fn chown_to_nobody(path: &Path, files: &[&str]) {
    for p in std::iter::once(path.to_path_buf()).chain(files.iter().map(|f| path.join(f))) {
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY))
            .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    }
}

#[test]
fn a_non_root_user_with_the_listed_capabilities_attaches_and_alerts() {
    require_root();
    let parent = test_parent("nonroot");
    chown_to_nobody(
        &parent.path,
        &["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"],
    );
    let dir = tempfile::tempdir().unwrap();
    let (alerts, declarations) = (dir.path().join("alerts.jsonl"), dir.path().join("decl"));
    fs::create_dir(&declarations).unwrap();
    chown_to_nobody(dir.path(), &["decl"]);
    let config = |metrics: std::net::SocketAddr| {
        format!(
            "[attribution]\ncgroup_parents = [\"{}\"]\ndeclarations_dir = \"{}\"\ndeclaration_wait_ms = 300\n\
             [alerts]\nstdout = false\nfile = \"{}\"\nfold_window_ms = 200\n[metrics]\nlisten = \"{metrics}\"\n",
            parent.path.display(),
            declarations.display(),
            alerts.display()
        )
    };
    let mut monitor = testkit::monitor::Monitor::start(
        || as_nobody_with(&LISTED_CAPS),
        dir.path(),
        "nonroot",
        config,
        &alerts,
        PATIENCE,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let action = parent.child("nonroot-1");
    let missing = dir.path().join("not-declared");
    let _ = run_in(
        &action.path,
        std::process::Command::new("/usr/bin/cat").arg(&missing),
    );
    monitor
        .wait_for_alerts(PATIENCE, "the undeclared open's alert", |a| {
            !file_alerts(a, &missing).is_empty()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    // setpriv execs the monitor: same pid.
    let pid = monitor.daemon().id();
    let uid = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_owned();
    let stopped = monitor.stop(PATIENCE).unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(
        uid.split_whitespace().nth(2) == Some("65534"),
        "effective uid: {uid}"
    );
}

#[test]
fn without_any_one_listed_capability_the_agent_exits_3_naming_it() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("monitor.toml");
    fs::write(&config, "[metrics]\nlisten = \"off\"\n").unwrap();
    chown_to_nobody(dir.path(), &["monitor.toml"]);
    for cap in LISTED_CAPS {
        let others: Vec<&str> = LISTED_CAPS.iter().copied().filter(|c| *c != cap).collect();
        let out = as_nobody_with(&others)
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "without {cap}: {stderr}");
        let name = format!("missing capability CAP_{}", cap.to_uppercase());
        assert!(stderr.contains(&name), "without {cap}: {stderr}");
    }
}

/// `monitor …` inside a new cgroup namespace rooted at `ns_root` and a
/// private mount namespace, where the cgroup2 mount point shows only the
/// namespace's subtree, as in a pod. With `host_view`, the host's
/// hierarchy is bind-mounted there first (a DaemonSet's hostPath mount).
fn in_cgroup_namespace(ns_root: &Path, host_view: Option<&Path>) -> std::process::Command {
    let cg = cgroup2_root();
    let bind = host_view
        .map(|h| format!("mount --bind {} {} && ", cg.display(), h.display()))
        .unwrap_or_default();
    let script = format!(
        "{bind}umount -l {cg} && mount -t cgroup2 none {cg} && exec {monitor} \"$@\"",
        cg = cg.display(),
        monitor = monitor_bin().display()
    );
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["-C", "-m", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh");
    in_cgroup(&mut cmd, ns_root);
    cmd.stdout(std::process::Stdio::null());
    cmd
}

#[test]
fn in_a_cgroup_namespace_the_agent_works_in_the_hosts_cgroup_view() {
    require_root();
    let parent = test_parent("cgns");
    let ns_root = test_parent("cgns-agent");
    let dir = tempfile::tempdir().unwrap();
    let host_view = dir.path().join("host-cgroup");
    fs::create_dir(&host_view).unwrap();
    // The parent as the agent sees it: through the host's hierarchy.
    let parent_seen = host_view.join(parent.path.strip_prefix(cgroup2_root()).unwrap());
    let alerts = dir.path().join("alerts.jsonl");
    let config = |metrics: std::net::SocketAddr| {
        format!(
            "[attribution]\ncgroup_parents = [\"{}\"]\ndeclarations_dir = \"{}\"\ndeclaration_wait_ms = 300\n\
             [alerts]\nstdout = false\nfile = \"{}\"\nfold_window_ms = 200\n[metrics]\nlisten = \"{metrics}\"\n",
            parent_seen.display(),
            dir.path().join("decl").display(),
            alerts.display()
        )
    };
    let monitor = testkit::monitor::Monitor::start(
        || in_cgroup_namespace(&ns_root.path, Some(&host_view)),
        dir.path(),
        "cgns",
        config,
        &alerts,
        PATIENCE,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let action = parent.child("cgns-1");
    let missing = dir.path().join("not-declared");
    let _ = run_in(
        &action.path,
        std::process::Command::new("/usr/bin/cat").arg(&missing),
    );
    let seen = monitor
        .wait_for_alerts(PATIENCE, "the undeclared open's alert", |a| {
            !file_alerts(a, &missing).is_empty()
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let alert = file_alerts(&seen, &missing)[0].clone();
    let stopped = monitor.stop(PATIENCE).unwrap();
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert_eq!(alert["action"]["id"], "cgns-1");
    assert_eq!(
        alert["action"]["cgroup"],
        parent_seen.join("cgns-1").display().to_string(),
        "the action's cgroup in the host's view"
    );

    // Control: without the host's hierarchy it refuses, saying why.
    let out = in_cgroup_namespace(&ns_root.path, None)
        .args(["run", "--config"])
        .arg(dir.path().join("cgns.toml"))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("no cgroup2 mount shows the root of the hierarchy"),
        "{stderr}"
    );
}

#[test]
fn fleet_metrics_follow_an_action_from_start_to_finish() {
    require_root();
    let parent = test_parent("fleet-metrics");
    let daemon = Daemon::start(&parent.path, "");
    let before = daemon.metrics_text();
    assert_eq!(
        metric(&before, "build_monitor_alert_latency_seconds_count", &[]),
        0.0
    );
    let action = parent.child("metrics-1");
    daemon.declare(&action.path, "//pkg:m", "Genrule", &[], "");
    let missing = daemon.dir.path().join("not-declared");
    let _ = run_in(
        &action.path,
        std::process::Command::new("/usr/bin/cat").arg(&missing),
    );
    daemon.wait_for_file_alert(&missing);
    daemon.wait_for_metric("build_monitor_alert_latency_seconds_count", &[], 1.0);
    daemon.wait_for_metric("build_monitor_actions_started_total", &[], 1.0);
    drop(action); // rmdir: the kernel's cgroup_rmdir ends the action
    let m = daemon.wait_for_metric("build_monitor_actions_finished_total", &[], 1.0);
    let (status, _, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    assert_eq!(m.sum("build_monitor_actions_started_total", &[]), 1.0);
    assert_eq!(m.sum("build_monitor_actions_finished_total", &[]), 1.0);
    assert_eq!(m.sum("build_monitor_alert_queue_depth", &[]), 0.0);
    // Written within the fold window (300 ms) plus a tick or two.
    let latency = m.sum("build_monitor_alert_latency_seconds_sum", &[]);
    assert!(latency > 0.0 && latency < 5.0, "latency {latency} s");
    eprintln!("one alert: {latency:.3} s from the kernel event to written");
    let fill = m.sum("build_monitor_ring_fill_ratio", &[]);
    assert!((0.0..1.0).contains(&fill), "ring fill {fill}");
    assert!(
        before.contains("build_monitor_ring_fill_ratio "),
        "the gauge exists from the start"
    );
}

/// Connects to each port from inside `cgroup`; "<port> ok" or
/// "<port> <errno name>" per line.
fn try_connects(cgroup: &Path, ports: &[u16]) -> String {
    let script = "import errno, socket, sys\n\
        for p in sys.argv[1:]:\n\
        \x20   try:\n\
        \x20       socket.create_connection(('127.0.0.1', int(p))).close()\n\
        \x20       print(p, 'ok')\n\
        \x20   except OSError as e: print(p, errno.errorcode[e.errno])\n";
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    let args: Vec<&str> = ports.iter().map(String::as_str).collect();
    let out = run_in(cgroup, &mut python(script, &args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn sighup_under_enforce_rewrites_the_kernels_allow_list() {
    require_root();
    let parent = test_parent("reload-enforce");
    let (first, second) = (listener(), listener());
    let rule = |port: u16| {
        format!(
            "[network]\nenforce = true\nallow = [{{ cidr = \"127.0.0.1/32\", port = {port} }}]\n"
        )
    };
    let mut daemon = Daemon::start(&parent.path, &rule(first));
    let action = parent.child("reload-enforce-1");
    daemon.declare(&action.path, "//pkg:reload", "Genrule", &[], "");
    let before = try_connects(&action.path, &[first, second]);
    assert!(before.contains(&format!("{first} ok")), "{before}");
    assert!(before.contains(&format!("{second} EPERM")), "{before}");

    // The allow list moves from `first` to `second`: the kernel must both
    // admit the new rule and drop the old one.
    let config = daemon.config_path();
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, text.replace(&rule(first), &rule(second))).unwrap();
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_metric(
        "build_monitor_config_reloads_total",
        &[("result", "ok")],
        1.0,
    );
    let after = try_connects(&action.path, &[first, second]);
    assert!(after.contains(&format!("{second} ok")), "{after}");
    assert!(after.contains(&format!("{first} EPERM")), "{after}");
    daemon.wait_for_alerts("the blocked connect after the reload", |a| {
        port_count(a, first) >= 1
    });
    let (status, alerts, stderr) = daemon.stop();
    assert!(status.success(), "{stderr}");
    let blocked: Vec<_> = net_alerts(&alerts)
        .into_iter()
        .filter(|a| a["verdict"] == "blocked")
        .map(|a| a["net"]["port"].as_u64())
        .collect();
    assert!(blocked.contains(&Some(u64::from(first))), "{alerts:#?}");
    assert!(blocked.contains(&Some(u64::from(second))), "{alerts:#?}");
}
