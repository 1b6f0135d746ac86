//! Opening a channel end: URL parsing, TCP connect and the WebSocket handshake.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::error::{from_ws, Error, Result};

/// How long the TCP connect plus the WebSocket handshake may take (the SDKs use 10 s).
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket read size. Measured with a 1 GiB transfer through the relay: 16–256 KiB perform
/// about the same, 1 MiB is clearly slower (tungstenite zero-fills the read window before
/// each `read`).
const READ_BUFFER_BYTES: usize = 128 * 1024;

/// A channel end's WebSocket.
pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Host and port of an `http://`/`ws://` URL (TLS schemes are refused).
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub uri: Uri,
}

pub(crate) fn parse_target(url: &str, default_port: u16) -> Result<Target> {
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Protocol(format!("invalid URL {url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("ws") | Some("http") => {}
        Some("wss") | Some("https") => {
            return Err(Error::Protocol(format!(
                "TLS URLs are not supported by chanrelay-client: {url:?}"
            )))
        }
        _ => {
            return Err(Error::Protocol(format!(
                "URL must start with ws:// or http://: {url:?}"
            )))
        }
    }
    let host = uri
        .host()
        .ok_or_else(|| Error::Protocol(format!("URL has no host: {url:?}")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(Target { host, port, uri })
}

/// Connects to a channel URL (`ws://host:port/ws/channels/...`) and performs the handshake.
pub(crate) async fn connect(url: String) -> Result<Ws> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_inner(&url)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "WebSocket handshake timed out",
        ))),
    }
}

async fn connect_inner(url: &str) -> Result<Ws> {
    let target = parse_target(url, 80)?;
    // Always ask for ws:// (an http:// base URL names the same listener).
    let mut parts = target.uri.into_parts();
    parts.scheme = Some("ws".parse().expect("static scheme"));
    let uri = Uri::from_parts(parts).map_err(|e| Error::Protocol(e.to_string()))?;

    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    let (ws, _response) = tokio_tungstenite::client_async_with_config(uri, tcp, Some(config))
        .await
        .map_err(from_ws)?;
    Ok(ws)
}
