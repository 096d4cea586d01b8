//! `lstat`, `stat` and `readlink` of absolute paths, relative to their
//! directory opened once. Reading a sandbox asks these of every link and
//! every hop of its chain: 60,000 paths of 10+ components on the bench
//! build, and walking each from `/` was most of their cost (the kernel's
//! `link_path_walk`); the links of one walk sit in few directories.
use std::{
    ffi::OsStr,
    io,
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use nix::{
    fcntl::{AT_FDCWD, AtFlags, OFlag},
    sys::stat::{FileStat, Mode, SFlag},
};

use crate::events::paths;

/// Directories held open at most, the oldest closed first: the links of
/// one sandbox directory lead to one or two others (the main execroot's,
/// the source tree's), and reads run in parallel, each holding its own.
const MAX_OPEN: usize = 8;

/// What `lstat`/`stat` said, reduced to what a declaration keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    fn of(st: &FileStat) -> Stat {
        Stat {
            mode: st.st_mode,
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }

    fn kind(&self) -> u32 {
        self.mode & SFlag::S_IFMT.bits()
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == SFlag::S_IFDIR.bits()
    }

    pub fn is_symlink(&self) -> bool {
        self.kind() == SFlag::S_IFLNK.bits()
    }

    #[cfg(test)]
    pub fn is_file(&self) -> bool {
        self.kind() == SFlag::S_IFREG.bits()
    }
}

/// Directories opened (`O_PATH`) by path, for the lookups of one walk.
/// A path the kernel would not read as "this directory, then this name"
/// (not normal: `.`, `..`, a trailing `/`) is looked up whole, as is one
/// whose directory cannot be opened: the answer, or the error, is then the
/// plain call's.
#[derive(Default)]
pub(crate) struct DirFds {
    /// Newest last; few enough that a scan beats hashing.
    open: Vec<(PathBuf, Option<OwnedFd>)>,
}

impl DirFds {
    pub fn lstat(&mut self, path: &Path) -> io::Result<Stat> {
        let (dir, name) = self.split(path);
        let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
        Ok(Stat::of(&st))
    }

    /// Follows symlinks, as `stat` does.
    pub fn stat(&mut self, path: &Path) -> io::Result<Stat> {
        let (dir, name) = self.split(path);
        let st = nix::sys::stat::fstatat(dir, name, AtFlags::empty())?;
        Ok(Stat::of(&st))
    }

    pub fn read_link(&mut self, path: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.split(path);
        Ok(PathBuf::from(nix::fcntl::readlinkat(dir, name)?))
    }

    /// The directory to look `path` up in, and the name to look up.
    fn split<'a>(&'a mut self, path: &'a Path) -> (BorrowedFd<'a>, &'a OsStr) {
        // A name at the root is looked up whole, as are paths not normal.
        let Some((dir, name)) =
            paths::split_normal(path.as_os_str().as_bytes()).filter(|(dir, _)| *dir != b"/")
        else {
            return (AT_FDCWD, path.as_os_str());
        };
        // Both are normal paths: equal bytes are equal components, and
        // comparing bytes skips `Path`'s component parsing (measured: a
        // tenth of a sandbox read's user time).
        let held = match self
            .open
            .iter()
            .rposition(|(d, _)| d.as_os_str().as_bytes() == dir)
        {
            Some(i) => i,
            None => {
                if self.open.len() >= MAX_OPEN {
                    self.open.remove(0);
                }
                let dir = Path::new(OsStr::from_bytes(dir));
                let fd = nix::fcntl::open(
                    dir,
                    OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                );
                self.open.push((dir.to_path_buf(), fd.ok()));
                self.open.len() - 1
            }
        };
        match &self.open[held].1 {
            Some(fd) => (fd.as_fd(), OsStr::from_bytes(name)),
            None => (AT_FDCWD, path.as_os_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt as _};

    use super::*;

    fn same(stat: io::Result<Stat>, meta: io::Result<fs::Metadata>) {
        match (stat, meta) {
            (Ok(s), Ok(m)) => {
                assert_eq!((s.dev, s.ino, s.mode), (m.dev(), m.ino(), m.mode()));
            }
            (Err(a), Err(b)) => assert_eq!(a.raw_os_error(), b.raw_os_error()),
            (a, b) => panic!("{a:?} vs {b:?}"),
        }
    }

    /// Every answer is the plain call's, errors included: a file, a link
    /// chain through a linked directory, a non-UTF-8 name, a link loop, a
    /// name longer than the kernel allows, paths that are not normal, a
    /// missing directory, more directories than are held open.
    #[test]
    fn answers_as_the_plain_calls_do() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("src/lib")).unwrap();
        fs::write(root.join("src/lib/a"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("src/lib"), root.join("lib")).unwrap();
        std::os::unix::fs::symlink("lib/a", root.join("rel")).unwrap();
        std::os::unix::fs::symlink(root.join("rel"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let odd = root.join(OsStr::from_bytes(b"odd\xff\xfe"));
        std::os::unix::fs::symlink(OsStr::from_bytes(b"t\xff"), &odd).unwrap();
        let mut paths = vec![
            root.join("src/lib/a"),
            root.join("lib/a"),
            root.join("rel"),
            root.join("abs"),
            root.join("loop"),
            odd,
            root.join("x".repeat(300)),
            root.join("gone/a"),
            root.join("src/./lib/a"),
            root.join("src/../lib"),
            root.join("lib/"),
            root.join("lib/."),
            PathBuf::from("/"),
            PathBuf::from("relative"),
        ];
        for i in 0..MAX_OPEN + 2 {
            let dir = root.join(format!("d{i}"));
            fs::create_dir(&dir).unwrap();
            paths.push(dir.join("missing"));
        }
        paths.push(root.join("src/lib/a"));
        let mut fds = DirFds::default();
        for path in &paths {
            same(fds.lstat(path), fs::symlink_metadata(path));
            same(fds.stat(path), fs::metadata(path));
            let (a, b) = (fds.read_link(path), fs::read_link(path));
            match (&a, &b) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", path.display()),
                (Err(a), Err(b)) => assert_eq!(a.raw_os_error(), b.raw_os_error()),
                _ => panic!("{}: {a:?} vs {b:?}", path.display()),
            }
        }
        assert!(fds.open.len() <= MAX_OPEN, "{} held open", fds.open.len());
        assert_eq!(
            fds.read_link(&root.join("loop")).unwrap(),
            Path::new("loop"),
            "positive control: a link read through a held directory"
        );
        assert!(fds.open.iter().any(|(d, fd)| d == &root && fd.is_some()));
    }
}
