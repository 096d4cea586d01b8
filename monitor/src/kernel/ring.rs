//! Reading the kernel's BPF ring buffer in batches.
//!
//! The ring is the kernel's standard layout, mapped from the map's fd: one
//! read-write page holding the consumer position, then (read-only) a page
//! holding the producer position followed by the data area mapped twice, so
//! a record that wraps around is still contiguous. Each record starts with an
//! 8-byte header: its length with a BUSY bit (still being written) and a
//! DISCARD bit, then a page offset.
//!
//! Why not a per-record consumer: publishing the consumer position after
//! every record moves that cache line to this CPU each time, and the kernel
//! reads it on every reservation; publishing once per batch keeps it still.
use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, RawFd},
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};

use super::mapping::{Mapping, mmap};

const BUSY: u32 = 1 << 31;
const DISCARD: u32 = 1 << 30;
const HEADER: u64 = 8;

pub struct EventRing {
    /// Keeps the map (and its fd) alive.
    map: RingBuf<MapData>,
    consumer: Mapping,
    producer: Mapping,
    size: u64,
    page: usize,
}

impl EventRing {
    /// `size`: the ring's data size in bytes (a power of two, as declared).
    pub fn new(map: RingBuf<MapData>, size: u64) -> io::Result<EventRing> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let fd = map.as_fd().as_raw_fd();
        let consumer = mmap(fd, page, libc::PROT_READ | libc::PROT_WRITE, 0)?;
        let producer = mmap(fd, page + 2 * size as usize, libc::PROT_READ, page)?;
        Ok(EventRing {
            map,
            consumer,
            producer,
            size,
            page,
        })
    }

    fn consumer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the consumer page, aligned, shared with the kernel.
        unsafe { AtomicU64::from_ptr(self.consumer.ptr.as_ptr().cast()) }
    }

    fn producer_pos(&self) -> &AtomicU64 {
        // SAFETY: the first word of the producer page.
        unsafe { AtomicU64::from_ptr(self.producer.ptr.as_ptr().cast()) }
    }

    /// Hands up to `limit` committed records to `f`, then publishes the new
    /// consumer position once. Returns how many records were read.
    pub fn drain(&mut self, limit: usize, mut f: impl FnMut(&[u8])) -> usize {
        let data = self.producer.ptr.as_ptr().wrapping_add(self.page);
        let mask = self.size - 1;
        let mut cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        let mut n = 0;
        while cons < prod && n < limit {
            let at = (cons & mask) as usize;
            // SAFETY: `at` is inside the data area; headers are 8-byte aligned.
            let header =
                unsafe { AtomicU32::from_ptr(data.add(at).cast()) }.load(Ordering::Acquire);
            if header & BUSY != 0 {
                break;
            }
            let len = (header & !(BUSY | DISCARD)) as u64;
            if header & DISCARD == 0 {
                // SAFETY: the record lies in the doubly-mapped data area, so
                // even one that wraps is contiguous.
                let record = unsafe {
                    std::slice::from_raw_parts(data.add(at + HEADER as usize), len as usize)
                };
                f(record);
                n += 1;
            }
            cons += (len + HEADER + 7) & !7;
        }
        self.consumer_pos().store(cons, Ordering::Release);
        n
    }
}

impl EventRing {
    /// Unread bytes (headers and padding included) over the ring's size:
    /// how close the kernel is to dropping events (`ringbuf_full`).
    pub fn fill_ratio(&self) -> f64 {
        let cons = self.consumer_pos().load(Ordering::Acquire);
        let prod = self.producer_pos().load(Ordering::Acquire);
        prod.saturating_sub(cons).min(self.size) as f64 / self.size as f64
    }
}

impl AsRawFd for EventRing {
    fn as_raw_fd(&self) -> RawFd {
        self.map.as_fd().as_raw_fd()
    }
}

// SAFETY: the mappings are only touched through &mut self or atomics.
unsafe impl Send for EventRing {}
