//! Blocking HTTP GET, to loopback only (tests never talk to other hosts).
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};

/// `GET http://{addr}{path}`: (status code, body); any status is an answer,
/// not an error. `addr` must be a loopback address.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to GET from {addr}: tests talk to loopback only"
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .proxy(None)
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let response = agent
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .read_to_string()
        .with_context(|| format!("reading the body of GET {url}"))?;
    Ok((status, body))
}

/// `GET /metrics` on `addr` as text; anything but 200 is an error.
pub fn metrics_text(addr: SocketAddr) -> Result<String> {
    match get(addr, "/metrics", Duration::from_secs(5))? {
        (200, body) => Ok(body),
        (code, body) => anyhow::bail!(
            "http://{addr}/metrics answered HTTP {code}: {}",
            body.trim()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_addresses() {
        let addr = SocketAddr::from(([192, 0, 2, 1], 80));
        let error = get(addr, "/", Duration::from_millis(10)).unwrap_err();
        assert!(error.to_string().contains("loopback only"), "{error}");
    }
}
