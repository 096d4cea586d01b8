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
    let info =
        fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    v2_root_from_mountinfo(&info)
        .context("no cgroup2 file system is mounted (the monitor needs cgroup v2)")
}

fn v2_root_from_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        // "... mountpoint options - fstype source superoptions"
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
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

/// Removes an empty cgroup, retrying briefly while its last processes exit.
pub fn remove(cgroup: &Path) {
    for _ in 0..50 {
        match fs::remove_dir(cgroup) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    log::warn!("could not remove cgroup {}", cgroup.display());
}

/// Removes `dir` and every cgroup below it, children first.
pub fn remove_tree(dir: &Path) {
    for (_, child) in children(dir) {
        remove_tree(&child);
    }
    remove(dir);
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
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime shared:14 - cgroup cgroup rw,memory\n\
                    36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_root_from_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            v2_root_from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
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
