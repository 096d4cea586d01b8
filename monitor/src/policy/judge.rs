//! Verdicts: is an observed open or connect allowed for its action? Turns
//! violations into alerts; decides nothing about where they go.
use std::{net::IpAddr, sync::Arc};

use crate::{
    actions::registry::ActionView,
    events::decode::{Connect, FileOpen},
    output::alert::{Alert, AlertKind, FileInfo, NetInfo, ProcessInfo, Verdict},
    policy::matchers::{NetMatcher, PathMatcher},
};

/// The host-wide policy from the config.
pub struct Policy {
    pub files_allow: PathMatcher,
    pub network_allow: NetMatcher,
    /// The host's network namespace (the monitor's own), to tell sandboxed
    /// attempts apart.
    pub host_netns: Option<u32>,
}

/// Inode number of the calling process's network namespace.
pub fn own_netns() -> Option<u32> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net")
        .ok()
        .map(|m| m.ino() as u32)
}

/// What identifies "the same" violation for folding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    File(Vec<u8>),
    Net(IpAddr, u16, &'static str),
}

pub struct Violation {
    pub target: Target,
    pub alert: Alert,
}

const EFAULT: i64 = 14;
const O_CREAT: u64 = 0o100;
/// O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_TMPFILE's directory bit.
const WRITE_FLAGS: u64 = 0o1 | 0o2 | O_CREAT | 0o1000 | 0o2000 | 0o20000000;

fn caveat(ev: &FileOpen) -> Option<&'static str> {
    if ev.unreadable {
        Some("the path could not be read from the process")
    } else if ev.unresolved {
        Some("relative path; its base directory could not be resolved")
    } else if ev.truncated {
        Some("path truncated: longer than the kernel buffer")
    } else {
        None
    }
}

impl Policy {
    /// `process` is only called for a violation (it allocates).
    pub fn judge_file(
        &self,
        ev: &FileOpen,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        if !action.judge_files {
            return None;
        }
        // A bad pointer is the caller's own bug, not an access.
        if ev.unreadable && ev.result == -EFAULT {
            return None;
        }
        // A truncated or unresolved path cannot be proven declared.
        let provable = !ev.truncated && !ev.unresolved && !ev.unreadable;
        if provable {
            let declared = action
                .declaration
                .as_ref()
                .is_some_and(|d| d.inputs.matches(&ev.path));
            if declared || self.files_allow.matches(&ev.path) {
                return None;
            }
            let writable = action
                .declaration
                .as_ref()
                .is_some_and(|d| d.writable.matches(&ev.path));
            if writable {
                let mut created = action.created.lock().unwrap_or_else(|e| e.into_inner());
                if ev.open_flags & WRITE_FLAGS != 0 {
                    if ev.result >= 0 && ev.open_flags & O_CREAT != 0 {
                        created.insert(ev.path.clone());
                    }
                    return None;
                }
                if created.contains(&ev.path) {
                    return None;
                }
            }
        }
        Some(Violation {
            target: Target::File(ev.path.clone()),
            alert: Alert {
                time: ev.origin.time,
                kind: AlertKind::UndeclaredFile,
                action: action.info.clone(),
                process: process(),
                file: Some(FileInfo {
                    path: ev.path.clone(),
                    op: "open",
                    flags: ev.open_flags,
                    result: ev.result,
                    caveat: caveat(ev),
                }),
                net: None,
                verdict: Verdict::Observed,
                count: 1,
            },
        })
    }

    pub fn judge_connect(
        &self,
        ev: &Connect,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        // A job talking to itself over loopback (the Bazel client to its own
        // server) is not egress.
        if !action.judge_files
            && crate::policy::localnet::listener_in_cgroup(
                ev.addr,
                ev.port,
                std::path::Path::new(&action.info.cgroup),
            )
        {
            return None;
        }
        let declared = action
            .declaration
            .as_ref()
            .is_some_and(|d| d.network.allows(ev.addr, ev.port));
        if declared || self.network_allow.allows(ev.addr, ev.port) {
            return None;
        }
        let proto = match ev.sock_type {
            1 => "tcp",
            2 => "udp",
            3 => "raw",
            _ => "unknown",
        };
        Some(Violation {
            target: Target::Net(ev.addr, ev.port, proto),
            alert: Alert {
                time: ev.origin.time,
                kind: AlertKind::NetworkEgress,
                action: action.info.clone(),
                process: process(),
                file: None,
                net: Some(NetInfo {
                    proto,
                    addr: ev.addr,
                    port: ev.port,
                    result: ev.result,
                    netns: Some(ev.netns),
                    private_netns: self.host_netns.is_some_and(|h| h != ev.netns),
                }),
                verdict: Verdict::Observed,
                count: 1,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::SystemTime};

    use super::*;
    use crate::{
        actions::declarations::Declaration, events::decode::Origin, output::alert::ActionInfo,
    };

    fn policy() -> Policy {
        Policy {
            files_allow: PathMatcher::new(&["/usr/**".into()]).unwrap(),
            network_allow: NetMatcher::default(),
            host_netns: None,
        }
    }

    fn spawn_view() -> Arc<ActionView> {
        let declaration = Declaration {
            cgroup: PathBuf::from("/cg"),
            label: Some("//p:t".into()),
            mnemonic: Some("Genrule".into()),
            inputs: PathMatcher::new(&["/ob/sandbox/linux-sandbox/1/**".into()]).unwrap(),
            writable: PathMatcher::new(&["/tmp/**".into()]).unwrap(),
            network: NetMatcher::default(),
            source: PathBuf::from("/ob/sandbox/linux-sandbox/1"),
        };
        Arc::new(ActionView {
            info: ActionInfo {
                id: "linux-sandbox-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: None,
                mnemonic: None,
            },
            declaration: Some(Arc::new(declaration)),
            judge_files: true,
            spawn: None,
            created: Default::default(),
        })
    }

    fn open(path: &str, flags: u64, result: i64) -> FileOpen {
        FileOpen {
            origin: Origin {
                time: SystemTime::now(),
                action_cgroup_id: 1,
                child_cgroup_id: 0,
                grandchild_cgroup_id: 0,
                launcher: 1,
                pid: 2,
                tid: 2,
                ppid: 1,
                scope: 0,
                comm: *b"bash\0\0\0\0\0\0\0\0\0\0\0\0",
            },
            path: path.as_bytes().to_vec(),
            open_flags: flags,
            result,
            truncated: false,
            unresolved: false,
            unreadable: false,
        }
    }

    fn judge(p: &Policy, view: &Arc<ActionView>, ev: &FileOpen) -> bool {
        let process = || ProcessInfo {
            pid: 2,
            ppid: 1,
            comm: "bash".into(),
            exe: None,
        };
        p.judge_file(ev, process, view).is_some()
    }

    #[test]
    fn sandbox_inputs_and_allow_list_pass_other_files_do_not() {
        let (p, view) = (policy(), spawn_view());
        assert!(!judge(
            &p,
            &view,
            &open("/ob/sandbox/linux-sandbox/1/execroot/ws/in.txt", 0, 3)
        ));
        assert!(!judge(&p, &view, &open("/usr/lib/libc.so.6", 0, 3)));
        assert!(judge(&p, &view, &open("/home/ci/.aws/credentials", 0, 3)));
        assert!(
            judge(&p, &view, &open("/home/ci/missing", 0, -2)),
            "failed attempts count too"
        );
    }

    #[test]
    fn writable_dirs_allow_writes_and_reading_back_only_what_the_action_created() {
        let (p, view) = (policy(), spawn_view());
        assert!(
            judge(&p, &view, &open("/tmp/someone-elses-secret", 0, 3)),
            "reading a host /tmp file"
        );
        assert!(
            !judge(&p, &view, &open("/tmp/scratch", O_CREAT | 0o1, 3)),
            "creating scratch space"
        );
        assert!(
            !judge(&p, &view, &open("/tmp/scratch", 0, 4)),
            "reading back its own file"
        );
        let other = spawn_view();
        assert!(
            judge(&p, &other, &open("/tmp/scratch", 0, 4)),
            "another action did not create it"
        );
    }

    #[test]
    fn network_only_views_ignore_files() {
        let p = policy();
        let job = Arc::new(ActionView {
            info: ActionInfo {
                id: "exec-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: None,
                mnemonic: None,
            },
            declaration: None,
            judge_files: false,
            spawn: None,
            created: Default::default(),
        });
        assert!(!judge(&p, &job, &open("/etc/shadow", 0, 3)));
    }
}
