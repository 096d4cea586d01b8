//! Changes of a file's metadata alone: its mode, owner, timestamps and
//! extended attributes. No open and no new name, but a write all the same:
//! a source's digest kept in an extended attribute (Bazel's
//! `--unix_digest_hash_attribute_name`) is trusted instead of its bytes.
//! Judged as writes (`O_WRONLY`) of the name passed, like the name changes
//! (`files::name_args`), or, when the call names the file by a descriptor
//! (`fchmod`, `fsetxattr`, an `*at` call given an empty or NULL name), on
//! the object behind it once the call succeeded (a failed one changed
//! nothing there).
use aya_ebpf::helpers::bpf_probe_read_user;
use monitor_common::{
    NR_CHMOD, NR_CHOWN, NR_FCHMOD, NR_FCHMODAT, NR_FCHMODAT2, NR_FCHOWN, NR_FCHOWNAT,
    NR_FREMOVEXATTR, NR_FSETXATTR, NR_FUTIMESAT, NR_LCHOWN, NR_LREMOVEXATTR, NR_LSETXATTR,
    NR_REMOVEXATTR, NR_REMOVEXATTRAT, NR_SETXATTR, NR_SETXATTRAT, NR_UTIME, NR_UTIMENSAT,
    NR_UTIMES, SYSCALL_CHMOD, SYSCALL_CHOWN, SYSCALL_REMOVEXATTR, SYSCALL_SETXATTR, SYSCALL_UTIMES,
};

use super::{
    files::{AT_FDCWD, OpenArgs},
    syscalls::Syscall,
};

#[inline(always)]
pub fn is_metadata_syscall(nr: u64) -> bool {
    matches!(
        nr,
        NR_CHMOD
            | NR_FCHMOD
            | NR_FCHMODAT
            | NR_FCHMODAT2
            | NR_CHOWN
            | NR_FCHOWN
            | NR_LCHOWN
            | NR_FCHOWNAT
            | NR_UTIME
            | NR_UTIMES
            | NR_FUTIMESAT
            | NR_UTIMENSAT
            | NR_SETXATTR
            | NR_LSETXATTR
            | NR_FSETXATTR
            | NR_REMOVEXATTR
            | NR_LREMOVEXATTR
            | NR_FREMOVEXATTR
            | NR_SETXATTRAT
            | NR_REMOVEXATTRAT
    )
}

/// What a metadata call changed: the name it passed (as a write of that
/// name), or the descriptor whose object it changed (`Some(fd)`, the name
/// left empty). `None` when it is no metadata call.
#[inline(always)]
pub fn args(call: &Syscall) -> Option<(OpenArgs, Option<i32>)> {
    let a = &call.args;
    // (id, descriptor or dirfd, name; NULL for a call on a descriptor)
    let (syscall, fd, path) = match call.nr {
        NR_CHMOD => (SYSCALL_CHMOD, AT_FDCWD, a[0]),
        NR_FCHMOD => (SYSCALL_CHMOD, a[0] as i32, 0),
        NR_FCHMODAT | NR_FCHMODAT2 => (SYSCALL_CHMOD, a[0] as i32, a[1]),
        NR_CHOWN | NR_LCHOWN => (SYSCALL_CHOWN, AT_FDCWD, a[0]),
        NR_FCHOWN => (SYSCALL_CHOWN, a[0] as i32, 0),
        NR_FCHOWNAT => (SYSCALL_CHOWN, a[0] as i32, a[1]),
        NR_UTIME | NR_UTIMES => (SYSCALL_UTIMES, AT_FDCWD, a[0]),
        // A NULL name: the file of the dirfd (`futimens`).
        NR_FUTIMESAT | NR_UTIMENSAT => (SYSCALL_UTIMES, a[0] as i32, a[1]),
        NR_SETXATTR | NR_LSETXATTR => (SYSCALL_SETXATTR, AT_FDCWD, a[0]),
        NR_FSETXATTR => (SYSCALL_SETXATTR, a[0] as i32, 0),
        NR_SETXATTRAT => (SYSCALL_SETXATTR, a[0] as i32, a[1]),
        NR_REMOVEXATTR | NR_LREMOVEXATTR => (SYSCALL_REMOVEXATTR, AT_FDCWD, a[0]),
        NR_FREMOVEXATTR => (SYSCALL_REMOVEXATTR, a[0] as i32, 0),
        NR_REMOVEXATTRAT => (SYSCALL_REMOVEXATTR, a[0] as i32, a[1]),
        _ => return None,
    };
    let on_fd = path == 0 || names_nothing(path);
    let args = OpenArgs::name_write(syscall, fd, if on_fd { 0 } else { path }, false);
    Some((args, on_fd.then_some(fd)))
}

/// An empty name: with `AT_EMPTY_PATH` the call changed its dirfd's file
/// (without it, it failed with `ENOENT`, and there is no object).
#[inline(always)]
fn names_nothing(path: u64) -> bool {
    // SAFETY: bpf_probe_read_user checks the address.
    unsafe { bpf_probe_read_user(path as *const u8) }.is_ok_and(|first| first == 0)
}
