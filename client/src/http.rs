//! A minimal HTTP/1.1 client for the control API: one request per connection
//! (`Connection: close`), `Content-Length`, chunked or close-delimited response bodies.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};
use crate::tls::Tls;
use crate::ws::{open, parse_target, Stream};

/// Whole-request time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response head / body accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Sends `method base_url+path` with an optional JSON body.
pub(crate) async fn request(
    base_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&[u8]>,
    tls: &Tls,
) -> Result<Response> {
    match tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(base_url, method, path, token, json_body, tls),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "control API request timed out",
        ))),
    }
}

async fn request_inner(
    base_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&[u8]>,
    tls: &Tls,
) -> Result<Response> {
    let target = parse_target(base_url)?;
    let prefix = target.uri.path().trim_end_matches('/');
    let authority = target
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| target.host.clone());

    let mut head = format!(
        "{method} {prefix}{path} HTTP/1.1\r\nHost: {authority}\r\n\
         User-Agent: chanrelay-client/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        if token.contains(['\r', '\n']) {
            return Err(Error::Protocol("control token contains CR/LF".into()));
        }
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = json_body.unwrap_or_default();
    if json_body.is_some() {
        head.push_str("Content-Type: application/json\r\n");
    }
    if json_body.is_some() || method == "POST" || method == "PUT" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");

    let mut stream = open(&target, tls).await?;
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out).await?;

    // Read the head.
    let mut buf = Vec::with_capacity(4096);
    let (status, head_len, framing) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => {
                let status = resp.code.unwrap_or(0);
                let framing = body_framing(resp.headers)?;
                // 1xx interim responses (100 Continue) carry no body: skip them.
                if (100..200).contains(&status) {
                    buf.drain(..n);
                    continue;
                }
                break (status, n, framing);
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(Error::Protocol(format!("bad HTTP response: {e}"))),
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(Error::Protocol("HTTP response head too large".into()));
        }
        if read_more(&mut stream, &mut buf).await? == 0 {
            return Err(Error::Protocol(
                "connection closed before a complete HTTP response head".into(),
            ));
        }
    };
    buf.drain(..head_len);

    let body = if method == "HEAD" || status == 204 || status == 304 {
        Vec::new()
    } else {
        match framing {
            Framing::Length(n) => {
                if n > MAX_BODY_BYTES {
                    return Err(Error::Protocol("HTTP response body too large".into()));
                }
                while buf.len() < n {
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        return Err(Error::Protocol("truncated HTTP response body".into()));
                    }
                }
                buf.truncate(n);
                buf
            }
            Framing::Chunked => read_chunked(&mut stream, buf).await?,
            Framing::Close => {
                loop {
                    if buf.len() > MAX_BODY_BYTES {
                        return Err(Error::Protocol("HTTP response body too large".into()));
                    }
                    if read_more(&mut stream, &mut buf).await? == 0 {
                        break;
                    }
                }
                buf
            }
        }
    };
    Ok(Response { status, body })
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

/// Decodes a chunked body; `buf` holds the bytes already read after the head.
async fn read_chunked(stream: &mut Stream, mut buf: Vec<u8>) -> Result<Vec<u8>> {
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
            // Trailers are ignored; the connection is closed after the response anyway.
            return Ok(body);
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
