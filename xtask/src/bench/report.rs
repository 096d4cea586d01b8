//! BENCHMARKS.md from one run's numbers: the machine, the cost tables per
//! workload, the throughput table, the real builds, and the targets checked
//! against this run (met or NOT met, computed, never written by hand).

use std::{
    fmt::Write as _,
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Result;

use super::{
    BATCH, BPFTRACE, Matrix, RateRow, SETUPS, Setup,
    builds::{self, BAZEL, BuildResults},
    flood::FloodResult,
    kernel_profile::{HOOK_PARTS, Part, ProfileRow},
    peers,
    program_time::ProgramRow,
    stats,
    worker::{WORKLOADS, Workload},
};
use crate::util::output;

mod builds_section;
mod program_section;
mod side_by_side_section;
mod targets;

pub struct ReportInput<'a> {
    pub command: &'a str,
    pub rounds: usize,
    /// Runs in a row of the target setups per round.
    pub runs: usize,
    pub iterations: u64,
    pub distinct_files: u64,
    pub connects: u64,
    pub warmup: u64,
    pub rate_duration: Duration,
    pub matrix: &'a Matrix,
    /// The tracepoint's own entry, measured apart (`entry.rs`).
    pub entry: Option<&'a super::entry::EntryCost>,
    pub rows: &'a [RateRow],
    pub alert_count: usize,
    pub builds: Option<&'a BuildResults>,
    pub flood: &'a FloodResult,
    pub sandbox_reads: &'a super::sandbox_reads::SandboxReads,
    pub monitor_bin: &'a Path,
    pub svg_name: &'a str,
    pub kernel_profile: &'a [ProfileRow],
    pub program_time: &'a [ProgramRow],
    /// Instructions the verifier processed at the monitor's start.
    pub verified_insns: Option<u64>,
    /// `kernel.bpf_stats_enabled` was on when the bench started (it turned
    /// it off for the timed rows).
    pub stats_found_on: bool,
    /// The host had `auditctl -a never,task` loaded before the bench.
    pub task_audit_found: bool,
    /// Timed runs started before the machine was quiet.
    pub busy_starts: u32,
}

pub(crate) fn first_line(cmd: &mut Command) -> String {
    output(cmd.stdin(Stdio::null()).stderr(Stdio::null()))
        .ok()
        .and_then(|text| text.lines().next().map(|line| line.trim().to_owned()))
        .unwrap_or_else(|| "unknown".to_owned())
}

pub fn render(input: &ReportInput<'_>) -> Result<String> {
    let mut md = String::new();
    write_machine(&mut md, input)?;
    targets::write(&mut md, input)?;
    write_cost(&mut md, input)?;
    program_section::write(&mut md, input)?;
    write_kernel_profile(&mut md, input.kernel_profile)?;
    write_throughput(&mut md, input)?;
    write_flood(&mut md, input.flood)?;
    super::sandbox_reads::write(&mut md, input.sandbox_reads)?;
    if let Some(entry) = input.entry {
        super::entry::write(&mut md, entry)?;
    }
    builds_section::write(&mut md, input.builds, floor_ns_per_syscall(input))?;
    write_how_to_read(&mut md)?;
    Ok(md)
}

/// What the empty program adds to one syscall exit: measured apart
/// (`entry.rs`), else from the open+close and connect rows.
pub fn floor_ns_per_syscall(input: &ReportInput<'_>) -> Option<f64> {
    input
        .entry
        .and_then(super::entry::EntryCost::ns_per_syscall)
        .or_else(|| floor_from_rows(input.matrix))
}

/// What the empty program adds to one syscall exit, from the rows: per
/// workload, the floor's operation over the bare one divided by its
/// syscalls (open+close 2, socket+connect+close 3), and the median of the
/// three (one workload's rows can come out with the floor faster than
/// bare: the 18:08 run's same-file rows did). `None` without the rows;
/// never below 0.
pub fn floor_from_rows(matrix: &Matrix) -> Option<f64> {
    let per_syscall: Vec<f64> = WORKLOADS
        .iter()
        .map(|&w| {
            let calls = if w == Workload::Connect { 3.0 } else { 2.0 };
            (matrix.median(Setup::Floor, w) - matrix.median(Setup::Bare, w)) / calls
        })
        .filter(|ns| ns.is_finite())
        .collect();
    (!per_syscall.is_empty()).then(|| stats::median(&per_syscall).max(0.0))
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                line.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, m)| m.trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The title, the machine table and how to reproduce the run.
fn write_machine(md: &mut String, input: &ReportInput<'_>) -> Result<()> {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let date = first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M:%S UTC"]));
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Written by `cargo xtask bench`; every number below comes from one run on one machine.\n"
    )?;
    writeln!(md, "## Machine\n")?;
    writeln!(md, "| | |\n| --- | --- |")?;
    writeln!(md, "| kernel | {kernel} |")?;
    writeln!(md, "| CPUs (nproc) | {cpus} |")?;
    writeln!(md, "| CPU model | {} |", cpu_model())?;
    writeln!(md, "| date | {date} |")?;
    let versions = [
        (
            "monitor",
            first_line(Command::new(input.monitor_bin).arg("--version")) + " (release build)",
        ),
        (
            "bpftrace",
            first_line(Command::new(BPFTRACE).arg("--version")),
        ),
        ("strace", first_line(Command::new(peers::STRACE).arg("-V"))),
        (
            "auditd",
            first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", "auditd"])),
        ),
        (
            "fatrace",
            first_line(Command::new("dpkg-query").args(["-W", "-f=${Version}", "fatrace"])),
        ),
        ("bazel", first_line(Command::new(BAZEL).arg("--version"))),
    ];
    for (tool, version) in versions {
        writeln!(md, "| {tool} | {version} |")?;
    }
    let found = if input.stats_found_on {
        "; it was on when the bench started (left by an interrupted run?), turned off here"
    } else {
        ""
    };
    writeln!(
        md,
        "| `kernel.bpf_stats_enabled` | 0 in every timed row and build, 1 only for the counted runs{found} |"
    )?;
    let loaded_by = if input.task_audit_found {
        "found loaded on the host"
    } else {
        "loaded by the bench, removed at its end"
    };
    writeln!(
        md,
        "| syscall audit of new processes | none in every timed row and build: `auditctl -a never,task` ({loaded_by}), taken out only for the audit peer's rounds (once any audit daemon ran since boot, every process forked later takes the audit code's slow syscall path otherwise) |"
    )?;
    writeln!(md, "\nReproduce (as root, from the workspace root):\n")?;
    writeln!(md, "```\n{}\n```\n", input.command)?;
    Ok(())
}

/// One cost table per workload, one row per setup, and the plot.
fn write_cost(md: &mut String, input: &ReportInput<'_>) -> Result<()> {
    writeln!(md, "## Cost per operation, by workload and tool\n")?;
    writeln!(
        md,
        "{rounds} round(s), setups interleaved in each; in every round {runs} run(s) in a row per \
         workload of the setups the targets compare (bare, floor, monitor outside and inside: \
         {target_runs} each) and one of each peer ({rounds}); median and range of the runs' ns per \
         operation. Same file: {} timed `open(O_RDONLY)`+`close` pairs on one declared \
         file after {} untimed. Distinct files: {} files opened once each (the first-access cost; \
         no warm-up). Connect: {} timed `socket`+`connect`+`close` to a closed 127.0.0.1 port \
         (refused; allowed by the monitor's policy) after {} untimed. Each run starts once the \
         machine has been quiet for two 200 ms periods (at most 2 clock ticks of CPU used in each, \
         all CPUs together; a monitor just started is also waited for until its own CPU time stops \
         growing); runs that started on a machine still busy after 10 s: {}. A round's bare, floor \
         and monitor runs lie within a minute of each other, the rounds minutes apart: \"paired \
         within each round\" is each round's median less its median of bare, in percent of the \
         latter, over the rounds, which leaves out the machine's drift between rounds but not \
         the noise within one (the targets judge these; the peers run once per round, later: \
         not paired).\n",
        input.iterations,
        input.warmup,
        input.distinct_files,
        input.connects,
        input.warmup,
        input.busy_starts,
        rounds = input.rounds,
        runs = input.runs,
        target_runs = input.rounds * input.runs,
    )?;
    writeln!(
        md,
        "![added cost per workload and tool]({})\n",
        input.svg_name
    )?;
    for workload in WORKLOADS {
        writeln!(md, "### {}\n", workload.title())?;
        writeln!(
            md,
            "| setup | ns per op (median, min–max) | added vs bare | paired within each round \
             (median, min–max) | events recorded / ops issued |"
        )?;
        writeln!(md, "| --- | --- | --- | --- | --- |")?;
        for setup in SETUPS {
            write_cost_row(md, input, setup, workload)?;
        }
        writeln!(md)?;
    }
    writeln!(
        md,
        "Events recorded: the monitor's `build_monitor_events_total` increase of the kind (`file` or \
         `net`) during the run (outside: expected 0); bpftrace's printed lines, strace's lines, \
         audit's `SYSCALL` records with the rule's key, and fatrace's lines for the workload's files \
         (fanotify merges identical queued events and sees no connects: —). Alerts the monitor raised \
         during the whole benchmark: {} (expected 0: everything is declared or allowed).\n",
        input.alert_count
    )?;
    Ok(())
}

fn write_cost_row(
    md: &mut String,
    input: &ReportInput<'_>,
    setup: Setup,
    workload: Workload,
) -> Result<()> {
    let matrix = input.matrix;
    let sample = matrix.get(setup, workload);
    let added = if setup == Setup::Bare {
        "—".to_owned()
    } else {
        format!("{:+.1} %", matrix.added(setup, workload))
    };
    // The peers run once per round, minutes after bare: not paired.
    let paired = if matches!(
        setup,
        Setup::Floor | Setup::MonitorOutside | Setup::MonitorInside
    ) {
        let points = matrix.paired_points(setup, Setup::Bare, workload, input.runs);
        format!(
            "{:+.1} % ({:+.1} to {:+.1})",
            stats::median(&points),
            stats::min(&points),
            stats::max(&points)
        )
    } else {
        "—".to_owned()
    };
    let events = if sample.events.is_empty() {
        "—".to_owned()
    } else {
        let seen: u64 = sample.events.iter().sum();
        let issued: u64 = sample.ops.iter().sum();
        format!("{seen} / {issued}")
    };
    writeln!(
        md,
        "| {} | {} | {added} | {paired} | {events} |",
        setup.label(),
        stats::median_range(&sample.ns_per_op, 0, "")
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
         has drained. Each worker repeats one open, which the kernel counts rather than reports \
         after the first (taken when the worker ends): this table shows that counting keeps up; \
         the ring itself is loaded by the distinct-files rows and the alert storm below.\n",
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

/// The monitored rows' time per operation, split by `perf` into the hook's
/// parts and the rest.
fn write_kernel_profile(md: &mut String, rows: &[ProfileRow]) -> Result<()> {
    writeln!(md, "## Where a monitored open's time goes (perf)\n")?;
    writeln!(
        md,
        "The worker in the action cgroup with the monitor attached, under `perf record -e cpu-clock` \
         (one run per workload after the rounds above; perf's sampling slows it a little, so ns per op \
         are this run's own). Each part is its share of the worker's samples times ns per op; the hook \
         is the first five parts. Sorted by kernel symbol: program instructions are the JIT-compiled \
         programs (`bpf_prog_*`), probe reads `bpf_probe_read_*` and `copy_from_kernel_nofault`, maps \
         the hash and array map code, the clock and task part the timestamp, current-task and cgroup \
         helpers; the tracepoint entry is what any program on `sys_exit` costs (the floor's part). \
         A sample due while a helper holds interrupts off (ring buffer reservation, hash map updates) \
         is taken when they come back on, in the program: program instructions include part of those.\n"
    )?;
    let parts = HOOK_PARTS
        .iter()
        .chain(&[Part::TracepointEntry, Part::Rest])
        .copied()
        .collect::<Vec<_>>();
    write!(md, "| workload | ns per op | hook |")?;
    for part in &parts {
        write!(md, " {} |", part.title())?;
    }
    writeln!(md, "\n|{}", " --- |".repeat(parts.len() + 3))?;
    for row in rows {
        write!(
            md,
            "| {} | {:.0} | **{:.0}** |",
            row.workload.title(),
            row.ns_per_op,
            row.hook_ns()
        )?;
        for part in &parts {
            write!(md, " {:.0} |", row.ns(*part))?;
        }
        writeln!(md)?;
    }
    writeln!(md)?;
    write_program_split(md, rows)?;
    Ok(())
}

/// The program instructions by JIT symbol: a program, or a BPF global
/// function of one (the kernel gives each its own).
fn write_program_split(md: &mut String, rows: &[ProfileRow]) -> Result<()> {
    writeln!(
        md,
        "The program instructions by JIT symbol (a program, or one of its BPF global functions: \
         `dpath_walk*` the directory walk, `step<…>` a probe-read walk's `bpf_loop` step (the typed \
         walk's steps are inline), `file_name_report*` a name's report), ns per op:\n"
    )?;
    for row in rows {
        let parts: Vec<String> = row
            .programs
            .iter()
            .map(|(name, share)| format!("`{name}` {:.0}", share * row.ns_per_op))
            .collect();
        writeln!(md, "* {}: {}", row.workload.title(), parts.join(", "))?;
    }
    writeln!(md)?;
    Ok(())
}

fn write_flood(md: &mut String, f: &FloodResult) -> Result<()> {
    writeln!(md, "## Alert storm (monitor, default alert budget)\n")?;
    writeln!(
        md,
        "One worker in the action cgroup opens {} distinct missing paths once each, in {:.1} s; \
         the monitor runs with the default per-action budget (300 alerts a minute, then summaries).\n",
        f.paths, f.seconds
    )?;
    writeln!(md, "| | |\n| --- | --- |")?;
    writeln!(md, "| events received / lost | {} / {} |", f.events, f.lost)?;
    writeln!(
        md,
        "| alert lines written | {} ({} bytes) |",
        f.alert_lines, f.alert_bytes
    )?;
    writeln!(
        md,
        "| sum of the alerts' `count` | {} ({}) |",
        f.count_sum,
        if f.count_sum == f.paths {
            "exact"
        } else {
            "NOT exact"
        }
    )?;
    writeln!(
        md,
        "| daemon RSS before → peak (VmHWM) | {:.1} → {:.1} MiB (+{:.1} MiB) |\n",
        f.rss_before_kib as f64 / 1024.0,
        f.rss_peak_kib as f64 / 1024.0,
        f.rss_peak_kib.saturating_sub(f.rss_before_kib) as f64 / 1024.0
    )?;
    Ok(())
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
         traced process pays (inside rows) per operation, relative to no tracer at all. Any \
         syscall tracepoint, and any audit rule, puts every syscall on the kernel's slow path, so \
         the outside rows are not free for any tool.\n\
         * The floor is an empty BPF program on the monitor's own hook (raw tracepoint \
         `sys_exit`): what attaching any syscall hook costs every process, before any work.\n\
         * Peers: bpftrace with the same cgroup-filtered openat/connect entry/exit tracepoints, \
         printing each; strace following the worker; the audit subsystem with one syscall rule \
         scoped by the audit login uid the worker sets (the tightest scope audit offers for one \
         process tree), records written by auditd; fatrace, whose fanotify mark covers every \
         process on the mount (it filters by command name in userspace).\n\
         * The worker is the debug-built xtask binary; its loop overhead is in every row alike.\n\
         * Lossless max is the highest rate at which the daemon received exactly the opens issued \
         and counted no loss; above it, lost events are counted in \
         `build_monitor_events_lost_total`, never silent."
    )?;
    Ok(())
}

/// `+x.x % [lo, hi]` of a series of overheads (points), with the coverage.
pub fn with_interval(values: &[f64]) -> String {
    let (median, interval) = builds::summarise(values);
    match interval {
        Some(ci) => format!(
            "{median:+.1} % [{:+.1}, {:+.1}] ({:.0} %)",
            ci.low,
            ci.high,
            ci.level * 100.0
        ),
        None => format!("{median:+.1} % (one pair: no interval)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The 18:08 run's medians: the floor came out faster than bare on the
    /// same file, slower on distinct files and connects.
    #[test]
    fn the_floor_per_syscall_is_the_median_over_the_workloads() {
        let mut matrix = Matrix::new();
        let rows = [
            (Workload::Repeat, 1014.4, 940.3),
            (Workload::Distinct, 1410.1, 1598.9),
            (Workload::Connect, 6116.3, 6307.5),
        ];
        for (workload, bare, floor) in rows {
            matrix.get_mut(Setup::Bare, workload).ns_per_op.push(bare);
            matrix.get_mut(Setup::Floor, workload).ns_per_op.push(floor);
        }
        let ns = floor_from_rows(&matrix).unwrap();
        assert!((ns - 191.2 / 3.0).abs() < 1e-6, "{ns}");
        assert_eq!(floor_from_rows(&Matrix::new()), None, "no rows");
    }
}
