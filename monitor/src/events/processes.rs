//! What each monitored process runs: pid → executable, from exec events,
//! falling back to `/proc/<pid>/exe` for processes that had already exec'd
//! when they entered a monitored cgroup.
use std::sync::Arc;

use crate::{
    events::paths,
    hashing::{HashMap, HashSet},
};

#[derive(Default)]
pub struct ProcessTable {
    exe: HashMap<u32, Arc<str>>,
    /// Processes already reported for setting up an io_uring.
    io_uring: HashSet<u32>,
    /// The action (cgroup id) each live monitored process exec'd in.
    action: HashMap<u32, u64>,
}

impl ProcessTable {
    pub fn exec(&mut self, pid: u32, exe: Option<&[u8]>) {
        match exe {
            Some(exe) => {
                self.exe.insert(pid, paths::escape_for_display(exe).into());
            }
            None => {
                self.exe.remove(&pid);
            }
        }
    }

    pub fn exit(&mut self, pid: u32) {
        self.exe.remove(&pid);
        self.io_uring.remove(&pid);
        self.action.remove(&pid);
    }

    /// Notes which action `pid` runs in (from its exec event).
    pub fn note_action(&mut self, pid: u32, action_cgroup_id: u64) {
        self.action.insert(pid, action_cgroup_id);
    }

    /// The action of a live monitored process, when it exec'd in one.
    pub fn action_of(&self, pid: u32) -> Option<u64> {
        self.action.get(&pid).copied()
    }

    /// Notes that `pid` set up an io_uring; true the first time.
    pub fn note_io_uring(&mut self, pid: u32) -> bool {
        self.io_uring.insert(pid)
    }

    /// The executable of `pid`; a forked child that has not exec'd runs its
    /// parent's executable.
    pub fn exe(&mut self, pid: u32, ppid: u32) -> Option<Arc<str>> {
        if let Some(exe) = self.exe.get(&pid) {
            return Some(exe.clone());
        }
        let found: Arc<str> = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| {
                paths::escape_for_display(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()))
                    .into()
            })
            .or_else(|| self.exe.get(&ppid).cloned())?;
        self.exe.insert(pid, found.clone());
        Some(found)
    }
}
