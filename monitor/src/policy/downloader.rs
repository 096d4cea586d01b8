//! `[bazel.downloader]`: Bazel's `--experimental_downloader_config` rules
//! (`allow HOST`, `block HOST`, `rewrite REGEX REPLACEMENT`) as policy, so
//! the monitor judges each repository fetch the way Bazel's downloader
//! would: a URL is first rewritten, then each resulting URL is allowed when
//! an `allow` host matches it, else refused when a `block` host (or `*`)
//! matches, else allowed (Bazel's UrlRewriter, 4.2 to 7).
use regex::Regex;

use crate::bazel::fetches::host_port;
use serde::{Deserialize, Serialize};

/// The config table (docs/config.md).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownloaderConfig {
    /// Hosts always allowed (a host matches itself and its subdomains).
    pub allow: Vec<String>,
    /// Hosts refused unless allowed; `"*"` refuses every other host.
    pub block: Vec<String>,
    /// Rewrites applied before `allow`/`block`, in order.
    pub rewrite: Vec<Rewrite>,
}

/// `rewrite PATTERN REPLACEMENT`: PATTERN must match the whole URL without
/// its scheme (`example.com/a/b`); REPLACEMENT may use `$1`, `${name}`;
/// without a scheme the original one is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub pattern: String,
    pub replacement: String,
}

/// A checked `[bazel.downloader]`; `None` in the pipeline when the table
/// is absent (Bazel then fetches every URL as given).
#[derive(Debug, Clone)]
pub struct Downloader {
    allow: Vec<String>,
    block: Vec<String>,
    rewrite: Vec<(Regex, String)>,
}

/// What the rules make of one URL Bazel was asked to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The URL fetched (after rewriting).
    pub url: String,
    pub host: String,
    pub port: u16,
    pub rewritten: bool,
    pub allowed: bool,
}

/// Bazel's own file (`--experimental_downloader_config`, `--downloader_config`):
/// `allow HOST`, `block HOST`, `rewrite PATTERN REPLACEMENT`,
/// `all_blocked_message …` (ignored), `#` comments. Errors name the line.
pub fn parse_bazel_file(text: &str) -> Result<DownloaderConfig, String> {
    let mut c = DownloaderConfig::default();
    for (i, line) in text.lines().enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| Err(format!("line {}: {what}: {line}", i + 1));
        match parts.as_slice() {
            [] => {}
            [first, ..] if first.starts_with('#') => {}
            ["allow", host] => c.allow.push(host.to_string()),
            ["block", host] => c.block.push(host.to_string()),
            ["rewrite", pattern, replacement] => c.rewrite.push(Rewrite {
                pattern: pattern.to_string(),
                replacement: replacement.to_string(),
            }),
            ["all_blocked_message", _, ..] => {}
            ["allow" | "block", ..] => return bad("only the host name may follow"),
            ["rewrite", ..] => return bad("rewrite takes a pattern and a replacement"),
            _ => return bad("unable to parse"),
        }
    }
    validate(&c).map_err(|(key, why)| format!("{key}: {why}"))?;
    Ok(c)
}

/// Checks one table; errors are (key below `bazel.downloader`, reason).
pub fn validate(c: &DownloaderConfig) -> Result<(), (String, String)> {
    for (key, hosts) in [("allow", &c.allow), ("block", &c.block)] {
        for (i, host) in hosts.iter().enumerate() {
            if let Err(why) = check_host(host, key == "block") {
                return Err((format!("{key}[{i}]"), why));
            }
        }
    }
    for (i, r) in c.rewrite.iter().enumerate() {
        if let Err(e) = anchored(&r.pattern) {
            let first = e.to_string().lines().last().unwrap_or_default().to_string();
            return Err((
                format!("rewrite[{i}].pattern"),
                format!("not a regular expression: {first}"),
            ));
        }
    }
    Ok(())
}

fn check_host(host: &str, star_ok: bool) -> Result<(), String> {
    if host == "*" {
        return if star_ok {
            Ok(())
        } else {
            Err("\"*\" is only meaningful in block".into())
        };
    }
    // A colon only in an IPv6 address: Bazel matches hosts, never ports.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        || bare.parse::<std::net::Ipv6Addr>().is_ok();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a host name or address (no scheme, path or port), got {host:?}"
        ))
    }
}

/// Bazel matches the whole URL (Java's `Matcher.matches`).
fn anchored(pattern: &str) -> Result<Regex, regex::Error> {
    Regex::new(&format!("^(?:{pattern})$"))
}

impl Downloader {
    /// From a table `validate` accepted.
    pub fn new(c: &DownloaderConfig) -> Downloader {
        Downloader {
            allow: c.allow.iter().map(|h| h.to_ascii_lowercase()).collect(),
            block: c.block.iter().map(|h| h.to_ascii_lowercase()).collect(),
            rewrite: c
                .rewrite
                .iter()
                .filter_map(|r| {
                    Some((anchored(&r.pattern).ok()?, java_replacement(&r.replacement)))
                })
                .collect(),
        }
    }

    /// The URLs Bazel would try for `url`, each with its verdict. A URL
    /// that does not parse (or is not http/https) is judged as is, by the
    /// host it names if any.
    pub fn judge(&self, url: &str) -> Vec<Judged> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return vec![self.verdict(url, false)];
        };
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return vec![self.verdict(url, false)];
        }
        let mut out: Vec<Judged> = Vec::new();
        for (re, replacement) in &self.rewrite {
            if !re.is_match(rest) {
                continue;
            }
            let new = re.replace(rest, replacement.as_str()).into_owned();
            let new = if new.starts_with("http://") || new.starts_with("https://") {
                new
            } else {
                format!("{scheme}://{new}")
            };
            if !out.iter().any(|j| j.url == new) {
                out.push(self.verdict(&new, true));
            }
        }
        if out.is_empty() {
            out.push(self.verdict(url, false));
        }
        out
    }

    /// A connect whose URL is unknown, judged by the names the job resolved
    /// its address from (allowed when one is), else by the address.
    pub fn judge_address(&self, addr: std::net::IpAddr, port: u16, names: &[String]) -> Judged {
        let by_host = |host: &str| {
            let mut j = self.verdict(&format!("http://{host}/"), false);
            j.url.clear();
            j.port = port;
            j
        };
        names
            .iter()
            .map(|n| by_host(n))
            .find(|j| j.allowed)
            .unwrap_or_else(|| by_host(&url_host(addr)))
    }

    fn verdict(&self, url: &str, rewritten: bool) -> Judged {
        let (host, port) = host_port(url).unwrap_or_default();
        let matches = |rule: &String| rule == &host || host.ends_with(&format!(".{rule}"));
        let allowed =
            self.allow.iter().any(matches) || !self.block.iter().any(|b| b == "*" || matches(b));
        Judged {
            url: url.to_string(),
            host,
            port,
            rewritten,
            allowed,
        }
    }
}

/// Java's replacement syntax in the regex crate's: `$1` (followed by
/// anything) is `${1}`, `\\$` a literal `$` (`$$`), `\\x` the character x.
fn java_replacement(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('$') => out.push_str("$$"),
                Some(other) => out.push(other),
                None => {}
            },
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.next_if(char::is_ascii_digit) {
                    out.push(d);
                }
                out.push('}');
            }
            _ => out.push(c),
        }
    }
    out
}

/// An address as a URL's host (`[::1]` for IPv6).
fn url_host(addr: std::net::IpAddr) -> String {
    match addr {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], block: &[&str], rewrite: &[(&str, &str)]) -> Downloader {
        let c = DownloaderConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            block: block.iter().map(|s| s.to_string()).collect(),
            rewrite: rewrite
                .iter()
                .map(|(p, r)| Rewrite {
                    pattern: p.to_string(),
                    replacement: r.to_string(),
                })
                .collect(),
        };
        validate(&c).unwrap();
        Downloader::new(&c)
    }

    #[test]
    fn allow_wins_over_block_and_subdomains_match() {
        let d = rules(&["example.com"], &["*"], &[]);
        let j = d.judge("https://mirror.example.com/x.tar.gz");
        assert_eq!(j.len(), 1);
        assert!(j[0].allowed);
        assert_eq!((j[0].host.as_str(), j[0].port), ("mirror.example.com", 443));
        assert!(!d.judge("http://localhost:8080/x")[0].allowed);
        // Not a subdomain, only a suffix of the name.
        assert!(!d.judge("https://badexample.com/x")[0].allowed);
    }

    #[test]
    fn without_block_everything_is_allowed_as_in_bazel() {
        let d = rules(&["a.test"], &[], &[]);
        assert!(d.judge("http://b.test/x")[0].allowed);
        let d = rules(&[], &["b.test"], &[]);
        assert!(!d.judge("http://b.test/x")[0].allowed);
        assert!(d.judge("http://c.test/x")[0].allowed);
    }

    #[test]
    fn rewrites_send_the_fetch_to_the_rewritten_host() {
        let d = rules(
            &["127.0.0.1"],
            &["*"],
            &[("github.com/([^/]*)/(.*)", "127.0.0.1:8080/$1mirror/$2")],
        );
        let j = d.judge("https://github.com/o/r/archive/v1.tar.gz");
        assert_eq!(j.len(), 1);
        assert_eq!(
            j[0].url,
            "https://127.0.0.1:8080/omirror/r/archive/v1.tar.gz"
        );
        assert_eq!((j[0].host.as_str(), j[0].port), ("127.0.0.1", 8080));
        assert!(j[0].rewritten && j[0].allowed);
        // The pattern must match the whole URL without its scheme.
        let j = d.judge("https://example.org/github.com/x");
        assert!(!j[0].rewritten && !j[0].allowed);
    }

    #[test]
    fn bazels_own_file_reads_as_the_same_rules() {
        let c = parse_bazel_file(
            "# mirror\nrewrite  github.com/(.*) mirror.test/$1\nallow mirror.test\n\nblock *\nall_blocked_message see wiki\n",
        )
        .unwrap();
        assert_eq!((c.allow.len(), c.block.len(), c.rewrite.len()), (1, 1, 1));
        let j = Downloader::new(&c).judge("https://github.com/a/b");
        assert_eq!(j[0].url, "https://mirror.test/a/b");
        assert!(j[0].allowed);
        let e = parse_bazel_file("allow a b\n").unwrap_err();
        assert!(e.starts_with("line 1:"), "{e}");
        assert!(
            parse_bazel_file("\nfetch x\n")
                .unwrap_err()
                .starts_with("line 2:")
        );
        assert!(parse_bazel_file("rewrite ( x\n").is_err());
    }

    #[test]
    fn bad_rules_name_their_key() {
        let mut c = DownloaderConfig {
            allow: vec!["*".into()],
            ..Default::default()
        };
        assert_eq!(validate(&c).unwrap_err().0, "allow[0]");
        c.allow = vec!["https://x.test".into()];
        assert_eq!(validate(&c).unwrap_err().0, "allow[0]");
        c.allow = vec!["x.test:443".into()];
        assert_eq!(validate(&c).unwrap_err().0, "allow[0]");
        c.allow = vec!["::1".into(), "[::1]".into(), "a-b.example.test".into()];
        assert!(validate(&c).is_ok());
        c.rewrite = vec![Rewrite {
            pattern: "(".into(),
            replacement: "x".into(),
        }];
        let (key, why) = validate(&c).unwrap_err();
        assert_eq!(key, "rewrite[0].pattern");
        assert!(why.contains("regular expression"), "{why}");
    }
}
