//! The real-builds section: per-pair overheads split into their parts,
//! medians with confidence intervals, the daemon's cost, events and losses.

use std::fmt::Write as _;

use anyhow::Result;

use super::with_interval;
use crate::bench::{builds::BuildResults, stats};

pub fn write(md: &mut String, builds: Option<&BuildResults>) -> Result<()> {
    writeln!(md, "## Real Bazel builds\n")?;
    let Some(b) = builds else {
        writeln!(md, "Not run (`--skip-builds`).\n")?;
        return Ok(());
    };
    writeln!(
        md,
        "A generated workspace of {} actions: {}. Each triple builds it bare, with only the \
         `--execution_log_binary_file` flag `monitor exec` adds, and under `monitor exec` (order \
         reversed every other triple), each with a fresh output base and Bazel server. Wall time is \
         the command's; CPU time is the build's cgroup `cpu.stat` `usage_usec` (client, server, \
         every spawn, the server's shutdown included) plus, monitored, the `monitor exec` \
         process's own cgroup. Overheads are in points of the bare build of the same triple; \
         intervals are distribution-free 95 % intervals of the median (order statistics; with \
         fewer than 6 pairs the full range and its actual coverage). Stopped after {}.\n",
        b.actions, b.workspace, b.stop_reason
    )?;
    write_parts(md, b)?;
    write_monitor_costs(md, b)?;
    Ok(())
}

fn write_parts(md: &mut String, b: &BuildResults) -> Result<()> {
    let series = |f: &dyn Fn(&crate::bench::builds::Triple) -> f64| -> Vec<f64> {
        b.triples.iter().map(f).collect()
    };
    let bare_wall = series(&|t| t.bare.wall_s);
    let bare_cpu = series(&|t| t.bare.cpu_s);
    writeln!(
        md,
        "Bare build: wall {:.1} s ({:.1}–{:.1}), CPU {:.1} s ({:.1}–{:.1}).\n",
        stats::median(&bare_wall),
        stats::min(&bare_wall),
        stats::max(&bare_wall),
        stats::median(&bare_cpu),
        stats::min(&bare_cpu),
        stats::max(&bare_cpu)
    )?;
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
        "| daemon CPU time per build (median, min–max) | {:.2} s ({:.2}–{:.2}) |",
        stats::median(&daemon_cpu),
        stats::min(&daemon_cpu),
        stats::max(&daemon_cpu)
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
