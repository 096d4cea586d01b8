//! Alert sinks on a thread of their own: the event loop hands batches over
//! and goes on; a slow stdout, a full disk or a stuck file system never
//! holds up reading or judging. What a sink cannot write it counts
//! (`alerts_dropped_total`).
use std::{sync::mpsc, thread};

use crate::output::{alert::Alert, sinks::AlertSinks};

pub struct SinkWriter {
    batches: Option<mpsc::Sender<Vec<Alert>>>,
    thread: Option<thread::JoinHandle<()>>,
    /// `alerts_queued{sink}` of the line sinks (stdout, file) this thread
    /// writes: alerts handed over and not written yet.
    queued: Vec<prometheus::IntGauge>,
}

impl SinkWriter {
    pub fn start(mut sinks: AlertSinks) -> SinkWriter {
        let queued = sinks.line_sink_queues();
        let written = queued.clone();
        let (batches, received) = mpsc::channel::<Vec<Alert>>();
        let thread = thread::Builder::new()
            .name("monitor-sinks".into())
            .spawn(move || {
                for batch in received {
                    sinks.write(&batch);
                    for gauge in &written {
                        gauge.sub(batch.len() as i64);
                    }
                }
                sinks.finish();
            })
            .expect("spawning the sink thread");
        SinkWriter {
            batches: Some(batches),
            thread: Some(thread),
            queued,
        }
    }

    pub fn write(&self, alerts: Vec<Alert>) {
        if let Some(batches) = &self.batches {
            for gauge in &self.queued {
                gauge.add(alerts.len() as i64);
            }
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

impl Drop for SinkWriter {
    fn drop(&mut self) {
        self.finish();
    }
}
