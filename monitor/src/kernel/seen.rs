//! The kernel's counts of repeated opens (`SEEN`, `monitor-ebpf/src/seen.rs`):
//! each is taken and its entry removed in one step when the process ends,
//! so a repeat counted at that moment is never lost between a read and a
//! delete. aya 0.14 has no lookup-and-delete for hash maps; this is that
//! one `bpf(2)` command (kernel 5.14+ for hash maps), with a read-then-
//! delete fallback for older kernels.
use std::os::fd::{AsRawFd as _, OwnedFd};

use aya::maps::{HashMap, MapData};
use monitor_common::SeenKey;

/// `BPF_MAP_LOOKUP_AND_DELETE_ELEM` (uapi `enum bpf_cmd`).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;

pub struct SeenCounts {
    map: HashMap<MapData, SeenKey, u64>,
    /// The map's descriptor, for the command aya does not have.
    fd: OwnedFd,
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
    pub fn new(map: HashMap<MapData, SeenKey, u64>, fd: OwnedFd) -> Self {
        SeenCounts { map, fd }
    }

    /// The repeats counted under `key`, its entry removed; `None` when the
    /// kernel has no such entry.
    pub fn take(&mut self, key: &SeenKey) -> Option<u64> {
        let mut value: u64 = 0;
        let attr = ElemAttr {
            map_fd: self.fd.as_raw_fd() as u32,
            _pad: 0,
            key: key as *const SeenKey as u64,
            value: &mut value as *mut u64 as u64,
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
                let count = self.map.get(key, 0).ok()?;
                let _ = self.map.remove(key);
                Some(count)
            }
        }
    }
}
