//! What one run saw, for `monitor exec`'s summary and report: the alerts
//! written, violation and coverage counts, and the spawn command lines that
//! the execution log is joined on.
use std::collections::HashMap;

use crate::output::alert::Alert;

#[derive(Default)]
pub struct RunSummary {
    /// Every alert written is kept (`monitor exec` only).
    pub keep_alerts: bool,
    pub alerts: Vec<Alert>,
    pub violations: u64,
    /// Processes that set up an io_uring (not all it can do with files
    /// through it is seen): warned about once each.
    pub io_uring_processes: u64,
    /// Sandboxed spawns seen starting (launchers working in a sandbox dir).
    pub sandboxed_launches: usize,
    /// Sandboxed spawns in the execution log that were never seen: they ran
    /// outside the monitored job (a Bazel server started elsewhere).
    pub unmonitored_spawns: usize,
    /// Spawns run by a persistent worker whose file accesses could not be
    /// tied to one action (`pipeline::workers`).
    pub worker_spawns_unattributable: usize,
    /// The command line of every spawn that raised an alert or reached a
    /// destination, by action id (kept only when an execution log will be
    /// read).
    pub spawn_commands: HashMap<String, Vec<String>>,
    /// Connects alerted first and then allowed by a target-scoped rule
    /// once the spawn's label was joined.
    pub allowed_by_scoped_rules: u64,
    /// Every destination reached or tried (`monitor exec` only).
    pub inventory: crate::output::inventory::Inventory,
    /// The Bazel job's TCP connects outside every spawn (`monitor exec`),
    /// joined with its repository fetches at the end.
    pub server_connects: crate::bazel::fetches::ServerConnects,
}

impl RunSummary {
    pub fn new(keep_alerts: bool) -> Self {
        RunSummary {
            keep_alerts,
            ..Default::default()
        }
    }

    pub fn written(&mut self, alerts: &[Alert]) {
        if self.keep_alerts {
            self.alerts.extend_from_slice(alerts);
        }
    }
}
