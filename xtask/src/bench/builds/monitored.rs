//! One build under `monitor exec`, its monitor in a cgroup of its own (its
//! CPU), the build's CPU from `monitor exec`'s parent cgroup, peak RSS from
//! `wait4`, events, losses and violations from its `--report`.

use std::{fs, os::unix::process::ExitStatusExt as _, path::Path, process::Command, time::Instant};

use anyhow::{Context as _, Result, ensure};

use super::{
    Cpu, LabelSource, MonitoredRun, Runner, cpu_usage_s, exec_parent, last_lines, wait_empty,
};
use crate::bench::program_time::{CountedPrograms, ProgramSampler};
use crate::util::{display, join_cgroup_on_spawn};

/// Other `monitor exec` jobs with processes in them now: their CPU would be
/// counted as this build's (empty leftovers do not matter).
fn other_active_jobs() -> Result<Vec<String>> {
    let parent = exec_parent()?;
    let Ok(entries) = fs::read_dir(&parent) else {
        return Ok(Vec::new());
    };
    Ok(entries
        .filter_map(|e| e.ok())
        .filter(|e| super::is_populated(&e.path()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect())
}

/// A clean build must raise nothing: show a few of the alerts it raised.
fn print_alerts(report: &serde_json::Value) {
    let alerts = report["alerts"].as_array().map_or(&[][..], Vec::as_slice);
    for alert in alerts.iter().take(5) {
        println!(
            "bench: ALERT on the clean build: {}",
            alert["message"].as_str().unwrap_or("?")
        );
    }
    if alerts.len() > 5 {
        println!("bench: … and {} more alert(s)", alerts.len() - 5);
    }
}

/// The build's labels came from `source`: `monitor exec` falls back to
/// the execution log, saying why, when something needs it.
fn check_label_source(report: &serde_json::Value, source: LabelSource, stderr: &str) -> Result<()> {
    let used = report["bazel"]["label_source"].as_str().unwrap_or("none");
    ensure!(
        used == source.word(),
        "the build asked for labels from {} and took them from {used}: {}",
        source.word(),
        last_lines(stderr)
    );
    Ok(())
}

/// Waits for `pid` with `wait4`: its exit status and peak RSS (KiB).
fn wait_with_rusage(pid: u32) -> Result<(std::process::ExitStatus, u64)> {
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child, with valid out-pointers.
    let rc = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
    ensure!(
        rc == pid as libc::pid_t,
        "wait4({pid}): {}",
        std::io::Error::last_os_error()
    );
    Ok((
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss.max(0) as u64,
    ))
}

/// How a monitored build's `monitor exec` ended.
struct Waited {
    status: std::process::ExitStatus,
    /// KiB.
    peak_rss: u64,
    programs: Option<CountedPrograms>,
}

impl Runner<'_> {
    /// Waits for the monitor `pid` (in `cgroup`), `perf` recording it and
    /// its programs' run time summed when asked: its exit status, peak RSS
    /// and programs' (run time s, runs).
    fn wait_recorded(&self, pid: u32, cgroup: &Path) -> Result<Waited> {
        let perf = match &self.perf {
            Some(recording) => Some(crate::profile::perf::record(cgroup, recording)?),
            None => None,
        };
        let sampler = self
            .count_programs
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| ProgramSampler::start(pid));
        let (status, peak_rss) = wait_with_rusage(pid)?;
        if let Some(perf) = perf {
            crate::profile::perf::finish(perf)?;
        }
        let programs = match sampler {
            Some(sampler) => {
                let (ns, runs) = sampler
                    .finish()
                    .context("the monitor never held a kernel program")?;
                Some(CountedPrograms {
                    seconds: ns as f64 / 1e9,
                    runs,
                    bias_ns_per_run: None,
                })
            }
            None => None,
        };
        Ok(Waited {
            status,
            peak_rss,
            programs,
        })
    }

    /// The config every bench `monitor exec` gets: no metrics listener
    /// (two may run at once); the default label source.
    pub(super) fn exec_config(&self) -> Result<std::path::PathBuf> {
        self.exec_config_for(LabelSource::ExecutionLog)
    }

    /// [`Runner::exec_config`] with `[bazel] label_source` = `source`.
    fn exec_config_for(&self, source: LabelSource) -> Result<std::path::PathBuf> {
        let config = self.dir.join(format!("monitor-{}.toml", source.word()));
        let text = format!(
            "[metrics]\nlisten = \"off\"\n[bazel]\nlabel_source = \"{}\"\n",
            source.word()
        );
        fs::write(&config, text)?;
        Ok(config)
    }

    /// `monitor exec --report <report> -- bazel …` for build `n`.
    fn monitor_exec_command(
        &self,
        n: usize,
        report: &Path,
        source: LabelSource,
    ) -> Result<Command> {
        let config = self.exec_config_for(source)?;
        let mut cmd = Command::new(&self.monitor_bin);
        self.bazel_env(&mut cmd);
        cmd.arg("exec")
            .arg("--config")
            .arg(&config)
            .arg("--report")
            .arg(report);
        cmd.arg("--")
            .arg(super::BAZEL)
            .args(self.startup_args(n))
            .args(self.build_args());
        Ok(cmd)
    }

    pub(crate) fn monitored(&self) -> Result<MonitoredRun> {
        self.monitored_on(Cpu::Any, LabelSource::ExecutionLog)
    }

    /// [`Runner::monitored`] on `cpu`, its labels from `source`.
    pub(crate) fn monitored_on(&self, cpu: Cpu, source: LabelSource) -> Result<MonitoredRun> {
        let n = self.next();
        let mut others = other_active_jobs()?;
        let monitor_cgroup = self.cgroups.create_child(&format!("m{n}"))?;
        let report = self.dir.join(format!("report-{n}.json"));
        let mut cmd = self.monitor_exec_command(n, &report, source)?;
        join_cgroup_on_spawn(&mut cmd, &monitor_cgroup)?;
        let stderr_path = self.dir.join(format!("monitor-{n}.stderr"));
        cmd.stderr(fs::File::create(&stderr_path)?);
        cpu.prepare(&mut cmd)?;
        let build_before = cpu_usage_s(&exec_parent()?);
        let start = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("running `{}`", display(&cmd)))?;
        let Waited {
            status,
            peak_rss,
            programs,
        } = self.wait_recorded(child.id(), &monitor_cgroup)?;
        let wall_s = start.elapsed().as_secs_f64();
        let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
        wait_empty(&monitor_cgroup)?;
        let build_cpu_s = cpu_usage_s(&exec_parent()?) - build_before;
        let job = format!("exec-{}", child.id());
        others.extend(other_active_jobs()?.into_iter().filter(|j| *j != job));
        if !others.is_empty() {
            eprintln!(
                "bench: WARNING: other `monitor exec` jobs ran beside build {n} ({}): its CPU time includes theirs",
                others.join(", ")
            );
        }
        let daemon_cpu_s = cpu_usage_s(&monitor_cgroup);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(&report).unwrap_or_default()).with_context(|| {
                format!(
                    "no report from `{}`: {}",
                    display(&cmd),
                    last_lines(&stderr)
                )
            })?;
        // Exit 1 with violations (false alerts) or with incomplete
        // monitoring (lost events, counted below) is a result, not a failure.
        let violated = json["violations"].as_u64() > Some(0);
        let incomplete = json["completeness"]["complete"] == false;
        ensure!(
            status.success() || (status.code() == Some(1) && (violated || incomplete)),
            "`{}` exited with {status}: {}",
            display(&cmd),
            last_lines(&stderr)
        );
        check_label_source(&json, source, &stderr)?;
        print_alerts(&json);
        self.clean_after(n, cpu);
        if !self.keep_reports {
            let _ = fs::remove_file(&report);
        }
        let number = |key: &str| json[key].as_u64();
        let events = json["events"]
            .as_object()
            .map(|kinds| kinds.values().filter_map(|v| v.as_u64()).sum());
        Ok(MonitoredRun {
            wall_s,
            build_cpu_s,
            daemon_cpu_s,
            daemon_peak_rss_kib: peak_rss,
            events,
            probes_folded: json["completeness"]["probes_folded"].as_u64(),
            repeats_counted: json["completeness"]["repeats_counted"].as_u64(),
            startup_cpu_s: json["monitor"]["startup_cpu_s"].as_f64(),
            lost: number("events_lost").context("the report has no events_lost")?,
            violations: number("violations").context("the report has no violations")?,
            unmonitored_spawns: number("unmonitored_spawns").unwrap_or(0),
            cpu_shared: !others.is_empty(),
            programs,
        })
    }
}
