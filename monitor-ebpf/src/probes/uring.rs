//! File opens submitted through io_uring (`IORING_OP_OPENAT`, `OPENAT2`)
//! never pass the syscall hook. Both io_uring tracepoints run for every
//! request of every ring on the host, so the opcode is checked first, then
//! the action filter.
//!
//! * Submission (`io_uring_submit_req`, after the request was prepared, in
//!   the submitting task): the kernel's own copy of the name
//!   (`req->open.filename`, freed before completion) is kept per request in
//!   `URING_NAMES`.
//! * Completion (`io_uring_complete`, in the submitting process or one of
//!   its io-wq threads: same fd table and cwd): a successful open is judged
//!   on the object like any open: the file behind the new fd or, for a
//!   direct descriptor (`file_index` set, `IORING_FILE_INDEX_ALLOC` too),
//!   the file in the ring's fixed-file slot; the name kept rides along. A
//!   failed one is reported with the name kept, resolved against the
//!   request's dirfd like a failed syscall open; without one (a request
//!   that failed in preparation, or whose name was evicted by more than
//!   `NAMES_IN_FLIGHT` opens in flight) it is reported unnamed, never
//!   dropped.
//! * A request whose success posts no completion (`IOSQE_CQE_SKIP_SUCCESS`)
//!   is judged by its name at submission instead (result 0: not known yet);
//!   a `BIND` or `FSETXATTR` so submitted without a name (none is readable
//!   then), a `SOCKET` on the family and type it asked for.
//!
//! * Name changes (`UNLINKAT`, `MKDIRAT`, `RENAMEAT`, `LINKAT`,
//!   `SYMLINKAT`) are judged at submission on the name they write (the new
//!   name of a rename or link), as writes, like their syscalls; the result
//!   is not known yet. A rename's old name is judged too.
//! * An extended attribute set by name (`SETXATTR`) is judged at
//!   submission like a name change; one set through a descriptor
//!   (`FSETXATTR`) at its completion, on the file it changed.
//! * A packet socket made by a `SOCKET` request is judged at its
//!   completion as `socket(2)` is (`packet.rs`).
//! * A unix socket bound to a name (`BIND`, 6.11+) is judged at its
//!   completion on the name the socket now has, as the kernel keeps it:
//!   where the request held the address it copied changed within 6.18
//!   (a message header, then the bare address), and the socket's own
//!   name is where the kernel put the file. A failed bind made no file.
//!
//! An fd or slot closed and
//! reused by another thread before the completion names another object, as
//! for syscall opens. (fentry/fexit on `io_openat2` would judge skipped
//! completions on their object and spare other requests, but this kernel
//! refuses to load fentry programs: EPERM.)
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_probe_read_kernel_str},
    macros::{map, raw_tracepoint},
    maps::{LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
};
use monitor_common::{
    AF_UNIX, PATH_CAPACITY, SYSCALL_BIND, SYSCALL_IO_URING_OPEN, SYSCALL_LINK, SYSCALL_MKDIR,
    SYSCALL_RENAME, SYSCALL_RENAME_FROM, SYSCALL_SETXATTR, SYSCALL_SYMLINK, SYSCALL_UNLINK,
    Settings,
};

use crate::{
    filter::{self, Match},
    maps::SETTINGS,
    object::Copied,
    probes::{
        files::{self, AT_FDCWD, OpenArgs},
        packet,
    },
    task::{file_of_fd_read, read},
};

/// `enum io_uring_op` values (uapi, stable).
const IORING_OP_OPENAT: u8 = 18;
const IORING_OP_OPENAT2: u8 = 28;
const IORING_OP_RENAMEAT: u8 = 35;
const IORING_OP_UNLINKAT: u8 = 36;
const IORING_OP_MKDIRAT: u8 = 37;
const IORING_OP_SYMLINKAT: u8 = 38;
const IORING_OP_LINKAT: u8 = 39;
const IORING_OP_FSETXATTR: u8 = 41;
const IORING_OP_SETXATTR: u8 = 42;
const IORING_OP_SOCKET: u8 = 45;
const IORING_OP_BIND: u8 = 56;
/// `REQ_F_CQE_SKIP`: no completion is posted if the request succeeds (the
/// kernel's bit is the uapi `IOSQE_CQE_SKIP_SUCCESS_BIT`, 6).
const REQ_F_CQE_SKIP: u64 = 1 << 6;
/// `sqe->file_index` asking the kernel to pick a free slot (uapi).
const IORING_FILE_INDEX_ALLOC: u32 = u32::MAX;
/// `io_rsrc_node.file_ptr` keeps flag bits (`FFS_NOWAIT`, `FFS_ISREG`) low.
const FILE_PTR_MASK: u64 = !3;
/// Open requests whose name is kept at once (4 KiB each). A request whose
/// entry was evicted is still judged on its object; a failed one is
/// reported without its name.
const NAMES_IN_FLIGHT: u32 = 512;

/// The name an open request passed, as the kernel copied it.
#[repr(C)]
pub struct UringName {
    pub name: [u8; PATH_CAPACITY],
}

/// Request address → its name, from submission to completion.
#[map]
static URING_NAMES: LruHashMap<u64, UringName> = LruHashMap::with_max_entries(NAMES_IN_FLIGHT, 0);

/// Where a name is copied before it goes into `URING_NAMES` (too big for
/// the stack).
#[map]
static URING_STAGE: PerCpuArray<UringName> = PerCpuArray::with_max_entries(1, 0);

/// A monitored task whose file opens matter, else `None`: checked right
/// after the opcode, as both hooks run for every request on the host.
#[inline(always)]
fn monitored(settings: &Settings) -> Option<Match> {
    let m = filter::task_action(settings, bpf_get_current_pid_tgid())?;
    filter::files_matter(&m).then_some(m)
}

/// `io_uring_submit_req(req)`: keep the name of a monitored task's open;
/// judge a name change (or an open that posts no completion) now.
#[raw_tracepoint(tracepoint = "io_uring_submit_req")]
pub fn uring_submit(ctx: RawTracePointContext) -> i32 {
    let _ = on_submit(&ctx);
    0
}

fn on_submit(ctx: &RawTracePointContext) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let req: u64 = ctx.arg(0);
    let opcode: u8 = read(req, settings.offsets.io_kiocb_opcode);
    let judged_at_completion = matches!(
        opcode,
        IORING_OP_BIND | IORING_OP_FSETXATTR | IORING_OP_SOCKET
    );
    if judged_at_completion && !posts_no_success(settings, req) {
        return None;
    }
    if opcode == IORING_OP_SOCKET {
        return socket_request(settings, req);
    }
    let change = name_change(settings, opcode);
    if change == 0
        && opcode != IORING_OP_OPENAT
        && opcode != IORING_OP_OPENAT2
        && !judged_at_completion
    {
        return None;
    }
    let m = monitored(settings)?;
    // One report call site: the verifier checks it once.
    let args = if judged_at_completion {
        unnamed_change(opcode)
    } else if change != 0 {
        name_change_args(settings, req, opcode, change)?
    } else {
        keep_name(settings, req)?
    };
    if opcode == IORING_OP_RENAMEAT {
        // The file leaves its old name too: judged at the completion (one
        // report site per program), with the name kept now.
        let cmd = req + settings.offsets.io_kiocb_cmd as u64;
        let _ = stash_name(req, read(cmd, settings.offsets.io_rename_oldpath), settings);
    }
    files::report::<Copied>(settings, &m, &args, 0, 0);
    Some(())
}

/// Whether `req`'s success posts no completion (`IOSQE_CQE_SKIP_SUCCESS`).
#[inline(always)]
fn posts_no_success(settings: &Settings, req: u64) -> bool {
    read::<u64>(req, settings.offsets.io_kiocb_flags) & REQ_F_CQE_SKIP != 0
}

/// A `BIND` or `FSETXATTR` as a write with no name. So is one whose
/// success posts no completion judged, at submission: before the bind
/// there is no socket name to read (and where the request keeps the
/// address it copied changed within 6.18), and the descriptor's file is
/// assigned at issue: a write no declaration covers (such requests are no
/// build's habit; a hostile one cannot use them to pass unseen). A
/// completed `FSETXATTR` carries its file beside it.
#[inline(always)]
fn unnamed_change(opcode: u8) -> OpenArgs {
    let syscall = if opcode == IORING_OP_BIND {
        SYSCALL_BIND
    } else {
        SYSCALL_SETXATTR
    };
    OpenArgs::name_write(syscall, AT_FDCWD, 0, true)
}

/// A rename request's old name (`name`: the copy kept at submission), as a
/// write of that name.
#[inline(always)]
fn rename_from_args(settings: &Settings, req: u64, name: u64) -> OpenArgs {
    let o = &settings.offsets;
    let dirfd = read(req + o.io_kiocb_cmd as u64, o.io_rename_old_dfd);
    OpenArgs::name_write(SYSCALL_RENAME_FROM, dirfd, name, true)
}

/// The `SYSCALL_*` id of a name-changing opcode, or 0.
#[inline(always)]
fn name_change(settings: &Settings, opcode: u8) -> u32 {
    match opcode {
        IORING_OP_RENAMEAT => SYSCALL_RENAME,
        IORING_OP_UNLINKAT => SYSCALL_UNLINK,
        IORING_OP_MKDIRAT => SYSCALL_MKDIR,
        IORING_OP_SYMLINKAT => SYSCALL_SYMLINK,
        IORING_OP_LINKAT => SYSCALL_LINK,
        IORING_OP_SETXATTR if xattr_name_known(settings) => SYSCALL_SETXATTR,
        _ => 0,
    }
}

/// Whether `io_xattr.filename` was found (kernels since 5.19 have it).
#[inline(always)]
fn xattr_name_known(settings: &Settings) -> bool {
    settings.offsets.io_xattr_filename != 0
}

/// The name a name-changing request writes (the new name of a rename or
/// link; the file a `SETXATTR` changes, relative to the cwd), as the
/// kernel copied it, as a write of that name. Judged at submission: the
/// result is not known yet.
#[inline(always)]
fn name_change_args(settings: &Settings, req: u64, opcode: u8, syscall: u32) -> Option<OpenArgs> {
    let o = &settings.offsets;
    let cmd = req + o.io_kiocb_cmd as u64;
    let (dfd_at, name_at) = match opcode {
        IORING_OP_UNLINKAT => (o.io_unlink_dfd, o.io_unlink_filename),
        IORING_OP_MKDIRAT => (o.io_mkdir_dfd, o.io_mkdir_filename),
        IORING_OP_RENAMEAT => (o.io_rename_new_dfd, o.io_rename_newpath),
        IORING_OP_SETXATTR => (0, o.io_xattr_filename),
        _ => (o.io_link_new_dfd, o.io_link_newpath),
    };
    let filename: u64 = read(cmd, name_at);
    let name: u64 = read(filename, o.filename_name);
    let dirfd = if opcode == IORING_OP_SETXATTR {
        AT_FDCWD
    } else {
        read(cmd, dfd_at)
    };
    (name != 0).then(|| OpenArgs::name_write(syscall, dirfd, name, true))
}

/// Keeps an open request's name for its completion. Returns what to judge
/// now: the open itself when its success posts no completion.
fn keep_name(settings: &Settings, req: u64) -> Option<OpenArgs> {
    let o = &settings.offsets;
    let filename: u64 = read(req + o.io_kiocb_cmd as u64, o.io_open_filename);
    let name = stash_name(req, filename, settings)?;
    // No completion will show a success: judge the name now (the result is
    // not known yet; a failure is still reported at its completion).
    if read::<u64>(req, o.io_kiocb_flags) & REQ_F_CQE_SKIP == 0 {
        return None;
    }
    Some(open_args(settings, req, name))
}

/// Copies the name of `filename` (a `struct filename *`) into
/// `URING_NAMES` for request `req`; returns the copy's address.
#[inline(always)]
fn stash_name(req: u64, filename: u64, settings: &Settings) -> Option<u64> {
    let name: u64 = read(filename, settings.offsets.filename_name);
    if name == 0 {
        return None;
    }
    let stage = URING_STAGE.get_ptr_mut(0)?;
    // SAFETY: per-CPU staging, used by this program only while it runs;
    // bpf_probe_read_kernel_str checks the source address.
    let copied = unsafe {
        bpf_probe_read_kernel_str(
            (*stage).name.as_mut_ptr().cast(),
            PATH_CAPACITY as u32,
            name as *const _,
        )
    };
    if copied <= 0 {
        return None;
    }
    // SAFETY: `stage` is a valid map value.
    URING_NAMES.insert(&req, unsafe { &*stage }, 0).ok()?;
    // SAFETY: as above; only the address is taken.
    Some(unsafe { (*stage).name.as_ptr() } as u64)
}

/// What an open request asked for; `name`: the kernel address of its name.
#[inline(always)]
fn open_args(settings: &Settings, req: u64, name: u64) -> OpenArgs {
    let o = &settings.offsets;
    let open = req + o.io_kiocb_cmd as u64;
    OpenArgs {
        syscall: SYSCALL_IO_URING_OPEN,
        dirfd: read(open, o.io_open_dfd),
        path: name,
        name_in_kernel: true,
        flags: read(open, o.io_open_how_flags),
        mode: read::<u64>(open, o.io_open_how_mode) as u32,
        name_max: 0,
    }
}

/// `io_uring_complete(ctx, req, cqe)`: judge what an open opened, or the
/// name of a failed one.
#[raw_tracepoint(tracepoint = "io_uring_complete")]
pub fn uring_complete(ctx: RawTracePointContext) -> i32 {
    let _ = judge(&ctx);
    0
}

fn judge(ctx: &RawTracePointContext) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let req: u64 = ctx.arg(1);
    let opcode: u8 = read(req, settings.offsets.io_kiocb_opcode);
    if opcode == IORING_OP_SOCKET {
        return socket_made(ctx, settings, req);
    }
    let (rename, bind) = (opcode == IORING_OP_RENAMEAT, opcode == IORING_OP_BIND);
    let fsetxattr = opcode == IORING_OP_FSETXATTR;
    if !rename && !bind && !fsetxattr && opcode != IORING_OP_OPENAT && opcode != IORING_OP_OPENAT2 {
        return None;
    }
    let m = monitored(settings)?;
    // struct io_uring_cqe { u64 user_data; s32 res; u32 flags; }
    let cqe: u64 = ctx.arg(2);
    let res: i32 = read(cqe, 8);
    // SAFETY: only the address of the map value is taken; it is read with
    // bpf_probe_read_kernel_str.
    let name = unsafe { URING_NAMES.get(&req) }.map_or(0, |v| v.name.as_ptr() as u64);
    let (args, file) = if rename {
        if name == 0 {
            return None;
        }
        (rename_from_args(settings, req, name), 0)
    } else if bind {
        (bound_args(settings, req, res)?, 0)
    } else if fsetxattr {
        changed_file(settings, req, res)?
    } else {
        (
            open_args(settings, req, name),
            opened_file(settings, req, res),
        )
    };
    files::report::<Copied>(settings, &m, &args, res as i64, file);
    if name != 0 {
        let _ = URING_NAMES.remove(&req);
    }
    Some(())
}

/// A completed `SOCKET` request of a monitored task: judged as
/// `socket(2)` is (`packet::on_made`). A failed one made nothing.
#[inline(always)]
fn socket_made(ctx: &RawTracePointContext, settings: &Settings, req: u64) -> Option<()> {
    let cqe: u64 = ctx.arg(2);
    if read::<i32>(cqe, 8) < 0 {
        return None;
    }
    socket_request(settings, req)
}

/// A `SOCKET` request of a monitored task, done (or, when its success
/// posts no completion, submitted): judged as `socket(2)` is.
#[inline(always)]
fn socket_request(settings: &Settings, req: u64) -> Option<()> {
    let o = &settings.offsets;
    if o.io_socket_domain == 0 {
        return None;
    }
    let m = filter::task_action(settings, bpf_get_current_pid_tgid())?;
    let cmd = req + o.io_kiocb_cmd as u64;
    let (family, sock_type, protocol): (i32, i32, i32) = (
        read(cmd, o.io_socket_domain),
        read(cmd, o.io_socket_domain + 4),
        read(cmd, o.io_socket_domain + 8),
    );
    packet::on_made(
        settings,
        &m,
        family as u64,
        sock_type as u64,
        protocol as u64,
    )
}

/// A completed `FSETXATTR`: the file it changed (`io_kiocb.file`), as a
/// write of that object; a failed one changed nothing.
#[inline(always)]
fn changed_file(settings: &Settings, req: u64, res: i32) -> Option<(OpenArgs, u64)> {
    let file: u64 = read(req, settings.offsets.io_kiocb_file);
    if res != 0 || file == 0 {
        return None;
    }
    Some((unnamed_change(IORING_OP_FSETXATTR), file))
}

/// The name a completed bind request gave its unix socket in the file
/// system, as a write of that name (`files::bind_args` for the syscall):
/// `unix_sock.addr`, a `struct unix_address` whose `len` bytes of `name`
/// the kernel bound. Other families, abstract names and failures: none.
#[inline(always)]
fn bound_args(settings: &Settings, req: u64, res: i32) -> Option<OpenArgs> {
    let o = &settings.offsets;
    if res != 0 || o.unix_sock_addr == 0 {
        return None;
    }
    let sock: u64 = read(read::<u64>(req, o.io_kiocb_file), o.file_private_data);
    let sk: u64 = read(sock, o.socket_sk);
    if read::<u16>(sk, o.sock_family) != AF_UNIX {
        return None;
    }
    let address: u64 = read(sk, o.unix_sock_addr);
    let len: i32 = read(address, o.unix_address_len);
    let name = address + o.unix_address_name as u64;
    if address == 0 || len <= 2 || read::<u8>(name, 2) == 0 {
        return None;
    }
    Some(OpenArgs::unix_bind(name + 2, len as u64, true))
}

/// The `struct file *` a completed open request opened (0 if it failed).
#[inline(always)]
fn opened_file(settings: &Settings, req: u64, res: i32) -> u64 {
    let o = &settings.offsets;
    let slot: u32 = read(req + o.io_kiocb_cmd as u64, o.io_open_file_slot);
    if res < 0 {
        0
    } else if slot == 0 {
        file_of_fd_read(res)
    } else {
        fixed_file(settings, req, slot, res)
    }
}

/// The `struct file *` a direct-descriptor open put in the ring's fixed-file
/// table: slot `file_index - 1`, or the slot the kernel picked (`res`).
#[inline(always)]
fn fixed_file(settings: &Settings, req: u64, file_index: u32, res: i32) -> u64 {
    let o = &settings.offsets;
    let index = if file_index == IORING_FILE_INDEX_ALLOC {
        res as u32
    } else {
        file_index - 1
    };
    let ring: u64 = read(req, o.io_kiocb_ctx);
    let nr: u32 = read(ring, o.ring_files_nr);
    if index >= nr {
        return 0;
    }
    let nodes: u64 = read(ring, o.ring_files_nodes);
    if nodes == 0 {
        return 0;
    }
    let node: u64 = read(nodes + index as u64 * 8, 0);
    read::<u64>(node, o.rsrc_node_file_ptr) & FILE_PTR_MASK
}
