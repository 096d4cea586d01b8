//! The kernel's registered sandboxes (`SANDBOX_DIRS`, see
//! `monitor-ebpf/src/sandbox.rs`): failed probes below one are counted in
//! the kernel (`PROBES_FOLDED`) instead of reported.
use std::os::fd::AsFd;

use aya::maps::{HashMap, MapData, PerCpuArray};
use monitor_common::SandboxDir;

pub struct SandboxMaps {
    dirs: HashMap<MapData, u64, SandboxDir>,
    folded: PerCpuArray<MapData, u64>,
}

impl SandboxMaps {
    pub fn new(dirs: aya::maps::Map, folded: aya::maps::Map) -> anyhow::Result<Self> {
        Ok(SandboxMaps {
            dirs: HashMap::try_from(dirs)?,
            folded: PerCpuArray::try_from(folded)?,
        })
    }

    /// Registers (`Some`) or removes the sandbox of the action `key`.
    pub fn set(&mut self, key: u64, dir: Option<SandboxDir>) -> anyhow::Result<()> {
        match dir {
            Some(dir) => self.dirs.insert(key, dir, 0)?,
            None => match self.dirs.remove(&key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e.into()),
            },
        }
        Ok(())
    }

    /// Failed probes counted so far, every CPU's together.
    pub fn folded(&self) -> u64 {
        self.folded
            .get(&0, 0)
            .map(|values| values.iter().sum())
            .unwrap_or(0)
    }
}

/// A device number as the kernel's `sb->s_dev` holds it (`MAJOR << 20 |
/// MINOR`), from a `stat` `st_dev`.
pub fn kernel_dev(st_dev: u64) -> u32 {
    (libc::major(st_dev) << 20) | libc::minor(st_dev)
}

/// The directory open at `fd`, as the kernel names its inode.
pub fn sandbox_dir_of(fd: impl AsFd) -> std::io::Result<SandboxDir> {
    let st = nix::sys::stat::fstat(fd).map_err(std::io::Error::from)?;
    Ok(SandboxDir {
        ino: st.st_ino,
        dev: kernel_dev(st.st_dev),
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    #[test]
    fn a_directory_is_named_by_its_inode_and_kernel_device() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = std::fs::File::open(tmp.path()).unwrap();
        let meta = std::fs::metadata(tmp.path()).unwrap();
        let named = sandbox_dir_of(&dir).unwrap();
        assert_eq!(named.ino, meta.ino());
        assert_eq!(named.dev, kernel_dev(meta.dev()));
        // 8:1 (sda1) is 0x800001 to the kernel, 0x801 to glibc.
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(259, 70_000)), (259 << 20) | 70_000);
    }
}
