//! The isolation verdict: did a Bazel spawn run under at least the
//! isolation `bazel.require_isolation` asks for?
use std::{sync::Arc, time::SystemTime};

use crate::{
    actions::registry::ActionView,
    bazel::isolation::Isolation,
    output::alert::{Alert, AlertKind, ProcessInfo, Verdict},
    policy::judge::{Target, Violation},
};

/// A `weak_isolation` violation when `ran` is weaker than `required`.
pub fn judge_isolation(
    required: Isolation,
    ran: Isolation,
    action: &Arc<ActionView>,
    process: ProcessInfo,
) -> Option<Violation> {
    if ran >= required {
        return None;
    }
    Some(Violation {
        target: Target::Isolation,
        alert: Alert {
            time: SystemTime::now(),
            kind: AlertKind::WeakIsolation {
                ran: ran.as_str(),
                required: required.as_str(),
            },
            action: action.info.clone(),
            process,
            file: None,
            net: None,
            cache_risk: None,
            fetch: None,
            summary: None,
            verdict: Verdict::Observed,
            count: 1,
        },
        undecided: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alert::ActionInfo;

    #[test]
    fn weaker_than_required_is_a_violation() {
        let view = Arc::new(ActionView::new(
            ActionInfo {
                id: "process-wrapper-7".into(),
                cgroup: "/cg".into(),
                cgroup_id: 1,
                label: Some("//:t".into()),
                mnemonic: Some("Genrule".into()),
                worker: None,
            },
            None,
            true,
            None,
        ));
        let process = || ProcessInfo {
            pid: 7,
            ppid: 1,
            comm: "process-wrapper".into(),
            exe: None,
        };
        let (ls, pw, none) = (
            Isolation::LinuxSandbox,
            Isolation::ProcessWrapper,
            Isolation::None,
        );
        assert!(judge_isolation(ls, ls, &view, process()).is_none());
        assert!(judge_isolation(none, none, &view, process()).is_none());
        assert!(judge_isolation(pw, ls, &view, process()).is_none());
        let v = judge_isolation(ls, pw, &view, process()).unwrap();
        let line = v.alert.to_json_line();
        assert!(line.contains(r#""kind":"weak_isolation""#), "{line}");
        assert!(
            line.contains(r#""isolation":{"ran":"process-wrapper","required":"linux-sandbox"}"#),
            "{line}"
        );
        assert!(
            v.alert.message().ends_with(
                "ran with isolation process-wrapper, weaker than the required linux-sandbox"
            ),
            "{}",
            v.alert.message()
        );
    }
}
