//! Syscall auditing of new processes, held off while the bench measures.
//! Once any audit daemon has run since boot (the bench's own audit peer
//! starts one), the kernel gives every process forked afterwards an audit
//! context, and every syscall of it takes the slow exit path through the
//! audit code, whatever the audit status says now: on these VMs a
//! `getppid` went from 170 to 290 ns, and a bench build's processes spent
//! 0.17 s in `audit_reset_context`. That slow path is also what attaching a
//! syscall tracepoint costs, so with it already paid the floor and the
//! monitor looked cheaper (measured once: the empty program added 55 ns
//! to a `getppid` instead of 83), and rows measured before the first audit
//! round of a fresh boot were not measured like those after it. The task rule
//! `-a never,task` gives processes forked while it is loaded no audit
//! context (as on a host where audit never ran); it is taken out around the
//! audit peer's rounds, which need it absent, and removed at the end unless
//! the host had it already.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};

use super::peers::AUDITCTL;
use crate::util::{exec, output};

/// The task rule, as `auditctl -a` and `-d` take it.
const RULE: &str = "never,task";
/// The rule as `auditctl -l` lists it.
const LISTED: &str = "-a never,task";

/// The rule loaded while this lives (if the bench added it).
pub(crate) struct NoTaskAudit {
    /// The bench loaded the rule (the host did not have it).
    added: bool,
}

impl NoTaskAudit {
    /// Loads `-a never,task` unless it is loaded already.
    pub(crate) fn hold() -> Result<Self> {
        if rule_loaded()? {
            return Ok(Self { added: false });
        }
        change("-a")?;
        Ok(Self { added: true })
    }

    /// Whether the host had the rule before the bench.
    pub(crate) fn found_loaded(&self) -> bool {
        !self.added
    }

    /// Runs `measure` with the rule out (the audit peer's rounds: processes
    /// forked then are audited), and loads it again afterwards, whatever
    /// `measure` returned.
    pub(crate) fn suspended<T>(&self, measure: impl FnOnce() -> Result<T>) -> Result<T> {
        change("-d").context("taking the task rule out for the audit rounds")?;
        let measured = measure();
        change("-a").context("loading the task rule again after the audit rounds")?;
        measured
    }
}

impl Drop for NoTaskAudit {
    fn drop(&mut self) {
        if self.added
            && let Err(error) = change("-d")
        {
            eprintln!("warning: removing the bench's audit rule `{LISTED}`: {error:#}");
        }
    }
}

/// Whether `auditctl -l` lists the rule.
fn rule_loaded() -> Result<bool> {
    let listed = output(Command::new(AUDITCTL).arg("-l").stdin(Stdio::null()))
        .context("listing the audit rules (auditctl -l)")?;
    Ok(lists_rule(&listed))
}

/// Whether an `auditctl -l` listing holds the task rule as a rule of its
/// own (not a key or a field of another rule).
fn lists_rule(listed: &str) -> bool {
    listed.lines().any(|line| line.trim() == LISTED)
}

/// `auditctl -a never,task` (`op` "-a") or `-d` (removes it).
fn change(op: &str) -> Result<()> {
    exec(
        Command::new(AUDITCTL)
            .arg(op)
            .arg(RULE)
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
    .with_context(|| format!("auditctl {op} {RULE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_task_rule_only_as_a_rule_of_its_own() {
        assert!(!lists_rule("No rules\n"));
        assert!(lists_rule("-a never,task\n"));
        assert!(lists_rule(
            "-a always,exit -F arch=b64 -S openat -F auid=4242 -F key=bench\n-a never,task\n"
        ));
        assert!(!lists_rule(
            "-a always,exit -F arch=b64 -S openat -F key=-a never,task\n"
        ));
        assert!(!lists_rule("-a always,task\n"));
    }
}
