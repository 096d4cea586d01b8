//! How isolated a Bazel spawn really ran, from what the kernel saw of its
//! launcher: which launcher it exec'd (matched by the kernel on the exec),
//! whether it worked in a sandbox directory, and linux-sandbox's `-N`.
//! Bazel falls back from linux-sandbox to processwrapper-sandbox silently
//! when user namespaces are unavailable; this is where that shows.
use serde::{Deserialize, Serialize};

use crate::bazel::sandbox::Spawn;

/// Isolation levels, weakest first (the order is what `require_isolation`
/// compares).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// No sandbox: the spawn works in the main execroot (`local`,
    /// `standalone`, `no-sandbox`), even when process-wrapper runs it.
    #[default]
    None,
    /// processwrapper-sandbox: inputs staged in a sandbox directory, no
    /// namespaces (the host file system and network).
    ProcessWrapper,
    /// linux-sandbox: namespaces, a read-only host file system.
    LinuxSandbox,
}

impl Isolation {
    /// What a launched spawn got.
    pub fn of(spawn: &Spawn) -> Isolation {
        match (spawn.launcher.as_str(), spawn.sandbox_dir.is_some()) {
            ("linux-sandbox", _) => Isolation::LinuxSandbox,
            (_, true) => Isolation::ProcessWrapper,
            (_, false) => Isolation::None,
        }
    }

    /// The report's and config's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::None => "none",
            Isolation::ProcessWrapper => "process-wrapper",
            Isolation::LinuxSandbox => "linux-sandbox",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::bazel::sandbox::parse_launch;

    fn argv(args: &[&str]) -> Vec<u8> {
        args.join("\0").into_bytes()
    }

    #[test]
    fn isolation_of_each_launcher_and_working_directory() {
        let sandbox = Path::new("/ob/sandbox/processwrapper-sandbox/3/execroot/ws");
        let main = Path::new("/ob/execroot/ws");
        let pw = |cwd| {
            parse_launch(
                &argv(&[
                    "/usr/share/bazel/process-wrapper",
                    "--timeout=0",
                    "/bin/bash",
                ]),
                cwd,
            )
        };
        assert_eq!(Isolation::of(&pw(sandbox)), Isolation::ProcessWrapper);
        assert_eq!(Isolation::of(&pw(main)), Isolation::None);
        let ls = parse_launch(
            &argv(&["/usr/share/bazel/linux-sandbox", "-N", "--", "/bin/true"]),
            &PathBuf::from("/ob/sandbox/linux-sandbox/1/execroot/ws"),
        );
        assert_eq!(Isolation::of(&ls), Isolation::LinuxSandbox);
        assert!(ls.own_network);
        assert!(Isolation::None < Isolation::ProcessWrapper);
        assert!(Isolation::ProcessWrapper < Isolation::LinuxSandbox);
    }
}
