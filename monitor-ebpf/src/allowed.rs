//! Failed reads of names every action may read, counted instead of
//! reported. A C++ compile probes each system include directory for each
//! header it includes: on the bench's build, 44,100 of the 132,000 file
//! events that reached userspace were such probes (`/usr/include/…`,
//! `/usr/local/include/…`, failing with `ENOENT`), each then judged
//! allowed by `files.allow` (`/usr/**`); 39,100 of them are counted here
//! now, the rest failing one of the rules below. Userspace writes the directories
//! of the allow list's `dir/**` patterns here (`ALLOWED_DIRS`, a
//! longest-prefix trie of `dir/`), and a failed open that userspace could
//! only judge allowed is counted in `PROBES_FOLDED`, like the probes below
//! an action's own sandbox (`sandbox.rs`):
//!
//! * it failed with `ENOENT` and asked to read only (no write access, no
//!   `O_CREAT`, no `O_TRUNC`): nothing was opened, created or written;
//! * its name is absolute and the task's root is the host's (in a chroot
//!   the name is reported under the root);
//! * the name has no `//` and no component starting with `.`, so it is its
//!   own normal form but for a trailing `/` (`..` cannot climb out of the
//!   directory), is shorter than `MAX_FOLDED_NAME`, and goes on past the
//!   listed directory (`/usr/**` matches below `/usr`, not `/usr` itself).
//!
//! Everything else is reported as before: relative names, writes, other
//! errors, names with `.`-components or doubled slashes; and all of them
//! on kernels without typed loads and from io_uring (`files::name_base`).
use aya_ebpf::{
    macros::map,
    maps::lpm_trie::{Key, LpmTrie},
};
use monitor_common::{
    ALLOWED_DIR_BYTES, DIR_CAPACITY, MAX_ALLOWED_DIRS, MAX_FOLDED_NAME, PATH_CAPACITY,
    SYSCALL_OPEN_BY_HANDLE_AT, names::slash_pairs,
};

use crate::{
    maps::{SCRATCH, SETTINGS},
    probes::files::chroot_root,
    sandbox::{ENOENT, PROBES_FOLDED},
};

/// `dir/` of each `files.allow` pattern `dir/**` → its length in bytes;
/// written by userspace.
#[map]
pub static ALLOWED_DIRS: LpmTrie<[u8; ALLOWED_DIR_BYTES], u8> =
    LpmTrie::with_max_entries(MAX_ALLOWED_DIRS, 0);

/// The lookup key, in map memory (the hook's stack is nearly full).
pub type AllowedKey = Key<[u8; ALLOWED_DIR_BYTES]>;

/// Any access mode but read-only, creation, truncation.
const NOT_READ_ONLY: u64 = 0o3 | 0o100 | 0o1000;

/// Whether the failed open (`syscall` with `flags`, returning `ret`) of
/// the absolute name of `len` bytes at the start of the scratch data was
/// counted here: then it needs no report.
#[inline(always)]
pub fn fold_probe(syscall: u32, flags: u64, ret: i64, len: usize) -> bool {
    fold_allowed_cast(u64::from(syscall), flags, ret as u64, len as u64) != 0
}

/// [`fold_probe`] as a BPF global function, every check inside: the
/// verifier checks it once per program, apart from the caller's states
/// (with the checks in the caller, the hook verified 16 k instructions
/// more). Returns 1 when the probe was counted.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn fold_allowed_cast(syscall: u64, flags: u64, ret: u64, len: u64) -> u64 {
    if ret as i64 != -ENOENT
        || syscall > u64::from(SYSCALL_OPEN_BY_HANDLE_AT)
        || flags & NOT_READ_ONLY != 0
        || len == 0
        || len >= MAX_FOLDED_NAME as u64
    {
        return 0;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: per-CPU scratch, used by this program only while it runs.
    let scratch = unsafe { &mut *scratch };
    let len = len as usize;
    let key = &mut scratch.allowed_key;
    key.prefix_len = (len.min(ALLOWED_DIR_BYTES) * 8) as u32;
    // Bytes past `len` are left from earlier names: the prefix length
    // keeps them out of the match.
    key.data.copy_from_slice(&scratch.data[..ALLOWED_DIR_BYTES]);
    let Some(dir_len) = ALLOWED_DIRS.get(&*key).copied() else {
        return 0;
    };
    // In a chroot the name is judged under its root.
    let Some(settings) = SETTINGS.get(0) else {
        return 0;
    };
    if len <= dir_len as usize || chroot_root(settings) != 0 {
        return 0;
    }
    // Last: the verifier walks what follows the name's check once for
    // each length it can end at.
    if !plain(&scratch.data, len) {
        return 0;
    }
    if let Some(count) = PROBES_FOLDED.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run.
        unsafe { *count += 1 };
    }
    1
}

/// `name[..len]` has no `//` and no component starting with `.`. (A loop
/// over bytes took the syscall hook from 72 k verified instructions to
/// 98 k.)
#[inline(always)]
fn plain(name: &[u8; DIR_CAPACITY + PATH_CAPACITY], len: usize) -> bool {
    !any_pair(name, len, slash_pairs)
}

/// Whether `pairs` (`monitor_common::names`) finds its pair of bytes in
/// `name[..len]` (`len` < `MAX_FOLDED_NAME`): read a word at a time, the
/// whole words in a loop whose only branch is its end, then the last
/// bytes.
#[inline(always)]
pub fn any_pair(
    name: &[u8; DIR_CAPACITY + PATH_CAPACITY],
    len: usize,
    pairs: fn(u64, u64, u64) -> (bool, u64),
) -> bool {
    let words = name.as_ptr().cast::<u64>();
    // SAFETY (both reads): within `name`, as `len` < MAX_FOLDED_NAME, far
    // below its size; the scratch data starts 8-aligned in its map value.
    let word = |i: usize| unsafe { words.add(i).read() };
    let whole = len / 8;
    let (mut carry, mut found) = (0, false);
    for i in 0..MAX_FOLDED_NAME / 8 {
        if i >= whole {
            break;
        }
        let (pair, next) = pairs(word(i), 8, carry);
        found |= pair;
        carry = next;
    }
    let rest = len % 8;
    if rest != 0 {
        found |= pairs(word(whole), rest as u64, carry).0;
    }
    found
}
