//! Engines subscribed to the event stream (`GET /v1/events`): the registry the HTTP ingress
//! publishes requests to and the control listener adds subscribers to. Shared by every
//! shard thread, hence a `Mutex` (touched once per routed request, never per byte).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use tokio::sync::mpsc;

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
