//! Filling event headers and handing events to the ring buffer, waking the
//! reader only in batches.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated::bpf_get_current_comm},
};
use monitor_common::{COMM_LEN, EventHeader, LOST_RINGBUF_FULL, Settings};

use crate::{
    filter::Match,
    maps::{EVENTS, count_lost},
};

/// `ppid`: from `task::parent_tgid` (`parent_tgid_cast` in the BTF
/// tracepoint).
#[inline(always)]
pub fn fill_header(h: &mut EventHeader, kind: u32, m: &Match, ppid: u32) {
    let pid_tgid = m.pid_tgid;

    h.kind = kind;
    h.flags = 0;
    // SAFETY: plain helper calls.
    h.ktime_ns = unsafe { bpf_ktime_get_ns() };
    h.action_cgroup_id = m.action_cgroup_id;
    h.child_cgroup_id = m.child_cgroup_id;
    h.grandchild_cgroup_id = crate::filter::grandchild(m);
    h.launcher = m.launcher;
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ppid = ppid;
    h.scope = m.scope;
    // Straight into the header: the helper pads with NULs (and zeroes the
    // buffer on failure), so no zeroed copy first (the BPF target's memset
    // is a byte loop).
    // SAFETY: `comm` is COMM_LEN writable bytes.
    unsafe { bpf_get_current_comm(h.comm.as_mut_ptr().cast(), COMM_LEN as u32) };
}

/// Zeroes each field named with a volatile store: runs of plain zero stores
/// compile to a call of the BPF target's byte-wise `memset`.
#[macro_export]
macro_rules! zero_fields {
    ($($place:expr),+ $(,)?) => {
        $(
            // SAFETY: a field of a live, writable struct.
            unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!($place), Default::default()) };
        )+
    };
}

/// Zeroes `slot` in place with 8-byte stores and returns the all-zero `T`
/// (an event struct: all-zero is valid for each). In place, not returned
/// by value: LLVM turns the move of a value it knows is zero into a call of
/// the BPF target's byte-wise `memset` (seen in the disassembly: 72 bytes
/// per socket event).
#[inline(always)]
pub fn zeroed_in<T>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    zero_words(slot.as_mut_ptr());
    // SAFETY: every byte is zero, a valid value of the event structs.
    unsafe { slot.assume_init_mut() }
}

/// Zeroes `*p` with 8-byte stores. `core::mem::zeroed` and runs of zero
/// stores compile to a call of the BPF target's `memset`, a loop writing
/// one byte at a time; volatile stores are kept as they are.
#[inline(always)]
fn zero_words<T>(p: *mut T) {
    const {
        assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8);
    }
    let words = p.cast::<u64>();
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: `p` points at a writable, 8-aligned T of size_of::<T>() bytes.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
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
