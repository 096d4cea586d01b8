//! One declaration for the sandboxes whose trees are the same. The
//! sandboxes of a build often link the same inputs (on the bench build 200
//! of 300 link the same 300 files): each read followed every link again
//! and inserted its targets into a declaration of its own, about 60 % of
//! a read (`sandbox_read`, README "Where the remaining time goes").
//!
//! A sandbox is still listed, its links read (or taken from the kernel's
//! reports of Bazel's `symlink` calls) and dated, as before; what is given
//! again is what following them produced: the targets' patterns, their
//! identities, which targets only ambiguous links lead to. It is given to
//! a tree with the same links (the same paths below the sandbox, the same
//! targets, dated alike) only while every answer it was made from would
//! be given again: each directory a target was looked up in is the same
//! inode with the same ctime (the rules of `kept_stats`: an entry made,
//! removed or renamed there changes it), each directory named is named
//! the same, each `stat` through a link says the same, and the mount table
//! has not changed. A tree is shared from its second sight on (most trees
//! are met once) and only when every link is plain: an absolute target
//! outside the sandbox, made before the launch or just before it (a link
//! made after it, or below a directory changed after it, is read the
//! long way, with its warning).
//!
//! The sandbox's own root (its tree, its hard-link checks, its window for
//! planted names) is always its own.
use std::{
    os::unix::ffi::OsStrExt as _,
    path::Path,
    sync::{Arc, LazyLock, Mutex},
};

use super::{
    Made, SandboxWalk, Spawn, Surveyed, is_at_or_below, kept_stats, lookup::Consulted,
    own_patterns, set_matcher, suspect_until, walk_root,
};
use crate::{
    actions::{
        identities::{Identities, Records},
        links::LinkSources,
    },
    bazel::sandbox::made_links::Targets,
    hashing::{HashMap, HashSet, RandomState},
    policy::matchers::PathMatcher,
};

/// Most bytes of link names and targets kept for comparing trees; past
/// it, every shared tree is dropped (and kept afresh as trees come again).
/// What following them made (matchers, identities) is about as large,
/// and held as long as a spawn or a kept tree holds it.
const MAX_KEPT_BYTES: usize = 8 << 20;

/// Most trees remembered as met once; past it, that memory starts over.
const MAX_SEEN: usize = 1 << 16;

/// What a sandbox declares, its own part and the part shared with the
/// sandboxes whose trees are the same.
pub struct SandboxDeclared {
    pub inputs: PathMatcher,
    pub links: LinkSources,
    pub identities: Identities,
    /// Its links' part was given again, not followed.
    pub reused: bool,
}

/// What following a tree's links produced, held in common.
#[derive(Clone)]
struct Followed {
    inputs: Arc<PathMatcher>,
    records: Arc<Records>,
    /// With the window of the spawn that made it: each spawn sets its own.
    sources: LinkSources,
}

/// A tree's links, by path below its root: each one's target and dating.
type TreeLinks = HashMap<Box<[u8]>, (Box<[u8]>, Made)>;

/// A tree followed once, and what its answers depended on.
struct SharedTree {
    links: TreeLinks,
    consulted: Consulted,
    mount_epoch: u64,
    followed: Followed,
}

#[derive(Default)]
struct Trees {
    /// Trees met once, by hash.
    seen: HashSet<u64>,
    by_hash: HashMap<u64, Vec<Arc<SharedTree>>>,
    bytes: usize,
}

static TREES: LazyLock<Mutex<Trees>> = LazyLock::new(Mutex::default);

/// Hashes trees, with this process's random seed (kept apart from
/// [`TREES`]: hashing every tree needs no lock).
static HASHER: LazyLock<RandomState> = LazyLock::new(RandomState::new);

fn trees() -> std::sync::MutexGuard<'static, Trees> {
    TREES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What `spawn`'s sandbox declares (as [`super::declared_patterns`] reads
/// it), its links' part given again when a tree the same was followed
/// before and nothing it depended on changed.
pub fn sandbox_declared(spawn: &Spawn, made: &Targets) -> SandboxDeclared {
    let mut walk = SandboxWalk::new(spawn, made);
    walk.tree();
    let root = walk.root;
    let hash = shareable(&walk).then(|| tree_hash(root, &walk.surveyed));
    if let Some(hash) = hash
        && let Some(followed) = given_again(hash, root, &walk.surveyed)
    {
        return declared(spawn, &followed, true);
    }
    let keep = hash.filter(|&h| met_before(h));
    let mut key = None;
    if keep.is_some() {
        walk.real_dirs.fds.record();
        key = Some(tree_key(root, &walk.surveyed));
    }
    let epoch = keep.and_then(|_| kept_stats::mount_epoch());
    walk.follow();
    let inside_root = walk.inside_root;
    let consulted = walk.real_dirs.fds.consulted();
    let (targets, links, identities) = walk.finish();
    let followed = Followed {
        inputs: Arc::new(set_matcher(&targets)),
        records: identities.records(),
        sources: links,
    };
    if let (Some(hash), Some(links), Some(consulted), Some(epoch)) = (keep, key, consulted, epoch)
        && !inside_root
    {
        keep_tree(hash, links, consulted, epoch, &followed);
    }
    declared(spawn, &followed, false)
}

/// The spawn's declaration: its own tree, and `followed`.
fn declared(spawn: &Spawn, followed: &Followed, reused: bool) -> SandboxDeclared {
    let root = walk_root(spawn);
    SandboxDeclared {
        inputs: set_matcher(&own_patterns(root)).with_shared(followed.inputs.clone()),
        links: followed.sources.until(suspect_until(spawn)),
        identities: Identities::hard_links_checked_below(root)
            .with_records(followed.records.clone()),
        reused,
    }
}

/// Whether the walk's links may be followed once for every tree like it.
fn shareable(walk: &SandboxWalk<'_>) -> bool {
    let root = walk.root.as_os_str().as_bytes();
    walk.complete
        && !walk.surveyed.is_empty()
        && walk.surveyed.iter().all(|link| {
            matches!(link.made, Made::Before | Made::Ambiguous)
                && link.changed_above.is_empty()
                && link.target.is_absolute()
                // As bytes: `Path::starts_with` parses components (a
                // third of a shared read, measured).
                && is_at_or_below(link.path.as_os_str().as_bytes(), root)
        })
}

/// A link's path below the tree's root.
fn below<'p>(root: &Path, link: &'p Surveyed) -> &'p [u8] {
    &link.path.as_os_str().as_bytes()[root.as_os_str().len()..]
}

/// The tree's hash, whatever order its directories were listed in.
fn tree_hash(root: &Path, links: &[Surveyed]) -> u64 {
    links.iter().fold(links.len() as u64, |sum, link| {
        let one = HASHER.hash_one((below(root, link), link.target.as_os_str(), link.made));
        sum.wrapping_add(one)
    })
}

/// Whether a tree of this hash was met before (remembers it if not).
fn met_before(hash: u64) -> bool {
    let mut trees = trees();
    if trees.by_hash.contains_key(&hash) || trees.seen.contains(&hash) {
        return true;
    }
    if trees.seen.len() >= MAX_SEEN {
        trees.seen.clear();
    }
    trees.seen.insert(hash);
    false
}

fn tree_key(root: &Path, links: &[Surveyed]) -> TreeLinks {
    links
        .iter()
        .map(|link| {
            let target = link.target.as_os_str().as_bytes();
            (below(root, link).into(), (target.into(), link.made))
        })
        .collect()
}

/// What following a tree the same as `links` produced, if it may be
/// given again; a tree kept that no longer may is dropped.
fn given_again(hash: u64, root: &Path, links: &[Surveyed]) -> Option<Followed> {
    let candidates = trees().by_hash.get(&hash).cloned()?;
    let same = |tree: &SharedTree| {
        tree.links.len() == links.len()
            && links.iter().all(|link| {
                tree.links
                    .get(below(root, link))
                    .is_some_and(|(target, made)| {
                        **target == *link.target.as_os_str().as_bytes() && *made == link.made
                    })
            })
    };
    let tree = candidates.into_iter().find(|tree| same(tree))?;
    if kept_stats::mount_epoch() == Some(tree.mount_epoch) && tree.consulted.unchanged() {
        return Some(tree.followed.clone());
    }
    let mut trees = trees();
    let kept = trees.by_hash.get_mut(&hash)?;
    let before = kept.len();
    kept.retain(|t| !Arc::ptr_eq(t, &tree));
    if kept.len() < before {
        trees.bytes = trees.bytes.saturating_sub(tree_bytes(&tree.links));
    }
    None
}

/// The bytes of a tree's link names and targets.
fn tree_bytes(links: &TreeLinks) -> usize {
    links.iter().map(|(k, (t, _))| k.len() + t.len()).sum()
}

/// Keeps a tree just followed, when what it depended on can be asked
/// again and was the same from before the walk's first answer to now.
fn keep_tree(
    hash: u64,
    links: TreeLinks,
    mut consulted: Consulted,
    epoch: u64,
    followed: &Followed,
) {
    consulted.dedup();
    // `unchanged` also asks whether every answer can be asked again.
    if kept_stats::mount_epoch() != Some(epoch) || !consulted.unchanged() {
        return;
    }
    let bytes = tree_bytes(&links);
    let tree = Arc::new(SharedTree {
        links,
        consulted,
        mount_epoch: epoch,
        followed: followed.clone(),
    });
    let mut trees = trees();
    if trees.bytes + bytes > MAX_KEPT_BYTES {
        trees.by_hash.clear();
        trees.bytes = 0;
    }
    trees.bytes += bytes;
    trees.by_hash.entry(hash).or_default().push(tree);
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::symlink,
        path::PathBuf,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        actions::identities::tests::id_of,
        bazel::sandbox::{declared_patterns, kept_stats::tests as kept, parse_launch},
    };

    /// A source directory of files, the main execroot linking it whole
    /// (as Bazel 4's does), settled: answers in it may be kept.
    struct Layout {
        root: PathBuf,
        src: PathBuf,
        _tmp: tempfile::TempDir,
    }

    const INPUTS: [&str; 3] = ["a.txt", "b.txt", "c.txt"];

    fn layout() -> Layout {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        let src = root.join("src");
        fs::create_dir(&src).unwrap();
        for name in INPUTS {
            fs::write(src.join(name), name).unwrap();
        }
        fs::create_dir_all(root.join("ob/execroot/ws")).unwrap();
        symlink(&src, root.join("ob/execroot/ws/in")).unwrap();
        kept::settle(&src);
        Layout {
            root,
            src,
            _tmp: tmp,
        }
    }

    impl Layout {
        /// Sandbox `id`, linking `inputs` (and `extra`: a link's name and
        /// target) as Bazel does, launched just after (ktime `id` s): its
        /// links are ambiguous.
        fn sandbox(&self, id: u64, inputs: &[&str], extra: Option<(&str, &str)>) -> Spawn {
            let execroot = self
                .root
                .join(format!("ob/sandbox/linux-sandbox/{id}/execroot/ws"));
            fs::create_dir_all(execroot.join("in")).unwrap();
            for name in inputs {
                let target = self.root.join("ob/execroot/ws/in").join(name);
                symlink(target, execroot.join("in").join(name)).unwrap();
            }
            if let Some((name, target)) = extra {
                symlink(target, execroot.join("in").join(name)).unwrap();
            }
            let argv = format!("linux-sandbox\0-W\0{}\0--\0true\0", execroot.display());
            let mut spawn = parse_launch(argv.as_bytes(), Path::new("/"));
            spawn.launched_at = Some(SystemTime::now() + Duration::from_millis(1));
            spawn.launch_ktime_ns = id * 1_000_000_000;
            spawn
        }

        /// [`Layout::sandbox`] of `INPUTS`, launched 2 s after its links
        /// were made: they are dated before the launch, their files'
        /// identities trusted.
        fn older(&self, id: u64) -> Spawn {
            let mut spawn = self.sandbox(id, &INPUTS, None);
            spawn.launched_at = Some(SystemTime::now() + Duration::from_secs(2));
            spawn
        }

        /// [`Layout::older`] `id` read into its declaration.
        fn read(&self, id: u64) -> SandboxDeclared {
            sandbox_declared(&self.older(id), &Targets::default())
        }

        /// The control of the tests that change something under the
        /// targets: sandboxes 1 and 2 are followed, the third shares their
        /// tree (`before`: what is about to change).
        fn shared_from_the_third(&self, before: &str) {
            assert!(!self.read(1).reused && !self.read(2).reused);
            assert!(self.read(3).reused, "control: shared before {before}");
        }
    }

    fn b(p: &Path) -> Vec<u8> {
        p.as_os_str().as_bytes().to_vec()
    }

    /// The paths a test asks each declaration about.
    fn probes(l: &Layout, spawns: &[&Spawn]) -> Vec<Vec<u8>> {
        let mut probes: Vec<Vec<u8>> = INPUTS
            .iter()
            .flat_map(|n| [l.src.join(n), l.root.join("ob/execroot/ws/in").join(n)])
            .map(|p| b(&p))
            .collect();
        probes.push(b(&l.src.join("undeclared.txt")));
        for spawn in spawns {
            let dir = spawn.sandbox_dir.as_ref().unwrap();
            probes.push(b(dir));
            probes.push(b(&dir.join("execroot/ws/in/a.txt")));
        }
        probes
    }

    /// The third sandbox of a tree is given the links' part the second
    /// followed; it answers as reading it afresh does, and its own root
    /// and hard-link checks stay its own.
    #[test]
    fn sandboxes_whose_trees_are_the_same_share_one_declaration() {
        let _alone = kept::one_at_a_time();
        let l = layout();
        let spawns: Vec<Spawn> = (1..=3).map(|id| l.older(id)).collect();
        let read: Vec<SandboxDeclared> = spawns
            .iter()
            .map(|s| sandbox_declared(s, &Targets::default()))
            .collect();
        let reused: Vec<bool> = read.iter().map(|d| d.reused).collect();
        assert_eq!(reused, [false, false, true], "met once, kept, given again");

        let (third, spawn) = (&read[2], &spawns[2]);
        let (fresh, _, _) = declared_patterns(spawn, &Targets::default());
        let fresh = set_matcher(&fresh);
        let all: Vec<&Spawn> = spawns.iter().collect();
        for probe in probes(&l, &all) {
            assert_eq!(
                third.inputs.matches(&probe),
                fresh.matches(&probe),
                "{}",
                String::from_utf8_lossy(&probe)
            );
        }
        let own = b(&spawn
            .sandbox_dir
            .as_ref()
            .unwrap()
            .join("execroot/ws/in/a.txt"));
        let first = b(&spawns[0].sandbox_dir.as_ref().unwrap().join("x"));
        assert!(third.inputs.matches(&own) && third.inputs.matches(&b(&l.src.join("a.txt"))));
        assert!(!third.inputs.matches(&first), "another sandbox's tree");
        assert!(!third.inputs.matches(&b(&l.src.join("undeclared.txt"))));

        let a = l.src.join("a.txt");
        let ids = &third.identities;
        assert_eq!(ids.mismatch(&b(&a), &id_of(&a), || false), None);
        // A file no link led to, found under a declared name.
        let other = l.root.join("other");
        fs::write(&other, "o").unwrap();
        assert!(ids.mismatch(&b(&a), &id_of(&other), || false).is_some());
        // A hard link in its own tree is checked; in the first's, not.
        let mut linked = id_of(&other);
        linked.nlink = 2;
        let (mine, theirs) = (own, b(&spawns[0].sandbox_dir.as_ref().unwrap().join("h")));
        assert!(ids.mismatch(&mine, &linked, || false).is_some());
        assert_eq!(ids.mismatch(&theirs, &linked, || false), None);
    }

    /// A file replaced in a target directory: the next tree is followed
    /// again (the new file recorded), and shared again once its
    /// directory has settled.
    #[test]
    fn a_changed_target_directory_is_followed_again() {
        let _alone = kept::one_at_a_time();
        let l = layout();
        l.shared_from_the_third("the change");
        let a = l.src.join("a.txt");
        let old = id_of(&a);
        fs::write(l.src.join("new"), "replaced").unwrap();
        fs::rename(l.src.join("new"), &a).unwrap();
        let new = id_of(&a);
        assert_ne!(old.ino, new.ino);

        let after = l.read(4);
        assert!(!after.reused, "given again after its directory changed");
        assert_eq!(after.identities.mismatch(&b(&a), &new, || false), None);
        assert!(after.identities.mismatch(&b(&a), &old, || false).is_some());
        kept::settle(&l.src);
        assert!(!l.read(5).reused, "the changed tree is kept afresh");
        let again = l.read(6);
        assert!(again.reused, "shared again once settled");
        assert!(again.identities.mismatch(&b(&a), &old, || false).is_some());
    }

    /// The main execroot's link to the sources pointed elsewhere (an
    /// action outside the sandbox rewriting it): the same links below it
    /// now lead to other files, and the tree is followed again.
    #[test]
    fn a_retargeted_directory_link_is_followed_again() {
        let _alone = kept::one_at_a_time();
        let l = layout();
        let other = l.root.join("other-src");
        fs::create_dir(&other).unwrap();
        for name in INPUTS {
            fs::write(other.join(name), "other").unwrap();
        }
        kept::settle(&other);
        l.shared_from_the_third("the change");
        let link = l.root.join("ob/execroot/ws/in");
        symlink(&other, l.root.join("ob/execroot/ws/in.new")).unwrap();
        fs::rename(l.root.join("ob/execroot/ws/in.new"), &link).unwrap();

        let after = l.read(4);
        assert!(
            !after.reused,
            "given again after the link was pointed elsewhere"
        );
        assert!(after.inputs.matches(&b(&other.join("a.txt"))));
        assert!(!after.inputs.matches(&b(&l.src.join("a.txt"))));
    }

    /// Trees with a link of their own kind are followed each time: a
    /// relative link (it leads into its own sandbox), a link made after
    /// the launch (planted: read with its warning, declaring nothing).
    #[test]
    fn trees_with_relative_or_planted_links_are_never_shared() {
        let _alone = kept::one_at_a_time();
        let l = layout();
        let relative = (1..=3).map(|id| {
            let spawn = l.sandbox(id, &INPUTS[..1], Some(("rel", "a.txt")));
            sandbox_declared(&spawn, &Targets::default())
        });
        assert!(relative.map(|d| d.reused).all(|r| !r));
        let secret = l.root.join("secret");
        fs::write(&secret, "s").unwrap();
        for id in 4..=6 {
            let mut spawn = l.sandbox(id, &INPUTS[..1], Some(("p", secret.to_str().unwrap())));
            spawn.launched_at = Some(SystemTime::now() - Duration::from_secs(60));
            let declared = sandbox_declared(&spawn, &Targets::default());
            assert!(!declared.reused && !declared.inputs.matches(&b(&secret)));
        }
        let plain: Vec<SandboxDeclared> = (7..=9)
            .map(|id| sandbox_declared(&l.sandbox(id, &INPUTS[..1], None), &Targets::default()))
            .collect();
        let reused: Vec<bool> = plain.iter().map(|d| d.reused).collect();
        assert_eq!(
            reused,
            [false, false, true],
            "control: a plain tree is shared"
        );

        // Its links are ambiguous; a name made 8.5 s after ktime 0 is within
        // the window of the third (launched at 9 s), after the first's (7 s
        // + 1 s): each spawn keeps its own.
        let (a, planted) = (l.src.join("a.txt"), [(8_500_000_000, b"a.txt".to_vec())]);
        assert!(plain[2].links.only_planted(&b(&a), &planted));
        assert!(!plain[0].links.only_planted(&b(&a), &planted));
    }

    /// A file bind-mounted over a target leaves its directory as it was:
    /// the mount table's change stops the tree being given again, and the
    /// next read records the mounted file. Mounts in this process's
    /// namespace: needs root (as `cargo xtask test` runs).
    #[test]
    fn a_mount_over_a_target_stops_the_sharing() {
        let _alone = kept::one_at_a_time();
        let l = layout();
        l.shared_from_the_third("the mount");
        let (a, other) = (l.src.join("a.txt"), l.root.join("other"));
        fs::write(&other, "mounted").unwrap();
        let _mounted = kept::bind(&other, &a);
        let after = l.read(4);
        assert!(!after.reused, "given again over a mount");
        let mounted = id_of(&a);
        assert_eq!(mounted.ino, id_of(&other).ino);
        assert_eq!(after.identities.mismatch(&b(&a), &mounted, || false), None);
    }
}
