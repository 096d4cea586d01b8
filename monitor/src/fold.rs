//! Folding repeats: identical violations (same action, kind and target)
//! within one window become one alert with a `count`.
use std::collections::HashMap;

use crate::{alert::Alert, judge::Target};

#[derive(Default)]
pub struct Folder {
    index: HashMap<(u64, Target), usize>,
    pending: Vec<Alert>,
}

impl Folder {
    pub fn add(&mut self, target: Target, alert: Alert) {
        let key = (alert.action.cgroup_id, target);
        match self.index.get(&key) {
            Some(&i) => self.pending[i].count += alert.count,
            None => {
                self.index.insert(key, self.pending.len());
                self.pending.push(alert);
            }
        }
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
    use crate::alert::{ActionInfo, AlertKind, FileInfo, ProcessInfo, Verdict};

    fn alert(cgroup_id: u64, path: &[u8]) -> Alert {
        Alert {
            time: SystemTime::now(),
            kind: AlertKind::UndeclaredFile,
            action: ActionInfo {
                id: "a".into(),
                cgroup: "/cg".into(),
                cgroup_id,
                label: None,
                mnemonic: None,
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
            }),
            net: None,
            verdict: Verdict::Observed,
            count: 1,
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
        let counts: Vec<(u64, u64)> = out.iter().map(|a| (a.action.cgroup_id, a.count)).collect();
        assert_eq!(counts, vec![(1, 3), (1, 1), (2, 1)]);
        assert!(f.take().is_empty());
    }
}
