//! Matching events against what is allowed: file path patterns and network
//! rules. Pure logic, no I/O, so the verdict for any event can be unit-tested.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::str::FromStr;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::events::paths;

/// A path pattern that could not be compiled: which one (by position and
/// text) and why, so a config or declaration error can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid path pattern {pattern:?}: {reason}")]
pub struct PatternError {
    /// Position of the pattern in the list given to [`PathMatcher::new`].
    pub index: usize,
    pub pattern: String,
    pub reason: String,
}

/// A set of absolute path patterns: exact paths (`/etc/ld.so.cache`) or globs
/// where `*` and `?` stay within one component and `**` spans any number of
/// components (globset syntax, so `[abc]` and `{a,b}` work too).
///
/// `/usr/**` matches everything *below* `/usr` but not `/usr` itself: opening
/// a directory to list it is a different access from reading the files in
/// it, and a user who wants both writes `/usr` as well.
///
/// Patterns are normalised like paths (`/usr//bin/` = `/usr/bin`), because
/// the paths matched against them are normalised; callers pass normalised
/// paths to [`PathMatcher::matches`]. Matching is on bytes, so non-UTF-8
/// paths match wildcards (and `?` matches one byte of such a name).
///
/// Most patterns (a sandbox declares ~1000 per spawn) are one exact path or
/// `dir/**`: those are kept in hash sets, not compiled by globset (building
/// the set was 1.1 s of the daemon's CPU per bench build); globset gets the
/// rest. Both give the same answers (see `literal_form`).
#[derive(Debug, Clone)]
pub struct PathMatcher {
    /// Patterns that are one path, escapes undone.
    exact: Paths,
    /// `dir/**` patterns with a plain `dir`, as `dir/`: they match every
    /// path starting with it.
    below: Paths,
    /// The distinct lengths in `below`, shortest first: a path's prefixes
    /// of only these lengths are looked up.
    below_lens: Vec<usize>,
    set: GlobSet,
    /// Patterns held in common with other matchers: the link targets of
    /// sandboxes whose trees are the same (`bazel::sandbox::shared_trees`).
    shared: Option<std::sync::Arc<PathMatcher>>,
}

/// Shared with other matchers ([`crate::actions::shared_paths`]).
type Paths = crate::hashing::HashSet<std::sync::Arc<[u8]>>;

/// What a declaration allows, before it is compiled: patterns, and real
/// paths kept as bytes: the normal absolute ones, and those whose names
/// are not UTF-8 (a sandbox's files may have any bytes for names; a
/// pattern is a string, and a lossy string of such a name would match no
/// open of the file: a false alert).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatternSet {
    pub globs: Vec<String>,
    /// Paths each matching only itself (normal and absolute, or not UTF-8:
    /// `push_path`).
    pub raw_exact: Vec<Vec<u8>>,
    /// Normal absolute directories, each matching every path below it.
    pub raw_below: Vec<Vec<u8>>,
}

impl PatternSet {
    /// `path` itself, or with `below`, every path below it: as bytes when
    /// it is a normal absolute path (as the file system gives them) or not
    /// UTF-8, else as a glob escaped to match only that (normalised when
    /// compiled). Escaping a normal path into a glob that
    /// `PathMatcher::new` then reads back as a literal measured a tenth of
    /// a sandbox read's user time.
    pub fn push_path(&mut self, path: &Path, below: bool) {
        let bytes = path.as_os_str().as_bytes();
        // `None`: kept as bytes. The common case first: a normal path
        // needs no UTF-8 check.
        let text = if bytes.starts_with(b"/") && paths::is_normal(bytes) {
            None
        } else {
            path.to_str()
        };
        match text {
            None if below => self.raw_below.push(bytes.to_vec()),
            None => self.raw_exact.push(bytes.to_vec()),
            Some(text) => {
                let mut glob = escape_glob(text);
                if below {
                    glob.push_str("/**");
                }
                self.globs.push(glob);
            }
        }
    }

    pub fn extend(&mut self, other: PatternSet) {
        self.globs.extend(other.globs);
        self.raw_exact.extend(other.raw_exact);
        self.raw_below.extend(other.raw_below);
    }
}

/// `s` as a glob that matches only itself: each metacharacter in a
/// one-character class.
pub fn escape_glob(s: &str) -> String {
    // Most paths have none (one scan, one copy).
    if !s.contains(['*', '?', '[', ']', '{', '}', '\\']) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('[');
            out.push(c);
            out.push(']');
        } else {
            out.push(c);
        }
    }
    out
}

/// A pattern that needs no glob matching.
#[derive(Debug, PartialEq)]
enum LiteralForm<'a> {
    /// Borrowed from the pattern when nothing in it was escaped.
    Exact(Cow<'a, [u8]>),
    /// `dir/**` as `dir/`.
    Below(&'a [u8]),
}

/// The literal form of a normalised pattern, when it has one that matches
/// exactly what globset would (with `literal_separator` and
/// `backslash_escape`): a path whose only metacharacters are escaped (`\c`,
/// or a one-character class of `*?[]{}`), or `dir/**` with no escapes in
/// `dir` (globset matches those by prefix; an escaped one goes to its
/// regex, whose `.` does not match a newline).
fn literal_form(pattern: &str) -> Option<LiteralForm<'_>> {
    const META: [char; 8] = ['*', '?', '[', ']', '{', '}', ',', '\\'];
    if let Some(dir) = pattern.strip_suffix("/**") {
        if dir.contains(META) {
            return None;
        }
        return Some(LiteralForm::Below(&pattern.as_bytes()[..dir.len() + 1]));
    }
    if !pattern.contains(META) {
        return Some(LiteralForm::Exact(Cow::Borrowed(pattern.as_bytes())));
    }
    let mut exact = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => exact.push(chars.next()?),
            '[' => {
                let escaped = chars.next().filter(|c| "*?[]{}".contains(*c))?;
                if chars.next()? != ']' {
                    return None;
                }
                exact.push(escaped);
            }
            '*' | '?' | ']' | '{' | '}' | ',' => return None,
            c => exact.push(c),
        }
    }
    Some(LiteralForm::Exact(Cow::Owned(exact.into_bytes())))
}

impl PathMatcher {
    pub fn new(patterns: &[String]) -> Result<PathMatcher, PatternError> {
        let mut builder = GlobSetBuilder::new();
        let (mut exact, mut below) = (Paths::default(), Paths::default());
        for (index, pattern) in patterns.iter().enumerate() {
            let error = |reason: String| PatternError {
                index,
                pattern: pattern.clone(),
                reason,
            };
            if !pattern.starts_with('/') {
                return Err(error("not an absolute path (must start with '/')".into()));
            }
            // Normalising only removes ASCII bytes and whole components from
            // valid UTF-8, so the result is still valid UTF-8.
            let normalized: Cow<str> = if paths::is_normal(pattern.as_bytes()) {
                Cow::Borrowed(pattern)
            } else {
                Cow::Owned(
                    String::from_utf8(paths::normalize(pattern.as_bytes()))
                        .expect("normalising UTF-8 keeps it UTF-8"),
                )
            };
            match literal_form(&normalized) {
                Some(LiteralForm::Exact(path)) => {
                    exact.insert(crate::actions::shared_paths::shared(&path));
                    continue;
                }
                Some(LiteralForm::Below(dir)) => {
                    below.insert(crate::actions::shared_paths::shared(dir));
                    continue;
                }
                None => {}
            }
            let glob = GlobBuilder::new(&normalized)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| error(e.kind().to_string()))?;
            builder.add(glob);
        }
        // Only fails when the combined patterns exceed the regex size limit.
        let set = builder.build().map_err(|e| PatternError {
            index: patterns.len().saturating_sub(1),
            pattern: patterns.last().cloned().unwrap_or_default(),
            reason: format!("too many or too complex patterns: {e}"),
        })?;
        let mut below_lens: Vec<usize> = below.iter().map(|b| b.len()).collect();
        below_lens.sort_unstable();
        below_lens.dedup();
        Ok(PathMatcher {
            exact,
            below,
            below_lens,
            set,
            shared: None,
        })
    }

    /// This matcher's patterns and `shared`'s: a path matches when it
    /// matches either.
    pub fn with_shared(mut self, shared: std::sync::Arc<PathMatcher>) -> PathMatcher {
        self.shared = Some(shared);
        self
    }

    /// Adds paths given as bytes (`PatternSet::raw_exact`, `raw_below`).
    pub fn add_raw(&mut self, exact: &[Vec<u8>], below: &[Vec<u8>]) {
        let shared = crate::actions::shared_paths::shared;
        self.exact.extend(exact.iter().map(|p| shared(p)));
        for dir in below {
            let mut with_slash = dir.clone();
            if !with_slash.ends_with(b"/") {
                with_slash.push(b'/');
            }
            self.below_lens.push(with_slash.len());
            self.below.insert(shared(&with_slash));
        }
        self.below_lens.sort_unstable();
        self.below_lens.dedup();
    }

    /// Whether the (normalised, absolute) path matches any pattern.
    pub fn matches(&self, path: &[u8]) -> bool {
        self.exact.contains(path)
            || self
                .below_lens
                .iter()
                .take_while(|&&len| len <= path.len())
                .any(|&len| path[len - 1] == b'/' && self.below.contains(&path[..len]))
            || (!self.set.is_empty()
                && self
                    .set
                    .is_match(Path::new(std::ffi::OsStr::from_bytes(path))))
            || self.shared.as_ref().is_some_and(|s| s.matches(path))
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty()
            && self.below.is_empty()
            && self.set.is_empty()
            && self.shared.as_ref().is_none_or(|s| s.is_empty())
    }

    /// The directories of its plain `dir/**` patterns, each as `dir/`:
    /// every normalised path starting with one matches.
    pub fn below_dirs(&self) -> Box<dyn Iterator<Item = &[u8]> + '_> {
        let own = self.below.iter().map(|dir| &dir[..]);
        match &self.shared {
            Some(shared) => Box::new(own.chain(shared.below_dirs())),
            None => Box::new(own),
        }
    }
}

/// Why a CIDR string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CIDR {input:?}: {reason}")]
pub struct CidrError {
    pub input: String,
    pub reason: String,
}

/// An address block, `10.0.0.0/8` or `::1/128`, held as an [`ipnet::IpNet`]
/// (parsing and containment are the crate's). Host bits beyond the prefix
/// are accepted and masked off (`10.1.2.3/8` is `10.0.0.0/8`): rejecting them
/// would only annoy. IPv4-mapped IPv6 blocks (`::ffff:10.0.0.0/104`) are
/// stored as their IPv4 equivalent, so the two spellings behave the same;
/// ipnet knows nothing of mapped addresses, so that part stays here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    net: IpNet,
}

impl Cidr {
    /// The network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.net.network()
    }

    pub fn prefix(&self) -> u8 {
        self.net.prefix_len()
    }

    /// Whether `ip` lies in the block. An IPv4-mapped IPv6 address
    /// (`::ffff:127.0.0.1`, what a dual-stack socket connects to) is judged
    /// as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.net.contains(&canonical(ip))
    }
}

/// IPv4-mapped IPv6 addresses become IPv4; everything else is unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// A mapped IPv6 block (`::ffff:a.b.c.d/96+n`) as the IPv4 block `a.b.c.d/n`.
/// Mapped blocks shorter than /96 also cover non-mapped addresses, so they
/// stay IPv6.
fn unmap(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        _ => net,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/PREFIX`, or a bare `ADDR` meaning a single host (/32 or /128).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let error = |reason: String| CidrError {
            input: s.to_string(),
            reason,
        };
        let net = match s.split_once('/') {
            Some((addr, prefix)) => {
                // ipnet's own error says only "invalid IP address syntax";
                // tell the user which half is wrong.
                let addr: IpAddr = addr
                    .parse()
                    .map_err(|_| error("not an IPv4 or IPv6 address".into()))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let bad_prefix = || error(format!("prefix must be a number from 0 to {max}"));
                if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad_prefix());
                }
                let len = prefix.parse::<u8>().map_err(|_| bad_prefix())?;
                IpNet::new(addr, len).map_err(|_| bad_prefix())?
            }
            None => IpNet::from(
                s.parse::<IpAddr>()
                    .map_err(|_| error("not an IPv4 or IPv6 address".into()))?,
            ),
        };
        Ok(Cidr {
            net: unmap(net).trunc(),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr(), self.prefix())
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One allowed destination: an address block and, optionally, one port
/// (no port = every port). Written `{ cidr = "127.0.0.1/32", port = 8080 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRule {
    pub cidr: Cidr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An allow-list of destinations. Empty means deny all: an action that was
/// not granted network access must not have any.
#[derive(Debug, Clone, Default)]
pub struct NetMatcher {
    rules: Vec<NetRule>,
}

impl NetMatcher {
    pub fn new(rules: Vec<NetRule>) -> NetMatcher {
        NetMatcher { rules }
    }

    /// Whether some rule admits a connection to `ip`:`port`.
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.cidr.contains(ip) && r.port.is_none_or(|p| p == port))
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn rules(&self) -> &[NetRule] {
        &self.rules
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(patterns: &[&str]) -> PathMatcher {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        PathMatcher::new(&patterns).unwrap()
    }

    /// A matcher with a shared layer matches what either matches, and
    /// lists both layers' `dir/**` directories.
    #[test]
    fn a_shared_layer_adds_its_patterns() {
        let shared = std::sync::Arc::new(matcher(&["/src/in.txt", "/src/lib/**"]));
        let own = matcher(&["/sb/1/**"]).with_shared(shared.clone());
        assert!(own.matches(b"/sb/1/x") && own.matches(b"/src/in.txt"));
        assert!(own.matches(b"/src/lib/a.h"));
        assert!(!own.matches(b"/src/other.txt") && !own.matches(b"/sb/2/x"));
        let mut dirs: Vec<&[u8]> = own.below_dirs().collect();
        dirs.sort();
        assert_eq!(dirs, [&b"/sb/1/"[..], b"/src/lib/"]);
        assert!(!own.is_empty());
        assert!(
            matcher(&[])
                .with_shared(std::sync::Arc::new(matcher(&[])))
                .is_empty()
        );
        // The shared layer itself is unchanged: other spawns' roots are theirs.
        assert!(!shared.matches(b"/sb/1/x"));
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    /// What globset alone answers (the matcher before its literal sets).
    fn globset_only(patterns: &[String]) -> GlobSet {
        let mut builder = GlobSetBuilder::new();
        for p in patterns {
            let p = String::from_utf8(paths::normalize(p.as_bytes())).unwrap();
            let glob = GlobBuilder::new(&p)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .unwrap();
            builder.add(glob);
        }
        builder.build().unwrap()
    }

    #[test]
    fn literal_forms_are_only_taken_when_exact() {
        use LiteralForm::*;
        let exact = |p: &[u8]| Some(Exact(p.to_vec().into()));
        assert_eq!(literal_form("/a/b"), exact(b"/a/b"));
        assert_eq!(literal_form("/a[*]b/[[]x[]]"), exact(b"/a*b/[x]"));
        assert_eq!(literal_form("/a\\*b"), exact(b"/a*b"));
        assert_eq!(literal_form("/a/**"), Some(Below(b"/a/")));
        assert_eq!(literal_form("/**"), Some(Below(b"/")));
        for glob in [
            "/a/*", "/a/?", "/a/[ab]", "/a/[!b]", "/a/{b,c}", "/a/b,c", "/a[*]/**", "/a/*/**",
            "/a/b\\", "/a/[*", "/a/[\\]",
        ] {
            assert_eq!(literal_form(glob), None, "{glob}");
        }
    }

    /// The hash sets answer what globset alone answers, for the patterns a
    /// sandbox declares (escaped odd names included) and plain globs.
    #[test]
    fn literal_sets_match_as_globset_does() {
        let names = [
            "in.txt",
            "a*b",
            "q?",
            "[x]",
            "{y}",
            "c,d",
            "back\\slash",
            "new\nline",
            "\u{e9}t\u{e9}",
        ];
        let mut patterns = Vec::new();
        for name in names {
            let dir = format!("/ws/{name}");
            patterns.push(crate::bazel::sandbox::escape_glob(&format!("{dir}/f")));
            patterns.push(crate::bazel::sandbox::pattern_below(Path::new(&dir)));
        }
        patterns.extend(["/etc/*.conf", "/usr/**", "/opt//x/", "/tmp/{a,b}/**"].map(String::from));
        let (ours, theirs) = (
            PathMatcher::new(&patterns).unwrap(),
            globset_only(&patterns),
        );
        assert!(!ours.exact.is_empty() && !ours.below.is_empty() && !ours.set.is_empty());
        let mut candidates: Vec<Vec<u8>> = Vec::new();
        for name in names.iter().chain(&["in", "a", "other", "a*b/f/g"]) {
            for path in [
                format!("/ws/{name}"),
                format!("/ws/{name}/f"),
                format!("/ws/{name}/f/deeper"),
                format!("/ws/{name}/g\nh"),
                format!("/ws/{name}f"),
            ] {
                candidates.push(path.into_bytes());
            }
        }
        for path in [
            "/etc/a.conf",
            "/etc/x/a.conf",
            "/usr",
            "/usr/bin/cc",
            "/opt/x",
            "/tmp/a/1",
            "/tmp/c/1",
            "/",
        ] {
            candidates.push(path.as_bytes().to_vec());
        }
        candidates.push(b"/ws/in.txt/\xff".to_vec());
        let mut matched = 0;
        for path in &candidates {
            let expected = theirs.is_match(Path::new(std::ffi::OsStr::from_bytes(path)));
            assert_eq!(
                ours.matches(path),
                expected,
                "{:?}",
                String::from_utf8_lossy(path)
            );
            matched += usize::from(expected);
        }
        assert!(matched > 20 && matched < candidates.len() - 10, "{matched}");
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn exact_paths_match_only_themselves() {
        let m = matcher(&["/etc/ld.so.cache"]);
        assert!(m.matches(b"/etc/ld.so.cache"));
        assert!(!m.matches(b"/etc/ld.so.cache2"));
        assert!(!m.matches(b"/etc/ld.so"));
        assert!(!m.matches(b"/etc/ldXso.cache"), "'.' is literal");
        assert!(!m.is_empty());
        assert!(matcher(&[]).is_empty());
        assert!(!matcher(&[]).matches(b"/"));
    }

    #[test]
    fn star_stays_within_one_component() {
        let m = matcher(&["/tmp/*.txt"]);
        assert!(m.matches(b"/tmp/a.txt"));
        assert!(m.matches(b"/tmp/.txt"));
        assert!(!m.matches(b"/tmp/sub/a.txt"));
        assert!(!m.matches(b"/tmp/a.txt/x"));
    }

    #[test]
    fn question_mark_is_one_char_not_slash() {
        let m = matcher(&["/dev/tty?"]);
        assert!(m.matches(b"/dev/tty1"));
        assert!(!m.matches(b"/dev/tty"));
        assert!(!m.matches(b"/dev/tty12"));
        assert!(!matcher(&["/a?b"]).matches(b"/a/b"));
    }

    #[test]
    fn double_star_spans_components_but_not_the_dir_itself() {
        let m = matcher(&["/usr/**"]);
        assert!(m.matches(b"/usr/bin/cat"));
        assert!(m.matches(b"/usr/a/b/c"));
        assert!(m.matches(b"/usr/x"));
        assert!(
            !m.matches(b"/usr"),
            "documented: the directory itself is not matched"
        );
        assert!(!m.matches(b"/usrlocal/x"));
        assert!(!m.matches(b"/opt/usr/x"));
        let mid = matcher(&["/src/**/BUILD"]);
        assert!(mid.matches(b"/src/BUILD"));
        assert!(mid.matches(b"/src/a/b/BUILD"));
        assert!(!mid.matches(b"/src/a/BUILD.bak"));
    }

    #[test]
    fn patterns_are_normalised() {
        let m = matcher(&["/usr//lib/./x/"]);
        assert!(m.matches(b"/usr/lib/x"));
    }

    #[test]
    fn non_utf8_paths_match() {
        let m = matcher(&["/tmp/*", "/exact/\u{e9}"]);
        assert!(m.matches(b"/tmp/\xff\xfe"));
        assert!(!m.matches(b"/tmp/\xff/x"));
        assert!(m.matches("/exact/é".as_bytes()));
        assert!(
            !m.matches(b"/exact/\xe9"),
            "Latin-1 byte is not the UTF-8 char"
        );
    }

    #[test]
    fn relative_or_broken_patterns_are_errors() {
        let patterns = vec!["/ok".to_string(), "usr/**".to_string()];
        let err = PathMatcher::new(&patterns).unwrap_err();
        assert_eq!(err.index, 1);
        assert_eq!(err.pattern, "usr/**");
        assert!(err.to_string().contains("\"usr/**\""), "{err}");
        assert!(err.to_string().contains("absolute"), "{err}");
        let err = PathMatcher::new(&["/a/[b".to_string()]).unwrap_err();
        assert_eq!(err.index, 0);
        assert!(err.reason.contains("unclosed"), "{err}");
        assert!(PathMatcher::new(&[String::new()]).is_err());
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(
            cidr("10.1.2.3/8").to_string(),
            "10.0.0.0/8",
            "host bits masked"
        );
        assert_eq!(cidr("127.0.0.1").to_string(), "127.0.0.1/32");
        assert_eq!(cidr("::1").to_string(), "::1/128");
        assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        for bad in [
            "300.1.1.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/x",
            "",
            "/8",
            "10.0.0.0/+8",
        ] {
            let err = bad.parse::<Cidr>().unwrap_err();
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid CIDR {bad:?}: ")),
                "{err}"
            );
        }
    }

    #[test]
    fn cidr_contains_v4_v6_and_mapped() {
        let lo = cidr("127.0.0.0/8");
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(lo.contains(ip("127.255.0.9")));
        assert!(!lo.contains(ip("128.0.0.1")));
        assert!(
            lo.contains(ip("::ffff:127.0.0.1")),
            "mapped address matches v4 block"
        );
        assert!(!lo.contains(ip("::1")));
        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(!v6.contains(ip("32.1.13.184")));
        assert!(cidr("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!cidr("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(cidr("::/0").contains(ip("2001:db8::1")));
        assert!(cidr("::ffff:127.0.0.1").contains(ip("127.0.0.1")));
        assert!(cidr("127.0.0.1/32").contains(ip("::ffff:127.0.0.1")));
        assert!(!cidr("127.0.0.1/32").contains(ip("::ffff:127.0.0.2")));
    }

    #[test]
    fn mapped_blocks_become_ipv4_only_from_slash_96() {
        let mapped = cidr("::ffff:0.0.0.0/96");
        assert_eq!(mapped.to_string(), "0.0.0.0/0");
        assert!(mapped.addr().is_ipv4());
        assert_eq!(mapped.prefix(), 0);
        // Shorter than /96 also covers non-mapped IPv6, so it stays IPv6.
        let wide = cidr("::ffff:0.0.0.0/80");
        assert_eq!(wide.to_string(), "::/80");
        assert!(wide.contains(ip("::1")));
        assert!(
            !wide.contains(ip("127.0.0.1")),
            "v4 is not judged by a v6 block"
        );
        assert_eq!(cidr("::ffff:10.1.2.3/120").to_string(), "10.1.2.0/24");
    }

    #[test]
    fn net_rules_and_ports() {
        let rules: Vec<NetRule> = serde_json::from_str(
            r#"[{"cidr": "127.0.0.1/32", "port": 8080}, {"cidr": "10.0.0.0/8"}]"#,
        )
        .unwrap();
        let m = NetMatcher::new(rules);
        assert!(m.allows(ip("127.0.0.1"), 8080));
        assert!(m.allows(ip("::ffff:127.0.0.1"), 8080));
        assert!(!m.allows(ip("127.0.0.1"), 8081));
        assert!(!m.allows(ip("127.0.0.2"), 8080));
        assert!(m.allows(ip("10.9.9.9"), 1), "no port = any port");
        assert!(m.allows(ip("10.9.9.9"), 65535));
        assert!(!m.allows(ip("11.0.0.1"), 80));
        let none = NetMatcher::new(Vec::new());
        assert!(none.is_empty());
        assert!(!none.allows(ip("127.0.0.1"), 80), "empty = deny all");
    }

    #[test]
    fn net_rule_serde() {
        let rule: NetRule = serde_json::from_str(r#"{"cidr": "::1"}"#).unwrap();
        assert_eq!(rule.port, None);
        assert_eq!(
            serde_json::to_string(&rule).unwrap(),
            r#"{"cidr":"::1/128"}"#
        );
        let bad = serde_json::from_str::<NetRule>(r#"{"cidr": "::1", "proto": "tcp"}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unknown field `proto`")
        );
        let bad = serde_json::from_str::<NetRule>(r#"{"cidr": "1.2.3.4/40"}"#);
        assert!(bad.unwrap_err().to_string().contains("invalid CIDR"));
        let bad = serde_json::from_str::<NetRule>(r#"{"cidr": "::1", "port": 70000}"#);
        assert!(bad.is_err());
    }
}
