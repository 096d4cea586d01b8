//! Network rules scoped to targets (`[[network.rule]]`): a destination
//! allowed only for spawns whose Bazel label matches a pattern and/or whose
//! mnemonic is listed, or only for the Bazel server's own traffic
//! (`scope = "@bazel"`).
//!
//! A spawn's label may be unknown when it connects (Bazel 4.2.3 names it
//! only in the execution log, read when the build ended): the verdict is
//! then `Undecided` and the caller holds the alert until the label is
//! joined, then asks again.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::policy::matchers::{NetMatcher, NetRule};

/// The label the job's own processes (the Bazel server and client) carry.
pub const BAZEL_SCOPE: &str = "@bazel";

/// One `[[network.rule]]` entry as written in the config.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedRuleConfig {
    /// Bazel label patterns (`//pkg:name`, `//pkg:*`, `//pkg/...`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    /// Spawn mnemonics (`Genrule`, `CppCompile`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mnemonics: Vec<String>,
    /// `"@bazel"`: the Bazel server's and client's own traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Destinations, as in `network.allow`.
    pub allow: Vec<NetRule>,
}

/// A Bazel target pattern, in the forms a rule may name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelPattern {
    /// `//pkg:name` (or `//pkg`, short for `//pkg:pkg`).
    Exact {
        repo: String,
        package: String,
        name: String,
    },
    /// `//pkg:*`, `//pkg:all`: every target of one package.
    Package { repo: String, package: String },
    /// `//pkg/...`, `//...`: the package and every package below it.
    Recursive { repo: String, prefix: String },
}

/// `(repository, rest after it)`; the main repository is `""` whether
/// written `//…` or `@//…`.
fn split_repo(text: &str) -> Option<(&str, &str)> {
    if text.starts_with("//") {
        return Some(("", text));
    }
    let rest = text.strip_prefix('@')?;
    let at = rest.find("//")?;
    Some((&rest[..at], &rest[at..]))
}

fn check_package(package: &str) -> Result<(), String> {
    if package.starts_with('/') || package.ends_with('/') || package.contains("//") {
        return Err(format!("package {package:?} has an empty path segment"));
    }
    if package.split('/').any(|s| s == "." || s == "..") {
        return Err(format!("package {package:?} has a . or .. segment"));
    }
    let bad = |c: char| !(c.is_ascii_alphanumeric() || "/-._+@=,~ ".contains(c));
    if let Some(c) = package.chars().find(|&c| bad(c)) {
        return Err(format!("package {package:?} has the character {c:?}"));
    }
    Ok(())
}

impl LabelPattern {
    pub fn parse(text: &str) -> Result<LabelPattern, String> {
        if text == BAZEL_SCOPE {
            return Err("\"@bazel\" is not a target: write `scope = \"@bazel\"`".into());
        }
        let (repo, rest) = split_repo(text).ok_or_else(|| {
            format!("{text:?} is not a label pattern: start it with // or @repo//")
        })?;
        let rest = &rest[2..];
        let repo = repo.to_string();
        let recursive = ["...", "...:all", "...:*", "...:all-targets"];
        for suffix in recursive {
            if rest == suffix || rest.ends_with(&format!("/{suffix}")) {
                let prefix = rest[..rest.len() - suffix.len()].trim_end_matches('/');
                check_package(prefix).map_err(|e| format!("{text:?}: {e}"))?;
                let prefix = prefix.to_string();
                return Ok(LabelPattern::Recursive { repo, prefix });
            }
        }
        let (package, name) = match rest.split_once(':') {
            Some((p, n)) => (p, n),
            None => (rest, rest.rsplit('/').next().unwrap_or_default()),
        };
        check_package(package).map_err(|e| format!("{text:?}: {e}"))?;
        let package = package.to_string();
        if matches!(name, "*" | "all" | "all-targets") {
            return Ok(LabelPattern::Package { repo, package });
        }
        if name.is_empty() || name.contains([':', '*', '?']) || name.starts_with('/') {
            return Err(format!("{text:?}: invalid target name {name:?}"));
        }
        let name = name.to_string();
        Ok(LabelPattern::Exact {
            repo,
            package,
            name,
        })
    }

    /// Whether the spawn label `label` (as Bazel's execution log writes it)
    /// is one of this pattern's targets.
    pub fn matches(&self, label: &str) -> bool {
        let Some((repo, rest)) = split_repo(label) else {
            return false;
        };
        let rest = &rest[2..];
        let (package, name) = match rest.split_once(':') {
            Some((p, n)) => (p, n),
            None => (rest, rest.rsplit('/').next().unwrap_or_default()),
        };
        match self {
            LabelPattern::Exact {
                repo: r,
                package: p,
                name: n,
            } => r == repo && p == package && n == name,
            LabelPattern::Package {
                repo: r,
                package: p,
            } => r == repo && p == package,
            LabelPattern::Recursive { repo: r, prefix } => {
                r == repo
                    && (prefix.is_empty()
                        || package == prefix
                        || package
                            .strip_prefix(prefix.as_str())
                            .is_some_and(|rest| rest.starts_with('/')))
            }
        }
    }
}

/// Who connected, as far as known when judging.
#[derive(Debug, Clone, Copy, Default)]
pub struct Who<'a> {
    pub label: Option<&'a str>,
    pub mnemonic: Option<&'a str>,
    /// The job's own processes, outside every spawn: never a target.
    pub job: bool,
    /// The job is a Bazel build (its own processes are the `@bazel` tier).
    pub bazel: bool,
    /// A spawn whose label and mnemonic may still be joined later.
    pub spawn: bool,
}

/// A scoped rule's answer for one connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopedVerdict {
    Allowed,
    /// No rule allows it now, but one would if the spawn's label or
    /// mnemonic (not known yet) matched.
    Undecided,
    Denied,
}

#[derive(Debug, Clone)]
struct ScopedRule {
    targets: Vec<LabelPattern>,
    mnemonics: Vec<String>,
    bazel: bool,
    allow: NetMatcher,
}

/// Whether a known value matches: `Some(true/false)`, or `None` when the
/// value is unknown (and could still match).
fn part(listed: bool, value: Option<&str>, hit: impl Fn(&str) -> bool) -> Option<bool> {
    if !listed {
        return Some(true);
    }
    value.map(hit)
}

impl ScopedRule {
    fn scope_matches(&self, who: &Who) -> Option<bool> {
        if self.bazel {
            return Some(who.job && who.bazel);
        }
        if who.job {
            return Some(false);
        }
        let target = part(!self.targets.is_empty(), who.label, |l| {
            self.targets.iter().any(|p| p.matches(l))
        });
        let mnemonic = part(!self.mnemonics.is_empty(), who.mnemonic, |m| {
            self.mnemonics.iter().any(|n| n == m)
        });
        match (target, mnemonic) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        }
    }
}

/// The compiled `[[network.rule]]` entries.
#[derive(Debug, Clone, Default)]
pub struct ScopedRules {
    rules: Vec<ScopedRule>,
}

impl ScopedRules {
    /// Compiles validated entries (see [`validate`]).
    pub fn new(entries: &[ScopedRuleConfig]) -> Result<ScopedRules, String> {
        let mut rules = Vec::new();
        for e in entries {
            let targets = e
                .targets
                .iter()
                .map(|t| LabelPattern::parse(t))
                .collect::<Result<_, _>>()?;
            rules.push(ScopedRule {
                targets,
                mnemonics: e.mnemonics.clone(),
                bazel: e.scope.as_deref() == Some(BAZEL_SCOPE),
                allow: NetMatcher::new(e.allow.clone()),
            });
        }
        Ok(ScopedRules { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The destinations of every `targets`/`mnemonics` rule a spawn with
    /// this label and mnemonic is known to match (what its declaration file
    /// gives before it runs).
    pub fn granted_to(&self, label: Option<&str>, mnemonic: Option<&str>) -> Vec<NetRule> {
        let who = Who {
            label,
            mnemonic,
            ..Who::default()
        };
        self.rules
            .iter()
            .filter(|r| r.scope_matches(&who) == Some(true))
            .flat_map(|r| r.allow.rules().iter().copied())
            .collect()
    }

    /// Whether a rule scoped to `who` admits `ip`:`port`. With the label
    /// unknown, `who.spawn` makes rules that might match `Undecided`;
    /// without it (the label will never be known) they do not apply.
    pub fn verdict(&self, who: &Who, ip: IpAddr, port: u16) -> ScopedVerdict {
        let mut undecided = false;
        for rule in self.rules.iter().filter(|r| r.allow.allows(ip, port)) {
            match rule.scope_matches(who) {
                Some(true) => return ScopedVerdict::Allowed,
                None if who.spawn => undecided = true,
                _ => {}
            }
        }
        if undecided {
            ScopedVerdict::Undecided
        } else {
            ScopedVerdict::Denied
        }
    }
}

/// Checks one entry; errors are (key below `network.rule[i]`, reason).
pub fn validate(rule: &ScopedRuleConfig) -> Result<(), (String, String)> {
    let scoped = !rule.targets.is_empty() || !rule.mnemonics.is_empty();
    match rule.scope.as_deref() {
        Some(BAZEL_SCOPE) if scoped => {
            return Err((
                "scope".into(),
                "`scope = \"@bazel\"` cannot be combined with targets or mnemonics (write two rules)"
                    .into(),
            ));
        }
        Some(BAZEL_SCOPE) => {}
        Some(other) => {
            return Err((
                "scope".into(),
                format!("unknown scope {other:?} (the only one is \"@bazel\")"),
            ));
        }
        None if !scoped => {
            return Err((
                String::new(),
                "a rule needs a scope: `targets`, `mnemonics` or `scope = \"@bazel\"` \
                 (job-wide destinations belong in `network.allow`)"
                    .into(),
            ));
        }
        None => {}
    }
    for (j, t) in rule.targets.iter().enumerate() {
        LabelPattern::parse(t).map_err(|e| (format!("targets[{j}]"), e))?;
    }
    for (j, m) in rule.mnemonics.iter().enumerate() {
        if m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            let msg = format!("invalid mnemonic {m:?} (letters, digits and _)");
            return Err((format!("mnemonics[{j}]"), msg));
        }
    }
    if rule.allow.is_empty() {
        return Err(("allow".into(), "lists no destination".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
