//! The one syscall hook: `sys_exit` (BTF tracepoint, raw tracepoint as the
//! fallback). The first check on every syscall of every process is the
//! syscall number; monitored opens, name and metadata changes, links,
//! connects, packet sockets and io_uring set-ups go on to their family's
//! module. A monitored task's 32-bit (compat) syscalls
//! are translated to native ones first (`compat.rs`).
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use monitor_common::{
    NR_BIND, NR_CONNECT, NR_CREAT, NR_IO_URING_SETUP, NR_MKDIR, NR_MKDIRAT, NR_MKNOD, NR_MKNODAT,
    NR_OPEN, NR_OPEN_BY_HANDLE_AT, NR_OPENAT, NR_OPENAT2, NR_PIDFD_GETFD, NR_RMDIR, NR_SOCKET,
    NR_TRUNCATE, NR_UNLINK, NR_UNLINKAT, PT_REGS_DI, PT_REGS_DX, PT_REGS_ORIG_AX, PT_REGS_R10,
    PT_REGS_SI, Settings,
};

use crate::{
    filter,
    maps::SETTINGS,
    object::{Copied, Reader, Typed},
    probes::{compat, files, links, metadata, net, packet, process},
    task::read,
    verdicts,
};

/// A finished syscall of a monitored task.
pub struct Syscall {
    pub nr: u64,
    /// The first four arguments (rdi, rsi, rdx, r10).
    pub args: [u64; 4],
    pub ret: i64,
    pub m: filter::Match,
}

#[inline(always)]
fn is_file_syscall(nr: u64) -> bool {
    nr == NR_OPENAT
        || nr == NR_OPEN
        || nr == NR_OPENAT2
        || nr == NR_CREAT
        || nr == NR_OPEN_BY_HANDLE_AT
        || nr == NR_PIDFD_GETFD
        || nr == NR_BIND
        || metadata::is_metadata_syscall(nr)
        || matches!(
            nr,
            NR_UNLINK
                | NR_UNLINKAT
                | NR_RMDIR
                | NR_MKDIR
                | NR_MKDIRAT
                | NR_MKNOD
                | NR_MKNODAT
                | NR_TRUNCATE
        )
}

/// How the saved user registers are read: directly through the typed
/// pointer a BTF tracepoint gets, or with a probe read from a raw tracepoint.
pub trait Regs {
    /// How this program reads an open file's structures.
    type Objects: Reader;
    fn get(&self, offset: u32) -> u64;
}

/// `tp_btf`: `regs` is a trusted `struct pt_regs *`; a load is a plain load
/// (the verifier checks each offset against BTF). Offsets must be constants.
struct BtfRegs(*const u8);

impl Regs for BtfRegs {
    type Objects = Typed;
    #[inline(always)]
    fn get(&self, offset: u32) -> u64 {
        // SAFETY: the verifier turns this into a checked kernel load.
        unsafe { core::ptr::read_volatile(self.0.add(offset as usize).cast::<u64>()) }
    }
}

/// `raw_tp`: `regs` is an untyped kernel address.
struct ProbedRegs(u64);

impl Regs for ProbedRegs {
    type Objects = Copied;
    #[inline(always)]
    fn get(&self, offset: u32) -> u64 {
        read(self.0, offset)
    }
}

/// Preferred: the BTF tracepoint (no helper call on the path every syscall
/// of every process takes).
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_btf(ctx: BtfTracePointContext) -> i32 {
    let regs: *const u8 = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    let _ = on_sys_exit(&BtfRegs(regs), ret);
    0
}

/// Fallback for kernels that refuse BTF tracepoints.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = on_sys_exit(&ProbedRegs(ctx.arg(0)), ctx.arg(1));
    0
}

#[inline(always)]
fn is_watched(nr: u64) -> bool {
    is_file_syscall(nr)
        || links::is_link_syscall(nr)
        || nr == NR_CONNECT
        || nr == NR_IO_URING_SETUP
        || nr == NR_SOCKET
}

#[inline(always)]
fn on_sys_exit<R: Regs>(regs: &R, ret: i64) -> Option<()> {
    let nr = regs.get(PT_REGS_ORIG_AX);
    let native = is_watched(nr);
    // fstat, lseek, mmap and rt_sigprocmask share numbers with watched
    // ia32 calls (open, creat, link, mknod): for them the ABI check (one
    // kernel read) comes first, before any map lookup.
    if !native && (!compat::is_candidate(nr) || !compat::in_compat_syscall()) {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let m = verdicts::task_action(settings, R::Objects::pid_tgid())?;
    // Every watched number means something else in the other ABI (native
    // openat is ia32 remap_file_pages): the ABI decides, for each call.
    let (nr, args) = if !native || compat::in_compat_syscall() {
        compat::translate(regs, nr)?
    } else if native {
        let args = [
            regs.get(PT_REGS_DI),
            regs.get(PT_REGS_SI),
            regs.get(PT_REGS_DX),
            regs.get(PT_REGS_R10),
        ];
        (nr, args)
    } else {
        return None;
    };
    dispatch::<R::Objects>(settings, Syscall { nr, args, ret, m })
}

#[inline(always)]
fn dispatch<O: Reader>(settings: &Settings, call: Syscall) -> Option<()> {
    let is_file = is_file_syscall(call.nr);
    let is_link = links::is_link_syscall(call.nr);
    if (is_file || is_link) && !filter::files_matter(&call.m) {
        if is_link {
            let _ = links::on_outside_symlink(settings, &call);
        }
        return None;
    }
    if is_link {
        // The name made (for planted links), then the name written.
        let _ = links::on_exit::<O>(settings, &call);
    }
    if is_file || is_link {
        files::on_exit::<O>(settings, &call)
    } else if call.nr == NR_CONNECT {
        net::on_exit(settings, &call)
    } else if call.nr == NR_SOCKET {
        packet::on_exit(settings, &call)
    } else {
        process::on_io_uring(settings, &call)
    }
}

/// The cost floor for benchmarks (`monitor bench-floor`): an empty program
/// on the same hook. Never attached by the monitor itself.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor(_ctx: RawTracePointContext) -> i32 {
    0
}
