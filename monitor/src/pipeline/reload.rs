//! Applying a config reload (`monitor run` on SIGHUP) inside the running
//! pipeline: the policy (and the kernel's copy of `network.allow` and
//! `network.enforce`), the declaration wait, the fold window, the
//! declarations directory and the alert sinks are swapped between two
//! events. The kernel programs stay attached and the ring reader is not
//! touched, so no event is lost across a reload.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::{
    kernel::loader::Kernel,
    output::{sinks::AlertSinks, writer::SinkWriter},
    pipeline::Pipeline,
    policy::{judge::Policy, kernel_rules::KernelTiers},
};

/// What a reload changes in the running pipeline (prepared off the loop by
/// `commands::reload`).
pub struct Reload {
    pub policy: Policy,
    /// `network.allow` and the `@bazel` rules compiled for the kernel's tries.
    pub kernel_rules: KernelTiers,
    pub enforce: bool,
    /// `bazel.require_isolation`, for spawns judged from now on.
    pub require_isolation: crate::bazel::isolation::Isolation,
    /// New sinks, only when the `[alerts]` section changed.
    pub sinks: Option<AlertSinks>,
    pub declaration_wait: Duration,
    pub fold_window: Duration,
    pub declarations_dir: PathBuf,
    /// When the signal arrived (to log how long the reload took).
    pub received: Instant,
}

impl Pipeline {
    /// Swaps in a reloaded config. Alerts already folded are written by
    /// the sinks they were raised under. (The caller restarts the
    /// declarations watcher, which re-reads every declaration.)
    pub(super) fn reload(&mut self, reload: Reload, kernel: &mut Kernel) {
        let entries = reload.kernel_rules.entries();
        if let Err(e) = kernel.set_network_policy(entries, reload.enforce) {
            // Checked when prepared; a map write failing here is the kernel's.
            log::error!("reload: writing network.allow into the kernel failed: {e:#}");
        }
        let dirs = crate::policy::kernel_allowed::allowed_dirs(&reload.policy.files_allow);
        if let Err(e) = kernel.set_allowed_dirs(&dirs) {
            log::error!("reload: writing files.allow into the kernel failed: {e:#}");
        }
        self.handler.policy = reload.policy;
        self.handler.require_isolation = reload.require_isolation;
        self.handler.registry.set_wait(reload.declaration_wait);
        self.fold_window = reload.fold_window;
        self.declarations_dir = reload.declarations_dir;
        if let Some(sinks) = reload.sinks {
            self.flush_alerts();
            let old = std::mem::replace(
                &mut self.sinks,
                SinkWriter::start(sinks, self.metrics.clone()),
            );
            drop(old); // writes what it still holds, then stops
        }
        self.metrics
            .fleet
            .config_reloads_total
            .with_label_values(&["ok"])
            .inc();
        log::info!(
            "config reloaded in {:.1} ms (kernel programs stayed attached)",
            reload.received.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// The next reload, or never when reloads are off.
pub(super) async fn next_reload(
    reloads: &mut Option<mpsc::UnboundedReceiver<Reload>>,
) -> Option<Reload> {
    match reloads {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}
