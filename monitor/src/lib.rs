//! Userspace side of the build-action monitor.
//!
//! Data flows one way: loader (kernel programs, ring buffer) → decode →
//! registry (which action) → judge (allowed?) → fold → sinks (JSON alerts)
//! and metrics.

pub mod alert;
pub mod app;
pub mod btf;
pub mod cgroup;
pub mod config;
pub mod daemon;
pub mod declarations;
pub mod decode;
pub mod exec;
pub mod execlog;
pub mod fold;
pub mod judge;
pub mod loader;
pub mod localnet;
pub mod metrics;
pub mod paths;
pub mod pipeline;
pub mod policy;
pub mod processes;
pub mod registry;
pub mod ring;
pub mod sandbox;
pub mod sinks;

/// The kernel programs, built by build.rs for the BPF target.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/monitor-ebpf"))
}
