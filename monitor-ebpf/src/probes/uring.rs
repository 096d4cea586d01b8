//! File opens submitted through io_uring (`IORING_OP_OPENAT`, `OPENAT2`)
//! never pass the syscall hook. They are seen at their completion
//! (`io_uring_complete`), which runs in the submitting process or one of
//! its io-wq threads (same process, same fd table): a successful one is
//! judged on the object behind the new fd, like any open. The request's
//! name is freed by then, so none is reported. Failed requests, and opens
//! into a fixed-file slot (no fd), are not reported: the ring's set-up is
//! (`process::on_io_uring`), as a gap.
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use monitor_common::SYSCALL_IO_URING_OPEN;

use crate::{
    filter,
    maps::SETTINGS,
    probes::files::{self, OpenArgs},
    task::{file_of_fd, read},
};

/// `enum io_uring_op` values (uapi, stable).
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;

/// `io_uring_complete(ctx, req, cqe)`: runs for every completion of every
/// ring on the host, so the opcode is checked first.
#[raw_tracepoint(tracepoint = "io_uring_complete")]
pub fn uring_complete(ctx: RawTracePointContext) -> i32 {
    let _ = try_complete(&ctx);
    0
}

fn try_complete(ctx: &RawTracePointContext) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let o = &settings.offsets;
    let req: u64 = ctx.arg(1);
    let opcode: u8 = read(req, o.io_kiocb_opcode);
    if opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return None;
    }
    // struct io_uring_cqe { u64 user_data; s32 res; u32 flags; }
    let cqe: u64 = ctx.arg(2);
    let res: i32 = read(cqe, 8);
    let file_slot: u32 = read(req + o.io_kiocb_cmd as u64, o.io_open_file_slot);
    if res < 0 || file_slot != 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == settings.monitor_tgid {
        return None;
    }
    let m = filter::task_action(settings, pid_tgid)?;
    if !filter::files_matter(&m) {
        return None;
    }
    let file = file_of_fd(o, res);
    if file == 0 {
        return None;
    }
    let args = OpenArgs {
        syscall: SYSCALL_IO_URING_OPEN,
        dirfd: 0,
        path: 0,
        flags: read::<u32>(file, o.file_f_flags) as u64,
        mode: 0,
    };
    files::report(settings, &m, &args, res as i64, file)
}
