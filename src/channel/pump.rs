//! The forwarding pump. The writer's loop reads large buffers, lets the frame forwarder
//! unmask and re-header them in place, and hands the ready ranges on: straight to the
//! reader's socket when its sender is idle (the bytes are still in cache), else through the
//! queue, from which the reader's sender writes them out of the same buffers. Both ends
//! live on the owner shard, so hand-over is a `VecDeque` and two `Notify`s — no locks, no
//! copies of payload.

use std::rc::Rc;

use super::channel::{arm_close_timeout, send_close, Channel, Chunk, MAX_PENDING_PONGS};
use super::ping_reader::PingReader;
use super::shard::Shard;
use crate::config::{CLOSE_TIMEOUT, SMALL_READ_BYTES};
use crate::error::StreamEnd;
use crate::ring::{self, Conn, Cut, Watchdog};
use crate::wire::forward::{compact, Batch, FrameForwarder};
use crate::wire::frame::{close_frame, server_frame, Opcode};

/// How the writer's loop ended.
enum WriterExit {
    /// The writer sent Close: answer 1000 and close at once.
    Clean,
    /// The stream was ended elsewhere (reader gone, abort, TTL): the writer gets that
    /// Close, then is read until it answers, so no unread data resets the connection
    /// before it has read our Close. `answered`: its Close already arrived.
    EndedElsewhere { answered: bool },
    /// The writer broke the protocol.
    Protocol(u16, &'static str),
    /// The writer's connection is gone.
    Gone,
}

/// Reads the writer socket until the stream ends. Nothing is ever sent to the writer
/// before its Close, except pongs it asked for and the Close of an abnormal end.
pub async fn run_writer(shard: &Shard, ch: &Rc<Channel>, conn: &Rc<Conn>, leftover: Vec<u8>) {
    ch.state.borrow_mut().writer_is_ws = true;
    let mut fwd = FrameForwarder::new(shard.config().max_frame_bytes);
    let exit = writer_loop(shard, ch, conn, &mut fwd, leftover).await;
    if std::mem::take(&mut ch.state.borrow_mut().tail_pending) {
        ch.reader_wake.notify_one(); // the frame's end will not come
    }
    let (code, reason) = match exit {
        WriterExit::Clean => (1000, ""),
        WriterExit::Protocol(code, reason) => (code, reason),
        WriterExit::EndedElsewhere { .. } => ch.end().map_or((1011, ""), |e| e.writer_close()),
        WriterExit::Gone => {
            conn.shutdown();
            return;
        }
    };
    let send = !std::mem::replace(&mut ch.state.borrow_mut().writer_close_sent, true);
    let drain = matches!(exit, WriterExit::EndedElsewhere { answered: false });
    if send {
        arm_close_timeout(conn);
        if drain {
            let _ = conn.write_all(close_frame(code, reason)).await;
        } else {
            // Nothing more to read: our Close and the FIN leave in one segment.
            let _ = conn.write_last(close_frame(code, reason)).await;
        }
    }
    if drain {
        drain_until_close(conn, fwd).await;
    }
    // Close the writer's TCP at once (the Python SDK waits for the server to close first).
    conn.shutdown();
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
        if let Some(end) = ch.end() {
            if !ch.state.borrow().tail_pending {
                return WriterExit::EndedElsewhere { answered: false };
            }
            // Still reading the rest of the reader's current frame: the writer must have
            // been told (`finish` skips that while a Pong is being written).
            if !std::mem::replace(&mut ch.state.borrow_mut().writer_close_sent, true) {
                let (code, reason) = end.writer_close();
                crate::ring::spawn(send_close(conn.clone(), code, reason));
            }
        }
        // Idle or trickling writers park a small read; streaming ones get their share of
        // the shard's read budget (never more than the channel may hold).
        let limit = ch.limit.min(shard.pool.stream_hold_share());
        let size = if small {
            SMALL_READ_BYTES
        } else {
            shard.pool.stream_read_size().min(limit)
        };
        let size = size.max(carry.len() + SMALL_READ_BYTES);
        // Backpressure: hold at most `limit` bytes; until there is room the writer's
        // socket is not read and TCP flow control throttles it.
        let held = ch.state.borrow().held;
        if !pending_input && held > 0 && held + size > limit && ch.end().is_none() {
            ch.writer_wake.notified().await;
            continue;
        }
        let mut buf = shard.pool.get(size);
        buf.extend_from_slice(&carry);
        if !pending_input {
            let room = size - buf.len();
            let (res, b) = conn.read_append(buf, room).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => {
                    shard.pool.put(buf);
                    if ch.end().is_none() {
                        ch.finish(StreamEnd::WriterDisconnected);
                    }
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
        // On a protocol error the batch still holds every frame before the bad one.
        let result = fwd.process(&mut buf[..filled], &mut batch);
        carry.clear();
        carry.extend_from_slice(&buf[batch.consumed..filled]);
        if !batch.pings.is_empty() && ch.end().is_none() {
            // The writer asked; answering is not an unsolicited frame.
            let pongs: Vec<u8> = batch
                .pings
                .drain(..)
                .flat_map(|p| server_frame(Opcode::Pong, &p))
                .collect();
            ch.state.borrow_mut().writer_busy = true;
            let res = conn.write_all(pongs).await;
            ch.state.borrow_mut().writer_busy = false;
            if res.is_err() {
                shard.pool.put(buf);
                if ch.end().is_none() {
                    ch.finish(StreamEnd::WriterDisconnected);
                }
                return WriterExit::Gone;
            }
        }
        let answered = batch.close.is_some();
        let mut chunk = Chunk {
            buf,
            segments: std::mem::take(&mut batch.segments),
            pieces: std::mem::take(&mut batch.pieces),
            at_boundary: batch.at_boundary,
            payload_bytes: batch.payload_bytes,
            frames: batch.frames_completed,
        };
        if ch.end().is_some_and(|e| !e.delivers_pending()) {
            // Cut short while this read was in flight: only the rest of a frame the reader
            // is in the middle of still goes out.
            if !ch.state.borrow().tail_pending {
                shard.pool.put(chunk.buf);
                return WriterExit::EndedElsewhere { answered };
            }
            let done = chunk.truncate_after_frame_end();
            push_or_recycle(shard, ch, chunk);
            if done || answered || result.is_err() {
                ch.state.borrow_mut().tail_pending = false;
                ch.reader_wake.notify_one();
                return WriterExit::EndedElsewhere { answered };
            }
            continue;
        }
        if answered && result.is_ok() {
            // The stream ends cleanly with this chunk: queue it behind the end, so the
            // reader's sender writes it and the reader's Close together (one segment).
            ch.finish(StreamEnd::Clean);
            push_or_recycle(shard, ch, chunk);
            return WriterExit::Clean;
        }
        forward(shard, ch, chunk).await;
        if let Err(e) = result {
            ch.finish(StreamEnd::WriterProtocol(e));
            return WriterExit::Protocol(e.close_code(), e.reason());
        }
    }
}

/// Queues a chunk that carries data, or returns its buffer to the pool.
fn push_or_recycle(shard: &Shard, ch: &Channel, chunk: Chunk) {
    if chunk.segments.is_empty() {
        shard.pool.put(chunk.buf);
    } else {
        ch.push_chunk(chunk);
    }
}

/// Hands a chunk on. When a WebSocket reader's sender is idle (nothing queued, nothing being
/// written, no Pong owed), the writer's loop writes it to the reader itself, while the bytes
/// it just read and unmasked are still in cache — with many channels on a core, a chunk
/// that waits in the queue is cold by the time it is sent. Otherwise it is queued.
async fn forward(shard: &Shard, ch: &Channel, chunk: Chunk) {
    if chunk.segments.is_empty() {
        shard.pool.put(chunk.buf);
        return;
    }
    let reader = {
        let mut st = ch.state.borrow_mut();
        let idle = st.reader_takes_direct_send();
        let reader = st.reader_conn.clone().filter(|_| idle);
        if reader.is_some() {
            // Taken as if the sender had popped it.
            st.reader_busy = true;
            st.reader_at_boundary = chunk.at_boundary;
            st.held += chunk.buf.capacity();
        }
        reader
    };
    match reader {
        Some(conn) => {
            deliver(shard, ch, &conn, chunk).await;
            ch.reader_wake.notify_one();
        }
        None => ch.push_chunk(chunk),
    }
}

/// Writes a taken chunk (`reader_busy` set, its bytes counted in `held`) to the reader.
async fn deliver(shard: &Shard, ch: &Channel, conn: &Conn, chunk: Chunk) {
    let (res, buf) = send_segments(conn, chunk.buf, &chunk.segments).await;
    ch.state.borrow_mut().reader_busy = false;
    ch.recycle(buf, &shard.pool);
    match res {
        Ok(()) => ch.add_forwarded(chunk.payload_bytes, chunk.frames as u64),
        Err(_) => ch.finish(StreamEnd::ReaderGone),
    }
}

/// Reads and discards what a peer still sends until its Close (or EOF, or the close
/// timeout shuts the socket).
async fn drain_until_close(conn: &Conn, fwd: FrameForwarder) {
    let mut peer = PingReader::with_forwarder(fwd, Vec::new());
    while let Ok(Some(batch)) = peer.next(conn).await {
        if batch.close.is_some() {
            return;
        }
    }
}

/// Above this many ranges in one buffer (small frames), moving them together and writing
/// once is cheaper than one iovec per range.
pub const MAX_IOVECS_PER_WRITE: usize = 64;

/// Sends `buf[r]` for each range: vectored from where they lie, or — for many small frames —
/// moved together and written once.
pub async fn send_segments(
    conn: &Conn,
    mut buf: Vec<u8>,
    segments: &[std::ops::Range<usize>],
) -> (std::io::Result<()>, Vec<u8>) {
    if segments.len() > MAX_IOVECS_PER_WRITE {
        let range = compact(&mut buf, segments);
        conn.write_range(buf, range).await
    } else {
        conn.write_segments(buf, segments).await
    }
}

/// How long the Close echo to a reader that closed first may take before its connection is
/// reset instead.
pub const READER_GONE_ECHO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// What the reader's sender does next.
pub enum Next {
    Send(Chunk),
    Pong(Vec<u8>),
    Close(StreamEnd),
    Wait,
}

/// `pongs`: whether Pongs are owed on this kind of reader (WebSocket).
pub fn next_for_reader(ch: &Channel, pongs: bool) -> Next {
    let mut st = ch.state.borrow_mut();
    if st.reader_busy {
        // The writer's loop is handing a chunk straight to the reader; it wakes us after.
        return Next::Wait;
    }
    if pongs && st.reader_at_boundary && !st.reader_pongs.is_empty() {
        st.reader_pongs_count = 0;
        // One write at a time on the reader's socket: the writer's loop must not hand a
        // chunk straight over while these Pongs are being written (a write that needs
        // several submissions would interleave with them).
        st.reader_busy = true;
        return Next::Pong(std::mem::take(&mut st.reader_pongs));
    }
    if let Some(c) = st.queue.pop_front() {
        st.reader_at_boundary = c.at_boundary;
        return Next::Send(c);
    }
    match st.end {
        // The rest of the current frame is still coming from the writer.
        Some(end) if st.tail_pending && !end.delivers_pending() => Next::Wait,
        Some(end) => Next::Close(end),
        None => Next::Wait,
    }
}

/// Serves the reader: sends queued data, answers its pings, and ends with a Close.
pub async fn run_reader(shard: &Rc<Shard>, ch: &Rc<Channel>, conn: &Rc<Conn>, leftover: Vec<u8>) {
    let listener = ring::spawn(read_from_reader(
        shard.clone(),
        ch.clone(),
        conn.clone(),
        leftover,
    ));
    ch.state.borrow_mut().reader_is_ws = true;
    let end = loop {
        match next_for_reader(ch, true) {
            Next::Wait => ch.reader_wake.notified().await,
            Next::Pong(frames) => {
                let res = conn.write_all(frames).await;
                ch.state.borrow_mut().reader_busy = false;
                if res.is_err() {
                    ch.finish(StreamEnd::ReaderGone);
                }
            }
            Next::Send(mut chunk) => {
                let last = append_final_close(ch, &mut chunk);
                if last {
                    // From here on the reader's Close is the answer to ours.
                    ch.state.borrow_mut().reader_close_sent = true;
                    conn.cork();
                }
                ch.state.borrow_mut().reader_busy = true;
                deliver(shard, ch, conn, chunk).await;
                if last {
                    // Nothing follows our Close: the FIN leaves with it (the reader's
                    // answer is still read).
                    conn.shutdown_write();
                }
            }
            Next::Close(end) => break end,
        }
    };
    // From here on the relay ends the reader's connection: its EOF is not "reader gone".
    let close_written = std::mem::replace(&mut ch.state.borrow_mut().reader_close_sent, true);
    let at_boundary = ch.state.borrow().reader_at_boundary;
    // Whether our Close (with the FIN) is out and the reader's answer is awaited.
    let answer_due = if close_written {
        true // it went out with the last data
    } else if end == StreamEnd::ReaderGone {
        // The reader closed first (or vanished): echo its Close. A reader that stopped
        // reading with our data still in flight cannot take it: reset the connection if
        // the echo does not go out promptly.
        Watchdog::cut_after(conn, Cut::Reset, READER_GONE_ECHO_TIMEOUT);
        let _ = conn.write_all(close_frame(1000, "")).await;
        false
    } else if at_boundary {
        // A Close may only follow a complete frame; a stream cut mid-frame just ends the
        // TCP. Nothing follows our Close: the FIN goes with it (corked).
        let (code, reason) = end.reader_close();
        conn.cork();
        let sent = conn.write_all(close_frame(code, reason)).await.is_ok();
        conn.shutdown_write();
        sent
    } else {
        false
    };
    if answer_due {
        // Let the reader answer before the socket goes, so nothing in flight is reset.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.reader_done.notified()).await;
    }
    conn.shutdown();
    let _ = listener.await;
}

/// When `chunk` is the last of a stream that ended cleanly, appends the reader's Close
/// frame to it (in the buffer's spare room), so both leave in one write. Returns whether it
/// did.
fn append_final_close(ch: &Channel, chunk: &mut Chunk) -> bool {
    let st = ch.state.borrow();
    let Some(end) = st.end.filter(|e| e.delivers_pending()) else {
        return false;
    };
    if !(st.queue.is_empty() && chunk.at_boundary && st.reader_pongs.is_empty()) {
        return false;
    }
    let (code, reason) = end.reader_close();
    let frame = close_frame(code, reason);
    // `held` counts the buffer's capacity: the frame must fit without reallocating.
    if chunk.buf.capacity() - chunk.buf.len() < frame.len() {
        return false;
    }
    let start = chunk.buf.len();
    chunk.buf.extend_from_slice(&frame);
    chunk.segments.push(start..chunk.buf.len());
    true
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
        if !batch.pings.is_empty() {
            let mut st = ch.state.borrow_mut();
            for p in batch.pings.drain(..) {
                if st.reader_pongs_count < MAX_PENDING_PONGS {
                    st.reader_pongs.extend(server_frame(Opcode::Pong, &p));
                    st.reader_pongs_count += 1;
                }
            }
            drop(st);
            ch.reader_wake.notify_one();
        }
        if batch.close.is_some() {
            break;
        }
    }
    // Either the answer to our Close, or the reader leaving before the stream ended.
    if !ch.state.borrow().reader_close_sent {
        ch.finish(StreamEnd::ReaderGone);
        if ch.state.borrow().reader_busy {
            // A reader that closed may stop reading: a data write to it could then block
            // our Close reply for good. Its frame cannot be finished anyway; reset the TCP.
            conn.abort();
        }
    }
    ch.reader_done.notify_one();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::{server_frame, Opcode};

    /// One write at a time on a reader's socket: while the sender writes Pongs, the writer's
    /// loop may not write a chunk to the same socket; once they are out, it may again.
    #[test]
    fn no_direct_send_while_pongs_are_being_written() {
        let ch = Channel::new("c".into(), crate::keys::EndKeys::random(), 1 << 20);
        {
            let mut st = ch.state.borrow_mut();
            st.reader_is_ws = true;
            st.reader_pongs = server_frame(Opcode::Pong, b"p");
            st.reader_pongs_count = 1;
            assert!(!st.reader_takes_direct_send(), "a Pong is owed first");
        }
        assert!(matches!(next_for_reader(&ch, true), Next::Pong(_)));
        assert!(
            !ch.state.borrow().reader_takes_direct_send(),
            "a chunk would be written while the Pong is in flight"
        );
        assert!(matches!(next_for_reader(&ch, true), Next::Wait));
        ch.state.borrow_mut().reader_busy = false; // the Pong went out
        assert!(ch.state.borrow().reader_takes_direct_send());
    }
}
