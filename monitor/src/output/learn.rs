//! `monitor exec --learn FILE`: the policy under which the same job runs
//! clean — the effective config plus every destination and file the job's
//! alerts named, as exact rules (one address and port, one socket path,
//! one file), each listed above the config with the targets and processes
//! that needed it. Rules are job-wide: the config has no per-target rules.
use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use crate::{
    config::Config,
    output::{alert::Alert, markdown::target_of},
    policy::matchers::NetRule,
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
    for a in alerts {
        let rule = if let Some(n) = &a.net {
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
                    let rule = NetRule {
                        cidr: cidr.parse().expect("a host address is a valid CIDR"),
                        port: (n.port != 0).then_some(n.port),
                    };
                    if !config.network.allow.contains(&rule) {
                        config.network.allow.push(rule);
                    }
                    format!("network.allow {cidr} port {} ({})", n.port, n.proto)
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
    let mut out = String::from(
        "# Policy learned by `monitor exec --learn` from one run: the effective\n\
         # config plus the rules this job needed to run clean (job-wide, exact).\n",
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
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
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
}
