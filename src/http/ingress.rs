//! HTTP endpoints for functions (DESIGN §5.3). A public request that matches a route the
//! control engine registered gets two channels on the shard that accepted it: the request
//! body flows into one (the function reads it), the function writes its answer into the
//! other, which is streamed back as the HTTP response. The engine learns of the request
//! through its event stream (`GET /v1/events` on the control listener).

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::channel::channel::Slot;
use crate::channel::{Channel, Shard};
use crate::error::{Refusal, StreamEnd};
use crate::ring::{self, Conn};
use crate::wire::head::RequestHead;
use crate::wire::ingress::{query_params, IngressRoute};
use crate::wire::route::Direction;

/// What the relay sends a subscribed engine.
#[derive(Debug)]
pub enum Outgoing {
    /// A JSON event (a text frame).
    Event(String),
    /// Pong frames owed to the engine.
    Pong(Vec<u8>),
    /// Stop.
    Close,
}

/// Engines subscribed to the event stream; each request goes to one of them, in turn.
#[derive(Default)]
pub struct Subscribers {
    list: Mutex<Vec<(u64, mpsc::UnboundedSender<Outgoing>)>>,
    next_id: std::sync::atomic::AtomicU64,
    turn: std::sync::atomic::AtomicUsize,
}

impl Subscribers {
    pub fn add(&self, tx: mpsc::UnboundedSender<Outgoing>) -> u64 {
        let id = self.next_id.fetch_add(1, Relaxed);
        self.list.lock().expect("subscribers lock").push((id, tx));
        id
    }

    pub fn remove(&self, id: u64) {
        self.list
            .lock()
            .expect("subscribers lock")
            .retain(|(i, _)| *i != id);
    }

    pub fn count(&self) -> usize {
        self.list.lock().expect("subscribers lock").len()
    }

    /// Delivers `event` to one live subscriber; false when there is none.
    pub fn publish(&self, event: String) -> bool {
        let mut list = self.list.lock().expect("subscribers lock");
        list.retain(|(_, tx)| !tx.is_closed());
        let mut event = Outgoing::Event(event);
        while !list.is_empty() {
            let i = self.turn.fetch_add(1, Relaxed) % list.len();
            match list[i].1.send(event) {
                Ok(()) => return true,
                Err(mpsc::error::SendError(e)) => {
                    event = e;
                    list.remove(i);
                }
            }
        }
        false
    }
}

fn new_ref(ch: &Channel, dir: Direction) -> serde_json::Value {
    serde_json::json!({"channel_id": ch.id, "access_key": ch.key, "direction": dir.as_str()})
}

/// Serves one request for a registered route on this shard. Returns the connection, with
/// the bytes of the next request already read, when it may serve another.
pub async fn serve_ingress(
    shard: &Rc<Shard>,
    conn: Conn,
    head: RequestHead,
    route: IngressRoute,
    path_params: BTreeMap<String, String>,
    leftover: Vec<u8>,
) -> Option<(Conn, Vec<u8>)> {
    let shared = &shard.shared;
    if shared.subscribers.count() == 0 {
        crate::channel::accept::refuse(
            conn,
            Refusal::Unavailable("no engine subscribed to routes"),
        )
        .await;
        return None;
    }
    let cfg = shard.config();
    let body_ch = shard.create_local(cfg.buffer_bytes, cfg.ingress_timeout());
    let resp_ch = shard.create_local(cfg.buffer_bytes, cfg.ingress_timeout());
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in &head.headers {
        headers
            .entry(k.clone())
            .and_modify(|e| {
                e.push_str(", ");
                e.push_str(v);
            })
            .or_insert_with(|| v.clone());
    }
    let request_id = uuid::Uuid::new_v4().to_string();
    let event = serde_json::json!({
        "type": "http_request",
        "request_id": request_id,
        "route_id": route.spec.route_id,
        "method": head.method.as_str(),
        "path": head.path,
        "path_params": path_params,
        "query_params": query_params(&head.query),
        "headers": headers,
        "request_body": new_ref(&body_ch, Direction::Read),
        "response": new_ref(&resp_ch, Direction::Write),
    });
    // The relay itself is the body channel's writer and the response channel's reader.
    let conn = Rc::new(conn);
    body_ch.set_slot(Direction::Write, Slot::Connected);
    body_ch.state.borrow_mut().writer_conn = Some(conn.clone());
    resp_ch.set_slot(Direction::Read, Slot::Connected);
    resp_ch.state.borrow_mut().reader_conn = Some(conn.clone());
    if !shared.subscribers.publish(event.to_string()) {
        for ch in [&body_ch, &resp_ch] {
            ch.finish(StreamEnd::Aborted);
            shard.remove(ch);
        }
        drop((body_ch, resp_ch));
        let conn = Rc::try_unwrap(conn).ok()?;
        crate::channel::accept::refuse(
            conn,
            Refusal::Unavailable("no engine subscribed to routes"),
        )
        .await;
        return None;
    }
    tracing::debug!(route = %route.spec.route_id, %request_id, "ingress request published");
    let feeder = {
        let (ch, conn, head) = (body_ch.clone(), conn.clone(), head.clone());
        ring::spawn(async move {
            match crate::http::upload::feed_body(&ch, &conn, &head, leftover).await {
                Ok((_, rest)) => {
                    ch.finish(StreamEnd::Clean);
                    Some(rest)
                }
                Err(e) => {
                    ch.finish(e);
                    None
                }
            }
        })
    };
    let watch = crate::http::response::ClientWatch::Elsewhere;
    let reusable =
        crate::http::response::run_http_reader(shard, &resp_ch, &conn, &head, Vec::new(), watch)
            .await
            .is_some();
    // A function that answered without reading the whole body: the rest is not wanted.
    if body_ch.end().is_none() {
        body_ch.finish(StreamEnd::Aborted);
    }
    let rest = feeder.await.ok().flatten();
    for (ch, dir) in [(&body_ch, Direction::Write), (&resp_ch, Direction::Read)] {
        {
            let mut st = ch.state.borrow_mut();
            st.writer_conn.take_if(|_| dir == Direction::Write);
            st.reader_conn.take_if(|_| dir == Direction::Read);
        }
        ch.set_slot(dir, Slot::Finished);
        shard.end_finished(ch);
    }
    let conn = Rc::try_unwrap(conn).ok()?;
    match rest {
        Some(rest) if reusable => Some((conn, rest)),
        _ => {
            conn.shutdown();
            None
        }
    }
}
