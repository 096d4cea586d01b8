//! Kernel programs of the build-action monitor.
//!
//! `sys_enter`/`sys_exit` raw tracepoints dispatch on the syscall number:
//! the entry remembers the arguments of monitored threads, the exit reports
//! the syscall with its result. The first check on every syscall is the
//! syscall number (a register read), so unmonitored work pays as little as a
//! syscall hook can. `sched_process_exec`/`exit` track monitored processes.
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
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use monitor_common::{
    LOST_PENDING_FULL, NR_CONNECT, NR_CREAT, NR_OPEN, NR_OPENAT, NR_OPENAT2, PT_REGS_DI,
    PT_REGS_DX, PT_REGS_ORIG_AX, PT_REGS_R10, PT_REGS_SI, PendingSyscall, SCOPE_FILES,
};

use crate::maps::{PENDING, SETTINGS, count_lost};

#[inline(always)]
fn is_file_syscall(nr: u64) -> bool {
    nr == NR_OPENAT || nr == NR_OPEN || nr == NR_OPENAT2 || nr == NR_CREAT
}

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn sys_enter(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_enter(&ctx);
    0
}

#[inline(always)]
fn try_sys_enter(ctx: &RawTracePointContext) -> Option<()> {
    let nr: u64 = ctx.arg(1);
    let is_file = is_file_syscall(nr);
    if !is_file && nr != NR_CONNECT {
        return None;
    }
    let settings = SETTINGS.get(0)?;
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.monitor_tgid {
        return None;
    }
    let m = filter::current_action(settings)?;
    if is_file && m.flags & SCOPE_FILES == 0 {
        return None;
    }
    let regs: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel checks the addresses.
    let arg =
        |off: u32| unsafe { bpf_probe_read_kernel((regs + off as u64) as *const u64) }.unwrap_or(0);
    let pending = PendingSyscall {
        nr,
        action_cgroup_id: m.action_cgroup_id,
        args: [
            arg(PT_REGS_DI),
            arg(PT_REGS_SI),
            arg(PT_REGS_DX),
            arg(PT_REGS_R10),
        ],
        scope: m.scope,
        _pad: 0,
    };
    if PENDING.insert(&pid_tgid, &pending, 0).is_err() {
        count_lost(LOST_PENDING_FULL);
    }
    Some(())
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    let _ = try_sys_exit(&ctx);
    0
}

#[inline(always)]
fn try_sys_exit(ctx: &RawTracePointContext) -> Option<()> {
    let regs: u64 = ctx.arg(0);
    // SAFETY: bpf_probe_read_kernel checks the address.
    let nr: u64 =
        unsafe { bpf_probe_read_kernel((regs + PT_REGS_ORIG_AX as u64) as *const u64) }.ok()?;
    if !is_file_syscall(nr) && nr != NR_CONNECT {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let pending = unsafe { *PENDING.get(&pid_tgid)? };
    let _ = PENDING.remove(&pid_tgid);
    if pending.nr != nr {
        return None;
    }
    let ret: i64 = ctx.arg(1);
    let settings = SETTINGS.get(0)?;
    if nr == NR_CONNECT {
        net::on_exit(settings, &pending, ret)
    } else {
        files::on_exit(settings, &pending, ret)
    }
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
