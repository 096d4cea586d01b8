//! Bazel spawns as actions: the sandbox a launcher or a Bazel 7+ spawn
//! cgroup describes, and the declaration read from it. These read `/proc`
//! and walk sandbox trees (up to 200k entries), so they run on worker
//! threads, never on the event path.
use std::{
    ffi::OsStr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use crate::{
    actions::declarations::Declaration,
    bazel::sandbox::{self, Spawn, made_links::Targets},
    events::decode::Launch,
    policy::matchers::NetMatcher,
};

/// The spawn a launcher describes; what the kernel could not capture whole
/// (a very long argv) is read from /proc while the launcher still runs.
pub fn spawn_of_launch(launch: &Launch) -> Spawn {
    let pid = launch.origin.pid;
    let argv = if launch.argv_truncated {
        std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_else(|_| launch.argv.clone())
    } else {
        launch.argv.clone()
    };
    let cwd = match &launch.cwd {
        Some(cwd) => PathBuf::from(OsStr::from_bytes(cwd)),
        None => std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default(),
    };
    let mut spawn = sandbox::parse_launch(&argv, &cwd);
    spawn.launched_at = Some(crate::events::decode::wall_clock_recent(
        launch.origin.ktime_ns,
    ));
    spawn.launch_ktime_ns = launch.origin.ktime_ns;
    spawn.persistent_worker = crate::bazel::workers::is_worker_argv(&argv);
    // The kernel matched the launcher by comm; a script launcher has the
    // interpreter as argv[0].
    spawn.launcher = launch.origin.comm_str();
    spawn
}

/// What a sandboxed spawn declared: its sandbox, read now; `made`: the
/// links Bazel made in it, as the kernel saw the calls (the rest are read).
pub fn spawn_declaration(cgroup: &Path, spawn: &Spawn, made: &Targets) -> Declaration {
    let declared = sandbox::shared_trees::sandbox_declared(spawn, made);
    if declared.reused {
        log::debug!(
            "sandbox {}: the links' part of a sandbox the same given again",
            spawn.execroot.display()
        );
    }
    Declaration {
        cgroup: cgroup.to_path_buf(),
        label: None,
        mnemonic: None,
        inputs: declared.inputs,
        outputs: sandbox::matcher(&sandbox::output_patterns(spawn)),
        writable: sandbox::matcher(&sandbox::writable_patterns(spawn)),
        identities: declared.identities,
        links: declared.links,
        network: NetMatcher::default(),
        source: spawn
            .sandbox_dir
            .clone()
            .unwrap_or_else(|| spawn.execroot.clone()),
    }
}

/// `blaze_<digits>_spawns.slice`: where Bazel 7+ puts per-spawn cgroups.
pub fn is_spawn_slice_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("blaze_"))
        .and_then(|n| n.strip_suffix("_spawns.slice"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// `sandbox_<id>.scope` → id.
pub fn spawn_scope_id(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("sandbox_")?
        .strip_suffix(".scope")?
        .parse()
        .ok()
}

/// The sandbox a process in a Bazel spawn cgroup works in, from its working
/// directory; checked against the scope's id (`sandbox_<id>.scope` belongs
/// to `…/sandbox/<strategy>/<id>/`).
pub fn spawn_of_scope(scope_path: &Path, pid: u32) -> Option<Spawn> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let spawn = sandbox::parse_launch(b"", &cwd);
    match (spawn_scope_id(scope_path), spawn.sandbox_id) {
        (Some(a), Some(b)) if a == b => Some(spawn),
        (None, Some(_)) => Some(spawn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_bazel_spawn_cgroup_names() {
        assert!(is_spawn_slice_name(Path::new(
            "/cg/blaze_1234_spawns.slice"
        )));
        assert!(!is_spawn_slice_name(Path::new("/cg/blaze__spawns.slice")));
        assert!(!is_spawn_slice_name(Path::new(
            "/cg/blaze_12x_spawns.slice"
        )));
        assert!(!is_spawn_slice_name(Path::new("/cg/action-1")));
        assert_eq!(
            spawn_scope_id(Path::new("/cg/blaze_1_spawns.slice/sandbox_42.scope")),
            Some(42)
        );
        assert_eq!(spawn_scope_id(Path::new("/cg/sandbox_x.scope")), None);
    }
}
