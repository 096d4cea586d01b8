//! The shipped deployment files work with the real tools: the Prometheus
//! alert rules pass promtool's unit tests, and a real Prometheus scraping a
//! real monitor sees a real violation and fires the alert; every metric the
//! Grafana dashboard queries exists.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use monitor_integration_tests::*;
use serde_json::Value;
use testkit::{
    ports::{Attempt, on_free_port},
    wait::poll_until,
};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask setup` (installs Debian's prometheus)",
        path.display()
    );
    path
}

#[test]
fn alert_rules_pass_promtool() {
    let dir = deploy_dir().join("prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .current_dir(&dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` on a free port; another port if that
/// one was taken before Prometheus bound it.
fn start_prometheus(target: SocketAddr) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    fs::copy(
        deploy_dir().join("prometheus/alerts.yml"),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [alerts.yml]\n\
             scrape_configs:\n  - job_name: build-monitor\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let log = dir.path().join("prometheus.log");
    let (child, addr) = on_free_port(5, |port| {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut child = Command::new(tool("prometheus"))
            .current_dir(dir.path())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        let ready = poll_until(Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(Err(status));
            }
            matches!(http_get(addr, "/-/ready"), Some((200, _))).then_some(Ok(()))
        });
        let log_text = || fs::read_to_string(&log).unwrap_or_default();
        match ready {
            Some(Ok(())) => Ok(Attempt::Started((child, addr))),
            Some(Err(_)) if log_text().contains("address already in use") => {
                Ok(Attempt::PortTaken(log_text()))
            }
            Some(Err(status)) => anyhow::bail!("prometheus exited ({status}): {}", log_text()),
            None => {
                let _ = child.kill();
                anyhow::bail!("prometheus not ready within 60 s: {}", log_text())
            }
        }
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    Prometheus {
        child,
        addr,
        _dir: dir,
    }
}

/// GET a Prometheus API path until `check` accepts the JSON `data`.
fn wait_for(prom: &Prometheus, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    poll_until(Duration::from_secs(60), || {
        let (status, body) = http_get(prom.addr, path)?;
        last = serde_json::from_str(&body).unwrap_or(Value::Null);
        (status == 200 && check(&last["data"])).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("timed out waiting for {what}; last answer: {last}"))
}

#[test]
fn prometheus_scrapes_the_monitor_and_fires_on_a_violation() {
    require_root();
    let parent = test_parent("prom");
    let daemon = Daemon::start(&parent.path, "");
    let prom = start_prometheus(daemon.metrics);
    wait_for(&prom, "/api/v1/query?query=up", "the first scrape", |d| {
        d["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
    });

    let action = parent.child("prom-1");
    daemon.declare(&action.path, "//pkg:leaky", "Genrule", &[], "");
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("secret");
    fs::write(&secret, "x").unwrap();
    let out = run_in(&action.path, Command::new("/usr/bin/cat").arg(&secret));
    assert!(out.status.success());

    let q = "/api/v1/query?query=build_monitor_violations_total";
    wait_for(&prom, q, "the violation in Prometheus", |d| {
        d["result"].as_array().is_some_and(|r| {
            r.iter().any(|s| {
                s["metric"]["kind"] == "undeclared_file"
                    && s["metric"]["mnemonic"] == "Genrule"
                    && s["value"][1] == "1"
            })
        })
    });
    let alerts = wait_for(&prom, "/api/v1/alerts", "the alert to fire", |d| {
        d["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["labels"]["alertname"] == "BuildActionUndeclaredFileAccess"
                    && x["state"] == "firing"
            })
        })
    });
    let fired: Vec<&Value> = alerts["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert!(
        !fired
            .iter()
            .any(|x| x["labels"]["alertname"] == "BuildMonitorEventsLost"),
        "no event may be lost: {fired:#?}"
    );

    // Every metric the dashboard queries is one the monitor exports.
    let exported = daemon.metrics_text();
    let dashboard = fs::read_to_string(deploy_dir().join("grafana/build-monitor.json")).unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("build_monitor_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(
        names.len() >= 6,
        "dashboard queries too few metrics: {names:?}"
    );
    for name in names {
        assert!(
            exported
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) || l.starts_with(&format!("{name}{{"))),
            "dashboard uses {name}, which the monitor does not export"
        );
    }
    let (status, _, _) = daemon.stop();
    assert!(status.success());
}

/// deploy/monitor.service with its binary path pointing at the monitor
/// under test (systemd-analyze checks that ExecStart= is executable).
fn unit_copy(dir: &Path, binary: &Path) -> PathBuf {
    let unit = fs::read_to_string(deploy_dir().join("monitor.service")).unwrap();
    let path = dir.join("monitor.service");
    fs::write(
        &path,
        unit.replace("/usr/local/bin/monitor", binary.to_str().unwrap()),
    )
    .unwrap();
    path
}

#[test]
fn systemd_unit_verifies_runs_unprivileged_and_stays_hardened() {
    let analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_copy(dir.path(), &monitor_bin());
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Negative control: verify does fail on a unit whose binary is missing.
    let broken = tempfile::tempdir().unwrap();
    let broken_unit = unit_copy(broken.path(), &broken.path().join("no-such-monitor"));
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&broken_unit)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "verify passed a unit without a binary"
    );

    // Exposure (0 best … 10 worst) at most 3.5; the README shows the number.
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--threshold=35"])
        .arg(&unit)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exposure above 3.5: {text}");
    assert!(text.contains("Overall exposure level"), "{text}");

    let text = fs::read_to_string(&unit).unwrap();
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key}= missing from the unit"))
            .to_owned()
    };
    assert_eq!(value("User"), "build-monitor");
    assert_eq!(value("Delegate"), "yes");
    let mut caps: Vec<String> = value("AmbientCapabilities")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    caps.sort();
    // Exactly what the monitor checks for at start (kernel/privileges.rs;
    // tests/fleet.rs shows each one is required and the set is enough).
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_DAC_READ_SEARCH",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SYS_PTRACE"
        ]
    );
    assert_eq!(value("CapabilityBoundingSet"), value("AmbientCapabilities"));
}
