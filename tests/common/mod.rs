//! Helpers shared by the integration tests: a real monitor daemon started
//! from its binary, real cgroups and processes placed in them. The general
//! pieces live in `testkit`; these are thin, test-shaped wrappers that panic
//! (not `Result`) to keep backtraces.
pub mod bazel;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    time::Duration,
};

use serde_json::Value;
use testkit::{cgroup, http, monitor::Monitor};
pub use testkit::{prom::Metrics, wait::wait_until};

/// How long a test waits for something the monitor should do within a fold
/// window or two: generous for a loaded machine, yet a failure still ends.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The monitor binary: `MONITOR_BIN` (set by `cargo xtask test`), else the
/// one next to this test executable's target directory.
pub fn monitor_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MONITOR_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/monitor
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("monitor");
    assert!(
        bin.exists(),
        "monitor binary not found at {}; run `cargo xtask test`",
        bin.display()
    );
    bin
}

/// Runs the monitor binary with `args`; its output.
pub fn run_monitor<I: IntoIterator<Item = S>, S: AsRef<std::ffi::OsStr>>(args: I) -> Output {
    Command::new(monitor_bin())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running the monitor: {e}"))
}

/// Asserts that `out` is an exit with `code`, showing stderr if not.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compiles the C program `tests/<source>` with gcc (`extra` flags such as
/// `-static`) into `out`, creating its directory.
pub fn compile_c(source: &str, out: &Path, extra: &[&str]) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(source);
    if let Some(dir) = out.parent() {
        fs::create_dir_all(dir).unwrap();
    }
    let st = Command::new("gcc")
        .arg("-O1")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(&src)
        .status()
        .expect("gcc");
    assert!(st.success(), "gcc failed on {source}");
}

/// Integration tests load eBPF programs: without root they must fail, never
/// pass silently.
pub fn require_root() {
    // SAFETY: no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests need root (they load eBPF programs)"
    );
}

pub fn cgroup2_root() -> PathBuf {
    cgroup::v2_root().expect("cgroup2 must be mounted")
}

/// A cgroup that is removed (children first) when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(path: PathBuf) -> TestCgroup {
        let _ = cgroup::remove_tree(&path, Duration::from_secs(2));
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup { path }
    }

    pub fn child(&self, name: &str) -> TestCgroup {
        TestCgroup::create(self.path.join(name))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = cgroup::remove_tree(&self.path, Duration::from_secs(2));
    }
}

/// Makes `cmd` move itself into `cgroup` before exec. The environment is
/// cleared: cargo's `LD_LIBRARY_PATH` would make every dynamic loader probe
/// target/ (real undeclared opens the monitor rightly reports).
pub fn in_cgroup<'a>(cmd: &'a mut Command, cgroup: &Path) -> &'a mut Command {
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C");
    cgroup::join_on_spawn(cmd, cgroup).unwrap();
    cmd
}

/// Runs `cmd` inside `cgroup` and returns its output (panics if it could not
/// start).
pub fn run_in(cgroup: &Path, cmd: &mut Command) -> Output {
    in_cgroup(cmd, cgroup)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// As `run_in`, and the command must succeed.
pub fn run_ok_in(cgroup: &Path, cmd: &mut Command) {
    let out = run_in(cgroup, cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/usr/bin/python3 -S -c SCRIPT ARGS…` (system python: its files are under
/// the default `files.allow`).
pub fn python(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-S").arg("-c").arg(script).args(args);
    cmd
}

/// A loopback port that was free a moment ago (for connects that must find
/// nobody listening; daemons get theirs through `testkit::ports`).
pub fn free_port() -> u16 {
    testkit::ports::free_port().unwrap()
}

/// A loopback listener that accepts and closes connections in the
/// background for as long as the test runs.
pub fn listener() -> u16 {
    testkit::ports::listener().unwrap()
}

/// Plain HTTP GET to loopback; (status code, body), `None` if it failed.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http::get(addr, path, Duration::from_secs(5)).ok()
}

/// Value of one series in Prometheus text format, e.g.
/// `metric(body, "build_monitor_events_total", &[("kind", "file")])`;
/// 0 when the series is absent.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    testkit::prom::sum(body, name, labels)
}

/// A running `monitor run` with its own config, alert file and metrics port.
pub struct Daemon {
    monitor: Monitor,
    pub dir: tempfile::TempDir,
    pub metrics: SocketAddr,
    pub declarations: PathBuf,
}

impl Daemon {
    /// Starts the daemon watching `parent`, with `extra` appended to the
    /// config (e.g. a `[network]` section), and waits until it serves
    /// /healthz.
    pub fn start(parent: &Path, extra: &str) -> Daemon {
        Self::start_with(parent, extra, 300)
    }

    pub fn start_with(parent: &Path, extra: &str, fold_window_ms: u64) -> Daemon {
        Self::start_env(parent, extra, fold_window_ms, &[])
    }

    /// As `start_with`, with extra environment variables for the daemon.
    pub fn start_env(
        parent: &Path,
        extra: &str,
        fold_window_ms: u64,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let alerts = dir.path().join("alerts.jsonl");
        let declarations = dir.path().join("declarations");
        fs::create_dir_all(&declarations).unwrap();
        let config = |metrics: SocketAddr| {
            format!(
                "[attribution]\ncgroup_parents = [\"{}\"]\ndeclarations_dir = \"{}\"\ndeclaration_wait_ms = 1500\n\
                 [alerts]\nstdout = false\nfile = \"{}\"\nfold_window_ms = {fold_window_ms}\n\
                 [metrics]\nlisten = \"{metrics}\"\n{extra}\n",
                parent.display(),
                declarations.display(),
                alerts.display()
            )
        };
        let base = || {
            let mut cmd = Command::new(monitor_bin());
            cmd.envs(env.iter().copied()).stdout(Stdio::null());
            cmd
        };
        let monitor = Monitor::start(
            base,
            dir.path(),
            "monitor",
            config,
            &alerts,
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        Daemon {
            metrics: monitor.metrics,
            monitor,
            dir,
            declarations,
        }
    }

    /// The config file the daemon was started with (rewrite it, then
    /// [`Daemon::signal`] SIGHUP to reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("monitor.toml")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.monitor.pid()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&mut self, signal: libc::c_int) {
        let pid = self.monitor.daemon().id() as libc::pid_t;
        // SAFETY: plain syscall on our own child.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill({pid}, {signal})"
        );
    }

    /// What the daemon printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        self.monitor.stderr_text()
    }

    /// Writes a declaration file for `cgroup`.
    pub fn declare(
        &self,
        cgroup: &Path,
        label: &str,
        mnemonic: &str,
        inputs: &[&Path],
        network: &str,
    ) {
        let inputs: Vec<String> = inputs
            .iter()
            .map(|p| format!("{:?}", p.display().to_string()))
            .collect();
        let name = cgroup.file_name().unwrap().to_string_lossy().to_string();
        let text = format!(
            "{{\"cgroup\": {:?}, \"label\": {label:?}, \"mnemonic\": {mnemonic:?}, \"inputs\": [{}], \"network\": [{network}]}}",
            cgroup.display().to_string(),
            inputs.join(", ")
        );
        // Write then rename, as a well-behaved producer would.
        let tmp = self.declarations.join(format!(".{name}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.declarations.join(format!("{name}.json"))).unwrap();
    }

    /// As `declare` (label `//tests:t`, no network), then waits until the
    /// daemon says it read the file: what the action does afterwards is
    /// judged against it.
    pub fn declare_read(&self, cgroup: &Path, inputs: &[&Path]) {
        self.declare(cgroup, "//tests:t", "Genrule", inputs, "");
        let name = cgroup.file_name().unwrap().to_string_lossy().to_string();
        let needle = format!(
            "declaration {} read",
            self.declarations.join(format!("{name}.json")).display()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.stderr_text().contains(&needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "declaration never read"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics_text(&self) -> String {
        self.monitor
            .metrics_text()
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the sum of series `name` with `labels` reaches `at_least`;
    /// the metrics then.
    pub fn wait_for_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> Metrics {
        let what = format!("{name}{labels:?} >= {at_least}");
        self.monitor
            .wait_for_metrics(PATIENCE, &what, |m| m.sum(name, labels) >= at_least)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the metrics satisfy `condition` (`what` names it).
    pub fn wait_for_metrics(&self, what: &str, condition: impl Fn(&Metrics) -> bool) -> Metrics {
        self.monitor
            .wait_for_metrics(PATIENCE, what, condition)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until the alerts written so far satisfy `condition`.
    pub fn wait_for_alerts(&self, what: &str, condition: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        self.monitor
            .wait_for_alerts(PATIENCE, what, condition)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Waits until an undeclared-file alert for `path` has been written.
    pub fn wait_for_file_alert(&self, path: &Path) -> Vec<Value> {
        self.wait_for_alerts(&format!("an alert for {}", path.display()), |a| {
            !file_alerts(a, path).is_empty()
        })
    }

    /// SIGTERM, wait for exit; returns the exit status and every alert
    /// written.
    pub fn stop(self) -> (ExitStatus, Vec<Value>, String) {
        let stopped = self
            .monitor
            .stop(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"));
        (stopped.status, stopped.alerts, stopped.stderr)
    }
}

/// Writes `text` to `path`, creating its directory.
pub fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// A stand-in for Bazel's sandbox launcher: a script named `process-wrapper`
/// in `dir` that skips its options up to `--` and execs the rest.
pub fn process_wrapper(dir: &Path) -> PathBuf {
    let launcher = dir.join("process-wrapper");
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
    launcher
}

/// A parent cgroup unique to one test.
pub fn test_parent(test: &str) -> TestCgroup {
    TestCgroup::create(cgroup2_root().join(format!("monitor-it-{}-{test}", std::process::id())))
}

pub fn file_alerts<'a>(alerts: &'a [Value], path: &Path) -> Vec<&'a Value> {
    let p = path.display().to_string();
    alerts
        .iter()
        .filter(|a| a["kind"] == "undeclared_file" && a["file"]["path"] == p.as_str())
        .collect()
}

pub fn net_alerts(alerts: &[Value]) -> Vec<&Value> {
    alerts
        .iter()
        .filter(|a| a["kind"] == "network_egress")
        .collect()
}

/// A fake Bazel sandbox: `<tmp>/ob/sandbox/<strategy>/<id>/execroot/ws` with
/// `pkg/in.txt` a symlink to a real source file, as Bazel materialises it.
pub struct FakeSandbox {
    pub tmp: tempfile::TempDir,
    pub execroot: std::path::PathBuf,
    pub source: std::path::PathBuf,
    pub undeclared: std::path::PathBuf,
}

pub fn fake_sandbox(strategy: &str, id: u32) -> FakeSandbox {
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
        tmp,
        execroot,
        source,
        undeclared,
    }
}
