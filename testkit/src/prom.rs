//! Reading samples out of Prometheus text format (`prometheus-parse`).
use anyhow::{Context as _, Result};
use prometheus_parse::{Scrape, Value};

/// Parsed `/metrics` text.
pub struct Metrics(Scrape);

impl Metrics {
    pub fn parse(text: &str) -> Result<Metrics> {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Scrape::parse(lines)
            .map(Metrics)
            .context("parsing Prometheus text format")
    }

    /// The sum of the samples of `name` whose labels include all of
    /// `labels`, e.g. `sum("build_monitor_events_total", &[("kind",
    /// "file")])`; 0 when there are none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .filter_map(|s| match s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(v),
                _ => None,
            })
            .sum()
    }

    /// Every metric name with at least one sample.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.samples.iter().map(|s| s.metric.as_str())
    }
}

/// One-shot [`Metrics::sum`] on text (0 for unparsable text is not hidden:
/// it panics, as a broken exposition is a bug).
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    Metrics::parse(text)
        .unwrap_or_else(|e| panic!("{e:#}: {text}"))
        .sum(name, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_matching_samples() {
        let text = "\
# HELP build_monitor_events_total Events.
# TYPE build_monitor_events_total counter
build_monitor_events_total{kind=\"file\"} 12
build_monitor_events_total{kind=\"net\"} 3
# TYPE build_monitor_events_lost_total counter
build_monitor_events_lost_total{reason=\"ringbuf_full\"} 2
build_monitor_events_lost_total{reason=\"other\"} 1
# TYPE build_monitor_violations_total counter
build_monitor_violations_total{kind=\"undeclared_file\",mnemonic=\"Genrule\"} 4
# TYPE build_monitor_actions_active gauge
build_monitor_actions_active 1
";
        let m = Metrics::parse(text).unwrap();
        assert_eq!(
            m.sum("build_monitor_events_total", &[("kind", "file")]),
            12.0
        );
        assert_eq!(m.sum("build_monitor_events_total", &[]), 15.0);
        assert_eq!(m.sum("build_monitor_events_lost_total", &[]), 3.0);
        let both = [("kind", "undeclared_file"), ("mnemonic", "Genrule")];
        assert_eq!(m.sum("build_monitor_violations_total", &both), 4.0);
        let other = [("kind", "undeclared_file"), ("mnemonic", "Javac")];
        assert_eq!(m.sum("build_monitor_violations_total", &other), 0.0);
        assert_eq!(m.sum("build_monitor_actions_active", &[]), 1.0);
        assert_eq!(m.sum("build_monitor_missing", &[]), 0.0);
        assert!(m.names().any(|n| n == "build_monitor_actions_active"));
    }
}
