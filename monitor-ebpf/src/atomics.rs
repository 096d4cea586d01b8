//! Atomic updates of map memory. The BPF target's core has no atomic
//! types: its programs use the intrinsics (BPF atomics); host builds
//! (never run, for checks and tests) the stable atomics.

/// `*word` from `current` to `new`, if it was `current`. Atomic: two CPUs
/// may claim one free entry at once.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn compare_exchange(word: *mut u64, current: u64, new: u64) -> bool {
    use core::intrinsics::AtomicOrdering::SeqCst;
    // SAFETY: the caller passes a valid map value word.
    unsafe { core::intrinsics::atomic_cxchg::<u64, { SeqCst }, { SeqCst }>(word, current, new).1 }
}

/// Adds one to a 32-bit cell, atomically (the add without fetch).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn add_one_u32(cell: *mut u32) {
    // SAFETY: the caller passes a valid map value word.
    unsafe {
        core::intrinsics::atomic_xadd::<u32, u32, { core::intrinsics::AtomicOrdering::Relaxed }>(
            cell, 1,
        )
    };
}

/// Adds one to a 64-bit word, atomically (the add without fetch).
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub unsafe fn add_one_u64(word: *mut u64) {
    // SAFETY: the caller passes a valid map value word.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::SeqCst }>(
            word, 1,
        )
    };
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn compare_exchange(word: *mut u64, current: u64, new: u64) -> bool {
    use core::sync::atomic::Ordering::SeqCst;
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(word) }
        .compare_exchange(current, new, SeqCst, SeqCst)
        .is_ok()
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn add_one_u32(cell: *mut u32) {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU32::from_ptr(cell) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub unsafe fn add_one_u64(word: *mut u64) {
    // SAFETY: the caller passes a valid, aligned pointer.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(word) }
        .fetch_add(1, core::sync::atomic::Ordering::SeqCst);
}
