//! What an open `struct file` is: its identity (device, inode, mode, file
//! system, and for procfs entries the process they belong to). Its path is
//! walked by `dpath` from `f_path`.
//!
//! The syscall hook's BTF tracepoint reads them with typed loads (`Typed`,
//! through `kfunc` casts). Elsewhere (`Copied`): each probe read is a helper
//! call with a fixed cost (~25 ns here) whatever its size, so the first
//! `WINDOW` bytes of the file and of its inode are
//! read in one call each, and the fields are picked out of those copies (2
//! reads instead of 7 on every monitored open, repeats included); the super
//! block's, one more, only for a first access's description. A field the
//! window does not hold on some kernel is read on its own.
use monitor_common::{COMM_LEN, FileEvent, KernelOffsets, PROC_SUPER_MAGIC};

use crate::{
    offsets::{
        OFF_FILE_F_INODE, OFF_FILE_F_MODE, OFF_FILE_PATH, OFF_INODE_I_GENERATION, OFF_INODE_I_INO,
        OFF_INODE_I_MODE, OFF_INODE_I_NLINK, OFF_INODE_I_SB, OFF_PATH_MNT, OFF_SB_S_DEV,
        OFF_SB_S_MAGIC, get,
    },
    task::{load, read},
};

/// Bytes copied from the start of each structure. On 6.18 the fields used
/// end at 80 (file), 128 (inode) and 104 (super block); every kernel's
/// `struct file`, `inode` and `super_block` is larger, so the copy never
/// leaves the object.
pub const WINDOW: usize = 128;

/// A copy of the first `WINDOW` bytes of a kernel structure.
#[repr(C, align(8))]
pub struct Window {
    bytes: [u8; WINDOW],
    /// Where it was copied from (for a field beyond the copy).
    base: u64,
}

/// The three copies an identity is read from (kept in the per-CPU scratch:
/// too large for the 512-byte stack).
#[repr(C)]
pub struct Windows {
    file: Window,
    inode: Window,
    sb: Window,
}

impl Window {
    /// Copies the first `WINDOW` bytes at `base`. No branch on `base`: the
    /// helper zeroes the copy when it cannot read (0 included), and a
    /// branch per field on it would double the paths the verifier walks.
    #[inline(always)]
    fn load(&mut self, base: u64) {
        self.base = base;
        // SAFETY: `bytes` is WINDOW writable bytes; the helper checks the
        // source address.
        unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                self.bytes.as_mut_ptr().cast(),
                WINDOW as u32,
                base as *const _,
            )
        };
    }

    /// The `T` at `offset` of the structure: from the copy when it holds it
    /// (aligned, as the kernel lays fields out), else read on its own. With
    /// `offset` a load-time constant the verifier walks only one of the two.
    #[inline(always)]
    fn field<T: Copy + Default>(&self, offset: u32) -> T {
        let size = core::mem::size_of::<T>() as u32;
        let align = core::mem::align_of::<T>() as u32;
        if offset <= WINDOW as u32 - size && offset & (align - 1) == 0 {
            // SAFETY: in bounds (checked above) and aligned (the buffer is
            // 8-aligned and `offset` a multiple of T's alignment).
            unsafe { core::ptr::read_volatile(self.bytes.as_ptr().add(offset as usize).cast()) }
        } else {
            read(self.base, offset)
        }
    }
}

/// The fields of an open file that its repeat key (`seen`) and its
/// description need, read once.
pub struct Identity {
    /// The `struct file *` itself, as a number.
    file: u64,
    pub ino: u64,
    pub f_mode: u32,
    /// `i_generation`: `Copied` only (from its copy of the inode); `Typed`
    /// reads it when the repeat check needs it (`Reader::generation`),
    /// not for an object the process opens once: the field sits on a line
    /// of the inode the open path does not touch (a cache miss measured as
    /// a fifth of the hook's samples on first accesses).
    generation: u32,
    /// `f_path`.
    pub mnt: u64,
    pub dentry: u64,
    /// `i_nlink`, `i_mode` and `i_sb` (`sb`: a number): `Copied` only, which
    /// has them in its copy of the inode; `Typed` reads them from `inode`
    /// when the open is described (`Reader::details`), not for a repeat.
    nlink: u32,
    i_mode: u16,
    sb: u64,
    /// `f_inode`: a typed pointer for `Typed`, a number for `Copied`.
    inode: u64,
}

/// What a description adds to an identity: the inode's link count and
/// mode, and its file system's device and magic.
pub struct Details {
    nlink: u32,
    i_mode: u16,
    dev: u32,
    magic: u64,
}

/// How a program reads an open file's structures.
pub trait Reader: crate::dpath::WalkReads {
    /// The `struct file *` behind the current task's descriptor `fd`, as a
    /// plain number, or 0.
    fn file_of_fd(fd: i32) -> u64;
    /// The tgid of the current task's parent.
    fn parent_tgid() -> u32;
    /// Reads the `Identity` of `file` (a `struct file *`), with `w` as
    /// room for copies.
    fn identity(file: u64, w: &mut Windows) -> Identity;
    /// `id`'s inode generation.
    fn generation(id: &Identity) -> u32;
    /// The rest of `id`'s description (with `w` as `identity` left it).
    fn details(id: &Identity, w: &mut Windows) -> Details;
    /// Whether these reads may count failed probes in the kernel
    /// (`sandbox::fold_probe`): only typed loads make its walk cheap (a
    /// walk of probe reads would cost more than the report it saves).
    const FOLDS_PROBES: bool;
    /// `files::report`'s name report, as the BPF global function for
    /// these reads.
    fn report_name(ret: u64);
    /// The current task's name, NUL-padded, into `comm`.
    fn comm(comm: &mut [u8; COMM_LEN]);
    /// `bpf_get_current_pid_tgid()`.
    fn pid_tgid() -> u64;
    /// `bpf_get_current_ancestor_cgroup_id(level)`.
    fn ancestor_cgroup_id(level: u64) -> u64;
}

/// Any program type: a probe read of the first `WINDOW` bytes of the file
/// and of its inode, the fields picked out of those copies.
pub struct Copied;

/// The BTF tracepoint: the file cast to a typed pointer (`kfunc::as_file`);
/// every field, and the inode and super block behind it, is a plain load,
/// as is the fd slot (`task::file_of_fd_cast`): no helper call. The
/// identity's `mnt`, `dentry` and `inode` are typed pointers to the verifier;
/// they go into the repeat key and the event, which only privileged
/// programs may do (these are: the loader requires CAP_BPF and CAP_PERFMON).
pub struct Typed;

impl Reader for Copied {
    #[inline(always)]
    fn file_of_fd(fd: i32) -> u64 {
        crate::task::file_of_fd_read(fd)
    }

    #[inline(always)]
    fn parent_tgid() -> u32 {
        crate::task::parent_tgid()
    }

    #[inline(always)]
    fn comm(comm: &mut [u8; COMM_LEN]) {
        crate::emit::helper_comm(comm);
    }

    #[inline(always)]
    fn pid_tgid() -> u64 {
        aya_ebpf::helpers::bpf_get_current_pid_tgid()
    }

    #[inline(always)]
    fn ancestor_cgroup_id(level: u64) -> u64 {
        // SAFETY: plain helper call; a level deeper than the task's gives 0.
        unsafe { aya_ebpf::helpers::generated::bpf_get_current_ancestor_cgroup_id(level as i32) }
    }

    #[inline(always)]
    fn identity(file: u64, w: &mut Windows) -> Identity {
        w.file.load(file);
        let inode: u64 = w.file.field(get(&OFF_FILE_F_INODE));
        w.inode.load(inode);
        let path = get(&OFF_FILE_PATH);
        let (mnt, dentry) = mnt_and_dentry(w.file.field(path), w.file.field(path + 8));
        Identity {
            file,
            ino: w.inode.field(get(&OFF_INODE_I_INO)),
            f_mode: w.file.field(get(&OFF_FILE_F_MODE)),
            generation: w.inode.field(get(&OFF_INODE_I_GENERATION)),
            mnt,
            dentry,
            nlink: w.inode.field(get(&OFF_INODE_I_NLINK)),
            i_mode: w.inode.field(get(&OFF_INODE_I_MODE)),
            sb: w.inode.field(get(&OFF_INODE_I_SB)),
            inode,
        }
    }

    #[inline(always)]
    fn generation(id: &Identity) -> u32 {
        id.generation
    }

    #[inline(always)]
    fn details(id: &Identity, w: &mut Windows) -> Details {
        w.sb.load(id.sb);
        Details {
            nlink: id.nlink,
            i_mode: id.i_mode,
            dev: w.sb.field(get(&OFF_SB_S_DEV)),
            magic: w.sb.field(get(&OFF_SB_S_MAGIC)),
        }
    }

    const FOLDS_PROBES: bool = false;

    #[inline(always)]
    fn report_name(ret: u64) {
        crate::probes::files::file_name_report(ret);
    }
}

impl Reader for Typed {
    #[inline(always)]
    fn file_of_fd(fd: i32) -> u64 {
        crate::task::file_of_fd_cast(fd)
    }

    #[inline(always)]
    fn parent_tgid() -> u32 {
        crate::task::parent_tgid_cast()
    }

    #[inline(always)]
    fn comm(comm: &mut [u8; COMM_LEN]) {
        crate::task::comm_cast(comm);
    }

    #[inline(always)]
    fn pid_tgid() -> u64 {
        crate::task::pid_tgid_cast()
    }

    #[inline(always)]
    fn ancestor_cgroup_id(level: u64) -> u64 {
        crate::task::ancestor_cgroup_id_cast(level)
    }

    #[inline(always)]
    fn identity(file: u64, _: &mut Windows) -> Identity {
        let f = crate::kfunc::as_file(file);
        let inode: *const u8 = load(f, get(&OFF_FILE_F_INODE) as usize);
        let path = get(&OFF_FILE_PATH);
        let (mnt, dentry) = mnt_and_dentry(load(f, path as usize), load(f, (path + 8) as usize));
        Identity {
            file,
            ino: load(inode, get(&OFF_INODE_I_INO) as usize),
            f_mode: load(f, get(&OFF_FILE_F_MODE) as usize),
            generation: 0,
            mnt,
            dentry,
            nlink: 0,
            i_mode: 0,
            sb: 0,
            inode: inode as u64,
        }
    }

    #[inline(always)]
    fn generation(id: &Identity) -> u32 {
        load(id.inode as *const u8, get(&OFF_INODE_I_GENERATION) as usize)
    }

    #[inline(always)]
    fn details(id: &Identity, _: &mut Windows) -> Details {
        let inode = id.inode as *const u8;
        let sb: *const u8 = load(inode, get(&OFF_INODE_I_SB) as usize);
        Details {
            nlink: load(inode, get(&OFF_INODE_I_NLINK) as usize),
            i_mode: load(inode, get(&OFF_INODE_I_MODE) as usize),
            dev: load(sb, get(&OFF_SB_S_DEV) as usize),
            magic: load(sb, get(&OFF_SB_S_MAGIC) as usize),
        }
    }

    const FOLDS_PROBES: bool = true;

    #[inline(always)]
    fn report_name(ret: u64) {
        crate::probes::files::file_name_report_cast(ret);
    }
}

/// `struct path` is { mnt, dentry } (the loader checks which comes first).
#[inline(always)]
fn mnt_and_dentry(first: u64, second: u64) -> (u64, u64) {
    if get(&OFF_PATH_MNT) == 0 {
        (first, second)
    } else {
        (second, first)
    }
}

/// Fills the identity fields of `ev` from `file`'s `Identity`, reading the rest
/// (`Reader::details`; into `w` for `Copied`).
#[inline(always)]
pub fn describe<R: Reader>(o: &KernelOffsets, id: &Identity, w: &mut Windows, ev: &mut FileEvent) {
    let details = R::details(id, w);
    ev.ino = id.ino;
    ev.dev = details.dev;
    ev.fs_magic = details.magic as u32;
    ev.nlink = details.nlink;
    ev.f_mode = id.f_mode;
    ev.i_mode = details.i_mode as u32;
    ev.proc_tgid = if ev.fs_magic == PROC_SUPER_MAGIC {
        proc_owner(o, read(id.file, get(&OFF_FILE_F_INODE)))
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
