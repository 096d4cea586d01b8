//! The real-builds section: per-pair overheads split into their parts,
//! medians with confidence intervals, the daemon's cost, events and losses.

use std::fmt::Write as _;

use anyhow::Result;

use super::with_interval;
use crate::bench::{
    builds::{BuildResults, EXECUTION_LOG_FLAG, MonitoredRun, PlainRun},
    program_time::CountedPrograms,
    stats,
};

pub fn write(
    md: &mut String,
    builds: Option<&BuildResults>,
    floor_ns_per_syscall: Option<f64>,
) -> Result<()> {
    writeln!(md, "## Real Bazel builds\n")?;
    let Some(b) = builds else {
        writeln!(md, "Not run (`--skip-builds`).\n")?;
        return Ok(());
    };
    writeln!(
        md,
        "A generated workspace of {actions} actions: {workspace}. The builds write (output bases, \
         sandboxes, Bazel's install base) to {filesystem}, not to the host's: an ext4 without a \
         journal, as this project's VMs have, walks past every inode freed in the last 30 s at each \
         allocation (there 40 % of a bare build's CPU in `perf`, system time 21 to 66 s between bare \
         builds; profiles/builds-host-fs-vs-journaled.md). Each triple builds it bare, \
         with only the `{EXECUTION_LOG_FLAG}` flag `monitor exec` adds, and under `monitor exec` (order \
         reversed every other triple), each with a fresh output base and Bazel server. Wall time is \
         the command's; CPU time is the build's cgroup `cpu.stat` `usage_usec` (client, server, \
         every spawn, the server's shutdown included) plus, monitored, the `monitor exec` \
         process's own cgroup. Overheads are in points of the bare build of the same triple; \
         intervals are distribution-free 95 % intervals of the median (order statistics; with \
         fewer than 6 pairs the full range and its actual coverage). Stopped after {stop}.\n",
        actions = b.actions,
        workspace = b.workspace,
        filesystem = b.filesystem,
        stop = b.stop_reason
    )?;
    write_parts(md, b)?;
    write_monitor_costs(md, b)?;
    write_accounted(md, b)?;
    if let Some(side_by_side) = &b.side_by_side {
        super::side_by_side_section::write(md, side_by_side, floor_ns_per_syscall)?;
    }
    Ok(())
}

/// How the programs' time was counted: with the accounting's clock reads
/// taken out when they were measured.
pub(super) fn programs_counted(programs: &CountedPrograms) -> String {
    match programs.bias_ns_per_run {
        Some(bias) => format!(
            "{} runs in {:.2} s, less the accounting's own {bias:.0} ns a run: an empty program's beside them",
            programs.runs, programs.seconds
        ),
        None => format!(
            "{} runs; each run's time includes its clock reads",
            programs.runs
        ),
    }
}

/// The extra build with bpf_stats on: the monitor's own CPU, kernel and
/// daemon, counted directly rather than as a difference of noisy builds.
fn write_accounted(md: &mut String, b: &BuildResults) -> Result<()> {
    let Some(run) = &b.accounted else {
        return Ok(());
    };
    let Some(programs) = run.programs else {
        return Ok(());
    };
    let programs_s = programs.own_s();
    let bare: Vec<f64> = b.triples.iter().map(|t| t.bare.cpu_s).collect();
    let bare = stats::median(&bare);
    let points = |s: f64| if bare > 0.0 { s / bare * 100.0 } else { 0.0 };
    writeln!(
        md,
        "### The monitor's own CPU, counted directly
"
    )?;
    writeln!(
        md,
        "One more monitored build after the triples, with `kernel.bpf_stats_enabled` on (kept out \
         of the timed triples: it adds a clock read to every program run), the monitor's programs' \
         run time polled from its fds every 100 ms until it exits. These parts do not depend on \
         the machine's slow and fast phases the way a difference of two builds does; in points \
         of the bare builds' median CPU ({bare:.1} s). What they leave out: the hooks' indirect \
         cost (caches, the tracepoint's own entry on every syscall exit).\n"
    )?;
    writeln!(md, "| part | CPU time | points of bare |")?;
    writeln!(md, "| --- | --- | --- |")?;
    writeln!(
        md,
        "| kernel programs ({}) | {programs_s:.2} s | {:+.1} |",
        programs_counted(&programs),
        points(programs_s)
    )?;
    writeln!(
        md,
        "| `monitor exec` process (the daemon, the programs' verification at start included) | {:.2} s | {:+.1} |",
        run.daemon_cpu_s,
        points(run.daemon_cpu_s)
    )?;
    if let Some(start) = run.startup_cpu_s {
        let rest = run.daemon_cpu_s - start;
        writeln!(
            md,
            "| … of it, the start: programs loaded and verified (the report's `monitor.startup_cpu_s`) | {start:.2} s | {:+.1} |",
            points(start)
        )?;
        writeln!(
            md,
            "| … of it, the rest: sandbox reads, events, the report | {rest:.2} s | {:+.1} |",
            points(rest)
        )?;
    }
    let sum = programs_s + run.daemon_cpu_s;
    writeln!(md, "| **sum** | **{sum:.2} s** | **{:+.1}** |", points(sum))?;
    // The parts scale with the machine's phase as the build does: against
    // this same build's CPU without them, both sides are in one phase.
    let own = run.cpu_s() - sum;
    if own > 0.0 {
        writeln!(
            md,
            "| the sum in points of this build's own CPU without it ({own:.1} s, the same phase as the parts) | | {:+.1} |",
            sum / own * 100.0
        )?;
    }
    writeln!(
        md,
        "| for comparison: this build's whole CPU over the bare median (one build, noisy) | {:.1} s | {:+.1} |\n",
        run.cpu_s(),
        points(run.cpu_s() - bare)
    )?;
    Ok(())
}

/// `<what>: wall … s (min–max), CPU … s (min–max).`
pub(super) fn write_bare(md: &mut String, what: &str, runs: &[PlainRun]) -> Result<()> {
    let wall: Vec<f64> = runs.iter().map(|r| r.wall_s).collect();
    let cpu: Vec<f64> = runs.iter().map(|r| r.cpu_s).collect();
    writeln!(
        md,
        "{what}: wall {}, CPU {}.\n",
        stats::median_range(&wall, 1, " s"),
        stats::median_range(&cpu, 1, " s")
    )?;
    Ok(())
}

fn write_parts(md: &mut String, b: &BuildResults) -> Result<()> {
    let series = |f: &dyn Fn(&crate::bench::builds::Triple) -> f64| -> Vec<f64> {
        b.triples.iter().map(f).collect()
    };
    let bare: Vec<PlainRun> = b.triples.iter().map(|t| t.bare).collect();
    write_bare(md, "Bare build", &bare)?;
    writeln!(
        md,
        "| overhead (median [95 % interval]) | wall time | CPU time |"
    )?;
    writeln!(md, "| --- | --- | --- |")?;
    let rows: [(&str, usize); 3] = [
        ("execution log flag alone", 0),
        ("monitor attached (on top of the log)", 1),
        ("**total: `monitor exec` vs bare**", 2),
    ];
    for (name, part) in rows {
        let pick = |p: (f64, f64, f64)| [p.0, p.1, p.2][part];
        let wall = series(&|t| pick(t.wall_parts()));
        let cpu = series(&|t| pick(t.cpu_parts()));
        writeln!(
            md,
            "| {name} | {} | {} |",
            with_interval(&wall),
            with_interval(&cpu)
        )?;
    }
    writeln!(md)?;
    Ok(())
}

/// The daemon's start, and the failed probes and repeats the kernel
/// counted (from the reports, when they give them).
fn write_start_and_probes(md: &mut String, b: &BuildResults) -> Result<()> {
    let per_build = |count: &dyn Fn(&MonitoredRun) -> Option<u64>| -> Vec<f64> {
        b.triples
            .iter()
            .filter_map(|t| Some(count(&t.monitored)? as f64))
            .collect()
    };
    let folded = per_build(&|m| m.probes_folded);
    let repeats = per_build(&|m| m.repeats_counted);
    let starts: Vec<f64> = b
        .triples
        .iter()
        .filter_map(|t| t.monitored.startup_cpu_s)
        .collect();
    if !starts.is_empty() {
        writeln!(
            md,
            "| of the daemon's CPU, its start: programs loaded and verified (median, min–max) | {} |",
            stats::median_range(&starts, 2, " s")
        )?;
    }
    for (what, counts) in [("failed probes", &folded), ("repeated opens", &repeats)] {
        if !counts.is_empty() {
            writeln!(
                md,
                "| of the events, {what} counted in the kernel (median per build) | {:.0} |",
                stats::median(counts)
            )?;
        }
    }
    Ok(())
}

fn write_monitor_costs(md: &mut String, b: &BuildResults) -> Result<()> {
    let daemon_cpu: Vec<f64> = b.triples.iter().map(|t| t.monitored.daemon_cpu_s).collect();
    let rss: Vec<f64> = b
        .triples
        .iter()
        .map(|t| t.monitored.daemon_peak_rss_kib as f64)
        .collect();
    let rates: Vec<f64> = b
        .triples
        .iter()
        .filter_map(|t| Some(t.monitored.events? as f64 / t.monitored.wall_s))
        .collect();
    let lost: u64 = b.triples.iter().map(|t| t.monitored.lost).sum();
    let violations: u64 = b.triples.iter().map(|t| t.monitored.violations).sum();
    let unmonitored: u64 = b
        .triples
        .iter()
        .map(|t| t.monitored.unmonitored_spawns)
        .sum();
    writeln!(
        md,
        "| monitored builds ({} in all) | value |",
        b.triples.len()
    )?;
    writeln!(md, "| --- | --- |")?;
    writeln!(
        md,
        "| daemon CPU time per build (median, min–max) | {} |",
        stats::median_range(&daemon_cpu, 2, " s")
    )?;
    writeln!(
        md,
        "| daemon peak RSS (max) | {:.1} MiB |",
        stats::max(&rss) / 1024.0
    )?;
    if rates.is_empty() {
        writeln!(
            md,
            "| events per second | not in the report (no `events` key) |"
        )?;
    } else {
        writeln!(
            md,
            "| events per second (median over the build) | {:.0} |",
            stats::median(&rates)
        )?;
    }
    write_start_and_probes(md, b)?;
    writeln!(md, "| events lost (must be 0) | {lost} |")?;
    writeln!(
        md,
        "| alerts on the clean build (must be 0) | {violations} |"
    )?;
    writeln!(
        md,
        "| sandboxed spawns not monitored (must be 0) | {unmonitored} |"
    )?;
    let shared = b.triples.iter().filter(|t| t.monitored.cpu_shared).count();
    writeln!(
        md,
        "| monitored builds whose CPU time includes another `monitor exec` job running beside \
         them (should be 0) | {shared} |\n"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::builds::Triple;

    fn monitored(
        build_cpu_s: f64,
        daemon_cpu_s: f64,
        programs: Option<CountedPrograms>,
    ) -> MonitoredRun {
        MonitoredRun {
            wall_s: 10.0,
            build_cpu_s,
            daemon_cpu_s,
            daemon_peak_rss_kib: 1024,
            events: Some(100),
            probes_folded: Some(60),
            repeats_counted: Some(10),
            startup_cpu_s: Some(1.0),
            lost: 0,
            violations: 0,
            unmonitored_spawns: 0,
            cpu_shared: false,
            programs,
        }
    }

    /// One triple (bare 100 s, log 101 s, monitored 104 s of CPU).
    fn one_triple(accounted: Option<MonitoredRun>) -> BuildResults {
        let plain = |cpu_s| PlainRun {
            wall_s: 10.0,
            cpu_s,
        };
        BuildResults {
            side_by_side: None,
            triples: vec![Triple {
                bare: plain(100.0),
                log: plain(101.0),
                monitored: monitored(104.0, 3.0, None),
            }],
            accounted,
            workspace: "w".into(),
            filesystem: "f".into(),
            actions: 1,
            stop_reason: "test".into(),
        }
    }

    #[test]
    fn the_monitors_own_cpu_is_put_in_points_of_the_bare_median() {
        let programs = CountedPrograms {
            seconds: 1.5,
            runs: 3_000_000,
            bias_ns_per_run: None,
        };
        let results = one_triple(Some(monitored(102.0, 2.5, Some(programs))));
        let mut md = String::new();
        write_accounted(&mut md, &results).unwrap();
        assert!(md.contains("| kernel programs (3000000 runs; each run's time includes its clock reads) | 1.50 s | +1.5 |"), "{md}");
        assert!(md.contains("| 2.50 s | +2.5 |"), "{md}");
        assert!(
            md.contains("`monitor.startup_cpu_s`) | 1.00 s | +1.0 |"),
            "{md}"
        );
        assert!(md.contains("the report | 1.50 s | +1.5 |"), "{md}");
        assert!(md.contains("| **sum** | **4.00 s** | **+4.0** |"), "{md}");
        // The build's whole CPU: 102 + 2.5 over 100.
        assert!(md.contains("| 104.5 s | +4.5 |"), "{md}");
        // Against the same build less the parts: 4.0 over 104.5 - 4.0.
        assert!(
            md.contains("own CPU without it (100.5 s, the same phase as the parts) | | +4.0 |"),
            "{md}"
        );
    }

    #[test]
    fn the_accountings_own_time_per_run_is_taken_out_of_the_programs() {
        // 1.5 s in 3 M runs, 50 ns a run of it the accounting's: 1.35 s.
        let programs = CountedPrograms {
            seconds: 1.5,
            runs: 3_000_000,
            bias_ns_per_run: Some(50.0),
        };
        let results = one_triple(Some(monitored(102.0, 2.5, Some(programs))));
        let mut md = String::new();
        write_accounted(&mut md, &results).unwrap();
        assert!(md.contains("| kernel programs (3000000 runs in 1.50 s, less the accounting's own 50 ns a run: an empty program's beside them) | 1.35 s | +1.4 |"), "{md}");
        assert!(md.contains("| **sum** | **3.85 s** | **+3.9** |"), "{md}");
    }

    #[test]
    fn the_counts_the_kernel_kept_are_given_per_build() {
        let results = one_triple(None);
        let mut md = String::new();
        write_start_and_probes(&mut md, &results).unwrap();
        assert!(
            md.contains(
                "| of the events, failed probes counted in the kernel (median per build) | 60 |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| of the events, repeated opens counted in the kernel (median per build) | 10 |"
            ),
            "{md}"
        );
    }

    #[test]
    fn the_section_names_the_workspace_and_the_log_flag() {
        let mut md = String::new();
        write(&mut md, Some(&one_triple(None)), None).unwrap();
        assert!(
            md.contains(
                "A generated workspace of 1 actions: w. The builds write (output bases, \
                 sandboxes, Bazel's install base) to f, not to the host's"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "Each triple builds it bare, with only the `--experimental_execution_log_file` \
                 flag `monitor exec` adds"
            ),
            "{md}"
        );
        assert!(md.contains("Stopped after test.\n"), "{md}");
    }

    #[test]
    fn no_accounted_build_writes_nothing() {
        let results = BuildResults {
            side_by_side: None,
            triples: Vec::new(),
            accounted: None,
            workspace: "w".into(),
            filesystem: "f".into(),
            actions: 1,
            stop_reason: "test".into(),
        };
        let mut md = String::new();
        write_accounted(&mut md, &results).unwrap();
        assert!(md.is_empty());
    }
}
