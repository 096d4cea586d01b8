//! What an open does to a file (reads it, writes it, created it) and which
//! opens are no file access at all. Pure logic on flags and the kernel's
//! description of the object.
use crate::events::decode::{FileOpen, Identity};

const O_ACCMODE: u64 = 0o3;
const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_CREAT: u64 = 0o100;
const O_TRUNC: u64 = 0o1000;
const EFAULT: i64 = 14;

/// How an open touches its file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The content can be read through the descriptor (read-only, read-write;
    /// `O_PATH` counts: it can be reopened through `/proc/self/fd`).
    pub reads: bool,
    /// The content or the name changes (write access, truncation, creation).
    pub writes: bool,
    /// The kernel created the file in this open (`FMODE_CREATED`), not just
    /// `O_CREAT` passed for a file that already existed.
    pub created: bool,
}

pub fn classify(ev: &FileOpen) -> Access {
    let flags = ev.open_flags;
    let accmode = flags & O_ACCMODE;
    let created = ev.object.as_ref().is_some_and(Identity::created);
    // A failed O_CREAT may have been an attempt to create.
    let create_attempt = ev.result < 0 && flags & O_CREAT != 0;
    Access {
        reads: accmode != O_WRONLY,
        writes: accmode == O_WRONLY
            || accmode == O_RDWR
            || flags & O_TRUNC != 0
            || created
            || create_attempt,
        created,
    }
}

/// Opens that are no access to a file an action could leave undeclared: its
/// own pipes, sockets, memfds and namespace files (on no mounted tree), its
/// own `/proc/<pid>/…` entries, and a bad pointer (its own bug).
pub fn exempt(ev: &FileOpen) -> bool {
    match &ev.object {
        Some(o) => o.internal || (o.proc_tgid != 0 && o.proc_tgid == ev.origin.pid),
        None => {
            (ev.unreadable && ev.result == -EFAULT)
                || (ev.result < 0 && own_proc_name(&ev.path, ev.origin.pid))
        }
    }
}

/// A name below the opener's own `/proc` directory that does not lead
/// elsewhere: only for failed opens, which have no object to judge. What
/// lies through `root`, `cwd`, `fd` or `map_files` is another file.
pub fn own_proc_name(path: &[u8], pid: u32) -> bool {
    let Some(rest) = path.strip_prefix(b"/proc/") else {
        return false;
    };
    let mut parts = rest.split(|&b| b == b'/');
    let first = parts.next().unwrap_or_default();
    let pid_text = pid.to_string();
    if first != b"self" && first != b"thread-self" && first != pid_text.as_bytes() {
        return false;
    }
    !parts.any(|c| matches!(c, b"root" | b"cwd" | b"fd" | b"map_files"))
}

/// The key under which an object the action created is remembered beside
/// the paths it created (paths never contain NUL, so keys cannot collide).
pub fn identity_key(id: &Identity) -> Vec<u8> {
    format!("\0{}:{}", id.dev, id.ino).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_proc_names_stop_at_links_to_other_files() {
        assert!(own_proc_name(b"/proc/self/status", 7));
        assert!(own_proc_name(b"/proc/thread-self/attr/current", 7));
        assert!(own_proc_name(b"/proc/7/maps", 7));
        assert!(!own_proc_name(b"/proc/8/maps", 7));
        assert!(!own_proc_name(b"/proc/self/root/etc/shadow", 7));
        assert!(!own_proc_name(b"/proc/self/cwd/x", 7));
        assert!(!own_proc_name(b"/proc/self/fd/3", 7));
        assert!(!own_proc_name(b"/proc/self/task/9/root/x", 7));
        assert!(!own_proc_name(b"/proc/meminfo", 7));
        assert!(!own_proc_name(b"/etc/passwd", 7));
    }
}
