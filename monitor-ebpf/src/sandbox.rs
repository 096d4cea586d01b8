//! Failed probes inside the action's own sandbox, counted instead of
//! reported. A C++ compile tries each header in every `-I` directory in
//! turn: most of a build's opens are such probes, failing with `ENOENT`
//! under names relative to the sandbox's execroot (3,073 of 3,380 opens of
//! one compile of the bench's build). Userspace would judge each one
//! declared: the sandbox tree is the action's own (its outputs). Once
//! userspace has read a spawn's sandbox it registers the sandbox directory
//! here (`SANDBOX_DIRS`, under the action's key), and a failed open that
//! cannot be anything else is only counted (`PROBES_FOLDED`, added to
//! `events_total{kind="file"}` by userspace):
//!
//! * it failed with `ENOENT` (nothing was opened, nothing exists there);
//! * its name is relative, has no `..` and is short enough to check
//!   (`MAX_FOLDED_NAME`), so it stays below its base directory;
//! * that base (the cwd or the dirfd) is the registered directory or below
//!   it, by the inodes of its dentry's ancestors (at most `MAX_FOLD_DEPTH`
//!   up), not by any name the action could choose.
//!
//! Everything else is reported as before: absolute names, `..`, other
//! errors, successful opens, and every probe before the registration.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use monitor_common::{
    LINEAGE_KEY, MAX_FOLD_DEPTH, MAX_FOLDED_NAME, MAX_SANDBOX_DIRS, SYSCALL_OPEN_BY_HANDLE_AT,
    SandboxDir, names::dot_pairs,
};

use crate::{
    allowed::any_pair,
    filter::Match,
    maps::SCRATCH,
    object::Reader,
    offsets::{
        OFF_DENTRY_INODE, OFF_DENTRY_PARENT, OFF_INODE_I_INO, OFF_INODE_I_SB, OFF_PATH_DENTRY,
        OFF_SB_S_DEV, get,
    },
    task::load,
};

/// The sandbox directory of each action whose probes are counted here,
/// by the action's key ([`action_key`]); written by userspace.
#[map]
pub static SANDBOX_DIRS: HashMap<u64, SandboxDir> = HashMap::with_max_entries(MAX_SANDBOX_DIRS, 0);

/// Failed probes counted instead of reported.
#[map]
pub static PROBES_FOLDED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

pub const ENOENT: i64 = 2;

/// The action's key as userspace's registry names it: its launcher's tree,
/// else its cgroup two levels below the scope (a Bazel 7+ spawn scope),
/// else its cgroup.
#[inline(always)]
fn action_key(m: &Match) -> u64 {
    if m.launcher != 0 {
        return LINEAGE_KEY | m.launcher as u64;
    }
    match crate::filter::grandchild(m) {
        0 => m.action_cgroup_id,
        id => id,
    }
}

/// Whether the failed open (`syscall`, `ret`) of the relative name of
/// `len` bytes at the start of the scratch data, looked up from the
/// directory `base` (a `struct path *`), was counted here: then it needs
/// no report.
#[inline(always)]
pub fn fold_probe<R: Reader>(m: &Match, syscall: u32, ret: i64, base: u64, len: usize) -> bool {
    if !R::FOLDS_PROBES || ret != -ENOENT || syscall > SYSCALL_OPEN_BY_HANDLE_AT || base == 0 {
        return false;
    }
    fold_probe_cast(action_key(m), base, len as u64) != 0
}

/// The rest of [`fold_probe`] as a BPF global function: the verifier checks
/// its loops once per program, apart from the caller's states (inlined,
/// they took the syscall hook from 217 k verified instructions to 866 k).
/// Returns 1 when the probe was counted.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fold_probe_cast(key: u64, base: u64, len: u64) -> u64 {
    // Here, not in the caller: the verifier knows nothing of a global
    // function's arguments, and the word loop needs the bound.
    if len == 0 || len >= MAX_FOLDED_NAME as u64 {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let name = unsafe { &(*scratch).data };
    // `..` anywhere (also inside a file name: conservative), a word at a
    // time: a loop over bytes cost the verifier 19 k instructions.
    if name[0] == b'/' || any_pair(name, len as usize, dot_pairs) {
        return 0;
    }
    // SAFETY: a map value read by copy.
    let Some(dir) = (unsafe { SANDBOX_DIRS.get(&key) }).copied() else {
        return 0;
    };
    if !at_or_below(base, &dir) {
        return 0;
    }
    if let Some(count) = PROBES_FOLDED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
    1
}

/// Whether the directory of `base` (a `struct path *`) is `dir` or below
/// it: its dentry's ancestors, by inode, at most `MAX_FOLD_DEPTH` up (a
/// mount's root dentry is its own parent). Typed loads.
#[inline(always)]
fn at_or_below(base: u64, dir: &SandboxDir) -> bool {
    let path = crate::kfunc::as_path(base);
    let mut dentry: *const u8 = load(path, get(&OFF_PATH_DENTRY) as usize);
    for _ in 0..MAX_FOLD_DEPTH {
        if dentry.is_null() {
            return false;
        }
        let inode: *const u8 = load(dentry, get(&OFF_DENTRY_INODE) as usize);
        if !inode.is_null() && load::<u64>(inode, get(&OFF_INODE_I_INO) as usize) == dir.ino {
            let sb: *const u8 = load(inode, get(&OFF_INODE_I_SB) as usize);
            if load::<u32>(sb, get(&OFF_SB_S_DEV) as usize) == dir.dev {
                return true;
            }
        }
        let parent: *const u8 = load(dentry, get(&OFF_DENTRY_PARENT) as usize);
        if parent == dentry {
            return false;
        }
        dentry = parent;
    }
    false
}
