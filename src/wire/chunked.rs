//! HTTP/1.1 chunked transfer coding: rendering forwarded frames as chunks in place, and
//! decoding a chunked request body.

use std::ops::Range;

use super::forward::Piece;
use super::frame::Opcode;

/// Writes `{len:x}\r\n` ending right before `end` in `buf`; returns its start.
fn write_chunk_size(buf: &mut [u8], end: usize, len: u64) -> usize {
    let digits = (64 - len.leading_zeros() as usize).div_ceil(4).max(1);
    let start = end - digits - 2;
    for i in 0..digits {
        let nibble = ((len >> (4 * (digits - 1 - i))) & 0xF) as u8;
        buf[start + i] = b"0123456789abcdef"[nibble as usize];
    }
    buf[end - 2] = b'\r';
    buf[end - 1] = b'\n';
    start
}

/// Bytes `write_chunk_size` needs for `len`.
pub fn chunk_size_len(len: u64) -> usize {
    (64 - len.leading_zeros() as usize).div_ceil(4).max(1) + 2
}

/// How forwarded binary frames become an HTTP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Each binary frame is one chunk.
    Chunked,
    /// Payload bytes as they are (content-length set, or close-delimited).
    Identity,
}

/// Whether `p` belongs to a text message; `in_text` tracks fragmented text messages and
/// must be carried from piece to piece.
pub fn piece_is_text(p: &Piece, in_text: &mut bool) -> bool {
    let is_text = match p.opcode {
        Opcode::Text => true,
        Opcode::Continuation => *in_text,
        _ => false,
    };
    if p.ends && p.fin {
        *in_text = false;
    } else if p.starts && p.opcode == Opcode::Text {
        *in_text = true;
    }
    is_text
}

/// Bytes of the CRLF that ends a chunk's data. `render_body` writes it right after the last
/// chunk of a buffer when the buffer has this much room there.
pub const CHUNK_CRLF_LEN: usize = 2;

/// Renders the binary-frame payloads among `pieces` of `buf` as body bytes, in place, and
/// returns the ranges to send. Text frames and fragments of text messages are skipped.
/// `crlf_pending` carries "a chunk's data ended; its CRLF is not sent yet" across buffers.
/// `in_text` carries "inside a fragmented text message". Bytes of `buf` after the last
/// piece must be spent (the caller has taken any carried partial frame out first): the
/// last chunk's CRLF is written there.
pub fn render_body(
    buf: &mut [u8],
    pieces: &[Piece],
    framing: BodyFraming,
    crlf_pending: &mut bool,
    in_text: &mut bool,
    out: &mut Vec<Range<usize>>,
) {
    out.clear();
    let mut last_body_end = None;
    for p in pieces {
        if piece_is_text(p, in_text) {
            continue;
        }
        last_body_end = Some(p.payload.end);
        match framing {
            BodyFraming::Identity => push(out, p.payload.clone()),
            BodyFraming::Chunked => {
                if p.starts {
                    if p.frame_len == 0 {
                        // An empty frame would read as the last chunk: send nothing.
                        continue;
                    }
                    // The client header (≥ 6 bytes) always has room for CRLF + size line.
                    let mut start = write_chunk_size(buf, p.payload.start, p.frame_len);
                    if *crlf_pending {
                        start -= CHUNK_CRLF_LEN;
                        buf[start] = b'\r';
                        buf[start + 1] = b'\n';
                        *crlf_pending = false;
                    }
                    debug_assert!(start >= p.gap_start);
                    push(out, start..p.payload.end);
                } else {
                    push(out, p.payload.clone());
                }
                if p.ends {
                    *crlf_pending = true;
                }
            }
        }
    }
    // Finish the last chunk now when the buffer has room after it (what follows there is
    // spent), so a client that waits for the chunk's CRLF gets an SSE event at once.
    if let Some(end) = last_body_end.filter(|&e| *crlf_pending && e + CHUNK_CRLF_LEN <= buf.len()) {
        buf[end] = b'\r';
        buf[end + 1] = b'\n';
        push(out, end..end + CHUNK_CRLF_LEN);
        *crlf_pending = false;
    }
}

fn push(out: &mut Vec<Range<usize>>, r: Range<usize>) {
    if r.is_empty() {
        return;
    }
    match out.last_mut() {
        Some(last) if last.end == r.start => last.end = r.end,
        _ => out.push(r),
    }
}

/// The end of a chunked body (with the CRLF of the last chunk if still owed).
pub fn last_chunk(crlf_pending: bool) -> &'static [u8] {
    if crlf_pending {
        b"\r\n0\r\n\r\n"
    } else {
        b"0\r\n\r\n"
    }
}

/// Longest chunk-size line (with extensions) accepted.
pub const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DecodeState {
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkedError {
    BadSize,
    LineTooLong,
    MissingCrlf,
}

/// Decodes a chunked body incrementally.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: DecodeState,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: DecodeState::Size,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == DecodeState::Done
    }

    /// Decodes from `buf`; pushes data ranges into `data` and returns the bytes consumed
    /// (the rest is an incomplete line to carry into the next read).
    pub fn decode(
        &mut self,
        buf: &[u8],
        data: &mut Vec<Range<usize>>,
    ) -> Result<usize, ChunkedError> {
        let mut pos = 0;
        while pos < buf.len() {
            match self.state {
                DecodeState::Size => {
                    let Some(nl) = find_crlf(&buf[pos..]) else {
                        if buf.len() - pos > MAX_CHUNK_LINE {
                            return Err(ChunkedError::LineTooLong);
                        }
                        break;
                    };
                    let line = &buf[pos..pos + nl];
                    let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
                    let hex = std::str::from_utf8(hex)
                        .map_err(|_| ChunkedError::BadSize)?
                        .trim();
                    if hex.is_empty()
                        || hex.len() > 15
                        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ChunkedError::BadSize);
                    }
                    let n = u64::from_str_radix(hex, 16).map_err(|_| ChunkedError::BadSize)?;
                    pos += nl + 2;
                    self.state = if n == 0 {
                        DecodeState::Trailers
                    } else {
                        DecodeState::Data(n)
                    };
                }
                DecodeState::Data(n) => {
                    let take = n.min((buf.len() - pos) as u64) as usize;
                    data.push(pos..pos + take);
                    pos += take;
                    self.state = if take as u64 == n {
                        DecodeState::DataCrlf
                    } else {
                        DecodeState::Data(n - take as u64)
                    };
                }
                DecodeState::DataCrlf => {
                    if buf.len() - pos < 2 {
                        break;
                    }
                    if &buf[pos..pos + 2] != b"\r\n" {
                        return Err(ChunkedError::MissingCrlf);
                    }
                    pos += 2;
                    self.state = DecodeState::Size;
                }
                DecodeState::Trailers => {
                    let Some(nl) = find_crlf(&buf[pos..]) else {
                        if buf.len() - pos > MAX_CHUNK_LINE {
                            return Err(ChunkedError::LineTooLong);
                        }
                        break;
                    };
                    pos += nl + 2;
                    if nl == 0 {
                        self.state = DecodeState::Done;
                    }
                }
                DecodeState::Done => break,
            }
        }
        Ok(pos)
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::forward::{Batch, FrameForwarder};

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        crate::wire::forward::tests::client_frame(fin, opcode, payload, [3, 1, 4, 1])
    }

    /// Runs frames through forwarder + chunk renderer at every split size, then decodes.
    #[test]
    fn chunked_render_roundtrips_at_any_split() {
        let sizes = [1usize, 125, 126, 300, 65535, 65536, 70000, 0, 5];
        let mut input = client_frame(true, 1, br#"{"type":"set_status","status_code":201}"#);
        let mut expected = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (j * 31 + i) as u8).collect();
            input.extend(client_frame(true, 2, &payload));
            input.extend(client_frame(true, 1, b"progress"));
            expected.extend_from_slice(&payload);
        }
        for split in [1usize, 6, 7, 100, 4096, 1 << 20] {
            let mut fwd = FrameForwarder::new(1 << 30);
            let mut batch = Batch::default();
            let (mut crlf, mut in_text) = (false, false);
            let mut body = Vec::new();
            let mut carry = Vec::new();
            let mut ranges = Vec::new();
            for piece in input.chunks(split) {
                let mut buf = carry.clone();
                buf.extend_from_slice(piece);
                fwd.process(&mut buf, &mut batch).unwrap();
                // As the pump does: carried bytes are taken before rendering, which may
                // write into the spent bytes after the last frame.
                carry = buf[batch.consumed..].to_vec();
                render_body(
                    &mut buf,
                    &batch.pieces,
                    BodyFraming::Chunked,
                    &mut crlf,
                    &mut in_text,
                    &mut ranges,
                );
                for r in &ranges {
                    body.extend_from_slice(&buf[r.clone()]);
                }
            }
            body.extend_from_slice(last_chunk(crlf));
            let mut dec = ChunkedDecoder::default();
            let mut data = Vec::new();
            let used = dec.decode(&body, &mut data).unwrap();
            assert_eq!(used, body.len(), "split {split}");
            assert!(dec.is_done());
            let decoded: Vec<u8> = data.iter().flat_map(|r| body[r.clone()].to_vec()).collect();
            assert_eq!(decoded, expected, "split {split}");
        }
    }

    #[test]
    fn decoder_rejects_garbage_and_handles_splits() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for split in 1..body.len() {
            let mut dec = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut carry: Vec<u8> = Vec::new();
            for piece in body.chunks(split) {
                carry.extend_from_slice(piece);
                let mut data = Vec::new();
                let used = dec.decode(&carry, &mut data).unwrap();
                for r in data {
                    out.extend_from_slice(&carry[r]);
                }
                carry.drain(..used);
            }
            assert_eq!(out, b"hello world", "split {split}");
            assert!(dec.is_done());
        }
        assert!(ChunkedDecoder::default()
            .decode(b"zz\r\n", &mut Vec::new())
            .is_err());
        assert!(ChunkedDecoder::default()
            .decode(b"1\r\nabc", &mut Vec::new())
            .is_err());
        assert_eq!(chunk_size_len(0xffff), 6);
    }
}
