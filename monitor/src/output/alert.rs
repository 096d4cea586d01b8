//! The `monitor.alert/v1` object: one JSON line per difference between what an
//! action declared and what it did.
//!
//! The key set and key order are a contract (docs/alerts.md): log
//! pipelines and CI reports parse these lines, so the JSON is built from
//! `Serialize` structs whose field order *is* the contract order, and every
//! string goes through serde_json so that quotes, control characters and
//! newlines are escaped and a line is never split.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::events::paths::escape_for_display;

/// The `schema` value of every alert line; bump only with a new contract.
pub const SCHEMA: &str = "monitor.alert/v1";

/// `net.proto` of a packet socket (`AF_PACKET`): no address, no port.
pub const PACKET: &str = "packet";

/// What kind of difference was seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// The action opened a file it did not declare as an input.
    UndeclaredFile,
    /// The action opened for writing (or created) a file outside its
    /// outputs and writable directories.
    UndeclaredWrite,
    /// The action connected somewhere the network policy does not allow.
    NetworkEgress,
    /// A remote-execution action with violations completed successfully:
    /// its result may be in the shared action cache (follow-up alert).
    CacheRisk,
    /// A Bazel spawn ran under weaker isolation than `bazel.require_isolation`
    /// (`ran` and `required` are the config's spellings).
    WeakIsolation {
        ran: &'static str,
        required: &'static str,
    },
    /// A repository fetch the `[bazel.downloader]` rules do not allow
    /// (`bypass` false), or one that went around Bazel's downloader
    /// (`bypass` true); `fetch` says which repository and URL.
    Fetch { bypass: bool },
}

impl AlertKind {
    /// The contract spelling, also used as the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::UndeclaredFile => "undeclared_file",
            AlertKind::UndeclaredWrite => "undeclared_write",
            AlertKind::NetworkEgress => "network_egress",
            AlertKind::CacheRisk => "cache_risk",
            AlertKind::WeakIsolation { .. } => "weak_isolation",
            AlertKind::Fetch { bypass: false } => "fetch_not_allowed",
            AlertKind::Fetch { bypass: true } => "fetch_bypassed_downloader",
        }
    }
}

/// Whether the access only happened (and was seen) or was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Observed,
    Blocked,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Observed => "observed",
            Verdict::Blocked => "blocked",
        }
    }
}

/// Which build action did it (named by the registry).
pub use crate::actions::registry::ActionInfo;

/// Which process of the action did it.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
}

/// The file access behind an `undeclared_file` alert.
#[derive(Clone, Debug)]
pub struct FileInfo {
    /// Raw path bytes as the kernel saw them; may be non-UTF-8.
    pub path: Vec<u8>,
    /// The operation: `"open"`, `"exec"`, `"pidfd_getfd"`, or a name change (`"unlink"`,
    /// `"rmdir"`, `"mkdir"`, `"mknod"`, `"bind"`, `"truncate"`, `"chmod"`, `"chown"`,
    /// `"utimes"`, `"setxattr"`, `"removexattr"`, `"link"`, `"symlink"`,
    /// `"rename"`, `"rename_from"`).
    pub op: &'static str,
    /// Raw open(2) flags.
    pub flags: u64,
    /// Syscall result: fd or `-errno`.
    pub result: i64,
    /// Why the path is less than certain (truncated, unresolved base
    /// directory); said in the message.
    pub caveat: Option<&'static str>,
    /// The name the process passed, when it differs from `path` (the object
    /// opened).
    pub requested: Option<Vec<u8>>,
    /// The object's device (`major:minor`) and inode, when the kernel
    /// reported them (successful opens, exec).
    pub dev: Option<String>,
    pub ino: Option<u64>,
    /// Why the object counts as undeclared although its name does not say
    /// so (a hard link, something mounted over a declared name).
    pub note: Option<&'static str>,
}

/// The connection behind a `network_egress` alert.
#[derive(Clone, Debug)]
pub struct NetInfo {
    /// `"tcp"`, `"udp"`, `"icmp"`, `"raw"`, `"unix"`, `"packet"` or
    /// `"unknown"`.
    pub proto: &'static str,
    pub addr: IpAddr,
    pub port: u16,
    /// Syscall result: 0 or `-errno`; `None` when the call has none the
    /// monitor can see (io_uring, datagram sends, a connect still blocked).
    pub result: Option<i64>,
    /// A datagram sent to the address rather than a connect.
    pub send: bool,
    /// For `proto` "unix": the socket path (`@name` when abstract); `addr`
    /// and `port` are then unused.
    pub unix_path: Option<String>,
    /// Network namespace inode, when known: a connect inside a private netns
    /// (e.g. the sandbox's) cannot reach the host network.
    pub netns: Option<u32>,
    /// The connect came from a network namespace other than the host's (a
    /// sandbox without network): an egress attempt; said in the message.
    pub private_netns: bool,
}

/// What a `cache_risk` alert refers to.
#[derive(Clone, Debug, Serialize)]
pub struct CacheRiskInfo {
    /// The REAPI action digest (`<sha256>/<size>`): the action cache key.
    pub action_digest: String,
    pub exit_code: i32,
    /// The action's violations (distinct kind and target, the first 64).
    pub violations: Vec<ViolationRef>,
    pub violations_total: u64,
}

/// What a `fetch_not_allowed` / `fetch_bypassed_downloader` alert refers
/// to (the alert's `fetch` object).
#[derive(Clone, Debug, Serialize)]
pub struct FetchInfo {
    /// `@name`; null when no repository rule's command matched.
    pub repository: Option<String>,
    /// The URL asked for, and fetched after `[bazel.downloader]` rewrites.
    pub url: Option<String>,
    pub fetched_url: Option<String>,
    pub host: String,
    /// `downloader` or `bypass`.
    pub via: &'static str,
}

/// One violation a `cache_risk` alert refers to.
#[derive(Clone, Debug, Serialize)]
pub struct ViolationRef {
    pub kind: &'static str,
    /// The file path, or `addr:port`.
    pub target: String,
}

/// One alert; `file` is set for `UndeclaredFile`, `net` for `NetworkEgress`,
/// `cache_risk` for `CacheRisk`.
#[derive(Clone, Debug)]
pub struct Alert {
    pub time: SystemTime,
    pub kind: AlertKind,
    pub action: ActionInfo,
    pub process: ProcessInfo,
    pub file: Option<FileInfo>,
    pub net: Option<NetInfo>,
    pub verdict: Verdict,
    /// How many identical (action, kind, target) events this alert folds;
    /// for a summary, how many events it stands for.
    pub count: u64,
    pub cache_risk: Option<CacheRiskInfo>,
    /// The repository fetch behind a `fetch_*` alert.
    pub fetch: Option<Box<FetchInfo>>,
    /// Set on a summary of violations suppressed past the action's alert
    /// budget (`output::fold`); `file`/`net` then hold the first of them.
    pub summary: Option<SummaryInfo>,
}

/// What a summary alert stands for: violations of one action and kind that
/// were not written one by one because its alert budget was spent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryInfo {
    /// Violation events summarised (equal to the alert's `count`).
    pub suppressed: u64,
    /// Distinct targets among them.
    pub distinct: u64,
    /// Where they went: `/common/dir/**` for files, an address block
    /// (`10.0.0.0/8`) for connects, `*` when nothing is common.
    pub prefix: String,
    /// The budget that was spent: alerts per window, and the window.
    pub budget: u32,
    pub window_s: u64,
}

/// The name of this node (`node` key): set once at start from the config,
/// else the host name.
static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the `node` of every alert; the first call wins (config at start).
pub fn set_node(name: &str) {
    let _ = NODE.set(name.to_string());
}

pub fn node() -> &'static str {
    NODE.get_or_init(host_name)
}

/// The kernel's host name (`uname -n`), `"unknown"` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

// Wire structs: field order here is the contract's key order.

/// `isolation` (`kind` = `weak_isolation`).
#[derive(Serialize)]
struct IsolationJson {
    ran: &'static str,
    required: &'static str,
}

#[derive(Serialize)]
struct AlertJson<'a> {
    schema: &'static str,
    time: String,
    kind: &'static str,
    node: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    action: ActionJson<'a>,
    process: ProcessJson<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<FileJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    net: Option<NetJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_risk: Option<&'a CacheRiskInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    isolation: Option<IsolationJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetch: Option<&'a FetchInfo>,
    verdict: &'static str,
    count: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<SummaryJson<'a>>,
    message: String,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    suppressed: u64,
    distinct: u64,
    prefix: &'a str,
    budget: u32,
    window_s: u64,
}

#[derive(Serialize)]
struct ActionJson<'a> {
    id: &'a str,
    cgroup: &'a str,
    cgroup_id: u64,
    label: Option<&'a str>,
    mnemonic: Option<&'a str>,
    /// Remote-execution actions only (additive keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invocation_id: Option<&'a str>,
}

#[derive(Serialize)]
struct ProcessJson<'a> {
    pid: u32,
    ppid: u32,
    comm: &'a str,
    exe: Option<&'a str>,
}

#[derive(Serialize)]
struct FileJson {
    path: String,
    op: &'static str,
    flags: String,
    result: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    requested_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ino: Option<u64>,
}

#[derive(Serialize)]
struct NetJson {
    proto: &'static str,
    family: &'static str,
    addr: String,
    port: u16,
    /// Absent when the call has no result the monitor sees.
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<u32>,
    /// `"connect"` or `"send"` (additive key).
    op: &'static str,
}

impl FileJson {
    fn of(f: &FileInfo) -> FileJson {
        FileJson {
            path: escape_for_display(&f.path),
            op: f.op,
            flags: open_flags_to_string(f.flags),
            result: f.result,
            requested_path: f.requested.as_deref().map(escape_for_display),
            dev: f.dev.clone(),
            ino: f.ino,
        }
    }
}

impl NetJson {
    fn of(n: &NetInfo) -> NetJson {
        let packet = n.proto == PACKET;
        NetJson {
            proto: n.proto,
            family: match (&n.unix_path, packet) {
                (Some(_), _) => "unix",
                (None, true) => "packet",
                (None, false) => family(n.addr),
            },
            addr: n.unix_path.clone().unwrap_or_else(|| n.addr.to_string()),
            port: n.port,
            result: n.result,
            netns: n.netns,
            op: match (packet, n.send) {
                (true, _) => "socket",
                (false, true) => "send",
                (false, false) => "connect",
            },
        }
    }
}

impl Alert {
    /// The alert as one JSON line (no trailing newline).
    ///
    /// `file` appears only for `undeclared_file` and `net` only for
    /// `network_egress`, as the contract says; a payload that does not match
    /// the kind is left out rather than confusing consumers.
    pub fn to_json_line(&self) -> String {
        self.to_json_line_with_id(None)
    }

    /// The line with an idempotency key (`id`), as the sinks write it.
    pub fn to_json_line_with_id(&self, id: Option<&str>) -> String {
        let file = match (self.kind, &self.file) {
            (AlertKind::UndeclaredFile | AlertKind::UndeclaredWrite, Some(f)) => {
                Some(FileJson::of(f))
            }
            _ => None,
        };
        let net = match (self.kind, &self.net) {
            (AlertKind::NetworkEgress | AlertKind::Fetch { .. }, Some(n)) => Some(NetJson::of(n)),
            _ => None,
        };
        let json = AlertJson {
            schema: SCHEMA,
            time: format_time(self.time),
            kind: self.kind.as_str(),
            node: node(),
            id,
            action: ActionJson {
                id: &self.action.id,
                cgroup: &self.action.cgroup,
                cgroup_id: self.action.cgroup_id,
                label: self.action.label.as_deref(),
                mnemonic: self.action.mnemonic.as_deref(),
                digest: self.action.worker.as_ref().map(|w| w.digest.as_str()),
                invocation_id: self
                    .action
                    .worker
                    .as_ref()
                    .and_then(|w| w.invocation_id.as_deref()),
            },
            process: ProcessJson {
                pid: self.process.pid,
                ppid: self.process.ppid,
                comm: &self.process.comm,
                exe: self.process.exe.as_deref(),
            },
            file,
            net,
            cache_risk: match self.kind {
                AlertKind::CacheRisk => self.cache_risk.as_ref(),
                _ => None,
            },
            isolation: match self.kind {
                AlertKind::WeakIsolation { ran, required } => Some(IsolationJson { ran, required }),
                _ => None,
            },
            fetch: match self.kind {
                AlertKind::Fetch { .. } => self.fetch.as_deref(),
                _ => None,
            },
            verdict: self.verdict.as_str(),
            count: self.count,
            summary: self.summary.as_ref().map(|s| SummaryJson {
                suppressed: s.suppressed,
                distinct: s.distinct,
                prefix: &s.prefix,
                budget: s.budget,
                window_s: s.window_s,
            }),
            message: self.message(),
        };
        // Only strings, integers and options of them: serialisation cannot fail.
        serde_json::to_string(&json).expect("alert JSON serialisation is infallible")
    }

    /// A sentence a person reads in a CI log or report, e.g.
    /// `//pkg:t (Genrule) opened /etc/shadow (O_RDONLY), which it did not declare`.
    pub fn message(&self) -> String {
        if let Some(s) = &self.summary {
            return self.summary_message(s);
        }
        let mut m = self.who();
        let blocked = self.verdict == Verdict::Blocked;
        let result = match (self.kind, &self.file, &self.net) {
            (AlertKind::UndeclaredFile | AlertKind::UndeclaredWrite, Some(f), _) => {
                file_sentence(&mut m, self.kind, f, blocked);
                f.result
            }
            (AlertKind::NetworkEgress, _, Some(n)) if n.proto == PACKET => {
                let _ = write!(
                    m,
                    " opened a packet socket (AF_PACKET: raw frames, below every address rule), which the network policy does not allow"
                );
                if blocked {
                    m.push_str(" [the process was killed before it could use it]");
                }
                0
            }
            (AlertKind::NetworkEgress, _, Some(n)) => {
                let verb = match (blocked, n.send) {
                    (true, false) => " was blocked from connecting to ",
                    (true, true) => " was blocked from sending to ",
                    (false, false) => " connected to ",
                    (false, true) => " sent to ",
                };
                let dest = match &n.unix_path {
                    Some(path) => format!("unix socket {path}"),
                    // ICMP and raw packets have no port.
                    None if n.port == 0 && n.send => n.addr.to_string(),
                    None => std::net::SocketAddr::new(n.addr, n.port).to_string(),
                };
                let _ = write!(
                    m,
                    "{verb}{dest} over {}, which the network policy does not allow",
                    n.proto
                );
                if n.private_netns {
                    m.push_str(" [attempted from a network namespace of its own (sandbox without network)]");
                }
                n.result.unwrap_or(0)
            }
            (AlertKind::CacheRisk, ..) => {
                self.cache_risk_message(&mut m);
                0
            }
            (AlertKind::UndeclaredFile | AlertKind::UndeclaredWrite, ..) => {
                m.push_str(" opened a file it did not declare");
                0
            }
            (AlertKind::WeakIsolation { ran, required }, ..) => {
                let _ = write!(
                    m,
                    " ran with isolation {ran}, weaker than the required {required}"
                );
                0
            }
            (AlertKind::NetworkEgress, ..) => {
                m.push_str(" made a connection the network policy does not allow");
                0
            }
            (AlertKind::Fetch { bypass }, ..) => {
                self.fetch_sentence(&mut m, bypass);
                0
            }
        };
        // A blocked attempt fails by design (EPERM); saying so again is noise.
        if result < 0 && !blocked {
            let _ = write!(m, " ({})", failure_note(result));
        }
        if self.count > 1 {
            let _ = write!(m, " ({} times)", self.count);
        }
        m
    }

    /// `: repository @r fetched URL (host h) through Bazel's downloader,
    /// which [bazel.downloader] does not allow; connected to a:p` or `: curl
    /// (repository @r) fetched URL outside Bazel's downloader …`.
    fn fetch_sentence(&self, m: &mut String, bypass: bool) {
        let f = self.fetch.as_deref();
        let repo = f
            .and_then(|f| f.repository.as_deref())
            .unwrap_or("(unknown repository)");
        let what = f
            .and_then(|f| f.fetched_url.clone().or(f.url.clone()))
            .or_else(|| f.map(|f| format!("host {}", f.host)))
            .unwrap_or_default();
        let dest = self
            .net
            .as_ref()
            .map(|n| std::net::SocketAddr::new(n.addr, n.port).to_string())
            .unwrap_or_default();
        if bypass {
            let _ = write!(
                m,
                ": {} (repository {repo}) fetched {what} outside Bazel's downloader, connecting to {dest}: \
                 [bazel.downloader] rules never saw it",
                self.process.comm
            );
        } else {
            let _ = write!(
                m,
                ": repository {repo} fetched {what} through Bazel's downloader, connecting to {dest}; \
                 [bazel.downloader] does not allow host {}",
                f.map(|f| f.host.as_str()).unwrap_or_default()
            );
        }
    }

    fn cache_risk_message(&self, m: &mut String) {
        let Some(c) = &self.cache_risk else {
            m.push_str(
                " completed successfully after violations: its result may be in the action cache",
            );
            return;
        };
        let _ = write!(
            m,
            " completed successfully (exit {}) after {} violation(s) ({}): its result may be in the \
             action cache under action digest {}; evict that entry",
            c.exit_code,
            c.violations_total,
            c.violations
                .iter()
                .map(|v| format!("{} {}", v.kind, v.target))
                .collect::<Vec<_>>()
                .join(", "),
            c.action_digest
        );
    }

    /// E.g. `//pkg:t (Genrule): 199742 more undeclared opens under
    /// /nonexistent/** suppressed (alert budget: 300 per 60 s; first: /nonexistent/a)`.
    fn summary_message(&self, s: &SummaryInfo) -> String {
        let what = match self.kind {
            AlertKind::UndeclaredFile => "undeclared opens under",
            AlertKind::UndeclaredWrite => "undeclared writes under",
            // Never summarised (written past the budget); for completeness.
            AlertKind::CacheRisk => "cache risks for",
            AlertKind::WeakIsolation { .. } => "weak isolations of",
            AlertKind::Fetch { .. } => "repository fetches to",
            AlertKind::NetworkEgress => "disallowed connections to",
        };
        let first = match (&self.file, &self.net) {
            (Some(f), _) => escape_for_display(&f.path),
            (_, Some(n)) => std::net::SocketAddr::new(n.addr, n.port).to_string(),
            _ => String::new(),
        };
        format!(
            "{}: {} more {what} {} suppressed ({} distinct; alert budget: {} per {} s; first: {first})",
            self.who(),
            s.suppressed,
            s.prefix,
            s.distinct,
            s.budget,
            s.window_s
        )
    }

    /// The action named by its label when known, else by id and cgroup.
    fn who(&self) -> String {
        let a = &self.action;
        match (&a.label, &a.mnemonic) {
            (Some(l), Some(mn)) => format!("{l} ({mn})"),
            (Some(l), None) => l.clone(),
            (None, Some(mn)) => format!("{mn} action {} (cgroup {})", a.id, a.cgroup),
            (None, None) => format!("action {} (cgroup {})", a.id, a.cgroup),
        }
    }
}

/// `… opened /x (O_RDONLY) as /link, which it did not declare [caveat]`.
fn file_sentence(m: &mut String, kind: AlertKind, f: &FileInfo, blocked: bool) {
    let verb = match (blocked, f.op) {
        (true, _) => " was blocked from opening ",
        (false, "exec") => " executed ",
        (false, "unlink") => " removed ",
        (false, "rmdir") => " removed the directory ",
        (false, "mkdir") => " made the directory ",
        (false, "mknod") => " made (mknod) ",
        (false, "bind") => " bound a unix socket at ",
        (false, "truncate") => " truncated ",
        (false, "chmod") => " changed the mode of ",
        (false, "chown") => " changed the owner of ",
        (false, "utimes") => " changed the timestamps of ",
        (false, "setxattr") => " set an extended attribute of ",
        (false, "removexattr") => " removed an extended attribute of ",
        (false, "link") => " made a hard link at ",
        (false, "symlink") => " made a symlink at ",
        (false, "rename") => " renamed a file to ",
        (false, "rename_from") => " renamed away ",
        (false, "pidfd_getfd") => " took from another process (pidfd_getfd) ",
        (false, _) => " opened ",
    };
    if f.path.is_empty() {
        let _ = write!(m, "{verb}a file whose name was not seen");
    } else {
        let _ = write!(m, "{verb}{}", escape_for_display(&f.path));
    }
    if matches!(f.op, "open" | "exec" | "pidfd_getfd") {
        let _ = write!(m, " ({})", open_flags_to_string(f.flags));
    }
    if let Some(requested) = &f.requested {
        let _ = write!(m, " as {}", escape_for_display(requested));
    }
    m.push_str(match kind {
        AlertKind::UndeclaredWrite => ", outside its outputs and writable directories",
        _ => ", which it did not declare",
    });
    if let Some(note) = f.note {
        let _ = write!(m, " ({note})");
    }
    if let Some(caveat) = f.caveat {
        let _ = write!(m, " [{caveat}]");
    }
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "inet",
        IpAddr::V6(_) => "inet6",
    }
}

/// RFC 3339 UTC with milliseconds. Times humantime cannot print (before 1970,
/// after 9999) are clamped so a bad clock never panics the alert path.
fn format_time(t: SystemTime) -> String {
    const MAX_SECS: u64 = 253_402_300_799; // 9999-12-31T23:59:59Z
    let max = UNIX_EPOCH + Duration::from_secs(MAX_SECS);
    let t = t.clamp(UNIX_EPOCH, max);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The failure of an attempt, e.g. `attempt failed: ECONNREFUSED`.
fn failure_note(result: i64) -> String {
    let errno = result.unsigned_abs();
    if errno == libc::EINPROGRESS as u64 {
        // Non-blocking connect: the attempt was made, its outcome comes later.
        return "non-blocking, in progress".to_string();
    }
    match errno_name(errno) {
        Some(name) => format!("attempt failed: {name}"),
        None => format!("attempt failed: errno {errno}"),
    }
}

/// The symbolic name (`ECONNREFUSED`) of an errno, from nix's table of the
/// platform's errnos (its `Debug` is the variant name); `None` for numbers
/// it does not know.
fn errno_name(errno: u64) -> Option<String> {
    let errno = i32::try_from(errno).ok()?;
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => None,
        known => Some(format!("{known:?}")),
    }
}

/// Kernel (x86_64, asm-generic) value of O_LARGEFILE. glibc defines it as 0
/// on 64-bit, but the kernel may still report the bit (e.g. io_uring opens).
const O_LARGEFILE_KERNEL: u64 = 0o100000;

/// Open flags as `O_WRONLY|O_CREAT|O_TRUNC`: the access mode first, then the
/// known flags in bit order, then any leftover bits as one hex number.
pub fn open_flags_to_string(flags: u64) -> String {
    let f = |v: libc::c_int| v as u64;
    // Multi-bit flags (O_SYNC, O_TMPFILE) come before their single-bit parts
    // so that the whole name is used and the part is consumed with it.
    let table: [(u64, &str); 17] = [
        (f(libc::O_CREAT), "O_CREAT"),
        (f(libc::O_EXCL), "O_EXCL"),
        (f(libc::O_NOCTTY), "O_NOCTTY"),
        (f(libc::O_TRUNC), "O_TRUNC"),
        (f(libc::O_APPEND), "O_APPEND"),
        (f(libc::O_NONBLOCK), "O_NONBLOCK"),
        (f(libc::O_SYNC), "O_SYNC"),
        (f(libc::O_DSYNC), "O_DSYNC"),
        (f(libc::O_ASYNC), "O_ASYNC"),
        (f(libc::O_DIRECT), "O_DIRECT"),
        (O_LARGEFILE_KERNEL, "O_LARGEFILE"),
        (f(libc::O_TMPFILE), "O_TMPFILE"),
        (f(libc::O_DIRECTORY), "O_DIRECTORY"),
        (f(libc::O_NOFOLLOW), "O_NOFOLLOW"),
        (f(libc::O_NOATIME), "O_NOATIME"),
        (f(libc::O_CLOEXEC), "O_CLOEXEC"),
        (f(libc::O_PATH), "O_PATH"),
    ];
    let accmode = f(libc::O_ACCMODE);
    let mut parts: Vec<String> = Vec::new();
    parts.push(
        match flags & accmode {
            0 => "O_RDONLY",
            1 => "O_WRONLY",
            2 => "O_RDWR",
            _ => "O_ACCMODE",
        }
        .to_string(),
    );
    let mut rest = flags & !accmode;
    for (bits, name) in table {
        if rest & bits == bits {
            parts.push(name.to_string());
            rest &= !bits;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    parts.join("|")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn action(label: bool) -> ActionInfo {
        ActionInfo {
            id: "build-42".into(),
            cgroup: "/sys/fs/cgroup/unified/build/build-42".into(),
            cgroup_id: 123,
            label: label.then(|| "//pkg:target".into()),
            mnemonic: label.then(|| "Genrule".into()),
            worker: None,
        }
    }

    fn process() -> ProcessInfo {
        ProcessInfo {
            pid: 42,
            ppid: 41,
            comm: "cat".into(),
            exe: Some("/usr/bin/cat".into()),
        }
    }

    pub(crate) fn file_alert(path: &[u8], label: bool) -> Alert {
        Alert {
            time: UNIX_EPOCH + Duration::from_millis(1_795_341_600_123),
            kind: AlertKind::UndeclaredFile,
            action: action(label),
            process: process(),
            file: Some(FileInfo {
                path: path.to_vec(),
                op: "open",
                flags: libc::O_RDONLY as u64,
                result: 3,
                caveat: None,
                requested: None,
                dev: None,
                ino: None,
                note: None,
            }),
            net: None,
            verdict: Verdict::Observed,
            count: 1,
            cache_risk: None,
            fetch: None,
            summary: None,
        }
    }

    fn net_alert(addr: IpAddr, result: i64) -> Alert {
        Alert {
            time: UNIX_EPOCH,
            kind: AlertKind::NetworkEgress,
            action: action(true),
            process: process(),
            file: None,
            net: Some(NetInfo {
                proto: "tcp",
                addr,
                port: 9,
                result: Some(result),
                send: false,
                unix_path: None,
                netns: None,
                private_netns: false,
            }),
            verdict: Verdict::Observed,
            count: 1,
            cache_risk: None,
            fetch: None,
            summary: None,
        }
    }

    fn parse(line: &str) -> serde_json::Value {
        serde_json::from_str(line).expect("alert line is valid JSON")
    }

    /// Keys of a JSON object in the order they appear in `text`.
    fn key_order(text: &str, keys: &[&str]) -> Vec<usize> {
        keys.iter()
            .map(|k| text.find(&format!("\"{k}\":")).expect(k))
            .collect()
    }

    #[test]
    fn file_alert_has_contract_keys_in_order() {
        let line = file_alert(b"/home/ci/.aws/credentials", true).to_json_line();
        let top = [
            "schema", "time", "kind", "node", "action", "process", "file", "verdict", "count",
            "message",
        ];
        let pos = key_order(&line, &top);
        assert!(pos.is_sorted(), "top-level order wrong: {line}");
        let v = parse(&line);
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), top.len());
        assert!(!obj.contains_key("net"));
        let inner = key_order(&line, &["id", "cgroup", "cgroup_id", "label", "mnemonic"]);
        assert!(inner.is_sorted());
        let inner = key_order(&line, &["pid", "ppid", "comm", "exe"]);
        assert!(inner.is_sorted());
        let inner = key_order(&line, &["path", "op", "flags", "result"]);
        assert!(inner.is_sorted());
    }

    #[test]
    fn file_alert_values_follow_contract() {
        let v = parse(&file_alert(b"/home/ci/.aws/credentials", true).to_json_line());
        assert_eq!(v["schema"], "monitor.alert/v1");
        assert_eq!(v["time"], "2026-11-22T10:00:00.123Z");
        assert_eq!(v["kind"], "undeclared_file");
        assert_eq!(v["action"]["id"], "build-42");
        assert_eq!(v["action"]["cgroup_id"], 123);
        assert_eq!(v["action"]["label"], "//pkg:target");
        assert_eq!(v["action"]["mnemonic"], "Genrule");
        assert_eq!(v["process"]["pid"], 42);
        assert_eq!(v["process"]["ppid"], 41);
        assert_eq!(v["process"]["exe"], "/usr/bin/cat");
        assert_eq!(v["file"]["path"], "/home/ci/.aws/credentials");
        assert_eq!(v["file"]["op"], "open");
        assert_eq!(v["file"]["flags"], "O_RDONLY");
        assert_eq!(v["file"]["result"], 3);
        assert_eq!(v["verdict"], "observed");
        assert_eq!(v["count"], 1);
        assert_eq!(
            v["message"],
            "//pkg:target (Genrule) opened /home/ci/.aws/credentials (O_RDONLY), \
             which it did not declare"
        );
    }

    #[test]
    fn unknown_label_and_exe_are_null() {
        let mut a = file_alert(b"/x", false);
        a.process.exe = None;
        let v = parse(&a.to_json_line());
        assert!(v["action"]["label"].is_null());
        assert!(v["action"]["mnemonic"].is_null());
        assert!(v["process"]["exe"].is_null());
        assert_eq!(
            v["message"],
            "action build-42 (cgroup /sys/fs/cgroup/unified/build/build-42) opened /x \
             (O_RDONLY), which it did not declare"
        );
    }

    #[test]
    fn non_utf8_path_is_escaped_not_dropped() {
        let line = file_alert(b"/tmp/\xffx", true).to_json_line();
        assert!(line.contains(r#""path":"/tmp/\\xffx""#), "{line}");
        assert_eq!(parse(&line)["file"]["path"], "/tmp/\\xffx");
        assert!(
            parse(&line)["message"]
                .as_str()
                .unwrap()
                .contains("/tmp/\\xffx")
        );
    }

    #[test]
    fn newline_in_path_stays_on_one_line() {
        let line = file_alert(b"/tmp/a\nb\"c", true).to_json_line();
        assert!(!line.contains('\n'));
        let v = parse(&line);
        assert_eq!(v["file"]["path"], "/tmp/a\nb\"c");
    }

    #[test]
    fn net_alert_ipv4_with_failure_note() {
        let a = net_alert(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            -(libc::ECONNREFUSED as i64),
        );
        let line = a.to_json_line();
        let pos = key_order(&line, &["process", "net", "verdict"]);
        assert!(pos.is_sorted());
        let inner = key_order(&line, &["proto", "family", "addr", "port"]);
        assert!(inner.is_sorted());
        let v = parse(&line);
        assert!(v.get("file").is_none());
        assert_eq!(v["kind"], "network_egress");
        assert_eq!(v["net"]["proto"], "tcp");
        assert_eq!(v["net"]["family"], "inet");
        assert_eq!(v["net"]["addr"], "127.0.0.1");
        assert_eq!(v["net"]["port"], 9);
        assert_eq!(v["net"]["result"], -111);
        assert!(v["net"].get("netns").is_none());
        assert_eq!(
            v["message"],
            "//pkg:target (Genrule) connected to 127.0.0.1:9 over tcp, which the network \
             policy does not allow (attempt failed: ECONNREFUSED)"
        );
    }

    #[test]
    fn net_alert_ipv6_family_count_and_netns() {
        let mut a = net_alert(IpAddr::V6("2001:db8::1".parse::<Ipv6Addr>().unwrap()), 0);
        a.count = 3;
        a.net.as_mut().unwrap().netns = Some(4026531840);
        let v = parse(&a.to_json_line());
        assert_eq!(v["net"]["family"], "inet6");
        assert_eq!(v["net"]["addr"], "2001:db8::1");
        assert_eq!(v["net"]["netns"], 4026531840u32);
        assert_eq!(v["count"], 3);
        let msg = v["message"].as_str().unwrap();
        assert!(msg.contains("[2001:db8::1]:9 over tcp"), "{msg}");
        assert!(msg.ends_with("(3 times)"), "{msg}");
    }

    #[test]
    fn blocked_and_unknown_errno_messages() {
        let mut a = net_alert(
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            -(libc::EPERM as i64),
        );
        a.verdict = Verdict::Blocked;
        let v = parse(&a.to_json_line());
        assert_eq!(v["verdict"], "blocked");
        let msg = v["message"].as_str().unwrap();
        assert!(
            msg.contains("was blocked from connecting to 10.0.0.1:9"),
            "{msg}"
        );
        assert!(!msg.contains("attempt failed"), "{msg}");

        let b = net_alert(IpAddr::V4(Ipv4Addr::LOCALHOST), -9999);
        assert!(b.message().ends_with("(attempt failed: errno 9999)"));
    }

    #[test]
    fn errno_names_come_from_nix() {
        assert_eq!(errno_name(libc::ENOENT as u64).as_deref(), Some("ENOENT"));
        assert_eq!(errno_name(libc::EACCES as u64).as_deref(), Some("EACCES"));
        assert_eq!(
            errno_name(libc::ECONNREFUSED as u64).as_deref(),
            Some("ECONNREFUSED")
        );
        assert_eq!(errno_name(libc::EAGAIN as u64).as_deref(), Some("EAGAIN"));
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(9999), None);
        assert_eq!(errno_name(u64::MAX), None);
    }

    #[test]
    fn times_outside_humantime_range_are_clamped() {
        let mut a = file_alert(b"/x", true);
        a.time = UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(parse(&a.to_json_line())["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn open_flags_render_like_strace() {
        let f = |v: libc::c_int| v as u64;
        assert_eq!(open_flags_to_string(0), "O_RDONLY");
        assert_eq!(
            open_flags_to_string(f(libc::O_RDONLY | libc::O_CLOEXEC)),
            "O_RDONLY|O_CLOEXEC"
        );
        assert_eq!(
            open_flags_to_string(f(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)),
            "O_WRONLY|O_CREAT|O_TRUNC"
        );
        assert_eq!(
            open_flags_to_string(f(libc::O_RDWR | libc::O_TMPFILE)),
            "O_RDWR|O_TMPFILE"
        );
        assert_eq!(
            open_flags_to_string(f(libc::O_DIRECTORY | libc::O_NOFOLLOW)),
            "O_RDONLY|O_DIRECTORY|O_NOFOLLOW"
        );
        assert_eq!(open_flags_to_string(f(libc::O_SYNC)), "O_RDONLY|O_SYNC");
        assert_eq!(open_flags_to_string(f(libc::O_DSYNC)), "O_RDONLY|O_DSYNC");
        assert_eq!(
            open_flags_to_string(0o100000 | f(libc::O_PATH)),
            "O_RDONLY|O_LARGEFILE|O_PATH"
        );
        assert_eq!(
            open_flags_to_string(f(libc::O_WRONLY) | 1 << 40),
            "O_WRONLY|0x10000000000"
        );
    }
}
