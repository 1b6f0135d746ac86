//! The forwarding pump. The writer's loop reads large buffers, lets the frame forwarder
//! unmask and re-header them in place, and queues the ready ranges; the reader's sender
//! writes them out from the same buffers. Both ends live on the owner shard, so hand-over
//! is a `VecDeque` and two `Notify`s — no locks, no copies of payload.

use std::rc::Rc;

use super::channel::{Channel, Chunk};
use super::shard::Shard;
use crate::config::{CLOSE_TIMEOUT, SMALL_READ_BYTES};
use crate::error::StreamEnd;
use crate::ring::{self, Conn};
use crate::wire::forward::{compact, Batch, FrameForwarder};

use crate::wire::frame::{close_frame, server_frame, Opcode};

/// Reads the writer socket until the stream ends. Nothing is ever sent to the writer
/// before its Close, except pongs it asked for and the Close of an abnormal end.
pub async fn run_writer(shard: &Shard, ch: &Rc<Channel>, conn: &Conn, leftover: Vec<u8>) {
    let max_frame = shard.config().max_frame_bytes;
    let read_size = shard.pool.read_size().min(ch.limit);
    let mut fwd = FrameForwarder::new(max_frame);
    let mut batch = Batch::default();
    let mut carry = leftover;
    // The handshake may have brought frames along: process them before the first read.
    let mut pending_input = !carry.is_empty();
    let mut small = true;
    let mut reply: Option<(u16, &str)> = None;
    loop {
        if let Some(end) = ch.end() {
            // Ended from elsewhere (reader gone, abort, TTL, shutdown).
            reply = Some(end.writer_close());
            break;
        }
        let size = if small {
            SMALL_READ_BYTES.min(read_size)
        } else {
            read_size
        };
        let size = size.max(carry.len() + SMALL_READ_BYTES.min(read_size));
        // Backpressure: hold at most `limit` bytes; until there is room the writer's
        // socket is not read and TCP flow control throttles it.
        if !pending_input && ch.state.borrow().held + size > ch.limit && ch.state.borrow().held > 0
        {
            ch.writer_wake.notified().await;
            continue;
        }
        let mut buf = shard.pool.get(size);
        buf[..carry.len()].copy_from_slice(&carry);
        let mut filled = carry.len();
        if !pending_input {
            let (res, b) = conn.read_into(buf, filled..size).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => {
                    shard.pool.put(buf);
                    match ch.end() {
                        Some(end) => reply = Some(end.writer_close()),
                        None => ch.finish(StreamEnd::WriterDisconnected),
                    }
                    break;
                }
                Ok(n) => {
                    small = n < SMALL_READ_BYTES / 2;
                    filled += n;
                }
            }
            if ch.end().is_some_and(|e| !e.delivers_pending()) {
                shard.pool.put(buf);
                continue; // the loop head sends the Close
            }
        }
        pending_input = false;
        let result = fwd.process(&mut buf[..filled], &mut batch);
        if let Err(e) = result {
            shard.pool.put(buf);
            ch.finish(StreamEnd::WriterProtocol(e));
            reply = Some((e.close_code(), e.reason()));
            break;
        }
        carry = buf[batch.consumed..filled].to_vec();
        if let Some(ping) = batch.ping.take() {
            // The writer asked; answering is not an unsolicited frame.
            if conn
                .write_all(server_frame(Opcode::Pong, &ping))
                .await
                .is_err()
            {
                shard.pool.put(buf);
                ch.finish(StreamEnd::WriterDisconnected);
                break;
            }
        }
        if batch.segments.is_empty() {
            shard.pool.put(buf);
        } else {
            ch.push_chunk(Chunk {
                buf,
                segments: std::mem::take(&mut batch.segments),
                pieces: std::mem::take(&mut batch.pieces),
                at_boundary: batch.at_boundary,
                payload_bytes: batch.payload_bytes,
                frames: batch.frames_completed,
            });
        }
        if batch.close.is_some() {
            // Everything before the Close is queued; the reader gets 1000 after it.
            ch.finish(StreamEnd::Clean);
            reply = Some((1000, ""));
            break;
        }
    }
    if let Some((code, reason)) = reply {
        let _ = conn.write_all(close_frame(code, reason)).await;
    }
    // Close the writer's TCP at once (the Python SDK waits for the server to close first).
    conn.shutdown();
}

/// What the reader's sender does next.
pub enum Next {
    Send(Chunk),
    Pong(Vec<u8>),
    Close(StreamEnd),
    Wait,
}

pub fn next_for_reader(ch: &Channel, at_boundary: bool) -> Next {
    let mut st = ch.state.borrow_mut();
    if let Some(end) = st.end {
        if !end.delivers_pending() {
            return Next::Close(end);
        }
    }
    if at_boundary {
        if let Some(p) = st.reader_pong.take() {
            return Next::Pong(p);
        }
    }
    if let Some(c) = st.queue.pop_front() {
        return Next::Send(c);
    }
    match st.end {
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
    let mut at_boundary = true;
    let end = loop {
        match next_for_reader(&ch, at_boundary) {
            Next::Wait => ch.reader_wake.notified().await,
            Next::Pong(p) => {
                if conn
                    .write_all(server_frame(Opcode::Pong, &p))
                    .await
                    .is_err()
                {
                    ch.finish(StreamEnd::ReaderGone);
                }
            }
            Next::Send(mut chunk) => {
                let range = compact(&mut chunk.buf, &chunk.segments);
                let (res, buf) = conn.write_range(chunk.buf, range).await;
                ch.release(buf.len());
                shard.pool.put(buf);
                if res.is_err() {
                    ch.finish(StreamEnd::ReaderGone);
                    continue;
                }
                ch.add_forwarded(chunk.payload_bytes, chunk.frames as u64);
                at_boundary = chunk.at_boundary;
            }
            Next::Close(end) => break end,
        }
    };
    // A Close may only follow a complete frame; a stream cut mid-frame just ends the TCP.
    if end == StreamEnd::ReaderGone {
        // The reader closed first (or vanished): echo its Close; a failed write is harmless.
        let _ = conn.write_all(close_frame(1000, "")).await;
    } else if at_boundary {
        let (code, reason) = end.reader_close();
        ch.state.borrow_mut().reader_close_sent = true;
        if conn.write_all(close_frame(code, reason)).await.is_ok() {
            // Let the reader answer before the socket goes, so nothing in flight is reset.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.reader_done.notified()).await;
        }
    }
    conn.shutdown();
    let _ = listener.await;
}

/// Reads what the reader sends: pings (answered), its Close, or its disappearance.
/// Data frames from a reader are read and discarded.
async fn read_from_reader(shard: Rc<Shard>, ch: Rc<Channel>, conn: Rc<Conn>, leftover: Vec<u8>) {
    let mut fwd = FrameForwarder::new(shard.config().max_frame_bytes);
    let mut batch = Batch::default();
    let mut carry = leftover;
    let mut pending_input = !carry.is_empty();
    loop {
        let size = SMALL_READ_BYTES.max(carry.len() * 2);
        let mut buf = vec![0u8; size];
        buf[..carry.len()].copy_from_slice(&carry);
        let mut filled = carry.len();
        if !pending_input {
            let (res, b) = conn.read_into(buf, filled..size).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        pending_input = false;
        if let Err(e) = fwd.process(&mut buf[..filled], &mut batch) {
            ch.finish(StreamEnd::ReaderProtocol(e));
            break;
        }
        carry = buf[batch.consumed..filled].to_vec();
        if let Some(p) = batch.ping.take() {
            ch.state.borrow_mut().reader_pong = Some(p);
            ch.reader_wake.notify_one();
        }
        if batch.close.is_some() {
            break;
        }
    }
    // Either the answer to our Close, or the reader leaving before the stream ended.
    if !ch.state.borrow().reader_close_sent {
        ch.finish(StreamEnd::ReaderGone);
    }
    ch.reader_done.notify_one();
}
