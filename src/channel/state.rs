//! One channel's state as a pure state machine: no I/O, no clock, no wake-ups. The pump and
//! the HTTP paths feed it events (a chunk read from the writer, a write that finished, a
//! ping, a peer's Close, an end decided elsewhere) and carry out what it answers: write
//! these bytes to that socket, arm that deadline, cut that connection.
//!
//! The rules it keeps (checked against a reference model in the tests below):
//!
//! - **One write in flight per socket.** The reader's socket (data, Pongs, its Close) and
//!   the writer's socket (Pongs, its Close) are each handed to one writer at a time; the
//!   next write is only handed out once the previous one is reported done.
//! - **Nothing goes to a writer but the Pongs it asked for and one Close**, and the Close of
//!   an abnormal end only after that end is decided.
//! - **A Close goes to a WebSocket reader only at a frame boundary.** A stream cut in the
//!   middle of a frame first forwards the rest of that frame when it can still come from
//!   the writer (`tail_pending`), else the reader's TCP is cut.
//! - **The first end decides.** A later, harder end (abort, TTL, reader gone) may still cut
//!   a stream whose writer finished, but only while data is still undelivered: once the
//!   reader has everything, or has been sent its Close, the outcome it saw is final — a ping
//!   racing the final Close never turns a clean end into an abnormal one.
//! - **Bytes held are counted as what arrived plus the records kept for it** (`Chunk::cost`),
//!   and a queued chunk that fills little of its buffer is copied into the tail chunk or a
//!   right-sized buffer: a peer that trickles bytes cannot pin a large buffer per byte.
//! - **Pongs are bounded**: at most `MAX_OWED_PONGS` wait for a frame boundary (past that
//!   the newest ping replaces the last one owed, RFC 6455 §5.5.3); an owed Pong goes at the
//!   end of the frame the reader is in (a queued chunk is split there); and a reader that
//!   keeps pinging while earlier Pongs are not out (it does not read) is ended after
//!   `MAX_UNANSWERED_PINGS`.

use std::collections::VecDeque;
use std::ops::Range;

use crate::error::StreamEnd;
use crate::ring::Buffer;
use crate::wire::chunked::CHUNK_CRLF_LEN;
use crate::wire::forward::Piece;
use crate::wire::frame::{
    close_frame, server_frame, server_header_len, write_server_header, Opcode, MAX_HEADER_LEN,
};
use crate::wire::route::Direction;

/// Room reserved for the records of one read (its chunk, ranges and frame pieces) when
/// deciding whether the writer may be read.
pub const READ_RECORDS_BYTES: usize = 1 << 10;

/// Largest frame `extend_last_frame` grows by reallocating its buffer (larger ones are
/// extended only within the buffer's room).
pub const EXTEND_GROW_MAX: usize = 8 << 10;

/// Pongs owed to a reader that wait for a frame boundary in its stream.
pub const MAX_OWED_PONGS: usize = 64;

/// Pings a reader may send while an earlier Pong to it is not out yet (owed or being
/// written: it does not read, or pings faster than a frame goes out) before the relay ends
/// it with 1008.
pub const MAX_UNANSWERED_PINGS: u32 = 64;

/// A queued chunk whose data takes at most this many bytes is copied into the queue's
/// last chunk (when that stays under `COALESCE_LIMIT_BYTES`) instead of keeping its own
/// buffer and records. Small, so a stream's ordinary reads are never copied.
pub const COALESCE_MAX_BYTES: usize = 1 << 10;
/// Largest chunk that coalescing builds.
pub const COALESCE_LIMIT_BYTES: usize = 64 << 10;
/// A queued chunk whose buffer is more than `SHRINK_RATIO` times its data plus
/// `SHRINK_SLACK_BYTES` is copied into a right-sized buffer: a peer cannot pin a large
/// read buffer with a few bytes, and the copy is at most a sixteenth of the buffer (copying
/// fuller chunks costs throughput and allocator churn for little memory).
pub const SHRINK_RATIO: usize = 16;
/// Room a shrunk chunk keeps after its data: the reader's Close frame (with our longest
/// reason) or a chunk's CRLF is appended there.
pub const SHRINK_TAILROOM_BYTES: usize = 64;
pub const SHRINK_SLACK_BYTES: usize = 1 << 10;

/// Forwarded bytes waiting for the reader: one read buffer, unmasked, with the ranges a
/// WebSocket reader sends (`segments`) and the frame pieces an HTTP reader renders.
#[derive(Debug, Default)]
pub struct Chunk {
    pub buf: Buffer,
    pub segments: Vec<Range<usize>>,
    pub pieces: Vec<Piece>,
    /// The chunk ends exactly at a frame boundary.
    pub at_boundary: bool,
    /// Payload bytes and completed data frames in it (for counters).
    pub payload_bytes: u64,
    pub frames: u32,
    /// What the channel counts for it while it holds it (set when taken).
    pub cost: usize,
}

impl Chunk {
    /// What the frame forwarder made of `buf` (its ranges taken out of `batch`).
    pub fn from_batch(buf: Buffer, batch: &mut crate::wire::forward::Batch) -> Chunk {
        Chunk {
            buf,
            segments: std::mem::take(&mut batch.segments),
            pieces: std::mem::take(&mut batch.pieces),
            at_boundary: batch.at_boundary,
            payload_bytes: batch.payload_bytes,
            frames: batch.frames_completed,
            cost: 0,
        }
    }

    /// Memory the chunk pins: its buffer and its records.
    pub fn measure(&self) -> usize {
        std::mem::size_of::<Chunk>()
            + self.buf.capacity()
            + self.segments.capacity() * std::mem::size_of::<Range<usize>>()
            + self.pieces.capacity() * std::mem::size_of::<Piece>()
    }

    /// Where the chunk's useful bytes start: its first segment or its first piece's
    /// header room, whichever comes first.
    fn data_start(&self) -> usize {
        let seg = self.segments.first().map_or(usize::MAX, |r| r.start);
        let piece = self.pieces.first().map_or(usize::MAX, |p| {
            if p.starts {
                p.gap_start
            } else {
                p.payload.start
            }
        });
        seg.min(piece).min(self.buf.len())
    }

    /// Bytes from `data_start` to the end of the buffer.
    fn data_len(&self) -> usize {
        self.buf.len() - self.data_start()
    }

    /// Moves `self.buf[from..]` to `dest` at `dest.len()`, shifting every range.
    fn move_into(&mut self, dest: &mut Buffer) -> (Vec<Range<usize>>, Vec<Piece>) {
        let from = self.data_start();
        let base = dest.len();
        dest.extend_from_slice(&self.buf[from..]);
        let shift = |x: usize| x - from + base;
        let segments = self
            .segments
            .iter()
            .map(|r| shift(r.start)..shift(r.end))
            .collect();
        let pieces = self
            .pieces
            .iter()
            .map(|p| Piece {
                payload: shift(p.payload.start)..shift(p.payload.end),
                gap_start: if p.starts { shift(p.gap_start) } else { 0 },
                ..p.clone()
            })
            .collect();
        (segments, pieces)
    }

    /// Copies the data into a buffer of its own size (plus room for a Close frame or an
    /// HTTP chunk's CRLF after it, so the stream's last write stays one); returns the old
    /// buffer.
    fn shrink(&mut self) -> Buffer {
        let mut buf = Buffer::with_capacity(self.data_len() + SHRINK_TAILROOM_BYTES);
        let (segments, pieces) = self.move_into(&mut buf);
        self.segments = segments;
        self.pieces = pieces;
        std::mem::replace(&mut self.buf, buf)
    }

    /// Appends `other`'s data behind this chunk's; returns `other`'s buffer.
    fn absorb(&mut self, mut other: Chunk) -> Buffer {
        let (segments, pieces) = other.move_into(&mut self.buf);
        for r in segments {
            match self.segments.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => self.segments.push(r),
            }
        }
        for p in pieces {
            match self.pieces.last_mut() {
                // The same frame, continued: one record.
                Some(last) if !last.ends && !p.starts && last.payload.end == p.payload.start => {
                    last.payload.end = p.payload.end;
                    last.ends = p.ends;
                }
                _ => self.pieces.push(p),
            }
        }
        self.at_boundary = other.at_boundary;
        self.payload_bytes += other.payload_bytes;
        self.frames += other.frames;
        other.buf
    }

    /// Splits off what comes up to the end of the first frame that ends in the chunk, as a
    /// chunk of its own (copied: the rest keeps the buffer), so a Pong can go between.
    /// `None` when no frame ends before the chunk's last byte.
    fn split_at_first_frame_end(&mut self) -> Option<Chunk> {
        let i = self.pieces.iter().position(|p| p.ends)?;
        let end = self.pieces[i].payload.end;
        if self.segments.last().is_none_or(|r| r.end <= end) {
            return None;
        }
        let mut buf = Buffer::default();
        for r in &self.segments {
            if r.start < end {
                buf.extend_from_slice(&self.buf[r.start..r.end.min(end)]);
            }
        }
        self.segments.retain(|r| r.end > end);
        if let Some(first) = self.segments.first_mut() {
            first.start = first.start.max(end);
        }
        let head: Vec<Piece> = self.pieces.drain(..=i).collect();
        let payload_bytes: u64 = head.iter().map(|p| p.payload.len() as u64).sum();
        let frames = head.iter().filter(|p| p.ends).count() as u32;
        self.payload_bytes = self.payload_bytes.saturating_sub(payload_bytes);
        self.frames = self.frames.saturating_sub(frames);
        Some(Chunk {
            segments: std::iter::once(0..buf.len()).collect(),
            buf,
            pieces: Vec::new(),
            at_boundary: true,
            payload_bytes,
            frames,
            cost: 0,
        })
    }

    /// Cuts the chunk after the first frame that ends in it; false if none does.
    pub fn truncate_after_frame_end(&mut self) -> bool {
        let Some(i) = self.pieces.iter().position(|p| p.ends) else {
            return false;
        };
        let end = self.pieces[i].payload.end;
        self.pieces.truncate(i + 1);
        self.segments.retain(|r| r.start < end);
        if let Some(last) = self.segments.last_mut() {
            last.end = last.end.min(end);
        }
        self.payload_bytes = self.pieces.iter().map(|p| p.payload.len() as u64).sum();
        self.frames = 1;
        self.at_boundary = true;
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not connected yet.
    Waiting,
    Connected,
    /// Was connected and has finished.
    Finished,
}

/// How an end speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    WebSocket,
    /// An HTTP upload (writer) or an HTTP response (reader).
    Http,
}

/// What is being written to a socket right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    Idle,
    Data,
    Pong,
    Close,
}

/// The relay's Close to a WebSocket writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WriterClose {
    NotDue,
    /// Decided while another write to the writer was in flight: it goes next.
    Due,
    Sent,
}

/// What to do when an end has just been decided ([`Core::finish`]).
#[derive(Debug, Default)]
pub struct Finished {
    /// The end was recorded (false: an earlier end stands).
    pub changed: bool,
    /// Give the reader's connection a deadline to finish closing.
    pub arm_reader_deadline: bool,
    /// Give the WebSocket writer's connection a deadline to finish closing.
    pub arm_writer_deadline: bool,
    /// Wake an HTTP upload's read so it answers with an error status.
    pub shutdown_upload: bool,
    /// Write this Close to the writer now (the writer's socket was idle; report it with
    /// [`Core::writer_write_done`]).
    pub writer_close: Option<(u16, &'static str)>,
    /// Buffers of dropped chunks, for the pool.
    pub freed: Vec<Buffer>,
}

/// Where a chunk read from the writer goes ([`Core::offer`]).
#[derive(Debug)]
pub enum Offer {
    /// Write it to the reader now (the reader's socket is yours until `reader_write_done`).
    Direct(Chunk),
    /// Queued for the reader's sender; the buffer, if any, goes back to the pool.
    Queued(Option<Buffer>),
    /// Not wanted (the stream was cut): the buffer goes back to the pool.
    Dropped(Buffer),
}

/// How the reader's end of the stream goes out ([`ReaderStep::End`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseHow {
    /// The Close went out with the last data: await the reader's answer.
    AlreadySent,
    /// Write this Close (then await the answer).
    Send(u16, &'static str),
    /// The reader closed first: echo its Close.
    Echo,
    /// Cut mid-frame: no Close may follow, end the TCP.
    Cut,
}

/// What the reader's sender does next ([`Core::next_reader_step`]).
#[derive(Debug)]
pub enum ReaderStep {
    Wait,
    /// Write this chunk. `close`: a Close frame was appended to it (the stream's last write).
    Data {
        chunk: Chunk,
        close: bool,
    },
    /// Write these Pong frames.
    Pong(Vec<u8>),
    /// The stream is over for the reader.
    End {
        end: StreamEnd,
        how: CloseHow,
    },
}

/// What a reader's ping led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingVerdict {
    Answer,
    /// Too many pings while a Pong could not be written: end the reader (`PingFlood`).
    Flood,
}

/// One channel's state.
#[derive(Debug)]
pub struct Core {
    pub writer: Slot,
    pub reader: Slot,
    pub writer_kind: Kind,
    pub reader_kind: Kind,
    end: Option<StreamEnd>,
    queue: VecDeque<Chunk>,
    /// Bytes held: the `cost` of queued chunks and of the chunk being written to the reader.
    held: usize,
    reader_busy: Busy,
    /// The last chunk handed to the reader ends at a frame boundary.
    reader_at_boundary: bool,
    /// The reader has been sent its Close (or its HTTP response's end): the outcome it saw
    /// is final, and its Close or EOF from here on is an answer, not "reader gone".
    reader_close_sent: bool,
    /// Payloads of the reader's pings not yet answered (at most `MAX_OWED_PONGS`).
    pongs: VecDeque<Vec<u8>>,
    /// Pings from the reader since a Pong to it was last written out.
    unanswered_pings: u32,
    /// The stream was cut short while the reader was in the middle of a frame whose end
    /// has not been read from the writer yet: the writer's loop still forwards up to it.
    tail_pending: bool,
    /// A WebSocket writer's loop is still reading its socket (a tail can still come).
    writer_reading: bool,
    writer_busy: Busy,
    writer_close: WriterClose,
    pub bytes: u64,
    pub frames: u64,
}

impl Default for Core {
    fn default() -> Self {
        Core::new()
    }
}

impl Core {
    pub fn new() -> Core {
        Core {
            writer: Slot::Waiting,
            reader: Slot::Waiting,
            writer_kind: Kind::WebSocket,
            reader_kind: Kind::WebSocket,
            end: None,
            queue: VecDeque::new(),
            held: 0,
            reader_busy: Busy::Idle,
            reader_at_boundary: true,
            reader_close_sent: false,
            pongs: VecDeque::new(),
            unanswered_pings: 0,
            tail_pending: false,
            writer_reading: false,
            writer_busy: Busy::Idle,
            writer_close: WriterClose::NotDue,
            bytes: 0,
            frames: 0,
        }
    }

    pub fn end(&self) -> Option<StreamEnd> {
        self.end
    }

    pub fn held(&self) -> usize {
        self.held
    }

    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn tail_pending(&self) -> bool {
        self.tail_pending
    }

    pub fn reader_busy(&self) -> Busy {
        self.reader_busy
    }

    pub fn writer_busy(&self) -> Busy {
        self.writer_busy
    }

    pub fn reader_close_sent(&self) -> bool {
        self.reader_close_sent
    }

    pub fn slot(&self, dir: Direction) -> Slot {
        match dir {
            Direction::Read => self.reader,
            Direction::Write => self.writer,
        }
    }

    /// The reader is a WebSocket: it takes frames back to back, with no room between them
    /// (false until a reader has connected, since an HTTP one needs that room).
    pub fn reader_is_websocket(&self) -> bool {
        self.reader != Slot::Waiting && self.reader_kind == Kind::WebSocket
    }

    /// An end connects (`kind` says how it speaks).
    pub fn connect(&mut self, dir: Direction, kind: Kind) {
        match dir {
            Direction::Write => {
                (self.writer, self.writer_kind) = (Slot::Connected, kind);
                self.writer_reading = kind == Kind::WebSocket;
            }
            Direction::Read => (self.reader, self.reader_kind) = (Slot::Connected, kind),
        }
    }

    /// An end's connection is done with the channel.
    pub fn disconnect(&mut self, dir: Direction) {
        let slot = match dir {
            Direction::Write => &mut self.writer,
            Direction::Read => &mut self.reader,
        };
        if *slot == Slot::Connected {
            *slot = Slot::Finished;
        }
    }

    /// An HTTP reader left before anything was taken for it: the end is open again.
    pub fn hand_back_reader(&mut self) {
        self.reader = Slot::Waiting;
    }

    /// Whether the channel is in use: an end is connected, or data waits for its reader.
    pub fn is_busy(&self) -> bool {
        self.writer == Slot::Connected
            || self.reader == Slot::Connected
            || (self.reader == Slot::Waiting && !self.queue.is_empty())
    }

    pub fn both_finished(&self) -> bool {
        self.writer == Slot::Finished && self.reader == Slot::Finished
    }

    /// Whether a later, harder end may still replace a delivers-pending one: only while
    /// something the reader has not been given remains.
    fn outcome_open(&self) -> bool {
        !self.reader_close_sent
            && (!self.queue.is_empty() || self.reader_busy == Busy::Data || self.tail_pending)
    }

    /// Records how the stream ended (the first reason wins, see the module's rules).
    pub fn finish(&mut self, end: StreamEnd) -> Finished {
        let mut out = Finished::default();
        match self.end {
            None => self.end = Some(end),
            Some(prev) if prev.delivers_pending() && !end.delivers_pending() => {
                if !self.outcome_open() {
                    return out;
                }
                self.end = Some(end);
            }
            Some(_) => return out,
        }
        out.changed = true;
        if end.delivers_pending() {
            return out;
        }
        if matches!(end, StreamEnd::ReaderGone | StreamEnd::ReaderProtocol(_)) {
            // The reader itself left or broke the protocol: nothing more is sent to it but
            // a Close.
            self.reader_at_boundary = true;
        }
        let complete = self.trim_to_frame_end(&mut out.freed);
        self.tail_pending = !complete && self.writer_reading;
        // A peer that does not read could hold a write to it (data, a Pong, our Close)
        // forever: both connections get a deadline to finish closing.
        out.arm_reader_deadline = self.reader == Slot::Connected;
        if self.writer == Slot::Connected {
            match self.writer_kind {
                Kind::Http => out.shutdown_upload = true,
                Kind::WebSocket => {
                    out.arm_writer_deadline = true;
                    out.writer_close = self.take_writer_close(end);
                }
            }
        }
        out
    }

    /// The Close to write to the writer now, if it is due and its socket is free; else
    /// marks it due (it goes when the write in flight is reported done).
    fn take_writer_close(&mut self, end: StreamEnd) -> Option<(u16, &'static str)> {
        if self.writer_close == WriterClose::Sent {
            return None;
        }
        if self.writer_busy != Busy::Idle {
            self.writer_close = WriterClose::Due;
            return None;
        }
        self.writer_close = WriterClose::Sent;
        self.writer_busy = Busy::Close;
        Some(end.writer_close())
    }

    /// Drops queued data, keeping only what completes the frame the reader is in the
    /// middle of. Returns false when that frame's end is not buffered.
    fn trim_to_frame_end(&mut self, freed: &mut Vec<Buffer>) -> bool {
        let mut keep = 0;
        let mut complete = self.reader_at_boundary;
        if !complete {
            for chunk in self.queue.iter_mut() {
                keep += 1;
                if chunk.truncate_after_frame_end() {
                    complete = true;
                    break;
                }
            }
        }
        for c in self.queue.drain(keep..) {
            self.held -= c.cost;
            freed.push(c.buf);
        }
        complete
    }

    // ---- the writer's side ----

    /// Bytes the writer's loop may read now with `limit` the most the channel may hold:
    /// `None` when anything may be read (nothing held, or the stream has ended), else the
    /// room left under `limit` after reserving the read's records: `READ_RECORDS_BYTES` plus
    /// a 33rd of the read (a chunk, its ranges and a 48-byte record per frame piece; only a
    /// read of many tiny frames takes more).
    pub fn writer_room(&self, limit: usize) -> Option<usize> {
        if self.held == 0 || self.end.is_some() {
            return None;
        }
        let room = limit.saturating_sub(self.held + READ_RECORDS_BYTES);
        Some(room - room / 33)
    }

    /// The largest read that keeps a channel holding nothing within `limit` once its
    /// records are counted (the same reservation as `writer_room`).
    pub fn largest_read(limit: usize) -> usize {
        let room = limit.saturating_sub(READ_RECORDS_BYTES);
        room - room / 33
    }

    /// The writer sent pings: the Pong frames may be written now unless the stream has
    /// ended. Report the write with `writer_write_done`.
    pub fn writer_pongs(&mut self, frames: Vec<u8>) -> Option<Vec<u8>> {
        if self.end.is_some() || self.writer_busy != Busy::Idle {
            return None;
        }
        self.writer_busy = Busy::Pong;
        Some(frames)
    }

    /// A write to the writer finished. Returns a Close that became due meanwhile, to write
    /// next (report it too).
    pub fn writer_write_done(&mut self) -> Option<(u16, &'static str)> {
        self.writer_busy = Busy::Idle;
        match (self.writer_close, self.end) {
            (WriterClose::Due, Some(end)) => self.take_writer_close(end),
            _ => None,
        }
    }

    /// The writer's loop is ending: whether it may write `its` Close (none sent or being
    /// sent yet). Report the write with `writer_write_done`.
    pub fn writer_final_close(&mut self) -> bool {
        if self.writer_close == WriterClose::Sent || self.writer_busy != Busy::Idle {
            return false;
        }
        self.writer_close = WriterClose::Sent;
        self.writer_busy = Busy::Close;
        true
    }

    /// A chunk read from the writer: straight to an idle WebSocket reader (the bytes are
    /// still in cache), else queued.
    pub fn offer(&mut self, mut chunk: Chunk) -> Offer {
        if chunk.segments.is_empty() || (self.cut_short() && !self.tail_pending) {
            return Offer::Dropped(chunk.buf);
        }
        let idle = self.reader_kind == Kind::WebSocket
            && self.reader == Slot::Connected
            && self.queue.is_empty()
            && self.reader_busy == Busy::Idle
            && self.pongs.is_empty()
            && self.end.is_none();
        if idle {
            chunk.cost = chunk.measure();
            self.held += chunk.cost;
            self.reader_busy = Busy::Data;
            self.reader_at_boundary = chunk.at_boundary;
            return Offer::Direct(chunk);
        }
        Offer::Queued(self.push(chunk))
    }

    /// Queues a chunk for the reader. A chunk that fills little of its buffer is copied
    /// into the last queued chunk or into a buffer of its size; the buffer it leaves is
    /// returned for the pool.
    pub fn push(&mut self, mut chunk: Chunk) -> Option<Buffer> {
        let len = chunk.data_len();
        if let Some(tail) = self.queue.back_mut() {
            // A small chunk joins the last one; so does any chunk that fits the room left in
            // the last one's buffer (a read that brought less than its buffer holds): the
            // copy costs no memory, and the queue holds about its data, not a read buffer
            // per read — a paced writer with no reader fills `buffer_bytes` with data.
            let small = len <= COALESCE_MAX_BYTES && tail.buf.len() + len <= COALESCE_LIMIT_BYTES;
            let fits = tail.buf.len() + len <= tail.buf.capacity();
            if small || fits {
                self.held -= tail.cost;
                let freed = tail.absorb(chunk);
                tail.cost = tail.measure();
                self.held += tail.cost;
                return Some(freed);
            }
        }
        let freed = (chunk.buf.capacity() > SHRINK_RATIO * len + SHRINK_SLACK_BYTES)
            .then(|| chunk.shrink());
        chunk.cost = chunk.measure();
        self.held += chunk.cost;
        self.queue.push_back(chunk);
        freed
    }

    /// Appends `bytes` to the payload of the last queued chunk when that is one whole binary
    /// frame the relay made (an HTTP upload's, with header room in front) and stays within
    /// `max_payload`. False when it is not (the caller queues a frame of its own).
    pub fn extend_last_frame(&mut self, bytes: &[u8], max_payload: usize) -> bool {
        if self.writer_kind != Kind::Http || self.cut_short() {
            return false;
        }
        let Some(tail) = self.queue.back_mut() else {
            return false;
        };
        let [p] = tail.pieces.as_slice() else {
            return false;
        };
        let (start, len) = (p.payload.start, p.payload.len() + bytes.len());
        let whole = p.starts && p.ends && p.fin && p.opcode == Opcode::Binary;
        // Growing the buffer copies it: worth it for a small (trickled) frame only.
        let grows = start + len + CHUNK_CRLF_LEN > tail.buf.capacity();
        if !whole || len > max_payload || start < MAX_HEADER_LEN || grows && len > EXTEND_GROW_MAX {
            return false;
        }
        self.held -= tail.cost;
        tail.buf.truncate(p.payload.end);
        tail.buf.extend_from_slice(bytes);
        // Room after the payload for an HTTP reader's chunk CRLF, as the upload leaves it.
        tail.buf
            .extend_from_slice(&[0; crate::wire::chunked::CHUNK_CRLF_LEN]);
        let hl = server_header_len(len as u64);
        write_server_header(
            &mut tail.buf[start - hl..start],
            true,
            Opcode::Binary,
            len as u64,
        );
        tail.segments = std::iter::once(start - hl..start + len).collect();
        tail.pieces[0].payload = start..start + len;
        tail.pieces[0].frame_len = len as u64;
        tail.payload_bytes = len as u64;
        tail.cost = tail.measure();
        self.held += tail.cost;
        true
    }

    /// The stream ended in a way that drops undelivered data.
    fn cut_short(&self) -> bool {
        self.end.is_some_and(|e| !e.delivers_pending())
    }

    /// The writer's loop stopped reading: the rest of the reader's current frame, if one
    /// was pending, has been forwarded or will not come. Returns whether one was pending.
    pub fn writer_stopped(&mut self) -> bool {
        self.writer_reading = false;
        std::mem::take(&mut self.tail_pending)
    }

    // ---- the reader's side ----

    /// What the reader's sender writes next. A write handed out (data, Pong, Close) owns
    /// the reader's socket until `reader_write_done`.
    pub fn next_reader_step(&mut self) -> ReaderStep {
        if self.reader_busy != Busy::Idle {
            return ReaderStep::Wait;
        }
        let ws = self.reader_kind == Kind::WebSocket;
        if ws && !self.pongs.is_empty() && self.reader_at_boundary && !self.reader_close_sent {
            let owed = std::mem::take(&mut self.pongs);
            if !matches!(self.end, Some(e) if e.side() == crate::error::Side::Reader) {
                self.reader_busy = Busy::Pong;
                let frames = owed
                    .iter()
                    .flat_map(|p| server_frame(Opcode::Pong, p))
                    .collect();
                return ReaderStep::Pong(frames);
            }
        }
        if let Some(mut chunk) = self.queue.pop_front() {
            if ws && !self.pongs.is_empty() && !self.reader_at_boundary {
                // A Pong waits for the end of the reader's current frame: send only up to
                // there, so it goes out now rather than whenever a read happens to end at
                // a boundary.
                if let Some(mut head) = chunk.split_at_first_frame_end() {
                    let before = chunk.cost;
                    chunk.cost = chunk.measure();
                    head.cost = head.measure();
                    self.held = self.held - before + chunk.cost + head.cost;
                    self.queue.push_front(chunk);
                    chunk = head;
                }
            }
            self.reader_at_boundary = chunk.at_boundary;
            self.reader_busy = Busy::Data;
            let close = ws && self.append_final_close(&mut chunk);
            if close {
                self.reader_close_sent = true;
            }
            return ReaderStep::Data { chunk, close };
        }
        let end = match self.end {
            None => return ReaderStep::Wait,
            Some(end) if self.tail_pending && !end.delivers_pending() => return ReaderStep::Wait,
            Some(end) => end,
        };
        let already = std::mem::replace(&mut self.reader_close_sent, true);
        let how = if already {
            CloseHow::AlreadySent
        } else if !ws {
            CloseHow::Cut
        } else if end == StreamEnd::ReaderGone {
            CloseHow::Echo
        } else if self.reader_at_boundary {
            let (code, reason) = end.reader_close();
            CloseHow::Send(code, reason)
        } else {
            CloseHow::Cut
        };
        if matches!(how, CloseHow::Send(..) | CloseHow::Echo) {
            self.reader_busy = Busy::Close;
        }
        ReaderStep::End { end, how }
    }

    /// When `chunk` is the last of a stream that ended cleanly, appends the reader's Close
    /// frame in the buffer's spare room, so both leave in one write.
    fn append_final_close(&self, chunk: &mut Chunk) -> bool {
        let Some(end) = self.end.filter(|e| e.delivers_pending()) else {
            return false;
        };
        if !(self.queue.is_empty() && chunk.at_boundary && self.pongs.is_empty()) {
            return false;
        }
        let (code, reason) = end.reader_close();
        let frame = close_frame(code, reason);
        // The cost counted is the buffer's capacity: the frame must fit without growing it.
        if chunk.buf.capacity() - chunk.buf.len() < frame.len() {
            return false;
        }
        let start = chunk.buf.len();
        chunk.buf.extend_from_slice(&frame);
        let end = chunk.buf.len();
        match chunk.segments.last_mut() {
            // Right after the data (a packed chunk): one range.
            Some(last) if last.end == start => last.end = end,
            _ => chunk.segments.push(start..end),
        }
        true
    }

    /// A write to the reader finished (`cost`: the chunk's, for a data write). On failure
    /// the caller ends the stream with `ReaderGone`.
    pub fn reader_write_done(&mut self, cost: usize, ok: bool) {
        match self.reader_busy {
            Busy::Data => self.held -= cost,
            Busy::Pong if ok => self.unanswered_pings = 0,
            _ => {}
        }
        self.reader_busy = Busy::Idle;
    }

    /// The reader sent a ping: its Pong goes at the next frame boundary.
    pub fn reader_ping(&mut self, payload: Vec<u8>) -> PingVerdict {
        if self.reader_close_sent {
            return PingVerdict::Answer; // our Close is out: nothing more is sent
        }
        if self.reader_busy == Busy::Pong || !self.pongs.is_empty() {
            // An earlier Pong is not out yet: the reader pings faster than it reads.
            self.unanswered_pings += 1;
            if self.unanswered_pings > MAX_UNANSWERED_PINGS {
                return PingVerdict::Flood;
            }
        }
        if self.pongs.len() == MAX_OWED_PONGS {
            self.pongs.pop_back(); // the latest ping is the one answered
        }
        self.pongs.push_back(payload);
        PingVerdict::Answer
    }

    /// Whether a Pong to the reader waits to be written.
    pub fn pong_owed(&self) -> bool {
        !self.pongs.is_empty()
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
