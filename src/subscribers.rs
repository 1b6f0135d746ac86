//! Engines subscribed to the event stream (`GET /v1/events`): the registry the HTTP ingress
//! publishes requests to and the control listener adds subscribers to. Shared by every
//! shard thread, hence a `Mutex` (touched once per routed request, never per byte).
//!
//! Everything here is bounded: each subscriber's queue (`subscriber_queue_events`), how
//! long a subscriber's queue may stay full before it is dropped
//! (`subscriber_stall_timeout_ms`), and the routed requests published but not yet taken up
//! by a function, process-wide (`max_pending_ingress_requests`). A publish never waits.

use std::sync::atomic::Ordering::{AcqRel, Relaxed};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

/// One published routed request, shared by the request (on the shard that accepted it)
/// and the subscriber it went to (on the shard serving that engine). It leaves the pending
/// count exactly once: when a function connects (`taken`), when the request ends
/// (`settle`), or when its subscriber is dropped (`orphan`).
pub struct Delivery {
    state: AtomicU8,
    /// Wakes the request when its subscriber was dropped before a function took it up.
    pub orphaned: Notify,
}

const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const ORPHANED: u8 = 2;

impl Delivery {
    fn new() -> Delivery {
        Delivery {
            state: AtomicU8::new(PENDING),
            orphaned: Notify::new(),
        }
    }

    /// Still waiting for a function.
    pub fn is_pending(&self) -> bool {
        self.state.load(Relaxed) == PENDING
    }

    /// Its subscriber was dropped before a function took it up.
    pub fn is_orphaned(&self) -> bool {
        self.state.load(Relaxed) == ORPHANED
    }

    fn leave_pending(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, AcqRel, Relaxed)
            .is_ok()
    }
}

/// An event waiting in a subscriber's queue.
pub struct Queued {
    pub json: String,
    pub delivery: Arc<Delivery>,
}

/// What a subscriber's serving task holds: its queue, and the flag the registry raises
/// when it drops the subscriber for a queue that stayed full.
pub struct Subscription {
    pub id: u64,
    pub rx: mpsc::Receiver<Queued>,
    pub evicted: Arc<AtomicBool>,
}

/// Why a routed request could not be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotPublished {
    NoSubscriber,
    /// Every subscriber's queue is full.
    AllBusy,
    /// `max_pending_ingress_requests` requests already wait for a function.
    TooManyPending,
}

struct Entry {
    id: u64,
    tx: mpsc::Sender<Queued>,
    /// Since when a publish has found its queue full with nothing taken from it since.
    full_since: Option<Instant>,
    evicted: Arc<AtomicBool>,
}

/// Engines subscribed to the event stream; each request goes to one of them, in turn.
pub struct Subscribers {
    list: Mutex<Vec<Entry>>,
    next_id: std::sync::atomic::AtomicU64,
    turn: AtomicUsize,
    /// Published requests no function has taken up yet, all shards together.
    pending: AtomicUsize,
    queue_events: usize,
    stall: Duration,
    max_pending: usize,
}

impl Subscribers {
    pub fn new(queue_events: usize, stall: Duration, max_pending: usize) -> Subscribers {
        Subscribers {
            list: Mutex::new(Vec::new()),
            next_id: Default::default(),
            turn: Default::default(),
            pending: AtomicUsize::new(0),
            queue_events: queue_events.max(1),
            stall,
            max_pending,
        }
    }

    pub fn add(&self) -> Subscription {
        let id = self.next_id.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(self.queue_events);
        let evicted = Arc::new(AtomicBool::new(false));
        self.list.lock().expect("subscribers lock").push(Entry {
            id,
            tx,
            full_since: None,
            evicted: evicted.clone(),
        });
        Subscription { id, rx, evicted }
    }

    pub fn remove(&self, id: u64) {
        self.list
            .lock()
            .expect("subscribers lock")
            .retain(|e| e.id != id);
    }

    pub fn count(&self) -> usize {
        self.list.lock().expect("subscribers lock").len()
    }

    /// Published requests that no function has taken up yet.
    pub fn pending(&self) -> usize {
        self.pending.load(Relaxed)
    }

    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Queues `event` for one live subscriber whose queue has room, starting with the next
    /// in turn; never waits. A subscriber whose queue has stayed full for the stall timeout
    /// (nothing taken from it while publishes kept finding it full) is dropped here.
    pub fn publish(&self, event: String) -> Result<Arc<Delivery>, NotPublished> {
        let mut list = self.list.lock().expect("subscribers lock");
        list.retain(|e| !e.tx.is_closed());
        if list.is_empty() {
            return Err(NotPublished::NoSubscriber);
        }
        // Checked and counted under the lock: the cap holds exactly.
        if self.pending.load(Relaxed) >= self.max_pending {
            return Err(NotPublished::TooManyPending);
        }
        let delivery = Arc::new(Delivery::new());
        let mut item = Queued {
            json: event,
            delivery: delivery.clone(),
        };
        let n = list.len();
        let start = self.turn.fetch_add(1, Relaxed) % n;
        let now = Instant::now();
        let mut sent = false;
        for k in 0..n {
            let e = &mut list[(start + k) % n];
            match e.tx.try_send(item) {
                Ok(()) => {
                    e.full_since = None;
                    sent = true;
                    break;
                }
                Err(mpsc::error::TrySendError::Full(it)) => {
                    item = it;
                    match e.full_since {
                        None => e.full_since = Some(now),
                        Some(t) if now.duration_since(t) >= self.stall => {
                            e.evicted.store(true, Relaxed);
                        }
                        Some(_) => {}
                    }
                }
                Err(mpsc::error::TrySendError::Closed(it)) => item = it,
            }
        }
        list.retain(|e| !e.evicted.load(Relaxed));
        if !sent {
            return Err(if list.is_empty() {
                NotPublished::NoSubscriber
            } else {
                NotPublished::AllBusy
            });
        }
        self.pending.fetch_add(1, Relaxed);
        Ok(delivery)
    }

    /// A function connected to the request's channels: it no longer counts as pending, and
    /// losing its subscriber no longer affects it. False if it had already left pending.
    pub fn taken(&self, d: &Delivery) -> bool {
        self.leave(d, TAKEN)
    }

    /// The request ended (answered, timed out, client gone) before a function took it up.
    pub fn settle(&self, d: &Delivery) {
        self.leave(d, TAKEN);
    }

    /// Its subscriber was dropped: a request no function has taken up yet is told at once.
    pub fn orphan(&self, d: &Delivery) {
        if self.leave(d, ORPHANED) {
            d.orphaned.notify_one();
        }
    }

    fn leave(&self, d: &Delivery, to: u8) -> bool {
        let left = d.leave_pending(to);
        if left {
            self.pending.fetch_sub(1, Relaxed);
        }
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_millis(50);

    #[test]
    fn a_full_queue_passes_the_request_on_and_a_stalled_one_is_dropped() {
        let subs = Subscribers::new(1, STALL, 100);
        assert_eq!(
            subs.publish("x".into()).err(),
            Some(NotPublished::NoSubscriber)
        );
        let mut a = subs.add();
        let mut b = subs.add();
        let d1 = subs.publish("1".into()).unwrap();
        let d2 = subs.publish("2".into()).unwrap();
        // Both queues hold one event: the next publish finds no room anywhere.
        assert_eq!(subs.publish("3".into()).err(), Some(NotPublished::AllBusy));
        assert_eq!(subs.pending(), 2);
        // `b` takes its event; `a` does not.
        let got = b.rx.try_recv().unwrap();
        assert!(Arc::ptr_eq(&got.delivery, &d2) || Arc::ptr_eq(&got.delivery, &d1));
        std::thread::sleep(STALL * 2);
        assert!(subs.publish("4".into()).is_ok());
        assert!(subs.publish("5".into()).is_err());
        assert!(
            a.evicted.load(Relaxed),
            "a queue full for the stall time is dropped"
        );
        assert!(!b.evicted.load(Relaxed));
        assert_eq!(subs.count(), 1);
        let _ = a.rx.try_recv();
    }

    #[test]
    fn pending_requests_are_capped_and_leave_the_count_once() {
        let subs = Subscribers::new(16, STALL, 2);
        let _s = subs.add();
        let d1 = subs.publish("1".into()).unwrap();
        let d2 = subs.publish("2".into()).unwrap();
        assert_eq!(
            subs.publish("3".into()).err(),
            Some(NotPublished::TooManyPending)
        );
        assert!(subs.taken(&d1));
        assert!(!subs.taken(&d1));
        subs.settle(&d1);
        assert_eq!(subs.pending(), 1);
        subs.orphan(&d2);
        assert!(d2.is_orphaned());
        subs.settle(&d2);
        assert_eq!(subs.pending(), 0);
        assert!(subs.publish("4".into()).is_ok());
    }
}
