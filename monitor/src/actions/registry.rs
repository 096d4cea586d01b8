//! The action registry: which action an event belongs to, and what that
//! action declared.
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
//! `declaration_wait`) rather than judged against nothing.
use std::{
    collections::{HashMap, HashSet, hash_map::Entry},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    actions::cgroup,
    actions::declarations::{Declaration, DeclarationStore},
    bazel::sandbox::{self, Spawn},
    events::decode::Origin,
    output::alert::ActionInfo,
    output::metrics::Metrics,
    policy::matchers::NetMatcher,
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
}

/// Registry keys of lineage actions: this bit plus the launcher's tgid
/// (cgroup ids never have it set).
const LINEAGE_KEY: u64 = 1 << 63;
/// Held events per action before the action is judged without its
/// declaration anyway (bounds memory when a declaration never comes).
const MAX_HELD_PER_ACTION: usize = 65_536;
/// How long an ended action is remembered.
const FORGET_AFTER: Duration = Duration::from_secs(60);

struct ActionState<T> {
    scope: usize,
    view: Option<Arc<ActionView>>,
    held: Vec<T>,
    deadline: Option<Instant>,
    gone_since: Option<Instant>,
}

pub struct Registry<T> {
    scopes: Vec<Scope>,
    cgroup_paths: HashMap<u64, PathBuf>,
    /// Bazel's per-server `blaze_<pid>_spawns.slice` cgroups seen so far.
    spawn_slices: HashSet<u64>,
    declarations: DeclarationStore,
    actions: HashMap<u64, ActionState<T>>,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl<T> Registry<T> {
    pub fn new(
        scopes: Vec<Scope>,
        declarations_dir: PathBuf,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut registry = Registry {
            scopes,
            cgroup_paths: HashMap::new(),
            spawn_slices: HashSet::new(),
            declarations: DeclarationStore::new(declarations_dir),
            actions: HashMap::new(),
            wait,
            metrics,
        };
        registry.rescan(Instant::now());
        registry
    }

    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Which action an event belongs to.
    fn key_of(&mut self, o: &Origin) -> u64 {
        if o.launcher != 0 {
            return LINEAGE_KEY | o.launcher as u64;
        }
        if o.grandchild_cgroup_id != 0 && self.is_spawn_slice(o.scope as usize, o.child_cgroup_id) {
            return o.grandchild_cgroup_id;
        }
        match self.scopes[o.scope as usize].kind {
            ScopeKind::Parent => o.action_cgroup_id,
            ScopeKind::Job { .. } => self.scopes[o.scope as usize].id,
        }
    }

    fn is_spawn_slice(&mut self, scope: usize, id: u64) -> bool {
        if !self.spawn_slices.contains(&id) && !self.cgroup_paths.contains_key(&id) {
            let path = self.scopes[scope].path.clone();
            self.scan_below(&path);
        }
        self.spawn_slices.contains(&id)
    }

    /// A sandbox launcher started: its process tree is a new action whose
    /// declaration is its sandbox, read now while it exists.
    pub fn launch(&mut self, o: &Origin, spawn: Spawn) {
        let key = LINEAGE_KEY | o.pid as u64;
        let scope = &self.scopes[o.scope as usize];
        let cgroup = self
            .cgroup_paths
            .get(&o.action_cgroup_id)
            .cloned()
            .unwrap_or_else(|| scope.path.clone());
        let declaration = spawn_declaration(&cgroup, &spawn);
        let info = ActionInfo {
            id: format!("{}-{}", spawn.launcher, o.pid),
            cgroup: cgroup.display().to_string(),
            cgroup_id: o.action_cgroup_id,
            label: None,
            mnemonic: None,
        };
        self.metrics
            .actions_total
            .with_label_values(&["unknown"])
            .inc();
        let view = ActionView {
            info,
            declaration: Some(Arc::new(declaration)),
            judge_files: true,
            spawn: Some(Arc::new(spawn)),
            created: Default::default(),
        };
        let state = ActionState {
            scope: o.scope as usize,
            view: Some(Arc::new(view)),
            held: Vec::new(),
            deadline: None,
            gone_since: None,
        };
        self.actions.insert(key, state);
    }

    /// A process ended; a launcher's end ends its lineage action.
    pub fn exit(&mut self, o: &Origin, now: Instant) {
        if o.launcher == o.pid
            && let Some(state) = self.actions.get_mut(&(LINEAGE_KEY | o.pid as u64))
        {
            state.gone_since = Some(now);
        }
    }

    /// Routes one event. Appends the events now ready to judge to `ready`,
    /// in order: the action's held events first, then this one; nothing if it
    /// is held. (An out-parameter: this runs for every event.)
    pub fn route(
        &mut self,
        o: &Origin,
        item: T,
        now: Instant,
        ready: &mut Vec<(T, Arc<ActionView>)>,
    ) {
        let key = self.key_of(o);
        if let Entry::Vacant(slot) = self.actions.entry(key) {
            slot.insert(ActionState {
                scope: o.scope as usize,
                view: None,
                held: Vec::new(),
                deadline: None,
                gone_since: None,
            });
            if key & LINEAGE_KEY != 0 {
                // Its launch was not seen (monitor started mid-build, or the
                // event was lost): judge against the host policy only.
                self.resolve(key, None, None, None);
            } else {
                self.try_resolve(key, Some(o.pid), now);
            }
        }
        let state = self.actions.get_mut(&key).expect("inserted above");
        if let Some(view) = &state.view {
            ready.push((item, view.clone()));
            return;
        }
        state.deadline.get_or_insert(now + self.wait);
        state.held.push(item);
        if state.held.len() >= MAX_HELD_PER_ACTION {
            log::warn!(
                "action {key}: {MAX_HELD_PER_ACTION} events waiting for a declaration; judging without one"
            );
            let path = self.cgroup_paths.get(&key).cloned();
            self.resolve(key, path, None, None);
        } else {
            self.try_resolve(key, Some(o.pid), now);
        }
        ready.extend(self.take_released(key));
    }

    /// Periodic work: rescan cgroups and declarations, release actions whose
    /// declaration arrived or whose wait is over.
    pub fn tick(&mut self, now: Instant) -> Vec<(T, Arc<ActionView>)> {
        self.rescan(now);
        let keys: Vec<u64> = self.actions.keys().copied().collect();
        let mut out = Vec::new();
        for key in keys {
            self.try_resolve(key, None, now);
            out.extend(self.take_released(key));
        }
        out
    }

    /// Judges everything still held with what is known (at shutdown).
    pub fn release_all(&mut self) -> Vec<(T, Arc<ActionView>)> {
        let now = Instant::now();
        self.rescan(now);
        let keys: Vec<u64> = self.actions.keys().copied().collect();
        let mut out = Vec::new();
        for key in keys {
            if self.actions[&key].view.is_none() {
                self.try_resolve(key, None, now);
            }
            if self.actions[&key].view.is_none() {
                let path = self.cgroup_paths.get(&key).cloned();
                self.resolve(key, path, None, None);
            }
            out.extend(self.take_released(key));
        }
        out
    }

    fn take_released(&mut self, key: u64) -> Vec<(T, Arc<ActionView>)> {
        let state = self.actions.get_mut(&key).expect("known action");
        let Some(view) = state.view.clone() else {
            return Vec::new();
        };
        std::mem::take(&mut state.held)
            .into_iter()
            .map(|item| (item, view.clone()))
            .collect()
    }

    /// Children of `dir` into the id → path table; Bazel spawn slices are
    /// noted and their children (the spawn scopes) read too.
    fn scan_below(&mut self, dir: &Path) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, path) in cgroup::children(dir) {
            if is_spawn_slice_name(&path) {
                self.spawn_slices.insert(id);
                for (scope_id, scope_path) in cgroup::children(&path) {
                    self.cgroup_paths.insert(scope_id, scope_path);
                    ids.push(scope_id);
                }
            } else {
                ids.push(id);
            }
            self.cgroup_paths.insert(id, path);
        }
        ids
    }

    fn rescan(&mut self, now: Instant) {
        let invalid = self.declarations.rescan();
        self.metrics.declarations_invalid_total.inc_by(invalid);
        let mut present = HashSet::new();
        let scopes = self.scopes.clone();
        for scope in &scopes {
            let below = self.scan_below(&scope.path);
            match scope.kind {
                ScopeKind::Parent => present.extend(below),
                ScopeKind::Job { .. } => {
                    present.extend(
                        below
                            .into_iter()
                            .filter(|id| !self.is_plain_child(*id, &scope.path)),
                    );
                    if scope.path.exists() {
                        present.insert(scope.id);
                    }
                }
            }
        }
        let live_lineage = self
            .actions
            .iter()
            .filter(|(k, s)| *k & LINEAGE_KEY != 0 && s.gone_since.is_none())
            .count();
        self.metrics
            .actions_active
            .set((present.len() + live_lineage) as i64);
        self.actions.retain(|key, state| {
            if *key & LINEAGE_KEY == 0 {
                if present.contains(key) {
                    state.gone_since = None;
                    return true;
                }
                state.gone_since.get_or_insert(now);
            }
            let gone = state
                .gone_since
                .is_some_and(|since| now.duration_since(since) > FORGET_AFTER);
            !(state.held.is_empty() && gone)
        });
        let actions = &self.actions;
        let slices = &self.spawn_slices;
        self.cgroup_paths.retain(|id, _| {
            present.contains(id) || actions.contains_key(id) || slices.contains(id)
        });
    }

    /// A direct child of a job (e.g. the command's own cgroup): not an action.
    fn is_plain_child(&self, id: u64, job: &Path) -> bool {
        self.cgroup_paths
            .get(&id)
            .is_some_and(|p| p.parent() == Some(job))
    }

    fn try_resolve(&mut self, key: u64, pid: Option<u32>, now: Instant) {
        let Some(state) = self.actions.get(&key) else {
            return;
        };
        if key & LINEAGE_KEY != 0 {
            return; // fixed at launch
        }
        let scope = self.scopes[state.scope].clone();
        let already = state.view.as_ref().map(|v| v.declaration.is_some());
        let deadline_passed = state.deadline.is_some_and(|d| now >= d);
        let is_job = matches!(scope.kind, ScopeKind::Job { .. }) && key == scope.id;
        if is_job {
            if state.view.is_none() {
                self.resolve(key, Some(scope.path.clone()), None, None);
            }
            return;
        }
        if already == Some(true) {
            return;
        }
        if !self.cgroup_paths.contains_key(&key) {
            self.scan_below(&scope.path);
        }
        let path = self.cgroup_paths.get(&key).cloned();
        let mut declaration = path
            .as_deref()
            .and_then(|p| self.declarations.for_cgroup(p));
        let mut spawn = None;
        if declaration.is_none()
            && let (Some(path), Some(pid)) = (path.as_deref(), pid)
            && let Some(found) = spawn_of_scope(path, pid)
        {
            declaration = Some(Arc::new(spawn_declaration(path, &found)));
            spawn = Some(found);
        }
        if declaration.is_some() || (already.is_none() && deadline_passed) {
            self.resolve(key, path, declaration, spawn);
        }
    }

    /// Fixes the action's view. An action first judged without a declaration
    /// gets it when the declaration shows up later.
    fn resolve(
        &mut self,
        key: u64,
        path: Option<PathBuf>,
        declaration: Option<Arc<Declaration>>,
        spawn: Option<Spawn>,
    ) {
        let state = self.actions.get_mut(&key).expect("known action");
        let scope = &self.scopes[state.scope];
        let first_time = state.view.is_none();
        let (info, judge_files) = match &scope.kind {
            ScopeKind::Job {
                id: job_id,
                label,
                mnemonic,
            } if key == scope.id => (
                ActionInfo {
                    id: job_id.clone(),
                    cgroup: scope.path.display().to_string(),
                    cgroup_id: key,
                    label: label.clone(),
                    mnemonic: mnemonic.clone(),
                },
                false,
            ),
            _ => (
                ActionInfo {
                    id: path
                        .as_deref()
                        .and_then(Path::file_name)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| format!("cgroup-{}", key & !LINEAGE_KEY)),
                    cgroup: path
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    cgroup_id: key & !LINEAGE_KEY,
                    label: declaration.as_ref().and_then(|d| d.label.clone()),
                    mnemonic: declaration.as_ref().and_then(|d| d.mnemonic.clone()),
                },
                true,
            ),
        };
        if first_time {
            let mnemonic = info.mnemonic.as_deref().unwrap_or("unknown");
            self.metrics
                .actions_total
                .with_label_values(&[mnemonic])
                .inc();
        }
        let spawn = spawn.map(Arc::new);
        state.view = Some(Arc::new(ActionView {
            info,
            declaration,
            judge_files,
            spawn,
            created: Default::default(),
        }));
        state.deadline = None;
    }
}

/// What a sandboxed spawn declared: its sandbox, read now.
fn spawn_declaration(cgroup: &Path, spawn: &Spawn) -> Declaration {
    Declaration {
        cgroup: cgroup.to_path_buf(),
        label: None,
        mnemonic: None,
        inputs: sandbox::matcher(&sandbox::declared_patterns(spawn)),
        writable: sandbox::matcher(&sandbox::writable_patterns(spawn)),
        network: NetMatcher::default(),
        source: spawn
            .sandbox_dir
            .clone()
            .unwrap_or_else(|| spawn.execroot.clone()),
    }
}

/// `blaze_<digits>_spawns.slice`: where Bazel 7+ puts per-spawn cgroups.
pub fn is_spawn_slice_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("blaze_"))
        .and_then(|n| n.strip_suffix("_spawns.slice"))
        .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
}

/// `sandbox_<id>.scope` → id.
pub fn spawn_scope_id(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("sandbox_")?
        .strip_suffix(".scope")?
        .parse()
        .ok()
}

/// The sandbox a process in a Bazel spawn cgroup works in, from its working
/// directory; checked against the scope's id (`sandbox_<id>.scope` belongs
/// to `…/sandbox/<strategy>/<id>/`).
fn spawn_of_scope(scope_path: &Path, pid: u32) -> Option<Spawn> {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    let spawn = sandbox::parse_launch(b"", &cwd);
    match (spawn_scope_id(scope_path), spawn.sandbox_id) {
        (Some(a), Some(b)) if a == b => Some(spawn),
        (None, Some(_)) => Some(spawn),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_bazel_spawn_cgroup_names() {
        assert!(is_spawn_slice_name(Path::new(
            "/cg/blaze_1234_spawns.slice"
        )));
        assert!(!is_spawn_slice_name(Path::new("/cg/blaze__spawns.slice")));
        assert!(!is_spawn_slice_name(Path::new(
            "/cg/blaze_12x_spawns.slice"
        )));
        assert!(!is_spawn_slice_name(Path::new("/cg/action-1")));
        assert_eq!(
            spawn_scope_id(Path::new("/cg/blaze_1_spawns.slice/sandbox_42.scope")),
            Some(42)
        );
        assert_eq!(spawn_scope_id(Path::new("/cg/sandbox_x.scope")), None);
    }
}
