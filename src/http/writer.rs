//! The writer end over plain HTTP: a request body written into a channel (`PUT`/`POST
//! …&dir=write`, with `Content-Length` or a chunked body). The body is read straight into
//! frame-sized buffers that leave room for the frame header in front, so `Content-Length`
//! bodies are forwarded without a copy. The client gets `200 {"bytes": N}` once every byte is handed on.

use std::rc::Rc;

use crate::channel::channel::{Channel, Chunk};
use crate::channel::state::READ_RECORDS_BYTES;
use crate::channel::Shard;
use crate::error::StreamEnd;
use crate::ring::{BufPool, Conn};
use crate::wire::chunked::{ChunkedDecoder, CHUNK_CRLF_LEN};
use crate::wire::forward::Piece;
use crate::wire::frame::{server_header_len, write_server_header, Opcode, MAX_HEADER_LEN};
use crate::wire::head::RequestHead;
use crate::wire::response::{error_response, json_response};

/// Largest frame a body is cut into (the Python SDK rejects frames over 1 MiB).
pub const UPLOAD_FRAME_BYTES: usize = 64 << 10;
/// Reads up to this size may be appended to the last queued frame instead of making one.
const EXTEND_MAX_BYTES: usize = 4 << 10;
/// Room left in front of each frame's payload for its header.
const HEADROOM: usize = MAX_HEADER_LEN;

/// Room after each frame's payload (an HTTP reader ends its chunk there).
const TAILROOM: usize = CHUNK_CRLF_LEN;

/// A buffer for one frame of up to `len` payload bytes, holding just the header's room.
fn frame_buf(len: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADROOM + len + TAILROOM);
    buf.resize(HEADROOM, 0);
    buf
}

/// Turns `buf[HEADROOM..HEADROOM + n]` into one binary frame and queues it — or, when the
/// last frame queued is still waiting for the reader and has room, appends the bytes to it
/// (a body trickled in small reads then costs about its size, not a frame per read).
fn queue_frame(ch: &Channel, mut buf: Vec<u8>, n: usize, pool: &BufPool) {
    if n <= EXTEND_MAX_BYTES
        && ch
            .core
            .borrow_mut()
            .extend_last_frame(&buf[HEADROOM..HEADROOM + n], UPLOAD_FRAME_BYTES)
    {
        ch.reader_wake.notify_one();
        return;
    }
    buf.resize(HEADROOM + n + TAILROOM, 0);
    let hl = server_header_len(n as u64);
    write_server_header(
        &mut buf[HEADROOM - hl..HEADROOM],
        true,
        Opcode::Binary,
        n as u64,
    );
    ch.push_chunk(
        Chunk {
            segments: std::iter::once(HEADROOM - hl..HEADROOM + n).collect(),
            pieces: vec![Piece {
                opcode: Opcode::Binary,
                fin: true,
                frame_len: n as u64,
                payload: HEADROOM..HEADROOM + n,
                starts: true,
                gap_start: 0,
                ends: true,
            }],
            at_boundary: true,
            payload_bytes: n as u64,
            frames: 1,
            buf: buf.into(),
            cost: 0,
        },
        pool,
    );
}

/// Waits until the channel has room for another frame, or has ended. Room is the smaller
/// of the channel's limit and this stream's share of the shard's stream budget: uploads
/// share the budget with WebSocket writers.
async fn wait_for_room(ch: &Channel, pool: &BufPool) {
    loop {
        let held = ch.held();
        let limit = ch.hold_limit(pool);
        let need = HEADROOM + UPLOAD_FRAME_BYTES + TAILROOM + READ_RECORDS_BYTES;
        if ch.end().is_some() || held == 0 || held + need <= limit {
            return;
        }
        ch.writer_wake.notified().await;
    }
}

/// Reads the body into the channel. Returns the bytes of the next request already read
/// when the connection may be reused.
pub async fn run_http_writer(
    shard: &Shard,
    ch: &Rc<Channel>,
    conn: &Conn,
    head: &RequestHead,
    leftover: Vec<u8>,
) -> Option<Vec<u8>> {
    let (total, rest) = match feed_body(ch, conn, head, leftover, &shard.pool).await {
        Ok(r) => r,
        Err(end) => {
            ch.finish(end);
            let end = ch.end().unwrap_or(end);
            if end != StreamEnd::WriterDisconnected {
                let (_, reason) = end.writer_close();
                let _ = conn
                    .write_all(error_response(end.http_status(), end.label(), reason))
                    .await;
            }
            return None;
        }
    };
    ch.finish(StreamEnd::Clean);
    // Answer once every byte is handed on to the reader (or the stream was cut).
    loop {
        let (drained, end) = {
            let core = ch.core.borrow();
            (core.queue_is_empty() && core.held() == 0, core.end())
        };
        match end {
            Some(StreamEnd::Clean) if drained => break,
            Some(StreamEnd::Clean) | None => ch.writer_wake.notified().await,
            Some(e) => {
                let (_, reason) = e.writer_close();
                let _ = conn
                    .write_all(error_response(e.http_status(), e.label(), reason))
                    .await;
                return None;
            }
        }
    }
    let keep_alive = !head.connection_close && head.minor_version == 1;
    let body = serde_json::json!({ "bytes": total }).to_string();
    let sent = conn
        .write_all(json_response(200, &body, !keep_alive))
        .await
        .is_ok();
    (sent && keep_alive).then_some(rest)
}

/// Streams the request body into `ch` as binary frames (answering `Expect: 100-continue`
/// first). Returns the body's length and the bytes read past its end (a pipelined next
/// request), or how the stream ended early.
pub async fn feed_body(
    ch: &Channel,
    conn: &Conn,
    head: &RequestHead,
    leftover: Vec<u8>,
    pool: &BufPool,
) -> Result<(u64, Vec<u8>), StreamEnd> {
    // An active stream of the shard while the body flows (see `wait_for_room`).
    let _stream = pool.stream();
    if head.expect_continue && leftover.is_empty() {
        let cont = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
        if conn.write_all(cont).await.is_err() {
            return Err(StreamEnd::WriterDisconnected);
        }
    }
    if head.chunked {
        read_chunked(ch, conn, leftover, pool).await
    } else {
        read_length(ch, conn, leftover, head.content_length.unwrap_or(0), pool).await
    }
}

/// A `Content-Length` body: each read lands behind a frame header's room and becomes one
/// frame as it is.
async fn read_length(
    ch: &Channel,
    conn: &Conn,
    mut pending: Vec<u8>,
    length: u64,
    pool: &BufPool,
) -> Result<(u64, Vec<u8>), StreamEnd> {
    let mut total = 0u64;
    while total < length {
        wait_for_room(ch, pool).await;
        if let Some(end) = ch.end() {
            return Err(end);
        }
        let want = (length - total).min(UPLOAD_FRAME_BYTES as u64) as usize;
        let mut buf = frame_buf(want);
        let n = if !pending.is_empty() {
            let n = want.min(pending.len());
            buf.extend_from_slice(&pending[..n]);
            pending.drain(..n);
            n
        } else {
            let (res, b) = conn.read_append(buf, want).await;
            buf = b;
            match res {
                Ok(0) | Err(_) => return Err(ch.end().unwrap_or(StreamEnd::WriterDisconnected)),
                Ok(n) => n,
            }
        };
        queue_frame(ch, buf, n, pool);
        total += n as u64;
    }
    Ok((total, pending))
}

/// Read size for chunked bodies.
const CHUNKED_READ_BYTES: usize = 64 << 10;

/// A chunked body: decoded, and its data copied into frames of at most 64 KiB.
async fn read_chunked(
    ch: &Channel,
    conn: &Conn,
    leftover: Vec<u8>,
    pool: &BufPool,
) -> Result<(u64, Vec<u8>), StreamEnd> {
    let mut dec = ChunkedDecoder::default();
    let mut raw = leftover;
    let mut total = 0u64;
    let mut data = Vec::new();
    loop {
        data.clear();
        let used = dec
            .decode(&raw, &mut data)
            .map_err(|_| StreamEnd::WriterProtocol(crate::wire::frame::FrameError::BadLength))?;
        for r in &data {
            for piece in raw[r.clone()].chunks(UPLOAD_FRAME_BYTES) {
                wait_for_room(ch, pool).await;
                if let Some(end) = ch.end() {
                    return Err(end);
                }
                let mut buf = frame_buf(piece.len());
                buf.extend_from_slice(piece);
                queue_frame(ch, buf, piece.len(), pool);
                total += piece.len() as u64;
            }
        }
        raw.drain(..used);
        if dec.is_done() {
            return Ok((total, raw));
        }
        let (res, b) = conn.read_append(raw, CHUNKED_READ_BYTES).await;
        raw = b;
        if !matches!(res, Ok(n) if n > 0) {
            return Err(ch.end().unwrap_or(StreamEnd::WriterDisconnected));
        }
    }
}
