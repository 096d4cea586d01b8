//! Pay once per object, not per open: a process's repeated access of one
//! kind to one object is counted, not reported. An open whose key is in
//! `SEEN` only adds one to the count there (no path walk, no ring record).
//! Userspace takes each count, exactly, when the process ends
//! (`kernel::seen`). When the map is full, opens are reported in full, as
//! without it.
//!
//! `SEEN` is keyed by the key's 64-bit slot (`monitor_common::seen_slot`)
//! and holds the whole key beside the count: the map hashes and compares 8
//! bytes, this code compares the 48. Only an entry whose whole key equals
//! the open's is counted; a different key on the same slot is reported in
//! full, every time, until the slot's owner ends.
//!
//! A key goes into `SEEN` at its second open, not its first: most objects
//! are opened once per process (94 % of the keys the bench build put in
//! `SEEN` were never repeated), and for each of those the map insert cost
//! about a quarter of the first open's hook time, and taking it back at
//! the process's end a syscall of the monitor's. The first open is
//! reported in full and leaves its slot number in `RECENT`, a small
//! per-CPU table; an open that finds it there is reported in full too, and
//! tracked from then on. So an object opened many times costs two
//! reports. `RECENT` only decides when to start counting, never what is
//! hidden: only a key found in `SEEN` is counted, and each was reported in
//! full when it went in. A slot number overwritten before the second open
//! (4,096 per CPU), or an open on another CPU, costs one more full report.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    ACCESS_CLASS_FLAGS, ACCESS_CREATED, FMODE_CREATED, SEEN_ENTRIES, SeenEntry, SeenKey, seen_slot,
};

use crate::{filter::Match, object::Identity};

/// Repeats per key since it was reported, by the key's slot.
#[map]
pub static SEEN: HashMap<u64, SeenEntry> = HashMap::with_max_entries(SEEN_ENTRIES, 0);

/// Slots of `RECENT` per CPU (a power of two): 32 KiB per CPU, which stays
/// in a core's cache.
const RECENT_SLOTS: u32 = 4096;

/// `SEEN` slot numbers of keys reported once and not yet in `SEEN`.
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
    /// Not tracked (map full, or its slot taken by another key): report it
    /// in full.
    Untracked,
}

/// Writes into `key` the key of an open whose object is `id`, with `flags`.
/// As six 8-byte stores: `seen_slot` reads it back as 8-byte words, and a
/// word load over two 4-byte stores cannot be forwarded from them (a stall
/// that measured as much as the smaller hash saved).
#[inline(always)]
pub fn fill_key(key: &mut SeenKey, id: &Identity, flags: u64, m: &Match) {
    let created = id.f_mode & FMODE_CREATED != 0;
    let access_class =
        (flags as u32 & ACCESS_CLASS_FLAGS) | if created { ACCESS_CREATED } else { 0 };
    // The key's layout, little-endian: tgid and its padding, then
    // generation and access class, share a word each.
    let words = [
        m.action_cgroup_id,
        id.ino,
        id.dentry,
        id.mnt,
        m.pid_tgid >> 32,
        id.generation as u64 | (access_class as u64) << 32,
    ];
    let to = key as *mut SeenKey as *mut u64;
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: six aligned u64 words of a live key (48 bytes, repr(C)).
        unsafe { core::ptr::write_volatile(to.add(i), word) };
    }
}

/// Looks up first. Inserting first (one bucket walk for a first access)
/// measured worse: a failed insert takes the bucket lock with interrupts
/// off, +100-150 ns per repeat (bpf_stats), and first accesses gained
/// nothing measurable.
///
/// `entry` is map memory (the per-CPU scratch) with its key filled: the
/// slot is computed from it (see `seen_slot`), and it is the value
/// inserted.
#[inline(always)]
pub fn check(entry: &mut SeenEntry) -> Seen {
    let slot = seen_slot(&entry.key);
    if let Some(found) = SEEN.get_ptr_mut(&slot) {
        // SAFETY: a map value, alive while this program runs.
        unsafe {
            if !same_key(&(*found).key, &entry.key) {
                return Seen::Untracked;
            }
            add_one(core::ptr::addr_of_mut!((*found).count));
        }
        return Seen::Repeat;
    }
    if !seen_recently(slot) {
        return Seen::Once;
    }
    entry.count = 0;
    if SEEN.insert(&slot, entry, BPF_NOEXIST as u64).is_ok() {
        Seen::First
    } else {
        Seen::Untracked
    }
}

/// Word by word, with volatile loads: both keys are in map memory, where
/// every word reads as a plain number.
#[inline(always)]
fn same_key(a: &SeenKey, b: &SeenKey) -> bool {
    let (a, b) = (
        a as *const SeenKey as *const u64,
        b as *const SeenKey as *const u64,
    );
    let mut differ = 0;
    for i in 0..core::mem::size_of::<SeenKey>() / 8 {
        // SAFETY: both are live, aligned keys of six u64 words.
        differ |=
            unsafe { core::ptr::read_volatile(a.add(i)) ^ core::ptr::read_volatile(b.add(i)) };
    }
    differ == 0
}

/// Whether `slot` is in this CPU's `RECENT` table; if not, it is put there.
#[inline(always)]
fn seen_recently(slot: u64) -> bool {
    let Some(recent) = RECENT.get_ptr_mut(slot as u32 & (RECENT_SLOTS - 1)) else {
        // No table: track from the first open, as without it.
        return true;
    };
    // SAFETY: this CPU's value. Programs run with migration, not
    // preemption, disabled: another run on this CPU may write the slot
    // between the read and the write, which only costs a report.
    unsafe {
        if *recent == slot {
            return true;
        }
        *recent = slot;
    }
    false
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
