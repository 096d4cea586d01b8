//! Reading the current task's kernel structures at offsets taken from BTF.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use monitor_common::{COMM_LEN, KernelOffsets};

use crate::offsets::{
    self, OFF_CGROUP_ANCESTORS, OFF_CGROUP_KN, OFF_CGROUP_LEVEL, OFF_CSS_SET_DFL_CGRP,
    OFF_FDTABLE_FD, OFF_FDTABLE_MAX_FDS, OFF_FILES_FDT, OFF_KERNFS_NODE_ID, OFF_NET_NS_INUM,
    OFF_NSPROXY_NET_NS, OFF_TASK_CGROUPS, OFF_TASK_COMM, OFF_TASK_FILES, OFF_TASK_NSPROXY,
    OFF_TASK_PID, OFF_TASK_REAL_PARENT, OFF_TASK_TGID,
};

/// Reads a `T` at `base + offset` in kernel memory; 0-filled on failure.
#[inline(always)]
pub fn read<T: Copy + Default>(base: u64, offset: u32) -> T {
    if base == 0 {
        return T::default();
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) }.unwrap_or_default()
}

#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_get_current_task() }
}

/// tgid of the current task's parent (`real_parent`), by probe reads at
/// the offsets the loader wrote (any program type): two helper calls at
/// run time, nothing for the verifier to look up. Typed loads from the
/// helper's trusted task (`bpf_get_current_task_btf`) would make the
/// verifier look each loaded pointer's type up by name in the kernel's BTF
/// wherever it meets the load: 64–87 ms of a start when the io_uring, exec
/// and connect paths read so. Only the BTF tracepoint reads the task typed,
/// through an untrusted cast (`parent_tgid_cast`).
#[inline(always)]
pub fn parent_tgid() -> u32 {
    let parent: u64 = read(current_task(), offsets::get(&OFF_TASK_REAL_PARENT));
    read::<i32>(parent, offsets::get(&OFF_TASK_TGID)) as u32
}

/// As `parent_tgid`, with typed loads from the task cast by
/// `kfunc::current_task`: the BTF tracepoint's reads only.
#[inline(always)]
pub fn parent_tgid_cast() -> u32 {
    parent_tgid_of(crate::kfunc::current_task())
}

/// The current task's name (NUL-padded: the kernel sets it with
/// `strscpy_pad`, and its last byte is always NUL) as two typed loads from
/// the cast task: `bpf_get_current_comm` is a call, a copy loop and its
/// padding (about 40 ns a first access in a perf profile). The BTF
/// tracepoint's reads only.
#[inline(always)]
pub fn comm_cast(comm: &mut [u8; COMM_LEN]) {
    let task = crate::kfunc::current_task();
    let at = offsets::get(&OFF_TASK_COMM) as usize;
    let words: [u64; 2] = [load(task, at), load(task, at + 8)];
    let to = comm.as_mut_ptr().cast::<u64>();
    // SAFETY: `comm` is 16 writable bytes, 8-aligned where it is used
    // (`EventHeader.comm`, at offset 64 of a header in map memory). The
    // last byte is cleared again: a name being set on another CPU may be
    // read half written, never unterminated.
    unsafe {
        core::ptr::write_volatile(to, words[0]);
        core::ptr::write_volatile(to.add(1), words[1] & !(0xff << 56));
    }
}

/// `bpf_get_current_pid_tgid()` as two typed loads from the cast task (the
/// helper is a call the JIT does not inline). The BTF tracepoint's reads
/// only.
#[inline(always)]
pub fn pid_tgid_cast() -> u64 {
    let task = crate::kfunc::current_task();
    let pid: u32 = load(task, offsets::get(&OFF_TASK_PID) as usize);
    let tgid: u32 = load(task, offsets::get(&OFF_TASK_TGID) as usize);
    (u64::from(tgid) << 32) | u64::from(pid)
}

/// `bpf_get_current_ancestor_cgroup_id(level)` with loads: the task's
/// cgroup v2 (`cgroups->dfl_cgrp`) as typed loads, its ancestor at
/// `level` and that one's id as words (`kfunc::word_at`: the index is
/// known only at run time); 0 for a level deeper than the task's cgroup,
/// as the helper. The BTF tracepoint's reads only.
#[inline(always)]
pub fn ancestor_cgroup_id_cast(level: u64) -> u64 {
    use crate::kfunc::word_at;
    let task = crate::kfunc::current_task();
    let cset: *const u8 = load(task, offsets::get(&OFF_TASK_CGROUPS) as usize);
    let cgrp: *const u8 = load(cset, offsets::get(&OFF_CSS_SET_DFL_CGRP) as usize);
    let own_level: i32 = load(cgrp, offsets::get(&OFF_CGROUP_LEVEL) as usize);
    if cgrp.is_null() || own_level < 0 || level > own_level as u64 {
        return 0;
    }
    let slot = cgrp as u64 + u64::from(offsets::get(&OFF_CGROUP_ANCESTORS)) + 8 * level;
    let ancestor = word_at(slot);
    if ancestor == 0 {
        return 0;
    }
    let kn = word_at(ancestor + u64::from(offsets::get(&OFF_CGROUP_KN)));
    if kn == 0 {
        return 0;
    }
    word_at(kn + u64::from(offsets::get(&OFF_KERNFS_NODE_ID)))
}

#[inline(always)]
fn parent_tgid_of(task: *const u8) -> u32 {
    let parent: *const u8 = load(task, offsets::get(&OFF_TASK_REAL_PARENT) as usize);
    if parent.is_null() {
        return 0;
    }
    load::<i32>(parent, offsets::get(&OFF_TASK_TGID) as usize) as u32
}

/// Inode number of the current task's network namespace, by probe reads
/// as `parent_tgid`.
#[inline(always)]
pub fn netns_inum() -> u32 {
    let nsproxy: u64 = read(current_task(), offsets::get(&OFF_TASK_NSPROXY));
    let net: u64 = read(nsproxy, offsets::get(&OFF_NSPROXY_NET_NS));
    read(net, offsets::get(&OFF_NET_NS_INUM))
}

/// A typed load: `base` is a pointer the verifier knows the BTF type of,
/// `offset` a verifier-known constant. The JIT makes it a plain load
/// guarded by an exception-table entry, not a helper call.
#[inline(always)]
pub fn load<T: Copy>(base: *const u8, offset: usize) -> T {
    // SAFETY: checked by the verifier against BTF; a fault reads 0.
    unsafe { core::ptr::read_volatile(base.add(offset).cast::<T>()) }
}

/// The `struct file *` behind descriptor `fd` of the current task, or 0,
/// by probe reads only (any program type): a plain number, which may be
/// passed to a global function such as the walk (see `parent_tgid` for why
/// not typed loads).
#[inline(always)]
pub fn file_of_fd_read(fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    let files: u64 = read(current_task(), offsets::get(&OFF_TASK_FILES));
    let fdt: u64 = read(files, offsets::get(&OFF_FILES_FDT));
    if fdt == 0 {
        return 0;
    }
    let max_fds: u32 = read(fdt, offsets::get(&OFF_FDTABLE_MAX_FDS));
    if fd as u32 >= max_fds {
        return 0;
    }
    let fd_array: u64 = read(fdt, offsets::get(&OFF_FDTABLE_FD));
    if fd_array == 0 {
        return 0;
    }
    read(fd_array + (fd as u64) * 8, 0)
}

/// As `file_of_fd_read`, with typed loads from the cast task and the slot
/// read as a plain word (`kfunc::word_at`): no probe read. The BTF tracepoint's
/// reads only (see `kfunc`).
#[inline(always)]
pub fn file_of_fd_cast(fd: i32) -> u64 {
    let slot = fd_slot(crate::kfunc::current_task(), fd);
    if slot == 0 {
        return 0;
    }
    crate::kfunc::word_at(slot)
}

/// The address of descriptor `fd`'s slot in `task`'s fd table (a plain
/// number), or 0.
#[inline(always)]
fn fd_slot(task: *const u8, fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    let files: *const u8 = load(task, offsets::get(&OFF_TASK_FILES) as usize);
    if files.is_null() {
        return 0;
    }
    let fdt: *const u8 = load(files, offsets::get(&OFF_FILES_FDT) as usize);
    if fdt.is_null() {
        return 0;
    }
    let max_fds: u32 = load(fdt, offsets::get(&OFF_FDTABLE_MAX_FDS) as usize);
    if fd as u32 >= max_fds {
        return 0;
    }
    let fd_array: u64 = load(fdt, offsets::get(&OFF_FDTABLE_FD) as usize);
    if fd_array == 0 {
        return 0;
    }
    fd_array + (fd as u64) * 8
}

/// The id of `cgrp`'s ancestor at `level` (`cgrp` itself at its own
/// level), by probe reads; the caller checks `level` against `cgrp`'s.
#[inline(always)]
pub fn cgroup_ancestor_id(o: &KernelOffsets, cgrp: u64, level: u32) -> u64 {
    let ancestor: u64 = read(cgrp, o.cgroup_ancestors + 8 * level);
    read(read::<u64>(ancestor, o.cgroup_kn), o.kernfs_node_id)
}

/// Is `cgrp` a cgroup of the v2 hierarchy (hierarchy id 0), not of a v1 one?
#[inline(always)]
pub fn is_cgroup_v2(o: &KernelOffsets, cgrp: u64) -> bool {
    let root: u64 = read(cgrp, o.cgroup_root);
    cgrp != 0 && read::<u32>(root, o.cgroup_root_hierarchy_id) == 0
}
