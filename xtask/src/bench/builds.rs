//! Real builds: a generated Bazel 4.2.3 workspace (g++ compiles with many
//! header probes, genrules with large sandboxes) built bare, with only the
//! execution-log flag `monitor exec` adds, and under `monitor exec`, a fresh
//! server and output base each build, in interleaved triples. Beside wall
//! time: the CPU time the build's cgroup used (`cpu.stat` usage_usec) and
//! the monitor's own. Then the same in pairs built side by side, one CPU
//! each (`side_by_side`), which the VM's drift between builds cannot
//! separate.

pub(crate) mod build_fs;
pub(crate) mod flags;
pub(crate) mod side_by_side;
pub(crate) mod workspace;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use super::program_time::{CountedPrograms, StatsBias};
use super::stats::{self, MedianInterval};
use crate::util::{CgroupGuard, cgroup2_root, display, join_cgroup_on_spawn};

pub const BAZEL: &str = "/usr/bin/bazel";
/// The execution log flag `monitor exec` adds for [`BAZEL`] (Debian's
/// 4.2.3, which names no release and, asked, takes the unsorted log).
pub const EXECUTION_LOG_FLAG: &str = "--experimental_execution_log_file";

#[derive(clap::Args, Clone)]
pub struct BuildOptions {
    /// Interleaved build triples (bare, execution log only, monitored)
    /// [default: adaptive: at least 5, then until the 95 % intervals of the
    /// median overheads are within ±2 points, at most 30 or --build-minutes].
    #[arg(long)]
    pub build_pairs: Option<usize>,
    /// Time budget of the adaptive build series, in minutes.
    #[arg(long, default_value_t = 15)]
    pub build_minutes: u64,
    /// Pairs of builds side by side, one CPU each (`monitor exec` beside a
    /// bare build every other pair; a log build beside a bare one and
    /// `monitor exec` beside a log build in between) [default: adaptive:
    /// at least 6 of the first kind and 2 of each other, then until the
    /// first kind's 95 % intervals are within ±2 points, at most 40 or
    /// --side-by-side-minutes].
    #[arg(long)]
    pub side_by_side_pairs: Option<usize>,
    /// Every third side-by-side pair two bare builds, one on each CPU: the
    /// method's own noise (not part of the totals).
    #[arg(long)]
    pub side_by_side_control: bool,
    /// Run both builds of each side-by-side pair unpinned, sharing both
    /// CPUs (less noise between the builds, measured with `bench-flags
    /// --shared-every-other`; a daemon then slows its neighbour too, so
    /// judge its CPU time, not its wall time).
    #[arg(long)]
    pub side_by_side_unpinned: bool,
    /// Time budget of the side-by-side series, in minutes.
    #[arg(long, default_value_t = 40)]
    pub side_by_side_minutes: u64,
    #[command(flatten)]
    pub workspace: workspace::WorkspaceSize,
}

impl BuildOptions {
    /// `--quick`: a small workspace, two triples.
    pub fn quick(&mut self) {
        self.build_pairs.get_or_insert(2);
        self.side_by_side_pairs.get_or_insert(2);
        let size = &mut self.workspace;
        size.build_compiles = size.build_compiles.min(10);
        size.build_sandboxes = size.build_sandboxes.min(10);
    }
}

/// Where `monitor exec` takes its labels from (`[bazel] label_source`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LabelSource {
    /// The default: Bazel's execution log.
    ExecutionLog,
    /// Bazel's JSON trace profile.
    TraceProfile,
}

impl LabelSource {
    pub fn word(self) -> &'static str {
        match self {
            LabelSource::ExecutionLog => "execution_log",
            LabelSource::TraceProfile => "trace_profile",
        }
    }
}

/// One unmonitored build.
#[derive(Debug, Clone, Copy)]
pub struct PlainRun {
    pub wall_s: f64,
    pub cpu_s: f64,
}

/// One build under `monitor exec`.
#[derive(Debug, Clone, Default)]
pub struct MonitoredRun {
    pub wall_s: f64,
    /// CPU time of the build's cgroup (client, server, spawns).
    pub build_cpu_s: f64,
    /// CPU time of the `monitor exec` process itself.
    pub daemon_cpu_s: f64,
    pub daemon_peak_rss_kib: u64,
    /// Events the monitor received (report key `events`, when present).
    pub events: Option<u64>,
    /// Of the file events: failed probes the kernel counted instead of
    /// reporting (report key `completeness.probes_folded`, when present).
    pub probes_folded: Option<u64>,
    /// Of the file events: repeated opens the kernel counted instead of
    /// reporting (report key `completeness.repeats_counted`, when present).
    pub repeats_counted: Option<u64>,
    /// Of `daemon_cpu_s`: the start, until the programs were attached
    /// (report key `monitor.startup_cpu_s`, when present).
    pub startup_cpu_s: Option<f64>,
    pub lost: u64,
    pub violations: u64,
    pub unmonitored_spawns: u64,
    /// Other `monitor exec` jobs ran at the same time: `build_cpu_s`
    /// includes their CPU time.
    pub cpu_shared: bool,
    /// With `Runner::count_programs`: the monitor's kernel programs'
    /// summed run time and runs during the build (bpf_stats).
    pub programs: Option<CountedPrograms>,
}

impl MonitoredRun {
    pub fn cpu_s(&self) -> f64 {
        self.build_cpu_s + self.daemon_cpu_s
    }
}

pub struct Triple {
    pub bare: PlainRun,
    pub log: PlainRun,
    pub monitored: MonitoredRun,
}

impl Triple {
    /// (execution log part, monitor part, total) of wall time, in points of
    /// the bare build.
    pub fn wall_parts(&self) -> (f64, f64, f64) {
        parts(self.bare.wall_s, self.log.wall_s, self.monitored.wall_s)
    }

    pub fn cpu_parts(&self) -> (f64, f64, f64) {
        parts(self.bare.cpu_s, self.log.cpu_s, self.monitored.cpu_s())
    }
}

fn parts(bare: f64, log: f64, monitored: f64) -> (f64, f64, f64) {
    let pct = |x: f64| x / bare * 100.0;
    (pct(log - bare), pct(monitored - log), pct(monitored - bare))
}

pub struct BuildResults {
    pub triples: Vec<Triple>,
    /// One more monitored build with its kernel programs' run time counted
    /// (bpf_stats on: kept out of the timed triples).
    pub accounted: Option<MonitoredRun>,
    pub workspace: String,
    /// What the builds wrote to ([`build_fs`]).
    pub filesystem: String,
    pub actions: usize,
    /// Why the series stopped where it did.
    pub stop_reason: String,
    /// Pairs built side by side, one CPU each (`side_by_side`).
    pub side_by_side: Option<side_by_side::SideBySide>,
}

/// The median and its interval of one overhead series.
pub fn summarise(values: &[f64]) -> (f64, Option<MedianInterval>) {
    (stats::median(values), stats::median_interval(values))
}

/// Has the series reached the ±2-point precision on wall and CPU totals?
fn precise_enough(triples: &[Triple]) -> bool {
    let wall: Vec<f64> = triples.iter().map(|t| t.wall_parts().2).collect();
    let cpu: Vec<f64> = triples.iter().map(|t| t.cpu_parts().2).collect();
    [wall, cpu].iter().all(|series| {
        stats::median_interval(series).is_some_and(|ci| ci.level >= 0.95 && ci.half_width() <= 2.0)
    })
}

const MIN_ADAPTIVE: usize = 5;
const MAX_ADAPTIVE: usize = 30;

pub fn run(options: &BuildOptions, monitor_bin: &Path, tmp: &Path) -> Result<BuildResults> {
    let dir = tmp.join("builds");
    let ws = dir.join("ws");
    let actions = workspace::generate(&ws, &options.workspace)?;
    let cgroups = CgroupGuard::create_fresh("monitor-bench-builds")?;
    let runner = Runner::new(ws, dir.clone(), monitor_bin, &cgroups)?;
    runner.warm_up("bench: builds")?;
    let started = Instant::now();
    let budget = Duration::from_secs(options.build_minutes * 60);
    let mut triples = Vec::new();
    let stop_reason = loop {
        let n = triples.len();
        if let Some(fixed) = options.build_pairs {
            if n >= fixed {
                break format!("{fixed} triple(s), as asked (--build-pairs)");
            }
        } else if n >= MIN_ADAPTIVE && precise_enough(&triples) {
            break format!("{n} triples: both 95 % intervals within ±2 points");
        } else if n >= MAX_ADAPTIVE {
            break format!("{n} triples: the maximum, intervals still wider than ±2 points");
        } else if n >= MIN_ADAPTIVE {
            let per = started.elapsed() / n as u32;
            if started.elapsed() + per > budget {
                break format!(
                    "{n} triples: the {}-minute budget (--build-minutes) ran out before ±2 points",
                    options.build_minutes
                );
            }
        }
        super::stats_sysctl::ensure_off().with_context(|| format!("build triple {}", n + 1))?;
        let triple = runner
            .triple(n % 2 == 1)
            .with_context(|| format!("build triple {}", n + 1))?;
        print_triple(n + 1, &triple);
        triples.push(triple);
    };
    println!("bench: builds: one more monitored build, its kernel programs' run time counted");
    let accounted = runner.accounted().context("the build with bpf_stats on")?;
    println!("bench: builds: pairs side by side, one CPU each");
    let side_by_side = side_by_side::run(options, &runner).context("builds side by side")?;
    let filesystem = runner.describe_outputs();
    drop(runner);
    drop(cgroups);
    Ok(BuildResults {
        triples,
        accounted: Some(accounted),
        workspace: workspace::describe(&options.workspace),
        filesystem,
        actions,
        stop_reason,
        side_by_side: Some(side_by_side),
    })
}

fn print_triple(n: usize, t: &Triple) {
    let (_, _, wall) = t.wall_parts();
    let (_, _, cpu) = t.cpu_parts();
    println!(
        "bench: build triple {n}: bare {:.1} s / {:.1} s CPU, log {:.1} s / {:.1} s CPU, \
         monitored {:.1} s / {:.1} s CPU (daemon {:.2} s): wall {wall:+.1} %, CPU {cpu:+.1} %, \
         {} lost, {} violations",
        t.bare.wall_s,
        t.bare.cpu_s,
        t.log.wall_s,
        t.log.cpu_s,
        t.monitored.wall_s,
        t.monitored.cpu_s(),
        t.monitored.daemon_cpu_s,
        t.monitored.lost,
        t.monitored.violations
    );
}

pub(crate) struct Runner<'a> {
    ws: PathBuf,
    /// Reports, configs and logs of the runs.
    dir: PathBuf,
    /// What the builds write (see [`build_fs`]).
    build_fs: build_fs::BuildFs,
    monitor_bin: PathBuf,
    cgroups: &'a CgroupGuard,
    serial: AtomicUsize,
    /// Record each monitored build's `monitor exec` with `perf`
    /// (`cargo xtask profile-build --perf`).
    pub(crate) perf: Option<crate::profile::perf::Recording>,
    /// Keep each monitored build's `--report` (`report-<n>.json` in `dir`).
    pub(crate) keep_reports: bool,
    /// Sum the monitor's kernel programs' run time during each monitored
    /// build (needs bpf_stats on, see `accounted`).
    count_programs: AtomicBool,
}

/// Where a build runs: anywhere, after the machine went quiet (one build
/// at a time), or pinned to one CPU beside another build (`side_by_side`:
/// the pair waits for quiet once, and cleans up after both).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Cpu {
    Any,
    Only(usize),
    /// Unpinned beside another build started at the same moment (no wait
    /// for a quiet machine: the other build is the load).
    Shared,
}

impl Cpu {
    /// Where the two builds of a side-by-side pair run: one per CPU (the
    /// first on CPU 1 when `swapped`), or both unpinned when `shared`.
    pub(crate) fn pair(swapped: bool, shared: bool) -> (Cpu, Cpu) {
        match (shared, swapped) {
            (true, _) => (Cpu::Shared, Cpu::Shared),
            (false, true) => (Cpu::Only(1), Cpu::Only(0)),
            (false, false) => (Cpu::Only(0), Cpu::Only(1)),
        }
    }

    /// Where the build ran, as a report names it.
    pub(crate) fn describe(self) -> String {
        match self {
            Cpu::Any => "any CPU".to_owned(),
            Cpu::Only(cpu) => format!("CPU {cpu}"),
            Cpu::Shared => "both CPUs".to_owned(),
        }
    }

    /// Pins `cmd` when asked; waits for a quiet machine when alone.
    fn prepare(self, cmd: &mut Command) -> Result<()> {
        match self {
            Cpu::Any => wait_quiet_before_build(),
            Cpu::Only(cpu) => {
                crate::util::pin_on_spawn(cmd, cpu);
                Ok(())
            }
            Cpu::Shared => Ok(()),
        }
    }
}

/// `usage_usec` of a cgroup's `cpu.stat`, in seconds (0 when it is missing).
fn cpu_usage_s(cgroup: &Path) -> f64 {
    fs::read_to_string(cgroup.join("cpu.stat"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse::<u64>().ok())
        })
        .map_or(0.0, |usec| usec as f64 / 1e6)
}

impl<'a> Runner<'a> {
    /// Builds of the workspace `ws`; output bases, Bazel's install base and
    /// reports go below `dir`, each build's cgroup below `cgroups`.
    pub(crate) fn new(
        ws: PathBuf,
        dir: PathBuf,
        monitor_bin: &Path,
        cgroups: &'a CgroupGuard,
    ) -> Result<Self> {
        let build_fs = build_fs::BuildFs::create(&dir)?;
        Ok(Runner {
            ws,
            dir,
            build_fs,
            monitor_bin: monitor_bin.to_path_buf(),
            cgroups,
            serial: AtomicUsize::new(0),
            perf: None,
            keep_reports: false,
            count_programs: AtomicBool::new(false),
        })
    }

    /// Where the builds write: output bases, install base, logs.
    fn outputs(&self) -> &Path {
        self.build_fs.path()
    }

    /// What the builds write to, for the report.
    pub(crate) fn describe_outputs(&self) -> String {
        self.build_fs.describe()
    }

    /// A monitored build with bpf_stats on and its programs' run time
    /// counted, less what the accounting adds to each run (an empty
    /// program beside them, [`StatsBias`]).
    fn accounted(&self) -> Result<MonitoredRun> {
        let _stats = super::stats_sysctl::StatsSetting::on()?;
        let bias = StatsBias::start(&self.monitor_bin, &self.dir.join("floor-accounted.stderr"))?;
        self.count_programs.store(true, Ordering::Relaxed);
        let run = self.monitored();
        self.count_programs.store(false, Ordering::Relaxed);
        let mut run = run?;
        let bias_ns_per_run = bias.finish()?;
        if let Some(programs) = &mut run.programs {
            programs.bias_ns_per_run = Some(bias_ns_per_run);
        }
        Ok(run)
    }

    fn next(&self) -> usize {
        self.serial.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn startup_args(&self, n: usize) -> Vec<String> {
        vec![
            format!(
                "--output_user_root={}",
                self.outputs().join("root").display()
            ),
            format!(
                "--output_base={}",
                self.outputs().join(format!("ob-{n}")).display()
            ),
            format!(
                "--host_jvm_args=-Djava.io.tmpdir={}",
                self.outputs().join("jtmp").display()
            ),
        ]
    }

    fn build_args(&self) -> Vec<String> {
        [
            "build",
            "--spawn_strategy=linux-sandbox",
            "--symlink_prefix=/",
            "//:all",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn bazel_env(&self, cmd: &mut Command) {
        cmd.current_dir(&self.ws)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
    }

    /// One triple: bare, log only, monitored (or the reverse order).
    fn triple(&self, reverse: bool) -> Result<Triple> {
        if reverse {
            let monitored = self.monitored()?;
            let log = self.plain(true)?;
            let bare = self.plain(false)?;
            Ok(Triple {
                bare,
                log,
                monitored,
            })
        } else {
            let bare = self.plain(false)?;
            let log = self.plain(true)?;
            let monitored = self.monitored()?;
            Ok(Triple {
                bare,
                log,
                monitored,
            })
        }
    }

    /// An untimed bare build when Bazel's install base is not extracted
    /// under this runner's directory yet (always, in the bench's fresh
    /// directory), so that no timed build pays for it; `who` names the
    /// command.
    pub(crate) fn warm_up(&self, who: &str) -> Result<()> {
        if !self.outputs().join("root").is_dir() {
            println!("{who}: warm-up build (untimed: extracts Bazel's install base)");
            self.plain(false).context("the warm-up build")?;
        }
        Ok(())
    }

    /// A build in a cgroup of its own, its server shut down after; CPU is
    /// the cgroup's whole usage (client, server, spawns).
    pub(crate) fn plain(&self, execution_log: bool) -> Result<PlainRun> {
        self.plain_on(execution_log, Cpu::Any)
    }

    /// [`Runner::plain`] on `cpu`.
    pub(crate) fn plain_on(&self, execution_log: bool, cpu: Cpu) -> Result<PlainRun> {
        let flags = match execution_log {
            true => vec![format!("{EXECUTION_LOG_FLAG}={{log}}")],
            false => Vec::new(),
        };
        self.plain_with(&flags, cpu)
    }

    /// An unmonitored build with these Bazel `flags` (after `build`; `{log}`
    /// is replaced by a file of this build's own, removed with its output
    /// base), on `cpu`.
    pub(crate) fn plain_with(&self, flags: &[String], cpu: Cpu) -> Result<PlainRun> {
        let n = self.next();
        let cgroup = self.cgroups.create_child(&format!("b{n}"))?;
        let mut cmd = Command::new(BAZEL);
        self.bazel_env(&mut cmd);
        cmd.args(self.startup_args(n)).args(self.build_args());
        let log = self.outputs().join(format!("exec-{n}.bin"));
        let log = log.display().to_string();
        cmd.args(flags.iter().map(|f| f.replace("{log}", &log)));
        join_cgroup_on_spawn(&mut cmd, &cgroup)?;
        cpu.prepare(&mut cmd)?;
        let start = Instant::now();
        let out = cmd
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running `{}`", display(&cmd)))?;
        let wall_s = start.elapsed().as_secs_f64();
        ensure!(
            out.status.success(),
            "`{}` failed ({}): {}",
            display(&cmd),
            out.status,
            last_lines(&String::from_utf8_lossy(&out.stderr))
        );
        self.shutdown(n)?;
        wait_empty(&cgroup)?;
        let cpu_s = cpu_usage_s(&cgroup);
        self.clean_after(n, cpu);
        Ok(PlainRun { wall_s, cpu_s })
    }

    fn shutdown(&self, n: usize) -> Result<()> {
        let mut cmd = Command::new(BAZEL);
        self.bazel_env(&mut cmd);
        cmd.args(self.startup_args(n))
            .arg("shutdown")
            .stderr(Stdio::null());
        let status = cmd
            .status()
            .with_context(|| format!("running `{}`", display(&cmd)))?;
        ensure!(status.success(), "`{}` failed: {status}", display(&cmd));
        Ok(())
    }

    /// Cleans up after build `n` now when it ran alone; a build side by
    /// side leaves it to [`Runner::clean_all`] after both (removing an
    /// output base writes to disk while the other build still runs).
    fn clean_after(&self, n: usize, cpu: Cpu) {
        if matches!(cpu, Cpu::Any) {
            self.clean(n);
        }
    }

    /// Removes every build's output base and execution log (untimed).
    fn clean_all(&self) {
        for n in 1..=self.serial.load(Ordering::Relaxed) {
            self.clean(n);
        }
    }

    /// Removes a build's output base and execution log (untimed).
    fn clean(&self, n: usize) {
        let _ = fs::remove_dir_all(self.outputs().join(format!("ob-{n}")));
        let _ = fs::remove_file(self.outputs().join(format!("exec-{n}.bin")));
    }
}

/// The previous build's clean-up (its output base removed) leaves the
/// kernel writing back for a while: each build starts on a quiet machine.
fn wait_quiet_before_build() -> Result<()> {
    if !crate::util::wait_until_machine_quiet(Duration::from_secs(10))? {
        println!("bench: builds: the machine was still busy after 10 s; building anyway");
    }
    Ok(())
}

/// Processes are in `cgroup` or below it (`cgroup.events`).
fn is_populated(cgroup: &Path) -> bool {
    fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|t| t.lines().any(|l| l == "populated 1"))
}

/// Waits until no process is left in `cgroup` (the server exiting).
fn wait_empty(cgroup: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_to_string(cgroup.join("cgroup.procs"))?
        .trim()
        .is_empty()
    {
        if Instant::now() > deadline {
            bail!(
                "processes still in {} 30 s after the build",
                cgroup.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Where `monitor exec` puts its jobs' cgroups; its usage keeps what
/// removed children used.
fn exec_parent() -> Result<PathBuf> {
    Ok(cgroup2_root()?.join("build-monitor"))
}

mod monitored;
