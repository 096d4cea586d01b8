//! Resolving a `struct path` (dentry + vfsmount) to its components by walking
//! up the dentry tree, crossing mount points through their parents up to the
//! root mount of the tree (not the task's root: a chroot or
//! `/proc/<pid>/root` does not shorten the path). Components are written leaf
//! first, each followed by NUL, which keeps every write at a growing, bounded
//! offset the verifier accepts; userspace reverses them.
//!
//! The walk runs under `bpf_loop`, so the verifier checks one step once
//! instead of every unrolled iteration, inside a BPF global function
//! (`dpath_walk`), so it checks the walk once per program, whatever calls it.
use core::ffi::c_void;

use aya_ebpf::helpers::generated::{bpf_loop, bpf_probe_read_kernel_str};
use monitor_common::{
    DIR_CAPACITY, FLAG_DIR_INTERNAL, FLAG_DIR_TRUNCATED, FLAG_DIR_UNRESOLVED, KernelOffsets,
    MAX_DIR_DEPTH, NAME_CAPACITY, PATH_CAPACITY,
};

use crate::{
    maps::{SCRATCH, SETTINGS},
    task::read,
};

pub struct Walk {
    pub len: u32,
    pub truncated: bool,
    /// The top mount belongs to no mount namespace (see `FLAG_DIR_INTERNAL`).
    pub internal: bool,
}

const RUNNING: u64 = 0;
const DONE: u64 = 1;
const TRUNCATED: u64 = 2;
const FAILED: u64 = 3;
/// Done, at the root of a mount attached to no namespace.
const DONE_INTERNAL: u64 = 4;
/// `IS_ERR_OR_NULL` for `mount.mnt_ns` (detached mounts have none).
const MAX_ERRNO: u64 = 4095;
/// `vfsmount.mnt_flags` of a kernel-internal mount (`kern_mount`: pipes,
/// sockets, memfds, namespace files).
const MNT_INTERNAL: i32 = 0x4000;

/// Loop state shared with the `bpf_loop` callback (lives on the stack).
#[repr(C)]
struct WalkState {
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
fn walk_path(o: &KernelOffsets, path_ptr: u64, base: usize) -> Option<Walk> {
    let dentry: u64 = read(path_ptr, o.path_dentry);
    let vfsmnt: u64 = read(path_ptr, o.path_mnt);
    if dentry == 0 || vfsmnt == 0 {
        return None;
    }
    let mut state = WalkState {
        dentry,
        vfsmnt,
        mount: vfsmnt - o.mount_mnt as u64,
        mnt_root: read(vfsmnt, o.vfsmount_root),
        base: base as u64,
        status: RUNNING,
    };
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    unsafe { (*scratch).walk_pos = 0 };
    // SAFETY: `step` has the callback signature bpf_loop expects and only
    // touches `state` through the pointer given here.
    unsafe {
        bpf_loop(
            MAX_DIR_DEPTH,
            step as *mut c_void,
            (&mut state as *mut WalkState).cast(),
            0,
        )
    };
    // SAFETY: as above.
    let pos = unsafe { (*scratch).walk_pos } as u32;
    match state.status {
        DONE | DONE_INTERNAL => Some(Walk {
            len: pos,
            truncated: false,
            internal: state.status == DONE_INTERNAL,
        }),
        // Ran out of iterations or of room: what we have is the leaf end.
        RUNNING | TRUNCATED => Some(Walk {
            len: pos,
            truncated: true,
            internal: false,
        }),
        _ => None,
    }
}

/// How a walk that reached the top ends: on a mount of some namespace, or
/// on a kernel-internal or detached one (no path leads there).
#[inline(always)]
fn top_status(o: &KernelOffsets, s: &WalkState) -> u64 {
    let ns: u64 = read(s.mount, o.mount_mnt_ns);
    let flags: i32 = read(s.vfsmnt, o.vfsmount_mnt_flags);
    if flags & MNT_INTERNAL != 0 || ns == 0 || ns > u64::MAX - MAX_ERRNO {
        DONE_INTERNAL
    } else {
        DONE
    }
}

/// One step up the tree. Returns 1 to stop the loop.
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the WalkState passed to bpf_loop above.
    let s = unsafe { &mut *(ctx as *mut WalkState) };
    let Some(settings) = SETTINGS.get(0) else {
        s.status = FAILED;
        return 1;
    };
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        s.status = FAILED;
        return 1;
    };
    let o = &settings.offsets;
    if s.dentry == s.mnt_root {
        let parent: u64 = read(s.mount, o.mount_parent);
        if parent == s.mount || parent == 0 {
            s.status = top_status(o, s);
            return 1;
        }
        s.dentry = read(s.mount, o.mount_mountpoint);
        s.mount = parent;
        s.vfsmnt = parent + o.mount_mnt as u64;
        s.mnt_root = read(s.vfsmnt, o.vfsmount_root);
        return 0;
    }
    // `d_parent`, then `d_name` { hash_len, name }: one read for the
    // parent and the name's address (the loader checks this layout).
    let fields: [u64; 3] = read(s.dentry, o.dentry_parent);
    let (parent, name) = (fields[0], fields[2]);
    if parent == s.dentry || parent == 0 {
        // A dentry of its own (pipes, sockets: never in a directory).
        s.status = top_status(o, s);
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
        bpf_probe_read_kernel_str(
            data.add(base + (pos & (DIR_CAPACITY - 1))).cast(),
            NAME_CAPACITY as u32,
            name as *const _,
        )
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

/// Walks the `struct path` at `path_ptr` (0: none) into `data[base..]` and
/// returns the length written, marking `flags` when the directory could not
/// be resolved or was cut short.
#[inline(always)]
pub fn walk_dir(path_ptr: u64, base: usize, flags: &mut u32) -> usize {
    let packed = dpath_walk(path_ptr, base as u64);
    *flags |= (packed >> 32) as u32;
    packed as usize & (DIR_CAPACITY - 1)
}

/// The walk as a BPF global function: the verifier checks its body once per
/// program, apart from its callers, instead of once per call site in each
/// caller's state (measured: it took the syscall hook's verification from
/// ~1 s to a third of that). Returns the length written, with the `FLAG_DIR_*`
/// flags in the high 32 bits.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dpath_walk(path_ptr: u64, base: u64) -> u64 {
    let Some(settings) = SETTINGS.get(0) else {
        return (FLAG_DIR_UNRESOLVED as u64) << 32;
    };
    let walked = if path_ptr == 0 {
        None
    } else {
        walk_path(
            &settings.offsets,
            path_ptr,
            base as usize & (PATH_CAPACITY - 1),
        )
    };
    let (len, flags) = match walked {
        None => (0, FLAG_DIR_UNRESOLVED),
        Some(w) => {
            let mut flags = 0;
            if w.truncated {
                flags |= FLAG_DIR_TRUNCATED;
            }
            if w.internal {
                flags |= FLAG_DIR_INTERNAL;
            }
            (w.len as u64 & (DIR_CAPACITY as u64 - 1), flags)
        }
    };
    len | (flags as u64) << 32
}
