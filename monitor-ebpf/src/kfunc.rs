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
    offsets::{BTF_ID_STRUCT_FILE, BTF_ID_STRUCT_PATH, BTF_ID_STRUCT_TASK, BTF_ID_WORD_SLOT, get},
    task::load,
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

/// The 8-byte word at kernel address `addr`, as a plain number: `addr`
/// cast to a struct whose first member is an 8-byte integer (the loader
/// picks one), loaded at offset 0. Any address, computed at run time too
/// (a typed load needs a constant offset); a fault reads 0, as every load
/// through a cast does. A pointer loaded through a typed cast stays typed
/// to the verifier, which allows it no arithmetic: the walk's pointers
/// went through map memory to become numbers (a per-CPU map lookup, a
/// store and a load each) before this.
#[inline(always)]
pub fn word_at(addr: u64) -> u64 {
    load(rdonly_cast(addr, get(&BTF_ID_WORD_SLOT)), 0)
}
