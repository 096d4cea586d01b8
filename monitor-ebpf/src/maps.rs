//! Maps shared by all hook families.
use aya_ebpf::{
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use monitor_common::{
    DIR_CAPACITY, FileEvent, LOST_REASONS, MAX_SCOPES, PATH_CAPACITY, RING_BYTES, Scope, SeenEntry,
    Settings,
};

use crate::object::Windows;

/// Events of monitored actions, read by userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(RING_BYTES, 0);

/// Runtime settings and kernel offsets (one entry, written before attach).
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

/// Which cgroups hold actions (see `filter.rs`).
#[map]
pub static SCOPES: Array<Scope> = Array::with_max_entries(MAX_SCOPES, 0);

/// The root dentry found to be the monitor's own root (`files::chroot_root`).
#[map]
pub static HOST_ROOT_DENTRY: Array<u64> = Array::with_max_entries(1, 0);

/// Events that could not be delivered, per reason (`LOST_*`).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASONS, 0);

/// Room to build one variable-length event before copying it to the ring.
#[repr(C)]
pub struct Scratch {
    pub event: FileEvent,
    /// The path string, then directory components.
    pub data: [u8; DIR_CAPACITY + PATH_CAPACITY],
    /// How far a directory walk has written (`dpath.rs`). Kept here, not
    /// on the walk's stack: the verifier does not carry a map value from
    /// one step of the walk to the next, so it checks the step once instead
    /// of once per possible length (3.2 s of verification per start, now
    /// a third of it: measured with strace on BPF_PROG_LOAD).
    pub walk_pos: u64,
    /// The walk's `bind_at` (`dpath::Walk`), here for the same reason:
    /// on the walk's stack it tripled the programs' verified
    /// instructions (the step checked once with it unset, once set).
    pub walk_bind_at: u64,
    /// The walk's loop state (`dpath::WalkState`).
    pub walk_state: crate::dpath::WalkState,
    /// Copies an open file's identity is read from (`object`).
    pub windows: Windows,
    /// An open's repeat key, and the entry `seen::check` inserts for it:
    /// in map memory, where its typed pointers read back as numbers.
    pub seen: SeenEntry,
    /// A name's lookup key in `ALLOWED_DIRS` (`allowed.rs`).
    pub allowed_key: crate::allowed::AllowedKey,
}

#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// The call a name report is for (`files::file_name_report`): a global
/// function takes plain numbers only. Apart from `SCRATCH`, which the
/// report writes while it reads these.
#[repr(C)]
pub struct NameCall {
    pub m: crate::filter::Match,
    pub args: crate::probes::files::OpenArgs,
}

#[map]
pub static NAME_CALL: PerCpuArray<NameCall> = PerCpuArray::with_max_entries(1, 0);

pub fn count_lost(reason: u32) {
    if let Some(slot) = LOST.get_ptr_mut(reason) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *slot += 1 };
    }
}
