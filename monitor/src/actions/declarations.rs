//! Action declarations dropped as JSON files in `attribution.declarations_dir`
//! (format in docs/declarations.md). The directory is rescanned when inotify
//! reports a change (and every few seconds as a safety net); a file is
//! re-read when its size or mtime changes. A garbage file is reported once
//! (log + metric) and otherwise ignored: it never stops the monitor.
use std::{
    collections::HashMap,
    ffi::OsString,
    fs,
    os::unix::{
        ffi::{OsStrExt as _, OsStringExt as _},
        fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;

pub use crate::actions::identities::{self, Identities};
use crate::actions::trust;
use crate::{
    events::paths,
    policy::matchers::{NetMatcher, NetRule, PathMatcher},
};

/// What one action declared.
#[derive(Debug)]
pub struct Declaration {
    pub cgroup: PathBuf,
    pub label: Option<String>,
    pub mnemonic: Option<String>,
    pub inputs: PathMatcher,
    /// Where the action may write (and read back anything): its outputs and
    /// scratch space (a sandbox's own directory).
    pub outputs: PathMatcher,
    /// Where the action may create files and read back only what it created
    /// (a sandbox's host `/tmp`; a declaration file's `writable`).
    pub writable: PathMatcher,
    pub network: NetMatcher,
    pub source: PathBuf,
    /// Which objects the declared names stood for when the declaration was
    /// read (empty when not recorded, e.g. for sandboxes).
    pub identities: Identities,
    /// For a sandbox: which of its entries each declared link target came
    /// from (empty for declaration files).
    pub links: crate::actions::links::LinkSources,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeclaration {
    cgroup: PathBuf,
    label: Option<String>,
    mnemonic: Option<String>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    outputs: Vec<String>,
    #[serde(default)]
    writable: Vec<String>,
    #[serde(default)]
    network: Vec<NetRule>,
}

/// Parses a declaration without looking at the file system.
pub fn parse(text: &str, source: &Path) -> Result<Declaration, String> {
    parse_at(text, source, None)
}

/// Parses a declaration; with `written` (the declaration file's mtime) also
/// records what its declared names are now: the identity (device, inode)
/// of each file, and the targets of symlinks among them, which count as
/// declared. Entries changed after `written` are not trusted: the action
/// may have planted them.
pub fn parse_at(
    text: &str,
    source: &Path,
    written: Option<SystemTime>,
) -> Result<Declaration, String> {
    let raw: RawDeclaration = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !raw.cgroup.is_absolute() {
        return Err(format!("cgroup {:?} is not an absolute path", raw.cgroup));
    }
    PathMatcher::new(&raw.inputs).map_err(|e| e.to_string())?;
    let outputs = PathMatcher::new(&raw.outputs).map_err(|e| format!("outputs: {e}"))?;
    let writable = PathMatcher::new(&raw.writable).map_err(|e| format!("writable: {e}"))?;
    let (identities, targets) = match written {
        Some(t) => identities::record(&raw.inputs, t),
        None => (Identities::default(), Default::default()),
    };
    let mut patterns = raw.inputs.clone();
    patterns.extend(targets.globs);
    let mut inputs = PathMatcher::new(&patterns).map_err(|e| e.to_string())?;
    inputs.add_raw(&targets.raw_exact, &targets.raw_below);
    let cgroup = PathBuf::from(OsString::from_vec(paths::normalize(
        raw.cgroup.as_os_str().as_bytes(),
    )));
    Ok(Declaration {
        cgroup,
        label: raw.label,
        mnemonic: raw.mnemonic,
        inputs,
        outputs,
        writable,
        network: NetMatcher::new(raw.network),
        source: source.to_path_buf(),
        identities,
        links: Default::default(),
    })
}

/// What makes a declaration file worth re-reading: mtime, size, ctime.
type Stamp = (SystemTime, u64, (i64, i64));

/// The declarations found so far, by cgroup path.
#[derive(Default)]
pub struct DeclarationStore {
    dir: PathBuf,
    seen: HashMap<PathBuf, Stamp>,
    /// Why the directory is not trusted (logged and counted once).
    dir_error: Option<String>,
    by_cgroup: HashMap<PathBuf, Arc<Declaration>>,
}

impl DeclarationStore {
    pub fn new(dir: PathBuf) -> Self {
        DeclarationStore {
            dir,
            ..Default::default()
        }
    }

    /// Reads new and changed `*.json` files and forgets removed ones.
    /// Returns how many were invalid (a directory that cannot be trusted
    /// counts once, until it is fixed).
    pub fn rescan(&mut self) -> u64 {
        if let Err(why) = trust::check_dir(&self.dir) {
            if self.dir_error.as_ref() == Some(&why) {
                return 0;
            }
            if self.dir.exists() {
                log::error!(
                    "ignoring declarations directory {}: {why}",
                    self.dir.display()
                );
            }
            self.dir_error = Some(why);
            self.seen.clear();
            self.by_cgroup.clear();
            return u64::from(self.dir.exists());
        }
        self.dir_error = None;
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut invalid = 0;
        let mut present = std::collections::HashSet::new();
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            present.insert(path.clone());
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            // ctime too: a chown or chmod makes a rejected file worth
            // another look.
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
                (meta.ctime(), meta.ctime_nsec()),
            );
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            self.seen.insert(path.clone(), stamp);
            let parsed =
                trust::read_file(&path).and_then(|text| parse_at(&text, &path, Some(stamp.0)));
            match parsed {
                Ok(decl) => {
                    log::info!(
                        "declaration {} read for {} ({} declared files recorded)",
                        path.display(),
                        decl.cgroup.display(),
                        decl.identities.count()
                    );
                    self.by_cgroup.insert(decl.cgroup.clone(), Arc::new(decl));
                }
                Err(e) => {
                    invalid += 1;
                    log::error!("ignoring declaration {}: {e}", path.display());
                }
            }
        }
        self.seen.retain(|path, _| present.contains(path));
        self.by_cgroup
            .retain(|_, decl| present.contains(&decl.source));
        invalid
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every declaration currently valid.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Declaration>> {
        self.by_cgroup.values()
    }

    pub fn for_cgroup(&self, cgroup: &Path) -> Option<Arc<Declaration>> {
        self.by_cgroup.get(cgroup).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_contract_example() {
        let text = r#"{"cgroup": "/sys/fs/cgroup/unified/ci/job-1//action-7",
            "label": "//pkg:target", "mnemonic": "Genrule",
            "inputs": ["/abs/path/a.txt", "/abs/dir/**"],
            "network": [{"cidr": "127.0.0.1/32", "port": 8080}]}"#;
        let d = parse(text, Path::new("/d/a.json")).unwrap();
        assert_eq!(
            d.cgroup,
            Path::new("/sys/fs/cgroup/unified/ci/job-1/action-7")
        );
        assert_eq!(d.label.as_deref(), Some("//pkg:target"));
        assert!(d.inputs.matches(b"/abs/path/a.txt"));
        assert!(d.inputs.matches(b"/abs/dir/x/y"));
        assert!(!d.inputs.matches(b"/abs/path/b.txt"));
        assert!(d.network.allows("127.0.0.1".parse().unwrap(), 8080));
        assert!(!d.network.allows("127.0.0.1".parse().unwrap(), 8081));
    }

    /// A trusted symlink in a declared directory declares its final target;
    /// a target whose name is not UTF-8 is declared by its bytes (a lossy
    /// pattern matched no open of it: a false alert).
    #[test]
    fn trusted_link_targets_whose_names_are_not_utf8_are_declared() {
        use std::os::unix::{ffi::OsStrExt as _, fs::symlink};
        let tmp = tempfile::tempdir().unwrap();
        let (declared, lib) = (tmp.path().join("d"), tmp.path().join("lib"));
        fs::create_dir_all(&declared).unwrap();
        fs::create_dir_all(&lib).unwrap();
        let odd = |name: &[u8]| lib.join(std::ffi::OsStr::from_bytes(name));
        let (file, dir) = (odd(b"f\xff.h"), odd(b"sub\xfe"));
        fs::write(&file, "f").unwrap();
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("x"), "x").unwrap();
        fs::write(odd(b"sibling\xff"), "s").unwrap();
        symlink(&file, declared.join("to_file")).unwrap();
        symlink(&dir, declared.join("to_dir")).unwrap();
        let text = format!(
            r#"{{"cgroup": "/cg/a", "inputs": ["{}/**"]}}"#,
            declared.display()
        );
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(1);
        let d = parse_at(&text, Path::new("/d/a.json"), Some(later)).unwrap();
        let bytes = |p: &Path| p.as_os_str().as_bytes().to_vec();
        assert!(d.inputs.matches(&bytes(&file)));
        assert!(d.inputs.matches(&bytes(&dir)));
        assert!(d.inputs.matches(&bytes(&dir.join("x"))));
        // Controls: the lossy name and an undeclared sibling.
        let lossy = file.to_string_lossy().into_owned();
        assert!(!d.inputs.matches(lossy.as_bytes()));
        assert!(!d.inputs.matches(&bytes(&odd(b"sibling\xff"))));
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        for text in [
            "",
            "{",
            "[]",
            r#"{"cgroup": "rel/x"}"#,
            r#"{"cgroup": "/x", "bogus": 1}"#,
            r#"{"cgroup": "/x", "inputs": ["relative"]}"#,
        ] {
            assert!(
                parse(text, Path::new("/d/x.json")).is_err(),
                "accepted {text:?}"
            );
        }
    }

    #[test]
    fn store_picks_up_new_files_and_counts_invalid_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DeclarationStore::new(dir.path().to_path_buf());
        assert_eq!(store.rescan(), 0);
        fs::write(
            dir.path().join("a.json"),
            r#"{"cgroup": "/cg/a", "label": "//a"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("b.json"), "not json").unwrap();
        fs::write(dir.path().join("ignored.txt"), "not json").unwrap();
        assert_eq!(store.rescan(), 1);
        assert_eq!(
            store
                .for_cgroup(Path::new("/cg/a"))
                .unwrap()
                .label
                .as_deref(),
            Some("//a")
        );
        // Unchanged files are not re-read (and not re-counted).
        assert_eq!(store.rescan(), 0);
        // A removed file's declaration is forgotten.
        fs::remove_file(dir.path().join("a.json")).unwrap();
        store.rescan();
        assert!(store.for_cgroup(Path::new("/cg/a")).is_none());
    }

    #[test]
    fn untrusted_directories_and_files_are_rejected_and_counted() {
        use std::os::unix::fs::{PermissionsExt as _, symlink};
        let dir = tempfile::tempdir().unwrap();
        let good = r#"{"cgroup": "/cg/a", "label": "//a"}"#;
        fs::write(dir.path().join("a.json"), good).unwrap();
        // Owned by someone else, writable by others, a symlink: rejected.
        let other = dir.path().join("other.json");
        fs::write(&other, r#"{"cgroup": "/cg/b"}"#).unwrap();
        std::os::unix::fs::chown(&other, Some(4242), None).unwrap();
        let open = dir.path().join("open.json");
        fs::write(&open, r#"{"cgroup": "/cg/c"}"#).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o666)).unwrap();
        symlink(dir.path().join("a.json"), dir.path().join("link.json")).unwrap();
        let mut store = DeclarationStore::new(dir.path().to_path_buf());
        assert_eq!(store.rescan(), 3);
        assert!(store.for_cgroup(Path::new("/cg/a")).is_some());
        assert!(store.for_cgroup(Path::new("/cg/b")).is_none());
        assert!(store.for_cgroup(Path::new("/cg/c")).is_none());
        assert_eq!(store.rescan(), 0, "counted once");
        // Fixed: read on the next scan.
        std::os::unix::fs::chown(&other, Some(0), None).unwrap();
        assert_eq!(store.rescan(), 0);
        assert!(store.for_cgroup(Path::new("/cg/b")).is_some());

        // A directory others can write to is not trusted at all.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(store.rescan(), 1);
        assert!(store.for_cgroup(Path::new("/cg/a")).is_none());
        assert_eq!(store.rescan(), 0, "counted once");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        store.rescan();
        assert!(store.for_cgroup(Path::new("/cg/a")).is_some());
    }
}
