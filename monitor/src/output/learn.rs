//! `monitor exec --learn FILE`: the policy under which the same job runs
//! clean — the effective config plus every destination and file the job's
//! alerts named, as exact rules (one address and port, one socket path,
//! one file), each listed above the config with the targets and processes
//! that needed it. A destination only labelled spawns reached becomes a
//! rule scoped to their targets (`[[network.rule]]`), one only the Bazel
//! server reached an `@bazel` rule: least privilege. The rest is job-wide,
//! and so is what the kernel blocked (only job-wide rules can be enforced
//! for spawns, see docs/config.md).
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use crate::{
    config::Config,
    output::{
        alert::{Alert, NetInfo, PACKET, Verdict},
        markdown::target_of,
    },
    policy::{
        matchers::NetRule,
        scoped::{BAZEL_SCOPE, ScopedRuleConfig},
    },
};

/// Escapes glob metacharacters so the pattern matches exactly `path`.
fn exact_pattern(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn host_cidr(addr: IpAddr) -> String {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    };
    match addr {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// What one learned rule is for, for its comment.
#[derive(Default)]
struct Users {
    targets: Vec<String>,
    processes: Vec<String>,
}

impl Users {
    fn add(&mut self, a: &Alert) {
        let t = target_of(a);
        if !self.targets.contains(&t) {
            self.targets.push(t);
        }
        if !self.processes.contains(&a.process.comm) {
            self.processes.push(a.process.comm.clone());
        }
    }
}

/// The learned config as TOML, with a comment block naming who needed each
/// added rule. Paths that are not UTF-8 cannot be written as patterns and
/// are listed as comments only.
pub fn learned_config(base: &Config, alerts: &[Alert]) -> String {
    let mut config = base.clone();
    let mut why: BTreeMap<String, Users> = BTreeMap::new();
    let mut skipped = Vec::new();
    let scopes = learned_scopes(alerts);
    for a in alerts {
        let rule = if let Some(n) = &a.net {
            if n.proto == PACKET {
                skipped.push("a packet socket (no rule allows one)".to_string());
                continue;
            }
            match &n.unix_path {
                Some(path) => {
                    let p = exact_pattern(path);
                    if !path.starts_with('/') {
                        skipped.push(format!("unix socket {path} (abstract: no pattern)"));
                        continue;
                    }
                    if !config.network.allow_unix.contains(&p) {
                        config.network.allow_unix.push(p.clone());
                    }
                    format!("network.allow_unix {p}")
                }
                None => {
                    let cidr = host_cidr(n.addr);
                    let scope = match &scopes[&(cidr.clone(), n.port)] {
                        Scope::Job => "network.allow".to_string(),
                        Scope::Bazel => "network.rule @bazel".to_string(),
                        Scope::Targets(t) => {
                            let t: Vec<&str> = t.iter().map(String::as_str).collect();
                            format!("network.rule {}", t.join(" "))
                        }
                    };
                    format!("{scope} {cidr} port {} ({})", n.port, n.proto)
                }
            }
        } else if let Some(f) = &a.file {
            let Ok(path) = std::str::from_utf8(&f.path) else {
                skipped.push(crate::events::paths::escape_for_display(&f.path));
                continue;
            };
            let p = exact_pattern(path);
            if !config.files.allow.contains(&p) {
                config.files.allow.push(p.clone());
            }
            format!("files.allow {p}")
        } else {
            continue;
        };
        why.entry(rule).or_default().add(a);
    }
    learn_destinations(&mut config, &scopes, alerts);
    let mut out = String::from(
        "# Policy learned by `monitor exec --learn` from one run: the effective\n\
         # config plus the rules this job needed to run clean (exact; scoped to\n\
         # the targets that needed them where only labelled spawns did).\n",
    );
    for (rule, users) in &why {
        let _ = writeln!(
            out,
            "#   {rule}: {} [{}]",
            users.targets.join(", "),
            users.processes.join(", ")
        );
    }
    for s in &skipped {
        let _ = writeln!(out, "#   NOT LEARNED (cannot be written as a rule): {s}");
    }
    out.push('\n');
    out.push_str(&config.to_toml());
    out
}

/// Who a learned destination is granted to.
#[derive(Debug, PartialEq)]
enum Scope {
    Job,
    Bazel,
    Targets(BTreeSet<String>),
}

fn is_target_label(label: &str) -> bool {
    label.starts_with("//") || (label.starts_with('@') && label.contains("//"))
}

/// A destination as learned: host CIDR and port.
type DestKey = (String, u16);

/// For each alerted IP destination, the narrowest scope under which every
/// alert to it would have been allowed: its targets, if every one came
/// from a labelled spawn and none was blocked (a target rule cannot be
/// enforced); `@bazel`, if only the Bazel server connected; else job-wide.
fn learned_scopes(alerts: &[Alert]) -> BTreeMap<DestKey, Scope> {
    let mut seen: BTreeMap<DestKey, (bool, bool, BTreeSet<String>)> = BTreeMap::new();
    for a in alerts {
        let Some(n) = ip_destination(a) else {
            continue;
        };
        let (job, bazel, targets) = seen.entry((host_cidr(n.addr), n.port)).or_default();
        match a.action.label.as_deref() {
            _ if a.verdict == Verdict::Blocked => *job = true,
            Some(BAZEL_SCOPE) => *bazel = true,
            Some(l) if is_target_label(l) => {
                targets.insert(l.to_string());
            }
            _ => *job = true,
        }
    }
    seen.into_iter()
        .map(|(key, (job, bazel, targets))| {
            let scope = match (job, bazel, targets.is_empty()) {
                (false, true, true) => Scope::Bazel,
                (false, false, false) => Scope::Targets(targets),
                _ => Scope::Job,
            };
            (key, scope)
        })
        .collect()
}

/// The alert's IP destination, if it has one a rule can allow (not a unix
/// socket, not a packet socket).
fn ip_destination(a: &Alert) -> Option<&NetInfo> {
    a.net
        .as_ref()
        .filter(|n| n.unix_path.is_none() && n.proto != PACKET)
}

/// Adds every alerted IP destination to the config, in its learned scope:
/// one `[[network.rule]]` per target set (or `@bazel`), job-wide otherwise.
fn learn_destinations(config: &mut Config, scopes: &BTreeMap<DestKey, Scope>, alerts: &[Alert]) {
    for a in alerts {
        let Some(n) = ip_destination(a) else {
            continue;
        };
        let rule = NetRule {
            cidr: host_cidr(n.addr)
                .parse()
                .expect("a host address is a valid CIDR"),
            port: (n.port != 0).then_some(n.port),
        };
        let entry = match &scopes[&(host_cidr(n.addr), n.port)] {
            Scope::Job => {
                if !config.network.allow.contains(&rule) {
                    config.network.allow.push(rule);
                }
                continue;
            }
            Scope::Bazel => ScopedRuleConfig {
                scope: Some(BAZEL_SCOPE.into()),
                ..ScopedRuleConfig::default()
            },
            Scope::Targets(t) => ScopedRuleConfig {
                targets: t.iter().cloned().collect(),
                ..ScopedRuleConfig::default()
            },
        };
        let same_scope = |r: &&mut ScopedRuleConfig| {
            r.targets == entry.targets && r.mnemonics.is_empty() && r.scope == entry.scope
        };
        match config.network.rule.iter_mut().find(same_scope) {
            Some(r) if r.allow.contains(&rule) => {}
            Some(r) => r.allow.push(rule),
            None => config.network.rule.push(ScopedRuleConfig {
                allow: vec![rule],
                ..entry
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::markdown::tests::net_alert;

    #[test]
    fn learned_rules_admit_exactly_what_the_alerts_named() {
        let mut unix = net_alert(Some("//p:u"), 0);
        if let Some(n) = unix.net.as_mut() {
            n.proto = "unix";
            n.unix_path = Some("/run/d[1].sock".into());
        }
        let alerts = [net_alert(Some("//p:t"), 9), net_alert(None, 9), unix];
        let text = learned_config(&Config::default(), &alerts);
        assert!(
            text.contains(
                "#   network.allow 127.0.0.1/32 port 9 (tcp): //p:t (Genrule), a1 (Genrule)"
            ),
            "{text}"
        );
        let body = without_comments(&text);
        let learned = Config::parse(&body, std::path::Path::new("learned.toml"))
            .expect("the learned policy is a valid config");
        assert_eq!(learned.network.allow.len(), 1, "one rule for repeats");
        let m = crate::policy::matchers::NetMatcher::new(learned.network.allow.clone());
        assert!(m.allows("127.0.0.1".parse().unwrap(), 9));
        assert!(!m.allows("127.0.0.1".parse().unwrap(), 10));
        let unix = crate::policy::matchers::PathMatcher::new(&learned.network.allow_unix).unwrap();
        assert!(unix.matches(b"/run/d[1].sock"));
        assert!(!unix.matches(b"/run/d1.sock"));
    }

    /// The learned policy without its explaining comment lines.
    fn without_comments(text: &str) -> String {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn destinations_only_labelled_spawns_reached_are_scoped_to_them() {
        use crate::policy::scoped::{ScopedRules, ScopedVerdict, Who};
        let observed = |label, port| {
            let mut a = net_alert(Some(label), port);
            a.verdict = Verdict::Observed;
            a
        };
        let alerts = [
            observed("//net:a", 9),
            observed("//net:b", 9),
            observed("@bazel", 10),
            observed("//net:a", 11),
            net_alert(Some("//net:a"), 11),
        ];
        let text = learned_config(&Config::default(), &alerts);
        assert!(
            text.contains("#   network.rule //net:a //net:b 127.0.0.1/32 port 9 (tcp): //net:a (Genrule), //net:b (Genrule)"),
            "{text}"
        );
        assert!(
            text.contains("#   network.rule @bazel 127.0.0.1/32 port 10"),
            "{text}"
        );
        let body = without_comments(&text);
        let learned = Config::parse(&body, std::path::Path::new("learned.toml"))
            .unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert_eq!(learned.network.rule.len(), 2, "{body}");
        assert_eq!(
            learned.network.allow.len(),
            1,
            "a blocked connect stays job-wide: only that can be enforced"
        );
        assert_eq!(learned.network.allow[0].port, Some(11));
        let rules = ScopedRules::new(&learned.network.rule).unwrap();
        let ip = "127.0.0.1".parse().unwrap();
        let spawn = |label| Who {
            label: Some(label),
            ..Who::default()
        };
        assert_eq!(
            rules.verdict(&spawn("//net:b"), ip, 9),
            ScopedVerdict::Allowed
        );
        assert_eq!(
            rules.verdict(&spawn("//src:cc"), ip, 9),
            ScopedVerdict::Denied
        );
        assert_eq!(
            rules.verdict(&spawn("//net:a"), ip, 10),
            ScopedVerdict::Denied
        );
        let server = Who {
            label: Some("@bazel"),
            job: true,
            bazel: true,
            ..Who::default()
        };
        assert_eq!(rules.verdict(&server, ip, 10), ScopedVerdict::Allowed);
    }
}
