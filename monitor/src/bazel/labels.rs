//! Labels for spawns from Bazel's execution log, read when the build
//! ended: joined on the spawn's command line (no log records a pid or
//! sandbox id).
use std::collections::HashMap;

use crate::bazel::execlog::{ExecLog, ExecLogFile};

/// What the execution log says about the spawns that raised alerts.
#[derive(Debug, Default)]
pub struct SpawnLabels {
    /// Action id → (label, mnemonic), for the spawns found in the log.
    pub by_action: HashMap<String, (Option<String>, Option<String>)>,
    /// Spawns the log says ran sandboxed.
    pub sandboxed_in_log: usize,
}

/// Looks up each spawn's command line (by action id) in the log `file`;
/// `None` when the log cannot be read at all (logged).
pub fn labels_from_exec_log(
    file: &ExecLogFile,
    spawn_commands: &HashMap<String, Vec<String>>,
) -> Option<SpawnLabels> {
    Some(labels_from_log(&load_log(file)?, spawn_commands))
}

/// Reads the log `file`; a malformed entry keeps the entries before it
/// (warned); `None` when it cannot be read at all (warned).
pub fn load_log(file: &ExecLogFile) -> Option<ExecLog> {
    let path = &file.path;
    match ExecLog::load(path, file.format) {
        Ok((log, None)) => Some(log),
        Ok((log, Some(e))) => {
            log::warn!(
                "execution log {}: {e}; using the {} entries before it",
                path.display(),
                log.entries.len()
            );
            Some(log)
        }
        Err(e) => {
            log::warn!("no labels for spawns: {e}");
            None
        }
    }
}

/// Looks up each spawn's command line (by action id) in `log`.
pub fn labels_from_log(
    log: &ExecLog,
    spawn_commands: &HashMap<String, Vec<String>>,
) -> SpawnLabels {
    let by_action = spawn_commands
        .iter()
        .filter_map(|(id, command)| {
            let entry = log.find_by_command(command, None)?;
            Some((id.clone(), (entry.label.clone(), entry.mnemonic.clone())))
        })
        .collect();
    SpawnLabels {
        by_action,
        sandboxed_in_log: log.entries.iter().filter(|e| e.ran_sandboxed()).count(),
    }
}
