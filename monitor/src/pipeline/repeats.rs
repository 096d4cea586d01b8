//! Repeated opens the kernel counted instead of reporting (`kernel::seen`):
//! which process's keys to take when it ends, and how the first open of
//! each was judged, so its repeats land in the same alert's `count` (and
//! in `events_total` and `violations_total`) exactly.
use std::collections::HashMap;

use monitor_common::SeenKey;

use crate::{
    events::decode::{Origin, Repeats},
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
    /// The violation the first open of a key raised (none: it raised none).
    verdicts: HashMap<SeenKey, Option<(Target, Alert)>>,
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
        self.verdicts.insert(key, violation);
    }

    /// The process ended: its repeats, taken from the kernel (the entries
    /// go with them). `origin`: the exit's, for the repeats' action.
    pub fn process_ended(&mut self, pid: u32, origin: &Origin) -> Vec<Repeats> {
        let Some((_, keys)) = self.by_pid.remove(&pid) else {
            return Vec::new();
        };
        self.take(origin, keys)
    }

    /// At stop: the repeats of every process still running.
    pub fn take_all(&mut self) -> Vec<Repeats> {
        let all: Vec<(Origin, Vec<SeenKey>)> = self.by_pid.drain().map(|(_, v)| v).collect();
        all.into_iter()
            .flat_map(|(origin, keys)| self.take(&origin, keys))
            .collect()
    }

    fn take(&mut self, origin: &Origin, keys: Vec<SeenKey>) -> Vec<Repeats> {
        let Some(counts) = self.counts.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for key in keys {
            match counts.take(&key).unwrap_or(0) {
                0 => {
                    self.verdicts.remove(&key);
                }
                count => out.push(Repeats {
                    origin: *origin,
                    key,
                    count,
                }),
            }
        }
        out
    }

    /// The violation repeats of `key` add to (and forget the key).
    pub fn violation_of(&mut self, key: &SeenKey) -> Option<(Target, Alert)> {
        self.verdicts.remove(key).flatten()
    }
}
