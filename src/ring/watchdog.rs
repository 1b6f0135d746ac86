//! The one way to put a deadline on a connection: a watchdog task that cuts the socket
//! when the deadline passes.
//!
//! Why a separate task: a tokio-uring read or write must never be dropped while in flight
//! (the kernel completes it anyway and the bytes are lost), so a deadline cannot be a
//! `timeout` around the operation. Instead the watchdog shuts the socket down, which makes
//! the pending operation complete with EOF or an error, and the owner of the connection
//! sees `fired()`.
//!
//! The watchdog holds only a weak reference: a connection that is gone (or was unwrapped
//! from its `Rc` to be handed to another thread) is never touched. Dropping the handle
//! cancels it, unless it was `detach`ed.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::Conn;

/// What the watchdog does to the socket when its deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Shut down the read side: a pending read returns EOF; writes still go out (a 408
    /// answer, say).
    Read,
    /// Shut down both directions.
    Both,
    /// Reset the connection (RST): for a peer that stopped reading with data in flight.
    Reset,
}

struct Shared {
    deadline: Cell<Option<Instant>>,
    fired: Cell<bool>,
    /// The handle was dropped without `detach`: stop.
    cancelled: Cell<bool>,
    /// Wakes the task when the deadline moves (or is cancelled).
    moved: Notify,
}

/// A deadline on one connection. One task per watchdog, however often it is re-armed.
#[must_use = "dropping a Watchdog cancels it; call detach() to let it run on its own"]
pub struct Watchdog {
    shared: Rc<Shared>,
    cancel_on_drop: bool,
}

impl Watchdog {
    /// A watchdog for `conn`, disarmed until `expire_in`.
    pub fn new(conn: &Rc<Conn>, cut: Cut) -> Watchdog {
        let shared = Rc::new(Shared {
            deadline: Cell::new(None),
            fired: Cell::new(false),
            cancelled: Cell::new(false),
            moved: Notify::new(),
        });
        super::spawn(watch(Rc::downgrade(conn), cut, shared.clone()));
        Watchdog {
            shared,
            cancel_on_drop: true,
        }
    }

    /// A watchdog armed to fire `after` from now.
    pub fn armed(conn: &Rc<Conn>, cut: Cut, after: Duration) -> Watchdog {
        let dog = Watchdog::new(conn, cut);
        dog.expire_in(after);
        dog
    }

    /// Cuts `conn` after `after` unless it is gone by then (fire and forget).
    pub fn cut_after(conn: &Rc<Conn>, cut: Cut, after: Duration) {
        Watchdog::armed(conn, cut, after).detach();
    }

    /// (Re)arms the deadline to `after` from now.
    pub fn expire_in(&self, after: Duration) {
        self.shared.deadline.set(Some(Instant::now() + after));
        self.shared.moved.notify_one();
    }

    /// No deadline until the next `expire_in`.
    pub fn disarm(&self) {
        self.shared.deadline.set(None);
        self.shared.moved.notify_one();
    }

    /// Whether the deadline passed and the socket was cut.
    pub fn fired(&self) -> bool {
        self.shared.fired.get()
    }

    /// Lets the watchdog run until its deadline (or until the connection is gone) without
    /// a handle.
    pub fn detach(mut self) {
        self.cancel_on_drop = false;
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.cancel_on_drop {
            self.shared.cancelled.set(true);
            self.shared.moved.notify_one();
        }
    }
}

async fn watch(conn: Weak<Conn>, cut: Cut, shared: Rc<Shared>) {
    loop {
        if shared.cancelled.get() {
            return;
        }
        let Some(deadline) = shared.deadline.get() else {
            shared.moved.notified().await;
            continue;
        };
        if Instant::now() < deadline {
            // Only timers and notifications are raced here, never an I/O operation.
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = shared.moved.notified() => {}
            }
            continue;
        }
        if shared.cancelled.get() {
            return;
        }
        let Some(conn) = conn.upgrade() else { return };
        shared.fired.set(true);
        match cut {
            Cut::Read => conn.shutdown_read(),
            Cut::Both => conn.shutdown(),
            Cut::Reset => conn.abort(),
        }
        return;
    }
}
