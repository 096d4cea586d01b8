//! Action declarations dropped as JSON files in `attribution.declarations_dir`
//! (format in docs/declarations.md). The directory is rescanned when inotify
//! reports a change (and every few seconds as a safety net); a file is
//! re-read when its size or mtime changes. A garbage file is reported once
//! (log + metric) and otherwise ignored: it never stops the monitor.
use std::{
    collections::HashMap,
    ffi::OsString,
    fs,
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::Deserialize;

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
    /// Directories the action may write to and read back what it created
    /// there (a sandbox's host `/tmp`); empty for declaration files.
    pub writable: PathMatcher,
    pub network: NetMatcher,
    pub source: PathBuf,
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
    network: Vec<NetRule>,
}

pub fn parse(text: &str, source: &Path) -> Result<Declaration, String> {
    let raw: RawDeclaration = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if !raw.cgroup.is_absolute() {
        return Err(format!("cgroup {:?} is not an absolute path", raw.cgroup));
    }
    let inputs = PathMatcher::new(&raw.inputs).map_err(|e| e.to_string())?;
    let cgroup = PathBuf::from(OsString::from_vec(paths::normalize(
        raw.cgroup.as_os_str().as_bytes(),
    )));
    Ok(Declaration {
        cgroup,
        label: raw.label,
        mnemonic: raw.mnemonic,
        inputs,
        writable: PathMatcher::new(&[]).expect("empty matcher"),
        network: NetMatcher::new(raw.network),
        source: source.to_path_buf(),
    })
}

/// The declarations found so far, by cgroup path.
#[derive(Default)]
pub struct DeclarationStore {
    dir: PathBuf,
    seen: HashMap<PathBuf, (SystemTime, u64)>,
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
    /// Returns how many were invalid.
    pub fn rescan(&mut self) -> u64 {
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
            let stamp = (
                meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                meta.len(),
            );
            if self.seen.get(&path) == Some(&stamp) {
                continue;
            }
            self.seen.insert(path.clone(), stamp);
            let parsed = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| parse(&text, &path));
            match parsed {
                Ok(decl) => {
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
}
