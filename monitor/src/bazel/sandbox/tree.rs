//! A sandbox's tree read through directory descriptors. Each directory
//! below the execroot is opened from the execroot's descriptor without
//! following any symlink (`openat2`, `RESOLVE_NO_SYMLINKS`), checked to be
//! the directory its parent listed (device and inode), and its entries are
//! listed, dated and read through that descriptor. Read by path instead,
//! an action could swap a directory, between the listing and the read,
//! for a symlink to an old directory of links or for that directory
//! renamed into place (which only the identity check catches), and have
//! those links read as the sandbox's.
use std::{
    ffi::{OsStr, OsString},
    io,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{
    fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag},
    sys::stat::{FileStat, Mode},
};

use rustix::fs::{FileType, RawDir};

use super::lookup::Stat;

/// Room for one `getdents64` call's entries (a name is at most 255
/// bytes, so any entry fits).
const DIRENTS_BYTES: usize = 32 * 1024;

thread_local! {
    /// The listing buffer of the thread reading sandboxes.
    static DIRENTS: std::cell::RefCell<Vec<u8>> =
        std::cell::RefCell::new(Vec::with_capacity(DIRENTS_BYTES));
}

/// A directory of the tree, open.
pub(super) struct TreeDir {
    fd: OwnedFd,
    /// Its path: the execroot's joined with `rel`.
    pub path: PathBuf,
    /// Its path below the execroot (empty for the execroot).
    rel: PathBuf,
}

/// A subdirectory listed, not yet opened.
pub(super) struct Pending {
    rel: PathBuf,
    pub path: PathBuf,
    pub listed: FileStat,
}

/// What a directory holds, by kind.
#[derive(Default)]
pub(super) struct Listing {
    /// Subdirectories: name, identity and status, in the listing's order.
    pub dirs: Vec<(OsString, FileStat)>,
    /// Symlinks' names.
    pub links: Vec<OsString>,
    /// Entries of any kind (what the walk's bound counts).
    pub count: usize,
}

impl TreeDir {
    /// The execroot, opened by its path.
    pub fn root(execroot: &Path) -> io::Result<TreeDir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let fd = without_atime(flags, |flags| {
            nix::fcntl::open(execroot, flags, Mode::empty())
        })?;
        Ok(TreeDir {
            fd,
            path: execroot.to_path_buf(),
            rel: PathBuf::new(),
        })
    }

    /// The subdirectory `name` this directory listed as `listed`, to be
    /// opened when its turn comes (one descriptor open at a time below the
    /// execroot, however wide the tree).
    pub fn pending(&self, name: &OsStr, listed: FileStat) -> Pending {
        Pending {
            rel: self.rel.join(name),
            path: self.path.join(name),
            listed,
        }
    }

    /// `dir` opened beneath `root` through no symlink; an error when it is
    /// gone, or is no longer the directory listed (`ErrorKind::Other`).
    pub fn open(root: &TreeDir, dir: Pending) -> io::Result<TreeDir> {
        let beneath = |flags| {
            let how = OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
            openat2(root.fd.as_fd(), &dir.rel, how)
        };
        let fd = match without_atime(SUBDIR_FLAGS, beneath) {
            // Before Linux 5.6, or a seccomp filter that refuses it: by
            // path; the identity check below still refuses any other
            // directory than the one listed.
            Err(nix::errno::Errno::ENOSYS) => without_atime(SUBDIR_FLAGS, |flags| {
                nix::fcntl::open(&dir.path, flags, Mode::empty())
            })?,
            fd => fd?,
        };
        let now = nix::sys::stat::fstat(fd.as_fd())?;
        if (now.st_dev, now.st_ino) != (dir.listed.st_dev, dir.listed.st_ino) {
            return Err(io::Error::other(
                "replaced by another directory since it was listed",
            ));
        }
        Ok(TreeDir {
            fd,
            path: dir.path,
            rel: dir.rel,
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Its entries, up to `room` of them (more are counted, not kept).
    ///
    /// `getdents64` into this thread's buffer through the directory's own
    /// descriptor (`rustix::fs::RawDir`): a `DIR` stream took a duplicate
    /// descriptor and a 32 KiB buffer per directory, 30 ms of a bench
    /// build's daemon CPU sampled.
    pub fn list(&self, room: usize) -> io::Result<Listing> {
        rustix::fs::seek(&self.fd, rustix::fs::SeekFrom::Start(0))?;
        DIRENTS.with_borrow_mut(|buf| {
            let mut entries = RawDir::new(&self.fd, buf.spare_capacity_mut());
            let mut listing = Listing::default();
            while let Some(entry) = entries.next() {
                let entry = entry?;
                let name = OsStr::from_bytes(entry.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                listing.count += 1;
                if listing.count > room {
                    break;
                }
                self.sort_entry(name, entry.file_type(), &mut listing);
            }
            Ok(listing)
        })
    }

    /// Puts the entry `name` of type `kind` in `listing`: a directory with
    /// its identity and time, a symlink by name, anything else nowhere.
    fn sort_entry(&self, name: &OsStr, kind: FileType, listing: &mut Listing) {
        let is_link = match kind {
            // A directory's identity and time are needed; a file
            // system that gives no type is asked.
            FileType::Directory | FileType::Unknown => {
                let Ok(st) = self.stat(name) else { return };
                let stat = Stat::of(&st);
                if stat.is_dir() {
                    listing.dirs.push((name.to_os_string(), st));
                    return;
                }
                stat.is_symlink()
            }
            kind => kind == FileType::Symlink,
        };
        if is_link {
            listing.links.push(name.to_os_string());
        }
    }

    /// `lstat` of the entry `name`.
    pub fn stat(&self, name: &OsStr) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstatat(
            self.fd.as_fd(),
            name,
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )?)
    }

    /// Its own status, now.
    pub fn own_stat(&self) -> io::Result<FileStat> {
        Ok(nix::sys::stat::fstat(self.fd.as_fd())?)
    }
}

/// How a directory below the execroot is opened: for listing, and not if
/// it is a symlink.
const SUBDIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_NOFOLLOW);

/// Set once the kernel refused `O_NOATIME` (the daemon neither owns the
/// tree nor has `CAP_FOWNER`).
static ATIME_KEPT: AtomicBool = AtomicBool::new(false);

/// `open` with `flags` and `O_NOATIME`: listing a directory would otherwise
/// stamp its access time, a journaled inode write for each directory of
/// every sandbox (ext4's `touch_atime`, about a tenth of a bench build's
/// sandbox reads sampled). Without it when refused.
fn without_atime(
    flags: OFlag,
    open: impl Fn(OFlag) -> nix::Result<OwnedFd>,
) -> nix::Result<OwnedFd> {
    if ATIME_KEPT.load(Ordering::Relaxed) {
        return open(flags);
    }
    match open(flags | OFlag::O_NOATIME) {
        Err(nix::errno::Errno::EPERM) => {
            ATIME_KEPT.store(true, Ordering::Relaxed);
            open(flags)
        }
        fd => fd,
    }
}

#[cfg(test)]
thread_local! {
    /// Tests: `openat2` answers `ENOSYS`, as on a kernel without it.
    pub(super) static NO_OPENAT2: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn openat2(root: BorrowedFd<'_>, rel: &Path, how: OpenHow) -> nix::Result<OwnedFd> {
    #[cfg(test)]
    if NO_OPENAT2.with(std::cell::Cell::get) {
        return Err(nix::errno::Errno::ENOSYS);
    }
    nix::fcntl::openat2(root, rel, how)
}

/// `st`'s ctime.
pub(super) fn ctime(st: &FileStat) -> SystemTime {
    UNIX_EPOCH + Duration::new(st.st_ctime.max(0) as u64, st.st_ctime_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More entries than one `getdents64` call returns, of each kind; and
    /// the bound, which counts what it does not keep.
    #[test]
    fn a_listing_sorts_every_entry_and_stops_past_its_room() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "n".repeat(200);
        for i in 0..2000 {
            std::os::unix::fs::symlink("/t", tmp.path().join(format!("{long}{i}"))).unwrap();
        }
        for i in 0..3 {
            std::fs::create_dir(tmp.path().join(format!("d{i}"))).unwrap();
        }
        std::fs::write(tmp.path().join("file"), b"").unwrap();
        let dir = TreeDir::root(tmp.path()).unwrap();
        for _ in 0..2 {
            let all = dir.list(usize::MAX).unwrap();
            assert_eq!(
                (all.links.len(), all.dirs.len(), all.count),
                (2000, 3, 2004)
            );
        }
        let bounded = dir.list(10).unwrap();
        assert_eq!(bounded.count, 11, "one past the room, then it stops");
        assert!(bounded.links.len() + bounded.dirs.len() <= 10);
    }

    /// Where `O_NOATIME` is refused (`EPERM`: not the owner, no
    /// `CAP_FOWNER`), the directory is opened without it, and later opens
    /// do not ask again.
    #[test]
    fn a_refused_noatime_opens_without_it() {
        let asked = std::cell::RefCell::new(Vec::new());
        let open = |flags: OFlag| {
            asked.borrow_mut().push(flags.contains(OFlag::O_NOATIME));
            if flags.contains(OFlag::O_NOATIME) {
                Err(nix::errno::Errno::EPERM)
            } else {
                nix::fcntl::open("/", flags, Mode::empty())
            }
        };
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        assert!(without_atime(flags, open).is_ok());
        assert!(without_atime(flags, open).is_ok());
        let asked = asked.into_inner();
        // Another test may have been refused first: then none asked.
        assert!(
            asked == [true, false, false] || asked == [false, false],
            "{asked:?}"
        );
        assert!(ATIME_KEPT.load(Ordering::Relaxed));
    }
}
