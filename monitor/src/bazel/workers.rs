//! Bazel persistent workers: one long-lived process serving many spawns
//! (WorkRequests), started by the Bazel server itself (Bazel 4.2.3: no
//! launcher, argv ending in `--persistent_worker`). The kernel makes such a
//! process an action of its own; its events are held until the execution
//! log is read, then split among the requests it served:
//!
//! * **Which requests.** Outputs are unique per action: a log entry run by a
//!   worker (`runner: "worker"`) whose output the process opened in its
//!   directory was served by it, from the first to the last such open.
//! * **With `--worker_sandboxing`** the process works in
//!   `<output_base>/bazel-workers/worker-<n>-<Mnemonic>/<workspace>`, its own
//!   directory, and serves one request at a time: an access inside a
//!   request's window (first to last output open) is that request's; before
//!   the first window or after the last, the first's or last's, as long as
//!   every worker request of that mnemonic in the log was placed in some
//!   process (else an unseen request may lie there). Between two windows
//!   it could be either: not attributable.
//! * **Without it** the process works in the main execroot and nothing ties
//!   an access to one request: every access is the worker scope's, judged
//!   against what all its requests declared together (undeclared by all of
//!   them is certainly undeclared), and its requests are counted as not
//!   attributable.
use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use crate::{
    actions::declarations::Declaration,
    bazel::{
        execlog::{ExecLog, SpawnEntry},
        sandbox, unsandboxed,
    },
    policy::matchers::{NetMatcher, PatternSet},
};

/// The argument Bazel appends to every persistent worker's command line.
pub const PERSISTENT_WORKER_ARG: &[u8] = b"--persistent_worker";

/// Is this argv (NUL-separated) a persistent worker's?
pub fn is_worker_argv(argv: &[u8]) -> bool {
    argv.split(|&b| b == 0).rfind(|a| !a.is_empty()) == Some(PERSISTENT_WORKER_ARG)
}

/// Where a worker process works.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerPlace {
    /// Its working directory (the worker's own execroot when sandboxed).
    pub dir: PathBuf,
    /// The main execroot (`<output_base>/execroot/<workspace>`).
    pub execroot: PathBuf,
    /// `--worker_sandboxing`: `dir` is the worker's own directory.
    pub sandboxed: bool,
    /// The mnemonic in the worker directory's name (sandboxed only).
    pub mnemonic: Option<String>,
}

/// The place a worker working in `cwd` runs in.
pub fn place_of(cwd: &Path) -> WorkerPlace {
    let unsandboxed = WorkerPlace {
        dir: cwd.to_path_buf(),
        execroot: cwd.to_path_buf(),
        ..Default::default()
    };
    let (Some(ws), Some(worker)) = (cwd.file_name(), cwd.parent()) else {
        return unsandboxed;
    };
    let Some(workers) = worker.parent() else {
        return unsandboxed;
    };
    let mnemonic = worker
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("worker-"))
        .and_then(|n| n.split_once('-'))
        .filter(|(number, m)| number.bytes().all(|b| b.is_ascii_digit()) && !m.is_empty())
        .map(|(_, m)| m.to_owned());
    match (workers.file_name(), workers.parent(), mnemonic) {
        (Some(name), Some(output_base), Some(mnemonic)) if name == "bazel-workers" => WorkerPlace {
            dir: cwd.to_path_buf(),
            execroot: output_base.join("execroot").join(ws),
            sandboxed: true,
            mnemonic: Some(mnemonic),
        },
        _ => unsandboxed,
    }
}

/// A log entry a worker process served: index into the log's entries and
/// the first and last time (kernel ns) the process opened one of its outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub entry: usize,
    pub first: u64,
    pub last: u64,
}

/// Log entries a worker may have served: run by a worker, with the place's
/// mnemonic when it is known.
pub fn candidates<'a>(
    log: &'a ExecLog,
    place: &'a WorkerPlace,
) -> impl Iterator<Item = (usize, &'a SpawnEntry)> + 'a {
    log.entries.iter().enumerate().filter(move |(_, e)| {
        e.runner.as_deref() == Some("worker")
            && (place.mnemonic.is_none() || e.mnemonic == place.mnemonic)
    })
}

/// The requests a worker process served, in order, from its successful
/// opens `(kernel ns, object path)`: those whose outputs it opened in its
/// directory.
pub fn served(opens: &[(u64, &[u8])], place: &WorkerPlace, log: &ExecLog) -> Vec<Served> {
    let mut by_output: HashMap<Vec<u8>, usize> = HashMap::new();
    for (i, entry) in candidates(log, place) {
        for out in &entry.outputs {
            let path = place.dir.join(out.trim_start_matches("./"));
            by_output.insert(path.as_os_str().as_encoded_bytes().to_vec(), i);
        }
    }
    let mut found: HashMap<usize, Served> = HashMap::new();
    for &(t, path) in opens {
        if let Some(entry) = output_of(&by_output, path) {
            let s = found.entry(entry).or_insert(Served {
                entry,
                first: t,
                last: t,
            });
            s.first = s.first.min(t);
            s.last = s.last.max(t);
        }
    }
    let mut served: Vec<Served> = found.into_values().collect();
    served.sort_by_key(|s| (s.first, s.entry));
    served
}

/// The entry whose output `path` is or is below (a tree artifact).
fn output_of(by_output: &HashMap<Vec<u8>, usize>, path: &[u8]) -> Option<usize> {
    let mut p = path;
    loop {
        if let Some(&entry) = by_output.get(p) {
            return Some(entry);
        }
        let slash = p.iter().rposition(|&b| b == b'/').filter(|&i| i > 0)?;
        p = &p[..slash];
    }
}

/// How a worker process's accesses are split among its requests.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub served: Vec<Served>,
    /// Sandboxed, and the requests' windows do not overlap.
    pub attributable: bool,
    /// Every candidate request was placed in some process: the time before
    /// the first window and after the last belongs to no other request.
    pub edges_known: bool,
}

impl Plan {
    pub fn new(place: &WorkerPlace, served: Vec<Served>, edges_known: bool) -> Plan {
        let serial = served.windows(2).all(|w| w[0].last < w[1].first);
        Plan {
            attributable: place.sandboxed && serial && !served.is_empty(),
            served,
            edges_known,
        }
    }

    /// The request (index into `served`) an access at `t` belongs to, or
    /// `None` when that cannot be known.
    pub fn request_at(&self, t: u64) -> Option<usize> {
        if !self.attributable {
            return None;
        }
        let last = self.served.len() - 1;
        if let Some(i) = self.served.iter().position(|s| s.first <= t && t <= s.last) {
            return Some(i);
        }
        if t < self.served[0].first {
            return self.edges_known.then_some(0);
        }
        if t > self.served[last].last {
            return self.edges_known.then_some(last);
        }
        None
    }

    /// The requests next to a time no request could be given: the ones
    /// whose accesses may be among the unattributed ones.
    pub fn neighbours(&self, t: u64) -> Vec<usize> {
        if !self.attributable {
            return (0..self.served.len()).collect();
        }
        let after = self.served.iter().position(|s| s.first > t);
        match after {
            Some(0) => vec![0],
            Some(i) => vec![i - 1, i],
            None => vec![self.served.len() - 1],
        }
    }
}

/// What one request declared: its log entry's inputs and outputs below the
/// worker's directory and below the main execroot (Bazel links the
/// worker's inputs to the execroot's, which link to the sources).
pub fn request_declaration(
    entries: &[&SpawnEntry],
    place: &WorkerPlace,
    cgroup: &Path,
    source: &Path,
) -> Declaration {
    let mut inputs = PatternSet::default();
    let mut outputs = Vec::new();
    let mut roots = vec![place.dir.as_path()];
    if place.execroot != place.dir {
        roots.push(place.execroot.as_path());
    }
    for entry in entries {
        for root in &roots {
            inputs.extend(unsandboxed::declared_patterns(entry, root));
            outputs.extend(unsandboxed::output_patterns(entry, root));
        }
    }
    // The scope of several requests is no one target; their mnemonic when
    // they share it.
    let label = match entries {
        [one] => one.label.clone(),
        _ => None,
    };
    let mnemonic = entries
        .first()
        .and_then(|e| e.mnemonic.clone())
        .filter(|m| entries.iter().all(|e| e.mnemonic.as_ref() == Some(m)))
        .or_else(|| place.mnemonic.clone());
    Declaration {
        cgroup: cgroup.to_path_buf(),
        label,
        mnemonic,
        inputs: sandbox::set_matcher(&inputs),
        outputs: sandbox::matcher(&outputs),
        writable: sandbox::matcher(&[]),
        identities: Default::default(),
        network: NetMatcher::default(),
        links: Default::default(),
        source: source.to_path_buf(),
    }
}

/// Every log entry placed in some worker process, for [`Plan::edges_known`].
pub fn placed(all: &[Vec<Served>]) -> HashSet<usize> {
    all.iter().flatten().map(|s| s.entry).collect()
}

#[cfg(test)]
mod tests;
