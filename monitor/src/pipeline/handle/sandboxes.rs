//! Sandboxes registered in the kernel, whose failed probes it counts
//! instead of reporting (`monitor-ebpf/src/sandbox.rs`). A spawn's sandbox
//! is registered once it has been read and its declaration makes the whole
//! tree the action's own (then no failed open below it can be a
//! violation), and removed on the first tick after the registry says its
//! action ended (its launcher exited, its cgroup went, or it was
//! forgotten): one place for every way an action ends.
//!
//! The directory is held open while registered: its inode cannot be freed,
//! so its number cannot name another directory meanwhile (a spawn that
//! deletes its sandbox and makes a directory elsewhere gets a new one).
use std::{collections::HashMap, os::fd::OwnedFd, os::unix::ffi::OsStrExt as _};

use monitor_common::{MAX_SANDBOX_DIRS, SandboxDir};
use nix::{fcntl::OFlag, sys::stat::Mode};

use crate::{bazel::sandbox::Spawn, pipeline::handle::Handler};

/// Registrations waiting to be written into the kernel, and those held.
#[derive(Debug, Default)]
pub struct KernelSandboxes {
    /// (action key, its directory; `None` to remove), in order.
    pub pending: Vec<(u64, Option<SandboxDir>)>,
    held: HashMap<u64, OwnedFd>,
    /// The kernel's map was full once (warned once).
    full_warned: bool,
}

impl Handler {
    /// A spawn was read: its sandbox is registered when the action's
    /// declaration covers the whole tree (the spawn's own outputs).
    pub(super) fn register_sandbox(&mut self, key: u64, spawn: &Spawn) {
        let Some(dir) = spawn.sandbox_dir.as_deref() else {
            return;
        };
        // Its launcher may have exited while the sandbox was read: no exit
        // would come to remove it.
        if self.registry.has_ended(key) {
            return;
        }
        let Some(view) = self.registry.view(key) else {
            return;
        };
        let owned = view
            .declaration
            .as_deref()
            .is_some_and(|d| d.outputs.matches(dir.join("probe").as_os_str().as_bytes()));
        if !owned {
            return;
        }
        let sandboxes = &mut self.sandboxes;
        if sandboxes.held.len() >= MAX_SANDBOX_DIRS as usize {
            if !sandboxes.full_warned {
                sandboxes.full_warned = true;
                log::warn!(
                    "{MAX_SANDBOX_DIRS} sandboxes registered in the kernel: the failed probes of more are reported (not counted there)"
                );
            }
            return;
        }
        // Two syscalls per spawn: cheap enough for the event loop.
        let opened = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(std::io::Error::from)
        .and_then(|fd| Ok((crate::kernel::sandboxes::sandbox_dir_of(&fd)?, fd)));
        match opened {
            Ok((named, fd)) => {
                sandboxes.held.insert(key, fd);
                sandboxes.pending.push((key, Some(named)));
            }
            // Gone already (a short spawn): nothing left to probe in it.
            Err(e) => log::debug!("sandbox {}: {e}; its probes are reported", dir.display()),
        }
        self.metrics
            .kernel_sandboxes
            .set(sandboxes.held.len() as i64);
    }

    /// Removes the sandboxes of actions that ended: each holds a directory
    /// open and a slot of the kernel's map.
    pub(super) fn sweep_sandboxes(&mut self) {
        let ended: Vec<u64> = self
            .sandboxes
            .held
            .keys()
            .copied()
            .filter(|&key| self.registry.has_ended(key))
            .collect();
        for key in ended {
            self.unregister_sandbox(key);
        }
    }

    fn unregister_sandbox(&mut self, key: u64) {
        if self.sandboxes.held.remove(&key).is_some() {
            self.sandboxes.pending.push((key, None));
            self.metrics
                .kernel_sandboxes
                .set(self.sandboxes.held.len() as i64);
        }
    }
}
