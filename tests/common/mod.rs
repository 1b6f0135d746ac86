//! Shared helpers for the end-to-end tests: spawn the relay binary, a tiny
//! blocking HTTP client for the control API, and a raw WebSocket client built
//! on plain `std::net::TcpStream` (nothing hides what goes over the wire).
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Read/write timeout on every socket: nothing in the suite may hang longer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// Relay process
// ---------------------------------------------------------------------------

pub struct Relay {
    child: Child,
    pub data: SocketAddr,
    pub control: SocketAddr,
    /// Bearer token sent with every control request made through `control()`.
    pub token: Option<String>,
    dir: PathBuf,
}

impl Relay {
    /// `chanrelay serve --listen 127.0.0.1:0 --control 127.0.0.1:0 --shards 2`
    pub fn start() -> Relay {
        Relay::spawn(None, 2)
    }

    /// Same, with `--config FILE` holding `toml`.
    pub fn with_config(toml: &str) -> Relay {
        Relay::spawn(Some(toml), 2)
    }

    pub fn spawn(config: Option<&str>, shards: usize) -> Relay {
        Relay::spawn_full(config, shards, &[])
    }

    /// Two shards, with extra environment variables for the relay process.
    pub fn spawn_with_env(config: Option<&str>, env: &[(&str, &str)]) -> Relay {
        Relay::spawn_full(config, 2, env)
    }

    pub fn spawn_full(config: Option<&str>, shards: usize, env: &[(&str, &str)]) -> Relay {
        let dir = std::env::temp_dir().join(format!(
            "chanrelay-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        // CHANRELAY_TEST_BIN runs the suite against another build (e.g. release).
        let bin = std::env::var("CHANRELAY_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chanrelay").to_string());
        let mut cmd = Command::new(bin);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--control",
            "127.0.0.1:0",
            "--shards",
            &shards.to_string(),
        ]);
        if let Some(toml) = config {
            let path = dir.join("config.toml");
            std::fs::write(&path, toml).expect("write config");
            cmd.arg("--config").arg(&path);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = File::create(dir.join("stderr.log")).expect("create log");
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
        let mut child = cmd.spawn().expect("spawn chanrelay");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        // Keep draining stdout for the life of the process so it never blocks.
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        let mut relay = Relay {
            child,
            data: "0.0.0.0:0".parse().unwrap(),
            control: "0.0.0.0:0".parse().unwrap(),
            token: None,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => {
                    let log = relay.log_tail();
                    panic!(
                        "relay did not print its two listening lines (got {got:?}); stderr:\n{log}"
                    );
                }
            }
        }
        let data = got[0]
            .strip_prefix("chanrelay data listening on ")
            .unwrap_or_else(|| panic!("unexpected first stdout line: {:?}", got[0]));
        let control = got[1]
            .strip_prefix("chanrelay control listening on ")
            .unwrap_or_else(|| panic!("unexpected second stdout line: {:?}", got[1]));
        relay.data = data.trim().parse().expect("data addr");
        relay.control = control.trim().parse().expect("control addr");
        relay
    }

    pub fn log_tail(&self) -> String {
        let s = std::fs::read(self.dir.join("stderr.log")).unwrap_or_default();
        let start = s.len().saturating_sub(6000);
        String::from_utf8_lossy(&s[start..]).into_owned()
    }

    /// Sends the relay a signal (e.g. "TERM").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the relay to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Is the process still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    // ---- control API ----

    pub fn control(&self, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
        let auth;
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if let Some(t) = &self.token {
            auth = format!("Bearer {t}");
            headers.push(("Authorization", auth.as_str()));
        }
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http_request(
            self.control,
            method,
            path,
            &headers,
            body.map(|b| b.as_bytes()),
        )
    }

    pub fn create(&self) -> ChannelInfo {
        self.create_with(None)
    }

    pub fn create_with(&self, body: Option<&str>) -> ChannelInfo {
        let r = self.control("POST", "/v1/channels", body);
        assert_eq!(r.status, 201, "POST /v1/channels {body:?}: {}", r.text());
        let v = r.json();
        let id = v["channel_id"].as_str().expect("channel_id").to_string();
        let key = v["access_key"].as_str().expect("access_key").to_string();
        ChannelInfo { id, key, raw: v }
    }

    /// GET /v1/channels/{id}, asserting 200.
    pub fn state(&self, id: &str) -> Value {
        let r = self.control("GET", &format!("/v1/channels/{id}"), None);
        assert_eq!(r.status, 200, "GET channel {id}: {}", r.text());
        r.json()
    }

    pub fn delete(&self, id: &str) -> u16 {
        self.control("DELETE", &format!("/v1/channels/{id}"), None)
            .status
    }

    pub fn metrics(&self) -> String {
        let r = self.control("GET", "/metrics", None);
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    // ---- data plane ----

    pub fn connect(&self, ch: &ChannelInfo, dir: &str) -> Ws {
        ws_connect(self.data, &ws_path(&ch.id, &ch.key, dir))
    }

    pub fn try_connect(&self, path: &str, extra: &[(&str, &str)]) -> (HandshakeResponse, Ws) {
        ws_handshake(self.data, path, extra)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- relay stderr (tail) ----\n{}", self.log_tail());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: String,
    pub key: String,
    pub raw: Value,
}

/// Sum of all samples of a metric (with or without labels) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let rest = match line.strip_prefix(name) {
            Some(r) => r,
            None => continue,
        };
        let value = if let Some(r) = rest.strip_prefix('{') {
            match r.find('}') {
                Some(i) => r[i + 1..].trim(),
                None => continue,
            }
        } else if rest.starts_with(' ') {
            rest.trim()
        } else {
            continue;
        };
        let value = value.split_whitespace().next().unwrap_or("");
        if let Ok(v) = value.parse::<f64>() {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Tiny HTTP/1.1 client
// ---------------------------------------------------------------------------

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
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

pub fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn tcp_connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read an HTTP response head (up to and including CRLFCRLF). Returns the head
/// bytes and whatever was read beyond it.
fn read_head(s: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF before end of HTTP head (got {:?})",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn parse_head(head: &[u8]) -> (u16, Vec<(String, String)>) {
    let (_, status, headers) = try_parse_response_head(head).unwrap_or_else(|e| panic!("{e}"));
    (status, headers)
}

/// Header (name, value) pairs in the order they came.
pub type Headers = Vec<(String, String)>;

/// A complete HTTP response head: (minor version, status, headers).
pub fn try_parse_response_head(head: &[u8]) -> Result<(u8, u16, Headers), String> {
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
    Ok((resp.version.unwrap(), resp.code.unwrap(), headers))
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    let (head, mut rest) = read_head(s).expect("read HTTP response head");
    let (status, headers) = parse_head(&head);
    let n: usize = header_of(&headers, "content-length")
        .expect("content-length")
        .trim()
        .parse()
        .expect("content-length value");
    while rest.len() < n {
        let mut tmp = vec![0u8; n - rest.len()];
        let k = s.read(&mut tmp).expect("read body");
        assert!(k > 0, "EOF in body");
        rest.extend_from_slice(&tmp[..k]);
    }
    assert_eq!(rest.len(), n, "bytes after the response");
    HttpResponse {
        status,
        headers,
        body: rest,
    }
}

/// Writer side of a clean end: after our Close the relay replies Close 1000 and closes the
/// TCP connection.
pub fn writer_finish(w: &mut Ws, what: &str) {
    w.send_close(1000, "");
    expect_close_reply(w, what);
}

/// The relay's answer to a Close we sent: Close 1000, then the end of the TCP connection.
pub fn expect_close_reply(w: &mut Ws, what: &str) {
    let (code, _) = w.expect_close(what);
    assert_eq!(code, 1000, "{what}: close reply code");
    w.expect_eof(what);
}

/// TCP segments carrying data that `s` has received so far (Linux `tcp_info.tcpi_data_segs_in`).
pub fn data_segments_received(s: &TcpStream) -> u32 {
    // `struct tcp_info` as of Linux 4.6+: `tcpi_data_segs_in` is the u32 at byte 152.
    tcp_info_u32(s, 152)
}

/// TCP segments of any kind that `s` has received so far (`tcp_info.tcpi_segs_in`).
pub fn segments_received(s: &TcpStream) -> u32 {
    // `tcpi_segs_in` is the u32 at byte 140 (Linux 4.2+).
    tcp_info_u32(s, 140)
}

/// The u32 at byte `offset` of the kernel's `struct tcp_info` for `s`.
fn tcp_info_u32(s: &TcpStream, offset: usize) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call, and the
    // kernel writes at most `len` bytes and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt TCP_INFO: {}", io::Error::last_os_error());
    assert!(
        len as usize >= offset + 4,
        "kernel tcp_info too short ({len} bytes)"
    );
    u32::from_ne_bytes(info[offset..offset + 4].try_into().unwrap())
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
    let (head, mut rest) = read_head(&mut s).expect("read HTTP response head");
    let (status, headers) = parse_head(&head);
    let body = if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status)
    {
        Vec::new()
    } else if let Some(cl) = header_of(&headers, "content-length") {
        let n: usize = cl.trim().parse().expect("content-length");
        while rest.len() < n {
            let mut tmp = vec![0u8; n - rest.len()];
            let k = s.read(&mut tmp).expect("read body");
            assert!(k > 0, "EOF inside HTTP body");
            rest.extend_from_slice(&tmp[..k]);
        }
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

// ---------------------------------------------------------------------------
// Raw WebSocket client
// ---------------------------------------------------------------------------

pub fn ws_path(id: &str, key: &str, dir: &str) -> String {
    format!("/ws/channels/{id}?key={key}&dir={dir}")
}

#[derive(Debug)]
pub struct HandshakeResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The Sec-WebSocket-Key we sent.
    pub key: String,
}

impl HandshakeResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

pub fn random_ws_key() -> String {
    let mut k = [0u8; 16];
    fill_random(&mut k);
    base64(&k)
}

/// Standard WebSocket upgrade; `extra` headers are appended.
pub fn ws_handshake(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> (HandshakeResponse, Ws) {
    let key = random_ws_key();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let (status, headers, ws) = raw_handshake(addr, req.as_bytes());
    (
        HandshakeResponse {
            status,
            headers,
            key,
        },
        ws,
    )
}

/// Send exactly `request` and parse the response head.
pub fn raw_handshake(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>, Ws) {
    let mut s = tcp_connect(addr);
    s.write_all(request).expect("write handshake");
    let (head, rest) = read_head(&mut s).expect("read handshake response");
    let (status, headers) = parse_head(&head);
    (
        status,
        headers,
        Ws {
            stream: s,
            rbuf: rest,
            rpos: 0,
        },
    )
}

/// Handshake that must succeed with 101 and a correct Sec-WebSocket-Accept.
pub fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let (resp, ws) = ws_handshake(addr, path, &[]);
    assert_eq!(
        resp.status, 101,
        "handshake {path}: expected 101, got {resp:?}"
    );
    let want = accept_for(&resp.key);
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some(want.as_str()),
        "accept header"
    );
    ws
}

pub fn accept_for(key: &str) -> String {
    let mut s = key.as_bytes().to_vec();
    s.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha1(&s))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// (code, reason) of a Close frame.
    pub fn close_code(&self) -> (u16, String) {
        assert_eq!(
            self.opcode,
            OP_CLOSE,
            "not a close frame: {}",
            self.describe()
        );
        if self.payload.len() < 2 {
            return (1005, String::new());
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        )
    }
    pub fn describe(&self) -> String {
        let p = if self.payload.len() <= 64 {
            format!("{:?}", String::from_utf8_lossy(&self.payload))
        } else {
            format!("<{} bytes>", self.payload.len())
        };
        format!(
            "Frame{{fin:{} rsv:{} op:{:#x} {}}}",
            self.fin, self.rsv, self.opcode, p
        )
    }
}

pub struct Ws {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    rpos: usize,
}

/// Encode one client frame. `mask: None` produces an (illegal) unmasked frame.
pub fn encode_frame(
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0xF));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= 0xFFFF {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let start = out.len() + if mask.is_some() { 4 } else { 0 };
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
    out.extend_from_slice(payload);
    if let Some(k) = mask {
        apply_mask(&mut out[start..], k);
    }
    out
}

/// Masked frame with a random key.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 4];
    fill_random(&mut k);
    encode_frame(fin, 0, opcode, payload, Some(k))
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

pub fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let k64 = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ k64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

impl Ws {
    pub fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }
    pub fn send(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let f = frame(fin, opcode, payload);
        self.stream
            .write_all(&f)
            .unwrap_or_else(|e| panic!("write frame op {opcode:#x} len {}: {e}", payload.len()));
    }
    pub fn send_binary(&mut self, payload: &[u8]) {
        self.send(true, OP_BINARY, payload)
    }
    pub fn send_text(&mut self, s: &str) {
        self.send(true, OP_TEXT, s.as_bytes())
    }
    pub fn send_ping(&mut self, payload: &[u8]) {
        self.send(true, OP_PING, payload)
    }
    pub fn send_close(&mut self, code: u16, reason: &str) {
        self.send(true, OP_CLOSE, &close_payload(code, reason))
    }

    fn fill(&mut self, n: usize) -> io::Result<()> {
        while self.rbuf.len() - self.rpos < n {
            if self.rpos > 0 {
                self.rbuf.drain(..self.rpos);
                self.rpos = 0;
            }
            let have = self.rbuf.len();
            self.rbuf.resize(have + 65536, 0);
            let r = self.stream.read(&mut self.rbuf[have..]);
            match r {
                Ok(0) => {
                    self.rbuf.truncate(have);
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF"));
                }
                Ok(k) => self.rbuf.truncate(have + k),
                Err(e) => {
                    self.rbuf.truncate(have);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let buffered = (self.rbuf.len() - self.rpos).min(n);
        let mut out = Vec::with_capacity(n);
        out.extend_from_slice(&self.rbuf[self.rpos..self.rpos + buffered]);
        self.rpos += buffered;
        if out.len() < n {
            let have = out.len();
            out.resize(n, 0);
            self.stream.read_exact(&mut out[have..])?;
        }
        Ok(out)
    }

    /// Read one frame. Errors on EOF/timeout, or if the server masked it.
    pub fn read_frame(&mut self) -> io::Result<Frame> {
        self.fill(2)?;
        let b0 = self.rbuf[self.rpos];
        let b1 = self.rbuf[self.rpos + 1];
        self.rpos += 2;
        if b1 & 0x80 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server sent a masked frame",
            ));
        }
        let len = match b1 & 0x7F {
            126 => {
                let b = self.take(2)?;
                u16::from_be_bytes([b[0], b[1]]) as u64
            }
            127 => {
                let b = self.take(8)?;
                u64::from_be_bytes(b.try_into().unwrap())
            }
            n => n as u64,
        };
        if len > 64 * 1024 * 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("absurd frame length {len}"),
            ));
        }
        let payload = self.take(len as usize)?;
        Ok(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0xF,
            payload,
        })
    }

    pub fn expect_frame(&mut self, what: &str) -> Frame {
        self.read_frame()
            .unwrap_or_else(|e| panic!("{what}: reading frame: {e}"))
    }

    /// Next frame must be a Close; returns (code, reason).
    pub fn expect_close(&mut self, what: &str) -> (u16, String) {
        let f = self.expect_frame(what);
        assert_eq!(
            f.opcode,
            OP_CLOSE,
            "{what}: expected Close, got {}",
            f.describe()
        );
        f.close_code()
    }

    /// Reads frames until a Close; returns the non-close frames and (code, reason).
    pub fn read_until_close(&mut self, what: &str) -> (Vec<Frame>, u16, String) {
        let mut frames = Vec::new();
        loop {
            let f = self.expect_frame(what);
            if f.opcode == OP_CLOSE {
                let (c, r) = f.close_code();
                return (frames, c, r);
            }
            frames.push(f);
        }
    }

    /// The peer must close the TCP connection (EOF, or a reset) within the read timeout,
    /// without sending anything else.
    pub fn expect_eof(&mut self, what: &str) {
        if self.rbuf.len() > self.rpos {
            panic!(
                "{what}: expected EOF, {} unread bytes buffered",
                self.rbuf.len() - self.rpos
            );
        }
        let mut b = [0u8; 1024];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("{what}: expected EOF, got {n} bytes: {:?}", &b[..n.min(32)]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("{what}: expected EOF, got error {e}"),
        }
    }

    /// True if no byte arrives within `d` (and the connection is not closed).
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        if self.rbuf.len() > self.rpos {
            return false;
        }
        self.stream.set_read_timeout(Some(d)).unwrap();
        let mut b = [0u8; 1];
        let r = self.stream.peek(&mut b);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut)
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    pub fn shutdown_write(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Abort the TCP connection with a RST (SO_LINGER 0).
    pub fn reset(self) {
        let s = socket2::Socket::from(self.stream);
        let _ = s.set_linger(Some(Duration::from_secs(0)));
        drop(s);
    }
}

// ---------------------------------------------------------------------------
// Data helpers
// ---------------------------------------------------------------------------

thread_local! {
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new({
        let mut b = [0u8; 8];
        getrandom::getrandom(&mut b).unwrap();
        u64::from_ne_bytes(b) | 1
    });
}

pub fn next_random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        r.set(x);
        x
    })
}

pub fn fill_random(buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = next_random().to_ne_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// A 2 MiB block of deterministic pseudo-random bytes; `chunk(i, len)` picks a
/// distinct-looking window of it for frame `i` (cheap to generate and compare).
pub fn block() -> &'static [u8] {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let mut v = vec![0u8; 2 * 1024 * 1024];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for c in v.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_ne_bytes()[..c.len()]);
        }
        v
    })
}

pub fn chunk(i: usize, len: usize) -> &'static [u8] {
    assert!(len <= 1024 * 1024);
    let off = (i.wrapping_mul(7919) * 13) % (1024 * 1024);
    &block()[off..off + len]
}

/// `len` pseudo-random bytes (any size).
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill_random(&mut v);
    v
}

pub fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = ((b[0] as u32) << 16) | ((b[1] as u32) << 8) | b[2] as u32;
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// SHA-1 (only for checking Sec-WebSocket-Accept).
pub fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0];
    let mut msg = data.to_vec();
    let bitlen = (data.len() as u64) * 8;
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bitlen.to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for i in 0..16 {
            w[i] = u32::from_be_bytes(block[i * 4..i * 4 + 4].try_into().unwrap());
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let (mut a, mut b, mut c, mut d, mut e) = (h[0], h[1], h[2], h[3], h[4]);
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A827999),
                20..=39 => (b ^ c ^ d, 0x6ED9EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1BBCDC),
                _ => (b ^ c ^ d, 0xCA62C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
        h[4] = h[4].wrapping_add(e);
    }
    let mut out = [0u8; 20];
    for i in 0..5 {
        out[i * 4..i * 4 + 4].copy_from_slice(&h[i].to_be_bytes());
    }
    out
}

/// Poll `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sha1_and_accept_known_answer() {
    // RFC 6455 §1.3 example.
    assert_eq!(
        accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
}

// ---------------------------------------------------------------------------
// Process inspection and raw exchanges (added for tests/abuse.rs, tests/chaos.rs)
// ---------------------------------------------------------------------------

impl Relay {
    /// The relay child's process id (for /proc/PID/status and /proc/PID/fd).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole stderr log (log_tail() keeps only its end).
    pub fn log_all(&self) -> String {
        let s = std::fs::read(self.dir.join("stderr.log")).unwrap_or_default();
        String::from_utf8_lossy(&s).into_owned()
    }

    /// Panics if the relay exited or logged a panic.
    pub fn assert_healthy(&mut self, what: &str) {
        assert!(
            self.alive(),
            "{what}: relay process exited; log:\n{}",
            self.log_tail()
        );
        let log = self.log_all();
        assert!(
            !log.contains("panicked"),
            "{what}: relay logged a panic:\n{}",
            self.log_tail()
        );
    }

    /// Resident set size in KiB (VmRSS from /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_status_field(self.pid(), "VmRSS:").unwrap_or(0)
    }

    /// Number of open file descriptors (entries of /proc/PID/fd).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// One metric's value (summed over labels); 0 when absent.
    pub fn metric(&self, name: &str) -> f64 {
        metric_sum(&self.metrics(), name).unwrap_or(0.0)
    }
}

/// A numeric `/proc/PID/status` field (kB values).
pub fn proc_status_field(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// How a raw exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEnd {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Nothing more within the timeout; the connection is still open.
    Timeout,
    Other(String),
}

/// Sends `bytes` (write errors ignored: the peer may give up on us early), then reads
/// until EOF, reset or `timeout`. Returns what came back and how it ended.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Vec<u8>, RawEnd) {
    let mut s = tcp_connect(addr);
    let _ = s.write_all(bytes);
    read_all_until(&mut s, timeout)
}

/// Reads until EOF, reset or until `timeout` has passed in total.
pub fn read_all_until(s: &mut TcpStream, timeout: Duration) -> (Vec<u8>, RawEnd) {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (out, RawEnd::Timeout);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut tmp) {
            Ok(0) => return (out, RawEnd::Eof),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (out, RawEnd::Reset),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return (out, RawEnd::Timeout)
            }
            Err(e) => return (out, RawEnd::Other(e.to_string())),
        }
    }
}

/// The status code of an HTTP response at the start of `bytes`, if there is one.
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

/// A `Ws` over a stream whose upgrade was done by hand (its 101 head already consumed).
pub fn ws_from_stream(stream: TcpStream) -> Ws {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    Ws {
        stream,
        rbuf: Vec::new(),
        rpos: 0,
    }
}
