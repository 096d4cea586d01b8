//! Labels for spawns, read when the build ended: from Bazel's execution
//! log, joined on the spawn's command line (no log records a pid or
//! sandbox id), or from its trace profile, joined on the primary output
//! the spawn wrote.
use std::collections::HashMap;

use crate::bazel::{
    execlog::{ExecLog, ExecLogFile},
    report::SpawnBook,
    trace_profile::TraceProfile,
};

/// What the execution log says about the spawns that raised alerts.
#[derive(Debug, Default)]
pub struct SpawnLabels {
    /// Action id → (label, mnemonic), for the spawns found in the log.
    pub by_action: HashMap<String, (Option<String>, Option<String>)>,
    /// Spawns the log says ran sandboxed.
    pub sandboxed_in_log: usize,
}

/// Looks up each spawn's command line (by action id) in the log `file`;
/// `None` when the log cannot be read at all (logged).
pub fn labels_from_exec_log(
    file: &ExecLogFile,
    spawn_commands: &HashMap<String, Vec<String>>,
) -> Option<SpawnLabels> {
    Some(labels_from_log(&load_log(file)?, spawn_commands))
}

/// Reads the log `file`; a malformed entry keeps the entries before it
/// (warned); `None` when it cannot be read at all (warned).
pub fn load_log(file: &ExecLogFile) -> Option<ExecLog> {
    let path = &file.path;
    match ExecLog::load(path, file.format) {
        Ok((log, None)) => Some(log),
        Ok((log, Some(e))) => {
            log::warn!(
                "execution log {}: {e}; using the {} entries before it",
                path.display(),
                log.entries.len()
            );
            Some(log)
        }
        Err(e) => {
            log::warn!("no labels for spawns: {e}");
            None
        }
    }
}

/// Looks up each spawn's command line (by action id) in `log`.
pub fn labels_from_log(
    log: &ExecLog,
    spawn_commands: &HashMap<String, Vec<String>>,
) -> SpawnLabels {
    let by_action = spawn_commands
        .iter()
        .filter_map(|(id, command)| {
            let entry = log.find_by_command(command, None)?;
            Some((id.clone(), (entry.label.clone(), entry.mnemonic.clone())))
        })
        .collect();
    SpawnLabels {
        by_action,
        sandboxed_in_log: log.entries.iter().filter(|e| e.ran_sandboxed()).count(),
    }
}

/// Labels joined from a trace profile ([`labels_from_trace`]).
#[derive(Debug, Default)]
pub struct TraceLabels {
    /// Action id → its target's label and mnemonic (`None` where the
    /// profile names none: Bazel 4.2.3's never does), as the execution
    /// log's join gives them.
    pub by_action: HashMap<String, (Option<String>, Option<String>)>,
    /// Spawns left unlabelled because what they wrote named the primary
    /// outputs of more than one action, or an output another spawn also
    /// wrote.
    pub ambiguous: usize,
    /// The profile's local subprocess runs (`subprocess.run`).
    pub local_runs: usize,
}

impl TraceLabels {
    pub fn label_of(&self, id: &str) -> Option<&str> {
        self.by_action.get(id)?.0.as_deref()
    }

    pub fn mnemonic_of(&self, id: &str) -> Option<&str> {
        self.by_action.get(id)?.1.as_deref()
    }

    /// Local runs in the profile beyond the `seen` spawns (launchers the
    /// monitor saw start): they ran outside the job or without a launcher.
    pub fn unseen(&self, seen: usize) -> std::collections::BTreeMap<String, u64> {
        let beyond = self.local_runs.saturating_sub(seen) as u64;
        std::collections::BTreeMap::from([("subprocess".to_owned(), beyond)])
    }
}

/// Joins each spawn of `book` to the action of `profile` whose primary
/// output it wrote below its execroot (a tree artifact's: a path below
/// it). Outputs are unique per action, so a spawn is labelled only when
/// all it wrote names one action and no other spawn wrote that output: a
/// hostile spawn that also writes another target's output path in its
/// own sandbox gets no label rather than that target's.
pub fn labels_from_trace(profile: &TraceProfile, book: &SpawnBook) -> TraceLabels {
    let mut claims: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut wrote: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in book.records() {
        let mut outputs: Vec<&str> = r
            .written
            .iter()
            .filter_map(|w| primary_output_of(profile, w))
            .collect();
        outputs.sort_unstable();
        outputs.dedup();
        for out in &outputs {
            claims.entry(out).or_default().push(&r.id);
        }
        wrote.insert(&r.id, outputs);
    }
    let mut labels = TraceLabels {
        local_runs: profile.local_runs,
        ..TraceLabels::default()
    };
    for (id, outputs) in wrote {
        match outputs.as_slice() {
            [] => {}
            [out] if claims[out].len() == 1 => {
                let action = profile.action_writing(out);
                let named = action.map_or((None, None), |a| (a.label.clone(), a.mnemonic.clone()));
                labels.by_action.insert(id.to_owned(), named);
            }
            _ => labels.ambiguous += 1,
        }
    }
    labels
}

/// The primary output in `profile` that the written path `written` is, or
/// lies below (a tree artifact), when its action ran a subprocess (no
/// spawn makes the output of an action Bazel ran in its own process).
fn primary_output_of<'p>(profile: &'p TraceProfile, written: &str) -> Option<&'p str> {
    let mut path = written;
    loop {
        if let Some((out, action)) = profile.by_output.get_key_value(path) {
            return action.spawned.then_some(out.as_str());
        }
        path = &path[..path.rfind('/')?];
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::bazel::sandbox::parse_launch;

    /// Four actions that ran a subprocess each (its `subprocess.run` on the
    /// action's thread, within its span), three more runs elsewhere, and a
    /// file Bazel wrote itself (no run in its span).
    const PROFILE: &str = r#"{"traceEvents":[
      {"cat":"action processing","name":"Executing genrule //:a","out":"bazel-out/bin/a.out","args":{"target":"//:a"},"tid":1,"ts":10,"dur":10},
      {"cat":"general information","name":"subprocess.run","tid":1,"ts":12,"dur":2},
      {"cat":"action processing","name":"Executing genrule //:b","out":"bazel-out/bin/b.out","args":{"target":"//:b"},"tid":2,"ts":10,"dur":10},
      {"cat":"general information","name":"subprocess.run","tid":2,"ts":20,"dur":0},
      {"cat":"action processing","name":"Executing genrule //:c","out":"bazel-out/bin/c.out","args":{"target":"//:c"},"tid":1,"ts":30,"dur":10},
      {"cat":"general information","name":"subprocess.run","tid":1,"ts":31,"dur":2},
      {"cat":"action processing","name":"Generating tree //:t","out":"bazel-out/bin/tree","args":{"target":"//:t"},"tid":3,"ts":10,"dur":10},
      {"cat":"general information","name":"subprocess.run","tid":3,"ts":15,"dur":2},
      {"cat":"action processing","name":"Writing file w.txt","out":"bazel-out/bin/w.txt","args":{"target":"//:w"},"tid":2,"ts":40,"dur":10},
      {"cat":"general information","name":"subprocess.run","tid":1,"ts":45,"dur":1},
      {"cat":"general information","name":"subprocess.run","tid":2,"ts":51,"dur":1},
      {"cat":"general information","name":"subprocess.run","tid":4,"ts":41,"dur":1}
    ]}"#;

    /// A spawn `n` in sandbox `n` that wrote `written` (relative to its
    /// execroot) and read `read`.
    fn spawn(book: &mut SpawnBook, n: u64, written: &[&str], read: &[&str]) -> String {
        let execroot = format!("/ob/sandbox/linux-sandbox/{n}/execroot/ws");
        let launch = parse_launch(
            format!("linux-sandbox\0--\0cmd-{n}").as_bytes(),
            Path::new(&execroot),
        );
        let id = format!("linux-sandbox-{n}");
        book.launched(n, id.clone(), launch);
        for w in written {
            book.opened(&id, format!("{execroot}/{w}").as_bytes());
            book.wrote(&id, format!("{execroot}/{w}").as_bytes());
        }
        for r in read {
            book.opened(&id, format!("{execroot}/{r}").as_bytes());
        }
        id
    }

    #[test]
    fn a_spawn_is_labelled_by_the_primary_output_it_wrote() {
        let (profile, cut) = TraceProfile::read(PROFILE.as_bytes());
        assert!(cut.is_none());
        let mut book = SpawnBook::default();
        // Reads another action's output (its input): no claim on it.
        let a = spawn(
            &mut book,
            1,
            &["bazel-out/bin/a.out", "bazel-out/bin/a.d"],
            &["bazel-out/bin/c.out"],
        );
        // A tree artifact: written below the output directory.
        let t = spawn(&mut book, 2, &["bazel-out/bin/tree/x/y.txt"], &[]);
        // Wrote no primary output (a failed action): no label.
        let none = spawn(&mut book, 3, &["tmp/scratch"], &[]);
        // A written path outside its execroot is not kept.
        book.wrote(
            &a,
            b"/ob/sandbox/linux-sandbox/9/execroot/ws/bazel-out/bin/b.out",
        );
        let labels = labels_from_trace(&profile, &book);
        assert_eq!(labels.label_of(&a), Some("//:a"));
        assert_eq!(labels.label_of(&t), Some("//:t"));
        assert_eq!(labels.label_of(&none), None);
        assert!(!labels.by_action.contains_key(&none));
        assert_eq!(labels.ambiguous, 0);
        assert_eq!(labels.local_runs, 7);
        assert_eq!(
            labels.unseen(book.records().count()),
            [("subprocess".to_owned(), 4)].into()
        );
        assert_eq!(labels.by_action[&a], (Some("//:a".to_owned()), None));
    }

    /// How a hostile spawn would borrow an innocent target's name: write
    /// that target's output path in its own sandbox, beside its own, or
    /// where the innocent spawn also wrote it. Neither gets a label from
    /// the other.
    #[test]
    fn a_spawn_writing_another_targets_output_is_not_given_its_label() {
        let (profile, _) = TraceProfile::read(PROFILE.as_bytes());
        let mut book = SpawnBook::default();
        let evil = spawn(
            &mut book,
            1,
            &["bazel-out/bin/a.out", "bazel-out/bin/b.out"],
            &[],
        );
        let b = spawn(&mut book, 2, &["bazel-out/bin/b.out"], &[]);
        let c_evil = spawn(&mut book, 3, &["bazel-out/bin/c.out"], &[]);
        let c = spawn(&mut book, 4, &["bazel-out/bin/c.out"], &[]);
        let labels = labels_from_trace(&profile, &book);
        for id in [&evil, &b, &c_evil, &c] {
            assert_eq!(labels.label_of(id), None, "{id}");
        }
        assert_eq!(labels.ambiguous, 4);
    }

    /// An action Bazel ran in its own process (a file write) has no spawn:
    /// a spawn that made its output in its own sandbox, alone (an empty
    /// tree artifact of its own leaves nothing else written) or beside its
    /// own output, is not given that target's label.
    #[test]
    fn an_output_no_spawn_makes_lends_no_label() {
        let (profile, _) = TraceProfile::read(PROFILE.as_bytes());
        let mut book = SpawnBook::default();
        let borrower = spawn(&mut book, 1, &["bazel-out/bin/w.txt"], &[]);
        let a = spawn(
            &mut book,
            2,
            &["bazel-out/bin/a.out", "bazel-out/bin/w.txt"],
            &[],
        );
        let labels = labels_from_trace(&profile, &book);
        assert_eq!(labels.label_of(&borrower), None);
        assert_eq!(labels.label_of(&a), Some("//:a"));
        assert_eq!(labels.ambiguous, 0);
    }

    /// A profile that names mnemonics (Bazel's current sources write
    /// `args.mnemonic` on every action event) gives each spawn its action's
    /// mnemonic with its label, as the execution log does; Bazel 4.2.3's
    /// (the `PROFILE` above) gives none.
    #[test]
    fn a_spawn_gets_the_mnemonic_its_action_has_in_the_profile() {
        let text = r#"{"traceEvents":[
          {"cat":"action processing","name":"Executing genrule //:g","out":"bazel-out/bin/g.out","args":{"target":"//:g","mnemonic":"Genrule"},"tid":1,"ts":10,"dur":10},
          {"cat":"general information","name":"subprocess.run","tid":1,"ts":12,"dur":2},
          {"cat":"action processing","name":"Compiling x.cc","out":"bazel-out/bin/x.o","args":{"mnemonic":"CppCompile"},"tid":2,"ts":10,"dur":10},
          {"cat":"general information","name":"subprocess.run","tid":2,"ts":12,"dur":2}
        ]}"#;
        let (profile, cut) = TraceProfile::read(text.as_bytes());
        assert!(cut.is_none(), "{cut:?}");
        let mut book = SpawnBook::default();
        let g = spawn(&mut book, 1, &["bazel-out/bin/g.out"], &[]);
        let x = spawn(&mut book, 2, &["bazel-out/bin/x.o"], &[]);
        let labels = labels_from_trace(&profile, &book);
        assert_eq!(
            labels.by_action[&g],
            (Some("//:g".to_owned()), Some("Genrule".to_owned()))
        );
        // No target label asked for: the mnemonic alone.
        assert_eq!(labels.label_of(&x), None);
        assert_eq!(labels.mnemonic_of(&x), Some("CppCompile"));
        let (old, _) = TraceProfile::read(PROFILE.as_bytes());
        let mut book = SpawnBook::default();
        let a = spawn(&mut book, 1, &["bazel-out/bin/a.out"], &[]);
        assert_eq!(labels_from_trace(&old, &book).mnemonic_of(&a), None);
    }
}
