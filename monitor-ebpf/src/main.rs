//! Kernel programs of the build-action monitor.
//!
//! `probes/` holds the entry points, one module per hook family (see its
//! `mod.rs`); beside it are the helpers they share: `filter` (is this task
//! in a monitored action?), `escapes` (processes moved out of their
//! action's cgroup), `lineage` (sandbox launcher trees), `dpath`
//! (dentry walks), `object` (identity of an open file), `sandbox` (failed
//! probes in the action's own sandbox, counted), `offsets`
//! (struct offsets the verifier sees as constants), `seen` (repeats
//! counted, not reported), `task` (kernel struct reads), `emit` (ring records),
//! `maps`. The kernel filters and reports; userspace decides.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `seen.rs`: the atomic add the BPF target has no atomic type for.
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]

mod allowed;
mod atomics;
mod dpath;
mod emit;
mod escapes;
mod filter;
mod kfunc;
mod lineage;
mod maps;
mod object;
mod offsets;
mod probes;
mod sandbox;
mod seen;
mod task;
mod verdicts;
mod workers;

/// Host builds (`cargo build --workspace`) compile the crate as a plain
/// binary; only the BPF target produces the programs.
#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
