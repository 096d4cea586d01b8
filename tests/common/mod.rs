//! Helpers shared by the integration tests: a real monitor daemon started
//! from its binary, real cgroups, processes placed in them, and raw HTTP to
//! the metrics endpoint. Tests panic (not `Result`) to keep backtraces.
use std::{
    ffi::CString,
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

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
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .expect("cgroup2 must be mounted")
}

/// A cgroup that is removed (children first) when dropped.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(path: PathBuf) -> TestCgroup {
        let _ = remove_tree(&path);
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        TestCgroup { path }
    }

    pub fn child(&self, name: &str) -> TestCgroup {
        TestCgroup::create(self.path.join(name))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
    }
}

fn remove_tree(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    for entry in fs::read_dir(path)?.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            remove_tree(&entry.path())?;
        }
    }
    for _ in 0..100 {
        if fs::remove_dir(path).is_ok() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    fs::remove_dir(path)
}

/// Makes `cmd` move itself into `cgroup` before exec. The environment is
/// cleared: cargo's `LD_LIBRARY_PATH` would make every dynamic loader probe
/// target/ (real undeclared opens the monitor rightly reports).
pub fn in_cgroup<'a>(cmd: &'a mut Command, cgroup: &Path) -> &'a mut Command {
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LC_ALL", "C");
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
    // SAFETY: only async-signal-safe syscalls on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Runs `cmd` inside `cgroup` and returns its output (panics if it could not
/// start).
pub fn run_in(cgroup: &Path, cmd: &mut Command) -> Output {
    in_cgroup(cmd, cgroup)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// `/usr/bin/python3 -S -c SCRIPT ARGS…` (system python: its files are under
/// the default `files.allow`).
pub fn python(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-S").arg("-c").arg(script).args(args);
    cmd
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback listener that accepts and closes connections in the
/// background for as long as the test runs.
pub fn listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in l.incoming() {
            drop(conn);
        }
    });
    port
}

/// Plain HTTP/1.0 GET; returns (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Value of one sample in Prometheus text format, e.g.
/// `metric(body, "build_monitor_events_total", &[("kind", "file")])`;
/// 0 when the series is absent.
pub fn metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap())
        .sum()
}

/// A running `monitor run` with its own config, alert file and metrics port.
pub struct Daemon {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub alerts: PathBuf,
    pub metrics: SocketAddr,
    pub declarations: PathBuf,
    pub stderr: PathBuf,
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
        let port = free_port();
        let config = dir.path().join("monitor.toml");
        fs::write(
            &config,
            format!(
                "[attribution]\ncgroup_parents = [\"{}\"]\ndeclarations_dir = \"{}\"\ndeclaration_wait_ms = 1500\n\
                 [alerts]\nstdout = false\nfile = \"{}\"\nfold_window_ms = {fold_window_ms}\n\
                 [metrics]\nlisten = \"127.0.0.1:{port}\"\n{extra}\n",
                parent.display(),
                declarations.display(),
                alerts.display()
            ),
        )
        .unwrap();
        let stderr = dir.path().join("stderr.txt");
        let child = Command::new(monitor_bin())
            .envs(env.iter().copied())
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start monitor");
        let mut daemon = Daemon {
            child,
            dir,
            alerts,
            metrics: SocketAddr::from(([127, 0, 0, 1], port)),
            declarations,
            stderr,
        };
        daemon.wait_healthy();
        daemon
    }

    fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "monitor exited early ({status}): {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default()
                );
            }
            if let Some((200, _)) = http_get(self.metrics, "/healthz") {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "monitor did not become healthy: {}",
            fs::read_to_string(&self.stderr).unwrap_or_default()
        );
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

    pub fn metrics_text(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body
    }

    /// SIGTERM, wait for exit; returns the exit status and every alert
    /// written.
    pub fn stop(mut self) -> (ExitStatus, Vec<serde_json::Value>, String) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        let alerts = read_alerts(&self.alerts);
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        (status, alerts, stderr)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn read_alerts(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("alert line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits until the folded alerts of the window have been written.
pub fn settle() {
    thread::sleep(Duration::from_millis(800));
}

/// A parent cgroup unique to one test.
pub fn test_parent(test: &str) -> TestCgroup {
    TestCgroup::create(cgroup2_root().join(format!("monitor-it-{}-{test}", std::process::id())))
}

pub fn file_alerts<'a>(alerts: &'a [serde_json::Value], path: &Path) -> Vec<&'a serde_json::Value> {
    let p = path.display().to_string();
    alerts
        .iter()
        .filter(|a| a["kind"] == "undeclared_file" && a["file"]["path"] == p.as_str())
        .collect()
}
