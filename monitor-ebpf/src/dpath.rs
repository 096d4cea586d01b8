//! Resolving a `struct path` (dentry + vfsmount) to its components by walking
//! up the dentry tree, crossing mount points. Components are written leaf
//! first, each followed by NUL, which keeps every write at a growing, bounded
//! offset the verifier accepts; userspace reverses them.
use aya_ebpf::helpers::generated::bpf_probe_read_kernel_str;
use monitor_common::{DIR_CAPACITY, KernelOffsets, MAX_DIR_DEPTH, NAME_CAPACITY};

use crate::task::read;

pub struct Walk {
    pub len: u32,
    pub truncated: bool,
}

/// Walks the path whose `struct path` starts at `path_ptr` (kernel address)
/// into `buf[0..DIR_CAPACITY]`.
#[inline(always)]
pub fn walk_path(o: &KernelOffsets, path_ptr: u64, buf: *mut u8) -> Option<Walk> {
    let dentry: u64 = read(path_ptr, o.path_dentry);
    let vfsmnt: u64 = read(path_ptr, o.path_mnt);
    walk(o, dentry, vfsmnt, buf)
}

#[inline(always)]
fn walk(o: &KernelOffsets, mut dentry: u64, mut vfsmnt: u64, buf: *mut u8) -> Option<Walk> {
    if dentry == 0 || vfsmnt == 0 {
        return None;
    }
    let mut mount = vfsmnt - o.mount_mnt as u64;
    let mut pos: usize = 0;
    for _ in 0..MAX_DIR_DEPTH {
        let mnt_root: u64 = read(vfsmnt, o.vfsmount_root);
        if dentry == mnt_root {
            let parent: u64 = read(mount, o.mount_parent);
            if parent == mount || parent == 0 {
                return Some(Walk { len: pos as u32, truncated: false });
            }
            dentry = read(mount, o.mount_mountpoint);
            mount = parent;
            vfsmnt = parent + o.mount_mnt as u64;
            continue;
        }
        let parent: u64 = read(dentry, o.dentry_parent);
        if parent == dentry || parent == 0 {
            return Some(Walk { len: pos as u32, truncated: false });
        }
        if pos >= DIR_CAPACITY - NAME_CAPACITY {
            return Some(Walk { len: pos as u32, truncated: true });
        }
        let name: u64 = read(dentry, o.dentry_name + o.qstr_name);
        // SAFETY: `pos < DIR_CAPACITY - NAME_CAPACITY`, so the write of at
        // most NAME_CAPACITY bytes stays inside buf[0..DIR_CAPACITY].
        let n = unsafe {
            bpf_probe_read_kernel_str(
                buf.add(pos & (DIR_CAPACITY - 1)).cast(),
                NAME_CAPACITY as u32,
                name as *const _,
            )
        };
        if n <= 0 {
            return None;
        }
        pos += n as usize;
        dentry = parent;
    }
    Some(Walk { len: pos as u32, truncated: true })
}
