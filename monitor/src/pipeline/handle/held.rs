//! Connects held until their spawn's label is known. A connect that only a
//! target- or mnemonic-scoped rule could allow, by a spawn whose label the
//! execution log gives at the end of the build, is neither counted nor
//! written until then: when the labels are joined it is judged again, and
//! either allowed (dropped) or counted as the violation it is. Nothing is
//! lost: past the cap, or without labels, held connects are violations.
use std::collections::HashMap;

use crate::{
    actions::registry::ActionView,
    output::inventory::Seen,
    pipeline::handle::{Handler, inventory_target},
    policy::{
        judge::Violation,
        scoped::{ScopedVerdict, Who},
    },
};

/// Held connects at most; past it they are counted as they come (noise,
/// never a miss).
const MAX_HELD: usize = 100_000;

/// Action id → (label, mnemonic) from the execution log.
pub type Labels = HashMap<String, (Option<String>, Option<String>)>;

impl Handler {
    /// Whether `v` waits for its spawn's label: undecided, and a label will
    /// come (an execution log is read at the end).
    pub(super) fn should_hold(&mut self, v: &Violation) -> bool {
        if !v.undecided || !self.keep_spawn_commands {
            return false;
        }
        if self.held.len() >= MAX_HELD {
            if !self.held_overflowed {
                self.held_overflowed = true;
                log::warn!(
                    "{MAX_HELD} connects wait for their labels; further ones are counted as violations"
                );
            }
            return false;
        }
        true
    }

    pub(super) fn hold(&mut self, v: Violation, action: &ActionView) {
        // Its command line is what the execution log is joined on.
        self.keep_spawn_command(action);
        self.held.push(v);
    }

    /// Judges the held connects again with the labels joined (`None`: no
    /// log could be read, so none is allowed by a scoped rule).
    pub fn resolve_held(&mut self, labels: Option<&Labels>) {
        for mut v in std::mem::take(&mut self.held) {
            let info = &mut v.alert.action;
            if let Some((label, mnemonic)) = labels.and_then(|l| l.get(&info.id)) {
                info.label = label.clone().or(info.label.take());
                info.mnemonic = mnemonic.clone().or(info.mnemonic.take());
            }
            let who = Who {
                label: info.label.as_deref(),
                mnemonic: info.mnemonic.as_deref(),
                ..Who::default()
            };
            let allowed = v.alert.net.as_ref().is_some_and(|n| {
                self.policy.scoped.verdict(&who, n.addr, n.port) == ScopedVerdict::Allowed
            });
            self.record_held(&v, allowed);
            if allowed {
                self.summary.allowed_by_scoped_rules += v.alert.count;
            } else {
                self.count_violation(v);
            }
        }
    }

    /// The held connect in the egress inventory, with its final verdict.
    fn record_held(&mut self, v: &Violation, allowed: bool) {
        let Some(net) = v.alert.net.as_ref().filter(|_| self.summary.keep_alerts) else {
            return;
        };
        let destination = if net.port == 0 && net.send {
            net.addr.to_string()
        } else {
            std::net::SocketAddr::new(net.addr, net.port).to_string()
        };
        let verdict = if allowed {
            "allowed"
        } else {
            v.alert.verdict.as_str()
        };
        self.summary.inventory.record(Seen {
            proto: net.proto,
            destination,
            verdict,
            action_id: &v.alert.action.id,
            target: inventory_target(&v.alert.action),
            process: &v.alert.process.comm,
        });
    }
}
