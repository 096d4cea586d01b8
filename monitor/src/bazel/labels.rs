//! Labels for spawn alerts from Bazel's JSON execution log, read when the
//! build ended: joined on the spawn's command line (no log records a pid or
//! sandbox id).
use std::path::Path;

use crate::{bazel::execlog::ExecLog, output::alert::Alert, output::summary::RunSummary};

/// Labels `pending` alerts of spawns in `summary.spawn_commands` and counts
/// the sandboxed spawns of the log that were never seen starting.
pub fn label_from_exec_log<'a>(
    path: &Path,
    pending: impl Iterator<Item = &'a mut Alert>,
    summary: &mut RunSummary,
) {
    let log = match ExecLog::load_json(path) {
        Ok((log, None)) => log,
        Ok((log, Some(e))) => {
            log::warn!(
                "execution log {}: {e}; using the {} entries before it",
                path.display(),
                log.entries.len()
            );
            log
        }
        Err(e) => {
            log::warn!("no labels for spawns: {e}");
            return;
        }
    };
    let ran = log.entries.iter().filter(|e| e.ran_sandboxed()).count();
    summary.unmonitored_spawns = ran.saturating_sub(summary.sandboxed_launches);
    for alert in pending {
        let Some(command) = summary.spawn_commands.get(&alert.action.id) else {
            continue;
        };
        if let Some(entry) = log.find_by_command(command, None) {
            alert.action.label = entry.label.clone().or(alert.action.label.take());
            alert.action.mnemonic = entry.mnemonic.clone().or(alert.action.mnemonic.take());
        }
    }
}
