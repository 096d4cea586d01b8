//! Sandbox entries that may have been planted by the spawn itself. A
//! sandbox declares the targets of its symlinks, and an entry whose ctime
//! is after the launch was planted (`bazel::sandbox`). But the kernel's
//! file times come from the coarse clock: a link made just after the
//! launch can carry a time before it. Links of the last second before the
//! launch are *ambiguous*; their targets (those no other link declares) stay declared
//! unless the action made a name (symlink, link, rename; reported by the
//! kernel with a precise time and the name passed) of the same file name
//! early enough to have made one of them. (The file name, not the whole
//! path: the name passed may reach the sandbox through another symlink.)
//!
//! An older link can be moved in: the spawn renames a directory holding
//! one (made before the launch, elsewhere) into its sandbox before the
//! monitor reads it. The link's own time says nothing then, but the moved
//! directory's does (a rename changes it). So the targets of old links
//! below a directory changed after the launch stay declared unless the
//! action renamed something to that directory's name. (Output writes change
//! directories too; they rename nothing to a directory's name.)
use std::sync::Arc;

use crate::hashing::HashMap;

/// Most names remembered per action: only the first ones can matter (they
/// must come before the sandbox is read, within a second of the launch),
/// and they come in time order. Past the cap an empty name (any name) is
/// remembered once: an action cannot flood its plant out of sight.
pub const MAX_NAMES_PER_ACTION: usize = 16384;

/// A name an action made: when (`CLOCK_MONOTONIC` ns) and its last
/// component (empty when the kernel could not read it: it may be any).
pub type NameMade = (u64, Vec<u8>);

/// Declared path → the file names of the links (or the names of the
/// changed directories) it came from; held in common by the sandboxes
/// whose trees are the same (`bazel::sandbox::shared_trees`).
pub type SourceNames = Arc<HashMap<Vec<u8>, Vec<Vec<u8>>>>;

#[derive(Debug, Default, Clone)]
pub struct LinkSources {
    /// Declared path that only ambiguous links lead to → their file names.
    ambiguous: SourceNames,
    /// A name the action made until this time (`CLOCK_MONOTONIC` ns) may
    /// be one of the ambiguous links.
    suspect_until_ns: u64,
    /// Declared path that only old links below changed directories lead
    /// to → those directories' names.
    moved: SourceNames,
}

impl LinkSources {
    pub fn new(ambiguous: HashMap<Vec<u8>, Vec<Vec<u8>>>, suspect_until_ns: u64) -> Self {
        LinkSources {
            ambiguous: Arc::new(ambiguous),
            suspect_until_ns,
            moved: SourceNames::default(),
        }
    }

    /// With the targets of links that may have been moved in.
    pub fn with_moved(mut self, moved: HashMap<Vec<u8>, Vec<Vec<u8>>>) -> Self {
        self.moved = Arc::new(moved);
        self
    }

    /// The same sources for a spawn launched at another time: names it
    /// made until `suspect_until_ns` may be the ambiguous links.
    pub fn until(&self, suspect_until_ns: u64) -> Self {
        LinkSources {
            suspect_until_ns,
            ..self.clone()
        }
    }

    /// Whether `path` is declared only through old links below directories
    /// the action may have moved in: it renamed something to one of their
    /// names (`renamed`: the file names of its renames; empty = any).
    pub fn only_moved_in(&self, path: &[u8], renamed: &[Vec<u8>]) -> bool {
        if self.moved.is_empty() || renamed.is_empty() {
            return false;
        }
        prefixes(path).any(|p| {
            self.moved.get(p).is_some_and(|dirs| {
                renamed
                    .iter()
                    .any(|n| n.is_empty() || dirs.iter().any(|d| d == n))
            })
        })
    }

    /// Whether `path` is declared only through ambiguous links one of
    /// which the action may have made: it made a name of the same file
    /// name in time.
    pub fn only_planted(&self, path: &[u8], names: &[NameMade]) -> bool {
        if self.ambiguous.is_empty() {
            return false;
        }
        let early: Vec<&[u8]> = names
            .iter()
            .take_while(|(t, _)| *t <= self.suspect_until_ns)
            .map(|(_, n)| n.as_slice())
            .collect();
        if early.is_empty() {
            return false;
        }
        prefixes(path).any(|p| {
            self.ambiguous.get(p).is_some_and(|links| {
                early
                    .iter()
                    .any(|n| n.is_empty() || links.iter().any(|l| l == n))
            })
        })
    }
}

/// The last component of a name as passed (`a/b/` → `b`).
pub fn file_name(name: &[u8]) -> &[u8] {
    let trimmed = match name.iter().rposition(|&b| b != b'/') {
        Some(end) => &name[..=end],
        None => return name,
    };
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(slash) => &trimmed[slash + 1..],
        None => trimmed,
    }
}

/// `path` and each directory above it (`/a/b/c`, `/a/b`, `/a`).
pub fn prefixes(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let cuts = path
        .iter()
        .enumerate()
        .rev()
        .filter(|&(i, &b)| b == b'/' && i > 0)
        .map(|(i, _)| i);
    std::iter::once(path).chain(cuts.map(move |i| &path[..i]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> LinkSources {
        let ambiguous = HashMap::from_iter([
            (b"/home/secret.txt".to_vec(), vec![b"planted.txt".to_vec()]),
            (b"/stash".to_vec(), vec![b"stash".to_vec()]),
        ]);
        LinkSources::new(ambiguous, 1_000)
    }

    fn made(t: u64, name: &str) -> NameMade {
        (t, name.as_bytes().to_vec())
    }

    #[test]
    fn ambiguous_targets_fall_when_the_action_made_that_name_in_time() {
        let s = sources();
        assert!(s.only_planted(b"/home/secret.txt", &[made(999, "planted.txt")]));
        assert!(s.only_planted(b"/home/secret.txt", &[made(1_000, "planted.txt")]));
        assert!(s.only_planted(b"/stash/deep/file", &[made(10, "stash")]));
        // An unreadable name may be any name.
        assert!(s.only_planted(b"/home/secret.txt", &[made(10, "")]));
        // Positive controls: another name, too late, nothing made, other paths.
        assert!(!s.only_planted(b"/home/secret.txt", &[made(10, "other.txt")]));
        assert!(!s.only_planted(b"/home/secret.txt", &[made(1_001, "planted.txt")]));
        assert!(!s.only_planted(b"/home/secret.txt", &[]));
        assert!(!s.only_planted(b"/src/in.txt", &[made(10, "")]));
        assert!(!LinkSources::default().only_planted(b"/x", &[made(0, "")]));
    }

    #[test]
    fn moved_in_targets_fall_when_the_action_renamed_to_that_directorys_name() {
        let moved = HashMap::from_iter([(b"/home/secret.txt".to_vec(), vec![b"stash".to_vec()])]);
        let s = LinkSources::default().with_moved(moved);
        assert!(s.only_moved_in(b"/home/secret.txt", &[b"stash".to_vec()]));
        assert!(
            s.only_moved_in(b"/home/secret.txt", &[Vec::new()]),
            "any name"
        );
        // Positive controls: another name, no rename, another path.
        assert!(!s.only_moved_in(b"/home/secret.txt", &[b"out.txt".to_vec()]));
        assert!(!s.only_moved_in(b"/home/secret.txt", &[]));
        assert!(!s.only_moved_in(b"/src/in.txt", &[b"stash".to_vec()]));
    }

    #[test]
    fn file_names_are_the_last_component() {
        assert_eq!(file_name(b"pkg/planted.txt"), b"planted.txt");
        assert_eq!(file_name(b"planted.txt"), b"planted.txt");
        assert_eq!(file_name(b"/a/dir/"), b"dir");
        assert_eq!(file_name(b"/"), b"/");
    }

    #[test]
    fn prefixes_walk_up_to_the_top_directory() {
        let all: Vec<&[u8]> = prefixes(b"/a/b/c").collect();
        assert_eq!(all, [&b"/a/b/c"[..], b"/a/b", b"/a"]);
    }
}
