//! What leaves the monitor: the alert contract (docs/alerts.md), folding of
//! repeats, alert sinks, Prometheus metrics and the HTTP endpoint serving
//! them; `monitor exec`'s reports (completeness, Markdown summary, SARIF,
//! learned policy).
//! Must not decide verdicts or attribution.
pub mod alert;
pub mod alertmanager;
pub mod completeness;
pub mod delivery;
pub mod dns_names;
pub mod fleet_metrics;
pub mod fold;
pub mod http;
pub mod inventory;
pub mod learn;
pub mod markdown;
pub mod metrics;
pub mod sarif;
pub mod self_cost;
pub mod sinks;
pub mod spool;
pub mod summary;
pub mod writer;
