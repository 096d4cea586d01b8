//! Bazel sandboxes: from a spawn's launcher command line and working
//! directory to what the spawn declared.
//!
//! Bazel materialises a spawn's declared inputs in a sandbox directory
//! (`<output_base>/sandbox/<strategy>/<id>/execroot/<workspace>`), mostly as
//! symlinks to the real files. What the spawn may open is therefore: anything
//! below its sandbox directory (its inputs, its outputs, its own scratch
//! space), the targets those symlinks point to (tools that resolve links
//! before opening), and the writable directories the launcher was given.
mod kept_stats;
mod lookup;
pub mod made_links;
pub mod shared_trees;
mod tree;

use std::{
    ffi::{OsStr, OsString},
    fs,
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

pub(crate) use self::lookup::Stat;
use self::{
    lookup::DirFds,
    made_links::Targets,
    tree::{Pending, TreeDir},
};
pub(crate) use crate::policy::matchers::escape_glob;
use crate::{
    actions::{identities::Identities, links::LinkSources},
    events::paths,
    hashing::{HashMap, HashSet},
    policy::matchers::{PathMatcher, PatternSet},
};

/// Most sandbox entries read for one spawn; a larger tree is truncated with a
/// warning (its remaining inputs would show up as undeclared, never hidden).
const MAX_ENTRIES: usize = 200_000;

/// One sandboxed spawn, as its launcher described it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spawn {
    /// `linux-sandbox`, `process-wrapper`, … (argv[0]'s file name).
    pub launcher: String,
    /// The spawn's execroot inside the sandbox (linux-sandbox `-W`, else the
    /// launcher's working directory).
    pub execroot: PathBuf,
    /// `<output_base>/sandbox/<strategy>/<id>` when the execroot is inside
    /// one; the whole directory belongs to the spawn.
    pub sandbox_dir: Option<PathBuf>,
    /// The sandbox's numeric id (also in Bazel 7's `sandbox_<id>.scope`).
    pub sandbox_id: Option<u64>,
    /// Directories the launcher made writable (linux-sandbox `-w`).
    pub writable: Vec<PathBuf>,
    /// The spawned command: the launcher's arguments after `--`.
    pub command: Vec<String>,
    /// linux-sandbox `-N`: the spawn has a network namespace of its own.
    pub own_network: bool,
    /// When the launcher exec'd: symlinks in the sandbox changed after it
    /// were planted by the spawn, not by Bazel, and declare nothing.
    pub launched_at: Option<std::time::SystemTime>,
    /// The same moment in `CLOCK_MONOTONIC` ns (the kernel's event clock).
    pub launch_ktime_ns: u64,
    /// A Bazel persistent worker, not a launcher (see `bazel::workers`).
    pub persistent_worker: bool,
}

/// Reads a launcher's argv (NUL-separated, as in `/proc/<pid>/cmdline`) and
/// working directory.
pub fn parse_launch(argv: &[u8], cwd: &Path) -> Spawn {
    let args: Vec<String> = argv
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let launcher = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let mut spawn = Spawn {
        launcher,
        execroot: cwd.to_path_buf(),
        ..Default::default()
    };
    let mut i = 1;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            spawn.command = args[i + 1..].to_vec();
            break;
        }
        // process-wrapper takes only `--name=value` options and no `--`:
        // the command starts at its first other argument.
        if spawn.launcher == "process-wrapper" && !arg.starts_with('-') {
            spawn.command = args[i..].to_vec();
            break;
        }
        // linux-sandbox options (getopt style: "-W DIR" or "-WDIR").
        let value = |flag: &str| -> Option<String> {
            if arg == flag {
                args.get(i + 1).cloned()
            } else {
                arg.strip_prefix(flag)
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            }
        };
        if let Some(dir) = value("-W") {
            spawn.execroot = absolute(cwd.as_os_str().as_bytes(), dir.as_bytes());
            i += if arg == "-W" { 2 } else { 1 };
            continue;
        }
        if let Some(dir) = value("-w") {
            spawn
                .writable
                .push(absolute(cwd.as_os_str().as_bytes(), dir.as_bytes()));
            i += if arg == "-w" { 2 } else { 1 };
            continue;
        }
        if arg == "-N" {
            spawn.own_network = true;
        }
        i += 1;
    }
    if let Some((dir, id)) = sandbox_dir_of(&spawn.execroot) {
        spawn.sandbox_dir = Some(dir);
        spawn.sandbox_id = Some(id);
    }
    spawn
}

/// `p` resolved against the directory `dir` (bytes: a link's target need
/// not be UTF-8).
fn absolute(dir: &[u8], p: &[u8]) -> PathBuf {
    PathBuf::from(OsString::from_vec(paths::resolve(dir, p)))
}

/// `…/sandbox/<strategy>/<id>/execroot/…` → (`…/sandbox/<strategy>/<id>`, id).
pub fn sandbox_dir_of(execroot: &Path) -> Option<(PathBuf, u64)> {
    let (dir, id) = sandbox_dir_in(execroot.as_os_str().as_bytes())?;
    Some((PathBuf::from(OsStr::from_bytes(dir)), id))
}

/// [`sandbox_dir_of`] on bytes: the part of `path` that names the sandbox
/// directory, for the last `execroot` component with
/// `sandbox/<strategy>/<digits>` right above it. Every link the Bazel
/// server makes is asked (`made_links`): by components, with their
/// allocations, it was 80 ms of a bench build.
pub fn sandbox_dir_in(path: &[u8]) -> Option<(&[u8], u64)> {
    const EXECROOT: &[u8] = b"execroot";
    let mut end = path.len();
    while let Some(at) = memchr::memmem::rfind(&path[..end], EXECROOT) {
        let after = at + EXECROOT.len();
        let whole = (at == 0 || path[at - 1] == b'/') && path.get(after).is_none_or(|&b| b == b'/');
        if whole && at > 0 {
            let dir = &path[..at - 1];
            let (above, id) = split_last(dir);
            let (above, _strategy) = split_last(above);
            let (_, sandbox) = split_last(above);
            if sandbox == b"sandbox" {
                let id = std::str::from_utf8(id).ok()?.parse().ok()?;
                return Some((dir, id));
            }
        }
        end = at;
    }
    None
}

/// `path` cut at its last `/`: what is above, and the last component.
fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match memchr::memrchr(b'/', path) {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// Writable directories the launcher gave the spawn outside its sandbox
/// (linux-sandbox: the host's `/tmp`, `/dev/shm`): the spawn may write there,
/// and read back what it created, but reading other files there is undeclared.
pub fn writable_patterns(spawn: &Spawn) -> Vec<String> {
    let root = spawn.sandbox_dir.as_deref().unwrap_or(&spawn.execroot);
    spawn
        .writable
        .iter()
        .filter(|d| !d.starts_with(root))
        .map(|d| pattern_below(d))
        .collect()
}

/// Where the spawn may write: its own sandbox (or execroot) tree, which
/// holds its outputs and scratch space. The real input files its symlinks
/// lead to are inputs only.
pub fn output_patterns(spawn: &Spawn) -> Vec<String> {
    let root = spawn.sandbox_dir.as_deref().unwrap_or(&spawn.execroot);
    vec![pattern_below(root), root.display().to_string()]
}

/// The spawn's declared paths: its sandbox (or execroot) tree and every
/// symlink target found in it, each hop of a chain included (Bazel links
/// sandbox inputs to the main execroot, which links to the source tree).
/// Links made after the launch declare nothing; the targets of those that
/// may have been ([`LinkSources`]) are returned apart as well. `made`: the
/// targets of the links Bazel was seen making (`made_links`), taken
/// instead of reading those links back.
pub fn declared_patterns(spawn: &Spawn, made: &Targets) -> (PatternSet, LinkSources, Identities) {
    let mut walk = SandboxWalk::new(spawn, made);
    walk.tree();
    walk.follow();
    let (targets, links, identities) = walk.finish();
    let mut patterns = own_patterns(walk_root(spawn));
    patterns.extend(targets);
    (patterns, links, identities)
}

/// The spawn's whole tree: its sandbox directory, or its execroot.
fn walk_root(spawn: &Spawn) -> &Path {
    spawn.sandbox_dir.as_deref().unwrap_or(&spawn.execroot)
}

/// What a spawn's own tree declares: itself and everything below it.
fn own_patterns(root: &Path) -> PatternSet {
    let mut patterns = PatternSet::default();
    patterns.push_path(root, true);
    patterns.push_path(root, false);
    patterns
}

/// What one sandbox read found so far.
struct SandboxWalk<'a> {
    spawn: &'a Spawn,
    /// [`walk_root`].
    root: &'a Path,
    /// The links Bazel made in this sandbox, as the kernel saw the calls.
    made: &'a Targets,
    /// The tree's symlinks, read and dated, not yet followed.
    surveyed: Vec<Surveyed>,
    /// Every directory of the tree was read.
    complete: bool,
    /// Some link led into the tree itself.
    inside_root: bool,
    /// The link targets' patterns.
    patterns: PatternSet,
    identities: Identities,
    /// Targets of links made before the launch, in place since.
    sure: HashSet<Vec<u8>>,
    /// Targets of links made just before the launch, with the link's name.
    ambiguous: Vec<(PathBuf, Vec<u8>)>,
    /// Targets of older links below a directory changed after the launch,
    /// with that directory's names.
    moved: Vec<(PathBuf, Vec<Vec<u8>>)>,
    real_dirs: RealDirs,
}

/// A symlink of the tree, its target and when it was made.
struct Surveyed {
    name: OsString,
    path: PathBuf,
    target: PathBuf,
    made: Made,
    /// The names of the directories above it changed after the launch.
    changed_above: Vec<Vec<u8>>,
}

impl<'a> SandboxWalk<'a> {
    fn new(spawn: &'a Spawn, made: &'a Targets) -> Self {
        let root = walk_root(spawn);
        SandboxWalk {
            spawn,
            root,
            made,
            surveyed: Vec::new(),
            complete: true,
            inside_root: false,
            patterns: PatternSet::default(),
            identities: Identities::hard_links_checked_below(root),
            sure: HashSet::default(),
            ambiguous: Vec::new(),
            moved: Vec::new(),
            real_dirs: RealDirs::default(),
        }
    }

    /// A directory of the tree that could not be read ([`unread`]).
    fn unread(&mut self, dir: &Path, e: &std::io::Error) {
        self.complete = false;
        unread(self.root, dir, e);
    }

    /// Reads the tree below the spawn's execroot, each directory with the
    /// names of the directories above it (within the tree) that changed
    /// after the launch: a link below one may have been moved in with it.
    fn tree(&mut self) {
        let execroot = match TreeDir::root(&self.spawn.execroot) {
            Ok(dir) => dir,
            Err(e) => return self.unread(&self.spawn.execroot.clone(), &e),
        };
        let mut room = MAX_ENTRIES;
        let mut stack: Vec<(Option<Pending>, Vec<Vec<u8>>)> = vec![(None, Vec::new())];
        while let Some((pending, changed_above)) = stack.pop() {
            let opened = match pending {
                None => None,
                Some(pending) => {
                    let path = pending.path.clone();
                    match TreeDir::open(&execroot, pending) {
                        Ok(dir) => Some(dir),
                        Err(e) => {
                            self.unread(&path, &e);
                            continue;
                        }
                    }
                }
            };
            let dir = opened.as_ref().unwrap_or(&execroot);
            let listing = match dir.list(room) {
                Ok(listing) => listing,
                Err(e) => {
                    self.unread(&dir.path.clone(), &e);
                    continue;
                }
            };
            if listing.count > room {
                log::warn!(
                    "sandbox {} has more than {MAX_ENTRIES} entries; reading stopped",
                    self.root.display()
                );
                self.complete = false;
                break;
            }
            room -= listing.count;
            for (name, listed) in listing.dirs {
                let mut names = changed_above.clone();
                if matches!(
                    made(tree::ctime(&listed), self.spawn.launched_at),
                    Made::After
                ) {
                    names.push(name.as_bytes().to_vec());
                }
                stack.push((Some(dir.pending(&name, listed)), names));
            }
            self.links_in(dir, listing.links, &changed_above);
        }
    }

    /// The symlinks of one directory `dir`; `changed_above`: the names of
    /// the directories above it that changed after the launch.
    ///
    /// Their targets are read before they are dated: a link the spawn
    /// replaced after its time was read would otherwise have the new
    /// target declared as Bazel's. A link's target cannot change in place:
    /// replacing it (a new name, a rename, a hard link) changes its
    /// directory's ctime. So a directory whose ctime, read after its
    /// links, is not after the launch dates them all, with one `statx`
    /// where each link took one (60,000 on the bench build). No link there
    /// was made after its directory's time; in a directory changed just
    /// before the launch, each counts as ambiguous (the cautious side: a
    /// link Bazel made then is ambiguous by its own time too). Only a
    /// directory changed after the launch has each link dated by its own
    /// ctime.
    fn links_in(&mut self, dir: &TreeDir, names: Vec<OsString>, changed_above: &[Vec<u8>]) {
        let mut read = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.path.join(&name);
            let target = match self.made.get(path.as_os_str().as_bytes()) {
                Some(target) => PathBuf::from(OsStr::from_bytes(target)),
                None => match lookup::read_link_at(dir.fd(), &name) {
                    Ok(target) => target,
                    Err(_) => continue,
                },
            };
            crate::seams::reached(crate::seams::Seam::SandboxLinkRead, &path);
            read.push((name, path, target));
        }
        if read.is_empty() {
            return;
        }
        let launched_at = self.spawn.launched_at;
        let dir_made = dir
            .own_stat()
            .ok()
            .map(|st| made(tree::ctime(&st), launched_at))
            .filter(|made| !matches!(made, Made::After));
        self.surveyed.reserve(read.len());
        for (name, path, target) in read {
            let made = match dir_made {
                Some(Made::Before) => Made::Before,
                Some(_) => Made::Ambiguous,
                None => match dir.stat(&name) {
                    Ok(st) => made(tree::ctime(&st), launched_at),
                    Err(_) => continue,
                },
            };
            self.surveyed.push(Surveyed {
                name,
                path,
                target,
                made,
                changed_above: changed_above.to_vec(),
            });
        }
    }

    /// Follows every surveyed link.
    fn follow(&mut self) {
        let surveyed = std::mem::take(&mut self.surveyed);
        // A link's chain records two files or three (the execroot's link,
        // the source file, its real path).
        let recent = surveyed
            .iter()
            .filter(|s| matches!(s.made, Made::Ambiguous))
            .count();
        self.identities.reserve(2 * recent, true);
        self.identities
            .reserve(2 * (surveyed.len() - recent), false);
        self.patterns.raw_exact.reserve(2 * surveyed.len());
        self.ambiguous.reserve(2 * recent);
        for link in surveyed {
            self.link(link);
        }
    }

    /// What the links declared: the patterns of their targets, which
    /// names may have been planted, the targets' identities.
    fn finish(self) -> (PatternSet, LinkSources, Identities) {
        let links = link_sources(
            self.spawn,
            self.root,
            &self.sure,
            self.ambiguous,
            self.moved,
        );
        (self.patterns, links, self.identities)
    }

    /// A symlink in the tree, its target and when it was made.
    fn link(&mut self, link: Surveyed) {
        let Surveyed {
            name,
            path,
            target,
            made,
            changed_above,
        } = link;
        let changed_above = &changed_above[..];
        let first = Some(target);
        let root = self.root.as_os_str().as_bytes();
        let inside_root = &mut self.inside_root;
        let mut inside = |t: &Path| {
            *inside_root |= is_at_or_below(t.as_os_str().as_bytes(), root);
        };
        let (patterns, real_dirs) = (&mut self.patterns, &mut self.real_dirs);
        match made {
            Made::After => log::warn!(
                "sandbox entry {} appeared after the spawn started (planted by it?): its target is not declared",
                path.display()
            ),
            // An old link in a directory that changed: the spawn may have
            // renamed a directory holding it into the tree.
            Made::Before if !changed_above.is_empty() => {
                push_link_chain(&path, first, patterns, real_dirs, |t, meta| {
                    inside(t);
                    if let Some(meta) = meta.filter(|m| !m.is_dir()) {
                        self.identities.insert(t, meta.dev, meta.ino);
                    }
                    self.moved.push((t.to_path_buf(), changed_above.to_vec()))
                })
            }
            Made::Before => push_link_chain(&path, first, patterns, real_dirs, |t, meta| {
                inside(t);
                match meta {
                    Some(meta) if meta.is_dir() => self.identities.check_linked_dir(t),
                    Some(meta) => self.identities.insert(t, meta.dev, meta.ino),
                    None => {}
                }
                self.sure.insert(t.as_os_str().as_bytes().to_vec());
            }),
            // Most of Bazel's own links are this recent. Their directories
            // are checked for new hard links too (a check only adds alerts);
            // their files' identities are not trusted.
            Made::Ambiguous => push_link_chain(&path, first, patterns, real_dirs, |t, meta| {
                inside(t);
                match meta {
                    Some(meta) if meta.is_dir() => self.identities.check_linked_dir(t),
                    Some(meta) => self.identities.insert_linked(t, meta.dev, meta.ino),
                    None => {}
                }
                self.ambiguous
                    .push((t.to_path_buf(), name.as_bytes().to_vec()))
            }),
        }
    }
}

/// A directory of the tree that could not be read: gone with its spawn
/// (nothing left to declare), or its links declare nothing (what they lead
/// to shows up as undeclared).
fn unread(root: &Path, dir: &Path, e: &std::io::Error) {
    if e.kind() != std::io::ErrorKind::NotFound {
        log::warn!(
            "sandbox {}: cannot read {}: {e}; the links below it declare nothing",
            root.display(),
            dir.display()
        );
    }
}

/// The targets only ambiguous or moved links declare (not below the
/// sandbox, not declared by another link), and until when a name the
/// action made may be one of those links.
fn link_sources(
    spawn: &Spawn,
    root: &Path,
    sure: &HashSet<Vec<u8>>,
    ambiguous: Vec<(PathBuf, Vec<u8>)>,
    moved: Vec<(PathBuf, Vec<Vec<u8>>)>,
) -> LinkSources {
    let only = |target: &PathBuf| {
        // Targets are normal paths: their ancestors are their byte prefixes.
        let bytes = target.as_os_str().as_bytes();
        // Most sandboxes' links are all recent (ambiguous): no `sure`
        // target to look each ancestor up in.
        !is_at_or_below(bytes, root.as_os_str().as_bytes())
            && (sure.is_empty()
                || !crate::actions::links::prefixes(bytes)
                    .chain([&b"/"[..]])
                    .any(|a| sure.contains(a)))
    };
    // Sized up front: grown entry by entry, its rehashes were 9 % of a
    // sandbox read's samples (`sandbox_read` under `perf`).
    let mut only_ambiguous: HashMap<Vec<u8>, Vec<Vec<u8>>> =
        HashMap::with_capacity_and_hasher(ambiguous.len(), Default::default());
    for (target, link_name) in ambiguous.into_iter().filter(|(t, _)| only(t)) {
        let names = only_ambiguous
            .entry(target.into_os_string().into_vec())
            .or_default();
        names.push(link_name);
    }
    // Kept as long as the spawn lives: no room held for the targets the
    // filter left out (links inside the sandbox, targets declared surely).
    if only_ambiguous.capacity() > 2 * only_ambiguous.len() {
        only_ambiguous.shrink_to_fit();
    }
    let mut only_moved: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::default();
    for (target, dir_names) in moved.into_iter().filter(|(t, _)| only(t)) {
        let names = only_moved
            .entry(target.into_os_string().into_vec())
            .or_default();
        names.extend(dir_names);
    }
    LinkSources::new(only_ambiguous, suspect_until(spawn)).with_moved(only_moved)
}

/// Until when a name the action made may be one of its ambiguous links: a
/// name made later has a file time after the launch.
fn suspect_until(spawn: &Spawn) -> u64 {
    spawn.launch_ktime_ns + PLANT_WINDOW.as_nanos() as u64
}

/// `path` is `dir` or below it (both normal: `Path::starts_with`, without
/// parsing components).
fn is_at_or_below(path: &[u8], dir: &[u8]) -> bool {
    path.strip_prefix(dir)
        .is_some_and(|rest| rest.is_empty() || rest[0] == b'/' || dir == b"/")
}

/// How far a link's file time may be from the moment it was made. File
/// times come from the coarse clock: a tick behind at most in theory, but
/// measured here further (a link `ln -s` made a few ms after the launch
/// carried a time before it in 1 of 8 runs, on a tickless VM kernel), and
/// the launch time is converted from the monotonic clock. Links this close
/// before the launch are ambiguous; a name the action made this soon after
/// it may be one of them.
const PLANT_WINDOW: Duration = Duration::from_secs(1);

/// When a sandbox link was made, by its inode's ctime against the launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Made {
    Before,
    /// Its time is within [`PLANT_WINDOW`] before the launch: it may be
    /// from just after.
    Ambiguous,
    After,
}

fn made(ctime: SystemTime, launched_at: Option<SystemTime>) -> Made {
    let Some(launch) = launched_at else {
        return Made::Before;
    };
    if ctime > launch {
        Made::After
    } else if ctime + PLANT_WINDOW > launch {
        Made::Ambiguous
    } else {
        Made::Before
    }
}

/// Resolved directories, cached for one walk: a sandbox's links point
/// into few directories, held open for the lookups of names in them
/// ([`DirFds`]), which also name them (one `readlink` of the held
/// descriptor, where `realpath` costs one per component).
/// The report resolves every sandbox input link at the end (200 spawns ×
/// 300 inputs: 2.3 s of `realpath` on the bench build, measured): the
/// absolute targets those links share are resolved once (`targets`).
#[derive(Default)]
pub(crate) struct RealDirs {
    /// By the directory's path bytes (hashing a `Path` parses it).
    dirs: HashMap<Vec<u8>, Option<PathBuf>>,
    targets: HashMap<PathBuf, Option<PathBuf>>,
    /// Whole paths many spawns ask for (see [`RealDirs::canonicalize_shared`]).
    shared: HashMap<PathBuf, Option<PathBuf>>,
    fds: DirFds,
}

/// Most whole paths remembered by [`RealDirs::canonicalize_shared`]; past
/// it, paths are resolved each time they are asked for.
const MAX_SHARED: usize = 1 << 16;

/// Symlinks followed before falling back to `realpath` (the kernel's own
/// limit is 40).
const MAX_LINKS: usize = 40;

impl RealDirs {
    /// `fs::canonicalize(path)`, with directories and absolute link
    /// targets cached: one `lstat` when the last component is no symlink,
    /// one more `readlink` when it is.
    pub(crate) fn canonicalize(&mut self, path: &Path) -> Option<PathBuf> {
        self.canonicalize_within(path, MAX_LINKS)
    }

    /// [`RealDirs::canonicalize`], remembered whole: for paths every
    /// spawn asks for (the report asks for each input through the main
    /// execroot, which all sandboxes of a build share).
    pub(crate) fn canonicalize_shared(&mut self, path: &Path) -> Option<PathBuf> {
        if let Some(known) = self.shared.get(path) {
            return known.clone();
        }
        let real = self.canonicalize(path);
        if self.shared.len() < MAX_SHARED {
            self.shared.insert(path.to_path_buf(), real.clone());
        }
        real
    }

    fn canonicalize_within(&mut self, path: &Path, links_left: usize) -> Option<PathBuf> {
        let meta = self.fds.lstat(path).ok()?;
        if !meta.is_symlink() {
            return self.resolve(path);
        }
        // A link resolves to what its target resolves to; an absolute
        // target of plain names is the same path from any link (others,
        // and long chains, are left to `realpath`).
        let target = self.fds.read_link(path).ok()?;
        let plain = target.is_absolute()
            && target.file_name().is_some()
            && !target.as_os_str().as_bytes().ends_with(b"/")
            && target
                .components()
                .skip(1)
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || links_left == 0 {
            return fs::canonicalize(path).ok();
        }
        if let Some(known) = self.targets.get(&target) {
            return known.clone();
        }
        let real = self.canonicalize_within(&target, links_left - 1);
        self.targets.insert(target, real.clone());
        real
    }

    /// The resolved path of `path`, whose last component is no symlink.
    fn resolve(&mut self, path: &Path) -> Option<PathBuf> {
        let (parent, name) = split_parent(path)?;
        if !self.dirs.contains_key(parent) {
            let real = self.fds.real_dir(parent);
            self.dirs.insert(parent.to_vec(), real);
        }
        Some(
            self.dirs
                .get(parent)?
                .as_ref()?
                .join(OsStr::from_bytes(name)),
        )
    }

    /// Whether `path` is a symlink, and what it leads to (`stat`): one
    /// `lstat` when it is no symlink (then both are the same).
    fn look(&mut self, path: &Path) -> (bool, Option<Stat>) {
        match self.fds.lstat(path) {
            Ok(meta) if meta.is_symlink() => (true, self.fds.stat(path).ok()),
            Ok(meta) => (false, Some(meta)),
            Err(_) => (false, None),
        }
    }
}

/// `path`'s parent directory and last name, as bytes: cut at the last `/`
/// when `path` is normal (the common case, without `Path`'s component
/// parsing, measured at a twentieth of a sandbox read's user time), else
/// as `Path::parent` and `Path::file_name` read it.
fn split_parent(path: &Path) -> Option<(&[u8], &[u8])> {
    if let Some(split) = paths::split_normal(path.as_os_str().as_bytes()) {
        return Some(split);
    }
    let (parent, name) = (path.parent()?, path.file_name()?);
    Some((parent.as_os_str().as_bytes(), name.as_bytes()))
}

/// Every hop of the symlink chain starting at `link` (a few at most), and
/// the path it finally resolves to (the execroot links whole source
/// directories, so a hop's target may itself be reached through a link);
/// each also handed to `declared`. `first`: `link`'s target, when the
/// caller has read it already.
pub(crate) fn push_link_chain(
    link: &Path,
    mut first: Option<PathBuf>,
    patterns: &mut PatternSet,
    real_dirs: &mut RealDirs,
    mut declared: impl FnMut(&Path, Option<&Stat>),
) {
    let mut push = |target: &Path, meta: Option<&Stat>, patterns: &mut PatternSet| {
        patterns.push_path(target, meta.is_some_and(|m| m.is_dir()));
        declared(target, meta);
    };
    let mut current = link.to_path_buf();
    // What `current` is, once known to be no symlink (the chain's end).
    let mut end_meta = None;
    let mut ended = false;
    for hop in 0..8 {
        let Some(target) = first
            .take()
            .or_else(|| real_dirs.fds.read_link(&current).ok())
        else {
            ended = true;
            break;
        };
        let parent = split_parent(&current).map_or(&b"/"[..], |(parent, _)| parent);
        let target = absolute(parent, target.as_os_str().as_bytes());
        let (is_link, meta) = real_dirs.look(&target);
        push(&target, meta.as_ref(), patterns);
        current = target;
        // No readlink that would fail; past 8 hops, `canonicalize` below.
        if !is_link && hop < 7 {
            (ended, end_meta) = (true, Some(meta));
            break;
        }
    }
    // The chain's end is no symlink: only its directories need resolving.
    let real = if ended {
        real_dirs.resolve(&current)
    } else {
        real_dirs.fds.uncovered();
        fs::canonicalize(link).ok()
    };
    // As bytes: comparing `Path`s parses their components.
    if let Some(real) = real
        && real.as_os_str().as_bytes() != current.as_os_str().as_bytes()
    {
        // The same file as the end (its directories resolved).
        let meta = end_meta.unwrap_or_else(|| real_dirs.look(&real).1);
        push(&real, meta.as_ref(), patterns);
    }
}

/// `dir/**`, with glob metacharacters in `dir` escaped.
pub(crate) fn pattern_below(dir: &Path) -> String {
    let mut pattern = escape_glob(&dir.to_string_lossy());
    pattern.push_str("/**");
    pattern
}

/// Compiles a declaration's patterns and the paths kept as bytes.
pub fn set_matcher(set: &PatternSet) -> PathMatcher {
    let mut matcher = matcher(&set.globs);
    matcher.add_raw(&set.raw_exact, &set.raw_below);
    matcher
}

/// Compiles the declared patterns; a pattern that does not compile (a path
/// with odd bytes) is skipped, so it shows up as undeclared rather than
/// breaking the spawn's whole declaration.
pub fn matcher(patterns: &[String]) -> PathMatcher {
    match PathMatcher::new(patterns) {
        Ok(m) => m,
        Err(e) => {
            log::warn!("sandbox declaration: {e}; skipping that pattern");
            let kept: Vec<String> = patterns
                .iter()
                .filter(|p| PathMatcher::new(&[(*p).clone()]).is_ok())
                .cloned()
                .collect();
            PathMatcher::new(&kept)
                .unwrap_or_else(|_| PathMatcher::new(&[]).expect("empty matcher"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    /// `linux-sandbox -W <execroot> -- true`, launched from `/`.
    fn sandbox_launch(execroot: &Path) -> Spawn {
        parse_launch(
            &argv(&[
                "linux-sandbox",
                "-W",
                execroot.to_str().unwrap(),
                "--",
                "true",
            ]),
            Path::new("/"),
        )
    }

    #[test]
    fn linux_sandbox_argv_gives_execroot_writable_dirs_and_command() {
        let ob = "/tmp/ob/sandbox/linux-sandbox/7/execroot/ws";
        let spawn = parse_launch(
            &argv(&[
                "/tmp/ob/install/abc/linux-sandbox",
                "-t",
                "15",
                "-w",
                ob,
                "-w",
                "/dev/shm",
                "-W",
                ob,
                "-N",
                "-D",
                "--",
                "/bin/bash",
                "-c",
                "cat a > $@",
            ]),
            Path::new("/tmp/ob/execroot/ws"),
        );
        assert_eq!(spawn.launcher, "linux-sandbox");
        assert_eq!(spawn.execroot, Path::new(ob));
        assert_eq!(
            spawn.sandbox_dir.as_deref(),
            Some(Path::new("/tmp/ob/sandbox/linux-sandbox/7"))
        );
        assert_eq!(spawn.sandbox_id, Some(7));
        assert_eq!(
            spawn.writable,
            vec![PathBuf::from(ob), PathBuf::from("/dev/shm")]
        );
        assert_eq!(spawn.command, vec!["/bin/bash", "-c", "cat a > $@"]);
        assert!(spawn.own_network);
    }

    #[test]
    fn process_wrapper_uses_its_working_directory() {
        let cwd = Path::new("/tmp/ob/sandbox/processwrapper-sandbox/12/execroot/ws");
        let spawn = parse_launch(
            &argv(&[
                "/x/process-wrapper",
                "--timeout=0",
                "--kill_delay=15",
                "/bin/bash",
                "-c",
                "true",
            ]),
            cwd,
        );
        assert_eq!(spawn.launcher, "process-wrapper");
        assert_eq!(spawn.execroot, cwd);
        assert_eq!(spawn.sandbox_id, Some(12));
        assert_eq!(spawn.command, vec!["/bin/bash", "-c", "true"]);
        assert!(!spawn.own_network);
    }

    #[test]
    fn execroot_outside_a_sandbox_has_no_sandbox_dir() {
        assert_eq!(sandbox_dir_of(Path::new("/tmp/ob/execroot/ws")), None);
        assert_eq!(
            sandbox_dir_of(Path::new("/a/sandbox/s/x/execroot/ws")),
            None,
            "non-numeric id"
        );
    }

    /// The bytes version finds what a reading by components finds (the
    /// definition, kept here), on every combination of a few components.
    #[test]
    fn sandbox_dir_in_is_its_definition() {
        let by_components = |p: &Path| -> Option<(PathBuf, u64)> {
            let parts: Vec<_> = p.components().collect();
            for i in (0..parts.len()).rev() {
                if parts[i].as_os_str() == "execroot"
                    && i >= 3
                    && parts[i - 3].as_os_str() == "sandbox"
                {
                    let id: u64 = parts[i - 1].as_os_str().to_str()?.parse().ok()?;
                    return Some((parts[..i].iter().collect(), id));
                }
            }
            None
        };
        let words = ["sandbox", "s", "7", "x", "execroot", "ws"];
        let mut paths = vec![String::new()];
        for _ in 0..5 {
            paths = paths
                .iter()
                .flat_map(|p| words.iter().map(move |w| format!("{p}/{w}")))
                .collect();
            let mut found = 0;
            for p in &paths {
                let expected = by_components(Path::new(p));
                found += usize::from(expected.is_some());
                assert_eq!(sandbox_dir_of(Path::new(p)), expected, "{p}");
                let rel = &p[1..];
                assert_eq!(
                    sandbox_dir_of(Path::new(rel)),
                    by_components(Path::new(rel)),
                    "{rel}"
                );
            }
            assert!(
                found > 0 || paths[0].matches('/').count() < 4,
                "no sandbox among {}",
                paths.len()
            );
        }
    }

    /// A chain whose middle hop's name is not UTF-8 is followed on to the
    /// file it ends at (read as bytes, not as a lossy string).
    #[test]
    fn a_chain_through_a_non_utf8_name_declares_the_file_it_ends_at() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let execroot = root.join("ob/sandbox/linux-sandbox/5/execroot/ws");
        fs::create_dir_all(&execroot).unwrap();
        fs::write(root.join("real.txt"), "x").unwrap();
        let odd = root.join(OsStr::from_bytes(b"hop\xff"));
        std::os::unix::fs::symlink(root.join("real.txt"), &odd).unwrap();
        std::os::unix::fs::symlink(&odd, execroot.join("input")).unwrap();
        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(SystemTime::now() + Duration::from_secs(5));
        let declared = set_matcher(&declared_patterns(&spawn, &Targets::default()).0);
        assert!(
            declared.matches(root.join("real.txt").as_os_str().as_bytes()),
            "the chain's end was not followed"
        );
        assert!(
            !declared.matches(root.join("other.txt").as_os_str().as_bytes()),
            "control: a file no link leads to"
        );
    }

    /// A file and a directory whose names are not UTF-8, each an input's
    /// final target: both are declared by their bytes (a lossy string of
    /// the name matched no open of them: a false alert).
    #[test]
    fn targets_whose_names_are_not_utf8_are_declared_as_bytes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let execroot = root.join("ob/sandbox/linux-sandbox/6/execroot/ws");
        fs::create_dir_all(&execroot).unwrap();
        let file = root.join(OsStr::from_bytes(b"input\xff.h"));
        fs::write(&file, "x").unwrap();
        let dir = root.join(OsStr::from_bytes(b"tree\xfe"));
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(&file, execroot.join("input.h")).unwrap();
        std::os::unix::fs::symlink(&dir, execroot.join("tree")).unwrap();
        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(SystemTime::now() + Duration::from_secs(5));
        let (patterns, _, _) = declared_patterns(&spawn, &Targets::default());
        assert!(
            patterns
                .raw_exact
                .contains(&file.as_os_str().as_bytes().to_vec())
        );
        assert!(
            patterns
                .raw_below
                .contains(&dir.as_os_str().as_bytes().to_vec())
        );
        assert!(patterns.globs.is_empty(), "{:?}", patterns.globs);
        let declared = set_matcher(&patterns);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(declared.matches(&b(&file)), "the file");
        assert!(
            declared.matches(&b(&dir.join("a.h"))),
            "below the directory"
        );
        // Controls: the lossy names, a sibling, the directory itself.
        let lossy = root.join(file.file_name().unwrap().to_string_lossy().as_ref());
        assert!(!declared.matches(&b(&lossy)));
        assert!(!declared.matches(&b(&root.join(OsStr::from_bytes(b"input\xfe.h")))));
        assert!(!declared.matches(&b(&dir)));
    }

    #[test]
    fn split_parent_cuts_normal_paths_as_path_does() {
        for p in [
            "/a/b/c", "/a", "/a/b/", "/a/./b", "/a/../b", "/", "rel/x", "x",
        ] {
            let path = Path::new(p);
            let by_path = path
                .parent()
                .zip(path.file_name())
                .map(|(d, n)| (d.as_os_str().as_bytes(), n.as_bytes()));
            assert_eq!(split_parent(path), by_path, "{p}");
        }
    }

    #[test]
    fn links_newer_than_the_launch_declare_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let execroot = tmp.path().join("ob/sandbox/linux-sandbox/4/execroot/ws");
        fs::create_dir_all(&execroot).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", execroot.join("old")).unwrap();
        let launch = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(launch);
        assert!(
            set_matcher(&declared_patterns(&spawn, &Targets::default()).0)
                .matches(b"/etc/hostname")
        );
        spawn.launched_at = Some(launch - std::time::Duration::from_secs(60));
        assert!(
            !set_matcher(&declared_patterns(&spawn, &Targets::default()).0)
                .matches(b"/etc/hostname"),
            "a link from after the launch was followed"
        );
    }

    /// A sandbox link from before the launch, replaced by the action with
    /// one to a secret after its target was read and before it was dated
    /// (the race forced at the seam): neither target is declared, the
    /// planted one above all. Control: the link left alone declares its
    /// target.
    #[test]
    fn a_sandbox_link_replaced_between_its_read_and_its_time_declares_nothing() {
        use crate::seams::{Seam, with_hook};
        let tmp = tempfile::tempdir().unwrap();
        let execroot = tmp.path().join("ob/sandbox/linux-sandbox/6/execroot/ws");
        fs::create_dir_all(&execroot).unwrap();
        let (input, secret) = (tmp.path().join("src/in"), tmp.path().join("home/secret"));
        let link = execroot.join("in");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        // The link is from before the launch; a name made now is after it.
        let launch = SystemTime::now() + PLANT_WINDOW + Duration::from_millis(20);
        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(launch);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let declared = set_matcher(&declared_patterns(&spawn, &Targets::default()).0);
        assert!(declared.matches(&b(&input)), "control: the link's target");
        wait_past(launch, Duration::from_millis(50));

        let (planted, at) = (secret.clone(), link.clone());
        let (patterns, _, _) = with_hook(
            Seam::SandboxLinkRead,
            move |read: &Path| {
                if read == at {
                    fs::remove_file(&at).unwrap();
                    std::os::unix::fs::symlink(&planted, &at).unwrap();
                }
            },
            || declared_patterns(&spawn, &Targets::default()),
        );
        assert!(fs::read_link(&link).is_ok_and(|t| t == secret), "replaced");
        let declared = set_matcher(&patterns);
        assert!(
            !declared.matches(&b(&secret)),
            "the planted target declared"
        );
        assert!(
            !declared.matches(&b(&input)),
            "declared by the new link's time"
        );
    }

    /// A link's own ctime moves when it gets a second name elsewhere (a
    /// hard link made after the launch); its target cannot, and its
    /// directory is unchanged: the target Bazel planted stays declared,
    /// dated by the directory. A link replaced in another directory
    /// changes that directory, whose links are then dated one by one: the
    /// replacement declares nothing, nor does the target it replaced; the
    /// old link beside it still declares its own.
    #[test]
    fn links_are_dated_by_their_directory_until_it_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let execroot = root.join("ob/sandbox/linux-sandbox/8/execroot/ws");
        fs::create_dir_all(execroot.join("a")).unwrap();
        fs::create_dir_all(execroot.join("b")).unwrap();
        let src = |name: &str| root.join("src").join(name);
        std::os::unix::fs::symlink(src("a_in"), execroot.join("a/in")).unwrap();
        std::os::unix::fs::symlink(src("keep"), execroot.join("b/keep")).unwrap();
        std::os::unix::fs::symlink(src("swap"), execroot.join("b/swap")).unwrap();
        wait_past(SystemTime::now(), PLANT_WINDOW + Duration::from_millis(100));
        let launch = SystemTime::now();
        wait_past(launch, Duration::from_millis(50));

        fs::hard_link(execroot.join("a/in"), root.join("second-name")).unwrap();
        let link_time = nix::sys::stat::lstat(&execroot.join("a/in")).unwrap();
        assert!(
            matches!(made(tree::ctime(&link_time), Some(launch)), Made::After),
            "control: the hard link moved the link's own ctime past the launch"
        );
        let secret = root.join("home/secret");
        fs::remove_file(execroot.join("b/swap")).unwrap();
        std::os::unix::fs::symlink(&secret, execroot.join("b/swap")).unwrap();

        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(launch);
        let declared = set_matcher(&declared_patterns(&spawn, &Targets::default()).0);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(declared.matches(&b(&src("a_in"))), "dated by its directory");
        assert!(
            declared.matches(&b(&src("keep"))),
            "an old link, by its own time"
        );
        assert!(!declared.matches(&b(&secret)), "the replacement declared");
        assert!(
            !declared.matches(&b(&src("swap"))),
            "the replaced target declared"
        );
    }

    /// A sandbox directory swapped, after it was listed and before it was
    /// read, for an old directory of links to a secret (made by an earlier
    /// action where it could write; the race forced at the seam): through
    /// a symlink put in its place, or renamed into its place; each with
    /// `openat2`, and by path as on a kernel without it. The swapped-in
    /// links declare nothing, though their own times are old. Control:
    /// the same sandbox left alone declares its input.
    #[test]
    fn a_directory_swapped_after_its_listing_declares_nothing() {
        for no_openat2 in [false, true] {
            tree::NO_OPENAT2.with(|no| no.set(no_openat2));
            for by_rename in [false, true] {
                let case = format!("rename: {by_rename}, no openat2: {no_openat2}");
                let (control, secret) = swap_a_listed_directory(by_rename);
                assert!(control, "control: the input declared ({case})");
                assert!(!secret, "the stash's target declared ({case})");
            }
        }
        tree::NO_OPENAT2.with(|no| no.set(false));
    }

    /// Whether the sandbox's input was declared when left alone, and the
    /// stash's target once its directory `a` was swapped for the stash.
    fn swap_a_listed_directory(by_rename: bool) -> (bool, bool) {
        use crate::seams::{Seam, with_hook};
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let execroot = root.join("ob/sandbox/linux-sandbox/9/execroot/ws");
        let (stash, secret) = (root.join("stash"), root.join("home/secret"));
        fs::create_dir_all(&stash).unwrap();
        std::os::unix::fs::symlink(&secret, stash.join("x")).unwrap();
        wait_past(SystemTime::now(), PLANT_WINDOW + Duration::from_millis(100));
        fs::create_dir_all(execroot.join("a")).unwrap();
        let input = root.join("src/in");
        std::os::unix::fs::symlink(&input, execroot.join("in")).unwrap();
        std::os::unix::fs::symlink(&input, execroot.join("a/in")).unwrap();
        let mut spawn = sandbox_launch(&execroot);
        spawn.launched_at = Some(SystemTime::now());
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let control =
            set_matcher(&declared_patterns(&spawn, &Targets::default()).0).matches(&b(&input));
        wait_past(spawn.launched_at.unwrap(), Duration::from_millis(50));

        let (first, dir, away) = (execroot.join("in"), execroot.join("a"), root.join("away"));
        let swapped = std::rc::Rc::new(std::cell::Cell::new(false));
        let hook_swapped = swapped.clone();
        let (patterns, _, _) = with_hook(
            Seam::SandboxLinkRead,
            move |read: &Path| {
                if read == first && !hook_swapped.replace(true) {
                    fs::rename(&dir, &away).unwrap();
                    if by_rename {
                        fs::rename(&stash, &dir).unwrap();
                    } else {
                        std::os::unix::fs::symlink(&stash, &dir).unwrap();
                    }
                }
            },
            || declared_patterns(&spawn, &Targets::default()),
        );
        assert!(swapped.get(), "the swap happened");
        (control, set_matcher(&patterns).matches(&b(&secret)))
    }

    /// Polls until the wall clock is `by` past `since`.
    fn wait_past(since: SystemTime, by: Duration) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while since.elapsed().unwrap_or_default() < by {
            assert!(
                std::time::Instant::now() < deadline,
                "the clock stands still"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A directory holding an old link to a secret, renamed into the
    /// sandbox after the launch: the link's time is old, the directory's is
    /// not. Its target falls once the action is known to have renamed
    /// something to the directory's name. Control: an input link in a
    /// directory that changed (an entry was added) but that no rename named.
    #[test]
    fn old_links_in_a_directory_changed_after_the_launch_fall_to_a_rename_of_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let execroot = tmp
            .path()
            .join("ob/sandbox/processwrapper-sandbox/5/execroot/ws");
        fs::create_dir_all(execroot.join("pkg")).unwrap();
        let (secret, source) = (tmp.path().join("home/secret"), tmp.path().join("src/in"));
        let stash = tmp.path().join("stash");
        fs::create_dir_all(&stash).unwrap();
        std::os::unix::fs::symlink(&source, execroot.join("pkg/in")).unwrap();
        std::os::unix::fs::symlink(&secret, stash.join("x")).unwrap();
        wait_past(SystemTime::now(), PLANT_WINDOW + Duration::from_millis(100));
        let launch = SystemTime::now();
        // File times are a coarse clock tick behind at most.
        wait_past(launch, Duration::from_millis(50));
        fs::rename(&stash, execroot.join("pkg/stash")).unwrap();
        let mut spawn = parse_launch(&argv(&["process-wrapper", "--", "true"]), &execroot);
        spawn.launched_at = Some(launch);
        let (patterns, links, _) = declared_patterns(&spawn, &Targets::default());
        let patterns = set_matcher(&patterns);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(patterns.matches(&b(&secret)), "declared by path");
        assert!(links.only_moved_in(&b(&secret), &[b"stash".to_vec()]));
        assert!(!links.only_moved_in(&b(&secret), &[b"out.o".to_vec()]));
        assert!(!links.only_moved_in(&b(&source), &[b"stash".to_vec()]));
    }

    #[test]
    fn declared_patterns_cover_the_sandbox_and_symlink_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("dir")).unwrap();
        fs::write(src.join("in.txt"), "x").unwrap();
        // As Bazel does: sandbox → main execroot → source tree.
        let main = tmp.path().join("ob/execroot/ws/pkg");
        fs::create_dir_all(&main).unwrap();
        std::os::unix::fs::symlink(src.join("in.txt"), main.join("in.txt")).unwrap();
        let execroot = tmp.path().join("ob/sandbox/linux-sandbox/3/execroot/ws");
        fs::create_dir_all(execroot.join("pkg")).unwrap();
        std::os::unix::fs::symlink(main.join("in.txt"), execroot.join("pkg/in.txt")).unwrap();
        std::os::unix::fs::symlink(src.join("dir"), execroot.join("pkg/dir")).unwrap();
        // As Bazel 4 does: the main execroot links a whole source directory.
        fs::create_dir_all(src.join("lib")).unwrap();
        fs::write(src.join("lib/lib.txt"), "x").unwrap();
        std::os::unix::fs::symlink(src.join("lib"), main.join("lib")).unwrap();
        std::os::unix::fs::symlink(main.join("lib/lib.txt"), execroot.join("pkg/lib.txt")).unwrap();
        let spawn = sandbox_launch(&execroot);
        let m = set_matcher(&declared_patterns(&spawn, &Targets::default()).0);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(m.matches(&b(&execroot.join("pkg/in.txt"))));
        assert!(
            m.matches(&b(&execroot.join("bazel-out/k8/bin/out.txt"))),
            "outputs live in the sandbox"
        );
        assert!(m.matches(&b(&src.join("in.txt"))), "symlink chain's end");
        assert!(
            m.matches(&b(&main.join("in.txt"))),
            "symlink chain's middle"
        );
        assert!(
            m.matches(&b(&src.join("dir/deeper/f"))),
            "directory symlink target"
        );
        assert!(
            m.matches(&b(&src.join("lib/lib.txt"))),
            "reached through a directory link"
        );
        assert!(!m.matches(&b(&src.join("lib/other.txt"))), "its neighbour");
        assert!(!m.matches(&b(&src.join("other.txt"))), "undeclared source");
        assert!(!m.matches(b"/etc/shadow"));
    }

    /// A link Bazel was seen making declares the target it was made with,
    /// without reading the link: here the link on disk says otherwise (as
    /// if replaced before the read), and the target Bazel made it with
    /// wins. A link with no such record is read (the control).
    #[test]
    fn a_link_bazel_was_seen_making_declares_the_target_it_was_made_with() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(&src).unwrap();
        for name in ["made.txt", "on_disk.txt", "read.txt"] {
            fs::write(src.join(name), "x").unwrap();
        }
        let execroot = tmp.path().join("ob/sandbox/linux-sandbox/4/execroot/ws");
        fs::create_dir_all(execroot.join("in")).unwrap();
        std::os::unix::fs::symlink(src.join("on_disk.txt"), execroot.join("in/a")).unwrap();
        std::os::unix::fs::symlink(src.join("read.txt"), execroot.join("in/b")).unwrap();
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let made: Targets = [(b(&execroot.join("in/a")), b(&src.join("made.txt")))]
            .into_iter()
            .collect();
        let spawn = sandbox_launch(&execroot);
        let m = set_matcher(&declared_patterns(&spawn, &made).0);
        assert!(
            m.matches(&b(&src.join("made.txt"))),
            "the target Bazel made"
        );
        assert!(
            !m.matches(&b(&src.join("on_disk.txt"))),
            "not the one on disk"
        );
        assert!(m.matches(&b(&src.join("read.txt"))), "control: a link read");
    }

    /// Cached or not, the answers are `fs::canonicalize`'s: a link, a file
    /// below a linked directory, a missing path; asked twice each.
    #[test]
    fn real_dirs_canonicalize_as_the_file_system_does() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("lib")).unwrap();
        fs::write(src.join("lib/a.txt"), "x").unwrap();
        let main = tmp.path().join("execroot");
        fs::create_dir_all(&main).unwrap();
        std::os::unix::fs::symlink(src.join("lib"), main.join("lib")).unwrap();
        std::os::unix::fs::symlink(main.join("lib/a.txt"), main.join("a.txt")).unwrap();
        let mut real_dirs = RealDirs::default();
        let links = [
            ("rel", PathBuf::from("lib/a.txt")),
            ("dotdot", main.join("lib/../lib/a.txt")),
            ("slash", src.join("lib/")),
            ("root", PathBuf::from("/")),
            ("dangling", main.join("nothing")),
            ("again", main.join("a.txt")),
        ];
        for (name, target) in &links {
            std::os::unix::fs::symlink(target, main.join(name)).unwrap();
        }
        let mut paths = vec![
            main.join("a.txt"),
            main.join("lib/a.txt"),
            main.join("gone"),
        ];
        paths.extend(links.iter().map(|(name, _)| main.join(name)));
        for path in paths {
            for _ in 0..2 {
                assert_eq!(real_dirs.canonicalize(&path), fs::canonicalize(&path).ok());
                assert_eq!(
                    real_dirs.canonicalize_shared(&path),
                    fs::canonicalize(&path).ok()
                );
            }
        }
        assert_eq!(
            real_dirs.canonicalize(&main.join("a.txt")),
            Some(fs::canonicalize(&src).unwrap().join("lib/a.txt"))
        );
        assert!(
            real_dirs.targets.contains_key(&main.join("lib/a.txt")),
            "a shared absolute target is resolved once"
        );
    }

    /// Every hop of a chain and its real end are declared, with what each
    /// is: a chain longer than the 8 hops read, a dangling link, a link
    /// through a linked directory.
    #[test]
    fn link_chains_declare_each_hop_and_the_real_end() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("src/lib")).unwrap();
        fs::write(root.join("src/lib/a.txt"), "x").unwrap();
        std::os::unix::fs::symlink(root.join("src/lib"), root.join("lib")).unwrap();
        let mut previous = root.join("lib/a.txt");
        for i in 0..10 {
            let link = root.join(format!("l{i}"));
            std::os::unix::fs::symlink(&previous, &link).unwrap();
            previous = link;
        }
        std::os::unix::fs::symlink(root.join("gone"), root.join("dangling")).unwrap();
        let chain = |link: &Path| {
            let (mut patterns, mut seen) = (PatternSet::default(), Vec::new());
            push_link_chain(
                link,
                None,
                &mut patterns,
                &mut RealDirs::default(),
                |t, m| seen.push((t.to_path_buf(), m.map(|m| m.is_file()))),
            );
            (patterns.raw_exact, seen)
        };
        let (patterns, seen) = chain(&root.join("l0"));
        let end = root.join("src/lib/a.txt");
        assert_eq!(
            seen,
            vec![
                (root.join("lib/a.txt"), Some(true)),
                (end.clone(), Some(true))
            ]
        );
        assert_eq!(patterns[1], end.as_os_str().as_bytes());
        let (patterns, seen) = chain(&root.join("l9"));
        assert_eq!(seen.len(), 9, "8 hops, then the real end: {seen:?}");
        assert_eq!(seen[8], (end, Some(true)));
        assert_eq!(patterns.len(), 9);
        let (_, seen) = chain(&root.join("dangling"));
        assert_eq!(seen, vec![(root.join("gone"), None)]);
    }

    /// A sandbox a spawn made hostile is read to its end: a directory with
    /// a non-UTF-8 name, link loops, a target whose name is too long, a
    /// tree deeper than a path can name (unreadable: its link declares
    /// nothing, so its target stays undeclared). Controls: the links
    /// beside them declare their chains.
    #[test]
    fn a_hostile_sandbox_is_read_to_its_end() {
        use nix::{fcntl::OFlag, sys::stat::Mode};
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("src")).unwrap();
        for f in ["a", "b", "deep"] {
            fs::write(root.join("src").join(f), "x").unwrap();
        }
        let execroot = root.join("ob/sandbox/linux-sandbox/9/execroot/ws");
        let odd = execroot.join(OsStr::from_bytes(b"pkg\xff"));
        fs::create_dir_all(&odd).unwrap();
        std::os::unix::fs::symlink(root.join("src/a"), odd.join("a")).unwrap();
        std::os::unix::fs::symlink("loop", execroot.join("loop")).unwrap();
        std::os::unix::fs::symlink("y", execroot.join("x")).unwrap();
        std::os::unix::fs::symlink("x", execroot.join("y")).unwrap();
        let long = root.join("src").join("n".repeat(300));
        std::os::unix::fs::symlink(&long, execroot.join("long")).unwrap();
        std::os::unix::fs::symlink(root.join("src/b"), execroot.join("b")).unwrap();
        // Deeper than PATH_MAX: made one directory at a time, relative.
        let mut dir = nix::fcntl::open(&execroot, OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let name = "d".repeat(250);
        for _ in 0..20 {
            nix::sys::stat::mkdirat(&dir, name.as_str(), Mode::S_IRWXU).unwrap();
            dir =
                nix::fcntl::openat(&dir, name.as_str(), OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        }
        nix::unistd::symlinkat(&root.join("src/deep"), &dir, "deep").unwrap();
        let spawn = sandbox_launch(&execroot);
        let (patterns, _, identities) = declared_patterns(&spawn, &Targets::default());
        let m = set_matcher(&patterns);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(m.matches(&b(&root.join("src/a"))), "below a non-UTF-8 name");
        assert!(m.matches(&b(&root.join("src/b"))), "beside the loops");
        assert!(
            m.matches(&b(&long)),
            "a target too long to stat is still named"
        );
        assert!(
            !m.matches(&b(&root.join("src/deep"))),
            "read beyond PATH_MAX"
        );
        assert_eq!(identities.count(), 2, "a and b, nothing from the loops");
    }

    #[test]
    fn writable_dirs_outside_the_sandbox_are_kept_apart() {
        let ob = "/tmp/ob/sandbox/linux-sandbox/7/execroot/ws";
        let spawn = parse_launch(
            &argv(&[
                "linux-sandbox",
                "-w",
                ob,
                "-w",
                "/tmp",
                "-w",
                "/dev/shm",
                "--",
                "true",
            ]),
            Path::new(ob),
        );
        assert_eq!(writable_patterns(&spawn), vec!["/tmp/**", "/dev/shm/**"]);
    }

    /// As `Path::starts_with` answers for normal paths.
    #[test]
    fn at_or_below_is_by_whole_components() {
        for (path, dir) in [
            ("/a/b", "/a"),
            ("/a", "/a"),
            ("/ab", "/a"),
            ("/a/b", "/a/b/c"),
            ("/a", "/"),
            ("/", "/"),
            ("/b", "/a"),
        ] {
            assert_eq!(
                is_at_or_below(path.as_bytes(), dir.as_bytes()),
                Path::new(path).starts_with(dir),
                "{path} below {dir}"
            );
        }
    }

    #[test]
    fn glob_metacharacters_in_paths_are_literal() {
        let m = matcher(&[pattern_below(Path::new("/tmp/a*[b]"))]);
        assert!(m.matches(b"/tmp/a*[b]/x"));
        assert!(!m.matches(b"/tmp/aXb/x"));
    }
}
