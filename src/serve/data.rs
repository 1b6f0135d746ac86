//! A data-plane request, from its parsed head to its mode: route it (a channel end, a
//! registered HTTP route, or a refusal), hand it to the shard that owns its channel, and
//! there claim the channel end and serve it as a WebSocket or plain HTTP end.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use super::admit::ConnGuard;
use super::request::{refuse, serve_requests, Handler, HeadLimits};
use super::thread::Dispatch;
use crate::channel::{owner_of, Kind, Shard};
use crate::error::{Refusal, StreamEnd, Unavailable};
use crate::http::reader::{run_http_reader, ClientWatch};
use crate::http::writer::run_http_writer;
use crate::http::{ingress, Served};
use crate::ring::{Conn, Watchdog};
use crate::wire::head::{Method, RequestHead};
use crate::wire::ingress::{find_route, IngressRoute, PathParams};
use crate::wire::response::switching_protocols;
use crate::wire::route::{
    channel_id_from_path, parse_target, ChannelTarget, Direction, RouteError,
};

/// How a connection serves its channel end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    WebSocket,
    /// `GET` without upgrade, `dir=read`: the stream as an HTTP response.
    HttpRead,
    /// `PUT`/`POST`, `dir=write`: the request body into the channel.
    HttpWrite,
}

/// Serves a freshly accepted data-plane connection on the shard that accepted it.
pub async fn serve_connection(dispatch: Rc<Dispatch>, conn: Conn) {
    let shard = &dispatch.shard;
    let Some(guard) = ConnGuard::admit(&shard.shared, shard.index) else {
        return refuse(&conn, Refusal::Unavailable(Unavailable::ConnectionLimit)).await;
    };
    let limits = HeadLimits::from_config(shard.config());
    let mut requests = DataRequests {
        dispatch,
        guard: Some(guard),
    };
    serve_requests(Rc::new(conn), Vec::new(), limits, &mut requests).await
}

/// The data-plane listener's requests on one connection.
struct DataRequests {
    dispatch: Rc<Dispatch>,
    /// Counts the connection while it lives; travels with it when it is handed over.
    guard: Option<ConnGuard>,
}

impl Handler for DataRequests {
    const REUSE_HEAD_BUFFER: bool = false;

    /// Uploads (`PUT`/`POST` to a channel) and registered routes, whose functions read
    /// the body.
    fn takes_body(&self, head: &RequestHead) -> bool {
        matches!(head.method, Method::Put | Method::Post)
            || ingress_route(&self.dispatch.shard, head).is_some()
    }

    async fn serve(
        &mut self,
        conn: Rc<Conn>,
        head: RequestHead,
        leftover: Vec<u8>,
        head_dog: &Watchdog,
    ) -> Served {
        // The request is in: what follows (a stream, an upload) has its own limits.
        head_dog.disarm();
        let shard = &self.dispatch.shard;
        if let Some((r, params)) = ingress_route(shard, &head) {
            let params = match params {
                Ok(p) => p,
                Err(e) => return Served::Refused(conn, Refusal::BadRequest(e.reason())),
            };
            if shard.shared.draining.load(Relaxed) {
                return Served::Refused(conn, Refusal::Unavailable(Unavailable::Draining));
            }
            // Served here: its channels are created on this shard. Boxed: routed requests
            // are the rare case, and their state would otherwise size the task of every
            // data-plane connection (idle channels pay for it in memory).
            let waiting = &self.dispatch.ingress;
            let served = ingress::serve_ingress(shard, waiting, conn, head, r, params, leftover);
            return Box::pin(served).await;
        }
        let (target, mode) = match route(shard, &head) {
            Ok(t) => t,
            Err(refusal) => return Served::Refused(conn, refusal),
        };
        let owner = owner_of(&target.channel_id, shard.shard_count());
        if owner == shard.index {
            return attach(&self.dispatch, conn, &head, &target, mode, leftover).await;
        }
        // The connection's only holder is this request (the head watchdog holds a weak
        // reference): detach it from this ring and send it to the owner.
        let peer = conn.peer();
        let std = Rc::try_unwrap(conn)
            .map_err(|_| ())
            .and_then(|c| c.into_std().map_err(|_| ()));
        match (std, self.guard.take()) {
            (Ok(conn), Some(guard)) => self.dispatch.hand_off(
                owner,
                Handoff {
                    conn,
                    peer,
                    head,
                    target,
                    mode,
                    leftover,
                    guard,
                },
            ),
            _ => tracing::warn!("handoff failed: connection dropped"),
        }
        Served::Closed
    }
}

/// A registered HTTP route matching a request that is not for a channel path.
fn ingress_route(shard: &Shard, head: &RequestHead) -> Option<(IngressRoute, PathParams)> {
    let prefix = &shard.config().path_prefix;
    if channel_id_from_path(&head.path, prefix).is_ok()
        || head.path.starts_with(&format!("{prefix}/ws/channels/"))
    {
        return None;
    }
    let routes = shard.shared.routes.read().expect("routes lock");
    find_route(&routes, head.method.as_str(), &head.path).map(|(r, p)| (r.clone(), p))
}

/// Decides what a request is for, before any channel lookup.
fn route(shard: &Shard, head: &RequestHead) -> Result<(ChannelTarget, Mode), Refusal> {
    let prefix = &shard.config().path_prefix;
    // Another node's channel: nothing else about the request is this relay's to judge.
    if let Ok(id) = channel_id_from_path(&head.path, prefix) {
        shard.check_node(id)?;
    }
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

/// A connection accepted on one shard whose channel lives on another: everything the owner
/// needs to serve it (the socket, detached from the accepting shard's ring).
pub struct Handoff {
    conn: std::net::TcpStream,
    /// The peer's address as accepted (for log lines).
    peer: Option<std::net::SocketAddr>,
    head: RequestHead,
    target: ChannelTarget,
    mode: Mode,
    /// Bytes read past the head.
    leftover: Vec<u8>,
    guard: ConnGuard,
}

/// On the owner shard, for a handed-over connection: serve it, then any further requests.
pub async fn serve_handoff(dispatch: Rc<Dispatch>, h: Handoff) {
    let shard = &dispatch.shard;
    let conn = match Conn::from_std(h.conn, h.peer, shard.config().io_engine) {
        Ok(conn) => Rc::new(conn),
        Err(e) => {
            // Dropped: the client sees its connection close, as when accept fails.
            tracing::warn!(error = %e, "a handed-over connection could not join this shard");
            return;
        }
    };
    let served = attach(&dispatch, conn, &h.head, &h.target, h.mode, h.leftover).await;
    let limits = HeadLimits::from_config(shard.config());
    let mut requests = DataRequests {
        dispatch: dispatch.clone(),
        guard: Some(h.guard),
    };
    match served {
        Served::KeepAlive(conn, rest) => serve_requests(conn, rest, limits, &mut requests).await,
        Served::Refused(conn, refusal) => refuse(&conn, refusal).await,
        Served::Closed => {}
    }
}

/// On the owner shard: claims the channel end and serves it. The connection may serve
/// another request afterwards only as a plain HTTP end (keep-alive).
async fn attach(
    dispatch: &Dispatch,
    conn: Rc<Conn>,
    head: &RequestHead,
    target: &ChannelTarget,
    mode: Mode,
    leftover: Vec<u8>,
) -> Served {
    let shard = &dispatch.shard;
    let ch = match shard.open_end(&target.channel_id, &target.key, target.dir) {
        Ok(ch) => ch,
        Err(refusal) => return Served::Refused(conn, refusal),
    };
    // Claimed before the first await, so a second connection for this end gets 409.
    let kind = match mode {
        Mode::WebSocket => Kind::WebSocket,
        Mode::HttpRead | Mode::HttpWrite => Kind::Http,
    };
    let end = ch.claim(target.dir, &conn, kind);
    // A routed request's function has arrived: it no longer counts as pending.
    dispatch
        .ingress
        .end_connected(&shard.shared.subscribers, &ch.id);
    tracing::debug!(channel = %ch.id, dir = target.dir.as_str(), ?mode, "end connected");
    let reusable = match mode {
        Mode::WebSocket => {
            let ws_key = head.ws_key.as_deref().unwrap_or_default(); // checked in `route`

            // The 101 goes first: once it is out, the channel may write to this end from
            // another task.
            if conn.write_first(switching_protocols(ws_key)).await.is_err() {
                ch.finish(match target.dir {
                    Direction::Write => StreamEnd::WriterDisconnected,
                    Direction::Read => StreamEnd::ReaderGone,
                });
            }
            match target.dir {
                Direction::Write => {
                    crate::channel::pump::run_writer(shard, &ch, &conn, leftover).await
                }
                Direction::Read => {
                    crate::channel::pump::run_reader(shard, &ch, &conn, leftover).await
                }
            }
            None
        }
        Mode::HttpRead => {
            run_http_reader(shard, &ch, &conn, head, leftover, ClientWatch::Spawn).await
        }
        Mode::HttpWrite => run_http_writer(shard, &ch, &conn, head, leftover).await,
    };
    end.release(shard);
    // Still held elsewhere (a task of the end not finished): not reusable.
    if Rc::strong_count(&conn) != 1 {
        return Served::Closed;
    }
    match reusable {
        Some(rest) => Served::KeepAlive(conn, rest),
        None => {
            conn.shutdown();
            Served::Closed
        }
    }
}
