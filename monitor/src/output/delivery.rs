//! HTTP alert sinks (`[alerts.webhook]`, `[alerts.alertmanager]`): the sink
//! thread appends each batch to the sink's spool and returns at once; a
//! delivery thread of the sink's own POSTs from the spool, in order, and
//! moves the spool's cursor only once the receiver answered 2xx. A receiver
//! that is down or slow costs retries (with backoff), never the event path.
//! Alerts that do not fit in the spool, and batches a receiver rejects for
//! good (a 4xx other than 408/429), are counted in
//! `build_monitor_alerts_dropped_total{sink}`.
use std::{
    io::Read as _,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use crate::{
    config::HttpSink,
    output::{
        metrics::Metrics,
        spool::{Peeked, Spool},
    },
};

/// What the receiver expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A JSON array of alert objects, as written on the other sinks.
    Webhook,
    /// Alertmanager's v2 API (`POST /api/v2/alerts`).
    Alertmanager,
}

impl Format {
    pub fn sink_name(self) -> &'static str {
        match self {
            Format::Webhook => "webhook",
            Format::Alertmanager => "alertmanager",
        }
    }
}

const BACKOFF_FIRST: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

struct Shared {
    spool: Mutex<Spool>,
    /// Signalled on new lines and at stop.
    wake: Condvar,
    stop: std::sync::atomic::AtomicBool,
}

/// The sink thread's handle on one HTTP sink.
pub struct HttpDelivery {
    format: Format,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
    thread: Option<thread::JoinHandle<()>>,
}

struct Sender {
    format: Format,
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    batch_max: usize,
    shared: Arc<Shared>,
    metrics: Arc<Metrics>,
}

impl HttpDelivery {
    /// Opens the spool and starts delivering what it holds (from a previous
    /// run too). Errors (unreadable token or CA file, spool not writable)
    /// are configuration errors.
    pub fn start(format: Format, cfg: &HttpSink, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let name = format.sink_name();
        let spool = Spool::open(&cfg.spool_dir, cfg.spool_max_bytes)
            .with_context(|| format!("alerts.{name}.spool_dir: {}", cfg.spool_dir.display()))?;
        let token = match &cfg.bearer_token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| {
                        format!("alerts.{name}.bearer_token_file: {}", path.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let agent = agent(cfg).with_context(|| format!("alerts.{name}"))?;
        let url = match format {
            Format::Webhook => cfg.url.clone(),
            Format::Alertmanager => format!("{}/api/v2/alerts", cfg.url.trim_end_matches('/')),
        };
        if spool.queued_bytes() > 0 {
            log::info!(
                "{name}: {} bytes of alerts spooled in {} from before; delivering them first",
                spool.queued_bytes(),
                cfg.spool_dir.display()
            );
        }
        set_queued(&metrics, format, &spool);
        let shared = Arc::new(Shared {
            spool: Mutex::new(spool),
            wake: Condvar::new(),
            stop: false.into(),
        });
        let sender = Sender {
            format,
            url,
            token,
            agent,
            batch_max: cfg.batch_max,
            shared: shared.clone(),
            metrics: metrics.clone(),
        };
        let thread = thread::Builder::new()
            .name(format!("monitor-{name}"))
            .spawn(move || sender.run())
            .context("spawning the delivery thread")?;
        Ok(HttpDelivery {
            format,
            shared,
            metrics,
            thread: Some(thread),
        })
    }

    /// Queues alert lines (each with its `id`); never waits for the network.
    pub fn push(&self, lines: &[String]) {
        let name = self.format.sink_name();
        let mut spool = lock(&self.shared.spool);
        let dropped = match spool.push(lines) {
            Ok(dropped) => dropped,
            Err(e) => {
                log::error!("{name}: cannot write to the spool: {e}; alerts dropped");
                lines.len()
            }
        };
        set_queued(&self.metrics, self.format, &spool);
        drop(spool);
        if dropped > 0 {
            log::warn!("{name}: spool full, {dropped} alert(s) dropped");
            self.metrics
                .alerts_dropped_total
                .with_label_values(&[name])
                .inc_by(dropped as u64);
        }
        self.shared.wake.notify_all();
    }

    /// Stops after delivering what the receiver takes now; the rest stays
    /// spooled for the next start.
    pub fn finish(&mut self) {
        self.shared
            .stop
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpDelivery {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `alerts_queued{sink}`: what waits in the spool.
fn set_queued(metrics: &Metrics, format: Format, spool: &Spool) {
    metrics
        .alerts_queued
        .with_label_values(&[format.sink_name()])
        .set(spool.queued_lines() as i64);
}

fn lock(spool: &Mutex<Spool>) -> MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|e| e.into_inner())
}

/// The HTTP client: rustls with the given CA file, else the system's roots.
fn agent(cfg: &HttpSink) -> anyhow::Result<ureq::Agent> {
    use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
    let roots: Vec<Certificate<'static>> = match &cfg.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("ca_file: {}", path.display()))?;
            let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            anyhow::ensure!(
                !certs.is_empty(),
                "ca_file: no PEM certificate in {}",
                path.display()
            );
            certs
        }
        None => rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|der| Certificate::from_der(der.as_ref()).to_owned())
            .collect(),
    };
    let tls = TlsConfig::builder()
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .build();
    let config = ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_millis(cfg.timeout_ms.max(1))))
        .build();
    Ok(config.into())
}

/// How one POST went.
enum Outcome {
    Delivered,
    /// The receiver refused the batch for good (4xx but 408/429).
    Rejected(u16),
    /// Try again later.
    Failed(String),
}

impl Sender {
    fn run(self) {
        let name = self.format.sink_name();
        let mut backoff = BACKOFF_FIRST;
        let mut failing = false;
        loop {
            let Some(batch) = self.next_batch() else {
                return;
            };
            let n = batch.lines.len() as u64;
            match self.post(&batch.lines) {
                Outcome::Delivered => {
                    if failing {
                        log::info!("{name}: receiver is back; delivering the spool");
                        failing = false;
                    }
                    backoff = BACKOFF_FIRST;
                    self.commit(&batch);
                    self.metrics
                        .alerts_total
                        .with_label_values(&[name])
                        .inc_by(n);
                }
                Outcome::Rejected(status) => {
                    log::error!(
                        "{name}: receiver rejected {n} alert(s) with HTTP {status}; dropped"
                    );
                    self.commit(&batch);
                    self.metrics
                        .alerts_dropped_total
                        .with_label_values(&[name])
                        .inc_by(n);
                }
                Outcome::Failed(why) => {
                    if !failing {
                        log::warn!(
                            "{name}: cannot deliver alerts ({why}); they stay spooled and are retried"
                        );
                        failing = true;
                    }
                    if self.stopping() || !self.sleep(backoff) {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.shared.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The next lines to send; `None` once stopping with nothing left.
    fn next_batch(&self) -> Option<Peeked> {
        let mut spool = lock(&self.shared.spool);
        loop {
            match spool.peek(self.batch_max) {
                Ok(p) if !p.lines.is_empty() => return Some(p),
                Ok(_) => {}
                Err(e) => log::error!("{}: cannot read the spool: {e}", self.format.sink_name()),
            }
            if self.stopping() {
                return None;
            }
            spool = self
                .shared
                .wake
                .wait_timeout(spool, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn commit(&self, batch: &Peeked) {
        let mut spool = lock(&self.shared.spool);
        if let Err(e) = spool.commit(batch.next, batch.lines.len()) {
            log::error!(
                "{}: cannot move the spool cursor: {e}",
                self.format.sink_name()
            );
        }
        set_queued(&self.metrics, self.format, &spool);
    }

    /// Waits `d` unless stopping; false when stopping.
    fn sleep(&self, d: Duration) -> bool {
        let spool = lock(&self.shared.spool);
        let _ = self
            .shared
            .wake
            .wait_timeout_while(spool, d, |_| !self.stopping());
        !self.stopping()
    }

    fn post(&self, lines: &[String]) -> Outcome {
        let body = match self.format {
            Format::Webhook => webhook_body(lines),
            Format::Alertmanager => crate::output::alertmanager::body(lines),
        };
        let mut request = self.agent.post(&self.url).content_type("application/json");
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        match request.send(body.as_bytes()) {
            Ok(mut response) => {
                let status = response.status().as_u16();
                // Read the (small) answer so the connection can be reused.
                let _ = response
                    .body_mut()
                    .as_reader()
                    .take(64 << 10)
                    .read_to_end(&mut Vec::new());
                match status {
                    200..=299 => Outcome::Delivered,
                    408 | 429 => Outcome::Failed(format!("HTTP {status}")),
                    400..=499 => Outcome::Rejected(status),
                    _ => Outcome::Failed(format!("HTTP {status}")),
                }
            }
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }
}

/// `[line, line, …]`: the lines are JSON objects already.
fn webhook_body(lines: &[String]) -> String {
    let mut body = String::with_capacity(lines.iter().map(|l| l.len() + 1).sum::<usize>() + 2);
    body.push('[');
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(line);
    }
    body.push(']');
    body
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        net::TcpListener,
        path::PathBuf,
        sync::Mutex,
        time::Instant,
    };

    use super::*;

    /// A loopback HTTP server answering the given statuses in turn and
    /// recording each request body.
    fn server(statuses: Vec<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        thread::spawn(move || {
            for (stream, status) in listener.incoming().zip(statuses) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                std::io::Read::read_exact(&mut reader, &mut body).unwrap();
                seen.lock().unwrap().push(String::from_utf8(body).unwrap());
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
            }
        });
        (port, bodies)
    }

    fn sink(port: u16, spool: PathBuf) -> HttpSink {
        HttpSink {
            url: format!("http://127.0.0.1:{port}/hook"),
            bearer_token_file: None,
            ca_file: None,
            spool_dir: spool,
            spool_max_bytes: 1 << 20,
            batch_max: 2,
            timeout_ms: 5000,
        }
    }

    #[test]
    fn retries_a_failed_batch_and_drops_a_rejected_one() {
        let (port, bodies) = server(vec![503, 200, 400]);
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let cfg = sink(port, dir.path().join("spool"));
        let mut d = HttpDelivery::start(Format::Webhook, &cfg, metrics.clone()).unwrap();
        let lines: Vec<String> = (0..4).map(|n| format!("{{\"n\":{n}}}")).collect();
        d.push(&lines);
        let deadline = Instant::now() + Duration::from_secs(20);
        while bodies.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", bodies.lock().unwrap());
            thread::sleep(Duration::from_millis(20));
        }
        d.finish();
        let got = bodies.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "[{\"n\":0},{\"n\":1}]",
                "[{\"n\":0},{\"n\":1}]",
                "[{\"n\":2},{\"n\":3}]"
            ]
        );
        let count = |v: &prometheus::IntCounterVec| v.with_label_values(&["webhook"]).get();
        assert_eq!(count(&metrics.alerts_total), 2);
        assert_eq!(count(&metrics.alerts_dropped_total), 2);
        let spool = Spool::open(&cfg.spool_dir, 1 << 20).unwrap();
        assert_eq!(
            spool.queued_bytes(),
            0,
            "everything answered is off the spool"
        );
    }

    #[test]
    fn a_bad_ca_file_or_token_file_is_a_configuration_error() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new());
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let mut cfg = sink(1, dir.path().join("spool"));
        cfg.ca_file = Some(garbage);
        let e = HttpDelivery::start(Format::Webhook, &cfg, metrics.clone())
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("no PEM certificate"), "{e:#}");
        cfg.ca_file = None;
        cfg.bearer_token_file = Some(dir.path().join("missing"));
        let e = HttpDelivery::start(Format::Alertmanager, &cfg, metrics)
            .err()
            .unwrap();
        assert!(
            format!("{e:#}").contains("alerts.alertmanager.bearer_token_file"),
            "{e:#}"
        );
    }
}
