//! Builds side by side: two builds at the same moment, one CPU each, so
//! that both meet the VM's slow and fast phases together. Built one after
//! the other, bare builds of this workspace swung from 47 to 79 s of CPU
//! within one bench; two identical bare builds side by side differed by
//! +2.8, +0.7 and -0.5 % while the rounds drifted from 36 to 54 s
//! (measured, 2026-12-01); nine control pairs of a later bench (two bare
//! builds, `--side-by-side-control`) ranged from -3.7 to +0.7 %.
//!
//! What a pair can compare is limited by the kernel programs being global:
//! with a monitor attached, its neighbour is not bare but outside the
//! monitor and pays the outside cost, counted, not timed ([`Outside`]).
//! The target is judged on the total, measured directly: `monitor exec`
//! beside a bare build, plus that counted cost. Half the pairs are of that
//! kind; the rest split it into its parts, for the report:
//! * the execution log flag: a log build beside a bare build, no monitor;
//! * the monitor: `monitor exec` beside a log build (outside it).
//!
//! A third of the pairs measure the other configuration's total directly:
//! `monitor exec` with `[bazel] label_source = "trace_profile"` (no
//! execution log; labels from Bazel's trace profile) beside a bare build.
//!
//! Adding the parts' intervals gives a wider interval than the direct
//! total's (no part's luck may cancel another's): the 2026-12-03 05:24
//! bench's parts, 8 and 7 pairs, added up to [-1.1, +10.4].

use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use super::{BuildOptions, Cpu, LabelSource, MonitoredRun, PlainRun, Runner, exec_parent};
use crate::bench::{program_time, stats, stats_sysctl};
use crate::util::{display, join_cgroup_on_spawn, poll_until};

/// A log build beside a bare build (no monitor anywhere).
pub struct LogPair {
    pub bare: PlainRun,
    pub log: PlainRun,
}

/// Two bare builds, one on each CPU: the method's own noise (and any
/// difference between the CPUs), not part of the totals.
pub struct ControlPair {
    pub cpu0: PlainRun,
    pub cpu1: PlainRun,
}

impl ControlPair {
    /// (wall, CPU) of the build on CPU 1 over the one on CPU 0, in points.
    pub fn overheads(&self) -> (f64, f64) {
        over(&self.cpu1, &self.cpu0)
    }
}

/// `monitor exec` beside a bare build (outside it): the total, directly.
pub struct TotalPair {
    pub bare: PlainRun,
    pub monitored: MonitoredRun,
}

/// `monitor exec` beside a log build outside it.
pub struct MonitorPair {
    pub neighbour: PlainRun,
    pub monitored: MonitoredRun,
}

impl LogPair {
    /// (wall, CPU) of the log build over the bare one, in points.
    pub fn overheads(&self) -> (f64, f64) {
        over(&self.log, &self.bare)
    }
}

impl MonitorPair {
    /// (wall, CPU) of the monitored build (its daemon included) over its
    /// neighbour, in points.
    pub fn overheads(&self) -> (f64, f64) {
        monitored_over(&self.monitored, &self.neighbour)
    }
}

impl TotalPair {
    /// (wall, CPU) of the monitored build (its daemon included) over the
    /// bare one beside it, in points.
    pub fn overheads(&self) -> (f64, f64) {
        monitored_over(&self.monitored, &self.bare)
    }
}

fn monitored_over(monitored: &MonitoredRun, base: &PlainRun) -> (f64, f64) {
    (
        points(monitored.wall_s, base.wall_s),
        points(monitored.cpu_s(), base.cpu_s),
    )
}

fn points(value: f64, base: f64) -> f64 {
    (value - base) / base * 100.0
}

/// (wall, CPU) of one unmonitored build over another, in points.
pub(super) fn over(run: &PlainRun, base: &PlainRun) -> (f64, f64) {
    (
        points(run.wall_s, base.wall_s),
        points(run.cpu_s, base.cpu_s),
    )
}

/// A log build alone with a monitor attached that watches something else,
/// bpf_stats on: what the monitor's programs cost a build outside it.
pub struct Outside {
    pub build: PlainRun,
    /// The programs' run time and runs during the build (every syscall
    /// exit on the machine, the build's nearly all), and what the
    /// accounting adds to each run ([`program_time::StatsBias`]).
    pub programs: program_time::CountedPrograms,
}

pub struct SideBySide {
    pub total_pairs: Vec<TotalPair>,
    /// `monitor exec` with labels from the trace profile beside a bare build.
    pub trace_total_pairs: Vec<TotalPair>,
    pub log_pairs: Vec<LogPair>,
    pub monitor_pairs: Vec<MonitorPair>,
    /// With `--side-by-side-control`.
    pub control_pairs: Vec<ControlPair>,
    pub outside: Option<Outside>,
    pub stop_reason: String,
    /// `--side-by-side-unpinned`: both builds of a pair shared both CPUs.
    pub unpinned: bool,
}

impl Outside {
    /// The programs' own run time (the accounting's taken out), in points
    /// of this build's CPU.
    pub fn programs_points(&self) -> f64 {
        self.programs.own_s() / self.build.cpu_s * 100.0
    }

    /// The tracepoint's own cost on every syscall exit (what the empty
    /// program adds, `floor_ns_per_run`), in points of this build's CPU.
    pub fn floor_points(&self, floor_ns_per_run: f64) -> f64 {
        self.programs.runs as f64 * floor_ns_per_run / 1e9 / self.build.cpu_s * 100.0
    }
}

/// One part of the overhead, in points: its median and 95 % interval (a
/// counted part has no spread: all three equal).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Part {
    pub median: f64,
    pub low: f64,
    pub high: f64,
}

impl Part {
    /// The median of a paired series and its interval (the range with
    /// fewer than 6 pairs; unbounded for one pair: it shows nothing).
    pub fn of(series: &[f64]) -> Part {
        let median = stats::median(series);
        match stats::median_interval(series) {
            Some(ci) => Part {
                median,
                low: ci.low,
                high: ci.high,
            },
            None => Part {
                median,
                low: f64::NEG_INFINITY,
                high: f64::INFINITY,
            },
        }
    }

    /// `+x.x % [lo, hi]`.
    pub fn text(&self) -> String {
        if self.high.is_infinite() {
            return format!("{:+.1} % (too few pairs: no interval)", self.median);
        }
        format!(
            "{:+.1} % [{:+.1}, {:+.1}]",
            self.median, self.low, self.high
        )
    }

    pub fn counted(points: f64) -> Part {
        Part {
            median: points,
            low: points,
            high: points,
        }
    }

    /// Parts measured apart add up; so do their intervals' ends (wider
    /// than the sum's own interval would be: no part's luck is assumed to
    /// cancel another's).
    pub fn plus(self, other: Part) -> Part {
        Part {
            median: self.median + other.median,
            low: self.low + other.low,
            high: self.high + other.high,
        }
    }
}

impl SideBySide {
    /// What the neighbour of a `monitor exec` build paid, counted: the
    /// programs and, when known, the tracepoint's floor, in points of the
    /// outside build's CPU (added to wall time as well: the builds use
    /// their CPU all along).
    fn counted(&self, floor_ns_per_run: Option<f64>) -> Option<Part> {
        let outside = self.outside.as_ref()?;
        let floor = floor_ns_per_run.map_or(0.0, |ns| outside.floor_points(ns));
        Some(Part::counted(outside.programs_points() + floor))
    }

    /// (wall, CPU): the total measured directly (`monitor exec` over the
    /// bare build beside it) plus the counted part the bare build paid.
    /// The +3 % target is judged on this.
    pub fn totals(&self, floor_ns_per_run: Option<f64>) -> Option<(Part, Part)> {
        let counted = self.counted(floor_ns_per_run)?;
        if self.total_pairs.is_empty() {
            return None;
        }
        let (wall, cpu) = self.total_series();
        Some((Part::of(&wall).plus(counted), Part::of(&cpu).plus(counted)))
    }

    /// [`SideBySide::totals`] of `monitor exec` with labels from the trace
    /// profile.
    pub fn trace_totals(&self, floor_ns_per_run: Option<f64>) -> Option<(Part, Part)> {
        let counted = self.counted(floor_ns_per_run)?;
        if self.trace_total_pairs.is_empty() {
            return None;
        }
        let (wall, cpu) = self.trace_total_series();
        Some((Part::of(&wall).plus(counted), Part::of(&cpu).plus(counted)))
    }

    /// (wall, CPU): the log part, the monitor part and the counted part
    /// added up, each in points of its own base (bare, the log neighbour,
    /// the outside build: within a point or two of each other). A check
    /// on the direct total, with a wider interval.
    pub fn parts_total(&self, floor_ns_per_run: Option<f64>) -> Option<(Part, Part)> {
        let counted = self.counted(floor_ns_per_run)?;
        if self.log_pairs.is_empty() || self.monitor_pairs.is_empty() {
            return None;
        }
        let (log_wall, log_cpu) = self.log_series();
        let (mon_wall, mon_cpu) = self.monitor_series();
        let total =
            |log: &[f64], monitor: &[f64]| Part::of(log).plus(Part::of(monitor)).plus(counted);
        Some((total(&log_wall, &mon_wall), total(&log_cpu, &mon_cpu)))
    }

    pub fn pairs(&self) -> usize {
        self.total_pairs.len()
            + self.trace_total_pairs.len()
            + self.log_pairs.len()
            + self.monitor_pairs.len()
            + self.control_pairs.len()
    }

    fn pairs_of(&self, kind: Kind) -> usize {
        match kind {
            Kind::Total => self.total_pairs.len(),
            Kind::TraceTotal => self.trace_total_pairs.len(),
            Kind::Log => self.log_pairs.len(),
            Kind::Monitor => self.monitor_pairs.len(),
            Kind::Control => self.control_pairs.len(),
        }
    }

    /// Every `monitor exec` build of the series with the default label
    /// source (the execution log).
    pub fn monitored_runs(&self) -> impl Iterator<Item = &MonitoredRun> {
        let total = self.total_pairs.iter().map(|p| &p.monitored);
        total.chain(self.monitor_pairs.iter().map(|p| &p.monitored))
    }

    /// Every `monitor exec` build with labels from the trace profile.
    pub fn trace_runs(&self) -> impl Iterator<Item = &MonitoredRun> {
        self.trace_total_pairs.iter().map(|p| &p.monitored)
    }

    pub fn total_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.total_pairs.iter().map(TotalPair::overheads).unzip()
    }

    pub fn trace_total_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.trace_total_pairs
            .iter()
            .map(TotalPair::overheads)
            .unzip()
    }

    pub fn control_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.control_pairs
            .iter()
            .map(ControlPair::overheads)
            .unzip()
    }

    pub fn log_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.log_pairs.iter().map(LogPair::overheads).unzip()
    }

    pub fn monitor_series(&self) -> (Vec<f64>, Vec<f64>) {
        self.monitor_pairs
            .iter()
            .map(MonitorPair::overheads)
            .unzip()
    }
}

/// What one side-by-side pair builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `monitor exec` beside a bare build.
    Total,
    /// `monitor exec`, labels from the trace profile, beside a bare build.
    TraceTotal,
    /// A log build beside a bare build.
    Log,
    /// `monitor exec` beside a log build.
    Monitor,
    /// Two bare builds.
    Control,
}

/// The kinds in turn: a third of the pairs (without controls) measure the
/// default's total, a third the trace profile's, the others the default's
/// two timed parts.
fn kind_of(n: usize, control: bool) -> Kind {
    const CYCLE: [Kind; 7] = [
        Kind::Total,
        Kind::TraceTotal,
        Kind::Log,
        Kind::Total,
        Kind::TraceTotal,
        Kind::Monitor,
        Kind::Control,
    ];
    let len = if control { 7 } else { 6 };
    CYCLE[n % len]
}

/// Direct total pairs before the series may stop early: the fewest whose
/// median interval reaches 95 % (6 pairs: 97 %).
const MIN_TOTAL_PAIRS: usize = 6;
/// Pairs of each timed part before the series may stop early.
const MIN_PART_PAIRS: usize = 2;
const MAX_PAIRS: usize = 40;
/// The precision: the total's interval narrower than ±2 points.
const TOTAL_HALF_WIDTH: f64 = 2.0;

/// Runs pairs of the kinds in turn (each kind swaps its CPUs every other
/// pair of its own) until the direct total is within ±2 points, or the
/// budget ends.
pub fn run(options: &BuildOptions, runner: &Runner<'_>) -> Result<SideBySide> {
    let started = Instant::now();
    let budget = Duration::from_secs(options.side_by_side_minutes * 60);
    let mut result = SideBySide {
        total_pairs: Vec::new(),
        trace_total_pairs: Vec::new(),
        log_pairs: Vec::new(),
        monitor_pairs: Vec::new(),
        control_pairs: Vec::new(),
        outside: None,
        stop_reason: String::new(),
        unpinned: options.side_by_side_unpinned,
    };
    result.stop_reason = loop {
        let n = result.pairs();
        if let Some(reason) = stop(options, &result, started.elapsed(), budget) {
            break reason;
        }
        stats_sysctl::ensure_off().with_context(|| format!("side-by-side pair {}", n + 1))?;
        super::wait_quiet_before_build()?;
        let kind = kind_of(n, options.side_by_side_control);
        run_pair(runner, &mut result, kind)
            .with_context(|| format!("side-by-side pair {}", n + 1))?;
        runner.clean_all();
    };
    println!("bench: builds: one log build with a monitor attached beside it, programs counted");
    result.outside = Some(outside(runner).context("the log build beside an idle monitor")?);
    Ok(result)
}

/// Builds one pair of `kind` and keeps it in `result`: pinned one per CPU
/// (each kind swapping its CPUs every other pair of its own), or both
/// unpinned (`result.unpinned`).
fn run_pair(runner: &Runner<'_>, result: &mut SideBySide, kind: Kind) -> Result<()> {
    let n = result.pairs() + 1;
    let swap = result.pairs_of(kind) % 2 == 1;
    let (first, second) = Cpu::pair(swap, result.unpinned);
    let plain = |log: bool, cpu: Cpu| move || runner.plain_on(log, cpu);
    let monitored = |cpu: Cpu| move || runner.monitored_on(cpu, LabelSource::ExecutionLog);
    let traced = |cpu: Cpu| move || runner.monitored_on(cpu, LabelSource::TraceProfile);
    match kind {
        Kind::Total => {
            let (bare, monitored) = both(plain(false, first), monitored(second))?;
            let pair = TotalPair { bare, monitored };
            print_pair(n, "bare | monitor exec", pair.overheads());
            result.total_pairs.push(pair);
        }
        Kind::TraceTotal => {
            let (bare, monitored) = both(plain(false, first), traced(second))?;
            let pair = TotalPair { bare, monitored };
            print_pair(n, "bare | monitor exec, trace profile", pair.overheads());
            result.trace_total_pairs.push(pair);
        }
        Kind::Log => {
            let (bare, log) = both(plain(false, first), plain(true, second))?;
            let pair = LogPair { bare, log };
            print_pair(n, "bare | log", pair.overheads());
            result.log_pairs.push(pair);
        }
        Kind::Monitor => {
            let (neighbour, monitored) = both(plain(true, first), monitored(second))?;
            let pair = MonitorPair {
                neighbour,
                monitored,
            };
            print_pair(n, "log | monitor exec", pair.overheads());
            result.monitor_pairs.push(pair);
        }
        Kind::Control => {
            // Unpinned, "CPU 0" and "CPU 1" are only the two builds.
            let (on0, on1) = Cpu::pair(false, result.unpinned);
            let (cpu0, cpu1) = both(plain(false, on0), plain(false, on1))?;
            let pair = ControlPair { cpu0, cpu1 };
            print_pair(n, "control: bare | bare", pair.overheads());
            result.control_pairs.push(pair);
        }
    }
    Ok(())
}

/// Why the series stops now, or `None` to go on.
fn stop(
    options: &BuildOptions,
    result: &SideBySide,
    elapsed: Duration,
    budget: Duration,
) -> Option<String> {
    let n = result.pairs();
    if let Some(fixed) = options.side_by_side_pairs {
        return (n >= fixed).then(|| format!("{fixed} pair(s), as asked (--side-by-side-pairs)"));
    }
    let enough = result.total_pairs.len() >= MIN_TOTAL_PAIRS
        && result.trace_total_pairs.len() >= MIN_TOTAL_PAIRS
        && result.log_pairs.len() >= MIN_PART_PAIRS
        && result.monitor_pairs.len() >= MIN_PART_PAIRS;
    if enough && precise_enough(result) {
        return Some(format!(
            "{n} pairs: both direct totals' 95 % intervals within ±{TOTAL_HALF_WIDTH} points"
        ));
    }
    if n >= MAX_PAIRS {
        return Some(format!("{n} pairs: the maximum"));
    }
    let per_pair = elapsed.checked_div(n as u32).unwrap_or_default();
    (enough && elapsed + per_pair > budget).then(|| {
        format!(
            "{n} pairs: the {}-minute budget (--side-by-side-minutes) ran out before the direct \
             total was within ±{TOTAL_HALF_WIDTH} points",
            options.side_by_side_minutes
        )
    })
}

fn precise_enough(result: &SideBySide) -> bool {
    let (wall, cpu) = result.total_series();
    let (trace_wall, trace_cpu) = result.trace_total_series();
    [wall, cpu, trace_wall, trace_cpu].iter().all(|series| {
        stats::median_interval(series)
            .is_some_and(|ci| ci.level >= 0.95 && ci.half_width() < TOTAL_HALF_WIDTH)
    })
}

/// Runs both builds at once; both must succeed.
pub(super) fn both<A: Send, B: Send>(
    a: impl FnOnce() -> Result<A> + Send,
    b: impl FnOnce() -> Result<B> + Send,
) -> Result<(A, B)> {
    std::thread::scope(|scope| {
        let a = scope.spawn(a);
        let b = scope.spawn(b);
        let a = a
            .join()
            .map_err(|_| anyhow::anyhow!("a build thread panicked"))?;
        let b = b
            .join()
            .map_err(|_| anyhow::anyhow!("a build thread panicked"))?;
        Ok((a?, b?))
    })
}

fn print_pair(n: usize, kind: &str, (wall, cpu): (f64, f64)) {
    println!("bench: side-by-side pair {n} ({kind}): wall {wall:+.1} %, CPU {cpu:+.1} %");
}

/// A log build while `monitor exec` watches only a shell waiting on its
/// stdin: the programs' run time over the build is the outside cost.
fn outside(runner: &Runner<'_>) -> Result<Outside> {
    let cgroups = runner.cgroups;
    let cgroup = cgroups.create_child("outside-monitor")?;
    let config = runner.exec_config()?;
    let mut cmd = Command::new(&runner.monitor_bin);
    cmd.arg("exec")
        .arg("--config")
        .arg(&config)
        .args(["--", "/bin/sh", "-c", "read _"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    join_cgroup_on_spawn(&mut cmd, &cgroup)?;
    let mut monitor = cmd
        .spawn()
        .with_context(|| format!("running `{}`", display(&cmd)))?;
    let pid = monitor.id();
    let attached = poll_until(Duration::from_secs(60), || job_running(pid).then_some(()));
    ensure!(
        attached.is_some(),
        "`{}` did not attach within 60 s",
        display(&cmd)
    );
    crate::util::wait_until_idle(pid, Duration::from_secs(30))?;
    let _stats = stats_sysctl::StatsSetting::on()?;
    let bias = program_time::StatsBias::start(
        &runner.monitor_bin,
        &runner.dir.join("floor-outside.stderr"),
    )?;
    let (ns_before, runs_before) = program_time::held_programs(pid)?;
    let build = runner.plain(true)?;
    let (ns_after, runs_after) = program_time::held_programs(pid)?;
    let bias_ns_per_run = bias.finish()?;
    drop(monitor.stdin.take().map(|mut stdin| stdin.write_all(b"\n")));
    let status = monitor.wait()?;
    ensure!(status.success(), "`{}` exited with {status}", display(&cmd));
    Ok(Outside {
        build,
        programs: program_time::CountedPrograms {
            seconds: ns_after.saturating_sub(ns_before) as f64 / 1e9,
            runs: runs_after.saturating_sub(runs_before),
            bias_ns_per_run: Some(bias_ns_per_run),
        },
    })
}

/// `monitor exec` (process `pid`) runs its command: its programs are
/// attached (it starts the command only then).
fn job_running(pid: u32) -> bool {
    exec_parent().is_ok_and(|parent| super::is_populated(&parent.join(format!("exec-{pid}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(wall_s: f64, cpu_s: f64) -> PlainRun {
        PlainRun { wall_s, cpu_s }
    }

    fn log_pair(bare: f64, log: f64) -> LogPair {
        LogPair {
            bare: plain(bare, bare),
            log: plain(log, log),
        }
    }

    #[test]
    fn parts_add_up_with_their_intervals() {
        let a = Part::of(&[1.0, 2.0, 3.0]);
        assert_eq!((a.median, a.low, a.high), (2.0, 1.0, 3.0));
        let sum = a.plus(Part::counted(0.5));
        assert_eq!((sum.median, sum.low, sum.high), (2.5, 1.5, 3.5));
        let one = Part::of(&[4.0]);
        assert_eq!(one.median, 4.0);
        assert!(one.high.is_infinite(), "one pair has no interval");
    }

    #[test]
    fn outside_points_are_of_the_outside_build() {
        let outside = Outside {
            build: plain(10.0, 50.0),
            programs: program_time::CountedPrograms {
                seconds: 0.5,
                runs: 10_000_000,
                bias_ns_per_run: None,
            },
        };
        assert!((outside.programs_points() - 1.0).abs() < 1e-9);
        // 10 M runs of 25 ns: 0.25 s of 50 s.
        assert!((outside.floor_points(25.0) - 0.5).abs() < 1e-9);
        // The accounting's 20 ns a run out of the programs' 50: 0.3 s.
        let outside = Outside {
            programs: program_time::CountedPrograms {
                bias_ns_per_run: Some(20.0),
                ..outside.programs
            },
            ..outside
        };
        assert!((outside.programs_points() - 0.6).abs() < 1e-9);
    }

    fn monitored(wall_s: f64, build_cpu_s: f64) -> MonitoredRun {
        MonitoredRun {
            wall_s,
            build_cpu_s,
            daemon_cpu_s: 2.0,
            ..Default::default()
        }
    }

    #[test]
    fn totals_need_their_pairs_and_the_counted_part() {
        let mut result = SideBySide {
            total_pairs: Vec::new(),
            trace_total_pairs: Vec::new(),
            log_pairs: vec![log_pair(100.0, 101.0), log_pair(100.0, 103.0)],
            monitor_pairs: Vec::new(),
            control_pairs: Vec::new(),
            outside: None,
            stop_reason: String::new(),
            unpinned: false,
        };
        assert!(result.totals(None).is_none());
        assert!(result.parts_total(None).is_none());
        for _ in 0..2 {
            result.monitor_pairs.push(MonitorPair {
                neighbour: plain(100.0, 100.0),
                monitored: monitored(104.0, 102.0),
            });
        }
        for cpu in [101.0, 103.0, 105.0] {
            result.total_pairs.push(TotalPair {
                bare: plain(100.0, 100.0),
                monitored: monitored(104.0, cpu),
            });
        }
        assert!(result.totals(None).is_none(), "no outside part yet");
        assert!(result.parts_total(None).is_none(), "no outside part yet");
        result.outside = Some(Outside {
            build: plain(100.0, 100.0),
            programs: program_time::CountedPrograms {
                seconds: 0.5,
                runs: 0,
                bias_ns_per_run: None,
            },
        });
        let (wall, cpu) = result.parts_total(Some(20.0)).unwrap();
        // Log 1..3 (median 2), monitor 4, outside 0.5.
        assert_eq!((cpu.median, cpu.low, cpu.high), (6.5, 5.5, 7.5));
        assert_eq!(wall, cpu);
        // Directly: CPU 3, 5, 7 (the daemon's 2 s included), wall 4 each;
        // plus the outside 0.5.
        let (wall, cpu) = result.totals(Some(20.0)).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(cpu.median, 5.5) && close(cpu.low, 3.5) && close(cpu.high, 7.5),
            "{cpu:?}"
        );
        assert_eq!((wall.median, wall.low, wall.high), (4.5, 4.5, 4.5));
        assert_eq!(result.monitored_runs().count(), 5);
        // The trace profile's total: its own pairs, the same counted part.
        assert!(result.trace_totals(Some(20.0)).is_none());
        result.trace_total_pairs.push(TotalPair {
            bare: plain(100.0, 100.0),
            monitored: monitored(101.0, 99.0),
        });
        let (wall, cpu) = result.trace_totals(Some(20.0)).unwrap();
        assert!(
            close(cpu.median, 1.5) && close(wall.median, 1.5),
            "{cpu:?} {wall:?}"
        );
        assert_eq!(result.trace_runs().count(), 1);
        assert_eq!(
            result.monitored_runs().count(),
            5,
            "not among the default's"
        );
    }

    #[test]
    fn a_third_of_the_pairs_measure_each_total() {
        let kinds: Vec<Kind> = (0..12).map(|n| kind_of(n, false)).collect();
        let count = |kind: Kind| kinds.iter().filter(|k| **k == kind).count();
        assert_eq!(count(Kind::Total), 4, "{kinds:?}");
        assert_eq!(count(Kind::TraceTotal), 4, "{kinds:?}");
        assert!(kinds.contains(&Kind::Log) && kinds.contains(&Kind::Monitor));
        assert!(!kinds.contains(&Kind::Control), "none asked for");
        let with_control: Vec<Kind> = (0..7).map(|n| kind_of(n, true)).collect();
        assert!(with_control.contains(&Kind::Control), "{with_control:?}");
    }
}
