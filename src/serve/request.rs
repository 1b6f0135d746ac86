//! The one HTTP/1 request loop, for the data-plane and the control listener alike: read a
//! request head (bounded in size and in time), hand it to the listener's handler, and
//! either read the next request on the same connection (keep-alive) or answer a refusal
//! and close. What a refusal looks like on the wire is decided in `error.rs`.
//!
//! One rule for bodies, for both listeners: a request that declares a body (a non-zero
//! `Content-Length`, or chunked) where its route and method take none is answered `400
//! body_not_allowed` before any of the body is read, and the connection is closed. The
//! body is never queued, read into memory or parsed as the next request; what the client
//! already sent of it is read and thrown away (bounded in bytes and time) after the answer,
//! so the close does not reset the answer away.

use std::rc::Rc;
use std::time::Duration;

use crate::config::Config;
use crate::error::Refusal;
use crate::http::Served;
use crate::ring::{Conn, Cut, Watchdog};
use crate::wire::head::{parse_request_head, HeadError, RequestHead};

/// First read size for a request head; later reads grow with what is buffered, up to the
/// head limit.
pub const HEAD_READ_BYTES: usize = 2048;

/// After refusing a body: most bytes of it read and thrown away before the close.
pub const DISCARD_MAX_BYTES: usize = 1 << 20;
/// After refusing a body: longest the client is given to stop sending it.
pub const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Read size while throwing a refused body away.
const DISCARD_READ_BYTES: usize = 16 << 10;

/// What bounds a request head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest head, in bytes (`max_head_bytes`).
    pub max_bytes: usize,
    /// Longest a client may take to send it, or idle between requests.
    pub timeout: Duration,
}

impl HeadLimits {
    pub fn from_config(cfg: &Config) -> HeadLimits {
        HeadLimits {
            max_bytes: cfg.max_head_bytes,
            timeout: cfg.handshake_timeout(),
        }
    }
}

/// Serves one request a listener takes. `head_dog` is the connection's watchdog, still
/// armed with the head's deadline: the handler disarms it once the request is in (a
/// handler that reads a bounded body first leaves it armed until then, so head and body
/// share one deadline).
pub(crate) trait Handler {
    /// Keep the head buffer between requests. Right for many short keep-alive requests
    /// (the control API: no allocation per request); wrong where a connection usually
    /// serves one long request (the data plane: an idle channel end would pin it).
    const REUSE_HEAD_BUFFER: bool;

    /// Whether the request's route and method take a body (only asked when it has one).
    fn takes_body(&self, head: &RequestHead) -> bool;

    async fn serve(
        &mut self,
        conn: Rc<Conn>,
        head: RequestHead,
        leftover: Vec<u8>,
        head_dog: &Watchdog,
    ) -> Served;
}

/// Reads requests on `conn` (after `initial`, bytes of the next request already read) and
/// serves each with `handler` until the connection is done.
pub(crate) async fn serve_requests<H: Handler>(
    conn: Rc<Conn>,
    initial: Vec<u8>,
    limits: HeadLimits,
    handler: &mut H,
) {
    let mut conn = conn;
    // The head buffer: bytes of the next request already read, then what is read for it.
    let mut buf = initial;
    // One watchdog for the life of the connection, re-armed for every head.
    let dog = Watchdog::new(&conn, Cut::Read);
    loop {
        dog.expire_in(limits.timeout);
        let read = read_head(&conn, &mut buf, limits.max_bytes, &dog).await;
        let (head, head_len) = match read {
            Ok(h) => h,
            Err(Some(refusal)) => return refuse(&conn, refusal).await,
            Err(None) => return,
        };
        if head.has_body() && !handler.takes_body(&head) {
            return refuse_body(&conn, &dog).await;
        }
        // What follows the head travels with the request, in a buffer of its own size.
        let leftover = buf[head_len..].to_vec();
        if H::REUSE_HEAD_BUFFER {
            buf.clear();
        } else {
            buf = Vec::new();
        }
        match handler.serve(conn, head, leftover, &dog).await {
            Served::KeepAlive(c, rest) => {
                conn = c;
                // Deadlines armed while serving that request do not apply to the next.
                conn.next_request();
                if buf.capacity() < rest.len() {
                    buf = rest;
                } else {
                    buf.extend_from_slice(&rest);
                }
            }
            Served::Closed => return,
            Served::Refused(c, refusal) => return refuse(&c, refusal).await,
        }
    }
}

/// Answers a refusal and closes the connection.
pub async fn refuse(conn: &Conn, refusal: Refusal) {
    crate::oplog::refused(conn.peer(), &refusal);
    let _ = conn.write_all(refusal.response()).await;
    conn.shutdown();
}

/// Refuses a body where none is taken (see the module's rule), then closes.
async fn refuse_body(conn: &Conn, dog: &Watchdog) {
    let refusal = Refusal::BodyNotAllowed;
    crate::oplog::refused(conn.peer(), &refusal);
    if conn.write_all(refusal.response()).await.is_ok() {
        conn.shutdown_write();
        // A close with unread bytes sends a reset, which can cost the client the answer.
        dog.expire_in(DISCARD_TIMEOUT);
        let mut buf = Vec::with_capacity(DISCARD_READ_BYTES);
        let mut discarded = 0;
        while discarded < DISCARD_MAX_BYTES {
            buf.clear();
            let (res, b) = conn.read_append(buf, DISCARD_READ_BYTES).await;
            buf = b;
            match res {
                Ok(n) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
    conn.shutdown();
}

/// Reads into `buf` until it holds a whole request head, starting from bytes already there
/// (a pipelined request). Returns the head and its length in `buf`. `Err(None)`: the peer
/// went away (nothing to answer).
async fn read_head(
    conn: &Conn,
    buf: &mut Vec<u8>,
    max: usize,
    dog: &Watchdog,
) -> Result<(RequestHead, usize), Option<Refusal>> {
    // Bytes of a pipelined request may already be here: parse those before reading.
    let mut need_read = buf.is_empty();
    loop {
        if need_read {
            if buf.len() >= max {
                return Err(Some(Refusal::HeadTooLarge));
            }
            let room = HEAD_READ_BYTES.max(buf.len()).min(max - buf.len());
            let (res, b) = conn.read_append(std::mem::take(buf), room).await;
            *buf = b;
            match res {
                // A client in the middle of a head is told; an idle keep-alive connection
                // (nothing sent) is just closed, as a client expects of an idle one.
                Ok(0) | Err(_) if dog.fired() && !buf.is_empty() => {
                    return Err(Some(Refusal::Timeout))
                }
                Ok(0) | Err(_) if dog.fired() => {
                    conn.shutdown();
                    return Err(None);
                }
                Ok(0) | Err(_) => return Err(None),
                Ok(_) => {}
            }
        }
        need_read = true;
        match parse_request_head(buf) {
            Ok(None) => continue,
            Ok(Some((head, n))) => return Ok((head, n)),
            Err(HeadError::TooManyHeaders) => return Err(Some(Refusal::HeadTooLarge)),
            Err(HeadError::Malformed(m)) => return Err(Some(Refusal::BadRequest(m))),
        }
    }
}
