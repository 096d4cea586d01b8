//! The HTTP endpoint: `/metrics` (the registry in [`super::metrics`]) and
//! `/healthz`, served with hyper's HTTP/1 server.
//!
//! * One request per connection (`Connection: close`), as before the move to
//!   hyper: a scrape every few seconds gains nothing from keep-alive, and it
//!   keeps a connection's lifetime short and bounded.
//! * Deadlines: a client has [`Limits::header_read`] (5 s) to send its request
//!   head; the whole connection, including writing the response, ends after
//!   [`Limits::connection`] (17 s: the old 5 s read + 10 s write + 2 s
//!   linger). Heads over 8 KiB get 431 from hyper.
//! * At most [`Limits::max_connections`] (64) connections are served at once.
//!   Past that the server stops accepting: further connections wait in the
//!   kernel's listen backlog until a slot frees, which the deadlines above
//!   bound, instead of each getting a task of its own (no unbounded growth
//!   from a flood of idle connections).
//! * `/healthz` says "ok" only once the kernel programs are attached: the
//!   command binds the listener early but calls [`serve`] only after
//!   attaching, so until then connections wait unanswered in the backlog.
//! * [`serve`] returns when the watch channel turns true (or its sender is
//!   dropped); connections already accepted finish under their deadlines.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::metrics::Metrics;

/// Largest request head accepted (hyper's minimum buffer size); `/metrics`
/// scrapes need a few hundred bytes.
const MAX_REQUEST: usize = 8 * 1024;
const TEXT: &str = "text/plain; charset=utf-8";

/// Bounds on what clients can make the endpoint hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send its request head.
    pub header_read: Duration,
    /// How long a connection may live in all.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 64,
            header_read: Duration::from_secs(5),
            connection: Duration::from_secs(17),
        }
    }
}

/// Serves `/metrics` and `/healthz` on `listener` with the default
/// [`Limits`] until `shutdown` becomes true (or its sender is dropped, since
/// then nobody could stop us).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, shutdown: watch::Receiver<bool>) {
    serve_with(listener, metrics, shutdown, Limits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
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
            accepted = accept_in_slot(&listener, &slots) => match accepted {
                Ok((stream, slot)) => {
                    tokio::spawn(connection(stream, Arc::clone(&metrics), limits, slot));
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

/// Waits for a free slot, then for a connection. Not accepting while all
/// slots are taken is what leaves the excess in the kernel's backlog.
async fn accept_in_slot(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> io::Result<(TcpStream, OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    let (stream, _) = listener.accept().await?;
    Ok((stream, slot))
}

/// One connection, one request, under the deadlines; the slot is given back
/// when this returns.
async fn connection(
    stream: TcpStream,
    metrics: Arc<Metrics>,
    limits: Limits,
    _slot: OwnedSemaphorePermit,
) {
    let service = service_fn(move |request: Request<Incoming>| {
        let response = route(&request, &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(false)
        .title_case_headers(true)
        .max_buf_size(MAX_REQUEST)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection, served).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("metrics endpoint: connection ended with an error: {e}"),
        Err(_) => log::debug!(
            "metrics endpoint: connection dropped after {:?}",
            limits.connection
        ),
    }
}

/// The response to one request. HEAD is answered like GET; hyper leaves out
/// the body.
fn route(request: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "method not allowed\n".into(),
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match request.uri().path() {
        "/metrics" => reply(StatusCode::OK, prometheus::TEXT_FORMAT, metrics.render()),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn fetch(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    async fn start(
        limits: Limits,
    ) -> (SocketAddr, watch::Sender<bool>, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.events_total.with_label_values(&["file"]).inc();
        let (tx, rx) = watch::channel(false);
        let server = tokio::spawn(serve_with(listener, metrics, rx, limits));
        (addr, tx, server)
    }

    async fn stop(tx: watch::Sender<bool>, server: tokio::task::JoinHandle<()>) {
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn serves_metrics_healthz_and_errors() {
        let (addr, tx, server) = start(Limits::default()).await;

        // A silent client must not block the others.
        let _silent = TcpStream::connect(addr).await.unwrap();

        let r = fetch(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("Connection: close\r\n"), "{r}");
        assert!(
            r.contains(r#"build_monitor_events_total{kind="file"} 1"#),
            "{r}"
        );

        let r = fetch(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\nok\n"), "{r}");

        let r = fetch(addr, b"HEAD /healthz HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"), "HEAD has no body: {r}");

        let r = fetch(addr, b"GET /nope HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 404 "), "{r}");

        let r = fetch(addr, b"garbage\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");

        let r = fetch(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 405 "), "{r}");
        assert!(r.contains("Allow: GET, HEAD\r\n"), "{r}");

        let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        let r = fetch(addr, big.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431 "), "{r}");

        stop(tx, server).await;
    }

    /// Opens `idle` silent connections, then times one real request from the
    /// moment the idle ones were connected.
    async fn request_behind_idle(
        limits: Limits,
        idle: usize,
    ) -> (Duration, String, Vec<TcpStream>) {
        let (addr, tx, server) = start(limits).await;
        let opened = Instant::now();
        let mut silent = Vec::new();
        for _ in 0..idle {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let r = fetch(addr, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        let elapsed = opened.elapsed();
        stop(tx, server).await;
        (elapsed, r, silent)
    }

    #[tokio::test]
    async fn connection_cap_holds_and_excess_waits_for_a_slot() {
        let limits = Limits {
            max_connections: 3,
            header_read: Duration::from_millis(1500),
            connection: Duration::from_secs(5),
        };
        // Control: with room for one more, the request behind 3 idle
        // connections is answered at once.
        let roomy = Limits {
            max_connections: 4,
            ..limits
        };
        let (elapsed, r, _idle) = request_behind_idle(roomy, 3).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(elapsed < limits.header_read / 2, "answered in {elapsed:?}");

        // At the cap (3 idle + 1 request), the request is not accepted until
        // an idle connection's header deadline frees its slot; then it is
        // answered.
        let (elapsed, r, mut idle) = request_behind_idle(limits, 3).await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(
            elapsed >= limits.header_read,
            "answered after {elapsed:?}, before any slot could free"
        );
        assert!(elapsed < limits.connection, "answered after {elapsed:?}");
        // The server closed the idle connections, which is what freed the slot.
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), idle[0].read_to_end(&mut rest))
            .await
            .expect("the server closes an idle connection")
            .ok();
    }
}
