//! A channel read as an HTTP/1.1 response (DESIGN §5.1): text messages before the first
//! binary frame set the status and headers; each binary frame becomes a chunk (or identity
//! bytes when the writer set `content-length`), written as it arrives from the writer's
//! own buffers. The same pump and queue as a WebSocket reader.

use std::rc::Rc;

use crate::channel::channel::{Channel, Chunk};
use crate::channel::pump::{next_for_reader, Next};
use crate::channel::Shard;
use crate::error::StreamEnd;
use crate::ring::Conn;
use crate::wire::chunked::{last_chunk, piece_is_text, render_body, BodyFraming};
use crate::wire::control_msg::{parse_control_message, ControlMessage};
use crate::wire::forward::compact;
use crate::wire::head::RequestHead;
use crate::wire::response::{error_response, streamed_head, BodyDelimit};

/// Longest text message read as a control message (longer ones are ignored).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 64 << 10;

/// The response head as the writer's control messages shape it.
struct HeadState {
    status: u16,
    headers: Vec<(String, String)>,
    content_length: Option<u64>,
    /// Text bytes of the message being collected.
    text: Vec<u8>,
    text_too_long: bool,
    in_text: bool,
}

impl HeadState {
    fn apply(&mut self, msg: ControlMessage) {
        match msg {
            ControlMessage::SetStatus(s) => self.status = s,
            ControlMessage::SetHeaders(hs) => {
                for (k, v) in hs {
                    if k == "content-length" {
                        // Only a plain decimal length is honoured; anything else is dropped.
                        self.content_length = v.trim().parse().ok();
                        continue;
                    }
                    self.headers.retain(|(n, _)| *n != k);
                    self.headers.push((k, v));
                }
            }
        }
    }

    /// Reads control messages from the pieces of `chunk` up to its first binary piece.
    /// Returns true when a binary piece was found (the head must go out now).
    fn scan(&mut self, chunk: &Chunk) -> bool {
        for p in &chunk.pieces {
            let mut in_text = self.in_text;
            if !piece_is_text(p, &mut in_text) {
                return true;
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
                        self.apply(m);
                    }
                }
                self.text.clear();
                self.text_too_long = false;
            }
        }
        false
    }
}

/// Streams the channel to an HTTP client. Returns true when the connection may serve
/// another request (keep-alive), false when it must close.
pub async fn run_http_reader(
    shard: &Shard,
    ch: &Rc<Channel>,
    conn: &Conn,
    head: &RequestHead,
) -> bool {
    let http10 = head.minor_version == 0;
    let keep_alive = !head.connection_close && !http10;
    let mut hs = HeadState {
        status: 200,
        headers: Vec::new(),
        content_length: None,
        text: Vec::new(),
        text_too_long: false,
        in_text: false,
    };
    let mut delimit: Option<BodyDelimit> = None; // Some once the head is sent
    let mut crlf_pending = false;
    let mut in_text = false;
    let mut ranges = Vec::new();
    let mut body_sent: u64 = 0;
    let end = loop {
        match next_for_reader(ch, true) {
            Next::Wait => ch.reader_wake.notified().await,
            Next::Pong(_) => {} // HTTP clients do not ping
            Next::Close(end) => break end,
            Next::Send(mut chunk) => {
                if delimit.is_none() && hs.scan(&chunk) {
                    let d = match (hs.content_length, http10) {
                        (Some(n), _) => BodyDelimit::Length(n),
                        (None, false) => BodyDelimit::Chunked,
                        (None, true) => BodyDelimit::Close,
                    };
                    if conn
                        .write_all(streamed_head(hs.status, &hs.headers, d, keep_alive))
                        .await
                        .is_err()
                    {
                        ch.release(chunk.buf.len());
                        ch.finish(StreamEnd::ReaderGone);
                        continue;
                    }
                    delimit = Some(d);
                }
                let Some(d) = delimit else {
                    // Only control messages so far.
                    ch.release(chunk.buf.len());
                    shard.pool.put(chunk.buf);
                    continue;
                };
                let framing = if d == BodyDelimit::Chunked {
                    BodyFraming::Chunked
                } else {
                    BodyFraming::Identity
                };
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
                let range = compact(&mut chunk.buf, &ranges);
                let len = range.len() as u64;
                let (res, buf) = conn.write_range(chunk.buf, range).await;
                ch.release(buf.len());
                shard.pool.put(buf);
                if res.is_err() {
                    ch.finish(StreamEnd::ReaderGone);
                    continue;
                }
                body_sent += len;
                ch.add_forwarded(chunk.payload_bytes, chunk.frames as u64);
            }
        }
    };
    match (end, delimit) {
        (StreamEnd::Clean, None) => {
            // The writer closed before any binary frame: an empty body, status as set.
            let d = match hs.content_length {
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
