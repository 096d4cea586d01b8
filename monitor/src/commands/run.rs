//! `monitor run --config FILE`: the node agent.
use std::path::PathBuf;

use crate::{
    actions::cgroup,
    commands::{
        reload,
        start::{self, StartError},
    },
    config::Config,
};

pub async fn run(config: Config, config_path: PathBuf) -> Result<(), StartError> {
    // Before the cgroup parents are touched: a missing capability is named.
    crate::kernel::privileges::check().map_err(StartError::Kernel)?;
    let hup = reload::hangup();
    let root = cgroup::v2_root().map_err(StartError::Kernel)?;
    let scopes = start::parent_scopes(&config, &root)?;
    let runners = &config.attribution.worker_runners;
    if scopes.is_empty() && runners.is_empty() {
        log::warn!(
            "attribution.cgroup_parents and attribution.worker_runners are empty: no action can be monitored"
        );
    }
    let mut running = start::start(&config, scopes, false, true).await?;
    log::info!(
        "monitoring {} cgroup parent(s) and {} worker runner(s) via {:?} syscall hook; declarations from {}; metrics on {}",
        config.attribution.cgroup_parents.len(),
        runners.len(),
        running.kernel.syscall_hook,
        config.attribution.declarations_dir.display(),
        config
            .metrics
            .listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "(off)".into()),
    );
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let sighup = hup.map(|hup| {
        tokio::spawn(reload::on_sighup(
            hup,
            config_path,
            config.clone(),
            running.metrics.clone(),
            reload_tx,
        ))
    });
    let start::Running {
        kernel, pipeline, ..
    } = &mut running;
    pipeline.set_reloads(reload_rx);
    pipeline
        .run(kernel, start::termination_signal())
        .await
        .map_err(StartError::Kernel)?;
    if let Some(task) = sighup {
        task.abort();
    }
    running.stop_metrics().await;
    Ok(())
}
