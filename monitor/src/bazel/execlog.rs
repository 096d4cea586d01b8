//! Bazel's execution log, read to put target labels on the sandboxed
//! spawns the kernel shows us: `--execution_log_binary_file` (what `monitor
//! exec` adds; see `binary.rs`) or `--execution_log_json_file`.
//!
//! The log is a *sequence* of JSON objects (not an array), each the proto3
//! JSON rendering of `tools.protos.SpawnExec` (src/main/protobuf/spawn.proto
//! in Bazel): Bazel 4.x pretty-prints them back to back (`}{`), newer
//! versions may write one per line; both are read the same way. Field names
//! are lowerCamelCase (`commandArgs`, `listedOutputs`, ...); the original
//! snake_case names are accepted too, as any proto3 JSON parser must.
//!
//! No log records a pid or a sandbox id, so a spawn is joined to its entry
//! on the command line: the launcher's args after `--` (see
//! [`command_after_separator`]) equal the entry's `commandArgs`; when several
//! entries share a command line, an output path breaks the tie.
//!
//! Only `targetLabel` (Bazel 7+) names the target outright; Bazel 4.x logs
//! (`progressMessage`, dropped in 7) are read for a label instead
//! ([`label_from_progress`]).
use std::{
    collections::HashMap,
    fmt,
    hash::{DefaultHasher, Hash as _, Hasher as _},
    path::{Path, PathBuf},
    sync::OnceLock,
};

use serde::Deserialize;

mod binary;

/// Which flag wrote the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `--execution_log_json_file`.
    Json,
    /// `--execution_log_binary_file`.
    Binary,
}

/// An execution log Bazel writes: where, and in which format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecLogFile {
    pub path: PathBuf,
    pub format: LogFormat,
}

/// One spawn of the log, reduced to what joining and labelling need.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SpawnEntry {
    /// `targetLabel` when logged (Bazel 7+), else the label found in
    /// `progressMessage`.
    pub label: Option<String>,
    pub mnemonic: Option<String>,
    pub command_args: Vec<String>,
    /// Input paths as logged, relative to the execroot.
    pub inputs: Vec<String>,
    /// `listedOutputs`, then any `actualOutputs` path not already listed;
    /// relative to the execroot.
    pub outputs: Vec<String>,
    pub progress_message: Option<String>,
    /// E.g. "linux-sandbox", "processwrapper-sandbox", "remote cache hit".
    pub runner: Option<String>,
    /// The result came from a cache (`remoteCacheHit`, `cacheHit`): nothing ran.
    pub cache_hit: bool,
}

impl SpawnEntry {
    /// The spawn ran locally under a sandbox launcher the monitor follows.
    pub fn ran_sandboxed(&self) -> bool {
        !self.cache_hit
            && matches!(
                self.runner.as_deref(),
                Some("linux-sandbox" | "processwrapper-sandbox")
            )
    }
}

/// A parsed execution log. Build one with [`ExecLog::parse_json`],
/// [`ExecLog::load_json`] or [`ExecLog::new`] (the lookup index is a private
/// field, so a struct literal needs `..Default::default()`).
#[derive(Clone, Default)]
pub struct ExecLog {
    pub entries: Vec<SpawnEntry>,
    /// Built on the first lookup. Entries appended afterwards make it stale,
    /// which lookups notice (by the entry count) and answer by a scan.
    index: OnceLock<CommandIndex>,
}

#[derive(Clone)]
struct CommandIndex {
    /// How many entries the index covers.
    entries: usize,
    /// Hash of the command args → indices of entries, in log order. The
    /// args are compared on lookup, so collisions cost nothing but time.
    by_command: HashMap<u64, Vec<usize>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecLogError {
    #[error("cannot read execution log {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `offset` is the byte offset where the first entry that could not be
    /// read begins: everything before it was parsed.
    #[error("malformed execution log entry at byte offset {offset}: {message}")]
    Malformed { offset: usize, message: String },
}

impl fmt::Debug for ExecLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecLog")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl ExecLog {
    pub fn new(entries: Vec<SpawnEntry>) -> ExecLog {
        ExecLog {
            entries,
            index: OnceLock::new(),
        }
    }

    /// Parses a JSON execution log. A malformed (or truncated) entry ends
    /// parsing: the entries before it are returned together with the error.
    pub fn parse_json(text: &str) -> (ExecLog, Option<ExecLogError>) {
        parse_bytes(text.as_bytes())
    }

    /// Reads and parses a JSON execution log. `Err` only when the file
    /// cannot be read; a malformed entry is reported beside the entries
    /// parsed before it, as by [`ExecLog::parse_json`].
    pub fn load_json(path: &Path) -> Result<(ExecLog, Option<ExecLogError>), ExecLogError> {
        Ok(parse_bytes(&read_log(path)?))
    }

    /// Reads and parses a log in `format`, as [`ExecLog::load_json`].
    pub fn load(
        path: &Path,
        format: LogFormat,
    ) -> Result<(ExecLog, Option<ExecLogError>), ExecLogError> {
        match format {
            LogFormat::Json => Self::load_json(path),
            LogFormat::Binary => Ok(binary::parse(&read_log(path)?)),
        }
    }

    /// The entry whose command args equal `args` (the launcher's argv after
    /// the first "--"); if several entries have the same args, prefer the one
    /// whose outputs include `output_hint` (a path relative to the execroot)
    /// when given; None if no entry matches.
    ///
    /// An output that is a directory (a tree artifact) also matches a hint
    /// inside it, but an exact match wins. Among equally good candidates,
    /// and when the hint matches none of them, the first in the log wins.
    pub fn find_by_command(
        &self,
        args: &[String],
        output_hint: Option<&str>,
    ) -> Option<&SpawnEntry> {
        let index = self
            .index
            .get_or_init(|| CommandIndex::build(&self.entries));
        let mut candidates: Vec<&SpawnEntry> = if index.entries == self.entries.len() {
            index
                .by_command
                .get(&hash_args(args))
                .into_iter()
                .flatten()
                .filter_map(|&i| self.entries.get(i))
                .filter(|e| e.command_args == args)
                .collect()
        } else {
            self.entries
                .iter()
                .filter(|e| e.command_args == args)
                .collect()
        };
        if candidates.len() <= 1 {
            return candidates.pop();
        }
        let Some(hint) = output_hint.map(normalize_rel).filter(|h| !h.is_empty()) else {
            return candidates.first().copied();
        };
        let mut best = candidates[0];
        let mut best_score = output_score(best, hint);
        for &candidate in &candidates[1..] {
            let score = output_score(candidate, hint);
            if score > best_score {
                best = candidate;
                best_score = score;
            }
        }
        Some(best)
    }
}

impl CommandIndex {
    fn build(entries: &[SpawnEntry]) -> CommandIndex {
        let mut by_command: HashMap<u64, Vec<usize>> = HashMap::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            by_command
                .entry(hash_args(&entry.command_args))
                .or_default()
                .push(i);
        }
        CommandIndex {
            entries: entries.len(),
            by_command,
        }
    }
}

/// The whole log file, whatever its format.
fn read_log(path: &Path) -> Result<Vec<u8>, ExecLogError> {
    std::fs::read(path).map_err(|source| ExecLogError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn hash_args(args: &[String]) -> u64 {
    let mut hasher = DefaultHasher::new();
    args.hash(&mut hasher);
    hasher.finish()
}

/// 2: an output is the hint; 1: the hint lies inside an output (a tree
/// artifact); 0: neither.
fn output_score(entry: &SpawnEntry, hint: &str) -> u8 {
    let mut score = 0;
    for output in &entry.outputs {
        let output = normalize_rel(output);
        if output == hint {
            return 2;
        }
        if !output.is_empty()
            && hint
                .strip_prefix(output)
                .is_some_and(|rest| rest.starts_with('/'))
        {
            score = 1;
        }
    }
    score
}

fn normalize_rel(path: &str) -> &str {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    path.trim_end_matches('/')
}

/// Splits a sandbox launcher's argv (argv[0] included) into the launcher's
/// own options and the spawned command (the args after the first "--").
/// Returns None when there is no "--".
///
/// `linux-sandbox -W /sb/execroot/ws -- /bin/bash -c CMD` and
/// `process-wrapper --timeout=0 --kill_delay=15 -- /bin/bash -c CMD` both
/// give `["/bin/bash", "-c", CMD]`. argv[0] itself is never taken for the
/// separator.
pub fn command_after_separator(argv: &[String]) -> Option<&[String]> {
    let options = argv.get(1..)?;
    let at = options.iter().position(|arg| arg == "--")?;
    Some(&options[at + 1..])
}

/// The first word of a progress message that looks like a label: starts with
/// "//" or "@" (then also holds "//"), with at most one ':' — e.g.
/// "Executing genrule //pkg:target" → "//pkg:target",
/// "Linking //x:y; 3 actions" → "//x:y". Quotes and brackets around it and
/// punctuation after it (';', ',', ':', '.', ...) are not part of it. None
/// when no word looks like a label ("Compiling src/x.cc").
pub fn label_from_progress(message: &str) -> Option<String> {
    message
        .split_whitespace()
        .find_map(label_in_word)
        .map(str::to_owned)
}

fn label_in_word(word: &str) -> Option<&str> {
    const OPENING: &[char] = &['(', '[', '{', '<', '\'', '"', '`'];
    const TRAILING: &[char] = &[
        ';', ',', ':', '.', '!', '?', ')', ']', '}', '>', '\'', '"', '`',
    ];
    let word = word.trim_start_matches(OPENING).trim_end_matches(TRAILING);
    let (repo, rest) = if word.starts_with("//") {
        ("", word)
    } else if word.starts_with('@') {
        let at = word.find("//")?;
        word.split_at(at)
    } else {
        return None;
    };
    let repo_name = repo.trim_start_matches('@');
    if repo.len() - repo_name.len() > 2 || !repo_name.chars().all(is_label_char) {
        return None;
    }
    let body = &rest[2..];
    let (package, name) = match body.split_once(':') {
        Some((package, name)) => (package, Some(name)),
        None => (body, None),
    };
    if !package.chars().all(is_label_char) {
        return None;
    }
    match name {
        // "//pkg" is short for "//pkg:pkg"; "//" alone names nothing.
        None if package.is_empty() => None,
        Some(name) if name.is_empty() || name.contains(':') => None,
        _ => Some(word),
    }
}

/// Characters of repository names and package paths, generously: anything
/// but whitespace, ':' and the brackets and quotes trimmed around labels.
fn is_label_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ':' | '(' | ')' | '[' | ']' | '"' | '\'' | '`')
}

/// `SpawnExec` as logged; only the fields we use, everything else is
/// skipped. proto3 JSON may write `null` for a default value, hence the
/// `Option`s.
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawSpawnExec {
    #[serde(alias = "command_args")]
    command_args: Option<Vec<String>>,
    inputs: Option<Vec<RawFile>>,
    #[serde(alias = "listed_outputs")]
    listed_outputs: Option<Vec<String>>,
    #[serde(alias = "actual_outputs")]
    actual_outputs: Option<Vec<RawFile>>,
    mnemonic: Option<String>,
    #[serde(alias = "progress_message")]
    progress_message: Option<String>,
    #[serde(alias = "target_label")]
    target_label: Option<String>,
    runner: Option<String>,
    #[serde(alias = "remote_cache_hit")]
    remote_cache_hit: Option<bool>,
    #[serde(alias = "cache_hit")]
    cache_hit: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawFile {
    path: Option<String>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl From<RawSpawnExec> for SpawnEntry {
    fn from(raw: RawSpawnExec) -> SpawnEntry {
        let progress_message = non_empty(raw.progress_message);
        let label = non_empty(raw.target_label)
            .or_else(|| progress_message.as_deref().and_then(label_from_progress));
        let file_paths = |files: Option<Vec<RawFile>>| {
            files
                .unwrap_or_default()
                .into_iter()
                .filter_map(|f| non_empty(f.path))
        };
        let mut outputs = raw.listed_outputs.unwrap_or_default();
        for path in file_paths(raw.actual_outputs) {
            if !outputs.contains(&path) {
                outputs.push(path);
            }
        }
        SpawnEntry {
            label,
            mnemonic: non_empty(raw.mnemonic),
            command_args: raw.command_args.unwrap_or_default(),
            inputs: file_paths(raw.inputs).collect(),
            outputs,
            progress_message,
            runner: non_empty(raw.runner),
            cache_hit: raw.remote_cache_hit.unwrap_or(false) || raw.cache_hit.unwrap_or(false),
        }
    }
}

fn parse_bytes(bytes: &[u8]) -> (ExecLog, Option<ExecLogError>) {
    let mut entries = Vec::new();
    let mut stream = serde_json::Deserializer::from_slice(bytes).into_iter::<RawSpawnExec>();
    loop {
        let start = stream.byte_offset();
        match stream.next() {
            None => return (ExecLog::new(entries), None),
            Some(Ok(raw)) => entries.push(SpawnEntry::from(raw)),
            Some(Err(e)) => {
                // JSON's whitespace only: `is_ascii_whitespace` also skips
                // form feed, which is part of the malformed entry.
                let offset = start
                    + bytes[start..]
                        .iter()
                        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
                        .count();
                let what = if e.is_eof() { "truncated: " } else { "" };
                let message = format!("entry {} {what}{e}", entries.len() + 1);
                log::debug!("execution log: stopped at byte {offset}: {message}");
                return (
                    ExecLog::new(entries),
                    Some(ExecLogError::Malformed { offset, message }),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    const SETUP: &str = "source external/bazel_tools/tools/genrule/genrule-setup.sh; ";

    /// Four spawns as Bazel writes them: pretty-printed objects back to back.
    /// The first two are Bazel 4.x genrules (label only in
    /// progressMessage), the third a Bazel 7-style entry with targetLabel
    /// and no progressMessage, the fourth has the third's command line but
    /// another output.
    const SAMPLE: &str = r#"{
  "commandArgs": ["/bin/bash", "-c", "source external/bazel_tools/tools/genrule/genrule-setup.sh; echo hi \u003e bazel-out/k8-fastbuild/bin/pkg/hello.txt"],
  "environmentVariables": [{
    "name": "PATH",
    "value": "/usr/local/bin:/usr/bin:/bin"
  }],
  "platform": {
    "properties": []
  },
  "inputs": [{
    "path": "external/bazel_tools/tools/genrule/genrule-setup.sh",
    "digest": {
      "hash": "bed43d0bb00449e82a04fbb6535f490fa5d7ed140b1c3ad2d463d5c295e9e836",
      "sizeBytes": "858",
      "hashFunctionName": "SHA-256"
    }
  }],
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/pkg/hello.txt"],
  "remotable": true,
  "cacheable": true,
  "timeoutMillis": "0",
  "progressMessage": "Executing genrule //pkg:hello",
  "mnemonic": "Genrule",
  "actualOutputs": [{
    "path": "bazel-out/k8-fastbuild/bin/pkg/hello.txt",
    "digest": {
      "hash": "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4",
      "sizeBytes": "3",
      "hashFunctionName": "SHA-256"
    }
  }],
  "runner": "linux-sandbox",
  "remoteCacheHit": false,
  "status": "",
  "exitCode": 0,
  "remoteCacheable": true
}{
  "commandArgs": ["/bin/bash", "-c", "source external/bazel_tools/tools/genrule/genrule-setup.sh; cat bazel-out/k8-fastbuild/bin/pkg/hello.txt \u003e bazel-out/k8-fastbuild/bin/external/ext/gen/world.txt"],
  "environmentVariables": [{
    "name": "PATH",
    "value": "/usr/local/bin:/usr/bin:/bin"
  }],
  "platform": {
    "properties": []
  },
  "inputs": [{
    "path": "bazel-out/k8-fastbuild/bin/pkg/hello.txt",
    "digest": {
      "hash": "98ea6e4f216f2fb4b69fff9b3a44842c38686ca685f3f55dc48c5d3fb1107be4",
      "sizeBytes": "3",
      "hashFunctionName": "SHA-256"
    }
  }, {
    "path": "external/bazel_tools/tools/genrule/genrule-setup.sh",
    "digest": {
      "hash": "bed43d0bb00449e82a04fbb6535f490fa5d7ed140b1c3ad2d463d5c295e9e836",
      "sizeBytes": "858",
      "hashFunctionName": "SHA-256"
    }
  }],
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/external/ext/gen/world.txt"],
  "remotable": true,
  "cacheable": true,
  "timeoutMillis": "0",
  "progressMessage": "Executing genrule @ext//gen:world",
  "mnemonic": "Genrule",
  "actualOutputs": [],
  "runner": "processwrapper-sandbox",
  "remoteCacheHit": false,
  "status": "",
  "exitCode": 0,
  "remoteCacheable": true
}
{
  "commandArgs": ["bazel-out/k8-opt-exec-2B5CBBC6/bin/tools/gen", "--out", "bazel-out/k8-fastbuild/bin/app/gen_a.h"],
  "environmentVariables": [],
  "inputs": [{
    "path": "bazel-out/k8-opt-exec-2B5CBBC6/bin/tools/gen",
    "digest": {
      "hash": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
      "sizeBytes": "1024",
      "hashFunctionName": "SHA-256"
    },
    "isTool": true
  }],
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/app/gen_a.h"],
  "remotable": true,
  "cacheable": true,
  "mnemonic": "GenHeader",
  "actualOutputs": [{
    "path": "bazel-out/k8-fastbuild/bin/app/gen_a.h",
    "digest": {
      "hash": "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210",
      "sizeBytes": "12",
      "hashFunctionName": "SHA-256"
    }
  }],
  "runner": "linux-sandbox",
  "cacheHit": false,
  "exitCode": 0,
  "remoteCacheable": true,
  "targetLabel": "//app:gen_a",
  "metrics": {
    "totalTime": "0.012s",
    "executionWallTime": "0.010s",
    "inputFiles": "1"
  }
}

{
  "commandArgs": ["bazel-out/k8-opt-exec-2B5CBBC6/bin/tools/gen", "--out", "bazel-out/k8-fastbuild/bin/app/gen_a.h"],
  "listedOutputs": ["bazel-out/k8-fastbuild/bin/other/gen_a.h"],
  "mnemonic": "GenHeader",
  "progressMessage": "Generating header for //other:gen_a",
  "runner": "linux-sandbox"
}
"#;

    fn hello_cmd() -> Vec<String> {
        strings(&[
            "/bin/bash",
            "-c",
            &format!("{SETUP}echo hi > bazel-out/k8-fastbuild/bin/pkg/hello.txt"),
        ])
    }

    fn gen_cmd() -> Vec<String> {
        strings(&[
            "bazel-out/k8-opt-exec-2B5CBBC6/bin/tools/gen",
            "--out",
            "bazel-out/k8-fastbuild/bin/app/gen_a.h",
        ])
    }

    #[test]
    fn parses_pretty_printed_sequence() {
        let (log, err) = ExecLog::parse_json(SAMPLE);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(log.entries.len(), 4);

        let hello = &log.entries[0];
        assert_eq!(hello.label.as_deref(), Some("//pkg:hello"));
        assert_eq!(hello.mnemonic.as_deref(), Some("Genrule"));
        assert_eq!(hello.command_args, hello_cmd());
        assert_eq!(
            hello.inputs,
            strings(&["external/bazel_tools/tools/genrule/genrule-setup.sh"])
        );
        // Listed and actual outputs are the same path: kept once.
        assert_eq!(
            hello.outputs,
            strings(&["bazel-out/k8-fastbuild/bin/pkg/hello.txt"])
        );
        assert_eq!(
            hello.progress_message.as_deref(),
            Some("Executing genrule //pkg:hello")
        );
        assert_eq!(hello.runner.as_deref(), Some("linux-sandbox"));

        let world = &log.entries[1];
        assert_eq!(world.label.as_deref(), Some("@ext//gen:world"));
        assert_eq!(world.inputs.len(), 2);
        assert_eq!(world.runner.as_deref(), Some("processwrapper-sandbox"));

        let gen_a = &log.entries[2];
        assert_eq!(gen_a.label.as_deref(), Some("//app:gen_a"));
        assert_eq!(gen_a.progress_message, None);
        assert_eq!(gen_a.mnemonic.as_deref(), Some("GenHeader"));
        assert_eq!(gen_a.command_args, gen_cmd());

        let other = &log.entries[3];
        assert_eq!(other.label.as_deref(), Some("//other:gen_a"));
        assert_eq!(
            other.outputs,
            strings(&["bazel-out/k8-fastbuild/bin/other/gen_a.h"])
        );
        assert!(other.inputs.is_empty());
    }

    #[test]
    fn finds_by_command() {
        let (log, _) = ExecLog::parse_json(SAMPLE);

        // Exact, unique command line; the hint does not matter.
        let hello = log.find_by_command(&hello_cmd(), None).unwrap();
        assert_eq!(hello.label.as_deref(), Some("//pkg:hello"));
        let hello = log
            .find_by_command(&hello_cmd(), Some("no/such/file"))
            .unwrap();
        assert_eq!(hello.label.as_deref(), Some("//pkg:hello"));

        // Same command line twice: the output decides.
        let hit = log
            .find_by_command(&gen_cmd(), Some("bazel-out/k8-fastbuild/bin/other/gen_a.h"))
            .unwrap();
        assert_eq!(hit.label.as_deref(), Some("//other:gen_a"));
        let hit = log
            .find_by_command(&gen_cmd(), Some("./bazel-out/k8-fastbuild/bin/app/gen_a.h"))
            .unwrap();
        assert_eq!(hit.label.as_deref(), Some("//app:gen_a"));
        // No hint, or one that matches neither: the first in the log.
        let hit = log.find_by_command(&gen_cmd(), None).unwrap();
        assert_eq!(hit.label.as_deref(), Some("//app:gen_a"));
        let hit = log.find_by_command(&gen_cmd(), Some("elsewhere")).unwrap();
        assert_eq!(hit.label.as_deref(), Some("//app:gen_a"));

        // Absent: another command, a prefix of one, no args at all.
        assert!(
            log.find_by_command(&strings(&["/bin/bash", "-c", "true"]), None)
                .is_none()
        );
        assert!(log.find_by_command(&hello_cmd()[..2], None).is_none());
        assert!(log.find_by_command(&[], None).is_none());
    }

    #[test]
    fn output_directory_matches_a_hint_inside_it() {
        let cmd = strings(&["tool", "x"]);
        let log = ExecLog::new(vec![
            SpawnEntry {
                label: Some("//a:first".into()),
                command_args: cmd.clone(),
                outputs: strings(&["bazel-out/bin/a/first.txt"]),
                ..Default::default()
            },
            SpawnEntry {
                label: Some("//a:tree".into()),
                command_args: cmd.clone(),
                outputs: strings(&["bazel-out/bin/a/tree"]),
                ..Default::default()
            },
            SpawnEntry {
                label: Some("//a:exact".into()),
                command_args: cmd.clone(),
                outputs: strings(&["bazel-out/bin/a/tree/exact.txt"]),
                ..Default::default()
            },
        ]);
        let find = |hint| {
            log.find_by_command(&cmd, Some(hint))
                .unwrap()
                .label
                .as_deref()
        };
        assert_eq!(find("bazel-out/bin/a/tree/sub/f.o"), Some("//a:tree"));
        assert_eq!(find("bazel-out/bin/a/tree/exact.txt"), Some("//a:exact"));
        // A sibling whose name merely starts like the directory.
        assert_eq!(find("bazel-out/bin/a/treehouse"), Some("//a:first"));
    }

    #[test]
    fn entries_added_after_a_lookup_are_found() {
        let mut log = ExecLog::new(vec![SpawnEntry {
            command_args: strings(&["a"]),
            ..Default::default()
        }]);
        assert!(log.find_by_command(&strings(&["a"]), None).is_some());
        log.entries.push(SpawnEntry {
            label: Some("//b:b".into()),
            command_args: strings(&["b"]),
            ..Default::default()
        });
        let b = log.find_by_command(&strings(&["b"]), None).unwrap();
        assert_eq!(b.label.as_deref(), Some("//b:b"));
    }

    #[test]
    fn many_entries_are_indexed() {
        let entries: Vec<SpawnEntry> = (0..5000)
            .map(|i| SpawnEntry {
                label: Some(format!("//p:t{i}")),
                command_args: strings(&["/bin/bash", "-c", &format!("echo {i}")]),
                ..Default::default()
            })
            .collect();
        let log = ExecLog::new(entries);
        for i in (0..5000).step_by(97) {
            let args = strings(&["/bin/bash", "-c", &format!("echo {i}")]);
            let hit = log.find_by_command(&args, None).unwrap();
            assert_eq!(hit.label, Some(format!("//p:t{i}")));
        }
    }

    #[test]
    fn labels_from_progress_messages() {
        let cases: &[(&str, Option<&str>)] = &[
            ("Executing genrule //pkg:target", Some("//pkg:target")),
            ("Executing genrule @r//a/b:c", Some("@r//a/b:c")),
            ("Compiling x.cc", None),
            ("Compiling src/x.cc", None),
            ("Linking //x:y; 3 actions", Some("//x:y")),
            ("Linking //x:y:", Some("//x:y")),
            ("Testing //x:y.", Some("//x:y")),
            (
                "Building foo.jar (from //java/foo:lib)",
                Some("//java/foo:lib"),
            ),
            ("Generating '//q:r', then more", Some("//q:r")),
            ("Compiling @@rules_cc~//cc:lib", Some("@@rules_cc~//cc:lib")),
            ("Executing genrule @ext//:root", Some("@ext//:root")),
            ("Packaging //tools", Some("//tools")),
            ("Fetching https://example.com/x.tar.gz", None),
            ("Ping @someone about //", None),
            ("Odd //a:b:c then //d:e", Some("//d:e")),
            ("", None),
        ];
        for (message, want) in cases {
            assert_eq!(
                label_from_progress(message).as_deref(),
                *want,
                "message {message:?}"
            );
        }
    }

    #[test]
    fn truncated_log_keeps_earlier_entries() {
        // Cut the sample in the middle of the third entry.
        let third = SAMPLE.find("\n{\n").unwrap() + 1;
        let cut = &SAMPLE[..third + 60];
        let (log, err) = ExecLog::parse_json(cut);
        assert_eq!(log.entries.len(), 2);
        assert_eq!(log.entries[1].label.as_deref(), Some("@ext//gen:world"));
        match err {
            Some(ExecLogError::Malformed { offset, message }) => {
                assert_eq!(offset, third, "{message}");
                assert!(message.contains("truncated"), "{message}");
                assert!(message.contains("entry 3"), "{message}");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
        // What was parsed can still be joined.
        assert!(log.find_by_command(&hello_cmd(), None).is_some());
    }

    #[test]
    fn malformed_entry_reports_its_offset() {
        let text = r#"{"commandArgs": ["a"]} {"commandArgs": "not a list"} {"commandArgs": ["b"]}"#;
        let (log, err) = ExecLog::parse_json(text);
        assert_eq!(log.entries.len(), 1);
        let err = err.expect("an error");
        assert!(
            matches!(err, ExecLogError::Malformed { offset: 23, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("byte offset 23"), "{err}");

        let (log, err) = ExecLog::parse_json("garbage");
        assert!(log.entries.is_empty());
        assert!(matches!(
            err,
            Some(ExecLogError::Malformed { offset: 0, .. })
        ));
    }

    #[test]
    fn empty_log_nulls_and_snake_case() {
        let (log, err) = ExecLog::parse_json("  \n");
        assert!(log.entries.is_empty());
        assert!(err.is_none());

        let text = r#"
{"command_args": ["x"], "listed_outputs": null, "inputs": [{"path": ""}, {"digest": {}}],
 "target_label": "", "progress_message": "Writing file //w:f", "mnemonic": "", "runner": null}
{"commandArgs": ["y"], "actualOutputs": [{"path": "out/y"}], "unknownField": {"nested": [1, 2]}}
"#;
        let (log, err) = ExecLog::parse_json(text);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(log.entries.len(), 2);
        let x = &log.entries[0];
        assert_eq!(x.command_args, strings(&["x"]));
        assert_eq!(x.label.as_deref(), Some("//w:f"));
        assert!(x.inputs.is_empty() && x.outputs.is_empty());
        assert_eq!(x.mnemonic, None);
        assert_eq!(x.runner, None);
        assert_eq!(log.entries[1].outputs, strings(&["out/y"]));
        assert_eq!(log.entries[1].label, None);
    }

    #[test]
    fn load_json_reads_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exec.json");
        std::fs::write(&path, SAMPLE).unwrap();
        let (log, err) = ExecLog::load_json(&path).unwrap();
        assert!(err.is_none());
        assert_eq!(log.entries.len(), 4);

        let missing = dir.path().join("missing.json");
        match ExecLog::load_json(&missing) {
            Err(ExecLogError::Io { path, .. }) => assert_eq!(path, missing),
            other => panic!("expected Io, got {other:?}"),
        }
    }

    #[test]
    fn splits_launcher_argv() {
        let cmd = format!("{SETUP}echo hi > bazel-out/k8-fastbuild/bin/pkg/hello.txt");
        let sandbox = strings(&[
            "/root/.cache/bazel/_bazel_root/install/abc/linux-sandbox",
            "-W",
            "/root/.cache/bazel/_bazel_root/4c34/sandbox/linux-sandbox/2/execroot/__main__",
            "-l",
            "/root/.cache/bazel/_bazel_root/4c34/sandbox/linux-sandbox/2/stdout",
            "-w",
            "/root/.cache/bazel/_bazel_root/4c34/sandbox/linux-sandbox/2/execroot/__main__",
            "-N",
            "--",
            "/bin/bash",
            "-c",
            &cmd,
        ]);
        assert_eq!(command_after_separator(&sandbox).unwrap(), &hello_cmd()[..]);

        let wrapper = strings(&[
            "/usr/share/bazel/process-wrapper",
            "--timeout=0",
            "--kill_delay=15",
            "--",
            "/bin/bash",
            "-c",
            &cmd,
        ]);
        assert_eq!(command_after_separator(&wrapper).unwrap(), &hello_cmd()[..]);

        // Only the first "--" separates; later ones belong to the command.
        let nested = strings(&["process-wrapper", "--", "tool", "--", "x"]);
        assert_eq!(
            command_after_separator(&nested).unwrap(),
            &strings(&["tool", "--", "x"])[..]
        );
        let trailing = strings(&["linux-sandbox", "-N", "--"]);
        assert_eq!(command_after_separator(&trailing), Some(&[][..]));

        assert_eq!(
            command_after_separator(&strings(&["/bin/bash", "-c", "x"])),
            None
        );
        assert_eq!(command_after_separator(&strings(&["--"])), None);
        assert_eq!(command_after_separator(&[]), None);

        // The split command joins to its log entry.
        let (log, _) = ExecLog::parse_json(SAMPLE);
        let hit = log
            .find_by_command(command_after_separator(&sandbox).unwrap(), None)
            .unwrap();
        assert_eq!(hit.label.as_deref(), Some("//pkg:hello"));
    }
}
