//! Tiny loopback probes: an HTTP/1.0 GET against the monitoring port and a
//! read of the `INFO` line that a NATS server sends on its client port.
//!
//! Written by hand over a tokio `TcpStream` so that the harness needs no
//! HTTP client or NATS client of its own.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One probe never waits longer than this.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A monitoring endpoint's answer.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    pub(crate) body: String,
}

/// `GET path` on `127.0.0.1:port`.
pub(crate) async fn http_get(port: u16, path: &str) -> io::Result<HttpResponse> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        parse_response(&String::from_utf8_lossy(&raw))
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("GET {path} timed out")))?
}

/// `GET path` and parse the body as JSON; non-200 answers are errors.
pub(crate) async fn http_get_json(port: u16, path: &str) -> io::Result<serde_json::Value> {
    let response = http_get(port, path).await?;
    if response.status != 200 {
        return Err(io::Error::other(format!(
            "GET {path} answered {}: {}",
            response.status,
            response.body.trim()
        )));
    }
    serde_json::from_str(&response.body).map_err(io::Error::other)
}

fn parse_response(text: &str) -> io::Result<HttpResponse> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP response");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status_line = head.lines().next().ok_or_else(bad)?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// Connects to the client port and returns the JSON of the server's `INFO`
/// line (sent in clear text even when TLS is required).
pub(crate) async fn read_info(port: u16) -> io::Result<serde_json::Value> {
    tokio::time::timeout(PROBE_TIMEOUT, async {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).await?;
        let json = line.strip_prefix("INFO ").ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no INFO line: {line:?}"),
            )
        })?;
        serde_json::from_str(json.trim()).map_err(io::Error::other)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "reading INFO timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse_response("HTTP/1.1 503 Service Unavailable\r\nA: b\r\n\r\n{\"x\":1}")
            .expect("well-formed");
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"x\":1}");
        assert!(parse_response("garbage").is_err());
    }
}
