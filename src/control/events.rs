//! The event stream (`GET /v1/events`, a WebSocket on the control listener): the control
//! engine subscribes here and receives one `http_request` event (a text frame) per public
//! request that matched one of its routes.

use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::channel::ping_reader::PingReader;
use crate::channel::Shared;
use crate::error::Refusal;
use crate::ring::{self, Conn};
use crate::subscribers::Outgoing;
use crate::wire::frame::{close_frame, server_frame, Opcode};
use crate::wire::head::RequestHead;
use crate::wire::response::switching_protocols;

/// Largest frame accepted from a subscriber (it has no reason to send data).
const MAX_SUBSCRIBER_FRAME: u64 = 64 << 10;

/// Upgrades the connection and streams events until the subscriber leaves. A head that
/// is not a valid WebSocket upgrade is refused (returned: the caller answers).
pub async fn serve_events(
    shared: Arc<Shared>,
    conn: Rc<Conn>,
    head: RequestHead,
    leftover: Vec<u8>,
) -> Result<(), (Rc<Conn>, Refusal)> {
    let key = match head.websocket_key() {
        Ok(key) => key,
        Err(why) => return Err((conn, Refusal::BadRequest(why))),
    };
    if conn.write_all(switching_protocols(key)).await.is_err() {
        return Ok(());
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = shared.subscribers.add(tx.clone());
    tracing::info!(subscriber = id, "engine subscribed to events");
    let listener = ring::spawn(read_subscriber(conn.clone(), tx, leftover));
    while let Some(out) = rx.recv().await {
        let bytes = match out {
            Outgoing::Event(json) => server_frame(Opcode::Text, json.as_bytes()),
            Outgoing::Pong(frames) => frames,
            Outgoing::Close => {
                let _ = conn.write_all(close_frame(1000, "")).await;
                break;
            }
        };
        if conn.write_all(bytes).await.is_err() {
            break;
        }
    }
    shared.subscribers.remove(id);
    tracing::info!(subscriber = id, "engine unsubscribed");
    conn.shutdown();
    let _ = listener.await;
    Ok(())
}

/// Reads the subscriber's frames: answers pings, ends on Close, EOF or garbage.
async fn read_subscriber(conn: Rc<Conn>, tx: mpsc::UnboundedSender<Outgoing>, leftover: Vec<u8>) {
    let mut peer = PingReader::new(MAX_SUBSCRIBER_FRAME, leftover);
    while let Ok(Some(batch)) = peer.next(&conn).await {
        if !batch.pings.is_empty() {
            let frames = batch
                .pings
                .drain(..)
                .flat_map(|p| server_frame(Opcode::Pong, &p))
                .collect();
            let _ = tx.send(Outgoing::Pong(frames));
        }
        if batch.close.is_some() {
            break;
        }
    }
    let _ = tx.send(Outgoing::Close);
}
