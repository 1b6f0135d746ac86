//! HTTP endpoints for functions. A public request that matches a route the
//! control engine registered gets two channels on the shard that accepted it: the request
//! body flows into one (the function reads it), the function writes its answer into the
//! other, which is streamed back as the HTTP response. The engine learns of the request
//! through its event stream (`GET /v1/events` on the control listener).

use std::collections::BTreeMap;
use std::rc::Rc;

use super::reader::{run_http_reader, ClientWatch};
use super::writer::feed_body;
use super::Served;
use crate::channel::Shard;
use crate::error::{Refusal, StreamEnd};
use crate::keys::channel_ref;
use crate::ring::{self, Conn};
use crate::wire::head::RequestHead;
use crate::wire::ingress::{query_params, IngressRoute};
use crate::wire::route::Direction;

const NO_ENGINE: Refusal = Refusal::Unavailable("no engine subscribed to routes");

/// Serves one request for a registered route on this shard.
pub async fn serve_ingress(
    shard: &Rc<Shard>,
    conn: Rc<Conn>,
    head: RequestHead,
    route: IngressRoute,
    path_params: BTreeMap<String, String>,
    leftover: Vec<u8>,
) -> Served {
    let shared = &shard.shared;
    if shared.subscribers.count() == 0 {
        return Served::Refused(conn, NO_ENGINE);
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
    let body_end = body_ch.claim(Direction::Write, &conn);
    let resp_end = resp_ch.claim(Direction::Read, &conn);
    if !shared.subscribers.publish(event.to_string()) {
        for ch in [&body_ch, &resp_ch] {
            ch.finish(StreamEnd::Aborted);
            shard.remove(ch);
        }
        body_end.release(shard);
        resp_end.release(shard);
        return Served::Refused(conn, NO_ENGINE);
    }
    tracing::debug!(route = %route.spec.route_id, %request_id, "ingress request published");
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
