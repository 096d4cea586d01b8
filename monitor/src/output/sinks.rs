//! Where alerts go: JSON lines on stdout and/or appended to a file (rotated
//! by size when configured), and batches to HTTP receivers through their
//! spools (`output::delivery`). Every line gets an `id` here, the same on
//! every sink, unique across restarts (`<run>-<n>`): receivers de-duplicate
//! retried batches by it.
//!
//! Sinks never fail the monitor: an alert that cannot be written is counted in
//! `build_monitor_alerts_dropped_total{sink}` (nothing lost silently) and the
//! sink keeps trying on later batches, so a log directory that appears late or
//! a disk that frees up heals by itself. Writes are blocking and small; a
//! caller on an async runtime may run `write` in `spawn_blocking`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config;
use crate::output::alert::Alert;
use crate::output::delivery::{Format, HttpDelivery};
use crate::output::metrics::Metrics;

/// This run's prefix of alert ids: start time (µs) and pid, in hex, so ids
/// of a restarted monitor never repeat earlier ones.
fn run_id() -> String {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    format!("{micros:x}{:x}", std::process::id())
}

/// The configured alert outputs.
pub struct AlertSinks {
    stdout: Option<StdoutSink>,
    file: Option<FileSink>,
    http: Vec<HttpDelivery>,
    metrics: Arc<Metrics>,
    /// This run's part of every `id`, and the next sequence number.
    run_id: String,
    next_seq: u64,
}

struct StdoutSink {
    /// An error was logged and no write has succeeded since: log once per outage.
    failing: bool,
}

struct FileSink {
    path: PathBuf,
    file: Option<File>,
    /// (dev, ino) of the open file, to notice logrotate's move-and-create.
    identity: Option<(u64, u64)>,
    failing: bool,
    /// The last write stopped mid-line: the next write first ends that line
    /// so the torn fragment cannot glue itself to a good alert.
    torn: bool,
    /// Rotate before the file would grow past this (0: never), keeping
    /// `keep` old files `<file>.1` (newest) … `<file>.<keep>`.
    max_bytes: u64,
    keep: u32,
}

impl AlertSinks {
    /// Never fails: an alert file that cannot be opened now is reported once,
    /// and opening is retried on every later batch.
    pub fn new(stdout: bool, file: Option<PathBuf>, metrics: Arc<Metrics>) -> AlertSinks {
        let mut file = file.map(|path| FileSink {
            path,
            file: None,
            identity: None,
            failing: false,
            torn: false,
            max_bytes: 0,
            keep: 0,
        });
        if let Some(sink) = &mut file
            && let Err(e) = sink.open()
        {
            sink.report(&e);
        }
        AlertSinks {
            stdout: stdout.then_some(StdoutSink { failing: false }),
            file,
            http: Vec::new(),
            metrics,
            run_id: run_id(),
            next_seq: 1,
        }
    }

    /// The sinks `[alerts]` configures. Errors (an HTTP sink's spool, token
    /// or CA file) are configuration errors.
    pub fn from_config(cfg: &config::Alerts, metrics: Arc<Metrics>) -> anyhow::Result<AlertSinks> {
        let mut sinks = AlertSinks::new(cfg.stdout, cfg.file.clone(), metrics.clone());
        if let Some(file) = &mut sinks.file {
            file.max_bytes = cfg.file_max_bytes;
            file.keep = cfg.file_keep;
        }
        for (format, sink) in [
            (Format::Webhook, &cfg.webhook),
            (Format::Alertmanager, &cfg.alertmanager),
        ] {
            if let Some(sink) = sink {
                sinks
                    .http
                    .push(HttpDelivery::start(format, sink, metrics.clone())?);
            }
        }
        Ok(sinks)
    }

    /// Writes one JSON line per alert to every enabled sink, the batch in one
    /// write so lines are never interleaved or split by other writers.
    pub fn write(&mut self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let lines: Vec<String> = alerts
            .iter()
            .map(|alert| {
                let id = format!("{}-{}", self.run_id, self.next_seq);
                self.next_seq += 1;
                alert.to_json_line_with_id(Some(&id))
            })
            .collect();
        for http in &self.http {
            http.push(&lines);
        }
        if self.stdout.is_none() && self.file.is_none() {
            return;
        }
        let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
        for line in &lines {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
        let n = alerts.len() as u64;

        if let Some(sink) = &mut self.stdout {
            let result = {
                // Locked for the whole batch: no other thread's output in between.
                let mut out = io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            };
            match result {
                Ok(()) => {
                    sink.failing = false;
                    self.count(true, "stdout", n);
                }
                Err(e) => {
                    if !sink.failing {
                        log::error!(
                            "cannot write alerts to stdout: {e}; they are counted in \
                             build_monitor_alerts_dropped_total{{sink=\"stdout\"}}"
                        );
                        sink.failing = true;
                    }
                    self.count(false, "stdout", n);
                }
            }
        }

        if let Some(sink) = &mut self.file {
            let ok = match sink.write(&buf) {
                Ok(()) => {
                    if sink.failing {
                        log::info!("alert file {} is writable again", sink.path.display());
                        sink.failing = false;
                    }
                    true
                }
                Err(e) => {
                    sink.report(&e);
                    false
                }
            };
            self.count(ok, "file", n);
        }
    }

    /// The `alerts_queued` gauges of the enabled line sinks (stdout, file),
    /// for the sink thread to keep.
    pub fn line_sink_queues(&self) -> Vec<prometheus::IntGauge> {
        [
            ("stdout", self.stdout.is_some()),
            ("file", self.file.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(sink, _)| self.metrics.alerts_queued.with_label_values(&[sink]))
        .collect()
    }

    /// At stop: the HTTP sinks deliver what their receivers take now and
    /// keep the rest spooled.
    pub fn finish(&mut self) {
        self.flush();
        for http in &mut self.http {
            http.finish();
        }
    }

    /// Flushes every sink (each batch is already flushed; for shutdown paths).
    pub fn flush(&mut self) {
        if self.stdout.is_some() {
            let _ = io::stdout().lock().flush();
        }
        if let Some(f) = self.file.as_mut().and_then(|s| s.file.as_mut()) {
            let _ = f.flush();
        }
    }

    fn count(&self, ok: bool, sink: &str, n: u64) {
        let vec = if ok {
            &self.metrics.alerts_total
        } else {
            &self.metrics.alerts_dropped_total
        };
        vec.with_label_values(&[sink]).inc_by(n);
    }
}

impl FileSink {
    fn open(&mut self) -> io::Result<&mut File> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        self.identity = Some((meta.dev(), meta.ino()));
        // A torn line only matters if we are appending to the file that has it.
        self.torn &= meta.len() > 0;
        Ok(self.file.insert(file))
    }

    /// The open file, reopened when the path now names another file (or none):
    /// after logrotate, alerts go to the new file, not the renamed old one.
    fn current(&mut self) -> io::Result<&mut File> {
        let same = match (&self.file, std::fs::metadata(&self.path)) {
            (Some(_), Ok(meta)) => self.identity == Some((meta.dev(), meta.ino())),
            _ => false,
        };
        if same {
            Ok(self.file.as_mut().expect("checked above"))
        } else {
            self.file = None;
            self.open()
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        let result = self.try_write(buf);
        if result.is_err() {
            // Start from a fresh open next time (the file may have gone away).
            self.file = None;
        }
        result
    }

    /// Moves `<file>` to `<file>.1` (and older ones one up, dropping the
    /// oldest) when `buf` would take it past `max_bytes`.
    fn rotate_if_full(&mut self, incoming: usize) -> io::Result<()> {
        if self.max_bytes == 0 {
            return Ok(());
        }
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        if size == 0 || size + incoming as u64 <= self.max_bytes {
            return Ok(());
        }
        let numbered = |i: u32| {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{i}"));
            PathBuf::from(p)
        };
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for i in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(i), numbered(i + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = None;
        self.torn = false;
        Ok(())
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.rotate_if_full(buf.len())?;
        let torn = self.torn;
        let file = self.current()?;
        if torn {
            file.write_all(b"\n")?;
        }
        self.torn = false;
        let file = self.file.as_mut().expect("opened by current()");
        let mut written = 0;
        while written < buf.len() {
            match file.write(&buf[written..]) {
                Ok(0) => {
                    self.torn = true;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.torn = written > 0;
                    return Err(e);
                }
            }
        }
        file.flush()
    }

    fn report(&mut self, e: &io::Error) {
        if !self.failing {
            log::error!(
                "cannot write alerts to {}: {e}; they are counted in \
                 build_monitor_alerts_dropped_total{{sink=\"file\"}} and writing is retried",
                self.path.display()
            );
            self.failing = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::alert::{ActionInfo, AlertKind, FileInfo, ProcessInfo, Verdict};
    use std::time::SystemTime;

    fn alert(path: &str) -> Alert {
        Alert {
            time: SystemTime::now(),
            kind: AlertKind::UndeclaredFile,
            action: ActionInfo {
                id: "a1".into(),
                cgroup: "/sys/fs/cgroup/unified/build/a1".into(),
                cgroup_id: 7,
                label: Some("//pkg:t".into()),
                mnemonic: Some("Genrule".into()),
                worker: None,
            },
            process: ProcessInfo {
                pid: 2,
                ppid: 1,
                comm: "cat".into(),
                exe: None,
            },
            file: Some(FileInfo {
                path: path.as_bytes().to_vec(),
                op: "open",
                flags: 0,
                result: 3,
                caveat: None,
                requested: None,
                dev: None,
                ino: None,
                note: None,
            }),
            net: None,
            verdict: Verdict::Observed,
            count: 1,
            cache_risk: None,
            fetch: None,
            summary: None,
        }
    }

    fn counter(m: &Metrics, written: bool, sink: &str) -> u64 {
        let vec = if written {
            &m.alerts_total
        } else {
            &m.alerts_dropped_total
        };
        vec.with_label_values(&[sink]).get()
    }

    fn lines(path: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    #[test]
    fn file_gets_one_json_line_per_alert() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let metrics = Arc::new(Metrics::new());
        let mut sinks = AlertSinks::new(false, Some(path.clone()), metrics.clone());
        sinks.write(&[alert("/a"), alert("/b\nc")]);
        sinks.write(&[alert("/d")]);
        sinks.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 3);
        let paths: Vec<_> = got
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["file"]["path"].clone())
            .collect();
        assert_eq!(paths, ["/a", "/b\nc", "/d"]);
        assert_eq!(counter(&metrics, true, "file"), 3);
        assert_eq!(counter(&metrics, false, "file"), 0);
    }

    #[test]
    fn existing_content_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, "{\"old\":1}\n").unwrap();
        let mut sinks = AlertSinks::new(false, Some(path.clone()), Arc::new(Metrics::new()));
        sinks.write(&[alert("/a")]);
        let got = lines(&path);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], "{\"old\":1}");
        assert!(got[1].starts_with("{\"schema\":\"monitor.alert/v1\""));
    }

    #[test]
    fn unwritable_path_counts_drops() {
        let metrics = Arc::new(Metrics::new());
        let mut sinks = AlertSinks::new(
            false,
            Some(PathBuf::from("/proc/nonexistent/x")),
            metrics.clone(),
        );
        sinks.write(&[alert("/a"), alert("/b"), alert("/c")]);
        sinks.write(&[alert("/d")]);
        sinks.flush();
        assert_eq!(counter(&metrics, false, "file"), 4);
        assert_eq!(counter(&metrics, true, "file"), 0);
    }

    #[test]
    fn file_opened_once_its_directory_appears() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later").join("alerts.jsonl");
        let metrics = Arc::new(Metrics::new());
        let mut sinks = AlertSinks::new(false, Some(path.clone()), metrics.clone());
        sinks.write(&[alert("/lost")]);
        std::fs::create_dir(dir.path().join("later")).unwrap();
        sinks.write(&[alert("/kept")]);
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(counter(&metrics, false, "file"), 1);
        assert_eq!(counter(&metrics, true, "file"), 1);
    }

    #[test]
    fn rotated_file_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let old = dir.path().join("alerts.jsonl.1");
        let mut sinks = AlertSinks::new(false, Some(path.clone()), Arc::new(Metrics::new()));
        sinks.write(&[alert("/a")]);
        std::fs::rename(&path, &old).unwrap();
        sinks.write(&[alert("/b")]);
        assert_eq!(lines(&old).len(), 1);
        let new = lines(&path);
        assert_eq!(new.len(), 1);
        assert!(new[0].contains("\"path\":\"/b\""));
    }

    #[test]
    fn file_rotates_by_size_and_keeps_a_bounded_number() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let cfg = config::Alerts {
            stdout: false,
            file: Some(path.clone()),
            file_max_bytes: 2000,
            file_keep: 2,
            ..Default::default()
        };
        let metrics = Arc::new(Metrics::new());
        let mut sinks = AlertSinks::from_config(&cfg, metrics.clone()).unwrap();
        for i in 0..40 {
            sinks.write(&[alert(&format!("/f{i}"))]);
        }
        let mut total = 0;
        let mut ids = Vec::new();
        for name in ["alerts.jsonl", "alerts.jsonl.1", "alerts.jsonl.2"] {
            let p = dir.path().join(name);
            assert!(std::fs::metadata(&p).unwrap().len() <= 2000, "{name}");
            for l in lines(&p) {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                ids.push(v["id"].as_str().unwrap().to_string());
                total += 1;
            }
        }
        assert!(!dir.path().join("alerts.jsonl.3").exists());
        assert!(
            (3..40).contains(&total),
            "{total}: older files were dropped"
        );
        assert_eq!(counter(&metrics, true, "file"), 40);
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), total, "ids are unique");
    }
}
