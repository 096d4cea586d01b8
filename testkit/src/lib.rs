//! Helpers written once for the monitor, xtask and the integration tests.
//!
//! [`cgroup`] and [`wait`] (polling with a deadline) are what the monitor
//! itself uses (they need only libc and std). The rest, behind the
//! `harness` feature, drives a real monitor daemon from tests and tools:
//! loopback HTTP, Prometheus text, free ports and child daemons.
pub mod cgroup;
pub mod tools;
pub mod wait;

#[cfg(feature = "harness")]
pub mod daemon;
#[cfg(feature = "harness")]
pub mod http;
#[cfg(feature = "harness")]
pub mod monitor;
#[cfg(feature = "harness")]
pub mod ports;
#[cfg(feature = "harness")]
pub mod prom;
