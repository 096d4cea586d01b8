//! Repeated opens the kernel counted instead of reporting (`kernel::seen`):
//! which process's keys to take when it ends, and how the first open of
//! each was judged, so its repeats land in the same alert's `count` (and
//! in `events_total` and `violations_total`) exactly.
use monitor_common::SeenKey;

use crate::{
    events::decode::{Origin, Repeats},
    hashing::HashMap,
    kernel::seen::SeenCounts,
    output::alert::Alert,
    policy::judge::Target,
};

#[derive(Default)]
pub struct RepeatTracker {
    /// The kernel's counts (none in unit tests, or once the run is over).
    pub counts: Option<SeenCounts>,
    /// Tracked keys of each live process, with that process's origin.
    by_pid: HashMap<u32, (Origin, Vec<SeenKey>)>,
    /// The violation the first open of a key raised; a key whose first
    /// open raised none has no entry (its repeats raise none either).
    /// Boxed: an entry per tracked open of a clean build was 700 bytes
    /// (145 MiB of the daemon's peak RSS on the bench build).
    verdicts: HashMap<SeenKey, Box<(Target, Alert)>>,
}

impl RepeatTracker {
    /// A tracked first open was reported.
    pub fn first_seen(&mut self, origin: &Origin, key: SeenKey) {
        self.by_pid
            .entry(origin.pid)
            .or_insert_with(|| (*origin, Vec::new()))
            .1
            .push(key);
    }

    /// How the first open of `key` was judged.
    pub fn judged(&mut self, key: SeenKey, violation: Option<(Target, Alert)>) {
        match violation {
            Some(v) => {
                self.verdicts.insert(key, Box::new(v));
            }
            None => {
                self.verdicts.remove(&key);
            }
        }
    }

    /// The process ended: its repeats, taken from the kernel (the entries
    /// go with them). `origin`: the exit's, for the repeats' action.
    pub fn process_ended(&mut self, pid: u32, origin: &Origin) -> Vec<Repeats> {
        let Some((_, keys)) = self.by_pid.remove(&pid) else {
            return Vec::new();
        };
        self.take(origin, keys)
    }

    /// Frees the kernel's entries taken earlier whose grace period ended
    /// (`kernel::seen`), so it may count other keys there.
    pub fn free_taken(&mut self) {
        if let Some(counts) = self.counts.as_mut() {
            counts.free_retired();
        }
    }

    /// Repeats the kernel counted after their count was taken since the
    /// last call (expected 0; `kernel::seen`).
    pub fn take_strays(&mut self) -> u64 {
        self.counts.as_mut().map_or(0, SeenCounts::take_strays)
    }

    /// At stop: the repeats of every process still running.
    /// Their threads may still be adding: the counts are settled first
    /// (`SeenCounts::take_settled`), all in one wait.
    pub fn take_all(&mut self) -> Vec<Repeats> {
        let keys: Vec<(Origin, SeenKey)> = self
            .by_pid
            .drain()
            .flat_map(|(_, (origin, keys))| keys.into_iter().map(move |key| (origin, key)))
            .collect();
        let Some(counts) = self.counts.as_mut() else {
            return Vec::new();
        };
        let taken = counts.take_settled(&keys.iter().map(|(_, key)| *key).collect::<Vec<_>>());
        keys.into_iter()
            .zip(taken)
            .filter_map(|((origin, key), count)| self.repeats(origin, key, count.unwrap_or(0)))
            .collect()
    }

    fn take(&mut self, origin: &Origin, keys: Vec<SeenKey>) -> Vec<Repeats> {
        let Some(counts) = self.counts.as_mut() else {
            return Vec::new();
        };
        let taken: Vec<(SeenKey, u64)> = keys
            .into_iter()
            .map(|key| (key, counts.take(&key).unwrap_or(0)))
            .collect();
        taken
            .into_iter()
            .filter_map(|(key, count)| self.repeats(*origin, key, count))
            .collect()
    }

    /// `count` repeats of `key`, if any (else its first open's verdict is
    /// forgotten: nothing will ask for it).
    fn repeats(&mut self, origin: Origin, key: SeenKey, count: u64) -> Option<Repeats> {
        if count == 0 {
            self.verdicts.remove(&key);
            return None;
        }
        Some(Repeats { origin, key, count })
    }

    /// The violation repeats of `key` add to (and forget the key).
    pub fn violation_of(&mut self, key: &SeenKey) -> Option<(Target, Alert)> {
        self.verdicts.remove(key).map(|v| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alert::tests::file_alert;

    fn key(ino: u64) -> SeenKey {
        SeenKey {
            ino,
            ..Default::default()
        }
    }

    /// A key's repeats get its first open's violation once; a first open
    /// that raised none leaves nothing behind, also over an earlier one.
    #[test]
    fn repeats_take_the_first_opens_verdict() {
        let mut tracker = RepeatTracker::default();
        let violation = || {
            (
                Target::File(b"/secret".to_vec()),
                file_alert(b"/secret", false),
            )
        };
        tracker.judged(key(1), Some(violation()));
        tracker.judged(key(2), None);
        tracker.judged(key(3), Some(violation()));
        tracker.judged(key(3), None);
        assert_eq!(tracker.verdicts.len(), 1, "clean first opens keep no entry");
        let (target, alert) = tracker.violation_of(&key(1)).expect("key 1 violated");
        assert_eq!(target, Target::File(b"/secret".to_vec()));
        assert_eq!(alert.file.unwrap().path, b"/secret");
        assert!(tracker.violation_of(&key(1)).is_none(), "taken once");
        assert!(tracker.violation_of(&key(2)).is_none());
        assert!(
            tracker.violation_of(&key(3)).is_none(),
            "judged again: clean"
        );
    }
}
