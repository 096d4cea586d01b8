//! Pay once per object, not per open: a process's repeated access of one
//! kind to one object is reported once. The first successful open is
//! reported in full and its key put in `SEEN`; repeats only add one to
//! the count there (no path walk, no ring record). Userspace takes each
//! count, exactly, when the process ends (`kernel::seen`). When the map is
//! full, opens are reported in full, as without it.
use aya_ebpf::{bindings::BPF_NOEXIST, macros::map, maps::HashMap};
use monitor_common::{ACCESS_CLASS_FLAGS, ACCESS_CREATED, FMODE_CREATED, SEEN_ENTRIES, SeenKey};

use crate::{filter::Match, object::Identity};

/// Repeats per key since it was reported.
#[map]
pub static SEEN: HashMap<SeenKey, u64> = HashMap::with_max_entries(SEEN_ENTRIES, 0);

pub enum Seen {
    /// New: report it in full; its repeats will be counted.
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
    if SEEN.insert(key, &0, BPF_NOEXIST as u64).is_ok() {
        Seen::First
    } else {
        Seen::Untracked
    }
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
