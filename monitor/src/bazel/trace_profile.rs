//! Bazel's JSON trace profile, read for labels: the cheaper record
//! `[bazel] label_source = "trace_profile"` asks Bazel for instead of the
//! execution log (`profiles/label-sources.md`: about a tenth of a second
//! of the server's CPU per build, against 1.1–1.5 s for the log).
//!
//! With `--experimental_profile_include_target_label` and
//! `--experimental_profile_include_primary_output`, each `action
//! processing` event names its target (`args.target`) and its primary
//! output (`out`, relative to the execroot). Bazel's current sources also
//! write its mnemonic there (`args.mnemonic`, on every action event, no
//! flag needed), which is read when present; Bazel 4.2.3, the only one
//! these machines have, writes none (which release first did was not
//! checked). `subprocess.run` events (a
//! sandboxed spawn) and `local action execution` ones (a spawn of the
//! `local` and `standalone` strategies) count the spawns Bazel ran as
//! local subprocesses. Nothing in the profile
//! names a pid, a sandbox or a command line, so a spawn is joined to its
//! action by that primary output: outputs are unique per action, and the
//! spawn wrote it inside its own execroot (the kernel reported the write).
//! Only actions that ran a subprocess (one of those events on the
//! action's thread within its span) can be a spawn's: the outputs of
//! actions Bazel ran in its own process (a file write, a template
//! expansion) no spawn makes, so a spawn that wrote one there does not
//! get that target's label.
//!
//! The file is read with serde_json as a stream: only action events are
//! kept, so a long build's profile (hundreds of MB) is never held whole,
//! and a profile cut short (Bazel killed while writing) keeps the events
//! before the cut.
use std::{
    collections::HashMap,
    fmt,
    io::{BufReader, Read},
    path::Path,
};

use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use crate::bazel::execlog::label_from_progress;

/// The flags that make Bazel write the profile at a path (the path goes
/// in `--profile=`). The first is spelled so by Bazel 4.x; see
/// docs/bazel-4.2.3.md. `--noslim_profile`: the slim profile (Bazel's
/// default) merges short events and drops the merged actions' `out`, which
/// would leave their spawns without a label.
pub const PROFILE_FLAGS: [&str; 4] = [
    "--experimental_generate_json_trace_profile",
    "--experimental_profile_include_target_label",
    "--experimental_profile_include_primary_output",
    "--noslim_profile",
];

/// One action of the profile.
#[derive(Clone, Debug, PartialEq)]
pub struct TracedAction {
    /// `args.target`, else a label in the event's name (its progress
    /// message).
    pub label: Option<String>,
    /// `args.mnemonic`, when the profile names it.
    pub mnemonic: Option<String>,
    /// The event's name: the action's progress message.
    pub description: String,
    /// It ran a subprocess: a run (`subprocess.run`, `local action
    /// execution`) on its thread within its span (set once the whole
    /// profile is read).
    pub spawned: bool,
    /// Its thread and span (start, end; microseconds).
    span: Option<(u64, f64, f64)>,
}

/// What a trace profile says about the build's actions.
#[derive(Debug, Default)]
pub struct TraceProfile {
    /// Primary output (relative to the execroot) → its action.
    pub by_output: HashMap<String, TracedAction>,
    /// `subprocess.run` and `local action execution` events: spawns run as
    /// local subprocesses (sandboxed or not; not workers, not cache hits).
    pub local_runs: usize,
    /// Each run's thread and start.
    runs: Vec<(u64, f64)>,
}

/// A profile that could not be read to its end.
#[derive(Debug)]
pub struct Cut {
    pub error: String,
}

impl fmt::Display for Cut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a complete JSON trace profile: {}", self.error)
    }
}

impl TraceProfile {
    /// Reads the profile at `path`: the profile, with the error that cut it
    /// short when there was one (the events before it are kept); `Err` when
    /// the file cannot be opened.
    pub fn load(path: &Path) -> std::io::Result<(TraceProfile, Option<Cut>)> {
        let file = std::fs::File::open(path)?;
        Ok(Self::read(BufReader::with_capacity(1 << 16, file)))
    }

    /// Reads a profile from `reader` (see [`TraceProfile::load`]).
    pub fn read(reader: impl Read) -> (TraceProfile, Option<Cut>) {
        let mut profile = TraceProfile::default();
        let mut de = serde_json::Deserializer::from_reader(reader);
        let cut = (&mut de)
            .deserialize_map(TopLevel(&mut profile))
            .and_then(|()| de.end())
            .err()
            .map(|e| Cut {
                error: e.to_string(),
            });
        profile.mark_spawning();
        (profile, cut)
    }

    /// The action whose primary output `written` names, a path relative to
    /// the execroot of the spawn that wrote it.
    pub fn action_writing(&self, written: &str) -> Option<&TracedAction> {
        self.by_output.get(written)
    }

    /// Marks the actions a run falls in (same thread, start within the
    /// action's span).
    fn mark_spawning(&mut self) {
        let mut by_thread: HashMap<u64, Vec<f64>> = HashMap::new();
        for (tid, ts) in self.runs.drain(..) {
            by_thread.entry(tid).or_default().push(ts);
        }
        for starts in by_thread.values_mut() {
            starts.sort_by(f64::total_cmp);
        }
        for action in self.by_output.values_mut() {
            let Some((tid, start, end)) = action.span else {
                continue;
            };
            let Some(starts) = by_thread.get(&tid) else {
                continue;
            };
            let first = starts.partition_point(|&ts| ts < start);
            action.spawned = starts.get(first).is_some_and(|&ts| ts <= end);
        }
    }

    fn add(&mut self, event: TraceEvent) {
        match event.cat {
            Category::Action => {
                let Some(out) = event.out.filter(|o| !o.is_empty()) else {
                    return;
                };
                let args = event.args.unwrap_or_default();
                let label = args
                    .target
                    .filter(|t| !t.is_empty())
                    .or_else(|| label_from_progress(&event.name));
                let mnemonic = args.mnemonic.filter(|m| !m.is_empty());
                let span = match (event.tid, event.ts) {
                    (Some(tid), Some(ts)) => Some((tid, ts, ts + event.dur.unwrap_or(0.0))),
                    _ => None,
                };
                let action = TracedAction {
                    label,
                    mnemonic,
                    description: event.name,
                    spawned: false,
                    span,
                };
                self.by_output.insert(out, action);
            }
            Category::LocalExecution => self.add_run(&event),
            Category::Other if event.name == "subprocess.run" => self.add_run(&event),
            Category::Other => {}
        }
    }

    /// A spawn run as a local subprocess, counted and kept by its thread
    /// and start.
    fn add_run(&mut self, event: &TraceEvent) {
        self.local_runs += 1;
        if let (Some(tid), Some(ts)) = (event.tid, event.ts) {
            self.runs.push((tid, ts));
        }
    }
}

/// The fields of a trace event the join needs; the rest are skipped.
#[derive(Deserialize)]
struct TraceEvent {
    #[serde(default)]
    cat: Category,
    #[serde(default)]
    name: String,
    out: Option<String>,
    args: Option<EventArgs>,
    tid: Option<u64>,
    /// Microseconds (Bazel writes integers).
    ts: Option<f64>,
    dur: Option<f64>,
}

/// An event's `cat`: one category, or several separated by commas (the
/// trace format allows it, and a proposed Bazel change put the mnemonic
/// there beside `action processing`).
#[derive(Default, PartialEq, Debug)]
enum Category {
    Action,
    /// A spawn of the `local`/`standalone` strategies (named by its
    /// mnemonic; no `subprocess.run` inside it).
    LocalExecution,
    #[default]
    Other,
}

impl Category {
    fn of(cat: &str) -> Category {
        let has = |name: &str| cat.split(',').any(|c| c.trim() == name);
        if has("action processing") {
            Category::Action
        } else if has("local action execution") {
            Category::LocalExecution
        } else {
            Category::Other
        }
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Category, D::Error> {
        struct Cat;
        impl Visitor<'_> for Cat {
            type Value = Category;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event category")
            }

            fn visit_str<E: serde::de::Error>(self, cat: &str) -> Result<Category, E> {
                Ok(Category::of(cat))
            }
        }
        de.deserialize_str(Cat)
    }
}

#[derive(Deserialize, Default)]
struct EventArgs {
    target: Option<String>,
    mnemonic: Option<String>,
}

/// The top-level object: `traceEvents` streamed into the profile, every
/// other key skipped.
struct TopLevel<'a>(&'a mut TraceProfile);

impl<'de> Visitor<'de> for TopLevel<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON trace profile object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "traceEvents" {
                map.next_value_seed(Events(&mut *self.0))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `traceEvents`, each event added as it is read.
struct Events<'a>(&'a mut TraceProfile);

impl<'de> DeserializeSeed<'de> for Events<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Events<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of trace events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(event) = seq.next_element::<TraceEvent>()? {
            self.0.add(event);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROFILE: &str = r#"{"otherData":{"build_id":"b","output_base":"/ob"},"traceEvents":[
    {"name":"thread_name","ph":"M","pid":1,"tid":0,"args":{"name":"Critical Path"}},
    {"cat":"action processing","name":"BazelWorkspaceStatusAction stable-status.txt","ph":"X","ts":1,"dur":8,"pid":1,"out":"bazel-out/stable-status.txt","args":{"target":""},"tid":63},
    {"cat":"action processing","name":"Executing genrule //:a","ph":"X","ts":2,"dur":5,"pid":1,"out":"bazel-out/k8-fastbuild/bin/a.out","args":{"target":"//:a"},"tid":64},
    {"cat":"general information","name":"subprocess.run","ph":"X","ts":3,"dur":1,"pid":1,"tid":64},
    {"cat":"action processing","name":"Executing genrule //pkg:b","ph":"X","ts":4,"dur":5,"pid":1,"out":"bazel-out/k8-fastbuild/bin/pkg/b.out","tid":63},
    {"cat":"general information","name":"subprocess.run","ph":"X","ts":5,"dur":1,"pid":1,"tid":63},
    {"name":"cpu counters","ph":"C","ts":6,"pid":1,"tid":20,"args":{"cpu":"0.5"}}
  ]
}"#;

    #[test]
    fn actions_are_found_by_primary_output_with_their_labels() {
        let (p, cut) = TraceProfile::read(PROFILE.as_bytes());
        assert!(cut.is_none(), "{cut:?}");
        assert_eq!(p.by_output.len(), 3);
        assert_eq!(p.local_runs, 2);
        let a = p
            .action_writing("bazel-out/k8-fastbuild/bin/a.out")
            .unwrap();
        assert_eq!(a.label.as_deref(), Some("//:a"));
        assert_eq!(a.description, "Executing genrule //:a");
        // No args.target: the label in the progress message.
        let b = p
            .action_writing("bazel-out/k8-fastbuild/bin/pkg/b.out")
            .unwrap();
        assert_eq!(b.label.as_deref(), Some("//pkg:b"));
        let status = p.action_writing("bazel-out/stable-status.txt").unwrap();
        assert_eq!(status.label, None);
        assert!(
            p.action_writing("bazel-out/k8-fastbuild/bin/c.out")
                .is_none()
        );
    }

    /// An action ran a subprocess when a `subprocess.run` starts on its
    /// thread within its span: not on another thread, not before or after.
    #[test]
    fn actions_that_ran_a_subprocess_are_marked() {
        let (p, _) = TraceProfile::read(PROFILE.as_bytes());
        let spawned = |out: &str| p.action_writing(out).unwrap().spawned;
        assert!(spawned("bazel-out/k8-fastbuild/bin/a.out"));
        assert!(spawned("bazel-out/k8-fastbuild/bin/pkg/b.out"));
        // Its span (tid 63, 1 to 9) holds b's run (tid 63, at 5).
        assert!(spawned("bazel-out/stable-status.txt"));
        let event = |tid: u64, ts: u64, dur: u64, extra: &str| {
            format!(
                r#"{{"cat":"{extra}","name":"n","out":"o{tid}-{ts}","tid":{tid},"ts":{ts},"dur":{dur}}}"#
            )
        };
        let run = |tid: u64, ts: u64| {
            format!(
                r#"{{"cat":"general information","name":"subprocess.run","tid":{tid},"ts":{ts}}}"#
            )
        };
        let events = [
            event(1, 10, 10, "action processing"),
            run(2, 15),
            run(1, 9),
            run(1, 21),
            event(3, 10, 10, "action processing"),
            run(3, 20),
            event(4, 10, 10, "action processing"),
            event(4, 12, 2, "local action execution"),
        ];
        let text = format!(r#"{{"traceEvents":[{}]}}"#, events.join(","));
        let (p, cut) = TraceProfile::read(text.as_bytes());
        assert!(cut.is_none(), "{cut:?}");
        assert!(
            !p.action_writing("o1-10").unwrap().spawned,
            "runs elsewhere or outside"
        );
        assert!(
            p.action_writing("o3-10").unwrap().spawned,
            "a run at its end"
        );
        let local = p.action_writing("o4-10").unwrap();
        assert!(local.spawned, "a local strategy's run");
        assert_eq!(p.local_runs, 5);
    }

    /// Bazel's current sources write the mnemonic beside the label
    /// (`args.mnemonic`); a `cat` listing several categories is read for
    /// each of them; an empty mnemonic is none.
    #[test]
    fn the_mnemonic_is_read_where_the_profile_names_it() {
        let text = r#"{"traceEvents":[
          {"cat":"action processing","name":"Executing genrule //:g","ph":"X","ts":1,"dur":5,"pid":1,"out":"bazel-out/bin/g.out","args":{"target":"//:g","mnemonic":"Genrule"},"tid":7},
          {"cat":"action processing, CppCompile","name":"Compiling x.cc","ph":"X","ts":2,"dur":5,"pid":1,"out":"bazel-out/bin/x.o","args":{"mnemonic":"CppCompile"},"tid":8},
          {"cat":"local action execution,Javac","name":"Javac","ph":"X","ts":3,"dur":1,"pid":1,"tid":8},
          {"cat":"action processing","name":"Writing file w","ph":"X","ts":4,"dur":1,"pid":1,"out":"bazel-out/bin/w","args":{"target":"//:w","mnemonic":""},"tid":9},
          {"cat":"action processing queue","name":"q","ph":"X","ts":4,"dur":1,"pid":1,"out":"bazel-out/bin/q","tid":9}
        ]}"#;
        let (p, cut) = TraceProfile::read(text.as_bytes());
        assert!(cut.is_none(), "{cut:?}");
        let g = p.action_writing("bazel-out/bin/g.out").unwrap();
        assert_eq!(
            (g.label.as_deref(), g.mnemonic.as_deref()),
            (Some("//:g"), Some("Genrule"))
        );
        let x = p.action_writing("bazel-out/bin/x.o").unwrap();
        assert_eq!(x.mnemonic.as_deref(), Some("CppCompile"));
        assert!(x.spawned, "its local run, on its thread in its span");
        assert_eq!(p.local_runs, 1);
        let w = p.action_writing("bazel-out/bin/w").unwrap();
        assert_eq!(w.mnemonic, None);
        assert!(
            p.action_writing("bazel-out/bin/q").is_none(),
            "another category"
        );
        // Bazel 4.2.3's profile: no mnemonic anywhere.
        let (old, _) = TraceProfile::read(PROFILE.as_bytes());
        assert!(old.by_output.values().all(|a| a.mnemonic.is_none()));
    }

    #[test]
    fn a_profile_cut_short_keeps_the_events_before_the_cut() {
        let cut_at = PROFILE
            .find("{\"cat\":\"action processing\",\"name\":\"Executing genrule //pkg:b")
            .unwrap()
            + 40;
        let (p, cut) = TraceProfile::read(&PROFILE.as_bytes()[..cut_at]);
        assert!(cut.is_some());
        assert_eq!(p.by_output.len(), 2);
        assert_eq!(p.local_runs, 1);
        assert!(
            p.action_writing("bazel-out/k8-fastbuild/bin/a.out")
                .is_some()
        );
    }

    #[test]
    fn garbage_is_an_error_and_no_action() {
        for bad in [
            "",
            "not json",
            "[1,2]",
            r#"{"traceEvents":{"a":1}}"#,
            "{\"traceEvents\":[1]}",
        ] {
            let (p, cut) = TraceProfile::read(bad.as_bytes());
            assert!(cut.is_some(), "{bad:?} was accepted");
            assert!(p.by_output.is_empty());
        }
        // Trailing bytes after the object are an error too (not silently ignored).
        let (p, cut) = TraceProfile::read(format!("{PROFILE} x").as_bytes());
        assert!(cut.is_some());
        assert_eq!(p.by_output.len(), 3);
    }
}
