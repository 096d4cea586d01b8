//! File opens: `open`, `creat`, `openat`, `openat2`, reported at exit with
//! the result. Relative paths get their base directory (cwd or dirfd)
//! resolved here, while the task still exists.
use aya_ebpf::helpers::{bpf_probe_read_user, generated::bpf_probe_read_user_str};
use monitor_common::{
    EventKind, FLAG_PATH_TRUNCATED, FLAG_PATH_UNREADABLE, FileEvent, NR_CREAT, NR_OPEN, NR_OPENAT,
    NR_OPENAT2, PATH_CAPACITY, SYSCALL_CREAT, SYSCALL_OPEN, SYSCALL_OPENAT, SYSCALL_OPENAT2,
    Settings,
};

use crate::{
    dpath::walk_dir,
    emit::{fill_header, submit},
    maps::SCRATCH,
    probes::syscalls::Syscall,
    task::{current_task, file_of_fd, read},
};

const AT_FDCWD: i32 = -100;
const ENAMETOOLONG: i64 = 36;
const O_CREAT_WRONLY_TRUNC: u64 = 0o1101;

pub fn on_exit(settings: &Settings, call: &Syscall) -> Option<()> {
    let ret = call.ret;
    let o = &settings.offsets;
    let a = &call.args;
    let (syscall, dirfd, path, flags, mode) = match call.nr {
        NR_OPEN => (SYSCALL_OPEN, AT_FDCWD, a[0], a[1], a[2] as u32),
        NR_CREAT => (
            SYSCALL_CREAT,
            AT_FDCWD,
            a[0],
            O_CREAT_WRONLY_TRUNC,
            a[1] as u32,
        ),
        NR_OPENAT => (SYSCALL_OPENAT, a[0] as i32, a[1], a[2], a[3] as u32),
        NR_OPENAT2 => {
            // struct open_how { u64 flags; u64 mode; u64 resolve; }
            // SAFETY: bpf_probe_read_user checks the address.
            let how_flags = unsafe { bpf_probe_read_user(a[2] as *const u64) }.unwrap_or(0);
            let how_mode = unsafe { bpf_probe_read_user((a[2] + 8) as *const u64) }.unwrap_or(0);
            (
                SYSCALL_OPENAT2,
                a[0] as i32,
                a[1],
                how_flags,
                how_mode as u32,
            )
        }
        _ => return None,
    };

    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let ev: &mut FileEvent = &mut scratch.event;
    fill_header(&mut ev.header, EventKind::FileOpen as u32, &call.m, o);
    ev.syscall = syscall;
    ev.dirfd = dirfd;
    ev.open_flags = flags;
    ev.mode = mode;
    ev.result = ret;
    ev.dir_len = 0;
    ev.path_len = 0;
    let data = scratch.data.as_mut_ptr();

    let mut hflags = 0;
    let mut path_len: usize = 0;
    let mut dir_len: usize = 0;
    // SAFETY: PATH_CAPACITY bytes fit at the start of `data`.
    let n = unsafe { bpf_probe_read_user_str(data.cast(), PATH_CAPACITY as u32, path as *const _) };
    if n <= 0 {
        hflags |= FLAG_PATH_UNREADABLE;
    } else {
        path_len = (n as usize - 1) & (PATH_CAPACITY - 1);
        if n as usize == PATH_CAPACITY && ret == -ENAMETOOLONG {
            hflags |= FLAG_PATH_TRUNCATED;
        }
        // SAFETY: n > 0, so data[0] was written.
        if unsafe { *data } != b'/' {
            let base = if dirfd == AT_FDCWD {
                let fs: u64 = read(current_task(), o.task_fs);
                if fs == 0 { 0 } else { fs + o.fs_pwd as u64 }
            } else {
                let file = file_of_fd(o, dirfd);
                if file == 0 {
                    0
                } else {
                    file + o.file_path as u64
                }
            };
            dir_len = walk_dir(o, base, path_len, &mut hflags);
        }
    }
    ev.header.flags = hflags;
    ev.dir_len = dir_len as u32;
    ev.path_len = path_len as u32;
    let total = core::mem::size_of::<FileEvent>() + dir_len + path_len;
    submit(
        settings,
        (scratch as *const crate::maps::Scratch).cast(),
        total,
    );
    Some(())
}
