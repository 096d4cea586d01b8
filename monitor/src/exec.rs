//! `monitor exec -- CMD`: the CI sidecar. Runs CMD in a fresh cgroup of its
//! own, monitors it (network policy for the whole tree; configured parents
//! as usual), prints a readable summary and exits 1 on violations.
use std::{
    collections::BTreeMap,
    ffi::{CString, OsString},
    os::unix::{ffi::OsStrExt as _, process::ExitStatusExt as _},
    path::{Path, PathBuf},
    process::ExitStatus,
};

use anyhow::Context as _;

use crate::{
    alert::Alert,
    app::{self, StartError},
    cgroup,
    config::Config,
    registry::{Scope, ScopeKind},
};

pub struct ExecOptions {
    pub report: Option<PathBuf>,
    pub command: Vec<OsString>,
}

/// Returns the process exit code.
pub async fn exec(mut config: Config, opts: ExecOptions) -> Result<u8, StartError> {
    // Alerts of a sidecar go to the report and the alert file; stdout
    // belongs to the command.
    config.alerts.stdout = false;
    let root = cgroup::v2_root().map_err(StartError::Kernel)?;
    let job_id = format!("exec-{}", std::process::id());
    let job_dir = root.join("build-monitor").join(&job_id);
    std::fs::create_dir_all(&job_dir)
        .with_context(|| format!("cannot create cgroup {}", job_dir.display()))
        .map_err(StartError::Kernel)?;
    let _cleanup = CgroupGuard(job_dir.clone());
    let mut scopes = app::parent_scopes(&config, &root)?;
    scopes.push(Scope {
        path: job_dir.clone(),
        id: cgroup::id_of(&job_dir).map_err(StartError::Kernel)?,
        level: cgroup::level_of(&root, &job_dir).map_err(StartError::Kernel)?,
        kind: ScopeKind::Job {
            id: job_id,
            label: None,
            mnemonic: Some("Command".into()),
        },
    });
    let mut running = app::start(&config, scopes, true, false).await?;

    let mut child = spawn_in_cgroup(&opts.command, &job_dir)
        .map_err(|e| StartError::Config(e.context(format!("cannot run {:?}", opts.command[0]))))?;
    let mut status: Option<std::io::Result<ExitStatus>> = None;
    let stop = async {
        status = Some(child.wait().await);
    };
    let app::Running {
        kernel, pipeline, ..
    } = &mut running;
    pipeline
        .run(kernel, stop)
        .await
        .map_err(StartError::Kernel)?;
    running.stop_metrics().await;

    let status = status
        .expect("the command was awaited")
        .map_err(|e| StartError::Kernel(e.into()))?;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)) as u8;
    let lost: u64 = ["ringbuf_full", "lineage_full", "decode_error"]
        .iter()
        .map(|r| {
            running
                .metrics
                .events_lost_total
                .with_label_values(&[r])
                .get()
        })
        .sum();
    let pipeline = &running.pipeline;
    eprint!("{}", summary(&pipeline.alerts, pipeline.violations, lost));
    if let Some(path) = &opts.report {
        write_report(
            path,
            &opts.command,
            code,
            pipeline.violations,
            lost,
            &pipeline.alerts,
        )
        .map_err(StartError::Config)?;
    }
    Ok(if pipeline.violations > 0 { 1 } else { code })
}

fn spawn_in_cgroup(command: &[OsString], cgroup: &Path) -> anyhow::Result<tokio::process::Child> {
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())?;
    let mut cmd = tokio::process::Command::new(&command[0]);
    cmd.args(&command[1..]);
    // SAFETY: the closure only makes async-signal-safe syscalls on data
    // prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    Ok(cmd.spawn()?)
}

/// Readable summary, grouped by target label (or action id).
pub fn summary(alerts: &[Alert], violations: u64, lost: u64) -> String {
    let mut by_target: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
    for a in alerts {
        let who = match (&a.action.label, &a.action.mnemonic) {
            (Some(l), Some(m)) => format!("{l} ({m})"),
            (Some(l), None) => l.clone(),
            (None, Some(m)) => format!("{} ({m})", a.action.id),
            (None, None) => a.action.id.clone(),
        };
        by_target.entry(who).or_default().push(a);
    }
    let mut out = String::new();
    if violations == 0 {
        out.push_str("monitor: no violations\n");
    } else {
        out.push_str(&format!(
            "monitor: {violations} violation(s) in {} target(s)\n",
            by_target.len()
        ));
        for (who, alerts) in &by_target {
            out.push_str(&format!("  {who}\n"));
            for a in alerts {
                out.push_str(&format!("    - {}\n", a.message()));
            }
        }
    }
    if lost > 0 {
        out.push_str(&format!("monitor: WARNING: {lost} event(s) could not be delivered; see build_monitor_events_lost_total\n"));
    }
    out
}

fn write_report(
    path: &Path,
    command: &[OsString],
    exit_status: u8,
    violations: u64,
    lost: u64,
    alerts: &[Alert],
) -> anyhow::Result<()> {
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| serde_json::from_str(&a.to_json_line()))
        .collect::<Result<_, _>>()?;
    let report = serde_json::json!({
        "schema": "monitor.report/v1",
        "command": command.iter().map(|c| crate::paths::escape_for_display(c.as_bytes())).collect::<Vec<_>>(),
        "command_exit_status": exit_status,
        "violations": violations,
        "events_lost": lost,
        "alerts": alerts,
    });
    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("--report: cannot write {}", path.display()))
}

struct CgroupGuard(PathBuf);

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        cgroup::remove(&self.0);
    }
}
