//! What leaves the monitor: the alert contract (docs/alerts.md), folding of
//! repeats, alert sinks and Prometheus metrics.
//! Must not decide verdicts or attribution.
pub mod alert;
pub mod fold;
pub mod metrics;
pub mod sinks;
pub mod summary;
pub mod writer;
