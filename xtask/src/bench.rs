//! `cargo xtask bench [--quick]`: what the monitor costs, next to the tools
//! a user would pick instead (bpftrace, strace, audit, fatrace) doing the
//! same job on the same workloads, how many file events per second it takes
//! without loss, and what it adds to real Bazel builds. Everything is
//! measured in one run, setups interleaved in rounds, and written to
//! BENCHMARKS.md with an SVG plot beside it.
//!
//! The process being timed is `cargo xtask bench-worker` (this binary,
//! re-executed, see `worker`): it optionally joins a cgroup first thing,
//! then times one operation repeated (open+close of one file, of distinct
//! files, or a loopback connect).

mod ab;
pub(crate) mod builds;
mod entry;
pub(crate) mod flood;
pub(crate) mod kernel_profile;
mod peers;
mod plot;
mod program_time;
mod report;
pub(crate) mod sandbox_reads;
pub(crate) mod stats;
pub(crate) mod stats_sysctl;
pub(crate) mod task_audit;
mod worker;

use std::{
    env,
    ffi::OsString,
    fs::{self, File},
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

pub use ab::{AbOptions, run as run_ab};
use worker::{BATCH, WORKLOADS, WorkerReport, Workload};
pub use worker::{WorkerOptions, worker};

use crate::{
    setup,
    util::{
        CgroupGuard, Daemon, cargo, display, exec, free_port, get_metrics, is_root, metric_sum,
        quoted, target_dir, wait_healthz, wait_until_bpftrace_prints, wait_until_idle,
        wait_until_machine_quiet, wait_until_tracing, workspace_root, write_atomic,
    },
};

const BPFTRACE: &str = "/usr/bin/bpftrace";
/// Target rates of the throughput test (opens per second); an unlimited run
/// with one worker, then one with a worker per CPU, follow.
const RATES: &[u64] = &[25_000, 50_000, 100_000, 200_000];

#[derive(clap::Args)]
pub struct Options {
    /// Fewer, shorter runs: 2 rounds of one run per setup, 20 000 pairs,
    /// 5 000 distinct files, 1 s per throughput rate, 2 build pairs.
    #[arg(long)]
    quick: bool,
    /// Rounds: each runs every setup [default: 5, or 2 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// Runs in a row, per round and workload, of the setups the targets
    /// compare (bare, floor, monitor outside and inside); the peers run
    /// once per round [default: 3, or 1 with --quick].
    #[arg(long)]
    runs: Option<usize>,
    /// open+close pairs per run [default: 200000, or 20000 with --quick];
    /// connects per run are a fifth of this.
    #[arg(long)]
    iterations: Option<u64>,
    /// Distinct files opened once each per run [default: 100000, or 5000
    /// with --quick].
    #[arg(long)]
    distinct_files: Option<u64>,
    /// Leave out the real Bazel builds (the longest part).
    #[arg(long)]
    skip_builds: bool,
    /// Distinct missing paths one action probes in the alert-storm row
    /// [default: 1000000, or 50000 with --quick].
    #[arg(long)]
    flood_paths: Option<u64>,
    #[command(flatten)]
    builds: builds::BuildOptions,
    /// Where to write the report [default: BENCHMARKS.md at the workspace
    /// root]; the plot goes beside it (benchmarks.svg).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Who traces, and where the worker runs relative to its filter.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Setup {
    Bare,
    Floor,
    MonitorOutside,
    MonitorInside,
    BpftraceOutside,
    BpftraceInside,
    StraceInside,
    AuditOutside,
    AuditInside,
    FatraceInside,
}

pub const SETUPS: [Setup; 10] = [
    Setup::Bare,
    Setup::Floor,
    Setup::MonitorOutside,
    Setup::MonitorInside,
    Setup::BpftraceOutside,
    Setup::BpftraceInside,
    Setup::StraceInside,
    Setup::AuditOutside,
    Setup::AuditInside,
    Setup::FatraceInside,
];

impl Setup {
    pub fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare (no tracer)",
            Self::Floor => "floor: empty program on raw_tracepoint sys_exit",
            Self::MonitorOutside => "monitor, worker outside monitored cgroups",
            Self::MonitorInside => "monitor, worker in an action cgroup (declared)",
            Self::BpftraceOutside => "bpftrace, worker outside the filtered cgroup",
            Self::BpftraceInside => "bpftrace, worker in the filtered cgroup (prints each)",
            Self::StraceInside => "strace -f -e trace=%file,%network on the worker",
            Self::AuditOutside => "auditd rule, worker outside its scope (other auid)",
            Self::AuditInside => "auditd rule (open*, creat, connect; -F auid=worker's)",
            Self::FatraceInside => "fatrace -c -f O -C <worker> (fanotify on the mount)",
        }
    }

    /// The tool, for the plot.
    pub fn tool(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Floor => "floor",
            Self::MonitorOutside | Self::MonitorInside => "monitor",
            Self::BpftraceOutside | Self::BpftraceInside => "bpftrace",
            Self::StraceInside => "strace",
            Self::AuditOutside | Self::AuditInside => "audit",
            Self::FatraceInside => "fatrace",
        }
    }

    /// The peers' rows that do the monitor's job on the worker.
    pub fn is_peer_inside(self) -> bool {
        matches!(
            self,
            Self::BpftraceInside | Self::StraceInside | Self::AuditInside | Self::FatraceInside
        )
    }

    pub fn index(self) -> usize {
        SETUPS.iter().position(|s| *s == self).expect("listed")
    }
}

#[derive(Default)]
pub struct Samples {
    pub ns_per_op: Vec<f64>,
    /// Events the tracer recorded during the run, where it can be told.
    pub events: Vec<u64>,
    /// Operations the worker issued in the run (warm-up included).
    pub ops: Vec<u64>,
}

/// Samples of every (setup, workload).
#[derive(Default)]
pub struct Matrix {
    cells: Vec<Samples>,
}

impl Matrix {
    fn new() -> Self {
        let cells = (0..SETUPS.len() * WORKLOADS.len())
            .map(|_| Samples::default())
            .collect();
        Self { cells }
    }

    pub fn get(&self, setup: Setup, workload: Workload) -> &Samples {
        &self.cells[setup.index() * WORKLOADS.len() + workload.index()]
    }

    fn get_mut(&mut self, setup: Setup, workload: Workload) -> &mut Samples {
        &mut self.cells[setup.index() * WORKLOADS.len() + workload.index()]
    }

    /// Median ns per operation of a cell.
    pub fn median(&self, setup: Setup, workload: Workload) -> f64 {
        stats::median(&self.get(setup, workload).ns_per_op)
    }

    /// Added cost of `setup` over bare, in percent of bare.
    pub fn added(&self, setup: Setup, workload: Workload) -> f64 {
        let bare = self.median(Setup::Bare, workload);
        (self.median(setup, workload) - bare) / bare * 100.0
    }

    /// Points `setup` adds over `base`, paired within each round: the
    /// round's median of `setup` less its median of `base`, in percent of
    /// its median of bare. The setups of one round run within a minute of
    /// each other, the rounds minutes apart: pairing inside a round leaves
    /// out the machine's drift between rounds (not the noise within one).
    /// `runs` is the runs of each setup per round; a round missing either
    /// setup's runs is left out.
    pub fn paired_points(
        &self,
        setup: Setup,
        base: Setup,
        workload: Workload,
        runs: usize,
    ) -> Vec<f64> {
        let rounds_of = |s: Setup| self.get(s, workload).ns_per_op.chunks_exact(runs.max(1));
        rounds_of(Setup::Bare)
            .zip(rounds_of(setup))
            .zip(rounds_of(base))
            .map(|((bare, setup), base)| {
                (stats::median(setup) - stats::median(base)) / stats::median(bare) * 100.0
            })
            .collect()
    }
}

/// One row of the throughput test.
pub struct RateRow {
    pub label: String,
    pub opens: u64,
    pub seconds: f64,
    pub received: u64,
    pub lost: u64,
}

impl RateRow {
    pub fn lossless(&self) -> bool {
        self.received == self.opens && self.lost == 0
    }

    pub fn achieved(&self) -> f64 {
        self.opens as f64 / self.seconds.max(1e-9)
    }
}

pub struct Bench {
    monitor_bin: PathBuf,
    worker_exe: PathBuf,
    tmp: PathBuf,
    file: PathBuf,
    distinct_dir: PathBuf,
    /// A loopback port nothing listens on (connect workload).
    port: u16,
    parent_cgroup: PathBuf,
    action_cgroup: PathBuf,
    declarations: PathBuf,
    alerts: PathBuf,
    bpftrace_script: PathBuf,
    iterations: u64,
    /// Runs in a row of the target setups per round (`Options::runs`).
    runs: usize,
    distinct_files: u64,
    warmup: u64,
    /// Timed runs started before the machine was quiet (see
    /// `wait_until_machine_quiet`).
    busy_starts: std::cell::Cell<u32>,
}

/// How long a timed run waits for the machine to be quiet.
const QUIET_PATIENCE: Duration = Duration::from_secs(10);

/// Where and how a worker runs: in a cgroup, with an audit login uid,
/// under a wrapper command (strace).
#[derive(Default)]
pub struct Placement<'a> {
    cgroup: Option<&'a Path>,
    loginuid: Option<u32>,
    wrapper: &'a [OsString],
}

impl Bench {
    /// Operations per timed run of `workload`.
    fn ops(&self, workload: Workload) -> u64 {
        match workload {
            Workload::Repeat | Workload::Shared | Workload::Signal => self.iterations,
            Workload::Distinct | Workload::Missing => self.distinct_files,
            Workload::Connect => (self.iterations / 5).max(1),
            Workload::Getppid => self.iterations * entry::CALLS_PER_PAIR,
        }
    }

    fn worker_command(&self, workload: Workload, placement: &Placement<'_>) -> Command {
        let missing;
        let path = match workload {
            Workload::Distinct => &self.distinct_dir,
            // A directory that does not exist: every open fails with ENOENT.
            Workload::Missing => {
                missing = self.tmp.join("missing");
                &missing
            }
            _ => &self.file,
        };
        self.worker_command_at(workload, placement, path)
    }

    /// As `worker_command`, on `path` (a file, or the directory of f0, f1…).
    fn worker_command_at(
        &self,
        workload: Workload,
        placement: &Placement<'_>,
        path: &Path,
    ) -> Command {
        let mut cmd = match placement.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.worker_exe);
                cmd
            }
            None => Command::new(&self.worker_exe),
        };
        cmd.arg("bench-worker")
            .args([
                "--workload",
                workload.arg(),
                "--port",
                &self.port.to_string(),
            ])
            .arg("--path")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(dir) = placement.cgroup {
            cmd.arg("--cgroup").arg(dir);
        }
        if let Some(uid) = placement.loginuid {
            cmd.arg("--loginuid").arg(uid.to_string());
        }
        cmd
    }

    fn finish_worker(cmd: &Command, child: Child) -> Result<WorkerReport> {
        let out = child
            .wait_with_output()
            .with_context(|| format!("waiting for `{}`", display(cmd)))?;
        ensure!(
            out.status.success(),
            "`{}` failed: {}",
            display(cmd),
            out.status
        );
        WorkerReport::parse(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("reading the output of `{}`", display(cmd)))
    }

    /// A timed run of `workload`: warm-up, then its operations.
    fn timed_run(&self, workload: Workload, placement: &Placement<'_>) -> Result<WorkerReport> {
        if !wait_until_machine_quiet(QUIET_PATIENCE)? {
            self.busy_starts.set(self.busy_starts.get() + 1);
            println!("bench: the machine was still busy after {QUIET_PATIENCE:?}; timing anyway");
        }
        let mut cmd = self.worker_command(workload, placement);
        cmd.arg("--iterations")
            .arg(self.ops(workload).to_string())
            .arg("--warmup")
            .arg(self.warmup.to_string());
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start `{}`", display(&cmd)))?;
        Self::finish_worker(&cmd, child)
    }

    fn inside(&self) -> Placement<'_> {
        Placement {
            cgroup: Some(&self.action_cgroup),
            ..Placement::default()
        }
    }

    /// Throughput runs: `workers` workers in the action cgroup for `duration`,
    /// each at `rate` opens/s (0 = unlimited); returns the summed opens and
    /// the longest elapsed time.
    fn throughput_run(&self, workers: usize, rate: u64, duration: Duration) -> Result<(u64, f64)> {
        let mut running = Vec::new();
        for _ in 0..workers {
            let mut cmd = self.worker_command(Workload::Repeat, &self.inside());
            cmd.args(["--warmup", "0", "--rate", &rate.to_string()])
                .arg("--duration-ms")
                .arg(duration.as_millis().to_string());
            let child = cmd
                .spawn()
                .with_context(|| format!("failed to start `{}`", display(&cmd)))?;
            running.push((cmd, child));
        }
        let mut opens = 0;
        let mut seconds = 0f64;
        for (cmd, child) in running {
            let report = Self::finish_worker(&cmd, child)?;
            opens += report.opens;
            seconds = seconds.max(report.elapsed_ns as f64 / 1e9);
        }
        Ok((opens, seconds))
    }
}

struct RunningMonitor {
    daemon: Daemon,
    addr: SocketAddr,
    stderr: PathBuf,
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<_> = text.lines().collect();
            let start = lines.len().saturating_sub(20);
            format!("{}:\n{}", path.display(), lines[start..].join("\n"))
        }
        Err(error) => format!("{}: unreadable: {error}", path.display()),
    }
}

/// `monitor bench-floor` of `monitor_bin`, its stderr to `stderr_path`,
/// once its empty program is attached.
pub(crate) fn start_floor_program(monitor_bin: &Path, stderr_path: &Path) -> Result<Daemon> {
    let stderr =
        File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
    let mut daemon = Daemon::spawn(
        "monitor bench-floor",
        Command::new(monitor_bin)
            .arg("bench-floor")
            .stdout(Stdio::null())
            .stderr(stderr),
    )?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if fs::read_to_string(stderr_path).is_ok_and(|t| t.contains("floor program attached")) {
            return Ok(daemon);
        }
        if let Some(status) = daemon.try_wait()? {
            bail!(
                "monitor bench-floor exited early ({status}): {}",
                tail(stderr_path)
            );
        }
        ensure!(
            Instant::now() < deadline,
            "monitor bench-floor did not attach within 20 s"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

impl Bench {
    /// Runs `work` (given the floor's pid) while `monitor bench-floor` is
    /// attached; the floor must then stop cleanly.
    fn with_floor<T>(&self, tag: &str, work: impl FnOnce(u32) -> Result<T>) -> Result<T> {
        let floor = self.start_floor(tag)?;
        let done = work(floor.id())?;
        let status = floor.stop(libc::SIGTERM, Duration::from_secs(10))?;
        ensure!(status.success(), "monitor bench-floor exited with {status}");
        Ok(done)
    }

    /// `monitor bench-floor`: the same hook with an empty program, the cost
    /// any syscall hook puts on every process.
    fn start_floor(&self, tag: &str) -> Result<Daemon> {
        start_floor_program(
            &self.monitor_bin,
            &self.tmp.join(format!("floor-{tag}.stderr")),
        )
    }

    fn start_monitor(&self, tag: &str) -> Result<RunningMonitor> {
        self.start_monitor_with(tag, &self.alerts)
    }

    /// As `start_monitor`, writing its alerts to `alerts`.
    fn start_monitor_with(&self, tag: &str, alerts: &Path) -> Result<RunningMonitor> {
        self.start_monitor_of(&self.monitor_bin, tag, alerts)
    }

    /// As `start_monitor_with`, running the monitor binary `bin`.
    fn start_monitor_of(&self, bin: &Path, tag: &str, alerts: &Path) -> Result<RunningMonitor> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = format!(
            r#"[attribution]
cgroup_parents = [{parent}]
declarations_dir = {declarations}

[alerts]
stdout = false
file = {alerts}

[network]
allow = [{{ cidr = "127.0.0.1/32", port = {port} }}]

[metrics]
listen = "{addr}"
"#,
            port = self.port,
            parent = quoted(&self.parent_cgroup)?,
            declarations = quoted(&self.declarations)?,
            alerts = quoted(alerts)?,
        );
        let config_path = self.tmp.join(format!("monitor-{tag}.toml"));
        fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let stdout_path = self.tmp.join(format!("monitor-{tag}.stdout"));
        let stderr_path = self.tmp.join(format!("monitor-{tag}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let mut daemon = Daemon::spawn("the monitor", &mut cmd)?;
        wait_healthz(&mut daemon, addr, Duration::from_secs(20))
            .with_context(|| format!("starting the monitor; {}", tail(&stderr_path)))?;
        wait_until_tracing(
            &mut daemon,
            addr,
            &self.action_cgroup,
            &self.file,
            Duration::from_secs(20),
        )
        .with_context(|| format!("starting the monitor; {}", tail(&stderr_path)))?;
        wait_until_idle(daemon.id(), Duration::from_secs(30))
            .with_context(|| format!("starting the monitor; {}", tail(&stderr_path)))?;
        Ok(RunningMonitor {
            daemon,
            addr,
            stderr: stderr_path,
        })
    }

    fn stop_monitor(monitor: RunningMonitor) -> Result<()> {
        let RunningMonitor { daemon, stderr, .. } = monitor;
        let status = daemon.stop(libc::SIGTERM, Duration::from_secs(15))?;
        ensure!(
            status.success(),
            "the monitor exited with {status} after SIGTERM (expected 0); {}",
            tail(&stderr)
        );
        Ok(())
    }

    /// Starts bpftrace and waits until it has attached its probes.
    fn start_bpftrace(&self, tag: &str) -> Result<(Daemon, PathBuf)> {
        let stdout_path = self.tmp.join(format!("bpftrace-{tag}.stdout"));
        let stderr_path = self.tmp.join(format!("bpftrace-{tag}.stderr"));
        let stdout = File::create(&stdout_path)
            .with_context(|| format!("creating {}", stdout_path.display()))?;
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut cmd = Command::new(BPFTRACE);
        cmd.arg(&self.bpftrace_script)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: setrlimit is async-signal-safe. An unlimited RLIMIT_MEMLOCK
        // spares bpftrace a warning on kernels that still charge it.
        unsafe {
            cmd.pre_exec(|| {
                let unlimited = libc::rlimit {
                    rlim_cur: libc::RLIM_INFINITY,
                    rlim_max: libc::RLIM_INFINITY,
                };
                libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited);
                Ok(())
            });
        }
        let mut daemon = Daemon::spawn("bpftrace", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "bpftrace exited ({status}) before attaching; {}; {}",
                    tail(&stderr_path),
                    tail(&stdout_path)
                );
            }
            let printed = [&stdout_path, &stderr_path]
                .iter()
                .any(|path| fs::read_to_string(path).is_ok_and(|text| text.contains("Attaching")));
            if printed {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "bpftrace printed no \"Attaching\" within 60 s; {}",
                tail(&stderr_path)
            );
            thread::sleep(Duration::from_millis(50));
        }
        wait_until_bpftrace_prints(
            &mut daemon,
            &stdout_path,
            &self.action_cgroup,
            &self.tmp.join("bpftrace-probe.txt"),
            Duration::from_secs(20),
        )?;
        Ok((daemon, stdout_path))
    }
}

/// The monitor's event counter of `kind` and its lost-event total.
fn event_counters(addr: SocketAddr, kind: &str) -> Result<(u64, u64)> {
    let text = get_metrics(addr)?;
    let events = metric_sum(&text, "build_monitor_events_total", Some(("kind", kind)));
    let lost = metric_sum(&text, "build_monitor_events_lost_total", None);
    Ok((events as u64, lost as u64))
}

fn event_kind(workload: Workload) -> &'static str {
    match workload {
        Workload::Connect => "net",
        _ => "file",
    }
}

/// Waits for the monitor's reader to drain: until the `kind` counter reaches
/// `target`, or the counters have not moved for 1.5 s (at most 10 s).
fn drained(addr: SocketAddr, kind: &str, target: u64) -> Result<(u64, u64)> {
    let start = Instant::now();
    let mut last = event_counters(addr, kind)?;
    let mut last_change = Instant::now();
    loop {
        if last.0 >= target
            || last_change.elapsed() >= Duration::from_millis(1500)
            || start.elapsed() >= Duration::from_secs(10)
        {
            return Ok(last);
        }
        thread::sleep(Duration::from_millis(100));
        let now = event_counters(addr, kind)?;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

/// What one `cargo xtask bench` run does, from its options.
struct RunSettings {
    rounds: usize,
    /// See `Options::runs`.
    runs: usize,
    iterations: u64,
    distinct_files: u64,
    rate_duration: Duration,
    flood_paths: u64,
    /// `--quick`: also fewer sandbox reads.
    quick: bool,
    builds: Option<builds::BuildOptions>,
    report_path: PathBuf,
    /// The command line, as the report's "Reproduce" section shows it.
    command: String,
}

impl RunSettings {
    /// For `bench-ab`: `ops` operations per run of either workload.
    fn for_ab(ops: u64) -> Self {
        Self {
            rounds: 1,
            runs: 1,
            iterations: ops,
            distinct_files: ops,
            rate_duration: Duration::from_secs(1),
            flood_paths: 0,
            quick: true,
            builds: None,
            report_path: PathBuf::new(),
            command: command_line(),
        }
    }

    fn from_options(options: Options) -> Result<Self> {
        let Options {
            quick,
            rounds,
            runs,
            iterations,
            distinct_files,
            skip_builds,
            flood_paths,
            mut builds,
            output: report_path,
        } = options;
        let flood_paths = flood_paths.unwrap_or(if quick { 50_000 } else { 1_000_000 });
        let rounds = rounds.unwrap_or(if quick { 2 } else { 5 });
        let runs = runs.unwrap_or(if quick { 1 } else { 3 });
        let iterations = iterations.unwrap_or(if quick { 20_000 } else { 200_000 });
        let distinct_files = distinct_files.unwrap_or(if quick { 5_000 } else { 100_000 });
        let rate_duration = Duration::from_secs(if quick { 1 } else { 2 });
        ensure!(
            rounds > 0 && runs > 0 && iterations > 0 && distinct_files > 0,
            "--rounds, --runs, --iterations and --distinct-files must be positive"
        );
        if quick {
            builds.quick();
        }
        let report_path = report_path.unwrap_or_else(|| workspace_root().join("BENCHMARKS.md"));
        // Checked before the hour of runs, not when the report is written.
        let report_dir = match report_path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        ensure!(
            report_dir.is_dir(),
            "--output {}: the directory {} does not exist",
            report_path.display(),
            report_dir.display()
        );
        Ok(Self {
            rounds,
            runs,
            iterations,
            distinct_files,
            rate_duration,
            flood_paths,
            quick,
            builds: (!skip_builds).then_some(builds),
            report_path,
            command: command_line(),
        })
    }
}

/// This run's command line, as the report's "Reproduce" section shows it.
fn command_line() -> String {
    format!(
        "cargo xtask {}",
        env::args().skip(1).collect::<Vec<_>>().join(" ")
    )
}

pub fn run(options: Options) -> Result<()> {
    let settings = RunSettings::from_options(options)?;
    let monitor_bin = prepare_tools(&settings.command)?;
    // Held off for the whole run: only the counted runs turn it on.
    let stats_setting = stats_sysctl::StatsSetting::off()?;
    // Held for the whole run too: no audit context in what is measured.
    let task_audit = task_audit::NoTaskAudit::hold()?;
    let worker_exe = env::current_exe().context("locating the xtask binary (current_exe)")?;
    let tmp_dir = tempfile::Builder::new()
        .prefix("monitor-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    // Dropped last (after every daemon and worker): the cgroups.
    let cgroups = CgroupGuard::create_fresh("monitor-bench")?;
    let bench = Bench::prepare(tmp_dir.path(), &cgroups, monitor_bin, worker_exe, &settings)?;
    println!(
        "bench: {} round(s) of {} setups × {} workloads, {} run(s) in a row of the target setups ({} pairs, {} distinct files, {} connects per run)",
        settings.rounds,
        SETUPS.len(),
        WORKLOADS.len(),
        settings.runs,
        settings.iterations,
        settings.distinct_files,
        bench.ops(Workload::Connect)
    );
    let matrix = cost_rounds(&bench, settings.rounds, &task_audit)?;
    let entry = entry::measure(&bench, settings.rounds * settings.runs)?;
    let program_time = bench.program_time()?;
    let kernel_profile = bench.kernel_profile()?;
    let rows = throughput_test(&bench, settings.rate_duration)?;
    let alert_count = count_alerts(&bench.alerts);
    let flood = bench.flood(settings.flood_paths)?;
    let sandbox_reads = sandbox_reads::run(settings.quick)?;
    let builds = match &settings.builds {
        Some(options) => Some(builds::run(options, &bench.monitor_bin, &bench.tmp)?),
        None => None,
    };
    let svg_path = settings.report_path.with_file_name("benchmarks.svg");
    plot::write(&svg_path, &matrix, builds.as_ref())?;
    let report = report::render(&report::ReportInput {
        command: &settings.command,
        rounds: settings.rounds,
        runs: settings.runs,
        iterations: settings.iterations,
        distinct_files: settings.distinct_files,
        connects: bench.ops(Workload::Connect),
        warmup: bench.warmup,
        rate_duration: settings.rate_duration,
        matrix: &matrix,
        entry: Some(&entry),
        rows: &rows,
        alert_count,
        builds: builds.as_ref(),
        flood: &flood,
        sandbox_reads: &sandbox_reads,
        monitor_bin: &bench.monitor_bin,
        svg_name: "benchmarks.svg",
        kernel_profile: &kernel_profile,
        program_time: &program_time.rows,
        verified_insns: Some(program_time.verified_insns),
        stats_found_on: stats_setting.was_on(),
        task_audit_found: task_audit.found_loaded(),
        busy_starts: bench.busy_starts.get(),
    })?;
    let report_path = &settings.report_path;
    fs::write(report_path, &report)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("\n{report}");
    println!(
        "bench: wrote {} and {}",
        report_path.display(),
        svg_path.display()
    );
    drop(bench);
    drop(cgroups);
    drop(task_audit);
    Ok(())
}

/// Checks root, runs setup, checks the peers' tools and builds the release
/// monitor; returns the monitor binary.
fn prepare_tools(command: &str) -> Result<PathBuf> {
    ensure!(
        is_root(),
        "the benchmark needs root (it loads eBPF programs, runs bpftrace and creates cgroups): \
         run `sudo -E {command}`"
    );
    setup::run()?;
    for tool in [
        BPFTRACE,
        peers::STRACE,
        peers::AUDITD,
        peers::AUDITCTL,
        peers::FATRACE,
    ] {
        ensure!(
            Path::new(tool).is_file(),
            "{tool} is missing (`cargo xtask setup` installs bpftrace, strace, auditd and fatrace)"
        );
    }
    exec(cargo().args(["build", "--release", "-p", "monitor"]))?;
    let monitor_bin = target_dir()?.join("release").join("monitor");
    ensure!(
        monitor_bin.is_file(),
        "{} does not exist after the build",
        monitor_bin.display()
    );
    Ok(monitor_bin)
}

impl Bench {
    /// The input files, their declaration and the bpftrace script in
    /// `tmp_dir`, and the action cgroup below `cgroups`.
    fn prepare(
        tmp_dir: &Path,
        cgroups: &CgroupGuard,
        monitor_bin: PathBuf,
        worker_exe: PathBuf,
        settings: &RunSettings,
    ) -> Result<Bench> {
        let tmp = tmp_dir
            .canonicalize()
            .context("canonicalising the temporary directory")?;
        let file = tmp.join("input.txt");
        fs::write(&file, "benchmark input\n")
            .with_context(|| format!("writing {}", file.display()))?;
        let distinct_dir = tmp.join("distinct");
        fs::create_dir(&distinct_dir)
            .with_context(|| format!("creating {}", distinct_dir.display()))?;
        for i in 0..settings.distinct_files {
            let path = worker::distinct_file(&distinct_dir, i);
            fs::write(&path, "x").with_context(|| format!("writing {}", path.display()))?;
        }
        let declarations = tmp.join("declarations");
        fs::create_dir(&declarations)
            .with_context(|| format!("creating {}", declarations.display()))?;
        let action_cgroup = cgroups.create_child("act")?;
        write_declaration(&declarations, &action_cgroup, &file, &distinct_dir)?;
        let bpftrace_script = tmp.join("trace.bt");
        write_bpftrace_script(&bpftrace_script, &action_cgroup)?;
        Ok(Bench {
            monitor_bin,
            worker_exe,
            alerts: tmp.join("alerts.jsonl"),
            tmp,
            file,
            distinct_dir,
            port: free_port()?,
            parent_cgroup: cgroups.path().to_path_buf(),
            action_cgroup,
            declarations,
            bpftrace_script,
            iterations: settings.iterations,
            runs: settings.runs,
            distinct_files: settings.distinct_files,
            warmup: 10_000,
            busy_starts: std::cell::Cell::new(0),
        })
    }
}

/// Declares `file` and everything in `dir` as the inputs of the action in
/// `action_cgroup`.
fn write_declaration(
    declarations: &Path,
    action_cgroup: &Path,
    file: &Path,
    dir: &Path,
) -> Result<()> {
    let declaration = serde_json::json!({
        "cgroup": action_cgroup,
        "label": "//bench:open_close",
        "mnemonic": "Bench",
        "inputs": [file, format!("{}/**", dir.display())],
    });
    write_atomic(
        &declarations.join("act.json"),
        serde_json::to_string_pretty(&declaration)?.as_bytes(),
    )
}

/// bpftrace doing the monitor's job: cgroup-filtered openat and connect
/// entry/exit, printing pid, path (or "connect") and result of each.
fn write_bpftrace_script(script: &Path, action_cgroup: &Path) -> Result<()> {
    let cg = quoted(action_cgroup)?;
    fs::write(
        script,
        format!(
            "tracepoint:syscalls:sys_enter_openat /cgroup == cgroupid({cg})/ {{ @p[tid] = args->filename; }}\n\
             tracepoint:syscalls:sys_exit_openat /@p[tid]/ {{ printf(\"%d %s %d\\n\", pid, str(@p[tid]), args->ret); delete(@p[tid]); }}\n\
             tracepoint:syscalls:sys_enter_connect /cgroup == cgroupid({cg})/ {{ @c[tid] = 1; }}\n\
             tracepoint:syscalls:sys_exit_connect /@c[tid]/ {{ printf(\"%d connect %d\\n\", pid, args->ret); delete(@c[tid]); }}\n",
        ),
    )
    .with_context(|| format!("writing {}", script.display()))
}

/// The cost test: every setup once per round, setups interleaved.
fn cost_rounds(
    bench: &Bench,
    rounds: usize,
    task_audit: &task_audit::NoTaskAudit,
) -> Result<Matrix> {
    let mut matrix = Matrix::new();
    for round in 1..=rounds {
        stats_sysctl::ensure_off().with_context(|| format!("round {round}"))?;
        let tag = format!("round{round}");
        let mut record =
            |setup: Setup, workload: Workload, report: WorkerReport, events: Option<u64>| {
                println!(
                    "bench: round {round}/{rounds}: {:<55} {:<15} {:>9.1} ns/op{}",
                    setup.label(),
                    workload.short(),
                    report.ns_per_pair,
                    events
                        .map(|e| format!(" ({e} events / {} ops)", report.opens))
                        .unwrap_or_default()
                );
                let sample = matrix.get_mut(setup, workload);
                sample.ns_per_op.push(report.ns_per_pair);
                sample.ops.push(report.opens);
                if let Some(events) = events {
                    sample.events.push(events);
                }
            };
        bench.record_runs(Setup::Bare, &mut record)?;
        bench
            .floor_round(&tag, &mut record)
            .with_context(|| format!("floor, round {round}"))?;
        bench
            .monitor_round(&tag, &mut record)
            .with_context(|| format!("monitor, round {round}"))?;
        bench
            .bpftrace_round(&tag, &mut record)
            .with_context(|| format!("bpftrace, round {round}"))?;
        bench
            .strace_round(&tag, &mut record)
            .with_context(|| format!("strace, round {round}"))?;
        task_audit
            .suspended(|| bench.audit_round(&tag, &mut record))
            .with_context(|| format!("audit, round {round}"))?;
        bench
            .fatrace_round(&tag, &mut record)
            .with_context(|| format!("fatrace, round {round}"))?;
    }
    Ok(matrix)
}

/// Where a round's measurements go: setup, workload, worker report, events
/// the tracer recorded.
pub type Record<'a> = dyn FnMut(Setup, Workload, WorkerReport, Option<u64>) + 'a;

impl Bench {
    /// `runs` timed runs in a row of each workload, the worker in no
    /// traced cgroup, recorded as `setup` (no events to count).
    fn record_runs(&self, setup: Setup, record: &mut Record<'_>) -> Result<()> {
        for workload in WORKLOADS {
            for _ in 0..self.runs {
                let report = self.timed_run(workload, &Placement::default())?;
                record(setup, workload, report, None);
            }
        }
        Ok(())
    }

    /// The worker with only the empty program on the monitor's hook.
    fn floor_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        self.with_floor(tag, |_| self.record_runs(Setup::Floor, record))
    }

    /// The worker outside, then inside, the monitored action cgroup; events
    /// seen are the increase of the monitor's event counter of the kind.
    fn monitor_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        let monitor = self.start_monitor(tag)?;
        for workload in WORKLOADS {
            for _ in 0..self.runs {
                let kind = event_kind(workload);
                let (before, _) = event_counters(monitor.addr, kind)?;
                let outside = self.timed_run(workload, &Placement::default())?;
                let (after, _) = event_counters(monitor.addr, kind)?;
                record(
                    Setup::MonitorOutside,
                    workload,
                    outside,
                    Some(after - before.min(after)),
                );
            }
        }
        for workload in WORKLOADS {
            for _ in 0..self.runs {
                let kind = event_kind(workload);
                let (before, _) = event_counters(monitor.addr, kind)?;
                let inside = self.timed_run(workload, &self.inside())?;
                let (after, _) = drained(monitor.addr, kind, before + inside.opens)?;
                record(
                    Setup::MonitorInside,
                    workload,
                    inside,
                    Some(after - before.min(after)),
                );
            }
        }
        Bench::stop_monitor(monitor)
    }

    /// The worker outside, then inside, bpftrace's filtered cgroup; events
    /// seen are the lines bpftrace printed for the workload.
    fn bpftrace_round(&self, tag: &str, record: &mut Record<'_>) -> Result<()> {
        let (bpftrace, stdout) = self.start_bpftrace(tag)?;
        for workload in WORKLOADS {
            record(
                Setup::BpftraceOutside,
                workload,
                self.timed_run(workload, &Placement::default())?,
                None,
            );
        }
        let mut inside = Vec::new();
        for workload in WORKLOADS {
            inside.push((workload, self.timed_run(workload, &self.inside())?));
        }
        let status = bpftrace.stop(libc::SIGINT, Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "bpftrace exited with {status} after SIGINT"
        );
        for (workload, report) in inside {
            let printed = self.count_records(workload, &stdout)?;
            record(Setup::BpftraceInside, workload, report, Some(printed));
        }
        fs::remove_file(&stdout).with_context(|| format!("removing {}", stdout.display()))?;
        Ok(())
    }
}

/// The rows of the throughput test: (label, workers, opens/s; 0 = unlimited).
fn throughput_plan() -> Vec<(String, usize, u64)> {
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let mut plan: Vec<(String, usize, u64)> = RATES
        .iter()
        .map(|&rate| (format!("{rate} /s"), 1, rate))
        .collect();
    plan.push(("unlimited, 1 worker".to_owned(), 1, 0));
    if cpus > 1 {
        plan.push((format!("unlimited, {cpus} workers"), cpus, 0));
    }
    plan
}

/// Workers in the action cgroup at each planned rate, against one monitor;
/// received and lost are read once the reader has drained.
fn throughput_test(bench: &Bench, rate_duration: Duration) -> Result<Vec<RateRow>> {
    println!("bench: throughput test ({rate_duration:?} per rate)");
    let monitor = bench.start_monitor("throughput")?;
    let mut rows = Vec::new();
    for (label, workers, rate) in throughput_plan() {
        let (file0, lost0) = event_counters(monitor.addr, "file")?;
        let (opens, seconds) = bench
            .throughput_run(workers, rate, rate_duration)
            .with_context(|| format!("throughput run {label}"))?;
        let (file1, lost1) = drained(monitor.addr, "file", file0 + opens)?;
        let row = RateRow {
            label,
            opens,
            seconds,
            received: file1.saturating_sub(file0),
            lost: lost1.saturating_sub(lost0),
        };
        println!(
            "bench: {:<22} {:>9} opens in {:.2} s ({:>9.0} /s): {} received, {} lost",
            row.label,
            row.opens,
            row.seconds,
            row.achieved(),
            row.received,
            row.lost
        );
        rows.push(row);
    }
    Bench::stop_monitor(monitor).context("after the throughput test")?;
    Ok(rows)
}

/// Alert lines in the alerts file (0 when there is none).
fn count_alerts(alerts: &Path) -> usize {
    let alerts = fs::read_to_string(alerts).unwrap_or_default();
    alerts
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn settings(args: &[&str]) -> Result<RunSettings> {
        let cli = Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))?;
        RunSettings::from_options(cli.options)
    }

    #[test]
    fn a_report_into_a_missing_directory_is_refused_before_any_run() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing/BENCHMARKS.md");
        let error = settings(&["--output", missing.to_str().unwrap()])
            .err()
            .expect("refused");
        assert!(format!("{error:#}").contains("does not exist"), "{error:#}");
        // Positive control: the same name in a directory that exists.
        let present = dir.path().join("BENCHMARKS.md");
        let ok = settings(&["--output", present.to_str().unwrap()]).unwrap();
        assert_eq!(ok.report_path, present);
    }
}
