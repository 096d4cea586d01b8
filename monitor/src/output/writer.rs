//! Alert sinks on a thread of their own: the event loop hands batches over
//! and goes on; a slow stdout, a full disk or a stuck file system never
//! holds up reading or judging. What a sink cannot write it counts
//! (`alerts_dropped_total`).
use std::{
    sync::{Arc, mpsc},
    thread,
    time::SystemTime,
};

use crate::output::{alert::Alert, metrics::Metrics, sinks::AlertSinks};

pub struct SinkWriter {
    batches: Option<mpsc::Sender<Vec<Alert>>>,
    metrics: Arc<Metrics>,
    thread: Option<thread::JoinHandle<()>>,
    /// `alerts_queued{sink}` of the line sinks (stdout, file) this thread
    /// writes: alerts handed over and not written yet.
    queued: Vec<prometheus::IntGauge>,
}

impl SinkWriter {
    pub fn start(mut sinks: AlertSinks, metrics: Arc<Metrics>) -> SinkWriter {
        let queued = sinks.line_sink_queues();
        let written = queued.clone();
        let (batches, received) = mpsc::channel::<Vec<Alert>>();
        let fleet = metrics.clone();
        let thread = thread::Builder::new()
            .name("monitor-sinks".into())
            .spawn(move || {
                for batch in received {
                    sinks.write(&batch);
                    for gauge in &written {
                        gauge.sub(batch.len() as i64);
                    }
                    observe_written(&fleet, &batch);
                }
                sinks.finish();
            })
            .expect("spawning the sink thread");
        SinkWriter {
            batches: Some(batches),
            metrics,
            thread: Some(thread),
            queued,
        }
    }

    pub fn write(&self, alerts: Vec<Alert>) {
        if let Some(batches) = &self.batches {
            for gauge in &self.queued {
                gauge.add(alerts.len() as i64);
            }
            self.metrics
                .fleet
                .alert_queue_depth
                .add(alerts.len() as i64);
            // The thread outlives every sender; a send fails only if it
            // panicked, and then there is nobody to write to anyway.
            let _ = batches.send(alerts);
        }
    }

    /// Writes what is queued, flushes every sink and stops the thread.
    pub fn finish(&mut self) {
        self.batches = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A batch left the queue: its alerts' latency from their first kernel
/// event to now (a clock step backwards counts as 0).
fn observe_written(metrics: &Metrics, batch: &[Alert]) {
    let now = SystemTime::now();
    for alert in batch {
        let latency = now.duration_since(alert.time).unwrap_or_default();
        metrics
            .fleet
            .alert_latency_seconds
            .observe(latency.as_secs_f64());
    }
    metrics.fleet.alert_queue_depth.sub(batch.len() as i64);
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        self.finish();
    }
}
