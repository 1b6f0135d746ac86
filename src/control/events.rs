//! The event stream (`GET /v1/events`, a WebSocket on the control listener): the control
//! engine subscribes here and receives one `http_request` event (a text frame) per public
//! request that matched one of its routes.
//!
//! One task writes to the subscriber's socket (events, Pongs, the Close), one write at a
//! time; another reads its pings and Close. A subscriber that stops reading is dropped:
//! an event write that does not finish within `subscriber_stall_timeout_ms` resets its
//! socket (a full socket cannot take a Close frame), and a queue that stays full that long
//! gets it a Close `1008` once the write in flight ends. Either way every request it had
//! not passed on to a function is answered at once (see `Subscribers::orphan`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::channel::ping_reader::PingReader;
use crate::channel::state::MAX_OWED_PONGS;
use crate::channel::Shared;
use crate::config::CLOSE_TIMEOUT;
use crate::error::Refusal;
use crate::ring::{self, Conn, Cut, Watchdog};
use crate::subscribers::{Delivery, Queued};
use crate::wire::frame::{close_frame, server_frame, Opcode};
use crate::wire::head::RequestHead;
use crate::wire::response::switching_protocols;

/// Largest frame accepted from a subscriber (it has no reason to send data).
const MAX_SUBSCRIBER_FRAME: u64 = 64 << 10;

/// Most events written to a subscriber in one write.
const EVENTS_PER_WRITE: usize = 64;

/// What the subscriber's reader tells its writer (same shard: no locks).
#[derive(Default)]
struct FromPeer {
    /// Pong frames owed, ready to send (at most `MAX_OWED_PONGS`).
    pongs: RefCell<Vec<u8>>,
    pong_count: Cell<usize>,
    /// The subscriber sent its Close, went away or broke the protocol.
    done: Cell<bool>,
    wake: Notify,
}

/// How a subscriber's stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It closed (or its socket failed): answer its Close.
    Peer,
    /// A write to it did not finish in time: its socket was reset.
    WriteStalled,
    /// Its queue stayed full for the stall timeout: the registry dropped it.
    QueueStalled,
}

/// Upgrades the connection and streams events until the subscriber leaves or is dropped.
/// A head that is not a valid WebSocket upgrade is refused (returned: the caller answers).
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
    let mut sub = shared.subscribers.add();
    let id = sub.id;
    tracing::info!(subscriber = id, "engine subscribed to events");
    let peer = Rc::new(FromPeer::default());
    let listener = ring::spawn(read_subscriber(conn.clone(), peer.clone(), leftover));
    let stall = shared.config.subscriber_stall_timeout();
    // Cuts a write that does not finish in time (never a `timeout` around the write).
    let dog = Watchdog::new(&conn, Cut::Reset);
    // Events written whose request no function has taken up yet: told if we drop it.
    let mut passed_on: Vec<Arc<Delivery>> = Vec::new();
    let mut prune_at = EVENTS_PER_WRITE;
    let mut batch: Vec<u8> = Vec::new();
    let ended = loop {
        if sub.evicted.load(Relaxed) {
            break Ended::QueueStalled;
        }
        if peer.done.get() {
            break Ended::Peer;
        }
        batch.clear();
        let pongs = std::mem::take(&mut *peer.pongs.borrow_mut());
        peer.pong_count.set(0);
        batch.extend_from_slice(&pongs);
        let mut events = 0;
        while events < EVENTS_PER_WRITE {
            let Ok(q) = sub.rx.try_recv() else { break };
            let Queued { json, delivery } = q;
            batch.extend_from_slice(&server_frame(Opcode::Text, json.as_bytes()));
            passed_on.push(delivery);
            events += 1;
        }
        if batch.is_empty() {
            tokio::select! {
                q = sub.rx.recv() => match q {
                    Some(Queued { json, delivery }) => {
                        batch.extend_from_slice(&server_frame(Opcode::Text, json.as_bytes()));
                        passed_on.push(delivery);
                    }
                    // The registry let go of us: dropped for a full queue.
                    None => break Ended::QueueStalled,
                },
                _ = peer.wake.notified() => continue,
            }
        }
        dog.expire_in(stall);
        let res = conn.write_all(std::mem::take(&mut batch)).await;
        dog.disarm();
        if res.is_err() {
            break if dog.fired() {
                Ended::WriteStalled
            } else {
                Ended::Peer
            };
        }
        if passed_on.len() >= prune_at {
            passed_on.retain(|d| d.is_pending());
            prune_at = (passed_on.len() * 2).max(EVENTS_PER_WRITE);
        }
    };
    shared.subscribers.remove(id);
    // No more events come in; every request it still held is answered now.
    sub.rx.close();
    while let Ok(q) = sub.rx.try_recv() {
        shared.subscribers.orphan(&q.delivery);
    }
    let orphaned = passed_on.iter().filter(|d| d.is_pending()).count();
    for d in &passed_on {
        shared.subscribers.orphan(d);
    }
    match ended {
        Ended::Peer => {
            tracing::info!(subscriber = id, "engine unsubscribed");
            dog.expire_in(CLOSE_TIMEOUT);
            let _ = conn.write_all(close_frame(1000, "")).await;
        }
        Ended::QueueStalled => {
            tracing::warn!(
                subscriber = id,
                orphaned,
                "engine dropped: its queue stayed full"
            );
            // 1008: it broke the relay's policy (read its events in time).
            dog.expire_in(CLOSE_TIMEOUT.min(stall));
            let _ = conn
                .write_all(close_frame(1008, "subscriber too slow"))
                .await;
        }
        Ended::WriteStalled => {
            tracing::warn!(
                subscriber = id,
                orphaned,
                "engine dropped: it stopped reading"
            );
        }
    }
    conn.shutdown();
    let _ = listener.await;
    Ok(())
}

/// Reads the subscriber's frames: owes pongs for pings, ends on Close, EOF or garbage.
async fn read_subscriber(conn: Rc<Conn>, peer: Rc<FromPeer>, leftover: Vec<u8>) {
    let mut reader = PingReader::new(MAX_SUBSCRIBER_FRAME, leftover);
    while let Ok(Some(batch)) = reader.next(&conn).await {
        for p in batch.pings.drain(..) {
            // Past the limit, pings go unanswered until the owed pongs are sent.
            if peer.pong_count.get() < MAX_OWED_PONGS {
                peer.pongs
                    .borrow_mut()
                    .extend_from_slice(&server_frame(Opcode::Pong, &p));
                peer.pong_count.set(peer.pong_count.get() + 1);
            }
        }
        peer.wake.notify_one();
        if batch.close.is_some() {
            break;
        }
    }
    peer.done.set(true);
    peer.wake.notify_one();
}
