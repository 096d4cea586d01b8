//! Entry points, one module per hook family: `syscalls` (the `sys_exit`
//! hook and its dispatch), `files` (opens), `net` (connects), `process`
//! (exec, fork, exit, io_uring set-up), `links` (when a monitored
//! process made a symlink, link or rename), `cgroups` (cgroup mkdir/rmdir
//! below monitored scopes), `sock` (socket-address hooks: every egress
//! route, and enforcement), `listeners` (what monitored actions bound: their
//! own loopback traffic), `dns` (DNS answers delivered to monitored
//! sockets, to name destinations), `uring` (opens submitted through io_uring, at
//! their completion). Shared helpers (filter, lineage,
//! path walks, emit) live beside this folder; nothing here decides policy.
//! `compat` translates 32-bit syscalls of monitored tasks; `packet` catches
//! packet sockets (raw frames below every socket hook) as they are made.
pub mod cgroups;
pub mod compat;
pub mod dns;
pub mod files;
pub mod links;
pub mod listeners;
pub mod metadata;
pub mod net;
pub mod packet;
pub mod process;
pub mod sock;
pub mod syscalls;
pub mod uring;
