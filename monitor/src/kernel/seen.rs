//! The kernel's counts of repeated opens (`SEEN`, `monitor-ebpf/src/seen.rs`):
//! each is taken and its entry removed in one step when the process ends,
//! so a repeat counted at that moment is never lost between a read and a
//! delete. aya 0.14 has no lookup-and-delete for hash maps; this is that
//! one `bpf(2)` command (kernel 5.14+ for hash maps), with a read-then-
//! delete fallback for older kernels. Entries are keyed by the key's slot
//! (`monitor_common::seen_slot`, as the kernel computes it) and hold the
//! whole key.
//!
//! Each entry taken is also taken off its group's count in `SEEN_FILTER`
//! (mapped here): the kernel skips the lookup for a group that counts none
//! (`monitor-ebpf/src/seen.rs`). A count left too high only costs the
//! kernel a lookup; one too low, a full report.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::{HashMap, MapData};
use monitor_common::{SEEN_FILTER_CELLS, SeenEntry, SeenKey, seen_slot};

use super::mapping::{Mapping, mmap};

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (uapi `enum bpf_cmd`).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
/// `BPF_NOEXIST` (uapi): insert only.
const BPF_NOEXIST: u64 = 1;

pub struct SeenCounts {
    map: HashMap<MapData, u64, SeenEntry>,
    /// The map's descriptor, for the command aya does not have.
    fd: OwnedFd,
    filter: FilterCells,
}

/// `SEEN_FILTER`'s cells, mapped.
pub struct FilterCells {
    /// Keeps the map alive.
    _map: aya::maps::Map,
    mapping: Mapping,
}

impl FilterCells {
    /// Maps the `SEEN_FILTER` map's one value.
    pub fn new(map: aya::maps::Map) -> io::Result<FilterCells> {
        let aya::maps::Map::Array(data) = &map else {
            return Err(io::Error::other("map SEEN_FILTER is not an array"));
        };
        let fd = data.fd().as_fd().as_raw_fd();
        let len = SEEN_FILTER_CELLS * std::mem::size_of::<u32>();
        let mapping = mmap(fd, len, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        Ok(FilterCells { _map: map, mapping })
    }

    fn cells(&self) -> &[AtomicU32] {
        // SAFETY: `len` mapped bytes of u32 cells (page-aligned), shared
        // with the kernel, which only adds to them atomically.
        unsafe {
            std::slice::from_raw_parts(
                self.mapping.ptr.as_ptr().cast::<AtomicU32>(),
                self.mapping.len / std::mem::size_of::<u32>(),
            )
        }
    }
}

/// Takes one off `slot`'s cell; never below 0 (a count that wrapped would
/// make the kernel look up that group for good).
pub fn release(cells: &[AtomicU32], slot: u64) {
    let cell = &cells[slot as usize & (cells.len() - 1)];
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
}

/// The part of `union bpf_attr` the element commands read.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

impl SeenCounts {
    /// `fd`: a duplicate of the map's descriptor.
    pub fn new(map: HashMap<MapData, u64, SeenEntry>, fd: OwnedFd, filter: FilterCells) -> Self {
        SeenCounts { map, fd, filter }
    }

    /// The repeats counted under `key`, its entry removed; `None` when the
    /// kernel has no such entry. An entry of another key on the slot is
    /// put back (the kernel only tracks a key whose insert succeeded, so
    /// userspace never asks for a key whose slot another holds).
    pub fn take(&mut self, key: &SeenKey) -> Option<u64> {
        let slot = seen_slot(key);
        let entry = self.take_slot(slot)?;
        if entry.key == *key {
            release(self.filter.cells(), slot);
            return Some(entry.count);
        }
        let _ = self.map.insert(slot, entry, BPF_NOEXIST);
        None
    }

    fn take_slot(&mut self, slot: u64) -> Option<SeenEntry> {
        let mut value = SeenEntry::default();
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: &slot as *const u64 as u64,
            value: &mut value as *mut SeenEntry as u64,
            flags: 0,
        };
        // SAFETY: `attr` points at a live key and value of the map's sizes.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &attr as *const ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if r == 0 {
            return Some(value);
        }
        match std::io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOENT) => None,
            // Older kernels: read, then delete.
            _ => {
                let entry = self.map.get(&slot, 0).ok()?;
                let _ = self.map.remove(&slot);
                Some(entry)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::{SeenKey, seen_slot};

    fn key() -> SeenKey {
        SeenKey {
            action_cgroup_id: 4242,
            ino: 17,
            dentry: 0xffff_8880_1234_5678,
            mnt: 0xffff_8880_8765_4320,
            tgid: 900,
            _pad: 0,
            generation: 3,
            access_class: 0o1,
        }
    }

    #[test]
    fn every_field_moves_the_slot_and_no_slot_is_empty() {
        let base = key();
        let changed: [fn(&mut SeenKey); 7] = [
            |k| k.action_cgroup_id += 1,
            |k| k.ino += 1,
            |k| k.dentry += 0x40,
            |k| k.mnt += 0x40,
            |k| k.tgid += 1,
            |k| k.generation += 1,
            |k| k.access_class |= 1 << 31,
        ];
        for change in changed {
            let mut other = base;
            change(&mut other);
            assert_ne!(seen_slot(&other), seen_slot(&base), "{other:?}");
        }
        assert_eq!(seen_slot(&base), seen_slot(&key()));
        assert_eq!(seen_slot(&SeenKey::default()) & 1, 1);
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
