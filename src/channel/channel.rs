//! One channel's state: which ends are connected, the bytes held between them, and how
//! the stream ended. Lives on its owner shard only (`Rc`/`RefCell`, no locks).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::Notify;

use crate::error::StreamEnd;
use crate::keys::EndKeys;
use crate::metrics::METRICS;
use crate::ring::{Conn, Cut, Watchdog};
use crate::wire::route::Direction;

/// Pongs owed to a reader that pings faster than it can be answered; past this, more
/// pings go unanswered until the owed ones are sent (RFC 6455 §5.5.3 allows answering only
/// the latest).
pub const MAX_PENDING_PONGS: usize = 64;

/// Forwarded bytes waiting for the reader: one read buffer, unmasked, with the ranges a
/// WebSocket reader sends (`segments`) and the frame pieces an HTTP reader renders.
pub struct Chunk {
    pub buf: Vec<u8>,
    pub segments: Vec<std::ops::Range<usize>>,
    pub pieces: Vec<crate::wire::forward::Piece>,
    /// The chunk ends exactly at a frame boundary.
    pub at_boundary: bool,
    /// Payload bytes and completed data frames in it (for counters).
    pub payload_bytes: u64,
    pub frames: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Not connected yet.
    Waiting,
    Connected,
    /// Was connected and has finished.
    Finished,
}

pub struct ChannelState {
    pub writer: Slot,
    pub reader: Slot,
    pub queue: VecDeque<Chunk>,
    /// Buffer bytes this channel holds (queued chunks and the chunk being written), counted
    /// by capacity: that is the memory it pins.
    pub held: usize,
    pub end: Option<StreamEnd>,
    /// Pongs owed to the reader, as ready-to-send frames (at most `MAX_PENDING_PONGS`).
    pub reader_pongs: Vec<u8>,
    pub reader_pongs_count: usize,
    /// The relay is ending the reader's connection (its Close sent, or its TCP about to be
    /// cut): what the reader does after that is not "reader gone".
    pub reader_close_sent: bool,
    /// A write to the reader's socket is in flight: data (by its sender, or by the writer's
    /// loop handing a chunk straight over) or Pongs. At most one at a time.
    pub reader_busy: bool,
    /// The reader speaks WebSocket (not an HTTP response).
    pub reader_is_ws: bool,
    /// The last chunk handed to the reader's sender ends at a frame boundary.
    pub reader_at_boundary: bool,
    /// The writer speaks WebSocket (not an HTTP upload).
    pub writer_is_ws: bool,
    /// The relay has sent (or is sending) the writer its Close.
    pub writer_close_sent: bool,
    /// The writer's loop is writing to the writer's socket (a Pong) right now.
    pub writer_busy: bool,
    /// The stream was cut short while the reader was in the middle of a frame whose end
    /// has not been read from the writer yet: the writer's loop still forwards up to that
    /// frame's end, so the reader can get a Close frame instead of a cut connection.
    pub tail_pending: bool,
    pub writer_conn: Option<Rc<Conn>>,
    pub reader_conn: Option<Rc<Conn>>,
    pub bytes: u64,
    pub frames: u64,
}

pub struct Channel {
    pub id: String,
    /// One key per end: each opens only its own direction.
    pub keys: EndKeys,
    /// Most buffer bytes held before the writer is no longer read.
    pub limit: usize,
    pub created: Instant,
    pub state: RefCell<ChannelState>,
    /// Wakes the reader's sender: data, a pong or the end is ready.
    pub reader_wake: Notify,
    /// Wakes the writer's loop: room in the buffer, or the end.
    pub writer_wake: Notify,
    /// The reader answered our Close (or went away) after it was sent.
    pub reader_done: Notify,
    /// Taken out of the registry (counted once).
    pub removed: Cell<bool>,
    /// An end has connected (or is connecting) at least once.
    pub ever_connected: Cell<bool>,
    /// When bytes last moved on either end (for the idle timeout).
    pub last_activity: Cell<Instant>,
    /// Wakes the channel's timer task when the channel leaves the table.
    pub retired: Notify,
    /// For a channel created from a signed ref: the ref's expiry (unix seconds). Until
    /// then the id may not be created again.
    pub signed_expiry: Cell<Option<u64>>,
}

impl ChannelState {
    /// Whether the writer's loop may write a chunk to the reader itself: a WebSocket reader
    /// with nothing queued, nothing being written to it, no Pong owed, and the stream not
    /// ended.
    pub fn reader_takes_direct_send(&self) -> bool {
        self.reader_is_ws
            && self.queue.is_empty()
            && !self.reader_busy
            && self.reader_pongs.is_empty()
            && self.end.is_none()
    }
}

impl Channel {
    pub fn new(id: String, keys: EndKeys, limit: usize) -> Channel {
        Channel {
            id,
            keys,
            limit,
            created: Instant::now(),
            state: RefCell::new(ChannelState {
                writer: Slot::Waiting,
                reader: Slot::Waiting,
                queue: VecDeque::new(),
                held: 0,
                end: None,
                reader_pongs: Vec::new(),
                reader_pongs_count: 0,
                reader_close_sent: false,
                reader_busy: false,
                reader_is_ws: false,
                reader_at_boundary: true,
                writer_is_ws: false,
                writer_close_sent: false,
                writer_busy: false,
                tail_pending: false,
                writer_conn: None,
                reader_conn: None,
                bytes: 0,
                frames: 0,
            }),
            reader_wake: Notify::new(),
            writer_wake: Notify::new(),
            reader_done: Notify::new(),
            removed: Cell::new(false),
            ever_connected: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
            retired: Notify::new(),
            signed_expiry: Cell::new(None),
        }
    }

    /// The key that opens the `dir` end.
    pub fn key(&self, dir: Direction) -> &str {
        self.keys.get(dir)
    }

    pub fn slot(&self, dir: Direction) -> Slot {
        let st = self.state.borrow();
        match dir {
            Direction::Read => st.reader,
            Direction::Write => st.writer,
        }
    }

    pub fn set_slot(&self, dir: Direction, slot: Slot) {
        let mut st = self.state.borrow_mut();
        match dir {
            Direction::Read => st.reader = slot,
            Direction::Write => st.writer = slot,
        }
    }

    /// Claims the `dir` end for `conn`: from here on a second connection for it gets 409.
    /// Call before the first await after checking the slot is `Waiting`.
    pub fn claim(self: &Rc<Self>, dir: Direction, conn: &Rc<Conn>) -> ClaimedEnd {
        let mut st = self.state.borrow_mut();
        match dir {
            Direction::Write => {
                st.writer = Slot::Connected;
                st.writer_conn = Some(conn.clone());
            }
            Direction::Read => {
                st.reader = Slot::Connected;
                st.reader_conn = Some(conn.clone());
            }
        }
        ClaimedEnd {
            ch: self.clone(),
            dir,
        }
    }

    pub fn end(&self) -> Option<StreamEnd> {
        self.state.borrow().end
    }

    /// Records how the stream ended (the first reason wins) and wakes both ends.
    ///
    /// An end that does not deliver pending data drops the queue — except the rest of a frame
    /// the reader is in the middle of, so the reader can still get a Close frame — and tells
    /// a WebSocket writer with a Close of its own (sent from a separate task, since the
    /// writer's loop may be parked in a read that must not be cancelled). The writer then
    /// answers, which completes that read.
    pub fn finish(&self, end: StreamEnd) {
        let mut st = self.state.borrow_mut();
        match st.end {
            None => st.end = Some(end),
            // A stream whose writer already finished can still be cut short for the reader
            // (abort, TTL, reader gone): the later, harder reason decides what the reader sees.
            Some(prev) if prev.delivers_pending() && !end.delivers_pending() => st.end = Some(end),
            Some(_) => return,
        }
        let end = st.end.expect("just set");
        if !end.delivers_pending() {
            if end.side() == crate::error::Side::Reader {
                // The reader itself left: nothing more is sent to it.
                st.reader_at_boundary = true;
            }
            let complete = trim_to_frame_end(&mut st);
            st.tail_pending = !complete && st.writer_is_ws && st.writer_conn.is_some();
            // A peer that does not read could hold a write to it (data, a Pong, our Close)
            // forever: both WebSocket ends get a deadline to finish closing.
            if let Some(r) = &st.reader_conn {
                arm_close_timeout(r);
            }
            if let Some(w) = st.writer_conn.clone() {
                if !st.writer_is_ws {
                    // An HTTP upload: wake its read; it answers with an error status.
                    w.shutdown_read();
                } else {
                    arm_close_timeout(&w);
                    // While a Pong is being written to it, the writer's loop sends the Close
                    // after it (one write at a time).
                    if !st.writer_close_sent && !st.writer_busy {
                        st.writer_close_sent = true;
                        let (code, reason) = end.writer_close();
                        crate::ring::spawn(send_close(w, code, reason));
                    }
                }
            }
        }
        drop(st);
        self.reader_wake.notify_one();
        self.writer_wake.notify_one();
    }

    /// Whether the channel is in use: an end is connected, or data waits for its reader.
    pub fn is_busy(&self) -> bool {
        let st = self.state.borrow();
        st.writer == Slot::Connected
            || st.reader == Slot::Connected
            || (st.reader == Slot::Waiting && !st.queue.is_empty())
    }

    /// Whether both ends are done with the channel.
    pub fn both_finished(&self) -> bool {
        let st = self.state.borrow();
        st.writer == Slot::Finished && st.reader == Slot::Finished
    }

    /// Queues a chunk for the reader (dropped if the stream was already cut short).
    pub fn push_chunk(&self, chunk: Chunk) {
        let mut st = self.state.borrow_mut();
        if st.end.is_some_and(|e| !e.delivers_pending()) && !st.tail_pending {
            return;
        }
        st.held += chunk.buf.capacity();
        st.queue.push_back(chunk);
        drop(st);
        self.reader_wake.notify_one();
    }

    /// A queued chunk's buffer was sent (or dropped): the channel no longer holds it, so
    /// the writer has room again; the buffer goes back to the pool.
    pub fn recycle(&self, buf: Vec<u8>, pool: &crate::ring::BufPool) {
        {
            let mut st = self.state.borrow_mut();
            st.held = st.held.saturating_sub(buf.capacity());
        }
        pool.put(buf);
        self.touch();
        self.writer_wake.notify_one();
    }

    /// Notes that bytes moved on one of the ends.
    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    pub fn add_forwarded(&self, bytes: u64, frames: u64) {
        let mut st = self.state.borrow_mut();
        st.bytes += bytes;
        st.frames += frames;
        METRICS.bytes_forwarded.fetch_add(bytes, Relaxed);
        METRICS.frames_forwarded.fetch_add(frames, Relaxed);
    }
}

/// An end of a channel held by a connection; `release` gives it back when the connection is
/// done with it.
#[must_use = "a claimed end must be released"]
pub struct ClaimedEnd {
    ch: Rc<Channel>,
    dir: Direction,
}

impl ClaimedEnd {
    /// Detaches the connection from the end and marks the end finished — unless it was
    /// handed back (`Slot::Waiting`: an HTTP reader that left before anything was sent to
    /// it leaves the end open for the next one). The channel goes once both ends are done.
    pub fn release(self, shard: &super::Shard) {
        let ch = &self.ch;
        {
            let mut st = ch.state.borrow_mut();
            match self.dir {
                Direction::Write => st.writer_conn = None,
                Direction::Read => st.reader_conn = None,
            }
        }
        if ch.slot(self.dir) == Slot::Connected {
            ch.set_slot(self.dir, Slot::Finished);
        }
        shard.end_finished(ch);
    }
}

impl Chunk {
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

/// Drops queued data, keeping only what completes the frame the reader is in the middle
/// of. Returns false when that frame's end is not buffered (more must come from the writer).
fn trim_to_frame_end(st: &mut ChannelState) -> bool {
    let mut keep = 0;
    let mut complete = st.reader_at_boundary;
    if !complete {
        for chunk in st.queue.iter_mut() {
            keep += 1;
            if chunk.truncate_after_frame_end() {
                complete = true;
                break;
            }
        }
    }
    let dropped: usize = st.queue.drain(keep..).map(|c| c.buf.capacity()).sum();
    st.held = st.held.saturating_sub(dropped);
    complete
}

/// Sends a WebSocket writer the Close of an abnormal end (`finish` has armed its close
/// timeout, so a writer that never reads cannot block us).
pub async fn send_close(conn: Rc<Conn>, code: u16, reason: &'static str) {
    let _ = conn
        .write_all(crate::wire::frame::close_frame(code, reason))
        .await;
}

/// Shuts `conn` down after `CLOSE_TIMEOUT` unless it is gone by then.
pub fn arm_close_timeout(conn: &Rc<Conn>) {
    Watchdog::cut_after(conn, Cut::Both, crate::config::CLOSE_TIMEOUT);
}
