//! `files.allow`'s `dir/**` patterns for the kernel (`ALLOWED_DIRS`,
//! `monitor-ebpf/src/allowed.rs`): a failed read of a plain absolute name
//! below one of them is counted there instead of reported, since the
//! judge could only find it allowed. Directories too long for the trie's
//! key, and those past its size (the longest first), stay with the judge.
use monitor_common::{ALLOWED_DIR_BYTES, MAX_ALLOWED_DIRS};

use crate::policy::matchers::PathMatcher;

/// An `ALLOWED_DIRS` entry: prefix length in bits, `dir/` padded with
/// zeros, and its length in bytes (the name must go on past it).
pub type AllowedDir = (u32, [u8; ALLOWED_DIR_BYTES], u8);

/// The entries for `allow`'s directories, shortest first (they cover the
/// most), at most `MAX_ALLOWED_DIRS`.
pub fn allowed_dirs(allow: &PathMatcher) -> Vec<AllowedDir> {
    let mut dirs: Vec<&[u8]> = allow
        .below_dirs()
        .filter(|dir| dir.len() <= ALLOWED_DIR_BYTES && dir.starts_with(b"/"))
        .collect();
    dirs.sort_unstable_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    dirs.truncate(MAX_ALLOWED_DIRS as usize);
    dirs.into_iter()
        .map(|dir| {
            let mut key = [0u8; ALLOWED_DIR_BYTES];
            key[..dir.len()].copy_from_slice(dir);
            ((dir.len() * 8) as u32, key, dir.len() as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(patterns: &[&str]) -> Vec<Vec<u8>> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        allowed_dirs(&PathMatcher::new(&patterns).unwrap())
            .into_iter()
            .map(|(bits, key, len)| {
                assert_eq!(bits, u32::from(len) * 8);
                assert!(key[len as usize..].iter().all(|&b| b == 0));
                key[..len as usize].to_vec()
            })
            .collect()
    }

    #[test]
    fn only_plain_directory_patterns_go_to_the_kernel() {
        assert_eq!(
            dirs(&[
                "/usr/**",
                "/etc/ld.so.cache",
                "/dev/pts/**",
                "/sys/kernel/mm/transparent_hugepage/**",
                "/opt/*/lib/**",
                "/srv/{a,b}/**",
                "/etc//ld.so.conf.d/**",
            ]),
            [
                &b"/usr/"[..],
                b"/dev/pts/",
                b"/etc/ld.so.conf.d/",
                b"/sys/kernel/mm/transparent_hugepage/",
            ]
        );
    }

    #[test]
    fn everything_allowed_is_the_root_directory() {
        assert_eq!(dirs(&["/**"]), [&b"/"[..]]);
    }

    #[test]
    fn directories_the_key_cannot_hold_stay_with_the_judge() {
        let long = format!("/{}/**", "d".repeat(ALLOWED_DIR_BYTES));
        let fits = format!("/{}/**", "d".repeat(ALLOWED_DIR_BYTES - 2));
        assert_eq!(dirs(&[&long, &fits]).len(), 1);
        let many: Vec<String> = (0..MAX_ALLOWED_DIRS + 5)
            .map(|i| format!("/dir{i:03}/**"))
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let mut with_short = many.clone();
        with_short.push("/a/**");
        let kept = dirs(&with_short);
        assert_eq!(kept.len(), MAX_ALLOWED_DIRS as usize);
        assert_eq!(kept[0], b"/a/", "the shortest is kept");
    }
}
