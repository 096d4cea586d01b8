//! Helpers shared by the commands: running commands with errors that name
//! them, the workspace and target directories, cgroups, child daemons and the
//! monitor's HTTP endpoints.

use std::{
    ffi::CString,
    fs,
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The command line of `cmd` as a user could retype it (explicit environment
/// first).
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    parts.push(cmd.get_program().to_string_lossy().into_owned());
    parts.extend(cmd.get_args().map(|arg| arg.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs `cmd` to completion with inherited stdio; the error names the command.
pub fn exec(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout (stderr inherited); the error names the
/// command.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", display(cmd), out.status);
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", display(cmd)))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The workspace root (the directory above `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in a workspace")
        .to_path_buf()
}

/// `cargo`, run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// The workspace's target directory, as cargo resolves it (so
/// `CARGO_TARGET_DIR` and `.cargo/config.toml` are honoured).
pub fn target_dir() -> Result<PathBuf> {
    let json = output(
        cargo()
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .stdin(Stdio::null()),
    )?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("parsing the output of `cargo metadata`")?;
    let dir = metadata["target_directory"]
        .as_str()
        .ok_or_else(|| anyhow!("`cargo metadata` printed no target_directory"))?;
    Ok(PathBuf::from(dir))
}

/// The mount point of the cgroup v2 hierarchy, from `/proc/self/mountinfo`
/// (`/sys/fs/cgroup/unified` on hybrid hosts, `/sys/fs/cgroup` on pure-v2).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    parse_cgroup2_root(&mountinfo).ok_or_else(|| {
        anyhow!(
            "no cgroup2 file system is mounted (none in /proc/self/mountinfo); \
             mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`"
        )
    })
}

/// The first cgroup2 mount showing its hierarchy's root, else the first
/// cgroup2 mount.
fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional…] - fstype source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mountinfo(mount_point));
        if *root == "/" {
            return Some(mount_point);
        }
        fallback.get_or_insert(mount_point);
    }
    fallback
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A cgroup directory (with everything below it) removed on drop, also when
/// the command fails half-way. Processes still inside are moved to the root
/// cgroup first, so that the directories can go.
pub struct CgroupGuard {
    root: PathBuf,
    dir: PathBuf,
}

impl CgroupGuard {
    /// Creates `<cgroup2 root>/<name>`, removing a leftover one (from an
    /// interrupted run) first.
    pub fn create_fresh(name: &str) -> Result<Self> {
        let root = cgroup2_root()?;
        let dir = root.join(name);
        remove_cgroup_tree(&dir, &root)
            .with_context(|| format!("removing the leftover cgroup {}", dir.display()))?;
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(Self { root, dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the child cgroup `name` below this one.
    pub fn create_child(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(error) = remove_cgroup_tree(&self.dir, &self.root) {
            eprintln!(
                "warning: could not remove cgroup {}: {error:#}",
                self.dir.display()
            );
        }
    }
}

/// Removes the cgroup `dir` and its descendants (children first); a missing
/// `dir` is fine.
pub fn remove_cgroup_tree(dir: &Path, root: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path(), root)?;
        }
    }
    // A process that has just been reaped may still be counted for a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error)
                if error.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline =>
            {
                evacuate_cgroup(dir, root);
                thread::sleep(Duration::from_millis(50));
            }
            Err(error) => {
                return Err(error).with_context(|| format!("rmdir {}", dir.display()));
            }
        }
    }
}

/// Moves every process of cgroup `dir` to the root cgroup (best effort).
fn evacuate_cgroup(dir: &Path, root: &Path) {
    let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.split_whitespace() {
        let _ = fs::write(root.join("cgroup.procs"), pid);
    }
}

/// Makes `cmd`'s child join cgroup `dir` between fork and exec, so that
/// everything the program does is in the cgroup. Only async-signal-safe calls
/// run in the child (raw open/write/close on a path prepared here).
pub fn join_cgroup_on_spawn(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
        .with_context(|| format!("cgroup path {} contains a NUL byte", dir.display()))?;
    // SAFETY: the closure only calls async-signal-safe functions (open, write,
    // close, errno) and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
    Ok(())
}

/// Writes `contents` to `path` through a temporary name in the same directory
/// and a rename, so that a watcher never sees a half-written file.
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    fs::write(&tmp, contents).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("local_addr of 127.0.0.1:0")?
        .port())
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped, so
/// that no daemon outlives a failing command.
pub struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {name}: `{}`", display(cmd)))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    fn child(&mut self) -> &mut Child {
        self.child
            .as_mut()
            .expect("the child is present until stop/drop")
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let name = self.name.clone();
        self.child()
            .try_wait()
            .with_context(|| format!("waiting for {name}"))
    }

    /// Sends `signal` and waits up to `timeout` for the exit; past it the
    /// process is killed and this is an error.
    pub fn stop(mut self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .expect("the child is present until stop/drop");
        stop_child(&mut child, signal, timeout).with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(error) = stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5))
        {
            eprintln!("warning: stopping {}: {error:#}", self.name);
        }
    }
}

fn stop_child(child: &mut Child, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; the child is not yet
    // reaped, so the pid is still ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error()).context("kill");
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait()?;
    bail!("it did not exit within {timeout:?} of signal {signal}; killed ({status})")
}

/// A GET over HTTP/1.0 on a plain TcpStream: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to http://{addr}{path}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .with_context(|| format!("sending GET http://{addr}{path}"))?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            // A server that keeps the connection open: stop at the timeout if
            // the response is complete enough to parse.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && !response.is_empty() =>
            {
                break;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading http://{addr}{path}"));
            }
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&chunk[..n]);
        if response_complete(&response) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from http://{addr}{path}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line from http://{addr}{path}: {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Whether the headers and a Content-Length's worth of body have arrived.
fn response_complete(response: &[u8]) -> bool {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|length| response.len() >= end + 4 + length)
}

/// Waits until `GET /healthz` on `addr` answers 200; fails early, with the
/// exit status, if the daemon dies first.
pub fn wait_healthz(daemon: &mut Daemon, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "{} exited ({status}) before http://{addr}/healthz answered",
                daemon.name
            );
        }
        let last = match http_get(addr, "/healthz", Duration::from_secs(2)) {
            Ok((200, _)) => return Ok(()),
            Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() >= deadline {
            bail!("http://{addr}/healthz did not answer 200 within {timeout:?} (last: {last})");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the monitor really traces `cgroup`: `/healthz` may answer as
/// soon as the metrics listener is up, before the kernel programs are
/// attached. Runs `cargo xtask bench-worker` (this binary) in `cgroup` to open
/// `path` once, until `build_monitor_events_total{kind="file"}` moves; `path`
/// should be one the action may open (declared), so that no alert is raised.
/// Returns how many probe opens were issued.
pub fn wait_until_tracing(
    daemon: &mut Daemon,
    addr: SocketAddr,
    cgroup: &Path,
    path: &Path,
    timeout: Duration,
) -> Result<u64> {
    let exe = std::env::current_exe().context("locating the xtask binary (current_exe)")?;
    let file_events =
        |text: &str| metric_sum(text, "build_monitor_events_total", Some(("kind", "file")));
    let before = file_events(&get_metrics(addr)?);
    let deadline = Instant::now() + timeout;
    let mut probes = 0;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "{} exited ({status}) before it traced anything",
                daemon.name
            );
        }
        let mut probe = Command::new(&exe);
        probe
            .arg("bench-worker")
            .arg("--path")
            .arg(path)
            .arg("--cgroup")
            .arg(cgroup)
            .args(["--iterations", "1", "--warmup", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        exec(&mut probe).context("running the readiness probe")?;
        probes += 1;
        // The monitor drains its ring buffer every few milliseconds.
        let probe_deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < probe_deadline {
            if file_events(&get_metrics(addr)?) > before {
                return Ok(probes);
            }
            thread::sleep(Duration::from_millis(20));
        }
        if Instant::now() >= deadline {
            bail!(
                "{} counted none of {probes} probe opens of {} from cgroup {} within {timeout:?} \
                 (build_monitor_events_total{{kind=\"file\"}} did not move)",
                daemon.name,
                path.display(),
                cgroup.display()
            );
        }
    }
}

/// `GET /metrics` on `addr`, as text.
pub fn get_metrics(addr: SocketAddr) -> Result<String> {
    match http_get(addr, "/metrics", Duration::from_secs(5))? {
        (200, body) => Ok(body),
        (code, body) => bail!(
            "http://{addr}/metrics answered HTTP {code}: {}",
            body.trim()
        ),
    }
}

/// The sum of all samples of metric `name` in Prometheus text format whose
/// labels include `label` (all samples if `None`); 0 if there are none.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (sample_name, labels, rest) = match line.find(['{', ' ']) {
            Some(i) if line.as_bytes()[i] == b'{' => {
                let Some(close) = line[i..].find('}') else {
                    continue;
                };
                (&line[..i], &line[i + 1..i + close], &line[i + close + 1..])
            }
            Some(i) => (&line[..i], "", &line[i..]),
            None => continue,
        };
        if sample_name != name {
            continue;
        }
        if let Some((key, value)) = label
            && !labels
                .split(',')
                .any(|pair| pair.trim() == format!("{key}=\"{value}\""))
        {
            continue;
        }
        if let Some(value) = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        {
            sum += value;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_pure_hosts() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_cgroup2_root(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_cgroup2_root(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        let escaped = "29 23 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(escaped),
            Some(PathBuf::from("/mnt/my cg"))
        );
        assert_eq!(
            parse_cgroup2_root("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn sums_prometheus_samples() {
        let text = "\
# HELP build_monitor_events_total Events.
# TYPE build_monitor_events_total counter
build_monitor_events_total{kind=\"file\"} 12
build_monitor_events_total{kind=\"net\"} 3
build_monitor_events_lost_total{reason=\"ringbuf_full\"} 2
build_monitor_events_lost_total{reason=\"other\"} 1
build_monitor_actions_active 1
";
        let file = Some(("kind", "file"));
        assert_eq!(metric_sum(text, "build_monitor_events_total", file), 12.0);
        assert_eq!(
            metric_sum(text, "build_monitor_events_lost_total", None),
            3.0
        );
        assert_eq!(metric_sum(text, "build_monitor_actions_active", None), 1.0);
        assert_eq!(metric_sum(text, "build_monitor_missing", None), 0.0);
    }

    #[test]
    fn detects_complete_responses() {
        assert!(!response_complete(
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nab"
        ));
        assert!(response_complete(
            b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabcd"
        ));
        assert!(!response_complete(b"HTTP/1.0 200 OK\r\n\r\nabcd"));
    }
}
