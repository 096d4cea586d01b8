//! Prometheus metrics (contract: docs/metrics.md) and the
//! small HTTP endpoint that serves them.
//!
//! The server is hand-rolled on tokio: it answers two fixed GET paths, one
//! request per connection, so a full HTTP stack would only add dependencies.
//! Every connection runs in its own task under a deadline, so a slow or silent
//! scraper never holds up the others or the monitor.

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const NAMESPACE: &str = "build_monitor";

/// Largest request head accepted; `/metrics` scrapes need a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing the response may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the client to close after the response.
const LINGER_TIMEOUT: Duration = Duration::from_secs(2);

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
            let c = IntCounterVec::new(Opts::new(name, help).namespace(NAMESPACE), labels)
                .expect("static metric definition is valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let violations_total = counter_vec(
            "violations_total",
            "Accesses an action made that it did not declare or the policy does not allow.",
            &["kind", "mnemonic"],
        );
        let events_total = counter_vec(
            "events_total",
            "Kernel events received from monitored actions.",
            &["kind"],
        );
        let events_lost_total = counter_vec(
            "events_lost_total",
            "Kernel events lost before a verdict; a non-zero rate means violations may be missed.",
            &["reason"],
        );
        let actions_total = counter_vec(
            "actions_total",
            "Build actions that started under monitoring.",
            &["mnemonic"],
        );
        let alerts_dropped_total = counter_vec(
            "alerts_dropped_total",
            "Alerts a sink failed to write; those alerts are lost.",
            &["sink"],
        );
        let alerts_total = counter_vec(
            "alerts_total",
            "Alerts a sink wrote successfully.",
            &["sink"],
        );
        let actions_active = IntGauge::with_opts(
            Opts::new(
                "actions_active",
                "Build actions currently running under monitoring.",
            )
            .namespace(NAMESPACE),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(actions_active.clone()))
            .expect("metric names are unique");
        let declarations_invalid_total = IntCounter::with_opts(
            Opts::new(
                "declarations_invalid_total",
                "Action declaration files that could not be read or parsed.",
            )
            .namespace(NAMESPACE),
        )
        .expect("static metric definition is valid");
        registry
            .register(Box::new(declarations_invalid_total.clone()))
            .expect("metric names are unique");

        // Series that alert rules use must exist from the start: an absent
        // series makes `rate()`/`increase()` silently evaluate to nothing.
        for reason in ["ringbuf_full", "lineage_full", "decode_error"] {
            events_lost_total.with_label_values(&[reason]);
        }
        for sink in ["stdout", "file"] {
            alerts_dropped_total.with_label_values(&[sink]);
            alerts_total.with_label_values(&[sink]);
        }
        for kind in ["undeclared_file", "network_egress"] {
            violations_total.with_label_values(&[kind, "unknown"]);
        }
        // A vector with no series is not exported at all; these make every
        // contract family visible (and `absent()`-checkable) before traffic.
        for kind in ["file", "net", "exec", "exit"] {
            events_total.with_label_values(&[kind]);
        }
        actions_total.with_label_values(&["unknown"]);

        Metrics {
            registry,
            violations_total,
            events_total,
            events_lost_total,
            actions_active,
            actions_total,
            alerts_dropped_total,
            alerts_total,
            declarations_invalid_total,
        }
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

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` becomes
/// true (or its sender is dropped, since then nobody could stop us).
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle(stream, Arc::clone(&metrics)));
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on it.
                    log::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One request, one response, then close.
async fn handle(mut stream: TcpStream, metrics: Arc<Metrics>) {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => plain(408, "Request Timeout", "request timed out\n"),
        Ok(Err(HeadError::TooLarge)) => plain(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Ok(Err(HeadError::Io)) => return,
        Ok(Ok(head)) => respond(&head, &metrics),
    };
    let write = async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    };
    let written = tokio::time::timeout(WRITE_TIMEOUT, write).await;
    if !matches!(written, Ok(Ok(()))) {
        log::debug!("metrics endpoint: could not write the response: {written:?}");
        return;
    }
    // Lingering close: closing with unread input makes the kernel send a RST,
    // which can destroy the response before the client has read it.
    let drain = async {
        let mut scratch = [0u8; 1024];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIMEOUT, drain).await;
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads until the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
        match stream.read(&mut chunk).await {
            Ok(0) if buf.is_empty() => return Err(HeadError::Io),
            // Peer closed after a partial head: answer what we have (likely 400).
            Ok(0) => return Ok(buf),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return Err(HeadError::Io),
        }
    }
}

fn respond(head: &[u8], metrics: &Metrics) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line)
        .unwrap_or("")
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return plain(400, "Bad Request", "bad request\n");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return plain(400, "Bad Request", "bad request\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return response(
                405,
                "Method Not Allowed",
                "text/plain; charset=utf-8",
                "method not allowed\n",
                false,
            );
        }
    };
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => response(
            200,
            "OK",
            prometheus::TEXT_FORMAT,
            &metrics.render(),
            head_only,
        ),
        "/healthz" => response(200, "OK", "text/plain; charset=utf-8", "ok\n", head_only),
        _ => response(
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            "not found\n",
            head_only,
        ),
    }
}

fn plain(code: u16, reason: &str, body: &str) -> Vec<u8> {
    response(code, reason, "text/plain; charset=utf-8", body, false)
}

fn response(code: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let allow = if code == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         {allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
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

    async fn fetch(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_errors() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.events_total.with_label_values(&["file"]).inc();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, metrics, rx));

        // A silent client must not block the others.
        let _silent = TcpStream::connect(addr).await.unwrap();

        let r = fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Connection: close\r\n"));
        assert!(
            r.contains(r#"build_monitor_events_total{kind="file"} 1"#),
            "{r}"
        );

        let r = fetch(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nok\n"), "{r}");

        let r = fetch(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");

        let r = fetch(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        let r = fetch(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");

        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        let r = fetch(addr, big.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }
}
