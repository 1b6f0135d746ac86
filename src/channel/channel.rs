//! A channel on its owner shard (`Rc`/`RefCell`, no locks): its state machine
//! (`state.rs`), the connections of its ends, and the wake-ups between its tasks. This is
//! where the state machine's answers that are not a socket write of the pump's own are
//! carried out (deadlines, the writer's Close, buffers back to the pool).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use tokio::sync::Notify;

use crate::error::StreamEnd;
use crate::keys::EndKeys;
use crate::metrics::ShardMetrics;
use crate::ring::{Conn, Cut, Watchdog};
use crate::wire::route::Direction;

pub use super::state::{Chunk, Kind, Slot};
use super::state::{Core, Finished};

pub struct Channel {
    pub id: String,
    /// One key per end: each opens only its own direction.
    pub keys: EndKeys,
    /// Most buffer bytes held before the writer is no longer read.
    pub limit: usize,
    pub created: Instant,
    /// The channel's state machine; the pump and the HTTP paths carry out what it answers.
    pub core: RefCell<Core>,
    pub writer_conn: RefCell<Option<Rc<Conn>>>,
    pub reader_conn: RefCell<Option<Rc<Conn>>>,
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
    /// When the writer left data behind with no reader connected (for the abandoned-data
    /// timeout), and the bytes of it counted against the shard's budget.
    pub left_at: Cell<Option<Instant>>,
    pub left_bytes: Cell<usize>,
    /// Wakes the channel's timer task when the channel leaves the table (or its deadlines
    /// change).
    pub retired: Notify,
    /// For a channel created from a signed ref: the ref's expiry (unix seconds). Until
    /// then the id may not be created again.
    pub signed_expiry: Cell<Option<u64>>,
    /// When both ends were first connected at once (for the time-to-pair figures).
    pub paired_at: Cell<Option<Instant>>,
    /// What the reader sent the other way (ping and data-frame payload bytes, frames):
    /// answered or dropped by the relay, counted for the channel's end line.
    pub reader_sent: Cell<(u64, u64)>,
}

impl Channel {
    pub fn new(id: String, keys: EndKeys, limit: usize) -> Channel {
        Channel {
            id,
            keys,
            limit,
            created: Instant::now(),
            core: RefCell::new(Core::new()),
            writer_conn: RefCell::new(None),
            reader_conn: RefCell::new(None),
            reader_wake: Notify::new(),
            writer_wake: Notify::new(),
            reader_done: Notify::new(),
            removed: Cell::new(false),
            ever_connected: Cell::new(false),
            last_activity: Cell::new(Instant::now()),
            left_at: Cell::new(None),
            left_bytes: Cell::new(0),
            retired: Notify::new(),
            signed_expiry: Cell::new(None),
            paired_at: Cell::new(None),
            reader_sent: Cell::new((0, 0)),
        }
    }

    /// The key that opens the `dir` end.
    pub fn key(&self, dir: Direction) -> &str {
        self.keys.get(dir)
    }

    pub fn slot(&self, dir: Direction) -> Slot {
        self.core.borrow().slot(dir)
    }

    /// Claims the `dir` end for `conn`, speaking `kind`: from here on a second connection
    /// for it gets 409. Call before the first await after checking the slot is `Waiting`.
    pub fn claim(self: &Rc<Self>, dir: Direction, conn: &Rc<Conn>, kind: Kind) -> ClaimedEnd {
        let paired = {
            let mut core = self.core.borrow_mut();
            core.connect(dir, kind);
            core.writer != Slot::Waiting && core.reader != Slot::Waiting
        };
        if paired && self.paired_at.get().is_none() {
            self.paired_at.set(Some(Instant::now()));
        }
        *self.conn_cell(dir).borrow_mut() = Some(conn.clone());
        ClaimedEnd {
            ch: self.clone(),
            dir,
        }
    }

    fn conn_cell(&self, dir: Direction) -> &RefCell<Option<Rc<Conn>>> {
        match dir {
            Direction::Read => &self.reader_conn,
            Direction::Write => &self.writer_conn,
        }
    }

    pub fn end(&self) -> Option<StreamEnd> {
        self.core.borrow().end()
    }

    pub fn held(&self) -> usize {
        self.core.borrow().held()
    }

    /// Records how the stream ended (the state machine decides whether this reason
    /// stands) and carries out what follows: deadlines on connections that may not read,
    /// the writer's Close (written from a task of its own, since the writer's loop may be
    /// parked in a read that must not be cancelled; the writer's answer completes it), and
    /// an HTTP upload's read woken so it answers with an error status.
    pub fn finish(self: &Rc<Self>, end: StreamEnd) {
        let done: Finished = self.core.borrow_mut().finish(end);
        if !done.changed {
            return;
        }
        if done.arm_reader_deadline {
            if let Some(r) = &*self.reader_conn.borrow() {
                arm_close_timeout(r);
            }
        }
        if let Some(w) = self.writer_conn.borrow().clone() {
            if done.shutdown_upload {
                w.shutdown_read();
            }
            if done.arm_writer_deadline {
                arm_close_timeout(&w);
            }
            if let Some((code, reason)) = done.writer_close {
                crate::ring::spawn(send_close(self.clone(), w, code, reason));
            }
        }
        self.reader_wake.notify_one();
        self.writer_wake.notify_one();
    }

    /// Whether the channel is in use: an end is connected, or data waits for its reader.
    pub fn is_busy(&self) -> bool {
        self.core.borrow().is_busy()
    }

    /// Whether both ends are done with the channel.
    pub fn both_finished(&self) -> bool {
        self.core.borrow().both_finished()
    }

    /// Queues a chunk for the reader; a buffer it no longer needs goes to the pool.
    pub fn push_chunk(&self, chunk: Chunk, pool: &crate::ring::BufPool) {
        if let Some(buf) = self.core.borrow_mut().push(chunk) {
            pool.put(buf);
        }
        self.reader_wake.notify_one();
    }

    /// A write to the reader finished: `buf` (a data write's buffer, `cost` its count)
    /// goes back to the pool and the writer has room again; a failed write means the
    /// reader is gone.
    pub fn reader_wrote(
        self: &Rc<Self>,
        buf: Option<crate::ring::Buffer>,
        cost: usize,
        ok: bool,
        pool: &crate::ring::BufPool,
    ) {
        self.core.borrow_mut().reader_write_done(cost, ok);
        if let Some(buf) = buf {
            pool.put(buf);
            self.release_left(cost, pool);
            self.touch();
            self.writer_wake.notify_one();
        }
        if !ok {
            self.finish(StreamEnd::ReaderGone);
        }
        self.reader_wake.notify_one();
    }

    /// Bytes the writer left behind were delivered or dropped: they stop counting against
    /// the shard's budget.
    pub fn release_left(&self, cost: usize, pool: &crate::ring::BufPool) {
        let left = self.left_bytes.get();
        if left > 0 {
            let n = cost.min(left);
            self.left_bytes.set(left - n);
            pool.release_left(n);
        }
    }

    /// The writer is gone: what it left in the channel counts against the shard's stream
    /// budget until it is delivered or the channel goes. With no reader connected to take
    /// it, the abandoned-data timeout starts.
    pub fn writer_left(self: &Rc<Self>, pool: &crate::ring::BufPool) {
        let (held, reader) = {
            let core = self.core.borrow();
            (core.held(), core.reader)
        };
        if held == 0 || self.left_bytes.get() > 0 {
            return;
        }
        self.left_bytes.set(held);
        pool.hold_left(held);
        if reader == Slot::Waiting {
            self.left_at.set(Some(Instant::now()));
            self.retired.notify_one(); // the timer task takes the new deadline
        }
    }

    /// Notes that bytes moved on one of the ends.
    pub fn touch(&self) {
        self.last_activity.set(Instant::now());
    }

    /// Most bytes this channel may hold now: its own limit, or its stream's share of the
    /// shard's budget (WebSocket writers and HTTP uploads share it) if that is smaller.
    pub fn hold_limit(&self, pool: &crate::ring::BufPool) -> usize {
        self.limit.min(pool.stream_hold_share())
    }

    /// Data delivered to the reader, counted for the channel and its shard.
    pub fn add_forwarded(&self, stats: &ShardMetrics, bytes: u64, frames: u64) {
        let mut core = self.core.borrow_mut();
        core.bytes += bytes;
        core.frames += frames;
        stats.forwarded(bytes, frames);
    }

    /// The reader sent `bytes` of payload in `frames` frames (pings, or data it may not
    /// send on a one-way channel).
    pub fn add_reader_sent(&self, bytes: u64, frames: u64) {
        let (b, f) = self.reader_sent.get();
        self.reader_sent.set((b + bytes, f + frames));
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
        *ch.conn_cell(self.dir).borrow_mut() = None;
        ch.core.borrow_mut().disconnect(self.dir);
        if self.dir == Direction::Write {
            ch.writer_left(&shard.pool);
        }
        shard.end_finished(ch);
    }
}

/// Writes a WebSocket writer the Close of an abnormal end (`finish` armed its deadline, so
/// a writer that never reads cannot hold this task).
async fn send_close(ch: Rc<Channel>, conn: Rc<Conn>, code: u16, reason: &'static str) {
    let _ = conn
        .write_all(crate::wire::frame::close_frame(code, reason))
        .await;
    let next = ch.core.borrow_mut().writer_write_done();
    debug_assert!(next.is_none(), "one Close per writer");
    ch.writer_wake.notify_one();
}

/// Shuts `conn` down after `CLOSE_TIMEOUT` unless it is gone by then.
pub fn arm_close_timeout(conn: &Rc<Conn>) {
    Watchdog::cut_after(conn, Cut::Both, crate::config::CLOSE_TIMEOUT);
}
