//! A control-API connection: the same request loop as the data plane, with
//! `Content-Length` bodies (bounded, under the head's deadline) read before the request is
//! handed to the API's routes, and `GET /v1/events` upgraded to the event stream. Every
//! shard accepts control connections; where a new channel goes is `control::api`'s choice.

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use super::admit::ControlGuard;
use super::request::{refuse, serve_requests, Handler, HeadLimits};
use crate::channel::Shard;
use crate::config::MAX_CONTROL_BODY_BYTES;
use crate::control::{api, events};
use crate::error::Refusal;
use crate::http::Served;
use crate::metrics::METRICS;
use crate::ring::{Conn, Watchdog};
use crate::wire::head::RequestHead;

/// Read size for control request bodies.
const BODY_READ_BYTES: usize = 4096;

/// Serves a control connection until the client closes it (keep-alive).
pub async fn serve_connection(shard: Rc<Shard>, conn: Conn) {
    // Counted at accept, refused or not: what a client's connection reuse is measured by.
    METRICS.control_connections_total.fetch_add(1, Relaxed);
    let Some(_guard) = ControlGuard::admit(&shard.shared) else {
        let refusal = Refusal::Unavailable("control connection limit reached");
        return refuse(&conn, refusal).await;
    };
    let limits = HeadLimits::from_config(shard.config());
    let mut requests = ControlRequests { shard };
    serve_requests(Rc::new(conn), Vec::new(), limits, &mut requests).await
}

struct ControlRequests {
    shard: Rc<Shard>,
}

impl Handler for ControlRequests {
    const REUSE_HEAD_BUFFER: bool = true;

    fn takes_body(&self, head: &RequestHead) -> bool {
        api::takes_body(&head.method, &head.path)
    }

    async fn serve(
        &mut self,
        conn: Rc<Conn>,
        head: RequestHead,
        mut buf: Vec<u8>,
        head_dog: &Watchdog,
    ) -> Served {
        let close = head.connection_close || head.minor_version == 0;
        if head.chunked {
            return Served::Refused(conn, Refusal::LengthRequired);
        }
        let body_len = head.content_length.unwrap_or(0) as usize;
        if body_len > MAX_CONTROL_BODY_BYTES {
            return Served::Refused(conn, Refusal::BodyTooLarge);
        }
        // Head and body share one deadline: `head_dog` is still armed.
        while buf.len() < body_len {
            let (res, b) = conn.read_append(buf, BODY_READ_BYTES).await;
            buf = b;
            if !matches!(res, Ok(n) if n > 0) {
                return Served::Closed;
            }
        }
        head_dog.disarm();
        // `split_off(0)` would allocate a second buffer of the same capacity.
        let (body, rest) = if body_len == 0 {
            (Vec::new(), buf)
        } else {
            let rest = buf.split_off(body_len);
            (buf, rest)
        };
        let auth = head
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_str());
        let shared = &self.shard.shared;
        if head.path == "/v1/events" && head.upgrade_websocket {
            if !api::authorized(shared, auth) {
                let _ = conn.write_all(api::unauthorized().render(true)).await;
                return Served::Closed;
            }
            return match events::serve_events(shared.clone(), conn, head, rest).await {
                Ok(()) => Served::Closed,
                Err((conn, refusal)) => Served::Refused(conn, refusal),
            };
        }
        let resp = api::handle(&self.shard, &head.method, &head.path, auth, &body).await;
        // A client without the token gets one answer, not a connection to keep guessing on.
        let close = close || resp.status == 401;
        if conn.write_all(resp.render(close)).await.is_err() || close {
            conn.shutdown();
            return Served::Closed;
        }
        Served::KeepAlive(conn, rest)
    }
}
