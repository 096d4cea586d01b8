//! The programs' own run time per operation (bpf_stats), next to the floor
//! and in points of the bare median.

use std::fmt::Write as _;

use anyhow::Result;

use super::ReportInput;
use crate::bench::{
    Setup,
    program_time::{ProgramRow, find},
    worker::WORKLOADS,
};

const SETUPS: [Setup; 3] = [Setup::Floor, Setup::MonitorOutside, Setup::MonitorInside];

pub fn write(md: &mut String, input: &ReportInput<'_>) -> Result<()> {
    writeln!(md, "## What the programs themselves cost (bpf_stats)\n")?;
    writeln!(
        md,
        "One run per setup and workload after the rounds, with `kernel.bpf_stats_enabled` on: the \
         kernel sums each program's run time and runs (`run_time_ns`, `run_cnt` in its fd's \
         fdinfo), every program of the setup together, divided by the worker's operations (warm-up \
         included). It swings far less than the timed rows with the machine's noise (it still \
         rises a little when the other vCPU is busy). Each run's \
         time includes the clock read around it: the floor's time per run (an empty program) is \
         that bias, so \"above the floor\" is the setup's time less its runs times the floor's \
         time per run: what the monitor's programs themselves add; in points of the bare median \
         of the rounds above. Runs per operation above 2 (open+close) or 3 (connect) are other \
         processes' syscalls through the hook meanwhile (the monitor's own included): their runs \
         are in the time too.\n"
    )?;
    writeln!(
        md,
        "| workload | setup | program ns per op | runs per op | above the floor (ns per op) | in points of bare |"
    )?;
    writeln!(md, "| --- | --- | --- | --- | --- | --- |")?;
    for workload in WORKLOADS {
        let bare = input.matrix.median(Setup::Bare, workload);
        let floor = find(input.program_time, Setup::Floor, workload);
        for setup in SETUPS {
            let Some(row) = find(input.program_time, setup, workload) else {
                continue;
            };
            write_row(md, row, floor, bare)?;
        }
    }
    writeln!(md)?;
    if let Some(insns) = input.verified_insns {
        writeln!(
            md,
            "At its start the monitor's programs made the verifier process {insns} instructions \
             (fdinfo `verified_insns`, all programs): the start's kernel work, the same on every \
             run on one kernel (its time is in the builds' daemon CPU below).\n"
        )?;
    }
    Ok(())
}

fn write_row(
    md: &mut String,
    row: &ProgramRow,
    floor: Option<&ProgramRow>,
    bare: f64,
) -> Result<()> {
    let (above, points) = match floor {
        Some(floor) if row.setup != Setup::Floor => {
            let above = above_floor(row, floor);
            (
                format!("{above:+.0}"),
                format!("{:+.1}", points_of(above, bare)),
            )
        }
        _ => ("—".to_owned(), "—".to_owned()),
    };
    writeln!(
        md,
        "| {} | {} | {:.0} | {:.2} | {above} | {points} |",
        row.workload.title(),
        row.setup.label(),
        row.ns_per_op,
        row.runs_per_op
    )?;
    Ok(())
}

/// `row`'s program time per operation less the clock bias of its runs
/// (the floor's time per run).
pub fn above_floor(row: &ProgramRow, floor: &ProgramRow) -> f64 {
    let bias_per_run = if floor.runs_per_op > 0.0 {
        floor.ns_per_op / floor.runs_per_op
    } else {
        0.0
    };
    row.ns_per_op - row.runs_per_op * bias_per_run
}

/// `ns` in points (percent) of `bare` ns per operation.
pub fn points_of(ns: f64, bare: f64) -> f64 {
    if bare > 0.0 { ns / bare * 100.0 } else { 0.0 }
}

/// The monitor's programs above the floor's, in points of bare, for a
/// target line ("" when the run has no such rows).
pub fn above_floor_note(
    input: &ReportInput<'_>,
    setup: Setup,
    workload: crate::bench::worker::Workload,
) -> String {
    let rows = input.program_time;
    match (
        find(rows, setup, workload),
        find(rows, Setup::Floor, workload),
    ) {
        (Some(row), Some(floor)) => {
            let bare = input.matrix.median(Setup::Bare, workload);
            let above = above_floor(row, floor);
            format!(
                " (bpf_stats: the programs add {above:+.0} ns per op over the floor's, {:+.1} points)",
                points_of(above, bare)
            )
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::worker::Workload;

    #[test]
    fn the_clock_bias_of_each_run_is_taken_off() {
        let row = |setup, ns_per_op, runs_per_op| ProgramRow {
            setup,
            workload: Workload::Repeat,
            ns_per_op,
            runs_per_op,
        };
        // The floor: 50 ns per run. Three runs of the monitor's carry 150.
        let floor = row(Setup::Floor, 100.0, 2.0);
        let monitor = row(Setup::MonitorInside, 300.0, 3.0);
        assert!((above_floor(&monitor, &floor) - 150.0).abs() < 1e-9);
        assert!((points_of(150.0, 1500.0) - 10.0).abs() < 1e-9);
    }
}
