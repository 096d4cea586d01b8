//! Loopback ports for daemons under test. A port found free may be taken
//! by someone else before the daemon binds it; [`on_free_port`] retries with
//! another port instead of failing on that race.
use std::net::TcpListener;

use anyhow::{Context as _, Result, bail};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound and released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener
        .local_addr()
        .context("local_addr of 127.0.0.1:0")?
        .port())
}

/// What one attempt to start a daemon on a port came to.
pub enum Attempt<T> {
    Started(T),
    /// The port was taken in the meantime (the reason, for the error).
    PortTaken(String),
}

/// Calls `start` with a free port until it does not report the port taken
/// (at most `tries` times).
pub fn on_free_port<T>(tries: u32, mut start: impl FnMut(u16) -> Result<Attempt<T>>) -> Result<T> {
    let mut last = String::new();
    for _ in 0..tries {
        match start(free_port()?)? {
            Attempt::Started(value) => return Ok(value),
            Attempt::PortTaken(reason) => last = reason,
        }
    }
    bail!("{tries} free ports were all taken before the daemon bound them; last: {last}")
}

/// A loopback listener that accepts and closes connections in the
/// background for as long as the process runs; its port.
pub fn listener() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            drop(conn);
        }
    });
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_while_the_port_is_taken() {
        let mut seen = Vec::new();
        let port = on_free_port(5, |port| {
            seen.push(port);
            Ok(if seen.len() < 3 {
                Attempt::PortTaken(format!("{port} in use"))
            } else {
                Attempt::Started(port)
            })
        })
        .unwrap();
        assert_eq!(seen.len(), 3);
        assert_eq!(port, seen[2]);
        let error =
            on_free_port(2, |p| Ok(Attempt::<()>::PortTaken(format!("{p} taken")))).unwrap_err();
        assert!(error.to_string().contains("2 free ports"), "{error}");
    }
}
