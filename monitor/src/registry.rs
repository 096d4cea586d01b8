//! The action registry: which cgroup is which action, and what it declared.
//!
//! The kernel already tags every event with its action's cgroup id (see
//! `monitor-ebpf/src/filter.rs`), so the registry never races with cgroup
//! creation: it only has to put names and declarations to ids. Events of an
//! action whose declaration has not arrived yet are held (up to
//! `declaration_wait`) rather than judged against nothing.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    alert::ActionInfo,
    cgroup,
    declarations::{Declaration, DeclarationStore},
    metrics::Metrics,
};

/// How a monitored cgroup relates to actions.
#[derive(Clone, Debug)]
pub enum ScopeKind {
    /// Every child cgroup is one action, judged on files and network.
    Parent,
    /// The cgroup itself is one job, judged against the network policy only
    /// (`monitor exec`'s command tree).
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
}

/// Held events per action before the action is judged without its
/// declaration anyway (bounds memory when a declaration never comes).
const MAX_HELD_PER_ACTION: usize = 65_536;
/// How long an action whose cgroup is gone is remembered.
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

    /// Routes one event of action `action_id` (matched by scope index
    /// `scope`). Returns the events now ready to judge, in order: the
    /// action's held events first, then this one; empty if it is held.
    pub fn route(
        &mut self,
        action_id: u64,
        scope: usize,
        item: T,
        now: Instant,
    ) -> Vec<(T, Arc<ActionView>)> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.actions.entry(action_id) {
            slot.insert(ActionState {
                scope,
                view: None,
                held: Vec::new(),
                deadline: None,
                gone_since: None,
            });
            self.try_resolve(action_id, now);
        }
        let state = self.actions.get_mut(&action_id).expect("inserted above");
        if let Some(view) = &state.view {
            return vec![(item, view.clone())];
        }
        state.deadline.get_or_insert(now + self.wait);
        state.held.push(item);
        if state.held.len() >= MAX_HELD_PER_ACTION {
            log::warn!(
                "action cgroup {action_id}: {MAX_HELD_PER_ACTION} events waiting for a declaration; judging without one"
            );
            self.resolve(action_id, None, None);
        } else {
            self.try_resolve(action_id, now);
        }
        self.take_released(action_id)
    }

    /// Periodic work: rescan cgroups and declarations, release actions whose
    /// declaration arrived or whose wait is over.
    pub fn tick(&mut self, now: Instant) -> Vec<(T, Arc<ActionView>)> {
        self.rescan(now);
        let ids: Vec<u64> = self.actions.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            self.try_resolve(id, now);
            out.extend(self.take_released(id));
        }
        out
    }

    /// Judges everything still held with what is known (at shutdown).
    pub fn release_all(&mut self) -> Vec<(T, Arc<ActionView>)> {
        self.rescan(Instant::now());
        let ids: Vec<u64> = self.actions.keys().copied().collect();
        let mut out = Vec::new();
        for id in ids {
            if self.actions[&id].view.is_none() {
                self.try_resolve(id, Instant::now());
            }
            if self.actions[&id].view.is_none() {
                let path = self.cgroup_paths.get(&id).cloned();
                self.resolve(id, path, None);
            }
            out.extend(self.take_released(id));
        }
        out
    }

    fn take_released(&mut self, id: u64) -> Vec<(T, Arc<ActionView>)> {
        let state = self.actions.get_mut(&id).expect("known action");
        let Some(view) = state.view.clone() else {
            return Vec::new();
        };
        std::mem::take(&mut state.held)
            .into_iter()
            .map(|item| (item, view.clone()))
            .collect()
    }

    fn rescan(&mut self, now: Instant) {
        let invalid = self.declarations.rescan();
        self.metrics.declarations_invalid_total.inc_by(invalid);
        let mut live = 0;
        let mut present = std::collections::HashSet::new();
        for scope in &self.scopes {
            match scope.kind {
                ScopeKind::Parent => {
                    for (id, path) in cgroup::children(&scope.path) {
                        present.insert(id);
                        self.cgroup_paths.insert(id, path);
                        live += 1;
                    }
                }
                ScopeKind::Job { .. } => {
                    if scope.path.exists() {
                        present.insert(scope.id);
                        live += 1;
                    }
                }
            }
        }
        self.metrics.actions_active.set(live);
        self.actions.retain(|id, state| {
            if present.contains(id) {
                state.gone_since = None;
                return true;
            }
            let since = *state.gone_since.get_or_insert(now);
            !(state.held.is_empty() && now.duration_since(since) > FORGET_AFTER)
        });
        self.cgroup_paths
            .retain(|id, _| present.contains(id) || self.actions.contains_key(id));
    }

    fn try_resolve(&mut self, id: u64, now: Instant) {
        let state = &self.actions[&id];
        let scope = self.scopes[state.scope].clone();
        if let ScopeKind::Job { .. } = scope.kind {
            if state.view.is_none() {
                self.resolve(id, Some(scope.path.clone()), None);
            }
            return;
        }
        let already = state.view.as_ref().map(|v| v.declaration.is_some());
        let deadline_passed = state.deadline.is_some_and(|d| now >= d);
        if already == Some(true) {
            return;
        }
        if !self.cgroup_paths.contains_key(&id) {
            for (child_id, path) in cgroup::children(&scope.path) {
                self.cgroup_paths.insert(child_id, path);
            }
        }
        let path = self.cgroup_paths.get(&id).cloned();
        let declaration = path
            .as_deref()
            .and_then(|p| self.declarations.for_cgroup(p));
        if declaration.is_some() || (already.is_none() && deadline_passed) {
            self.resolve(id, path, declaration);
        }
    }

    /// Fixes the action's view. An action first judged without a declaration
    /// gets it when the declaration shows up later.
    fn resolve(&mut self, id: u64, path: Option<PathBuf>, declaration: Option<Arc<Declaration>>) {
        let state = self.actions.get_mut(&id).expect("known action");
        let scope = &self.scopes[state.scope];
        let first_time = state.view.is_none();
        let (info, judge_files) = match &scope.kind {
            ScopeKind::Job {
                id: job_id,
                label,
                mnemonic,
            } => (
                ActionInfo {
                    id: job_id.clone(),
                    cgroup: scope.path.display().to_string(),
                    cgroup_id: id,
                    label: label.clone(),
                    mnemonic: mnemonic.clone(),
                },
                false,
            ),
            ScopeKind::Parent => (
                ActionInfo {
                    id: path
                        .as_deref()
                        .and_then(Path::file_name)
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| format!("cgroup-{id}")),
                    cgroup: path
                        .as_deref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    cgroup_id: id,
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
        state.view = Some(Arc::new(ActionView {
            info,
            declaration,
            judge_files,
        }));
        state.deadline = None;
    }
}
