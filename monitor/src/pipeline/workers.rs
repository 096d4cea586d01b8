//! Persistent workers at the end of a `monitor exec` build: each worker
//! process's held events are split among the requests it served
//! (`bazel::workers`), judged against that request's log entry, or against
//! the worker scope (all its requests together) when no single request can
//! be known; the report's `bazel.workers` and the count of worker spawns
//! not attributable come from here.
use std::{collections::BTreeSet, path::Path, sync::Arc};

use serde_json::{Value, json};

use crate::{
    actions::{
        declarations::Declaration,
        registry::{ActionInfo, ActionView, action_id},
    },
    bazel::{
        execlog::ExecLog,
        workers::{self, Plan, WorkerPlace},
    },
    events::decode::Event,
    pipeline::handle::{Handler, Observed},
};

/// One worker process taken from the registry.
struct Taken {
    key: u64,
    id: String,
    cgroup: std::path::PathBuf,
    place: WorkerPlace,
    held: Vec<Observed>,
    served: Vec<workers::Served>,
}

/// What the workers of one build came to, for the report.
#[derive(Default)]
pub struct WorkerOutcome {
    /// `bazel.workers`: one object per worker process.
    pub workers: Vec<Value>,
    /// Worker spawns whose file accesses could not be tied to one action.
    pub unattributable: usize,
}

/// Splits and judges every persistent worker's held events.
pub fn attribute(handler: &mut Handler, log: Option<&ExecLog>, log_path: &Path) -> WorkerOutcome {
    let empty = ExecLog::new(Vec::new());
    let log = log.unwrap_or(&empty);
    let mut taken = Vec::new();
    for (key, cgroup, spawn) in handler.registry.deferred() {
        if !spawn.persistent_worker {
            continue;
        }
        let Some((spawn, held)) = handler.registry.take_worker(key) else {
            continue;
        };
        let place = workers::place_of(&spawn.execroot);
        let opens: Vec<(u64, &[u8])> = held.iter().filter_map(successful_open).collect();
        let served = workers::served(&opens, &place, log);
        let id = action_id(key, None, Some(&spawn));
        taken.push(Taken {
            key,
            id,
            cgroup,
            place,
            held,
            served,
        });
    }
    let placed = workers::placed(&taken.iter().map(|t| t.served.clone()).collect::<Vec<_>>());
    let mut outcome = WorkerOutcome::default();
    let mut unattributable = BTreeSet::new();
    for t in taken {
        let edges_known =
            workers::candidates(log, &t.place).all(|(i, e)| e.cache_hit || placed.contains(&i));
        let report = judge_worker(handler, t, log, log_path, edges_known, &mut unattributable);
        outcome.workers.push(report);
    }
    // Worker spawns of the log no monitored worker process served.
    for (i, e) in log.entries.iter().enumerate() {
        if e.runner.as_deref() == Some("worker") && !e.cache_hit && !placed.contains(&i) {
            unattributable.insert(i);
        }
    }
    outcome.unattributable = unattributable.len();
    outcome
}

/// The time and object path of a successful open (what places requests).
fn successful_open(o: &Observed) -> Option<(u64, &[u8])> {
    match &o.event {
        Event::File(f) if f.result >= 0 && f.object.is_some() => {
            Some((f.origin.ktime_ns, f.path.as_slice()))
        }
        _ => None,
    }
}

/// Judges one worker's events; returns its `bazel.workers` object and adds
/// the log entries some of whose accesses stayed unattributed.
fn judge_worker(
    handler: &mut Handler,
    t: Taken,
    log: &ExecLog,
    log_path: &Path,
    edges_known: bool,
    unattributable: &mut BTreeSet<usize>,
) -> Value {
    let plan = Plan::new(&t.place, t.served.clone(), edges_known);
    let entries: Vec<_> = plan.served.iter().map(|s| &log.entries[s.entry]).collect();
    let cgroup_id = t
        .held
        .first()
        .map_or(0, |o| o.event.origin().action_cgroup_id);
    let view = |id: String, declaration: Declaration| {
        Arc::new(ActionView::new(
            ActionInfo {
                id,
                cgroup: t.cgroup.display().to_string(),
                cgroup_id,
                label: declaration.label.clone(),
                mnemonic: declaration.mnemonic.clone(),
                worker: None,
            },
            Some(Arc::new(declaration)),
            true,
            None,
        ))
    };
    // The worker scope: everything its requests declared, no one target
    // (even when it served one: what it served is known from outputs only).
    let mut scope_declaration =
        workers::request_declaration(&entries, &t.place, &t.cgroup, log_path);
    scope_declaration.label = None;
    let scope = view(t.id.clone(), scope_declaration);
    let requests: Vec<Arc<ActionView>> = entries
        .iter()
        .enumerate()
        .map(|(k, e)| {
            let d = workers::request_declaration(&[e], &t.place, &t.cgroup, log_path);
            view(format!("{}.{}", t.id, k + 1), d)
        })
        .collect();
    let mut counts = vec![0u64; requests.len()];
    let mut unattributed = 0u64;
    let mut ready = Vec::with_capacity(t.held.len());
    for observed in t.held {
        let access = matches!(observed.event, Event::File(_) | Event::Exec(_));
        let time = observed.event.origin().ktime_ns;
        let request = plan.request_at(time).filter(|_| access);
        let target = match request {
            Some(k) => {
                counts[k] += 1;
                requests[k].clone()
            }
            None => {
                if access {
                    unattributed += 1;
                    unattributable
                        .extend(plan.neighbours(time).iter().map(|&k| plan.served[k].entry));
                }
                scope.clone()
            }
        };
        ready.push((observed, target));
    }
    handler.judge_ready(ready);
    let mnemonic = scope.info.mnemonic.clone();
    let dropped = handler.registry.dropped(t.key);
    let facts = (t.key, mnemonic, unattributed, dropped);
    worker_json(&t.id, facts, &t.place, &plan, &requests, &counts)
}

/// The report's object for one worker process.
/// `facts`: the registry key, the mnemonic, the accesses unattributed,
/// the events dropped while held.
fn worker_json(
    id: &str,
    (key, mnemonic, unattributed, dropped): (u64, Option<String>, u64, u64),
    place: &WorkerPlace,
    plan: &Plan,
    requests: &[Arc<ActionView>],
    counts: &[u64],
) -> Value {
    let served: Vec<Value> = requests
        .iter()
        .zip(counts)
        .map(|(r, n)| {
            json!({
                "id": r.info.id,
                "label": r.info.label,
                "mnemonic": r.info.mnemonic,
                "declared_by": "execution_log",
                "events_attributed": n,
            })
        })
        .collect();
    json!({
        "id": id,
        "pid": (key & !(1 << 63)) as u32,
        "mnemonic": mnemonic,
        "sandboxed": place.sandboxed,
        "dir": place.dir.display().to_string(),
        "attribution": if plan.attributable { "per_request" } else { "worker_scope" },
        "served": served,
        "events_unattributed": unattributed,
        "events_dropped": dropped,
    })
}
