//! The filesystem the bench's builds write to (output bases, sandboxes,
//! the install base, the execution logs): a fresh ext4 with a journal on a
//! loop device, as a CI runner's disk has.
//!
//! Why not the host's: this VM's root filesystem is ext4 without a
//! journal, and ext4 without one skips every inode freed in the last 30 s
//! when it allocates one, reading the inode's table block to tell
//! (`recently_deleted` under `find_inode_bit`). A bench build makes and
//! removes 60,000 sandbox links, so its allocations walk past the freed
//! inodes of its own earlier sandboxes and of the build beside it: in
//! `perf` of a bare build that walk was 40 % of all CPU, and the system
//! time of bare builds of the same kind ranged from 21 to 66 s (user time
//! 52 to 56 s). On a journaled ext4 the same builds spent 13 to 17 s in
//! the kernel (2026-12-03, `profiles/builds-host-fs-vs-journaled.md`).
//! A fresh filesystem each run also starts every run from the same
//! state.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result};

use crate::util::{exec, output};

/// The image's size: sparse, only what the builds keep written takes
/// space on the host (one output base at a time, two side by side).
const IMAGE_BYTES: u64 = 32 << 30;

/// A mounted ext4 image; unmounted, detached and removed on drop.
pub(crate) struct BuildFs {
    image: PathBuf,
    mount: PathBuf,
    device: String,
}

impl BuildFs {
    /// Creates, formats and mounts `<dir>/build-fs.img` at `<dir>/build-fs`,
    /// after releasing what an interrupted run left there.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        let image = dir.join("build-fs.img");
        let mount = dir.join("build-fs");
        release(&mount, &image);
        fs::create_dir_all(&mount)?;
        fs::File::create(&image)
            .and_then(|f| f.set_len(IMAGE_BYTES))
            .with_context(|| format!("creating {}", image.display()))?;
        // `has_journal` is mkfs's default; named because it is the point.
        exec(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-O", "has_journal"])
                .arg(&image),
        )?;
        let device = output(
            Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&image),
        )
        .context("attaching the builds' filesystem to a loop device (the bench needs one)")?
        .trim()
        .to_owned();
        let fs = BuildFs {
            image,
            mount,
            device,
        };
        exec(Command::new("mount").arg(&fs.device).arg(&fs.mount))?;
        Ok(fs)
    }

    /// Where the builds write.
    pub(crate) fn path(&self) -> &Path {
        &self.mount
    }

    /// What the report says of it.
    pub(crate) fn describe(&self) -> String {
        format!(
            "a fresh journaled ext4 the bench made ({} GiB sparse image on {})",
            IMAGE_BYTES >> 30,
            self.device
        )
    }
}

impl Drop for BuildFs {
    fn drop(&mut self) {
        release(&self.mount, &self.image);
    }
}

/// Unmounts `mount`, detaches every loop device backed by `image` and
/// removes it; quiet about what is not there. A mount still in use (a
/// Bazel server an interrupted run left) is detached lazily: the kernel
/// frees the device when its last user closes it.
fn release(mount: &Path, image: &Path) {
    let quiet = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !quiet(Command::new("umount").arg(mount)) {
        quiet(Command::new("umount").arg("--lazy").arg(mount));
    }
    if !image.exists() {
        return;
    }
    if let Ok(listing) = output(Command::new("losetup").arg("-j").arg(image)) {
        for device in devices_in(&listing) {
            quiet(Command::new("losetup").arg("-d").arg(device));
        }
    }
    let _ = fs::remove_file(image);
}

/// The devices `losetup -j IMAGE` lists: `/dev/loop0: []: (/path/img)`,
/// one line per device.
fn devices_in(listing: &str) -> Vec<&str> {
    listing
        .lines()
        .filter_map(|line| line.split_once(": ").map(|(device, _)| device))
        .filter(|device| device.starts_with("/dev/"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_backed_by_the_image_is_named() {
        let listing =
            "/dev/loop0: []: (/t/build-fs.img)\n/dev/loop7: [2049]:12 (/t/build-fs.img)\n";
        assert_eq!(devices_in(listing), ["/dev/loop0", "/dev/loop7"]);
        assert!(devices_in("").is_empty());
        assert!(devices_in("losetup: cannot read\n").is_empty());
    }
}
