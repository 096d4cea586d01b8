//! Repository fetches: which repository each of the Bazel server's
//! connects was for, and which went around Bazel's downloader.
//!
//! The source is Bazel's workspace rules log
//! (`--experimental_workspace_rules_log_file`, delimited `WorkspaceEvent`
//! protos; read here from Bazel 4.2.3): its download events carry the
//! repository and the URLs given to the downloader, its execute events the
//! command lines repository rules ran. The kernel says who connected where:
//! a connect by the server JVM is the downloader's; a TCP connect by a
//! repository rule's own command (`repository_ctx.execute(["curl", …])`,
//! `git`: a process-wrapper spawn in Bazel 4, matched by its command line,
//! or another process of the job outside every spawn, matched by program)
//! went around it (bazelbuild/bazel#19402) and is tied to the repository
//! whose execute event ran it. The verdicts are the
//! policy's (`policy::fetches`).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr, ToSocketAddrs as _},
    path::Path,
};

use prost::Message as _;

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
    pub action: crate::actions::registry::ActionInfo,
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub proto: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    /// The connect's result (0 or `-errno`) when known.
    pub result: Option<i64>,
    pub netns: Option<u32>,
    /// The network policy's verdict: `allowed`, `observed` or `blocked`.
    pub verdict: &'static str,
    pub count: u64,
}

impl ServerConnect {
    /// The server JVM's own connect: Bazel's downloader runs in it.
    /// Anything else (repository rules' commands) is not the downloader.
    pub fn by_server(&self) -> bool {
        let exe = self.exe.as_deref().unwrap_or_default();
        self.command.is_none()
            && (base_name(exe) == "java" || exe.is_empty() && self.comm == "java")
    }

    pub fn destination(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }
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
        let key = (c.pid, c.destination());
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

/// The host (lower case, IPv6 without brackets) and port (the scheme's
/// default when not given) of an http(s) URL.
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    Some((host.to_ascii_lowercase(), port))
}

/// The addresses `host` stands for: itself when an address, the DNS
/// answers the job received for it, else what this host resolves it to
/// now (e.g. `/etc/hosts`).
pub fn addresses_of(
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

/// The repository command a connect that is not the server's belongs
/// to: `None` for a build spawn (a spawn no repository rule ran);
/// otherwise the repository rule's command that ran it, if one matches —
/// a spawn by its exact command line, a process of the job by the program
/// its command ran, preferring one whose command line names a URL to the
/// connect's destination.
pub fn repository_command<'a>(
    log: &'a WorkspaceLog,
    c: &ServerConnect,
    dns: &dyn Fn(IpAddr) -> Vec<String>,
) -> Option<Option<CommandMatch<'a>>> {
    let program = c.exe.as_deref().map(base_name).unwrap_or_default();
    let runs_it = |argv: &Vec<String>| match &c.command {
        Some(command) => same_command(command, argv),
        None => argv
            .first()
            .is_some_and(|a| base_name(a) == program || base_name(a) == c.comm),
    };
    let candidates: Vec<&(String, Vec<String>)> = log
        .executes
        .iter()
        .filter(|(_, argv)| runs_it(argv))
        .collect();
    if c.command.is_some() && candidates.is_empty() {
        return None;
    }
    let (addr, port) = (c.addr.to_canonical(), c.port);
    let best = candidates
        .iter()
        .find(|(_, argv)| url_to(argv, addr, port, dns).is_some())
        .or(candidates.first());
    Some(best.map(|(repository, argv)| CommandMatch {
        repository,
        argv,
        url: url_to(argv, addr, port, dns),
    }))
}

/// A repository rule's command behind a connect.
pub struct CommandMatch<'a> {
    pub repository: &'a str,
    pub argv: &'a [String],
    /// Its argument that is a URL to the connect's destination.
    pub url: Option<&'a String>,
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
    spawn_commands: &HashMap<String, Vec<String>>,
) -> HashMap<String, String> {
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

pub fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    fn event(context: &str, event: Event) -> Vec<u8> {
        WorkspaceEvent {
            context: context.into(),
            event: Some(event),
        }
        .encode_length_delimited_to_vec()
    }

    /// A connect of `exe` to `addr:port` (pub for `policy::fetches`).
    pub fn connect(pid: u32, exe: &str, addr: &str, port: u16) -> ServerConnect {
        ServerConnect {
            command: None,
            action: crate::actions::registry::ActionInfo {
                id: "exec-1".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: Some("@bazel".into()),
                mnemonic: Some("BazelServer".into()),
                worker: None,
            },
            pid,
            ppid: 1,
            comm: base_name(exe).into(),
            exe: Some(exe.into()),
            proto: "tcp",
            addr: addr.parse().unwrap(),
            port,
            result: Some(0),
            netns: None,
            verdict: "allowed",
            count: 1,
        }
    }

    pub fn sample_log() -> WorkspaceLog {
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
    fn connects_are_tied_to_the_repository_command_that_made_them() {
        let log = sample_log();
        let mut curl = connect(11, "/usr/bin/curl", "127.0.0.1", 82);
        let m = repository_command(&log, &curl, &|_| Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(m.repository, "@bypass");
        assert_eq!(m.url.map(String::as_str), Some("http://127.0.0.1:82/b"));
        // As a spawn: by its command line; a build spawn is none of them.
        curl.command = Some(vec![
            "/usr/bin/curl".into(),
            "-o".into(),
            "f".into(),
            "http://127.0.0.1:82/b".into(),
        ]);
        assert!(repository_command(&log, &curl, &|_| Vec::new()).is_some_and(|m| m.is_some()));
        curl.command = Some(vec!["/bin/bash".into(), "-c".into(), "curl x".into()]);
        assert!(repository_command(&log, &curl, &|_| Vec::new()).is_none());
        assert!(connect(10, "/usr/lib/jvm/bin/java", "127.0.0.1", 81).by_server());
        assert_eq!(
            host_port("http://[::1]:81/a"),
            Some(("::1".to_string(), 81))
        );
        assert_eq!(
            host_port("https://h.test/a"),
            Some(("h.test".to_string(), 443))
        );
        assert_eq!(host_port("not a url"), None);
    }
}
