//! WebSocket frame headers (RFC 6455 §5.2): parse client headers, build server headers,
//! unmask payloads in place. Pure functions on byte slices.

/// Opcode of a WebSocket frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    pub fn as_u8(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    pub fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest possible frame header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    pub opcode: Opcode,
    /// `None` for an unmasked frame.
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header occupies on the wire.
    pub header_len: usize,
}

/// Why a frame header was refused. Maps to close code 1002, except `TooLarge` (1009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    ReservedBits,
    BadOpcode(u8),
    Unmasked,
    BadControlFrame,
    /// The 64-bit length had its most significant bit set.
    BadLength,
    TooLarge(u64),
}

impl FrameError {
    /// The close code this error is answered with.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooLarge(_) => 1009,
            _ => 1002,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            FrameError::ReservedBits => "reserved bits set",
            FrameError::BadOpcode(_) => "unknown opcode",
            FrameError::Unmasked => "client frames must be masked",
            FrameError::BadControlFrame => "invalid control frame",
            FrameError::BadLength => "invalid payload length",
            FrameError::TooLarge(_) => "frame too large",
        }
    }
}

/// Parses a client frame header from the start of `buf`.
/// `Ok(None)` means more bytes are needed. Client frames must be masked.
pub fn parse_client_header(
    buf: &[u8],
    max_payload: u64,
) -> Result<Option<FrameHeader>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let opcode = Opcode::from_u8(b0 & 0x0F).ok_or(FrameError::BadOpcode(b0 & 0x0F))?;
    let fin = b0 & 0x80 != 0;
    let masked = b1 & 0x80 != 0;
    if !masked {
        return Err(FrameError::Unmasked);
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && (!fin || len7 > MAX_CONTROL_PAYLOAD as u8) {
        return Err(FrameError::BadControlFrame);
    }
    let (payload_len, len_bytes) = match len7 {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(b);
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 8)
        }
        n => (n as u64, 0),
    };
    if payload_len > max_payload {
        return Err(FrameError::TooLarge(payload_len));
    }
    let header_len = 2 + len_bytes + 4;
    if buf.len() < header_len {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[2 + len_bytes..header_len]);
    Ok(Some(FrameHeader {
        fin,
        opcode,
        mask: Some(mask),
        payload_len,
        header_len,
    }))
}

/// Length of the unmasked (server) header for a payload of `len` bytes.
pub fn server_header_len(len: u64) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as u64 {
        4
    } else {
        10
    }
}

/// Writes an unmasked server frame header into `out` (which must be exactly
/// `server_header_len(len)` bytes long).
pub fn write_server_header(out: &mut [u8], fin: bool, opcode: Opcode, len: u64) {
    debug_assert_eq!(out.len(), server_header_len(len));
    out[0] = (if fin { 0x80 } else { 0 }) | opcode.as_u8();
    match out.len() {
        2 => out[1] = len as u8,
        4 => {
            out[1] = 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out[1] = 127;
            out[2..10].copy_from_slice(&len.to_be_bytes());
        }
    }
}

/// A complete unmasked server frame (used for small control frames and tests).
pub fn server_frame(opcode: Opcode, payload: &[u8]) -> Vec<u8> {
    let hl = server_header_len(payload.len() as u64);
    let mut out = vec![0u8; hl + payload.len()];
    write_server_header(&mut out[..hl], true, opcode, payload.len() as u64);
    out[hl..].copy_from_slice(payload);
    out
}

/// A complete masked client frame, minimal length form — what a WebSocket client sends.
/// The relay never sends one; tests, benches and load generators build their input with it.
pub fn client_frame(fin: bool, opcode: Opcode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let n = payload.len();
    let mut f = Vec::with_capacity(n + MAX_HEADER_LEN);
    f.push((if fin { 0x80 } else { 0 }) | opcode.as_u8());
    if n < 126 {
        f.push(0x80 | n as u8);
    } else if n <= u16::MAX as usize {
        f.push(0x80 | 126);
        f.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(n as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A server Close frame with `code` and a UTF-8 `reason` (truncated to fit 125 bytes).
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    let mut r = reason;
    while r.len() > MAX_CONTROL_PAYLOAD - 2 {
        let mut cut = MAX_CONTROL_PAYLOAD - 2;
        while !r.is_char_boundary(cut) {
            cut -= 1;
        }
        r = &r[..cut];
    }
    payload.extend_from_slice(r.as_bytes());
    server_frame(Opcode::Close, &payload)
}

/// Parses a Close payload into (code, reason). An empty payload means 1005 (no status).
/// A 1-byte payload is a protocol error.
pub fn parse_close_payload(payload: &[u8]) -> Result<(u16, &[u8]), FrameError> {
    match payload.len() {
        0 => Ok((1005, &[])),
        1 => Err(FrameError::BadControlFrame),
        _ => Ok((u16::from_be_bytes([payload[0], payload[1]]), &payload[2..])),
    }
}

/// The mask as it applies from payload position `offset` on (it repeats every 4 bytes).
pub fn phased_mask(mask: [u8; 4], offset: usize) -> [u8; 4] {
    std::array::from_fn(|i| mask[(offset + i) % 4])
}

/// A phased mask repeated over a `u64`, for unmasking 8 bytes at a time.
fn mask_word(key: [u8; 4]) -> u64 {
    let key32 = u32::from_ne_bytes(key) as u64;
    key32 | (key32 << 32)
}

/// Unmasks `data` in place. `offset` is the position of `data[0]` within the frame's
/// payload (the mask repeats every 4 bytes). Works a `u64` at a time: a byte loop costs
/// ~10× more on large frames.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let key = phased_mask(mask, offset);
    let key64 = mask_word(key);
    let split = data.len() / 8 * 8;
    let (words, tail) = data.split_at_mut(split);
    for chunk in words.chunks_exact_mut(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        let v = u64::from_ne_bytes(b) ^ key64;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in tail.iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Unmasks the `len` bytes at `buf[from..]` and writes them to `buf[to..]`, in one pass:
/// `to <= from` (equal: in place). `offset` is as for [`unmask`]. Going forward a word at a
/// time is safe for an overlapping move towards the front: each word is read before the
/// store that may overlap it, and a store never reaches a byte not yet read.
///
/// Panics if `to > from` or `from + len > buf.len()`.
pub fn unmask_to(buf: &mut [u8], from: usize, to: usize, len: usize, mask: [u8; 4], offset: usize) {
    assert!(
        to <= from && from + len <= buf.len(),
        "unmask_to out of bounds"
    );
    if to == from {
        return unmask(&mut buf[from..from + len], mask, offset);
    }
    let key = phased_mask(mask, offset);
    let key64 = mask_word(key);
    let words = len / 8 * 8;
    for i in (0..words).step_by(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(&buf[from + i..from + i + 8]);
        let v = u64::from_ne_bytes(b) ^ key64;
        buf[to + i..to + i + 8].copy_from_slice(&v.to_ne_bytes());
    }
    for i in words..len {
        buf[to + i] = buf[from + i] ^ key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_bytes(data: &mut [u8], mask: [u8; 4]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }

    #[test]
    fn unmask_matches_byte_loop_at_every_offset_and_length() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in 0..40 {
            for off in 0..4 {
                let orig: Vec<u8> = (0..len as u8).collect();
                let mut a = orig.clone();
                unmask(&mut a, mask, off);
                let mut b = orig.clone();
                for (i, x) in b.iter_mut().enumerate() {
                    *x ^= mask[(i + off) % 4];
                }
                assert_eq!(a, b, "len {len} off {off}");
            }
        }
    }

    #[test]
    fn unmask_to_equals_move_then_unmask() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 7, 8, 9, 31, 64, 130] {
            for shift in [0, 1, 3, 4, 8, 14, 200] {
                for off in 0..4 {
                    let from = 3 + shift;
                    let orig: Vec<u8> = (0..from + len + 5).map(|i| (i * 31 + 7) as u8).collect();
                    let mut a = orig.clone();
                    unmask_to(&mut a, from, 3, len, mask, off);
                    let mut b = orig.clone();
                    b.copy_within(from..from + len, 3);
                    unmask(&mut b[3..3 + len], mask, off);
                    assert_eq!(
                        a[..3 + len],
                        b[..3 + len],
                        "len {len} shift {shift} off {off}"
                    );
                    // Nothing past the destination is written.
                    assert_eq!(a[3 + len..], orig[3 + len..]);
                }
            }
        }
    }

    #[test]
    fn parses_all_length_forms() {
        for len in [0u64, 1, 125, 126, 65535, 65536, 16 << 20] {
            let mut h = vec![0x82];
            if len < 126 {
                h.push(0x80 | len as u8);
            } else if len <= 65535 {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
            h.extend_from_slice(&[1, 2, 3, 4]);
            for cut in 0..h.len() {
                assert_eq!(parse_client_header(&h[..cut], u64::MAX), Ok(None));
            }
            let fh = parse_client_header(&h, u64::MAX).unwrap().unwrap();
            assert_eq!(fh.payload_len, len);
            assert_eq!(fh.header_len, h.len());
            assert_eq!(fh.opcode, Opcode::Binary);
            assert_eq!(fh.mask, Some([1, 2, 3, 4]));
        }
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            parse_client_header(&[0x82, 0x05], 100),
            Err(FrameError::Unmasked)
        );
        assert_eq!(
            parse_client_header(&[0xC2, 0x85], 100),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse_client_header(&[0x83, 0x85], 100),
            Err(FrameError::BadOpcode(3))
        );
        assert_eq!(
            parse_client_header(&[0x09, 0x80], 100),
            Err(FrameError::BadControlFrame)
        );
        assert_eq!(
            parse_client_header(&[0x89, 0xFE, 0, 126], 1000),
            Err(FrameError::BadControlFrame)
        );
        let mut big = vec![0x82, 0xFF];
        big.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(
            parse_client_header(&big, u64::MAX),
            Err(FrameError::BadLength)
        );
        assert_eq!(
            parse_client_header(&[0x82, 0xFE, 0x10, 0x00], 100),
            Err(FrameError::TooLarge(4096))
        );
    }

    #[test]
    fn server_headers_roundtrip_lengths() {
        for len in [0u64, 125, 126, 65535, 65536, 1 << 40] {
            let hl = server_header_len(len);
            let mut out = vec![0u8; hl];
            write_server_header(&mut out, true, Opcode::Text, len);
            // Re-parse by masking it as a client would.
            let mut client = out.clone();
            client[1] |= 0x80;
            client.extend_from_slice(&[0, 0, 0, 0]);
            let fh = parse_client_header(&client, u64::MAX).unwrap().unwrap();
            assert_eq!(fh.payload_len, len);
            assert!(fh.fin);
        }
        let mut payload = *b"hi";
        mask_bytes(&mut payload, [9, 9, 9, 9]);
        assert_eq!(close_frame(1000, "")[..], [0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn close_reason_is_truncated_on_char_boundary() {
        let long = "é".repeat(100);
        let f = close_frame(1011, &long);
        assert!(f.len() <= 2 + 125);
        assert!(std::str::from_utf8(&f[4..]).is_ok());
    }
}
