//! Opening a channel end: URL parsing, TCP connect and the WebSocket handshake.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{from_ws, Error, Result};
use crate::tls::Tls;

/// Default for how long opening a connection may take: TCP connect and TLS handshake, plus
/// the WebSocket handshake for a channel end (the SDKs use 10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Socket read size. Measured with a 1 GiB transfer through the relay: 16–256 KiB perform
/// about the same, 1 MiB is clearly slower (tungstenite zero-fills the read window before
/// each `read`).
const READ_BUFFER_BYTES: usize = 128 * 1024;

/// A connection to the relay (or a balancer in front of it): plain TCP, or TLS over it.
pub(crate) type Stream = MaybeTlsStream<TcpStream>;

/// A channel end's WebSocket.
pub(crate) type Ws = WebSocketStream<Stream>;

/// Host and port of an `http(s)://`/`ws(s)://` URL, and whether it speaks TLS.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub uri: Uri,
    pub tls: bool,
}

pub(crate) fn parse_target(url: &str) -> Result<Target> {
    // A channel end's URL carries its access key in the query: errors show the URL without it.
    let shown = url.split_once('?').map_or(url, |(path, _)| path);
    let uri: Uri = url
        .parse()
        .map_err(|e| Error::Protocol(format!("invalid URL {shown:?}: {e}")))?;
    let tls = match uri.scheme_str() {
        Some("ws") | Some("http") => false,
        Some("wss") | Some("https") => true,
        _ => {
            return Err(Error::Protocol(format!(
                "URL must start with ws://, wss://, http:// or https://: {shown:?}"
            )))
        }
    };
    let default_port = if tls { 443 } else { 80 };
    let host = uri
        .host()
        .ok_or_else(|| Error::Protocol(format!("URL has no host: {shown:?}")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(default_port);
    Ok(Target {
        host,
        port,
        uri,
        tls,
    })
}

/// Opens the TCP connection to `target`, with the TLS handshake when it speaks TLS.
pub(crate) async fn open(target: &Target, tls: &Tls) -> Result<Stream> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    tcp.set_nodelay(true)?;
    if target.tls {
        Ok(MaybeTlsStream::Rustls(
            tls.connect(&target.host, tcp).await?,
        ))
    } else {
        Ok(MaybeTlsStream::Plain(tcp))
    }
}

/// [`open`] within `limit`.
pub(crate) async fn open_within(target: &Target, tls: &Tls, limit: Duration) -> Result<Stream> {
    match tokio::time::timeout(limit, open(target, tls)).await {
        Ok(r) => r,
        Err(_) => Err(timed_out("connect timed out")),
    }
}

pub(crate) fn timed_out(what: &'static str) -> Error {
    Error::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// Connects to a channel URL (`ws(s)://host:port/ws/channels/...`) and performs the
/// handshake, all within `limit`.
pub(crate) async fn connect(url: String, tls: Tls, limit: Duration) -> Result<Ws> {
    match tokio::time::timeout(limit, connect_inner(&url, &tls)).await {
        Ok(r) => r,
        Err(_) => Err(timed_out("WebSocket connect and handshake timed out")),
    }
}

async fn connect_inner(url: &str, tls: &Tls) -> Result<Ws> {
    let target = parse_target(url)?;
    let stream = open(&target, tls).await?;
    // Always ask for ws(s):// (an http(s):// base URL names the same listener).
    let mut parts = target.uri.into_parts();
    let scheme = if target.tls { "wss" } else { "ws" };
    parts.scheme = Some(scheme.parse().expect("static scheme"));
    let uri = Uri::from_parts(parts).map_err(|e| Error::Protocol(e.to_string()))?;
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER_BYTES);
    // The stream is already TLS when it must be.
    let (ws, _response) = tokio_tungstenite::client_async_with_config(uri, stream, Some(config))
        .await
        .map_err(from_ws)?;
    Ok(ws)
}

#[cfg(test)]
mod tests {
    use super::parse_target;

    #[test]
    fn url_errors_never_show_the_query_and_its_key() {
        for url in [
            "localhost:49170/ws/channels/c?key=SECRETKEY&dir=write",
            "ftp://h/ws/channels/c?key=SECRETKEY&dir=write",
        ] {
            let err = parse_target(url).err().expect("a bad URL").to_string();
            assert!(!err.contains("SECRETKEY"), "{err}");
        }
    }
}
