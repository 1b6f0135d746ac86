//! A new data-plane connection: read its request head (bounded in size and time), route
//! it, hand it to the shard that owns its channel, and there claim the channel end.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use subtle::ConstantTimeEq;

use super::channel::Slot;
use super::shard::{owner_of, ConnGuard, Shard, ShardMsg};
use crate::control::metrics::METRICS;
use crate::error::Refusal;
use crate::error::StreamEnd;
use crate::ring::{self, Conn};
use crate::wire::head::{parse_request_head, HeadError, Method, RequestHead};
use crate::wire::response::switching_protocols;
use crate::wire::route::{parse_target, ChannelTarget, Direction, RouteError};

/// First read size for a request head; grows up to the configured head limit.
pub const HEAD_READ_BYTES: usize = 2048;

/// Sends a refusal and closes the connection.
pub async fn refuse(conn: Conn, refusal: Refusal) {
    let (status, _, _) = refusal.status();
    METRICS.count_refusal(status);
    tracing::debug!(status, "refused");
    let _ = conn.write_all(refusal.response()).await;
    conn.shutdown();
}

/// Reads the request head, starting from bytes already read (a pipelined request).
/// `Err(None)`: the peer went away (nothing to answer).
async fn read_head(
    shard: &Shard,
    conn: &Rc<Conn>,
    initial: Vec<u8>,
) -> Result<(RequestHead, Vec<u8>), Option<Refusal>> {
    let max = shard.config().max_head_bytes;
    let timed_out = Rc::new(Cell::new(false));
    let done = Rc::new(Cell::new(false));
    {
        // Slow clients are cut off from a separate task: the read itself is never dropped.
        let weak = Rc::downgrade(conn);
        let (timed_out, done) = (timed_out.clone(), done.clone());
        let timeout = shard.config().handshake_timeout();
        ring::spawn(async move {
            tokio::time::sleep(timeout).await;
            if !done.get() {
                if let Some(c) = weak.upgrade() {
                    timed_out.set(true);
                    c.shutdown_read();
                }
            }
        });
    }
    // Bytes of a pipelined request may already be here: parse those before reading.
    let mut buf = initial;
    let mut need_read = buf.is_empty();
    let result = loop {
        if need_read {
            if buf.len() >= max {
                break Err(Some(Refusal::HeadTooLarge));
            }
            let room = HEAD_READ_BYTES.max(buf.len()).min(max - buf.len());
            let (res, b) = conn.read_append(buf, room).await;
            buf = b;
            match res {
                Ok(0) | Err(_) if timed_out.get() => break Err(Some(Refusal::Timeout)),
                Ok(0) | Err(_) => break Err(None),
                Ok(_) => {}
            }
        }
        need_read = true;
        match parse_request_head(&buf) {
            Ok(None) => continue,
            Ok(Some((head, n))) => break Ok((head, buf[n..].to_vec())),
            Err(HeadError::TooManyHeaders) => break Err(Some(Refusal::HeadTooLarge)),
            Err(HeadError::Malformed(m)) => break Err(Some(Refusal::BadRequest(m))),
        }
    };
    done.set(true);
    result
}

/// How a connection serves its channel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    WebSocket,
    /// `GET` without upgrade, `dir=read`: the stream as an HTTP response.
    HttpRead,
    /// `PUT`/`POST`, `dir=write`: the request body into the channel.
    HttpWrite,
}

/// A registered HTTP route matching a request that is not for a channel path.
fn ingress_route(
    shard: &Shard,
    head: &RequestHead,
) -> Option<(
    crate::wire::ingress::IngressRoute,
    std::collections::BTreeMap<String, String>,
)> {
    let prefix = &shard.config().path_prefix;
    if crate::wire::route::channel_id_from_path(&head.path, prefix).is_ok()
        || head.path.starts_with(&format!("{prefix}/ws/channels/"))
    {
        return None;
    }
    let routes = shard.shared.routes.read().expect("routes lock");
    crate::wire::ingress::find_route(&routes, head.method.as_str(), &head.path)
        .map(|(r, p)| (r.clone(), p))
}

/// Decides what a request is for, before any channel lookup.
fn route(shard: &Shard, head: &RequestHead) -> Result<(ChannelTarget, Mode), Refusal> {
    let prefix = &shard.config().path_prefix;
    let target = match parse_target(&head.path, &head.query, prefix) {
        Ok(t) => t,
        Err(RouteError::NotFound) if head.path.starts_with(&format!("{prefix}/ws/channels/")) => {
            return Err(Refusal::NotFound)
        }
        Err(RouteError::NotFound) => return Err(Refusal::NoRoute),
        Err(RouteError::BadQuery(m)) => {
            return Err(match head.method {
                Method::Get | Method::Put | Method::Post => Refusal::BadRequest(m),
                Method::Delete | Method::Other(_) => Refusal::MethodNotAllowed,
            })
        }
    };
    if head.has_body() && !matches!(head.method, Method::Put | Method::Post) {
        // Its body would otherwise be read as the next request on the connection.
        return Err(Refusal::BadRequest("this request takes no body"));
    }
    match (&head.method, target.dir) {
        (Method::Get, _) if head.upgrade_websocket => match head.websocket_key() {
            Ok(_) => Ok((target, Mode::WebSocket)),
            Err(why) => Err(Refusal::BadRequest(why)),
        },
        (Method::Get, Direction::Read) => Ok((target, Mode::HttpRead)),
        (Method::Put | Method::Post, Direction::Write) => Ok((target, Mode::HttpWrite)),
        (Method::Get, Direction::Write) => Err(Refusal::BadRequest(
            "a writer must upgrade to WebSocket or use PUT/POST",
        )),
        _ => Err(Refusal::MethodNotAllowed),
    }
}

/// Serves a freshly accepted connection on the shard that accepted it.
pub async fn serve_connection(shard: Rc<Shard>, conn: Conn) {
    let Some(guard) = ConnGuard::admit(&shard.shared, shard.index) else {
        return refuse(conn, Refusal::Unavailable("connection limit reached")).await;
    };
    serve_requests_from(shard, conn, guard, Vec::new()).await
}

/// Reads request heads on `conn` (after `initial`, bytes of the next request already read)
/// and serves them; HTTP requests may keep the connection alive for the next one.
async fn serve_requests_from(shard: Rc<Shard>, conn: Conn, guard: ConnGuard, initial: Vec<u8>) {
    let mut conn = conn;
    let mut initial = initial;
    loop {
        let conn_rc = Rc::new(conn);
        let head = read_head(&shard, &conn_rc, std::mem::take(&mut initial)).await;
        conn =
            Rc::try_unwrap(conn_rc).unwrap_or_else(|_| unreachable!("watchdog holds a weak ref"));
        let (head, leftover) = match head {
            Ok(h) => h,
            Err(Some(refusal)) => return refuse(conn, refusal).await,
            Err(None) => return,
        };
        if let Some((r, params)) = ingress_route(&shard, &head) {
            if shard.shared.draining.load(Relaxed) {
                return refuse(conn, Refusal::Unavailable("relay is draining")).await;
            }
            // Served here: its channels are created on this shard.
            let served =
                crate::http::ingress::serve_ingress(&shard, conn, head, r, params, leftover);
            match served.await {
                Some((c, rest)) => {
                    (conn, initial) = (c, rest);
                    continue;
                }
                None => return,
            }
        }
        let (target, mode) = match route(&shard, &head) {
            Ok(t) => t,
            Err(refusal) => return refuse(conn, refusal).await,
        };
        let owner = owner_of(&target.channel_id, shard.shard_count());
        if owner != shard.index {
            match conn.into_std() {
                Ok(conn) => {
                    let h = Handoff {
                        conn,
                        head,
                        target,
                        mode,
                        leftover,
                        guard,
                    };
                    hand_off(&shard, owner, h);
                }
                Err(e) => tracing::warn!(error = %e, "handoff failed"),
            }
            return;
        }
        match attach(&shard, conn, &head, &target, mode, leftover).await {
            Some((c, rest)) => (conn, initial) = (c, rest),
            None => return,
        }
    }
}

/// A connection accepted on one shard whose channel lives on another: everything the owner
/// needs to serve it (the socket, detached from the accepting shard's ring).
pub struct Handoff {
    conn: std::net::TcpStream,
    head: RequestHead,
    target: ChannelTarget,
    mode: Mode,
    /// Bytes read past the head.
    leftover: Vec<u8>,
    guard: ConnGuard,
}

/// Sends a connection to the shard that owns its channel.
fn hand_off(shard: &Shard, owner: usize, h: Handoff) {
    METRICS.handoffs.fetch_add(1, Relaxed);
    if shard.shared.peers[owner]
        .send(ShardMsg::Handoff(Box::new(h)))
        .is_err()
    {
        tracing::error!(owner, "owner shard is gone; connection dropped");
    }
}

/// On the owner shard, for a handed-over connection: serve it, then any further requests.
pub async fn serve_handoff(shard: Rc<Shard>, h: Handoff) {
    let conn = Conn::from_std(h.conn);
    if let Some((conn, rest)) = attach(&shard, conn, &h.head, &h.target, h.mode, h.leftover).await {
        serve_requests_from(shard, conn, h.guard, rest).await;
    }
}

/// On the owner shard: claims the channel end and serves it. Returns the connection, and
/// any bytes of the next request already read, when it may serve another (HTTP keep-alive).
async fn attach(
    shard: &Rc<Shard>,
    conn: Conn,
    head: &RequestHead,
    target: &ChannelTarget,
    mode: Mode,
    leftover: Vec<u8>,
) -> Option<(Conn, Vec<u8>)> {
    let found = shard
        .lookup(&target.channel_id)
        .or_else(|| shard.open_signed(&target.channel_id, &target.key));
    let Some(ch) = found else {
        refuse(conn, Refusal::NotFound).await;
        return None;
    };
    if !bool::from(ch.key.as_bytes().ct_eq(target.key.as_bytes())) {
        refuse(conn, Refusal::NotFound).await;
        return None;
    }
    if ch.slot(target.dir) != Slot::Waiting {
        refuse(conn, Refusal::Conflict).await;
        return None;
    }
    // While draining, ends of channels already in use may still connect (refusing them
    // would lose their data); a channel nobody has used yet is not started.
    if shard.shared.draining.load(Relaxed) && !ch.is_busy() {
        refuse(conn, Refusal::Unavailable("relay is draining")).await;
        return None;
    }
    // Claim the end before the first await so a second connection gets 409.
    ch.set_slot(target.dir, Slot::Connected);
    let conn = Rc::new(conn);
    {
        let mut st = ch.state.borrow_mut();
        match target.dir {
            Direction::Write => st.writer_conn = Some(conn.clone()),
            Direction::Read => st.reader_conn = Some(conn.clone()),
        }
    }
    tracing::debug!(channel = %ch.id, dir = target.dir.as_str(), ?mode, "end connected");
    let reusable = match (mode, target.dir) {
        (Mode::WebSocket, dir) => {
            let ws_key = head.ws_key.as_deref().unwrap_or_default(); // checked in `route`
            if conn.write_all(switching_protocols(ws_key)).await.is_err() {
                ch.finish(match dir {
                    Direction::Write => StreamEnd::WriterDisconnected,
                    Direction::Read => StreamEnd::ReaderGone,
                });
            }
            match dir {
                Direction::Write => super::pump::run_writer(shard, &ch, &conn, leftover).await,
                Direction::Read => super::pump::run_reader(shard, &ch, &conn, leftover).await,
            }
            None
        }
        (Mode::HttpRead, _) => {
            let watch = crate::http::response::ClientWatch::Spawn;
            crate::http::response::run_http_reader(shard, &ch, &conn, head, leftover, watch).await
        }
        (Mode::HttpWrite, _) => {
            crate::http::upload::run_http_writer(shard, &ch, &conn, head, leftover).await
        }
    };
    {
        let mut st = ch.state.borrow_mut();
        match target.dir {
            Direction::Write => st.writer_conn = None,
            Direction::Read => st.reader_conn = None,
        }
    }
    // An end that gave its slot back (an HTTP reader that left before anything was sent
    // to it) stays open for the next one.
    if ch.slot(target.dir) == Slot::Connected {
        ch.set_slot(target.dir, Slot::Finished);
    }
    shard.end_finished(&ch);
    let conn = Rc::try_unwrap(conn).ok()?;
    match reusable {
        Some(rest) => Some((conn, rest)),
        None => {
            conn.shutdown();
            None
        }
    }
}
