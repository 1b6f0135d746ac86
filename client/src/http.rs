//! A minimal HTTP/1.1 client for the control API: keep-alive connections per
//! [`Relay`](crate::Relay) (one while calls come one at a time, one per concurrent call
//! otherwise, up to [`MAX_IDLE`] kept idle), `Content-Length`, chunked or close-delimited
//! response bodies.
//!
//! Retry rule (at most one retry, always on a new connection, only after a *reused*
//! connection failed — a fresh connection's failure is reported as it is):
//! - a kept connection found closed (or with unexpected bytes) before the request is sent
//!   is replaced; nothing was sent, so this holds for every method;
//! - the request could not be written in full: a relay does not act on a partial request
//!   (it waits for the rest of the head or the `Content-Length` body), so it is sent again,
//!   whatever the method;
//! - the request was written and the connection ended before any byte of the response (the
//!   relay closed it as idle just as the request went out): sent again only for `GET` and
//!   `DELETE`, which do the same thing twice. A `POST` (create) is not: the relay may have
//!   created the channel, and a second one would leak; the error says so. A `DELETE` sent
//!   again that finds the channel gone (`404`) reports success: the first sending removed it.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};

use crate::error::{Error, Result};
use crate::tls::Tls;
use crate::ws::{open_within, parse_target, timed_out, Stream, Target};

/// Largest response head / body accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One control request.
pub(crate) struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub token: Option<&'a str>,
    pub json_body: Option<&'a [u8]>,
}

/// Where and how a request is sent.
pub(crate) struct Endpoint<'a> {
    pub base_url: &'a str,
    pub tls: &'a Tls,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long an idle connection is kept for the next request.
    pub keep_alive: Duration,
}

/// Idle keep-alive connections, most recently used last. A request takes one (or opens a
/// new one) and holds it alone for its exchange, so concurrent calls run in parallel on
/// their own connections; a connection goes back only after a clean exchange, so a
/// half-read response is never taken for the next one's. At most [`MAX_IDLE`] are kept, and
/// none longer than the endpoint's `keep_alive` (kept below the relay's idle close, so a
/// kept connection is almost never one the relay is closing).
#[derive(Default)]
pub(crate) struct KeepAlive {
    idle: std::sync::Mutex<Vec<(Stream, Instant)>>,
}

/// Idle connections kept per [`Relay`](crate::Relay) (and its clones).
pub(crate) const MAX_IDLE: usize = 8;

/// How long an idle connection is kept by default: below the relay's idle close of a
/// control connection (`handshake_timeout_ms`, 10 s by default).
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How far an exchange got before it failed: decides whether it may be sent again.
enum Failed {
    /// Not all of the request was written.
    Write(Error),
    /// Written; the connection ended before any byte of the response.
    NoResponse(Error),
    /// Anything else (a response started, or a protocol error).
    Other(Error),
}

impl KeepAlive {
    /// Sends `req` and reads its response, within the endpoint's request timeout.
    pub(crate) async fn send(&self, ep: &Endpoint<'_>, req: &Request<'_>) -> Result<Response> {
        match tokio::time::timeout(ep.request_timeout, self.send_inner(ep, req)).await {
            Ok(r) => r,
            Err(_) => Err(timed_out("control API request timed out")),
        }
    }

    /// An idle connection still fit for a request, if one is kept.
    fn take_idle(&self, keep_alive: Duration) -> Option<Stream> {
        let mut idle = self.idle.lock().expect("idle connections lock");
        while let Some((mut stream, since)) = idle.pop() {
            if since.elapsed() < keep_alive && still_open(&mut stream) {
                return Some(stream);
            }
        }
        None
    }

    fn put_idle(&self, stream: Stream) {
        let mut idle = self.idle.lock().expect("idle connections lock");
        if idle.len() < MAX_IDLE {
            idle.push((stream, Instant::now()));
        }
    }

    async fn send_inner(&self, ep: &Endpoint<'_>, req: &Request<'_>) -> Result<Response> {
        let target = parse_target(ep.base_url)?;
        let bytes = encode_request(&target, req)?;
        // Owned by this future while in use: dropped with it if it is cancelled.
        let mut kept = self.take_idle(ep.keep_alive);
        let mut retried = false;
        loop {
            let reused = kept.is_some();
            let mut stream = match kept.take() {
                Some(s) => s,
                None => open_within(&target, ep.tls, ep.connect_timeout).await?,
            };
            let err = match exchange(&mut stream, &bytes, req.method).await {
                Ok((resp, keep)) => {
                    if keep {
                        self.put_idle(stream);
                    }
                    // A DELETE sent again may find its first sending already done.
                    if retried && req.method == "DELETE" && resp.status == 404 {
                        return Ok(Response {
                            status: 204,
                            body: Vec::new(),
                        });
                    }
                    return Ok(resp);
                }
                Err(f) => f,
            };
            let retry = reused
                && match &err {
                    Failed::Write(_) => true,
                    Failed::NoResponse(_) => matches!(req.method, "GET" | "DELETE"),
                    Failed::Other(_) => false,
                };
            match err {
                _ if retry => {
                    retried = true;
                    continue;
                }
                Failed::NoResponse(e) if req.method == "POST" => {
                    return Err(Error::Io(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        format!(
                            "control connection closed before the response ({e}); the request \
                             may have been carried out, so it was not sent again"
                        ),
                    )))
                }
                Failed::Write(e) | Failed::NoResponse(e) | Failed::Other(e) => return Err(e),
            }
        }
    }
}

/// Whether a kept connection can take another request: nothing readable (no EOF, no
/// stray bytes) right now. Polled once without waiting.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let mut probe = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // Pending: nothing to read, the connection is idle and open. EOF, an error or a stray
    // byte: not reusable.
    matches!(
        Pin::new(stream).poll_read(&mut cx, &mut probe),
        Poll::Pending
    )
}

fn encode_request(target: &Target, req: &Request<'_>) -> Result<Vec<u8>> {
    let prefix = target.uri.path().trim_end_matches('/');
    let authority = target
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| target.host.clone());
    let (method, path) = (req.method, req.path);
    // HTTP/1.1 keeps the connection open by default.
    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\n\
         User-Agent: chanrelay-client/{}\r\nAccept: application/json\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = req.token {
        if token.contains(['\r', '\n']) {
            return Err(Error::Protocol("control token contains CR/LF".into()));
        }
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = req.json_body.unwrap_or_default();
    if req.json_body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if req.json_body.is_some() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Ok(out)
}

/// Writes the request and reads the response; `Ok((response, keep))` where `keep` says the
/// connection can serve another request.
async fn exchange(
    stream: &mut Stream,
    request: &[u8],
    method: &str,
) -> std::result::Result<(Response, bool), Failed> {
    if let Err(e) = write_request(stream, request).await {
        return Err(Failed::Write(e.into()));
    }
    let mut buf = Vec::with_capacity(4096);
    match read_response(stream, &mut buf, method).await {
        Ok(r) => Ok(r),
        // Nothing of a response came: the relay closed the connection (or reset it).
        Err(e) if buf.is_empty() && is_closed(&e) => Err(Failed::NoResponse(e)),
        Err(e) => Err(Failed::Other(e)),
    }
}

async fn write_request(stream: &mut Stream, request: &[u8]) -> std::io::Result<()> {
    stream.write_all(request).await?;
    stream.flush().await
}

fn is_closed(e: &Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        Error::Io(e) => matches!(
            e.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        Error::Closed { .. } => true,
        _ => false,
    }
}

/// The error for a connection that ended before a complete response head.
fn closed_before_head() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "connection closed before a complete HTTP response head",
    ))
}

async fn read_response(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    method: &str,
) -> Result<(Response, bool)> {
    let (status, head_len, framing, mut keep) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let framing = body_framing(resp.headers)?;
                // 1xx interim responses (100 Continue) carry no body: skip them.
                if (100..200).contains(&status) {
                    buf.drain(..n);
                    continue;
                }
                let keep = resp.version == Some(1) && !connection_close(resp.headers);
                break (status, n, framing, keep);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(Error::Protocol(format!("bad HTTP response: {e}"))),
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Error::Protocol("HTTP response head too large".into()));
        }
        if read_more(stream, buf).await? == 0 {
            return Err(closed_before_head());
        }
    };
    // The head stays in the caller's buffer: a failure from here on is not "no response".
    let mut buf = buf.split_off(head_len);

    let body = if method == "HEAD" || status == 204 || status == 304 {
        keep &= buf.is_empty();
        Vec::new()
    } else {
        match framing {
            Framing::Length(n) => {
                if n > MAX_BODY_BYTES {
                    return Err(Error::Protocol("HTTP response body too large".into()));
                }
                while buf.len() < n {
                    if read_more(stream, &mut buf).await? == 0 {
                        return Err(Error::Protocol("truncated HTTP response body".into()));
                    }
                }
                // Bytes past the body were never asked for: the connection is not clean.
                keep &= buf.len() == n;
                buf.truncate(n);
                buf
            }
            Framing::Chunked => {
                let (body, clean) = read_chunked(stream, buf).await?;
                keep &= clean;
                body
            }
            Framing::Close => {
                keep = false;
                loop {
                    if buf.len() > MAX_BODY_BYTES {
                        return Err(Error::Protocol("HTTP response body too large".into()));
                    }
                    if read_more(stream, &mut buf).await? == 0 {
                        break;
                    }
                }
                buf
            }
        }
    };
    Ok((Response { status, body }, keep))
}

fn connection_close(headers: &[httparse::Header<'_>]) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection")
            && String::from_utf8_lossy(h.value)
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"))
    })
}

enum Framing {
    Length(usize),
    Chunked,
    Close,
}

fn body_framing(headers: &[httparse::Header<'_>]) -> Result<Framing> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "chunked") {
                return Ok(Framing::Chunked);
            }
        }
    }
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| Error::Protocol("bad Content-Length".into()))?;
            return Ok(Framing::Length(n));
        }
    }
    Ok(Framing::Close)
}

async fn read_more(stream: &mut Stream, buf: &mut Vec<u8>) -> Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

/// Decodes a chunked body; `buf` holds the bytes already read after the head. Also says
/// whether the body ended exactly where the bytes read end (the connection is reusable).
async fn read_chunked(stream: &mut Stream, mut buf: Vec<u8>) -> Result<(Vec<u8>, bool)> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        // Chunk-size line.
        let line_end = loop {
            if let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") {
                break pos + i;
            }
            if buf.len() - pos > 1024 {
                return Err(Error::Protocol("bad chunk size line".into()));
            }
            if read_more(stream, &mut buf).await? == 0 {
                return Err(Error::Protocol("truncated chunked body".into()));
            }
        };
        let line = std::str::from_utf8(&buf[pos..line_end])
            .map_err(|_| Error::Protocol("bad chunk size line".into()))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| Error::Protocol("bad chunk size".into()))?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer lines (ignored) up to the empty line that ends the body.
            loop {
                let Some(i) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() - pos > MAX_HEAD_BYTES {
                        return Err(Error::Protocol("HTTP trailers too large".into()));
                    }
                    if read_more(stream, &mut buf).await? == 0 {
                        return Err(Error::Protocol("truncated chunked body".into()));
                    }
                    continue;
                };
                pos += i + 2;
                if i == 0 {
                    return Ok((body, pos == buf.len()));
                }
            }
        }
        if body.len() + size > MAX_BODY_BYTES {
            return Err(Error::Protocol("HTTP response body too large".into()));
        }
        while buf.len() < pos + size + 2 {
            if read_more(stream, &mut buf).await? == 0 {
                return Err(Error::Protocol("truncated chunked body".into()));
            }
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}
