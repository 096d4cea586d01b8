//! The syscall hook's last verdict per CPU: which action, if any, the task
//! whose watched syscall just ended belongs to. A task makes its syscalls
//! in runs on one CPU, and the filter behind a verdict (the scopes' cgroup
//! ancestors, the escapes, the lineage and runner maps: helper calls and
//! hash lookups) cost a repeated open about 21 ns of its ~108 over the
//! floor (`cargo xtask bench-ab`, 8 alternated rounds, every one lower).
//!
//! A verdict is kept for one task (`pid_tgid`) and is good only while
//! nothing that decides it has changed. Everything that does is counted:
//! * in the kernel, `EPOCH`, raised after each fork (a new task, perhaps
//!   with a reused pid; lineage and escapes of children), exec (runners,
//!   launchers) and cgroup move (the task's cgroup, escapes), each after
//!   its own map updates;
//! * by userspace, `Settings::filter_generation`, raised with every write
//!   of the settings, the scopes or the runners.
//!
//! The epoch is read before the verdict is worked out and stored with it:
//! a move that lands while the filter runs leaves an older epoch behind,
//! so the next syscall works it out again. A hostile action gains nothing
//! from it: its processes start inside their action (a fork), and the only
//! way a remembered "outside" could apply to one of them is a move into an
//! action's cgroup, which raises the epoch before any syscall after it.
//!
//! Only the syscall hook uses the cache: a program never runs twice at
//! once on one CPU (the kernel skips a nested run of the same program), so
//! its entry is never read half written.
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray},
};
use monitor_common::Settings;

use crate::{
    atomics::add_one_u64,
    filter::{self, Match},
};

#[derive(Clone, Copy)]
pub struct Verdict {
    pid_tgid: u64,
    epoch: u64,
    generation: u64,
    /// What is kept: nothing (0, a fresh entry), `m`, or no action.
    state: u64,
    m: Match,
}

const ACTION: u64 = 1;
const NO_ACTION: u64 = 2;

#[map]
static VERDICTS: PerCpuArray<Verdict> = PerCpuArray::with_max_entries(1, 0);

/// Forks, execs and cgroup moves so far (a global count, raised with an
/// atomic add).
#[map]
static EPOCH: Array<u64> = Array::with_max_entries(1, 0);

/// After a fork, an exec or a cgroup move: every kept verdict is stale.
#[inline(always)]
pub fn changed() {
    if let Some(epoch) = EPOCH.get_ptr_mut(0) {
        // SAFETY: an aligned map value.
        unsafe { add_one_u64(epoch) };
    }
}

/// `filter::task_action`, remembered for the task until something that
/// decides it changes.
#[inline(always)]
pub fn task_action(settings: &Settings, pid_tgid: u64) -> Option<Match> {
    let (Some(epoch), Some(kept)) = (EPOCH.get_ptr(0), VERDICTS.get_ptr_mut(0)) else {
        return filter::task_action(settings, pid_tgid);
    };
    // SAFETY: an aligned map value, read before the filter runs.
    let epoch = unsafe { core::ptr::read_volatile(epoch) };
    let generation = settings.filter_generation;
    // SAFETY: this CPU's value, used by this program only while it runs.
    let kept = unsafe { &mut *kept };
    if kept.pid_tgid == pid_tgid && kept.epoch == epoch && kept.generation == generation {
        match kept.state {
            ACTION => return Some(copy(&kept.m, pid_tgid)),
            NO_ACTION => return None,
            _ => {}
        }
    }
    let found = filter::task_action(settings, pid_tgid);
    (kept.pid_tgid, kept.epoch, kept.generation) = (pid_tgid, epoch, generation);
    let Some(m) = found else {
        kept.state = NO_ACTION;
        return None;
    };
    kept.m = m;
    kept.state = ACTION;
    // Read back: the rest of the hook then meets the match as numbers
    // from map memory whichever way it came. Returning `m` made the
    // verifier walk the rest for both kinds: all programs verified
    // 258,381 instructions, 241,903 so (210,205 without the cache).
    Some(copy(&kept.m, pid_tgid))
}

/// The kept match, field by field: a copy of the whole struct from map
/// memory made LLVM spill half of a map pointer, which the verifier
/// refuses.
#[inline(always)]
fn copy(m: &Match, pid_tgid: u64) -> Match {
    let read = |field: &u64| {
        // SAFETY: a field of a map value.
        unsafe { core::ptr::read_volatile(field) }
    };
    let read32 = |field: &u32| {
        // SAFETY: as above.
        unsafe { core::ptr::read_volatile(field) }
    };
    Match {
        action_cgroup_id: read(&m.action_cgroup_id),
        child_cgroup_id: read(&m.child_cgroup_id),
        grandchild_cgroup_id: read(&m.grandchild_cgroup_id),
        grandchild_level: read(&m.grandchild_level),
        scope: read32(&m.scope),
        flags: read32(&m.flags),
        launcher: read32(&m.launcher),
        pid_tgid,
    }
}
