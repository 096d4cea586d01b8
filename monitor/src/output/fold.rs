//! Folding repeats: identical violations (same action, kind and target)
//! within one window become one alert with a `count`.
use std::collections::HashMap;

use crate::{output::alert::Alert, policy::judge::Target};

#[derive(Default)]
pub struct Folder {
    /// By action id (unique; spawns of one job share its cgroup id) and target.
    index: HashMap<(String, Target), usize>,
    pending: Vec<Alert>,
}

impl Folder {
    pub fn add(&mut self, target: Target, alert: Alert) {
        let key = (alert.action.id.clone(), target);
        match self.index.get(&key) {
            Some(&i) => self.pending[i].count += alert.count,
            None => {
                self.index.insert(key, self.pending.len());
                self.pending.push(alert);
            }
        }
    }

    /// An alert that is never folded (one per action, e.g. `cache_risk`).
    pub fn push(&mut self, alert: Alert) {
        self.pending.push(alert);
    }

    /// The alerts waiting in this window (e.g. to add labels learnt late).
    pub fn pending_mut(&mut self) -> impl Iterator<Item = &mut Alert> {
        self.pending.iter_mut()
    }

    /// The folded alerts of the window, in first-seen order.
    pub fn take(&mut self) -> Vec<Alert> {
        self.index.clear();
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::output::alert::{ActionInfo, AlertKind, FileInfo, ProcessInfo, Verdict};

    fn alert(action: u64, path: &[u8]) -> Alert {
        Alert {
            time: SystemTime::now(),
            kind: AlertKind::UndeclaredFile,
            action: ActionInfo {
                id: format!("a{action}"),
                cgroup: "/cg".into(),
                // Spawns of one job share the job's cgroup id.
                cgroup_id: 7,
                label: None,
                mnemonic: None,
                worker: None,
            },
            process: ProcessInfo {
                pid: 1,
                ppid: 0,
                comm: "cat".into(),
                exe: None,
            },
            file: Some(FileInfo {
                path: path.to_vec(),
                op: "open",
                flags: 0,
                result: 3,
                caveat: None,
                requested: None,
                dev: None,
                ino: None,
                note: None,
            }),
            net: None,
            verdict: Verdict::Observed,
            count: 1,
            cache_risk: None,
        }
    }

    #[test]
    fn repeats_of_one_action_fold_and_others_do_not() {
        let mut f = Folder::default();
        for _ in 0..3 {
            f.add(Target::File(b"/x".to_vec()), alert(1, b"/x"));
        }
        f.add(Target::File(b"/y".to_vec()), alert(1, b"/y"));
        f.add(Target::File(b"/x".to_vec()), alert(2, b"/x"));
        let out = f.take();
        let counts: Vec<(&str, u64)> = out
            .iter()
            .map(|a| (a.action.id.as_str(), a.count))
            .collect();
        assert_eq!(counts, vec![("a1", 3), ("a1", 1), ("a2", 1)]);
        assert!(f.take().is_empty());
    }
}
