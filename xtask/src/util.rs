//! Helpers shared by the commands: running commands with errors that name
//! them, the workspace and target directories, cgroups, child daemons and the
//! monitor's HTTP endpoints.

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testkit::cgroup;
pub use testkit::wait::poll_until;
pub use testkit::{
    cgroup::join_on_spawn as join_cgroup_on_spawn, daemon::Daemon,
    http::metrics_text as get_metrics, monitor::wait_healthz, ports::free_port,
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

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup/unified` on
/// hybrid hosts, `/sys/fs/cgroup` on pure-v2).
pub fn cgroup2_root() -> Result<PathBuf> {
    cgroup::v2_root()
        .context("mount a cgroup2 file system, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`")
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

/// Removes the cgroup `dir` and its descendants (children first), moving
/// processes still inside to `root`; a missing `dir` is fine.
pub fn remove_cgroup_tree(dir: &Path, root: &Path) -> Result<()> {
    cgroup::remove_tree_evacuating(dir, root, Duration::from_secs(3))
        .with_context(|| format!("removing cgroup {}", dir.display()))
}

/// `path` as a double-quoted string literal, valid in Python and TOML (a JSON
/// string is both).
pub fn quoted(path: &Path) -> Result<String> {
    let path = path
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))?;
    Ok(serde_json::to_string(path)?)
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

/// Waits until the monitor really traces `cgroup`: `/healthz` may answer as
/// soon as the metrics listener is up, before the kernel programs are
/// attached. Probes (see [`probe_until`]) until
/// `build_monitor_events_total{kind="file"}` moves; `path` should be one the
/// action may open (declared), so that no alert is raised. Returns how many
/// probe opens were issued.
pub fn wait_until_tracing(
    daemon: &mut Daemon,
    addr: SocketAddr,
    cgroup: &Path,
    path: &Path,
    timeout: Duration,
) -> Result<u64> {
    let file_events = || -> Result<f64> {
        let text = get_metrics(addr)?;
        Ok(metric_sum(
            &text,
            "build_monitor_events_total",
            Some(("kind", "file")),
        ))
    };
    let before = file_events()?;
    probe_until(
        daemon,
        cgroup,
        path,
        timeout,
        || Ok(file_events()? > before),
    )
    .context("build_monitor_events_total{kind=\"file\"} did not move")
}

/// Waits until bpftrace (`daemon`, printing `pid path ret` lines to
/// `stdout`) has attached: "Attaching N probes" is printed just before the
/// attach, so probes (see [`probe_until`]) open `probe`, a file created here
/// that the measured runs never open, until a line for it is printed.
pub fn wait_until_bpftrace_prints(
    daemon: &mut Daemon,
    stdout: &Path,
    cgroup: &Path,
    probe: &Path,
    timeout: Duration,
) -> Result<u64> {
    fs::write(probe, "probe\n").with_context(|| format!("writing {}", probe.display()))?;
    let needle = format!(" {} ", probe.display());
    probe_until(daemon, cgroup, probe, timeout, || {
        Ok(fs::read_to_string(stdout).is_ok_and(|text| text.contains(&needle)))
    })
    .with_context(|| format!("bpftrace printed no line for {}", probe.display()))
}

/// Runs `cargo xtask bench-worker` (this binary) in `cgroup` to open `path`
/// once, then polls `seen` for up to a second (the tracer drains its buffer
/// every few milliseconds), again until `seen` holds or `timeout` passes.
/// Returns how many probe opens were issued.
fn probe_until(
    daemon: &mut Daemon,
    cgroup: &Path,
    path: &Path,
    timeout: Duration,
    mut seen: impl FnMut() -> Result<bool>,
) -> Result<u64> {
    let exe = std::env::current_exe().context("locating the xtask binary (current_exe)")?;
    let deadline = Instant::now() + timeout;
    let mut probes = 0;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "{} exited ({status}) before it traced anything",
                daemon.name()
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
        let mut last = Ok(false);
        poll_until(Duration::from_secs(1), || {
            last = seen();
            (!matches!(last, Ok(false))).then_some(())
        });
        if last? {
            return Ok(probes);
        }
        if Instant::now() >= deadline {
            bail!(
                "{} traced none of {probes} probe opens of {} from cgroup {} within {timeout:?}",
                daemon.name(),
                path.display(),
                cgroup.display()
            );
        }
    }
}

/// The sum of all samples of metric `name` in Prometheus text format whose
/// labels include `label` (all samples if `None`); 0 if there are none.
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    testkit::prom::sum(text, name, label.as_slice())
}

/// Waits until process `pid` has used at most one clock tick of CPU in each
/// of the last three 100 ms periods: a monitor just started still records
/// its declarations' identities after `/healthz` answers (the bench
/// declares 100,000 files; 60,000 took 0.16 s of CPU and as many syscalls,
/// measured), which timed runs must not share the machine with.
pub fn wait_until_idle(pid: u32, timeout: Duration) -> Result<()> {
    let steady = Steady {
        period: Duration::from_millis(100),
        periods: 3,
        most: 1,
    };
    if !steady.wait(timeout, || cpu_ticks(pid))? {
        bail!("process {pid} still used CPU after {timeout:?}");
    }
    Ok(())
}

/// Waits until the whole machine has been quiet for two 200 ms periods in
/// a row: at most [`QUIET_TICKS`] clock ticks of CPU (all CPUs together)
/// used in each. Timed runs start only then, so that nothing this machine
/// runs (a tracer torn down a moment before, the previous build's output
/// base being written back) shares it with them. It does not remove the
/// VM's own swings: a bare open+close still came out slower than with the
/// empty program attached in 1 round of 5. Returns false when the machine
/// was still busy at `timeout` (the run then goes ahead; the bench counts
/// it).
pub fn wait_until_machine_quiet(timeout: Duration) -> Result<bool> {
    let steady = Steady {
        period: Duration::from_millis(200),
        periods: 2,
        most: QUIET_TICKS,
    };
    steady.wait(timeout, busy_ticks)
}

/// A counter that grew by at most `most` in each of `periods` periods in a
/// row.
struct Steady {
    period: Duration,
    periods: u32,
    most: u64,
}

impl Steady {
    /// Reads `counter` every period until it has been steady; false when
    /// it was not by `timeout`.
    fn wait(&self, timeout: Duration, mut counter: impl FnMut() -> Result<u64>) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut last = counter()?;
        let mut steady = 0;
        while steady < self.periods {
            if Instant::now() > deadline {
                return Ok(false);
            }
            std::thread::sleep(self.period);
            let now = counter()?;
            steady = if now.saturating_sub(last) <= self.most {
                steady + 1
            } else {
                0
            };
            last = now;
        }
        Ok(true)
    }
}

/// CPU a 200 ms period may use and still count as quiet: 4 % of two CPUs
/// at 100 ticks per second.
const QUIET_TICKS: u64 = 2;

/// Clock ticks all CPUs spent busy since boot (`/proc/stat`'s `cpu` line:
/// everything but idle and iowait).
fn busy_ticks() -> Result<u64> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    stat_busy_ticks(&text).ok_or_else(|| anyhow!("/proc/stat: no cpu line"))
}

/// `user nice system idle iowait irq softirq steal` of the first line,
/// less idle and iowait.
fn stat_busy_ticks(text: &str) -> Option<u64> {
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    Some(user + nice + system + irq + softirq + steal)
}

/// User plus system CPU time of process `pid` (all its threads), in clock
/// ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    stat_cpu_ticks(&text).ok_or_else(|| anyhow!("{path}: no utime and stime in {text:?}"))
}

/// utime plus stime of a `/proc/<pid>/stat` line (fields 14 and 15). The
/// command name before them is in parentheses and may hold spaces and
/// parentheses itself: fields are counted from the last `)`.
fn stat_cpu_ticks(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Runs `cmd` on CPU `cpu` only: the affinity is inherited by everything
/// it starts (a Bazel client, its server, every spawn; `monitor exec`'s
/// daemon threads), so two builds side by side each keep one CPU.
pub fn pin_on_spawn(cmd: &mut Command, cpu: usize) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure only builds a CPU set on its stack and calls
    // sched_setaffinity (async-signal-safe), allocating nothing.
    unsafe {
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{stat_busy_ticks, stat_cpu_ticks};

    #[test]
    fn busy_ticks_leave_out_idle_and_iowait() {
        let text = "cpu  10 1 20 1000 500 3 4 5 0 0\ncpu0 5 0 10 500 250 1 2 2 0 0\n";
        assert_eq!(stat_busy_ticks(text), Some(43));
        assert_eq!(stat_busy_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(stat_busy_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 300 0 0 0 17 25 0 0 20 0 6 0 99 0 0";
        assert_eq!(stat_cpu_ticks(line), Some(42));
        assert_eq!(stat_cpu_ticks("4242 (x) S 1 2"), None);
    }
}
