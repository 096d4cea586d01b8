//! File opens: `open`, `creat`, `openat`, `openat2`, `open_by_handle_at`
//! (no name passed: judged on its object), reported at exit with the
//! result. A successful open reports the object actually opened: the path
//! of the `struct file` behind the returned fd, walked in the kernel, and
//! its identity (device, inode, mode); the name passed rides along. A
//! failed open reports the name passed, with its base directory (cwd or
//! dirfd) resolved here while the task still exists — under the task's
//! root when it is in a chroot. The calls that change names (`unlink`,
//! `rmdir`, `mkdir`, `truncate`, and the new name of `link`, `symlink`,
//! `rename`) are reported like failed opens, as writes of that name.
use aya_ebpf::helpers::{
    bpf_probe_read_user,
    generated::{bpf_probe_read_kernel_str, bpf_probe_read_user_str},
};
use monitor_common::{
    AF_UNIX, EventKind, FLAG_NAME_UNDER_ROOT, FLAG_OBJECT, FLAG_PATH_TRUNCATED,
    FLAG_PATH_UNREADABLE, FLAG_TRACKED, FileEvent, NR_BIND, NR_CREAT, NR_LINK, NR_LINKAT, NR_MKDIR,
    NR_MKDIRAT, NR_MKNOD, NR_MKNODAT, NR_OPEN, NR_OPEN_BY_HANDLE_AT, NR_OPENAT, NR_OPENAT2,
    NR_PIDFD_GETFD, NR_RENAME, NR_RENAMEAT, NR_RENAMEAT2, NR_RMDIR, NR_SYMLINK, NR_SYMLINKAT,
    NR_TRUNCATE, NR_UNLINK, NR_UNLINKAT, PATH_CAPACITY, SYSCALL_BIND, SYSCALL_CREAT, SYSCALL_LINK,
    SYSCALL_MKDIR, SYSCALL_MKNOD, SYSCALL_OPEN, SYSCALL_OPEN_BY_HANDLE_AT, SYSCALL_OPENAT,
    SYSCALL_OPENAT2, SYSCALL_PIDFD_GETFD, SYSCALL_RENAME, SYSCALL_RMDIR, SYSCALL_SYMLINK,
    SYSCALL_TRUNCATE, SYSCALL_UNLINK, Settings, UNIX_PATH_CAPACITY,
};

use crate::{
    allowed,
    dpath::walk_dir,
    emit::{file_time, fill_header_but_comm, submit},
    filter::Match,
    maps::{HOST_ROOT_DENTRY, NAME_CALL, SCRATCH, SETTINGS, Scratch},
    object::{self, Copied, Reader, Typed},
    probes::{metadata, syscalls::Syscall},
    sandbox,
    seen::{self, Seen},
    task::{current_task, read},
};

pub const AT_FDCWD: i32 = -100;
const ENAMETOOLONG: i64 = 36;
const O_CREAT_WRONLY_TRUNC: u64 = 0o1101;
/// The flags a name change is reported with: a write of the name.
pub const O_WRONLY: u64 = 0o1;

/// The arguments of an open-family call, whatever its syscall.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct OpenArgs {
    pub syscall: u32,
    pub dirfd: i32,
    /// Address of the name passed (0: none): in user memory, or in kernel
    /// memory when `name_in_kernel` (io_uring keeps the kernel's copy).
    pub path: u64,
    pub name_in_kernel: bool,
    pub flags: u64,
    pub mode: u32,
    /// The most bytes of the name the kernel takes, NUL or not (a unix
    /// socket's `sun_path`, bounded by the address length); 0: up to its
    /// NUL.
    pub name_max: u32,
}

impl OpenArgs {
    /// A name changed or made by `syscall`: a write (`O_WRONLY`) of the
    /// name at `path` (in kernel memory when `name_in_kernel`), resolved
    /// against `dirfd`.
    #[inline(always)]
    pub fn name_write(syscall: u32, dirfd: i32, path: u64, name_in_kernel: bool) -> OpenArgs {
        OpenArgs {
            syscall,
            dirfd,
            path,
            name_in_kernel,
            flags: O_WRONLY,
            mode: 0,
            name_max: 0,
        }
    }

    /// The name a unix socket was bound to, `sun_path` at `path` of an
    /// address `len` bytes long: the kernel takes `len - 2` bytes of it,
    /// NUL or not, and so does the report (read on to a later NUL, it
    /// would be another path than the one made).
    #[inline(always)]
    pub fn unix_bind(path: u64, len: u64, name_in_kernel: bool) -> OpenArgs {
        OpenArgs {
            name_max: (len - 2).min(UNIX_PATH_CAPACITY as u64) as u32,
            ..OpenArgs::name_write(SYSCALL_BIND, AT_FDCWD, path, name_in_kernel)
        }
    }
}

#[inline(always)]
fn open_args(call: &Syscall) -> Option<OpenArgs> {
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
        // open_by_handle_at(mount_fd, handle, flags): no name; a successful
        // one is judged on the object like any open.
        NR_OPEN_BY_HANDLE_AT => (SYSCALL_OPEN_BY_HANDLE_AT, a[0] as i32, 0, a[2], 0),
        // pidfd_getfd(pidfd, targetfd, flags): another process's file, no
        // name; its flags are the file's own (`on_exit`).
        NR_PIDFD_GETFD => (SYSCALL_PIDFD_GETFD, AT_FDCWD, 0, 0, 0),
        // Name-changing calls: writes of the name (see `name_args`).
        NR_UNLINK | NR_UNLINKAT | NR_RMDIR | NR_MKDIR | NR_MKDIRAT | NR_MKNOD | NR_MKNODAT
        | NR_TRUNCATE | NR_LINK | NR_LINKAT | NR_SYMLINK | NR_SYMLINKAT | NR_RENAME
        | NR_RENAMEAT | NR_RENAMEAT2 => {
            return name_args(call);
        }
        NR_BIND => return bind_args(call),
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
    Some(OpenArgs {
        syscall,
        dirfd,
        path,
        name_in_kernel: false,
        flags,
        mode,
        name_max: 0,
    })
}

/// A unix socket's `bind(fd, addr, len)`: the name it made in the file
/// system, as a write of that name ([`OpenArgs::unix_bind`]). Other
/// families, abstract names (a NUL first) and an autobind (no name) make
/// none.
#[inline(always)]
fn bind_args(call: &Syscall) -> Option<OpenArgs> {
    let (addr, len) = (call.args[1], call.args[2]);
    if len <= 2 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    let first = unsafe { bpf_probe_read_user((addr + 2) as *const u8) }.ok()?;
    if family != AF_UNIX || first == 0 {
        return None;
    }
    Some(OpenArgs::unix_bind(addr + 2, len, false))
}

/// A name-changing call: its syscall id, and the (new) name it wrote, as a
/// write (`O_WRONLY`) of that name. The result is no descriptor.
#[inline(always)]
fn name_args(call: &Syscall) -> Option<OpenArgs> {
    let a = &call.args;
    let (syscall, dirfd, path) = match call.nr {
        NR_UNLINK => (SYSCALL_UNLINK, AT_FDCWD, a[0]),
        NR_UNLINKAT => (SYSCALL_UNLINK, a[0] as i32, a[1]),
        NR_RMDIR => (SYSCALL_RMDIR, AT_FDCWD, a[0]),
        NR_MKDIR => (SYSCALL_MKDIR, AT_FDCWD, a[0]),
        NR_MKDIRAT => (SYSCALL_MKDIR, a[0] as i32, a[1]),
        NR_MKNOD => (SYSCALL_MKNOD, AT_FDCWD, a[0]),
        NR_MKNODAT => (SYSCALL_MKNOD, a[0] as i32, a[1]),
        NR_TRUNCATE => (SYSCALL_TRUNCATE, AT_FDCWD, a[0]),
        // link(old, new), symlink(target, new), rename(old, new)
        NR_LINK => (SYSCALL_LINK, AT_FDCWD, a[1]),
        NR_SYMLINK => (SYSCALL_SYMLINK, AT_FDCWD, a[1]),
        NR_RENAME => (SYSCALL_RENAME, AT_FDCWD, a[1]),
        // symlinkat(target, newdirfd, new)
        NR_SYMLINKAT => (SYSCALL_SYMLINK, a[1] as i32, a[2]),
        // linkat/renameat/renameat2(olddirfd, old, newdirfd, new, …)
        NR_LINKAT => (SYSCALL_LINK, a[2] as i32, a[3]),
        _ => (SYSCALL_RENAME, a[2] as i32, a[3]),
    };
    Some(OpenArgs::name_write(syscall, dirfd, path, false))
}

pub fn on_exit<R: Reader>(settings: &Settings, call: &Syscall) -> Option<()> {
    // Opens first: the metadata calls' numbers are checked only after
    // every open family's.
    let (mut args, changed_fd) = match open_args(call) {
        Some(args) => (args, None),
        None => metadata::args(call)?,
    };
    // The object the kernel opened, when there is one; else the name's base.
    // Only the open family (and `pidfd_getfd`) returns a descriptor; a
    // metadata call on a descriptor changed its object. One lookup site:
    // the verifier checks it once.
    let opens = args.syscall <= SYSCALL_PIDFD_GETFD;
    let fd = match changed_fd {
        Some(_) if call.ret != 0 => return None,
        Some(fd) => fd,
        None if call.ret >= 0 && opens => call.ret as i32,
        None => -1,
    };
    let file = if fd >= 0 { R::file_of_fd(fd) } else { 0 };
    if changed_fd.is_some() && file == 0 {
        return None;
    }
    if args.syscall == SYSCALL_PIDFD_GETFD {
        // A failed one took nothing: no name to judge.
        if file == 0 {
            return None;
        }
        args.flags = u64::from(read::<u32>(file, settings.offsets.file_f_flags));
    }
    report::<R>(settings, &call.m, &args, call.ret, file)
}

/// Reports an open by `m`'s task that returned `ret`; `file` is the
/// `struct file` opened (0 for a failed open or a name change). Repeats
/// are only counted.
#[inline(always)]
pub fn report<R: Reader>(
    settings: &Settings,
    m: &Match,
    args: &OpenArgs,
    ret: i64,
    file: u64,
) -> Option<()> {
    if file == 0 {
        let call = NAME_CALL.get_ptr_mut(0)?;
        // SAFETY: per-CPU, used by this program only while it runs.
        unsafe { (*call).m = *m };
        unsafe { (*call).args = *args };
        R::report_name(ret as u64);
        return Some(());
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let id = R::identity(file, &mut scratch.windows);
    seen::fill_key(&mut scratch.seen.key, &id, args.flags, m);
    let tracked = match seen::check(&mut scratch.seen, || R::generation(&id)) {
        Seen::Repeat => return Some(()),
        Seen::First => true,
        Seen::Once | Seen::Untracked => false,
    };
    let ppid = R::parent_tgid();
    let mut hflags = FLAG_OBJECT;
    let path_len = copy_name(scratch, args.path, args.name_in_kernel, ret, &mut hflags);
    fill_fields::<R>(&mut scratch.event, m, args, ret, ppid);
    if tracked {
        let (ev, key) = (&mut scratch.event, &scratch.seen.key);
        hflags |= FLAG_TRACKED;
        ev.generation = key.generation;
        ev.access_class = key.access_class;
        ev.dentry = key.dentry;
        ev.mnt = key.mnt;
    }
    let o = &settings.offsets;
    object::describe::<R>(o, &id, &mut scratch.windows, &mut scratch.event);
    crate::escapes::on_open(m, scratch.event.fs_magic, args.flags);
    let walk_from = Some(file + o.file_path as u64);
    finish::<R>(settings, scratch, walk_from, path_len, hflags);
    Some(())
}

/// The report of a name without an object (a failed open, a name change),
/// as a BPF global function: the verifier checks it once per program
/// instead of at each call site and in each of their states (the syscall
/// hook has two, a rename's old name and the rest; with the report inlined
/// it verified 111 k instructions). The match and arguments travel in the
/// `NAME_CALL` map: a global function takes plain numbers only. The call
/// and that trip cost a failed open about 24 ns (`bench-ab --workload
/// missing`); opens of an object stay inline: as a global function, their
/// report cost a first access 65 ns more (`bench-ab`, 12 and 16 rounds).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn file_name_report(ret: u64) -> u64 {
    report_name::<Copied>(ret as i64);
    0
}

/// [`file_name_report`] for the BTF tracepoint ([`Typed`] loads).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn file_name_report_cast(ret: u64) -> u64 {
    report_name::<Typed>(ret as i64);
    0
}

#[inline(always)]
fn report_name<R: Reader>(ret: i64) -> Option<()> {
    let settings = SETTINGS.get(0)?;
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let call = NAME_CALL.get_ptr(0)?;
    // SAFETY: per-CPU, written by this program's caller of the report.
    let (m, args) = unsafe { (&(*call).m, &(*call).args) };
    // Read before the paths below part: the verifier checks the reads
    // once, not on each path.
    let ppid = R::parent_tgid();
    let mut hflags = 0;
    let mut path_len = copy_name(scratch, args.path, args.name_in_kernel, ret, &mut hflags);
    if args.name_max != 0 && path_len > args.name_max as usize {
        path_len = args.name_max as usize;
    }
    let name = if path_len == 0 {
        NameBase::NONE
    } else {
        name_base::<R>(settings, m, args, ret, scratch.data[0] != b'/', path_len)
    };
    if name.folded {
        return Some(());
    }
    fill_fields::<R>(&mut scratch.event, m, args, ret, ppid);
    let walk_from = if name.relative {
        Some(name.base)
    } else if path_len > 0 {
        under_chroot(settings, &mut hflags)
    } else {
        None
    };
    finish::<R>(settings, scratch, walk_from, path_len, hflags);
    Some(())
}

/// Walks the directory (one walk call site per report; the walk itself is
/// a global function, see `dpath_walk`) and sends the event.
#[inline(always)]
fn finish<R: Reader>(
    settings: &Settings,
    scratch: &mut Scratch,
    walk_from: Option<u64>,
    path_len: usize,
    mut hflags: u32,
) {
    let ev = &mut scratch.event;
    let dir_len = match walk_from {
        Some(path_ptr) => walk_dir::<R>(path_ptr, path_len, &mut hflags, &mut ev.bind_at),
        None => 0,
    };
    ev.header.flags = hflags;
    ev.dir_len = dir_len as u32;
    ev.path_len = path_len as u32;
    let total = core::mem::size_of::<FileEvent>() + dir_len + path_len;
    submit(settings, (scratch as *const Scratch).cast(), total);
}

/// The header and the call's own fields, the identity cleared.
#[inline(always)]
fn fill_fields<R: Reader>(ev: &mut FileEvent, m: &Match, args: &OpenArgs, ret: i64, ppid: u32) {
    let grandchild = R::ancestor_cgroup_id(m.grandchild_level);
    fill_header_but_comm(
        &mut ev.header,
        EventKind::FileOpen as u32,
        m,
        ppid,
        grandchild,
    );
    ev.header.ktime_ns = file_time(m);
    R::comm(&mut ev.header.comm);
    ev.syscall = args.syscall;
    ev.dirfd = args.dirfd;
    ev.open_flags = args.flags;
    ev.mode = args.mode;
    ev.result = ret;
    clear_identity(ev);
}

#[inline(always)]
pub fn clear_identity(ev: &mut FileEvent) {
    // Volatile: plain zero stores in a row compile to a byte-wise memset.
    crate::zero_fields!(
        ev.ino,
        ev.dev,
        ev.f_mode,
        ev.fs_magic,
        ev.nlink,
        ev.proc_tgid,
        ev.i_mode,
        ev.generation,
        ev.access_class,
        ev.dentry,
        ev.mnt,
        ev.dir_len,
        ev.path_len,
        ev.bind_at,
    );
}

/// Copies the name passed into the start of `data`; returns its length
/// (0 when unreadable, marked in `hflags`).
#[inline(always)]
pub fn read_name(scratch: &mut Scratch, path: u64, ret: i64, hflags: &mut u32) -> usize {
    copy_name(scratch, path, false, ret, hflags)
}

/// As `read_name`, from kernel memory when `in_kernel`.
#[inline(always)]
fn copy_name(
    scratch: &mut Scratch,
    path: u64,
    in_kernel: bool,
    ret: i64,
    hflags: &mut u32,
) -> usize {
    let data = scratch.data.as_mut_ptr();
    let (cap, src) = (PATH_CAPACITY as u32, path as *const _);
    // SAFETY: PATH_CAPACITY bytes fit at the start of `data`; both helpers
    // check the source address.
    let n = unsafe {
        if in_kernel {
            bpf_probe_read_kernel_str(data.cast(), cap, src)
        } else {
            bpf_probe_read_user_str(data.cast(), cap, src)
        }
    };
    if n <= 0 {
        *hflags |= FLAG_PATH_UNREADABLE;
        return 0;
    }
    if n as usize == PATH_CAPACITY && ret == -ENAMETOOLONG {
        *hflags |= FLAG_PATH_TRUNCATED;
    }
    (n as usize - 1) & (PATH_CAPACITY - 1)
}

/// The task's root `struct path` when it is not the monitor's root (a
/// chroot: Bazel's hermetic sandbox), else 0. The kernel looks
/// absolute names up under it, so a failed one is reported under it. Most
/// tasks share one root dentry: once seen to be the monitor's root, it is
/// remembered, and the check is two reads.
#[inline(always)]
pub fn chroot_root(settings: &Settings) -> u64 {
    let o = &settings.offsets;
    let fs: u64 = read(current_task(), o.task_fs);
    if fs == 0 {
        return 0;
    }
    let root = fs + o.fs_root as u64;
    let dentry: u64 = read(root, o.path_dentry);
    let Some(known) = HOST_ROOT_DENTRY.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: a one-entry array value; a racing write stores the same.
    if dentry == 0 || unsafe { *known } == dentry {
        return 0;
    }
    let inode: u64 = read(dentry, o.dentry_inode);
    let ino: u64 = read(inode, o.inode_i_ino);
    let dev: u32 = read(read::<u64>(inode, o.inode_i_sb), o.sb_s_dev);
    if ino == settings.host_root_ino && dev == settings.host_root_dev {
        // SAFETY: as above.
        unsafe { *known = dentry };
        return 0;
    }
    root
}

/// Where a failed open's name is looked up. Plain values, not Options
/// (see `report`).
struct NameBase {
    relative: bool,
    /// A relative name's `struct path` (cwd or dirfd; 0 when unknown).
    base: u64,
    /// Counted here instead of reported (`sandbox.rs`, `allowed.rs`).
    folded: bool,
}

impl NameBase {
    const NONE: NameBase = NameBase {
        relative: false,
        base: 0,
        folded: false,
    };
}

/// The base of the name (of `len` bytes at the start of the scratch data)
/// of a failed open, or that it was counted instead of reported.
#[inline(always)]
fn name_base<R: Reader>(
    settings: &Settings,
    m: &Match,
    args: &OpenArgs,
    ret: i64,
    relative: bool,
    len: usize,
) -> NameBase {
    if relative {
        let base = relative_base::<R>(settings, args.dirfd);
        let folded = sandbox::fold_probe::<R>(m, args.syscall, ret, base, len);
        return NameBase {
            relative,
            base,
            folded,
        };
    }
    // Where typed loads are (the syscall hook on 6.2+): elsewhere (io_uring
    // submissions, the raw tracepoint) such probes are rare or the kernel
    // old, and the check would cost each program 6 k more instructions to
    // verify.
    let folded = R::FOLDS_PROBES && allowed::fold_probe(args.syscall, args.flags, ret, len);
    NameBase {
        folded,
        ..NameBase::NONE
    }
}

/// An absolute name's chroot (its root `struct path`, marked in
/// `hflags`), or `None` under the host's root.
#[inline(always)]
fn under_chroot(settings: &Settings, hflags: &mut u32) -> Option<u64> {
    let root = chroot_root(settings);
    if root == 0 {
        return None;
    }
    *hflags |= FLAG_NAME_UNDER_ROOT;
    Some(root)
}

/// The `struct path` a relative name is resolved against: the cwd or the
/// dirfd's file (0 when unknown).
#[inline(always)]
fn relative_base<R: Reader>(settings: &Settings, dirfd: i32) -> u64 {
    let o = &settings.offsets;
    if dirfd == AT_FDCWD {
        let fs: u64 = read(current_task(), o.task_fs);
        if fs == 0 { 0 } else { fs + o.fs_pwd as u64 }
    } else {
        let file = R::file_of_fd(dirfd);
        if file == 0 {
            0
        } else {
            file + o.file_path as u64
        }
    }
}
