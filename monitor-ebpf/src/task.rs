//! Reading the current task's kernel structures at offsets taken from BTF.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use monitor_common::KernelOffsets;

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

/// tgid of the current task's parent (`real_parent`).
#[inline(always)]
pub fn parent_tgid(o: &KernelOffsets) -> u32 {
    let parent: u64 = read(current_task(), o.task_real_parent);
    read::<i32>(parent, o.task_tgid) as u32
}

/// Inode number of the current task's network namespace.
#[inline(always)]
pub fn netns_inum(o: &KernelOffsets) -> u32 {
    let nsproxy: u64 = read(current_task(), o.task_nsproxy);
    let net: u64 = read(nsproxy, o.nsproxy_net_ns);
    read(net, o.net_ns_inum)
}

/// The `struct file *` behind descriptor `fd` of the current task, or 0.
#[inline(always)]
pub fn file_of_fd(o: &KernelOffsets, fd: i32) -> u64 {
    if fd < 0 {
        return 0;
    }
    let files: u64 = read(current_task(), o.task_files);
    let fdt: u64 = read(files, o.files_fdt);
    // `struct fdtable` starts { max_fds; fd }: one read for both where the
    // layout is that one.
    let (max_fds, fd_array): (u32, u64) = if o.fdtable_fd == o.fdtable_max_fds + 8 {
        let pair: [u64; 2] = read(fdt, o.fdtable_max_fds);
        (pair[0] as u32, pair[1])
    } else {
        (read(fdt, o.fdtable_max_fds), read(fdt, o.fdtable_fd))
    };
    if fd as u32 >= max_fds {
        return 0;
    }
    if fd_array == 0 {
        return 0;
    }
    read(fd_array + (fd as u64) * 8, 0)
}
