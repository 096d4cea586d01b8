//! cgroup v2 facts the monitor needs: where the hierarchy is mounted, a
//! cgroup's id (its directory's inode number, which is what
//! `bpf_get_current_cgroup_id()` returns) and its depth below the root.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The cgroup v2 mount point, read from `/proc/self/mountinfo` (hybrid hosts
/// mount it at `/sys/fs/cgroup/unified`, pure-v2 hosts at `/sys/fs/cgroup`).
pub fn v2_root() -> anyhow::Result<PathBuf> {
    testkit::cgroup::v2_root().context("the monitor needs cgroup v2")
}

/// A cgroup directory's id.
pub fn id_of(path: &Path) -> anyhow::Result<u64> {
    Ok(fs::metadata(path)
        .with_context(|| format!("cgroup {} does not exist", path.display()))?
        .ino())
}

/// Depth of `path` below the cgroup v2 root `root` (the root is level 0).
pub fn level_of(root: &Path, path: &Path) -> anyhow::Result<u32> {
    let rel = path.strip_prefix(root).with_context(|| {
        format!(
            "{} is not inside the cgroup v2 hierarchy at {}",
            path.display(),
            root.display()
        )
    })?;
    let level = rel.components().count();
    if rel
        .components()
        .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        bail!(
            "{} must be a plain path below {}",
            path.display(),
            root.display()
        );
    }
    Ok(level as u32)
}

/// Child cgroups of `parent` with their ids.
pub fn children(parent: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = fs::read_dir(parent) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok()?;
            meta.is_dir().then(|| (meta.ino(), e.path()))
        })
        .collect()
}

/// Removes `dir` and every cgroup below it, children first, retrying
/// briefly while the last processes exit.
pub fn remove_tree(dir: &Path) {
    if let Err(e) = testkit::cgroup::remove_tree(dir, std::time::Duration::from_secs(1)) {
        log::warn!("could not remove cgroup {}: {e}", dir.display());
    }
}

/// Every process in `cgroup` and the cgroups below it.
pub fn pids_below(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for (_, child) in children(cgroup) {
        pids.extend(pids_below(&child));
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_components_below_root() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(level_of(root, root).unwrap(), 0);
        assert_eq!(level_of(root, &root.join("build/a")).unwrap(), 2);
        assert!(level_of(root, Path::new("/tmp/x")).is_err());
    }
}
