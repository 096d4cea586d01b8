//! The node agent on a remote-execution worker, end to end and offline:
//! real Bazel 4.2.3 builds genrules on a real BuildGrid 0.4.4 (on a
//! PostgreSQL cluster this test initialises) through the test suite's own
//! Remote Workers API bot; a real `monitor run` with
//! `attribution.worker_runners` naming the bot watches from the kernel.
//! Everything is started and stopped here, on loopback only.
#[path = "reapi/harness.rs"]
mod harness;

use std::{
    fs,
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use monitor_integration_tests::{PATIENCE, monitor_bin, require_root};
use serde_json::Value;
use testkit::monitor::Monitor;

const BAZEL: &str = "/usr/bin/bazel";

/// The agent, with worker attribution on and no cgroup parents.
fn start_agent(dir: &Path, bot: &Path, records: &Path) -> Monitor {
    let alerts = dir.join("alerts.jsonl");
    let config = |metrics| {
        format!(
            "[attribution]\nworker_runners = [{:?}]\nworker_records_dir = {:?}\n\
             declarations_dir = {:?}\n\
             [alerts]\nstdout = false\nfile = {:?}\nfold_window_ms = 200\n\
             [metrics]\nlisten = \"{metrics}\"\n",
            bot.display().to_string(),
            records.display().to_string(),
            dir.join("declarations").display().to_string(),
            alerts.display().to_string(),
        )
    };
    let base = || {
        let mut cmd = Command::new(monitor_bin());
        cmd.env("RUST_LOG", "info").stdout(Stdio::null());
        cmd
    };
    Monitor::start(base, dir, "agent", config, &alerts, PATIENCE).expect("starting the agent")
}

fn agent_metric(agent: &Monitor, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metrics().expect("GET /metrics").sum(name, labels)
}

/// A workspace with three genrules: `clean` reads only its input, `leaky`
/// also reads a host file it did not declare, `egress` connects to the
/// REAPI server's own port (the destination the bot talks to).
fn workspace(ws: &Path, host_file: &Path, server_port: u16) {
    fs::create_dir_all(ws).unwrap();
    fs::write(ws.join("WORKSPACE"), "").unwrap();
    // A fresh input per run: no cache hit can skip the execution.
    let nonce = format!("{:?}\n", std::time::SystemTime::now());
    fs::write(ws.join("in.txt"), nonce).unwrap();
    fs::write(
        ws.join("BUILD"),
        format!(
            r#"genrule(name = "clean", srcs = ["in.txt"], outs = ["clean.out"],
    cmd = "cat $(location in.txt) > $@")
genrule(name = "leaky", srcs = ["in.txt"], outs = ["leaky.out"],
    cmd = "cat $(location in.txt) {host} > $@")
genrule(name = "egress", srcs = ["in.txt"], outs = ["egress.out"],
    cmd = "(exec 3<>/dev/tcp/127.0.0.1/{server_port}) 2>/dev/null; cat $(location in.txt) > $@")
"#,
            host = host_file.display()
        ),
    )
    .unwrap();
}

fn bazel_build(t: &Path, ws: &Path, port: u16, targets: &[&str]) {
    let out = Command::new(BAZEL)
        .current_dir(ws)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", t)
        .arg(format!("--output_base={}", t.join("ob").display()))
        .arg(format!("--output_user_root={}", t.join("root").display()))
        .arg(format!(
            "--host_jvm_args=-Djava.io.tmpdir={}",
            t.join("jtmp").display()
        ))
        .arg("--batch")
        .arg("build")
        .arg(format!("--remote_executor=grpc://127.0.0.1:{port}"))
        .arg(format!("--remote_instance_name={}", harness::INSTANCE))
        .args(targets)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bazel build failed:\n{stderr}");
    assert!(
        stderr.contains(&format!("{} remote", targets.len())),
        "every genrule must run remotely:\n{stderr}"
    );
}

fn of_label<'a>(alerts: &'a [Value], label: &str) -> Vec<&'a Value> {
    alerts
        .iter()
        .filter(|a| a["action"]["label"] == label)
        .collect()
}

#[test]
fn remote_actions_are_attributed_labelled_and_judged() {
    require_root();
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pg = harness::Postgres::start(t);
    let (mut server, port) = harness::buildgrid(t, &pg);
    let records = t.join("records");
    fs::create_dir_all(&records).unwrap();
    let bot_path = harness::install_bot(t);
    let agent = start_agent(t, &bot_path, &records);
    let mut bot = harness::start_bot(&bot_path, t, port, &records);
    let farm_ready = started.elapsed();

    let host_file = t.join("host-secret.txt");
    fs::write(&host_file, "host secret\n").unwrap();
    let ws = t.join("ws");
    workspace(&ws, &host_file, port);
    bazel_build(t, &ws, port, &["//:clean", "//:leaky", "//:egress"]);
    let built = started.elapsed();
    let alerts = finish(agent, &mut server, &mut bot, port);
    let alerted = started.elapsed();

    let host = host_file.display().to_string();
    let (digest, invocation) = check_undeclared_read(&alerts, &host, &bot);
    check_cache_risk(&alerts, &host, &digest, &invocation);
    // The clean genrule raised nothing, in the same build (the positive
    // controls: the two checks above).
    assert!(of_label(&alerts, "//:clean").is_empty(), "{alerts:#?}");
    check_egress(&alerts, port, bot.pid());
    eprintln!(
        "reapi: farm ready in {farm_ready:?}, build done at {built:?}, alerts at {alerted:?}, test {:?}",
        started.elapsed()
    );
}

/// Waits for both verdicts, checks the farm kept running and the metrics,
/// stops the agent; every alert it wrote.
fn finish(
    agent: Monitor,
    server: &mut harness::Guard,
    bot: &mut harness::Guard,
    port: u16,
) -> Vec<Value> {
    let waited = agent.wait_for_alerts(PATIENCE, "cache_risks", |alerts| {
        ["//:leaky", "//:egress"].iter().all(|l| {
            of_label(alerts, l)
                .iter()
                .any(|a| a["kind"] == "cache_risk")
        })
    });
    waited.expect("cache_risk alerts for //:leaky and //:egress");
    server.check_running();
    bot.check_running();
    // The server still serves: the bot's traffic to it kept flowing.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    let genrule = [("mnemonic", "Genrule")];
    assert_eq!(
        agent_metric(&agent, "build_monitor_worker_actions_total", &genrule),
        3.0
    );
    assert_eq!(
        agent_metric(&agent, "build_monitor_cache_risks_total", &genrule),
        2.0
    );
    let stopped = agent.stop(PATIENCE).expect("stopping the agent");
    assert!(
        stopped.status.success(),
        "agent: {}\n{}",
        stopped.status,
        stopped.stderr
    );
    stopped.alerts
}

/// The undeclared read carries the action digest, label, mnemonic and
/// Bazel's invocation id; returns the digest and the invocation id.
fn check_undeclared_read(alerts: &[Value], host: &str, bot: &harness::Guard) -> (String, String) {
    let read: Vec<_> = of_label(alerts, "//:leaky")
        .into_iter()
        .filter(|a| a["kind"] == "undeclared_file" && a["file"]["path"] == host)
        .collect();
    assert_eq!(read.len(), 1, "{alerts:#?}");
    let action = &read[0]["action"];
    assert_eq!(action["mnemonic"], "Genrule");
    let digest = action["digest"].as_str().expect("digest");
    let (hash, size) = digest.split_once('/').expect("<hash>/<size>");
    assert_eq!(hash.len(), 64, "{digest}");
    assert!(size.parse::<u64>().is_ok(), "{digest}");
    // The digest is the one the farm executed (the bot logs each it runs).
    assert!(
        bot.log_text().contains(hash),
        "digest {hash} unknown to the bot"
    );
    let invocation = action["invocation_id"].as_str().expect("invocation_id");
    assert_eq!(invocation.len(), 36, "a UUID: {invocation}");
    (digest.to_owned(), invocation.to_owned())
}

/// The `cache_risk` follow-up comes after the read and names it.
fn check_cache_risk(alerts: &[Value], host: &str, digest: &str, invocation: &str) {
    let position = |kind: &str| {
        alerts
            .iter()
            .position(|a| a["kind"] == kind && a["action"]["label"] == "//:leaky")
            .unwrap_or_else(|| panic!("no {kind} for //:leaky: {alerts:#?}"))
    };
    assert!(
        position("undeclared_file") < position("cache_risk"),
        "the follow-up comes after"
    );
    let risk = &alerts[position("cache_risk")];
    assert_eq!(risk["cache_risk"]["action_digest"], digest);
    assert_eq!(risk["cache_risk"]["exit_code"], 0);
    let violations = risk["cache_risk"]["violations"].as_array().unwrap();
    assert!(
        violations
            .iter()
            .any(|v| v["kind"] == "undeclared_file" && v["target"] == host),
        "{risk:#}"
    );
    assert_eq!(risk["action"]["invocation_id"], invocation);
    // Its process is the action's root: the genrule's bash, not the bot.
    assert_eq!(risk["process"]["comm"], "bash", "{risk:#}");
    assert_eq!(risk["process"]["exe"], "/usr/bin/bash", "{risk:#}");
}

/// The action's connect to the server's port is reported; the bot's own
/// traffic to that same port is not an action's: no alert is the bot's.
fn check_egress(alerts: &[Value], port: u16, bot_pid: u32) {
    let egress: Vec<_> = alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress")
        .collect();
    assert!(!egress.is_empty(), "{alerts:#?}");
    for a in &egress {
        assert_eq!(
            a["action"]["label"], "//:egress",
            "only the action's: {a:#}"
        );
        assert_eq!(a["net"]["port"], port);
        assert_ne!(a["process"]["pid"], bot_pid, "{a:#}");
    }
    for a in alerts {
        let label = a["action"]["label"].as_str().unwrap_or("");
        assert!(["//:leaky", "//:egress"].contains(&label), "{a:#}");
    }
}
