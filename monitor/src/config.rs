//! The TOML configuration (a contract: see docs/config.md).
//!
//! Every field has a default so that `monitor exec -- CMD` works without a
//! file, and unknown keys are errors: a misspelt key silently ignored would
//! leave a build-farm node enforcing a policy nobody wrote. Errors name the
//! file, the 1-based line and the key path, because the person reading them
//! is editing that file: `FILE:LINE: KEY: what is wrong`.
//!
//! Positions are structural, not read out of serde's English: the key path
//! comes from `serde_path_to_error`, the byte offset from the span toml puts
//! on its error, and the line from that offset. The small walk over
//! `toml_edit`'s document below stays hand-written because no crate maps
//! spans back to key paths; it names keys serde never entered (unknown
//! ones) and places the errors of checks serde cannot express.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::policy::{
    matchers::{NetRule, PathMatcher},
    scoped::ScopedRuleConfig,
};

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's name in every alert (`node`); default: the host name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub attribution: Attribution,
    pub files: Files,
    pub network: Network,
    pub alerts: Alerts,
    pub metrics: Metrics,
    pub bazel: Bazel,
}

/// Bazel-specific policy (docs/config.md).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Bazel {
    /// The weakest isolation a spawn may run under; a spawn that ran under
    /// less is a `weak_isolation` violation. `"none"` (the default) requires
    /// nothing.
    pub require_isolation: crate::bazel::isolation::Isolation,
    /// What `monitor exec` asks Bazel for to name each spawn's target:
    /// its execution log (the default: it also declares the spawns that
    /// run without a sandbox tree and splits a persistent worker's
    /// requests) or its JSON trace profile (labels alone, at a small part
    /// of the log's cost to the build; docs/config.md).
    pub label_source: LabelSource,
    /// Bazel's downloader rules, judged per repository fetch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloader: Option<crate::policy::downloader::DownloaderConfig>,
}

/// `[bazel] label_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    #[default]
    ExecutionLog,
    TraceProfile,
}

/// How kernel events are tied to build actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Attribution {
    /// Each leaf cgroup below one of these is one action.
    pub cgroup_parents: Vec<PathBuf>,
    /// Lineage mode: a process exec'ing one of these starts an action.
    pub sandbox_launchers: Vec<String>,
    /// Where `*.json` action declarations are dropped.
    pub declarations_dir: PathBuf,
    /// How long events of an action are held back waiting for its
    /// declaration before they are judged without one.
    pub declaration_wait_ms: u64,
    /// Remote-execution worker runners (REAPI bots), by the absolute path
    /// they are exec'd by: every command a runner forks is an action.
    pub worker_runners: Vec<PathBuf>,
    /// Where runners write one record per action (digest, input root,
    /// outputs, RequestMetadata): see docs/reapi.md.
    pub worker_records_dir: PathBuf,
}

impl Default for Attribution {
    fn default() -> Self {
        Attribution {
            cgroup_parents: Vec::new(),
            sandbox_launchers: vec!["linux-sandbox".into(), "process-wrapper".into()],
            declarations_dir: PathBuf::from("/run/monitor/declarations"),
            declaration_wait_ms: 2000,
            worker_runners: Vec::new(),
            worker_records_dir: PathBuf::from("/run/monitor/reapi"),
        }
    }
}

/// Files every action may open, whatever it declared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Files {
    /// Path patterns (see [`PathMatcher`]). Setting this *replaces* the
    /// default system set rather than extending it, so that a strict policy
    /// can be written; copy the defaults from `monitor check-config` output.
    pub allow: Vec<String>,
}

/// What every dynamically linked tool touches just to start and resolve
/// names: loader, libraries, basic /etc files, standard devices, the list
/// of file system types (libselinux reads it in every coreutils tool), and
/// the memory, CPU and cgroup limits a runtime sizes itself by (every JVM
/// reads them). Reading only: of these, only devices may be written. A process's own `/proc/<pid>/…` entries are allowed by the
/// judge itself (the kernel says whose they are), not by name: a name such
/// as `/proc/self/root/…` leads elsewhere.
const DEFAULT_FILES_ALLOW: &[&str] = &[
    "/usr/**",
    "/lib/**",
    "/lib32/**",
    "/lib64/**",
    "/libx32/**",
    "/bin/**",
    "/sbin/**",
    "/etc/ld.so.cache",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d/**",
    "/etc/localtime",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/host.conf",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/gai.conf",
    "/etc/locale.alias",
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/pts/**",
    "/proc/filesystems",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/cpuinfo",
    "/proc/cgroups",
    "/sys/fs/cgroup/**",
    "/sys/kernel/mm/transparent_hugepage/**",
    "/sys/kernel/mm/hugepages",
    "/sys/devices/system/cpu/**",
];

impl Default for Files {
    fn default() -> Self {
        Files {
            allow: DEFAULT_FILES_ALLOW.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Destinations every action may connect to. Empty (the default) denies all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    pub allow: Vec<NetRule>,
    /// Refuse, in the kernel, every connect and datagram send of a
    /// monitored action that `allow` does not admit (the caller gets
    /// EPERM). `monitor exec --enforce` sets it too.
    pub enforce: bool,
    /// Unix sockets every action may connect to (path patterns, as in
    /// `files.allow`). Setting this replaces the default: the host's
    /// journald and nscd sockets.
    pub allow_unix: Vec<String>,
    /// `[[network.rule]]`: destinations allowed only for some targets,
    /// mnemonics, or the Bazel server's own traffic (`scope = "@bazel"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rule: Vec<ScopedRuleConfig>,
}

const DEFAULT_UNIX_ALLOW: &[&str] = &[
    "/run/systemd/journal/**",
    "/dev/log",
    "/run/nscd/socket",
    "/var/run/nscd/socket",
];

impl Default for Network {
    fn default() -> Self {
        Network {
            allow: Vec::new(),
            enforce: false,
            allow_unix: DEFAULT_UNIX_ALLOW.iter().map(|s| s.to_string()).collect(),
            rule: Vec::new(),
        }
    }
}

/// Where JSON alerts go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Alerts {
    pub stdout: bool,
    /// Appended to, one JSON object a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Identical alerts within this window are folded into one with a count,
    /// so a tool that stats the same file in a loop does not flood the log.
    pub fold_window_ms: u64,
    /// New alerts one action may raise per `budget_window_s`; past it its
    /// violations are summarised (0: no budget).
    pub budget_per_action: u32,
    pub budget_window_s: u64,
    /// Rotate `file` when it would grow past this size (0: never).
    pub file_max_bytes: u64,
    /// Rotated files kept (`file.1` … `file.N`).
    pub file_keep: u32,
    /// POST batches of alerts to an HTTP receiver, spooled on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<HttpSink>,
    /// Alertmanager's v2 API, spooled on disk like the webhook.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alertmanager: Option<HttpSink>,
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            stdout: true,
            file: None,
            fold_window_ms: 1000,
            budget_per_action: 300,
            budget_window_s: 60,
            file_max_bytes: 0,
            file_keep: 5,
            webhook: None,
            alertmanager: None,
        }
    }
}

/// An HTTP alert receiver (`[alerts.webhook]`, `[alerts.alertmanager]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSink {
    /// `http://` or `https://` URL (for Alertmanager: its base URL).
    pub url: String,
    /// File holding a bearer token (sent as `Authorization: Bearer …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// PEM CA certificates to trust instead of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Where alerts wait until the receiver took them (kept across restarts).
    pub spool_dir: PathBuf,
    /// The spool's size limit; alerts that do not fit are dropped and counted.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Alerts per POST.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// Per request.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_spool_max_bytes() -> u64 {
    64 << 20
}
fn default_batch_max() -> usize {
    500
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// The Prometheus endpoint (`/metrics`, `/healthz`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// `"HOST:PORT"`; `""` or `"off"` disables the endpoint.
    #[serde(with = "listen_addr")]
    pub listen: Option<SocketAddr>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9464))),
        }
    }
}

/// `metrics.listen` as a string, with `"off"` standing for `None` because
/// TOML has no null and `to_toml` must round-trip.
mod listen_addr {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "" | "off" => Ok(None),
            _ => text.parse().map(Some).map_err(|e| {
                D::Error::custom(format!(
                    "invalid listen address {text:?} (want IP:PORT, or \"off\"): {e}"
                ))
            }),
        }
    }
}

/// A configuration that could not be used. Displays as one line naming the
/// file, and for content errors the line and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {}", path.display(), io_reason(source))]
    Read { path: PathBuf, source: io::Error },
    #[error("{}{}: {message}", origin.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        origin: PathBuf,
        /// 1-based line of the offending key or value, when known.
        line: Option<usize>,
        /// Dotted key path, e.g. `network.allow[0].cidr`, when known.
        key: Option<String>,
        /// The whole sentence after `file:line: `.
        message: String,
    },
}

impl ConfigError {
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { line, .. } => *line,
            ConfigError::Read { .. } => None,
        }
    }

    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => key.as_deref(),
            ConfigError::Read { .. } => None,
        }
    }
}

/// `No such file or directory`, without Rust's ` (os error 2)` suffix.
fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates `text`; `origin` is only used in messages.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        let invalid =
            |offset: Option<usize>, key: Option<String>, message: String| ConfigError::Invalid {
                origin: origin.to_path_buf(),
                line: offset.map(|o| line_of(text, o)),
                key,
                message,
            };
        // Parsed separately (keeping spans) only to map offsets to key paths.
        let doc = toml_edit::ImDocument::parse(text).map_err(|e| {
            let message = e.message().trim().replace('\n', "; ");
            invalid(
                e.span().map(|s| s.start),
                None,
                format!("invalid TOML: {message}"),
            )
        })?;
        let mut nodes = Vec::new();
        walk_table(doc.as_table(), "", &mut nodes);

        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let offset = e.inner().span().map(|s| s.start);
                let key = error_key(e.path(), offset.and_then(|o| locate(&nodes, o)));
                let message = e.inner().message().trim();
                let message = match &key {
                    Some(key) => format!("{key}: {message}"),
                    None => message.to_string(),
                };
                invalid(offset, key, message)
            })?;
        config.validate().map_err(|(key, message)| {
            let offset = nodes
                .iter()
                .find(|n| n.path == key)
                .and_then(|n| n.value.as_ref().or(n.key.as_ref()))
                .map(|s| s.start);
            invalid(offset, Some(key.clone()), format!("{key}: {message}"))
        })?;
        Ok(config)
    }

    /// The effective configuration as TOML that parses back to `self`
    /// (printed by `monitor check-config`).
    ///
    /// # Panics
    /// If a path is not UTF-8, which cannot happen for a parsed config.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config paths are UTF-8")
    }

    /// Checks serde cannot express; errors are (key path, reason).
    fn validate(&self) -> Result<(), (String, String)> {
        if let Err(e) = PathMatcher::new(&self.files.allow) {
            return Err((format!("files.allow[{}]", e.index), e.to_string()));
        }
        if let Err(e) = PathMatcher::new(&self.network.allow_unix) {
            return Err((format!("network.allow_unix[{}]", e.index), e.to_string()));
        }
        for (i, rule) in self.network.rule.iter().enumerate() {
            crate::policy::scoped::validate(rule).map_err(|(key, message)| {
                let key = match key.as_str() {
                    "" => format!("network.rule[{i}]"),
                    _ => format!("network.rule[{i}].{key}"),
                };
                (key, message)
            })?;
        }
        if let Some(d) = &self.bazel.downloader {
            crate::policy::downloader::validate(d)
                .map_err(|(key, why)| (format!("bazel.downloader.{key}"), why))?;
        }
        let a = &self.attribution;
        for (i, p) in a.cgroup_parents.iter().enumerate() {
            if !p.is_absolute() {
                let msg = format!(
                    "must be an absolute path, got {:?}",
                    p.display().to_string()
                );
                return Err((format!("attribution.cgroup_parents[{i}]"), msg));
            }
        }
        if !a.declarations_dir.is_absolute() {
            let msg = format!(
                "must be an absolute path, got {:?}",
                a.declarations_dir.display().to_string()
            );
            return Err(("attribution.declarations_dir".into(), msg));
        }
        if let Some(e) = validate_worker_runners(a) {
            return Err(e);
        }
        for (name, sink) in [
            ("webhook", &self.alerts.webhook),
            ("alertmanager", &self.alerts.alertmanager),
        ] {
            let Some(sink) = sink else { continue };
            sink.validate()
                .map_err(|(key, msg)| (format!("alerts.{name}.{key}"), msg))?;
        }
        if self.node.as_ref().is_some_and(|n| n.trim().is_empty()) {
            return Err(("node".into(), "must not be empty".into()));
        }
        if self.alerts.budget_per_action > 0 && self.alerts.budget_window_s == 0 {
            return Err(("alerts.budget_window_s".into(), "must be at least 1".into()));
        }
        if let Some(i) = a.sandbox_launchers.iter().position(|s| s.is_empty()) {
            return Err((
                format!("attribution.sandbox_launchers[{i}]"),
                "must not be empty".into(),
            ));
        }
        Ok(())
    }
}

fn validate_worker_runners(a: &Attribution) -> Option<(String, String)> {
    const MAX: usize = monitor_common::MAX_RUNNERS as usize;
    if a.worker_runners.len() > MAX {
        let msg = format!("at most {MAX} runners, got {}", a.worker_runners.len());
        return Some(("attribution.worker_runners".into(), msg));
    }
    for (i, p) in a.worker_runners.iter().enumerate() {
        let len = p.as_os_str().len();
        if !p.is_absolute() || len >= monitor_common::RUNNER_PATH_LEN {
            let msg = format!(
                "must be an absolute path shorter than {} bytes, got {:?}",
                monitor_common::RUNNER_PATH_LEN,
                p.display().to_string()
            );
            return Some((format!("attribution.worker_runners[{i}]"), msg));
        }
    }
    if !a.worker_records_dir.is_absolute() {
        let msg = format!(
            "must be an absolute path, got {:?}",
            a.worker_records_dir.display().to_string()
        );
        return Some(("attribution.worker_records_dir".into(), msg));
    }
    None
}

impl HttpSink {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let scheme_ok = self.url.starts_with("http://") || self.url.starts_with("https://");
        if !scheme_ok || self.url.parse::<ureq::http::Uri>().is_err() {
            return Err((
                "url",
                format!("invalid URL {:?} (want http:// or https://)", self.url),
            ));
        }
        if !self.spool_dir.is_absolute() {
            let msg = format!(
                "must be an absolute path, got {:?}",
                self.spool_dir.display().to_string()
            );
            return Err(("spool_dir", msg));
        }
        if self.batch_max == 0 {
            return Err(("batch_max", "must be at least 1".into()));
        }
        Ok(())
    }
}

/// 1-based line containing byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The key path of a deserialisation error. serde's path (from
/// serde_path_to_error) ends at the last key serde entered; a key serde
/// refused to enter (unknown) is one level deeper, and the span of the error
/// sits on it, so a node found there one level below serde's path names it.
fn error_key(path: &serde_path_to_error::Path, at_span: Option<String>) -> Option<String> {
    let mut serde_path = String::new();
    for segment in path.iter() {
        match segment {
            serde_path_to_error::Segment::Seq { index } => {
                serde_path.push_str(&format!("[{index}]"));
            }
            serde_path_to_error::Segment::Map { key } => {
                if !serde_path.is_empty() {
                    serde_path.push('.');
                }
                serde_path.push_str(key);
            }
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {}
        }
    }
    let is_child = |found: &str| match found.strip_prefix(serde_path.as_str()) {
        Some(rest) if serde_path.is_empty() => !rest.contains(['.', '[']),
        Some(rest) => rest
            .strip_prefix('.')
            .is_some_and(|name| !name.contains(['.', '['])),
        None => false,
    };
    match at_span {
        Some(found) if is_child(&found) => Some(found),
        _ if serde_path.is_empty() => None,
        _ => Some(serde_path),
    }
}

/// A key or array element of the document and where it is.
struct Node {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

fn walk_table(table: &dyn toml_edit::TableLike, path: &str, out: &mut Vec<Node>) {
    for (name, item) in table.iter() {
        let child = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        out.push(Node {
            path: child.clone(),
            key: table.key(name).and_then(|k| k.span()),
            value: item.span(),
        });
        walk_item(item, &child, out);
    }
}

fn walk_item(item: &toml_edit::Item, path: &str, out: &mut Vec<Node>) {
    use toml_edit::{Item, Value};
    match item {
        Item::Table(t) => walk_table(t, path, out),
        Item::ArrayOfTables(tables) => {
            for (i, t) in tables.iter().enumerate() {
                let child = format!("{path}[{i}]");
                out.push(Node {
                    path: child.clone(),
                    key: None,
                    value: t.span(),
                });
                walk_table(t, &child, out);
            }
        }
        Item::Value(Value::InlineTable(t)) => walk_table(t, path, out),
        Item::Value(Value::Array(values)) => {
            for (i, v) in values.iter().enumerate() {
                let child = format!("{path}[{i}]");
                out.push(Node {
                    path: child.clone(),
                    key: None,
                    value: v.span(),
                });
                if let Value::InlineTable(t) = v {
                    walk_table(t, &child, out);
                }
            }
        }
        Item::Value(_) | Item::None => {}
    }
}

/// The deepest key path whose key or value covers `offset`. Nodes are in
/// pre-order and siblings do not overlap, so the last hit is the deepest.
fn locate(nodes: &[Node], offset: usize) -> Option<String> {
    let covers = |s: &Option<Range<usize>>| {
        s.as_ref()
            .is_some_and(|s| s.contains(&offset) || s.start == offset)
    };
    nodes
        .iter()
        .rev()
        .find(|n| covers(&n.key) || covers(&n.value))
        .map(|n| n.path.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/monitor.toml"))
    }

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("config should be rejected")
    }

    const DESIGN_EXAMPLE: &str = r#"
[attribution]
cgroup_parents = ["/sys/fs/cgroup/unified/build"]  # each leaf cgroup below = one action
                                                  # (Bazel 7+ per-spawn scopes recognised)
sandbox_launchers = ["linux-sandbox", "process-wrapper"]  # lineage mode: a process
                                                  # exec'ing one of these starts an action
declarations_dir = "/run/monitor/declarations"    # *.json action declarations

[files]
allow = ["/usr/**", "/lib/**", "/etc/ld.so.cache"]  # every action may open these
                                                  # (the default is a sensible system set)

[network]
allow = [{ cidr = "127.0.0.1/32", port = 8080 }]  # port optional; default: deny all

[alerts]
stdout = true
file = "/var/log/monitor/alerts.jsonl"            # appended, one JSON object a line

[metrics]
listen = "127.0.0.1:9464"                         # /metrics and /healthz
"#;

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert!(c.attribution.cgroup_parents.is_empty());
        assert_eq!(
            c.attribution.sandbox_launchers,
            ["linux-sandbox", "process-wrapper"]
        );
        assert_eq!(
            c.attribution.declarations_dir,
            Path::new("/run/monitor/declarations")
        );
        assert_eq!(c.attribution.declaration_wait_ms, 2000);
        assert_eq!(c.files.allow.len(), 36);
        assert!(
            PathMatcher::new(&c.files.allow)
                .unwrap()
                .matches(b"/usr/lib/libc.so.6")
        );
        assert!(c.network.allow.is_empty());
        assert!(c.alerts.stdout);
        assert_eq!(c.alerts.file, None);
        assert_eq!(c.alerts.fold_window_ms, 1000);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn design_example_parses() {
        let c = parse(DESIGN_EXAMPLE).unwrap();
        assert_eq!(
            c.attribution.cgroup_parents,
            [PathBuf::from("/sys/fs/cgroup/unified/build")]
        );
        assert_eq!(
            c.files.allow,
            ["/usr/**", "/lib/**", "/etc/ld.so.cache"],
            "replaces defaults"
        );
        assert_eq!(c.network.allow.len(), 1);
        assert_eq!(c.network.allow[0].cidr.to_string(), "127.0.0.1/32");
        assert_eq!(c.network.allow[0].port, Some(8080));
        assert_eq!(
            c.alerts.file,
            Some(PathBuf::from("/var/log/monitor/alerts.jsonl"))
        );
        assert_eq!(
            c.attribution.declaration_wait_ms, 2000,
            "unset keys keep defaults"
        );
    }

    #[test]
    fn unknown_nested_key_names_line_table_and_key() {
        let e = err("[alerts]\nstdout = true\n\n\n\n\ncolour = \"red\"\n");
        assert_eq!(e.line(), Some(7));
        assert_eq!(e.key(), Some("alerts.colour"));
        assert_eq!(
            e.to_string(),
            "/etc/monitor.toml:7: alerts.colour: unknown field `colour`, expected one of \
             `stdout`, `file`, `fold_window_ms`, `budget_per_action`, `budget_window_s`, \
             `file_max_bytes`, `file_keep`, `webhook`, `alertmanager`"
        );
    }

    #[test]
    fn unknown_top_level_key() {
        let e = err("# comment\n[metrics]\nlisten = \"off\"\n[webhook]\nurl = \"x\"\n");
        assert_eq!(e.line(), Some(4));
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/monitor.toml:4: webhook: unknown field `webhook`, expected"),
            "{text}"
        );
        let e = err("colour = 1\n");
        assert_eq!(e.line(), Some(1));
        assert_eq!(e.key(), Some("colour"));
        assert!(
            e.to_string().contains("colour: unknown field `colour`"),
            "{e}"
        );
    }

    #[test]
    fn unknown_key_in_net_rule() {
        let e = err(
            "[network]\nallow = [\n  { cidr = \"::1\" },\n  { cidr = \"::1\", proto = \"tcp\" },\n]\n",
        );
        assert_eq!(e.line(), Some(4));
        assert!(
            e.to_string()
                .contains(":4: network.allow[1].proto: unknown field `proto`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let e = err("[alerts]\nstdout = \"yes\"\n");
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.key(), Some("alerts.stdout"));
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/monitor.toml:2: alerts.stdout: invalid type: string"),
            "{text}"
        );
        let e = err("[attribution]\nsandbox_launchers = \"linux-sandbox\"\n");
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.key(), Some("attribution.sandbox_launchers"));
    }

    #[test]
    fn bad_cidr_names_element() {
        let e = err("[network]\n\nallow = [{ cidr = \"300.1.1.1/8\" }]\n");
        assert_eq!(e.line(), Some(3));
        let text = e.to_string();
        assert!(
            text.starts_with(
                "/etc/monitor.toml:3: network.allow[0].cidr: invalid CIDR \"300.1.1.1/8\": "
            ),
            "{text}"
        );
        let e = err(
            "[[network.allow]]\ncidr = \"10.0.0.0/8\"\n[[network.allow]]\ncidr = \"10.0.0.0/99\"\n",
        );
        assert_eq!(e.line(), Some(4));
        assert_eq!(e.key(), Some("network.allow[1].cidr"));
    }

    #[test]
    fn validation_errors_point_at_the_value() {
        let e =
            err("[attribution]\ncgroup_parents = [\n  \"/sys/fs/cgroup/a\",\n  \"build\",\n]\n");
        assert_eq!(e.line(), Some(4));
        assert_eq!(
            e.to_string(),
            "/etc/monitor.toml:4: attribution.cgroup_parents[1]: must be an absolute path, got \"build\""
        );
        let e = err("[attribution]\ndeclarations_dir = \"decl\"\n");
        assert_eq!(e.line(), Some(2));
        let e = err("[files]\nallow = [\"/ok\", \"tmp/*\"]\n");
        assert_eq!(e.line(), Some(2));
        assert_eq!(e.key(), Some("files.allow[1]"));
        assert!(e.to_string().contains("not an absolute path"), "{e}");
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("[alerts]\nstdout = true\nfile = \n");
        assert_eq!(e.line(), Some(3));
        assert!(
            e.to_string()
                .starts_with("/etc/monitor.toml:3: invalid TOML: "),
            "{e}"
        );
    }

    #[test]
    fn metrics_listen_off_and_invalid() {
        assert_eq!(
            parse("[metrics]\nlisten = \"off\"\n")
                .unwrap()
                .metrics
                .listen,
            None
        );
        assert_eq!(
            parse("[metrics]\nlisten = \"\"\n").unwrap().metrics.listen,
            None
        );
        let v6 = parse("[metrics]\nlisten = \"[::1]:9000\"\n").unwrap();
        assert_eq!(v6.metrics.listen, Some("[::1]:9000".parse().unwrap()));
        let e = err("[metrics]\nlisten = \"localhost\"\n");
        assert_eq!(e.line(), Some(2));
        assert!(
            e.to_string()
                .contains("metrics.listen: invalid listen address"),
            "{e}"
        );
    }

    #[test]
    fn label_source_takes_its_two_words_and_names_a_wrong_one() {
        assert_eq!(
            parse("").unwrap().bazel.label_source,
            LabelSource::ExecutionLog
        );
        let c = parse("[bazel]\nlabel_source = \"trace_profile\"\n").unwrap();
        assert_eq!(c.bazel.label_source, LabelSource::TraceProfile);
        assert!(c.to_toml().contains("label_source = \"trace_profile\""));
        let e = err("[bazel]\n\nlabel_source = \"profile\"\n");
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("bazel.label_source"), "{e}");
    }

    #[test]
    fn to_toml_round_trips() {
        for text in [
            "",
            DESIGN_EXAMPLE,
            "[metrics]\nlisten = \"off\"\n[network]\nallow = [{ cidr = \"::/0\" }, { cidr = \"10.1.0.0/16\", port = 53 }]\n",
        ] {
            let c = parse(text).unwrap();
            let out = c.to_toml();
            let back = parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
            assert_eq!(back, c, "{out}");
        }
        assert!(
            Config::default()
                .to_toml()
                .contains("listen = \"127.0.0.1:9464\"")
        );
    }

    #[test]
    fn load_reports_unreadable_file() {
        let e = Config::load(Path::new("/nonexistent/monitor.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot read /nonexistent/monitor.toml: No such file or directory"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[alerts]\nfold_window_ms = 5\n").unwrap();
        assert_eq!(Config::load(&path).unwrap().alerts.fold_window_ms, 5);
        std::fs::write(&path, "[alerts]\nfold_window_ms = -5\n").unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{}:2: alerts.fold_window_ms: ", path.display())),
            "{e}"
        );
    }

    #[test]
    fn node_and_http_sinks_parse_round_trip_and_are_checked() {
        let c = parse(
            "node = \"w17\"\n[alerts]\nbudget_per_action = 5\n[alerts.webhook]\n\
             url = \"https://x.example/a\"\nspool_dir = \"/var/lib/m/w\"\n\
             [alerts.alertmanager]\nurl = \"http://127.0.0.1:9093\"\nspool_dir = \"/var/lib/m/a\"\n",
        )
        .unwrap();
        assert_eq!(c.node.as_deref(), Some("w17"));
        assert_eq!(c.alerts.budget_per_action, 5);
        let w = c.alerts.webhook.as_ref().unwrap();
        assert_eq!(w.spool_max_bytes, 64 << 20);
        assert_eq!(w.batch_max, 500);
        assert!(c.alerts.alertmanager.is_some());
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let e = err("[alerts.webhook]\nurl = \"ftp://x\"\nspool_dir = \"/s\"\n");
        assert_eq!(e.key(), Some("alerts.webhook.url"));
        assert_eq!(e.line(), Some(2));
        let e = err("[alerts.webhook]\nurl = \"http://x\"\nspool_dir = \"rel\"\n");
        assert_eq!(e.key(), Some("alerts.webhook.spool_dir"));
        let e = err("[alerts.webhook]\nurl = \"http://x\"\n");
        assert!(e.to_string().contains("spool_dir"), "{e}");
        let e = err("node = \"\"\n");
        assert_eq!(e.key(), Some("node"));
    }

    const SCOPED: &str = r#"
[network]
allow = [{ cidr = "10.0.0.0/8", port = 53 }]

[[network.rule]]
targets = ["//third_party/...", "//tools/fetch:*"]
allow = [{ cidr = "192.0.2.10/32", port = 443 }]

[[network.rule]]
mnemonics = ["Genrule"]
targets = ["//net:fetch"]
allow = [{ cidr = "127.0.0.1/32" }]

[[network.rule]]
scope = "@bazel"
allow = [{ cidr = "198.51.100.0/24", port = 443 }]
"#;

    #[test]
    fn scoped_rules_parse_and_round_trip() {
        let c = parse(SCOPED).unwrap();
        assert_eq!(c.network.allow.len(), 1, "job-wide rules keep their key");
        assert_eq!(c.network.rule.len(), 3);
        assert_eq!(c.network.rule[0].targets.len(), 2);
        assert_eq!(c.network.rule[1].mnemonics, ["Genrule"]);
        assert_eq!(c.network.rule[2].scope.as_deref(), Some("@bazel"));
        assert_eq!(c.network.rule[2].allow[0].port, Some(443));
        let out = c.to_toml();
        assert_eq!(parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}")), c);
        assert!(
            !Config::default().to_toml().contains("rule"),
            "none by default"
        );
    }

    #[test]
    fn malformed_scoped_rules_name_line_and_key() {
        let e = err(
            "[[network.rule]]\nallow = [{ cidr = \"::1\" }]\n\ntargets = [\"//a:b\", \"a/...\"]\n",
        );
        assert_eq!(e.key(), Some("network.rule[0].targets[1]"));
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().contains("start it with // or @repo//"), "{e}");
        let e = err(
            "[[network.rule]]\ntargets = [\"//a\"]\nallow = [{ cidr = \"::1\" }]\n[[network.rule]]\nallow = [{ cidr = \"::1\" }]\n",
        );
        assert_eq!(e.key(), Some("network.rule[1]"));
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().contains("needs a scope"), "{e}");
        let e = err("[[network.rule]]\nscope = \"@bazel\"\nport = 3\nallow = []\n");
        assert_eq!(e.key(), Some("network.rule[0].port"));
        assert_eq!(e.line(), Some(3));
        let e = err("[[network.rule]]\ntargets = [\"//a\"]\n");
        assert!(e.to_string().contains("missing field `allow`"), "{e}");
        assert_eq!(e.line(), Some(1));
        let e = err("[[network.rule]]\nscope = \"bazel\"\nallow = [{ cidr = \"::1\" }]\n");
        assert_eq!(e.key(), Some("network.rule[0].scope"));
        assert_eq!(e.line(), Some(2));
        let e = err("[[network.rule]]\ntargets = [\"//a\"]\nallow = [{ cidr = \"::1/200\" }]\n");
        assert_eq!(e.key(), Some("network.rule[0].allow[0].cidr"));
        assert_eq!(e.line(), Some(3));
    }

    #[test]
    fn downloader_rules_parse_and_their_errors_name_line_and_key() {
        let c = parse(
            "[bazel.downloader]\nallow = [\"127.0.0.1\"]\nblock = [\"*\"]\nrewrite = [{ pattern = \"a/(.*)\", replacement = \"b/$1\" }]\n",
        )
        .unwrap();
        let d = c.bazel.downloader.as_ref().unwrap();
        assert_eq!((d.allow.len(), d.block.len(), d.rewrite.len()), (1, 1, 1));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let e = err("[bazel.downloader]\nblock = [\"*\"]\nallow = [\"x.test:443\"]\n");
        assert_eq!(e.key(), Some("bazel.downloader.allow[0]"));
        assert_eq!(e.line(), Some(3));
        let e = err(
            "[bazel.downloader]\nrewrite = [\n  { pattern = \"(\", replacement = \"x\" },\n]\n",
        );
        assert_eq!(e.key(), Some("bazel.downloader.rewrite[0].pattern"));
        assert_eq!(e.line(), Some(3));
        let e = err("[bazel.downloader]\nallows = []\n");
        assert_eq!(e.line(), Some(2));
        assert!(e.to_string().contains("allows"), "{e}");
    }
}
