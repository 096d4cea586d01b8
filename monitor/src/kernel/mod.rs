//! Kernel side, seen from userspace: loading and attaching the eBPF programs
//! (with struct offsets from the running kernel's BTF) and reading the ring.
//! Owns the maps and the raw records; must not decode, attribute or judge.
pub mod btf;
pub mod loader;
pub mod privileges;
pub mod ring;
