//! HTTP/1.1 on plain `TcpStream`s: the one response-head reader ([`read_head_into`]) and
//! parser ([`Head::parse`]), a tiny blocking client for the control API and simple requests
//! ([`http_request`], [`request_on`]), and a streaming response reader for the data plane's
//! HTTP endpoints ([`HttpConn`]: heads, chunks, bodies, EOF).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::control::ChannelInfo;
use crate::relay::Relay;
use crate::tcp::{self, tcp_connect};

/// Longest response head the readers accept.
const MAX_HEAD: usize = 64 * 1024;

/// Header (name, value) pairs in the order they came.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (any case).
pub fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A complete HTTP response head.
#[derive(Debug, Clone)]
pub struct Head {
    /// Minor version: 1 for HTTP/1.1, 0 for HTTP/1.0.
    pub version: u8,
    pub status: u16,
    pub headers: Headers,
    /// The head as text, CRLFCRLF included.
    pub raw: String,
}

impl Head {
    /// Parses a complete response head (up to and including CRLFCRLF).
    pub fn parse(head: &[u8]) -> Result<Head, String> {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut hs);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            other => {
                return Err(format!(
                    "bad HTTP response head {other:?}: {:?}",
                    String::from_utf8_lossy(head)
                ))
            }
        }
        let headers = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        Ok(Head {
            version: resp.version.unwrap(),
            status: resp.code.unwrap(),
            headers,
            raw: String::from_utf8_lossy(head).into_owned(),
        })
    }

    /// [`Head::parse`], panicking on a bad head.
    pub fn expect(head: &[u8]) -> Head {
        Head::parse(head).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }

    /// How many times header `name` occurs.
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .count()
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false)
    }
}

/// Reads from `r` into `buf` until `buf` holds a whole response head; takes the head
/// (CRLFCRLF included) out of `buf` and returns it, leaving in `buf` whatever was read
/// beyond it.
pub fn read_head_into(r: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(std::mem::replace(buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let have = buf.len();
        buf.resize(have + 64 * 1024, 0);
        let n = match r.read(&mut buf[have..]) {
            Ok(n) => n,
            Err(e) => {
                buf.truncate(have);
                return Err(e);
            }
        };
        buf.truncate(have + n);
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF before end of HTTP head (got {:?})",
                    String::from_utf8_lossy(buf)
                ),
            ));
        }
    }
}

/// A whole response, body decoded.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut s = tcp_connect(addr);
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    s.write_all(&bytes).expect("write HTTP request");
    let mut rest = Vec::new();
    let head = Head::expect(&read_head_into(&mut s, &mut rest).expect("read HTTP response head"));
    let (status, headers) = (head.status, head.headers);
    let body = if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Vec::new()
    } else if let Some(cl) = header_of(&headers, "content-length") {
        let n: usize = cl.trim().parse().expect("content-length");
        read_body(&mut s, &mut rest, n, "EOF inside HTTP body");
        rest.truncate(n);
        rest
    } else if header_of(&headers, "transfer-encoding")
        .map(|v| v.to_ascii_lowercase().contains("chunked"))
        .unwrap_or(false)
    {
        s.read_to_end(&mut rest).expect("read chunked body");
        decode_chunked(&rest)
    } else {
        s.read_to_end(&mut rest).expect("read body to EOF");
        rest
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// One `POST`/`GET`/… on an open keep-alive connection; the response must carry a
/// `Content-Length` body (the control API's always do).
pub fn request_on(s: &mut TcpStream, method: &str, path: &str, body: &[u8]) -> HttpResponse {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).expect("write HTTP request");
    let mut rest = Vec::new();
    let head = Head::expect(&read_head_into(s, &mut rest).expect("read HTTP response head"));
    let n: usize = head
        .header("content-length")
        .expect("content-length")
        .trim()
        .parse()
        .expect("content-length value");
    read_body(s, &mut rest, n, "EOF in body");
    assert_eq!(rest.len(), n, "bytes after the response");
    HttpResponse {
        status: head.status,
        headers: head.headers,
        body: rest,
    }
}

/// Reads from `s` until `body` holds at least `n` bytes (never more than needed).
fn read_body(s: &mut TcpStream, body: &mut Vec<u8>, n: usize, eof: &str) {
    while body.len() < n {
        let mut tmp = vec![0u8; n - body.len()];
        let k = s.read(&mut tmp).expect("read body");
        assert!(k > 0, "{eof}");
        body.extend_from_slice(&tmp[..k]);
    }
}

fn decode_chunked(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let i = match find(b, b"\r\n") {
            Some(i) => i,
            None => return out,
        };
        let line = std::str::from_utf8(&b[..i]).unwrap();
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
        b = &b[i + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// The status code of an HTTP response at the start of `bytes`, if there is one (no need
/// for a complete head).
pub fn status_of(bytes: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(bytes.get(..bytes.len().min(64))?).ok()?;
    let rest = s.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}

/// The response head (up to CRLFCRLF) as text, or everything if there is no end.
pub fn head_text(bytes: &[u8]) -> String {
    let end = find(bytes, b"\r\n\r\n")
        .map(|i| i + 4)
        .unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

// ---------------------------------------------------------------------------
// Streaming HTTP response reader
// ---------------------------------------------------------------------------

/// A client connection read as a stream of responses: heads, chunks as they come, bodies.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The CRLF after the last chunk's data has not been read yet.
    crlf_owed: bool,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        HttpConn {
            stream: tcp_connect(addr),
            buf: Vec::new(),
            crlf_owed: false,
        }
    }

    /// A reader of `ch` as an HTTP response: connected, its plain `GET …&dir=read` sent.
    pub fn read_channel(relay: &Relay, ch: &ChannelInfo) -> HttpConn {
        let mut c = HttpConn::connect(relay.data);
        c.get(&ch.path("read"), false, &[]);
        c
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write HTTP request");
    }

    /// `GET path HTTP/1.1` (or 1.0) with optional extra header lines.
    pub fn get(&mut self, path: &str, http10: bool, extra: &[(&str, &str)]) {
        let v = if http10 { "1.0" } else { "1.1" };
        let mut req = format!("GET {path} HTTP/{v}\r\nHost: localhost\r\n");
        for (k, val) in extra {
            req.push_str(&format!("{k}: {val}\r\n"));
        }
        req.push_str("\r\n");
        self.send(req.as_bytes());
    }

    fn more(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 65536];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.buf.len() < n {
            if self.more()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
            }
        }
        Ok(())
    }

    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let l = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(l);
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            if self.more()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in line"));
            }
        }
    }

    /// The next response head.
    pub fn read_head(&mut self) -> io::Result<Head> {
        let raw = read_head_into(&mut self.stream, &mut self.buf)?;
        Head::parse(&raw).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    pub fn expect_head(&mut self, what: &str) -> Head {
        self.read_head()
            .unwrap_or_else(|e| panic!("{what}: reading response head: {e}"))
    }

    /// One chunk of a chunked body, returned as soon as its data is complete (the CRLF
    /// that ends it is consumed later, with the next chunk-size line: the relay writes that
    /// CRLF in front of the next chunk); `None` at the last (zero) chunk, whose trailer
    /// section is consumed too.
    pub fn read_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.crlf_owed {
            let l = self.line()?;
            if !l.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("chunk data not followed by CRLF (got {l:?})"),
                ));
            }
            self.crlf_owed = false;
        }
        let line = self.line()?;
        let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{line:?}: {e}")))?;
        if size == 0 {
            loop {
                if self.line()?.is_empty() {
                    return Ok(None);
                }
            }
        }
        self.fill(size)?;
        let data = self.buf[..size].to_vec();
        self.buf.drain(..size);
        self.crlf_owed = true;
        Ok(Some(data))
    }

    /// The whole chunked body, the chunks kept apart.
    pub fn read_chunked(&mut self, what: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            match self.read_chunk() {
                Ok(Some(c)) => out.push(c),
                Ok(None) => return out,
                Err(e) => panic!("{what}: chunked body after {} chunks: {e}", out.len()),
            }
        }
    }

    pub fn read_exact_body(&mut self, n: usize) -> io::Result<Vec<u8>> {
        self.fill(n)?;
        Ok(self.buf.drain(..n).collect())
    }

    /// Everything up to EOF (a reset counts as an error).
    pub fn read_to_eof(&mut self) -> io::Result<Vec<u8>> {
        let mut out = std::mem::take(&mut self.buf);
        self.stream.read_to_end(&mut out)?;
        Ok(out)
    }

    /// The server must close: EOF (or reset) with nothing more buffered or arriving.
    pub fn expect_eof(&mut self, what: &str) {
        assert!(
            self.buf.is_empty(),
            "{what}: expected EOF, {} bytes buffered: {:?}",
            self.buf.len(),
            String::from_utf8_lossy(&self.buf[..self.buf.len().min(64)])
        );
        tcp::expect_eof(&mut self.stream, what);
    }

    /// Nothing further arrives within `d`, and the connection stays open.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        self.buf.is_empty() && tcp::quiet_for(&self.stream, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_reader_keeps_what_follows() {
        let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello";
        let mut buf = Vec::new();
        let head = read_head_into(&mut &wire[..], &mut buf).unwrap();
        assert_eq!(buf, b"hello");
        let h = Head::parse(&head).unwrap();
        assert_eq!((h.version, h.status), (1, 200));
        assert_eq!(h.header("content-length"), Some("5"));
        assert_eq!(h.count("X-A"), 2);
        assert!(!h.is_chunked());
        assert_eq!(status_of(wire), Some(200));
        assert_eq!(head_text(wire), String::from_utf8_lossy(&head));
    }

    #[test]
    fn head_reader_reports_eof() {
        let mut buf = Vec::new();
        let e = read_head_into(&mut &b"HTTP/1.1 200 OK\r\n"[..], &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"),
            b"abcde"
        );
    }
}
