//! The channel state machine against a reference model: random writer streams, cut into
//! random reads and run through the real frame forwarder, meet random interleavings of
//! pings, closes, deletes, timeouts, disconnects and write completions. The model is what
//! a reader must see: the bytes of the chunks offered, in order, then one Close.

use proptest::prelude::*;

use super::*;
use crate::wire::forward::{Batch, FrameForwarder, Layout};
use crate::wire::frame::{client_frame, close_frame, Opcode};

/// Chunks a writer loop would make of `frames`, read `reads` bytes at a time (in place).
fn writer_chunks(frames: &[(bool, Opcode, Vec<u8>)], reads: &[usize]) -> Vec<Chunk> {
    writer_chunks_in(frames, reads, Layout::InPlace)
}

/// The same, laid out as `layout` (a WebSocket reader's are packed).
fn writer_chunks_in(
    frames: &[(bool, Opcode, Vec<u8>)],
    reads: &[usize],
    layout: Layout,
) -> Vec<Chunk> {
    let mut wire = Vec::new();
    let mut in_message = false;
    for (i, (fin, op, payload)) in frames.iter().enumerate() {
        // Later fragments of a message are continuations.
        let op = if in_message {
            Opcode::Continuation
        } else {
            *op
        };
        in_message = !fin;
        wire.extend(client_frame(*fin, op, payload, [i as u8, 7, 3, 9]));
    }
    let mut fwd = FrameForwarder::new(1 << 20);
    fwd.set_layout(layout);
    let mut batch = Batch::default();
    let mut carry = Vec::new();
    let mut chunks = Vec::new();
    let mut at = 0;
    let mut r = reads.iter().cycle();
    while at < wire.len() {
        let n = (*r.next().expect("cycle")).min(wire.len() - at);
        let mut buf = Vec::with_capacity(carry.len() + n + 64);
        buf.extend_from_slice(&carry);
        buf.extend_from_slice(&wire[at..at + n]);
        at += n;
        fwd.process(&mut buf, &mut batch).expect("valid frames");
        carry = buf[batch.consumed..].to_vec();
        chunks.push(Chunk::from_batch(buf.into(), &mut batch));
    }
    chunks
}

/// Bytes of `chunk` a WebSocket reader is sent.
fn sent_bytes(chunk: &Chunk) -> Vec<u8> {
    chunk
        .segments
        .iter()
        .flat_map(|r| chunk.buf[r.clone()].to_vec())
        .collect()
}

/// Splits server frames; `None` when `bytes` ends inside a frame.
fn server_frames(mut bytes: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 2 {
            return None;
        }
        let (len, hl) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(b) as usize, 10)
            }
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if bytes.len() < hl + len {
            return None;
        }
        out.push((bytes[0] & 0x0f, bytes[hl..hl + len].to_vec()));
        bytes = &bytes[hl + len..];
    }
    Some(out)
}

#[derive(Debug, Clone)]
enum Event {
    /// The writer's loop read the next chunk.
    WriterData,
    WriterPing,
    /// The writer sent its Close (with the next chunk, if any).
    WriterClose,
    WriterEof,
    ReaderPing,
    /// The reader's Close or EOF arrived.
    ReaderLeaves,
    /// The reader's sender asks what to write.
    ReaderStep,
    /// The write to the reader in flight finishes (ok or failed).
    ReaderWriteDone(bool),
    WriterWriteDone,
    /// An end decided elsewhere: DELETE, TTL, idle timeout, drain, ref expiry.
    External(StreamEnd),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => Just(Event::WriterData),
        1 => Just(Event::WriterPing),
        1 => Just(Event::WriterClose),
        1 => Just(Event::WriterEof),
        3 => Just(Event::ReaderPing),
        1 => Just(Event::ReaderLeaves),
        6 => Just(Event::ReaderStep),
        5 => Just(Event::ReaderWriteDone(true)),
        1 => Just(Event::ReaderWriteDone(false)),
        2 => Just(Event::WriterWriteDone),
        1 => prop_oneof![
            Just(StreamEnd::Aborted),
            Just(StreamEnd::PeerNeverConnected),
            Just(StreamEnd::IdleTimeout),
            Just(StreamEnd::ShuttingDown),
            Just(StreamEnd::RefExpired),
        ]
        .prop_map(Event::External),
    ]
}

fn frame() -> impl Strategy<Value = (bool, Opcode, Vec<u8>)> {
    (
        any::<bool>(),
        prop_oneof![Just(Opcode::Binary), Just(Opcode::Text)],
        prop_oneof![
            4 => prop::collection::vec(any::<u8>(), 0..300),
            // Large enough that chunks are not coalesced (owed Pongs split them).
            1 => (17_000usize..40_000, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
        ],
    )
}

/// What the sockets carried, as the executor saw it.
#[derive(Default)]
struct Wires {
    /// Bytes written to the reader (data and Close frames; Pongs are counted apart).
    reader: Vec<u8>,
    /// The write to the reader in flight: (data cost, is data).
    reader_inflight: Option<usize>,
    reader_pongs: usize,
    /// The reader's Close (code) and whether its TCP was cut.
    reader_close: Option<u16>,
    reader_cut: bool,
    writer_inflight: bool,
    writer_pongs: usize,
    writer_closes: Vec<u16>,
    reader_gone: bool,
    writer_gone: bool,
    expected: Vec<u8>,
    /// The writer closed cleanly and the reader had every byte: the end is decided.
    clean_delivered: bool,
}

struct Harness {
    core: Core,
    chunks: std::vec::IntoIter<Chunk>,
    w: Wires,
}

impl Harness {
    fn new(chunks: Vec<Chunk>) -> Harness {
        let mut core = Core::new();
        core.connect(Direction::Write, Kind::WebSocket);
        core.connect(Direction::Read, Kind::WebSocket);
        Harness {
            core,
            chunks: chunks.into_iter(),
            w: Wires::default(),
        }
    }

    fn reader_write(&mut self, cost: usize) {
        assert!(
            self.w.reader_inflight.is_none(),
            "a second write on the reader's socket while one is in flight"
        );
        self.w.reader_inflight = Some(cost);
    }

    fn writer_write(&mut self, close: Option<(u16, &'static str)>) {
        assert!(
            !self.w.writer_inflight,
            "a second write on the writer's socket while one is in flight"
        );
        self.w.writer_inflight = true;
        if let Some((code, _)) = close {
            assert!(
                self.core.end().is_some(),
                "writer sent a Close before any end"
            );
            assert!(self.w.writer_closes.is_empty(), "writer sent two Closes");
            self.w.writer_closes.push(code);
        }
    }

    fn finish(&mut self, end: StreamEnd) {
        let done = self.core.finish(end);
        if let Some(close) = done.writer_close {
            self.writer_write(Some(close));
        }
    }

    /// What the writer's loop does with its next read.
    fn writer_data(&mut self, closing: bool) {
        if self.w.writer_gone {
            return;
        }
        // A Close frame comes after the writer's last frame, so with its last chunk.
        let closing = closing && self.chunks.len() <= 1;
        let Some(mut chunk) = self.chunks.next() else {
            self.core.writer_stopped();
            if closing && self.core.end().is_none() {
                self.finish(StreamEnd::Clean);
                self.w.writer_gone = true;
            }
            return;
        };
        if self.core.end().is_some_and(|e| !e.delivers_pending()) {
            if !self.core.tail_pending() {
                self.w.writer_gone = true;
                self.core.writer_stopped();
                return;
            }
            let done = chunk.truncate_after_frame_end();
            self.w.expected.extend(sent_bytes(&chunk));
            if !chunk.segments.is_empty() {
                self.core.push(chunk);
            }
            if done {
                self.core.writer_stopped();
                self.w.writer_gone = true;
            }
            return;
        }
        if self.core.end().is_some() {
            self.w.writer_gone = true;
            self.core.writer_stopped();
            return;
        }
        self.w.expected.extend(sent_bytes(&chunk));
        if closing {
            self.finish(StreamEnd::Clean);
            if !chunk.segments.is_empty() {
                self.core.push(chunk);
            }
            self.w.writer_gone = true;
            self.core.writer_stopped();
            return;
        }
        match self.core.offer(chunk) {
            Offer::Direct(c) => {
                self.reader_write(c.cost);
                self.w.reader.extend(sent_bytes(&c));
            }
            Offer::Queued(_) | Offer::Dropped(_) => {}
        }
    }

    fn reader_step(&mut self) {
        if self.w.reader_close.is_some() || self.w.reader_cut {
            return;
        }
        match self.core.next_reader_step() {
            ReaderStep::Wait => {}
            ReaderStep::Pong(_) => {
                self.reader_write(0);
                self.w.reader_pongs += 1;
            }
            ReaderStep::Data { chunk, close } => {
                self.reader_write(chunk.cost);
                let bytes = sent_bytes(&chunk);
                if close {
                    let (code, reason) = self.core.end().expect("ended").reader_close();
                    let frame = close_frame(code, reason);
                    assert!(bytes.ends_with(&frame), "the Close goes last");
                    self.w.reader.extend(&bytes[..bytes.len() - frame.len()]);
                    assert!(
                        server_frames(&self.w.reader).is_some(),
                        "Close only at a boundary"
                    );
                    self.w.reader_close = Some(code);
                } else {
                    self.w.reader.extend(bytes);
                }
            }
            ReaderStep::End { end, how } => match how {
                CloseHow::AlreadySent => {
                    assert!(self.w.reader_close.is_some(), "AlreadySent without a Close")
                }
                CloseHow::Send(code, _) => {
                    assert!(
                        server_frames(&self.w.reader).is_some(),
                        "Close to the reader in the middle of a frame"
                    );
                    self.reader_write(0);
                    assert_eq!(code, end.reader_close().0);
                    self.w.reader_close = Some(code);
                }
                CloseHow::Echo => {
                    self.reader_write(0);
                    self.w.reader_close = Some(1000);
                }
                CloseHow::Cut => self.w.reader_cut = true,
            },
        }
    }

    fn apply(&mut self, e: Event) {
        match e {
            Event::WriterData => self.writer_data(false),
            Event::WriterClose => self.writer_data(true),
            Event::WriterPing if !self.w.writer_gone => {
                if self.core.writer_pongs(vec![0x8a, 0]).is_some() {
                    self.writer_write(None);
                    self.w.writer_pongs += 1;
                }
            }
            Event::WriterPing => {}
            Event::WriterEof if !self.w.writer_gone => {
                self.w.writer_gone = true;
                self.finish(StreamEnd::WriterDisconnected);
                self.core.writer_stopped();
            }
            Event::WriterEof => {}
            Event::ReaderPing if !self.w.reader_gone => {
                if self.core.reader_ping(b"p".to_vec()) == PingVerdict::Flood {
                    self.finish(StreamEnd::PingFlood);
                }
            }
            Event::ReaderPing => {}
            Event::ReaderLeaves if !self.w.reader_gone => {
                self.w.reader_gone = true;
                if !self.core.reader_close_sent() {
                    self.finish(StreamEnd::ReaderGone);
                }
            }
            Event::ReaderLeaves => {}
            Event::ReaderStep => self.reader_step(),
            Event::ReaderWriteDone(ok) => {
                if let Some(cost) = self.w.reader_inflight.take() {
                    self.core.reader_write_done(cost, ok);
                    if !ok {
                        self.finish(StreamEnd::ReaderGone);
                    }
                }
            }
            Event::WriterWriteDone => {
                if std::mem::take(&mut self.w.writer_inflight) {
                    if let Some(close) = self.core.writer_write_done() {
                        self.writer_write(Some(close));
                    }
                }
            }
            Event::External(end) => self.finish(end),
        }
        assert!(
            self.w.expected.starts_with(&self.w.reader),
            "the reader got bytes out of order, twice, or not sent"
        );
        if self.core.end() == Some(StreamEnd::Clean)
            && self.w.reader_inflight.is_none()
            && self.core.queue_is_empty()
            && self.w.reader == self.w.expected
        {
            self.w.clean_delivered = true;
        }
    }

    /// Lets every write finish and every loop run until the stream is over for both ends.
    fn settle(&mut self) {
        // Each round takes at most two of the writer's reads: bound it by their number (a
        // stream read a byte at a time is tens of thousands of reads).
        for _ in 0..10_000 + 2 * self.chunks.len() {
            self.apply(Event::ReaderWriteDone(true));
            self.apply(Event::WriterWriteDone);
            self.apply(Event::WriterData);
            self.apply(Event::ReaderStep);
            if self.core.end().is_none() {
                self.apply(Event::WriterClose);
            }
            let over = self.w.reader_close.is_some() || self.w.reader_cut;
            if over && self.w.reader_inflight.is_none() && !self.w.writer_inflight {
                self.apply(Event::WriterData); // a writer loop still reading a tail ends
                if !self.core.tail_pending() {
                    return;
                }
            }
        }
        panic!(
            "the stream never ended: {} reads left, end {:?}",
            self.chunks.len(),
            self.core.end()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn state_machine_keeps_its_rules(
        frames in prop::collection::vec(frame(), 0..8),
        reads in prop::collection::vec(prop_oneof![1usize..200, 10_000usize..50_000], 1..6),
        events in prop::collection::vec(event(), 0..80),
        packed in any::<bool>(),
    ) {
        let layout = if packed { Layout::Packed } else { Layout::InPlace };
        let mut h = Harness::new(writer_chunks_in(&frames, &reads, layout));
        for e in events {
            h.apply(e);
        }
        h.settle();
        let end = h.core.end().expect("ended");
        let w = &h.w;
        // The reader's stream is whole frames (a Close was only sent at a boundary), or
        // the TCP was cut.
        if w.reader_close.is_some() && end != StreamEnd::ReaderGone {
            prop_assert!(server_frames(&w.reader).is_some());
        }
        if w.clean_delivered {
            prop_assert_eq!(end, StreamEnd::Clean, "a delivered clean stream was reclassified");
        }
        match end {
            StreamEnd::Clean => {
                // Clean: every byte offered reached the reader, then 1000 — whatever pings
                // or late disconnects raced it.
                prop_assert_eq!(&w.reader, &w.expected);
                prop_assert_eq!(w.reader_close, Some(1000));
            }
            StreamEnd::ReaderGone => prop_assert!(w.reader_close.is_none() || w.reader_close == Some(1000)),
            other => {
                prop_assert!(w.reader_close != Some(1000) || !w.reader_gone, "abnormal end {other:?} shown as clean");
                if let Some(code) = w.reader_close {
                    prop_assert_eq!(code, other.reader_close().0);
                }
                if other.delivers_pending() && w.reader_close.is_some() {
                    prop_assert_eq!(&w.reader, &w.expected);
                }
            }
        }
        // The writer got Pongs and at most one Close, and only the right one.
        prop_assert!(w.writer_closes.len() <= 1);
        if let Some(&code) = w.writer_closes.first() {
            prop_assert_eq!(code, end.writer_close().0);
        }
        // Nothing is held once every write is done and nothing is queued.
        if h.core.queue_is_empty() {
            prop_assert_eq!(h.core.held(), 0);
        }
    }
}

#[test]
fn no_direct_send_while_a_pong_is_being_written() {
    let mut core = Core::new();
    core.connect(Direction::Write, Kind::WebSocket);
    core.connect(Direction::Read, Kind::WebSocket);
    assert_eq!(core.reader_ping(b"p".to_vec()), PingVerdict::Answer);
    assert!(matches!(core.next_reader_step(), ReaderStep::Pong(_)));
    let chunk = writer_chunks(&[(true, Opcode::Binary, vec![1; 10])], &[100]).remove(0);
    assert!(
        matches!(core.offer(chunk), Offer::Queued(_)),
        "a chunk would be written while the Pong is in flight"
    );
    assert!(matches!(core.next_reader_step(), ReaderStep::Wait));
    core.reader_write_done(0, true);
    assert!(matches!(
        core.next_reader_step(),
        ReaderStep::Data { close: false, .. }
    ));
}

#[test]
fn a_reader_that_pings_but_never_reads_its_pongs_is_ended() {
    let mut core = Core::new();
    core.connect(Direction::Read, Kind::WebSocket);
    core.reader_ping(b"1".to_vec());
    assert!(matches!(core.next_reader_step(), ReaderStep::Pong(_))); // never completes
    for _ in 0..MAX_UNANSWERED_PINGS {
        assert_eq!(core.reader_ping(b"x".to_vec()), PingVerdict::Answer);
    }
    assert_eq!(core.reader_ping(b"x".to_vec()), PingVerdict::Flood);
    // Pongs that cannot even start (a data write to the reader never finishes) count too.
    let mut core = Core::new();
    core.connect(Direction::Read, Kind::WebSocket);
    let chunk = writer_chunks(&[(true, Opcode::Binary, vec![1; 10])], &[100]).remove(0);
    assert!(matches!(core.offer(chunk), Offer::Direct(_))); // never completes
    let verdicts: Vec<_> = (0..=MAX_UNANSWERED_PINGS + 1)
        .map(|_| core.reader_ping(b"x".to_vec()))
        .collect();
    assert_eq!(verdicts.last(), Some(&PingVerdict::Flood));
    // A reader that reads its Pongs may ping as often as it likes.
    let mut core = Core::new();
    core.connect(Direction::Read, Kind::WebSocket);
    for _ in 0..10 * MAX_UNANSWERED_PINGS {
        assert_eq!(core.reader_ping(b"x".to_vec()), PingVerdict::Answer);
        if let ReaderStep::Pong(_) = core.next_reader_step() {
            core.reader_write_done(0, true);
        }
    }
}

/// A Pong owed while the reader is in the middle of a frame goes out right after that
/// frame, even when the queued chunk runs on past it.
#[test]
fn an_owed_pong_goes_at_the_end_of_the_current_frame() {
    let mut core = Core::new();
    core.connect(Direction::Write, Kind::WebSocket);
    core.connect(Direction::Read, Kind::WebSocket);
    let frames = [
        (true, Opcode::Binary, vec![1u8; 40_000]),
        (true, Opcode::Binary, vec![2u8; 40_000]),
        (true, Opcode::Binary, vec![3u8; 40_000]),
    ];
    // Reads that never end at a frame boundary (and too large to be coalesced).
    let chunks = writer_chunks(&frames, &[30_000, 50_000, 50_000]);
    let mut all = Vec::new();
    for c in chunks {
        all.extend(sent_bytes(&c));
        core.push(c);
    }
    let ReaderStep::Data { chunk, .. } = core.next_reader_step() else {
        panic!("data")
    };
    let mut out = sent_bytes(&chunk);
    core.reader_write_done(chunk.cost, true);
    core.reader_ping(b"now".to_vec()); // the reader is mid-frame
    let ReaderStep::Data { chunk, .. } = core.next_reader_step() else {
        panic!("the rest of the frame")
    };
    out.extend(sent_bytes(&chunk));
    core.reader_write_done(chunk.cost, true);
    assert!(server_frames(&out).is_some(), "cut at the frame's end");
    assert!(matches!(core.next_reader_step(), ReaderStep::Pong(_)));
    core.reader_write_done(0, true);
    while let ReaderStep::Data { chunk, .. } = core.next_reader_step() {
        out.extend(sent_bytes(&chunk));
        core.reader_write_done(chunk.cost, true);
    }
    assert_eq!(out, all, "nothing lost or repeated around the split");
    assert_eq!(core.held(), 0);
}

#[test]
fn a_clean_end_stays_clean_when_a_pong_write_fails_after_the_data() {
    let mut core = Core::new();
    core.connect(Direction::Write, Kind::WebSocket);
    core.connect(Direction::Read, Kind::WebSocket);
    let mut chunk = writer_chunks(&[(true, Opcode::Binary, vec![1; 10])], &[100]).remove(0);
    chunk.buf = chunk.buf.to_vec().into(); // no room to append the Close: it goes on its own
    core.finish(StreamEnd::Clean);
    core.push(chunk);
    core.reader_ping(b"p".to_vec()); // races the end: its Pong goes first
    let ReaderStep::Pong(_) = core.next_reader_step() else {
        panic!("Pong first")
    };
    core.reader_write_done(0, true);
    let ReaderStep::Data { chunk, .. } = core.next_reader_step() else {
        panic!("data")
    };
    core.reader_write_done(chunk.cost, true);
    // The reader got everything and leaves before our Close: still clean.
    assert!(!core.finish(StreamEnd::ReaderGone).changed);
    assert_eq!(core.end(), Some(StreamEnd::Clean));
}

/// A writer trickling one-byte frames to a reader that does not read: what the channel
/// counts (and pins) stays within a small factor of what arrived, not a buffer per byte.
#[test]
fn trickled_bytes_are_held_at_their_size() {
    let mut core = Core::new();
    core.connect(Direction::Write, Kind::WebSocket);
    core.connect(Direction::Read, Kind::WebSocket);
    let one = |i: u32| {
        let mut chunk = writer_chunks(&[(true, Opcode::Binary, vec![i as u8])], &[100]).remove(0);
        // A read buffer far larger than what arrived.
        let mut big = Vec::with_capacity(chunk.buf.len() + (64 << 10));
        big.extend_from_slice(&chunk.buf);
        chunk.buf = big.into();
        chunk
    };
    // The first goes straight to the reader, whose socket then stays full.
    let Offer::Direct(first) = core.offer(one(0)) else {
        panic!("an idle reader takes the chunk directly")
    };
    let first_cost = first.cost;
    let mut sent = 0;
    for i in 1..=1000u32 {
        sent += 7; // 2 header + 4 mask + 1 payload on the wire
        let Offer::Queued(_) = core.offer(one(i)) else {
            panic!("queued behind the write in flight")
        };
    }
    let held = core.held() - first_cost;
    // Per frame: its 3 bytes, a 48-byte frame record, and the buffer's growth room.
    assert!(held < 12 * sent, "held {held} bytes for {sent} bytes sent");
    // And the reader still gets every frame, in order.
    core.reader_write_done(first_cost, true);
    let mut out = Vec::new();
    while let ReaderStep::Data { chunk, .. } = core.next_reader_step() {
        out.extend(sent_bytes(&chunk));
        core.reader_write_done(chunk.cost, true);
    }
    let frames = server_frames(&out).expect("whole frames");
    assert_eq!(frames.len(), 1000);
    assert!(frames
        .iter()
        .enumerate()
        .all(|(i, f)| f.1 == [(i + 1) as u8]));
    assert_eq!(core.held(), 0);
}

/// Bytes of one large frame trickled a byte per read cost about a byte each.
#[test]
fn a_trickled_frame_is_held_at_its_size() {
    let mut core = Core::new();
    core.connect(Direction::Read, Kind::WebSocket);
    let frame = vec![(true, Opcode::Binary, vec![5u8; 20_000])];
    let chunks = writer_chunks(&frame, &[1]);
    let n = chunks.len();
    for c in chunks {
        core.push(c);
    }
    assert!(
        core.held() < 2 * n + 4096,
        "held {} for {n} bytes",
        core.held()
    );
}

#[test]
fn only_a_connected_websocket_reader_takes_packed_frames() {
    let mut core = Core::new();
    assert!(
        !core.reader_is_websocket(),
        "no reader yet: an HTTP one may come"
    );
    core.connect(Direction::Read, Kind::Http);
    assert!(!core.reader_is_websocket());
    let mut core = Core::new();
    core.connect(Direction::Read, Kind::WebSocket);
    assert!(core.reader_is_websocket());
    core.disconnect(Direction::Read);
    assert!(
        core.reader_is_websocket(),
        "a reader that left stays what it was"
    );
}
