//! The reader end over plain HTTP: a channel read as an HTTP/1.1 response. Text messages before the first
//! binary frame set the status and headers; each binary frame becomes a chunk (or identity
//! bytes when the writer set `content-length`), written as it arrives from the writer's
//! own buffers. The same pump and queue as a WebSocket reader.

use std::cell::Cell;
use std::rc::Rc;

use crate::channel::channel::{Channel, Chunk};
use crate::channel::pump::send_segments;
use crate::channel::state::ReaderStep;
use crate::channel::Shard;
use crate::error::StreamEnd;
use crate::ring::{Conn, Cut, Watchdog};
use crate::wire::chunked::{last_chunk, piece_is_text, render_body, BodyFraming, CHUNK_CRLF_LEN};
use crate::wire::control_msg::{parse_control_message, ControlMessage};
use crate::wire::head::{parse_request_head, RequestHead};
use crate::wire::response::{error_response, streamed_head, BodyDelimit};

/// Read size while watching the client's socket during a response: mostly to notice EOF;
/// a pipelined next request is gathered a piece at a time.
const CLIENT_WATCH_READ_BYTES: usize = 512;

/// Longest text message read as a control message (longer ones are ignored).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 << 10;

/// Most headers a writer may set on a response (`set_headers`).
pub const MAX_RESPONSE_HEADERS: usize = 100;
/// Most bytes of header names and values (plus 4 per header for `: ` and CRLF) a writer
/// may set on a response.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 16 << 10;

/// The response head as the writer's control messages shape it.
struct HeadState {
    status: u16,
    headers: Vec<(String, String)>,
    /// Bytes `headers` takes on the wire (names, values, `: ` and CRLF).
    header_bytes: usize,
    content_length: Option<u64>,
    /// Text bytes of the message being collected.
    text: Vec<u8>,
    text_too_long: bool,
    in_text: bool,
}

/// What a chunk's control messages did to the head.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Only control messages so far: the head is not complete.
    NeedMore,
    /// A binary frame starts here: the head goes out now.
    Body,
    /// The head grew past `MAX_RESPONSE_HEADERS` or `MAX_RESPONSE_HEAD_BYTES`.
    TooLarge,
}

impl HeadState {
    fn new() -> HeadState {
        HeadState {
            status: 200,
            headers: Vec::new(),
            header_bytes: 0,
            content_length: None,
            text: Vec::new(),
            text_too_long: false,
            in_text: false,
        }
    }

    /// Applies one message. False when the head is now over its limits. Each header costs
    /// at most one pass over at most `MAX_RESPONSE_HEADERS` entries: linear in the input.
    fn apply(&mut self, msg: ControlMessage) -> bool {
        match msg {
            // A 1xx is never a final status.
            ControlMessage::SetStatus(s) if s >= 200 => self.status = s,
            ControlMessage::SetStatus(_) => {}
            ControlMessage::SetHeaders(hs) => {
                for (k, v) in hs {
                    if k == "content-length" {
                        // Only a plain decimal length is honoured; anything else is dropped.
                        self.content_length = v.trim().parse().ok();
                        continue;
                    }
                    if let Some(i) = self.headers.iter().position(|(n, _)| *n == k) {
                        let (n, old) = self.headers.remove(i);
                        self.header_bytes -= n.len() + old.len() + 4;
                    }
                    self.header_bytes += k.len() + v.len() + 4;
                    self.headers.push((k, v));
                    if self.headers.len() > MAX_RESPONSE_HEADERS
                        || self.header_bytes > MAX_RESPONSE_HEAD_BYTES
                    {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Reads control messages from the pieces of `chunk` up to its first binary piece.
    fn scan(&mut self, chunk: &Chunk) -> Scan {
        for p in &chunk.pieces {
            let mut in_text = self.in_text;
            if !piece_is_text(p, &mut in_text) {
                return Scan::Body;
            }
            self.in_text = in_text;
            if self.text.len() + p.payload.len() > MAX_CONTROL_MESSAGE_BYTES {
                self.text_too_long = true;
            } else if !self.text_too_long {
                self.text.extend_from_slice(&chunk.buf[p.payload.clone()]);
            }
            if p.ends && p.fin {
                if !self.text_too_long {
                    if let Some(m) = parse_control_message(&self.text) {
                        if !self.apply(m) {
                            return Scan::TooLarge;
                        }
                    }
                }
                self.text.clear();
                self.text_too_long = false;
            }
        }
        Scan::NeedMore
    }
}

/// What the response sender and the client watcher tell each other.
#[derive(Default)]
struct Progress {
    /// The response is complete (or abandoned).
    done: Cell<bool>,
    /// A chunk was taken from the channel for this client.
    took_data: Cell<bool>,
    /// The client left before anything was taken.
    client_left: Cell<bool>,
}

/// Who reads the HTTP client's socket while its response streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWatch {
    /// A task of ours: a client that leaves is noticed at once (the end is freed, the
    /// writer told), and a pipelined next request is kept.
    Spawn,
    /// Someone else reads it (a routed request's body feeder).
    Elsewhere,
}

/// Reads the client's socket while its response streams: EOF means the reader is gone;
/// bytes are the next (pipelined) request, kept up to the head limit. After the response
/// (`done`), the first read that completes ends the watch. Returns the bytes and whether
/// the client closed.
async fn watch_client(
    ch: Rc<Channel>,
    conn: Rc<Conn>,
    mut bytes: Vec<u8>,
    progress: Rc<Progress>,
    max: usize,
) -> (Vec<u8>, bool) {
    // Stop reading once a whole next request is buffered (or the bytes cannot be one).
    let complete = |b: &[u8]| !matches!(parse_request_head(b), Ok(None));
    while bytes.len() < max && (bytes.is_empty() || !complete(&bytes)) {
        let (res, b) = conn.read_append(bytes, CLIENT_WATCH_READ_BYTES).await;
        bytes = b;
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                if !progress.done.get() {
                    if progress.took_data.get() {
                        ch.finish(StreamEnd::ReaderGone);
                    } else {
                        // Nothing was taken from the channel yet: give the read end back
                        // (a reloaded page or a reconnecting EventSource may claim it).
                        progress.client_left.set(true);
                        ch.reader_wake.notify_one();
                    }
                }
                return (bytes, true);
            }
        }
        if progress.done.get() {
            break;
        }
    }
    (bytes, false)
}

/// Streams the channel to an HTTP client. Returns the bytes of the next request already
/// read when the connection may serve another (keep-alive), `None` when it must close.
pub async fn run_http_reader(
    shard: &Shard,
    ch: &Rc<Channel>,
    conn: &Rc<Conn>,
    head: &RequestHead,
    leftover: Vec<u8>,
    watch: ClientWatch,
) -> Option<Vec<u8>> {
    let progress = Rc::new(Progress::default());
    let watcher = (watch == ClientWatch::Spawn).then(|| {
        let max = shard.config().max_head_bytes;
        let (ch, conn, p) = (ch.clone(), conn.clone(), progress.clone());
        crate::ring::spawn(watch_client(ch, conn, leftover.clone(), p, max))
    });
    let reusable = stream_response(shard, ch, conn, head, &progress).await;
    progress.done.set(true);
    if progress.client_left.get() {
        ch.core.borrow_mut().hand_back_reader();
    }
    let Some(watcher) = watcher else {
        return reusable.then_some(leftover);
    };
    // The next request has the usual head timeout to arrive. The watchdog lives only as long
    // as the watcher reads for it: the connection may go on to serve a long response next.
    let next_request = reusable.then(|| {
        let timeout = shard.config().handshake_timeout();
        Watchdog::armed(conn, Cut::Read, timeout)
    });
    if !reusable {
        conn.shutdown();
    }
    let (bytes, eof) = watcher.await.unwrap_or_default();
    drop(next_request);
    (reusable && (!eof || !bytes.is_empty())).then_some(bytes)
}

async fn stream_response(
    shard: &Shard,
    ch: &Rc<Channel>,
    conn: &Conn,
    head: &RequestHead,
    progress: &Progress,
) -> bool {
    let http10 = head.minor_version == 0;
    let keep_alive = !head.connection_close && !http10;
    let mut hs = HeadState::new();
    let mut delimit: Option<BodyDelimit> = None; // Some once the head is sent
    let mut crlf_pending = false;
    let mut in_text = false;
    let mut ranges = Vec::new();
    let mut body_sent: u64 = 0;
    let end = loop {
        if progress.client_left.get() {
            return false;
        }
        let step = ch.core.borrow_mut().next_reader_step();
        match step {
            ReaderStep::Wait => ch.reader_wake.notified().await,
            ReaderStep::Pong(_) => unreachable!("HTTP readers are not sent Pongs"),
            ReaderStep::End { end, .. } => break end,
            ReaderStep::Data { mut chunk, .. } => {
                progress.took_data.set(true);
                let in_text_before = hs.in_text;
                let scan = if delimit.is_none() {
                    hs.scan(&chunk)
                } else {
                    Scan::Body
                };
                if scan == Scan::TooLarge {
                    // The head is not sent: the client gets 502, the writer a policy Close.
                    ch.reader_wrote(Some(chunk.buf), chunk.cost, true, &shard.pool);
                    ch.finish(StreamEnd::ResponseHeadTooLarge);
                    continue;
                }
                if delimit.is_none() && scan == Scan::Body {
                    // The body renderer starts from the message state this chunk began in.
                    in_text = in_text_before;
                    let d = match (hs.content_length, http10) {
                        _ if matches!(hs.status, 204 | 304) => BodyDelimit::NoBody,
                        (Some(n), _) => BodyDelimit::Length(n),
                        (None, false) => BodyDelimit::Chunked,
                        (None, true) => BodyDelimit::Close,
                    };
                    if conn
                        .write_all(streamed_head(hs.status, &hs.headers, d, keep_alive))
                        .await
                        .is_err()
                    {
                        ch.reader_wrote(Some(chunk.buf), chunk.cost, false, &shard.pool);
                        continue;
                    }
                    delimit = Some(d);
                }
                let Some(d) = delimit.filter(|d| *d != BodyDelimit::NoBody) else {
                    // Only control messages so far, or a status without a body.
                    ch.reader_wrote(Some(chunk.buf), chunk.cost, true, &shard.pool);
                    continue;
                };
                let framing = if d == BodyDelimit::Chunked {
                    BodyFraming::Chunked
                } else {
                    BodyFraming::Identity
                };
                // Room for the last chunk's CRLF right after it, if the buffer has it.
                if chunk.buf.capacity() >= chunk.buf.len() + CHUNK_CRLF_LEN {
                    chunk.buf.extend_from_slice(&[0; CHUNK_CRLF_LEN]);
                }
                render_body(
                    &mut chunk.buf,
                    &chunk.pieces,
                    framing,
                    &mut crlf_pending,
                    &mut in_text,
                    &mut ranges,
                );
                if let BodyDelimit::Length(n) = d {
                    // Never send more than the declared length.
                    clip(&mut ranges, n.saturating_sub(body_sent));
                }
                let len: u64 = ranges.iter().map(|r| r.len() as u64).sum();
                let (res, buf) = send_segments(conn, chunk.buf, &ranges, None).await;
                if res.is_ok() {
                    body_sent += len;
                    ch.add_forwarded(shard.stats(), chunk.payload_bytes, chunk.frames as u64);
                }
                ch.reader_wrote(Some(buf), chunk.cost, res.is_ok(), &shard.pool);
            }
        }
    };
    match (end, delimit) {
        (StreamEnd::Clean, Some(BodyDelimit::NoBody)) => keep_alive,
        (StreamEnd::Clean, None) => {
            // The writer closed before any binary frame: an empty body, status as set.
            let d = match hs.content_length {
                _ if matches!(hs.status, 204 | 304) => BodyDelimit::NoBody,
                Some(n) => BodyDelimit::Length(n),
                None => BodyDelimit::Length(0),
            };
            let ok = conn
                .write_all(streamed_head(hs.status, &hs.headers, d, keep_alive))
                .await
                .is_ok();
            ok && keep_alive && hs.content_length.unwrap_or(0) == 0
        }
        (StreamEnd::Clean, Some(BodyDelimit::Chunked)) => {
            conn.write_all(last_chunk(crlf_pending).to_vec())
                .await
                .is_ok()
                && keep_alive
        }
        // Exactly the declared length, or the connection is cut so the client sees it.
        (StreamEnd::Clean, Some(BodyDelimit::Length(n))) => body_sent == n && keep_alive,
        (_, None) if end != StreamEnd::ReaderGone => {
            let (code, reason) = end.reader_close();
            let status = end.http_status();
            let msg = format!("stream ended before the response started: {reason} ({code})");
            let _ = conn
                .write_all(error_response(status, end.label(), &msg))
                .await;
            false
        }
        // Abnormal end mid-body: no final chunk; closing the connection makes it visible.
        _ => false,
    }
}

/// Shortens `ranges` to at most `budget` bytes in total.
fn clip(ranges: &mut Vec<std::ops::Range<usize>>, mut budget: u64) {
    let mut keep = 0;
    for r in ranges.iter_mut() {
        if budget == 0 {
            break;
        }
        let len = r.len() as u64;
        if len > budget {
            r.end = r.start + budget as usize;
        }
        budget -= (r.len() as u64).min(budget);
        keep += 1;
    }
    ranges.truncate(keep);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(n: usize, value: &str) -> ControlMessage {
        ControlMessage::SetHeaders((0..n).map(|i| (format!("x-h{i}"), value.into())).collect())
    }

    #[test]
    fn response_head_is_capped_by_count_and_bytes() {
        let mut hs = HeadState::new();
        assert!(hs.apply(headers(MAX_RESPONSE_HEADERS, "v")));
        assert!(
            !hs.apply(headers(MAX_RESPONSE_HEADERS + 1, "v")),
            "one header too many"
        );

        let mut hs = HeadState::new();
        let big = "v".repeat(MAX_RESPONSE_HEAD_BYTES);
        assert!(!hs.apply(headers(1, &big)), "one value over the byte limit");

        // Setting the same header again replaces it: it counts once, by its latest size.
        let mut hs = HeadState::new();
        for _ in 0..10_000 {
            assert!(hs.apply(headers(1, &"v".repeat(1000))));
        }
        assert_eq!(hs.headers.len(), 1);
        assert_eq!(hs.header_bytes, "x-h0".len() + 1000 + 4);
    }

    #[test]
    fn clip_limits_total() {
        let mut r = vec![0..10, 20..30, 40..50];
        clip(&mut r, 15);
        assert_eq!(r, vec![0..10, 20..25]);
        let mut r: Vec<std::ops::Range<usize>> = std::iter::once(0..10).collect();
        clip(&mut r, 0);
        assert!(r.is_empty());
    }
}
