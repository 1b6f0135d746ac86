//! The control API's routes: create, inspect and delete channels; health, readiness,
//! metrics. Request in, response out — reading requests off the connection is the
//! dispatch layer's (`serve::control`).

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::channel::{new_owned_id, owner_of, ChannelInfo, Command, Shard, Shared};
use crate::config::{MAX_BUFFER_BYTES, MAX_TTL_S, MIN_BUFFER_BYTES};
use crate::error::{Refusal, Unavailable};
use crate::keys::{channel_ref, EndKeys};
use crate::wire::head::Method;
use crate::wire::route::Direction;

pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// Set when the answer is a refusal: the connection's side counts it and writes its
    /// log line (it knows the peer).
    pub refusal: Option<Refusal>,
}

impl Response {
    fn json(status: u16, v: Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: v.to_string(),
            refusal: None,
        }
    }

    pub fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: crate::wire::response::error_body(code, &message.into()),
            refusal: None,
        }
    }

    /// The response on the wire.
    pub fn render(&self, close: bool) -> Vec<u8> {
        crate::wire::response::full_response(self.status, self.content_type, &self.body, close)
    }

    fn empty(status: u16) -> Response {
        Response {
            status,
            content_type: "application/json",
            body: String::new(),
            refusal: None,
        }
    }
}

/// Whether the request carries the configured bearer token (always, when none is set).
pub fn authorized(shared: &Shared, authorization: Option<&str>) -> bool {
    match &shared.config.control_token {
        None => true,
        Some(token) => {
            let expected = format!("Bearer {token}");
            authorization.is_some_and(|a| bool::from(a.as_bytes().ct_eq(expected.as_bytes())))
        }
    }
}

/// A refusal from `error.rs` as a control response (counted and logged like the data
/// plane's once it is answered).
fn refused(refusal: Refusal) -> Response {
    let (status, code, msg) = refusal.status();
    let mut r = Response::error(status, code, msg);
    r.refusal = Some(refusal);
    r
}

fn shard_unavailable() -> Response {
    refused(Refusal::Unavailable(Unavailable::ShardUnavailable))
}

/// `/healthz`: `200` while every shard's loop turns; `503` naming the shards that stopped.
fn health(shared: &Shared) -> Response {
    let failing = crate::health::failing(&shared.heartbeats);
    if failing.is_empty() {
        return Response::json(200, json!({"status": "ok"}));
    }
    let shards: Vec<Value> = failing
        .iter()
        .map(|f| json!({"shard": f.shard, "state": f.state, "silent_s": f.silent_s}))
        .collect();
    Response::json(503, json!({"status": "failing", "shards": shards}))
}

pub fn unauthorized() -> Response {
    Response::error(401, "unauthorized", "missing or wrong bearer token")
}

/// Whether a route takes a request body (`POST /v1/channels`, `PUT /v1/routes`); every
/// other request with a body is refused before it is read (`serve::request`).
pub fn takes_body(method: &Method, path: &str) -> bool {
    // Matched as `handle` matches routes (leading slashes trimmed).
    matches!(
        (method, path.trim_start_matches('/')),
        (Method::Post, "v1/channels") | (Method::Put, "v1/routes")
    )
}

/// `GET /metrics`, rendered on a thread of its own: it reads `/proc` (listing every open
/// descriptor, which takes milliseconds with tens of thousands), and the shard that took
/// the scrape goes on forwarding meanwhile.
async fn metrics(shared: &Arc<Shared>) -> Response {
    let (tx, rx) = oneshot::channel();
    let stats = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("chanrelay-metrics".into())
        .spawn(move || {
            let _ = tx.send(crate::metrics::render(&stats.stats));
        });
    match (spawned, rx.await) {
        (Ok(_), Ok(body)) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4",
            body,
            refusal: None,
        },
        _ => Response::error(500, "internal", "could not render the metrics"),
    }
}

/// Serves one control request.
pub async fn handle(
    shard: &Rc<Shard>,
    method: &Method,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Response {
    let shared = &shard.shared;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // Health checks carry no token (a load balancer cannot send one) and reveal nothing.
    match (method, segments.as_slice()) {
        (Method::Get, ["healthz"]) => return health(shared),
        (Method::Get, ["readyz"]) => {
            return if shared.draining.load(Relaxed) {
                Response::json(503, json!({"ready": false, "reason": "draining"}))
            } else {
                Response::json(200, json!({"ready": true}))
            }
        }
        _ => {}
    }
    if !authorized(shared, authorization) {
        return unauthorized();
    }
    if let (Method::Get | Method::Delete, ["v1", "channels", id]) = (method, segments.as_slice()) {
        if let Err(refusal) = shard.check_node(id) {
            return refused(refusal);
        }
    }
    match (method, segments.as_slice()) {
        (Method::Get, ["metrics"]) => metrics(shared).await,
        (Method::Post, ["v1", "channels"]) => create(shard, body).await,
        (Method::Put, ["v1", "routes"]) => put_routes(shared, body),
        (Method::Get, ["v1", "routes"]) => {
            let routes = shared.routes.read().expect("routes lock");
            let specs: Vec<_> = routes.iter().map(|r| r.spec.clone()).collect();
            Response::json(
                200,
                json!({ "routes": specs, "subscribers": shared.subscribers.count() }),
            )
        }
        (Method::Get, ["v1", "channels", id]) => inspect(shard, id).await,
        (Method::Delete, ["v1", "channels", id]) => delete(shard, id).await,
        (_, ["healthz" | "readyz" | "metrics"]) | (_, ["v1", "channels", ..]) => Response::error(
            405,
            "method_not_allowed",
            "method not allowed on this route",
        ),
        _ => Response::error(404, "not_found", "no such route"),
    }
}

/// Reads an optional non-negative integer field within `[lo, hi]`.
fn int_field(
    obj: &serde_json::Map<String, Value>,
    name: &str,
    lo: u64,
    hi: u64,
) -> Result<Option<u64>, Response> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(n) => Err(Response::error(
                400,
                "out_of_range",
                format!("{name} must be between {lo} and {hi}, got {n}"),
            )),
            None => Err(Response::error(
                400,
                "invalid_field",
                format!("{name} must be a non-negative integer"),
            )),
        },
    }
}

/// The options of `POST /v1/channels`, `(buffer_bytes, ttl_s)`: a blank body takes the
/// defaults; otherwise a JSON object whose optional `buffer_bytes` and `ttl_s` are integers
/// within their limits. No I/O, so the fuzzer drives it directly.
pub fn parse_create_body(
    body: &[u8],
    default_buffer_bytes: u64,
    default_ttl_s: u64,
) -> Result<(u64, u64), Response> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((default_buffer_bytes, default_ttl_s));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Response::error(400, "invalid_json", format!("invalid JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(Response::error(
            400,
            "invalid_json",
            "body must be a JSON object",
        ));
    };
    let buffer_bytes = int_field(
        obj,
        "buffer_bytes",
        MIN_BUFFER_BYTES as u64,
        MAX_BUFFER_BYTES as u64,
    )?;
    let ttl_s = int_field(obj, "ttl_s", 1, MAX_TTL_S)?;
    Ok((
        buffer_bytes.unwrap_or(default_buffer_bytes),
        ttl_s.unwrap_or(default_ttl_s),
    ))
}

async fn create(shard: &Rc<Shard>, body: &[u8]) -> Response {
    let shared = &shard.shared;
    if shared.draining.load(Relaxed) {
        return refused(Refusal::Unavailable(Unavailable::Draining));
    }
    let cfg = &shared.config;
    if shard.unconnected_channels() >= cfg.max_unconnected_channels {
        // Refs handed out that nobody uses would otherwise pile up until their TTL.
        return refused(Refusal::Unavailable(Unavailable::TooManyUnconnected));
    }
    let (buffer_bytes, ttl_s) = match parse_create_body(body, cfg.buffer_bytes as u64, cfg.ttl_s) {
        Ok(options) => options,
        Err(r) => return r,
    };
    let target = placement(shard);
    let id = new_owned_id(shard.node_id(), target, shard.shard_count());
    let keys = EndKeys::random();
    let (buffer_bytes, ttl) = (buffer_bytes as usize, Duration::from_secs(ttl_s));
    if target == shard.index {
        shard.create(id.clone(), keys.clone(), buffer_bytes, ttl);
    } else {
        let (tx, rx) = oneshot::channel();
        let msg = Command::Create {
            id: id.clone(),
            keys: keys.clone(),
            buffer_bytes,
            ttl,
            reply: tx,
        };
        // Answer only once the channel exists, so its ref never comes back 404.
        if shared.commands[target].send(msg).is_err() || rx.await.is_err() {
            return shard_unavailable();
        }
    }
    Response::json(
        201,
        json!({
            "channel_id": id,
            "writer": channel_ref(&id, &keys.writer, Direction::Write),
            "reader": channel_ref(&id, &keys.reader, Direction::Read),
            "buffer_bytes": buffer_bytes,
            "ttl_s": ttl_s,
        }),
    )
}

/// The shard a new channel goes to: the one that took the request (no hop to another
/// thread), unless it holds more channels than the least loaded shard — then that one, so
/// a single busy control connection still spreads its channels over every core.
fn placement(shard: &Shard) -> usize {
    let counts = &shard.shared.shard_channels;
    let here = counts[shard.index].load(Relaxed);
    let (least, min) = counts
        .iter()
        .map(|c| c.load(Relaxed))
        .enumerate()
        .min_by_key(|&(_, n)| n)
        .expect("at least one shard");
    if here <= min {
        shard.index
    } else {
        least
    }
}

/// Replaces the route table with the engine's list.
fn put_routes(shared: &Arc<Shared>, body: &[u8]) -> Response {
    use crate::wire::ingress::{IngressRoute, RouteSpec, MAX_ROUTES};
    let specs: Vec<RouteSpec> = match serde_json::from_slice(body) {
        Ok(s) => s,
        Err(e) => {
            return Response::error(
                400,
                "invalid_json",
                format!("expected [{{\"method\",\"path\",\"route_id\"}}]: {e}"),
            )
        }
    };
    if specs.len() > MAX_ROUTES {
        return Response::error(400, "out_of_range", format!("at most {MAX_ROUTES} routes"));
    }
    let mut routes = Vec::with_capacity(specs.len());
    for spec in specs {
        match IngressRoute::compile(spec) {
            Ok(r) => routes.push(r),
            Err(m) => return Response::error(400, "invalid_route", m),
        }
    }
    let n = routes.len();
    *shared.routes.write().expect("routes lock") = routes;
    Response::json(200, json!({ "routes": n }))
}

async fn inspect(shard: &Rc<Shard>, id: &str) -> Response {
    let owner = owner_of(id, shard.shard_count());
    if owner == shard.index {
        return inspect_reply(Ok::<_, ()>(shard.inspect(id)));
    }
    let (tx, rx) = oneshot::channel();
    let msg = Command::Inspect {
        id: id.to_string(),
        reply: tx,
    };
    if shard.shared.commands[owner].send(msg).is_err() {
        return shard_unavailable();
    }
    inspect_reply(rx.await)
}

fn inspect_reply<E>(info: Result<Option<ChannelInfo>, E>) -> Response {
    match info {
        Ok(Some(info)) => Response::json(200, serde_json::to_value(info).expect("serializable")),
        Ok(None) => Response::error(404, "not_found", "no such channel"),
        Err(_) => shard_unavailable(),
    }
}

async fn delete(shard: &Rc<Shard>, id: &str) -> Response {
    let owner = owner_of(id, shard.shard_count());
    if owner == shard.index {
        return delete_reply(Ok::<_, ()>(shard.delete(id)));
    }
    let (tx, rx) = oneshot::channel();
    let msg = Command::Delete {
        id: id.to_string(),
        reply: tx,
    };
    if shard.shared.commands[owner].send(msg).is_err() {
        return shard_unavailable();
    }
    delete_reply(rx.await)
}

fn delete_reply<E>(deleted: Result<bool, E>) -> Response {
    match deleted {
        Ok(true) => Response::empty(204),
        Ok(false) => Response::error(404, "not_found", "no such channel"),
        Err(_) => shard_unavailable(),
    }
}
