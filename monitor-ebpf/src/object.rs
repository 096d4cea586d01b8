//! What an open `struct file` is: its identity (device, inode, mode, file
//! system, and for procfs entries the process they belong to). Its path is
//! walked by `dpath` from `f_path`.
use monitor_common::{FileEvent, KernelOffsets, PROC_SUPER_MAGIC};

use crate::task::read;

/// The fields of an open file that both its repeat key (`seen`) and its
/// description need: read once.
pub struct Identity {
    pub inode: u64,
    pub ino: u64,
    pub dev: u32,
    pub f_mode: u32,
    sb: u64,
}

/// Reads the `Identity` of `file` (a `struct file *`).
#[inline(always)]
pub fn identity(o: &KernelOffsets, file: u64) -> Identity {
    let inode: u64 = read(file, o.file_f_inode);
    let sb: u64 = read(inode, o.inode_i_sb);
    Identity {
        inode,
        ino: read(inode, o.inode_i_ino),
        dev: read(sb, o.sb_s_dev),
        f_mode: read(file, o.file_f_mode),
        sb,
    }
}

/// Fills the identity fields of `ev` from `file`'s `Identity`.
#[inline(always)]
pub fn describe(o: &KernelOffsets, id: &Identity, ev: &mut FileEvent) {
    ev.ino = id.ino;
    ev.dev = id.dev;
    ev.fs_magic = read::<u64>(id.sb, o.sb_s_magic) as u32;
    ev.nlink = read(id.inode, o.inode_i_nlink);
    ev.f_mode = id.f_mode;
    ev.i_mode = read::<u16>(id.inode, o.inode_i_mode) as u32;
    ev.proc_tgid = if ev.fs_magic == PROC_SUPER_MAGIC {
        proc_owner(o, id.inode)
    } else {
        0
    };
}

/// The tgid of the process a procfs inode describes (`/proc/<pid>/…`,
/// `/proc/<pid>/task/<tid>/…`), or 0 for other procfs entries: every procfs
/// inode is embedded in a `struct proc_inode` whose `pid` is set only for
/// per-process entries. The pid's first task gives the tgid.
#[inline(always)]
fn proc_owner(o: &KernelOffsets, inode: u64) -> u32 {
    if inode == 0 {
        return 0;
    }
    let ei = inode - o.proc_inode_vfs_inode as u64;
    let pid: u64 = read(ei, o.proc_inode_pid);
    let first: u64 = read(pid, o.pid_tasks);
    if first == 0 {
        return 0;
    }
    let task = first - o.task_pid_links as u64;
    read::<i32>(task, o.task_tgid) as u32
}
