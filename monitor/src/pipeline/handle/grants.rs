//! The action tier of the kernel's allow lists: what a declaration file
//! grants one action — its `network`, and the `[[network.rule]]` entries
//! scoped to the label and mnemonic it gives — is written into the kernel
//! when the declaration is read, so that enforcement admits it (without
//! it, only job-wide and `@bazel` rules could). Revoked when the
//! declaration goes or the action's cgroup is removed. A connect before
//! the declaration is read is judged without it.
use std::{collections::HashMap, path::PathBuf};

use crate::{
    actions::declarations::Declaration,
    pipeline::handle::Handler,
    policy::{
        kernel_rules::{self, KernelRules},
        matchers::NetRule,
    },
};

/// Grants waiting to be written into the kernel, and who holds one.
#[derive(Debug, Default)]
pub struct KernelGrants {
    /// (action cgroup id, its rules; empty to revoke), in order.
    pub pending: Vec<(u64, KernelRules)>,
    /// Declared cgroup path → its id, for actions holding a grant.
    granted: HashMap<PathBuf, u64>,
}

impl Handler {
    /// A declaration was read: grant what it and the scoped rules give.
    pub(super) fn grant_declared(&mut self, declaration: &Declaration) {
        let mut rules: Vec<NetRule> = declaration.network.rules().to_vec();
        rules.extend(self.policy.scoped.granted_to(
            declaration.label.as_deref(),
            declaration.mnemonic.as_deref(),
        ));
        let grants = &mut self.grants;
        if rules.is_empty() {
            if let Some(id) = grants.granted.remove(&declaration.cgroup) {
                grants.pending.push((id, KernelRules::default()));
            }
            return;
        }
        // The cgroup must exist to have an id; one made later is judged
        // in userspace with this declaration.
        let Ok(id) = crate::actions::cgroup::id_of(&declaration.cgroup) else {
            return;
        };
        grants.granted.insert(declaration.cgroup.clone(), id);
        grants.pending.push((id, kernel_rules::compile(&rules)));
    }

    /// A declaration file went away.
    pub(super) fn revoke_declared(&mut self, cgroup: &std::path::Path) {
        if let Some(id) = self.grants.granted.remove(cgroup) {
            self.grants.pending.push((id, KernelRules::default()));
        }
    }

    /// An action's cgroup was removed: its id is never reused, but its
    /// entries would fill the kernel's map.
    pub(super) fn revoke_removed(&mut self, cgroup_id: u64) {
        let grants = &mut self.grants;
        let before = grants.granted.len();
        grants.granted.retain(|_, id| *id != cgroup_id);
        if grants.granted.len() != before {
            grants.pending.push((cgroup_id, KernelRules::default()));
        }
    }
}
