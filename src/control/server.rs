//! The control API's HTTP/1.1 server: keep-alive, `Content-Length` bodies, bounded heads
//! and bodies. Every shard accepts control connections (one `SO_REUSEPORT` listener each),
//! so a channel is created on the shard that took the request, with no hop to another
//! thread.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::api::{handle, Response};
use crate::channel::Shard;
use crate::config::MAX_CONTROL_BODY_BYTES;
use crate::ring::{self, Conn, Listener};
use crate::wire::head::parse_request_head;

/// Read size for control connections.
const CONTROL_READ_BYTES: usize = 4096;

/// Accepts control connections on `shard` forever.
pub async fn serve(shard: Rc<Shard>, listener: std::net::TcpListener) {
    let listener = Listener::from_std(listener);
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                ring::spawn(serve_conn(shard.clone(), Rc::new(conn)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Cuts a control connection that takes longer than the handshake timeout to send a
/// request (or idles that long between requests). Runs beside the connection's reads,
/// which are never cancelled: shutting the socket completes them.
fn arm_request_timeout(conn: &Rc<Conn>, deadline: &Rc<Cell<Option<Instant>>>, timeout: Duration) {
    let (weak, deadline) = (Rc::downgrade(conn), deadline.clone());
    ring::spawn(async move {
        loop {
            let wait = match deadline.get() {
                Some(d) => d.saturating_duration_since(Instant::now()),
                None => timeout, // a request is being answered
            };
            tokio::time::sleep(wait).await;
            let Some(conn) = weak.upgrade() else { return };
            if deadline.get().is_some_and(|d| d <= Instant::now()) {
                conn.shutdown();
                return;
            }
        }
    });
}

async fn serve_conn(shard: Rc<Shard>, conn: Rc<Conn>) {
    let shared = shard.shared.clone();
    let max_head = shared.config.max_head_bytes;
    let timeout = shared.config.handshake_timeout();
    let deadline = Rc::new(Cell::new(Some(Instant::now() + timeout)));
    arm_request_timeout(&conn, &deadline, timeout);
    let mut buf: Vec<u8> = Vec::new();
    loop {
        deadline.set(Some(Instant::now() + timeout));
        // Read until a full head is buffered.
        let (head, head_len) = loop {
            match parse_request_head(&buf) {
                Ok(Some(h)) => break h,
                Ok(None) if buf.len() >= max_head => {
                    let _ = conn
                        .write_all(
                            Response::error(431, "head_too_large", "request head too large")
                                .render(true),
                        )
                        .await;
                    return;
                }
                Ok(None) => {}
                Err(_) => {
                    let _ = conn
                        .write_all(
                            Response::error(400, "bad_request", "malformed request").render(true),
                        )
                        .await;
                    return;
                }
            }
            if !read_more(&conn, &mut buf).await {
                return;
            }
        };
        let close = head.connection_close || head.minor_version == 0;
        if head.chunked {
            let r = Response::error(411, "length_required", "send the body with content-length");
            let _ = conn.write_all(r.render(true)).await;
            return;
        }
        let body_len = head.content_length.unwrap_or(0) as usize;
        if body_len > MAX_CONTROL_BODY_BYTES {
            let r = Response::error(413, "body_too_large", "request body too large");
            let _ = conn.write_all(r.render(true)).await;
            return;
        }
        while buf.len() < head_len + body_len {
            if !read_more(&conn, &mut buf).await {
                return;
            }
        }
        deadline.set(None);
        let body: Vec<u8> = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let auth = head
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_str());
        if head.path == "/v1/events" && head.upgrade_websocket {
            if !super::api::authorized(&shared, auth) {
                let _ = conn
                    .write_all(super::api::unauthorized().render(true))
                    .await;
                return;
            }
            let leftover = buf;
            return super::events::serve_events(shared, conn, head, leftover).await;
        }
        let resp = handle(&shard, &head.method, &head.path, auth, &body).await;
        if conn.write_all(resp.render(close)).await.is_err() || close {
            conn.shutdown();
            return;
        }
    }
}

/// Appends one read to `buf`; false on EOF or error.
async fn read_more(conn: &Conn, buf: &mut Vec<u8>) -> bool {
    let (res, b) = conn
        .read_append(std::mem::take(buf), CONTROL_READ_BYTES)
        .await;
    *buf = b;
    matches!(res, Ok(n) if n > 0)
}
