//! How much of a job the monitor watched: the report's `completeness`
//! section, and the gaps that make a run incomplete (not clean).
use std::collections::BTreeMap;

/// What was watched and what was not.
#[derive(Debug, Default, Clone)]
pub struct Completeness {
    /// Sandboxed spawns seen starting.
    pub spawns_monitored: usize,
    /// Sandboxed spawns in Bazel's execution log never seen starting.
    pub spawns_unmonitored: usize,
    /// Spawns run by a persistent worker whose file accesses could not be
    /// tied to one action (judged only against all the worker's actions).
    pub worker_spawns_unattributable: usize,
    /// Events the monitor received and judged, by kind.
    pub events_by_kind: BTreeMap<String, u64>,
    /// Of the `file` events: failed probes below an action's own sandbox
    /// the kernel counted instead of reporting (none can be a violation).
    pub probes_folded: u64,
    /// Of the `file` events: repeated opens the kernel counted instead of
    /// reporting (`build_monitor_repeats_total`).
    pub repeats_counted: u64,
    /// Events the kernel or the decoder could not deliver, by reason.
    pub events_lost: BTreeMap<String, u64>,
    /// The kernel hooks that were attached.
    pub hooks: Vec<String>,
    /// Connects and sends were refused in the kernel when not allowed.
    pub enforced: bool,
    /// The DNS answers read to name destinations, and those that could not
    /// be (names missing from the inventory, not events lost).
    pub dns: crate::output::dns_names::DnsCounts,
}

impl Completeness {
    /// Why the monitoring cannot vouch for the whole job (empty: complete).
    pub fn gaps(&self) -> Vec<String> {
        let mut gaps = Vec::new();
        let lost: u64 = self.events_lost.values().sum();
        if lost > 0 {
            let by: Vec<String> = self
                .events_lost
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(reason, n)| format!("{reason}: {n}"))
                .collect();
            gaps.push(format!("{lost} event(s) lost ({})", by.join(", ")));
        }
        if self.spawns_unmonitored > 0 {
            gaps.push(format!(
                "{} sandboxed spawn(s) in the execution log were not monitored",
                self.spawns_unmonitored
            ));
        }
        if self.worker_spawns_unattributable > 0 {
            gaps.push(format!(
                "{} spawn(s) run by a persistent worker could not be attributed to one action",
                self.worker_spawns_unattributable
            ));
        }
        gaps
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "complete": self.gaps().is_empty(),
            "gaps": self.gaps(),
            "spawns_monitored": self.spawns_monitored,
            "spawns_unmonitored": self.spawns_unmonitored,
            "worker_spawns_unattributable": self.worker_spawns_unattributable,
            "events_by_kind": self.events_by_kind,
            "probes_folded": self.probes_folded,
            "repeats_counted": self.repeats_counted,
            "events_lost": self.events_lost,
            "hooks": self.hooks,
            "enforced": self.enforced,
            "dns": self.dns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_name_lost_events_by_reason_and_unmonitored_spawns() {
        let mut c = Completeness::default();
        assert!(c.gaps().is_empty());
        c.events_lost.insert("ringbuf_full".into(), 5);
        c.events_lost.insert("decode_error".into(), 0);
        c.spawns_unmonitored = 2;
        let gaps = c.gaps();
        assert_eq!(gaps[0], "5 event(s) lost (ringbuf_full: 5)");
        assert!(gaps[1].starts_with("2 sandboxed spawn(s)"));
        assert_eq!(c.to_json()["complete"], false);
    }
}
