//! Helpers written once for the monitor, xtask and the integration tests.
//!
//! [`cgroup`] is all the monitor itself uses (it needs only libc). The rest,
//! behind the `harness` feature, drives a real monitor daemon from tests and
//! tools: loopback HTTP, Prometheus text, free ports, child daemons and
//! polling with a deadline.
pub mod cgroup;
pub mod tools;

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
#[cfg(feature = "harness")]
pub mod wait;
