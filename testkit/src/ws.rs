//! A raw RFC 6455 client on a plain `TcpStream` ([`Ws`]): the upgrade ([`ws_handshake`],
//! [`ws_connect`], [`raw_handshake`]), client frames built byte by byte ([`encode_frame`],
//! [`frame`], legal or not), and server frames read back as they came ([`Frame`]).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::control::ChannelInfo;
use crate::data::fill_random;
use crate::http::{header_of, read_head_into, Head, Headers};
use crate::relay::Relay;
use crate::tcp::{self, tcp_connect, IO_TIMEOUT};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Path of a channel end on the data plane (`dir` is `read` or `write`).
pub fn ws_path(id: &str, key: &str, dir: &str) -> String {
    format!("/ws/channels/{id}?key={key}&dir={dir}")
}

impl Relay {
    /// A channel end, upgraded (101 and a correct accept asserted).
    pub fn connect(&self, ch: &ChannelInfo, dir: &str) -> Ws {
        ws_connect(self.data, &ch.path(dir))
    }

    /// An upgrade attempt on `path` with `extra` headers, whatever the answer.
    pub fn try_connect(&self, path: &str, extra: &[(&str, &str)]) -> (HandshakeResponse, Ws) {
        ws_handshake(self.data, path, extra)
    }
}

/// The answer to an upgrade request.
#[derive(Debug)]
pub struct HandshakeResponse {
    pub status: u16,
    pub headers: Headers,
    /// The Sec-WebSocket-Key we sent.
    pub key: String,
}

impl HandshakeResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn random_ws_key() -> String {
    let mut k = [0u8; 16];
    fill_random(&mut k);
    BASE64.encode(k)
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2).
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    BASE64.encode(h.finalize())
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
pub fn raw_handshake(addr: SocketAddr, request: &[u8]) -> (u16, Headers, Ws) {
    let mut s = tcp_connect(addr);
    s.write_all(request).expect("write handshake");
    let mut rest = Vec::new();
    let head = read_head_into(&mut s, &mut rest).expect("read handshake response");
    let head = Head::expect(&head);
    (
        head.status,
        head.headers,
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

/// A `Ws` over a stream whose upgrade was done by hand (its 101 head already consumed).
pub fn ws_from_stream(stream: TcpStream) -> Ws {
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    Ws {
        stream,
        rbuf: Vec::new(),
        rpos: 0,
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

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A frame as the server sent it.
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

/// A Close frame's payload: the code, big-endian, then the reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// XORs `buf` with the mask `key` (`buf[0]` at mask phase 0).
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

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// An upgraded connection: frames out (masked unless built otherwise), frames in.
pub struct Ws {
    pub stream: TcpStream,
    rbuf: Vec<u8>,
    rpos: usize,
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
        tcp::expect_eof(&mut self.stream, what);
    }

    /// True if no byte arrives within `d` (and the connection is not closed).
    pub fn quiet_for(&mut self, d: Duration) -> bool {
        self.rbuf.len() <= self.rpos && tcp::quiet_for(&self.stream, d)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_and_accept_known_answer() {
        // RFC 6455 §1.3 example.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn ws_key_is_16_bytes_base64() {
        let k = random_ws_key();
        assert_eq!(BASE64.decode(&k).unwrap().len(), 16, "{k}");
    }

    #[test]
    fn frames_encode_all_length_forms_and_mask() {
        let f = encode_frame(true, 0, OP_TEXT, b"hi", None);
        assert_eq!(f, [0x81, 2, b'h', b'i']);
        let f = encode_frame(false, 1, OP_BINARY, &[7; 126], None);
        assert_eq!(&f[..4], [0x12, 126, 0, 126]);
        let f = encode_frame(true, 0, OP_BINARY, &[7; 65536], None);
        assert_eq!(&f[..10], [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        let mut f = encode_frame(
            true,
            0,
            OP_CLOSE,
            &close_payload(1000, "bye"),
            Some([1, 2, 3, 4]),
        );
        assert_eq!(&f[..6], [0x88, 0x80 | 5, 1, 2, 3, 4]);
        apply_mask(&mut f[6..], [1, 2, 3, 4]);
        assert_eq!(&f[6..], [0x03, 0xE8, b'b', b'y', b'e']);
    }
}
