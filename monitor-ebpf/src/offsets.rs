//! Struct offsets the verifier must see as constants: frozen read-only
//! globals the loader sets from the running kernel's BTF before the
//! programs are verified (`monitor_common::load_time_offsets` names them;
//! a name missing here fails the load). A typed load needs a constant
//! offset (`task::file_of_fd_cast`), and a constant lets the verifier drop the
//! branches a runtime offset makes it walk (`object::Window::field`'s
//! fallback read: 0.25 s more verification per start when these came from
//! the settings map, measured with strace on BPF_PROG_LOAD).

macro_rules! load_time_offsets {
    ($($name:ident),+ $(,)?) => {
        $(
            #[unsafe(no_mangle)]
            pub static $name: u32 = 0;
        )+
    };
}

load_time_offsets!(
    OFF_TASK_FILES,
    OFF_TASK_REAL_PARENT,
    OFF_TASK_TGID,
    OFF_TASK_COMM,
    OFF_TASK_PID,
    OFF_TASK_CGROUPS,
    OFF_CSS_SET_DFL_CGRP,
    OFF_CGROUP_LEVEL,
    OFF_CGROUP_ANCESTORS,
    OFF_CGROUP_KN,
    OFF_KERNFS_NODE_ID,
    OFF_TASK_NSPROXY,
    OFF_NSPROXY_NET_NS,
    OFF_NET_NS_INUM,
    OFF_FILES_FDT,
    OFF_FDTABLE_MAX_FDS,
    OFF_FDTABLE_FD,
    OFF_FILE_F_INODE,
    OFF_FILE_F_MODE,
    OFF_FILE_PATH,
    OFF_PATH_MNT,
    OFF_INODE_I_SB,
    OFF_INODE_I_INO,
    OFF_INODE_I_NLINK,
    OFF_INODE_I_MODE,
    OFF_INODE_I_GENERATION,
    OFF_SB_S_DEV,
    OFF_SB_S_MAGIC,
    OFF_PATH_DENTRY,
    OFF_DENTRY_PARENT,
    OFF_DENTRY_INODE,
    OFF_DENTRY_NAME_NAME,
    OFF_DENTRY_INLINE_NAME,
    OFF_MOUNT_PARENT,
    OFF_MOUNT_MOUNTPOINT,
    OFF_MOUNT_MNT_NS,
    OFF_MNT_NS_ID,
    OFF_VFSMOUNT_ROOT,
    OFF_VFSMOUNT_MNT_FLAGS,
    // Not offsets: the BTF ids of the structs `kfunc` casts to
    // (`monitor_common::CAST_TYPES`).
    BTF_ID_STRUCT_TASK,
    BTF_ID_STRUCT_FILE,
    BTF_ID_STRUCT_PATH,
    // The BTF id of a struct whose first member is an 8-byte integer
    // (`monitor_common::BTF_ID_WORD_SLOT`).
    BTF_ID_WORD_SLOT,
);

/// The value the loader set.
#[inline(always)]
pub fn get(offset: &u32) -> u32 {
    // SAFETY: a static; volatile so the compiler keeps the load the loader
    // patches instead of folding the 0 it was built with.
    unsafe { core::ptr::read_volatile(offset) }
}
