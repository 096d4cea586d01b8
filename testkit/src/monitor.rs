//! A real monitor daemon (`monitor run --config …`) for tests and tools:
//! started on a free metrics port (another one if that was taken meanwhile),
//! healthy once `/healthz` answers, stopped with SIGTERM.
use std::{
    fs, io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{
    daemon::Daemon,
    http,
    ports::{Attempt, on_free_port},
    prom::Metrics,
    wait::poll_until,
};

/// What the monitor prints when `metrics.listen` cannot be bound (it then
/// exits 2).
const CANNOT_LISTEN: &str = "metrics.listen: cannot listen on";

pub struct Monitor {
    daemon: Daemon,
    /// The `/metrics` and `/healthz` address.
    pub metrics: SocketAddr,
    /// The alerts file the config names.
    pub alerts: PathBuf,
    /// Where the monitor's stderr goes.
    pub stderr: PathBuf,
}

/// How a stopped monitor ended.
pub struct Stopped {
    pub status: ExitStatus,
    /// Every alert in the alerts file.
    pub alerts: Vec<Value>,
    pub stderr: String,
}

impl Monitor {
    /// Runs `base` (the monitor binary with any environment and stdout set)
    /// as `… run --config <dir>/<tag>.toml`, the config being `config(metrics
    /// address)`, and waits up to `timeout` for `/healthz`. `alerts` is the
    /// alerts file the config names.
    pub fn start(
        base: impl Fn() -> Command,
        dir: &Path,
        tag: &str,
        config: impl Fn(SocketAddr) -> String,
        alerts: &Path,
        timeout: Duration,
    ) -> Result<Monitor> {
        on_free_port(5, |port| {
            Self::start_on(port, &base, dir, tag, &config, alerts, timeout)
        })
    }

    /// One attempt of [`Monitor::start`] on `port`: `PortTaken` if the
    /// monitor could not listen there (it exits 2 naming `metrics.listen`).
    pub fn start_on(
        port: u16,
        base: &dyn Fn() -> Command,
        dir: &Path,
        tag: &str,
        config: &dyn Fn(SocketAddr) -> String,
        alerts: &Path,
        timeout: Duration,
    ) -> Result<Attempt<Monitor>> {
        let config_path = dir.join(format!("{tag}.toml"));
        let stderr = dir.join(format!("{tag}.stderr"));
        let metrics = SocketAddr::from(([127, 0, 0, 1], port));
        fs::write(&config_path, config(metrics))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let stderr_file =
            fs::File::create(&stderr).with_context(|| format!("creating {}", stderr.display()))?;
        let mut cmd = base();
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .stderr(stderr_file);
        let mut monitor = Monitor {
            daemon: Daemon::spawn("the monitor", &mut cmd)?,
            metrics,
            alerts: alerts.to_path_buf(),
            stderr,
        };
        match monitor.wait_healthy(timeout) {
            Ok(()) => Ok(Attempt::Started(monitor)),
            Err(_) if monitor.stderr_text().contains(CANNOT_LISTEN) => {
                Ok(Attempt::PortTaken(monitor.stderr_text()))
            }
            Err(error) => Err(error),
        }
    }

    /// Waits until `/healthz` answers 200; fails early if the monitor exits.
    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        wait_healthz(&mut self.daemon, self.metrics, timeout).with_context(|| self.stderr_text())
    }

    /// What the monitor has printed to stderr so far.
    pub fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The monitor's own process, e.g. for `Daemon::try_wait`.
    pub fn daemon(&mut self) -> &mut Daemon {
        &mut self.daemon
    }

    /// The daemon's pid (0 once it was waited for).
    pub fn pid(&self) -> u32 {
        self.daemon.id()
    }

    pub fn metrics_text(&self) -> Result<String> {
        http::metrics_text(self.metrics)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        Metrics::parse(&self.metrics_text()?)
    }

    /// Polls `/metrics` until `condition` accepts it; the last metrics.
    pub fn wait_for_metrics(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let mut last = None;
        let met = poll_until(timeout, || {
            let metrics = self.metrics().ok()?;
            if condition(&metrics) {
                return Some(metrics);
            }
            last = Some(metrics);
            None
        });
        met.with_context(|| {
            format!(
                "{what}: not seen in /metrics within {timeout:?}; last: {}",
                self.metrics_text().unwrap_or_default()
            )
        })
    }

    /// Polls the alerts file until `condition` accepts the alerts written
    /// so far (complete lines only); those alerts.
    pub fn wait_for_alerts(
        &self,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        poll_until(timeout, || {
            let alerts = complete_alerts(&self.alerts).ok()?;
            condition(&alerts).then_some(alerts)
        })
        .with_context(|| {
            format!(
                "{what}: not in {} within {timeout:?}; alerts so far: {:#?}; stderr: {}",
                self.alerts.display(),
                complete_alerts(&self.alerts).unwrap_or_default(),
                self.stderr_text()
            )
        })
    }

    /// SIGTERM, wait up to `timeout` for the exit; the status, every alert
    /// written and the stderr.
    pub fn stop(self, timeout: Duration) -> Result<Stopped> {
        let status = self.daemon.stop(libc::SIGTERM, timeout)?;
        Ok(Stopped {
            status,
            alerts: read_alerts(&self.alerts)?,
            stderr: fs::read_to_string(&self.stderr).unwrap_or_default(),
        })
    }
}

/// Waits until `GET /healthz` on `addr` answers 200 (the monitor serves it
/// once its kernel programs are attached); fails early, with the exit
/// status, if `daemon` exits first.
pub fn wait_healthz(daemon: &mut Daemon, addr: SocketAddr, timeout: Duration) -> Result<()> {
    let mut last = String::from("no answer yet");
    let outcome = poll_until(timeout, || {
        match daemon.try_wait() {
            Ok(Some(status)) => return Some(Err(status)),
            Ok(None) => {}
            Err(error) => last = format!("{error:#}"),
        }
        match http::get(addr, "/healthz", Duration::from_secs(2)) {
            Ok((200, _)) => return Some(Ok(())),
            Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
            Err(error) => last = format!("{error:#}"),
        }
        None
    });
    match outcome {
        Some(Ok(())) => Ok(()),
        Some(Err(status)) => bail!(
            "{} exited ({status}) before http://{addr}/healthz answered",
            daemon.name()
        ),
        None => bail!("http://{addr}/healthz did not answer 200 within {timeout:?} (last: {last})"),
    }
}

/// Every alert (one JSON object a line) in `path`; none if it does not
/// exist (the monitor creates it with the first alert).
pub fn read_alerts(path: &Path) -> Result<Vec<Value>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    parse_alerts(&text, path)
}

/// As [`read_alerts`], ignoring a last line still being written.
fn complete_alerts(path: &Path) -> Result<Vec<Value>> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..=end]);
    parse_alerts(complete, path)
}

fn parse_alerts(text: &str, path: &Path) -> Result<Vec<Value>> {
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .with_context(|| format!("an alert line in {} is not JSON: {line}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_complete_alert_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        assert!(read_alerts(&path).unwrap().is_empty());
        fs::write(&path, "{\"kind\":\"a\"}\n{\"kind\":\"b\"}\n{\"ki").unwrap();
        let alerts = complete_alerts(&path).unwrap();
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[1]["kind"], "b");
        assert!(read_alerts(&path).is_err(), "a broken line is an error");
    }
}
