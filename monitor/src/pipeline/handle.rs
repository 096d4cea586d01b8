//! What happens to one decoded event, and to one update from the file-system
//! side: process facts → registry (which action) → policy (allowed?) →
//! folder. Runs on the event loop. The registry asks for slow reads (sandbox
//! trees, `/proc/<pid>/cwd`) as needs, which the loop hands to the watcher
//! side; the one read left here is `/proc/<pid>/exe`, once per process that
//! was not seen exec'ing (a single readlink, cached).
use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use std::os::unix::ffi::OsStrExt as _;

mod grants;
mod held;
mod sandboxes;
pub use held::Labels;

use crate::{
    actions::{
        registry::{ActionView, Need, Ready, Registry, is_lineage_key},
        watch::Update,
    },
    bazel::{
        isolation::Isolation,
        report::{DeclaredBy, SpawnBook},
        sandbox::{Spawn, made_links::MadeLinks},
    },
    events::{
        decode::{CgroupChange, Event, Origin},
        processes::ProcessTable,
    },
    output::{
        alert::{Alert, ProcessInfo},
        fold::Folder,
        metrics::Metrics,
        summary::RunSummary,
    },
    policy::{cache_risk::CacheRisks, judge::Policy},
};

/// An event with the process facts resolved at the time it was handled.
pub struct Observed {
    pub event: Event,
    pub exe: Option<Arc<str>>,
}

impl Observed {
    /// The alert's process object (built only for violations).
    fn process(&self) -> ProcessInfo {
        let o = self.event.origin();
        ProcessInfo {
            pid: o.pid,
            ppid: o.ppid,
            comm: o.comm_str(),
            exe: self.exe.as_deref().map(str::to_owned),
        }
    }
}

/// The `kind` labels of `events_total`, in `Event::metric_index` order.
pub const EVENT_KINDS: [&str; 7] = [
    "file", "net", "exec", "exit", "launch", "io_uring", "cgroup",
];

pub struct Handler {
    pub registry: Registry<Observed>,
    pub policy: Policy,
    pub processes: ProcessTable,
    pub folder: Folder,
    pub summary: RunSummary,
    pub metrics: Arc<Metrics>,
    /// The cgroup2 mount, to make kernel cgroup paths absolute.
    cgroup_root: PathBuf,
    /// An execution log will be read at the end (`monitor exec` of Bazel):
    /// keep the command lines of spawns that raised alerts.
    pub keep_spawn_commands: bool,
    /// Slow reads the registry asked for, taken by the loop.
    pub needs: Vec<Need>,
    /// Every launcher spawn seen (kept with `keep_spawn_commands`): the
    /// report's `bazel` section.
    pub spawns: SpawnBook,
    /// `bazel.require_isolation`: weaker spawns are violations.
    pub require_isolation: Isolation,
    /// Reused buffer of events ready to judge (the per-event hot path).
    ready: Ready<Observed>,
    /// `events_total` by kind, resolved once (the per-event hot path).
    event_counters: [prometheus::IntCounter; EVENT_KINDS.len()],
    /// Where worker runners write their per-action records.
    pub worker_records_dir: PathBuf,
    /// Violations of worker actions, for the verdict when they end.
    cache_risks: CacheRisks,
    /// Hook connects waiting for their syscall result.
    net_join: crate::events::netjoin::ResultJoin,
    /// Opens the kernel counted instead of reporting.
    pub repeats: crate::pipeline::repeats::RepeatTracker,
    /// Connects a target-scoped rule may allow once the spawn's label is
    /// joined (see `held`).
    held: Vec<crate::policy::judge::Violation>,
    /// The cap on `held` was reached (warned once).
    held_overflowed: bool,
    /// Declared network grants for the kernel's action tier.
    pub grants: grants::KernelGrants,
    /// Sandboxes whose failed probes the kernel counts.
    pub sandboxes: sandboxes::KernelSandboxes,
    /// The links Bazel made in its sandboxes, for their reads.
    pub made_links: Arc<MadeLinks>,
}

impl Handler {
    pub fn new(
        registry: Registry<Observed>,
        policy: Policy,
        metrics: Arc<Metrics>,
        cgroup_root: PathBuf,
        keep_alerts: bool,
    ) -> Self {
        let event_counters =
            EVENT_KINDS.map(|kind| metrics.events_total.with_label_values(&[kind]));
        Handler {
            registry,
            policy,
            processes: ProcessTable::default(),
            folder: Folder::default(),
            summary: RunSummary::new(keep_alerts),
            metrics,
            cgroup_root,
            keep_spawn_commands: false,
            needs: Vec::new(),
            spawns: SpawnBook::default(),
            require_isolation: Isolation::None,
            ready: Vec::new(),
            event_counters,
            worker_records_dir: PathBuf::from("/run/monitor/reapi"),
            cache_risks: CacheRisks::default(),
            net_join: Default::default(),
            repeats: Default::default(),
            held: Vec::new(),
            held_overflowed: false,
            grants: Default::default(),
            sandboxes: Default::default(),
            made_links: Default::default(),
        }
    }

    pub fn event(&mut self, event: Event, now: Instant) {
        // One report per connect: the hook's waits for its syscall result.
        let Some(event) = self.net_join.offer(event, now) else {
            return;
        };
        if let Some(released) = self.net_join.take_released() {
            for early in released {
                self.dispatch(early, now);
            }
        }
        self.dispatch(event, now);
    }

    fn dispatch(&mut self, mut event: Event, now: Instant) {
        let weight = match &event {
            Event::Repeats(r) => {
                self.metrics.repeats_total.inc_by(r.count);
                r.count
            }
            _ => 1,
        };
        self.event_counters[event.metric_index()].inc_by(weight);
        let pid = event.origin().pid;
        if let Event::UnixConnect(u) = &mut event {
            // Now, while the listener still runs (it may be gone by the
            // time the event is judged).
            u.peer_in_action = u.peer_tgid != 0
                && self.processes.action_of(u.peer_tgid) == Some(u.origin.action_cgroup_id);
        }
        match event {
            Event::Exec(exec) => {
                self.processes.exec(pid, exec.exe.as_deref());
                self.processes
                    .note_action(pid, exec.origin.action_cgroup_id);
                // The program file is an input: judged like an open.
                if exec.exe.is_some() {
                    self.route(Event::Exec(exec), now);
                }
            }
            // Merged by `net_join`; one left over has nothing to add.
            Event::ConnectResult(_) => {}
            Event::Exit(origin) => {
                for repeats in self.repeats.process_ended(pid, &origin) {
                    self.dispatch(Event::Repeats(repeats), now);
                }
                self.processes.exit(pid);
                self.made_links.forget_maker(pid);
                self.registry.exit(&origin, now);
            }
            Event::IoUring(o) => {
                if self.processes.note_io_uring(pid) {
                    self.summary.io_uring_processes += 1;
                    log::warn!(
                        "process {pid} ({}) of monitored cgroup {} set up an io_uring: its ring opens are judged, but ring renames, links, unlinks and mkdirs are not seen",
                        o.comm_str(),
                        o.action_cgroup_id
                    );
                }
            }
            Event::Launch(launch) => {
                let need = self.registry.launch(launch);
                self.needs.push(need);
            }
            Event::SymlinkMade(link) => {
                self.made_links
                    .note(link.origin.pid, link.name, link.target)
            }
            Event::Cgroup(change) => self.cgroup(change, now),
            // Names for the egress inventory; nothing to judge.
            Event::DnsAnswer(answer) => self
                .summary
                .inventory
                .names
                .answer(&answer.payload, answer.cut),
            Event::WorkerLaunch(launch) => {
                let need = self
                    .registry
                    .worker_launch(launch, &self.worker_records_dir);
                self.needs.push(need);
            }
            Event::WorkerExit { origin, status } => self.worker_exit(&origin, status, now),
            Event::File(f) => {
                if let Some(key) = f.tracked {
                    self.repeats.first_seen(&f.origin, key);
                }
                self.route(Event::File(f), now)
            }
            event @ (Event::Connect(_)
            | Event::UnixConnect(_)
            | Event::LinkMade(_)
            | Event::Repeats(_)) => self.route(event, now),
        }
    }

    /// A worker action's root ended: its verdict follows once its events
    /// are judged.
    fn worker_exit(&mut self, origin: &Origin, status: i32, now: Instant) {
        let (pid, ppid) = (origin.pid, origin.ppid);
        let process = ProcessInfo {
            pid,
            ppid,
            comm: origin.comm_str(),
            exe: self.processes.exe(pid, ppid).as_deref().map(str::to_owned),
        };
        self.cache_risks.ended(pid, status, process, now);
    }

    /// Hands an event to its action (held until the action is known).
    fn route(&mut self, event: Event, now: Instant) {
        let (pid, ppid) = (event.origin().pid, event.origin().ppid);
        let exe = self.processes.exe(pid, ppid);
        let origin = *event.origin();
        let mut ready = std::mem::take(&mut self.ready);
        self.registry.route(
            &origin,
            Observed { event, exe },
            now,
            &mut ready,
            &mut self.needs,
        );
        self.judge_all(ready.drain(..));
        self.ready = ready;
    }

    fn cgroup(&mut self, change: CgroupChange, now: Instant) {
        if change.created {
            let relative = std::ffi::OsStr::from_bytes(&change.path);
            let path = self.cgroup_root.join(
                std::path::Path::new(relative)
                    .strip_prefix("/")
                    .unwrap_or(relative.as_ref()),
            );
            self.registry.cgroup_created(change.cgroup_id, path, now);
        } else {
            self.revoke_removed(change.cgroup_id);
            self.registry.cgroup_removed(change.cgroup_id, now);
        }
    }

    /// An answer from the file-system side.
    pub fn update(&mut self, update: Update, now: Instant) {
        let ready = match update {
            Update::Cgroups { found, started } => {
                self.registry.cgroups_scanned(found, started.min(now));
                return;
            }
            Update::DeclarationSet(declaration) => {
                self.grant_declared(&declaration);
                self.registry.declaration_set(declaration)
            }
            Update::DeclarationRemoved(cgroup) => {
                self.revoke_declared(&cgroup);
                self.registry.declaration_removed(&cgroup);
                return;
            }
            Update::WorkerRead {
                key,
                found,
                identity,
            } => {
                let mnemonic = found.1.mnemonic.as_deref().unwrap_or("unknown");
                self.metrics
                    .worker_actions_total
                    .with_label_values(&[mnemonic])
                    .inc();
                self.registry.worker_read(key, *found, identity)
            }
            Update::SpawnRead { key, found } => {
                let sandboxed = found.as_ref().is_some_and(|b| b.0.sandbox_dir.is_some());
                if sandboxed && is_lineage_key(key) {
                    self.summary.sandboxed_launches += 1;
                }
                let spawn = found.as_ref().map(|b| b.0.clone());
                let ready = self.registry.spawn_read(key, found.map(|b| *b));
                if let Some(spawn) = &spawn {
                    self.register_sandbox(key, spawn);
                }
                if let Some(spawn) = spawn.filter(|_| is_lineage_key(key)) {
                    self.spawn_started(key, spawn);
                }
                ready
            }
        };
        self.judge_all(ready);
    }

    /// A launcher's spawn was read: noted for the report; judged on its
    /// isolation once its action is fixed (now, or when a deferred
    /// unsandboxed spawn is declared from the execution log).
    fn spawn_started(&mut self, key: u64, spawn: Spawn) {
        let id = crate::actions::registry::action_id(key, None, Some(&spawn));
        let sandboxed = spawn.sandbox_dir.is_some();
        // A persistent worker is no spawn: its requests are (pipeline::workers).
        if self.keep_spawn_commands && !spawn.persistent_worker {
            self.spawns.launched(key, id, spawn);
        }
        if let Some(view) = self.registry.view(key) {
            let by = match (&view.declaration, sandboxed) {
                (None, _) => DeclaredBy::None,
                (Some(_), true) => DeclaredBy::SandboxTree,
                (Some(_), false) => DeclaredBy::WorkingTree,
            };
            self.spawn_resolved(key, by);
        }
    }

    /// A spawn's action is fixed, declared by `by`: recorded, and its
    /// isolation judged.
    pub fn spawn_resolved(&mut self, key: u64, by: DeclaredBy) {
        self.spawns.declared(key, by, self.registry.dropped(key));
        let Some(view) = self.registry.view(key) else {
            return;
        };
        let Some(spawn) = view.spawn.clone() else {
            return;
        };
        let process = ProcessInfo {
            pid: (key & !(1 << 63)) as u32,
            ppid: 0,
            comm: spawn.launcher.clone(),
            exe: None,
        };
        let ran = Isolation::of(&spawn);
        if let Some(v) =
            crate::policy::isolation::judge_isolation(self.require_isolation, ran, &view, process)
        {
            self.violation(v, &view);
        }
    }

    /// Periodic work: held events whose wait is over.
    pub fn tick(&mut self, now: Instant) {
        for event in self.net_join.expired(now) {
            self.dispatch(event, now);
        }
        let ready = self.registry.tick(now);
        self.judge_all(ready);
        self.cache_verdicts(now, false);
        self.sweep_sandboxes();
        self.repeats.free_taken();
    }

    /// `cache_risk` alerts for worker actions that ended (after their last
    /// events were judged, so they follow the alerts they refer to).
    fn cache_verdicts(&mut self, now: Instant, all: bool) {
        let registry = &self.registry;
        for alert in self
            .cache_risks
            .ready(now, all, |pid| registry.is_settled(pid))
        {
            let mnemonic = alert.action.mnemonic.as_deref().unwrap_or("unknown");
            self.metrics
                .cache_risks_total
                .with_label_values(&[mnemonic])
                .inc();
            self.folder.push(alert);
        }
    }

    /// Judges events the registry released outside the event path.
    pub fn judge_ready(&mut self, ready: Ready<Observed>) {
        self.judge_all(ready);
    }

    /// When the process ends next, with every verdict written: leaves the
    /// actions' declarations, identities and held events to the kernel to
    /// take back at exit instead of freeing them one by one (46 ms of the
    /// daemon's 1.7 s on the bench's build, `profile-build --perf`). The
    /// registry holds no file, thread or sink: nothing is lost.
    pub fn forget_actions(&mut self) {
        let empty = Registry::new(Vec::new(), Duration::ZERO, self.metrics.clone());
        std::mem::forget(std::mem::replace(&mut self.registry, empty));
    }

    /// At shutdown: judge everything still held.
    pub fn release_all(&mut self) {
        let now = Instant::now();
        for event in self.net_join.take_all() {
            self.dispatch(event, now);
        }
        for repeats in self.repeats.take_all() {
            self.dispatch(Event::Repeats(repeats), now);
        }
        let ready = self.registry.release_all();
        self.judge_all(ready);
        self.cache_verdicts(Instant::now(), true);
    }

    fn judge_all(&mut self, ready: impl IntoIterator<Item = (Observed, Arc<ActionView>)>) {
        for (observed, action) in ready {
            let violation = match &observed.event {
                Event::File(f) => {
                    let v = self.policy.judge_file(f, || observed.process(), &action);
                    if let Some(key) = f.tracked {
                        let first = v.as_ref().map(|v| (v.target.clone(), v.alert.clone()));
                        self.repeats.judged(key, first);
                    }
                    v
                }
                Event::Repeats(r) => {
                    self.repeats
                        .violation_of(&r.key)
                        .map(|(target, mut alert)| {
                            alert.count = r.count;
                            alert.time = r.origin.time;
                            crate::policy::judge::Violation {
                                target,
                                alert,
                                undecided: false,
                            }
                        })
                }
                Event::Connect(c) => self.policy.judge_connect(c, || observed.process(), &action),
                Event::Exec(e) => self.policy.judge_exec(e, || observed.process(), &action),
                Event::UnixConnect(u) => self.policy.judge_unix(u, || observed.process(), &action),
                // In event order: before any open through the planted name.
                Event::LinkMade(l) => {
                    action.note_name_made(l.origin.ktime_ns, &l.name, l.kind());
                    None
                }
                _ => None,
            };
            let hold = violation.as_ref().is_some_and(|v| self.should_hold(v));
            if self.summary.keep_alerts && !hold {
                self.take_inventory(&observed, &action, violation.as_ref());
            }
            if self.keep_spawn_commands
                && action.spawn.is_some()
                && let Event::File(f) = &observed.event
            {
                self.spawns.opened(&action.info.id, &f.path);
                if wrote_name(f) {
                    self.spawns.wrote(&action.info.id, &f.path);
                }
            }
            let Some(v) = violation else { continue };
            if hold {
                self.hold(v, &action);
            } else {
                self.violation(v, &action);
            }
        }
    }

    /// Counts, remembers and folds one violation of `action`.
    /// (An open the kernel counted as repeats is one violation per open.)
    fn violation(&mut self, v: crate::policy::judge::Violation, action: &ActionView) {
        self.keep_spawn_command(action);
        self.count_violation(v);
    }

    pub fn count_violation(&mut self, v: crate::policy::judge::Violation) {
        self.summary.violations += v.alert.count;
        self.cache_risks
            .note(&v.alert.action, v.alert.kind, violation_target(&v.alert));
        let mnemonic = v.alert.action.mnemonic.as_deref().unwrap_or("unknown");
        self.metrics
            .violations_total
            .with_label_values(&[v.alert.kind.as_str(), mnemonic])
            .inc_by(v.alert.count);
        self.folder.add(v.target, v.alert);
    }
}

/// A successful open that wrote its file, or a name the event made
/// (`rename`'s new name, `link`, `symlink`, `mkdir`, `mknod`, `bind`): what joins a spawn
/// to the output it produced.
fn wrote_name(f: &crate::events::decode::FileOpen) -> bool {
    f.result >= 0
        && match f.op {
            "open" => crate::policy::access::classify(f).writes,
            "rename" | "link" | "symlink" | "mkdir" | "mknod" | "bind" => true,
            _ => false,
        }
}

/// What a violation touched, as a `cache_risk` alert lists it.
fn violation_target(alert: &Alert) -> String {
    match (&alert.file, &alert.net) {
        (Some(f), _) => crate::events::paths::escape_for_display(&f.path),
        (None, Some(n)) => match &n.unix_path {
            Some(path) => path.clone(),
            None => std::net::SocketAddr::new(n.addr, n.port).to_string(),
        },
        (None, None) => String::new(),
    }
}

impl Handler {
    /// Kept when an execution log will label the spawn later.
    fn keep_spawn_command(&mut self, action: &ActionView) {
        if self.keep_spawn_commands
            && let Some(spawn) = &action.spawn
            && !self.summary.spawn_commands.contains_key(&action.info.id)
        {
            self.summary
                .spawn_commands
                .insert(action.info.id.clone(), spawn.command.clone());
        }
    }

    /// A network event into the egress inventory (not the action's own
    /// internal traffic).
    fn take_inventory(
        &mut self,
        observed: &Observed,
        action: &ActionView,
        violation: Option<&crate::policy::judge::Violation>,
    ) {
        let Some((proto, destination)) = crate::policy::judge::egress_destination(&observed.event)
        else {
            return;
        };
        let verdict = violation.map_or("allowed", |v| v.alert.verdict.as_str());
        let comm = observed.event.origin().comm_str();
        let info = &action.info;
        let target = inventory_target(info);
        self.summary
            .inventory
            .record(crate::output::inventory::Seen {
                proto,
                destination,
                verdict,
                action_id: &info.id,
                target,
                process: &comm,
            });
        self.keep_spawn_command(action);
        self.note_server_connect(observed, action, proto, verdict);
    }

    /// A TCP connect of the Bazel job outside every spawn, kept to join
    /// with the repository fetches (`bazel::fetches`).
    fn note_server_connect(
        &mut self,
        observed: &Observed,
        action: &ActionView,
        proto: &'static str,
        verdict: &'static str,
    ) {
        let Event::Connect(c) = &observed.event else {
            return;
        };
        let label = action.info.label.as_deref();
        let server = action.spawn.is_none() && label == Some("@bazel");
        let unlabelled_spawn = action.spawn.is_some() && label.is_none();
        if proto != "tcp" || !(server || unlabelled_spawn) {
            return;
        }
        self.summary
            .server_connects
            .record(crate::bazel::fetches::ServerConnect {
                command: action.spawn.as_ref().map(|s| s.command.clone()),
                action: action.info.clone(),
                pid: c.origin.pid,
                ppid: c.origin.ppid,
                comm: c.origin.comm_str(),
                exe: observed.exe.as_deref().map(str::to_owned),
                proto,
                addr: c.addr,
                port: c.port,
                result: c.result,
                netns: Some(c.netns),
                verdict,
                count: 1,
            });
    }
}

/// How the egress inventory names who connected.
fn inventory_target(info: &crate::actions::registry::ActionInfo) -> String {
    match (&info.label, &info.mnemonic) {
        (Some(l), Some(m)) => format!("{l} ({m})"),
        (Some(l), None) => l.clone(),
        (None, Some(m)) => format!("{} ({m})", info.id),
        (None, None) => info.id.clone(),
    }
}

/// How often the loop does its periodic work (held-event deadlines, loss
/// counters).
pub const TICK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::decode::FileOpen;

    /// What joins a spawn to the output it produced: every way to make a
    /// file at a name, `mknod` included (an empty output made without an
    /// open would otherwise leave only another target's output written,
    /// and that target's label to borrow); reads and failures are none.
    #[test]
    fn names_written_are_opens_for_writing_and_names_made() {
        let op = |op: &'static str, flags: u64, result: i64| {
            let mut ev = FileOpen::sample("/ws/bazel-out/bin/a.out", flags, result);
            ev.op = op;
            ev
        };
        for made in ["rename", "link", "symlink", "mkdir", "mknod", "bind"] {
            assert!(wrote_name(&op(made, libc::O_WRONLY as u64, 0)), "{made}");
            assert!(
                !wrote_name(&op(made, libc::O_WRONLY as u64, -13)),
                "{made} failed"
            );
        }
        assert!(wrote_name(&op("open", libc::O_WRONLY as u64, 3)));
        assert!(!wrote_name(&op("open", libc::O_RDONLY as u64, 3)));
        for other in [
            "unlink",
            "rmdir",
            "rename_from",
            "truncate",
            "chmod",
            "chown",
            "utimes",
            "setxattr",
            "removexattr",
            "exec",
        ] {
            assert!(!wrote_name(&op(other, libc::O_WRONLY as u64, 0)), "{other}");
        }
    }
}
