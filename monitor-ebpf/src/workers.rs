//! Remote-execution worker actions (`attribution.worker_runners`).
//!
//! A runner (a REAPI bot) is recognised when it is exec'd by one of the
//! configured paths (`bprm->filename`: for a `#!` script, the script's own
//! path). Every process a runner forks roots a worker action: it joins the
//! lineage map as its own launcher, so its descendants follow it, wherever
//! it runs (not only inside monitored cgroups). The runner itself is no
//! action: its own syscalls are never reported.
//!
//! All of it is skipped while `Settings::runner_count` is 0.
use aya_ebpf::{
    bindings::BPF_ANY,
    helpers::generated::bpf_probe_read_kernel_str,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    MAX_LINEAGE, MAX_RUNNERS, RUNNER_PATH_LEN, SCOPE_FILES, SCOPE_NONE, Settings,
};

use crate::{filter::Match, lineage, task::read};

/// Configured runner paths (NUL-padded), written by userspace.
#[map]
static RUNNER_PATHS: HashMap<[u8; RUNNER_PATH_LEN], u8> = HashMap::with_max_entries(MAX_RUNNERS, 0);

/// tgids of running runners.
#[map]
static RUNNERS: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);

/// tgid of each worker action's root → 1 once its command was exec'd (and
/// reported), 0 before.
#[map]
static WORKER_ROOTS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_LINEAGE, 0);

#[map]
static PATH_KEY: PerCpuArray<[u8; RUNNER_PATH_LEN]> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
pub fn enabled(settings: &Settings) -> bool {
    settings.runner_count != 0
}

/// Is `tgid` a runner (whose own events are never reported)?
#[inline(always)]
pub fn is_runner(tgid: u32) -> bool {
    // SAFETY: the value is not kept.
    unsafe { RUNNERS.get(&tgid) }.is_some()
}

/// At exec: marks the process as a runner when `bprm->filename` is one of
/// the configured paths.
#[inline(always)]
pub fn on_exec_any(settings: &Settings, tgid: u32, bprm: u64) {
    let Some(key) = PATH_KEY.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU buffer, used by this program only while it runs.
    let key = unsafe { &mut *key };
    // Zero it first: the lookup compares all RUNNER_PATH_LEN bytes.
    for chunk in key.chunks_exact_mut(8) {
        chunk.copy_from_slice(&[0; 8]);
    }
    let filename: u64 = read(bprm, settings.offsets.binprm_filename);
    if filename == 0 {
        return;
    }
    // SAFETY: the helper checks the source address and bounds the copy.
    let n = unsafe {
        bpf_probe_read_kernel_str(
            key.as_mut_ptr().cast(),
            RUNNER_PATH_LEN as u32,
            filename as *const _,
        )
    };
    if n <= 0 || n as usize >= RUNNER_PATH_LEN {
        return; // a path that long is never configured (userspace refuses it)
    }
    // SAFETY: the value is not kept.
    if unsafe { RUNNER_PATHS.get(key) }.is_some() {
        let _ = RUNNERS.insert(&tgid, &1, BPF_ANY as u64);
    }
}

/// At fork: a runner's child roots a new worker action.
#[inline(always)]
pub fn on_fork(parent_tgid: u32, child_tgid: u32) {
    if is_runner(parent_tgid) {
        lineage::join(child_tgid, child_tgid);
        let _ = WORKER_ROOTS.insert(&child_tgid, &0, BPF_ANY as u64);
    }
}

/// At exec: is this the first exec of a worker action's root (its command
/// starting, with the input root as its working directory)?
#[inline(always)]
pub fn first_exec_of_root(tgid: u32) -> bool {
    let Some(state) = WORKER_ROOTS.get_ptr_mut(&tgid) else {
        return false;
    };
    // SAFETY: a map value of this tgid, written only by its own execs.
    unsafe {
        if *state != 0 {
            return false;
        }
        *state = 1;
    }
    true
}

/// Was `tgid` the root of a worker action?
#[inline(always)]
pub fn is_root(tgid: u32) -> bool {
    // SAFETY: the value is not kept.
    unsafe { WORKER_ROOTS.get(&tgid) }.is_some()
}

/// `tgid` ended: forget it as a runner or action root.
#[inline(always)]
pub fn on_exit(tgid: u32) {
    let _ = RUNNERS.remove(&tgid);
    let _ = WORKER_ROOTS.remove(&tgid);
}

/// A task outside every monitored cgroup that is in a worker action's
/// lineage: matched with no scope (`SCOPE_NONE`), files judged.
#[inline(always)]
pub fn lineage_match(settings: &Settings, pid_tgid: u64) -> Option<Match> {
    if !enabled(settings) {
        return None;
    }
    let launcher = lineage::launcher_of((pid_tgid >> 32) as u32);
    if launcher == 0 {
        return None;
    }
    Some(Match {
        action_cgroup_id: 0,
        child_cgroup_id: 0,
        grandchild_cgroup_id: 0,
        grandchild_level: crate::filter::NO_GRANDCHILD,
        scope: SCOPE_NONE,
        flags: SCOPE_FILES,
        launcher,
        pid_tgid,
    })
}
