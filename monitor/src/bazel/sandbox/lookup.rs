//! `lstat`, `stat` and `readlink` of absolute paths, relative to their
//! directory opened once. Reading a sandbox asks these of every link and
//! every hop of its chain: 60,000 paths of 10+ components on the bench
//! build, and walking each from `/` was most of their cost (the kernel's
//! `link_path_walk`); the links of one walk sit in few directories.
use std::{
    ffi::{OsStr, OsString},
    fs, io,
    os::{
        fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::{
    NixPath as _,
    fcntl::{AT_FDCWD, AtFlags, OFlag},
    sys::stat::{FileStat, Mode, SFlag},
};

use super::kept_stats::{self, DirState};
use crate::events::paths;

/// Directories held open at most, the oldest closed first: the links of
/// one sandbox directory lead to one or two others (the main execroot's,
/// the source tree's), and reads run in parallel, each holding its own.
const MAX_OPEN: usize = 8;

/// A link's target read at once up to this many bytes (the kernel's
/// `PATH_MAX`); a longer one takes `nix`'s growing buffer.
const LINK_BUF: usize = libc::PATH_MAX as usize;

/// What `lstat`/`stat` said, reduced to what a declaration keeps: what
/// the object is (its file type; its permissions may change), and which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `st_mode`'s file type bits.
    mode: u32,
    pub dev: u64,
    pub ino: u64,
}

impl Stat {
    pub(super) fn of(st: &FileStat) -> Stat {
        Stat {
            mode: st.st_mode & SFlag::S_IFMT.bits(),
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

/// This process's `/proc/self/fd`, opened once (`None` without `/proc`):
/// a name read through it skips looking up `/proc/self` each time (1.2
/// against 1.8 µs, measured).
fn own_fds() -> Option<&'static OwnedFd> {
    static FDS: OnceLock<Option<OwnedFd>> = OnceLock::new();
    FDS.get_or_init(|| {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        nix::fcntl::open("/proc/self/fd", flags, Mode::empty()).ok()
    })
    .as_ref()
}

/// Directories opened (`O_PATH`) by path, for the lookups of one walk.
/// A path the kernel would not read as "this directory, then this name"
/// (not normal: `.`, `..`, a trailing `/`) is looked up whole, as is one
/// whose directory cannot be opened: the answer, or the error, is then the
/// plain call's.
///
/// `lstat` answers in a directory that has not changed are kept across
/// walks ([`kept_stats`]).
#[derive(Default)]
pub(crate) struct DirFds {
    /// Newest last; few enough that a scan beats hashing.
    open: Vec<(PathBuf, Option<Held>)>,
    /// Whether kept answers may be used this walk (asked once: the mount
    /// table unchanged since the last walk).
    keeping: Option<bool>,
    /// What the answers depended on, when asked to record it.
    consulted: Option<Consulted>,
}

/// What a walk's answers depended on: the same questions asked again get
/// the same answers while each of these is as recorded (the rules of
/// [`kept_stats`]), so a walk's result can be given again
/// (`shared_trees`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Consulted {
    /// Directories names were looked up or read in, each with its state
    /// when opened (`None`: one whose answers cannot be relied on).
    pub dirs: Vec<(Vec<u8>, Option<DirState>)>,
    /// Directories named ([`DirFds::real_dir`]) and the names given.
    pub named: Vec<(Vec<u8>, Option<PathBuf>)>,
    /// `stat` answers (they follow links: more than one directory).
    pub followed: Vec<(PathBuf, Option<Stat>)>,
    /// A path was looked up whole, or by `realpath`: nothing above
    /// covers its answer.
    pub uncovered: bool,
}

impl Consulted {
    /// Each question once: a directory is opened again when it was
    /// closed for others ([`MAX_OPEN`]), a name asked again.
    pub fn dedup(&mut self) {
        self.dirs.sort_by(|a, b| a.0.cmp(&b.0));
        self.dirs.dedup();
        self.named.sort();
        self.named.dedup();
        self.followed.sort_by(|a, b| a.0.cmp(&b.0));
        self.followed.dedup();
    }

    /// Whether every answer recorded can be asked again.
    pub fn covered(&self) -> bool {
        !self.uncovered && self.dirs.iter().all(|(_, state)| state.is_some())
    }

    /// Whether the answers are still what they were: each directory is
    /// as it was (opened afresh), names and followed paths give the same.
    pub fn unchanged(&self) -> bool {
        let mut fds = DirFds::default();
        self.covered()
            && self.dirs.iter().all(|(dir, state)| {
                fds.held_dir(dir)
                    .is_some_and(|held| DirState::of(held.fd.as_fd()) == *state)
            })
            && self
                .named
                .iter()
                .all(|(dir, real)| fds.real_dir(dir) == *real)
            && self
                .followed
                .iter()
                .all(|(path, stat)| fds.stat(path).ok() == *stat)
    }
}

struct Held {
    fd: OwnedFd,
    /// Its state when answers in it may be kept; asked at its first
    /// `lstat` (outer `None`: not yet).
    state: Option<Option<DirState>>,
}

impl DirFds {
    pub fn lstat(&mut self, path: &Path) -> io::Result<Stat> {
        let keeping = *self
            .keeping
            .get_or_insert_with(kept_stats::mounts_unchanged);
        let Some((held, name)) = self.held_name(path) else {
            return lstat_at(AT_FDCWD, path.as_os_str());
        };
        let fd = held.fd.as_fd();
        let state = if keeping {
            *held.state.get_or_insert_with(|| DirState::of(fd))
        } else {
            None
        };
        if let Some(state) = &state
            && let Some(stat) = kept_stats::get(state, name)
        {
            return Ok(stat);
        }
        let stat = lstat_at(fd, OsStr::from_bytes(name))?;
        if let Some(state) = &state {
            kept_stats::put(state, name, stat);
        }
        Ok(stat)
    }

    /// Records from now on what the answers depend on ([`Consulted`]).
    pub fn record(&mut self) {
        self.consulted = Some(Consulted::default());
    }

    /// What the answers since [`DirFds::record`] depended on.
    pub fn consulted(&mut self) -> Option<Consulted> {
        self.consulted.take()
    }

    /// An answer nothing recorded covers was given (`realpath`).
    pub fn uncovered(&mut self) {
        if let Some(consulted) = &mut self.consulted {
            consulted.uncovered = true;
        }
    }

    /// Follows symlinks, as `stat` does.
    pub fn stat(&mut self, path: &Path) -> io::Result<Stat> {
        let (dir, name) = self.split(path);
        let stat = nix::sys::stat::fstatat(dir, name, AtFlags::empty()).map(|st| Stat::of(&st));
        if let Some(consulted) = &mut self.consulted {
            consulted
                .followed
                .push((path.to_path_buf(), stat.as_ref().ok().copied()));
        }
        Ok(stat?)
    }

    pub fn read_link(&mut self, path: &Path) -> io::Result<PathBuf> {
        let (dir, name) = self.split(path);
        read_link_at(dir, name)
    }

    /// `fs::canonicalize(dir)` for a directory, from the kernel's name of
    /// the directory it opens (`/proc/self/fd/N`): one `readlinkat` where
    /// `realpath` takes one per component (35,600 of them on the bench
    /// build, for about 2,700 directories), and the very object the
    /// lookups below it use. A directory deleted since it was opened, a
    /// name the kernel cannot give from this root, or no `/proc`: as
    /// `realpath` says.
    pub fn real_dir(&mut self, dir: &[u8]) -> Option<PathBuf> {
        let named = self.held(dir).and_then(|fd| {
            let fds = own_fds()?;
            nix::fcntl::readlinkat(fds.as_fd(), fd.as_raw_fd().to_string().as_str()).ok()
        });
        let real = match named.map(|n| n.into_vec()) {
            Some(real) if real.starts_with(b"/") && !real.ends_with(b" (deleted)") => {
                Some(PathBuf::from(OsString::from_vec(real)))
            }
            _ => fs::canonicalize(OsStr::from_bytes(dir)).ok(),
        };
        if let Some(consulted) = &mut self.consulted {
            consulted.named.push((dir.to_vec(), real.clone()));
        }
        real
    }

    /// The directory to look `path` up in, and the name to look up.
    fn split<'a>(&'a mut self, path: &'a Path) -> (BorrowedFd<'a>, &'a OsStr) {
        match self.held_name(path) {
            Some((held, name)) => (held.fd.as_fd(), OsStr::from_bytes(name)),
            None => (AT_FDCWD, path.as_os_str()),
        }
    }

    /// `path`'s directory, held, and the name to look up in it; `None`
    /// when the path is looked up whole ([`split_at_dir`], or its
    /// directory cannot be opened).
    fn held_name<'a>(&'a mut self, path: &'a Path) -> Option<(&'a mut Held, &'a [u8])> {
        // Looked up whole (the caller's fallback): no directory recorded
        // covers the answer.
        let Some((dir, name)) = split_at_dir(path) else {
            self.uncovered();
            return None;
        };
        Some((self.held_dir(dir)?, name))
    }

    /// `dir` opened, or held from before; `None` when it cannot be opened.
    fn held(&mut self, dir: &[u8]) -> Option<BorrowedFd<'_>> {
        self.held_dir(dir).map(|held| held.fd.as_fd())
    }

    fn held_dir(&mut self, dir: &[u8]) -> Option<&mut Held> {
        // Equal bytes are the same path, and comparing bytes skips
        // `Path`'s component parsing (measured: a tenth of a sandbox
        // read's user time).
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
                let mut held = fd.ok().map(|fd| Held { fd, state: None });
                if let Some(consulted) = &mut self.consulted {
                    // Its state when opened: answers taken in it hold
                    // while it is the same.
                    let state = held.as_ref().and_then(|h| DirState::of(h.fd.as_fd()));
                    if let Some(held) = &mut held {
                        held.state = Some(state);
                    }
                    consulted
                        .dirs
                        .push((dir.as_os_str().as_bytes().to_vec(), state));
                }
                self.open.push((dir.to_path_buf(), held));
                self.open.len() - 1
            }
        };
        if self.open[held].1.is_none() {
            self.uncovered();
        }
        self.open[held].1.as_mut()
    }
}

/// `path`'s directory and last name, when the kernel would look it up as
/// "this directory, then this name": a name at the root, and paths not
/// normal, are looked up whole.
fn split_at_dir(path: &Path) -> Option<(&[u8], &[u8])> {
    paths::split_normal(path.as_os_str().as_bytes()).filter(|(dir, _)| *dir != b"/")
}

/// `readlinkat`, read into a buffer on the stack and copied out at its
/// length: `nix`'s allocates `PATH_MAX` bytes and shrinks them for each
/// link (a sandbox read reads 60,000 on the bench build).
pub(crate) fn read_link_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<PathBuf> {
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); LINK_BUF];
    let len = name.with_nix_path(|name| {
        // SAFETY: `buf` is LINK_BUF writable bytes; `name` is a C string.
        unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                LINK_BUF,
            )
        }
    })?;
    let len = nix::errno::Errno::result(len)? as usize;
    if len >= LINK_BUF {
        // Perhaps cut short: `nix` grows its buffer until it is not.
        return Ok(PathBuf::from(nix::fcntl::readlinkat(dir, name)?));
    }
    // SAFETY: the kernel wrote the first `len` bytes.
    let target = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len) };
    Ok(PathBuf::from(OsString::from_vec(target.to_vec())))
}

fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Stat> {
    let st = nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(Stat::of(&st))
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::fs::MetadataExt as _};

    use super::*;

    fn same(stat: io::Result<Stat>, meta: io::Result<fs::Metadata>) {
        match (stat, meta) {
            (Ok(s), Ok(m)) => {
                let kind = m.mode() & SFlag::S_IFMT.bits();
                assert_eq!((s.dev, s.ino, s.mode), (m.dev(), m.ino(), kind));
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
        // The longest target a link may have (PATH_MAX less its NUL).
        let long_target = "t/".repeat(2047) + "t";
        std::os::unix::fs::symlink(&long_target, root.join("long")).unwrap();
        let odd = root.join(OsStr::from_bytes(b"odd\xff\xfe"));
        std::os::unix::fs::symlink(OsStr::from_bytes(b"t\xff"), &odd).unwrap();
        let mut paths = vec![
            root.join("src/lib/a"),
            root.join("lib/a"),
            root.join("rel"),
            root.join("abs"),
            root.join("loop"),
            root.join("long"),
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
        assert_eq!(
            fds.read_link(&root.join("long")).unwrap(),
            Path::new(&long_target)
        );
    }

    /// `real_dir` names what `realpath` names: a directory through a
    /// linked one, odd bytes, a name that ends as the kernel marks a
    /// deleted one, the root, missing and relative paths, a file; a
    /// directory renamed while held open is named where it went, and one
    /// removed is gone, not named " (deleted)".
    #[test]
    fn real_dirs_are_realpath_s() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("src/lib/deep")).unwrap();
        fs::create_dir_all(root.join(OsStr::from_bytes(b"odd\xff/x (deleted)"))).unwrap();
        fs::write(root.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("src/lib"), root.join("lib")).unwrap();
        std::os::unix::fs::symlink("src", root.join("rel")).unwrap();
        let dirs = [
            root.join("lib/deep"),
            root.join("rel/lib"),
            root.join(OsStr::from_bytes(b"odd\xff/x (deleted)")),
            root.join("src/../lib"),
            root.join("missing"),
            root.join("file"),
            PathBuf::from("/"),
            PathBuf::from(""),
            PathBuf::from("relative"),
        ];
        let mut fds = DirFds::default();
        for dir in &dirs {
            let bytes = dir.as_os_str().as_bytes();
            assert_eq!(fds.real_dir(bytes), fs::canonicalize(dir).ok(), "{dir:?}");
        }
        // The kernel's name, not a second walk: a directory renamed while
        // held is named where it is now, the object the lookups below it
        // reach (`realpath` of the old name finds nothing).
        let moved = root.join("moved");
        fs::create_dir(&moved).unwrap();
        assert_eq!(
            fds.real_dir(moved.as_os_str().as_bytes()),
            Some(moved.clone())
        );
        fs::rename(&moved, root.join("moved here")).unwrap();
        assert_eq!(
            fds.real_dir(moved.as_os_str().as_bytes()),
            Some(root.join("moved here"))
        );
        let doomed = root.join("doomed");
        fs::create_dir(&doomed).unwrap();
        let held = doomed.as_os_str().as_bytes();
        assert_eq!(fds.real_dir(held), Some(doomed.clone()));
        fs::remove_dir(&doomed).unwrap();
        assert_eq!(fds.real_dir(held), None, "removed while held");
    }
}
