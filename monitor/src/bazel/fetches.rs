//! Repository fetches: which repository each of the Bazel server's
//! connects was for, and which went around Bazel's downloader.
//!
//! The source is Bazel's workspace rules log
//! (`--experimental_workspace_rules_log_file`, delimited `WorkspaceEvent`
//! protos, Bazel 1 to 7): its download events carry the repository and the
//! URLs given to the downloader, its execute events the command lines
//! repository rules ran. The kernel says who connected where: a connect by
//! the server JVM is the downloader's; a TCP connect by another process of
//! the Bazel job outside every spawn (a `repository_ctx.execute(["curl",
//! …])`, `git`) went around it (bazelbuild/bazel#19402) and is tied to the
//! repository whose execute event ran that program.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::Path,
};

use prost::Message as _;
use serde::Serialize;

use crate::policy::downloader::{Downloader, Judged, host_port};

/// The fields of `workspace_log.proto` used here (others are skipped).
#[derive(Clone, PartialEq, prost::Message)]
struct WorkspaceEvent {
    /// `//external:NAME` (Bazel 4) or `repository @NAME` (newer).
    #[prost(string, tag = "2")]
    context: String,
    #[prost(oneof = "Event", tags = "3, 4, 5")]
    event: Option<Event>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Event {
    #[prost(message, tag = "3")]
    Execute(ExecuteEvent),
    #[prost(message, tag = "4")]
    Download(DownloadEvent),
    /// `DownloadAndExtractEvent`: its URLs are field 1 too.
    #[prost(message, tag = "5")]
    DownloadAndExtract(DownloadEvent),
}

#[derive(Clone, PartialEq, prost::Message)]
struct ExecuteEvent {
    #[prost(string, repeated, tag = "2")]
    arguments: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DownloadEvent {
    #[prost(string, repeated, tag = "1")]
    url: Vec<String>,
}

/// What repository rules asked for, in log order.
#[derive(Debug, Default)]
pub struct WorkspaceLog {
    /// (repository, URL) per URL given to the downloader.
    pub downloads: Vec<(String, String)>,
    /// (repository, command line) per `repository_ctx.execute`.
    pub executes: Vec<(String, Vec<String>)>,
    /// Bytes at the end that were no complete event (a server killed
    /// mid-write); said in the report.
    pub undecoded_bytes: usize,
}

/// `@NAME` from the event's context.
fn repository(context: &str) -> String {
    let name = context
        .strip_prefix("//external:")
        .or_else(|| context.strip_prefix("repository @"))
        .or_else(|| context.strip_prefix("repository "));
    match name {
        Some(n) => format!("@{}", n.trim_start_matches('@')),
        None => context.to_string(),
    }
}

impl WorkspaceLog {
    pub fn parse(mut bytes: &[u8]) -> WorkspaceLog {
        let mut log = WorkspaceLog::default();
        while !bytes.is_empty() {
            let left = bytes.len();
            let Ok(e) = WorkspaceEvent::decode_length_delimited(&mut bytes) else {
                log.undecoded_bytes = left;
                break;
            };
            let repo = repository(&e.context);
            match e.event {
                Some(Event::Download(d) | Event::DownloadAndExtract(d)) => log
                    .downloads
                    .extend(d.url.into_iter().map(|u| (repo.clone(), u))),
                Some(Event::Execute(x)) => log.executes.push((repo, x.arguments)),
                None => {}
            }
        }
        log
    }

    /// The log Bazel wrote (missing: the command failed before fetching,
    /// or was not a build; nothing to join).
    pub fn load(path: &Path) -> Option<WorkspaceLog> {
        std::fs::read(path).ok().map(|b| WorkspaceLog::parse(&b))
    }
}

/// A TCP connect (or attempt) of the Bazel job outside every spawn, or of
/// a launcher spawn not labelled yet (Bazel 4 runs `repository_ctx.execute`
/// commands through process-wrapper).
#[derive(Debug, Clone)]
pub struct ServerConnect {
    /// The spawn's command line (after the launcher's `--`), if a spawn.
    pub command: Option<Vec<String>>,
    pub process: crate::output::alert::ProcessInfo,
    pub action: crate::output::alert::ActionInfo,
    pub net: crate::output::alert::NetInfo,
    /// The network policy's verdict: `allowed`, `observed` or `blocked`.
    pub verdict: &'static str,
    pub count: u64,
}

/// The job's connects, one per (pid, destination); bounded.
#[derive(Debug, Default)]
pub struct ServerConnects {
    pub by_key: BTreeMap<(u32, SocketAddr), ServerConnect>,
    /// Connects beyond `MAX_CONNECTS` distinct ones (not joined).
    pub dropped: u64,
}

const MAX_CONNECTS: usize = 4096;

impl ServerConnects {
    pub fn record(&mut self, c: ServerConnect) {
        let key = (c.process.pid, SocketAddr::new(c.net.addr, c.net.port));
        if let Some(seen) = self.by_key.get_mut(&key) {
            seen.count += 1;
            if c.verdict == "blocked" {
                seen.verdict = "blocked";
            }
        } else if self.by_key.len() < MAX_CONNECTS {
            self.by_key.insert(key, c);
        } else {
            self.dropped += 1;
        }
    }
}

/// The server JVM: Bazel's downloader runs in it. Anything else the job
/// ran outside its spawns (repository rules' commands) is not the
/// downloader.
fn is_server(p: &crate::output::alert::ProcessInfo) -> bool {
    let exe = p.exe.as_deref().unwrap_or_default();
    Path::new(exe).file_name().is_some_and(|n| n == "java") || (exe.is_empty() && p.comm == "java")
}

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

/// The addresses `host` stands for: itself when an address, the DNS
/// answers the job received for it, else what this host resolves it to
/// now (e.g. `/etc/hosts`).
fn addresses_of(
    host: &str,
    port: u16,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
    seen: &[IpAddr],
) -> BTreeSet<IpAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return [ip].into();
    }
    let mut out: BTreeSet<IpAddr> = seen
        .iter()
        .filter(|a| dns(**a).iter().any(|n| n.eq_ignore_ascii_case(host)))
        .copied()
        .collect();
    if out.is_empty()
        && let Ok(addrs) = (host, port).to_socket_addrs()
    {
        out.extend(addrs.map(|a| a.ip()));
    }
    out
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
                .filter(|c| c.command.is_none() && is_server(&c.process))
                .filter(|c| c.net.port == judged.port && addrs.contains(&c.net.addr.to_canonical()))
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
        connections: seen
            .iter()
            .map(|c| SocketAddr::new(c.net.addr, c.net.port).to_string())
            .collect(),
        processes: seen.iter().map(|c| c.process.comm.clone()).collect(),
        command,
        seen,
    }
}

/// TCP connects of the job's other processes: one fetch per process and
/// destination, tied to the repository whose command it was — a spawn by
/// its exact command line, a process of the job by the program its
/// command ran (preferring one whose command line names a URL to that
/// destination). A spawn no repository ran is a build action: skipped.
fn bypasses(
    log: &WorkspaceLog,
    connects: &ServerConnects,
    rules: &Downloader,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
) -> Vec<Fetch> {
    let mut out = Vec::new();
    for c in connects.by_key.values() {
        if c.command.is_none() && is_server(&c.process) || c.net.proto != "tcp" {
            continue;
        }
        let program = c.process.exe.as_deref().map(base_name).unwrap_or_default();
        let runs_it = |argv: &Vec<String>| match &c.command {
            Some(command) => same_command(command, argv),
            None => argv
                .first()
                .is_some_and(|a| base_name(a) == program || base_name(a) == c.process.comm),
        };
        let candidates: Vec<&(String, Vec<String>)> = log
            .executes
            .iter()
            .filter(|(_, argv)| runs_it(argv))
            .collect();
        if c.command.is_some() && candidates.is_empty() {
            continue;
        }
        let (addr, port) = (c.net.addr.to_canonical(), c.net.port);
        let best = candidates
            .iter()
            .find(|(_, argv)| url_to(argv, addr, port, dns).is_some())
            .or(candidates.first());
        let url = best.and_then(|(_, argv)| url_to(argv, addr, port, dns));
        let judged = match url {
            Some(u) => rules.judge(u).swap_remove(0),
            None => rules.judge_address(c.net.addr, c.net.port, &dns(c.net.addr)),
        };
        out.push(fetch(
            best.map(|(r, _)| r.clone()),
            Via::Bypass,
            url,
            &judged,
            vec![c.clone()],
            best.map(|(_, argv)| argv.clone()),
        ));
    }
    out
}

/// The argument of a command line that is a URL to `addr:port`.
fn url_to<'a>(
    argv: &'a [String],
    addr: IpAddr,
    port: u16,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
) -> Option<&'a String> {
    argv.iter().find(|a| {
        host_port(a)
            .is_some_and(|(h, p)| p == port && addresses_of(&h, p, dns, &[addr]).contains(&addr))
    })
}

/// The spawns that were a repository rule's command (Bazel 4 runs them
/// through process-wrapper, so they look like build spawns the execution
/// log does not name), by action id: their repository.
pub fn repository_commands(
    log: &WorkspaceLog,
    spawn_commands: &std::collections::HashMap<String, Vec<String>>,
) -> std::collections::HashMap<String, String> {
    spawn_commands
        .iter()
        .filter_map(|(id, command)| {
            let (repo, _) = log
                .executes
                .iter()
                .find(|(_, argv)| same_command(command, argv))?;
            Some((id.clone(), repo.clone()))
        })
        .collect()
}

/// A launcher's command is the repository rule's, its program perhaps
/// resolved to a path.
fn same_command(command: &[String], argv: &[String]) -> bool {
    command.len() == argv.len()
        && command
            .iter()
            .zip(argv)
            .enumerate()
            .all(|(i, (a, b))| a == b || i == 0 && base_name(a) == base_name(b))
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alert::{ActionInfo, NetInfo, ProcessInfo};

    fn event(context: &str, event: Event) -> Vec<u8> {
        WorkspaceEvent {
            context: context.into(),
            event: Some(event),
        }
        .encode_length_delimited_to_vec()
    }

    fn connect(pid: u32, exe: &str, addr: &str, port: u16) -> ServerConnect {
        ServerConnect {
            command: None,
            process: ProcessInfo {
                pid,
                ppid: 1,
                comm: base_name(exe).into(),
                exe: Some(exe.into()),
            },
            action: ActionInfo {
                id: "exec-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: Some("@bazel".into()),
                mnemonic: Some("BazelServer".into()),
                worker: None,
            },
            net: NetInfo {
                proto: "tcp",
                addr: addr.parse().unwrap(),
                port,
                result: Some(0),
                send: false,
                unix_path: None,
                netns: None,
                private_netns: false,
            },
            verdict: "allowed",
            count: 1,
        }
    }

    fn sample_log() -> WorkspaceLog {
        let mut bytes = event(
            "//external:allowed_file",
            Event::Download(DownloadEvent {
                url: vec!["http://127.0.0.1:81/a.txt".into()],
            }),
        );
        bytes.extend(event(
            "repository @denied",
            Event::DownloadAndExtract(DownloadEvent {
                url: vec!["http://localhost:81/d.tar".into()],
            }),
        ));
        bytes.extend(event(
            "//external:bypass",
            Event::Execute(ExecuteEvent {
                arguments: vec![
                    "curl".into(),
                    "-o".into(),
                    "f".into(),
                    "http://127.0.0.1:82/b".into(),
                ],
            }),
        ));
        bytes.extend([0x05, 0x0a]); // a cut-off event at the end
        WorkspaceLog::parse(&bytes)
    }

    #[test]
    fn the_log_names_each_urls_repository_and_each_command() {
        let log = sample_log();
        assert_eq!(
            log.downloads,
            [
                (
                    "@allowed_file".to_string(),
                    "http://127.0.0.1:81/a.txt".to_string()
                ),
                (
                    "@denied".to_string(),
                    "http://localhost:81/d.tar".to_string()
                ),
            ]
        );
        assert_eq!(log.executes[0].0, "@bypass");
        assert_eq!(log.undecoded_bytes, 2);
        let spawns = [
            (
                "process-wrapper-7",
                vec!["/usr/bin/curl", "-o", "f", "http://127.0.0.1:82/b"],
            ),
            ("process-wrapper-8", vec!["/bin/true"]),
        ]
        .map(|(id, argv)| (id.to_string(), argv.into_iter().map(String::from).collect()))
        .into();
        let repos = repository_commands(&log, &spawns);
        assert_eq!(repos.len(), 1);
        assert_eq!(repos["process-wrapper-7"], "@bypass");
    }

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
