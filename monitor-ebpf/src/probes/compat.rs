//! The 32-bit syscall ABI on an x86_64 kernel (`int $0x80` from any
//! process, or a 32-bit program): other syscall numbers, arguments in
//! ebx/ecx/edx/esi. A monitored task's compat syscall is translated to the
//! native number and arguments, so an action cannot hide an open, a link, a
//! metadata change, a connect or a packet socket behind `int $0x80` (ia32's
//! `open` is number 5, native `fstat`).
//!
//! Whether a syscall is compat is the task's `TS_COMPAT` status bit, set on
//! entry of every 32-bit syscall and cleared only on the return to user
//! mode, after `sys_exit`.
use aya_ebpf::helpers::generated::bpf_get_current_task_btf;
use monitor_common::{
    NR_BIND, NR_CHMOD, NR_CHOWN, NR_CONNECT, NR_CREAT, NR_FCHMOD, NR_FCHMODAT, NR_FCHMODAT2,
    NR_FCHOWN, NR_FCHOWNAT, NR_FREMOVEXATTR, NR_FSETXATTR, NR_IO_URING_SETUP, NR_LCHOWN, NR_LINK,
    NR_LINKAT, NR_LREMOVEXATTR, NR_LSETXATTR, NR_MKDIR, NR_MKDIRAT, NR_MKNOD, NR_MKNODAT, NR_OPEN,
    NR_OPEN_BY_HANDLE_AT, NR_OPENAT, NR_OPENAT2, NR_PIDFD_GETFD, NR_REMOVEXATTR, NR_REMOVEXATTRAT,
    NR_RENAME, NR_RENAMEAT, NR_RENAMEAT2, NR_RMDIR, NR_SETXATTR, NR_SETXATTRAT, NR_SOCKET,
    NR_SYMLINK, NR_SYMLINKAT, NR_TRUNCATE, NR_UNLINK, NR_UNLINKAT, NR_UTIME, NR_UTIMENSAT,
    PT_REGS_BX, PT_REGS_CX, PT_REGS_DX, PT_REGS_SI, TASK_THREAD_INFO_STATUS,
};

use crate::probes::syscalls::Regs;

/// `arch/x86/include/asm/thread_info.h`: a 32-bit syscall is active.
const TS_COMPAT: u32 = 0x0002;

const IA32_OPEN: u64 = 5;
const IA32_CREAT: u64 = 8;
const IA32_LINK: u64 = 9;
const IA32_RENAME: u64 = 38;
const IA32_SYMLINK: u64 = 83;
const IA32_SOCKETCALL: u64 = 102;
const IA32_OPENAT: u64 = 295;
const IA32_RENAMEAT: u64 = 302;
const IA32_LINKAT: u64 = 303;
const IA32_SYMLINKAT: u64 = 304;
const IA32_OPEN_BY_HANDLE_AT: u64 = 342;
const IA32_UNLINK: u64 = 10;
const IA32_MKDIR: u64 = 39;
const IA32_RMDIR: u64 = 40;
const IA32_TRUNCATE: u64 = 92;
const IA32_MKDIRAT: u64 = 296;
/// Native `rt_sigprocmask`: every process's calls of it pay the ABI check
/// before they are left alone, +18 ns each (`bench-ab --workload shared
/// --outside`, 12 rounds); 7,919 of a bench build's 1.92 M syscalls.
const IA32_MKNOD: u64 = 14;
const IA32_MKNODAT: u64 = 297;
const IA32_UNLINKAT: u64 = 301;
const IA32_RENAMEAT2: u64 = 353;
const IA32_SOCKET: u64 = 359;
const IA32_BIND: u64 = 361;
const IA32_CONNECT: u64 = 362;
const IA32_IO_URING_SETUP: u64 = 425;
const IA32_OPENAT2: u64 = 437;
const IA32_PIDFD_GETFD: u64 = 438;
/// Metadata changes (`metadata.rs`). Not translated, as their numbers are
/// native calls every process makes often, each of which would pay the ABI
/// check: the 16-bit `lchown` (16, native `ioctl`), `utimes` (271,
/// `ppoll`) and `futimesat` (299, `recvmmsg`). The others' native twins
/// are rare: `rt_sigreturn` (15), `shmat` (30), `umask` (95),
/// `clock_gettime` (228, answered in the vDSO where the clock source
/// allows), `io_destroy`, `perf_event_open`, `syncfs`, `mbind`.
const IA32_CHMOD: u64 = 15;
const IA32_UTIME: u64 = 30;
const IA32_FCHMOD: u64 = 94;
const IA32_FCHOWN16: u64 = 95;
const IA32_CHOWN16: u64 = 182;
const IA32_LCHOWN32: u64 = 198;
const IA32_FCHOWN32: u64 = 207;
const IA32_CHOWN32: u64 = 212;
const IA32_SETXATTR: u64 = 226;
const IA32_LSETXATTR: u64 = 227;
const IA32_FSETXATTR: u64 = 228;
const IA32_REMOVEXATTR: u64 = 235;
const IA32_LREMOVEXATTR: u64 = 236;
const IA32_FREMOVEXATTR: u64 = 237;
const IA32_FCHOWNAT: u64 = 298;
const IA32_FCHMODAT: u64 = 306;
const IA32_UTIMENSAT: u64 = 320;
const IA32_UTIMENSAT_TIME64: u64 = 412;
/// `socketcall`'s call numbers for `socket`, `bind` and `connect`.
const SYS_SOCKET: u64 = 1;
const SYS_BIND: u64 = 2;
const SYS_CONNECT: u64 = 3;

/// The native number of a watched ia32 syscall, or 0.
#[inline(always)]
fn native_nr(nr: u64) -> u64 {
    match nr {
        IA32_OPEN => NR_OPEN,
        IA32_CREAT => NR_CREAT,
        IA32_LINK => NR_LINK,
        IA32_RENAME => NR_RENAME,
        IA32_SYMLINK => NR_SYMLINK,
        IA32_SOCKETCALL => NR_CONNECT,
        IA32_OPENAT => NR_OPENAT,
        IA32_RENAMEAT => NR_RENAMEAT,
        IA32_LINKAT => NR_LINKAT,
        IA32_SYMLINKAT => NR_SYMLINKAT,
        IA32_OPEN_BY_HANDLE_AT => NR_OPEN_BY_HANDLE_AT,
        IA32_UNLINK => NR_UNLINK,
        IA32_MKDIR => NR_MKDIR,
        IA32_RMDIR => NR_RMDIR,
        IA32_TRUNCATE => NR_TRUNCATE,
        IA32_MKDIRAT => NR_MKDIRAT,
        IA32_MKNOD => NR_MKNOD,
        IA32_MKNODAT => NR_MKNODAT,
        IA32_UNLINKAT => NR_UNLINKAT,
        IA32_RENAMEAT2 => NR_RENAMEAT2,
        IA32_SOCKET => NR_SOCKET,
        IA32_BIND => NR_BIND,
        IA32_CONNECT => NR_CONNECT,
        IA32_IO_URING_SETUP => NR_IO_URING_SETUP,
        IA32_OPENAT2 => NR_OPENAT2,
        IA32_PIDFD_GETFD => NR_PIDFD_GETFD,
        IA32_CHMOD => NR_CHMOD,
        IA32_UTIME => NR_UTIME,
        IA32_FCHMOD => NR_FCHMOD,
        IA32_FCHOWN16 | IA32_FCHOWN32 => NR_FCHOWN,
        IA32_CHOWN16 | IA32_CHOWN32 => NR_CHOWN,
        IA32_LCHOWN32 => NR_LCHOWN,
        IA32_SETXATTR => NR_SETXATTR,
        IA32_LSETXATTR => NR_LSETXATTR,
        IA32_FSETXATTR => NR_FSETXATTR,
        IA32_REMOVEXATTR => NR_REMOVEXATTR,
        IA32_LREMOVEXATTR => NR_LREMOVEXATTR,
        IA32_FREMOVEXATTR => NR_FREMOVEXATTR,
        IA32_FCHOWNAT => NR_FCHOWNAT,
        IA32_FCHMODAT => NR_FCHMODAT,
        IA32_UTIMENSAT | IA32_UTIMENSAT_TIME64 => NR_UTIMENSAT,
        // The same numbers in both ABIs.
        NR_FCHMODAT2 => NR_FCHMODAT2,
        NR_SETXATTRAT => NR_SETXATTRAT,
        NR_REMOVEXATTRAT => NR_REMOVEXATTRAT,
        _ => 0,
    }
}

/// Could `nr` be a watched syscall of the 32-bit ABI?
#[inline(always)]
pub fn is_candidate(nr: u64) -> bool {
    native_nr(nr) != 0
}

/// Is the current task inside a 32-bit syscall? A direct load through the
/// BTF task pointer (the verifier checks the constant offset against
/// `task_struct`; userspace checked it is `thread_info.status`): half the
/// cost of a probe read, and `fstat`/`lseek`/`mmap` of every process pay it.
#[inline(always)]
pub fn in_compat_syscall() -> bool {
    // SAFETY: plain helper call; it returns a trusted, non-null pointer.
    let task = unsafe { bpf_get_current_task_btf() }.cast::<u8>();
    // SAFETY: the verifier turns this into a checked kernel load.
    let status = unsafe {
        core::ptr::read_volatile(task.add(TASK_THREAD_INFO_STATUS as usize).cast::<u32>())
    };
    status & TS_COMPAT != 0
}

/// The native number and first four arguments of a compat syscall, or
/// `None` when it is not one the monitor watches. The kernel uses only the
/// low 32 bits of each register: so do we (a 64-bit caller of `int $0x80`
/// can put anything in the upper halves).
#[inline(always)]
pub fn translate<R: Regs>(regs: &R, nr: u64) -> Option<(u64, [u64; 4])> {
    let mut native = native_nr(nr);
    if native == 0 {
        return None;
    }
    let low = |offset| regs.get(offset) & 0xffff_ffff;
    let mut args = [
        low(PT_REGS_BX),
        low(PT_REGS_CX),
        low(PT_REGS_DX),
        low(PT_REGS_SI),
    ];
    if nr == IA32_SOCKETCALL {
        // socketcall(call, u32 args[]): socket's family, type and protocol,
        // or bind's and connect's fd, address and length.
        native = match args[0] {
            SYS_SOCKET => NR_SOCKET,
            SYS_BIND => NR_BIND,
            SYS_CONNECT => NR_CONNECT,
            _ => return None,
        };
        // SAFETY: bpf_probe_read_user checks the address.
        let packed: [u32; 3] =
            unsafe { aya_ebpf::helpers::bpf_probe_read_user(args[1] as *const [u32; 3]) }.ok()?;
        args = [packed[0] as u64, packed[1] as u64, packed[2] as u64, 0];
    }
    Some((native, args))
}
