//! `cargo xtask bench [--quick]`: what the monitor costs, next to bpftrace
//! doing the same job, and how many file events per second it takes without
//! loss. Everything is measured in one run, setups interleaved in rounds, and
//! written to BENCHMARKS.md.
//!
//! The process being timed is `cargo xtask bench-worker` (this binary,
//! re-executed): it optionally joins a cgroup first thing, then times
//! `open(O_RDONLY)` + `close` pairs on one file.

use std::{
    env,
    ffi::{CStr, CString},
    fmt::Write as _,
    fs::{self, File},
    io,
    net::SocketAddr,
    os::unix::{ffi::OsStrExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{self, Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use crate::{
    setup,
    util::{
        CgroupGuard, Daemon, cargo, display, exec, free_port, get_metrics, is_root, metric_sum,
        output, quoted, target_dir, wait_healthz, wait_until_bpftrace_prints, wait_until_tracing,
        workspace_root, write_atomic,
    },
};

const BPFTRACE: &str = "/usr/bin/bpftrace";
/// Opens per batch in rate-limited worker runs.
const BATCH: u64 = 1000;
/// Target rates of the throughput test (opens per second); an unlimited run
/// with one worker, then one with a worker per CPU, follow.
const RATES: &[u64] = &[25_000, 50_000, 100_000, 200_000];

#[derive(clap::Args)]
pub struct Options {
    /// Fewer, shorter runs: 2 rounds of 50 000 pairs, 1 s per throughput rate.
    #[arg(long)]
    quick: bool,
    /// Runs per setup [default: 5, or 2 with --quick].
    #[arg(long)]
    rounds: Option<usize>,
    /// open+close pairs per run [default: 200000, or 50000 with --quick].
    #[arg(long)]
    iterations: Option<u64>,
    /// Where to write the report [default: BENCHMARKS.md at the workspace root].
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct WorkerOptions {
    /// The file to open and close.
    #[arg(long)]
    path: PathBuf,
    /// Timed open+close pairs (ignored with --duration-ms).
    #[arg(long, default_value_t = 200_000)]
    iterations: u64,
    /// Join this cgroup (write our pid to its cgroup.procs) before anything
    /// else.
    #[arg(long)]
    cgroup: Option<PathBuf>,
    /// Untimed pairs first.
    #[arg(long, default_value_t = 10_000)]
    warmup: u64,
    /// Throughput mode: open+close for this long instead of --iterations.
    #[arg(long)]
    duration_ms: Option<u64>,
    /// Throughput mode: target opens per second, in batches of 1000 with
    /// sleeps between them; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// What the worker prints, one line: `opens=N elapsed_ns=T ns_per_pair=X`.
/// `opens` counts every open after joining the cgroup (warm-up included);
/// the time covers the timed part only.
#[derive(Debug, Clone, Copy)]
struct WorkerReport {
    opens: u64,
    elapsed_ns: u64,
    ns_per_pair: f64,
}

impl WorkerReport {
    fn parse(text: &str) -> Result<Self> {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .ok_or_else(|| anyhow!("the worker printed no {name}= in {text:?}"))
        };
        Ok(Self {
            opens: field("opens")?.parse()?,
            elapsed_ns: field("elapsed_ns")?.parse()?,
            ns_per_pair: field("ns_per_pair")?.parse()?,
        })
    }
}

fn open_close(path: &CStr) -> Result<()> {
    // SAFETY: `path` is a valid NUL-terminated string; the fd is ours.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("open({path:?})"));
    }
    // SAFETY: closing the fd just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

/// `cargo xtask bench-worker`.
pub fn worker(options: WorkerOptions) -> Result<()> {
    let WorkerOptions {
        path,
        iterations,
        cgroup,
        warmup,
        duration_ms,
        rate,
    } = options;
    if let Some(dir) = &cgroup {
        let procs = dir.join("cgroup.procs");
        fs::write(&procs, process::id().to_string())
            .with_context(|| format!("joining cgroup {}", procs.display()))?;
    }
    let path = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    for _ in 0..warmup {
        open_close(&path)?;
    }
    let start = Instant::now();
    let timed = match duration_ms {
        None => {
            for _ in 0..iterations {
                open_close(&path)?;
            }
            iterations
        }
        Some(ms) => {
            let duration = Duration::from_millis(ms);
            let mut done = 0u64;
            while start.elapsed() < duration {
                for _ in 0..BATCH {
                    open_close(&path)?;
                }
                done += BATCH;
                if rate > 0 {
                    let due = Duration::from_secs_f64(done as f64 / rate as f64);
                    let elapsed = start.elapsed();
                    if due > elapsed {
                        thread::sleep(due - elapsed);
                    }
                }
            }
            done
        }
    };
    let elapsed = start.elapsed();
    let ns_per_pair = elapsed.as_nanos() as f64 / timed.max(1) as f64;
    println!(
        "opens={} elapsed_ns={} ns_per_pair={ns_per_pair:.1}",
        warmup + timed,
        elapsed.as_nanos()
    );
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    Bare,
    Floor,
    MonitorOutside,
    MonitorInside,
    BpftraceOutside,
    BpftraceInside,
}

const SETUPS: [Setup; 6] = [
    Setup::Bare,
    Setup::Floor,
    Setup::MonitorOutside,
    Setup::MonitorInside,
    Setup::BpftraceOutside,
    Setup::BpftraceInside,
];

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Self::Bare => "bare (no tracer)",
            Self::Floor => "floor: empty program on raw_tracepoint sys_exit",
            Self::MonitorOutside => "monitor, worker outside monitored cgroups",
            Self::MonitorInside => "monitor, worker in an action cgroup (declared file)",
            Self::BpftraceOutside => "bpftrace, worker outside the filtered cgroup",
            Self::BpftraceInside => "bpftrace, worker in the filtered cgroup (prints each open)",
        }
    }

    fn index(self) -> usize {
        SETUPS.iter().position(|s| *s == self).expect("listed")
    }
}

#[derive(Default)]
struct Samples {
    ns_per_pair: Vec<f64>,
    /// Events the tracer saw during the run, where it can be told.
    events: Vec<u64>,
    /// Opens the worker issued in the run (warm-up included).
    opens: Vec<u64>,
}

/// One row of the throughput test.
struct RateRow {
    label: String,
    opens: u64,
    seconds: f64,
    received: u64,
    lost: u64,
}

impl RateRow {
    fn lossless(&self) -> bool {
        self.received == self.opens && self.lost == 0
    }

    fn achieved(&self) -> f64 {
        self.opens as f64 / self.seconds.max(1e-9)
    }
}

struct Bench {
    monitor_bin: PathBuf,
    worker_exe: PathBuf,
    tmp: PathBuf,
    file: PathBuf,
    parent_cgroup: PathBuf,
    action_cgroup: PathBuf,
    declarations: PathBuf,
    alerts: PathBuf,
    bpftrace_script: PathBuf,
    iterations: u64,
    warmup: u64,
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

impl Bench {
    fn worker_command(&self, cgroup: Option<&Path>) -> Command {
        let mut cmd = Command::new(&self.worker_exe);
        cmd.arg("bench-worker")
            .arg("--path")
            .arg(&self.file)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(dir) = cgroup {
            cmd.arg("--cgroup").arg(dir);
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

    /// A timed run: warm-up, then `iterations` pairs.
    fn timed_run(&self, cgroup: Option<&Path>) -> Result<WorkerReport> {
        let mut cmd = self.worker_command(cgroup);
        cmd.arg("--iterations")
            .arg(self.iterations.to_string())
            .arg("--warmup")
            .arg(self.warmup.to_string());
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start `{}`", display(&cmd)))?;
        Self::finish_worker(&cmd, child)
    }

    /// Throughput runs: `workers` workers in the action cgroup for `duration`,
    /// each at `rate` opens/s (0 = unlimited); returns the summed opens and
    /// the longest elapsed time.
    fn throughput_run(&self, workers: usize, rate: u64, duration: Duration) -> Result<(u64, f64)> {
        let mut running = Vec::new();
        for _ in 0..workers {
            let mut cmd = self.worker_command(Some(&self.action_cgroup));
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

    /// `monitor bench-floor`: the same hook with an empty program, the cost
    /// any syscall hook puts on every process.
    fn start_floor(&self, tag: &str) -> Result<Daemon> {
        let stderr_path = self.tmp.join(format!("floor-{tag}.stderr"));
        let stderr = File::create(&stderr_path)
            .with_context(|| format!("creating {}", stderr_path.display()))?;
        let mut daemon = Daemon::spawn(
            "monitor bench-floor",
            Command::new(&self.monitor_bin)
                .arg("bench-floor")
                .stdout(Stdio::null())
                .stderr(stderr),
        )?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::read_to_string(&stderr_path).is_ok_and(|t| t.contains("floor program attached"))
            {
                return Ok(daemon);
            }
            if let Some(status) = daemon.try_wait()? {
                bail!(
                    "monitor bench-floor exited early ({status}): {}",
                    tail(&stderr_path)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "monitor bench-floor did not attach within 20 s"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn start_monitor(&self, tag: &str) -> Result<RunningMonitor> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = format!(
            r#"[attribution]
cgroup_parents = [{parent}]
declarations_dir = {declarations}

[alerts]
stdout = false
file = {alerts}

[metrics]
listen = "{addr}"
"#,
            parent = quoted(&self.parent_cgroup)?,
            declarations = quoted(&self.declarations)?,
            alerts = quoted(&self.alerts)?,
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
        let mut cmd = Command::new(&self.monitor_bin);
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

/// Lines `pid path ret` that bpftrace printed for `path` (all event lines if
/// `path` is empty).
fn count_printed_events(text: &str, path: &str) -> u64 {
    text.lines()
        .filter(|line| {
            let mut words = line.split(' ');
            let pid = words.next().is_some_and(|w| w.parse::<u32>().is_ok());
            let printed_path = words.next();
            pid && (path.is_empty() || printed_path == Some(path))
        })
        .count() as u64
}

fn file_counters(addr: SocketAddr) -> Result<(u64, u64)> {
    let text = get_metrics(addr)?;
    let file = metric_sum(&text, "build_monitor_events_total", Some(("kind", "file")));
    let lost = metric_sum(&text, "build_monitor_events_lost_total", None);
    Ok((file as u64, lost as u64))
}

/// Waits for the monitor's reader to drain: until `file` reaches `target`, or
/// the counters have not moved for 1.5 s (at most 10 s).
fn drained(addr: SocketAddr, target: u64) -> Result<(u64, u64)> {
    let start = Instant::now();
    let mut last = file_counters(addr)?;
    let mut last_change = Instant::now();
    loop {
        if last.0 >= target
            || last_change.elapsed() >= Duration::from_millis(1500)
            || start.elapsed() >= Duration::from_secs(10)
        {
            return Ok(last);
        }
        thread::sleep(Duration::from_millis(100));
        let now = file_counters(addr)?;
        if now != last {
            last = now;
            last_change = Instant::now();
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// What one `cargo xtask bench` run does, from its options.
struct RunSettings {
    rounds: usize,
    iterations: u64,
    rate_duration: Duration,
    report_path: PathBuf,
    /// The command line, as the report's "Reproduce" section shows it.
    command: String,
}

impl RunSettings {
    fn from_options(options: Options) -> Result<Self> {
        let Options {
            quick,
            rounds,
            iterations,
            output: report_path,
        } = options;
        let rounds = rounds.unwrap_or(if quick { 2 } else { 5 });
        let iterations = iterations.unwrap_or(if quick { 50_000 } else { 200_000 });
        let rate_duration = Duration::from_secs(if quick { 1 } else { 2 });
        ensure!(
            rounds > 0 && iterations > 0,
            "--rounds and --iterations must be positive"
        );
        let report_path = report_path.unwrap_or_else(|| workspace_root().join("BENCHMARKS.md"));
        let command = format!(
            "cargo xtask {}",
            env::args().skip(1).collect::<Vec<_>>().join(" ")
        );
        Ok(Self {
            rounds,
            iterations,
            rate_duration,
            report_path,
            command,
        })
    }
}

pub fn run(options: Options) -> Result<()> {
    let settings = RunSettings::from_options(options)?;
    let monitor_bin = prepare_tools(&settings.command)?;
    let worker_exe = env::current_exe().context("locating the xtask binary (current_exe)")?;
    let tmp_dir = tempfile::Builder::new()
        .prefix("monitor-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    // Dropped last (after every daemon and worker): the cgroups.
    let cgroups = CgroupGuard::create_fresh("monitor-bench")?;
    let bench = Bench::prepare(
        tmp_dir.path(),
        &cgroups,
        monitor_bin,
        worker_exe,
        settings.iterations,
    )?;

    println!(
        "bench: {} round(s) of {} setups, {} open+close pairs per run",
        settings.rounds,
        SETUPS.len(),
        settings.iterations
    );
    let samples = cost_rounds(&bench, settings.rounds)?;
    let rows = throughput_test(&bench, settings.rate_duration)?;
    let alert_count = count_alerts(&bench.alerts);

    let report = render_report(&ReportInput {
        command: &settings.command,
        rounds: settings.rounds,
        iterations: settings.iterations,
        warmup: bench.warmup,
        rate_duration: settings.rate_duration,
        samples: &samples,
        rows: &rows,
        alert_count,
        monitor_bin: &bench.monitor_bin,
    })?;
    let report_path = &settings.report_path;
    fs::write(report_path, &report)
        .with_context(|| format!("writing {}", report_path.display()))?;
    println!("\n{report}");
    println!("bench: wrote {}", report_path.display());
    drop(bench);
    drop(cgroups);
    Ok(())
}

/// Checks root, runs setup, checks bpftrace and builds the release monitor;
/// returns the monitor binary.
fn prepare_tools(command: &str) -> Result<PathBuf> {
    ensure!(
        is_root(),
        "the benchmark needs root (it loads eBPF programs, runs bpftrace and creates cgroups): \
         run `sudo -E {command}`"
    );
    setup::run()?;
    ensure!(
        Path::new(BPFTRACE).is_file(),
        "{BPFTRACE} is missing (Debian package bpftrace; `cargo xtask setup` installs it)"
    );
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
    /// The input file, its declaration and the bpftrace script in `tmp_dir`,
    /// and the action cgroup below `cgroups`.
    fn prepare(
        tmp_dir: &Path,
        cgroups: &CgroupGuard,
        monitor_bin: PathBuf,
        worker_exe: PathBuf,
        iterations: u64,
    ) -> Result<Bench> {
        let tmp = tmp_dir
            .canonicalize()
            .context("canonicalising the temporary directory")?;
        let file = tmp.join("input.txt");
        fs::write(&file, "benchmark input\n")
            .with_context(|| format!("writing {}", file.display()))?;
        let declarations = tmp.join("declarations");
        fs::create_dir(&declarations)
            .with_context(|| format!("creating {}", declarations.display()))?;
        let action_cgroup = cgroups.create_child("act")?;
        write_declaration(&declarations, &action_cgroup, &file)?;
        let bpftrace_script = tmp.join("openat.bt");
        write_bpftrace_script(&bpftrace_script, &action_cgroup)?;
        Ok(Bench {
            monitor_bin,
            worker_exe,
            alerts: tmp.join("alerts.jsonl"),
            tmp,
            file,
            parent_cgroup: cgroups.path().to_path_buf(),
            action_cgroup,
            declarations,
            bpftrace_script,
            iterations,
            warmup: 10_000,
        })
    }
}

/// Declares `file` as the only input of the action in `action_cgroup`.
fn write_declaration(declarations: &Path, action_cgroup: &Path, file: &Path) -> Result<()> {
    let declaration = serde_json::json!({
        "cgroup": action_cgroup,
        "label": "//bench:open_close",
        "mnemonic": "Bench",
        "inputs": [file],
    });
    write_atomic(
        &declarations.join("act.json"),
        serde_json::to_string_pretty(&declaration)?.as_bytes(),
    )
}

/// bpftrace doing the monitor's job: cgroup-filtered openat entry/exit,
/// printing pid, path and result of each open.
fn write_bpftrace_script(script: &Path, action_cgroup: &Path) -> Result<()> {
    fs::write(
        script,
        format!(
            "tracepoint:syscalls:sys_enter_openat /cgroup == cgroupid({cg})/ {{ @p[tid] = args->filename; }}\n\
             tracepoint:syscalls:sys_exit_openat /@p[tid]/ {{ printf(\"%d %s %d\\n\", pid, str(@p[tid]), args->ret); delete(@p[tid]); }}\n",
            cg = quoted(action_cgroup)?,
        ),
    )
    .with_context(|| format!("writing {}", script.display()))
}

/// The cost test: every setup once per round, setups interleaved.
fn cost_rounds(bench: &Bench, rounds: usize) -> Result<Vec<Samples>> {
    let mut samples: Vec<Samples> = SETUPS.iter().map(|_| Samples::default()).collect();
    for round in 1..=rounds {
        let tag = format!("round{round}");
        let mut record = |setup: Setup, report: WorkerReport, events: Option<u64>| {
            println!(
                "bench: round {round}/{rounds}: {:<60} {:>8.1} ns/pair",
                setup.label(),
                report.ns_per_pair
            );
            let sample = &mut samples[setup.index()];
            sample.ns_per_pair.push(report.ns_per_pair);
            sample.opens.push(report.opens);
            if let Some(events) = events {
                sample.events.push(events);
            }
        };
        record(Setup::Bare, bench.timed_run(None)?, None);
        bench.floor_round(&tag, round, &mut record)?;
        bench.monitor_round(&tag, round, &mut record)?;
        bench.bpftrace_round(&tag, round, &mut record)?;
    }
    Ok(samples)
}

/// Where a round's measurements go: setup, worker report, events seen.
type Record<'a> = dyn FnMut(Setup, WorkerReport, Option<u64>) + 'a;

impl Bench {
    /// The worker with only the empty program on the monitor's hook.
    fn floor_round(&self, tag: &str, round: usize, record: &mut Record<'_>) -> Result<()> {
        let floor = self.start_floor(tag)?;
        record(Setup::Floor, self.timed_run(None)?, None);
        let status = floor.stop(libc::SIGTERM, Duration::from_secs(10))?;
        ensure!(
            status.success(),
            "monitor bench-floor exited with {status} (round {round})"
        );
        Ok(())
    }

    /// The worker outside, then inside, the monitored action cgroup; events
    /// seen are the increase of the monitor's file event counter.
    fn monitor_round(&self, tag: &str, round: usize, record: &mut Record<'_>) -> Result<()> {
        let monitor = self.start_monitor(tag)?;
        let (file0, _) = file_counters(monitor.addr)?;
        let outside = self.timed_run(None)?;
        let (file1, _) = file_counters(monitor.addr)?;
        record(
            Setup::MonitorOutside,
            outside,
            Some(file1 - file0.min(file1)),
        );
        let inside = self.timed_run(Some(&self.action_cgroup))?;
        let (file2, _) = drained(monitor.addr, file1 + inside.opens)?;
        record(Setup::MonitorInside, inside, Some(file2 - file1.min(file2)));
        Bench::stop_monitor(monitor).with_context(|| format!("round {round}"))
    }

    /// The worker outside, then inside, bpftrace's filtered cgroup; events
    /// seen are the lines bpftrace printed for the file.
    fn bpftrace_round(&self, tag: &str, round: usize, record: &mut Record<'_>) -> Result<()> {
        let (bpftrace, stdout) = self.start_bpftrace(tag)?;
        let outside = self.timed_run(None)?;
        record(Setup::BpftraceOutside, outside, None);
        let inside = self.timed_run(Some(&self.action_cgroup))?;
        let status = bpftrace.stop(libc::SIGINT, Duration::from_secs(30))?;
        ensure!(
            status.success(),
            "bpftrace exited with {status} after SIGINT (round {round})"
        );
        let text =
            fs::read_to_string(&stdout).with_context(|| format!("reading {}", stdout.display()))?;
        let printed = count_printed_events(&text, &self.file.to_string_lossy());
        drop(text);
        fs::remove_file(&stdout).with_context(|| format!("removing {}", stdout.display()))?;
        record(Setup::BpftraceInside, inside, Some(printed));
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
        let (file0, lost0) = file_counters(monitor.addr)?;
        let (opens, seconds) = bench
            .throughput_run(workers, rate, rate_duration)
            .with_context(|| format!("throughput run {label}"))?;
        let (file1, lost1) = drained(monitor.addr, file0 + opens)?;
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

struct ReportInput<'a> {
    command: &'a str,
    rounds: usize,
    iterations: u64,
    warmup: u64,
    rate_duration: Duration,
    samples: &'a [Samples],
    rows: &'a [RateRow],
    alert_count: usize,
    monitor_bin: &'a Path,
}

fn first_line(cmd: &mut Command) -> String {
    output(cmd.stdin(Stdio::null()))
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

fn render_report(input: &ReportInput<'_>) -> Result<String> {
    let mut md = String::new();
    write_machine(&mut md, input)?;
    let bare = write_cost(&mut md, input)?;
    write_targets(&mut md, input, bare)?;
    write_throughput(&mut md, input)?;
    write_how_to_read(&mut md)?;
    Ok(md)
}

/// The title, the machine table and how to reproduce the run.
fn write_machine(md: &mut String, input: &ReportInput<'_>) -> Result<()> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let cpu_model = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    let monitor_version = first_line(Command::new(input.monitor_bin).arg("--version"));
    let bpftrace_version = first_line(Command::new(BPFTRACE).arg("--version"));

    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench`; every number below comes from one run on one machine.\n"
    )?;
    writeln!(md, "## Machine\n")?;
    writeln!(md, "| | |\n| --- | --- |")?;
    writeln!(md, "| kernel | {kernel} |")?;
    writeln!(md, "| CPUs (nproc) | {cpus} |")?;
    writeln!(md, "| CPU model | {cpu_model} |")?;
    writeln!(md, "| date | {date} |")?;
    writeln!(md, "| monitor | {monitor_version} (release build) |")?;
    writeln!(md, "| bpftrace | {bpftrace_version} ({BPFTRACE}) |")?;
    writeln!(md, "\nReproduce (as root, from the workspace root):\n")?;
    writeln!(md, "```\n{}\n```\n", input.command)?;
    Ok(())
}

/// The cost table, one row per setup; returns the bare median (ns/pair).
fn write_cost(md: &mut String, input: &ReportInput<'_>) -> Result<f64> {
    writeln!(md, "## Cost added to open()+close()\n")?;
    writeln!(
        md,
        "{} run(s) per setup of {} timed `open(O_RDONLY)`+`close` pairs on one file (after {} untimed), \
         setups interleaved in rounds; median and range of the runs' ns per pair.\n",
        input.rounds, input.iterations, input.warmup
    )?;
    writeln!(
        md,
        "| setup | ns per open+close (median, min–max) | added vs bare | events seen by the tracer / opens issued |"
    )?;
    writeln!(md, "| --- | --- | --- | --- |")?;
    let bare = median(&input.samples[Setup::Bare.index()].ns_per_pair);
    for setup in SETUPS {
        write_cost_row(md, setup, &input.samples[setup.index()], bare)?;
    }
    writeln!(
        md,
        "\nEvents seen: the monitor's `build_monitor_events_total{{kind=\"file\"}}` increase during the \
         run (outside: expected 0; inside: expected every open); for bpftrace, the lines it printed \
         for the file. Alerts raised during the whole benchmark: {} (expected 0: the file is declared).\n",
        input.alert_count
    )?;
    Ok(bare)
}

fn write_cost_row(md: &mut String, setup: Setup, sample: &Samples, bare: f64) -> Result<()> {
    let med = median(&sample.ns_per_pair);
    let min = sample
        .ns_per_pair
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let max = sample
        .ns_per_pair
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let added = if setup == Setup::Bare {
        "—".to_owned()
    } else {
        format!("{:+.1} %", (med - bare) / bare * 100.0)
    };
    let events = if sample.events.is_empty() {
        "—".to_owned()
    } else {
        let seen: u64 = sample.events.iter().sum();
        let issued: u64 = sample.opens.iter().sum();
        format!("{seen} / {issued}")
    };
    writeln!(
        md,
        "| {} | {med:.0} ({min:.0}–{max:.0}) | {added} | {events} |",
        setup.label()
    )?;
    Ok(())
}

/// The throughput table and the lossless maximum.
fn write_throughput(md: &mut String, input: &ReportInput<'_>) -> Result<()> {
    writeln!(md, "## Event throughput (monitor)\n")?;
    writeln!(
        md,
        "Workers in the action cgroup open+close the declared file for {:?} per row, rate-limited \
         in batches of {BATCH}; received = increase of `build_monitor_events_total{{kind=\"file\"}}`, \
         lost = increase of `build_monitor_events_lost_total` (all reasons), read once the reader \
         has drained.\n",
        input.rate_duration
    )?;
    writeln!(
        md,
        "| target rate | achieved opens/s | opens issued | events received | lost | lossless |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- |")?;
    for row in input.rows {
        writeln!(
            md,
            "| {} | {:.0} | {} | {} | {} | {} |",
            row.label,
            row.achieved(),
            row.opens,
            row.received,
            row.lost,
            if row.lossless() { "yes" } else { "no" }
        )?;
    }
    write_lossless_max(md, input.rows)
}

fn write_lossless_max(md: &mut String, rows: &[RateRow]) -> Result<()> {
    let lossless_max = rows
        .iter()
        .filter(|row| row.lossless())
        .map(RateRow::achieved)
        .fold(None, |best: Option<f64>, rate| {
            Some(best.map_or(rate, |b| b.max(rate)))
        });
    match lossless_max {
        Some(rate) if rows.iter().all(RateRow::lossless) => writeln!(
            md,
            "\n**Lossless max: ≥ {rate:.0} opens/s** (no run lost or missed an event, unlimited ones included).\n"
        )?,
        Some(rate) => writeln!(
            md,
            "\n**Lossless max: {rate:.0} opens/s** (the fastest run with received = issued and nothing lost).\n"
        )?,
        None => writeln!(
            md,
            "\n**Lossless max: none** — every run missed or lost events.\n"
        )?,
    }
    Ok(())
}

fn write_how_to_read(md: &mut String) -> Result<()> {
    writeln!(md, "## How to read\n")?;
    writeln!(
        md,
        "* These machines are small shared VMs and noisy: compare numbers only within one run \
         (one file), never across runs or machines. The interleaved rounds spread the noise over \
         the setups; the min–max range shows how much there was.\n\
         * \"added vs bare\" is the cost every process on the host pays (outside rows) or a \
         monitored action pays (inside rows) per open+close, relative to no tracer at all. Any \
         syscall tracepoint puts every syscall on the kernel's slow path, so the outside rows are \
         not free for either tool.\n\
         * The floor is an empty BPF program on the monitor's own hook (raw tracepoint \
         `sys_exit`): what attaching any syscall hook costs every process, before any work.\n\
         * bpftrace is the do-it-yourself baseline: the same cgroup-filtered openat entry/exit \
         tracepoints, printing pid, path and result for each open.\n\
         * The worker is the debug-built xtask binary; its loop overhead is in every row alike.\n\
         * Lossless max is the highest rate at which the daemon received exactly the opens issued \
         and counted no loss; above it, lost events are counted in \
         `build_monitor_events_lost_total`, never silent."
    )?;
    Ok(())
}

/// Checks this run's figures against the issue's targets, in words.
fn write_targets(md: &mut String, input: &ReportInput<'_>, bare: f64) -> Result<()> {
    let added =
        |setup: Setup| (median(&input.samples[setup.index()].ns_per_pair) - bare) / bare * 100.0;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let outside = added(Setup::MonitorOutside);
    let bt_outside = added(Setup::BpftraceOutside);
    let inside = added(Setup::MonitorInside);
    let bt_inside = added(Setup::BpftraceInside);
    writeln!(md, "### Targets\n")?;
    writeln!(
        md,
        "* Unmonitored processes: {outside:+.1} % (target: under +20 % and no more than bpftrace's \
         {bt_outside:+.1} %): {}.",
        verdict(outside < 20.0 && outside <= bt_outside)
    )?;
    writeln!(
        md,
        "* Monitored action: {inside:+.1} % (target: under +50 % and at most a quarter of \
         bpftrace's {bt_inside:+.1} %, i.e. {:+.1} %): {}.",
        bt_inside / 4.0,
        verdict(inside < 50.0 && inside <= bt_inside / 4.0)
    )?;
    let at_100k = input
        .rows
        .iter()
        .find(|row| row.label.starts_with("100000"));
    match at_100k {
        Some(row) => writeln!(
            md,
            "* No event lost at 100k opens/s: {} received of {} issued, {} lost: {}.\n",
            row.received,
            row.opens,
            row.lost,
            verdict(row.lossless())
        )?,
        None => writeln!(md, "* No 100k opens/s row in this run.\n")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_worker_report() {
        let report =
            WorkerReport::parse("opens=210000 elapsed_ns=400000000 ns_per_pair=2000.0\n").unwrap();
        assert_eq!(report.opens, 210_000);
        assert_eq!(report.elapsed_ns, 400_000_000);
        assert!((report.ns_per_pair - 2000.0).abs() < 1e-9);
        assert!(WorkerReport::parse("garbage").is_err());
    }

    #[test]
    fn counts_bpftrace_lines_for_the_file() {
        let text = "Attaching 2 probes...\n12 /tmp/b/input.txt 3\n12 /tmp/b/input.txt 3\n13 /etc/passwd 3\n";
        assert_eq!(count_printed_events(text, "/tmp/b/input.txt"), 2);
        assert_eq!(count_printed_events(text, ""), 3);
    }

    #[test]
    fn takes_the_median() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_worker_opens_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, "x").unwrap();
        open_close(&CString::new(path.as_os_str().as_bytes()).unwrap()).unwrap();
        let missing = CString::new(dir.path().join("missing").as_os_str().as_bytes()).unwrap();
        assert!(open_close(&missing).is_err());
    }
}
