//! Which flags ask a Bazel for its unsorted execution log, and the answer
//! kept for a Bazel whose `--version` names no release.
//!
//! Such a Bazel (a build from source, such as Debian's package) is asked
//! whether it takes each flag (`canonicalize-flags`, a command its server
//! runs). That question cost each build 0.13–0.16 s of wall time and
//! 0.14–0.24 s of the server's CPU more (Bazel 4.2.3, a server running,
//! three asks): the answer is kept in [`CACHE_DIR`], one file per program,
//! named by the identity of the file the command names (device, inode,
//! size, modification and change times) and holding the `--version` text
//! it was given for. A program changed in place or replaced is asked again.
//!
//! The program may be a wrapper that picks the Bazel it runs (Debian's
//! `/usr/bin/bazel` picks by `.bazelversion` and `USE_BAZEL_VERSION`), so
//! a kept answer can be wrong for the Bazel it runs this time. Such a Bazel
//! refuses the flag before it builds anything (exit code 2, no log
//! written): then `monitor exec` asks again and, when the answer differs,
//! keeps the new one and runs the command once more ([`LogChoice::recheck`]).
use std::{
    ffi::{OsStr, OsString},
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::bazel::version::{Release, parse, takes_flag, version_of};

/// The binary log, sorted unless [`NO_SORT_FLAG`] comes with it.
pub const BINARY_LOG_FLAG: &str = "--execution_log_binary_file";
/// The same binary log, unsorted (Bazel before 7).
pub const RAW_LOG_FLAG: &str = "--experimental_execution_log_file";
/// Bazel 6.1+: `--execution_log_binary_file` written unsorted.
pub const NO_SORT_FLAG: &str = "--noexecution_log_sort";

/// Where the answers of Bazels that name no release are kept (a cache:
/// anything in it may go; what is missing is asked again).
pub const CACHE_DIR: &str = "/var/cache/build-monitor/bazel-log-flags";

/// The flags that ask a Bazel for its binary execution log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFlags {
    /// `--experimental_execution_log_file` (before Bazel 7).
    Raw,
    /// `--execution_log_binary_file` with `--noexecution_log_sort` (6.1+).
    BinaryUnsorted,
    /// `--execution_log_binary_file`, which every release takes.
    Sorted,
}

impl LogFlags {
    fn word(self) -> &'static str {
        match self {
            LogFlags::Raw => "raw",
            LogFlags::BinaryUnsorted => "binary-unsorted",
            LogFlags::Sorted => "sorted",
        }
    }

    fn from_word(word: &str) -> Option<LogFlags> {
        [LogFlags::Raw, LogFlags::BinaryUnsorted, LogFlags::Sorted]
            .into_iter()
            .find(|f| f.word() == word)
    }
}

/// [`LogFlags`] for `release`; without one, by what `takes` says of a flag.
pub fn log_flags_for(release: Option<Release>, takes: impl Fn(&str) -> bool) -> LogFlags {
    match release {
        Some(r) if r.major < 7 => LogFlags::Raw,
        Some(_) => LogFlags::BinaryUnsorted,
        None if takes(&format!("{RAW_LOG_FLAG}=/dev/null")) => LogFlags::Raw,
        None if takes(NO_SORT_FLAG) => LogFlags::BinaryUnsorted,
        None => LogFlags::Sorted,
    }
}

/// The flags chosen for one command, and how to ask again.
pub struct LogChoice {
    pub flags: LogFlags,
    /// The kept answer the flags came from, if they did.
    kept: Option<KeptAnswer>,
    /// The command up to and including its verb.
    asked: Vec<OsString>,
    cgroup: PathBuf,
}

impl LogChoice {
    /// The flags for the unsorted log the Bazel of `asked` (the command up
    /// to and including its verb: the startup options between them start
    /// the same server as the build) takes, asked in `cgroup`: by the
    /// release its `--version` names; else the answer kept for this
    /// program; else by asking it about each flag, the answer then kept.
    /// The sorted log when `--version` fails (nothing more is asked).
    pub fn choose(asked: &[OsString], cgroup: &Path) -> LogChoice {
        let mut choice = LogChoice {
            flags: LogFlags::Sorted,
            kept: None,
            asked: asked.to_vec(),
            cgroup: cgroup.to_path_buf(),
        };
        let Some(version) = version_of(&asked[0], cgroup) else {
            return choice;
        };
        if let Some(release) = parse(&version) {
            choice.flags = log_flags_for(Some(release), |_| false);
            return choice;
        }
        let kept = KeptAnswer::for_program(&asked[0], &version);
        if let Some(flags) = kept.as_ref().and_then(KeptAnswer::read) {
            choice.flags = flags;
            choice.kept = kept;
            return choice;
        }
        choice.flags = choice.ask();
        if let Some(kept) = kept {
            kept.write(choice.flags);
        }
        choice
    }

    /// After the command, run with a kept answer, ended as a Bazel
    /// refusing a flag does: asks again; the new flags when the answer
    /// changed (then kept), else `None` (the command failed for a reason
    /// of its own, or no kept answer was used).
    pub fn recheck(&self) -> Option<LogFlags> {
        let kept = self.kept.as_ref()?;
        let flags = self.ask();
        if flags == self.flags {
            return None;
        }
        kept.write(flags);
        Some(flags)
    }

    fn ask(&self) -> LogFlags {
        let asked = &self.asked;
        let (program, startup) = (&asked[0], &asked[1..asked.len() - 1]);
        let verb = asked[asked.len() - 1].to_string_lossy();
        log_flags_for(None, |flag| {
            takes_flag(program, startup, &verb, flag, &self.cgroup)
        })
    }
}

/// The kept answer of one program for one `--version` text.
struct KeptAnswer {
    path: PathBuf,
    version: String,
}

impl KeptAnswer {
    /// `None` when `program` is not found (then nothing is kept).
    fn for_program(program: &OsStr, version: &str) -> Option<KeptAnswer> {
        Some(KeptAnswer {
            path: Path::new(CACHE_DIR).join(identity_name(program)?),
            version: version.to_owned(),
        })
    }

    /// The answer kept for this `--version` text, if any.
    fn read(&self) -> Option<LogFlags> {
        if !self.dir_is_trusted() {
            return None;
        }
        let text = fs::read_to_string(&self.path).ok()?;
        let (word, version) = text.split_once('\n')?;
        (version == self.version)
            .then(|| LogFlags::from_word(word))
            .flatten()
    }

    /// Keeps `flags` (written whole, then renamed into place: a reader
    /// never sees half a file). Failing to keep it only costs asking again.
    fn write(&self, flags: LogFlags) {
        let written = (|| -> std::io::Result<()> {
            let dir = self.path.parent().unwrap_or(Path::new(CACHE_DIR));
            // Not writable by others whatever the umask.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)?;
            if !self.dir_is_trusted() {
                return Err(std::io::Error::other(
                    "a directory on the way is a symlink or writable by others",
                ));
            }
            let mut file = tempfile::NamedTempFile::new_in(dir)?;
            write!(file, "{}\n{}", flags.word(), self.version)?;
            file.persist(&self.path)?;
            Ok(())
        })();
        if let Err(error) = written {
            log::debug!(
                "cannot keep Bazel's answer in {}: {error}",
                self.path.display()
            );
        }
    }

    /// Whether the answer's directory and its parent are real directories
    /// of this user that nobody else may write: a build action cannot then
    /// plant answers, nor turn the write into one elsewhere. (A wrong answer
    /// only costs a refused flag and a second ask; writing elsewhere as
    /// root would be worse.)
    fn dir_is_trusted(&self) -> bool {
        // SAFETY: plain geteuid(2).
        let euid = unsafe { libc::geteuid() };
        let Some(dir) = self.path.parent() else {
            return false;
        };
        [Some(dir), dir.parent()].into_iter().flatten().all(|d| {
            fs::symlink_metadata(d)
                .is_ok_and(|m| m.file_type().is_dir() && m.uid() == euid && m.mode() & 0o022 == 0)
        })
    }
}

/// The file `program` names (looked up in `PATH` like the command will
/// be), as a file name: device, inode, size, modification and change
/// times, in hexadecimal.
fn identity_name(program: &OsStr) -> Option<String> {
    let path = which::which(program).ok()?;
    let m = fs::metadata(path).ok()?;
    let nanos = |secs: i64, nsecs: i64| secs as i128 * 1_000_000_000 + nsecs as i128;
    Some(format!(
        "{:x}-{:x}-{:x}-{:x}-{:x}",
        m.dev(),
        m.ino(),
        m.size(),
        nanos(m.mtime(), m.mtime_nsec()),
        nanos(m.ctime(), m.ctime_nsec())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_unsorted_where_the_release_names_the_flag() {
        let release = |major, minor| Some(Release { major, minor });
        // A named release is not asked about flags.
        let never = |flag: &str| panic!("asked about {flag}");
        assert_eq!(log_flags_for(release(4, 2), never), LogFlags::Raw);
        assert_eq!(log_flags_for(release(6, 5), never), LogFlags::Raw);
        assert_eq!(
            log_flags_for(release(7, 0), never),
            LogFlags::BinaryUnsorted
        );
        assert_eq!(
            log_flags_for(release(8, 1), never),
            LogFlags::BinaryUnsorted
        );
    }

    #[test]
    fn a_bazel_without_a_release_is_asked_which_flag_it_takes() {
        let takes = |known: &'static [&'static str]| {
            move |flag: &str| known.iter().any(|k| flag.split('=').next() == Some(*k))
        };
        let raw_only = takes(&["--experimental_execution_log_file"]);
        assert_eq!(log_flags_for(None, raw_only), LogFlags::Raw);
        let both = takes(&[
            "--experimental_execution_log_file",
            "--noexecution_log_sort",
        ]);
        assert_eq!(log_flags_for(None, both), LogFlags::Raw);
        let no_sort_only = takes(&["--noexecution_log_sort"]);
        assert_eq!(log_flags_for(None, no_sort_only), LogFlags::BinaryUnsorted);
        assert_eq!(log_flags_for(None, takes(&[])), LogFlags::Sorted);
    }

    #[test]
    fn a_kept_answer_holds_for_its_version_text_only() {
        let dir = tempfile::tempdir().unwrap();
        let kept = |version: &str| KeptAnswer {
            path: dir.path().join("sub/answer"),
            version: version.to_owned(),
        };
        assert_eq!(kept("bazel no_version\n").read(), None);
        kept("bazel no_version\n").write(LogFlags::BinaryUnsorted);
        assert_eq!(
            kept("bazel no_version\n").read(),
            Some(LogFlags::BinaryUnsorted)
        );
        assert_eq!(kept("bazel development version\n").read(), None);
        kept("bazel no_version\n").write(LogFlags::Raw);
        assert_eq!(kept("bazel no_version\n").read(), Some(LogFlags::Raw));
        // Nor one in a directory others may write.
        use std::os::unix::fs::PermissionsExt as _;
        let sub = dir.path().join("sub");
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(kept("bazel no_version\n").read(), None);
        kept("bazel no_version\n").write(LogFlags::Sorted);
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(kept("bazel no_version\n").read(), Some(LogFlags::Raw));
        // Garbage in the cache is no answer.
        fs::write(dir.path().join("sub/answer"), "maybe\nbazel no_version\n").unwrap();
        assert_eq!(kept("bazel no_version\n").read(), None);
    }

    #[test]
    fn a_program_is_named_by_the_file_it_runs() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("bazel");
        fs::write(&program, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
        let name = identity_name(program.as_os_str()).unwrap();
        assert_eq!(identity_name(program.as_os_str()).unwrap(), name);
        // Changed in place: another name.
        fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        assert_ne!(identity_name(program.as_os_str()).unwrap(), name);
        assert_eq!(identity_name(OsStr::new("/nonexistent/bazel")), None);
        // Found in PATH like the command.
        assert!(identity_name(OsStr::new("sh")).is_some());
    }
}
