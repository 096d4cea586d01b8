//! What `monitor exec` reports about each Bazel spawn it saw: where its
//! declaration came from, how isolated it really ran, and — per target —
//! the inputs it declared and never opened. Kept while the build runs
//! (bounded), turned into the report's `bazel` section when the execution
//! log has been read.
use std::{
    collections::BTreeMap,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::{
    bazel::{
        execlog::ExecLog,
        isolation::Isolation,
        sandbox::{RealDirs, Spawn},
    },
    hashing::{HashMap, HashSet},
};

/// Distinct paths remembered per spawn for the unread-input check; a spawn
/// that opens more is marked incomplete (its unread list is not given).
pub const MAX_OPENED_PER_SPAWN: usize = 65_536;

/// Distinct paths remembered per spawn that it wrote below its execroot
/// (what joins it to its action in a trace profile); past this, more are
/// not kept.
pub const MAX_WRITTEN_PER_SPAWN: usize = 1024;

/// Where a spawn's declaration came from (the report's `declared_by`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeclaredBy {
    /// Its sandbox directory, read when the launcher started.
    SandboxTree,
    /// Its execution log entry (`inputs` and outputs): no sandbox tree.
    ExecutionLog,
    /// The tree of the directory it worked in, not a sandbox (only when no
    /// execution log is read: e.g. a node agent).
    WorkingTree,
    /// Nothing: judged against the host policy alone.
    None,
}

impl DeclaredBy {
    pub fn as_str(self) -> &'static str {
        match self {
            DeclaredBy::SandboxTree => "sandbox_tree",
            DeclaredBy::ExecutionLog => "execution_log",
            DeclaredBy::WorkingTree => "working_tree",
            DeclaredBy::None => "none",
        }
    }
}

/// One spawn seen starting.
#[derive(Debug)]
pub struct SpawnRecord {
    pub id: String,
    pub spawn: Spawn,
    pub declared_by: Option<DeclaredBy>,
    pub opened: HashSet<Vec<u8>>,
    pub opened_incomplete: bool,
    /// Paths written below its execroot, relative to it (at most
    /// [`MAX_WRITTEN_PER_SPAWN`]).
    pub written: HashSet<String>,
    pub events_dropped: u64,
}

/// Every spawn seen starting, by registry key (and action id).
#[derive(Debug)]
pub struct SpawnBook {
    records: HashMap<u64, SpawnRecord>,
    by_id: HashMap<String, u64>,
    /// Keep what each spawn opened: only the unread-input check needs it,
    /// and only the execution log lists a spawn's inputs.
    keeps_opened: bool,
}

impl Default for SpawnBook {
    fn default() -> Self {
        SpawnBook {
            records: HashMap::default(),
            by_id: HashMap::default(),
            keeps_opened: true,
        }
    }
}

impl SpawnBook {
    /// A launcher's spawn was read; `id` is its action id.
    pub fn launched(&mut self, key: u64, id: String, spawn: Spawn) {
        self.by_id.insert(id.clone(), key);
        self.records.insert(
            key,
            SpawnRecord {
                id,
                spawn,
                declared_by: None,
                opened: HashSet::default(),
                opened_incomplete: false,
                written: HashSet::default(),
                events_dropped: 0,
            },
        );
    }

    pub fn declared(&mut self, key: u64, by: DeclaredBy, events_dropped: u64) {
        if let Some(r) = self.records.get_mut(&key) {
            r.declared_by = Some(by);
            r.events_dropped = events_dropped;
        }
    }

    /// Whether [`SpawnBook::opened`] keeps paths (it does by default).
    pub fn keep_opened(&mut self, keep: bool) {
        self.keeps_opened = keep;
    }

    /// A file the spawn (action `id`) opened.
    pub fn opened(&mut self, id: &str, path: &[u8]) {
        if !self.keeps_opened {
            return;
        }
        let Some(r) = self.by_id.get(id).and_then(|k| self.records.get_mut(k)) else {
            return;
        };
        if r.opened.len() >= MAX_OPENED_PER_SPAWN {
            r.opened_incomplete |= !r.opened.contains(path);
        } else if !r.opened.contains(path) {
            r.opened.insert(path.to_vec());
        }
    }

    /// A name the spawn (action `id`) wrote: kept when it lies below the
    /// spawn's execroot.
    pub fn wrote(&mut self, id: &str, path: &[u8]) {
        let Some(r) = self.by_id.get(id).and_then(|k| self.records.get_mut(k)) else {
            return;
        };
        let Some(rel) = path
            .strip_prefix(r.spawn.execroot.as_os_str().as_bytes())
            .and_then(|rest| rest.strip_prefix(b"/"))
        else {
            return;
        };
        if r.written.len() < MAX_WRITTEN_PER_SPAWN && !rel.is_empty() {
            r.written.insert(String::from_utf8_lossy(rel).into_owned());
        }
    }

    /// Every spawn seen starting.
    pub fn records(&self) -> impl Iterator<Item = &SpawnRecord> {
        self.records.values()
    }

    pub fn get(&self, key: u64) -> Option<&SpawnRecord> {
        self.records.get(&key)
    }

    /// The report's `bazel` section: every spawn with its target, isolation
    /// and declaration source; counts by isolation and by source; per
    /// target, the declared inputs never opened, largest count first (only
    /// the execution log lists a spawn's inputs).
    pub fn section(&self, record: BazelRecord<'_>) -> Value {
        let mut records: Vec<&SpawnRecord> = self.records.values().collect();
        records.sort_by(|a, b| a.id.cmp(&b.id));
        let mut spawns = Vec::new();
        let mut isolation: BTreeMap<&str, u64> = BTreeMap::new();
        let mut declared_by: BTreeMap<&str, u64> = BTreeMap::new();
        let mut unread = UnreadByTarget::default();
        for r in records {
            let facts = record.facts(r);
            let iso = Isolation::of(&r.spawn);
            let by = r.declared_by.unwrap_or(DeclaredBy::None).as_str();
            *isolation.entry(iso.as_str()).or_default() += 1;
            *declared_by.entry(by).or_default() += 1;
            spawns.push(json!({
                "id": r.id,
                "label": facts.label,
                "mnemonic": facts.mnemonic,
                "runner": facts.runner,
                "launcher": r.spawn.launcher,
                "isolation": iso.as_str(),
                "network_namespace": r.spawn.own_network,
                "declared_by": by,
                "events_dropped": r.events_dropped,
            }));
            if let (Some(label), Some(inputs)) = (facts.label, facts.inputs) {
                unread.add(label, inputs, r);
            }
        }
        let unseen = match record {
            BazelRecord::Log(log) => self.unseen(log),
            BazelRecord::Trace(t) => t.unseen(self.records.len()),
        };
        json!({
            "label_source": record.name(),
            "unseen_spawns": unseen,
            "spawns": spawns,
            "isolation": isolation,
            "declared_by": declared_by,
            "unread_inputs": unread.into_json(),
        })
    }
}

/// The record of Bazel's that names the spawns' targets.
#[derive(Clone, Copy)]
pub enum BazelRecord<'a> {
    /// The execution log (when it could be read).
    Log(Option<&'a ExecLog>),
    /// Labels joined from the trace profile.
    Trace(&'a crate::bazel::labels::TraceLabels),
}

/// What a record says of one spawn.
struct Facts<'a> {
    label: Option<&'a str>,
    mnemonic: Option<&'a str>,
    runner: Option<&'a str>,
    inputs: Option<&'a [String]>,
}

impl<'a> BazelRecord<'a> {
    fn name(self) -> &'static str {
        match self {
            BazelRecord::Log(_) => "execution_log",
            BazelRecord::Trace(_) => "trace_profile",
        }
    }

    fn facts(self, r: &SpawnRecord) -> Facts<'a> {
        match self {
            BazelRecord::Log(log) => {
                let entry = log.and_then(|l| l.find_by_command(&r.spawn.command, None));
                Facts {
                    label: entry.and_then(|e| e.label.as_deref()),
                    mnemonic: entry.and_then(|e| e.mnemonic.as_deref()),
                    runner: entry.and_then(|e| e.runner.as_deref()),
                    inputs: entry.map(|e| e.inputs.as_slice()),
                }
            }
            BazelRecord::Trace(t) => Facts {
                label: t.label_of(&r.id),
                mnemonic: t.mnemonic_of(&r.id),
                runner: None,
                inputs: None,
            },
        }
    }
}

impl SpawnBook {
    /// Log entries that ran on this machine (not cache hits; runner
    /// linux-sandbox, processwrapper-sandbox or local) with no spawn seen
    /// for their command line, by runner: they ran outside the job (a
    /// server started before it) or without a launcher.
    fn unseen(&self, log: Option<&ExecLog>) -> BTreeMap<String, u64> {
        let seen: HashSet<&[String]> = self
            .records
            .values()
            .map(|r| r.spawn.command.as_slice())
            .collect();
        let mut unseen = BTreeMap::new();
        for e in log.map(|l| l.entries.as_slice()).unwrap_or_default() {
            let runner = e.runner.as_deref().unwrap_or("");
            let local = matches!(runner, "linux-sandbox" | "processwrapper-sandbox" | "local");
            if local && !e.cache_hit && !seen.contains(e.command_args.as_slice()) {
                *unseen.entry(runner.to_owned()).or_default() += 1;
            }
        }
        unseen
    }
}

/// Per target: declared inputs and which of them some spawn opened.
#[derive(Default)]
struct UnreadByTarget<'a> {
    targets: BTreeMap<&'a str, TargetInputs<'a>>,
    /// Shared by every spawn: their inputs sit in few directories.
    real_dirs: RealDirs,
    /// Each input's real path through the main execroot, by its name, for
    /// the main execroot `reals_for` (a build's spawns share one): one
    /// hash of the name per input, where resolving it joined two paths and
    /// hashed one (measured: the report of the bench build took 92 ms,
    /// most of it there).
    main_reals: HashMap<&'a str, Option<PathBuf>>,
    reals_for: Option<PathBuf>,
}

/// What one spawn opened. A directory input counts as read when anything
/// below it was opened: that is looked up in the paths sorted (below
/// `dir/` they sort together), sorted only once an input was opened by
/// none of its names.
struct Opened<'a> {
    paths: &'a HashSet<Vec<u8>>,
    sorted: std::cell::OnceCell<Vec<&'a [u8]>>,
}

impl<'a> Opened<'a> {
    fn of(paths: &'a HashSet<Vec<u8>>) -> Opened<'a> {
        Opened {
            paths,
            sorted: std::cell::OnceCell::new(),
        }
    }

    /// Whether an opened path starts with `dir/`.
    fn has_below(&self, dir: &[u8]) -> bool {
        if dir.is_empty() {
            return false;
        }
        let sorted = self.sorted.get_or_init(|| {
            let mut sorted: Vec<&[u8]> = self.paths.iter().map(Vec::as_slice).collect();
            sorted.sort_unstable();
            sorted
        });
        let mut prefix = Vec::with_capacity(dir.len() + 1);
        prefix.extend_from_slice(dir);
        prefix.push(b'/');
        let first = sorted.partition_point(|p| *p < prefix.as_slice());
        sorted.get(first).is_some_and(|p| p.starts_with(&prefix))
    }
}

#[derive(Default)]
struct TargetInputs<'a> {
    declared: BTreeMap<&'a str, bool>,
    incomplete: bool,
}

impl<'a> UnreadByTarget<'a> {
    fn add(&mut self, label: &'a str, inputs: &'a [String], r: &SpawnRecord) {
        let t = self.targets.entry(label).or_default();
        t.incomplete |= r.opened_incomplete;
        let opened = Opened::of(&r.opened);
        let main = main_execroot(&r.spawn);
        // A spawn without a main execroot (not sandboxed) keeps the cache.
        if main.is_some() && self.reals_for != main {
            self.main_reals.clear();
            self.reals_for.clone_from(&main);
        }
        for input in inputs {
            let main_real = main.as_deref().and_then(|main| {
                let rel = input.trim_start_matches("./");
                let real = self
                    .main_reals
                    .entry(input)
                    .or_insert_with(|| self.real_dirs.canonicalize_shared(&main.join(rel)));
                real.as_deref()
            });
            let read = was_read(
                input,
                &r.spawn,
                (main.as_deref(), main_real),
                &opened,
                &mut self.real_dirs,
            );
            *t.declared.entry(input).or_default() |= read;
        }
    }

    fn into_json(self) -> Vec<Value> {
        let mut rows: Vec<(&str, TargetInputs, Vec<&str>)> = self
            .targets
            .into_iter()
            .map(|(label, t)| {
                let unread: Vec<&str> = t
                    .declared
                    .iter()
                    .filter(|(_, read)| !**read)
                    .map(|(p, _)| *p)
                    .collect();
                (label, t, unread)
            })
            .filter(|(_, t, unread)| !unread.is_empty() && !t.incomplete)
            .collect();
        rows.sort_by(|a, b| b.2.len().cmp(&a.2.len()).then_with(|| a.0.cmp(b.0)));
        rows.into_iter()
            .map(|(label, t, unread)| {
                json!({
                    "label": label,
                    "declared": t.declared.len(),
                    "unread": unread.len(),
                    "inputs": unread,
                })
            })
            .collect()
    }
}

/// Did the spawn open the input at `rel` (relative to the execroot)? It may
/// have opened it through its own execroot, the main execroot the sandbox
/// links into, or the file the links end at; a directory input counts when
/// anything below it was opened. `main`: the spawn's [`main_execroot`] and
/// the input's real path through it (the caller remembers those: every
/// spawn of a build asks for the same ones).
fn was_read(
    rel: &str,
    spawn: &Spawn,
    (main, main_real): (Option<&Path>, Option<&Path>),
    opened: &Opened,
    real_dirs: &mut RealDirs,
) -> bool {
    let contains = |p: &Path| opened.paths.contains(path_slice(p));
    // The real path through the main execroot first: the sandbox link most
    // often resolves to the same file, and it is already resolved.
    if main_real.is_some_and(contains) {
        return true;
    }
    let rel = rel.trim_start_matches("./");
    let mut candidates: Vec<PathBuf> = vec![spawn.execroot.join(rel)];
    if let Some(main) = main {
        candidates.push(main.join(rel));
    }
    if candidates.iter().any(|c| contains(c)) {
        return true;
    }
    let mut reals: Vec<PathBuf> = main_real.map(Path::to_path_buf).into_iter().collect();
    if let Some(real) = real_dirs.canonicalize(&candidates[0]) {
        if contains(&real) {
            return true;
        }
        reals.push(real);
    }
    // Not opened by any of its names: a directory input read below.
    candidates
        .iter()
        .chain(&reals)
        .any(|p| opened.has_below(path_slice(p)))
}

/// `<output_base>/execroot/<ws>` for a spawn in
/// `<output_base>/sandbox/<strategy>/<id>/execroot/<ws>`.
fn main_execroot(spawn: &Spawn) -> Option<PathBuf> {
    let dir = spawn.sandbox_dir.as_deref()?;
    let inside = spawn.execroot.strip_prefix(dir).ok()?;
    let output_base = dir.parent()?.parent()?.parent()?;
    Some(output_base.join(inside))
}

fn path_slice(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

/// For tests and callers holding a path.
pub fn path_bytes(p: &Path) -> Vec<u8> {
    p.as_os_str().as_bytes().to_vec()
}

/// The stderr line for the section's persistent workers (empty: none).
fn worker_line(section: &Value) -> String {
    let Some(workers) = section["workers"].as_array().filter(|w| !w.is_empty()) else {
        return String::new();
    };
    let served: usize = workers
        .iter()
        .map(|w| w["served"].as_array().map_or(0, Vec::len))
        .sum();
    format!(
        "monitor: {} persistent worker(s) served {served} spawn(s); {} spawn(s) not attributable to one action\n",
        workers.len(),
        section["worker_spawns_unattributable"]
            .as_u64()
            .unwrap_or(0)
    )
}

/// The stderr lines for a `bazel` section: spawns by isolation and by
/// declaration source, and the targets with unread inputs (largest first,
/// at most 10).
pub fn summary_lines(section: &Value) -> String {
    let counts = |key: &str| -> String {
        section[key]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let spawns = section["spawns"].as_array().map_or(0, Vec::len);
    let mut out = format!(
        "monitor: {spawns} Bazel spawn(s) seen; isolation: {}; declared by: {}\n",
        counts("isolation"),
        counts("declared_by")
    );
    out.push_str(&worker_line(section));
    let unseen: u64 = section["unseen_spawns"]
        .as_object()
        .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
    if unseen > 0 {
        out.push_str(&format!(
            "monitor: WARNING: {unseen} spawn(s) Bazel ran ({}) were never seen starting ({}): not monitored\n",
            section["label_source"].as_str().unwrap_or("its record"),
            counts("unseen_spawns")
        ));
    }
    let working_tree = section["declared_by"]["working_tree"].as_u64().unwrap_or(0);
    if section["label_source"] == "trace_profile" && working_tree > 0 {
        out.push_str(&format!(
            "monitor: {working_tree} spawn(s) ran without a sandbox tree and were judged against the tree \
             they worked in: with label_source = \"trace_profile\" no execution log declares their inputs\n"
        ));
    }
    let unread = section["unread_inputs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if !unread.is_empty() {
        out.push_str(&format!(
            "monitor: {} target(s) declared inputs they never opened:\n",
            unread.len()
        ));
        for t in unread.iter().take(10) {
            out.push_str(&format!(
                "  {}: {} of {} declared input(s) unread\n",
                t["label"].as_str().unwrap_or("?"),
                t["unread"],
                t["declared"]
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bazel::{execlog::SpawnEntry, sandbox::parse_launch};

    #[test]
    fn unread_inputs_per_target_largest_first() {
        let sb = Path::new("/ob/sandbox/linux-sandbox/4/execroot/ws");
        let a = parse_launch(b"linux-sandbox\0--\0cmd-a", sb);
        let b = parse_launch(b"process-wrapper\0cmd-b", Path::new("/ob/execroot/ws"));
        let log = ExecLog::new(vec![
            SpawnEntry {
                label: Some("//:a".into()),
                command_args: vec!["cmd-a".into()],
                inputs: vec!["x".into(), "y".into(), "z".into(), "dir".into()],
                ..Default::default()
            },
            SpawnEntry {
                label: Some("//:b".into()),
                command_args: vec!["cmd-b".into()],
                inputs: vec!["x".into(), "y".into()],
                runner: Some("local".into()),
                ..Default::default()
            },
        ]);
        let mut book = SpawnBook::default();
        book.launched(1, "linux-sandbox-1".into(), a);
        book.launched(2, "process-wrapper-2".into(), b);
        book.declared(1, DeclaredBy::SandboxTree, 0);
        book.declared(2, DeclaredBy::ExecutionLog, 3);
        // Through the sandbox, through the main execroot, inside a directory.
        book.opened("linux-sandbox-1", &path_bytes(&sb.join("x")));
        book.opened("linux-sandbox-1", b"/ob/execroot/ws/y");
        book.opened("linux-sandbox-1", &path_bytes(&sb.join("dir/sub/f")));
        book.opened("process-wrapper-2", b"/ob/execroot/ws/x");
        book.opened("nobody", b"/ob/execroot/ws/y");
        let s = book.section(BazelRecord::Log(Some(&log)));
        let unread = s["unread_inputs"].as_array().unwrap();
        assert_eq!(unread.len(), 2);
        assert_eq!(unread[0]["label"], "//:a");
        assert_eq!(unread[0]["unread"], 1);
        assert_eq!(unread[0]["inputs"], json!(["z"]));
        assert_eq!(unread[0]["declared"], 4);
        assert_eq!(unread[1]["label"], "//:b");
        assert_eq!(unread[1]["inputs"], json!(["y"]));
        let spawns = s["spawns"].as_array().unwrap();
        assert_eq!(spawns[0]["isolation"], "linux-sandbox");
        assert_eq!(spawns[0]["declared_by"], "sandbox_tree");
        assert_eq!(spawns[1]["isolation"], "none");
        assert_eq!(spawns[1]["declared_by"], "execution_log");
        assert_eq!(spawns[1]["runner"], "local");
        assert_eq!(spawns[1]["events_dropped"], 3);
        assert_eq!(s["isolation"]["none"], 1);
        assert_eq!(s["unseen_spawns"], json!({}));
        let mut more = log.entries.clone();
        more.push(SpawnEntry {
            command_args: vec!["cmd-c".into()],
            runner: Some("local".into()),
            ..Default::default()
        });
        more.push(SpawnEntry {
            command_args: vec!["cmd-d".into()],
            runner: Some("remote cache hit".into()),
            cache_hit: true,
            ..Default::default()
        });
        let s = book.section(BazelRecord::Log(Some(&ExecLog::new(more))));
        assert_eq!(s["unseen_spawns"], json!({"local": 1}));
        assert_eq!(s["declared_by"]["sandbox_tree"], 1);
    }

    /// A directory counts as read exactly when something below it was
    /// opened (the prefix set this replaced, computed here as the oracle):
    /// neighbours that share a prefix (`dir-x`, `dir.x`, `di`) do not count.
    #[test]
    fn a_directory_is_read_when_a_path_below_it_was_opened() {
        let opened: HashSet<Vec<u8>> = [
            &b"/ob/ws/dir/sub/f"[..],
            b"/ob/ws/dir-x",
            b"/ob/ws/dir.x/g",
            b"/ob/ws/a\xff/b",
            b"/ob/ws/a",
            b"//twice",
        ]
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
        let oracle: HashSet<&[u8]> = opened
            .iter()
            .flat_map(|p| (1..p.len()).filter(|&i| p[i] == b'/').map(move |i| &p[..i]))
            .collect();
        let o = Opened::of(&opened);
        let asked: [&[u8]; 16] = [
            b"/ob/ws/dir",
            b"/ob/ws/dir/sub",
            b"/ob/ws/dir/sub/f",
            b"/ob/ws/dir/su",
            b"/ob/ws/di",
            b"/ob/ws/dir-x",
            b"/ob/ws/dir.x",
            b"/ob/ws/a",
            b"/ob/ws/a\xff",
            b"/ob/ws/b",
            b"/ob",
            b"/",
            b"",
            b"/zzz",
            b"/ob/ws/dir/",
            b"/ob/ws/dir/sub/f/deeper",
        ];
        for path in asked {
            let expected = opened.contains(path) || oracle.contains(path);
            let has = o.paths.contains(path) || o.has_below(path);
            assert_eq!(has, expected, "{}", String::from_utf8_lossy(path));
        }
        assert!(
            o.has_below(b"/ob/ws/dir") && !o.has_below(b"/ob/ws/di"),
            "controls"
        );
    }

    #[test]
    fn a_spawn_that_opened_too_much_gives_no_unread_list() {
        let mut book = SpawnBook::default();
        let s = parse_launch(b"process-wrapper\0c", Path::new("/ob/execroot/ws"));
        book.launched(1, "p-1".into(), s);
        for i in 0..=MAX_OPENED_PER_SPAWN {
            book.opened("p-1", format!("/f/{i}").as_bytes());
        }
        let log = ExecLog::new(vec![SpawnEntry {
            label: Some("//:c".into()),
            command_args: vec!["c".into()],
            inputs: vec!["never".into()],
            ..Default::default()
        }]);
        assert!(book.get(1).unwrap().opened_incomplete);
        assert_eq!(
            book.section(BazelRecord::Log(Some(&log)))["unread_inputs"],
            json!([])
        );
    }

    /// With the trace profile no inputs are listed: opened paths are not
    /// kept, written ones (the label join) still are; with the default
    /// (the execution log) both are.
    #[test]
    fn opened_paths_are_kept_only_for_the_unread_check() {
        let spawn = || parse_launch(b"process-wrapper\0c", Path::new("/ob/execroot/ws"));
        let mut book = SpawnBook::default();
        book.keep_opened(false);
        book.launched(1, "p-1".into(), spawn());
        book.opened("p-1", b"/ob/execroot/ws/in");
        book.wrote("p-1", b"/ob/execroot/ws/bazel-out/out");
        let r = book.get(1).unwrap();
        assert!(r.opened.is_empty());
        assert_eq!(
            r.written,
            ["bazel-out/out".to_owned()].into_iter().collect()
        );
        let mut book = SpawnBook::default();
        book.launched(1, "p-1".into(), spawn());
        book.opened("p-1", b"/ob/execroot/ws/in");
        assert!(
            book.get(1)
                .unwrap()
                .opened
                .contains(&b"/ob/execroot/ws/in"[..])
        );
    }
}
