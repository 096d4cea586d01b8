//! `monitor run` on SIGHUP: re-read the config file, and hand what can
//! change while running to the event loop. The kernel programs stay
//! attached (no event is lost across a reload). A config that does not
//! load is rejected with the usual message (file, line, key), logged,
//! counted in `config_reloads_total{result="error"}`, and the running one
//! is kept.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc::UnboundedSender,
};

use crate::{commands::start, config::Config, output::metrics::Metrics, pipeline::reload::Reload};

/// Keys read only at start: the kernel scopes, the launcher names loaded
/// into the kernel, the bound metrics address.
fn restart_only_changes(running: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if running.attribution.cgroup_parents != new.attribution.cgroup_parents {
        changed.push("attribution.cgroup_parents");
    }
    if running.attribution.sandbox_launchers != new.attribution.sandbox_launchers {
        changed.push("attribution.sandbox_launchers");
    }
    if running.metrics != new.metrics {
        changed.push("metrics.listen");
    }
    changed
}

/// Loads `path` and builds what the pipeline swaps in; `running` is the
/// config in force. The error is the one-line message of `check-config`.
pub fn prepare(
    path: &Path,
    running: &Config,
    metrics: &Arc<Metrics>,
    received: Instant,
) -> Result<(Config, Reload), String> {
    let new = Config::load(path).map_err(|e| e.to_string())?;
    let policy = start::policy(&new).map_err(|e| format!("{}: {e:#}", path.display()))?;
    for key in restart_only_changes(running, &new) {
        log::warn!(
            "reload: {key} changed in {}; it takes effect only after a restart (keeping the running value)",
            path.display()
        );
    }
    let sinks = if new.alerts != running.alerts {
        Some(start::alert_sinks(&new, metrics).map_err(|e| format!("{}: {e:#}", path.display()))?)
    } else {
        None
    };
    let kernel_rules = crate::policy::kernel_rules::compile_tiers(&new.network);
    let limit = monitor_common::MAX_ALLOW_RULES as usize;
    for (key, rules) in [
        ("network.allow", &kernel_rules.job),
        ("network.rule (scope = \"@bazel\")", &kernel_rules.bazel),
    ] {
        if rules.any_port.len() > limit || rules.by_port.len() > limit {
            return Err(format!(
                "{}: {key}: at most {limit} rules with and {limit} without a port are supported",
                path.display()
            ));
        }
    }
    let reload = Reload {
        policy,
        kernel_rules,
        enforce: new.network.enforce,
        require_isolation: new.bazel.require_isolation,
        sinks,
        declaration_wait: Duration::from_millis(new.attribution.declaration_wait_ms),
        fold_window: Duration::from_millis(new.alerts.fold_window_ms.max(1)),
        declarations_dir: new.attribution.declarations_dir.clone(),
        received,
    };
    // Restart-only keys stay as they run, so the next reload compares
    // against what is really in force.
    let mut in_force = new;
    in_force.attribution.cgroup_parents = running.attribution.cgroup_parents.clone();
    in_force.attribution.sandbox_launchers = running.attribution.sandbox_launchers.clone();
    in_force.metrics = running.metrics.clone();
    Ok((in_force, reload))
}

/// SIGHUP caught from now on (its default action would end the daemon).
/// Install it before the slow start, so an early SIGHUP is only queued.
pub fn hangup() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|e| log::error!("cannot install the SIGHUP handler ({e}): reload is off"))
        .ok()
}

/// For as long as the daemon runs: on each SIGHUP, prepares the reload and
/// sends it to the event loop (which applies it between events).
pub async fn on_sighup(
    mut hup: Signal,
    path: PathBuf,
    mut running: Config,
    metrics: Arc<Metrics>,
    reloads: UnboundedSender<Reload>,
) {
    while hup.recv().await.is_some() {
        let received = Instant::now();
        log::info!("SIGHUP: reloading {}", path.display());
        match prepare(&path, &running, &metrics, received) {
            Ok((config, reload)) => {
                running = config;
                if reloads.send(reload).is_err() {
                    return; // the event loop has stopped
                }
            }
            Err(message) => {
                log::error!("reload rejected, keeping the running config: {message}");
                metrics
                    .fleet
                    .config_reloads_total
                    .with_label_values(&["error"])
                    .inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("monitor.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_valid_config_is_prepared_and_restart_only_keys_stay_as_they_run() {
        let dir = tempfile::tempdir().unwrap();
        let running = Config::default();
        let path = write(
            dir.path(),
            "[attribution]\ncgroup_parents = [\"/sys/fs/cgroup/x\"]\ndeclaration_wait_ms = 50\n\
             [files]\nallow = [\"/opt/**\"]\n\
             [network]\nenforce = true\nallow = [{ cidr = \"10.0.0.0/8\", port = 443 }]\n\
             [bazel]\nrequire_isolation = \"linux-sandbox\"\n",
        );
        let metrics = Arc::new(Metrics::new());
        let (in_force, reload) = prepare(&path, &running, &metrics, Instant::now()).unwrap();
        assert!(reload.policy.files_allow.matches(b"/opt/a"));
        assert!(!reload.policy.files_allow.matches(b"/usr/bin/cat"));
        assert_eq!(reload.declaration_wait, Duration::from_millis(50));
        assert!(
            reload.enforce,
            "network.enforce reaches the kernel on reload"
        );
        assert!(
            !reload.kernel_rules.job.by_port.is_empty(),
            "network.allow compiled"
        );
        assert_eq!(
            reload.require_isolation,
            crate::bazel::isolation::Isolation::LinuxSandbox
        );
        assert!(reload.sinks.is_none(), "[alerts] unchanged: sinks kept");
        assert!(in_force.attribution.cgroup_parents.is_empty());
        assert_eq!(in_force.attribution.declaration_wait_ms, 50);
    }

    #[test]
    fn a_broken_config_is_rejected_with_file_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "[alerts]\ncolour = true\n");
        let metrics = Arc::new(Metrics::new());
        let Err(message) = prepare(&path, &Config::default(), &metrics, Instant::now()) else {
            panic!("a config with an unknown key was accepted");
        };
        assert!(
            message.contains(&format!("{}:2:", path.display())) && message.contains("colour"),
            "{message}"
        );
    }
}
