//! The kernel's counts of repeated opens (`SEEN`, `monitor-ebpf/src/seen.rs`),
//! an array mapped here and taken in place when a process ends:
//!
//! 1. the entry is retired (its first word set to `SEEN_RETIRED`): no
//!    program matches the key from then on;
//! 2. its count is swapped for `SEEN_TAKEN`: that is the count taken. A
//!    program that matched the key before 1 and reads the count after 2
//!    finds it at `SEEN_TAKEN` or above and reports that open in full.
//!    The kernel adds with a plain load and store (a key names one
//!    thread): an add that read the count before 2 and stores after it
//!    would be lost. Counts are taken when the key's process has ended,
//!    after its threads' last syscalls, so none can; the free (3) checks
//!    and counts any such add ([`SeenCounts::take_strays`], never silent), and
//!    at the monitor's stop, with processes still running, the entries are
//!    retired and a grace period waited for before their counts are read
//!    ([`SeenCounts::take_settled`]);
//! 3. once no program that matched before 1 can still be running (an RCU
//!    grace period: the programs run under `rcu_read_lock`, and
//!    `membarrier(MEMBARRIER_CMD_GLOBAL)` waits for one), the entry is
//!    zeroed, first word last, and the kernel may claim it again. A
//!    helper thread waits for the grace periods; entries are freed at the
//!    next take or event-loop tick after theirs ended.
//!
//! Each entry freed is also taken off its group's count in `SEEN_FILTER`
//! (mapped here): the kernel skips the comparison for a group that counts
//! none. A count left too high only costs the kernel a comparison; one too
//! low, a full report.
use std::{
    collections::VecDeque,
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use monitor_common::{
    SEEN_ENTRIES, SEEN_FILTER_CELLS, SEEN_RETIRED, SEEN_TAKEN, SeenEntry, SeenKey, seen_index,
    seen_slot,
};

use super::mapping::{Mapping, mmap};

/// Words of an entry: the key's six, then the count.
const ENTRY_WORDS: usize = std::mem::size_of::<SeenEntry>() / 8;
const KEY_WORDS: usize = std::mem::size_of::<SeenKey>() / 8;

pub struct SeenCounts {
    entries: MappedArray,
    filter: FilterCells,
    /// Taken entries not yet free: index, the grace period each waits
    /// for, and the count taken.
    retired: VecDeque<(u32, u64, u64)>,
    grace: GracePeriods,
    /// Repeats the kernel added after their count was taken (module notes).
    strays: u64,
}

/// A map's values, mapped (`SEEN`, `SEEN_FILTER`).
struct MappedArray {
    /// Keeps the map alive.
    _map: aya::maps::Map,
    mapping: Mapping,
}

impl MappedArray {
    /// Maps `len` bytes of the array map `map`'s values.
    fn new(map: aya::maps::Map, len: usize) -> io::Result<MappedArray> {
        let aya::maps::Map::Array(data) = &map else {
            return Err(io::Error::other("not an array map"));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let mapping = mmap(fd, len, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        Ok(MappedArray { _map: map, mapping })
    }

    /// The mapped memory as `T` cells (shared with the kernel, which only
    /// changes them atomically).
    fn cells<T>(&self) -> &[T] {
        // SAFETY: `len` mapped, page-aligned bytes; `T` is an atomic
        // integer type that any bit pattern is valid for.
        unsafe {
            std::slice::from_raw_parts(
                self.mapping.ptr.as_ptr().cast::<T>(),
                self.mapping.len / std::mem::size_of::<T>(),
            )
        }
    }
}

/// `SEEN_FILTER`'s cells, mapped.
pub struct FilterCells(MappedArray);

impl FilterCells {
    /// Maps the `SEEN_FILTER` map's one value.
    pub fn new(map: aya::maps::Map) -> io::Result<FilterCells> {
        let len = SEEN_FILTER_CELLS * std::mem::size_of::<u32>();
        MappedArray::new(map, len).map(FilterCells)
    }

    fn cells(&self) -> &[AtomicU32] {
        self.0.cells()
    }
}

/// Takes one off `slot`'s cell; never below 0 (a count that wrapped would
/// make the kernel look up that group for good).
pub fn release(cells: &[AtomicU32], slot: u64) {
    let cell = &cells[slot as usize & (cells.len() - 1)];
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

impl SeenCounts {
    /// `map`: `SEEN`, an array of `SEEN_ENTRIES` entries.
    pub fn new(map: aya::maps::Map, filter: FilterCells) -> io::Result<Self> {
        let len = SEEN_ENTRIES as usize * std::mem::size_of::<SeenEntry>();
        Ok(SeenCounts {
            entries: MappedArray::new(map, len)?,
            filter,
            retired: VecDeque::new(),
            grace: GracePeriods::start()?,
            strays: 0,
        })
    }

    /// The repeats counted under `key`, its entry retired; `None` when its
    /// entry holds no such key (another key's, or none: the kernel never
    /// tracked it).
    pub fn take(&mut self, key: &SeenKey) -> Option<u64> {
        self.free_retired();
        let index = seen_index(seen_slot(key));
        let count = take_entry(self.entry(index), key)?;
        self.retired.push_back((index, self.grace.ask(), count));
        Some(count)
    }

    /// As [`SeenCounts::take`] for each of `keys` (`None`: not in its
    /// entry), for processes that may still be running: every entry is
    /// retired first, and the counts read once no program that matched a
    /// key before can still be running (waited for here), then freed.
    pub fn take_settled(&mut self, keys: &[SeenKey]) -> Vec<Option<u64>> {
        let retired: Vec<Option<u32>> = keys
            .iter()
            .map(|key| {
                let index = seen_index(seen_slot(key));
                retire_entry(self.entry(index), key).then_some(index)
            })
            .collect();
        if retired.iter().any(Option::is_some) {
            wait_for_running_programs();
        }
        retired
            .into_iter()
            .map(|index| {
                let index = index?;
                let count = swap_count(self.entry(index));
                self.free(index);
                Some(count)
            })
            .collect()
    }

    /// Repeats the kernel counted after their count was taken, found at
    /// the frees since the last call (0 unless a process's thread outlived
    /// its exit).
    pub fn take_strays(&mut self) -> u64 {
        std::mem::take(&mut self.strays)
    }

    fn entry(&self, index: u32) -> &[AtomicU64] {
        let start = index as usize * ENTRY_WORDS;
        &self.entries.cells::<AtomicU64>()[start..start + ENTRY_WORDS]
    }

    /// Frees the retired entries whose grace period has ended.
    pub fn free_retired(&mut self) {
        let ended = self.grace.ended();
        while let Some(&(index, period, taken)) = self.retired.front()
            && period <= ended
        {
            self.retired.pop_front();
            self.strays += stray_adds(self.entry(index), taken);
            self.free(index);
        }
    }

    /// Step 3 on entry `index`, and its group's count taken off.
    fn free(&self, index: u32) {
        free_entry(self.entry(index));
        release(self.filter.cells(), u64::from(index));
    }
}

/// The key's six words, as the kernel wrote them.
fn key_words(key: &SeenKey) -> [u64; KEY_WORDS] {
    // SAFETY: a repr(C) key of six u64 words, no padding (monitor_common).
    unsafe { std::mem::transmute_copy(key) }
}

/// Steps 1 and 2 of the module's notes on one entry's words: the count,
/// when the entry holds `key`.
fn take_entry(entry: &[AtomicU64], key: &SeenKey) -> Option<u64> {
    retire_entry(entry, key).then(|| swap_count(entry))
}

/// Step 2: the count, swapped for `SEEN_TAKEN`.
fn swap_count(entry: &[AtomicU64]) -> u64 {
    entry[KEY_WORDS].swap(SEEN_TAKEN, Ordering::AcqRel)
}

/// Step 1: whether the entry held `key` (and is now retired).
fn retire_entry(entry: &[AtomicU64], key: &SeenKey) -> bool {
    let words = key_words(key);
    entry
        .iter()
        .zip(words)
        .all(|(word, mine)| word.load(Ordering::Acquire) == mine)
        && entry[0]
            .compare_exchange(words[0], SEEN_RETIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
}

/// Adds stored after the count `taken` was swapped out, once the entry's
/// grace period has ended: each such add read the count before the swap,
/// so they chain on from `taken`.
fn stray_adds(entry: &[AtomicU64], taken: u64) -> u64 {
    match entry[KEY_WORDS].load(Ordering::Acquire) {
        SEEN_TAKEN.. => 0,
        now => now.saturating_sub(taken),
    }
}

/// Step 3: the entry zeroed, its first word last (the kernel claims an
/// entry whose first word is 0, then writes the rest of its key).
fn free_entry(entry: &[AtomicU64]) {
    for word in &entry[1..] {
        word.store(0, Ordering::Relaxed);
    }
    entry[0].store(0, Ordering::Release);
}

/// RCU grace periods, waited for by a helper thread (a wait blocks for
/// milliseconds: not on the event loop).
struct GracePeriods {
    asked: u64,
    ended: Arc<AtomicU64>,
    ask: mpsc::Sender<u64>,
}

impl GracePeriods {
    fn start() -> io::Result<GracePeriods> {
        let (ask, asks) = mpsc::channel::<u64>();
        let ended = Arc::new(AtomicU64::new(0));
        let done = Arc::clone(&ended);
        std::thread::Builder::new()
            .name("mon-grace".into())
            .spawn(move || {
                while let Ok(mut period) = asks.recv() {
                    // Asked again meanwhile: one wait covers them all.
                    while let Ok(later) = asks.try_recv() {
                        period = later;
                    }
                    wait_for_running_programs();
                    done.store(period, Ordering::Release);
                }
            })?;
        Ok(GracePeriods {
            asked: 0,
            ended,
            ask,
        })
    }

    /// A grace period starting now: its number.
    fn ask(&mut self) -> u64 {
        self.asked += 1;
        let _ = self.ask.send(self.asked);
        self.asked
    }

    fn ended(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }
}

/// `MEMBARRIER_CMD_GLOBAL` (uapi): returns after an RCU grace period.
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Returns once every BPF program running when it was called has finished:
/// `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`. Refused on
/// `nohz_full` kernels: then a second, logged once (no tracing program
/// runs that long).
fn wait_for_running_programs() {
    // SAFETY: a syscall with no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            log::warn!(
                "membarrier: {}; taken repeat counts are freed a second after their take",
                io::Error::last_os_error()
            )
        });
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{SeenKey, seen_index, seen_slot};

    fn key() -> SeenKey {
        SeenKey {
            action_cgroup_id: 4242,
            ino: 17,
            dentry: 0xffff_8880_1234_5678,
            mnt: 0xffff_8880_8765_4320,
            tid: 900,
            _pad: 0,
            generation: 3,
            access_class: 0o1,
        }
    }

    #[test]
    fn every_field_but_the_generation_moves_the_slot_and_no_slot_is_empty() {
        let base = key();
        let changed: [fn(&mut SeenKey); 6] = [
            |k| k.action_cgroup_id += 1,
            |k| k.ino += 1,
            |k| k.dentry += 0x40,
            |k| k.mnt += 0x40,
            |k| k.tid += 1,
            |k| k.access_class |= 1 << 31,
        ];
        for change in changed {
            let mut other = base;
            change(&mut other);
            assert_ne!(seen_slot(&other), seen_slot(&base), "{other:?}");
        }
        // The generation alone does not: the kernel reads it only to
        // compare or claim the whole key.
        let reused = SeenKey {
            generation: base.generation + 1,
            ..base
        };
        assert_eq!(seen_slot(&reused), seen_slot(&base));
        assert_eq!(seen_slot(&base), seen_slot(&key()));
        assert_eq!(seen_slot(&SeenKey::default()) & 1, 1);
    }

    /// Keys that differ as a build's do (inode numbers and dentries in a
    /// row, a few processes) spread over the slots' indexes as random ones
    /// would (4,096 random keys in 65,536 entries: about 3,970 distinct).
    #[test]
    fn neighbouring_keys_spread_over_the_entries() {
        let mut indexes = std::collections::HashSet::new();
        for i in 0..4096u64 {
            let mut k = key();
            k.ino += i;
            k.dentry += 0xc0 * i;
            k.tid += (i % 4) as u32;
            indexes.insert(seen_index(seen_slot(&k)));
        }
        assert!(indexes.len() > 3800, "{} distinct of 4096", indexes.len());
    }

    /// The take's steps on one entry, with the kernel's side played by
    /// hand (its add: a plain load, and a store unless the count is at
    /// `SEEN_TAKEN` or above): an add after the take is refused, one that
    /// read the count before the take and stored after it is found at the
    /// free, another key is left alone, a retired entry matches nothing,
    /// and a freed one is all zero.
    #[test]
    fn an_entry_is_taken_in_place_and_freed_first_word_last() {
        use std::sync::atomic::{AtomicU64, Ordering};

        use monitor_common::{SEEN_RETIRED, SEEN_TAKEN};

        use super::{free_entry, key_words, stray_adds, take_entry};

        let kernel_reads = |entry: &[AtomicU64]| entry[6].load(Ordering::SeqCst);
        let kernel_adds = |entry: &[AtomicU64], read: u64| {
            (read < SEEN_TAKEN).then(|| entry[6].store(read + 1, Ordering::SeqCst))
        };
        let mine = key();
        let words = key_words(&mine);
        let entry: Vec<AtomicU64> = words
            .iter()
            .chain(&[41])
            .map(|&w| AtomicU64::new(w))
            .collect();
        let mut other = mine;
        other.tid += 1;
        assert_eq!(take_entry(&entry, &other), None, "another key's entry");
        assert_eq!(entry[6].load(Ordering::Relaxed), 41);
        // An add that read the count before the take and stores after it.
        let read_early = kernel_reads(&entry);
        assert_eq!(take_entry(&entry, &mine), Some(41));
        assert_eq!(entry[0].load(Ordering::Relaxed), SEEN_RETIRED);
        // One that reads after the take is refused: reported in full.
        assert_eq!(kernel_adds(&entry, kernel_reads(&entry)), None);
        assert_eq!(stray_adds(&entry, 41), 0, "nothing stored after the take");
        assert!(kernel_adds(&entry, read_early).is_some());
        assert_eq!(take_entry(&entry, &mine), None, "taken once");
        assert_eq!(stray_adds(&entry, 41), 1, "the late store, counted");
        free_entry(&entry);
        assert!(entry.iter().all(|w| w.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn a_release_takes_one_off_the_slots_cell_and_stops_at_zero() {
        use std::sync::atomic::{AtomicU32, Ordering};

        use super::release;

        let cells: Vec<AtomicU32> = (0..8).map(|_| AtomicU32::new(0)).collect();
        cells[3].store(2, Ordering::Relaxed);
        release(&cells, 8 * 1000 + 3);
        release(&cells, 3);
        release(&cells, 3);
        release(&cells, 5);
        let now: Vec<u32> = cells.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        assert_eq!(now, [0; 8]);
        cells[7].store(1, Ordering::Relaxed);
        release(&cells, 6);
        assert_eq!(cells[7].load(Ordering::Relaxed), 1);
    }
}
