//! Egress at the socket layer, end to end under `monitor exec`: a job
//! reaches an allowed and a disallowed loopback port by each route — TCP
//! `connect`, UDP `sendto`, UDP `sendmsg`, a connect submitted through
//! io_uring (a small C program built here with gcc) and TCP fast open
//! (`sendto` with `MSG_FASTOPEN`) — once observed, once
//! with `--enforce`. Loopback listeners record what actually arrived.
use std::{
    fs,
    io::Read as _,
    net::{TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use monitor_integration_tests::*;
use serde_json::Value;

/// The routes, in the order the job takes them.
const ROUTES: [(&str, &str); 5] = [
    ("connect", "tcp"),
    ("sendto", "udp"),
    ("sendmsg", "udp"),
    ("uring", "tcp"),
    ("fastopen", "tcp"),
];

/// A loopback listener that keeps every byte it receives.
struct Sink {
    port: u16,
    got: Arc<Mutex<Vec<u8>>>,
}

/// A UDP socket on a port below the ephemeral range (32768 and up here)
/// whose TCP twin is free too: no connection takes such a port as its
/// local one, so a TCP listener can be bound on the same number later.
fn udp_below_ephemeral() -> UdpSocket {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (0..2_000u16)
        .map(|i| 20_000 + (start - 20_000 + i * 7) % 12_000)
        .find_map(|port| {
            let udp = UdpSocket::bind(("127.0.0.1", port)).ok()?;
            TcpListener::bind(("127.0.0.1", port)).ok()?;
            Some(udp)
        })
        .expect("a free UDP and TCP port between 20000 and 32000")
}

impl Sink {
    fn new(proto: &str) -> Sink {
        let got = Arc::new(Mutex::new(Vec::new()));
        let keep = got.clone();
        let port = if proto == "tcp" {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            thread::spawn(move || {
                for mut conn in l.incoming().flatten() {
                    let mut buf = Vec::new();
                    let _ = conn.read_to_end(&mut buf);
                    keep.lock().unwrap().extend_from_slice(&buf);
                }
            });
            port
        } else {
            let s = if proto == "udp-below-ephemeral" {
                udp_below_ephemeral()
            } else {
                UdpSocket::bind("127.0.0.1:0").unwrap()
            };
            let port = s.local_addr().unwrap().port();
            thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while let Ok(n) = s.recv(&mut buf) {
                    keep.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
            port
        };
        Sink { port, got }
    }

    fn received(&self) -> String {
        String::from_utf8_lossy(&self.got.lock().unwrap()).into_owned()
    }

    /// Polls until `text` arrived (deadline 10 s).
    fn wait_for(&self, text: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.received().contains(text) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

/// gcc builds the io_uring connect helper (raw syscalls, no liburing).
fn build_uring_helper(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("egress/uring_connect.c");
    let bin = dir.join("uring_connect");
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("gcc (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

/// The job: one payload per route and port, printing `route port ok|errno`.
/// It also talks to a listener of its own on loopback (internal traffic,
/// never egress, never blocked).
const JOB: &str = r#"
import errno, socket, subprocess, sys, threading
uring, ports = sys.argv[1], sys.argv[2:]
def attempt(route, port, fn):
    try:
        fn()
        print(route, port, "ok", flush=True)
    except OSError as e:
        print(route, port, errno.errorcode.get(e.errno, e.errno), flush=True)
def tcp(port, payload):
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(payload)
def sendto(port, payload):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(payload, ("127.0.0.1", port))
def sendmsg(port, payload):
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendmsg([payload], [], 0, ("127.0.0.1", port))
def fastopen(port, payload):
    with socket.socket() as s:
        s.sendto(payload, socket.MSG_FASTOPEN, ("127.0.0.1", port))
def via_uring(port):
    r = subprocess.run([uring, str(port)], capture_output=True, text=True)
    if r.returncode != 0:
        raise OSError(-int(r.stdout.strip().split("=")[1]) if "res=" in r.stdout else 0, r.stdout + r.stderr)
routes = {"connect": lambda p: tcp(p, b"connect"), "sendto": lambda p: sendto(p, b"sendto"),
          "sendmsg": lambda p: sendmsg(p, b"sendmsg"), "uring": via_uring,
          "fastopen": lambda p: fastopen(p, b"fastopen")}
for i, (route, fn) in enumerate(routes.items()):
    for port in ports[2 * i: 2 * i + 2]:
        attempt(route, port, lambda: fn(int(port)))
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen()
threading.Thread(target=lambda: own.accept()[0].recv(16), daemon=True).start()
attempt("internal", own.getsockname()[1], lambda: tcp(own.getsockname()[1], b"internal"))
"#;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    alerts: Vec<Value>,
    /// The report's egress inventory.
    egress: Vec<Value>,
}

fn run_job(enforce: bool, allowed: &[&Sink], denied: &[&Sink], uring: &Path) -> Run {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("monitor.toml");
    let rules: Vec<String> = allowed
        .iter()
        .map(|s| format!("{{ cidr = \"127.0.0.1/32\", port = {} }}", s.port))
        .collect();
    fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"off\"\n[network]\nallow = [{}]\n",
            rules.join(", ")
        ),
    )
    .unwrap();
    let report = tmp.path().join("report.json");
    let mut ports = Vec::new();
    for (a, d) in allowed.iter().zip(denied) {
        ports.push(a.port.to_string());
        ports.push(d.port.to_string());
    }
    let mut cmd = Command::new(monitor_bin());
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["exec", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report);
    if enforce {
        cmd.arg("--enforce");
    }
    let out: Output = cmd
        .args(["--", "/usr/bin/python3", "-S", "-c", JOB])
        .arg(uring)
        .args(&ports)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
        alerts: report["alerts"].as_array().cloned().unwrap_or_default(),
        egress: report["egress"].as_array().cloned().unwrap_or_default(),
    }
}

fn alerts_to_port(alerts: &[Value], port: u16) -> Vec<&Value> {
    alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress" && a["net"]["port"] == port)
        .collect()
}

struct Setup {
    _tmp: tempfile::TempDir,
    uring: PathBuf,
    allowed: Vec<Sink>,
    denied: Vec<Sink>,
}

fn setup() -> Setup {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let uring = build_uring_helper(tmp.path());
    let allowed = ROUTES.iter().map(|(_, p)| Sink::new(p)).collect();
    let denied = ROUTES.iter().map(|(_, p)| Sink::new(p)).collect();
    Setup {
        _tmp: tmp,
        uring,
        allowed,
        denied,
    }
}

fn check_alerts(run: &Run, s: &Setup, verdict: &str) {
    for ((route, proto), (a, d)) in ROUTES.iter().zip(s.allowed.iter().zip(&s.denied)) {
        assert!(
            alerts_to_port(&run.alerts, a.port).is_empty(),
            "{route}: allowed port alerted: {:#?}",
            run.alerts
        );
        let hits = alerts_to_port(&run.alerts, d.port);
        assert_eq!(hits.len(), 1, "{route}: {:#?}\n{}", run.alerts, run.stderr);
        assert_eq!(hits[0]["net"]["proto"], *proto, "{route}");
        assert_eq!(hits[0]["net"]["addr"], "127.0.0.1", "{route}");
        assert_eq!(hits[0]["verdict"], verdict, "{route}");
        let op = if proto == &"udp" { "send" } else { "connect" };
        assert_eq!(hits[0]["net"]["op"], op, "{route}");
    }
    assert_eq!(
        run.alerts.len(),
        ROUTES.len(),
        "only the denied ports (the job's own listener is not egress): {:#?}",
        run.alerts
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("internal ") && l.ends_with(" ok")),
        "the job's own loopback traffic must pass: {}",
        run.stdout
    );
}

/// The report's egress inventory lists every destination, allowed or not,
/// and not the job's own listener.
fn check_inventory(run: &Run, s: &Setup) {
    let entry = |port: u16| {
        let suffix = format!(":{port}");
        run.egress
            .iter()
            .find(|d| d["destination"].as_str().unwrap().ends_with(&suffix))
            .unwrap_or_else(|| panic!("port {port} not in the inventory: {:#?}", run.egress))
    };
    for (a, d) in s.allowed.iter().zip(&s.denied) {
        assert_eq!(entry(a.port)["verdict"], "allowed");
        assert_eq!(entry(d.port)["verdict"], "blocked");
    }
    assert_eq!(
        run.egress.len(),
        2 * ROUTES.len(),
        "every destination once, the internal one not at all: {:#?}",
        run.egress
    );
}

#[test]
fn every_route_is_seen_and_reaches_the_listener_without_enforce() {
    let s = setup();
    let allowed: Vec<&Sink> = s.allowed.iter().collect();
    let denied: Vec<&Sink> = s.denied.iter().collect();
    let run = run_job(false, &allowed, &denied, &s.uring);
    assert_eq!(run.code, Some(1), "violations exit 1: {}", run.stderr);
    for ((route, _), (a, d)) in ROUTES.iter().zip(s.allowed.iter().zip(&s.denied)) {
        for (port, sink) in [(a.port, a), (d.port, d)] {
            assert!(
                run.stdout.contains(&format!("{route} {port} ok")),
                "{route} to {port} should succeed: {}",
                run.stdout
            );
            let payload = if *route == "uring" { "uring" } else { route };
            assert!(sink.wait_for(payload), "{route}: {port} received nothing");
        }
    }
    check_alerts(&run, &s, "observed");
}

#[test]
fn enforce_blocks_every_disallowed_route_in_the_kernel_and_passes_the_rest() {
    let s = setup();
    let allowed: Vec<&Sink> = s.allowed.iter().collect();
    let denied: Vec<&Sink> = s.denied.iter().collect();
    let run = run_job(true, &allowed, &denied, &s.uring);
    assert_eq!(run.code, Some(1), "violations exit 1: {}", run.stderr);
    for ((route, _), (a, d)) in ROUTES.iter().zip(s.allowed.iter().zip(&s.denied)) {
        assert!(
            run.stdout.contains(&format!("{route} {} ok", a.port)),
            "{route}: allowed port must pass: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains(&format!("{route} {} EPERM", d.port)),
            "{route}: denied port must fail with EPERM inside the job: {}",
            run.stdout
        );
        let payload = if *route == "uring" { "uring" } else { route };
        // Positive control first: the allowed payload arrived, so a denied
        // one sent before it would have too.
        assert!(
            a.wait_for(payload),
            "{route}: allowed port received nothing"
        );
        assert_eq!(d.received(), "", "{route}: blocked traffic arrived");
    }
    check_alerts(&run, &s, "blocked");
    check_inventory(&run, &s);
    eprintln!("job output:\n{}", run.stdout);
}

/// `monitor exec` with `args`, a UDP flood of `sends` datagrams to an
/// allowed loopback port, and `env`; returns (exit code, stderr, report).
fn flood(args: &[&str], env: &[(&str, &str)], sends: u32) -> (Option<i32>, String, Value) {
    let sink = Sink::new("udp");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("monitor.toml");
    fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"off\"\n[network]\nallow = [{{ cidr = \"127.0.0.1/32\", port = {} }}]\n",
            sink.port
        ),
    )
    .unwrap();
    let report = tmp.path().join("report.json");
    let script = "import socket, sys\n\
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        for i in range(int(sys.argv[2])): s.sendto(b'x', ('127.0.0.1', int(sys.argv[1])))\n";
    let out = Command::new(monitor_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(env.iter().copied())
        .args(["exec", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .args(args)
        .args(["--", "/usr/bin/python3", "-S", "-c", script])
        .arg(sink.port.to_string())
        .arg(sends.to_string())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
    (out.status.code(), stderr, report)
}

/// Incomplete is not clean: events lost to a full ring (forced with a tiny
/// ring) make a violation-free job exit 1 saying why, unless
/// `--allow-incomplete`; the same job with the normal ring is complete.
#[test]
fn lost_events_make_the_job_incomplete_unless_allowed() {
    require_root();
    let (code, stderr, report) = flood(&[], &[], 20000);
    assert_eq!(code, Some(0), "positive control, normal ring: {stderr}");
    let c = &report["completeness"];
    assert_eq!(c["complete"], true, "{c:#}");
    assert!(
        c["events_by_kind"]["net"].as_u64().unwrap() >= 20000,
        "{c:#}"
    );
    assert!(
        c["hooks"].to_string().contains("connect4"),
        "hooks live: {c:#}"
    );

    let tiny = [("MONITOR_RING_BYTES", "4096")];
    let (code, stderr, report) = flood(&[], &tiny, 20000);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("incomplete"), "{stderr}");
    let c = &report["completeness"];
    assert_eq!(c["complete"], false, "{c:#}");
    assert!(
        c["events_lost"]["ringbuf_full"].as_u64().unwrap() > 0,
        "{c:#}"
    );
    assert_eq!(report["violations"], 0);

    let (code, stderr, _) = flood(&["--allow-incomplete"], &tiny, 20000);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("incomplete"), "still said: {stderr}");
}

/// Precedence: the command's own failure passes through even with
/// violations; violations use `--violation-exit-code`.
#[test]
fn the_commands_exit_code_comes_first_then_violations() {
    require_root();
    let denied = Sink::new("tcp");
    let script = "import socket, sys\n\
        socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()\n\
        sys.exit(int(sys.argv[2]))\n";
    let run = |code: &str, extra: &[&str]| {
        Command::new(monitor_bin())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("exec")
            .args(extra)
            .args(["--", "/usr/bin/python3", "-S", "-c", script])
            .arg(denied.port.to_string())
            .arg(code)
            .output()
            .unwrap()
    };
    let out = run("7", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(
        stderr.contains("1 violation"),
        "violations still reported: {stderr}"
    );
    let out = run("0", &["--violation-exit-code", "9"]);
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("0", &[]);
    assert_eq!(out.status.code(), Some(1));
}

/// Connects to each loopback port after the first argument, sends that
/// argument, and prints `port ok` or `port ERRNO`.
const CONNECT_EACH: &str = "import errno, socket, sys\n\
    for p in sys.argv[2:]:\n\
    \x20   try:\n\
    \x20       with socket.create_connection(('127.0.0.1', int(p))) as s: s.sendall(sys.argv[1].encode())\n\
    \x20       print(p, 'ok')\n\
    \x20   except OSError as e: print(p, errno.errorcode[e.errno])\n";

/// The node agent enforces too (`[network] enforce = true`): a connect from
/// an action below a configured parent to a disallowed port fails with
/// EPERM and is alerted as blocked; the allowed port passes.
#[test]
fn node_agent_blocks_with_enforce_in_its_config() {
    require_root();
    let allowed = Sink::new("tcp");
    let denied = Sink::new("tcp");
    let parent = test_parent("enforce");
    let daemon = Daemon::start(
        &parent.path,
        &format!(
            "[network]\nenforce = true\nallow = [{{ cidr = \"127.0.0.1/32\", port = {} }}]\n",
            allowed.port
        ),
    );
    let action = parent.child("enforced-1");
    daemon.declare(&action.path, "//pkg:enforced", "Genrule", &[], "");
    let out = run_in(
        &action.path,
        &mut python(
            CONNECT_EACH,
            &["agent", &allowed.port.to_string(), &denied.port.to_string()],
        ),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{} ok", allowed.port)),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("{} EPERM", denied.port)),
        "{stdout}"
    );
    assert!(allowed.wait_for("agent"), "positive control");
    assert_eq!(denied.received(), "");
    daemon.wait_for_alerts("the blocked connect's alert", |a| {
        !alerts_to_port(a, denied.port).is_empty()
    });
    let (_, alerts, stderr) = daemon.stop();
    let hits = alerts_to_port(&alerts, denied.port);
    assert_eq!(hits.len(), 1, "{alerts:#?}\n{stderr}");
    assert_eq!(hits[0]["verdict"], "blocked");
    assert_eq!(hits[0]["action"]["label"], "//pkg:enforced");
    assert!(alerts_to_port(&alerts, allowed.port).is_empty());
}

/// A listener an action bound before the node agent started (a Bazel
/// server that a restarted agent finds running) is still the action's own:
/// under enforcement, its loopback connects to it pass, while a connect to a
/// port nobody in the action listens on is refused (the positive control).
#[test]
fn listeners_bound_before_the_agent_started_stay_internal_under_enforce() {
    require_root();
    let denied = Sink::new("tcp");
    let parent = test_parent("early-listener");
    let action = parent.child("early-1");
    let script = "import errno, socket, sys, threading\n\
        l = socket.create_server(('127.0.0.1', 0))\n\
        threading.Thread(target=lambda: [l.accept() for _ in range(9)], daemon=True).start()\n\
        print(l.getsockname()[1], flush=True)\n\
        sys.stdin.readline()\n\
        for p in (l.getsockname()[1], int(sys.argv[1])):\n\
        \x20   try:\n\
        \x20       with socket.create_connection(('127.0.0.1', p)) as s: s.sendall(b'early')\n\
        \x20       print(p, 'ok', flush=True)\n\
        \x20   except OSError as e: print(p, errno.errorcode[e.errno], flush=True)\n";
    let mut child = in_cgroup(
        &mut python(script, &[&denied.port.to_string()]),
        &action.path,
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut own = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut own).unwrap();
    let own = own.trim().to_string();
    // The listener is bound; only now does the agent start.
    let daemon = Daemon::start(&parent.path, "[network]\nenforce = true\n");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"go\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(rest.contains(&format!("{own} ok")), "{rest}");
    assert!(rest.contains(&format!("{} EPERM", denied.port)), "{rest}");
    daemon.wait_for_alerts("the blocked connect's alert", |a| {
        !alerts_to_port(a, denied.port).is_empty()
    });
    let (_, alerts, stderr) = daemon.stop();
    assert!(stderr.contains("1 listener(s) bound before"), "{stderr}");
    let own: u16 = own.parse().unwrap();
    assert!(alerts_to_port(&alerts, own).is_empty(), "{alerts:#?}");
    assert_eq!(denied.received(), "");
}

/// On the node agent, what a declaration file grants one action is
/// enforced in the kernel: its `network`, and the `[[network.rule]]`
/// entries its label matches. Each action reaches its grant and is refused
/// the other's (the positive control of each refusal is the other action's
/// success).
#[test]
fn declared_grants_are_enforced_per_action_on_the_node_agent() {
    require_root();
    let by_rule = Sink::new("tcp");
    let by_declaration = Sink::new("tcp");
    let parent = test_parent("grants");
    let daemon = Daemon::start(
        &parent.path,
        &format!(
            "[network]\nenforce = true\n[[network.rule]]\ntargets = [\"//granted/...\"]\nallow = [{{ cidr = \"127.0.0.1/32\", port = {} }}]\n",
            by_rule.port
        ),
    );
    let ports = [by_rule.port.to_string(), by_declaration.port.to_string()];
    let declared = format!(
        "{{\"cidr\": \"127.0.0.1/32\", \"port\": {}}}",
        by_declaration.port
    );
    let cases = [
        (
            "by-rule",
            "//granted/pkg:t",
            "",
            [("ok", true), ("EPERM", false)],
        ),
        (
            "by-declaration",
            "//other:t",
            declared.as_str(),
            [("EPERM", false), ("ok", true)],
        ),
    ];
    for (name, label, network, outcomes) in cases {
        let action = parent.child(name);
        daemon.declare(&action.path, label, "Genrule", &[], network);
        let read = format!("{name}.json read");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !daemon.stderr_text().contains(&read) {
            assert!(
                Instant::now() < deadline,
                "{read}: {}",
                daemon.stderr_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
        let out = run_in(
            &action.path,
            &mut python(CONNECT_EACH, &[name, &ports[0], &ports[1]]),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        for (port, (outcome, _)) in ports.iter().zip(outcomes) {
            assert!(
                stdout.contains(&format!("{port} {outcome}")),
                "{name}: {stdout}"
            );
        }
    }
    assert!(by_rule.wait_for("by-rule") && by_declaration.wait_for("by-declaration"));
    assert!(!by_rule.received().contains("by-declaration"));
    assert!(!by_declaration.received().contains("by-rule"));
    daemon.stop();
}

/// An action's own listeners are keyed by protocol, address and port:
/// binding a host service's port on another loopback address, or in the
/// other protocol, does not make the service the action's own. glibc's UDP
/// probe of the action's own TCP listener passes (as `localhost` lookups
/// need), but a datagram sent on such a socket is judged by the backstop.
/// Observed, each route reaches its host service and alerts; enforced,
/// each is refused; the action's own listener, reached by name, passes
/// both times (the positive control). The UDP service's port is below the
/// ephemeral range, so that no connection holds its number as a local port
/// when the TCP listener binds it (seen twice with an ephemeral port:
/// `EADDRINUSE`, even with `SO_REUSEADDR`).
#[test]
fn binding_a_host_services_port_does_not_make_it_the_actions_own() {
    require_root();
    let script = "import errno, socket, sys\n\
        tcp, udp = int(sys.argv[1]), int(sys.argv[2])\n\
        def attempt(name, f):\n\
        \x20   try: f(); print(name, 'ok', flush=True)\n\
        \x20   except OSError as e: print(name, errno.errorcode[e.errno], flush=True)\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('127.0.0.1', tcp))\n\
        t = socket.socket(); t.bind(('127.0.0.2', tcp)); t.listen()\n\
        attempt('tcp', lambda: socket.create_connection(('127.0.0.1', tcp)).sendall(b'via-tcp'))\n\
        l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        l.bind(('127.0.0.1', udp)); l.listen()\n\
        p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        attempt('probe', lambda: p.connect(('127.0.0.1', udp)))\n\
        attempt('udp', lambda: p.send(b'via-probe'))\n\
        own = socket.create_server(('127.0.0.1', 0))\n\
        attempt('own', lambda: socket.create_connection(('localhost', own.getsockname()[1])))\n";
    for enforce in [false, true] {
        let (tcp, udp) = (Sink::new("tcp"), Sink::new("udp-below-ephemeral"));
        let mut cmd = Command::new(monitor_bin());
        cmd.arg("exec");
        if enforce {
            cmd.arg("--enforce");
        }
        let out = cmd
            .args(["--", "/usr/bin/python3", "-S", "-c", script])
            .args([tcp.port.to_string(), udp.port.to_string()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let (outcome, blocked) = if enforce { ("EPERM", 2) } else { ("ok", 0) };
        for line in ["tcp", "udp"].map(|r| format!("{r} {outcome}\n")) {
            assert!(stdout.contains(&line), "{line}: {stdout} {stderr}");
        }
        assert!(
            stdout.contains("probe ok\nudp") && stdout.contains("own ok\n"),
            "{stdout}"
        );
        if enforce {
            // Refused in the call itself: nothing can arrive later.
            assert_eq!(tcp.received() + &udp.received(), "");
        } else {
            assert!(tcp.wait_for("via-tcp") && udp.wait_for("via-probe"));
        }
        for (port, proto) in [(tcp.port, "tcp"), (udp.port, "udp")] {
            let sentence = format!("127.0.0.1:{port} over {proto}");
            assert!(stderr.contains(&sentence), "{sentence}: {stderr}");
        }
        assert_eq!(stderr.matches("does not allow").count(), 2, "{stderr}");
        assert_eq!(stderr.matches(" was blocked from ").count(), blocked);
    }
}

/// Unix-socket connects are egress too (seen at the syscall: aya 0.14
/// cannot attach `cgroup/connect_unix`, so they are reported, not
/// blocked): a listener outside the policy alerts with its path; one in
/// `network.allow_unix` and one the job itself listens on do not.
#[test]
fn unix_socket_connects_outside_the_policy_alert_with_the_path() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside.sock");
    let allowed = tmp.path().join("allowed.sock");
    let _l1 = std::os::unix::net::UnixListener::bind(&outside).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&allowed).unwrap();
    let config = tmp.path().join("monitor.toml");
    fs::write(
        &config,
        format!(
            "[metrics]\nlisten = \"off\"\n[network]\nallow_unix = [\"{}\"]\n",
            allowed.display()
        ),
    )
    .unwrap();
    let own = tmp.path().join("own.sock");
    let script = "import socket, sys\n\
        own = socket.socket(socket.AF_UNIX); own.bind(sys.argv[3]); own.listen()\n\
        for p in sys.argv[1:]:\n\
        \x20   c = socket.socket(socket.AF_UNIX); c.connect(p); c.close()\n\
        print('connected', flush=True)\n";
    let report = tmp.path().join("report.json");
    let out = Command::new(monitor_bin())
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["exec", "--enforce", "--config"])
        .arg(&config)
        .arg("--report")
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", script])
        .args([&outside, &allowed, &own])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connected"),
        "all three connects succeed (unix connects are not blocked): {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let alerts = report["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "only the outside socket: {alerts:#?}");
    let net = &alerts[0]["net"];
    assert_eq!(net["proto"], "unix");
    assert_eq!(net["family"], "unix");
    assert_eq!(net["addr"], outside.display().to_string());
    assert_eq!(net["result"], 0);
    assert_eq!(alerts[0]["verdict"], "observed");
}

/// A hostile action puts its `sockaddr_un` at the very end of readable
/// memory, with an address length that ends at the path's last byte (the
/// kernel needs no NUL): a read of the whole 108-byte path field would
/// fault there and lose the path. The monitor reads only the length given.
/// The positive control is the alert itself, with its path.
#[test]
fn a_unix_address_at_the_end_of_readable_memory_keeps_its_path() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let listener_path = tmp.path().join("edge.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&listener_path).unwrap();
    let script = "import ctypes, mmap, socket, sys\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        page = mmap.PAGESIZE\n\
        buf = mmap.mmap(-1, 2 * page)\n\
        base = ctypes.addressof(ctypes.c_char.from_buffer(buf))\n\
        assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0\n\
        sa = socket.AF_UNIX.to_bytes(2, 'little') + sys.argv[1].encode()\n\
        at = page - len(sa)\n\
        buf[at:page] = sa\n\
        s = socket.socket(socket.AF_UNIX)\n\
        r = libc.connect(s.fileno(), ctypes.c_void_p(base + at), len(sa))\n\
        print('connect', r, ctypes.get_errno(), flush=True)\n";
    let report = tmp.path().join("report.json");
    let out = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .args(["--", "/usr/bin/python3", "-S", "-c", script])
        .arg(&listener_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("connect 0 0"), "{stdout} {stderr}");
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let alerts = report["alerts"].as_array().unwrap();
    let addrs: Vec<&Value> = alerts.iter().map(|a| &a["net"]["addr"]).collect();
    assert!(
        addrs.contains(&&Value::from(listener_path.display().to_string())),
        "the connect's alert names the socket: {alerts:#?}"
    );
}

/// The same through the 32-bit ABI (`int $0x80`: `connect` and
/// `socketcall`), whose numbers mean other calls natively.
#[test]
fn ia32_unix_socket_connects_alert_with_the_path() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let by_connect = tmp.path().join("connect.sock");
    let by_socketcall = tmp.path().join("socketcall.sock");
    let _l1 = std::os::unix::net::UnixListener::bind(&by_connect).unwrap();
    let _l2 = std::os::unix::net::UnixListener::bind(&by_socketcall).unwrap();
    let program = tmp.path().join("ia32");
    compile_c("fixtures/ia32.c", &program, &["-static"]);
    let report = tmp.path().join("report.json");
    let out = Command::new(monitor_bin())
        .args(["exec", "--report"])
        .arg(&report)
        .arg("--")
        .arg(&program)
        .arg(format!("unix-connect:{}", by_connect.display()))
        .arg(format!("unix-socketcall:{}", by_socketcall.display()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let mut seen: Vec<String> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["net"]["proto"] == "unix")
        .map(|a| a["net"]["addr"].as_str().unwrap().to_string())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            by_connect.display().to_string(),
            by_socketcall.display().to_string()
        ],
        "{report:#}"
    );
}

/// `--learn`: the written policy makes the same job run clean.
#[test]
fn a_learned_policy_makes_the_same_job_run_clean() {
    require_root();
    let tcp = Sink::new("tcp");
    let udp = Sink::new("udp");
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("daemon.sock");
    let _unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let learned = tmp.path().join("learned.toml");
    let script = "import socket, sys\n\
        socket.create_connection(('127.0.0.1', int(sys.argv[1]))).close()\n\
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).sendto(b'x', ('::ffff:127.0.0.1', int(sys.argv[2])))\n\
        u = socket.socket(socket.AF_UNIX); u.connect(sys.argv[3]); u.close()\n";
    let run = |extra: &[&std::ffi::OsStr]| {
        Command::new(monitor_bin())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .arg("exec")
            .args(extra)
            .args(["--", "/usr/bin/python3", "-S", "-c", script])
            .arg(tcp.port.to_string())
            .arg(udp.port.to_string())
            .arg(&sock)
            .output()
            .unwrap()
    };
    let out = run(&["--learn".as_ref(), learned.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "three violations first: {stderr}"
    );
    assert!(stderr.contains("3 violation(s)"), "{stderr}");
    let text = fs::read_to_string(&learned).unwrap();
    assert!(
        text.contains(&format!(
            "network.allow 127.0.0.1/32 port {} (tcp)",
            tcp.port
        )),
        "{text}"
    );
    let check = Command::new(monitor_bin())
        .arg("check-config")
        .arg(&learned)
        .output()
        .unwrap();
    assert!(check.status.success(), "learned policy is a valid config");

    let out = run(&["--config".as_ref(), learned.as_os_str()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{text}");
    assert!(stderr.contains("no violations"), "{stderr}");
    assert!(udp.wait_for("x"), "positive control: the job ran");
}

/// ICMP "ping" sockets bypass the socket-address hooks; the
/// `cgroup_skb/egress` backstop sees their packets and, under `--enforce`,
/// drops them. The job pings inside a network namespace of its own (where
/// it may enable ping sockets for root), so the echo reply shows whether a
/// packet left.
#[test]
fn ping_socket_packets_are_seen_and_dropped_under_enforce() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("monitor.toml");
    fs::write(
        &config,
        "[metrics]\nlisten = \"off\"\n[network]\nallow = [{ cidr = \"127.0.0.3/32\" }]\n",
    )
    .unwrap();
    let script = "import errno, socket, struct, sys\n\
        for dest in sys.argv[1:]:\n\
        \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\n\
        \x20   s.settimeout(5)\n\
        \x20   try:\n\
        \x20       s.sendto(struct.pack('!BBHHH', 8, 0, 0, 0, 1) + b'MARK', (dest, 0)); s.recv(1500)\n\
        \x20       print(dest, 'reply', flush=True)\n\
        \x20   except OSError as e: print(dest, errno.errorcode.get(e.errno, e), flush=True)\n";
    let shell = format!(
        "ip link set lo up && echo '0 0' > /proc/sys/net/ipv4/ping_group_range && \
         exec /usr/bin/python3 -S -c \"{script}\" 127.0.0.2 127.0.0.3"
    );
    for (enforce, denied_outcome, verdict) in [
        (false, "127.0.0.2 reply", "observed"),
        (true, "127.0.0.2 EPERM", "blocked"),
    ] {
        let report = tmp.path().join("report.json");
        let mut cmd = Command::new(monitor_bin());
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .args(["exec", "--config"])
            .arg(&config)
            .arg("--report")
            .arg(&report);
        if enforce {
            cmd.arg("--enforce");
        }
        let out = cmd
            .args(["--", "/usr/bin/unshare", "-n", "/bin/sh", "-c", &shell])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains("127.0.0.3 reply"),
            "positive control, allowed ping answered: {stdout} {stderr}"
        );
        assert!(stdout.contains(denied_outcome), "{stdout} {stderr}");
        let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        let alerts = report["alerts"].as_array().unwrap();
        assert_eq!(alerts.len(), 1, "{alerts:#?}");
        assert_eq!(alerts[0]["net"]["proto"], "icmp");
        assert_eq!(alerts[0]["net"]["addr"], "127.0.0.2");
        assert_eq!(alerts[0]["verdict"], verdict);
    }
}

/// Packet sockets (`AF_PACKET`) send raw frames below every socket hook:
/// they are seen when made, natively, through the 32-bit ABI (`socket`
/// and `socketcall`) and through io_uring (`IORING_OP_SOCKET`, also with
/// no completion posted for its success), and under
/// `--enforce` the process that made one is killed (before it can send,
/// but for io_uring, where the socket exists when it is seen). The job runs in a network namespace of its
/// own, so its frame goes nowhere but its own loopback; the shell around the
/// three processes runs on (the positive control).
#[test]
fn packet_sockets_are_seen_and_their_maker_killed_under_enforce() {
    require_root();
    let tmp = tempfile::tempdir().unwrap();
    let ia32 = tmp.path().join("ia32");
    compile_c("fixtures/ia32.c", &ia32, &["-static"]);
    let uring = tmp.path().join("uring_open");
    compile_c("fixtures/uring_open.c", &uring, &[]);
    let script = "import socket\n\
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
        s.bind(('lo', 0))\n\
        s.send(bytes(12) + bytes.fromhex('88b5') + bytes(50))\n\
        print('sent', flush=True)\n";
    let shell = format!(
        "ip link set lo up; /usr/bin/python3 -S -c \"{script}\"; echo native $?; \
         {ia32} packet-socket:-; echo ia32 $?; {ia32} packet-socketcall:-; echo socketcall $?; \
         {uring} packet:-; echo uring $?; {uring} packetskip:-; echo uringskip $?",
        ia32 = ia32.display(),
        uring = uring.display()
    );
    for (enforce, outcome, verdict) in [(false, 0, "observed"), (true, 137, "blocked")] {
        let report = tmp.path().join("report.json");
        let mut cmd = Command::new(monitor_bin());
        cmd.args(["exec", "--report"]).arg(&report);
        if enforce {
            cmd.arg("--enforce");
        }
        let out = cmd
            .args(["--", "/usr/bin/unshare", "-n", "/bin/sh", "-c", &shell])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for route in ["native", "ia32", "socketcall", "uring", "uringskip"] {
            assert!(
                stdout.contains(&format!("{route} {outcome}\n")),
                "{route}: {stdout} {stderr}"
            );
        }
        assert_eq!(stdout.contains("sent"), !enforce, "{stdout}");
        let report: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        let alerts = report["alerts"].as_array().unwrap();
        let packet: Vec<&Value> = alerts
            .iter()
            .filter(|a| a["net"]["proto"] == "packet")
            .collect();
        assert_eq!(packet.len(), 1, "folded into one alert: {alerts:#?}");
        assert_eq!(packet[0]["count"], 5, "{alerts:#?}");
        assert_eq!(packet[0]["verdict"], verdict);
        assert_eq!(packet[0]["net"]["op"], "socket");
    }
}

/// The `@bazel` tier (`[[network.rule]] scope = "@bazel"`) is for a Bazel
/// job's own processes (outside every spawn) and is enforced in the kernel:
/// under `--enforce`, a job that `monitor exec` takes for Bazel (its program
/// is named `bazel-…`) reaches the port the tier allows and is refused the
/// other; the same job under another name is refused both (the tier is
/// what admitted it).
#[test]
fn the_bazel_tier_admits_the_bazel_jobs_own_traffic_in_the_kernel() {
    require_root();
    let allowed = Sink::new("tcp");
    let denied = Sink::new("tcp");
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("monitor.toml");
    fs::write(
        &config,
        format!(
            "[[network.rule]]\nscope = \"@bazel\"\nallow = [{{ cidr = \"127.0.0.1/32\", port = {} }}]\n",
            allowed.port
        ),
    )
    .unwrap();
    let fake_bazel = tmp.path().join("bazel-fake");
    std::os::unix::fs::symlink("/usr/bin/python3", &fake_bazel).unwrap();
    let script = "import socket, sys\n\
        for port in sys.argv[1:3]:\n    \
            try:\n        \
                s = socket.create_connection(('127.0.0.1', int(port))); s.sendall(sys.argv[3].encode()); s.close()\n    \
            except OSError as e:\n        \
                print(port, e)\n";
    let run = |program: &Path, tag: &str| {
        let report = tmp.path().join(format!("{tag}.json"));
        let out = Command::new(monitor_bin())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .args(["exec", "--enforce", "--config"])
            .arg(&config)
            .arg("--report")
            .arg(&report)
            .arg("--")
            .arg(program)
            .args(["-S", "-c", script])
            .args([
                allowed.port.to_string(),
                denied.port.to_string(),
                tag.into(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let report: Value = serde_json::from_slice(&fs::read(&report).unwrap_or_default())
            .unwrap_or_else(|e| panic!("no report ({e}): {stderr}"));
        let alerts = report["alerts"].as_array().cloned().unwrap_or_default();
        (out.status.code(), stderr, alerts)
    };

    let (code, stderr, alerts) = run(&fake_bazel, "server");
    assert!(allowed.wait_for("server"), "the tier admitted it: {stderr}");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        alerts_to_port(&alerts, allowed.port).is_empty(),
        "{alerts:#?}"
    );
    let refused = alerts_to_port(&alerts, denied.port);
    assert_eq!(refused.len(), 1, "positive control: {alerts:#?}");
    assert_eq!(refused[0]["verdict"], "blocked");
    assert_eq!(refused[0]["action"]["label"], "@bazel");

    let (code, stderr, alerts) = run(Path::new("/usr/bin/python3"), "command");
    assert_eq!(code, Some(1), "{stderr}");
    let refused = alerts_to_port(&alerts, allowed.port);
    assert_eq!(refused.len(), 1, "not a Bazel job: {alerts:#?}\n{stderr}");
    assert_eq!(refused[0]["verdict"], "blocked");
    assert!(!denied.received().contains("server"), "never let through");
    assert!(
        !allowed.received().contains("command"),
        "{}",
        allowed.received()
    );
}
