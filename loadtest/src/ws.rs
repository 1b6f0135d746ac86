//! A small hand-written RFC 6455 client: handshake, masked frames out, frames in.
//! Blocking std sockets; everything a hot loop touches works on u64 words.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chanrelay_testkit::{find, read_head_into};

pub const OP_CONT: u8 = 0x0;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Socket timeouts for every client socket: nothing in the load generator blocks forever.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A tiny xorshift generator: mask keys and pattern bytes (not cryptographic; the relay
/// only needs masks to be present).
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn mask_word(mask: [u8; 4], phase: usize) -> u64 {
    let mut m = [0u8; 8];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(i + phase) & 3];
    }
    u64::from_ne_bytes(m)
}

/// `dst = src ^ mask` where `src[0]` is at mask phase 0; word-wide.
pub fn xor_copy(dst: &mut [u8], src: &[u8], mask: [u8; 4]) {
    debug_assert_eq!(dst.len(), src.len());
    let m = mask_word(mask, 0);
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (dc, sc) in (&mut d).zip(&mut s) {
        let v = u64::from_ne_bytes(sc.try_into().unwrap()) ^ m;
        dc.copy_from_slice(&v.to_ne_bytes());
    }
    let base = src.len() - s.remainder().len();
    for (i, (dc, sc)) in d.into_remainder().iter_mut().zip(s.remainder()).enumerate() {
        *dc = sc ^ mask[(base + i) & 3];
    }
}

/// Unmasks `buf` in place; `buf[0]` is at payload offset `offset`.
pub fn unmask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let m = mask_word(mask, offset & 3);
    let len = buf.len();
    let mut it = buf.chunks_exact_mut(8);
    for c in &mut it {
        let v = u64::from_ne_bytes((&*c).try_into().unwrap()) ^ m;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    let done = len - it.into_remainder().len();
    for (i, b) in buf.iter_mut().enumerate().skip(done) {
        *b ^= mask[(offset + i) & 3];
    }
}

/// Client frame header (masked) for a payload of `len` bytes; returns its length.
pub fn client_header(out: &mut [u8], fin: bool, opcode: u8, len: usize, mask: [u8; 4]) -> usize {
    out[0] = if fin { 0x80 } else { 0 } | opcode;
    let n = if len < 126 {
        out[1] = 0x80 | len as u8;
        2
    } else if len <= 0xFFFF {
        out[1] = 0x80 | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[1] = 0x80 | 127;
        out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    out[n..n + 4].copy_from_slice(&mask);
    n + 4
}

pub fn client_header_len(len: usize) -> usize {
    if len < 126 {
        6
    } else if len <= 0xFFFF {
        8
    } else {
        14
    }
}

/// A whole masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mask = (rng.next_u64() as u32).to_ne_bytes();
    let mut out = vec![0u8; client_header_len(payload.len()) + payload.len()];
    let h = client_header(&mut out, true, opcode, payload.len(), mask);
    xor_copy(&mut out[h..], payload, mask);
    out
}

pub fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

/// What the parser saw.
pub enum Event<'a> {
    /// Payload bytes of a data frame (`offset` within the frame), already unmasked.
    Data {
        opcode: u8,
        offset: u64,
        bytes: &'a [u8],
    },
    /// A data frame ended (`len` payload bytes).
    FrameEnd { opcode: u8, len: u64 },
    /// A Close frame (code, 1005 when absent). Nothing after it is parsed.
    Close(u16),
    /// A Ping (the caller may answer it).
    Ping,
}

/// Streaming frame parser: accepts masked and unmasked frames (baselines deliver the
/// writer's masked frames as they are). Control frames are collected whole.
pub struct Parser {
    hdr: Vec<u8>,
    /// Payload in progress: (opcode, total, done, mask)
    cur: Option<(u8, u64, u64, Option<[u8; 4]>)>,
    ctl: Vec<u8>,
    pub closed: bool,
    /// Opcode of the message in progress (for continuation frames).
    msg_op: u8,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            hdr: Vec::with_capacity(14),
            cur: None,
            ctl: Vec::new(),
            closed: false,
            msg_op: OP_BINARY,
        }
    }
}

fn header_len(b: &[u8]) -> Option<usize> {
    if b.len() < 2 {
        return None;
    }
    let masked = b[1] & 0x80 != 0;
    let n = match b[1] & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    } + if masked { 4 } else { 0 };
    Some(n)
}

/// (first byte without FIN, payload length, mask) of a complete header.
fn decode_header(h: &[u8]) -> (u8, u64, Option<[u8; 4]>) {
    let (len, at) = match h[1] & 0x7F {
        126 => (u16::from_be_bytes([h[2], h[3]]) as u64, 4),
        127 => (u64::from_be_bytes(h[2..10].try_into().unwrap()), 10),
        l => (l as u64, 2),
    };
    let mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
    (h[0] & 0x7F, len, mask)
}

impl Parser {
    /// Feeds `buf` (mutable: masked payloads are unmasked in place).
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Event<'_>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut pos = 0;
        while pos < buf.len() && !self.closed {
            match self.cur {
                None => {
                    // Fast path: a whole header in `buf`; else gather it byte by byte.
                    let parsed = if self.hdr.is_empty() {
                        match header_len(&buf[pos..]) {
                            Some(need) if buf.len() - pos >= need => {
                                let h = decode_header(&buf[pos..pos + need]);
                                pos += need;
                                Some(h)
                            }
                            _ => None,
                        }
                    } else {
                        None
                    };
                    let (op0, len, mask) = match parsed {
                        Some(h) => h,
                        None => {
                            while self.hdr.len() < 2 && pos < buf.len() {
                                self.hdr.push(buf[pos]);
                                pos += 1;
                            }
                            let Some(need) = header_len(&self.hdr) else {
                                continue;
                            };
                            while self.hdr.len() < need && pos < buf.len() {
                                self.hdr.push(buf[pos]);
                                pos += 1;
                            }
                            if self.hdr.len() < need {
                                continue;
                            }
                            let h = decode_header(&self.hdr);
                            self.hdr.clear();
                            h
                        }
                    };
                    if op0 & 0x70 != 0 {
                        return Err(io::Error::other("reserved bits set"));
                    }
                    let mut op = op0 & 0x0F;
                    if op == OP_CONT {
                        op = self.msg_op;
                    } else if op < 8 {
                        self.msg_op = op;
                    }
                    self.cur = Some((op, len, 0, mask));
                    self.ctl.clear();
                    if len == 0 {
                        self.finish_frame(on)?;
                    }
                }
                Some((op, len, done, mask)) => {
                    let take = ((len - done) as usize).min(buf.len() - pos);
                    let chunk = &mut buf[pos..pos + take];
                    if let Some(m) = mask {
                        unmask(chunk, m, done as usize);
                    }
                    if op >= 8 {
                        self.ctl.extend_from_slice(chunk);
                    } else {
                        on(Event::Data {
                            opcode: op,
                            offset: done,
                            bytes: chunk,
                        })?;
                    }
                    pos += take;
                    let done = done + take as u64;
                    self.cur = Some((op, len, done, mask));
                    if done == len {
                        self.finish_frame(on)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn finish_frame(&mut self, on: &mut dyn FnMut(Event<'_>) -> io::Result<()>) -> io::Result<()> {
        let (op, len, _, _) = self.cur.take().unwrap();
        match op {
            OP_CLOSE => {
                self.closed = true;
                let code = if self.ctl.len() >= 2 {
                    u16::from_be_bytes([self.ctl[0], self.ctl[1]])
                } else {
                    1005
                };
                on(Event::Close(code))
            }
            OP_PING => on(Event::Ping),
            OP_PONG => Ok(()),
            _ => on(Event::FrameEnd { opcode: op, len }),
        }
    }
}

/// A connected WebSocket client end: the stream and any bytes read past the handshake.
pub struct WsConn {
    pub stream: TcpStream,
    pub leftover: Vec<u8>,
}

pub fn tune(s: &TcpStream) -> io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(())
}

/// Client handshake: `GET path` with an Upgrade; expects `101`.
pub fn connect(addr: &str, path: &str) -> io::Result<WsConn> {
    let mut s = TcpStream::connect(addr)?;
    tune(&s)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut leftover = Vec::new();
    let head = read_head_into(&mut s, &mut leftover)?;
    if !head.starts_with(b"HTTP/1.1 101") {
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or("").to_string();
        return Err(io::Error::other(format!("handshake refused: {line}")));
    }
    Ok(WsConn {
        stream: s,
        leftover,
    })
}

/// Server side of the handshake for the baselines' rendezvous: returns the request path.
pub fn accept_handshake(s: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut leftover = Vec::new();
    let head = read_head_into(s, &mut leftover)?;
    let text = String::from_utf8_lossy(&head);
    let line = text.lines().next().unwrap_or("");
    let path = line.split(' ').nth(1).unwrap_or("").to_string();
    s.write_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    )?;
    Ok((path, leftover))
}

/// A minimal keep-alive HTTP/1.1 client for the control API.
pub struct Http {
    addr: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Http {
    pub fn new(addr: &str) -> Http {
        Http {
            addr: addr.to_string(),
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Sends one request; returns (status, body). Reconnects once if the kept-alive
    /// connection was closed.
    pub fn request(&mut self, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
        for attempt in 0..2 {
            match self.try_request(method, path, body) {
                Ok(r) => return Ok(r),
                Err(e) if attempt == 0 => {
                    self.stream = None;
                    let _ = e;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    fn try_request(&mut self, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr)?;
            tune(&s)?;
            self.stream = Some(s);
            self.buf.clear();
        }
        let s = self.stream.as_mut().unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        s.write_all(req.as_bytes())?;
        let mut tmp = [0u8; 4096];
        loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..p]).to_string();
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| io::Error::other("bad status line"))?;
                let clen = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.trim()
                            .eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                while self.buf.len() < p + 4 + clen {
                    let n = s.read(&mut tmp)?;
                    if n == 0 {
                        return Err(io::Error::other("eof in body"));
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                }
                let body = String::from_utf8_lossy(&self.buf[p + 4..p + 4 + clen]).to_string();
                self.buf.drain(..p + 4 + clen);
                if head.to_ascii_lowercase().contains("connection: close") {
                    self.stream = None;
                }
                return Ok((status, body));
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof"));
            }
            self.buf.extend_from_slice(&tmp[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_roundtrip_and_parse() {
        let mut rng = Rng::new(7);
        let mut payload = vec![0u8; 70_001];
        rng.fill(&mut payload);
        let mut wire = client_frame(OP_BINARY, &payload, &mut rng);
        wire.extend(client_frame(OP_CLOSE, &close_payload(1000), &mut rng));
        for split in [1usize, 3, 7, 100, 65_536, wire.len()] {
            let mut p = Parser::default();
            let mut got = Vec::new();
            let mut close = None;
            for c in wire.clone().chunks_mut(split) {
                p.feed(c, &mut |e| {
                    match e {
                        Event::Data { offset, bytes, .. } => {
                            assert_eq!(offset as usize, got.len());
                            got.extend_from_slice(bytes)
                        }
                        Event::Close(c) => close = Some(c),
                        _ => {}
                    }
                    Ok(())
                })
                .unwrap();
            }
            assert_eq!(got, payload);
            assert_eq!(close, Some(1000));
        }
    }

    #[test]
    fn unmask_any_phase() {
        let mask = [1, 2, 3, 4];
        let src: Vec<u8> = (0..100u8).collect();
        let mut m = vec![0; 100];
        xor_copy(&mut m, &src, mask);
        for off in 0..9 {
            let mut part = m[off..].to_vec();
            unmask(&mut part, mask, off);
            assert_eq!(part, &src[off..]);
        }
    }
}
