//! Filling event headers and handing events to the ring buffer, waking the
//! reader only in batches.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_comm, bpf_ktime_get_ns},
};
use monitor_common::{EventHeader, KernelOffsets, LOST_RINGBUF_FULL, Settings};

use crate::{
    filter::Match,
    maps::{EVENTS, count_lost},
    task::parent_tgid,
};

#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: u32, m: &Match, o: &KernelOffsets) {
    let pid_tgid = m.pid_tgid;

    h.kind = kind;
    h.flags = 0;
    // SAFETY: plain helper calls.
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.action_cgroup_id = m.action_cgroup_id;
    h.child_cgroup_id = m.child_cgroup_id;
    h.grandchild_cgroup_id = m.grandchild_cgroup_id;
    h.launcher = m.launcher;
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ppid = parent_tgid(o);
    h.scope = m.scope;
    h.comm = bpf_get_current_comm().unwrap_or_default();
}

/// Copies `len` bytes at `data` into the ring buffer without waking the
/// reader, except for the event that makes the waiting data cross
/// `wakeup_threshold`; the reader also drains on its own short timer. A full
/// ring is counted, never silent.
#[inline(always)]
pub fn submit(settings: &Settings, data: *const u8, len: usize) {
    submit_with(settings, data, len, false);
}

/// As `submit`, waking the reader at once when `urgent` (an event userspace
/// must act on while the process still exists).
#[inline(always)]
pub fn submit_with(settings: &Settings, data: *const u8, len: usize, urgent: bool) {
    // Wake the reader once, when this event makes the waiting data cross the
    // threshold: waking it for every event above the threshold costs more
    // than the syscall itself while the reader catches up (measured: ~7 µs
    // per open with the reader stopped), and it drains on its timer anyway.
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let threshold = settings.wakeup_threshold;
    let crossing = waiting < threshold && waiting + len as u64 >= threshold;
    let flags = if urgent || crossing {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    // SAFETY: the caller guarantees `data` points at `len` readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(data, len) };
    if EVENTS.output::<[u8]>(bytes, flags as u64).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}
