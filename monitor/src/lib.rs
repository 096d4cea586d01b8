//! Userspace side of the build-action monitor.
//!
//! Folders follow the data flow, one way (docs/architecture.md):
//! `kernel` (load, attach, ring) → `events` (decode, paths, process facts) →
//! `actions` (which action, what it declared; `bazel` for Bazel's own
//! sources) → `policy` (verdicts) → `output` (alerts, folding, sinks,
//! metrics). `pipeline` is the loop that moves records through them;
//! `commands` assembles the stages for each CLI mode.

pub mod actions;
pub mod bazel;
pub mod commands;
pub mod config;
pub mod events;
pub mod hashing;
pub mod kernel;
pub mod output;
pub mod pipeline;
pub mod policy;
pub mod reapi;
mod seams;

/// The kernel programs, built by build.rs for the BPF target.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"))
}
