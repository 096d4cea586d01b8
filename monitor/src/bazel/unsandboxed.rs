//! Spawns that ran without a sandbox tree (`--spawn_strategy=local` or
//! `standalone`, `tags = ["no-sandbox"]`): Bazel 4 still runs them through
//! `process-wrapper`, but in the main execroot, whose symlink forest points
//! at the whole workspace — reading that tree would declare everything.
//! Their declaration is Bazel's own record instead: the execution log
//! entry's `inputs` and outputs, read when the build has ended.
use std::path::Path;

use crate::{
    actions::declarations::Declaration,
    bazel::{
        execlog::SpawnEntry,
        sandbox::{self, escape_glob, pattern_below, push_link_chain},
    },
    policy::matchers::{NetMatcher, PatternSet},
};

/// Is this launcher's working directory the main execroot rather than a
/// sandbox directory? (Then its tree declares nothing.)
pub fn is_unsandboxed(spawn: &sandbox::Spawn) -> bool {
    spawn.sandbox_dir.is_none() && !spawn.execroot.as_os_str().is_empty()
}

/// The input patterns an unsandboxed spawn declared through its log entry:
/// each input (and output: a spawn may read back what it wrote) below
/// `execroot` (a directory with everything in it), every hop of its symlink
/// chain (the main execroot links to the source tree), and the execroot
/// directory itself.
pub fn declared_patterns(entry: &SpawnEntry, execroot: &Path) -> PatternSet {
    let mut patterns = PatternSet::default();
    patterns.push_path(execroot, false);
    let mut real_dirs = sandbox::RealDirs::default();
    for rel in entry.inputs.iter().chain(&entry.outputs) {
        let path = execroot.join(rel.trim_start_matches("./"));
        patterns.push_path(&path, false);
        patterns.push_path(&path, true);
        push_link_chain(&path, None, &mut patterns, &mut real_dirs, |_, _| {});
    }
    patterns
}

/// Where it may write: its outputs below `execroot` (a tree artifact with
/// everything in it).
pub fn output_patterns(entry: &SpawnEntry, execroot: &Path) -> Vec<String> {
    let mut patterns = Vec::new();
    for rel in &entry.outputs {
        let path = execroot.join(rel.trim_start_matches("./"));
        patterns.push(escape_glob(&path.display().to_string()));
        patterns.push(pattern_below(&path));
    }
    patterns
}

/// The declaration of an unsandboxed spawn from its log entry; `source` is
/// the log's path (what the report shows the declaration came from).
pub fn declaration_from_log(
    entry: &SpawnEntry,
    execroot: &Path,
    cgroup: &Path,
    source: &Path,
) -> Declaration {
    Declaration {
        cgroup: cgroup.to_path_buf(),
        label: entry.label.clone(),
        mnemonic: entry.mnemonic.clone(),
        inputs: sandbox::set_matcher(&declared_patterns(entry, execroot)),
        outputs: sandbox::matcher(&output_patterns(entry, execroot)),
        writable: sandbox::matcher(&[]),
        identities: Default::default(),
        network: NetMatcher::default(),
        // Bazel's record, not a tree read: no link of uncertain age.
        links: Default::default(),
        source: source.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn inputs_outputs_and_link_targets_are_declared_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let ws = tmp.path().join("ws");
        let execroot = tmp.path().join("ob/execroot/ws");
        fs::create_dir_all(&ws).unwrap();
        fs::create_dir_all(execroot.join("tools")).unwrap();
        for f in ["in.txt", "other.txt"] {
            fs::write(ws.join(f), "x").unwrap();
            std::os::unix::fs::symlink(ws.join(f), execroot.join(f)).unwrap();
        }
        let entry = SpawnEntry {
            label: Some("//:t".into()),
            mnemonic: Some("Genrule".into()),
            inputs: vec!["in.txt".into(), "tools".into()],
            outputs: vec!["bazel-out/bin/t.out".into()],
            ..Default::default()
        };
        let d = declaration_from_log(&entry, &execroot, Path::new("/cg"), Path::new("/log.json"));
        let ok = |p: &Path| d.inputs.matches(p.as_os_str().as_encoded_bytes());
        assert!(ok(&execroot.join("in.txt")));
        assert!(ok(&ws.join("in.txt")), "the link's target");
        assert!(ok(&execroot.join("tools/x/y")), "inside a directory input");
        assert!(ok(&execroot.join("bazel-out/bin/t.out")));
        let out = |p: &Path| d.outputs.matches(p.as_os_str().as_encoded_bytes());
        assert!(out(&execroot.join("bazel-out/bin/t.out")));
        assert!(!out(&execroot.join("in.txt")), "inputs are read-only");
        assert!(ok(&execroot));
        assert!(
            !ok(&execroot.join("other.txt")),
            "in the forest, not declared"
        );
        assert!(!ok(&ws.join("other.txt")));
        assert_eq!(d.label.as_deref(), Some("//:t"));
        assert!(is_unsandboxed(&sandbox::parse_launch(
            b"process-wrapper\0/bin/true",
            &execroot
        )));
    }
}
