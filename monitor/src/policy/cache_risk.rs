//! The cache-poisoning verdict. A remote-execution action that broke its
//! declaration and still completed successfully may have its result in the
//! shared action cache now. That is known only when it ends, after its
//! alerts went out, so a follow-up alert (`cache_risk`) names the action
//! digest and the violations it refers to.
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use crate::output::alert::{
    ActionInfo, Alert, AlertKind, CacheRiskInfo, ProcessInfo, Verdict, ViolationRef,
};

/// How long an ended action's verdict waits for its last events to be
/// judged (they may still be held for its declaration).
const SETTLE_LIMIT: Duration = Duration::from_secs(10);
/// Violations listed per action (the rest are counted).
const MAX_LISTED: usize = 64;

#[derive(Default)]
struct Violations {
    action: Option<ActionInfo>,
    listed: Vec<ViolationRef>,
    seen: HashSet<(AlertKind, String)>,
    total: u64,
}

struct Ended {
    root_pid: u32,
    status: i32,
    process: ProcessInfo,
    since: Instant,
}

/// Violations of worker actions, by root pid, until the action ends.
#[derive(Default)]
pub struct CacheRisks {
    violations: HashMap<u32, Violations>,
    ended: Vec<Ended>,
}

impl CacheRisks {
    /// A violation of `action` (ignored unless it is a worker action).
    pub fn note(&mut self, action: &ActionInfo, kind: AlertKind, target: String) {
        let Some(worker) = &action.worker else {
            return;
        };
        let v = self.violations.entry(worker.root_pid).or_default();
        v.action.get_or_insert_with(|| action.clone());
        v.total += 1;
        if v.listed.len() < MAX_LISTED && v.seen.insert((kind, target.clone())) {
            v.listed.push(ViolationRef {
                kind: kind.as_str(),
                target,
            });
        }
    }

    /// A worker action's root ended with `status` (as `wait` reports it).
    pub fn ended(&mut self, root_pid: u32, status: i32, process: ProcessInfo, now: Instant) {
        self.ended.push(Ended {
            root_pid,
            status,
            process,
            since: now,
        });
    }

    /// Verdicts on ended actions whose events have all been judged
    /// (`settled`), or that waited long enough: a `cache_risk` alert for a
    /// successful action with violations. `all`: at shutdown, decide all.
    pub fn ready(&mut self, now: Instant, all: bool, settled: impl Fn(u32) -> bool) -> Vec<Alert> {
        let mut out = Vec::new();
        let mut keep = Vec::new();
        for e in std::mem::take(&mut self.ended) {
            if !all && !settled(e.root_pid) && now.duration_since(e.since) < SETTLE_LIMIT {
                keep.push(e);
                continue;
            }
            let Some(v) = self.violations.remove(&e.root_pid) else {
                continue;
            };
            if e.status != 0 {
                continue; // failed actions are not cached (by default)
            }
            if let Some(alert) = cache_risk_alert(e, v) {
                out.push(alert);
            }
        }
        self.ended = keep;
        out
    }
}

fn cache_risk_alert(e: Ended, v: Violations) -> Option<Alert> {
    let action = v.action?;
    let digest = action.worker.as_ref()?.digest.clone();
    Some(Alert {
        time: SystemTime::now(),
        kind: AlertKind::CacheRisk,
        action,
        process: e.process,
        file: None,
        net: None,
        verdict: Verdict::Observed,
        count: 1,
        cache_risk: Some(CacheRiskInfo {
            action_digest: digest,
            exit_code: (e.status >> 8) & 0xff,
            violations: v.listed,
            violations_total: v.total,
        }),
        fetch: None,
        summary: None,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::actions::registry::WorkerIdentity;

    fn worker_action(pid: u32) -> ActionInfo {
        ActionInfo {
            id: format!("reapi-{pid}"),
            cgroup: String::new(),
            cgroup_id: 0,
            label: Some("//:leaky".into()),
            mnemonic: Some("Genrule".into()),
            worker: Some(Arc::new(WorkerIdentity {
                root_pid: pid,
                digest: format!("abc{pid}/144"),
                invocation_id: Some("inv".into()),
            })),
        }
    }

    fn process(pid: u32) -> ProcessInfo {
        ProcessInfo {
            pid,
            ppid: 1,
            comm: "bash".into(),
            exe: None,
        }
    }

    #[test]
    fn only_successful_actions_with_violations_are_a_cache_risk() {
        let now = Instant::now();
        let mut risks = CacheRisks::default();
        for pid in [1, 2] {
            risks.note(
                &worker_action(pid),
                AlertKind::UndeclaredFile,
                "/etc/x".into(),
            );
            risks.note(
                &worker_action(pid),
                AlertKind::UndeclaredFile,
                "/etc/x".into(),
            );
        }
        risks.ended(1, 0, process(1), now); // success, violations
        risks.ended(2, 1 << 8, process(2), now); // failed
        risks.ended(3, 0, process(3), now); // clean
        let alerts = risks.ready(now, false, |_| true);
        assert_eq!(alerts.len(), 1);
        let info = alerts[0].cache_risk.as_ref().unwrap();
        assert_eq!(info.action_digest, "abc1/144");
        assert_eq!(info.violations.len(), 1);
        assert_eq!(info.violations_total, 2);
        assert!(risks.ready(now, true, |_| true).is_empty());
    }

    #[test]
    fn the_verdict_waits_until_the_action_is_settled_or_too_long() {
        let now = Instant::now();
        let mut risks = CacheRisks::default();
        risks.note(
            &worker_action(1),
            AlertKind::UndeclaredFile,
            "/etc/x".into(),
        );
        risks.ended(1, 0, process(1), now);
        assert!(risks.ready(now, false, |_| false).is_empty());
        assert_eq!(risks.ready(now + SETTLE_LIMIT, false, |_| false).len(), 1);
    }

    #[test]
    fn non_worker_actions_are_not_tracked() {
        let mut action = worker_action(1);
        action.worker = None;
        let mut risks = CacheRisks::default();
        risks.note(&action, AlertKind::UndeclaredFile, "/etc/x".into());
        risks.ended(1, 0, process(1), Instant::now());
        assert!(risks.ready(Instant::now(), true, |_| true).is_empty());
    }
}
