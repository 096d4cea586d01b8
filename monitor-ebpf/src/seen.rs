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
//! Most opens are first accesses, which find nothing in `SEEN`; a lookup
//! that finds nothing still reads a random bucket of the map's 1 MiB
//! bucket array, and measured 90-100 ns per first access (bpf_stats, an
//! open of each of 100,000 files). `SEEN_FILTER` counts the entries per
//! group of slots, in 32 KiB that stay cached: the kernel adds one after
//! each insert, userspace takes one away after each take, and an open
//! whose group holds none skips the lookup. The count only ever decides
//! whether to look: an open that skips it when it should not (an insert
//! on another CPU not yet counted) goes on as a key not in `SEEN`, and is
//! reported in full.
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
    bindings::{BPF_F_MMAPABLE, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use monitor_common::{
    ACCESS_CLASS_FLAGS, ACCESS_CREATED, FMODE_CREATED, SEEN_ENTRIES, SEEN_FILTER_CELLS, SeenEntry,
    SeenKey, seen_slot,
};

use crate::{filter::Match, object::Identity};

/// Repeats per key since it was reported, by the key's slot.
#[map]
pub static SEEN: HashMap<u64, SeenEntry> = HashMap::with_max_entries(SEEN_ENTRIES, 0);

/// Entries of `SEEN` per group of slots (see the module's notes). One
/// value, mapped by userspace (`kernel::seen`), which takes one away for
/// each entry it takes.
#[map]
static SEEN_FILTER: Array<[u32; SEEN_FILTER_CELLS]> =
    Array::with_max_entries(1, BPF_F_MMAPABLE as u32);

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
    let cell = filter_cell(slot);
    // SAFETY: a map value's word, alive while this program runs.
    let may_hold = cell.is_none_or(|cell| unsafe { core::ptr::read_volatile(cell) } != 0);
    if may_hold && let Some(found) = SEEN.get_ptr_mut(&slot) {
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
    if SEEN.insert(&slot, entry, BPF_NOEXIST as u64).is_err() {
        return Seen::Untracked;
    }
    if let Some(cell) = cell {
        // SAFETY: as above.
        unsafe { add_one_u32(cell) };
    }
    Seen::First
}

/// `slot`'s cell of `SEEN_FILTER` (`None` without the map).
#[inline(always)]
fn filter_cell(slot: u64) -> Option<*mut u32> {
    let cells = SEEN_FILTER.get_ptr_mut(0)?;
    let index = slot as usize & (SEEN_FILTER_CELLS - 1);
    // SAFETY: `index` is below the array's length.
    Some(unsafe { (cells as *mut u32).add(index) })
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

/// As `add_one`, for a 32-bit cell.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn add_one_u32(cell: *mut u32) {
    // SAFETY: the caller passes a valid map value word.
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
            cell, 1,
        )
    };
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn add_one_u32(cell: *mut u32) {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(cell) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

/// Host builds (never run) use the stable atomic.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn add_one(count: *mut u64) {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(count) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}
