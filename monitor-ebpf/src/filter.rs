//! The in-kernel filter: is the current task part of a monitored action?
//!
//! Userspace fills `SCOPES` with cgroups and their depth. A task matches a
//! scope when its cgroup ancestor at that depth is the scope's cgroup, so a
//! process in any descendant cgroup (nested cgroups) still matches. For a
//! parent scope the action is the ancestor one level below the parent: the
//! kernel derives the action id itself, so a cgroup created a moment ago is
//! monitored before userspace has even seen it.
use aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id;
use monitor_common::{
    MAX_SCOPES, SCOPE_BAZEL_SERVER, SCOPE_CHILDREN_ARE_ACTIONS, SCOPE_FILES, Settings,
};

use crate::{lineage, maps::SCOPES, workers};

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Match {
    pub action_cgroup_id: u64,
    /// The ancestor one level below the scope (0 if not that deep).
    pub child_cgroup_id: u64,
    /// The ancestor two levels below the scope, looked up here only where
    /// `files_matter` needs it (a scope whose files do not always matter);
    /// else 0. An event's header looks it up itself (`grandchild`), so a
    /// repeat in a scope whose files matter never does.
    pub grandchild_cgroup_id: u64,
    /// That ancestor's level (`NO_GRANDCHILD` when there is none).
    pub grandchild_level: u64,
    pub scope: u32,
    pub flags: u32,
    /// The lineage action's launcher tgid, or 0 (filled in by the caller).
    pub launcher: u32,
    /// `bpf_get_current_pid_tgid()`, taken once per event.
    pub pid_tgid: u64,
}

/// Returns the deepest matching scope, or `None` for a task outside every
/// monitored action. Costs a call of [`scope_action`] per scope tried
/// (one helper call in it, two for a parent scope holding the task), and
/// one more helper call for the ancestor below a plain scope.
///
/// Userspace writes the scopes deepest first, so the first match is the
/// answer and nothing is carried from one scope to the next. Each scope is
/// tried by a BPF global function ([`scope_action`]), which the verifier
/// checks once per program: inline, the loop's sixteen iterations were
/// checked one by one, about 1.2 k instructions each in every program
/// that looks up an action.
#[inline(always)]
pub fn current_action(settings: &Settings, pid_tgid: u64) -> Option<Match> {
    let count = settings.scope_count;
    // Plain initialised locals rather than an Option: the verifier rejects
    // reads of the uninitialised payload LLVM spills for `None`.
    let (mut action, mut level, mut flags, mut index) = (0, 0, 0, 0);
    for i in 0..MAX_SCOPES {
        if i >= count {
            break;
        }
        let Some(scope) = SCOPES.get(i) else { break };
        let children = (scope.flags & SCOPE_CHILDREN_ARE_ACTIONS) as u64;
        action = scope_action(scope.cgroup_id, scope.level as u64, children);
        if action != 0 {
            (level, flags, index) = (scope.level, scope.flags, scope.index);
            break;
        }
    }
    if action == 0 {
        return None;
    }
    let child = if flags & SCOPE_CHILDREN_ARE_ACTIONS != 0 {
        action
    } else {
        0
    };
    let mut best = Match {
        action_cgroup_id: action,
        child_cgroup_id: child,
        grandchild_cgroup_id: 0,
        grandchild_level: level as u64 + 2,
        scope: index,
        flags,
        launcher: 0,
        pid_tgid,
    };
    if best.child_cgroup_id == 0 {
        // SAFETY: plain helper call.
        best.child_cgroup_id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32 + 1) };
    }
    // Decided here, before the callers branch: a lookup only on some paths
    // further down made the verifier walk both (+46 k instructions).
    if best.flags & SCOPE_FILES == 0 {
        best.grandchild_cgroup_id = grandchild(&best);
    }
    Some(best)
}

/// The action the current task is in by the scope of `cgroup_id` at
/// `level` (`children`: nonzero when the scope's child cgroups are its
/// actions), or 0 when that scope does not hold it: not below its cgroup,
/// or in a parent scope's cgroup itself (not inside its actions).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn scope_action(cgroup_id: u64, level: u64, children: u64) -> u64 {
    // SAFETY: plain helper call.
    let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
    if ancestor != cgroup_id || ancestor == 0 {
        return 0;
    }
    if children == 0 {
        return cgroup_id;
    }
    // SAFETY: plain helper call; 0 in the parent itself.
    unsafe { bpf_get_current_ancestor_cgroup_id(level as i32 + 1) }
}

/// The action of the current task by its cgroup, or the one it left
/// (`escapes`), which comes first: a process moved into another action's
/// cgroup stays the action's it left. (Built as one body with the scope
/// loop, the syscall hook verified 24 k more instructions, not fewer.)
#[inline(always)]
pub fn action_of(settings: &Settings, pid_tgid: u64) -> Option<Match> {
    crate::escapes::left_match(pid_tgid).or_else(|| current_action(settings, pid_tgid))
}

/// A cgroup level deeper than any: its ancestor id is 0.
pub const NO_GRANDCHILD: u64 = 0x7fff_ffff;

/// The current task's ancestor two levels below `m`'s scope, or 0. One
/// helper call, with no branch (every event's header calls it).
#[inline(always)]
pub fn grandchild(m: &Match) -> u64 {
    // SAFETY: plain helper call; a level deeper than the task's gives 0.
    unsafe { bpf_get_current_ancestor_cgroup_id(m.grandchild_level as i32) }
}

/// The action of the current task, as every hook sees it: a monitored
/// cgroup (a worker runner itself is none), else a worker action's lineage;
/// with the sandbox launcher whose tree it is in. The monitor's own
/// process is never one (it may run inside a monitored cgroup).
#[inline(always)]
pub fn task_action(settings: &Settings, pid_tgid: u64) -> Option<Match> {
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == settings.monitor_tgid {
        return None;
    }
    let mut m = match action_of(settings, pid_tgid) {
        Some(_) if workers::enabled(settings) && workers::is_runner(tgid) => return None,
        Some(m) => m,
        None => workers::lineage_match(settings, pid_tgid)?,
    };
    let entry = lineage::entry_of(tgid);
    m.launcher = lineage::launcher(entry);
    if entry & lineage::TIMED != 0 {
        m.flags |= MATCH_TIMED;
    }
    Some(m)
}

/// `Match::flags` bit, the kernel's own (no scope has it): the task is in a
/// persistent worker's tree, so its file events carry their times
/// (`lineage::TIMED`).
pub const MATCH_TIMED: u32 = 1 << 31;
const _: () = assert!(
    MATCH_TIMED & (SCOPE_CHILDREN_ARE_ACTIONS | SCOPE_FILES | SCOPE_BAZEL_SERVER) == 0,
    "a scope flag took the kernel's bit"
);

/// Network-only jobs: their files matter only inside a sandbox launcher's
/// tree or in nested cgroups (Bazel's per-spawn scopes).
#[inline(always)]
pub fn files_matter(m: &Match) -> bool {
    m.flags & SCOPE_FILES != 0 || m.launcher != 0 || m.grandchild_cgroup_id != 0
}
