//! Which Bazel release `monitor exec` runs, from `CMD --version` (a
//! client-side option: no server starts), for the flags whose names
//! changed between releases: the unsorted execution log. A Bazel whose
//! `--version` names no release (a build from source, such as Debian's
//! package: `bazel no_version`) is asked whether it takes a flag instead
//! (`CMD canonicalize-flags`, which parses options and builds nothing). CMD
//! may be a wrapper (a workspace's `tools/bazel`, bazelisk fetching Bazel):
//! it is asked inside the job's cgroup, once the programs are attached, so
//! whatever it does is watched like the build.
use std::{
    ffi::{OsStr, OsString},
    io::Read as _,
    path::Path,
    process::{Command, ExitStatus, Stdio},
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

/// What `program --version`, run in `cgroup`, printed; `None` when it
/// fails or takes longer than [`PATIENCE`]. [`parse`] reads the release
/// in it (a build from source, such as Debian's package, names none:
/// `bazel no_version`).
pub fn version_of(program: &OsStr, cgroup: &Path) -> Option<String> {
    let mut cmd = Command::new(program);
    cmd.arg("--version");
    let (status, text) = answer_in(cmd, cgroup)?;
    status.success().then_some(text)
}

/// Whether `program`, started with the `startup` options (those before its
/// command), takes `flag` for the command `verb`, run in `cgroup`: `program
/// STARTUP canonicalize-flags --for_command=VERB -- FLAG` exits 0 for an
/// option it knows, 2 for one it does not. This starts the Bazel server
/// when none runs for those startup options: the build that follows uses
/// it (the probe itself took 0.06–0.09 s with a server running, measured
/// on Bazel 4.2.3).
pub fn takes_flag(
    program: &OsStr,
    startup: &[OsString],
    verb: &str,
    flag: &str,
    cgroup: &Path,
) -> bool {
    let mut cmd = Command::new(program);
    cmd.args(startup)
        .arg("canonicalize-flags")
        .arg(format!("--for_command={verb}"))
        .args(["--", flag]);
    answer_in(cmd, cgroup).is_some_and(|(status, _)| status.success())
}

/// Runs `cmd` in `cgroup` with no input and its errors discarded; its exit
/// status and what it printed. `None` when it cannot start or takes longer
/// than [`PATIENCE`] (then it is killed).
fn answer_in(mut cmd: Command, cgroup: &Path) -> Option<(ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    testkit::cgroup::join_on_spawn(&mut cmd, cgroup).ok()?;
    let mut child = cmd.spawn().ok()?;
    let mut stdout = child.stdout.take()?;
    // Read while it runs: the answer may not fit in the pipe
    // (`canonicalize-flags` prints the options back). Not waited for past
    // the deadline: something it left running may hold the pipe open.
    let (text_tx, text_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        let _ = text_tx.send(text);
    });
    let deadline = std::time::Instant::now() + PATIENCE;
    // Polled finely: the build waits for the answer.
    let exited = testkit::wait::poll_every(Duration::from_millis(2), PATIENCE, || {
        child.try_wait().ok().flatten()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    };
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    Some((status, text_rx.recv_timeout(left).unwrap_or_default()))
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
    fn a_program_that_cannot_be_asked_answers_nothing() {
        // No cgroup to join: nothing is asked at all.
        let none = Path::new("/nonexistent/cgroup");
        assert_eq!(version_of(OsStr::new("/bin/echo"), none), None);
        let flag = "--noexecution_log_sort";
        assert!(!takes_flag(
            OsStr::new("/bin/true"),
            &[],
            "build",
            flag,
            none
        ));
    }
}
