//! The verdict on Bazel's repository fetches: each URL given to Bazel's
//! downloader judged by `[bazel.downloader]` and joined with the server's
//! connects to its host; each connect of a repository rule's own command
//! reported as going around the downloader (`bazel::fetches` says which
//! repository and command).
use std::{collections::BTreeSet, net::IpAddr};

use serde::Serialize;

use crate::{
    bazel::fetches::{
        ServerConnect, ServerConnects, WorkspaceLog, addresses_of, repository_command,
    },
    output::alert::{Alert, AlertKind, FetchInfo, NetInfo, ProcessInfo, Verdict},
    policy::{
        downloader::{Downloader, Judged},
        judge::{Target, Violation},
    },
};

/// How the fetch was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `repository_ctx.download*`: Bazel's downloader (and its config).
    Downloader,
    /// A repository rule's own command: Bazel's downloader config never
    /// saw it.
    Bypass,
}

/// One fetch in the report.
#[derive(Debug, Clone, Serialize)]
pub struct Fetch {
    /// `@name`, or null when no repository's command matched the process.
    pub repository: Option<String>,
    pub via: Via,
    /// The URL asked for (null for a bypass whose command line named none).
    pub url: Option<String>,
    /// The URL fetched after `[bazel.downloader]` rewrites (= `url` when
    /// none applied).
    pub fetched_url: Option<String>,
    pub host: String,
    pub port: u16,
    /// `allowed` or `not_allowed` by `[bazel.downloader]`.
    pub verdict: &'static str,
    /// The connects the kernel saw for it: `addr:port`.
    pub connections: BTreeSet<String>,
    /// The processes (comm) that made them.
    pub processes: BTreeSet<String>,
    /// For a bypass: the repository rule's command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// The connects behind it, to raise alerts from.
    #[serde(skip)]
    pub seen: Vec<ServerConnect>,
}

/// Joins the log with the connects and judges every fetch.
pub fn join(
    log: &WorkspaceLog,
    connects: &ServerConnects,
    rules: &Downloader,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
) -> Vec<Fetch> {
    let seen_addrs: Vec<IpAddr> = connects
        .by_key
        .keys()
        .map(|(_, a)| a.ip().to_canonical())
        .collect();
    let mut fetches = Vec::new();
    for (repo, url) in &log.downloads {
        for judged in rules.judge(url) {
            let addrs = addresses_of(&judged.host, judged.port, dns, &seen_addrs);
            let seen: Vec<ServerConnect> = connects
                .by_key
                .values()
                .filter(|c| c.by_server())
                .filter(|c| c.port == judged.port && addrs.contains(&c.addr.to_canonical()))
                .cloned()
                .collect();
            fetches.push(fetch(
                Some(repo.clone()),
                Via::Downloader,
                Some(url),
                &judged,
                seen,
                None,
            ));
        }
    }
    fetches.extend(bypasses(log, connects, rules, dns));
    fetches
}

fn fetch(
    repository: Option<String>,
    via: Via,
    url: Option<&String>,
    judged: &Judged,
    seen: Vec<ServerConnect>,
    command: Option<Vec<String>>,
) -> Fetch {
    Fetch {
        repository,
        via,
        url: url.cloned(),
        fetched_url: url.map(|_| judged.url.clone()),
        host: judged.host.clone(),
        port: judged.port,
        verdict: if judged.allowed {
            "allowed"
        } else {
            "not_allowed"
        },
        connections: seen.iter().map(|c| c.destination().to_string()).collect(),
        processes: seen.iter().map(|c| c.comm.clone()).collect(),
        command,
        seen,
    }
}

/// TCP connects of the job's other processes: one fetch per process and
/// destination, judged by the URL its command named (else by address).
fn bypasses(
    log: &WorkspaceLog,
    connects: &ServerConnects,
    rules: &Downloader,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
) -> Vec<Fetch> {
    let mut out = Vec::new();
    for c in connects.by_key.values() {
        if c.by_server() || c.proto != "tcp" {
            continue;
        }
        let Some(command) = repository_command(log, c, dns) else {
            continue; // a build spawn
        };
        let url = command.as_ref().and_then(|m| m.url);
        let judged = match url {
            Some(u) => rules.judge(u).swap_remove(0),
            None => rules.judge_address(c.addr, c.port, &dns(c.addr)),
        };
        out.push(fetch(
            command.as_ref().map(|m| m.repository.to_string()),
            Via::Bypass,
            url,
            &judged,
            vec![c.clone()],
            command.as_ref().map(|m| m.argv.to_vec()),
        ));
    }
    out
}

/// The stderr summary's lines about fetches (none when there were none).
pub fn summary_lines(fetches: &[Fetch]) -> String {
    if fetches.is_empty() {
        return String::new();
    }
    let through = fetches.iter().filter(|f| f.via == Via::Downloader).count();
    let refused = fetches
        .iter()
        .filter(|f| f.verdict == "not_allowed")
        .count();
    let mut out = format!(
        "monitor: {} repository fetch(es): {through} through Bazel's downloader, {} around it; {refused} not allowed by [bazel.downloader]\n",
        fetches.len(),
        fetches.len() - through
    );
    for f in fetches.iter().filter(|f| f.via == Via::Bypass) {
        out.push_str(&format!(
            "monitor: WARNING: {} of repository {} fetched {} outside Bazel's downloader (its config never saw it)\n",
            f.processes.iter().cloned().collect::<Vec<_>>().join(", "),
            f.repository.as_deref().unwrap_or("(unknown)"),
            f.url
                .clone()
                .unwrap_or_else(|| f.connections.iter().cloned().collect::<Vec<_>>().join(", "))
        ));
    }
    out
}

/// The violations among judged fetches: a downloader fetch the rules do
/// not allow, joined to a connect (`fetch_not_allowed`); with rules
/// configured, every connect that went around the downloader
/// (`fetch_bypassed_downloader`). One per connect (process, destination).
pub fn fetch_violations(fetches: &[Fetch], rules_configured: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    for f in fetches {
        let bypass = f.via == Via::Bypass;
        if !(bypass && rules_configured || !bypass && f.verdict == "not_allowed") {
            continue;
        }
        for c in &f.seen {
            let info = FetchInfo {
                repository: f.repository.clone(),
                url: f.url.clone(),
                fetched_url: f.fetched_url.clone(),
                host: f.host.clone(),
                via: if bypass { "bypass" } else { "downloader" },
            };
            out.push(Violation {
                target: Target::Fetch(
                    f.fetched_url
                        .clone()
                        .unwrap_or_else(|| format!("{}:{}", f.host, f.port)),
                ),
                alert: Alert {
                    time: std::time::SystemTime::now(),
                    kind: AlertKind::Fetch { bypass },
                    action: c.action.clone(),
                    process: ProcessInfo {
                        pid: c.pid,
                        ppid: c.ppid,
                        comm: c.comm.clone(),
                        exe: c.exe.clone(),
                    },
                    file: None,
                    net: Some(NetInfo {
                        proto: c.proto,
                        addr: c.addr,
                        port: c.port,
                        result: c.result,
                        send: false,
                        unix_path: None,
                        netns: c.netns,
                        private_netns: false,
                    }),
                    verdict: if c.verdict == "blocked" {
                        Verdict::Blocked
                    } else {
                        Verdict::Observed
                    },
                    count: 1,
                    cache_risk: None,
                    fetch: Some(Box::new(info)),
                    summary: None,
                },
                undecided: false,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bazel::fetches::tests::{connect, sample_log};

    #[test]
    fn downloader_fetches_are_joined_by_host_and_bypasses_by_program() {
        let log = sample_log();
        let mut connects = ServerConnects::default();
        connects.record(connect(10, "/usr/lib/jvm/bin/java", "127.0.0.1", 81));
        let mut curl = connect(11, "/usr/bin/curl", "127.0.0.1", 82);
        curl.command = Some(
            ["/usr/bin/curl", "-o", "f", "http://127.0.0.1:82/b"]
                .map(String::from)
                .to_vec(),
        );
        connects.record(curl);
        // A build spawn's connect: no repository ran it.
        let mut genrule = connect(12, "/usr/bin/curl", "127.0.0.1", 82);
        genrule.command = Some(vec!["/bin/bash".into(), "-c".into(), "curl x".into()]);
        connects.record(genrule);
        // The JVM connects to v4-mapped addresses.
        connects.record(connect(10, "/usr/lib/jvm/bin/java", "::ffff:127.0.0.1", 81));
        let rules = Downloader::new(&crate::policy::downloader::DownloaderConfig {
            allow: vec!["127.0.0.1".into()],
            block: vec!["*".into()],
            rewrite: vec![],
        });
        let fetches = join(&log, &connects, &rules, &|_| Vec::new());
        assert_eq!(fetches.len(), 3, "{fetches:#?}");
        let allowed = &fetches[0];
        assert_eq!(allowed.repository.as_deref(), Some("@allowed_file"));
        assert_eq!((allowed.via, allowed.verdict), (Via::Downloader, "allowed"));
        assert_eq!(
            allowed.connections,
            [
                "127.0.0.1:81".to_string(),
                "[::ffff:127.0.0.1]:81".to_string()
            ]
            .into()
        );
        let denied = &fetches[1];
        assert_eq!(
            (denied.host.as_str(), denied.verdict),
            ("localhost", "not_allowed")
        );
        // localhost is 127.0.0.1 here (/etc/hosts): the JVM's connect.
        assert!(denied.connections.contains("127.0.0.1:81"), "{denied:#?}");
        let bypass = &fetches[2];
        assert_eq!(bypass.via, Via::Bypass);
        assert_eq!(bypass.repository.as_deref(), Some("@bypass"));
        assert_eq!(bypass.url.as_deref(), Some("http://127.0.0.1:82/b"));
        assert_eq!(bypass.processes, ["curl".to_string()].into());
        assert_eq!(bypass.verdict, "allowed");
    }
}
