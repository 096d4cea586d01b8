//! A shared mapping of a BPF map's memory (the ring buffer's pages, the
//! repeat filter's cells), unmapped when dropped.
use std::{io, os::fd::RawFd, ptr::NonNull};

/// `ptr`: `len` mapped bytes.
pub struct Mapping {
    pub ptr: NonNull<u8>,
    pub len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was created by mmap with this length.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub fn mmap(fd: RawFd, len: usize, prot: i32, offset: usize) -> io::Result<Mapping> {
    // SAFETY: a fresh shared mapping of a map's fd.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd,
            offset as libc::off_t,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Mapping {
        ptr: NonNull::new(ptr.cast()).expect("mmap returned NULL"),
        len,
    })
}
