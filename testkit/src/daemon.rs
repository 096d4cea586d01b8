//! A child process that is stopped (a signal, then SIGKILL) when dropped, so
//! that no daemon outlives a failing test or command.
use std::{
    process::{Child, Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::wait::poll_until;

pub struct Daemon {
    name: String,
    child: Option<Child>,
}

impl Daemon {
    /// Spawns `cmd`; `name` says what it is in errors ("the monitor").
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let child = self
            .child
            .as_mut()
            .expect("the child is present until stop/drop");
        child
            .try_wait()
            .with_context(|| format!("waiting for {}", self.name))
    }

    /// Sends `signal` and waits up to `timeout` for the exit; past it the
    /// process is killed and this is an error.
    pub fn stop(self, signal: libc::c_int, timeout: Duration) -> Result<ExitStatus> {
        self.stop_nudging(signal, timeout, || {})
    }

    /// As [`Daemon::stop`], calling `nudge` while it waits: for a process
    /// that looks at the signal only when something else wakes it.
    pub fn stop_nudging(
        mut self,
        signal: libc::c_int,
        timeout: Duration,
        nudge: impl FnMut(),
    ) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .expect("the child is present until stop/drop");
        stop_child(&mut child, signal, timeout, nudge)
            .with_context(|| format!("stopping {}", self.name))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && let Err(error) = stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5), || {})
        {
            eprintln!("warning: stopping {}: {error:#}", self.name);
        }
    }
}

fn stop_child(
    child: &mut Child,
    signal: libc::c_int,
    timeout: Duration,
    mut nudge: impl FnMut(),
) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; the child is not yet
    // reaped, so the pid is still ours.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error()).context("kill");
    }
    let exited = poll_until(timeout, || {
        let status = child.try_wait().ok().flatten();
        if status.is_none() {
            nudge();
        }
        status
    });
    if let Some(status) = exited {
        return Ok(status);
    }
    let _ = child.kill();
    let status = child.wait()?;
    bail!("it did not exit within {timeout:?} of signal {signal}; killed ({status})")
}
