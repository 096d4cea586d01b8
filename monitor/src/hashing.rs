//! The hash maps and sets of the daemon's hot paths (path sets, matchers,
//! per-event routing, the report's opened paths).
//!
//! Their keys include paths a build action chose, so an action could pick
//! names that collide under a hasher it can predict and slow the daemon to
//! a crawl (HashDoS). std's SipHash resists that but was ~10% of the
//! daemon's CPU on the bench build; FxHash is faster still but unseeded,
//! so anyone can compute collisions. aHash with its per-process random
//! seed (`runtime-rng`) is both fast and built to keep its outputs
//! unpredictable to who does not know the seed.
pub type RandomState = ahash::RandomState;

pub type HashMap<K, V> = std::collections::HashMap<K, V, RandomState>;

pub type HashSet<T> = std::collections::HashSet<T, RandomState>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Two states hash the same key differently: the seed is random, not
    /// a constant an action could compute collisions for.
    #[test]
    fn states_are_seeded_apart() {
        let key = b"/tmp/sandbox/execroot/ws/in/f1";
        let hashes: std::collections::BTreeSet<u64> =
            (0..4).map(|_| RandomState::new().hash_one(key)).collect();
        assert!(hashes.len() > 1, "every state hashed alike: {hashes:?}");
        let set: HashSet<&[u8]> = [&key[..], b"/other"].into_iter().collect();
        assert!(set.contains(&key[..]) && set.len() == 2);
    }
}
