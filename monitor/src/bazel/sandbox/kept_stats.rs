//! `lstat` answers for names in directories that have not changed, kept
//! across sandbox reads. The sandboxes of a build link the same inputs (on
//! the bench build 200 sandboxes link the same 300 files), and each read
//! asked the kernel about every target again: 60,000 `lstat`s, 56–126 ms
//! of the daemon's CPU per build (four profiles; 28–42 ms with answers
//! kept, `profiles/sandbox-reads.md`).
//!
//! An answer is kept for a name in one directory (its device and inode)
//! at the directory's ctime, and given again only while all of these hold:
//! * the directory, opened afresh by the asking walk, is the same inode
//!   with the same ctime. On the file systems trusted here (ext4, xfs,
//!   btrfs, tmpfs) every name made, removed or renamed in a directory
//!   changes its ctime, and no process can set a ctime back;
//! * that ctime was over a second old when the answer was kept, so a
//!   change within the same clock tick cannot leave it equal;
//! * no mount was made or removed in the monitor's mount namespace since
//!   (`/proc/self/mountinfo` polled once per walk): a mount over a name
//!   leaves its directory unchanged.
//!
//! An answer is only given again in the state it was taken from, so a
//! kept answer is the one a fresh `lstat` would give.
use std::{
    fs::File,
    os::fd::{AsFd as _, BorrowedFd},
    sync::{LazyLock, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::sys::statfs::{
    BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC, fstatfs,
};

use super::lookup::Stat;
use crate::hashing::HashMap;

/// How old a directory's ctime must be for answers in it to be kept.
const SETTLED: Duration = Duration::from_secs(1);

/// Most names kept; past it, everything is dropped and kept afresh (a
/// build with more distinct inputs asks the kernel for some again). Each
/// costs its name's bytes and ~60 more: at most ~20 MiB with names of
/// the longest (255 bytes), ~5 MiB with the bench build's.
const MAX_NAMES: usize = 1 << 16;

/// A directory as one walk found it: its answers are valid for this
/// state only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirState {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl DirState {
    /// `dir`'s state, when answers in it may be kept: a trusted file
    /// system, and a ctime over [`SETTLED`] old.
    pub fn of(dir: BorrowedFd<'_>) -> Option<DirState> {
        let fs_type = fstatfs(dir).ok()?.filesystem_type();
        let trusted = [
            EXT4_SUPER_MAGIC,
            XFS_SUPER_MAGIC,
            BTRFS_SUPER_MAGIC,
            TMPFS_MAGIC,
        ];
        if !trusted.contains(&fs_type) {
            return None;
        }
        let st = nix::sys::stat::fstat(dir).ok()?;
        settled(st.st_ctime, st.st_ctime_nsec).then_some(DirState {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }
}

/// Whether a ctime of `sec` s and `nsec` ns is over [`SETTLED`] old.
fn settled(sec: i64, nsec: i64) -> bool {
    let ctime = UNIX_EPOCH + Duration::new(sec.max(0) as u64, nsec as u32);
    ctime + SETTLED < SystemTime::now()
}

/// The answers kept in one directory, and the ctime they were kept at.
struct KeptDir {
    ctime: (i64, i64),
    names: HashMap<Box<[u8]>, Stat>,
}

#[derive(Default)]
struct Kept {
    /// By directory (device, inode).
    dirs: HashMap<(u64, u64), KeptDir>,
    names: usize,
    /// `/proc/self/mountinfo`, polled for changes of the mount table
    /// (`None`: cannot be watched, nothing is kept).
    mounts: Option<File>,
    /// Set once `mounts` was opened (or could not be).
    watching: bool,
    /// How many changes of the mount table were seen.
    mount_changes: u64,
}

static KEPT: LazyLock<Mutex<Kept>> = LazyLock::new(Mutex::default);

fn kept() -> std::sync::MutexGuard<'static, Kept> {
    KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Drops every answer when a mount was made or removed since the last
/// call; false when mounts cannot be watched (then nothing is kept).
pub fn mounts_unchanged() -> bool {
    let mut kept = kept();
    if !kept.watching {
        kept.watching = true;
        kept.mounts = File::open("/proc/self/mountinfo").ok();
        return kept.mounts.is_some();
    }
    let Some(mounts) = &kept.mounts else {
        return false;
    };
    // The kernel flags the file when the namespace's mount table changed
    // since it was opened or last polled.
    let mut fds = [nix::poll::PollFd::new(
        mounts.as_fd(),
        nix::poll::PollFlags::POLLPRI,
    )];
    let changed = match nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().is_none_or(|r| {
            r.intersects(nix::poll::PollFlags::POLLPRI | nix::poll::PollFlags::POLLERR)
        }),
        Err(_) => true,
    };
    if changed {
        kept.clear();
        kept.mount_changes += 1;
    }
    true
}

/// How many changes of the mount table were seen so far, polled now;
/// `None` when it cannot be watched. Answers taken between two equal
/// counts were taken under one mount table.
pub fn mount_epoch() -> Option<u64> {
    mounts_unchanged().then(|| kept().mount_changes)
}

/// The answer kept for `name` in `dir`, if `dir` is as it was then.
pub fn get(dir: &DirState, name: &[u8]) -> Option<Stat> {
    let stat = kept().get(dir, name)?;
    #[cfg(test)]
    tests::count_given(name);
    Some(stat)
}

/// Keeps `stat`, the answer for `name` in `dir` as it is.
pub fn put(dir: &DirState, name: &[u8], stat: Stat) {
    kept().put(dir, name, stat);
}

impl Kept {
    fn get(&self, dir: &DirState, name: &[u8]) -> Option<Stat> {
        let kept_dir = self.dirs.get(&(dir.dev, dir.ino))?;
        (kept_dir.ctime == dir.ctime).then(|| kept_dir.names.get(name).copied())?
    }

    fn put(&mut self, dir: &DirState, name: &[u8], stat: Stat) {
        if self.names >= MAX_NAMES && self.get(dir, name).is_none() {
            self.clear();
        }
        let fresh = || KeptDir {
            ctime: dir.ctime,
            names: HashMap::default(),
        };
        let entry = self.dirs.entry((dir.dev, dir.ino)).or_insert_with(fresh);
        let mut dropped = 0;
        if entry.ctime != dir.ctime {
            // Changed since: its old answers are void.
            dropped = entry.names.len();
            *entry = fresh();
        }
        let added = entry.names.insert(name.into(), stat).is_none();
        self.names = self.names - dropped + usize::from(added);
    }

    fn clear(&mut self) {
        self.dirs.clear();
        self.names = 0;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::{
        fs,
        os::unix::fs::MetadataExt as _,
        path::Path,
        sync::atomic::{AtomicUsize, Ordering},
        time::Instant,
    };

    use super::*;
    use crate::bazel::sandbox::lookup::DirFds;

    /// Answers given from what was kept, for names starting `kept-test`
    /// (other tests read sandboxes at the same time).
    static GIVEN: AtomicUsize = AtomicUsize::new(0);

    pub fn count_given(name: &[u8]) {
        if name.starts_with(b"kept-test") {
            GIVEN.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Held by the tests that count kept answers or change the mount
    /// table: a mount clears what was kept, and both count `GIVEN`.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    pub(in crate::bazel::sandbox) fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn given() -> usize {
        GIVEN.load(Ordering::Relaxed)
    }

    /// Waits (deadline 10 s) until `dir`'s ctime is old enough for its
    /// answers to be kept.
    pub(in crate::bazel::sandbox) fn settle(dir: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let meta = fs::metadata(dir).unwrap();
            if settled(meta.ctime(), meta.ctime_nsec()) {
                return;
            }
            assert!(Instant::now() < deadline, "{} never settled", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A directory below `tmp` holding a file of each name (each file's
    /// content differs), once it has settled; the directory and the files.
    fn settled_files(
        tmp: &Path,
        names: [&str; 2],
    ) -> (std::path::PathBuf, [std::path::PathBuf; 2]) {
        let dir = fs::canonicalize(tmp).unwrap().join("dir");
        fs::create_dir(&dir).unwrap();
        let files = names.map(|name| dir.join(name));
        for file in &files {
            fs::write(file, file.as_os_str().as_encoded_bytes()).unwrap();
        }
        settle(&dir);
        (dir, files)
    }

    /// One walk's answer for `path`, as (device, inode) or the errno.
    fn walk_lstat(path: &Path) -> Result<(u64, u64), Option<i32>> {
        DirFds::default()
            .lstat(path)
            .map(|s| (s.dev, s.ino))
            .map_err(|e| e.raw_os_error())
    }

    fn plain(path: &Path) -> Result<(u64, u64), Option<i32>> {
        fs::symlink_metadata(path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|e| e.raw_os_error())
    }

    /// A settled directory's answers are given again to later walks (the
    /// positive control), and every answer is the plain call's: after a
    /// file is renamed over a kept name, after one is removed, after one
    /// is made; in a directory too recent to keep anything, nothing is
    /// given from what was kept.
    #[test]
    fn kept_answers_are_the_plain_calls_and_change_with_the_directory() {
        let _alone = one_at_a_time();
        let tmp = tempfile::tempdir().unwrap();
        let (dir, [a, b]) = settled_files(tmp.path(), ["kept-test-a", "kept-test-b"]);
        assert_eq!(walk_lstat(&a), plain(&a));
        let before = given();
        assert_eq!(walk_lstat(&a), plain(&a));
        assert_eq!(walk_lstat(&b), plain(&b));
        assert_eq!(walk_lstat(&b), plain(&b));
        assert_eq!(
            given() - before,
            2,
            "the second walk's answers were kept ones"
        );

        // Another file renamed over a kept name, one removed: the
        // directory changed, and settled again (so it is its new state,
        // not its youth, that voids the kept answers).
        let (old_a, new) = (plain(&a), dir.join("kept-test-new"));
        fs::write(&new, "new").unwrap();
        fs::rename(&new, &a).unwrap();
        fs::remove_file(&b).unwrap();
        assert_ne!(plain(&a), old_a);
        settle(&dir);
        assert_eq!(walk_lstat(&a), plain(&a));
        assert_eq!(walk_lstat(&b), Err(Some(libc::ENOENT)));
        fs::write(&b, "again").unwrap();
        assert_eq!(walk_lstat(&b), plain(&b));

        // Not settled: nothing given from what was kept.
        let fresh = dir.join("kept-test-fresh");
        fs::create_dir(&fresh).unwrap();
        let c = fresh.join("kept-test-c");
        fs::write(&c, "c").unwrap();
        let before = given();
        for _ in 0..3 {
            assert_eq!(walk_lstat(&c), plain(&c));
        }
        let fresh_given = given() - before;
        assert_eq!(fresh_given, 0, "answers kept in an unsettled directory");
    }

    /// Past `MAX_NAMES` everything is dropped, and a directory's new
    /// state drops its old answers: the count stays exact.
    #[test]
    fn kept_names_are_bounded_and_counted() {
        let mut kept = Kept::default();
        let stat = Stat::of(&nix::sys::stat::stat("/").unwrap());
        let (old, new) = (
            DirState {
                dev: 1,
                ino: 2,
                ctime: (3, 0),
            },
            DirState {
                dev: 1,
                ino: 2,
                ctime: (4, 0),
            },
        );
        for i in 0..MAX_NAMES {
            kept.put(&old, format!("n{i}").as_bytes(), stat);
        }
        kept.put(&old, b"n0", stat);
        assert_eq!(kept.names, MAX_NAMES, "a name kept again counts once");
        assert_eq!(kept.get(&old, b"n7"), Some(stat));
        kept.put(&old, b"one more", stat);
        assert_eq!(kept.names, 1, "all dropped past the bound");
        assert_eq!(kept.get(&old, b"n7"), None);
        assert_eq!(kept.get(&old, b"one more"), Some(stat));
        kept.put(&new, b"n8", stat);
        assert_eq!(kept.names, 1, "the old state's answer dropped");
        assert_eq!(kept.get(&old, b"one more"), None);
        assert_eq!(kept.get(&new, b"n8"), Some(stat));
    }

    /// Unmounts `0` when dropped (a failed test leaves no mount behind).
    pub(in crate::bazel::sandbox) struct Mounted<'a>(&'a Path);

    /// `file` bind-mounted onto `onto` (as root), until dropped.
    pub(in crate::bazel::sandbox) fn bind<'a>(file: &Path, onto: &'a Path) -> Mounted<'a> {
        // SAFETY: plain geteuid(2).
        let uid = unsafe { libc::geteuid() };
        assert_eq!(uid, 0, "this test bind-mounts a file: run it as root");
        let status = std::process::Command::new("mount")
            .arg("--bind")
            .args([file, onto])
            .status()
            .unwrap();
        assert!(status.success(), "mount --bind: {status}");
        Mounted(onto)
    }

    impl Drop for Mounted<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }

    /// A file bind-mounted over a kept name leaves its directory as it
    /// was: the next walk sees the mount table changed and answers with
    /// the mounted file, as the plain call does. Mounts in this
    /// process's namespace: needs root (as `cargo xtask test` runs).
    #[test]
    fn a_mount_over_a_kept_name_is_answered_at_the_next_walk() {
        let _alone = one_at_a_time();
        let tmp = tempfile::tempdir().unwrap();
        let (_, [name, other]) = settled_files(tmp.path(), ["kept-test-m", "kept-test-other"]);
        assert_eq!(walk_lstat(&name), plain(&name));
        let before = given();
        assert_eq!(walk_lstat(&name), plain(&name));
        assert_eq!(given() - before, 1, "positive control: the answer was kept");

        let _mounted = bind(&other, &name);
        assert_eq!(plain(&name), plain(&other));
        assert_eq!(walk_lstat(&name), plain(&other));
    }
}
