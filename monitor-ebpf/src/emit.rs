//! Filling event headers and handing events to the ring buffer, waking the
//! reader only in batches.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_jiffies64},
    },
    macros::map,
    maps::PerCpuArray,
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
    fill_header_but_comm(h, kind, m, ppid, crate::filter::grandchild(m));
    h.ktime_ns = clock();
    helper_comm(&mut h.comm);
}

/// As `fill_header`, all but `comm` and the time, which the caller fills,
/// with the ancestor two levels below the scope it looked up
/// (`filter::grandchild`'s answer): the BTF tracepoint's file report reads
/// `comm` and the ancestor with typed loads (`object::Reader::comm`,
/// `Reader::ancestor_cgroup_id`), and a file event reads the clock only in
/// a persistent worker's tree (`file_time`).
#[inline(always)]
pub fn fill_header_but_comm(
    h: &mut EventHeader,
    kind: u32,
    m: &Match,
    ppid: u32,
    grandchild_cgroup_id: u64,
) {
    let pid_tgid = m.pid_tgid;

    h.kind = kind;
    h.flags = 0;
    h.action_cgroup_id = m.action_cgroup_id;
    h.child_cgroup_id = m.child_cgroup_id;
    h.grandchild_cgroup_id = grandchild_cgroup_id;
    h.launcher = m.launcher;
    h.pid = (pid_tgid >> 32) as u32;
    h.tid = pid_tgid as u32;
    h.ppid = ppid;
    h.scope = m.scope;
}

/// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, the event's time.
#[inline(always)]
pub fn clock() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// The clock read of this CPU's current kernel tick: (`jiffies_64`, the
/// `bpf_ktime_get_ns()` of the tick's first file event).
#[map]
static TICK_TIME: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// A file event's time. The clock read was the dearest part of a first
/// access's header (about 95 ns under perf: a helper call, `read_tsc` with
/// its `lfence`), so a CPU reads it once per kernel tick and stamps the
/// tick's later file events with it: the time is then at most one tick
/// early (4 ms at `CONFIG_HZ=250`), enough for an alert's millisecond
/// `time` and the latency histogram. A persistent worker's tree reads the
/// clock every time: userspace splits its accesses among its requests by
/// their order. `bpf_jiffies64` is a helper call that loads one word.
#[inline(always)]
pub fn file_time(m: &Match) -> u64 {
    if m.flags & crate::filter::MATCH_TIMED != 0 {
        return clock();
    }
    // SAFETY: plain helper call.
    let tick = unsafe { bpf_jiffies64() };
    let Some(cached) = TICK_TIME.get_ptr_mut(0) else {
        return clock();
    };
    // SAFETY: this CPU's entry; a program nested on this CPU between the
    // two stores (none of the file hooks runs in interrupts) could at worst
    // pair a tick with the time of the tick before.
    unsafe {
        if (*cached)[0] == tick {
            return (*cached)[1];
        }
        let now = clock();
        (*cached)[1] = now;
        (*cached)[0] = tick;
        now
    }
}

/// The current task's name with `bpf_get_current_comm`, straight into
/// `comm`: the helper pads with NULs (and zeroes the buffer on failure),
/// so no zeroed copy first (the BPF target's memset is a byte loop).
#[inline(always)]
pub fn helper_comm(comm: &mut [u8; COMM_LEN]) {
    // SAFETY: `comm` is COMM_LEN writable bytes.
    unsafe { bpf_get_current_comm(comm.as_mut_ptr().cast(), COMM_LEN as u32) };
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

/// A zeroed `T` in the per-CPU scratch map's data area, for an event
/// built beside the syscall hook's dispatch: its frame and a callee's
/// together may hold at most 512 bytes, and the hook's own frame takes
/// most of them (a connect event on the callee's stack made the pair 576
/// bytes, refused by the verifier). `None` only if the map has no slot.
#[inline(always)]
pub fn zeroed_in_scratch<T>() -> Option<&'static mut T> {
    const {
        assert!(
            core::mem::size_of::<T>() <= monitor_common::PATH_CAPACITY
                && core::mem::align_of::<T>() <= 8
        );
    }
    let scratch = crate::maps::SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs; its
    // data area is 8-byte aligned and larger than T.
    let p = unsafe { (*scratch).data.as_mut_ptr().cast::<T>() };
    zero_words(p);
    // SAFETY: every byte is zero, a valid value of the event structs.
    Some(unsafe { &mut *p })
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
/// reader, except when `reader_due` says the waiting data has reached
/// `wakeup_threshold`; the reader also drains on its own short timer. A
/// full ring is counted, never silent.
#[inline(always)]
pub fn submit(settings: &Settings, data: *const u8, len: usize) {
    submit_with(settings, data, len, false);
}

/// As `submit`, waking the reader at once when `urgent` (an event userspace
/// must act on while the process still exists).
#[inline(always)]
pub fn submit_with(settings: &Settings, data: *const u8, len: usize, urgent: bool) {
    let flags = if urgent || reader_due(settings, len as u64) {
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

/// Bytes a CPU submits between two questions to the ring: a 32nd of the
/// default threshold (2 MiB), a few hundred file events.
const ASK_EVERY_BYTES: u64 = 64 * 1024;

/// Bytes this CPU submitted since it last asked the ring how much waits.
#[map]
static UNASKED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Whether to wake the reader for an event of `len` bytes: once this CPU
/// has submitted `ASK_EVERY_BYTES` since it last asked, it asks the ring
/// how much data waits (`bpf_ringbuf_query`, a helper call: about 36 ns
/// of every event in a perf profile), and wakes the reader when that
/// reaches the threshold. So a reader that keeps up is never woken, and
/// one that has fallen behind is woken about once per `ASK_EVERY_BYTES`
/// per CPU (waking it for every event above the threshold costs more than
/// the syscall itself while it catches up: ~7 µs per open with the reader
/// stopped). Data below the threshold waits for the reader's timer either
/// way.
#[inline(always)]
fn reader_due(settings: &Settings, len: u64) -> bool {
    let Some(unasked) = UNASKED.get_ptr_mut(0) else {
        return waiting_reaches(settings, len);
    };
    // SAFETY: this CPU's value; a program on this CPU runs to its end
    // before another starts here (migration disabled), bar an interrupt's
    // program, whose update may be lost: a question asked later, no more.
    unsafe {
        let since = *unasked + len;
        if since < ASK_EVERY_BYTES {
            *unasked = since;
            return false;
        }
        *unasked = 0;
    }
    waiting_reaches(settings, len)
}

/// Whether the data waiting in the ring, with `len` more, reaches the
/// wakeup threshold.
#[inline(always)]
fn waiting_reaches(settings: &Settings, len: u64) -> bool {
    EVENTS.query(BPF_RB_AVAIL_DATA as u64) + len >= settings.wakeup_threshold
}
