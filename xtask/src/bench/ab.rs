//! `cargo xtask bench-ab --a BIN --b BIN`: which of two monitor builds costs
//! less per operation, told apart where `bench` cannot. These VMs change
//! speed by half from one minute to the next: two binaries timed one after
//! the other differ by more than a change worth making. Here both monitors
//! are attached at once, each with its own config and metrics port, and
//! each watching the worker's cgroup: every syscall runs both programs, in
//! the same phase, and the kernel's accounting (bpf_stats) says what each
//! monitor's programs took. The one attached second runs with the caches
//! the first warmed, so the order is swapped every round and the difference
//! is taken per order, then averaged: the order's share cancels.

use std::path::PathBuf;

use anyhow::{Context as _, Result, ensure};

use super::{
    Bench, Placement, RunSettings, prepare_tools, program_time::held_programs, stats::median,
    stats_sysctl::StatsSetting, worker::Workload,
};
use crate::util::{CgroupGuard, is_root};

#[derive(clap::Args)]
pub struct AbOptions {
    /// The first monitor binary.
    #[arg(long)]
    a: PathBuf,
    /// The second monitor binary.
    #[arg(long)]
    b: PathBuf,
    #[arg(long, value_enum, default_value_t = Workload::Repeat)]
    workload: Workload,
    /// Rounds (each starts both monitors afresh; the order alternates).
    #[arg(long, default_value_t = 12)]
    rounds: usize,
    /// Operations per round [default: 200000 pairs, or 50000 distinct
    /// files, a fifth of the pairs for connect].
    #[arg(long)]
    iterations: Option<u64>,
    /// The worker outside the monitored cgroups (the cost every process
    /// on the host pays).
    #[arg(long)]
    outside: bool,
}

/// One round: each binary's programs' ns per operation, and whether `a`
/// was attached first.
struct Round {
    a: f64,
    b: f64,
    a_first: bool,
}

pub fn run(options: AbOptions) -> Result<()> {
    ensure!(is_root(), "bench-ab needs root (it loads eBPF programs)");
    ensure!(
        options.rounds >= 2,
        "--rounds must be at least 2 (one per order)"
    );
    for bin in [&options.a, &options.b] {
        ensure!(bin.is_file(), "{} is no file", bin.display());
    }
    let ops = options.iterations.unwrap_or(match options.workload {
        Workload::Distinct | Workload::Missing => 50_000,
        _ => 200_000,
    });
    let settings = RunSettings::for_ab(ops);
    // Builds the release monitor too: the worker is this xtask binary.
    let monitor_bin = prepare_tools(&settings.command)?;
    let worker_exe = std::env::current_exe().context("locating the xtask binary")?;
    let tmp_dir = tempfile::Builder::new().prefix("monitor-ab-").tempdir()?;
    let cgroups = CgroupGuard::create_fresh("monitor-ab")?;
    let bench = Bench::prepare(tmp_dir.path(), &cgroups, monitor_bin, worker_exe, &settings)?;
    let _stats = StatsSetting::on()?;
    // As in the bench's rows: no audit context in the workers.
    let _task_audit = super::task_audit::NoTaskAudit::hold()?;
    let mut rounds = Vec::new();
    for i in 0..options.rounds {
        let round = bench.ab_round(&options, i % 2 == 0)?;
        println!(
            "round {:>2}: a {:>7.1}  b {:>7.1}  b-a {:>+6.1} ns/op ({} first)",
            i + 1,
            round.a,
            round.b,
            round.b - round.a,
            if round.a_first { "a" } else { "b" }
        );
        rounds.push(round);
    }
    print_verdict(&options, &rounds);
    Ok(())
}

impl Bench {
    /// Both monitors attached (`a` first when `a_first`), a warm-up, then
    /// the timed operations; each monitor's programs' time per operation.
    fn ab_round(&self, options: &AbOptions, a_first: bool) -> Result<Round> {
        let (first, second) = if a_first {
            (&options.a, &options.b)
        } else {
            (&options.b, &options.a)
        };
        let first = self.start_monitor_of(first, "ab-first", &self.tmp.join("ab-first.jsonl"))?;
        let second =
            self.start_monitor_of(second, "ab-second", &self.tmp.join("ab-second.jsonl"))?;
        let placement = if options.outside {
            Placement::default()
        } else {
            self.inside()
        };
        let pids = [first.daemon.id(), second.daemon.id()];
        let before = [held_programs(pids[0])?.0, held_programs(pids[1])?.0];
        let report = self.timed_run(options.workload, &placement)?;
        let after = [held_programs(pids[0])?.0, held_programs(pids[1])?.0];
        Bench::stop_monitor(first)?;
        Bench::stop_monitor(second)?;
        // Its warm-up included: the programs ran for those too.
        let ops = report.opens.max(1) as f64;
        let (first_ns, second_ns) = (
            (after[0] - before[0]) as f64 / ops,
            (after[1] - before[1]) as f64 / ops,
        );
        Ok(if a_first {
            Round {
                a: first_ns,
                b: second_ns,
                a_first,
            }
        } else {
            Round {
                a: second_ns,
                b: first_ns,
                a_first,
            }
        })
    }
}

/// The medians per order, and their mean: the order-corrected difference.
fn print_verdict(options: &AbOptions, rounds: &[Round]) {
    let diffs = |a_first: bool| -> Vec<f64> {
        rounds
            .iter()
            .filter(|r| r.a_first == a_first)
            .map(|r| r.b - r.a)
            .collect()
    };
    let (a_first, b_first) = (median(&diffs(true)), median(&diffs(false)));
    let all_a: Vec<f64> = rounds.iter().map(|r| r.a).collect();
    let all_b: Vec<f64> = rounds.iter().map(|r| r.b).collect();
    println!(
        "\n{} ({}), {} rounds: a {} median {:.1} ns/op, b {} median {:.1} ns/op",
        options.workload.title(),
        if options.outside {
            "worker outside"
        } else {
            "worker in the action"
        },
        rounds.len(),
        options.a.display(),
        median(&all_a),
        options.b.display(),
        median(&all_b),
    );
    println!(
        "b - a: median {a_first:+.1} with a attached first, {b_first:+.1} with b first; \
         order-corrected {:+.1} ns per operation",
        (a_first + b_first) / 2.0
    );
}
