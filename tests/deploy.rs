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

/// Every document of a YAML file, as JSON (parsed by the PyYAML of the
/// kubernetes-validate virtualenv).
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = testkit::tools::kubernetes_validate_venv().join("bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}: run `cargo xtask setup`", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).unwrap() {
        Value::Array(docs) => docs,
        other => panic!("not a list of documents: {other}"),
    }
}

fn kubernetes_validate(files: &[PathBuf]) -> std::process::Output {
    let tool = testkit::tools::kubernetes_validate();
    assert!(
        tool.exists(),
        "{} missing: run `cargo xtask setup`",
        tool.display()
    );
    Command::new(tool)
        .arg("--strict")
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn kubernetes_manifests_pass_the_schemas_and_say_what_the_agent_needs() {
    let dir = deploy_dir().join("kubernetes");
    let files: Vec<PathBuf> = ["namespace.yaml", "configmap.yaml", "daemonset.yaml"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let out = kubernetes_validate(&files);
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    assert_eq!(
        report.matches(" passed for resource ").count(),
        3,
        "{report}"
    );

    // Negative control: the strict check rejects a misspelt field.
    let scratch = tempfile::tempdir().unwrap();
    let broken = scratch.path().join("daemonset.yaml");
    let text = fs::read_to_string(&files[2]).unwrap();
    fs::write(&broken, text.replace("hostPID: true", "hostPid: true")).unwrap();
    assert!(!kubernetes_validate(&[broken]).status.success());

    assert_config_map_is_accepted(&files[1], scratch.path());
    assert_daemon_set_says_what_the_agent_needs(&yaml_documents(&files[2])[0]);
}

/// The config in the ConfigMap is one the monitor accepts.
fn assert_config_map_is_accepted(file: &Path, scratch: &Path) {
    let config_map = &yaml_documents(file)[0];
    let toml = config_map["data"]["monitor.toml"].as_str().unwrap();
    let config = scratch.join("monitor.toml");
    fs::write(&config, toml).unwrap();
    let out = run_monitor([std::ffi::OsStr::new("check-config"), config.as_os_str()]);
    assert_exit(&out, 0);
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains("listen = \"0.0.0.0:9464\""),
        "{effective}"
    );
}

fn assert_daemon_set_says_what_the_agent_needs(ds: &serde_json::Value) {
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9464");
    let container = &spec["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["privileged"], false);
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut caps: Vec<&str> = security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    caps.sort_unstable();
    assert_eq!(
        caps,
        [
            "BPF",
            "DAC_READ_SEARCH",
            "NET_ADMIN",
            "PERFMON",
            "SYS_PTRACE"
        ]
    );
    let probe = &container["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz");
    assert_eq!(probe["port"], 9464);
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][kind][resource].is_string(),
                "resources.{kind}.{resource} missing"
            );
        }
    }
    assert_host_mounts(spec, container);
}

/// The host's cgroup hierarchy, tracefs and BTF, where the agent looks.
fn assert_host_mounts(spec: &serde_json::Value, container: &serde_json::Value) {
    let mount = |name: &str| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no volumeMount {name}"))["mountPath"]
            .clone()
    };
    let host_path = |name: &str| {
        spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))["hostPath"]["path"]
            .clone()
    };
    assert_eq!(host_path("cgroup"), "/sys/fs/cgroup");
    assert_eq!(mount("cgroup"), "/sys/fs/cgroup");
    assert_eq!(host_path("tracefs"), "/sys/kernel/tracing");
    assert_eq!(host_path("btf"), "/sys/kernel/btf");
    assert_eq!(mount("config"), "/etc/monitor");
}
