//! The forwarding pump. The writer's loop reads large buffers, lets the frame forwarder
//! unmask and re-header them in place, and offers the ready ranges to the channel's state
//! machine: straight to the reader's socket when its sender is idle (the bytes are still in
//! cache), else through the queue, from which the reader's sender writes them out of the
//! same buffers. Both ends live on the owner shard, so hand-over is a `VecDeque` and two
//! `Notify`s — no locks, no copies of payload. Every socket write here was handed out by
//! the state machine and is reported back to it when done: one write per socket at a time.

use std::rc::Rc;

use super::channel::{arm_close_timeout, Channel, Chunk};
use super::ping_reader::PingReader;
use super::shard::Shard;
use super::state::{Busy, CloseHow, Core, Offer, PingVerdict, ReaderStep};
use crate::config::{CLOSE_TIMEOUT, SMALL_READ_BYTES};
use crate::error::StreamEnd;
use crate::ring::{self, Buffer, Conn, Cut, Watchdog};
use crate::wire::forward::{compact, Batch, FrameForwarder, Layout};
use crate::wire::frame::{close_frame, server_frame, Opcode};

/// How the writer's loop ended.
enum WriterExit {
    /// The writer sent Close: answer 1000 and close at once.
    Clean,
    /// The stream was ended elsewhere (reader gone, abort, TTL): the writer gets that
    /// Close, then is read until it answers, so no unread data resets the connection
    /// before it has read our Close. `answered`: its Close already arrived.
    EndedElsewhere { answered: bool },
    /// The writer broke the protocol or a limit: this Close, then close.
    Refused(u16, &'static str),
    /// The writer's connection is gone.
    Gone,
}

/// Reads the writer socket until the stream ends. Nothing is ever sent to the writer
/// before its Close, except pongs it asked for and the Close of an abnormal end.
pub async fn run_writer(shard: &Shard, ch: &Rc<Channel>, conn: &Rc<Conn>, leftover: Vec<u8>) {
    let mut fwd = FrameForwarder::new(shard.config().max_frame_bytes).with_unmask(ring::unmask_to);
    let exit = writer_loop(shard, ch, conn, &mut fwd, leftover).await;
    if ch.core.borrow_mut().writer_stopped() {
        ch.reader_wake.notify_one(); // the frame's end will not come
    }
    let (code, reason) = match exit {
        WriterExit::Clean => (1000, ""),
        WriterExit::Refused(code, reason) => (code, reason),
        WriterExit::EndedElsewhere { .. } => ch.end().map_or((1011, ""), |e| e.writer_close()),
        WriterExit::Gone => {
            conn.shutdown();
            return;
        }
    };
    let drain = matches!(exit, WriterExit::EndedElsewhere { answered: false });
    if ch.core.borrow_mut().writer_final_close() {
        arm_close_timeout(conn);
        if drain {
            let _ = conn.write_all(close_frame(code, reason)).await;
        } else {
            // Nothing more to read: our Close and the FIN leave in one segment.
            let _ = conn.write_last(close_frame(code, reason)).await;
        }
        ch.core.borrow_mut().writer_write_done();
    }
    if drain {
        drain_until_close(conn, fwd).await;
    }
    // A Close written by `finish`'s task goes out before the socket closes (its deadline
    // is armed, so this wait is bounded).
    while ch.core.borrow().writer_busy() != Busy::Idle {
        ch.writer_wake.notified().await;
    }
    // Close the writer's TCP at once (the Python SDK waits for the server to close first).
    conn.shutdown();
}

/// Writes a Close to the writer that became due while a Pong was being written to it.
async fn write_due_close(ch: &Channel, conn: &Conn, due: Option<(u16, &'static str)>) {
    if let Some((code, reason)) = due {
        let _ = conn.write_all(close_frame(code, reason)).await;
        ch.core.borrow_mut().writer_write_done();
    }
}

async fn writer_loop(
    shard: &Shard,
    ch: &Rc<Channel>,
    conn: &Rc<Conn>,
    fwd: &mut FrameForwarder,
    leftover: Vec<u8>,
) -> WriterExit {
    let _stream = shard.pool.stream();
    let mut batch = Batch::default();
    let mut carry = leftover;
    // The handshake may have brought frames along: process them before the first read.
    let mut pending_input = !carry.is_empty();
    let mut small = true;
    loop {
        if ch.end().is_some() && !ch.core.borrow().tail_pending() {
            return WriterExit::EndedElsewhere { answered: false };
        }
        // Idle or trickling writers park a small read; streaming ones get their share of
        // the shard's read budget (never more than the channel may hold).
        let limit = ch.hold_limit(&shard.pool);
        let want = if small {
            SMALL_READ_BYTES
        } else {
            // The chunk's records count too: a read never takes the channel past `limit`.
            shard.pool.stream_read_size().min(Core::largest_read(limit))
        };
        // Backpressure: hold at most `limit` bytes; until a read of a useful size fits, the
        // writer's socket is not read and TCP flow control throttles it. Reads are sized to
        // what may be taken (a full read's room is not waited for: with no reader to make
        // room, a writer whose Close is still unread would wait for good).
        let room = ch.core.borrow().writer_room(limit);
        let useful = want.min(limit / 4).max(SMALL_READ_BYTES);
        if !pending_input && room.is_some_and(|r| r < useful) {
            // Not read until the reader makes room: what the writer sends meanwhile need
            // not wake the shard.
            conn.park_reads();
            ch.writer_wake.notified().await;
            continue;
        }
        let size = room.map_or(want, |r| want.min(r));
        let size = size.max(carry.len() + SMALL_READ_BYTES);
        if small && !pending_input && carry.is_empty() {
            // An idle writer holds no read buffer while it sends nothing.
            conn.wait_readable().await;
        }
        let mut buf = shard.pool.get(size);
        buf.extend_from_slice(&carry);
        if !pending_input {
            let room = size - buf.len();
            let (res, b) = conn.read_into(buf, room).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => {
                    shard.pool.put(buf);
                    ch.finish(StreamEnd::WriterDisconnected);
                    return WriterExit::Gone;
                }
                Ok(n) => {
                    small = n < SMALL_READ_BYTES / 2;
                    ch.touch();
                }
            }
        }
        let filled = buf.len();
        pending_input = false;
        // A WebSocket reader takes the frames packed together as they are unmasked (one
        // pass, one range to write); until a reader is known, each keeps the room an HTTP
        // reader's chunk header needs.
        let packed = ch.core.borrow().reader_is_websocket();
        fwd.set_layout(if packed {
            Layout::Packed
        } else {
            Layout::InPlace
        });
        // On a protocol error the batch still holds every frame before the bad one.
        let result = fwd.process(&mut buf[..filled], &mut batch);
        carry.clear();
        carry.extend_from_slice(&buf[batch.consumed..filled]);
        let answered = batch.close.is_some();
        if !batch.pings.is_empty() {
            // The writer asked; answering is not an unsolicited frame.
            let pongs: Vec<u8> = batch
                .pings
                .drain(..)
                .flat_map(|p| server_frame(Opcode::Pong, &p))
                .collect();
            let pongs = ch.core.borrow_mut().writer_pongs(pongs);
            if let Some(pongs) = pongs {
                let res = conn.write_all(pongs).await;
                let due = ch.core.borrow_mut().writer_write_done();
                // A writer whose Close came with the pings may be gone already: its stream
                // still ended cleanly.
                if res.is_err() && !answered {
                    shard.pool.put(buf);
                    ch.finish(StreamEnd::WriterDisconnected);
                    return WriterExit::Gone;
                }
                write_due_close(ch, conn, due).await;
            }
        }
        let mut chunk = Chunk::from_batch(buf, &mut batch);
        if packed {
            // What follows the packed output is spent input (the carry is copied out): cut
            // it, so coalescing copies none of it and our Close can follow the data directly.
            if let Some(end) = chunk.segments.last().map(|r| r.end) {
                chunk.buf.truncate(end);
            }
        }
        if ch.end().is_some_and(|e| !e.delivers_pending()) {
            // Cut short while this read was in flight: only the rest of a frame the reader
            // is in the middle of still goes out.
            if !ch.core.borrow().tail_pending() {
                shard.pool.put(chunk.buf);
                return WriterExit::EndedElsewhere { answered };
            }
            let done = chunk.truncate_after_frame_end();
            queue(shard, ch, chunk);
            if done || answered || result.is_err() {
                ch.core.borrow_mut().writer_stopped();
                ch.reader_wake.notify_one();
                return WriterExit::EndedElsewhere { answered };
            }
            continue;
        }
        if answered && result.is_ok() {
            if !shard.may_leave(ch, chunk.buf.capacity()) {
                // Nobody is there to take what the writer leaves, and the shard's budget
                // cannot hold it: the writer learns (Close 1013) its data was not accepted.
                shard.pool.put(chunk.buf);
                ch.finish(StreamEnd::BufferFull);
                return WriterExit::EndedElsewhere { answered: true };
            }
            // The stream ends cleanly with this chunk: queue it behind the end, so the
            // reader's sender writes it and the reader's Close together (one segment).
            ch.finish(StreamEnd::Clean);
            queue(shard, ch, chunk);
            return WriterExit::Clean;
        }
        forward(shard, ch, conn, chunk).await;
        if let Err(e) = result {
            ch.finish(StreamEnd::WriterProtocol(e));
            return WriterExit::Refused(e.close_code(), e.reason());
        }
    }
}

/// Queues a chunk that carries data, or returns its buffer to the pool.
fn queue(shard: &Shard, ch: &Channel, chunk: Chunk) {
    if chunk.segments.is_empty() {
        shard.pool.put(chunk.buf);
    } else {
        ch.push_chunk(chunk, &shard.pool);
    }
}

/// Hands a chunk on as the state machine says: written to an idle WebSocket reader by the
/// writer's loop itself, while the bytes it just read and unmasked are still in cache (with
/// many channels on a core, a chunk that waits in the queue is cold by the time it is sent),
/// or queued. While a direct write waits for room, the writer's connection is parked.
async fn forward(shard: &Shard, ch: &Rc<Channel>, writer: &Conn, chunk: Chunk) {
    let offer = ch.core.borrow_mut().offer(chunk);
    match offer {
        Offer::Direct(chunk) => {
            let conn = ch.reader_conn.borrow().clone();
            match conn {
                Some(conn) => deliver(shard, ch, &conn, chunk, Some(writer)).await,
                None => ch.reader_wrote(Some(chunk.buf), chunk.cost, false, &shard.pool),
            }
        }
        Offer::Queued(spare) => {
            if let Some(buf) = spare {
                shard.pool.put(buf);
            }
            ch.reader_wake.notify_one();
        }
        Offer::Dropped(buf) => shard.pool.put(buf),
    }
}

/// Writes a chunk the state machine handed out to the reader and reports the write;
/// `idle` is parked while the write waits for room (see `send_segments`).
async fn deliver(shard: &Shard, ch: &Rc<Channel>, conn: &Conn, chunk: Chunk, idle: Option<&Conn>) {
    let (res, buf) = send_segments(conn, chunk.buf, &chunk.segments, idle).await;
    if res.is_ok() {
        ch.add_forwarded(shard.stats(), chunk.payload_bytes, chunk.frames as u64);
    }
    ch.reader_wrote(Some(buf), chunk.cost, res.is_ok(), &shard.pool);
}

/// After our Close, a writer that goes on sending data is reset once this much more
/// payload has been discarded. A client that only writes and never reads (the Rust iii SDK's
/// writer) cannot see our Close; the reset makes its next write fail instead of letting it
/// write into the void until the close timeout. A client that does read has seen the Close
/// long before: this is many socket buffers' worth, and `DRAIN_MIN_TIME` at least (even
/// paced, 16 MiB go by in a quarter of a second, sooner than a busy client may get to read).
pub const DRAIN_MAX_BYTES: u64 = 16 << 20;
/// The least time after our Close before a writer that keeps sending is reset.
pub const DRAIN_MIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// Read size while discarding a writer's data after our Close.
const DRAIN_READ_BYTES: usize = 64 << 10;

/// Reads and discards what a peer still sends until its Close (or EOF, or the close
/// timeout shuts the socket, or `DRAIN_MAX_BYTES` of data over at least `DRAIN_MIN_TIME`).
async fn drain_until_close(conn: &Conn, fwd: FrameForwarder) {
    let mut peer = PingReader::with_forwarder(fwd, Vec::new()).read_size(DRAIN_READ_BYTES);
    let mut discarded = 0;
    let started = std::time::Instant::now();
    while let Ok(Some(batch)) = peer.next(conn).await {
        if batch.close.is_some() {
            return;
        }
        discarded += batch.payload_bytes;
        if discarded > DRAIN_MAX_BYTES && started.elapsed() >= DRAIN_MIN_TIME {
            conn.abort();
            return;
        }
        if discarded > DRAIN_READ_BYTES as u64 {
            // Paced: a writer that only reads its socket when a write would block (an event
            // loop that never yields otherwise) sees our Close only once its writes block.
            tokio::time::sleep(DRAIN_PACE).await;
        }
    }
}

/// The pause between reads while discarding a writer's data after our Close: at most
/// `DRAIN_READ_BYTES` a millisecond (64 MB/s), so TCP backpressure reaches the writer.
const DRAIN_PACE: std::time::Duration = std::time::Duration::from_millis(1);

/// Above this many ranges in one buffer (small frames), moving them together and writing
/// once is cheaper than one iovec per range.
pub const MAX_IOVECS_PER_WRITE: usize = 64;

/// Sends `buf[r]` for each range: vectored from where they lie, or — for many small frames —
/// moved together and written once. Should the write wait for room, `idle` (the writer
/// whose data this is, not read until the write is done) is parked meanwhile
/// (`Conn::park_reads`).
pub async fn send_segments(
    conn: &Conn,
    mut buf: Buffer,
    segments: &[std::ops::Range<usize>],
    idle: Option<&Conn>,
) -> (std::io::Result<()>, Buffer) {
    let compacted;
    let segments = if segments.len() > MAX_IOVECS_PER_WRITE {
        compacted = [compact(&mut buf, segments)];
        &compacted[..]
    } else {
        segments
    };
    conn.write_segments(buf, segments, idle).await
}

/// How long the Close echo to a reader that closed first may take before its connection is
/// reset instead.
pub const READER_GONE_ECHO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves the reader: writes what the state machine hands out (data, Pongs, the Close),
/// one write at a time, and reports each.
pub async fn run_reader(shard: &Rc<Shard>, ch: &Rc<Channel>, conn: &Rc<Conn>, leftover: Vec<u8>) {
    let listener = ring::spawn(read_from_reader(
        shard.clone(),
        ch.clone(),
        conn.clone(),
        leftover,
    ));
    let step = ch.core.borrow_mut().next_reader_step();
    let (end, how) = {
        let mut step = step;
        loop {
            match step {
                ReaderStep::Wait => ch.reader_wake.notified().await,
                ReaderStep::Pong(frames) => {
                    let ok = conn.write_all(frames).await.is_ok();
                    ch.reader_wrote(None, 0, ok, &shard.pool);
                }
                ReaderStep::Data { chunk, close } => {
                    if close {
                        conn.cork();
                    }
                    deliver(shard, ch, conn, chunk, None).await;
                    if close {
                        // Nothing follows our Close: the FIN leaves with it (the reader's
                        // answer is still read).
                        conn.shutdown_write();
                    }
                }
                ReaderStep::End { end, how } => break (end, how),
            }
            step = ch.core.borrow_mut().next_reader_step();
        }
    };
    let answer_due = match how {
        CloseHow::AlreadySent => true,
        CloseHow::Echo => {
            // The reader closed first (or vanished): echo its Close. A reader that stopped
            // reading with our data still in flight cannot take it: reset the connection if
            // the echo does not go out promptly.
            Watchdog::cut_after(conn, Cut::Reset, READER_GONE_ECHO_TIMEOUT);
            let ok = conn.write_all(close_frame(1000, "")).await.is_ok();
            ch.core.borrow_mut().reader_write_done(0, ok);
            false
        }
        CloseHow::Send(code, reason) => {
            // Nothing follows our Close: the FIN goes with it (corked).
            conn.cork();
            let sent = conn.write_all(close_frame(code, reason)).await.is_ok();
            ch.core.borrow_mut().reader_write_done(0, sent);
            conn.shutdown_write();
            sent
        }
        // A Close may only follow a complete frame; a stream cut mid-frame just ends the TCP.
        CloseHow::Cut => false,
    };
    tracing::trace!(channel = %ch.id, end = end.label(), "reader end");
    if answer_due {
        await_close_answer(ch, conn).await;
    }
    conn.shutdown();
    let _ = listener.await;
}

/// Lets the reader answer our Close before the socket goes, so nothing in flight is reset:
/// `CLOSE_TIMEOUT`, extended while the reader is still taking the data written before the
/// Close (a slow reader may have megabytes of it in the socket's send queue; closing on it
/// would reset the connection and lose them).
async fn await_close_answer(ch: &Channel, conn: &Conn) {
    let mut unacked = conn.unacked_bytes();
    loop {
        if tokio::time::timeout(CLOSE_TIMEOUT, ch.reader_done.notified())
            .await
            .is_ok()
        {
            return;
        }
        let now = conn.unacked_bytes();
        if now == 0 || now >= unacked {
            return; // all taken but no answer, or no progress
        }
        unacked = now;
    }
}

/// Reads what the reader sends: pings (answered), its Close, or its disappearance.
/// Data frames from a reader are read and discarded.
async fn read_from_reader(shard: Rc<Shard>, ch: Rc<Channel>, conn: Rc<Conn>, leftover: Vec<u8>) {
    let mut peer = PingReader::new(shard.config().max_frame_bytes, leftover);
    loop {
        let batch = match peer.next(&conn).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                ch.finish(StreamEnd::ReaderProtocol(e));
                break;
            }
        };
        ch.touch();
        let pinged: usize = batch.pings.iter().map(Vec::len).sum();
        ch.add_reader_sent(
            batch.payload_bytes + pinged as u64,
            batch.frames_completed as u64 + batch.pings.len() as u64,
        );
        let mut flood = false;
        for p in batch.pings.drain(..) {
            flood |= ch.core.borrow_mut().reader_ping(p) == PingVerdict::Flood;
        }
        if flood {
            ch.finish(StreamEnd::PingFlood);
        }
        ch.reader_wake.notify_one();
        if batch.close.is_some() || flood {
            break;
        }
    }
    // Either the answer to our Close, or the reader leaving before the stream ended.
    if !ch.core.borrow().reader_close_sent() {
        ch.finish(StreamEnd::ReaderGone);
        if ch.core.borrow().reader_busy() != Busy::Idle {
            // A reader that closed may stop reading: a write to it could then block our
            // Close reply for good. Its frame cannot be finished anyway; reset the TCP.
            conn.abort();
        }
    }
    ch.reader_done.notify_one();
}
