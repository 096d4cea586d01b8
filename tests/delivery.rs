//! Alert delivery end to end, as root: a real daemon, real cgroups, real
//! processes, receivers on loopback. Storm budget and bounded memory; the
//! webhook's spool across a receiver outage and a monitor restart; a full
//! spool; a real Alertmanager.
use std::{
    fs,
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use monitor_integration_tests::*;

/// A `monitor run` with a config written by the test.
struct Agent {
    child: Child,
    metrics: SocketAddr,
    stderr: PathBuf,
}

impl Agent {
    /// Starts `monitor run` on `parent` with `alerts` as the body of its
    /// `[alerts]` section (plus sub-tables after it), and waits for /healthz.
    fn start(dir: &Path, parent: &Path, alerts: &str) -> Agent {
        let port = free_port();
        let declarations = dir.join("declarations");
        fs::create_dir_all(&declarations).unwrap();
        let config = dir.join("monitor.toml");
        fs::write(
            &config,
            format!(
                "node = \"node-under-test\"\n[attribution]\ncgroup_parents = [\"{}\"]\ndeclarations_dir = \"{}\"\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n[alerts]\n{alerts}\n",
                parent.display(),
                declarations.display(),
            ),
        )
        .unwrap();
        let stderr = dir.join(format!("stderr-{port}.txt"));
        let child = Command::new(monitor_bin())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start monitor");
        let agent = Agent {
            child,
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            stderr,
        };
        poll("monitor /healthz", Duration::from_secs(30), || {
            matches!(http_get(agent.metrics, "/healthz"), Some((200, _)))
        });
        agent
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (status, body) = http_get(self.metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        metric(&body, name, labels)
    }

    /// Peak resident set size (VmHWM) in KiB.
    fn peak_rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }

    fn stop(mut self) -> (ExitStatus, String) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        (status, fs::read_to_string(&self.stderr).unwrap_or_default())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (polling) until `ready` holds; panics after `limit`.
fn poll(what: &str, limit: Duration, ready: impl FnMut() -> bool) {
    assert!(wait_until(limit, ready), "timed out waiting for {what}");
}

/// Runs python in `cgroup`, opening `/nonexistent/<dir>/<i>` for i in range.
fn open_missing(cgroup: &Path, dir: &str, range: std::ops::Range<u32>) {
    let script = format!(
        "import os\nfor i in range({}, {}):\n    try:\n        os.close(os.open('/nonexistent/{dir}/%d' % i, os.O_RDONLY))\n    except OSError:\n        pass\n",
        range.start, range.end
    );
    let out = run_in(cgroup, &mut python(&script, &[]));
    assert!(out.status.success(), "python failed: {out:?}");
}

fn declare(dir: &Path, cgroup: &Path, label: &str) {
    let name = cgroup.file_name().unwrap().to_string_lossy().to_string();
    let text = format!(
        "{{\"cgroup\": {:?}, \"label\": {label:?}, \"mnemonic\": \"Storm\", \"inputs\": []}}",
        cgroup.display().to_string()
    );
    let tmp = dir.join("declarations").join(format!(".{name}.tmp"));
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, dir.join("declarations").join(format!("{name}.json"))).unwrap();
}

const STORM: u32 = 100_000;
const BUDGET: u64 = 300;
/// The README's bound on what one action's flood may add to the agent's
/// peak RSS.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;

#[test]
fn an_alert_storm_stays_within_the_budget_with_exact_counts_and_bounded_memory() {
    require_root();
    let parent = test_parent("storm");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("alerts.jsonl");
    let agent = Agent::start(
        dir.path(),
        &parent.path,
        &format!(
            "stdout = false\nfile = \"{}\"\nfold_window_ms = 1000\nbudget_per_action = {BUDGET}\nbudget_window_s = 60",
            file.display()
        ),
    );
    let action = parent.child("storm-1");
    declare(dir.path(), &action.path, "//pkg:storm");
    // Positive control for the wait below: the declaration is in effect
    // before the storm (its mnemonic labels the violation).
    open_missing(&action.path, "control", 0..1);
    poll("the control violation", Duration::from_secs(10), || {
        agent.metric(
            "build_monitor_violations_total",
            &[("kind", "undeclared_file"), ("mnemonic", "Storm")],
        ) == 1.0
    });
    let rss_before = agent.peak_rss_kib();

    let started = Instant::now();
    open_missing(&action.path, "storm", 0..STORM);
    let total = f64::from(STORM + 1);
    poll("every violation counted", Duration::from_secs(120), || {
        agent.metric(
            "build_monitor_violations_total",
            &[("kind", "undeclared_file"), ("mnemonic", "Storm")],
        ) == total
    });
    let rss_after = agent.peak_rss_kib();
    let judged = started.elapsed();
    let (status, stderr) = agent.stop();
    assert!(status.success(), "monitor exit {status}: {stderr}");

    check_storm(&file, rss_before, rss_after, judged);
}

/// The storm's alerts: the budget, then summaries; exact counts; memory.
fn check_storm(file: &Path, rss_before: u64, rss_after: u64, judged: Duration) {
    let alerts = testkit::monitor::read_alerts(file).expect("alert file");
    let bytes = fs::metadata(file).unwrap().len();
    let ours: Vec<_> = alerts
        .iter()
        .filter(|a| a["action"]["id"] == "storm-1")
        .collect();
    let (summaries, single): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = ours
        .iter()
        .copied()
        .partition(|a| a.get("summary").is_some());
    let counted: u64 = ours.iter().map(|a| a["count"].as_u64().unwrap()).sum();
    let suppressed: u64 = summaries
        .iter()
        .map(|a| a["summary"]["suppressed"].as_u64().unwrap())
        .sum();
    eprintln!(
        "storm: {} lines ({bytes} bytes), {} single + {} summaries, peak RSS {rss_before} -> {rss_after} KiB, judged in {judged:?}",
        alerts.len(),
        single.len(),
        summaries.len()
    );
    assert!(
        single.len() as u64 <= BUDGET,
        "{} single alerts",
        single.len()
    );
    assert_eq!(single.len() as u64, BUDGET, "the budget is used up first");
    assert!(!summaries.is_empty());
    assert_eq!(
        counted,
        u64::from(STORM) + 1,
        "every event in exactly one count"
    );
    assert_eq!(suppressed + single.len() as u64, u64::from(STORM) + 1);
    for s in &summaries {
        assert_eq!(s["summary"]["prefix"], "/nonexistent/storm/**", "{s}");
        assert_eq!(s["count"], s["summary"]["suppressed"]);
        assert_eq!(s["node"], "node-under-test");
    }
    assert!(
        rss_after.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KIB,
        "peak RSS grew {rss_before} -> {rss_after} KiB"
    );
}

/// A loopback HTTP receiver (python's http.server): appends each request
/// body as one line to `log`, answers 200.
fn receiver(port: u16, log: &Path) -> Child {
    receiver_tls(port, log, None)
}

/// As `receiver`, over TLS with `cert_and_key` (PEM files) when given.
fn receiver_tls(port: u16, log: &Path, cert_and_key: Option<(&Path, &Path)>) -> Child {
    let script = r#"
import http.server, sys
log = open(sys.argv[2], "a")
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        log.write(self.headers.get("Authorization", "-") + "\t" + body.decode() + "\n")
        log.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 3:
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
    let mut args = vec![port.to_string(), log.display().to_string()];
    if let Some((cert, key)) = cert_and_key {
        args.push(cert.display().to_string());
        args.push(key.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python(script, &args)
        .stdout(Stdio::null())
        .spawn()
        .expect("start receiver")
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every alert the receiver got, in arrival order, with the request's
/// Authorization header.
fn received(log: &Path) -> Vec<(String, serde_json::Value)> {
    let Ok(f) = fs::File::open(log) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in BufReader::new(f).lines() {
        let line = line.unwrap();
        let (auth, body) = line.split_once('\t').unwrap();
        let batch: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        out.extend(batch.into_iter().map(|a| (auth.to_string(), a)));
    }
    out
}

fn webhook_alerts(spool: &Path, port: u16, token: &Path, extra: &str) -> String {
    format!(
        "stdout = false\nfold_window_ms = 100\n[alerts.webhook]\nurl = \"http://127.0.0.1:{port}/alerts\"\n\
         bearer_token_file = \"{}\"\nspool_dir = \"{}\"\nbatch_max = 50\n{extra}",
        token.display(),
        spool.display()
    )
}

#[test]
fn webhook_delivers_every_alert_once_in_order_across_an_outage_and_a_restart() {
    require_root();
    let parent = test_parent("webhook");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let token = dir.path().join("token");
    fs::write(&token, "s3cret\n").unwrap();
    let port = free_port();
    let log = dir.path().join("received.txt");
    let config = webhook_alerts(&spool, port, &token, "");
    let action = parent.child("burst-1");
    let wait_counted = |agent: &Agent, n: f64| {
        poll("violations counted", Duration::from_secs(20), || {
            agent.metric(
                "build_monitor_violations_total",
                &[("kind", "undeclared_file"), ("mnemonic", "Storm")],
            ) == n
        });
    };

    // First monitor: the receiver is down; half the burst goes to the spool.
    let first = Agent::start(dir.path(), &parent.path, &config);
    declare(dir.path(), &action.path, "//pkg:burst");
    open_missing(&action.path, "burst", 0..200);
    wait_counted(&first, 200.0);
    let (status, stderr) = first.stop();
    assert!(status.success(), "{stderr}");
    assert!(fs::read_dir(&spool).unwrap().count() > 0, "spool is empty");

    // Restarted on the same spool: the rest of the burst.
    let second = Agent::start(dir.path(), &parent.path, &config);
    open_missing(&action.path, "burst", 200..400);
    wait_counted(&second, 200.0);

    // What the first run left in the spool counts as queued in the second.
    poll("all 400 alerts queued", Duration::from_secs(10), || {
        second.metric("build_monitor_alerts_queued", &[("sink", "webhook")]) == 400.0
    });
    let up = Instant::now();
    let _receiver = KillOnDrop(receiver(port, &log));
    poll("every alert delivered", Duration::from_secs(60), || {
        received(&log).len() >= 400
    });
    let delivered_in = up.elapsed();
    poll("the spool emptied", Duration::from_secs(10), || {
        second.metric("build_monitor_alerts_queued", &[("sink", "webhook")]) == 0.0
    });
    let accepted = second.metric("build_monitor_alerts_total", &[("sink", "webhook")]);
    let dropped = second.metric("build_monitor_alerts_dropped_total", &[("sink", "webhook")]);
    // Stopped, the monitor sends nothing more: what the receiver has is all.
    let (status, stderr) = second.stop();
    assert!(status.success(), "{stderr}");
    let got = received(&log);
    let paths: Vec<String> = got
        .iter()
        .map(|(_, a)| a["file"]["path"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..400)
        .map(|i| format!("/nonexistent/burst/{i}"))
        .collect();
    assert_eq!(paths, expected, "every alert exactly once, in order");
    let mut ids: Vec<&str> = got.iter().map(|(_, a)| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 400, "ids are unique");
    assert!(got.iter().all(|(auth, _)| auth == "Bearer s3cret"));
    assert_eq!(accepted, 400.0);
    assert_eq!(dropped, 0.0);
    eprintln!("webhook: 400 alerts delivered {delivered_in:?} after the receiver came up");
}

#[test]
fn a_full_spool_drops_what_does_not_fit_and_counts_it() {
    require_root();
    let parent = test_parent("spoolfull");
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let token = dir.path().join("token");
    fs::write(&token, "t").unwrap();
    let port = free_port();
    let log = dir.path().join("received.txt");
    let config = webhook_alerts(&spool, port, &token, "spool_max_bytes = 8000\n");
    let agent = Agent::start(dir.path(), &parent.path, &config);
    let action = parent.child("full-1");
    declare(dir.path(), &action.path, "//pkg:full");
    open_missing(&action.path, "full", 0..50);
    poll("alerts spooled or dropped", Duration::from_secs(20), || {
        agent.metric(
            "build_monitor_violations_total",
            &[("kind", "undeclared_file"), ("mnemonic", "Storm")],
        ) == 50.0
            && agent.metric("build_monitor_alerts_dropped_total", &[("sink", "webhook")]) > 0.0
    });
    let _receiver = KillOnDrop(receiver(port, &log));
    let mut dropped = 0;
    poll(
        "every alert delivered or dropped",
        Duration::from_secs(60),
        || {
            dropped =
                agent.metric("build_monitor_alerts_dropped_total", &[("sink", "webhook")]) as usize;
            received(&log).len() + dropped == 50
        },
    );
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    let got = received(&log);
    let paths: Vec<String> = got
        .iter()
        .map(|(_, a)| a["file"]["path"].as_str().unwrap().to_string())
        .collect();
    // In order, each once; the oldest kept (what came later than a full
    // spool could take was dropped).
    let numbers: Vec<u32> = paths
        .iter()
        .map(|p| {
            p.strip_prefix("/nonexistent/full/")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    assert_eq!(numbers.first(), Some(&0));
    assert_eq!(numbers.len() + dropped, 50);
    assert!(dropped > 0 && dropped < 50, "{dropped}");
}

/// A real Alertmanager on loopback with the shipped route config and a
/// temporary storage, once it answers /-/ready.
fn start_alertmanager(bin: &Path, dir: &Path) -> (KillOnDrop, u16) {
    let am_config = dir.join("alertmanager.yml");
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/alertmanager/alertmanager.yml"),
        &am_config,
    )
    .unwrap();
    let am_port = free_port();
    let am = KillOnDrop(
        Command::new(bin)
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("am.log")).unwrap())
            .spawn()
            .expect("start alertmanager"),
    );
    let am_addr = SocketAddr::from(([127, 0, 0, 1], am_port));
    poll("alertmanager ready", Duration::from_secs(30), || {
        matches!(http_get(am_addr, "/-/ready"), Some((200, _)))
    });
    (am, am_port)
}

#[test]
fn alertmanager_shows_the_alert_with_its_labels() {
    require_root();
    let am_bin = Path::new("/usr/bin/prometheus-alertmanager");
    assert!(
        am_bin.exists(),
        "prometheus-alertmanager not installed (cargo xtask setup)"
    );
    let parent = test_parent("alertmanager");
    let dir = tempfile::tempdir().unwrap();
    let (am, am_port) = start_alertmanager(am_bin, dir.path());
    let am_addr = SocketAddr::from(([127, 0, 0, 1], am_port));
    let config = format!(
        "stdout = false\nfold_window_ms = 100\n[alerts.alertmanager]\nurl = \"http://127.0.0.1:{am_port}\"\nspool_dir = \"{}\"\n",
        dir.path().join("spool").display()
    );
    let agent = Agent::start(dir.path(), &parent.path, &config);
    let action = parent.child("am-1");
    declare(dir.path(), &action.path, "//pkg:am");
    open_missing(&action.path, "am", 0..2);
    let mut found = Vec::new();
    poll(
        "both alerts in Alertmanager",
        Duration::from_secs(30),
        || {
            let Some((200, body)) = http_get(am_addr, "/api/v2/alerts") else {
                return false;
            };
            let alerts: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
            found = alerts
                .into_iter()
                .filter(|a| a["labels"]["action"] == "am-1")
                .collect();
            found.len() == 2
        },
    );
    let mut targets: Vec<&str> = found
        .iter()
        .map(|a| a["labels"]["target"].as_str().unwrap())
        .collect();
    targets.sort_unstable();
    assert_eq!(targets, ["/nonexistent/am/0", "/nonexistent/am/1"]);
    for a in &found {
        let l = &a["labels"];
        assert_eq!(l["alertname"], "BuildMonitorViolation");
        assert_eq!(l["kind"], "undeclared_file");
        assert_eq!(l["mnemonic"], "Storm");
        assert_eq!(l["node"], "node-under-test");
        assert_eq!(l["label"], "//pkg:am");
        let inner: serde_json::Value =
            serde_json::from_str(a["annotations"]["alert"].as_str().unwrap()).unwrap();
        assert_eq!(inner["file"]["path"], l["target"]);
    }
    assert_eq!(
        agent.metric("build_monitor_alerts_total", &[("sink", "alertmanager")]),
        2.0
    );
    // The node says what runs on it.
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let info = |hook| {
        agent.metric(
            "build_monitor_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("kernel", release.trim()),
                ("hook", hook),
            ],
        )
    };
    assert_eq!(info("tp_btf") + info("raw_tp"), 1.0);
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    drop(am);
}

/// `openssl req -x509` with a new RSA key: a certificate valid for a day.
fn openssl(args: &[&str], key: &Path, cert: &Path) {
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(args)
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn webhook_over_tls_trusts_the_given_ca_file() {
    require_root();
    let parent = test_parent("webhooktls");
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    openssl(&["-subj", "/CN=test-ca"], &ca_key, &ca);
    let ca_args = [
        "-CA",
        ca.to_str().unwrap(),
        "-CAkey",
        ca_key.to_str().unwrap(),
    ];
    let leaf = [
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ][..],
        &["-addext", "basicConstraints=critical,CA:FALSE"],
        &ca_args,
    ]
    .concat();
    openssl(&leaf, &key, &cert);
    let port = free_port();
    let log = dir.path().join("received.txt");
    let _receiver = KillOnDrop(receiver_tls(port, &log, Some((&cert, &key))));
    let config = format!(
        "stdout = false\nfold_window_ms = 100\n[alerts.webhook]\nurl = \"https://127.0.0.1:{port}/alerts\"\n\
         ca_file = \"{}\"\nspool_dir = \"{}\"\n",
        ca.display(),
        dir.path().join("spool").display()
    );
    let agent = Agent::start(dir.path(), &parent.path, &config);
    let action = parent.child("tls-1");
    declare(dir.path(), &action.path, "//pkg:tls");
    open_missing(&action.path, "tls", 0..3);
    let arrived = wait_until(Duration::from_secs(30), || received(&log).len() >= 3);
    assert!(
        arrived,
        "{}",
        fs::read_to_string(&agent.stderr).unwrap_or_default()
    );
    let (status, stderr) = agent.stop();
    assert!(status.success(), "{stderr}");
    let paths: Vec<String> = received(&log)
        .iter()
        .map(|(_, a)| a["file"]["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        [
            "/nonexistent/tls/0",
            "/nonexistent/tls/1",
            "/nonexistent/tls/2"
        ]
    );
}
