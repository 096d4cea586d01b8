//! `cargo xtask profile-build`: what the daemon itself costs on one real
//! build. Generates the bench's Bazel workspace, runs it under
//! `monitor exec` (the release binary) with the bench's runner, and prints
//! the daemon's CPU time, peak RSS and events; with `--perf`, records the
//! daemon with `perf` and writes a flame graph and a top-functions table.

pub mod perf;
mod rss;
mod stacks;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, ensure};

use crate::{
    bench::builds::{
        Cpu, LabelSource, MonitoredRun, Runner,
        workspace::{self, WorkspaceSize},
    },
    setup,
    util::{CgroupGuard, cargo, exec, is_root, target_dir, workspace_root},
};

#[derive(clap::Args)]
pub struct Options {
    #[command(flatten)]
    workspace: WorkspaceSize,
    /// Monitored builds, one after the other (medians printed at the end).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Record the daemon with `perf` (its sampling adds to the daemon's
    /// CPU time) and write a flame graph and a top-functions table.
    #[arg(long)]
    perf: bool,
    /// What `--perf` samples: CPU time, or page faults (where resident
    /// memory grows).
    #[arg(long, value_enum, default_value = "cpu-clock")]
    perf_event: perf::Event,
    /// No build: write the flame graph and table again from the last
    /// `--perf` run's recording.
    #[arg(long)]
    report_only: bool,
    /// Where `monitor exec` takes the spawns' labels from (`[bazel]
    /// label_source`).
    #[arg(long, value_enum, default_value = "execution-log")]
    label_source: LabelSource,
    /// Run this monitor binary instead of building the release one (to
    /// compare two versions on the same machine, alternately).
    #[arg(long)]
    monitor_bin: Option<PathBuf>,
    /// The flame graph (with `--perf`); the table goes beside it (`.txt`).
    #[arg(long, default_value = "profiles/daemon-build.svg")]
    svg: PathBuf,
}

pub fn run(options: Options) -> Result<()> {
    ensure!(
        is_root(),
        "profile-build needs root (it loads eBPF programs and creates cgroups)"
    );
    ensure!(options.runs > 0, "--runs must be positive");
    let size = &options.workspace;
    // Kept between runs: Bazel's install base (extracted once).
    let dir = target_dir()?.join("profile-build");
    let perf_data = dir.join("perf.data");
    let svg = workspace_root().join(&options.svg);
    if options.report_only {
        return write_profile(&perf_data, &svg, size, options.perf_event);
    }
    // A fresh machine has neither the eBPF toolchain nor Bazel and perf.
    setup::run()?;
    let monitor_bin = match options.monitor_bin {
        // Absolute: `monitor exec` is started in the generated workspace.
        Some(bin) => {
            fs::canonicalize(&bin).with_context(|| format!("--monitor-bin {}", bin.display()))?
        }
        None => {
            exec(cargo().args(["build", "--release", "-p", "monitor"]))?;
            target_dir()?.join("release").join("monitor")
        }
    };
    let ws = dir.join("ws");
    let _ = fs::remove_dir_all(&ws);
    let actions = workspace::generate(&ws, size)?;
    println!("profile-build: {}", workspace::describe(size));
    let cgroups = CgroupGuard::create_fresh("monitor-profile-build")?;
    let mut runner = Runner::new(ws, dir.clone(), &monitor_bin, &cgroups)?;
    runner.warm_up("profile-build")?;
    println!(
        "profile-build: builds write to {}",
        runner.describe_outputs()
    );
    runner.perf = options.perf.then(|| perf::Recording {
        out: perf_data.clone(),
        event: options.perf_event,
    });
    // To compare what two versions of the daemon reported on one build.
    runner.keep_reports = true;
    // Timed: every program run would also read the clock.
    let _stats = crate::bench::stats_sysctl::StatsSetting::off()?;
    // Measured like the bench's builds: no audit context in the build.
    let _task_audit = crate::bench::task_audit::NoTaskAudit::hold()?;
    let mut runs = Vec::new();
    for n in 1..=options.runs {
        let sampler = rss::start(cgroups.path().to_path_buf());
        let run = runner.monitored_on(Cpu::Any, options.label_source);
        let timeline = sampler.finish();
        let run = run.with_context(|| format!("monitored build {n}"))?;
        print_run(&format!("build {n} ({actions} actions)"), &run);
        print!("{}", rss::render(&timeline));
        runs.push(run);
    }
    if runs.len() > 1 {
        print_medians(&runs);
    }
    println!(
        "profile-build: reports in {}",
        dir.join("report-<n>.json").display()
    );
    if options.perf {
        write_profile(&perf_data, &svg, size, options.perf_event)?;
    }
    Ok(())
}

fn print_run(what: &str, run: &MonitoredRun) {
    println!(
        "profile-build: {what}: daemon {:.2} s CPU ({} s its start), peak RSS {:.0} MiB, {} events \
         ({} failed probes and {} repeats counted in the kernel), {} lost, {} violations; build {:.1} s wall, \
         {:.1} s CPU",
        run.daemon_cpu_s,
        run.startup_cpu_s
            .map_or("?".to_owned(), |s| format!("{s:.2}")),
        run.daemon_peak_rss_kib as f64 / 1024.0,
        run.events.map_or("?".to_owned(), |e| e.to_string()),
        run.probes_folded.map_or("?".to_owned(), |e| e.to_string()),
        run.repeats_counted
            .map_or("?".to_owned(), |e| e.to_string()),
        run.lost,
        run.violations,
        run.wall_s,
        run.build_cpu_s
    );
}

fn print_medians(runs: &[MonitoredRun]) {
    let median = |f: &dyn Fn(&MonitoredRun) -> f64| {
        crate::bench::stats::median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "profile-build: medians of {} builds: daemon {:.2} s CPU, peak RSS {:.0} MiB, {:.0} events",
        runs.len(),
        median(&|r| r.daemon_cpu_s),
        median(&|r| r.daemon_peak_rss_kib as f64 / 1024.0),
        median(&|r| r.events.unwrap_or(0) as f64),
    );
}

/// The flame graph at `svg` and the top-functions table beside it.
fn write_profile(
    perf_data: &Path,
    svg: &Path,
    size: &WorkspaceSize,
    event: perf::Event,
) -> Result<()> {
    println!(
        "profile-build: folding {} (perf script)",
        perf_data.display()
    );
    let folded = perf::folded_stacks(perf_data)?;
    // For a closer look (grep) than the table gives.
    fs::write(perf_data.with_extension("folded"), &folded)?;
    let title = format!(
        "monitor exec daemon, one build: {} compiles, {} sandboxes x {} inputs",
        size.build_compiles, size.build_sandboxes, size.build_inputs
    );
    perf::flame_graph(&folded, &title, event, svg)?;
    let table = stacks::render(
        &stacks::top(&folded, 30),
        &format!("# {title}"),
        event.unit(),
    );
    let txt = svg.with_extension("txt");
    fs::write(&txt, &table).with_context(|| format!("writing {}", txt.display()))?;
    println!("{table}");
    println!(
        "profile-build: wrote {} and {}",
        svg.display(),
        txt.display()
    );
    Ok(())
}
