//! Processes an action moved out of its cgroup. The filter knows an action
//! by its cgroup; a process of the action that writes its pid into another
//! cgroup's `cgroup.procs` (its own delegated subtree suffices, or any
//! cgroup as root), or that creates a child straight into another cgroup
//! (`clone3` with `CLONE_INTO_CGROUP`), would leave it. Each such process
//! is remembered here with the action it left, and so are its children:
//! `filter::action_of` answers from this map first, so they stay that
//! action's wherever they run, in another action's cgroup too.
//!
//! Decided by the mover: a move made by a process outside every action
//! (systemd, the build system's own tools) is no escape. The tracepoint
//! runs after the move, when a process that moved itself is already
//! outside: so an action's process that opens a cgroup v2 file for writing
//! (`cgroup.procs` among them) is remembered as a possible mover with its
//! action, before it can move (`MOVERS`), and its children with it (they
//! inherit the descriptor).
//!
//! Every lookup is skipped until the first escape (a latch set once, as
//! `lineage` does): the filter of every watched syscall on the host pays
//! nothing for it before.
use aya_ebpf::{
    bindings::BPF_ANY,
    macros::map,
    maps::{Array, HashMap},
};
use monitor_common::{
    LOST_LINEAGE_FULL, MAX_LINEAGE, SCOPE_CHILDREN_ARE_ACTIONS, SCOPE_FILES, Settings,
};

use crate::{
    filter::{self, Match, NO_GRANDCHILD},
    maps::count_lost,
    task::{cgroup_ancestor_id, is_cgroup_v2, read},
};

/// What a process that left its action's cgroup is still part of.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Left {
    action_cgroup_id: u64,
    child_cgroup_id: u64,
    /// The action cgroup's level (its ancestor there is the action).
    action_level: u32,
    scope: u32,
    /// The scope's, with `SCOPE_FILES` if its files mattered there.
    flags: u32,
    _pad: u32,
}

/// tgid → the action it left.
#[map]
static LEFT: HashMap<u32, Left> = HashMap::with_max_entries(MAX_LINEAGE, 0);

/// tgid of an action's process that opened a cgroup v2 file for writing
/// → its action.
#[map]
static MOVERS: HashMap<u32, Left> = HashMap::with_max_entries(MAX_LINEAGE, 0);

/// Latches, set once: [0] any process has left its action, [1] any
/// action's process opened a cgroup v2 file for writing.
#[map]
static USED: Array<u64> = Array::with_max_entries(2, 0);

const LEFT_USED: u32 = 0;
const MOVERS_USED: u32 = 1;

#[inline(always)]
fn used(latch: u32) -> bool {
    USED.get(latch).is_some_and(|used| *used != 0)
}

#[inline(always)]
fn set(latch: u32) {
    if let Some(used) = USED.get_ptr_mut(latch) {
        // SAFETY: an aligned map value; every writer stores the same 1.
        unsafe { core::ptr::write_volatile(used, 1) };
    }
}

/// The action process `tgid` left, if it left one.
#[inline(always)]
fn left_of(tgid: u32) -> Option<Left> {
    if !used(LEFT_USED) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { LEFT.get(&tgid) }.copied()
}

#[inline(always)]
fn mover(tgid: u32) -> Option<Left> {
    if !used(MOVERS_USED) {
        return None;
    }
    // SAFETY: the value is copied out at once.
    unsafe { MOVERS.get(&tgid) }.copied()
}

/// The action `pid_tgid`'s process left, if it left one
/// (`filter::action_of`). No grandchild: the cgroup it runs in now says
/// nothing about its action.
#[inline(always)]
pub fn left_match(pid_tgid: u64) -> Option<Match> {
    let left = left_of((pid_tgid >> 32) as u32)?;
    Some(Match {
        action_cgroup_id: left.action_cgroup_id,
        child_cgroup_id: left.child_cgroup_id,
        grandchild_cgroup_id: 0,
        grandchild_level: NO_GRANDCHILD,
        scope: left.scope,
        flags: left.flags,
        launcher: 0,
        pid_tgid,
    })
}

/// The action the current task is in, as one to remember for a process
/// that leaves it: the one it left already, else its cgroup's.
#[inline(always)]
fn current(settings: &Settings, pid_tgid: u64) -> Option<Left> {
    if let Some(left) = left_of((pid_tgid >> 32) as u32) {
        return Some(left);
    }
    Some(of_match(&filter::current_action(settings, pid_tgid)?))
}

#[inline(always)]
fn of_match(m: &Match) -> Left {
    // `grandchild_level` is the scope's level + 2; a parent scope's actions
    // are one level below it.
    let below_scope = if m.flags & SCOPE_CHILDREN_ARE_ACTIONS != 0 {
        1
    } else {
        0
    };
    let files = if filter::files_matter(m) {
        SCOPE_FILES
    } else {
        0
    };
    Left {
        action_cgroup_id: m.action_cgroup_id,
        child_cgroup_id: m.child_cgroup_id,
        action_level: (m.grandchild_level - 2 + below_scope) as u32,
        scope: m.scope,
        flags: m.flags | files,
        _pad: 0,
    }
}

const O_ACCMODE: u64 = 0o3;
/// `statfs` magic of cgroup v2 (`include/uapi/linux/magic.h`).
const CGROUP2_SUPER_MAGIC: u32 = 0x6367_7270;

/// An open reported in full (`files::report`) on a file system with
/// `fs_magic`, with open `flags`: one of a cgroup v2 file for writing makes
/// `m`'s process a possible mover.
#[inline(always)]
pub fn on_open(m: &Match, fs_magic: u32, flags: u64) {
    if fs_magic == CGROUP2_SUPER_MAGIC && flags & O_ACCMODE != 0 {
        note_cgroup_write(m);
    }
}

/// An open for writing of a cgroup v2 file by `m`'s process: it may move
/// itself out with it.
#[inline(always)]
fn note_cgroup_write(m: &Match) {
    if m.action_cgroup_id == 0 {
        return; // a worker action's process: followed by lineage anyway
    }
    let left = match left_of((m.pid_tgid >> 32) as u32) {
        Some(left) => left,
        None => of_match(m),
    };
    keep(&MOVERS, MOVERS_USED, (m.pid_tgid >> 32) as u32, &left);
}

/// Is `cgrp` (a `struct cgroup *`) the action's cgroup or below it? A
/// cgroup v1 hierarchy's cgroup never is, but a move there changes nothing
/// the filter reads: the caller only asks about cgroup v2 ones.
#[inline(always)]
fn inside(settings: &Settings, cgrp: u64, left: &Left) -> bool {
    let o = &settings.offsets;
    let level: u32 = read(cgrp, o.cgroup_level);
    if level < left.action_level || left.action_level >= 64 {
        return false;
    }
    cgroup_ancestor_id(o, cgrp, left.action_level) == left.action_cgroup_id
}

/// Puts `tgid` in `map` (`LEFT` or `MOVERS`) with `left`, after setting
/// the map's latch; a full map is counted, never silent.
#[inline(always)]
fn keep(map: &HashMap<u32, Left>, latch: u32, tgid: u32, left: &Left) {
    set(latch);
    if map.insert(&tgid, left, BPF_ANY as u64).is_err() {
        count_lost(LOST_LINEAGE_FULL);
    }
}

/// `cgroup_attach_task`: the current task moved `task` (its whole process
/// or one thread) to `dst`. A move by a process of an action to a cgroup
/// outside that action makes the process one that left it.
#[inline(always)]
pub fn on_attach(settings: &Settings, pid_tgid: u64, dst: u64, task: u64) {
    if !is_cgroup_v2(&settings.offsets, dst) {
        return;
    }
    let Some(left) = mover((pid_tgid >> 32) as u32).or_else(|| current(settings, pid_tgid)) else {
        return;
    };
    if inside(settings, dst, &left) {
        return;
    }
    let tgid = read::<i32>(task, settings.offsets.task_tgid) as u32;
    if tgid != 0 {
        keep(&LEFT, LEFT_USED, tgid, &left);
    }
}

/// `sched_process_fork` of process `child_tgid` (not a thread): the child
/// of a process that left its action left it too; a child of an action's
/// process created in a cgroup outside the action (`CLONE_INTO_CGROUP`)
/// leaves it at birth.
#[inline(always)]
pub fn on_fork(settings: &Settings, pid_tgid: u64, child_task: u64, child_tgid: u32) {
    let parent_tgid = (pid_tgid >> 32) as u32;
    if let Some(left) = mover(parent_tgid) {
        keep(&MOVERS, MOVERS_USED, child_tgid, &left);
    }
    if let Some(left) = left_of(parent_tgid) {
        keep(&LEFT, LEFT_USED, child_tgid, &left);
        return;
    }
    let Some(left) = current(settings, pid_tgid) else {
        return;
    };
    let o = &settings.offsets;
    let cgrp: u64 = read(read::<u64>(child_task, o.task_cgroups), o.css_set_dfl_cgrp);
    if cgrp != 0 && !inside(settings, cgrp, &left) {
        keep(&LEFT, LEFT_USED, child_tgid, &left);
    }
}

/// The process `tgid` ended.
#[inline(always)]
pub fn forget(tgid: u32) {
    if used(LEFT_USED) {
        let _ = LEFT.remove(&tgid);
    }
    if used(MOVERS_USED) {
        let _ = MOVERS.remove(&tgid);
    }
}
