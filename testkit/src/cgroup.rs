//! cgroup v2 plumbing shared by the monitor, xtask and the tests: where the
//! hierarchy is mounted, removing a cgroup tree, and making a spawned
//! process join a cgroup before it runs anything.
use std::{
    ffi::{CString, OsString},
    fs, io,
    os::unix::{
        ffi::{OsStrExt as _, OsStringExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

/// The cgroup v2 mount point, read from `/proc/self/mountinfo` (hybrid hosts
/// mount it at `/sys/fs/cgroup/unified`, pure-v2 hosts at `/sys/fs/cgroup`).
pub fn v2_root() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("reading /proc/self/mountinfo: {error}"),
        )
    })?;
    v2_root_from_mountinfo(&mountinfo).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            "no cgroup2 file system is mounted (none in /proc/self/mountinfo)",
        )
    })
}

/// The first cgroup2 mount showing its hierarchy's root, else the first
/// cgroup2 mount; mount points are unescaped (`\040` is a space).
pub fn v2_root_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    let mut fallback = None;
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional…] - fstype source super-options
        let Some((before, after)) = line.split_once(" - ") else {
            continue;
        };
        if after.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let fields: Vec<&str> = before.split(' ').collect();
        let (Some(root), Some(mount_point)) = (fields.get(3), fields.get(4)) else {
            continue;
        };
        let mount_point = PathBuf::from(OsString::from_vec(unescape_mountinfo(mount_point)));
        if *root == "/" {
            return Some(mount_point);
        }
        fallback.get_or_insert(mount_point);
    }
    fallback
}

/// Undoes mountinfo's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash); paths are bytes, not necessarily UTF-8.
pub fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|b| (b'0'..=b'7').contains(b)))
            .and_then(|digits| {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                u8::try_from(value).ok()
            });
        if let Some(byte) = escaped {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// Removes the cgroup `dir` and every cgroup below it, children first; a
/// missing `dir` is fine. Each removal is retried for up to `patience` while
/// the cgroup's last processes finish exiting.
pub fn remove_tree(dir: &Path, patience: Duration) -> io::Result<()> {
    remove_tree_inner(dir, None, patience)
}

/// As [`remove_tree`], but processes still inside a busy cgroup are moved
/// to the cgroup `evacuate_to` (e.g. the root), so that it can go.
pub fn remove_tree_evacuating(
    dir: &Path,
    evacuate_to: &Path,
    patience: Duration,
) -> io::Result<()> {
    remove_tree_inner(dir, Some(evacuate_to), patience)
}

fn remove_tree_inner(dir: &Path, evacuate_to: Option<&Path>, patience: Duration) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(named(error, "listing", dir)),
    };
    for entry in entries {
        let entry = entry.map_err(|error| named(error, "listing", dir))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree_inner(&entry.path(), evacuate_to, patience)?;
        }
    }
    let deadline = Instant::now() + patience;
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) if Instant::now() >= deadline => return Err(named(error, "rmdir", dir)),
            Err(_) => {
                if let Some(target) = evacuate_to {
                    move_processes(dir, target);
                }
                // Finely: `monitor exec` waits for this before it exits (a
                // cgroup stays busy until its killed processes are reaped,
                // a few ms; 20 ms steps added 20-40 ms).
                thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

fn named(error: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

/// Moves every process of cgroup `from` to cgroup `to` (best effort).
fn move_processes(from: &Path, to: &Path) {
    let Ok(procs) = fs::read_to_string(from.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.split_whitespace() {
        let _ = fs::write(to.join("cgroup.procs"), pid);
    }
}

/// Makes `cmd`'s child join cgroup `dir` between fork and exec, so that
/// everything the program does happens in the cgroup. For a
/// `tokio::process::Command`, pass `cmd.as_std_mut()`.
pub fn join_on_spawn(cmd: &mut Command, dir: &Path) -> io::Result<()> {
    let procs = CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cgroup path {} contains a NUL byte", dir.display()),
        )
    })?;
    // SAFETY: the closure only calls async-signal-safe functions (open,
    // write, close, errno) on data prepared before fork, and allocates
    // nothing.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_on_hybrid_and_pure_hosts() {
        let hybrid = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_root_from_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            v2_root_from_mountinfo(pure),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            v2_root_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn unescapes_the_mount_point() {
        let escaped = "29 23 0:26 / /mnt/my\\040cg\\134x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_root_from_mountinfo(escaped),
            Some(PathBuf::from("/mnt/my cg\\x"))
        );
        // Not an escape: too few digits, or not octal.
        assert_eq!(unescape_mountinfo("a\\04"), b"a\\04");
        assert_eq!(unescape_mountinfo("a\\089"), b"a\\089");
    }

    #[test]
    fn prefers_the_mount_of_the_hierarchy_root() {
        let info = "\
40 30 0:38 /sub /mnt/sub rw - cgroup2 cgroup2 rw
41 30 0:38 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
";
        assert_eq!(
            v2_root_from_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            v2_root_from_mountinfo(info.lines().next().unwrap()),
            Some(PathBuf::from("/mnt/sub"))
        );
    }

    #[test]
    fn removing_a_missing_tree_is_fine() {
        let dir = std::env::temp_dir().join(format!("testkit-missing-{}", std::process::id()));
        remove_tree(&dir, Duration::ZERO).unwrap();
    }
}
