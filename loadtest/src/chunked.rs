//! The `http` scenario's client side of HTTP/1.1: the response head and a streaming decoder
//! for `transfer-encoding: chunked` bodies that hands out chunk data straight from the
//! caller's read buffer (no copy), so a 1 MiB read is decoded in a few slices.

use std::io;

/// Longest chunk-size line (with extensions) accepted.
const MAX_LINE: usize = 1024;
/// Most trailer bytes accepted after the last chunk.
const MAX_TRAILERS: usize = 16 << 10;
/// Largest response head accepted.
pub const MAX_HEAD: usize = 16 << 10;

/// What the decoder saw.
#[derive(Debug)]
pub enum ChunkEvent<'a> {
    /// Data of the chunk in progress; `offset` is where `bytes` starts within the chunk.
    Data { offset: u64, bytes: &'a [u8] },
    /// A chunk of `len` bytes ended (its CRLF is checked before the next event).
    ChunkEnd { len: u64 },
    /// The last chunk (`0`) and the trailer section ended: the body is complete.
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data {
        len: u64,
        done: u64,
    },
    /// The CRLF after a chunk's data; how many of its two bytes were seen.
    Crlf(u8),
    Trailers,
    Done,
}

/// Streaming chunked-body decoder.
pub struct ChunkedDecoder {
    state: State,
    /// A size or trailer line split across reads.
    line: Vec<u8>,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size,
            line: Vec::with_capacity(64),
            trailer_bytes: 0,
        }
    }
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses a chunk-size line (without its `\n`; it must end in `\r`). Extensions after
/// `;` are allowed and ignored.
fn parse_size_line(line: &[u8]) -> io::Result<u64> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(bad(format!(
            "chunk-size line not ended by CRLF: {:?}",
            String::from_utf8_lossy(line)
        )));
    };
    let end = line.iter().position(|&b| b == b';').unwrap_or(line.len());
    let digits = line[..end].trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return Err(bad(format!(
            "bad chunk size {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    let mut n = 0u64;
    for &b in digits {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => {
                return Err(bad(format!(
                    "bad chunk size {:?}",
                    String::from_utf8_lossy(line)
                )))
            }
        };
        n = (n << 4) | v as u64;
    }
    Ok(n)
}

impl ChunkedDecoder {
    /// True once the last chunk and its trailer section were read.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Takes one line ending in `\n` from `buf[*pos..]` (joined with a part kept from an
    /// earlier read); `None` when the line is not complete yet (its bytes are kept).
    fn take_line<'b>(
        line: &'b mut Vec<u8>,
        buf: &'b [u8],
        pos: &mut usize,
        limit: usize,
    ) -> io::Result<Option<&'b [u8]>> {
        let rest = &buf[*pos..];
        let room = limit.saturating_sub(line.len()) + 1;
        let look = &rest[..rest.len().min(room)];
        match look.iter().position(|&b| b == b'\n') {
            Some(i) => {
                *pos += i + 1;
                if line.is_empty() {
                    Ok(Some(&rest[..i]))
                } else {
                    line.extend_from_slice(&rest[..i]);
                    Ok(Some(&line[..]))
                }
            }
            None if look.len() < room => {
                line.extend_from_slice(look);
                *pos += look.len();
                Ok(None)
            }
            None => Err(bad(format!(
                "line longer than {limit} bytes in chunked body"
            ))),
        }
    }

    /// Decodes `buf`; returns how many bytes were used (less than `buf.len()` only when
    /// the body ended inside `buf`).
    pub fn feed(
        &mut self,
        buf: &[u8],
        on: &mut dyn FnMut(ChunkEvent<'_>) -> io::Result<()>,
    ) -> io::Result<usize> {
        let mut pos = 0;
        while pos < buf.len() {
            match self.state {
                State::Done => break,
                State::Size => {
                    let Some(l) = Self::take_line(&mut self.line, buf, &mut pos, MAX_LINE)? else {
                        continue;
                    };
                    let len = parse_size_line(l)?;
                    self.line.clear();
                    self.state = if len == 0 {
                        State::Trailers
                    } else {
                        State::Data { len, done: 0 }
                    };
                }
                State::Data { len, done } => {
                    let take = ((len - done) as usize).min(buf.len() - pos);
                    on(ChunkEvent::Data {
                        offset: done,
                        bytes: &buf[pos..pos + take],
                    })?;
                    pos += take;
                    let done = done + take as u64;
                    if done == len {
                        on(ChunkEvent::ChunkEnd { len })?;
                        self.state = State::Crlf(0);
                    } else {
                        self.state = State::Data { len, done };
                    }
                }
                State::Crlf(k) => {
                    let want = b"\r\n"[k as usize];
                    if buf[pos] != want {
                        return Err(bad(format!(
                            "chunk data not followed by CRLF (byte {:#04x})",
                            buf[pos]
                        )));
                    }
                    pos += 1;
                    self.state = if k == 0 { State::Crlf(1) } else { State::Size };
                }
                State::Trailers => {
                    let before = pos;
                    let l = Self::take_line(&mut self.line, buf, &mut pos, MAX_LINE)?;
                    self.trailer_bytes += pos - before;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err(bad("trailer section too large".into()));
                    }
                    let Some(l) = l else { continue };
                    if l == b"\r" {
                        self.state = State::Done;
                        on(ChunkEvent::Last)?;
                    } else if l.last() != Some(&b'\r') {
                        return Err(bad("trailer line not ended by CRLF".into()));
                    }
                    self.line.clear();
                }
            }
        }
        Ok(pos)
    }
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub chunked: bool,
    pub content_length: Option<u64>,
    pub connection_close: bool,
}

/// The end of the head (after its `\r\n\r\n`) if `buf` holds it whole.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Parses `HTTP/1.1 NNN ...` and the headers the reader cares about.
pub fn parse_head(head: &[u8]) -> io::Result<ResponseHead> {
    let text = std::str::from_utf8(head).map_err(|_| bad("response head not UTF-8".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|_| version.starts_with("HTTP/1."))
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut h = ResponseHead {
        status,
        chunked: false,
        content_length: None,
        connection_close: false,
    };
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("transfer-encoding") {
            h.chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        } else if k.eq_ignore_ascii_case("content-length") {
            h.content_length = v.parse().ok();
        } else if k.eq_ignore_ascii_case("connection") {
            h.connection_close = v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    Ok(h)
}

/// Writes the chunk-size line for `len` (`{len:x}\r\n`) into `out`; returns its length.
pub fn put_size_line(out: &mut [u8], len: usize) -> usize {
    let digits = ((usize::BITS - len.leading_zeros()) as usize)
        .div_ceil(4)
        .max(1);
    for (i, o) in out[..digits].iter_mut().enumerate() {
        let nibble = (len >> (4 * (digits - 1 - i))) & 0xF;
        *o = b"0123456789abcdef"[nibble];
    }
    out[digits] = b'\r';
    out[digits + 1] = b'\n';
    digits + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(wire: &[u8], split: usize) -> io::Result<(Vec<Vec<u8>>, usize)> {
        let mut d = ChunkedDecoder::default();
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut cur = Vec::new();
        let mut used = 0;
        let mut last = false;
        for c in wire.chunks(split) {
            used += d.feed(c, &mut |e| {
                match e {
                    ChunkEvent::Data { offset, bytes } => {
                        assert_eq!(offset as usize, cur.len());
                        cur.extend_from_slice(bytes);
                    }
                    ChunkEvent::ChunkEnd { len } => {
                        assert_eq!(len as usize, cur.len());
                        chunks.push(std::mem::take(&mut cur));
                    }
                    ChunkEvent::Last => last = true,
                }
                Ok(())
            })?;
            if d.done() {
                break;
            }
        }
        assert_eq!(last, d.done());
        Ok((chunks, used))
    }

    #[test]
    fn decodes_at_any_split() {
        let a: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        let b = b"hello\r\n0\r\n".to_vec();
        let mut wire = Vec::new();
        let mut line = [0u8; 20];
        let n = put_size_line(&mut line, a.len());
        assert_eq!(&line[..n], b"11170\r\n");
        wire.extend_from_slice(&line[..n]);
        wire.extend_from_slice(&a);
        wire.extend_from_slice(b"\r\nA;name=\"x\"\r\n");
        wire.extend_from_slice(&b);
        wire.extend_from_slice(b"\r\n0\r\nx-trailer: 1\r\n\r\nEXTRA");
        let body_len = wire.len() - 5;
        for split in [1usize, 2, 3, 5, 7, 13, 4096, 65_536, wire.len()] {
            let (chunks, used) = decode_all(&wire, split).unwrap();
            assert_eq!(chunks, vec![a.clone(), b.clone()], "split {split}");
            // Everything up to the end of the body is used, nothing after it.
            let whole_parts = body_len / split * split;
            assert!(used >= whole_parts && used <= body_len, "split {split}");
        }
        let (_, used) = decode_all(&wire, wire.len()).unwrap();
        assert_eq!(used, body_len);
    }

    #[test]
    fn rejects_bad_framing() {
        for wire in [
            &b"zz\r\nab\r\n0\r\n\r\n"[..],
            b"2\r\nabXX0\r\n\r\n",
            b"2\nab\r\n0\r\n\r\n",
            b"\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            for split in [1, wire.len()] {
                assert!(decode_all(wire, split).is_err(), "{wire:?}");
            }
        }
        let long = vec![b'1'; 5000];
        assert!(decode_all(&long, 100).is_err());
        // Incomplete is not an error, just not done.
        let mut d = ChunkedDecoder::default();
        d.feed(b"4\r\nab", &mut |_| Ok(())).unwrap();
        assert!(!d.done());
    }

    #[test]
    fn parses_head() {
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.status, 200);
        assert!(h.chunked && h.connection_close);
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\nrest";
        assert_eq!(head_end(raw), Some(raw.len() - 4));
        let h = parse_head(&raw[..head_end(raw).unwrap()]).unwrap();
        assert_eq!(
            (h.status, h.chunked, h.content_length),
            (404, false, Some(0))
        );
    }
}
