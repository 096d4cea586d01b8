//! One copy of each path the live declarations hold. The sandboxes of one
//! Bazel build link the same inputs (on the bench build, 200 sandboxes name
//! the same 600 paths), and every declaration kept its own copies (in its
//! path matcher and its identities) until its action was forgotten.
use std::sync::{Arc, LazyLock, Mutex};

use crate::hashing::HashSet;

/// Paths handed out and possibly still held; entries nobody else holds
/// are dropped when the set has doubled since the last such sweep.
struct Pool {
    paths: HashSet<Arc<[u8]>>,
    sweep_at: usize,
}

const FIRST_SWEEP: usize = 4096;

static POOL: LazyLock<Mutex<Pool>> = LazyLock::new(|| {
    Mutex::new(Pool {
        paths: HashSet::default(),
        sweep_at: FIRST_SWEEP,
    })
});

/// `path`, shared with every other holder of the same bytes.
pub fn shared(path: &[u8]) -> Arc<[u8]> {
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = pool.paths.get(path) {
        return known.clone();
    }
    if pool.paths.len() >= pool.sweep_at {
        pool.paths.retain(|p| Arc::strong_count(p) > 1);
        pool.sweep_at = (pool.paths.len() * 2).max(FIRST_SWEEP);
    }
    let new: Arc<[u8]> = Arc::from(path);
    pool.paths.insert(new.clone());
    new
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_paths_share_one_copy_and_unheld_ones_are_swept() {
        let a = shared(b"/shared-paths-test/a");
        let b = shared(b"/shared-paths-test/a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, b"/shared-paths-test/a");
        // Enough distinct unheld paths to force sweeps: the pool does not
        // keep them all, and still hands out the held one.
        for i in 0..3 * FIRST_SWEEP {
            shared(format!("/shared-paths-test/tmp{i}").as_bytes());
        }
        let size = POOL.lock().unwrap().paths.len();
        assert!(size < 3 * FIRST_SWEEP, "{size} entries kept");
        assert!(Arc::ptr_eq(&a, &shared(b"/shared-paths-test/a")));
    }
}
