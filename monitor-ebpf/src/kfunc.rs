//! Kernel functions (kfuncs) the programs call. aya 0.14 cannot emit a
//! kfunc call, so each is called as a helper whose number no kernel has
//! (`monitor_common::KFUNC_MARK_*`); the loader rewrites every such call
//! into the kfunc call before the kernel sees the program
//! (`monitor/src/kernel/kfuncs.rs`). Only the BTF tracepoint's code calls
//! them: when the kernel lacks a kfunc, that program is refused and the
//! syscall hook falls back to the raw tracepoint, which reads with probe
//! reads.
use monitor_common::KFUNC_MARK_RDONLY_CAST;

use crate::{
    maps::SCRATCH,
    offsets::{
        BTF_ID_FILE_SLOT, BTF_ID_STRUCT_DENTRY, BTF_ID_STRUCT_FILE, BTF_ID_STRUCT_MNT_NAMESPACE,
        BTF_ID_STRUCT_MOUNT, BTF_ID_STRUCT_PATH, BTF_ID_STRUCT_TASK, BTF_ID_STRUCT_VFSMOUNT, get,
    },
};

/// `bpf_rdonly_cast(ptr, btf_id)` (kernel 6.2+): `ptr` as a read-only,
/// untrusted pointer of the BTF type `btf_id`. Loads through it are plain
/// loads the JIT guards with an exception-table entry (a fault reads 0),
/// not helper calls; the verifier inlines the call itself into a move.
#[inline(always)]
fn rdonly_cast(ptr: u64, btf_id: u32) -> *const u8 {
    // SAFETY: a call of a helper number the loader rewrites into the kfunc
    // call; the kernel checks the call against the kfunc's BTF prototype.
    unsafe {
        let cast: unsafe extern "C" fn(u64, u32) -> *const u8 =
            core::mem::transmute(KFUNC_MARK_RDONLY_CAST as usize);
        cast(ptr, btf_id)
    }
}

/// The current task as an untrusted typed pointer. Loads through the
/// helper's trusted one make the verifier look each loaded pointer's type
/// up by name in the kernel's BTF (is it still trusted?), a scan each time
/// it meets the load on a path: a fifth of the start's CPU.
#[inline(always)]
pub fn current_task() -> *const u8 {
    rdonly_cast(crate::task::current_task(), get(&BTF_ID_STRUCT_TASK))
}

/// `file` (a `struct file *` held as a number) as a typed pointer.
#[inline(always)]
pub fn as_file(file: u64) -> *const u8 {
    rdonly_cast(file, get(&BTF_ID_STRUCT_FILE))
}

/// `path` (a `struct path *` held as a number) as a typed pointer.
#[inline(always)]
pub fn as_path(path: u64) -> *const u8 {
    rdonly_cast(path, get(&BTF_ID_STRUCT_PATH))
}

#[inline(always)]
pub fn as_dentry(dentry: u64) -> *const u8 {
    rdonly_cast(dentry, get(&BTF_ID_STRUCT_DENTRY))
}

/// `mount`: a `struct mount *` (the mount around a `struct vfsmount`).
#[inline(always)]
pub fn as_mount(mount: u64) -> *const u8 {
    rdonly_cast(mount, get(&BTF_ID_STRUCT_MOUNT))
}

#[inline(always)]
pub fn as_vfsmount(vfsmount: u64) -> *const u8 {
    rdonly_cast(vfsmount, get(&BTF_ID_STRUCT_VFSMOUNT))
}

#[inline(always)]
pub fn as_mnt_namespace(ns: u64) -> *const u8 {
    rdonly_cast(ns, get(&BTF_ID_STRUCT_MNT_NAMESPACE))
}

/// The fd table slot at `slot` as a typed pointer: its load at offset 0 is
/// the `struct file *` (the loader picks a struct that starts with one).
#[inline(always)]
pub fn as_file_slot(slot: u64) -> *const u8 {
    rdonly_cast(slot, get(&BTF_ID_FILE_SLOT))
}

/// `typed` (a pointer the verifier knows the type of) as a plain number,
/// which a global function may take and arithmetic may use: stored into a
/// map value and read back (map memory holds no types; storing a pointer
/// there is allowed to the privileged programs these are). 0 if the
/// scratch map is missing.
#[inline(always)]
pub fn plain(typed: u64) -> u64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    unsafe {
        let slot = core::ptr::addr_of_mut!((*scratch).plain);
        core::ptr::write_volatile(slot, typed);
        core::ptr::read_volatile(slot)
    }
}
