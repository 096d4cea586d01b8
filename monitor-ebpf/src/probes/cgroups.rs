//! cgroup lifecycle below monitored scopes: `cgroup_mkdir` / `cgroup_rmdir`
//! raw tracepoints (args: `struct cgroup *`, the path as a kernel string).
//! Userspace learns each action cgroup's id and path from these at once,
//! instead of polling the tree. Only cgroup v2 (hierarchy 0) below a
//! configured scope is reported; everything else returns after a few reads.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_kernel_str},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use monitor_common::{CgroupEvent, EventKind, MAX_SCOPES, PATH_CAPACITY, Settings};

use crate::{
    emit::{fill_header, submit},
    filter::Match,
    maps::{SCOPES, SCRATCH, SETTINGS},
    task::{cgroup_ancestor_id, is_cgroup_v2, parent_tgid, read},
};

#[raw_tracepoint(tracepoint = "cgroup_mkdir")]
pub fn cgroup_mkdir(ctx: RawTracePointContext) -> i32 {
    let _ = on_cgroup(&ctx, EventKind::CgroupMkdir);
    0
}

#[raw_tracepoint(tracepoint = "cgroup_rmdir")]
pub fn cgroup_rmdir(ctx: RawTracePointContext) -> i32 {
    let _ = on_cgroup(&ctx, EventKind::CgroupRmdir);
    0
}

/// `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`: after a move;
/// the current task is the mover (`escapes`).
#[raw_tracepoint(tracepoint = "cgroup_attach_task")]
pub fn cgroup_attach(ctx: RawTracePointContext) -> i32 {
    if let Some(settings) = SETTINGS.get(0) {
        crate::escapes::on_attach(settings, bpf_get_current_pid_tgid(), ctx.arg(0), ctx.arg(2));
    }
    // After the move and its escape entry: kept verdicts are stale.
    crate::verdicts::changed();
    0
}

#[inline(always)]
fn on_cgroup(ctx: &RawTracePointContext, kind: EventKind) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let cgrp: u64 = ctx.arg(0);
    let path: u64 = ctx.arg(1);
    if !below_a_scope(settings, cgrp) {
        return None;
    }
    let o = &settings.offsets;
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs; a
    // CgroupEvent is smaller than the FileEvent the scratch is laid out for.
    let scratch = unsafe { &mut *scratch };
    let ev = (&mut scratch.event as *mut monitor_common::FileEvent).cast::<CgroupEvent>();
    // SAFETY: see above; CgroupEvent is plain data and fits.
    let ev = unsafe { &mut *ev };
    let none = Match {
        action_cgroup_id: 0,
        child_cgroup_id: 0,
        grandchild_cgroup_id: 0,
        grandchild_level: crate::filter::NO_GRANDCHILD,
        scope: 0,
        flags: 0,
        launcher: 0,
        pid_tgid: bpf_get_current_pid_tgid(),
    };
    fill_header(&mut ev.header, kind as u32, &none, parent_tgid());
    ev.cgroup_id = read(read::<u64>(cgrp, o.cgroup_kn), o.kernfs_node_id);
    ev.level = read::<u32>(cgrp, o.cgroup_level);
    // The path goes right behind the fixed part: the scratch is one
    // contiguous map value (a FileEvent, then its data area), so the record
    // is contiguous too.
    let fixed = core::mem::size_of::<CgroupEvent>();
    let record = (ev as *mut CgroupEvent).cast::<u8>();
    // SAFETY: `fixed + PATH_CAPACITY` bytes lie inside the scratch value.
    let dst = unsafe { record.add(fixed) };
    // SAFETY: bpf_probe_read_kernel_str checks the source address.
    let n =
        unsafe { bpf_probe_read_kernel_str(dst.cast(), PATH_CAPACITY as u32, path as *const _) };
    let len = if n > 0 {
        (n as usize - 1) & (PATH_CAPACITY - 1)
    } else {
        0
    };
    ev.path_len = len as u32;
    submit(settings, record, fixed + len);
    Some(())
}

/// Is `cgrp` a cgroup v2 directory strictly below one of the scopes?
#[inline(always)]
fn below_a_scope(settings: &Settings, cgrp: u64) -> bool {
    let o = &settings.offsets;
    if !is_cgroup_v2(o, cgrp) {
        return false; // a cgroup v1 hierarchy
    }
    let level: u32 = read(cgrp, o.cgroup_level);
    for i in 0..MAX_SCOPES {
        if i >= settings.scope_count {
            break;
        }
        let Some(scope) = SCOPES.get(i) else { break };
        if level <= scope.level || scope.level >= 64 {
            continue;
        }
        if cgroup_ancestor_id(o, cgrp, scope.level) == scope.cgroup_id {
            return true;
        }
    }
    false
}
