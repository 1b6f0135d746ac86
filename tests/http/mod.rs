//! Helpers for the HTTP data-plane tests (tests/http_stream.rs, tests/browser.rs): a raw
//! streaming HTTP/1.x response reader on a plain `TcpStream`, a `curl` runner, and writer
//! conveniences on top of `tests/common`.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Path of a channel end as the HTTP endpoints take it.
pub fn chan_path(ch: &ChannelInfo, dir: &str) -> String {
    ws_path(&ch.id, &ch.key, dir)
}

pub fn chan_url(relay: &Relay, ch: &ChannelInfo, dir: &str) -> String {
    format!("http://{}{}", relay.data, chan_path(ch, dir))
}

pub fn set_status(code: u16) -> String {
    format!(r#"{{"type":"set_status","status_code":{code}}}"#)
}

pub fn set_headers(h: serde_json::Value) -> String {
    serde_json::json!({"type": "set_headers", "headers": h}).to_string()
}

/// Polls the control API until the channel's reader end is connected.
pub fn wait_reader_connected(relay: &Relay, id: &str) {
    assert!(
        reader_connected_within(relay, id, Duration::from_secs(15)),
        "reader of {id} never connected"
    );
}

pub fn reader_connected_within(relay: &Relay, id: &str, d: Duration) -> bool {
    wait_for(d, || {
        (relay.state(id)["reader_connected"] == serde_json::Value::Bool(true)).then_some(())
    })
    .is_some()
}

// ---------------------------------------------------------------------------
// Streaming HTTP response reader
// ---------------------------------------------------------------------------

pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The CRLF after the last chunk's data has not been read yet.
    crlf_owed: bool,
}

#[derive(Debug, Clone)]
pub struct Head {
    pub version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
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
        c.get(&chan_path(ch, "read"), false, &[]);
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

    pub fn read_head(&mut self) -> io::Result<Head> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                let raw = self.buf[..i + 4].to_vec();
                self.buf.drain(..i + 4);
                let (version, status, headers) = try_parse_response_head(&raw)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                return Ok(Head {
                    version,
                    status,
                    headers,
                    raw: String::from_utf8_lossy(&raw).into_owned(),
                });
            }
            if self.buf.len() > 64 * 1024 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
            }
            if self.more()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "EOF before end of head (got {:?})",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        }
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
        let mut b = [0u8; 256];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!(
                "{what}: expected EOF, got {:?}",
                String::from_utf8_lossy(&b[..n])
            ),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: expected EOF, got error {e}"),
        }
    }

    /// Nothing further arrives within `d`, and the connection stays open.
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut)
    }
}

// ---------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------

pub fn have_curl() -> bool {
    Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A `curl` command with the options every test wants: silent but showing errors, no
/// proxy from the environment, bounded in time.
pub fn curl_cmd(max_time_s: u32) -> Command {
    assert!(
        have_curl(),
        "curl is required by these tests (Debian: apt-get install -y curl)"
    );
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--noproxy",
        "*",
        "--max-time",
        &max_time_s.to_string(),
    ]);
    c.env_remove("http_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("all_proxy")
        .env_remove("ALL_PROXY");
    c
}

/// Waits for a child with a deadline, draining its piped stdout/stderr meanwhile (so a
/// full pipe never blocks it); kills it when the deadline passes.
pub fn wait_output(mut child: std::process::Child, limit: Duration, what: &str) -> Output {
    fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out.join().unwrap_or_default();
                let err = err.join().unwrap_or_default();
                panic!(
                    "{what}: did not finish within {limit:?} ({} bytes on stdout; stderr: {})",
                    out.len(),
                    String::from_utf8_lossy(&err)
                );
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("{what}: wait: {e}"),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Parses a `curl -D file` header dump: (status, headers) of the last response in it.
pub fn parse_header_dump(text: &str) -> (u16, Vec<(String, String)>) {
    let mut status = 0;
    let mut headers = Vec::new();
    for line in text.split("\r\n") {
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// A fresh temp dir for one test.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "chanrelay-{tag}-{}-{}",
        std::process::id(),
        next_random() % 1_000_000_007
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// sha256 hex of a byte stream (computed by coreutils `sha256sum`, which is
/// fast even when the test itself is a debug build).
pub struct Sha256Sum {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Sha256Sum {
    pub fn new() -> Sha256Sum {
        let mut child = Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sha256sum (coreutils)");
        let stdin = child.stdin.take();
        Sha256Sum { child, stdin }
    }
    pub fn update(&mut self, b: &[u8]) {
        self.stdin
            .as_mut()
            .unwrap()
            .write_all(b)
            .expect("feed sha256sum");
    }
    pub fn hex(mut self) -> String {
        drop(self.stdin.take());
        let out = self.child.wait_with_output().expect("sha256sum output");
        assert!(out.status.success(), "sha256sum failed");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string()
    }
}

/// sha256 hex of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut s = Sha256Sum::new();
    s.update(data);
    s.hex()
}
