//! One channel's state: which ends are connected, the bytes held between them, and how
//! the stream ended. Lives on its owner shard only (`Rc`/`RefCell`, no locks).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use tokio::sync::Notify;

use crate::control::metrics::METRICS;
use crate::error::StreamEnd;
use crate::ring::Conn;
use crate::wire::route::Direction;

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
    /// Payload of a Ping from the reader still to be answered.
    pub reader_pong: Option<Vec<u8>>,
    /// The relay has sent the reader its Close.
    pub reader_close_sent: bool,
    pub writer_conn: Option<Rc<Conn>>,
    pub reader_conn: Option<Rc<Conn>>,
    pub bytes: u64,
    pub frames: u64,
}

pub struct Channel {
    pub id: String,
    pub key: String,
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
}

impl Channel {
    pub fn new(id: String, key: String, limit: usize) -> Channel {
        Channel {
            id,
            key,
            limit,
            created: Instant::now(),
            state: RefCell::new(ChannelState {
                writer: Slot::Waiting,
                reader: Slot::Waiting,
                queue: VecDeque::new(),
                held: 0,
                end: None,
                reader_pong: None,
                reader_close_sent: false,
                writer_conn: None,
                reader_conn: None,
                bytes: 0,
                frames: 0,
            }),
            reader_wake: Notify::new(),
            writer_wake: Notify::new(),
            reader_done: Notify::new(),
            removed: Cell::new(false),
        }
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

    pub fn end(&self) -> Option<StreamEnd> {
        self.state.borrow().end
    }

    /// Records how the stream ended (the first reason wins) and wakes both ends. Ends that
    /// do not deliver pending data drop the queue at once, and a writer blocked in a read
    /// is woken by shutting down its read side.
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
            st.queue.clear();
            st.held = 0;
            if let Some(w) = &st.writer_conn {
                w.shutdown_read();
            }
        }
        drop(st);
        self.reader_wake.notify_one();
        self.writer_wake.notify_one();
    }

    /// Whether both ends are done with the channel.
    pub fn both_finished(&self) -> bool {
        let st = self.state.borrow();
        st.writer == Slot::Finished && st.reader == Slot::Finished
    }

    /// Queues a chunk for the reader.
    pub fn push_chunk(&self, chunk: Chunk) {
        let mut st = self.state.borrow_mut();
        st.held += chunk.buf.len();
        st.queue.push_back(chunk);
        drop(st);
        self.reader_wake.notify_one();
    }

    /// A chunk of `cap` bytes was sent (or dropped): room for the writer.
    pub fn release(&self, cap: usize) {
        {
            let mut st = self.state.borrow_mut();
            st.held = st.held.saturating_sub(cap);
        }
        self.writer_wake.notify_one();
    }

    pub fn add_forwarded(&self, bytes: u64, frames: u64) {
        let mut st = self.state.borrow_mut();
        st.bytes += bytes;
        st.frames += frames;
        METRICS.bytes_forwarded.fetch_add(bytes, Relaxed);
        METRICS.frames_forwarded.fetch_add(frames, Relaxed);
    }
}
