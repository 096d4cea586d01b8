//! Resolving a `struct path` (dentry + vfsmount) to its components by walking
//! up the dentry tree, crossing mount points through their parents up to the
//! root mount of the tree (not the task's root: a chroot or
//! `/proc/<pid>/root` does not shorten the path). Components are written leaf
//! first, each followed by NUL, which keeps every write at a growing, bounded
//! offset the verifier accepts; userspace reverses them.
//!
//! The walk runs inside a BPF global function (`dpath_walk`), so the
//! verifier checks it once per program, whatever calls it. With typed
//! loads (`dpath_walk_cast`, the syscall hook's) its steps are a plain
//! loop: each `bpf_loop` iteration is a call of the step, which costs
//! most on hosts whose returns go through a mitigation thunk (SRSO's safe
//! RET here): a first access of a file four directories down cost 88, 100
//! and 114 ns less (`bench-ab --workload distinct`, 16, 8 and 16 rounds),
//! for 7,600 more verified instructions (the syscall hook's 55 k to 63 k;
//! starts alternated 6 times: medians 376 and 365 ms). With probe reads
//! (`dpath_walk`, the exec hooks') the steps stay under `bpf_loop`, whose
//! step the verifier checks once: both walks as plain loops verified
//! 90 k instructions more than under `bpf_loop` and took 120 ms more per
//! start, 80 k of them in the exec hooks.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str};
use monitor_common::{
    DIR_CAPACITY, FLAG_DIR_DETACHED, FLAG_DIR_INTERNAL, FLAG_DIR_TRUNCATED, FLAG_DIR_UNRESOLVED,
    KernelOffsets, MAX_DIR_DEPTH, NAME_CAPACITY, PATH_CAPACITY,
};

use crate::{
    kfunc::word_at,
    maps::{SCRATCH, SETTINGS},
    object::{Copied, Typed},
    offsets::{
        OFF_DENTRY_INLINE_NAME, OFF_DENTRY_NAME_NAME, OFF_DENTRY_PARENT, OFF_MNT_NS_ID,
        OFF_MOUNT_MNT_NS, OFF_MOUNT_MOUNTPOINT, OFF_MOUNT_PARENT, OFF_PATH_DENTRY, OFF_PATH_MNT,
        OFF_VFSMOUNT_MNT_FLAGS, OFF_VFSMOUNT_ROOT, get,
    },
    task::read,
};

/// A load-time offset, as an address increment.
#[inline(always)]
fn off(offset: &u32) -> u64 {
    u64::from(get(offset))
}

pub struct Walk {
    pub len: u32,
    /// 0, or 1 + the bytes of components below the root of the first
    /// mount crossed that is not bound onto itself (see `FileEvent`).
    pub bind_at: u32,
    pub truncated: bool,
    /// The top mount is kernel-internal (see `FLAG_DIR_INTERNAL`).
    pub internal: bool,
    /// The top mount is the root of a tree no namespace holds (see
    /// `FLAG_DIR_DETACHED`).
    pub detached: bool,
}

const RUNNING: u64 = 0;
const DONE: u64 = 1;
const TRUNCATED: u64 = 2;
const FAILED: u64 = 3;
/// Done, at the root of a kernel-internal mount.
const DONE_INTERNAL: u64 = 4;
/// Done, at the root of a tree no namespace holds.
const DONE_DETACHED: u64 = 5;
/// `IS_ERR` for `mount.mnt_ns` (kernel-internal mounts: `MNT_NS_INTERNAL`).
const MAX_ERRNO: u64 = 4095;
/// `vfsmount.mnt_flags` of a kernel-internal mount (`kern_mount`: pipes,
/// sockets, memfds, namespace files).
const MNT_INTERNAL: i32 = 0x4000;

/// Loop state shared with the `bpf_loop` callback. In the per-CPU scratch
/// (`Scratch::walk_state`), not on the walk's stack: the syscall hook's
/// frame, the name report's, the walk's and the callback's must fit 512
/// bytes together, and with this state on it they made 528 (the raw
/// tracepoint refused by the verifier; LLVM 22.1.8).
#[repr(C)]
pub struct WalkState {
    dentry: u64,
    vfsmnt: u64,
    mount: u64,
    /// `vfsmnt->mnt_root`, read once per mount crossed.
    mnt_root: u64,
    /// Where in `data` the components start (after the path string).
    base: u64,
    status: u64,
}

/// Walks the path whose `struct path` starts at `path_ptr` (kernel address)
/// into the per-CPU scratch `data[base..base + DIR_CAPACITY]`, where `base`
/// (below PATH_CAPACITY) is the length of the path string before it.
#[inline(always)]
fn walk_path<R: WalkReads>(o: &KernelOffsets, path_ptr: u64, base: usize) -> Option<Walk> {
    let (dentry, vfsmnt) = R::path(o, path_ptr);
    if dentry == 0 || vfsmnt == 0 {
        return None;
    }
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    // Volatile: two zero stores in a row compile to a call of the BPF
    // target's byte-wise `memset` (a first access 33 ns less without it:
    // `bench-ab --workload distinct`, 16 rounds).
    unsafe {
        core::ptr::write_volatile(&mut (*scratch).walk_pos, 0);
        core::ptr::write_volatile(&mut (*scratch).walk_bind_at, 0);
        (*scratch).walk_state = WalkState {
            dentry,
            vfsmnt,
            mount: vfsmnt - o.mount_mnt as u64,
            mnt_root: R::mnt_root(o, vfsmnt),
            base: base as u64,
            status: RUNNING,
        };
    }
    if R::PLAIN_LOOP {
        for _ in 0..MAX_DIR_DEPTH {
            if step_inline::<R>() != 0 {
                break;
            }
        }
    } else {
        // SAFETY: `step` has the callback signature bpf_loop expects; it
        // takes no context (its state is in the scratch).
        unsafe {
            bpf_loop(
                MAX_DIR_DEPTH,
                step::<R> as *mut c_void,
                core::ptr::null_mut(),
                0,
            )
        };
    }
    // SAFETY: as above.
    let state = unsafe { &mut (*scratch).walk_state };
    // Once, here: in the step, the verifier would check these reads on
    // every path through the loop (measured: +100,000 instructions).
    if state.status == DONE {
        state.status = top_status::<R>(o, state);
    }
    // SAFETY: as above.
    let (pos, bind_at) = unsafe { ((*scratch).walk_pos as u32, (*scratch).walk_bind_at as u32) };
    match state.status {
        DONE | DONE_INTERNAL | DONE_DETACHED => Some(Walk {
            len: pos,
            bind_at,
            truncated: false,
            internal: state.status == DONE_INTERNAL,
            detached: state.status == DONE_DETACHED,
        }),
        // Ran out of iterations or of room: what we have is the leaf end.
        RUNNING | TRUNCATED => Some(Walk {
            len: pos,
            bind_at,
            truncated: true,
            internal: false,
            detached: false,
        }),
        _ => None,
    }
}

/// How a walk that reached the top ends: at the root of a namespace's
/// tree, on a kernel-internal mount, or at the root of a tree no namespace
/// holds (none: lazily unmounted; an anonymous one: a clone), where the
/// path is the spawn's choice.
#[inline(always)]
fn top_status<R: WalkReads>(o: &KernelOffsets, s: &WalkState) -> u64 {
    let (ns, flags) = R::top(o, s.mount, s.vfsmnt);
    if flags & MNT_INTERNAL != 0 || ns > u64::MAX - MAX_ERRNO {
        DONE_INTERNAL
    } else if ns == 0 || R::ns_id(o, ns) == 0 {
        DONE_DETACHED
    } else {
        DONE
    }
}

/// One step up the tree, as `bpf_loop`'s callback. Returns 1 to stop.
extern "C" fn step<R: WalkReads>(_index: u64, _ctx: *mut c_void) -> i64 {
    step_inline::<R>()
}

/// One step up the tree. Returns 1 to stop the walk. Looks the maps up
/// again and reads the scratch's fields through its pointer at each step:
/// held in registers from one step to the next, the verifier tracks the
/// position's value and the syscall hook exceeds its million instructions.
#[inline(always)]
fn step_inline<R: WalkReads>() -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch, used by this program only while it runs;
    // `walk_path` set the state before the first step.
    let s = unsafe { &mut (*scratch).walk_state };
    let Some(settings) = SETTINGS.get(0) else {
        s.status = FAILED;
        return 1;
    };
    let o = &settings.offsets;
    if s.dentry == s.mnt_root {
        let (parent, mountpoint) = R::mount_up(o, s.mount);
        if parent == s.mount || parent == 0 {
            s.status = DONE;
            return 1;
        }
        // A mount whose root is not the dentry it is mounted on shows
        // something under another name (a bind mount, a file system):
        // userspace judges whether that name was the spawn's to use.
        // Without branches: each would double what the verifier checks of
        // the step (measured: +7,600 instructions per program with two).
        // SAFETY: per-CPU scratch, used by this program only while it runs.
        unsafe {
            let first = (*scratch).walk_bind_at;
            let mark = nonzero(mountpoint ^ s.dentry) & (1 ^ nonzero(first));
            (*scratch).walk_bind_at = first | ((*scratch).walk_pos + 1) * mark;
        }
        s.dentry = mountpoint;
        s.mount = parent;
        s.vfsmnt = parent + o.mount_mnt as u64;
        s.mnt_root = R::mnt_root(o, s.vfsmnt);
        return 0;
    }
    let (parent, name) = R::dentry_up(o, s.dentry);
    if parent == s.dentry || parent == 0 {
        // A dentry of its own (pipes, sockets: never in a directory).
        s.status = DONE;
        return 1;
    }
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let pos = unsafe { (*scratch).walk_pos } as usize;
    if pos >= DIR_CAPACITY - NAME_CAPACITY {
        s.status = TRUNCATED;
        return 1;
    }
    let base = s.base as usize & (PATH_CAPACITY - 1);
    // SAFETY: base < PATH_CAPACITY and pos < DIR_CAPACITY - NAME_CAPACITY,
    // so at most NAME_CAPACITY bytes from there stay inside `data`.
    let n = unsafe {
        let data = (*scratch).data.as_mut_ptr();
        R::copy_name(s.dentry, name, data.add(base + (pos & (DIR_CAPACITY - 1))))
    };
    if n <= 0 {
        s.status = FAILED;
        return 1;
    }
    // SAFETY: as above.
    unsafe { (*scratch).walk_pos = (pos + n as usize) as u64 };
    s.dentry = parent;
    0
}

/// 1 when `x` is not 0, else 0, without a branch.
#[inline(always)]
fn nonzero(x: u64) -> u64 {
    (x | x.wrapping_neg()) >> 63
}

/// Walks the `struct path` at `path_ptr` (0: none) into `data[base..]` and
/// returns the length written, marking `flags` when the directory could not
/// be resolved or was cut short; `bind_at` as `Walk::bind_at`.
#[inline(always)]
pub fn walk_dir<R: WalkReads>(
    path_ptr: u64,
    base: usize,
    flags: &mut u32,
    bind_at: &mut u32,
) -> usize {
    let packed = R::walk(path_ptr, base as u64);
    *flags |= (packed >> 32) as u32;
    *bind_at = (packed >> 16) as u32 & 0xffff;
    packed as usize & (DIR_CAPACITY - 1)
}

/// How the walk reads the structures it crosses. Every value is a plain
/// number (the walk keeps them from one step to the next).
pub trait WalkReads {
    /// Whether the walk's steps run in a plain loop (else in `bpf_loop`).
    const PLAIN_LOOP: bool;
    /// The `struct path` at `path_ptr`: (dentry, vfsmount).
    fn path(o: &KernelOffsets, path_ptr: u64) -> (u64, u64);
    /// `vfsmount.mnt_root`.
    fn mnt_root(o: &KernelOffsets, vfsmnt: u64) -> u64;
    /// `mount.mnt_parent` and `mount.mnt_mountpoint`.
    fn mount_up(o: &KernelOffsets, mount: u64) -> (u64, u64);
    /// `dentry.d_parent` and the address of the name, `d_name.name`.
    fn dentry_up(o: &KernelOffsets, dentry: u64) -> (u64, u64);
    /// Copies `dentry`'s name, at `name`, NUL-terminated to `to` (room for
    /// `NAME_CAPACITY` bytes); returns the bytes written with the NUL, or
    /// a negative error.
    ///
    /// # Safety
    /// `to` must have `NAME_CAPACITY` writable bytes.
    #[inline(always)]
    unsafe fn copy_name(dentry: u64, name: u64, to: *mut u8) -> i64 {
        let _ = dentry;
        // SAFETY: the caller's room; the helper checks the source.
        unsafe { bpf_probe_read_kernel_str(to.cast(), NAME_CAPACITY as u32, name as *const _) }
    }
    /// `mount.mnt_ns` and `vfsmount.mnt_flags`.
    fn top(o: &KernelOffsets, mount: u64, vfsmnt: u64) -> (u64, i32);
    /// A mount namespace's id (0: anonymous).
    fn ns_id(o: &KernelOffsets, ns: u64) -> u64;
    /// The walk, as the BPF global function for these reads; returns what
    /// `dpath_walk` does.
    fn walk(path_ptr: u64, base: u64) -> u64;
}

impl WalkReads for Copied {
    const PLAIN_LOOP: bool = false;

    #[inline(always)]
    fn path(o: &KernelOffsets, path_ptr: u64) -> (u64, u64) {
        (read(path_ptr, o.path_dentry), read(path_ptr, o.path_mnt))
    }

    #[inline(always)]
    fn mnt_root(o: &KernelOffsets, vfsmnt: u64) -> u64 {
        read(vfsmnt, o.vfsmount_root)
    }

    #[inline(always)]
    fn mount_up(o: &KernelOffsets, mount: u64) -> (u64, u64) {
        (read(mount, o.mount_parent), read(mount, o.mount_mountpoint))
    }

    /// `d_parent`, then `d_name` { hash_len, name }: one read for the
    /// parent and the name's address (the loader checks this layout).
    #[inline(always)]
    fn dentry_up(o: &KernelOffsets, dentry: u64) -> (u64, u64) {
        let fields: [u64; 3] = read(dentry, o.dentry_parent);
        (fields[0], fields[2])
    }

    #[inline(always)]
    fn top(o: &KernelOffsets, mount: u64, vfsmnt: u64) -> (u64, i32) {
        (
            read(mount, o.mount_mnt_ns),
            read(vfsmnt, o.vfsmount_mnt_flags),
        )
    }

    #[inline(always)]
    fn ns_id(o: &KernelOffsets, ns: u64) -> u64 {
        read(ns, o.mnt_ns_id)
    }

    #[inline(always)]
    fn walk(path_ptr: u64, base: u64) -> u64 {
        dpath_walk(path_ptr, base)
    }
}

/// Words of a dentry's inline name copied (`DNAME_INLINE_LEN`, 40 bytes
/// since 6.14 and 32 before: a name shorter than it is inline; on older
/// kernels the last word read is the next field's, past the NUL).
const INLINE_WORDS: usize = 5;

/// Plain loads of each word at its address (`kfunc::word_at`): every
/// pointer read is a plain number at once, with no helper call but the
/// name's copy.
impl WalkReads for Typed {
    const PLAIN_LOOP: bool = true;

    #[inline(always)]
    fn path(_: &KernelOffsets, path_ptr: u64) -> (u64, u64) {
        (
            word_at(path_ptr + off(&OFF_PATH_DENTRY)),
            word_at(path_ptr + off(&OFF_PATH_MNT)),
        )
    }

    #[inline(always)]
    fn mnt_root(_: &KernelOffsets, vfsmnt: u64) -> u64 {
        word_at(vfsmnt + off(&OFF_VFSMOUNT_ROOT))
    }

    #[inline(always)]
    fn mount_up(_: &KernelOffsets, mount: u64) -> (u64, u64) {
        (
            word_at(mount + off(&OFF_MOUNT_PARENT)),
            word_at(mount + off(&OFF_MOUNT_MOUNTPOINT)),
        )
    }

    #[inline(always)]
    fn dentry_up(_: &KernelOffsets, dentry: u64) -> (u64, u64) {
        (
            word_at(dentry + off(&OFF_DENTRY_PARENT)),
            word_at(dentry + off(&OFF_DENTRY_NAME_NAME)),
        )
    }

    /// A name kept inline in the dentry (short: most are) is copied as
    /// `INLINE_WORDS` loads and stores, its length from `d_name`, instead
    /// of by `bpf_probe_read_kernel_str`, a call and a byte loop: the names
    /// of a walk four directories deep took about 100 ns of a first access
    /// in a perf profile. Bytes past the NUL are left as the copy made
    /// them: the walk's next name starts at the NUL's next byte, and the
    /// event carries only the walk's length. A longer name, kept apart,
    /// goes through the helper.
    #[inline(always)]
    unsafe fn copy_name(dentry: u64, name: u64, to: *mut u8) -> i64 {
        let inline = dentry + off(&OFF_DENTRY_INLINE_NAME);
        // `d_name.hash_len`, just before `d_name.name`: the length is its
        // high half.
        let len = word_at(dentry + off(&OFF_DENTRY_NAME_NAME) - 8) >> 32;
        if name != inline || len == 0 || len >= INLINE_WORDS as u64 * 8 {
            // SAFETY: the caller's room; the helper checks the source.
            return unsafe {
                bpf_probe_read_kernel_str(to.cast(), NAME_CAPACITY as u32, name as *const _)
            };
        }
        let to_words = to.cast::<u64>();
        for i in 0..INLINE_WORDS {
            // SAFETY: INLINE_WORDS * 8 < NAME_CAPACITY bytes of the caller's
            // room (map memory, where the verifier takes unaligned stores).
            unsafe { core::ptr::write_volatile(to_words.add(i), word_at(inline + 8 * i as u64)) };
        }
        // A name renamed while it was copied may have no NUL of its own.
        // SAFETY: len < INLINE_WORDS * 8, inside the caller's room.
        unsafe { core::ptr::write_volatile(to.add(len as usize), 0) };
        len as i64 + 1
    }

    #[inline(always)]
    fn top(_: &KernelOffsets, mount: u64, vfsmnt: u64) -> (u64, i32) {
        (
            word_at(mount + off(&OFF_MOUNT_MNT_NS)),
            // `mnt_flags` is an int: the word's low half.
            word_at(vfsmnt + off(&OFF_VFSMOUNT_MNT_FLAGS)) as i32,
        )
    }

    #[inline(always)]
    fn ns_id(_: &KernelOffsets, ns: u64) -> u64 {
        word_at(ns + off(&OFF_MNT_NS_ID))
    }

    #[inline(always)]
    fn walk(path_ptr: u64, base: u64) -> u64 {
        dpath_walk_cast(path_ptr, base)
    }
}

/// The walk as a BPF global function: the verifier checks its body once per
/// program, apart from its callers, instead of once per call site in each
/// caller's state (measured: it took the syscall hook's verification from
/// ~1 s to a third of that). Returns the length written in the low 16 bits,
/// `Walk::bind_at` in the next 16, the `FLAG_DIR_*` flags in the high 32.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dpath_walk(path_ptr: u64, base: u64) -> u64 {
    walk_packed::<Copied>(path_ptr, base)
}

/// As `dpath_walk`, with `Typed` reads (the BTF tracepoint's).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dpath_walk_cast(path_ptr: u64, base: u64) -> u64 {
    walk_packed::<Typed>(path_ptr, base)
}

#[inline(always)]
fn walk_packed<R: WalkReads>(path_ptr: u64, base: u64) -> u64 {
    let Some(settings) = SETTINGS.get(0) else {
        return (FLAG_DIR_UNRESOLVED as u64) << 32;
    };
    let walked = if path_ptr == 0 {
        None
    } else {
        walk_path::<R>(
            &settings.offsets,
            path_ptr,
            base as usize & (PATH_CAPACITY - 1),
        )
    };
    let (len, bind_at, flags) = match walked {
        None => (0, 0, FLAG_DIR_UNRESOLVED),
        Some(w) => {
            let mut flags = 0;
            if w.truncated {
                flags |= FLAG_DIR_TRUNCATED;
            }
            if w.internal {
                flags |= FLAG_DIR_INTERNAL;
            }
            if w.detached {
                flags |= FLAG_DIR_DETACHED;
            }
            (
                w.len as u64 & (DIR_CAPACITY as u64 - 1),
                w.bind_at as u64 & 0xffff,
                flags,
            )
        }
    };
    len | bind_at << 16 | (flags as u64) << 32
}
