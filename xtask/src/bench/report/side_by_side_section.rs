//! The builds side by side (`builds::side_by_side`): the total measured
//! directly plus the part the neighbour paid, counted (the +3 % target is
//! judged on it), then its parts measured apart and their sum.

use std::fmt::Write as _;

use anyhow::Result;

use super::with_interval;
use crate::bench::{
    builds::{
        MonitoredRun,
        side_by_side::{Part, SideBySide},
    },
    stats,
};

pub fn write(md: &mut String, s: &SideBySide, floor_ns_per_run: Option<f64>) -> Result<()> {
    writeln!(md, "### Side by side: two builds at once, one CPU each\n")?;
    writeln!(
        md,
        "Built one after the other, builds of one kind swing with the VM's slow and fast phases \
         by more than the overheads measured. Here two builds run at the same moment, each pinned \
         to one of the two CPUs (each kind of pair swaps its CPUs every other pair), so both meet \
         the same phase. The total is measured directly: `monitor exec` (the execution log flag \
         it adds included; its daemon shares its build's CPU) beside a bare build. The kernel \
         programs are global, so that neighbour is not bare but outside the monitor, and pays \
         the outside cost; it is counted and added: a log build alone with \
         `kernel.bpf_stats_enabled` on while an idle `monitor exec` was attached, the programs' \
         run time over its CPU, less what the accounting itself adds to each run (its clock \
         reads: the time per run of an empty program attached beside them in the same build); \
         plus the tracepoint's own cost on each syscall exit, estimated \
         as the runs times what the empty program adds to one syscall: measured apart with \
         `getppid` (\"The tracepoint's own entry\" above), or, when that was not run, from this \
         run's rows, the median over its three workloads. A third of the pairs measure that \
         total; a third the total of `monitor exec` with `[bazel] label_source = \"trace_profile\"` \
         (labels from Bazel's JSON trace profile, no execution log: [docs/config.md](docs/config.md)) \
         beside a bare build, with the same counted part added; the others split the default's \
         total into its parts: the execution log flag (a log build beside a bare one, \
         no monitor running) and the monitor (`monitor exec` beside a log build). Each is in \
         points of its own base. The parts added up, their intervals' ends added, check the \
         total with a wider interval. Stopped after {}.\n",
        s.stop_reason
    )?;
    if s.unpinned {
        writeln!(
            md,
            "In this run the pairs were not pinned (`--side-by-side-unpinned`): both builds of \
             a pair shared both CPUs, and a daemon's CPU slowed its neighbour as well as its own \
             build, so the CPU-time column is the one that holds the monitor's whole cost.\n"
        )?;
    }
    let bare: Vec<_> = (s.total_pairs.iter().map(|p| p.bare))
        .chain(s.trace_total_pairs.iter().map(|p| p.bare))
        .chain(s.log_pairs.iter().map(|p| p.bare))
        .collect();
    let bare_label = match s.unpinned {
        true => "Bare build beside another, both unpinned",
        false => "Bare build on one CPU",
    };
    super::builds_section::write_bare(md, bare_label, &bare)?;
    writeln!(md, "| (median [95 % interval]) | wall time | CPU time |")?;
    writeln!(md, "| --- | --- | --- |")?;
    let (total_wall, total_cpu) = s.total_series();
    writeln!(
        md,
        "| `monitor exec` over the bare build beside it ({}) | {} | {} |",
        pairs(s.total_pairs.len()),
        with_interval(&total_wall),
        with_interval(&total_cpu)
    )?;
    write_outside_rows(md, s, floor_ns_per_run)?;
    write_total_row(
        md,
        "total: `monitor exec` vs bare",
        true,
        s.totals(floor_ns_per_run),
    )?;
    write_parts(md, s, floor_ns_per_run)?;
    let (trace_wall, trace_cpu) = s.trace_total_series();
    writeln!(
        md,
        "| `monitor exec`, labels from the trace profile, over the bare build beside it ({}) | {} | {} |",
        pairs(s.trace_total_pairs.len()),
        with_interval(&trace_wall),
        with_interval(&trace_cpu)
    )?;
    write_total_row(
        md,
        "total, labels from the trace profile: `monitor exec` vs bare (the counted part added)",
        true,
        s.trace_totals(floor_ns_per_run),
    )?;
    writeln!(md)?;
    write_monitored_runs(md, s)
}

/// The total's parts, each measured apart, and their sum.
fn write_parts(md: &mut String, s: &SideBySide, floor_ns_per_run: Option<f64>) -> Result<()> {
    let (log_wall, log_cpu) = s.log_series();
    let (mon_wall, mon_cpu) = s.monitor_series();
    writeln!(
        md,
        "| its part: the execution log flag alone ({}) | {} | {} |",
        pairs(s.log_pairs.len()),
        with_interval(&log_wall),
        with_interval(&log_cpu)
    )?;
    writeln!(
        md,
        "| its part: the monitor, `monitor exec` over a log build beside it ({}) | {} | {} |",
        pairs(s.monitor_pairs.len()),
        with_interval(&mon_wall),
        with_interval(&mon_cpu)
    )?;
    write_total_row(
        md,
        "the parts and the counted part added up (a check; the intervals' ends added)",
        false,
        s.parts_total(floor_ns_per_run),
    )?;
    if !s.control_pairs.is_empty() {
        let (wall, cpu) = s.control_series();
        let range = |v: &[f64]| format!("{:+.1}…{:+.1}", stats::min(v), stats::max(v));
        writeln!(
            md,
            "| control, not in the total: bare beside bare, CPU 1 over CPU 0 ({} pairs; min…max) | {} ({}) | {} ({}) |",
            s.control_pairs.len(),
            with_interval(&wall),
            range(&wall),
            with_interval(&cpu),
            range(&cpu)
        )?;
    }
    Ok(())
}

fn pairs(n: usize) -> String {
    match n {
        1 => "1 pair".to_string(),
        n => format!("{n} pairs"),
    }
}

/// A total's row; `bold` for the one the target is judged on.
fn write_total_row(
    md: &mut String,
    name: &str,
    bold: bool,
    total: Option<(Part, Part)>,
) -> Result<()> {
    let Some((wall, cpu)) = total else {
        return Ok(());
    };
    let cell = |text: String| match bold {
        true => format!("**{text}**"),
        false => text,
    };
    writeln!(
        md,
        "| {} | {} | {} |",
        cell(name.to_string()),
        cell(wall.text()),
        cell(cpu.text())
    )?;
    Ok(())
}

fn write_outside_rows(
    md: &mut String,
    s: &SideBySide,
    floor_ns_per_run: Option<f64>,
) -> Result<()> {
    let Some(outside) = &s.outside else {
        writeln!(
            md,
            "| what the neighbour paid | not measured | not measured |"
        )?;
        return Ok(());
    };
    let programs = outside.programs_points();
    writeln!(
        md,
        "| what the neighbour paid: the programs (counted: {} over a {:.1} s CPU log build) | {programs:+.1} | {programs:+.1} |",
        super::builds_section::programs_counted(&outside.programs),
        outside.build.cpu_s
    )?;
    match floor_ns_per_run {
        Some(ns) => {
            let floor = outside.floor_points(ns);
            writeln!(
                md,
                "| … and the tracepoint on each syscall exit (estimated: {} runs × {ns:.0} ns) | {floor:+.1} | {floor:+.1} |",
                outside.programs.runs
            )?;
        }
        None => writeln!(
            md,
            "| … and the tracepoint on each syscall exit | not measured (no entry pairs, no open+close rows) | not measured |"
        )?,
    }
    Ok(())
}

/// Losses, false alerts and the daemon of the monitored builds here, of
/// each label source.
fn write_monitored_runs(md: &mut String, s: &SideBySide) -> Result<()> {
    let default: Vec<&MonitoredRun> = s.monitored_runs().collect();
    let traced: Vec<&MonitoredRun> = s.trace_runs().collect();
    for (runs, which) in [(default, "execution log"), (traced, "trace profile")] {
        let lost: u64 = runs.iter().map(|m| m.lost).sum();
        let alerts: u64 = runs.iter().map(|m| m.violations).sum();
        let daemon: Vec<f64> = runs.iter().map(|m| m.daemon_cpu_s).collect();
        if daemon.is_empty() {
            continue;
        }
        writeln!(
            md,
            "Monitored builds here, labels from the {which}: daemon CPU {} per build, \
             {lost} events lost, {alerts} alerts on the clean build.\n",
            stats::median_range(&daemon, 2, " s")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::builds::{
        MonitoredRun, PlainRun,
        side_by_side::{ControlPair, LogPair, MonitorPair, Outside, TotalPair},
    };
    use crate::bench::program_time::CountedPrograms;

    fn plain(s: f64) -> PlainRun {
        PlainRun {
            wall_s: s,
            cpu_s: s,
        }
    }

    /// Log +1 and +3 %, the monitor +4 % twice, the neighbour 0.5 s of
    /// programs and 10 M runs over a 100 s build.
    fn series() -> SideBySide {
        let monitored = MonitoredRun {
            wall_s: 104.0,
            build_cpu_s: 102.0,
            daemon_cpu_s: 2.0,
            ..Default::default()
        };
        SideBySide {
            total_pairs: vec![
                TotalPair {
                    bare: plain(100.0),
                    monitored: MonitoredRun {
                        wall_s: 104.0,
                        build_cpu_s: 102.0,
                        daemon_cpu_s: 2.0,
                        ..Default::default()
                    },
                },
                TotalPair {
                    bare: plain(100.0),
                    monitored: MonitoredRun {
                        wall_s: 106.0,
                        build_cpu_s: 104.0,
                        daemon_cpu_s: 2.0,
                        ..Default::default()
                    },
                },
            ],
            trace_total_pairs: vec![TotalPair {
                bare: plain(100.0),
                monitored: MonitoredRun {
                    wall_s: 101.0,
                    build_cpu_s: 99.0,
                    daemon_cpu_s: 2.0,
                    ..Default::default()
                },
            }],
            log_pairs: vec![
                LogPair {
                    bare: plain(100.0),
                    log: plain(101.0),
                },
                LogPair {
                    bare: plain(100.0),
                    log: plain(103.0),
                },
            ],
            monitor_pairs: vec![
                MonitorPair {
                    neighbour: plain(100.0),
                    monitored: monitored.clone(),
                },
                MonitorPair {
                    neighbour: plain(100.0),
                    monitored,
                },
            ],
            outside: Some(Outside {
                build: plain(100.0),
                programs: CountedPrograms {
                    seconds: 0.5,
                    runs: 10_000_000,
                    bias_ns_per_run: None,
                },
            }),
            control_pairs: Vec::new(),
            stop_reason: "test".into(),
            unpinned: false,
        }
    }

    #[test]
    fn the_parts_and_their_total_are_written() {
        let mut md = String::new();
        write(&mut md, &series(), Some(50.0)).unwrap();
        assert!(md.contains("Bare build on one CPU: wall 100.0 s"), "{md}");
        assert!(
            md.contains("| its part: the execution log flag alone (2 pairs) | +2.0 % [+1.0, +3.0]"),
            "{md}"
        );
        assert!(
            md.contains("10000000 runs × 50 ns) | +0.5 | +0.5 |"),
            "{md}"
        );
        // Directly 4 and 6 % (the daemon's 2 s in CPU), + 0.5 (programs)
        // + 0.5 (10 M × 50 ns of 100 s).
        assert!(
            md.contains(
                "| **total: `monitor exec` vs bare** | **+6.0 % [+5.0, +7.0]** | **+6.0 % [+5.0, +7.0]** |"
            ),
            "{md}"
        );
        // Parts: 2 + 4 + 0.5 + 0.5, their intervals' ends added.
        assert!(
            md.contains("ends added) | +7.0 % [+6.0, +8.0] | +7.0 % [+6.0, +8.0] |"),
            "{md}"
        );
        // Trace profile: directly +1 % (wall and CPU), + 1 counted.
        assert!(
            md.contains(
                "| **total, labels from the trace profile: `monitor exec` vs bare (the counted part added)** | **+2.0 % (too few pairs"
            ),
            "{md}"
        );
        assert!(
            md.contains("labels from the execution log: daemon CPU"),
            "{md}"
        );
        assert!(
            md.contains("labels from the trace profile: daemon CPU"),
            "{md}"
        );
        assert!(md.contains("0 events lost, 0 alerts"), "{md}");
        assert!(!md.contains("not pinned"), "{md}");
        let mut unpinned = series();
        unpinned.unpinned = true;
        let mut md = String::new();
        write(&mut md, &unpinned, Some(50.0)).unwrap();
        assert!(md.contains("the pairs were not pinned"), "{md}");
    }

    #[test]
    fn control_pairs_are_shown_apart_from_the_total() {
        let mut s = series();
        let mut md = String::new();
        write(&mut md, &s, Some(50.0)).unwrap();
        assert!(!md.contains("control"), "none asked for: {md}");
        for cpu1 in [99.0, 102.0] {
            s.control_pairs.push(ControlPair {
                cpu0: plain(100.0),
                cpu1: plain(cpu1),
            });
        }
        let mut md = String::new();
        write(&mut md, &s, Some(50.0)).unwrap();
        assert!(
            md.contains(
                "CPU 1 over CPU 0 (2 pairs; min…max) | +0.5 % [-1.0, +2.0] (50 %) (-1.0…+2.0)"
            ),
            "{md}"
        );
        assert!(
            md.contains("| **+6.0 % [+5.0, +7.0]**"),
            "the total is unchanged: {md}"
        );
    }
}
