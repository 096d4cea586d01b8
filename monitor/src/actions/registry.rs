//! The action registry: which action an event belongs to, and what that
//! action declared. Pure state: it never touches the file system or `/proc`.
//! What it needs read (a sandbox tree, a process's working directory) it asks
//! for as a [`Need`]; the answers, cgroup changes and declaration files come
//! back as calls, so its hold/release logic is unit-tested below.
//!
//! The kernel tags every event with its scope, the cgroup ancestors below
//! that scope and its sandbox launcher (if any), so the registry never races
//! with cgroup or process creation; it only puts names and declarations to
//! them. An action is one of:
//!
//! * a **lineage spawn**: the process tree of a sandbox launcher
//!   (`linux-sandbox`, `process-wrapper`); declared = its sandbox;
//! * a **Bazel 7+ spawn cgroup**: `blaze_<pid>_spawns.slice/sandbox_<id>.scope`
//!   below a scope; declared = the sandbox its processes run in, or a
//!   declaration file;
//! * a **child cgroup of a configured parent**; declared = its declaration file;
//! * a **job** (`monitor exec`'s command tree), judged on the network only.
//!
//! Events of an action whose declaration has not arrived yet are held (up to
//! `declaration_wait`, or until a pending read answers) rather than judged
//! against nothing.
use std::{
    collections::hash_map::Entry,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    actions::declarations::Declaration,
    bazel::{sandbox::Spawn, spawns::is_spawn_slice_name},
    events::decode::{Launch, NameKind, Origin},
    hashing::{HashMap, HashSet},
    output::metrics::Metrics,
};

/// How a monitored cgroup relates to actions.
#[derive(Clone, Debug)]
pub enum ScopeKind {
    /// Every child cgroup is one action, judged on files and network.
    Parent,
    /// The cgroup itself is one job, judged against the network policy only
    /// (`monitor exec`'s command tree); spawns inside it are actions.
    Job {
        id: String,
        label: Option<String>,
        mnemonic: Option<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Scope {
    pub path: PathBuf,
    pub id: u64,
    pub level: u32,
    pub kind: ScopeKind,
}

/// Which build action an event belongs to, as alerts name it.
#[derive(Clone, Debug)]
pub struct ActionInfo {
    pub id: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    /// Bazel target label, when a declaration or the execution log named it.
    pub label: Option<String>,
    pub mnemonic: Option<String>,
    /// A remote-execution worker action: its REAPI identity.
    pub worker: Option<Arc<WorkerIdentity>>,
}

/// Who a remote-execution worker action is (from its runner's record).
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerIdentity {
    /// The action's root process (forked by the runner).
    pub root_pid: u32,
    /// REAPI action digest, `<sha256>/<size>`.
    pub digest: String,
    /// Bazel's `tool_invocation_id` (RequestMetadata), when known.
    pub invocation_id: Option<String>,
}

/// What judging an event needs to know about its action.
#[derive(Debug)]
pub struct ActionView {
    pub info: ActionInfo,
    pub declaration: Option<Arc<Declaration>>,
    /// File opens are judged (not for network-only jobs).
    pub judge_files: bool,
    /// The sandboxed spawn behind the action, when it is one.
    pub spawn: Option<Arc<Spawn>>,
    /// Files the action created in its writable directories (it may read
    /// those back); lives and dies with the action.
    pub created: std::sync::Mutex<HashSet<Vec<u8>>>,
    /// The first names (symlink, link, rename) the action made, in order.
    pub names_made: std::sync::Mutex<Vec<crate::actions::links::NameMade>>,
    /// The file names of its first renames (empty: any, past the cap).
    pub renamed_to: std::sync::Mutex<Vec<Vec<u8>>>,
    /// The file names of its first hard links (empty: any, past the cap).
    pub hard_linked: std::sync::Mutex<Vec<Vec<u8>>>,
}

/// The file name to remember as the `len + 1`th name an action made: past
/// the cap, one empty name (it may be any), then none.
fn kept_name(len: usize, name: &[u8]) -> Option<Vec<u8>> {
    use crate::actions::links::{MAX_NAMES_PER_ACTION, file_name};
    match len + 1 {
        n if n < MAX_NAMES_PER_ACTION => Some(file_name(name).to_vec()),
        n if n == MAX_NAMES_PER_ACTION => Some(Vec::new()),
        _ => None,
    }
}

impl ActionView {
    /// A view with nothing made yet by the action.
    pub fn new(
        info: ActionInfo,
        declaration: Option<Arc<Declaration>>,
        judge_files: bool,
        spawn: Option<Arc<Spawn>>,
    ) -> ActionView {
        ActionView {
            info,
            declaration,
            judge_files,
            spawn,
            created: Default::default(),
            names_made: Default::default(),
            renamed_to: Default::default(),
            hard_linked: Default::default(),
        }
    }

    /// The action made a name (symlink, link, rename) at `ktime_ns`.
    pub fn note_name_made(&self, ktime_ns: u64, name: &[u8], kind: NameKind) {
        let mut names = self.names_made.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = kept_name(names.len(), name) {
            names.push((ktime_ns, kept));
        }
        let by_kind = match kind {
            NameKind::Rename => &self.renamed_to,
            NameKind::HardLink => &self.hard_linked,
            NameKind::Symlink => return,
        };
        let mut list = by_kind.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = kept_name(list.len(), name) {
            list.push(kept);
        }
    }

    /// Did the action make a hard link of this file name?
    pub fn made_hard_link(&self, file_name: &[u8]) -> bool {
        let links = self.hard_linked.lock().unwrap_or_else(|e| e.into_inner());
        links.iter().any(|n| n.is_empty() || n == file_name)
    }

    /// Is `path` declared by `declaration` only through sandbox entries
    /// this action may have planted?
    pub fn only_planted(&self, declaration: &Declaration, path: &[u8]) -> bool {
        let names = self.names_made.lock().unwrap_or_else(|e| e.into_inner());
        let renamed = self.renamed_to.lock().unwrap_or_else(|e| e.into_inner());
        declaration.links.only_planted(path, &names)
            || declaration.links.only_moved_in(path, &renamed)
    }
}

/// Slow work the registry needs done off the event path; the answer comes
/// back through [`Registry::spawn_read`].
#[derive(Debug)]
pub enum Need {
    /// Read the sandbox a launcher describes (argv, cwd, sandbox tree).
    LaunchSpawn {
        key: u64,
        cgroup: PathBuf,
        launch: Box<Launch>,
    },
    /// Find the Bazel sandbox a process of this cgroup works in.
    ScopeSpawn { key: u64, cgroup: PathBuf, pid: u32 },
    /// Read a worker action's input root and its runner's record.
    WorkerSpawn {
        key: u64,
        launch: Box<Launch>,
        records_dir: PathBuf,
    },
}

/// Registry keys of lineage actions: this bit plus the launcher's tgid
/// (cgroup ids never have it set); the kernel keys sandboxes the same way.
use monitor_common::LINEAGE_KEY;

/// Is this registry key a lineage (sandbox launcher) action?
pub fn is_lineage_key(key: u64) -> bool {
    key & LINEAGE_KEY != 0
}
/// Held events per action before the action is judged without its
/// declaration anyway (bounds memory when a declaration never comes).
pub const MAX_HELD_PER_ACTION: usize = 65_536;
/// Files an action created in its writable directories that are remembered
/// (so that reading them back is not an alert); bounds its memory.
pub const MAX_CREATED_PER_ACTION: usize = 65_536;
/// How long an ended action is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(60);

struct ActionState<T> {
    scope: usize,
    view: Option<Arc<ActionView>>,
    held: Vec<T>,
    deadline: Option<Instant>,
    gone_since: Option<Instant>,
    /// A [`Need`] was issued and not answered yet: hold without a deadline.
    reading: bool,
    /// A sandbox lookup was already asked for (at most once per action).
    looked_up: bool,
    /// Counted in `actions_total` (a launch is counted when it starts).
    counted: bool,
    /// A lineage action's cgroup (its launcher's) and that cgroup's id.
    lineage_cgroup: Option<(u64, PathBuf)>,
    /// A remote-execution worker action's identity.
    worker: Option<Arc<WorkerIdentity>>,
    /// An unsandboxed spawn waiting for the execution log to declare it
    /// (see [`Registry::defer_unsandboxed`]).
    deferred: Option<Spawn>,
    /// Events of a deferred spawn dropped beyond [`MAX_HELD_PER_ACTION`].
    dropped: u64,
}

impl<T> ActionState<T> {
    fn new(scope: usize) -> Self {
        ActionState {
            scope,
            view: None,
            held: Vec::new(),
            deadline: None,
            gone_since: None,
            reading: false,
            looked_up: false,
            counted: false,
            lineage_cgroup: None,
            worker: None,
            deferred: None,
            dropped: 0,
        }
    }
}

/// A cgroup below a scope, and when the registry learnt of it.
struct KnownCgroup {
    path: PathBuf,
    since: Instant,
}

pub struct Registry<T> {
    scopes: Vec<Scope>,
    cgroups: HashMap<u64, KnownCgroup>,
    ids_by_path: HashMap<PathBuf, u64>,
    /// Bazel's per-server `blaze_<pid>_spawns.slice` cgroups.
    spawn_slices: HashSet<u64>,
    declarations: HashMap<PathBuf, Arc<Declaration>>,
    actions: HashMap<u64, ActionState<T>>,
    wait: Duration,
    metrics: Arc<Metrics>,
    /// Hold the events of spawns without a sandbox tree (working in the main
    /// execroot) until [`Registry::declare_deferred`]: `monitor exec` declares
    /// them from Bazel's execution log when the build has ended.
    pub defer_unsandboxed: bool,
}

/// Events ready to judge, each with its action.
pub type Ready<T> = Vec<(T, Arc<ActionView>)>;

impl<T> Registry<T> {
    pub fn new(scopes: Vec<Scope>, wait: Duration, metrics: Arc<Metrics>) -> Self {
        Registry {
            scopes,
            cgroups: HashMap::default(),
            ids_by_path: HashMap::default(),
            spawn_slices: HashSet::default(),
            declarations: HashMap::default(),
            actions: HashMap::default(),
            wait,
            metrics,
            defer_unsandboxed: false,
        }
    }

    /// A reloaded `declaration_wait_ms` (for events held from now on).
    pub fn set_wait(&mut self, wait: Duration) {
        self.wait = wait;
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// A cgroup below a scope exists (kernel event or scan).
    pub fn cgroup_created(&mut self, id: u64, path: PathBuf, now: Instant) {
        if is_spawn_slice_name(&path) {
            self.spawn_slices.insert(id);
        }
        if let Some(state) = self.actions.get_mut(&id) {
            state.gone_since = None;
        }
        self.ids_by_path.insert(path.clone(), id);
        self.cgroups
            .entry(id)
            .or_insert(KnownCgroup { path, since: now });
    }

    /// A cgroup below a scope was removed: its action has ended.
    pub fn cgroup_removed(&mut self, id: u64, now: Instant) {
        let is_job = self.is_job(id);
        if let Some(state) = self.actions.get_mut(&id) {
            if state.gone_since.is_none() && state.counted && !is_job {
                self.metrics.fleet.actions_finished_total.inc();
            }
            state.gone_since.get_or_insert(now);
        } else {
            self.forget_cgroup(id);
        }
    }

    /// A full scan of the scopes' trees that started at `started` (the
    /// safety net behind the kernel's cgroup events): unknown cgroups are
    /// added; known ones learnt before the scan and absent from it are gone.
    pub fn cgroups_scanned(&mut self, found: Vec<(u64, PathBuf)>, started: Instant) {
        let present: HashSet<u64> = found.iter().map(|(id, _)| *id).collect();
        for (id, path) in found {
            self.cgroup_created(id, path, started);
        }
        let gone: Vec<u64> = self
            .cgroups
            .iter()
            .filter(|(id, c)| c.since < started && !present.contains(id))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.cgroup_removed(id, started);
        }
    }

    fn forget_cgroup(&mut self, id: u64) {
        if let Some(known) = self.cgroups.remove(&id) {
            self.ids_by_path.remove(&known.path);
        }
        self.spawn_slices.remove(&id);
    }

    /// A declaration file was read (new or changed). Returns the held events
    /// of its action, now ready.
    pub fn declaration_set(&mut self, declaration: Arc<Declaration>) -> Ready<T> {
        let path = declaration.cgroup.clone();
        self.declarations.insert(path.clone(), declaration.clone());
        let Some(&key) = self.ids_by_path.get(&path) else {
            return Vec::new();
        };
        let Some(state) = self.actions.get(&key) else {
            return Vec::new();
        };
        let already = state.view.as_ref().is_some_and(|v| v.declaration.is_some());
        if key & LINEAGE_KEY != 0 || already || self.is_job(key) {
            return Vec::new();
        }
        self.resolve(key, Some(path), Some(declaration), None);
        self.take_released(key)
    }

    /// A declaration file was removed.
    pub fn declaration_removed(&mut self, cgroup: &Path) {
        self.declarations.remove(cgroup);
    }

    /// A sandbox launcher started: its process tree is a new action. Its
    /// events are held until its sandbox has been read (the returned need).
    pub fn launch(&mut self, launch: Launch) -> Need {
        let o = launch.origin;
        let key = LINEAGE_KEY | o.pid as u64;
        let cgroup = self
            .cgroups
            .get(&o.action_cgroup_id)
            .map(|c| c.path.clone())
            .or_else(|| self.scopes.get(o.scope as usize).map(|s| s.path.clone()))
            .unwrap_or_default();
        let mut state = ActionState::new(o.scope as usize);
        state.reading = true;
        state.looked_up = true;
        state.counted = true;
        state.lineage_cgroup = Some((o.action_cgroup_id, cgroup.clone()));
        self.actions.insert(key, state);
        self.metrics
            .actions_total
            .with_label_values(&["unknown"])
            .inc();
        self.metrics.fleet.actions_started_total.inc();
        Need::LaunchSpawn {
            key,
            cgroup,
            launch: Box::new(launch),
        }
    }

    /// A worker runner's child started its command: a remote-execution
    /// action (possibly outside every monitored cgroup), held until its
    /// input root and record are read (the returned need).
    pub fn worker_launch(&mut self, launch: Launch, records_dir: &Path) -> Need {
        let o = launch.origin;
        let key = LINEAGE_KEY | o.pid as u64;
        let cgroup = self
            .cgroups
            .get(&o.action_cgroup_id)
            .map(|c| c.path.clone())
            .unwrap_or_default();
        let mut state = ActionState::new(o.scope as usize);
        state.reading = true;
        state.looked_up = true;
        state.lineage_cgroup = Some((o.action_cgroup_id, cgroup));
        // Events of the forked child before its exec may have created it.
        if let Some(old) = self.actions.insert(key, state) {
            self.actions.get_mut(&key).expect("inserted").held = old.held;
        }
        Need::WorkerSpawn {
            key,
            launch: Box::new(launch),
            records_dir: records_dir.to_path_buf(),
        }
    }

    /// The answer to a [`Need::WorkerSpawn`].
    pub fn worker_read(
        &mut self,
        key: u64,
        found: (Spawn, Declaration),
        identity: Option<WorkerIdentity>,
    ) -> Ready<T> {
        if let Some(state) = self.actions.get_mut(&key) {
            state.worker = identity.map(Arc::new);
        }
        self.spawn_read(key, Some(found))
    }

    /// Have all events of the worker action rooted at `root_pid` been
    /// judged (nothing held, nothing being read)?
    pub fn is_settled(&self, root_pid: u32) -> bool {
        self.actions
            .get(&(LINEAGE_KEY | root_pid as u64))
            .is_none_or(|s| s.view.is_some() && s.held.is_empty() && !s.reading)
    }

    /// The answer to a [`Need`]: the spawn and what it declared (or nothing
    /// found). Returns the action's held events, now ready.
    pub fn spawn_read(&mut self, key: u64, found: Option<(Spawn, Declaration)>) -> Ready<T> {
        let Some(state) = self.actions.get_mut(&key) else {
            return Vec::new();
        };
        state.reading = false;
        if state.view.as_ref().is_some_and(|v| v.declaration.is_some()) {
            return Vec::new();
        }
        let path = self.cgroup_path(key);
        match found {
            Some((spawn, _))
                if self.defer_unsandboxed
                    && key & LINEAGE_KEY != 0
                    && crate::bazel::unsandboxed::is_unsandboxed(&spawn) =>
            {
                self.actions.get_mut(&key).expect("checked above").deferred = Some(spawn);
            }
            Some((spawn, declaration)) => {
                self.resolve(key, path, Some(Arc::new(declaration)), Some(spawn));
            }
            // A launcher whose sandbox could not be read is still an action:
            // judged against the host policy only.
            None if key & LINEAGE_KEY != 0 => self.resolve(key, path, None, None),
            None => {}
        }
        self.take_released(key)
    }

    /// Whether the action `key` has ended (its launcher exited, its cgroup
    /// went) or is not known (any more).
    pub fn has_ended(&self, key: u64) -> bool {
        self.actions
            .get(&key)
            .is_none_or(|s| s.gone_since.is_some())
    }

    /// A process ended; a launcher's end ends its lineage action.
    pub fn exit(&mut self, o: &Origin, now: Instant) {
        if o.launcher == o.pid
            && let Some(state) = self.actions.get_mut(&(LINEAGE_KEY | o.pid as u64))
        {
            if state.gone_since.is_none() {
                self.metrics.fleet.actions_finished_total.inc();
            }
            state.gone_since = Some(now);
        }
    }

    /// Which action an event belongs to.
    fn key_of(&self, o: &Origin) -> u64 {
        if o.launcher != 0 {
            return LINEAGE_KEY | o.launcher as u64;
        }
        if o.grandchild_cgroup_id != 0 && self.spawn_slices.contains(&o.child_cgroup_id) {
            return o.grandchild_cgroup_id;
        }
        match self.scopes.get(o.scope as usize).map(|s| &s.kind) {
            Some(ScopeKind::Job { .. }) => self.scopes[o.scope as usize].id,
            Some(ScopeKind::Parent) | None => o.action_cgroup_id,
        }
    }

    fn is_job(&self, key: u64) -> bool {
        self.actions.get(&key).is_some_and(|s| {
            self.scopes
                .get(s.scope)
                .is_some_and(|scope| matches!(scope.kind, ScopeKind::Job { .. }) && key == scope.id)
        })
    }

    fn cgroup_path(&self, key: u64) -> Option<PathBuf> {
        if let Some((_, path)) = self
            .actions
            .get(&key)
            .and_then(|s| s.lineage_cgroup.as_ref())
        {
            return Some(path.clone());
        }
        self.cgroups.get(&key).map(|c| c.path.clone())
    }

    /// Routes one event. Appends the events now ready to judge to `ready`,
    /// in order: the action's held events first, then this one; nothing if it
    /// is held. Slow reads it needs go to `needs`. (Out-parameters: this runs
    /// for every event.)
    pub fn route(
        &mut self,
        o: &Origin,
        item: T,
        now: Instant,
        ready: &mut Ready<T>,
        needs: &mut Vec<Need>,
    ) {
        let key = self.key_of(o);
        if let Entry::Vacant(slot) = self.actions.entry(key) {
            slot.insert(ActionState::new(o.scope as usize));
            if key & LINEAGE_KEY != 0 {
                // Its launch was not seen (monitor started mid-build, or the
                // event was lost): judge against the host policy only.
                self.resolve(key, None, None, None);
            }
        }
        let state = self.actions.get_mut(&key).expect("inserted above");
        if let Some(view) = &state.view {
            ready.push((item, view.clone()));
            return;
        }
        if state.deferred.is_some() && state.held.len() >= MAX_HELD_PER_ACTION {
            // Bounded: judging it now, before its declaration, would be wrong.
            if state.dropped == 0 {
                log::warn!(
                    "unsandboxed spawn {key}: {MAX_HELD_PER_ACTION} events held for the execution log; dropping (counted) the rest"
                );
            }
            state.dropped += 1;
            return;
        }
        state.deadline.get_or_insert(now + self.wait);
        state.held.push(item);
        if state.held.len() >= MAX_HELD_PER_ACTION && state.deferred.is_none() {
            log::warn!(
                "action {key}: {MAX_HELD_PER_ACTION} events waiting for a declaration; judging without one"
            );
            let path = self.cgroup_path(key);
            self.resolve(key, path, None, None);
        } else {
            self.try_resolve(key, Some(o.pid), now, needs);
        }
        ready.extend(self.take_released(key));
    }

    /// Periodic work: release actions whose wait is over, forget actions
    /// that ended a while ago, update the active-actions gauge.
    pub fn tick(&mut self, now: Instant) -> Ready<T> {
        // Only actions with something to resolve or release: a node agent
        // keeps every action of the last minute, most of them judged.
        let keys: Vec<u64> = self
            .actions
            .iter()
            .filter(|(_, s)| s.view.is_none() || !s.held.is_empty())
            .map(|(key, _)| *key)
            .collect();
        let mut out = Vec::new();
        let mut needs = Vec::new();
        for key in keys {
            self.try_resolve(key, None, now, &mut needs);
            out.extend(self.take_released(key));
        }
        self.forget_ended(now);
        out
    }

    fn forget_ended(&mut self, now: Instant) {
        let mut forgotten = Vec::new();
        self.actions.retain(|key, state| {
            let gone = state
                .gone_since
                .is_some_and(|since| now.duration_since(since) > FORGET_AFTER);
            let forget =
                gone && state.held.is_empty() && !state.reading && state.deferred.is_none();
            if forget {
                forgotten.push(*key);
            }
            !forget
        });
        for key in forgotten {
            self.forget_cgroup(key);
        }
        let active = self
            .actions
            .iter()
            .filter(|(key, s)| s.gone_since.is_none() && !self.is_job(**key))
            .count();
        self.metrics.actions_active.set(active as i64);
    }

    /// Judges everything still held with what is known (at shutdown).
    pub fn release_all(&mut self) -> Ready<T> {
        let keys: Vec<u64> = self.actions.keys().copied().collect();
        let mut out = Vec::new();
        for key in keys {
            if self.actions[&key].view.is_none() {
                let path = self.cgroup_path(key);
                let declaration = path
                    .as_ref()
                    .filter(|_| key & LINEAGE_KEY == 0)
                    .and_then(|p| self.declarations.get(p).cloned());
                let spawn = self.actions.get_mut(&key).and_then(|s| s.deferred.take());
                self.resolve(key, path, declaration, spawn);
            }
            out.extend(self.take_released(key));
        }
        out
    }

    /// Unsandboxed spawns still waiting for a declaration: (key, cgroup, spawn).
    pub fn deferred(&self) -> Vec<(u64, PathBuf, Spawn)> {
        self.actions
            .iter()
            .filter_map(|(key, s)| {
                let spawn = s.deferred.clone()?;
                Some((*key, self.cgroup_path(*key).unwrap_or_default(), spawn))
            })
            .collect()
    }

    /// Declares a deferred spawn (`None`: nothing declared it) and returns
    /// its held events, now ready.
    pub fn declare_deferred(&mut self, key: u64, declaration: Option<Declaration>) -> Ready<T> {
        let Some(spawn) = self.actions.get_mut(&key).and_then(|s| s.deferred.take()) else {
            return Vec::new();
        };
        let path = self.cgroup_path(key);
        self.resolve(key, path, declaration.map(Arc::new), Some(spawn));
        self.take_released(key)
    }

    /// A deferred persistent worker's spawn and held events, taken to be
    /// split among the requests it served (`bazel::workers`); what is left
    /// of the action is judged without a declaration.
    pub fn take_worker(&mut self, key: u64) -> Option<(Spawn, Vec<T>)> {
        let state = self.actions.get_mut(&key)?;
        let spawn = state.deferred.take_if(|s| s.persistent_worker)?;
        Some((spawn, std::mem::take(&mut state.held)))
    }

    /// The action's view, once fixed.
    pub fn view(&self, key: u64) -> Option<Arc<ActionView>> {
        self.actions.get(&key)?.view.clone()
    }

    /// Events of a deferred spawn dropped because too many were held.
    pub fn dropped(&self, key: u64) -> u64 {
        self.actions.get(&key).map_or(0, |s| s.dropped)
    }

    fn take_released(&mut self, key: u64) -> Ready<T> {
        let state = self.actions.get_mut(&key).expect("known action");
        let Some(view) = state.view.clone() else {
            return Vec::new();
        };
        std::mem::take(&mut state.held)
            .into_iter()
            .map(|item| (item, view.clone()))
            .collect()
    }

    /// Resolves a cgroup action when what it needs is known: its declaration
    /// file, or (asked once, answered later) the Bazel sandbox its processes
    /// work in; at its deadline, without a declaration.
    fn try_resolve(&mut self, key: u64, pid: Option<u32>, now: Instant, needs: &mut Vec<Need>) {
        let Some(state) = self.actions.get(&key) else {
            return;
        };
        if key & LINEAGE_KEY != 0 || state.view.is_some() {
            return; // lineage: fixed at launch; others: resolved already
        }
        if self.is_job(key) {
            let path = self.scopes[state.scope].path.clone(); // is_job: a valid index
            self.resolve(key, Some(path), None, None);
            return;
        }
        let (reading, looked_up) = (state.reading, state.looked_up);
        let deadline_passed = state.deadline.is_some_and(|d| now >= d);
        let path = self.cgroup_path(key);
        if let Some(declaration) = path.as_ref().and_then(|p| self.declarations.get(p)) {
            let declaration = declaration.clone();
            self.resolve(key, path, Some(declaration), None);
            return;
        }
        if let (Some(cgroup), Some(pid), false) = (&path, pid, looked_up) {
            let state = self.actions.get_mut(&key).expect("checked above");
            state.looked_up = true;
            state.reading = true;
            needs.push(Need::ScopeSpawn {
                key,
                cgroup: cgroup.clone(),
                pid,
            });
            return;
        }
        if deadline_passed && !reading {
            self.resolve(key, path, None, None);
        }
    }

    /// Fixes the action's view.
    fn resolve(
        &mut self,
        key: u64,
        path: Option<PathBuf>,
        declaration: Option<Arc<Declaration>>,
        spawn: Option<Spawn>,
    ) {
        let is_job = self.is_job(key);
        let state = self.actions.get_mut(&key).expect("known action");
        let scope = self.scopes.get(state.scope);
        let count_it = !state.counted;
        state.counted = true;
        let cgroup_id = match &state.lineage_cgroup {
            Some((id, _)) => *id,
            None => key & !LINEAGE_KEY,
        };
        let mut info = match scope.map(|s| (s, &s.kind)) {
            Some((
                scope,
                ScopeKind::Job {
                    id: job_id,
                    label,
                    mnemonic,
                },
            )) if is_job => ActionInfo {
                id: job_id.clone(),
                cgroup: scope.path.display().to_string(),
                cgroup_id: key,
                label: label.clone(),
                mnemonic: mnemonic.clone(),
                worker: None,
            },
            _ => {
                let id = action_id(key, path.as_deref(), spawn.as_ref());
                action_info(id, cgroup_id, path.as_deref(), declaration.as_deref())
            }
        };
        info.worker = state.worker.clone();
        if count_it {
            if !is_job {
                self.metrics.fleet.actions_started_total.inc();
            }
            let mnemonic = info.mnemonic.as_deref().unwrap_or("unknown");
            self.metrics
                .actions_total
                .with_label_values(&[mnemonic])
                .inc();
        }
        state.view = Some(Arc::new(ActionView::new(
            info,
            declaration,
            !is_job,
            spawn.map(Arc::new),
        )));
        state.deadline = None;
    }
}

/// How an action is called in alerts: `<launcher>-<pid>` for a spawn,
/// else its cgroup's name.
pub(crate) fn action_id(key: u64, path: Option<&Path>, spawn: Option<&Spawn>) -> String {
    let number = key & !LINEAGE_KEY;
    match (key & LINEAGE_KEY != 0, spawn) {
        (true, Some(spawn)) => format!("{}-{number}", spawn.launcher),
        _ => path
            .filter(|_| key & LINEAGE_KEY == 0)
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("cgroup-{number}")),
    }
}

fn action_info(
    id: String,
    cgroup_id: u64,
    path: Option<&Path>,
    declaration: Option<&Declaration>,
) -> ActionInfo {
    ActionInfo {
        id,
        cgroup: path
            .or(declaration.map(|d| d.cgroup.as_path()))
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        cgroup_id,
        label: declaration.and_then(|d| d.label.clone()),
        mnemonic: declaration.and_then(|d| d.mnemonic.clone()),
        worker: None,
    }
}

#[cfg(test)]
mod tests;
