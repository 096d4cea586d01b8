//! Names a monitored process makes: a successful symlink, link or rename
//! (every syscall of the three), with the new name as passed. Userspace
//! compares the time and the name with the sandbox's links, to tell one
//! the spawn planted within a clock tick of its start (the file times are
//! that coarse) from one Bazel made before it. A rename's old name is
//! reported as written, too (`files.rs` reports every new name).
use monitor_common::{
    EventKind, NR_LINK, NR_LINKAT, NR_RENAME, NR_RENAMEAT, NR_RENAMEAT2, NR_SYMLINK, NR_SYMLINKAT,
    SYSCALL_RENAME_FROM, Settings,
};

use crate::{
    emit::{clock, fill_header, fill_header_but_comm, submit},
    maps::{SCRATCH, Scratch},
    object::Reader,
    probes::{
        files::{self, AT_FDCWD, OpenArgs, clear_identity, read_name},
        syscalls::Syscall,
    },
    task::parent_tgid,
};

#[inline(always)]
pub fn is_link_syscall(nr: u64) -> bool {
    matches!(
        nr,
        NR_SYMLINK | NR_SYMLINKAT | NR_LINK | NR_LINKAT | NR_RENAME | NR_RENAMEAT | NR_RENAMEAT2
    )
}

/// The argument holding the new name.
#[inline(always)]
fn new_name(call: &Syscall) -> u64 {
    match call.nr {
        // symlink(old, new), link(old, new), rename(old, new)
        NR_SYMLINK | NR_LINK | NR_RENAME => call.args[1],
        // symlinkat(old, newdirfd, new)
        NR_SYMLINKAT => call.args[2],
        // linkat/renameat/renameat2(olddirfd, old, newdirfd, new, …)
        _ => call.args[3],
    }
}

pub fn on_exit<R: Reader>(settings: &Settings, call: &Syscall) -> Option<()> {
    if call.ret != 0 {
        return None;
    }
    if matches!(call.nr, NR_RENAME | NR_RENAMEAT | NR_RENAMEAT2) {
        // The old name is written too (the file leaves it).
        let (dirfd, path) = if call.nr == NR_RENAME {
            (AT_FDCWD, call.args[0])
        } else {
            (call.args[0] as i32, call.args[1])
        };
        let args = OpenArgs::name_write(SYSCALL_RENAME_FROM, dirfd, path, false);
        let _ = files::report::<R>(settings, &call.m, &args, call.ret, 0);
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let ev = &mut scratch.event;
    fill_header(
        &mut ev.header,
        EventKind::LinkMade as u32,
        &call.m,
        parent_tgid(),
    );
    name_fields(ev, call.nr);
    let mut hflags = 0;
    let path_len = read_name(scratch, new_name(call), 0, &mut hflags);
    scratch.event.header.flags = hflags;
    scratch.event.path_len = path_len as u32;
    let total = core::mem::size_of::<monitor_common::FileEvent>() + path_len;
    submit(settings, (scratch as *const Scratch).cast(), total);
    Some(())
}

/// A name event's own fields: the syscall, no open's, no identity.
#[inline(always)]
fn name_fields(ev: &mut monitor_common::FileEvent, nr: u64) {
    ev.syscall = nr as u32;
    ev.dirfd = 0;
    ev.open_flags = 0;
    ev.mode = 0;
    ev.result = 0;
    clear_identity(ev);
}

/// A symlink made by a process outside every action: in `monitor exec`,
/// the Bazel server populating a sandbox before it launches the spawn.
/// Its name and its target, as passed, let the sandbox read take the
/// target from here instead of reading each link back (`readlinkat`, the
/// largest part of the daemon's sandbox reads). Only absolute names are
/// sent: a relative one needs its base directory, and Bazel passes none.
pub fn on_outside_symlink(settings: &Settings, call: &Syscall) -> Option<()> {
    if call.ret != 0 || !matches!(call.nr, NR_SYMLINK | NR_SYMLINKAT) {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let mut hflags = 0;
    let path_len = read_name(scratch, new_name(call), 0, &mut hflags);
    if path_len == 0 || scratch.data[0] != b'/' || hflags != 0 {
        return None;
    }
    let target_len = read_name_at(scratch, call.args[0], path_len)?;
    let ev = &mut scratch.event;
    // Only the maker's tgid and the time are read: no parent, command name
    // or cgroup ancestor is looked up (60,000 of these on the bench build).
    fill_header_but_comm(&mut ev.header, EventKind::SymlinkMade as u32, &call.m, 0, 0);
    ev.header.ktime_ns = clock();
    ev.header.comm = [0; monitor_common::COMM_LEN];
    name_fields(ev, call.nr);
    ev.path_len = path_len as u32;
    ev.dir_len = target_len as u32;
    let total = core::mem::size_of::<monitor_common::FileEvent>() + path_len + target_len;
    submit(settings, (scratch as *const Scratch).cast(), total);
    Some(())
}

/// Copies the user string at `src` into `data` right after the first
/// `at` bytes; its length without the NUL, or `None` when it is unreadable
/// or does not fit whole.
#[inline(always)]
fn read_name_at(scratch: &mut Scratch, src: u64, at: usize) -> Option<usize> {
    let cap = monitor_common::PATH_CAPACITY;
    // SAFETY: `at` is below PATH_CAPACITY and `data` holds twice that, so
    // PATH_CAPACITY bytes fit from there; the helper checks the source.
    let n = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_user_str(
            scratch.data.as_mut_ptr().add(at & (cap - 1)).cast(),
            cap as u32,
            src as *const _,
        )
    };
    if n <= 1 || n as usize >= cap {
        return None;
    }
    Some((n as usize - 1) & (cap - 1))
}
