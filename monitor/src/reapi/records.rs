//! Records a worker runner writes, one per action, before it starts the
//! action's command: `<worker_records_dir>/<input root's name>.json`
//! (docs/reapi.md). The directory is the runner's, outside every input root,
//! so an action cannot rewrite its own identity.
//!
//! ```json
//! {"input_root": "/work/action-1", "action_digest": "<sha256>/<size>",
//!  "output_files": ["bazel-out/k8-fastbuild/bin/x.out"], "output_directories": [],
//!  "target_id": "//pkg:x", "action_mnemonic": "Genrule",
//!  "tool_invocation_id": "0b6e…"}
//! ```
use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    actions::{declarations::Declaration, registry::WorkerIdentity},
    bazel::{sandbox::Spawn, spawns::spawn_declaration},
    events::decode::Launch,
};

/// What the runner recorded (unknown keys are ignored: runners may add more).
#[derive(Debug, Deserialize, PartialEq)]
pub struct Record {
    pub input_root: PathBuf,
    pub action_digest: String,
    #[serde(default)]
    pub output_files: Vec<String>,
    #[serde(default)]
    pub output_directories: Vec<String>,
    pub target_id: Option<String>,
    pub action_mnemonic: Option<String>,
    pub tool_invocation_id: Option<String>,
}

/// Reads the record of the action working in `input_root`. `Err` says why
/// there is none usable (missing, unreadable, garbage, or another input
/// root's).
pub fn read_record(dir: &Path, input_root: &Path) -> Result<Record, String> {
    let name = input_root
        .file_name()
        .ok_or_else(|| format!("input root {} has no name", input_root.display()))?;
    let path = dir.join(name).with_extension("json");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_record(&text, input_root).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_record(text: &str, input_root: &Path) -> Result<Record, String> {
    let record: Record = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if record.input_root != input_root {
        return Err(format!(
            "records input root {}, not {}",
            record.input_root.display(),
            input_root.display()
        ));
    }
    if !is_digest(&record.action_digest) {
        return Err(format!(
            "action_digest {:?} is not <hex hash>/<size>",
            record.action_digest
        ));
    }
    Ok(record)
}

fn is_digest(s: &str) -> bool {
    let Some((hash, size)) = s.split_once('/') else {
        return false;
    };
    !hash.is_empty()
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
}

/// What a worker action declared and who it is: its input root (the
/// command's working directory) is read like a sandbox (the tree and its
/// symlinks' targets are inputs; writing inside it, where its declared
/// outputs are, is allowed); the record, when there is one, names it.
pub fn worker_action(
    launch: &Launch,
    records_dir: &Path,
) -> (Spawn, Declaration, Option<WorkerIdentity>) {
    let pid = launch.origin.pid;
    let cwd = match &launch.cwd {
        Some(cwd) => {
            PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(cwd))
        }
        None => fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default(),
    };
    let record = read_record(records_dir, &cwd)
        .or_else(|first| {
            // The command may work in a subdirectory of its input root
            // (Command.working_directory).
            cwd.ancestors()
                .skip(1)
                .find_map(|dir| read_record(records_dir, dir).ok())
                .ok_or(first)
        })
        .inspect_err(|e| log::warn!("worker action {pid}: no usable runner record ({e})"))
        .ok();
    let root = record
        .as_ref()
        .map(|r| r.input_root.clone())
        .unwrap_or_else(|| cwd.clone());
    let spawn = Spawn {
        launcher: "reapi".into(),
        execroot: root.clone(),
        sandbox_dir: Some(root),
        sandbox_id: None,
        writable: Vec::new(),
        command: launch
            .argv
            .split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
        own_network: false,
        // Links the action plants in its input root declare nothing.
        launched_at: Some(launch.origin.time),
        launch_ktime_ns: launch.origin.ktime_ns,
        persistent_worker: false,
    };
    let mut declaration = spawn_declaration(Path::new(""), &spawn, &Default::default());
    let identity = record.map(|r| {
        declaration.label = r.target_id.clone().filter(|s| !s.is_empty());
        declaration.mnemonic = r.action_mnemonic.clone().filter(|s| !s.is_empty());
        WorkerIdentity {
            root_pid: pid,
            digest: r.action_digest,
            invocation_id: r.tool_invocation_id.filter(|s| !s.is_empty()),
        }
    });
    (spawn, declaration, identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"input_root": "/w/action-1",
        "action_digest": "e266cf58/144", "output_files": ["out/x"],
        "output_directories": [], "target_id": "//:leaky",
        "action_mnemonic": "Genrule", "tool_invocation_id": "ef13", "future_key": 1}"#;

    #[test]
    fn a_record_names_its_action() {
        let r = parse_record(RECORD, Path::new("/w/action-1")).unwrap();
        assert_eq!(r.action_digest, "e266cf58/144");
        assert_eq!(r.target_id.as_deref(), Some("//:leaky"));
        assert_eq!(r.action_mnemonic.as_deref(), Some("Genrule"));
        assert_eq!(r.tool_invocation_id.as_deref(), Some("ef13"));
        assert_eq!(r.output_files, vec!["out/x".to_string()]);
    }

    #[test]
    fn records_of_another_root_or_with_a_bad_digest_are_refused() {
        let e = parse_record(RECORD, Path::new("/w/action-2")).unwrap_err();
        assert!(e.contains("/w/action-1"), "{e}");
        let bad = RECORD.replace("e266cf58/144", "e266cf58");
        assert!(parse_record(&bad, Path::new("/w/action-1")).is_err());
        assert!(parse_record("garbage", Path::new("/w/action-1")).is_err());
    }

    #[test]
    fn the_input_root_tree_is_declared_and_the_record_labels_it() {
        let dir = std::env::temp_dir().join(format!("reapi-records-{}", std::process::id()));
        let root = dir.join("work").join("action-7");
        let records = dir.join("records");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::create_dir_all(&records).unwrap();
        fs::write(root.join("in.txt"), "x").unwrap();
        let record = RECORD.replace("/w/action-1", &root.display().to_string());
        fs::write(records.join("action-7.json"), record).unwrap();
        let mut cwd = root.join("sub").into_os_string().into_encoded_bytes();
        cwd.shrink_to_fit();
        let launch = Launch {
            origin: test_origin(),
            argv: b"/bin/bash\0-c\0true\0".to_vec(),
            argv_truncated: false,
            cwd: Some(cwd),
        };
        let (spawn, declaration, identity) = worker_action(&launch, &records);
        assert_eq!(spawn.execroot, root);
        assert!(
            declaration
                .inputs
                .matches(root.join("in.txt").as_os_str().as_encoded_bytes())
        );
        assert!(!declaration.inputs.matches(b"/etc/hostname"));
        assert_eq!(declaration.label.as_deref(), Some("//:leaky"));
        let identity = identity.unwrap();
        assert_eq!(identity.digest, "e266cf58/144");
        assert_eq!(identity.invocation_id.as_deref(), Some("ef13"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn test_origin() -> crate::events::decode::Origin {
        crate::events::decode::Origin {
            time: std::time::SystemTime::now(),
            ktime_ns: 0,
            action_cgroup_id: 0,
            child_cgroup_id: 0,
            grandchild_cgroup_id: 0,
            launcher: 42,
            pid: 42,
            tid: 42,
            ppid: 1,
            scope: monitor_common::SCOPE_NONE,
            comm: [0; monitor_common::COMM_LEN],
        }
    }
}
