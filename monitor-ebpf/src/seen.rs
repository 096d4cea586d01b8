//! Pay once per object, not per open: a process's repeated access of one
//! kind to one object is counted, not reported. An open whose key is in
//! `SEEN` only adds one to the count there (no path walk, no ring record).
//! Userspace takes each count, exactly, when the process ends
//! (`kernel::seen`). When the map is full, opens are reported in full, as
//! without it.
//!
//! A key goes into `SEEN` at its second open, not its first: most objects
//! are opened once per process (94 % of the keys the bench build put in
//! `SEEN` were never repeated), and for each of those the map insert cost
//! about a quarter of the first open's hook time, and taking it back at
//! the process's end a syscall of the monitor's. The first open is
//! reported in full and leaves a fingerprint in `RECENT`, a small per-CPU
//! table; an open that finds its fingerprint there is reported in full too,
//! and tracked from then on. So an object opened many times costs two
//! reports. The fingerprint only decides when to start counting, never
//! what is hidden: only a key found in `SEEN` is counted, and each was
//! reported in full when it went in. A fingerprint overwritten before the
//! second open (4,096 slots per CPU), or an open on another CPU, costs one
//! more full report.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{ACCESS_CLASS_FLAGS, ACCESS_CREATED, FMODE_CREATED, SEEN_ENTRIES, SeenKey};

use crate::{filter::Match, object::Identity};

/// Repeats per key since it was reported.
#[map]
pub static SEEN: HashMap<SeenKey, u64> = HashMap::with_max_entries(SEEN_ENTRIES, 0);

/// Slots of `RECENT` per CPU (a power of two): 32 KiB per CPU, which stays
/// in a core's cache.
const RECENT_SLOTS: u32 = 4096;

/// Fingerprints of keys reported once and not yet in `SEEN`, by slot.
#[map]
static RECENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(RECENT_SLOTS, 0);

pub enum Seen {
    /// Not seen lately: report it in full; not tracked yet.
    Once,
    /// Seen once lately, now tracked: report it in full; its repeats will
    /// be counted.
    First,
    /// Counted: nothing to report.
    Repeat,
    /// Not tracked (map full): report it in full.
    Untracked,
}

/// The key of an open whose object is `id`, with `flags`.
#[inline(always)]
pub fn key_of(id: &Identity, flags: u64, m: &Match) -> SeenKey {
    let created = id.f_mode & FMODE_CREATED != 0;
    SeenKey {
        action_cgroup_id: m.action_cgroup_id,
        ino: id.ino,
        dentry: id.dentry,
        mnt: id.mnt,
        tgid: (m.pid_tgid >> 32) as u32,
        _pad: 0,
        generation: id.generation,
        access_class: (flags as u32 & ACCESS_CLASS_FLAGS)
            | if created { ACCESS_CREATED } else { 0 },
    }
}

/// Looks up first. Inserting first (one bucket walk for a first access)
/// measured worse: a failed insert takes the bucket lock with interrupts
/// off, +100-150 ns per repeat (bpf_stats), and first accesses gained
/// nothing measurable.
#[inline(always)]
pub fn check(key: &SeenKey) -> Seen {
    if let Some(count) = SEEN.get_ptr_mut(key) {
        // SAFETY: a map value, alive while this program runs.
        unsafe { add_one(count) };
        return Seen::Repeat;
    }
    if !seen_recently(key) {
        return Seen::Once;
    }
    if SEEN.insert(key, &0, BPF_NOEXIST as u64).is_ok() {
        Seen::First
    } else {
        Seen::Untracked
    }
}

/// Whether `key`'s fingerprint is in this CPU's `RECENT` slot for it; if
/// not, it is put there.
#[inline(always)]
fn seen_recently(key: &SeenKey) -> bool {
    let print = fingerprint(key);
    let Some(slot) = RECENT.get_ptr_mut(print as u32 & (RECENT_SLOTS - 1)) else {
        // No table: track from the first open, as without it.
        return true;
    };
    // SAFETY: this CPU's value. Programs run with migration, not
    // preemption, disabled: another run on this CPU may write the slot
    // between the read and the write, which only costs a report.
    unsafe {
        if *slot == print {
            return true;
        }
        *slot = print;
    }
    false
}

/// 64 bits of the key, mixed (the finaliser of MurmurHash3), never 0 (an
/// empty slot). Not of its dentry and mount: on the BTF hook the verifier
/// types them as pointers, which allow no arithmetic. Two names of one
/// inode share a fingerprint, which only starts the counting sooner.
#[inline(always)]
fn fingerprint(key: &SeenKey) -> u64 {
    let mut h = key.ino
        ^ key.action_cgroup_id.rotate_left(41)
        ^ ((key.tgid as u64) << 32 | key.generation as u64).rotate_left(7)
        ^ (key.access_class as u64).rotate_left(53);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h | 1
}

/// Atomic: threads of one process may repeat on several CPUs at once. The
/// BPF target's core has no atomic types; its add without fetch (`lock
/// xadd`) is the intrinsic with the result unused.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn add_one(count: *mut u64) {
    // SAFETY: the caller passes a valid map value.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            count, 1,
        )
    };
}

/// Host builds (never run) use the stable atomic.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn add_one(count: *mut u64) {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(count) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}
