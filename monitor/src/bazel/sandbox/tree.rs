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
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{
    dir::{Dir, Type},
    fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag},
    sys::stat::{FileStat, Mode},
};

use super::lookup::Stat;

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
        let fd = nix::fcntl::open(execroot, flags, Mode::empty())?;
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
        let how = OpenHow::new()
            .flags(SUBDIR_FLAGS)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = match openat2(root.fd.as_fd(), &dir.rel, how) {
            // Before Linux 5.6, or a seccomp filter that refuses it: by
            // path; the identity check below still refuses any other
            // directory than the one listed.
            Err(nix::errno::Errno::ENOSYS) => {
                nix::fcntl::open(&dir.path, SUBDIR_FLAGS, Mode::empty())?
            }
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
    pub fn list(&self, room: usize) -> io::Result<Listing> {
        let mut dir = Dir::from_fd(self.fd.try_clone()?)?;
        let mut listing = Listing::default();
        for entry in dir.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            if name == "." || name == ".." {
                continue;
            }
            listing.count += 1;
            if listing.count > room {
                break;
            }
            let is_link = match entry.file_type() {
                // A directory's identity and time are needed; a file
                // system that gives no type is asked.
                Some(Type::Directory) | None => {
                    let Ok(st) = self.stat(name) else { continue };
                    let stat = Stat::of(&st);
                    if stat.is_dir() {
                        listing.dirs.push((name.to_os_string(), st));
                        continue;
                    }
                    stat.is_symlink()
                }
                Some(kind) => kind == Type::Symlink,
            };
            if is_link {
                listing.links.push(name.to_os_string());
            }
        }
        Ok(listing)
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
