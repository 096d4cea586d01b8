//! Metrics for running the monitor on a fleet (docs/metrics.md): how fast
//! alerts get out, how full the kernel's ring and the alert queue are, how
//! many actions start and finish, and how config reloads went. Registered in
//! the monitor's own registry beside the contract metrics; no label here
//! takes a value from outside (bounded by construction).
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Registry};

use crate::output::metrics::{NAMESPACE, opts, register};

/// Latency buckets (seconds): alerts are written once per fold window
/// (default 1 s, checked every 100 ms), so the interesting range is 10 ms to
/// a few seconds; the top buckets catch a stalled sink.
const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
];

pub struct FleetMetrics {
    /// Seconds from the kernel event behind an alert (its first occurrence,
    /// for a folded alert) to the alert handed to the sinks and written.
    pub alert_latency_seconds: Histogram,
    /// Bytes waiting in the kernel's ring buffer at the reader's last
    /// wakeup, as a fraction of its size (0..1).
    pub ring_fill_ratio: Gauge,
    /// Alerts handed to the sink thread and not yet written.
    pub alert_queue_depth: IntGauge,
    /// Actions seen starting / ending (cgroup removed, launcher exited).
    pub actions_started_total: IntCounter,
    pub actions_finished_total: IntCounter,
    /// SIGHUP reloads, by `result` (`ok`, `error`).
    pub config_reloads_total: IntCounterVec,
}

impl FleetMetrics {
    pub fn new(registry: &Registry) -> FleetMetrics {
        let latency = HistogramOpts::new(
            "alert_latency_seconds",
            "Seconds from the kernel event behind an alert to the alert written by the sinks.",
        )
        .namespace(NAMESPACE)
        .buckets(LATENCY_BUCKETS.to_vec());
        let counter =
            |name: &str, help: &str| register(registry, IntCounter::with_opts(opts(name, help)));
        let fleet = FleetMetrics {
            alert_latency_seconds: register(registry, Histogram::with_opts(latency)),
            ring_fill_ratio: register(
                registry,
                Gauge::with_opts(opts(
                    "ring_fill_ratio",
                    "Fraction of the kernel ring buffer holding unread events at the reader's last wakeup.",
                )),
            ),
            alert_queue_depth: register(
                registry,
                IntGauge::with_opts(opts(
                    "alert_queue_depth",
                    "Alerts waiting for the sink thread.",
                )),
            ),
            actions_started_total: counter(
                "actions_started_total",
                "Build actions seen starting under monitoring.",
            ),
            actions_finished_total: counter(
                "actions_finished_total",
                "Build actions seen ending (cgroup removed, sandbox launcher exited).",
            ),
            config_reloads_total: register(
                registry,
                IntCounterVec::new(
                    opts(
                        "config_reloads_total",
                        "Config reloads on SIGHUP, by result; an error keeps the previous config.",
                    ),
                    &["result"],
                ),
            ),
        };
        for result in ["ok", "error"] {
            fleet.config_reloads_total.with_label_values(&[result]);
        }
        fleet
    }
}

#[cfg(test)]
mod tests {
    use crate::output::metrics::Metrics;

    #[test]
    fn fleet_series_exist_from_the_start_with_their_types() {
        let text = Metrics::new().render();
        for (name, ty) in [
            ("build_monitor_alert_latency_seconds", "histogram"),
            ("build_monitor_ring_fill_ratio", "gauge"),
            ("build_monitor_alert_queue_depth", "gauge"),
            ("build_monitor_actions_started_total", "counter"),
            ("build_monitor_actions_finished_total", "counter"),
            ("build_monitor_config_reloads_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} missing:\n{text}"
            );
        }
        assert!(text.contains(r#"build_monitor_config_reloads_total{result="error"} 0"#));
        assert!(text.contains(r#"build_monitor_alert_latency_seconds_bucket{le="1"} 0"#));
    }
}
