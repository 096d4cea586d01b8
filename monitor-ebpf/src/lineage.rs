//! Lineage actions: which processes descend from a sandbox launcher.
//!
//! Until the first launcher starts, every lookup is skipped (a latch set
//! once, with a plain store: the BPF target has no atomic read-modify-write
//! in `core`). That keeps lineage off the hot paths, monitored syscalls and
//! every fork on the host, wherever no sandbox launcher ever runs.
use aya_ebpf::{
    bindings::{BPF_EXIST, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap},
};
use monitor_common::{LOST_LINEAGE_FULL, MAX_LINEAGE};

use crate::maps::count_lost;

/// tgid of every process descending from a launcher → its lineage entry:
/// the launcher's tgid, with `TIMED` set in a persistent worker's tree.
#[map]
static LINEAGE: HashMap<u32, u32> = HashMap::with_max_entries(MAX_LINEAGE, 0);

/// Non-zero once any process has joined a lineage.
#[map]
static LINEAGE_USED: Array<u64> = Array::with_max_entries(1, 0);

/// Bit of a lineage entry (never of a tgid: `pid_max` is at most 2^22): the
/// tree is a persistent worker's, whose file events need their times
/// (userspace tells the worker's requests apart by them). Everywhere else a
/// file event goes without the clock read.
pub const TIMED: u32 = 1 << 31;

/// The lineage entry of `tgid`: its launcher's tgid, perhaps with `TIMED`;
/// 0 when it is in no tree.
#[inline(always)]
pub fn entry_of(tgid: u32) -> u32 {
    if LINEAGE_USED.get(0).is_none_or(|used| *used == 0) {
        return 0;
    }
    // SAFETY: the value is copied out at once.
    unsafe { LINEAGE.get(&tgid) }.copied().unwrap_or(0)
}

/// The launcher whose tree `tgid` is in, or 0.
#[inline(always)]
pub fn launcher_of(tgid: u32) -> u32 {
    launcher(entry_of(tgid))
}

/// The launcher's tgid a lineage entry names (0 for none).
#[inline(always)]
pub fn launcher(entry: u32) -> u32 {
    entry & !TIMED
}

/// Puts `tgid` in the tree of the lineage entry `launcher` (a launcher
/// inside a tree starts a new, innermost one).
#[inline(always)]
pub fn join(tgid: u32, launcher: u32) {
    if let Some(used) = LINEAGE_USED.get_ptr_mut(0) {
        // SAFETY: an aligned map value; every writer stores the same 1.
        unsafe { core::ptr::write_volatile(used, 1) };
    }
    let fresh = LINEAGE.insert(&tgid, &launcher, BPF_NOEXIST as u64).is_ok();
    if !fresh && LINEAGE.insert(&tgid, &launcher, BPF_EXIST as u64).is_err() {
        count_lost(LOST_LINEAGE_FULL);
    }
}

/// `tgid` ended.
#[inline(always)]
pub fn leave(tgid: u32) {
    let _ = LINEAGE.remove(&tgid);
}
