//! The alert-storm row: one action probes many distinct missing paths (a
//! hostile or merely noisy action). With the default per-action alert
//! budget, the daemon must write a few hundred alerts plus summaries whose
//! counts add up to every probe, and its memory must stay bounded: the row
//! reports the alert output, the count sum, events and losses, and the
//! daemon's resident memory before the flood and at its peak (`VmHWM`).

use std::{fs, time::Instant};

use anyhow::{Context as _, Result};

use super::{Bench, Workload, drained};

pub struct FloodResult {
    pub paths: u64,
    pub seconds: f64,
    pub events: u64,
    pub lost: u64,
    pub alert_lines: u64,
    pub alert_bytes: u64,
    /// Sum of the alerts' `count` (must equal `paths`).
    pub count_sum: u64,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
}

/// A `kB` field of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

impl Bench {
    pub fn flood(&self, paths: u64) -> Result<FloodResult> {
        println!("bench: alert storm: one action probes {paths} distinct missing paths");
        let alerts = self.tmp.join("flood-alerts.jsonl");
        let monitor = self.start_monitor_with("flood", &alerts)?;
        let pid = monitor.daemon.id();
        let rss_before_kib = status_kib(pid, "VmRSS:")?;
        let (before, lost_before) = super::event_counters(monitor.addr, "file")?;
        let mut cmd = self.worker_command(Workload::Missing, &self.inside());
        cmd.args(["--warmup", "0", "--iterations", &paths.to_string()]);
        let start = Instant::now();
        let child = cmd.spawn().context("starting the flood worker")?;
        Self::finish_worker(&cmd, child)?;
        let seconds = start.elapsed().as_secs_f64();
        let (after, lost_after) = drained(monitor.addr, "file", before + paths)?;
        let rss_peak_kib = status_kib(pid, "VmHWM:")?;
        Self::stop_monitor(monitor)?;
        let text = fs::read_to_string(&alerts).unwrap_or_default();
        let count_sum = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|a| a["count"].as_u64())
            .sum();
        Ok(FloodResult {
            paths,
            seconds,
            events: after - before,
            lost: lost_after - lost_before,
            alert_lines: text.lines().count() as u64,
            alert_bytes: text.len() as u64,
            count_sum,
            rss_before_kib,
            rss_peak_kib,
        })
    }
}
