//! The folders of `monitor/src` are the stages of the data flow, and data
//! flows one way (docs/architecture.md): a stage may use what earlier
//! stages define, never what later ones do. This reads every source file
//! and checks the `crate::` paths it names against that order.
use std::{collections::BTreeSet, fs, path::Path};

/// The stages in flow order; `bazel` is an attribution source beside
/// `actions`.
const STAGES: [(&str, u32); 7] = [
    ("kernel", 0),
    ("events", 1),
    ("actions", 2),
    ("bazel", 2),
    ("reapi", 2),
    ("policy", 3),
    ("output", 4),
];

/// Uses against the flow that are part of the design, each with its reason.
const ALLOWED: [(&str, &str, &str); 4] = [
    (
        "*",
        "output::metrics",
        "every stage counts what it does in the one metrics registry",
    ),
    (
        "actions",
        "policy::matchers",
        "declarations are written in the policy's path and network matchers",
    ),
    (
        "bazel",
        "policy::matchers",
        "a sandbox's declaration is built from the policy's path matchers",
    ),
    (
        "policy",
        "output::alert",
        "a violation is handed on as the alert object it becomes",
    ),
];

fn stage_of(name: &str) -> Option<u32> {
    STAGES.iter().find(|(s, _)| *s == name).map(|(_, o)| *o)
}

/// `crate::` paths named in `text`, cut to two levels ("a::b"), with the
/// groups of `use crate::{a::b, c::{d, e}}` expanded.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        expand("", &text[i + "crate::".len()..], &mut out);
    }
    out.retain(|p| !p.is_empty());
    out
}

/// Adds the paths of one use tree (`a::b`, `a::{b, c::d}`) below `prefix`.
fn expand(prefix: &str, tree: &str, out: &mut BTreeSet<String>) {
    if let Some(group) = tree.strip_prefix('{') {
        let end = matching_brace(group);
        for item in split_top_level(&group[..end]) {
            expand(prefix, item.trim(), out);
        }
        return;
    }
    let ident: String = tree
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    let path = if prefix.is_empty() {
        ident.clone()
    } else {
        format!("{prefix}::{ident}")
    };
    match tree[ident.len()..].strip_prefix("::") {
        Some(rest) if path.matches("::").count() < 1 => expand(&path, rest, out),
        _ => {
            out.insert(path);
        }
    }
}

fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

fn split_top_level(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn allowed(from: &str, to: &str) -> bool {
    ALLOWED.iter().any(|(f, t, _)| {
        (*f == "*" || *f == from) && (to == *t || to.starts_with(&format!("{t}::")))
    })
}

#[test]
fn no_stage_uses_a_later_stage() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut against_the_flow = Vec::new();
    for (stage, order) in STAGES {
        for file in rust_files(&src.join(stage)) {
            let text = fs::read_to_string(&file).unwrap();
            for path in crate_paths(&text) {
                let target = path.split("::").next().unwrap_or_default();
                let later = stage_of(target).is_some_and(|o| o > order);
                let assembler = matches!(target, "pipeline" | "commands");
                if (later || assembler) && !allowed(stage, &path) {
                    against_the_flow.push(format!("{} uses crate::{path}", file.display()));
                }
            }
        }
    }
    assert!(
        against_the_flow.is_empty(),
        "uses against the data flow:\n{}",
        against_the_flow.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_nested_uses() {
    let paths = crate_paths(
        "use crate::{\n    actions::registry::X,\n    output::{alert::A, fold::F},\n};\nlet x = crate::policy::judge::f();",
    );
    assert!(paths.contains("actions::registry"), "{paths:?}");
    assert!(paths.contains("output::alert"), "{paths:?}");
    assert!(paths.contains("output::fold"), "{paths:?}");
    assert!(paths.contains("policy::judge"), "{paths:?}");
    assert!(!allowed("events", "output::alert"));
    assert!(allowed("events", "output::metrics"));
}

fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
