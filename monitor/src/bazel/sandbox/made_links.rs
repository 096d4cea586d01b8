//! The symlinks the Bazel server made in its sandboxes, as the kernel saw
//! the calls (`EventKind::SymlinkMade`: a `symlink`/`symlinkat` by an
//! absolute name from a process outside every action). A sandbox read
//! takes a link's target from here instead of reading the link back: on
//! the bench build, 60,000 `readlinkat` calls were 27 % of the daemon's
//! CPU (`profile-build --perf`).
//!
//! What this declares is what Bazel made at that name, so a link the
//! spawn or anyone else replaced before the read declares Bazel's target,
//! not theirs. A link with no entry (the event lost, a relative name, a
//! sandbox filled by renames: Bazel's reuse of sandbox directories) is
//! read as before. Entries of a sandbox are taken by its read; those of a
//! process that ended go with it, so a later server reusing a sandbox's
//! name (sandbox ids restart with each server) never finds them. At most
//! 32 MiB of names and targets are kept at once.
use std::{os::unix::ffi::OsStrExt as _, path::Path, sync::Mutex};

use crate::{bazel::sandbox::sandbox_dir_in, events::paths, hashing::HashMap};

/// Most bytes of names and targets kept at once (only the sandboxes not
/// yet launched hold any); more are not kept, each costing its sandbox
/// read one `readlinkat`, and counted. A process outside the actions that
/// makes links without end cannot grow the daemon past this.
const MAX_BYTES: usize = 32 << 20;

/// A sandbox's links: absolute name → target, both as passed.
pub type Targets = HashMap<Vec<u8>, Vec<u8>>;

#[derive(Default)]
pub struct MadeLinks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_sandbox: HashMap<Vec<u8>, Made>,
    bytes: usize,
    not_kept: u64,
}

/// One sandbox's links and the process that made them.
struct Made {
    maker: u32,
    targets: Targets,
}

impl MadeLinks {
    /// Process `maker` made the symlink `name` → `target`. Names outside a
    /// sandbox's execroot, and names that are not normal absolute paths
    /// (`.`, `..`, `//`: a read would never look them up), are ignored.
    pub fn note(&self, maker: u32, name: Vec<u8>, target: Vec<u8>) {
        if !name.starts_with(b"/") || !paths::is_normal(&name) || target.is_empty() {
            return;
        }
        let Some((sandbox, _)) = sandbox_dir_in(&name) else {
            return;
        };
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.bytes + name.len() + target.len() > MAX_BYTES {
            if inner.not_kept == 0 {
                log::warn!(
                    "links made in sandboxes not yet launched exceed {} MiB: the rest are read back from the sandboxes",
                    MAX_BYTES >> 20
                );
            }
            inner.not_kept += 1;
            return;
        }
        let inner = &mut *inner;
        let made = match inner.by_sandbox.get_mut(sandbox) {
            Some(made) => made,
            None => inner.by_sandbox.entry(sandbox.to_vec()).or_insert(Made {
                maker,
                targets: HashMap::default(),
            }),
        };
        made.maker = maker;
        let (name_len, size) = (name.len(), name.len() + target.len());
        if let Some(old) = made.targets.insert(name, target) {
            inner.bytes -= name_len + old.len();
        }
        inner.bytes += size;
    }

    /// The links made in `sandbox`, taken: a sandbox is read once.
    pub fn take(&self, sandbox: &Path) -> Targets {
        let Ok(mut inner) = self.inner.lock() else {
            return HashMap::default();
        };
        let Some(made) = inner.by_sandbox.remove(sandbox.as_os_str().as_bytes()) else {
            log::debug!("sandbox {}: no links seen made", sandbox.display());
            return HashMap::default();
        };
        log::debug!(
            "sandbox {}: {} links seen made",
            sandbox.display(),
            made.targets.len()
        );
        inner.bytes -= bytes_of(&made.targets);
        made.targets
    }

    /// Process `tgid` ended: the links it made are no longer kept.
    pub fn forget_maker(&self, tgid: u32) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if inner.by_sandbox.is_empty() {
            return;
        }
        let mut gone = 0;
        inner.by_sandbox.retain(|_, made| {
            let keep = made.maker != tgid;
            if !keep {
                gone += bytes_of(&made.targets);
            }
            keep
        });
        inner.bytes -= gone;
    }

    /// Links not kept because the store was full (the daemon only warns
    /// once: a link not kept is read back, nothing is lost).
    #[cfg(test)]
    fn not_kept(&self) -> u64 {
        self.inner.lock().map_or(0, |inner| inner.not_kept)
    }
}

/// The bytes of names and targets in `targets`.
fn bytes_of(targets: &Targets) -> usize {
    targets
        .iter()
        .map(|(name, target)| name.len() + target.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &[u8] = b"/ob/sandbox/linux-sandbox/7/execroot/ws/in/a.txt";

    #[test]
    fn a_sandbox_takes_its_links_once() {
        let made = MadeLinks::default();
        made.note(10, NAME.to_vec(), b"/ob/execroot/ws/in/a.txt".to_vec());
        made.note(
            10,
            b"/ob/sandbox/linux-sandbox/8/execroot/ws/b".to_vec(),
            b"/x/b".to_vec(),
        );
        let sandbox = Path::new("/ob/sandbox/linux-sandbox/7");
        let taken = made.take(sandbox);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[NAME], b"/ob/execroot/ws/in/a.txt");
        assert!(made.take(sandbox).is_empty(), "taken once");
        assert_eq!(made.take(Path::new("/ob/sandbox/linux-sandbox/8")).len(), 1);
    }

    #[test]
    fn the_last_link_made_at_a_name_counts() {
        let made = MadeLinks::default();
        made.note(10, NAME.to_vec(), b"/first".to_vec());
        made.note(10, NAME.to_vec(), b"/second".to_vec());
        let taken = made.take(Path::new("/ob/sandbox/linux-sandbox/7"));
        assert_eq!(taken[NAME], b"/second");
    }

    #[test]
    fn names_outside_sandboxes_and_odd_names_are_not_kept() {
        let made = MadeLinks::default();
        made.note(10, b"/ob/execroot/ws/in".to_vec(), b"/ws/in".to_vec());
        made.note(
            10,
            b"ob/sandbox/linux-sandbox/7/execroot/ws/a".to_vec(),
            b"/a".to_vec(),
        );
        made.note(
            10,
            b"/ob/sandbox/linux-sandbox/7/execroot/ws/../a".to_vec(),
            b"/a".to_vec(),
        );
        made.note(
            10,
            b"/ob/sandbox/linux-sandbox/7/execroot/ws//a".to_vec(),
            b"/a".to_vec(),
        );
        made.note(10, NAME.to_vec(), b"".to_vec());
        assert!(
            made.take(Path::new("/ob/sandbox/linux-sandbox/7"))
                .is_empty()
        );
        // Control: a normal name in the same sandbox is kept.
        made.note(10, NAME.to_vec(), b"/a".to_vec());
        assert_eq!(made.take(Path::new("/ob/sandbox/linux-sandbox/7")).len(), 1);
    }

    /// Past the cap a link is not kept (its read reads it) and counted;
    /// what a read takes makes room again.
    #[test]
    fn links_past_the_cap_are_counted_not_kept() {
        let made = MadeLinks::default();
        let target = vec![b'/'; 1 << 20];
        let name = |i: usize| format!("/ob/sandbox/s/{i}/execroot/ws/a").into_bytes();
        let mut kept = 0;
        for i in 0..40 {
            made.note(10, name(i), target.clone());
            kept += usize::from(made.not_kept() == 0);
        }
        assert_eq!(kept, 31, "32 MiB hold 31 links of 1 MiB and their names");
        assert_eq!(made.not_kept(), 9);
        assert_eq!(made.take(Path::new("/ob/sandbox/s/0")).len(), 1);
        made.note(10, name(39), target.clone());
        assert_eq!(made.not_kept(), 9, "room again after a take");
        assert_eq!(made.take(Path::new("/ob/sandbox/s/39")).len(), 1);
    }

    #[test]
    fn links_of_an_ended_process_go_with_it() {
        let made = MadeLinks::default();
        made.note(10, NAME.to_vec(), b"/a".to_vec());
        made.note(
            11,
            b"/ob/sandbox/linux-sandbox/8/execroot/ws/b".to_vec(),
            b"/b".to_vec(),
        );
        made.forget_maker(10);
        assert!(
            made.take(Path::new("/ob/sandbox/linux-sandbox/7"))
                .is_empty()
        );
        assert_eq!(made.take(Path::new("/ob/sandbox/linux-sandbox/8")).len(), 1);
        assert_eq!(made.inner.lock().unwrap().bytes, 0);
    }
}
