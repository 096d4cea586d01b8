//! Prometheus metrics (contract: docs/metrics.md): the registry and its
//! series. The HTTP endpoint that serves them is [`super::http`].

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::output::fleet_metrics::FleetMetrics;

pub const NAMESPACE: &str = "build_monitor";

/// Every `events_lost_total` reason: the kernel's (`ringbuf_full`,
/// `lineage_full`), a record that did not decode, and a repeat counted
/// after its process's count was taken (`kernel::seen`).
pub const LOST_REASONS: [&str; 4] = [
    "ringbuf_full",
    "lineage_full",
    "decode_error",
    "repeat_after_take",
];

/// All metrics of the monitor, registered in their own registry so that only
/// these (and no process-global defaults) are exported.
pub struct Metrics {
    pub registry: Registry,
    /// Alerts raised, by `kind` (alert kind) and `mnemonic`.
    pub violations_total: IntCounterVec,
    /// Kernel events decoded, by `kind` (file, net, exec, exit, …).
    pub events_total: IntCounterVec,
    /// Events that never reached a verdict, by `reason`.
    pub events_lost_total: IntCounterVec,
    /// Of `events_total{kind="file"}`: repeated opens the kernel counted
    /// instead of reporting (each judged as the process's first).
    pub repeats_total: IntCounter,
    /// Of `events_total{kind="file"}`: failed probes below an action's own
    /// sandbox the kernel counted instead of reporting.
    pub probes_folded_total: IntCounter,
    /// Sandboxes whose failed probes the kernel counts now.
    pub kernel_sandboxes: IntGauge,
    pub actions_active: IntGauge,
    /// Actions seen starting, by `mnemonic`.
    pub actions_total: IntCounterVec,
    /// Alerts a sink could not write, by `sink`.
    pub alerts_dropped_total: IntCounterVec,
    /// Alerts a sink wrote, by `sink`; with the drops, shows a sink's health.
    pub alerts_total: IntCounterVec,
    /// Declaration files that could not be parsed; their actions are judged
    /// as if they declared nothing, so this explains surprising alerts.
    pub declarations_invalid_total: IntCounter,
    /// Remote-execution worker actions seen starting, by `mnemonic`.
    pub worker_actions_total: IntCounterVec,
    /// `cache_risk` verdicts (successful worker actions with violations),
    /// by `mnemonic`.
    pub cache_risks_total: IntCounterVec,
    /// Always 1; its labels say what runs (`version`, `kernel`, `hook`).
    pub build_info: IntGaugeVec,
    /// Alerts handed to a sink and not written (delivered) yet, by `sink`.
    pub alerts_queued: IntGaugeVec,
    /// Latency, fill levels, action starts/ends, reloads (fleet operation).
    pub fleet: FleetMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(opts(name, help), labels))
        };
        let counter =
            |name: &str, help: &str| register(&registry, IntCounter::with_opts(opts(name, help)));
        let (build_info, alerts_queued) = node_gauges(&registry);
        let (repeats_total, probes_folded_total, kernel_sandboxes) = counted_in_kernel(&registry);
        let metrics = Metrics {
            violations_total: counter_vec(
                "violations_total",
                "Accesses an action made that it did not declare or the policy does not allow.",
                &["kind", "mnemonic"],
            ),
            events_total: counter_vec(
                "events_total",
                "Kernel events received from monitored actions.",
                &["kind"],
            ),
            events_lost_total: counter_vec(
                "events_lost_total",
                "Kernel events lost before a verdict; a non-zero rate means violations may be missed.",
                &["reason"],
            ),
            repeats_total,
            probes_folded_total,
            kernel_sandboxes,
            actions_active: register(
                &registry,
                IntGauge::with_opts(opts(
                    "actions_active",
                    "Build actions currently running under monitoring.",
                )),
            ),
            actions_total: counter_vec(
                "actions_total",
                "Build actions that started under monitoring.",
                &["mnemonic"],
            ),
            alerts_dropped_total: counter_vec(
                "alerts_dropped_total",
                "Alerts a sink failed to write; those alerts are lost.",
                &["sink"],
            ),
            alerts_total: counter_vec(
                "alerts_total",
                "Alerts a sink wrote successfully.",
                &["sink"],
            ),
            declarations_invalid_total: counter(
                "declarations_invalid_total",
                "Action declaration files that could not be read or parsed.",
            ),
            worker_actions_total: counter_vec(
                "worker_actions_total",
                "Remote-execution actions a worker runner started under monitoring.",
                &["mnemonic"],
            ),
            cache_risks_total: counter_vec(
                "cache_risks_total",
                "Remote-execution actions that completed successfully after violations: their results may be in the action cache.",
                &["mnemonic"],
            ),
            build_info,
            alerts_queued,
            fleet: FleetMetrics::new(&registry),
            registry,
        };
        metrics.create_zero_series();
        metrics
    }

    /// Series that alert rules use must exist from the start: an absent
    /// series makes `rate()`/`increase()` silently evaluate to nothing. A
    /// vector with no series is not exported at all; these also make every
    /// contract family visible (and `absent()`-checkable) before traffic.
    fn create_zero_series(&self) {
        for reason in LOST_REASONS {
            self.events_lost_total.with_label_values(&[reason]);
        }
        for sink in ["stdout", "file", "webhook", "alertmanager"] {
            self.alerts_dropped_total.with_label_values(&[sink]);
            self.alerts_total.with_label_values(&[sink]);
            self.alerts_queued.with_label_values(&[sink]);
        }
        for kind in ["undeclared_file", "network_egress"] {
            self.violations_total.with_label_values(&[kind, "unknown"]);
        }
        for kind in ["file", "net", "exec", "exit"] {
            self.events_total.with_label_values(&[kind]);
        }
        self.actions_total.with_label_values(&["unknown"]);
        self.worker_actions_total.with_label_values(&["unknown"]);
        self.cache_risks_total.with_label_values(&["unknown"]);
    }

    /// The registry in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| {
                log::error!("cannot encode metrics: {e}");
                String::new()
            })
    }
}

pub(crate) fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// `build_info` and `alerts_queued`.
fn node_gauges(registry: &Registry) -> (IntGaugeVec, IntGaugeVec) {
    let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
        register(registry, IntGaugeVec::new(opts(name, help), labels))
    };
    (
        gauge_vec(
            "build_info",
            "Always 1: the monitor version, kernel release and syscall hook of this node.",
            &["version", "kernel", "hook"],
        ),
        gauge_vec(
            "alerts_queued",
            "Alerts handed to a sink and not yet written (HTTP sinks: waiting in the spool).",
            &["sink"],
        ),
    )
}

/// What the kernel counts instead of reporting: `repeats_total`,
/// `probes_folded_total`, and the gauge `kernel_sandboxes`.
fn counted_in_kernel(registry: &Registry) -> (IntCounter, IntCounter, IntGauge) {
    let counter =
        |name: &str, help: &str| register(registry, IntCounter::with_opts(opts(name, help)));
    (
        counter(
            "repeats_total",
            "Repeated opens (same process, object and access) the kernel counted instead of reporting; part of events_total.",
        ),
        counter(
            "probes_folded_total",
            "Failed opens (ENOENT) the kernel counted instead of reporting (relative names below the action's own sandbox; reads below a files.allow directory): none can be a violation; part of events_total.",
        ),
        register(
            registry,
            IntGauge::with_opts(opts(
                "kernel_sandboxes",
                "Sandboxes whose failed probes the kernel counts now (probes_folded_total).",
            )),
        ),
    )
}

/// Registers a statically defined metric; both steps can only fail on a
/// programming error (bad name, duplicate).
pub(crate) fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("static metric definition is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_contract_metric_with_type() {
        let m = Metrics::new();
        let text = m.render();
        for (name, ty) in [
            ("build_monitor_violations_total", "counter"),
            ("build_monitor_events_total", "counter"),
            ("build_monitor_events_lost_total", "counter"),
            ("build_monitor_actions_active", "gauge"),
            ("build_monitor_actions_total", "counter"),
            ("build_monitor_alerts_dropped_total", "counter"),
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} {ty}\n")),
                "{name} missing:\n{text}"
            );
        }
    }

    #[test]
    fn alerting_series_exist_at_zero() {
        let text = Metrics::new().render();
        for series in [
            r#"build_monitor_events_lost_total{reason="ringbuf_full"} 0"#,
            r#"build_monitor_events_lost_total{reason="decode_error"} 0"#,
            r#"build_monitor_alerts_dropped_total{sink="stdout"} 0"#,
            r#"build_monitor_alerts_dropped_total{sink="file"} 0"#,
            r#"build_monitor_violations_total{kind="undeclared_file",mnemonic="unknown"} 0"#,
            r#"build_monitor_violations_total{kind="network_egress",mnemonic="unknown"} 0"#,
            "build_monitor_actions_active 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }

    #[test]
    fn updates_show_in_render() {
        let m = Metrics::new();
        m.violations_total
            .with_label_values(&["network_egress", "Genrule"])
            .inc_by(2);
        m.actions_active.set(3);
        let text = m.render();
        assert!(text.contains(
            r#"build_monitor_violations_total{kind="network_egress",mnemonic="Genrule"} 2"#
        ));
        assert!(text.contains("build_monitor_actions_active 3"));
    }
}
