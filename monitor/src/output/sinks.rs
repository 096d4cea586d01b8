//! Where alerts go: JSON lines on stdout and/or appended to a file.
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

use crate::output::alert::Alert;
use crate::output::metrics::Metrics;

/// The configured alert outputs.
pub struct AlertSinks {
    stdout: Option<StdoutSink>,
    file: Option<FileSink>,
    metrics: Arc<Metrics>,
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
        });
        if let Some(sink) = &mut file
            && let Err(e) = sink.open()
        {
            sink.report(&e);
        }
        AlertSinks {
            stdout: stdout.then_some(StdoutSink { failing: false }),
            file,
            metrics,
        }
    }

    /// Writes one JSON line per alert to every enabled sink, the batch in one
    /// write so lines are never interleaved or split by other writers.
    pub fn write(&mut self, alerts: &[Alert]) {
        if alerts.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(alerts.len() * 512);
        for alert in alerts {
            buf.extend_from_slice(alert.to_json_line().as_bytes());
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

    fn try_write(&mut self, buf: &[u8]) -> io::Result<()> {
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
}
