//! Kernel programs of the build-action monitor.
//!
//! One `sys_exit` raw tracepoint reports every monitored open and connect
//! with its result. On x86_64 the syscall's arguments are still in the saved
//! `pt_regs` at exit, so no entry hook and no per-thread map are needed: the
//! first check on every syscall of every process is the syscall number, read
//! from `orig_ax`. `sched_process_exec`/`exit` track monitored processes.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod dpath;
mod emit;
mod files;
mod filter;
mod maps;
mod net;
mod process;
mod task;

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use monitor_common::{
    NR_CONNECT, NR_CREAT, NR_OPEN, NR_OPENAT, NR_OPENAT2, PT_REGS_DI, PT_REGS_DX, PT_REGS_ORIG_AX,
    PT_REGS_R10, PT_REGS_SI, SCOPE_FILES,
};

use crate::{maps::SETTINGS, task::read};

/// A finished syscall of a monitored task.
pub struct Syscall {
    pub nr: u64,
    /// The first four arguments (rdi, rsi, rdx, r10).
    pub args: [u64; 4],
    pub ret: i64,
    pub action_cgroup_id: u64,
    pub scope: u32,
}

#[inline(always)]
fn is_file_syscall(nr: u64) -> bool {
    nr == NR_OPENAT || nr == NR_OPEN || nr == NR_OPENAT2 || nr == NR_CREAT
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let regs: u64 = ctx.arg(0);
    let nr: u64 = read(regs, PT_REGS_ORIG_AX);
    let is_file = is_file_syscall(nr);
    if !is_file && nr != NR_CONNECT {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    if (bpf_get_current_pid_tgid() >> 32) as u32 == settings.monitor_tgid {
        return None;
    }
    let m = filter::current_action(settings)?;
    if is_file && m.flags & SCOPE_FILES == 0 {
        return None;
    }
    let call = Syscall {
        nr,
        args: [
            read(regs, PT_REGS_DI),
            read(regs, PT_REGS_SI),
            read(regs, PT_REGS_DX),
            read(regs, PT_REGS_R10),
        ],
        ret: ctx.arg(1),
        action_cgroup_id: m.action_cgroup_id,
        scope: m.scope,
    };
    if is_file {
        files::on_exit(settings, &call)
    } else {
        net::on_exit(settings, &call)
    }
}

/// The cost floor for benchmarks (`monitor bench-floor`): an empty program
/// on the same hook. Never attached by the monitor itself.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn floor(_ctx: RawTracePointContext) -> i32 {
    0
}

#[raw_tracepoint(tracepoint = "sched_process_exec")]
pub fn proc_exec(_ctx: RawTracePointContext) -> i32 {
    let _ = try_proc_exec();
    0
}

#[inline(always)]
fn try_proc_exec() -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let m = filter::current_action(settings)?;
    process::on_exec(settings, &m)
}

#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn proc_exit(_ctx: RawTracePointContext) -> i32 {
    let _ = try_proc_exit();
    0
}

#[inline(always)]
fn try_proc_exit() -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Threads end too; only the end of the whole process matters.
    if (pid_tgid >> 32) as u32 != pid_tgid as u32 {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let m = filter::current_action(settings)?;
    process::on_exit(settings, &m);
    Some(())
}

/// Host builds (`cargo build --workspace`) compile the crate as a plain
/// binary; only the BPF target produces the programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
