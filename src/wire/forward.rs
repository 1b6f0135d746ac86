//! The cut-through frame forwarder: walks client frames in a read buffer, unmasks data
//! payloads, writes each header as a server header in front of its payload, and reports
//! which byte ranges of the buffer are ready to send to the peer. Partial payloads are
//! forwarded as they arrive; frames keep their boundaries, opcodes and FIN bits. No I/O,
//! no clock.
//!
//! Two layouts (`Layout`), chosen per buffer:
//! - **In place**: a payload is unmasked where it lies and its server header goes in the
//!   bytes directly in front of it (where the mask key was). Every frame keeps the rest of
//!   its client header (at least 6 bytes) free in front: room for an HTTP chunk's header.
//!   Small frames leave many ranges that `compact` moves together before one write.
//! - **Packed**: each frame is unmasked and moved up against the one before it in the same
//!   pass, so the output is one range with no second pass over the bytes: for a WebSocket
//!   peer, which needs no room between frames.

use std::ops::Range;

use super::frame::{
    parse_client_header, parse_close_payload, server_header_len, unmask, unmask_to,
    write_server_header, FrameError, Opcode, MAX_CONTROL_PAYLOAD,
};

/// Most bytes an incomplete header or control frame can leave at the end of a buffer.
pub const MAX_CARRY: usize = super::frame::MAX_HEADER_LEN + MAX_CONTROL_PAYLOAD;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Payload {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
        opcode: Opcode,
        fin: bool,
        frame_len: u64,
    },
}

/// What one pass over a buffer produced.
#[derive(Debug, Default)]
pub struct Batch {
    /// Ranges of the buffer to send to a WebSocket peer, in order (server headers +
    /// payloads; `compact` makes them contiguous). At most one with `Layout::Packed`.
    pub segments: Vec<Range<usize>>,
    /// The same data frame by frame, for peers that frame it differently (HTTP bodies).
    pub pieces: Vec<Piece>,
    /// Bytes processed; `buf[consumed..]` is an incomplete header or control frame that
    /// must be placed at the start of the next read.
    pub consumed: usize,
    /// Data frames whose last byte is in this batch.
    pub frames_completed: u32,
    /// Payload bytes of data frames in this batch.
    pub payload_bytes: u64,
    /// True when the output ends exactly at a frame boundary (a control frame of our own
    /// may be sent after it).
    pub at_boundary: bool,
    /// Payloads of the Pings read, in order (each gets its Pong).
    pub pings: Vec<Vec<u8>>,
    /// A Close frame was read: (code, reason). Nothing after it was processed.
    pub close: Option<(u16, Vec<u8>)>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.segments.clear();
        self.pieces.clear();
        self.consumed = 0;
        self.frames_completed = 0;
        self.payload_bytes = 0;
        self.at_boundary = false;
        self.pings.clear();
        self.close = None;
    }

    /// Total bytes in `segments`.
    pub fn output_len(&self) -> usize {
        self.segments.iter().map(|r| r.len()).sum()
    }
}

/// The part of one data frame that lies in a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// The frame's opcode (`Continuation` for later fragments of a message).
    pub opcode: Opcode,
    pub fin: bool,
    /// Payload length of the whole frame.
    pub frame_len: u64,
    /// The frame's payload bytes in this buffer (unmasked).
    pub payload: Range<usize>,
    /// The frame starts in this buffer: `gap_start..payload.start` is free for whatever
    /// header the peer's framing needs. In place that is where its client header was (at
    /// least 6 bytes); packed, where its server header was written (2 to 10 bytes).
    pub starts: bool,
    pub gap_start: usize,
    /// The frame's last byte is in this buffer.
    pub ends: bool,
}

/// An unmask with the signature of [`unmask_to`] (it may move the bytes towards the front
/// as it unmasks): `wire` is pure and has only the portable word loop; a faster one
/// (vectors picked at run time, `ring::unmask_to`) is passed in by whoever runs the
/// forwarder.
pub type Unmask = fn(&mut [u8], usize, usize, usize, [u8; 4], usize);

/// Where data frames go in the buffer (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Each frame where it was read, with its client header's room in front (HTTP peers).
    InPlace,
    /// Frames moved together as they are unmasked: one range out (WebSocket peers).
    Packed,
}

/// Streaming state for one client connection.
#[derive(Debug)]
pub struct FrameForwarder {
    max_payload: u64,
    state: State,
    /// Inside a fragmented data message (a non-FIN data frame was seen).
    in_message: bool,
    /// Unmasks data payloads (control payloads are tiny and use the word loop).
    unmask: Unmask,
    layout: Layout,
}

impl FrameForwarder {
    pub fn new(max_payload: u64) -> Self {
        FrameForwarder {
            max_payload,
            state: State::Header,
            in_message: false,
            unmask: unmask_to,
            layout: Layout::InPlace,
        }
    }

    /// Unmasks data payloads with `f` instead of the word loop (same result).
    pub fn with_unmask(mut self, f: Unmask) -> Self {
        self.unmask = f;
        self
    }

    /// The layout of the next buffers processed (each buffer is laid out on its own, so
    /// this may change between any two).
    pub fn set_layout(&mut self, layout: Layout) {
        self.layout = layout;
    }

    /// True when no frame is partly read (a clean point to stop).
    pub fn at_frame_boundary(&self) -> bool {
        self.state == State::Header
    }

    /// Processes `buf` (freshly read bytes, preceded by any carried bytes) into `out`.
    /// Stops after a Close frame. On error the connection must be closed with
    /// `err.close_code()`.
    pub fn process(&mut self, buf: &mut [u8], out: &mut Batch) -> Result<(), FrameError> {
        out.clear();
        let packed = self.layout == Layout::Packed;
        let mut pos = 0usize;
        let len = buf.len();
        out.at_boundary = self.state == State::Header;
        while pos < len {
            // Where the next output byte goes: where it lies, or packed right after the
            // output so far (never after `pos`, so nothing unread is overwritten).
            let at = match out.segments.last() {
                Some(r) if packed => r.end,
                _ => pos,
            };
            match self.state {
                State::Payload {
                    remaining,
                    mask,
                    offset,
                    opcode,
                    fin,
                    frame_len,
                } => {
                    let take = remaining.min((len - pos) as u64) as usize;
                    (self.unmask)(buf, pos, at, take, mask, offset);
                    push_segment(&mut out.segments, at..at + take);
                    let remaining = remaining - take as u64;
                    match out.pieces.last_mut() {
                        // The header was in this buffer: extend that piece.
                        Some(p) if p.payload.end == at && !p.ends && p.starts => {
                            p.payload.end = at + take;
                            p.ends = remaining == 0;
                        }
                        _ => out.pieces.push(Piece {
                            opcode,
                            fin,
                            frame_len,
                            payload: at..at + take,
                            starts: false,
                            gap_start: at,
                            ends: remaining == 0,
                        }),
                    }
                    out.payload_bytes += take as u64;
                    pos += take;
                    if remaining == 0 {
                        self.state = State::Header;
                        out.frames_completed += 1;
                        out.at_boundary = true;
                    } else {
                        self.state = State::Payload {
                            remaining,
                            mask,
                            offset: offset + take,
                            opcode,
                            fin,
                            frame_len,
                        };
                        out.at_boundary = false;
                    }
                }
                State::Header => {
                    let Some(h) = parse_client_header(&buf[pos..], self.max_payload)? else {
                        break;
                    };
                    let mask = h.mask.expect("client headers are masked");
                    if h.opcode.is_control() {
                        let end = pos + h.header_len + h.payload_len as usize;
                        if end > len {
                            break; // whole control frame needed; carried to the next read
                        }
                        let payload = &mut buf[pos + h.header_len..end];
                        unmask(payload, mask, 0);
                        pos = end;
                        match h.opcode {
                            Opcode::Ping => out.pings.push(payload.to_vec()),
                            Opcode::Close => {
                                let (code, reason) = parse_close_payload(payload)?;
                                out.close = Some((code, reason.to_vec()));
                                break;
                            }
                            _ => {} // unsolicited Pong: ignored
                        }
                        continue;
                    }
                    match (h.opcode, self.in_message) {
                        (Opcode::Continuation, false) => return Err(FrameError::BadControlFrame),
                        (Opcode::Text | Opcode::Binary, true) => {
                            return Err(FrameError::BadControlFrame)
                        }
                        _ => {}
                    }
                    self.in_message = !h.fin;
                    let out_hl = server_header_len(h.payload_len);
                    // In place (or the buffer's first output, which stays where it is):
                    // the header goes where the mask key was. Packed: right after the
                    // output so far, and the payload follows it as it is unmasked.
                    let (header_start, gap_start) = if packed && !out.segments.is_empty() {
                        (at, at)
                    } else {
                        (pos + h.header_len - out_hl, pos)
                    };
                    let payload_out = header_start + out_hl;
                    write_server_header(
                        &mut buf[header_start..payload_out],
                        h.fin,
                        h.opcode,
                        h.payload_len,
                    );
                    push_segment(&mut out.segments, header_start..payload_out);
                    out.pieces.push(Piece {
                        opcode: h.opcode,
                        fin: h.fin,
                        frame_len: h.payload_len,
                        payload: payload_out..payload_out,
                        starts: true,
                        gap_start,
                        ends: h.payload_len == 0,
                    });
                    pos += h.header_len;
                    if h.payload_len == 0 {
                        out.frames_completed += 1;
                        out.at_boundary = true;
                    } else {
                        out.at_boundary = false;
                        self.state = State::Payload {
                            remaining: h.payload_len,
                            mask,
                            offset: 0,
                            opcode: h.opcode,
                            fin: h.fin,
                            frame_len: h.payload_len,
                        };
                    }
                }
            }
        }
        out.consumed = pos;
        Ok(())
    }
}

/// Appends a range, merging it with the previous one when they touch.
fn push_segment(segments: &mut Vec<Range<usize>>, r: Range<usize>) {
    if let Some(last) = segments.last_mut() {
        if last.end == r.start {
            last.end = r.end;
            return;
        }
    }
    segments.push(r);
}

/// Moves `segments` of `buf` together so they form one contiguous range, returned.
/// Cheap when frames are large (one segment per buffer); copies small frames.
pub fn compact(buf: &mut [u8], segments: &[Range<usize>]) -> Range<usize> {
    let Some(first) = segments.first() else {
        return 0..0;
    };
    let start = first.start;
    let mut end = first.end;
    for r in &segments[1..] {
        buf.copy_within(r.clone(), end);
        end += r.len();
    }
    start..end
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a masked client frame.
    pub fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let op = Opcode::from_u8(opcode).expect("test opcodes are valid");
        crate::wire::frame::client_frame(fin, op, payload, mask)
    }

    /// Feeds `input` split into reads of `chunk` bytes, returns the forwarded output.
    type Close = Option<(u16, Vec<u8>)>;

    fn run(input: &[u8], chunk: usize) -> (Vec<u8>, Close, u32) {
        run_in(input, chunk, Layout::InPlace)
    }

    fn run_in(input: &[u8], chunk: usize, layout: Layout) -> (Vec<u8>, Close, u32) {
        let mut fwd = FrameForwarder::new(1 << 30);
        fwd.set_layout(layout);
        let mut out = Vec::new();
        let mut carry: Vec<u8> = Vec::new();
        let mut batch = Batch::default();
        let mut frames = 0;
        for piece in input.chunks(chunk) {
            let mut buf = carry.clone();
            buf.extend_from_slice(piece);
            fwd.process(&mut buf, &mut batch).unwrap();
            frames += batch.frames_completed;
            let r = compact(&mut buf, &batch.segments);
            out.extend_from_slice(&buf[r]);
            carry = buf[batch.consumed..].to_vec();
            if let Some(c) = batch.close.take() {
                return (out, Some(c), frames);
            }
        }
        (out, None, frames)
    }

    #[test]
    fn forwards_frames_unchanged_at_any_split() {
        let mut input = Vec::new();
        let mut expected = Vec::new();
        let sizes = [0usize, 1, 125, 126, 65535, 65536, 3];
        for (i, &n) in sizes.iter().enumerate() {
            let payload: Vec<u8> = (0..n).map(|j| (i * 7 + j) as u8).collect();
            let op = if i % 2 == 0 { 2 } else { 1 };
            input.extend(client_frame(true, op, &payload, [1, 2, 3, (i as u8) + 4]));
            expected.extend(crate::wire::frame::server_frame(
                Opcode::from_u8(op).unwrap(),
                &payload,
            ));
            // a ping between data frames is consumed, never forwarded
            input.extend(client_frame(true, 9, b"p", [5, 5, 5, 5]));
        }
        input.extend(client_frame(true, 8, &1000u16.to_be_bytes(), [7, 7, 7, 7]));
        for layout in [Layout::InPlace, Layout::Packed] {
            for chunk in [1, 2, 3, 7, 13, 139, 1000, 65536, 1 << 20] {
                let (out, close, frames) = run_in(&input, chunk, layout);
                assert_eq!(out, expected, "chunk {chunk} {layout:?}");
                assert_eq!(close, Some((1000, vec![])));
                assert_eq!(frames, sizes.len() as u32);
            }
        }
    }

    #[test]
    fn fragmented_messages_keep_opcodes_and_fin() {
        let mut input = client_frame(false, 1, b"he", [1, 1, 1, 1]);
        input.extend(client_frame(true, 9, b"", [2, 2, 2, 2]));
        input.extend(client_frame(false, 0, b"ll", [3, 3, 3, 3]));
        input.extend(client_frame(true, 0, b"o", [4, 4, 4, 4]));
        let (out, _, frames) = run(&input, 5);
        let mut expected = vec![0x01, 2, b'h', b'e'];
        expected.extend([0x00, 2, b'l', b'l', 0x80, 1, b'o']);
        assert_eq!(out, expected);
        assert_eq!(frames, 3);
    }

    #[test]
    fn continuation_without_start_is_an_error() {
        let mut fwd = FrameForwarder::new(100);
        let mut b = Batch::default();
        let mut f = client_frame(true, 0, b"x", [1, 2, 3, 4]);
        assert!(fwd.process(&mut f, &mut b).is_err());
        let mut fwd = FrameForwarder::new(100);
        let mut f = client_frame(false, 2, b"x", [1, 2, 3, 4]);
        f.extend(client_frame(true, 2, b"y", [1, 2, 3, 4]));
        assert!(fwd.process(&mut f, &mut b).is_err());
    }

    #[test]
    fn too_large_frame_is_1009() {
        let mut fwd = FrameForwarder::new(10);
        let mut b = Batch::default();
        let mut f = client_frame(true, 2, &[0; 11], [1, 2, 3, 4]);
        assert_eq!(fwd.process(&mut f, &mut b).unwrap_err().close_code(), 1009);
    }
}
