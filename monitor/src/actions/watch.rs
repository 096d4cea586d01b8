//! The file-system side of attribution, off the event path: a thread that
//! reads declaration files when inotify says the directory changed (and
//! rescans the cgroup trees and the directory every few seconds as a safety
//! net behind the kernel's cgroup events and inotify), and the reads the
//! registry asks for ([`Need`]: sandbox trees, `/proc/<pid>/cwd`), done on
//! tokio's blocking pool. Results go to the event loop as [`Update`]s.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    actions::{
        cgroup,
        declarations::{Declaration, DeclarationStore},
        registry::{Need, Scope, WorkerIdentity},
    },
    bazel::{
        sandbox::{
            Spawn,
            made_links::{MadeLinks, Targets},
        },
        spawns::{is_spawn_slice_name, spawn_declaration, spawn_of_launch, spawn_of_scope},
    },
    output::metrics::Metrics,
    reapi::records::worker_action,
};

/// How often the trees are rescanned although no event said so.
const SAFETY_NET: Duration = Duration::from_secs(2);

/// What the file-system side learnt, for the registry.
#[derive(Debug)]
pub enum Update {
    /// Every cgroup below the scopes, as a scan started at `started` saw them.
    Cgroups {
        found: Vec<(u64, PathBuf)>,
        started: Instant,
    },
    DeclarationSet(Arc<Declaration>),
    DeclarationRemoved(PathBuf),
    /// The answer to a [`Need`].
    SpawnRead {
        key: u64,
        found: Option<Box<(Spawn, Declaration)>>,
    },
    /// The answer to a [`Need::WorkerSpawn`].
    WorkerRead {
        key: u64,
        found: Box<(Spawn, Declaration)>,
        identity: Option<WorkerIdentity>,
    },
}

enum Wake {
    Changed,
    Stop,
}

/// The running watcher thread; stopped (and joined) on drop.
pub struct Watch {
    wake: mpsc::Sender<Wake>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.wake.send(Wake::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the watcher: it sends a first full picture at once, then changes.
pub fn start(
    scopes: Vec<Scope>,
    declarations_dir: PathBuf,
    updates: UnboundedSender<Update>,
    metrics: Arc<Metrics>,
) -> Watch {
    let (wake, wakes) = mpsc::channel();
    let notifier = wake.clone();
    let thread = thread::Builder::new()
        .name("monitor-watch".into())
        .spawn(move || {
            let mut state = WatchState {
                scopes,
                store: DeclarationStore::new(declarations_dir),
                sent: HashMap::new(),
                updates,
                metrics,
            };
            state.run(wakes, notifier);
        })
        .expect("spawning the watcher thread");
    Watch {
        wake,
        thread: Some(thread),
    }
}

struct WatchState {
    scopes: Vec<Scope>,
    store: DeclarationStore,
    /// Declarations already sent, by cgroup.
    sent: HashMap<PathBuf, Arc<Declaration>>,
    updates: UnboundedSender<Update>,
    metrics: Arc<Metrics>,
}

impl WatchState {
    fn run(&mut self, wakes: mpsc::Receiver<Wake>, notifier: mpsc::Sender<Wake>) {
        let mut inotify = None;
        self.scan_cgroups();
        loop {
            if inotify.is_none() {
                inotify = watch_dir(self.store.dir(), notifier.clone());
            }
            self.scan_declarations();
            match wakes.recv_timeout(SAFETY_NET) {
                Ok(Wake::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Ok(Wake::Changed) => {
                    // A burst of file events is one rescan.
                    while let Ok(wake) = wakes.try_recv() {
                        if matches!(wake, Wake::Stop) {
                            return;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => self.scan_cgroups(),
            }
        }
    }

    fn scan_cgroups(&self) {
        let started = Instant::now();
        let mut found = Vec::new();
        for scope in &self.scopes {
            scan_below(&scope.path, &mut found);
        }
        let _ = self.updates.send(Update::Cgroups { found, started });
    }

    fn scan_declarations(&mut self) {
        let invalid = self.store.rescan();
        self.metrics.declarations_invalid_total.inc_by(invalid);
        let current: HashMap<PathBuf, Arc<Declaration>> = self
            .store
            .all()
            .map(|d| (d.cgroup.clone(), d.clone()))
            .collect();
        for (cgroup, declaration) in &current {
            if self
                .sent
                .get(cgroup)
                .is_none_or(|d| !Arc::ptr_eq(d, declaration))
            {
                let _ = self
                    .updates
                    .send(Update::DeclarationSet(declaration.clone()));
            }
        }
        for cgroup in self.sent.keys() {
            if !current.contains_key(cgroup) {
                let _ = self
                    .updates
                    .send(Update::DeclarationRemoved(cgroup.clone()));
            }
        }
        self.sent = current;
    }
}

/// inotify on the declarations directory (`None` while it does not exist:
/// retried at every safety-net rescan).
fn watch_dir(dir: &Path, notifier: mpsc::Sender<Wake>) -> Option<notify::RecommendedWatcher> {
    if !dir.is_dir() {
        return None;
    }
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| changes_the_directory(&e)) {
            let _ = notifier.send(Wake::Changed);
        }
    };
    let mut watcher = notify::recommended_watcher(handler)
        .inspect_err(|e| log::warn!("cannot watch {}: {e}; rescanning", dir.display()))
        .ok()?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .inspect_err(|e| log::warn!("cannot watch {}: {e}; rescanning", dir.display()))
        .ok()?;
    Some(watcher)
}

/// Whether an event can change what the directory declares. Opens and
/// closes are not: the rescan itself opens the directory and its files, so
/// waking on them made the watcher rescan without end (86 % of a core,
/// measured idle).
fn changes_the_directory(event: &notify::Event) -> bool {
    !matches!(event.kind, notify::EventKind::Access(_))
}

/// Children of `dir`; the children of Bazel spawn slices too (the spawn
/// scopes).
fn scan_below(dir: &Path, found: &mut Vec<(u64, PathBuf)>) {
    for (id, path) in cgroup::children(dir) {
        if is_spawn_slice_name(&path) {
            found.extend(cgroup::children(&path));
        }
        found.push((id, path));
    }
}

/// Does the slow read a [`Need`] asks for, on the blocking pool, and sends
/// the answer back. `made`: the links Bazel made in its sandboxes, as the
/// kernel saw them (events before the need's are in).
pub fn serve(need: Need, updates: UnboundedSender<Update>, made: Arc<MadeLinks>) {
    tokio::task::spawn_blocking(move || {
        let update = match need {
            Need::LaunchSpawn {
                key,
                cgroup,
                launch,
            } => {
                let spawn = spawn_of_launch(&launch);
                let declaration = spawn_declaration(&cgroup, &spawn, &made_in(&made, &spawn));
                spawn_read(key, Some((spawn, declaration)))
            }
            Need::ScopeSpawn { key, cgroup, pid } => {
                let found = spawn_of_scope(&cgroup, pid).map(|spawn| {
                    let declaration = spawn_declaration(&cgroup, &spawn, &made_in(&made, &spawn));
                    (spawn, declaration)
                });
                spawn_read(key, found)
            }
            Need::WorkerSpawn {
                key,
                launch,
                records_dir,
            } => {
                let (spawn, declaration, identity) = worker_action(&launch, &records_dir);
                Update::WorkerRead {
                    key,
                    found: Box::new((spawn, declaration)),
                    identity,
                }
            }
        };
        let _ = updates.send(update);
    });
}

/// The links Bazel made in the spawn's sandbox, taken from `made`.
fn made_in(made: &MadeLinks, spawn: &Spawn) -> Targets {
    spawn
        .sandbox_dir
        .as_deref()
        .map(|dir| made.take(dir))
        .unwrap_or_default()
}

fn spawn_read(key: u64, found: Option<(Spawn, Declaration)>) -> Update {
    Update::SpawnRead {
        key,
        found: found.map(Box::new),
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RemoveKind};

    use super::changes_the_directory;

    #[test]
    fn only_changes_wake_the_watcher_not_its_own_reads() {
        let wakes = |kind| changes_the_directory(&notify::Event::new(kind));
        assert!(!wakes(EventKind::Access(AccessKind::Open(
            AccessMode::Read
        ))));
        assert!(!wakes(EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(wakes(EventKind::Create(CreateKind::File)));
        assert!(wakes(EventKind::Modify(ModifyKind::Any)));
        assert!(wakes(EventKind::Remove(RemoveKind::File)));
        assert!(wakes(EventKind::Any));
    }
}
