//! HTTP endpoints for functions. A public request that matches a route the
//! control engine registered gets two channels on the shard that accepted it: the request
//! body flows into one (the function reads it), the function writes its answer into the
//! other, which is streamed back as the HTTP response. The engine learns of the request
//! through its event stream (`GET /v1/events` on the control listener).

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use super::reader::{run_http_reader, ClientWatch};
use super::writer::feed_body;
use super::Served;
use crate::channel::{Kind, Shard};
use crate::error::{Refusal, StreamEnd, Unavailable};
use crate::keys::channel_ref;
use crate::ring::{self, Conn};
use crate::subscribers::{Delivery, NotPublished, Subscribers};
use crate::wire::head::RequestHead;
use crate::wire::ingress::{query_params, IngressRoute};
use crate::wire::route::Direction;

fn refusal(why: NotPublished) -> Refusal {
    Refusal::Unavailable(match why {
        NotPublished::NoSubscriber => Unavailable::NoEngine,
        NotPublished::AllBusy => Unavailable::EnginesBusy,
        NotPublished::TooManyPending => Unavailable::TooManyPending,
    })
}

/// A shard's routed requests that no function has taken up yet, by the ids of their two
/// channels: a connection claiming an end of one of them takes the request up.
#[derive(Default)]
pub struct Waiting {
    by_channel: RefCell<HashMap<String, Arc<Delivery>>>,
}

impl Waiting {
    /// A connection claimed an end of `channel_id`: if that is a routed request's channel,
    /// a function has taken the request up (it leaves the pending count).
    pub fn end_connected(&self, subscribers: &Subscribers, channel_id: &str) {
        if self.by_channel.borrow().is_empty() {
            return;
        }
        let taken = self.by_channel.borrow_mut().remove(channel_id);
        if let Some(d) = taken {
            subscribers.taken(&d);
        }
    }
}

/// A published request while it is served: leaves the pending count when it ends, if no
/// function took it up before.
struct Published<'a> {
    subscribers: &'a Subscribers,
    waiting: &'a Waiting,
    ids: [String; 2],
    delivery: Arc<Delivery>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        let mut by_channel = self.waiting.by_channel.borrow_mut();
        for id in &self.ids {
            by_channel.remove(id);
        }
        self.subscribers.settle(&self.delivery);
    }
}

/// Serves one request for a registered route on this shard.
pub async fn serve_ingress(
    shard: &Rc<Shard>,
    waiting: &Waiting,
    conn: Rc<Conn>,
    head: RequestHead,
    route: IngressRoute,
    path_params: BTreeMap<String, String>,
    leftover: Vec<u8>,
) -> Served {
    let shared = &shard.shared;
    if shared.subscribers.count() == 0 {
        return Served::Refused(conn, Refusal::Unavailable(Unavailable::NoEngine));
    }
    // Checked again (exactly) when publishing; this spares the channels' set-up.
    if shared.subscribers.pending() >= shared.subscribers.max_pending() {
        return Served::Refused(conn, Refusal::Unavailable(Unavailable::TooManyPending));
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
        "request_body": channel_ref(&body_ch.id, body_ch.key(Direction::Read), Direction::Read),
        "response": channel_ref(&resp_ch.id, resp_ch.key(Direction::Write), Direction::Write),
    });
    // The relay itself is the body channel's writer and the response channel's reader.
    let body_end = body_ch.claim(Direction::Write, &conn, Kind::Http);
    let resp_end = resp_ch.claim(Direction::Read, &conn, Kind::Http);
    let delivery = match shared.subscribers.publish(event.to_string()) {
        Ok(d) => d,
        Err(why) => {
            for ch in [&body_ch, &resp_ch] {
                ch.finish(StreamEnd::Aborted);
                shard.remove(ch);
            }
            body_end.release(shard);
            resp_end.release(shard);
            return Served::Refused(conn, refusal(why));
        }
    };
    tracing::debug!(route = %route.spec.route_id, %request_id, "ingress request published");
    {
        let mut by_channel = waiting.by_channel.borrow_mut();
        by_channel.insert(body_ch.id.clone(), delivery.clone());
        by_channel.insert(resp_ch.id.clone(), delivery.clone());
    }
    let _published = Published {
        subscribers: &shared.subscribers,
        waiting,
        ids: [body_ch.id.clone(), resp_ch.id.clone()],
        delivery: delivery.clone(),
    };
    // Its engine dropped before a function came: answer now, not at `ingress_timeout_ms`.
    let orphan_watch = {
        let (body_ch, resp_ch, shard) = (body_ch.clone(), resp_ch.clone(), shard.clone());
        ring::spawn(async move {
            delivery.orphaned.notified().await;
            if delivery.is_orphaned() {
                for ch in [&body_ch, &resp_ch] {
                    ch.finish(StreamEnd::EngineDropped);
                    shard.remove(ch);
                }
            }
        })
    };
    let feeder = {
        let (ch, conn, head, shard) = (body_ch.clone(), conn.clone(), head.clone(), shard.clone());
        ring::spawn(async move {
            match feed_body(&ch, &conn, &head, leftover, &shard.pool).await {
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
    let watch = ClientWatch::Elsewhere;
    let reusable = run_http_reader(shard, &resp_ch, &conn, &head, Vec::new(), watch)
        .await
        .is_some();
    // A function that answered without reading the whole body: the rest is not wanted.
    if body_ch.end().is_none() {
        body_ch.finish(StreamEnd::Aborted);
    }
    let rest = feeder.await.ok().flatten();
    // Not an in-flight read: a task waiting on a `Notify` may be dropped.
    orphan_watch.abort();
    body_end.release(shard);
    resp_end.release(shard);
    // Still held elsewhere (a task not finished): not reusable.
    if Rc::strong_count(&conn) != 1 {
        return Served::Closed;
    }
    match rest {
        Some(rest) if reusable => Served::KeepAlive(conn, rest),
        _ => {
            conn.shutdown();
            Served::Closed
        }
    }
}
