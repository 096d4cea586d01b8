//! Verdicts: is an observed open or connect allowed for its action? Turns
//! violations into alerts; decides nothing about where they go.
use std::{net::IpAddr, sync::Arc};

use monitor_common::{SOCK_ALLOWED, SOCK_BLOCKED, SOCK_INTERNAL};

use crate::{
    actions::registry::ActionView,
    events::decode::{Connect, Exec, FileOpen, UnixConnect},
    output::alert::{Alert, AlertKind, FileInfo, NetInfo, ProcessInfo, Verdict},
    policy::{
        access,
        matchers::{NetMatcher, PathMatcher},
        scoped::{BAZEL_SCOPE, ScopedRules, ScopedVerdict, Who},
    },
};

/// The host-wide policy from the config.
pub struct Policy {
    pub files_allow: PathMatcher,
    pub network_allow: NetMatcher,
    /// Unix sockets every action may connect to (`network.allow_unix`).
    pub unix_allow: PathMatcher,
    /// The host's network namespace (the monitor's own), to tell sandboxed
    /// attempts apart.
    pub host_netns: Option<u32>,
    /// `[[network.rule]]`: destinations for some targets or the `@bazel` tier.
    pub scoped: ScopedRules,
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
    /// An undeclared write (folded apart from reads of the same file).
    Write(Vec<u8>),
    /// An undeclared program run (folded apart from opens of the same
    /// file: an `O_PATH` open before `fexecve` must not hide the exec).
    Exec(Vec<u8>),
    Net(IpAddr, u16, &'static str),
    Unix(Vec<u8>),
    /// A spawn's isolation (one per action).
    Isolation,
    /// A repository fetch (`fetch_*` alerts): its URL, else `addr:port`,
    /// folded apart from the network alert of the same connect.
    Fetch(String),
}

pub struct Violation {
    pub target: Target,
    pub alert: Alert,
    /// A connect that a target-scoped rule would allow if the spawn's
    /// label (not known yet) matched: to be judged again once it is joined.
    pub undecided: bool,
}

/// Who `action` is, for the scoped rules.
pub fn who(action: &ActionView) -> Who<'_> {
    // Only the job's own view is judged on the network alone.
    let job = !action.judge_files;
    Who {
        label: action.info.label.as_deref(),
        mnemonic: action.info.mnemonic.as_deref(),
        job,
        bazel: job && action.info.label.as_deref() == Some(BAZEL_SCOPE),
        spawn: !job && action.spawn.is_some(),
    }
}

fn caveat(ev: &FileOpen) -> Option<&'static str> {
    if ev.object.is_none() && ev.unreadable {
        Some("the path could not be read from the process")
    } else if ev.unresolved {
        Some("relative path; its base directory could not be resolved")
    } else if ev.truncated {
        Some("path truncated: longer than the kernel buffer")
    } else {
        None
    }
}

/// Which violation an open is, and why when its name does not say.
type FileVerdict = (AlertKind, Option<&'static str>);

impl Policy {
    /// `process` is only called for a violation (it allocates).
    pub fn judge_file(
        &self,
        ev: &FileOpen,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        self.judge_object(ev, ev.op, process, action)
    }

    /// An exec: the program file is an input, judged like an open for
    /// reading (a script's interpreter is the program file; the script
    /// itself is judged when the interpreter opens it). The sandbox
    /// launcher's own program is not the spawn's.
    pub fn judge_exec(
        &self,
        ev: &Exec,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        let exe = ev.exe.as_ref()?;
        if ev.origin.launcher == ev.origin.pid {
            return None;
        }
        let open = FileOpen {
            origin: ev.origin,
            op: "exec",
            path: exe.clone(),
            requested: None,
            object: ev.identity,
            open_flags: 0,
            result: 0,
            truncated: false,
            unresolved: false,
            unreadable: false,
            tracked: None,
            mounted_at: ev.mounted_at.clone(),
        };
        self.judge_object(&open, "exec", process, action)
    }

    fn judge_object(
        &self,
        ev: &FileOpen,
        op: &'static str,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        if !action.judge_files || access::exempt(ev) {
            return None;
        }
        let (kind, note) = self.file_verdict(ev, action)?;
        let target = match kind {
            AlertKind::UndeclaredWrite => Target::Write(ev.path.clone()),
            _ if op == "exec" => Target::Exec(ev.path.clone()),
            _ => Target::File(ev.path.clone()),
        };
        Some(Violation {
            target,
            alert: Alert {
                time: ev.origin.time,
                kind,
                action: action.info.clone(),
                process: process(),
                file: Some(FileInfo {
                    path: ev.path.clone(),
                    op,
                    flags: ev.open_flags,
                    result: ev.result,
                    caveat: caveat(ev),
                    requested: ev.requested.clone(),
                    dev: ev.object.as_ref().map(|o| o.dev_string()),
                    ino: ev.object.as_ref().map(|o| o.ino),
                    note,
                }),
                net: None,
                verdict: Verdict::Observed,
                count: 1,
                cache_risk: None,
                fetch: None,
                summary: None,
            },
            undecided: false,
        })
    }

    /// Writes need an output, a writable directory or an allowed device; reads
    /// need a declared input, an output, the allow list, or a file the
    /// action itself created in a writable directory. A declared name whose
    /// object is not the declared one (hard link, bind mount) is neither.
    fn file_verdict(&self, ev: &FileOpen, action: &ActionView) -> Option<FileVerdict> {
        let access = access::classify(ev);
        let write_kind = if access.writes {
            AlertKind::UndeclaredWrite
        } else {
            AlertKind::UndeclaredFile
        };
        // A truncated or unresolved path cannot be proven declared.
        let provable = !ev.truncated && !ev.unresolved && (ev.object.is_some() || !ev.unreadable);
        if !provable {
            return Some((write_kind, None));
        }
        // Its path is the spawn's choice (a clone's inside, or none).
        if ev.object.as_ref().is_some_and(|o| o.detached) {
            return Some((write_kind, Some(DETACHED_NOTE)));
        }
        let path = &ev.path;
        let decl = action.declaration.as_deref();
        let allowed = self.files_allow.matches(path);
        let inputs = decl.is_some_and(|d| d.inputs.matches(path) && !action.only_planted(d, path));
        let outputs = decl.is_some_and(|d| d.outputs.matches(path));
        let writable = decl.is_some_and(|d| d.writable.matches(path));
        let mut created = action.created.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(d), Some(id)) = (decl, &ev.object)
            && (inputs || outputs)
            && let Some(note) = d
                .identities
                .mismatch(path, id, || created.contains(&access::identity_key(id)))
        {
            return Some((write_kind, Some(note)));
        }
        if let (Some(d), Some(id)) = (decl, &ev.object)
            && inputs
            && let Some(note) = d
                .identities
                .planted_in_linked_dir(path, id, |name| action.made_hard_link(name))
        {
            return Some((write_kind, Some(note)));
        }
        if let (Some(d), Some(id), Some(at)) = (decl, &ev.object, &ev.mounted_at)
            && (inputs || outputs || writable)
            && let Some(note) = d
                .identities
                .mounted_over(path, at, id, || created.contains(&access::identity_key(id)))
        {
            return Some((write_kind, Some(note)));
        }
        // The allow list is for reading; of it, only devices (`/dev/null`,
        // terminals) may be written. A failed open has no object: its name
        // says whether it was a device.
        let device = match &ev.object {
            Some(o) => o.is_char_device(),
            None => path.starts_with(b"/dev/"),
        };
        if access.writes && !((allowed && device) || outputs || writable) {
            return Some((AlertKind::UndeclaredWrite, None));
        }
        // Bounded: past the cap, reading back a file the action created is
        // reported (noise, never a miss).
        if access.created && created.len() < crate::actions::registry::MAX_CREATED_PER_ACTION {
            created.insert(path.clone());
            if let Some(id) = &ev.object {
                created.insert(access::identity_key(id));
            }
        }
        // Read back: the object itself must be one the action created (a
        // name it created may since show something mounted or linked there).
        let own = writable
            && match &ev.object {
                Some(id) => created.contains(&access::identity_key(id)),
                None => created.contains(path),
            };
        let readable = allowed || inputs || outputs || own;
        let note = (writable && !own && ev.object.is_some() && created.contains(path))
            .then_some(NOT_CREATED_NOTE);
        (access.reads && !readable).then_some((AlertKind::UndeclaredFile, note))
    }

    pub fn judge_connect(
        &self,
        ev: &Connect,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        let kernel = ev.kernel_verdict.unwrap_or(0);
        // The action's own listener (the Bazel client to its own server):
        // not egress. The kernel knows the listeners bound while it
        // watched and those found at attach; /proc answers for connects
        // only the syscall saw (sockets made outside the monitored cgroups).
        if kernel & SOCK_INTERNAL != 0 {
            return None;
        }
        let blocked = kernel & SOCK_BLOCKED != 0;
        let mut undecided = false;
        // A packet socket has no destination a rule could allow.
        if !blocked && !ev.packet_socket {
            let declared = action
                .declaration
                .as_ref()
                .is_some_and(|d| d.network.allows(ev.addr, ev.port));
            if declared || kernel & SOCK_ALLOWED != 0 || self.network_allow.allows(ev.addr, ev.port)
            {
                return None;
            }
            match self.scoped.verdict(&who(action), ev.addr, ev.port) {
                ScopedVerdict::Allowed => return None,
                ScopedVerdict::Undecided => undecided = true,
                ScopedVerdict::Denied => {}
            }
            if !action.judge_files
                && ev.kernel_verdict.is_none()
                && crate::policy::localnet::listener_in_cgroup(
                    ev.addr,
                    ev.port,
                    std::path::Path::new(&action.info.cgroup),
                )
            {
                return None;
            }
        }
        let proto = connect_proto(ev);
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
                    send: ev.send,
                    unix_path: None,
                    netns: Some(ev.netns),
                    private_netns: self.host_netns.is_some_and(|h| h != ev.netns),
                }),
                verdict: if blocked {
                    Verdict::Blocked
                } else {
                    Verdict::Observed
                },
                count: 1,
                cache_risk: None,
                fetch: None,
                summary: None,
            },
            undecided,
        })
    }
}

impl Policy {
    /// A unix-socket connect: allowed by `network.allow_unix`, or to a
    /// listening socket of the action itself (its listener is a process of
    /// the action; `localnet` asks /proc for the rest); else egress.
    pub fn judge_unix(
        &self,
        ev: &UnixConnect,
        process: impl FnOnce() -> ProcessInfo,
        action: &Arc<ActionView>,
    ) -> Option<Violation> {
        if ev.peer_in_action
            || self.unix_allow.matches(&ev.path)
            || crate::policy::localnet::unix_listener_in_cgroup(
                &ev.path,
                std::path::Path::new(&action.info.cgroup),
            )
        {
            return None;
        }
        let path = crate::events::paths::escape_for_display(&ev.path);
        Some(Violation {
            target: Target::Unix(ev.path.clone()),
            alert: Alert {
                time: ev.origin.time,
                kind: AlertKind::NetworkEgress,
                action: action.info.clone(),
                process: process(),
                file: None,
                net: Some(NetInfo {
                    proto: "unix",
                    addr: IpAddr::from([0, 0, 0, 0]),
                    port: 0,
                    result: Some(ev.result),
                    send: false,
                    unix_path: Some(path),
                    netns: None,
                    private_netns: false,
                }),
                verdict: Verdict::Observed,
                count: 1,
                cache_risk: None,
                fetch: None,
                summary: None,
            },
            undecided: false,
        })
    }
}

/// For the egress inventory: the (proto, destination) of a network event
/// that is egress — not the action's own internal traffic.
pub fn egress_destination(event: &crate::events::decode::Event) -> Option<(&'static str, String)> {
    use crate::events::decode::Event;
    match event {
        Event::Connect(c) => {
            if c.kernel_verdict.unwrap_or(0) & SOCK_INTERNAL != 0 {
                return None;
            }
            let dest = if c.packet_socket {
                format!("packet socket (ethertype {:#06x})", c.protocol)
            } else if c.port == 0 && c.send {
                c.addr.to_string()
            } else {
                std::net::SocketAddr::new(c.addr, c.port).to_string()
            };
            Some((connect_proto(c), dest))
        }
        Event::UnixConnect(u) if !u.peer_in_action => {
            Some(("unix", crate::events::paths::escape_for_display(&u.path)))
        }
        _ => None,
    }
}

/// `net.proto` of a connect, send or packet socket.
fn connect_proto(c: &Connect) -> &'static str {
    if c.packet_socket {
        crate::output::alert::PACKET
    } else {
        proto_name(c.protocol, c.sock_type)
    }
}

/// `net.proto`: from the IP protocol when the socket hook gave it, else
/// from the socket type.
fn proto_name(protocol: u16, sock_type: u16) -> &'static str {
    match (protocol, sock_type) {
        (6, _) => "tcp",
        (17, _) | (136, _) => "udp",
        (1, _) | (58, _) => "icmp",
        (0, 1) => "tcp",
        (0, 2) => "udp",
        (_, 3) => "raw",
        _ => "unknown",
    }
}

/// The note of a read back, at a name the action created, of another file.
const NOT_CREATED_NOTE: &str = "not the file the action created under this name: something \
                                mounted over it or linked there";

/// The note of an object opened in a mount tree no namespace holds.
const DETACHED_NOTE: &str = "opened in a mount tree no namespace holds (cloned with open_tree, or \
                             lazily unmounted): its path there is not the file's";

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::{actions::declarations::Declaration, output::alert::ActionInfo};

    const O_WRONLY: u64 = 0o1;
    const O_RDWR: u64 = 0o2;
    const O_CREAT: u64 = 0o100;
    const O_APPEND: u64 = 0o2000;

    fn policy() -> Policy {
        Policy {
            files_allow: PathMatcher::new(&["/usr/**".into()]).unwrap(),
            network_allow: NetMatcher::default(),
            unix_allow: PathMatcher::new(&[]).unwrap(),
            host_netns: None,
            scoped: ScopedRules::default(),
        }
    }

    fn spawn_view() -> Arc<ActionView> {
        spawn_view_with(Default::default())
    }

    fn spawn_view_with(links: crate::actions::links::LinkSources) -> Arc<ActionView> {
        let declaration = Declaration {
            cgroup: PathBuf::from("/cg"),
            label: Some("//p:t".into()),
            mnemonic: Some("Genrule".into()),
            inputs: PathMatcher::new(&["/ob/sandbox/linux-sandbox/1/**".into(), "/src/**".into()])
                .unwrap(),
            outputs: PathMatcher::new(&["/ob/sandbox/linux-sandbox/1/**".into()]).unwrap(),
            writable: PathMatcher::new(&["/tmp/**".into()]).unwrap(),
            network: NetMatcher::default(),
            source: PathBuf::from("/ob/sandbox/linux-sandbox/1"),
            identities: Default::default(),
            links,
        };
        Arc::new(ActionView::new(
            ActionInfo {
                id: "linux-sandbox-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: None,
                mnemonic: None,
                worker: None,
            },
            Some(Arc::new(declaration)),
            true,
            None,
        ))
    }

    fn open(path: &str, flags: u64, result: i64) -> FileOpen {
        FileOpen::sample(path, flags, result)
    }

    /// An open in which the kernel created the file.
    fn creating(path: &str, flags: u64, result: i64) -> FileOpen {
        let mut ev = open(path, flags, result);
        if let Some(o) = &mut ev.object {
            o.f_mode |= monitor_common::FMODE_CREATED;
        }
        ev
    }

    fn kind(p: &Policy, view: &Arc<ActionView>, ev: &FileOpen) -> Option<&'static str> {
        let process = || ProcessInfo {
            pid: 2,
            ppid: 1,
            comm: "bash".into(),
            exe: None,
        };
        p.judge_file(ev, process, view)
            .map(|v| v.alert.kind.as_str())
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
            !judge(&p, &view, &creating("/tmp/scratch", O_CREAT | O_WRONLY, 3)),
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
        let mut mounted = open("/tmp/scratch", 0, 4);
        mounted.object.as_mut().unwrap().ino = 99;
        assert!(
            judge(&p, &view, &mounted),
            "another file under the name it created"
        );
    }

    #[test]
    fn read_back_of_a_file_the_action_did_not_create_is_a_read() {
        let (p, view) = (policy(), spawn_view());
        // O_CREAT passed, but the file existed: the kernel did not create it.
        assert_eq!(
            kind(&p, &view, &open("/tmp/left", O_CREAT | O_RDWR, 3)),
            Some("undeclared_file")
        );
        assert_eq!(
            kind(&p, &view, &open("/tmp/left", O_APPEND, 3)),
            Some("undeclared_file"),
            "O_RDONLY|O_APPEND reads"
        );
        assert_eq!(
            kind(&p, &view, &open("/tmp/left", O_APPEND | O_WRONLY, 3)),
            None,
            "appending to it is a write, allowed there"
        );
        assert_eq!(
            kind(&p, &view, &open("/tmp/left", 0, 3)),
            Some("undeclared_file")
        );
    }

    #[test]
    fn writes_outside_outputs_and_writable_dirs_are_undeclared_writes() {
        let (p, view) = (policy(), spawn_view());
        let out = "/ob/sandbox/linux-sandbox/1/execroot/ws/bazel-out/o.txt";
        assert_eq!(kind(&p, &view, &creating(out, O_CREAT | O_WRONLY, 3)), None);
        assert_eq!(
            kind(&p, &view, &open("/src/pkg/in.txt", O_WRONLY, 3)),
            Some("undeclared_write"),
            "writing a declared input (the source tree)"
        );
        assert_eq!(kind(&p, &view, &open("/src/pkg/in.txt", 0, 3)), None);
        assert_eq!(
            kind(&p, &view, &open("/home/ci/x", O_CREAT | O_WRONLY, -13)),
            Some("undeclared_write"),
            "a failed attempt to create"
        );
    }

    #[test]
    fn the_allow_list_is_read_only_except_for_devices() {
        let (p, view) = (policy(), spawn_view());
        assert_eq!(kind(&p, &view, &open("/usr/lib/libc.so.6", 0, 3)), None);
        assert_eq!(
            kind(&p, &view, &open("/usr/lib/libc.so.6", O_WRONLY, 3)),
            Some("undeclared_write")
        );
        let mut null = open("/usr/null-device", O_WRONLY, 3);
        null.object.as_mut().unwrap().mode = libc::S_IFCHR | 0o666;
        assert_eq!(kind(&p, &view, &null), None);
        let p = Policy {
            files_allow: PathMatcher::new(&["/dev/tty".into()]).unwrap(),
            ..policy()
        };
        assert_eq!(
            kind(&p, &view, &open("/dev/tty", O_RDWR, -6)),
            None,
            "no controlling terminal (ENXIO)"
        );
    }

    #[test]
    fn own_proc_entries_and_pipes_are_no_file_access() {
        let (p, view) = (policy(), spawn_view());
        let mut own = open("/proc/1234/status", 0, 3);
        own.object.as_mut().unwrap().proc_tgid = 2;
        assert!(!judge(&p, &view, &own));
        let mut other = open("/proc/77/environ", 0, 3);
        other.object.as_mut().unwrap().proc_tgid = 77;
        assert!(judge(&p, &view, &other));
        let mut pipe = open("/", 0, 3);
        pipe.object.as_mut().unwrap().internal = true;
        assert!(!judge(&p, &view, &pipe));
        // In a tree no namespace holds, even a name the spawn's sandbox
        // declares (its outputs) is no proof: the path is the spawn's.
        let output = "/ob/sandbox/linux-sandbox/1/execroot/ws/bazel-out/out.txt";
        assert!(!judge(&p, &view, &open(output, 0, 3)));
        let mut detached = open(output, 0, 3);
        detached.object.as_mut().unwrap().detached = true;
        assert!(judge(&p, &view, &detached));
        // A failed open has no object: its own /proc names pass, what lies
        // through /proc/self/root does not.
        assert!(!judge(&p, &view, &open("/proc/self/nothing", 0, -2)));
        assert!(judge(&p, &view, &open("/proc/self/root/etc/shadow", 0, -2)));
    }

    /// A read through an old link below a directory moved into the
    /// sandbox: undeclared once the action renamed something to that
    /// directory's name (as the kernel reports a rename), not before, and
    /// not for a link or symlink of that name.
    #[test]
    fn a_target_only_moved_in_links_declare_falls_after_a_rename_to_their_directory() {
        let p = policy();
        let moved = crate::hashing::HashMap::from_iter([(
            b"/src/secret".to_vec(),
            vec![b"stash".to_vec()],
        )]);
        let view = spawn_view_with(crate::actions::links::LinkSources::default().with_moved(moved));
        let read = open("/src/secret", 0, 3);
        assert!(!judge(&p, &view, &read), "nothing renamed yet");
        view.note_name_made(1, b"pkg/stash", crate::events::decode::NameKind::Symlink);
        assert!(!judge(&p, &view, &read), "a link of that name is no rename");
        view.note_name_made(2, b"pkg/stash", crate::events::decode::NameKind::Rename);
        assert!(judge(&p, &view, &read));
    }

    #[test]
    fn network_only_views_ignore_files() {
        let p = policy();
        let job = Arc::new(ActionView::new(
            ActionInfo {
                id: "exec-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: None,
                mnemonic: None,
                worker: None,
            },
            None,
            false,
            None,
        ));
        assert!(!judge(&p, &job, &open("/etc/shadow", 0, 3)));
    }

    fn connect(port: u16, kernel_verdict: u32) -> Connect {
        Connect {
            origin: open("/x", 0, 0).origin,
            addr: "127.0.0.1".parse().unwrap(),
            port,
            sock_type: 1,
            protocol: 6,
            send: false,
            result: Some(0),
            netns: 1,
            kernel_verdict: Some(kernel_verdict),
            packet_socket: false,
        }
    }

    fn scoped_policy() -> Policy {
        let rule =
            |targets: &[&str], scope: Option<&str>, port| crate::policy::scoped::ScopedRuleConfig {
                targets: targets.iter().map(|s| s.to_string()).collect(),
                mnemonics: Vec::new(),
                scope: scope.map(str::to_string),
                allow: vec![crate::policy::matchers::NetRule {
                    cidr: "127.0.0.1/32".parse().unwrap(),
                    port: Some(port),
                }],
            };
        Policy {
            scoped: ScopedRules::new(&[
                rule(&["//net:fetch"], None, 8080),
                rule(&[], Some("@bazel"), 9090),
            ])
            .unwrap(),
            ..policy()
        }
    }

    /// A lineage spawn (its label joined later) or the job's own view.
    fn view(label: Option<&str>, job: bool) -> Arc<ActionView> {
        let spawn = (!job).then(|| {
            Arc::new(crate::bazel::sandbox::Spawn {
                launcher: "linux-sandbox".into(),
                execroot: PathBuf::from("/ob/execroot/ws"),
                sandbox_dir: None,
                sandbox_id: None,
                writable: Vec::new(),
                command: vec!["/bin/bash".into()],
                own_network: false,
                launched_at: None,
                launch_ktime_ns: 0,
                persistent_worker: false,
            })
        });
        Arc::new(ActionView::new(
            ActionInfo {
                id: "linux-sandbox-7".into(),
                cgroup: "/nonexistent-cgroup".into(),
                cgroup_id: 1,
                label: label.map(str::to_string),
                mnemonic: None,
                worker: None,
            },
            None,
            !job,
            spawn,
        ))
    }

    #[test]
    fn scoped_rules_allow_hold_or_leave_a_connect_to_the_kernel() {
        let p = scoped_policy();
        let process = || ProcessInfo {
            pid: 2,
            ppid: 1,
            comm: "bash".into(),
            exe: None,
        };
        let judge = |view: &Arc<ActionView>, port, kernel| {
            p.judge_connect(&connect(port, kernel), process, view)
        };
        assert!(judge(&view(Some("//net:fetch"), false), 8080, 0).is_none());
        let other = judge(&view(Some("//src:cc"), false), 8080, 0).expect("another label");
        assert!(!other.undecided);
        let unknown = judge(&view(None, false), 8080, 0).expect("held, not allowed yet");
        assert!(unknown.undecided, "the label may still allow it");
        assert!(
            !judge(&view(None, false), 8081, 0).unwrap().undecided,
            "no rule for that port"
        );
        let blocked =
            judge(&view(Some("//net:fetch"), false), 8080, SOCK_BLOCKED).expect("blocked");
        assert_eq!(
            blocked.alert.verdict,
            Verdict::Blocked,
            "the kernel had the last word"
        );
        assert!(!blocked.undecided);
        assert!(
            judge(&view(Some("@bazel"), true), 9090, 0).is_none(),
            "the server's tier"
        );
        let spawn_to_server_port = judge(&view(None, false), 9090, 0).expect("not the server");
        assert!(!spawn_to_server_port.undecided);
        assert!(judge(&view(Some("@bazel"), true), 8080, 0).is_some());
    }
}
