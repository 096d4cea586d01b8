//! Pay once per object, not per open: a thread's repeated access of one
//! kind to one object is counted, not reported. An open whose key is in
//! `SEEN` only adds one to the count there (no path walk, no ring record).
//! Userspace takes each count, exactly, when the thread's process ends
//! (`kernel::seen`). When the key's entry holds another key, opens are
//! reported in full, as without it. Keys name the thread, not the process:
//! a thread's adds never race, so they are a plain load and store (a
//! process whose threads open one object each report their first opens).
//!
//! `SEEN` is an array: the key's entry is at its slot's low bits
//! (`monitor_common::seen_index`) and holds the whole key, which this code
//! compares. Only an entry whose whole key equals the open's is counted; a
//! different key on the same entry is reported in full, every time, until
//! userspace takes that entry. An array's lookup is a few instructions the
//! verifier inlines: a hash map keyed by the slot cost a repeat about 7 ns
//! more (bpf_stats, 10 alternated pairs: median 7, from -5 to 28).
//!
//! An entry is claimed with a compare-and-exchange of its first word from
//! 0 (free); its other words follow, so another CPU may see a key half
//! written, which matches no open (reported in full). Userspace takes an
//! entry in place (`kernel::seen`): it marks it retired (no key matches),
//! swaps its count for `SEEN_TAKEN`, and frees it only after every program
//! that might have matched the key before has finished (an RCU grace
//! period). A repeat whose add finds the count at `SEEN_TAKEN` or above
//! came after the take: it is reported in full. Counts are taken when the
//! process has ended, so no add can come between (userspace still checks
//! at the free, and at its stop settles the running processes' first).
//!
//! Most opens are first accesses, which find nothing in `SEEN`; a lookup
//! that finds nothing still reads a random line of a large map (measured
//! on the hash map before: 90-100 ns per first access, bpf_stats, an
//! open of each of 100,000 files). `SEEN_FILTER` counts the entries per
//! group of slots, in 32 KiB that stay cached: the kernel adds one after
//! each claim, userspace takes one away after each free, and an open
//! whose group holds none skips the comparison. The count only ever decides
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
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, PerCpuArray},
};
use monitor_common::{
    ACCESS_CLASS_FLAGS, ACCESS_CREATED, FMODE_CREATED, SEEN_ENTRIES, SEEN_FILTER_CELLS, SEEN_TAKEN,
    SeenEntry, SeenKey, seen_index, seen_slot,
};

use crate::{
    atomics::{add_one_u32, compare_exchange},
    filter::Match,
    object::Identity,
};

/// Repeats per key since it was reported, at the key's index. Mapped by
/// userspace, which takes entries in place.
#[map]
pub static SEEN: Array<SeenEntry> = Array::with_max_entries(SEEN_ENTRIES, BPF_F_MMAPABLE as u32);

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
    // The key's layout, little-endian: the thread id and its padding, then
    // generation and access class, share a word each. The generation is
    // added by `check` when it needs the whole key (`with_generation`).
    let words = [
        m.action_cgroup_id,
        id.ino,
        id.dentry,
        id.mnt,
        m.pid_tgid & 0xffff_ffff,
        (access_class as u64) << 32,
    ];
    let to = key as *mut SeenKey as *mut u64;
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: six aligned u64 words of a live key (48 bytes, repr(C)).
        unsafe { core::ptr::write_volatile(to.add(i), word) };
    }
}

/// `entry` is map memory (the per-CPU scratch) with its key filled but
/// for the generation, which `generation` reads when the whole key is
/// needed (to compare or claim; not for an object opened once): the slot
/// is computed without it (see `seen_slot`), and its key is what a claim
/// writes.
#[inline(always)]
pub fn check(entry: &mut SeenEntry, generation: impl Fn() -> u32) -> Seen {
    let slot = seen_slot(&entry.key);
    let cell = filter_cell(slot);
    let Some(found) = SEEN.get_ptr_mut(seen_index(slot)) else {
        return Seen::Untracked;
    };
    // SAFETY: a map value's word, alive while this program runs.
    let may_hold = cell.is_none_or(|cell| unsafe { core::ptr::read_volatile(cell) } != 0);
    if may_hold {
        with_generation(entry, generation());
    }
    // SAFETY: `found` is a map value, alive while this program runs.
    if may_hold && unsafe { same_key(&(*found).key, &entry.key) } {
        // SAFETY: as above.
        return if unsafe { add_one_unless_taken(core::ptr::addr_of_mut!((*found).count)) } {
            Seen::Repeat
        } else {
            Seen::Untracked
        };
    }
    if !seen_recently(slot) {
        return Seen::Once;
    }
    if !may_hold {
        with_generation(entry, generation());
    }
    // SAFETY: as above; `entry` is map memory of six key words.
    if !unsafe { claim(found, entry) } {
        return Seen::Untracked;
    }
    if let Some(cell) = cell {
        // SAFETY: as above.
        unsafe { add_one_u32(cell) };
    }
    Seen::First
}

/// Puts `generation` into `entry`'s key (its word with the access class,
/// whose low half `fill_key` left 0).
#[inline(always)]
fn with_generation(entry: &mut SeenEntry, generation: u32) {
    let word = core::ptr::addr_of_mut!(entry.key.generation) as *mut u64;
    // SAFETY: the key's sixth aligned word (generation, access class).
    unsafe {
        core::ptr::write_volatile(word, core::ptr::read_volatile(word) | u64::from(generation))
    };
}

/// Takes the free entry `found` for `entry`'s key: its first word from 0
/// to the key's, then the rest of the key (its count is 0 while free).
/// Volatile stores: the words are read back as plain numbers.
#[inline(always)]
unsafe fn claim(found: *mut SeenEntry, entry: &SeenEntry) -> bool {
    let (to, from) = (found as *mut u64, entry as *const SeenEntry as *const u64);
    // SAFETY: both are live, aligned entries of seven u64 words.
    unsafe {
        if !compare_exchange(to, 0, core::ptr::read_volatile(from)) {
            return false;
        }
        for i in 1..core::mem::size_of::<SeenKey>() / 8 {
            core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)));
        }
    }
    true
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

/// Adds one to `count` unless userspace has taken it (at `SEEN_TAKEN` or
/// above): `false`, and the open is reported in full, never lost. A plain
/// load and store: the key names one thread, and a thread's programs run
/// one at a time. Userspace swaps the count atomically; an add that read
/// it before that swap and stores after it is found when the entry is
/// freed (`kernel::seen`), which cannot happen for a count taken when the
/// thread's process has ended, as counts are.
#[inline(always)]
unsafe fn add_one_unless_taken(count: *mut u64) -> bool {
    // SAFETY: the caller passes a valid map value word.
    unsafe {
        let now = core::ptr::read_volatile(count);
        if now >= SEEN_TAKEN {
            return false;
        }
        core::ptr::write_volatile(count, now + 1);
    }
    true
}
