//! Kernel side, seen from userspace: loading and attaching the eBPF programs
//! (with struct offsets from the running kernel's BTF), reading the ring and
//! taking the counts of repeated opens and of failed probes counted in the
//! kernel (`sandboxes`).
//! Owns the maps and the raw records; must not decode, attribute or judge.
pub mod btf;
pub mod kfuncs;
pub mod loader;
pub mod mapping;
pub mod parallel_load;
pub mod privileges;
pub mod ring;
pub mod sandboxes;
pub mod seen;
