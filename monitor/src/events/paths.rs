//! Path handling on raw bytes.
//!
//! Linux paths are byte strings, not UTF-8: a build may create files with any
//! name, and an undeclared access to such a file must still be reported with
//! its exact name. So everything here works on `&[u8]`, and only
//! [`escape_for_display`] turns bytes into text, losslessly.
//!
//! Normalisation is lexical (no symlinks are followed): the kernel hands us
//! the path a process *asked* for, and policy patterns are written against
//! the same lexical form.
use std::sync::LazyLock;

use memchr::memmem::Finder;

/// Lexically normalises an absolute path: collapses repeated `/`, drops `.`,
/// resolves `..` (never above `/`) and removes any trailing `/` except for
/// `/` itself. Input that does not start with `/` is taken relative to `/`,
/// so the result is always absolute.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    if is_normal(path) {
        return path.to_vec();
    }
    normalize_parts(path)
}

/// [`normalize`], keeping `path`'s buffer when it is normal already (the
/// per-event path: one allocation fewer).
fn normalize_owned(path: Vec<u8>) -> Vec<u8> {
    if is_normal(&path) {
        return path;
    }
    normalize_parts(&path)
}

/// Builds the normal form in one buffer: a `..` cuts it back to its last
/// `/`. (Collecting the components first cost a growing list per path;
/// compilers' system include paths hold `..`, so many events take this.)
fn normalize_parts(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(part);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Already absolute and normal (the common case, checked without
/// allocating): no empty, `.` or `..` component, no trailing `/`.
///
/// Two SIMD substring searches (`memchr`), not a walk of the components:
/// an empty component is a `//`, a `.` or `..` one starts at a `/.`, which
/// few paths hold. 23 against 65-85 ns for a sandbox link's path of 110
/// bytes (measured); every event's path and every sandbox lookup asks.
pub(crate) fn is_normal(path: &[u8]) -> bool {
    static EMPTY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"//"));
    static DOT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"/."));
    if path == b"/" {
        return true;
    }
    path.first() == Some(&b'/')
        && path.last() != Some(&b'/')
        && EMPTY.find(path).is_none()
        && DOT
            .find_iter(path)
            .all(|at| !matches!(&path[at + 2..], [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..]))
}

/// A normal path (see [`is_normal`]) cut at its last `/`: its parent
/// directory (`/` for a name at the root) and its last name; `None` for
/// `/` itself and for paths that are not normal.
pub(crate) fn split_normal(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if !is_normal(path) {
        return None;
    }
    let cut = path.iter().rposition(|&b| b == b'/')?;
    if cut + 1 == path.len() {
        return None;
    }
    let parent = if cut == 0 { &b"/"[..] } else { &path[..cut] };
    Some((parent, &path[cut + 1..]))
}

/// Resolves `path` against the directory `base_dir` (for `openat(dirfd, …)`
/// and relative paths): an absolute `path` stands alone, a relative one is
/// appended to `base_dir`. The result is normalised.
pub fn resolve(base_dir: &[u8], path: &[u8]) -> Vec<u8> {
    if path.first() == Some(&b'/') {
        return normalize(path);
    }
    let mut joined = Vec::with_capacity(base_dir.len() + 1 + path.len());
    joined.extend_from_slice(base_dir);
    joined.push(b'/');
    joined.extend_from_slice(path);
    normalize_owned(joined)
}

/// `resolve(&dir_from_components(dir), path)`, built in one buffer (the
/// per-event path of a relative name).
pub fn resolve_in_components(dir: &[u8], path: &[u8]) -> Vec<u8> {
    if path.first() == Some(&b'/') {
        return normalize(path);
    }
    let mut joined = components_with_room(dir, 1 + path.len());
    joined.push(b'/');
    joined.extend_from_slice(path);
    normalize_owned(joined)
}

/// Decodes a directory captured by the kernel. The kernel walks dentries from
/// leaf to root (it cannot know the depth up front) and writes each name
/// followed by a NUL: `b"c\0b\0a\0"` is `/a/b/c`. Empty components are
/// ignored, and so is a component `/` (the root dentry's own name), so an
/// empty buffer is `/`.
pub fn dir_from_components(buf: &[u8]) -> Vec<u8> {
    components_with_room(buf, 0)
}

/// [`dir_from_components`], with room for `extra` more bytes.
fn components_with_room(buf: &[u8], extra: usize) -> Vec<u8> {
    let parts = buf
        .split(|&b| b == 0)
        .filter(|c| !c.is_empty() && *c != b"/")
        .rev();
    // Each name and its NUL become `/` and the name: no regrowing.
    join_absolute(parts, buf.len() + 1 + extra)
}

/// Renders a path for humans and JSON: valid UTF-8 passes through unchanged,
/// every byte that is not part of valid UTF-8 becomes `\xNN` (lowercase hex).
/// No byte is ever dropped, so two different paths never look the same
/// unless one of them literally contains `\x..` text.
pub fn escape_for_display(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `/` followed by the parts joined with `/`; `/` alone when there are none.
fn join_absolute<'a>(parts: impl IntoIterator<Item = &'a [u8]>, capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    for part in parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        String::from_utf8(normalize(p.as_bytes())).unwrap()
    }

    #[test]
    fn normalize_dots_and_slashes() {
        assert_eq!(n("/a/./b"), "/a/b");
        assert_eq!(n("/a/b/../c"), "/a/c");
        assert_eq!(n("//a///b//"), "/a/b");
        assert_eq!(n("/a/b/"), "/a/b");
        assert_eq!(n("/"), "/");
        assert_eq!(n(""), "/");
        assert_eq!(n("/."), "/");
        assert_eq!(n("/a/.."), "/");
    }

    /// Every path of up to 7 bytes made of `/`, `.` and `a`, shortest
    /// first: each way a component can be empty, `.`, `..` or a name.
    fn short_paths() -> Vec<Vec<u8>> {
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..7 {
            let longest = paths.last().unwrap().len();
            let longer: Vec<Vec<u8>> = paths
                .iter()
                .filter(|p| p.len() == longest)
                .flat_map(|p| b"/.a".map(|b| [&p[..], &[b]].concat()))
                .collect();
            paths.extend(longer);
        }
        paths
    }

    /// Every path of up to 7 bytes from `/`, `.`, `a`, against the
    /// normal form by its components (a `..` drops the one before).
    #[test]
    fn normalize_is_its_definition() {
        let by_components = |p: &[u8]| {
            let mut parts: Vec<&[u8]> = Vec::new();
            for part in p.split(|&b| b == b'/') {
                match part {
                    b"" | b"." => {}
                    b".." => {
                        parts.pop();
                    }
                    _ => parts.push(part),
                }
            }
            let joined: Vec<u8> = parts.iter().flat_map(|c| [&b"/"[..], c].concat()).collect();
            if joined.is_empty() {
                b"/".to_vec()
            } else {
                joined
            }
        };
        let mut climbing = 0;
        for p in &short_paths() {
            assert_eq!(normalize(p), by_components(p), "{}", escape_for_display(p));
            climbing += usize::from(p.windows(3).any(|w| w == b"/.."));
        }
        assert!(
            climbing > 100,
            "positive control: {climbing} paths with `..`"
        );
    }

    #[test]
    fn normalize_never_goes_above_root() {
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/../../etc/passwd"), "/etc/passwd");
        assert_eq!(n("/a/../../b"), "/b");
    }

    #[test]
    fn normalize_relative_is_rooted() {
        assert_eq!(n("a/b"), "/a/b");
        assert_eq!(n("./a/../b"), "/b");
    }

    #[test]
    fn resolve_joins_relative_only() {
        assert_eq!(resolve(b"/work/dir", b"x/../y.txt"), b"/work/dir/y.txt");
        assert_eq!(resolve(b"/work/dir", b"../up"), b"/work/up");
        assert_eq!(resolve(b"/work/dir", b"/etc//hosts"), b"/etc/hosts");
        assert_eq!(resolve(b"/", b"a"), b"/a");
        assert_eq!(resolve(b"/work/", b"."), b"/work");
    }

    #[test]
    fn components_decode_leaf_to_root() {
        assert_eq!(dir_from_components(b"c\0b\0a\0"), b"/a/b/c");
        assert_eq!(dir_from_components(b"only\0"), b"/only");
        assert_eq!(dir_from_components(b""), b"/");
        assert_eq!(dir_from_components(b"\0\0"), b"/");
        assert_eq!(dir_from_components(b"c\0\0b\0\0a\0"), b"/a/b/c");
        assert_eq!(dir_from_components(b"c\0a\0/\0"), b"/a/c");
        assert_eq!(dir_from_components(b"c\0b"), b"/b/c");
        assert_eq!(dir_from_components(b"\xff\0tmp\0"), b"/tmp/\xff");
    }

    #[test]
    fn resolving_in_components_is_resolving_their_directory() {
        for (dir, path) in [
            (&b"c\0b\0a\0"[..], &b"x/../y.txt"[..]),
            (b"c\0b\0a\0", b"../../../../up"),
            (b"c\0b\0a\0", b"/etc//hosts"),
            (b"", b"a"),
            (b"", b""),
            (b"c\0a\0/\0", b"."),
            (b"\xff\0tmp\0", b"f\xfe"),
            (b"only\0", b"dir/"),
        ] {
            assert_eq!(
                resolve_in_components(dir, path),
                resolve(&dir_from_components(dir), path)
            );
        }
        assert_eq!(resolve_in_components(b"b\0a\0", b"f"), b"/a/b/f");
    }

    #[test]
    fn escape_keeps_every_byte() {
        assert_eq!(escape_for_display(b"/tmp/\xff\xfeok"), "/tmp/\\xff\\xfeok");
        assert_eq!(escape_for_display("/tmp/é✓".as_bytes()), "/tmp/é✓");
        // A truncated multi-byte sequence is escaped byte by byte.
        assert_eq!(escape_for_display(b"a\xe2\x9c"), "a\\xe2\\x9c");
        assert_eq!(escape_for_display(b"\x80"), "\\x80");
        assert_eq!(escape_for_display(b""), "");
    }

    #[test]
    fn long_paths_are_kept_whole() {
        let mut long = Vec::new();
        while long.len() < 5000 {
            long.extend_from_slice(b"/component");
        }
        long.truncate(5000);
        let norm = normalize(&long);
        assert_eq!(norm, long);
        assert_eq!(resolve(b"/base", &long[1..]).len(), 5000 + 5);
        assert_eq!(escape_for_display(&long).len(), 5000);
    }

    /// Every path of up to 7 bytes of `/`, `.` and `a`: normal exactly
    /// when absolute, with no trailing `/` and no empty, `.` or `..`
    /// component (the definition, component by component).
    #[test]
    fn is_normal_is_its_definition() {
        let by_components = |p: &[u8]| {
            p == b"/"
                || (p.first() == Some(&b'/')
                    && p.last() != Some(&b'/')
                    && p[1..]
                        .split(|&b| b == b'/')
                        .all(|c| !c.is_empty() && c != b"." && c != b".."))
        };
        let paths = short_paths();
        let mut normal = 0;
        assert_eq!(paths.len(), (0..=7).map(|n| 3usize.pow(n)).sum::<usize>());
        for p in &paths {
            assert_eq!(is_normal(p), by_components(p), "{}", escape_for_display(p));
            normal += usize::from(is_normal(p));
        }
        assert!(normal > 100, "positive control: {normal} normal paths");
        assert!(is_normal(b"/a/.h/..x/.../b") && !is_normal(b"/a/b/../c"));
    }

    #[test]
    fn split_normal_cuts_at_the_last_slash_of_normal_paths_only() {
        assert_eq!(split_normal(b"/a/b/c"), Some((&b"/a/b"[..], &b"c"[..])));
        assert_eq!(split_normal(b"/a"), Some((&b"/"[..], &b"a"[..])));
        for odd in [
            &b"/"[..],
            b"/a/",
            b"/a/./b",
            b"/a/../b",
            b"a/b",
            b"",
            b"//a",
        ] {
            assert_eq!(
                split_normal(odd),
                None,
                "{:?}",
                String::from_utf8_lossy(odd)
            );
        }
    }
}
