//! Assembling the parts shared by `monitor run` and `monitor exec`: scopes
//! from the config, the kernel programs, the metrics endpoint, the pipeline.
use std::{path::Path, sync::Arc, time::Duration};

use monitor_common::{SCOPE_BAZEL_SERVER, SCOPE_CHILDREN_ARE_ACTIONS, SCOPE_FILES};
use tokio::sync::watch;

use crate::{
    actions::cgroup,
    actions::registry::{Registry, Scope, ScopeKind},
    config::Config,
    kernel::loader::{DEFAULT_WAKEUP_THRESHOLD, Kernel},
    output::http,
    output::metrics::Metrics,
    output::{
        fold::{Budget, Folder},
        sinks::AlertSinks,
        writer::SinkWriter,
    },
    pipeline::{Pipeline, handle::Handler},
    policy::judge::Policy,
    policy::kernel_allowed::allowed_dirs,
    policy::matchers::{NetMatcher, PathMatcher},
};

/// Why the monitor could not start; decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Usage or configuration (exit 2).
    #[error("{0:#}")]
    Config(anyhow::Error),
    /// The kernel side (exit 3).
    #[error("{0:#}")]
    Kernel(anyhow::Error),
}

impl StartError {
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 2,
            StartError::Kernel(_) => 3,
        }
    }
}

pub struct Running {
    pub kernel: Kernel,
    /// `network.enforce`: the socket hooks refuse what is not allowed.
    pub enforce: bool,
    pub pipeline: Pipeline,
    pub metrics: Arc<Metrics>,
    stop_metrics: watch::Sender<bool>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

/// The configured parents as scopes (created when missing, so the kernel
/// filter is in place before the first action appears).
pub fn parent_scopes(config: &Config, root: &Path) -> Result<Vec<Scope>, StartError> {
    config
        .attribution
        .cgroup_parents
        .iter()
        .map(|path| {
            let level = cgroup::level_of(root, path)
                .map_err(|e| StartError::Config(e.context("attribution.cgroup_parents")))?;
            if !path.exists() {
                std::fs::create_dir_all(path).map_err(|e| {
                    StartError::Kernel(anyhow::anyhow!(
                        "cannot create cgroup parent {}: {e} (as a non-root user, have it \
                         delegated: systemd Delegate=yes, or created and chown'ed to the user)",
                        path.display()
                    ))
                })?;
                log::info!("created cgroup parent {}", path.display());
            }
            let id = cgroup::id_of(path).map_err(StartError::Kernel)?;
            Ok(Scope {
                path: path.clone(),
                id,
                level,
                kind: ScopeKind::Parent,
            })
        })
        .collect()
}

/// Folding with the configured per-action alert budget.
fn alert_folder(config: &Config) -> Folder {
    Folder::with_budget(Budget {
        per_action: config.alerts.budget_per_action,
        window: Duration::from_secs(config.alerts.budget_window_s.max(1)),
    })
}

/// `build_info{version,kernel,hook} 1`: what runs on this node.
fn set_build_info(metrics: &Metrics, kernel: &Kernel) {
    metrics
        .build_info
        .with_label_values(&[
            env!("CARGO_PKG_VERSION"),
            &kernel_release(),
            kernel.syscall_hook.as_label(),
        ])
        .set(1);
}

/// `uname -r`, for `build_info{kernel}`.
fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn start(
    config: &Config,
    scopes: Vec<Scope>,
    keep_alerts: bool,
    metrics_required: bool,
) -> Result<Running, StartError> {
    let metrics = Arc::new(Metrics::new());
    if let Some(node) = &config.node {
        crate::output::alert::set_node(node);
    }
    // Bind now (a bad address is a config error, reported before loading),
    // serve only once the programs are attached, so /healthz means "watching".
    let mut listener = None;
    if let Some(addr) = config.metrics.listen {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => listener = Some(l),
            Err(e) if metrics_required => {
                return Err(StartError::Config(anyhow::anyhow!(
                    "metrics.listen: cannot listen on {addr}: {e}"
                )));
            }
            Err(e) => log::warn!(
                "metrics.listen: cannot listen on {addr} ({e}); continuing without /metrics"
            ),
        }
    }
    let policy = policy(config).map_err(StartError::Config)?;
    let kernel_scopes = kernel_scopes(&scopes);
    let mut kernel = Kernel::load(
        &kernel_scopes,
        &config.attribution.sandbox_launchers,
        DEFAULT_WAKEUP_THRESHOLD,
    )
    .map_err(StartError::Kernel)?;
    attach_runners(&mut kernel, &config.attribution.worker_runners).map_err(StartError::Kernel)?;
    attach_network_hooks(&mut kernel, config, &scopes)?;
    kernel
        .set_allowed_dirs(&allowed_dirs(&policy.files_allow))
        .map_err(StartError::Kernel)?;
    let (stop_metrics, stop_rx) = watch::channel(false);
    let metrics_task = listener.map(|l| tokio::spawn(http::serve(l, metrics.clone(), stop_rx)));
    let registry = Registry::new(
        scopes,
        Duration::from_millis(config.attribution.declaration_wait_ms),
        metrics.clone(),
    );
    let cgroup_root = cgroup::v2_root().map_err(StartError::Kernel)?;
    let mut handler = Handler::new(registry, policy, metrics.clone(), cgroup_root, keep_alerts);
    handler.worker_records_dir = config.attribution.worker_records_dir.clone();
    handler.require_isolation = config.bazel.require_isolation;
    handler.folder = alert_folder(config);
    set_build_info(&metrics, &kernel);
    let sinks = SinkWriter::start(
        alert_sinks(config, &metrics).map_err(StartError::Config)?,
        metrics.clone(),
    );
    let pipeline = Pipeline::new(
        handler,
        sinks,
        metrics.clone(),
        Duration::from_millis(config.alerts.fold_window_ms.max(1)),
        config.attribution.declarations_dir.clone(),
    );
    Ok(Running {
        kernel,
        enforce: config.network.enforce,
        pipeline,
        metrics,
        stop_metrics,
        metrics_task,
    })
}

/// Worker runners: the kernel matches those started from now on; those
/// already running are found in `/proc`.
fn attach_runners(kernel: &mut Kernel, runners: &[std::path::PathBuf]) -> anyhow::Result<()> {
    kernel.set_runners(runners)?;
    for pid in crate::reapi::runners::running_runners(runners) {
        log::info!("worker runner {pid} was already running: its new actions are followed");
        kernel.mark_runner(pid)?;
    }
    Ok(())
}

/// The scopes as the kernel filter takes them.
fn kernel_scopes(scopes: &[Scope]) -> Vec<monitor_common::Scope> {
    scopes
        .iter()
        .map(|s| monitor_common::Scope {
            cgroup_id: s.id,
            level: s.level,
            flags: match &s.kind {
                ScopeKind::Parent => SCOPE_CHILDREN_ARE_ACTIONS | SCOPE_FILES,
                // The job of a Bazel build: its own processes have the
                // `@bazel` tier.
                ScopeKind::Job { label, .. }
                    if label.as_deref() == Some(crate::policy::scoped::BAZEL_SCOPE) =>
                {
                    SCOPE_BAZEL_SERVER
                }
                ScopeKind::Job { .. } => 0,
            },
            // Set by `Kernel::set_scopes`: the position in this list.
            ..Default::default()
        })
        .collect()
}

/// The allow list into the kernel, then the socket hooks onto every scope:
/// every egress route of a monitored action is seen (and, with
/// `network.enforce`, refused when not allowed).
fn attach_network_hooks(
    kernel: &mut Kernel,
    config: &Config,
    scopes: &[Scope],
) -> Result<(), StartError> {
    let tiers = crate::policy::kernel_rules::compile_tiers(&config.network);
    let entries = tiers.entries();
    kernel
        .set_network_policy(entries, config.network.enforce)
        .map_err(StartError::Kernel)?;
    let cgroups: Vec<std::path::PathBuf> = scopes.iter().map(|s| s.path.clone()).collect();
    kernel
        .attach_sock_hooks(&cgroups)
        .map_err(StartError::Kernel)?;
    // After the attach: a bind from now on is seen by the hooks, one before
    // it by this scan.
    let bound = crate::actions::listeners::bound_before_attach(scopes);
    let seeded = kernel.seed_listeners(&bound).map_err(StartError::Kernel)?;
    if seeded > 0 {
        log::info!("{seeded} listener(s) bound before the socket hooks attached were seeded");
    }
    Ok(())
}

/// The host-wide policy of `config` (at start and on reload).
pub fn policy(config: &Config) -> anyhow::Result<Policy> {
    Ok(Policy {
        files_allow: PathMatcher::new(&config.files.allow)?,
        network_allow: NetMatcher::new(config.network.allow.clone()),
        unix_allow: PathMatcher::new(&config.network.allow_unix)?,
        host_netns: crate::policy::judge::own_netns(),
        scoped: crate::policy::scoped::ScopedRules::new(&config.network.rule)
            .map_err(anyhow::Error::msg)?,
    })
}

/// The alert sinks `config` asks for (at start and on reload).
pub fn alert_sinks(config: &Config, metrics: &Arc<Metrics>) -> anyhow::Result<AlertSinks> {
    AlertSinks::from_config(&config.alerts, metrics.clone())
}

impl Running {
    pub async fn stop_metrics(&mut self) {
        let _ = self.stop_metrics.send(true);
        if let Some(task) = self.metrics_task.take() {
            let _ = task.await;
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM: stopping"),
        _ = int.recv() => log::info!("SIGINT: stopping"),
    }
}
