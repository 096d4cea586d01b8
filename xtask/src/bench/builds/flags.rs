//! `cargo xtask bench-flags`: what a set of Bazel flags costs the bench's
//! build, against another set, with builds side by side (one per CPU, the
//! CPUs swapped every other pair; see `side_by_side.rs` for why built one
//! after the other they show nothing). No monitor runs: this is for
//! choosing what `monitor exec` asks of Bazel (the execution log's flag, a
//! label source), whose cost is Bazel's own work.
//!
//! `{log}` in a flag is replaced by a file of that build's own, removed
//! with its output base.

use std::{fmt::Write as _, fs, path::PathBuf};

use anyhow::{Context as _, Result, ensure};

use super::{
    Cpu, PlainRun, Runner,
    side_by_side::{Part, both, over},
    workspace::{self, WorkspaceSize},
};
use crate::{
    bench::stats,
    setup,
    util::{CgroupGuard, is_root, target_dir, workspace_root},
};

#[derive(clap::Args)]
pub struct FlagOptions {
    /// Bazel flags of build A (after `build`, split at whitespace; `{log}`:
    /// a file of the build's own) [default: none, the bench's bare build].
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    a: String,
    /// Bazel flags of build B, as for `--a`.
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    b: String,
    /// Pairs of builds (B over A, CPUs swapped every other pair).
    #[arg(long, default_value_t = 8)]
    pairs: usize,
    /// Every other pair runs both builds unpinned, sharing both CPUs (the
    /// scheduler moves them), to compare the method's noise with pinning:
    /// use the same flags for A and B. Medians are given per placement.
    #[arg(long)]
    shared_every_other: bool,
    /// Also write the pairs and their medians here (Markdown).
    #[arg(long)]
    output: Option<PathBuf>,
    #[command(flatten)]
    workspace: WorkspaceSize,
}

/// One pair: A and B at the same moment.
struct FlagPair {
    a: PlainRun,
    b: PlainRun,
    /// B ran on CPU 0.
    swapped: bool,
    /// Both builds ran unpinned.
    shared: bool,
}

pub fn run(options: FlagOptions) -> Result<()> {
    ensure!(
        is_root(),
        "bench-flags needs root (it creates cgroups and pins builds to CPUs)"
    );
    ensure!(options.pairs > 0, "--pairs must be positive");
    let size = &options.workspace;
    setup::run()?;
    let dir = target_dir()?.join("bench-flags");
    let ws = dir.join("ws");
    let _ = fs::remove_dir_all(&ws);
    workspace::generate(&ws, size)?;
    let described = workspace::describe(size);
    println!("bench-flags: {described}");
    let cgroups = CgroupGuard::create_fresh("monitor-bench-flags")?;
    // No monitor runs here: the path is never started.
    let no_monitor = dir.join("no-monitor");
    let runner = Runner::new(ws, dir.clone(), &no_monitor, &cgroups)?;
    runner.warm_up("bench-flags")?;
    let described = format!("{described}, built on {}", runner.describe_outputs());
    let _stats = crate::bench::stats_sysctl::StatsSetting::off()?;
    // As in the bench's builds: no audit context in the builds.
    let _task_audit = crate::bench::task_audit::NoTaskAudit::hold()?;
    let (a_flags, b_flags) = (split(&options.a), split(&options.b));
    let mut pairs = Vec::new();
    for n in 0..options.pairs {
        super::wait_quiet_before_build()?;
        let (swapped, shared) = placement(n, options.shared_every_other);
        let (cpu_a, cpu_b) = Cpu::pair(swapped, shared);
        let (a, b) = both(
            || runner.plain_with(&a_flags, cpu_a),
            || runner.plain_with(&b_flags, cpu_b),
        )
        .with_context(|| format!("pair {}", n + 1))?;
        runner.clean_all();
        let (wall, cpu) = over(&b, &a);
        println!(
            "bench-flags: pair {}: A {:.1} s CPU, B {:.1} s CPU: B over A wall {wall:+.1} %, CPU {cpu:+.1} %",
            n + 1,
            a.cpu_s,
            b.cpu_s
        );
        pairs.push(FlagPair {
            a,
            b,
            swapped,
            shared,
        });
    }
    let date = crate::bench::report::first_line(
        std::process::Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    let heading = format!(
        "# Bazel flags side by side\n\nWritten by `cargo xtask bench-flags` ({date}): {described}. \
         Each pair is two builds at the same moment, one pinned to each CPU (B's CPU alternates), \
         each with a fresh output base and Bazel server, no monitor running; CPU is each build's \
         cgroup `usage_usec`; `auditctl -a never,task` held (no audit context in the builds). The \
         interval is the median's distribution-free 95 % interval (the range with fewer than 6 \
         pairs).\n\n"
    );
    let shared = match options.shared_every_other {
        true => {
            "Every other pair (`--shared-every-other`) runs both builds unpinned, sharing both \
             CPUs.\n\n"
        }
        false => "",
    };
    let md = heading + shared + &render(&options, &pairs)?;
    print!("{md}");
    if let Some(path) = &options.output {
        let path = workspace_root().join(path);
        fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// (B on CPU 0, both unpinned) for pair `n`: pinned pairs swap CPUs every
/// other pinned pair.
fn placement(n: usize, shared_every_other: bool) -> (bool, bool) {
    match shared_every_other {
        true => (n % 4 == 2, n % 2 == 1),
        false => (n % 2 == 1, false),
    }
}

fn split(flags: &str) -> Vec<String> {
    flags.split_whitespace().map(str::to_owned).collect()
}

/// The pairs and B's medians over A, with their 95 % intervals.
fn render(options: &FlagOptions, pairs: &[FlagPair]) -> Result<String> {
    let mut md = String::new();
    let shown = |flags: &str| match flags.trim() {
        "" => "(none)".to_owned(),
        f => format!("`{f}`"),
    };
    writeln!(
        md,
        "A: {}\nB: {}\n\n| pair | A CPU (s) | B CPU (s) | B on | B over A, wall | B over A, CPU |\n| --- | --- | --- | --- | --- | --- |",
        shown(&options.a),
        shown(&options.b)
    )?;
    for (n, p) in pairs.iter().enumerate() {
        let (wall, cpu) = over(&p.b, &p.a);
        writeln!(
            md,
            "| {} | {:.1} | {:.1} | {} | {wall:+.1} % | {cpu:+.1} % |",
            n + 1,
            p.a.cpu_s,
            p.b.cpu_s,
            Cpu::pair(p.swapped, p.shared).1.describe()
        )?;
    }
    writeln!(md)?;
    // (name, shared): all pairs when none is shared, else each placement.
    let groups: &[(&str, Option<bool>)] = match pairs.iter().any(|p| p.shared) {
        true => &[(" pinned", Some(false)), (" unpinned", Some(true))],
        false => &[("", None)],
    };
    for (which, shared) in groups {
        let (wall, cpu): (Vec<f64>, Vec<f64>) = pairs
            .iter()
            .filter(|p| shared.is_none_or(|s| p.shared == s))
            .map(|p| over(&p.b, &p.a))
            .unzip();
        let range = |v: &[f64]| format!("{:+.1} to {:+.1}", stats::min(v), stats::max(v));
        writeln!(
            md,
            "B over A, median of {} pairs{which}: wall {} (pairs {}), CPU {} (pairs {})\n",
            wall.len(),
            Part::of(&wall).text(),
            range(&wall),
            Part::of(&cpu).text(),
            range(&cpu)
        )?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cpu_s: f64) -> PlainRun {
        PlainRun {
            wall_s: cpu_s,
            cpu_s,
        }
    }

    #[test]
    fn shared_pairs_alternate_with_pinned_ones_that_swap() {
        let placements: Vec<_> = (0..4).map(|n| placement(n, true)).collect();
        assert_eq!(
            placements,
            [(false, false), (false, true), (true, false), (false, true)]
        );
        assert_eq!(placement(1, false), (true, false));
        assert_eq!(placement(2, false), (false, false));
    }

    #[test]
    fn the_report_gives_each_pair_and_the_medians() {
        let options = FlagOptions {
            a: String::new(),
            b: "--x={log}".into(),
            pairs: 2,
            shared_every_other: false,
            output: None,
            workspace: WorkspaceSize {
                build_compiles: 1,
                build_sandboxes: 1,
                build_inputs: 1,
            },
        };
        let pairs = [
            FlagPair {
                a: run(50.0),
                b: run(51.0),
                swapped: false,
                shared: false,
            },
            FlagPair {
                a: run(40.0),
                b: run(41.2),
                swapped: true,
                shared: false,
            },
        ];
        let md = render(&options, &pairs).unwrap();
        assert!(md.contains("A: (none)\nB: `--x={log}`"), "{md}");
        assert!(
            md.contains("| 1 | 50.0 | 51.0 | CPU 1 | +2.0 % | +2.0 % |"),
            "{md}"
        );
        assert!(
            md.contains("| 2 | 40.0 | 41.2 | CPU 0 | +3.0 % | +3.0 % |"),
            "{md}"
        );
        assert!(md.contains("median of 2 pairs: wall +2.5 %"), "{md}");
    }

    #[test]
    fn flags_split_at_whitespace() {
        assert_eq!(split("  --a=1   --b "), ["--a=1", "--b"]);
        assert!(split("").is_empty());
    }
}
