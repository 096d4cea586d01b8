//! Which Bazel release `monitor exec` runs, from `CMD --version` (a
//! client-side option: no server starts), for the flags whose names
//! changed between releases: the unsorted execution log. CMD may be a
//! wrapper (a workspace's `tools/bazel`, bazelisk fetching Bazel): it is
//! asked inside the job's cgroup, once the programs are attached, so
//! whatever it does is watched like the build.
use std::{
    ffi::OsStr,
    io::Read as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

/// A Bazel release's major and minor version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

/// How long `--version` may take: bazelisk may fetch Bazel first (which
/// the build then needs anyway).
const PATIENCE: Duration = Duration::from_secs(60);

/// The release `program --version`, run in `cgroup`, names; `None` when
/// it names none (a build from source, such as Debian's package, says
/// `bazel no_version`), fails, or takes longer than [`PATIENCE`].
pub fn release_of(program: &OsStr, cgroup: &Path) -> Option<Release> {
    let mut cmd = Command::new(program);
    cmd.arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    testkit::cgroup::join_on_spawn(&mut cmd, cgroup).ok()?;
    let mut child = cmd.spawn().ok()?;
    // The answer is one line: it fits in the pipe, so waiting first
    // cannot block the child.
    let exited = testkit::wait::poll_until(PATIENCE, || child.try_wait().ok().flatten());
    if !exited.is_some_and(|status| status.success()) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let mut text = String::new();
    child.stdout.take()?.read_to_string(&mut text).ok()?;
    parse(&text)
}

/// `bazel 7.1.0`, `bazel 8.0.0-pre.20240101.1`, or bazelisk's
/// `Build label: 7.1.0`; `None` for `bazel no_version` and anything else.
pub fn parse(text: &str) -> Option<Release> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let version = line
            .strip_prefix("bazel ")
            .or_else(|| line.strip_prefix("Build label: "))?;
        let mut numbers = version.split(|c: char| !c.is_ascii_digit());
        let major = numbers.next()?.parse().ok()?;
        let minor = numbers.next()?.parse().ok()?;
        Some(Release { major, minor })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_are_read_from_bazel_and_bazelisk() {
        let r = |major, minor| Some(Release { major, minor });
        assert_eq!(parse("bazel 4.2.3\n"), r(4, 2));
        assert_eq!(parse("bazel 7.1.0rc1"), r(7, 1));
        assert_eq!(parse("bazel 8.0.0-pre.20240101.1"), r(8, 0));
        assert_eq!(
            parse("Bazelisk version: v1.19.0\nBuild label: 6.5.0\n"),
            r(6, 5)
        );
    }

    #[test]
    fn builds_without_a_release_name_none() {
        assert_eq!(parse("bazel no_version\n"), None);
        assert_eq!(parse("bazel development version"), None);
        assert_eq!(parse(""), None);
        assert_eq!(parse("make 4.3"), None);
    }

    #[test]
    fn a_program_that_fails_or_is_missing_names_none() {
        // No cgroup to join: the release is not asked at all.
        let none = Path::new("/nonexistent/cgroup");
        assert_eq!(release_of(OsStr::new("/bin/echo"), none), None);
    }
}
