//! `monitor exec --markdown FILE`: a summary fit for `$GITHUB_STEP_SUMMARY`
//! — the verdict, violations by target, the destinations that were reached
//! or tried against the policy, and how complete the monitoring was.
use std::{collections::BTreeMap, fmt::Write as _};

use crate::output::{
    alert::{Alert, AlertKind},
    completeness::Completeness,
    inventory::Inventory,
};

/// What the summary is about, besides the alerts.
pub struct RunFacts<'a> {
    pub command: &'a str,
    pub command_exit_status: u8,
    pub violations: u64,
    pub completeness: &'a Completeness,
    pub inventory: &'a Inventory,
    /// Bazel's repository fetches, judged (empty when not a Bazel build).
    pub fetches: &'a [crate::policy::fetches::Fetch],
}

/// `proto address:port`, or `unix /path`.
fn destination(n: &crate::output::alert::NetInfo) -> String {
    match &n.unix_path {
        Some(path) => format!("unix {path}"),
        None => format!("{} {}", n.proto, std::net::SocketAddr::new(n.addr, n.port)),
    }
}

/// A table cell: no line breaks, `|` escaped, code spans kept intact.
fn cell(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// The target column: label (mnemonic), else the action id.
pub fn target_of(a: &Alert) -> String {
    match (&a.action.label, &a.action.mnemonic) {
        (Some(l), Some(m)) => format!("{l} ({m})"),
        (Some(l), None) => l.clone(),
        (None, Some(m)) => format!("{} ({m})", a.action.id),
        (None, None) => a.action.id.clone(),
    }
}

fn what(a: &Alert) -> String {
    match (a.kind, &a.file, &a.net) {
        (AlertKind::UndeclaredFile, Some(f), _) => {
            crate::events::paths::escape_for_display(&f.path)
        }
        (AlertKind::NetworkEgress, _, Some(n)) => destination(n),
        (AlertKind::Fetch { .. }, ..) => a
            .fetch
            .as_ref()
            .and_then(|f| f.fetched_url.clone().or_else(|| f.url.clone()))
            .or_else(|| a.net.as_ref().map(destination))
            .unwrap_or_default(),
        _ => String::new(),
    }
}

pub fn render(alerts: &[Alert], facts: &RunFacts<'_>) -> String {
    let mut out = String::new();
    let complete = facts.completeness.gaps().is_empty();
    let headline = match (facts.violations, complete) {
        (0, true) => "no violations".to_string(),
        (0, false) => "no violations seen, but monitoring was INCOMPLETE".to_string(),
        (n, _) => format!("{n} violation(s)"),
    };
    let _ = writeln!(out, "## build-monitor: {headline}\n");
    let _ = writeln!(
        out,
        "Command `{}` exited {}.\n",
        facts.command.replace('`', "'"),
        facts.command_exit_status
    );
    violations_table(&mut out, alerts);
    inventory_table(&mut out, facts.inventory);
    fetches_table(&mut out, facts.fetches);
    completeness_table(&mut out, facts.completeness);
    out
}

fn violations_table(out: &mut String, alerts: &[Alert]) {
    if alerts.is_empty() {
        return;
    }
    let mut by_target: BTreeMap<String, Vec<&Alert>> = BTreeMap::new();
    for a in alerts {
        by_target.entry(target_of(a)).or_default().push(a);
    }
    out.push_str("### Violations by target\n\n| Target | Kind | What | Verdict | Count |\n| --- | --- | --- | --- | --- |\n");
    for (target, list) in &by_target {
        for a in list {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {} | {} |",
                cell(target),
                a.kind.as_str(),
                cell(&what(a)),
                a.verdict.as_str(),
                a.count
            );
        }
    }
    out.push('\n');
}

/// Bazel's repository fetches: for which repository, how, where to, and
/// the downloader rules' verdict.
fn fetches_table(out: &mut String, fetches: &[crate::policy::fetches::Fetch]) {
    if fetches.is_empty() {
        return;
    }
    out.push_str("### Repository fetches\n\n| Repository | Via | URL | Connections | Processes | Verdict |\n| --- | --- | --- | --- | --- | --- |\n");
    for f in fetches {
        let join = |set: &std::collections::BTreeSet<String>| {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        let url = f
            .fetched_url
            .clone()
            .unwrap_or_else(|| format!("{}:{}", f.host, f.port));
        let via = match f.via {
            crate::policy::fetches::Via::Downloader => "downloader",
            crate::policy::fetches::Via::Bypass => "**bypass**",
        };
        let _ = writeln!(
            out,
            "| {} | {via} | `{}` | {} | {} | {} |",
            cell(f.repository.as_deref().unwrap_or("?")),
            cell(&url),
            cell(&join(&f.connections)),
            cell(&join(&f.processes)),
            f.verdict
        );
    }
    out.push('\n');
}

/// Every destination the job reached or tried, with who and the verdict.
fn inventory_table(out: &mut String, inventory: &Inventory) {
    if inventory.destinations().next().is_none() {
        return;
    }
    out.push_str("### Egress inventory\n\n| Destination | Names | Proto | Targets | Processes | Verdict | Count |\n| --- | --- | --- | --- | --- | --- | --- |\n");
    for d in inventory.destinations() {
        let join = |set: &std::collections::BTreeSet<String>| {
            set.iter().cloned().collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} | {} |",
            cell(&d.destination),
            cell(&inventory.names_of(d).join(", ")),
            d.proto,
            cell(&join(&d.targets)),
            cell(&join(&d.processes)),
            d.verdict,
            d.count
        );
    }
    out.push_str(
        "\nNames come from the UDP DNS answers the job received; a name resolved over TCP, DoH/DoT, \
         through a local cache's unix socket (nscd, systemd-resolved) or before the job started stays unknown. \
         To allow a destination, add it to `[network] allow` (e.g. `{ cidr = \"10.0.0.1/32\", port = 443 }`), \
         or let `--learn` write the policy.\n\n",
    );
}

fn completeness_table(out: &mut String, c: &Completeness) {
    let gaps = c.gaps();
    let _ = writeln!(
        out,
        "### Completeness: {}\n",
        if gaps.is_empty() {
            "complete"
        } else {
            "INCOMPLETE"
        }
    );
    for gap in &gaps {
        let _ = writeln!(out, "- {}", cell(gap));
    }
    if !gaps.is_empty() {
        out.push('\n');
    }
    out.push_str("| | |\n| --- | --- |\n");
    let _ = writeln!(
        out,
        "| Sandboxed spawns monitored | {} |",
        c.spawns_monitored
    );
    let _ = writeln!(
        out,
        "| Spawns in the execution log, not monitored | {} |",
        c.spawns_unmonitored
    );
    let _ = writeln!(
        out,
        "| Persistent-worker spawns not attributable to one action | {} |",
        c.worker_spawns_unattributable
    );
    let kinds: Vec<String> = c
        .events_by_kind
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(out, "| Events judged, by kind | {} |", kinds.join(", "));
    let lost: Vec<String> = c
        .events_lost
        .iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    let _ = writeln!(out, "| Events lost, by reason | {} |", lost.join(", "));
    let _ = writeln!(out, "| Hooks live | {} |", cell(&c.hooks.join("; ")));
    let d = &c.dns;
    let _ = writeln!(
        out,
        "| DNS answers read (for names) | {} ({} malformed, {} cut, {} addresses forgotten) |",
        d.answers, d.malformed, d.cut, d.evicted
    );
    let _ = writeln!(
        out,
        "| Egress enforced | {} |",
        if c.enforced { "yes" } else { "no" }
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::output::alert::{ActionInfo, NetInfo, ProcessInfo, Verdict};

    pub fn net_alert(label: Option<&str>, port: u16) -> Alert {
        Alert {
            time: SystemTime::now(),
            kind: AlertKind::NetworkEgress,
            action: ActionInfo {
                id: "a1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: label.map(str::to_owned),
                mnemonic: Some("Genrule".into()),
                worker: None,
            },
            process: ProcessInfo {
                pid: 2,
                ppid: 1,
                comm: "curl|x".into(),
                exe: None,
            },
            file: None,
            net: Some(NetInfo {
                proto: "tcp",
                addr: "127.0.0.1".parse().unwrap(),
                port,
                result: Some(0),
                send: false,
                unix_path: None,
                netns: None,
                private_netns: false,
            }),
            verdict: Verdict::Blocked,
            count: 2,
            cache_risk: None,
            fetch: None,
            summary: None,
        }
    }

    #[test]
    fn summary_has_tables_by_target_inventory_and_completeness() {
        let mut c = Completeness::default();
        c.events_lost.insert("ringbuf_full".into(), 3);
        let alerts = [net_alert(Some("//p:t"), 9)];
        let mut inventory = Inventory::default();
        inventory.record(crate::output::inventory::Seen {
            proto: "tcp",
            destination: "127.0.0.1:9".into(),
            verdict: "blocked",
            action_id: "a1",
            target: "//p:t (Genrule)".into(),
            process: "curl|x",
        });
        let answer = crate::output::dns_names::tests::a_answer("registry.example.test", 0x7f000001);
        inventory.names.answer(&answer, false);
        let md = render(
            &alerts,
            &RunFacts {
                command: "bazel build //...",
                command_exit_status: 0,
                violations: 1,
                completeness: &c,
                inventory: &inventory,
                fetches: &[],
            },
        );
        assert!(md.starts_with("## build-monitor: 1 violation(s)"), "{md}");
        assert!(
            md.contains("| //p:t (Genrule) | network_egress | `tcp 127.0.0.1:9` | blocked | 2 |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| `127.0.0.1:9` | registry.example.test | tcp | //p:t (Genrule) | curl\\|x | blocked | 1 |"
            ),
            "{md}"
        );
        assert!(md.contains("### Completeness: INCOMPLETE"), "{md}");
        assert!(md.contains("- 3 event(s) lost (ringbuf_full: 3)"), "{md}");
    }
}
