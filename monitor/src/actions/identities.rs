//! What a declaration's names stood for when it was read: the (device,
//! inode) of each declared file, so that an object reached under a declared
//! name can be told apart from the one declared. A hard link made to an
//! undeclared file inside a declared directory, or a file bind-mounted over
//! a declared name, carries its own identity, whatever its path says.
//!
//! Recorded for exact paths and `dir/**` patterns (other globs are judged by
//! name only). Entries whose inode changed after the declaration file was
//! written are not trusted: the action may have planted them.
use std::{
    fs,
    os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    path::Path,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    events::decode::Identity,
    hashing::{HashMap, HashSet},
    policy::matchers::PatternSet,
};

/// Most entries recorded for one declaration; beyond it, names are judged
/// by name only (logged).
const MAX_ENTRIES: usize = 100_000;

type Key = (u64, u64);

#[derive(Debug, Default)]
pub struct Identities {
    /// Shared by the sandboxes whose trees are the same
    /// (`bazel::sandbox::shared_trees`): copied on write.
    files: Arc<Records>,
    recorded: bool,
    /// Where a hard link to an undeclared file is looked for: everywhere
    /// (`None`: a declaration's directories are recorded entry by entry),
    /// or below a sandbox directory only (a Bazel sandbox's linked source
    /// directories are not walked, so their own multi-link files are not
    /// known there).
    hard_links_below: Option<Vec<u8>>,
}

/// The files and directories a declaration's names stood for.
#[derive(Debug, Default, Clone)]
pub struct Records {
    /// Paths shared with other declarations ([`super::shared_paths`]).
    by_path: HashMap<Arc<[u8]>, Key>,
    all: HashSet<Key>,
    /// Directories a sandbox links whole (not walked: their files are not
    /// recorded), each with a trailing `/`: a file there with several
    /// names, named as a hard link the action made, is one it planted.
    linked_dirs: Vec<Vec<u8>>,
    /// Files a sandbox link led to whose identity is not trusted (the
    /// link is too recent to rule out the spawn): only for telling a file
    /// reached through a mount the spawn may have made apart from the
    /// linked one ([`Identities::mounted_over`]).
    linked_by_path: HashMap<Arc<[u8]>, Key>,
    linked: HashSet<Key>,
}

impl Identities {
    /// For a Bazel sandbox: identities are inserted as its links are read,
    /// and an object reached at a path inside `root` with several links,
    /// not declared and not made by the action, is a planted hard link.
    pub fn hard_links_checked_below(root: &Path) -> Identities {
        let mut below = root.as_os_str().as_bytes().to_vec();
        below.push(b'/');
        Identities {
            recorded: true,
            hard_links_below: Some(below),
            ..Default::default()
        }
    }

    /// A directory the sandbox links whole: see [`Identities::linked_dirs`].
    pub fn check_linked_dir(&mut self, dir: &Path) {
        let mut dir = dir.as_os_str().as_bytes().to_vec();
        dir.push(b'/');
        let files = Arc::make_mut(&mut self.files);
        if !files.linked_dirs.contains(&dir) {
            files.linked_dirs.push(dir);
        }
    }

    /// Room for `files` more records, trusted or (`linked`) not: a
    /// sandbox's links are recorded by the hundred, and growing the maps
    /// by doubling rehashed them about nine times per sandbox (28 ms of a
    /// bench build's daemon CPU sampled).
    pub fn reserve(&mut self, files: usize, linked: bool) {
        let records = Arc::make_mut(&mut self.files);
        let (by_path, keys) = if linked {
            (&mut records.linked_by_path, &mut records.linked)
        } else {
            (&mut records.by_path, &mut records.all)
        };
        let room = files.min(MAX_ENTRIES.saturating_sub(by_path.len()));
        by_path.reserve(room);
        keys.reserve(room);
    }

    /// Records `path` (not a directory) as declared: the file `(dev, ino)`.
    pub fn insert(&mut self, path: &Path, dev: u64, ino: u64) {
        let files = Arc::make_mut(&mut self.files);
        record_file(&mut files.by_path, &mut files.all, path, (dev, ino));
    }

    /// Records `path` (not a directory) as a file an untrusted sandbox
    /// link led to: see [`Identities::linked_by_path`].
    pub fn insert_linked(&mut self, path: &Path, dev: u64, ino: u64) {
        let files = Arc::make_mut(&mut self.files);
        record_file(
            &mut files.linked_by_path,
            &mut files.linked,
            path,
            (dev, ino),
        );
    }

    /// What was recorded, to be held in common with other declarations.
    pub fn records(&self) -> Arc<Records> {
        self.files.clone()
    }

    /// With `files` as what was recorded (see [`Identities::records`]).
    pub fn with_records(mut self, files: Arc<Records>) -> Identities {
        self.files = files;
        self
    }

    pub fn is_recorded(&self) -> bool {
        self.recorded
    }

    /// How many declared files were recorded.
    pub fn count(&self) -> usize {
        self.files.by_path.len()
    }

    /// Why the object `id` found at the declared name `path` is not what was
    /// declared, if it is not. `created` says whether the action itself
    /// created the object (its own files may have several names).
    pub fn mismatch(
        &self,
        path: &[u8],
        id: &Identity,
        created: impl FnOnce() -> bool,
    ) -> Option<&'static str> {
        if !self.recorded {
            return None;
        }
        let key = (id.dev, id.ino);
        if let Some(&declared) = self.files.by_path.get(path) {
            // Another declared file mounted over a declared name is still
            // a declared file.
            return (declared != key && !self.files.all.contains(&key)).then_some(
                "not the file declared under this name: something is mounted over it or it was replaced",
            );
        }
        let checked = self
            .hard_links_below
            .as_ref()
            .is_none_or(|below| path.starts_with(below));
        if checked && id.nlink > 1 && !id.is_dir() && !self.files.all.contains(&key) && !created() {
            return Some("a hard link to a file that was not declared");
        }
        None
    }

    /// Why the object `id` at `path`, reached through a mount sitting at
    /// `mount_point` that shows something under another name, is not what
    /// the names there stood for, if it is not. Checked where the spawn
    /// itself may have mounted something to pass it off as declared:
    /// * on or below its sandbox directory, or on a file a declared name
    ///   or link leads to: what is found there must be a file a declared
    ///   name or link led to, or one the action created;
    /// * anywhere (above a linked file: a mount over its directory): at a
    ///   path a link led to, likewise a file some declared name or link
    ///   led to (another declared file there exposes nothing undeclared).
    ///
    /// Other mounts (a container's volumes) are the host's layout.
    pub fn mounted_over(
        &self,
        path: &[u8],
        mount_point: &[u8],
        id: &Identity,
        created: impl FnOnce() -> bool,
    ) -> Option<&'static str> {
        if !self.recorded {
            return None;
        }
        let key = (id.dev, id.ino);
        if self.files.all.contains(&key) || self.files.linked.contains(&key) {
            return None;
        }
        let in_sandbox = self.hard_links_below.as_ref().is_some_and(|below| {
            mount_point.starts_with(below) || mount_point == &below[..below.len() - 1]
        });
        let on_declared_file = self.files.by_path.contains_key(mount_point)
            || self.files.linked_by_path.contains_key(mount_point);
        let at_linked_path = self.files.linked_by_path.contains_key(path);
        ((in_sandbox || on_declared_file || at_linked_path) && !created()).then_some(
            "reached through something mounted over a declared name; not a file that name stood for",
        )
    }

    /// Why the object `id`, reached at `path` in a directory the sandbox
    /// links whole, is one the action planted there, if it is: it has
    /// several names, and the action made a hard link of that file name
    /// (`hard_linked`; the kernel reports every `link`). Such directories
    /// are not walked, so this is all that tells a plant from a file with
    /// several names of its own.
    pub fn planted_in_linked_dir(
        &self,
        path: &[u8],
        id: &Identity,
        hard_linked: impl FnOnce(&[u8]) -> bool,
    ) -> Option<&'static str> {
        let linked = self.files.linked_dirs.iter().any(|d| path.starts_with(d));
        (linked
            && id.nlink > 1
            && !id.is_dir()
            && !self.files.all.contains(&(id.dev, id.ino))
            && hard_linked(crate::actions::links::file_name(path)))
        .then_some("a hard link the spawn made, in a directory its sandbox links")
    }
}

/// `path` is the file `key`, in `by_path` and `keys` (up to
/// [`MAX_ENTRIES`] paths).
fn record_file(
    by_path: &mut HashMap<Arc<[u8]>, Key>,
    keys: &mut HashSet<Key>,
    path: &Path,
    key: Key,
) {
    if by_path.len() >= MAX_ENTRIES {
        return;
    }
    by_path.insert(
        super::shared_paths::shared(path.as_os_str().as_bytes()),
        key,
    );
    keys.insert(key);
}

/// Records the identities behind `patterns`; returns them and the patterns
/// of trusted symlinks' targets (which count as declared; a target whose
/// name is not UTF-8 as its bytes).
pub fn record(patterns: &[String], written: SystemTime) -> (Identities, PatternSet) {
    let mut rec = Recorder {
        ids: Identities {
            recorded: true,
            ..Default::default()
        },
        targets: PatternSet::default(),
        written: since_epoch(written),
        seen: 0,
    };
    for pattern in patterns {
        if !has_glob(pattern) {
            rec.entry(Path::new(pattern), false);
        } else if let Some(dir) = pattern.strip_suffix("/**")
            && !has_glob(dir)
        {
            rec.entry(Path::new(dir), true);
        }
    }
    if rec.seen > MAX_ENTRIES {
        log::warn!(
            "declaration names more than {MAX_ENTRIES} files; the rest are judged by name only"
        );
    }
    (rec.ids, rec.targets)
}

struct Recorder {
    ids: Identities,
    /// The targets' own patterns (as bytes when a name is not UTF-8).
    targets: PatternSet,
    written: (i64, i64),
    seen: usize,
}

impl Recorder {
    /// Records `path`; a directory's entries too when `walk`.
    fn entry(&mut self, path: &Path, walk: bool) {
        let mut stack = vec![path.to_path_buf()];
        while let Some(path) = stack.pop() {
            self.seen += 1;
            if self.seen > MAX_ENTRIES {
                return;
            }
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            // A directory changes whenever an entry does; its entries are
            // judged one by one.
            if !meta.is_dir() && (meta.ctime(), meta.ctime_nsec()) > self.written {
                log::debug!("{} changed after its declaration", path.display());
                continue;
            }
            if meta.file_type().is_symlink() {
                self.link(&path, &meta);
            } else if meta.is_dir() {
                if walk && let Ok(entries) = fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            } else {
                self.add(&path, &meta);
            }
        }
    }

    /// A trusted symlink (`dated`: its metadata when it was found old
    /// enough): its final target is declared, and recorded.
    fn link(&mut self, link: &Path, dated: &fs::Metadata) {
        crate::seams::reached(crate::seams::Seam::DeclaredLinkDated, link);
        let Ok(target) = fs::canonicalize(link) else {
            return;
        };
        // Dated again after its target was read: a link replaced or moved
        // in between (a new inode, or a new ctime) was not the one dated.
        let same = |m: fs::Metadata| {
            (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
                == (dated.dev(), dated.ino(), dated.ctime(), dated.ctime_nsec())
        };
        if !fs::symlink_metadata(link).is_ok_and(same) {
            log::debug!("{} changed while it was read", link.display());
            return;
        }
        let Ok(meta) = fs::metadata(&target) else {
            return;
        };
        if meta.is_dir() {
            self.targets.push_path(&target, true);
            self.targets.push_path(&target, false);
            self.entry(&target, true);
        } else {
            self.targets.push_path(&target, false);
            self.add(&target, &meta);
        }
    }

    fn add(&mut self, path: &Path, meta: &fs::Metadata) {
        self.ids.insert(path, meta.dev(), meta.ino());
    }
}

fn since_epoch(t: SystemTime) -> (i64, i64) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i64)
}

fn has_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    /// What the kernel would say `path` (followed) is.
    pub(crate) fn id_of(path: &Path) -> Identity {
        let m = fs::metadata(path).unwrap();
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            nlink: m.nlink() as u32,
            f_mode: 0,
            fs_magic: 0,
            proc_tgid: 0,
            mode: m.mode(),
            internal: false,
            detached: false,
        }
    }

    #[test]
    fn hard_links_and_replaced_names_are_told_apart_from_declared_files() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("a"), "a").unwrap();
        let secret = tmp.path().join("secret");
        fs::write(&secret, "s").unwrap();
        let outside = tmp.path().join("lib.txt");
        fs::write(&outside, "l").unwrap();
        symlink(&outside, d.join("link")).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(1);
        let (ids, targets) = record(&[format!("{}/**", d.display())], later);
        assert_eq!(
            targets.raw_exact,
            vec![outside.as_os_str().as_bytes().to_vec()]
        );

        let a = d.join("a");
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert_eq!(ids.mismatch(&b(&a), &id_of(&a), || false), None);
        assert_eq!(ids.mismatch(&b(&outside), &id_of(&outside), || false), None);
        // Something else under a declared name.
        assert!(ids.mismatch(&b(&a), &id_of(&secret), || false).is_some());
        // A new hard link to the secret inside the declared directory.
        fs::hard_link(&secret, d.join("x")).unwrap();
        let x = d.join("x");
        assert!(ids.mismatch(&b(&x), &id_of(&x), || false).is_some());
        assert_eq!(ids.mismatch(&b(&x), &id_of(&x), || true), None);
    }

    /// Something mounted on or below the sandbox directory, or on a file a
    /// link led to, must show a linked file (trusted or not) or one the
    /// action made; mounts elsewhere are not judged.
    #[test]
    fn what_a_mount_over_a_declared_name_shows_must_be_a_linked_file() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("sandbox/1/execroot/ws");
        fs::create_dir_all(&root).unwrap();
        let (old, recent, secret) = (
            tmp.path().join("old.h"),
            tmp.path().join("recent.h"),
            tmp.path().join("secret"),
        );
        for f in [&old, &recent, &secret] {
            fs::write(f, "x").unwrap();
        }
        let mut ids = Identities::hard_links_checked_below(&root);
        let (o, r) = (id_of(&old), id_of(&recent));
        ids.insert(&old, o.dev, o.ino);
        ids.insert_linked(&recent, r.dev, r.ino);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let secret_id = id_of(&secret);
        let over = |at: &Path, id: &Identity, created: bool| {
            ids.mounted_over(&b(at), &b(at), id, || created)
        };
        for at in [
            root.join("pkg/leak"),
            root.clone(),
            old.clone(),
            recent.clone(),
        ] {
            assert!(over(&at, &secret_id, false).is_some(), "{at:?}");
            assert_eq!(over(&at, &secret_id, true), None, "{at:?}");
            assert_eq!(over(&at, &o, false), None, "{at:?}");
            assert_eq!(over(&at, &r, false), None, "{at:?}");
        }
        // A container's volume, or the sandbox's sibling: the host's layout.
        for at in [
            tmp.path().to_path_buf(),
            tmp.path().join("sandbox/1/execroot/w"),
        ] {
            let file = at.join("f");
            let found = ids.mounted_over(&b(&file), &b(&at), &secret_id, || false);
            assert_eq!(found, None, "{at:?}");
        }
        // A mount over the directory of a linked file: at that file's
        // path, only that file.
        let above = b(tmp.path());
        assert!(
            ids.mounted_over(&b(&recent), &above, &secret_id, || false)
                .is_some()
        );
        assert_eq!(ids.mounted_over(&b(&recent), &above, &r, || false), None);
    }

    /// A sandbox links a source directory whole: a file there with two
    /// names of its own is left alone; one named as a hard link the action
    /// made is caught.
    #[test]
    fn hard_links_the_action_made_in_a_linked_directory_are_caught() {
        let tmp = tempfile::tempdir().unwrap();
        let (lib, secret) = (tmp.path().join("lib"), tmp.path().join("secret"));
        fs::create_dir(&lib).unwrap();
        fs::write(lib.join("old"), "o").unwrap();
        fs::hard_link(lib.join("old"), lib.join("old2")).unwrap();
        fs::write(&secret, "s").unwrap();
        fs::hard_link(&secret, lib.join("x")).unwrap();
        let mut ids = Identities::hard_links_checked_below(&tmp.path().join("sandbox"));
        ids.check_linked_dir(&lib);
        let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
        let (x, old2) = (lib.join("x"), lib.join("old2"));
        let made_x = |name: &[u8]| name == b"x";
        assert!(
            ids.planted_in_linked_dir(&b(&x), &id_of(&x), made_x)
                .is_some()
        );
        assert_eq!(
            ids.planted_in_linked_dir(&b(&x), &id_of(&x), |_| false),
            None
        );
        assert_eq!(
            ids.planted_in_linked_dir(&b(&old2), &id_of(&old2), made_x),
            None
        );
        let outside = ids.planted_in_linked_dir(&b(&secret), &id_of(&x), |_| true);
        assert_eq!(outside, None, "not in lib");
    }

    #[test]
    fn entries_newer_than_the_declaration_are_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let early = SystemTime::now() - std::time::Duration::from_secs(60);
        symlink("/etc/hostname", tmp.path().join("planted")).unwrap();
        let (ids, targets) = record(&[format!("{}/**", tmp.path().display())], early);
        assert_eq!(targets, PatternSet::default(), "planted link followed");
        assert!(ids.is_recorded());
    }

    /// A declared link, dated old enough, replaced by the action before its
    /// target is read (the race forced at the seam): the new target is not
    /// declared. Control: the same link left alone declares its target.
    #[test]
    fn a_declared_link_replaced_after_its_dating_declares_nothing() {
        use crate::seams::{Seam, with_hook};
        let tmp = tempfile::tempdir().unwrap();
        let (input, secret) = (tmp.path().join("input"), tmp.path().join("secret"));
        fs::write(&input, "in").unwrap();
        fs::write(&secret, "secret").unwrap();
        let link = tmp.path().join("link");
        symlink(&input, &link).unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        let patterns = [link.display().to_string()];
        let declares = |targets: &PatternSet, p: &Path| {
            crate::bazel::sandbox::set_matcher(targets).matches(p.as_os_str().as_bytes())
        };

        let (_, targets) = record(&patterns, later);
        assert!(declares(&targets, &input), "control: the link's target");

        let (planted, at) = (secret.clone(), link.clone());
        let (ids, targets) = with_hook(
            Seam::DeclaredLinkDated,
            move |_| {
                fs::remove_file(&at).unwrap();
                symlink(&planted, &at).unwrap();
            },
            || record(&patterns, later),
        );
        assert!(fs::read_link(&link).is_ok_and(|t| t == secret), "replaced");
        assert!(!declares(&targets, &secret), "the planted target declared");
        assert!(!declares(&targets, &input));
        assert_eq!(ids.count(), 0);
    }
}
