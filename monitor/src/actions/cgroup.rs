//! cgroup v2 facts the monitor needs: where the hierarchy is mounted, a
//! cgroup's id (its directory's inode number, which is what
//! `bpf_get_current_cgroup_id()` returns) and its depth below the root.
use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};

/// The id of a cgroup hierarchy's root cgroup.
const ROOT_CGROUP_ID: u64 = 1;

/// The cgroup v2 mount point that shows the whole hierarchy, read from
/// `/proc/self/mountinfo` (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`, pure-v2 hosts at `/sys/fs/cgroup`).
///
/// The kernel programs match cgroups by their absolute level, so paths must
/// be in the host's view. In a cgroup namespace (a container) the usual
/// mount shows only the container's own subtree as its root; a mount of
/// the host's hierarchy (a bind mount of the host's `/sys/fs/cgroup`) is
/// preferred wherever it is, and without one the monitor refuses to start.
pub fn v2_root() -> anyhow::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")
        .context("reading /proc/self/mountinfo (the monitor needs cgroup v2)")?;
    let mounts = v2_mounts(&mountinfo);
    if mounts.is_empty() {
        bail!(
            "no cgroup2 file system is mounted (none in /proc/self/mountinfo): the monitor needs cgroup v2"
        );
    }
    if let Some(root) = mounts.iter().find(|m| shows_hierarchy_root(m)) {
        return Ok(root.clone());
    }
    let shown: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    bail!(
        "no cgroup2 mount shows the root of the hierarchy ({} show a cgroup namespace's subtree, as in a container): \
         mount the host's cgroup2 file system (e.g. hostPath /sys/fs/cgroup, see deploy/kubernetes/) so that \
         cgroup paths and levels are the kernel's",
        shown.join(", ")
    )
}

/// Every cgroup2 mount point, in mountinfo order.
fn v2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt as _;
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split(' ').next() == Some("cgroup2")).then_some(())?;
            let mount_point = before.split(' ').nth(4)?;
            let bytes = testkit::cgroup::unescape_mountinfo(mount_point);
            Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
        })
        .collect()
}

/// Whether `mount` (as it is seen now: the top of any stacked mounts) is
/// the hierarchy's root cgroup: id 1, and none of the files only non-root
/// cgroups have.
fn shows_hierarchy_root(mount: &Path) -> bool {
    id_of(mount).is_ok_and(|id| id == ROOT_CGROUP_ID) && !mount.join("cgroup.events").exists()
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
    fn every_cgroup2_mount_is_listed_in_order() {
        let mountinfo = "58 48 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 none rw\n\
            30 20 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
            65 44 0:38 /../.. /host/cg\\040root rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mounts(mountinfo),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/host/cg root")
            ]
        );
    }

    #[test]
    fn levels_count_components_below_root() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(level_of(root, root).unwrap(), 0);
        assert_eq!(level_of(root, &root.join("build/a")).unwrap(), 2);
        assert!(level_of(root, Path::new("/tmp/x")).is_err());
    }
}
