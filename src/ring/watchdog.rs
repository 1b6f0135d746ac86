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
//! from its `Rc` to be handed to another thread) is never touched. Nor is a connection
//! that has gone on to another keep-alive request (`Conn::next_request`) since the deadline
//! was set: a deadline belongs to the request it was armed for. Dropping the handle cancels
//! it, unless it was `detach`ed.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

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
    conn: Weak<Conn>,
    cut: Cut,
    deadline: Cell<Option<Instant>>,
    /// The connection's request number when the deadline was set.
    request: Cell<u32>,
    fired: Cell<bool>,
    /// The handle was dropped without `detach`: stop.
    cancelled: Cell<bool>,
    /// The sleeper in charge, by generation, and the time it wakes at. Older sleepers
    /// that wake find they are not in charge and end.
    sleeper: Cell<Option<(u64, Instant)>>,
    generations: Cell<u64>,
}

/// A deadline on one connection.
///
/// Cheap to re-arm: a sleeper task wakes at the deadline it was given and looks again, so
/// moving the deadline later (the next request of a keep-alive connection) or disarming it
/// costs no wake-up and no task. Only a deadline earlier than the pending one starts a new
/// sleeper. A sleeper that wakes to no deadline ends; the next `expire_in` starts another.
/// So an idle long-lived connection carries no timer task at all.
#[must_use = "dropping a Watchdog cancels it; call detach() to let it run on its own"]
pub struct Watchdog {
    shared: Rc<Shared>,
    cancel_on_drop: bool,
}

impl Watchdog {
    /// A watchdog for `conn`, disarmed until `expire_in`.
    pub fn new(conn: &Rc<Conn>, cut: Cut) -> Watchdog {
        Watchdog {
            shared: Rc::new(Shared {
                conn: Rc::downgrade(conn),
                cut,
                deadline: Cell::new(None),
                request: Cell::new(conn.request()),
                fired: Cell::new(false),
                cancelled: Cell::new(false),
                sleeper: Cell::new(None),
                generations: Cell::new(0),
            }),
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
        let deadline = Instant::now() + after;
        let sh = &self.shared;
        sh.deadline.set(Some(deadline));
        if let Some(conn) = sh.conn.upgrade() {
            sh.request.set(conn.request());
        }
        if sh.sleeper.get().is_some_and(|(_, wakes)| wakes <= deadline) {
            return; // the sleeper in charge wakes in time and looks again
        }
        let generation = sh.generations.get() + 1;
        sh.generations.set(generation);
        sh.sleeper.set(Some((generation, deadline)));
        super::spawn(sleep(sh.clone(), generation));
    }

    /// No deadline until the next `expire_in`.
    pub fn disarm(&self) {
        self.shared.deadline.set(None);
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
            // The sleeper sees it when it wakes (no wake-up needed for that).
            self.shared.cancelled.set(true);
        }
    }
}

/// A sleeper: waits for the deadline; cuts the socket if it passed, sleeps on if it moved
/// later, ends if it was disarmed or cancelled or another sleeper took over. (Kept small:
/// a long-lived connection's first sleeper lives as long as its first head timeout.)
async fn sleep(sh: Rc<Shared>, generation: u64) {
    loop {
        // When this sleeper wakes is kept in `sh`, not in the future: see `size` below.
        let wakes = match sh.sleeper.get() {
            Some((g, wakes)) if g == generation => wakes,
            _ => return,
        };
        tokio::time::sleep_until(wakes.into()).await;
        if sh.sleeper.get().is_none_or(|(g, _)| g != generation) {
            return;
        }
        let deadline = sh.deadline.get().filter(|_| !sh.cancelled.get());
        match deadline {
            Some(d) if Instant::now() < d => sh.sleeper.set(Some((generation, d))),
            Some(_) => {
                sh.sleeper.set(None);
                let conn = sh.conn.upgrade();
                if let Some(conn) = conn.filter(|c| c.request() == sh.request.get()) {
                    sh.fired.set(true);
                    match sh.cut {
                        Cut::Read => conn.shutdown_read(),
                        Cut::Both => conn.shutdown(),
                        Cut::Reset => conn.abort(),
                    }
                }
                return;
            }
            None => {
                sh.sleeper.set(None);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const SHORT: Duration = Duration::from_millis(60);

    /// A loopback pair: the relay's side as a `Conn`, the peer as a std socket.
    fn pair() -> (Rc<Conn>, std::net::TcpStream) {
        let (peer, ours) = crate::ring::loopback_pair();
        (
            Rc::new(Conn::from_std(ours, None, Default::default()).unwrap()),
            peer,
        )
    }

    /// Reads once: `Some(0)` is EOF (the watchdog cut the read side).
    async fn read_once(conn: &Conn) -> Option<usize> {
        conn.read_append(Vec::new(), 64).await.0.ok()
    }

    #[test]
    fn an_armed_watchdog_cuts_a_pending_read_at_its_deadline() {
        tokio_uring::start(async {
            let (conn, _peer) = pair();
            let t0 = Instant::now();
            let dog = Watchdog::armed(&conn, Cut::Read, SHORT);
            assert_eq!(read_once(&conn).await, Some(0));
            assert!(dog.fired());
            assert!(t0.elapsed() >= SHORT, "{:?}", t0.elapsed());
        });
    }

    #[test]
    fn a_deadline_moved_later_or_disarmed_does_not_fire_early() {
        tokio_uring::start(async {
            let (conn, mut peer) = pair();
            let dog = Watchdog::armed(&conn, Cut::Read, SHORT);
            tokio::time::sleep(SHORT / 2).await;
            dog.expire_in(SHORT * 4);
            tokio::time::sleep(SHORT * 2).await;
            assert!(!dog.fired(), "fired at the old deadline");
            dog.disarm();
            tokio::time::sleep(SHORT * 4).await;
            assert!(!dog.fired(), "fired while disarmed");
            peer.write_all(b"x").unwrap();
            assert_eq!(read_once(&conn).await, Some(1));
            // Re-armed after a disarm: fires again.
            dog.expire_in(SHORT);
            assert_eq!(read_once(&conn).await, Some(0));
            assert!(dog.fired());
        });
    }

    #[test]
    fn an_earlier_deadline_fires_at_once_and_a_dropped_watchdog_never() {
        tokio_uring::start(async {
            let (conn, _peer) = pair();
            let dog = Watchdog::new(&conn, Cut::Read);
            dog.expire_in(Duration::from_secs(60));
            let t0 = Instant::now();
            dog.expire_in(SHORT);
            assert_eq!(read_once(&conn).await, Some(0));
            assert!(t0.elapsed() < Duration::from_secs(10));

            let (conn, mut peer) = pair();
            drop(Watchdog::armed(&conn, Cut::Both, SHORT));
            tokio::time::sleep(SHORT * 3).await;
            peer.write_all(b"y").unwrap();
            assert_eq!(
                read_once(&conn).await,
                Some(1),
                "a dropped watchdog cut the socket"
            );
        });
    }

    #[test]
    fn a_deadline_of_an_earlier_request_does_not_touch_the_next_one() {
        tokio_uring::start(async {
            let (conn, mut peer) = pair();
            Watchdog::cut_after(&conn, Cut::Both, SHORT);
            conn.next_request();
            tokio::time::sleep(SHORT * 3).await;
            peer.write_all(b"z").unwrap();
            assert_eq!(
                read_once(&conn).await,
                Some(1),
                "cut by the previous request's deadline"
            );
            // A watchdog re-armed for the new request does fire.
            let dog = Watchdog::armed(&conn, Cut::Read, SHORT);
            assert_eq!(read_once(&conn).await, Some(0));
            assert!(dog.fired());
        });
    }

    #[test]
    fn a_detached_watchdog_still_fires() {
        tokio_uring::start(async {
            let (conn, _peer) = pair();
            Watchdog::cut_after(&conn, Cut::Read, SHORT);
            assert_eq!(read_once(&conn).await, Some(0));
        });
    }
}

#[cfg(test)]
mod size {
    use super::*;

    /// Every connection carries a sleeper for its first head timeout, so its size is paid
    /// per idle connection. At 152 bytes its tokio task fits a 256-byte cell; a 168-byte
    /// version took a 384-byte cell and cost 0.5 KiB per idle channel (`chanrelay-load
    /// idle`). Growing it needs that measurement first.
    #[test]
    fn the_sleeper_future_stays_small() {
        let sh = Rc::new(Shared {
            conn: Weak::new(),
            cut: Cut::Read,
            deadline: Cell::new(None),
            request: Cell::new(0),
            fired: Cell::new(false),
            cancelled: Cell::new(false),
            sleeper: Cell::new(None),
            generations: Cell::new(0),
        });
        let future = sleep(sh, 0);
        assert!(
            std::mem::size_of_val(&future) <= 152,
            "{}",
            std::mem::size_of_val(&future)
        );
    }
}

#[cfg(test)]
mod write_cut_tests {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::{Cut, Watchdog};
    use crate::ring::{Conn, IoEngine};

    /// A write to a peer that stopped reading ends with an error once the watchdog cuts
    /// the connection, with either engine.
    fn a_cut_write_ends(engine: IoEngine) {
        tokio_uring::start(async move {
            let (_peer, ours) = crate::ring::loopback_pair();
            let _ = socket2::SockRef::from(&_peer).set_recv_buffer_size(64 << 10);
            // Small buffers both ways: the write below surely waits for room.
            let _ = socket2::SockRef::from(&ours).set_send_buffer_size(64 << 10);
            let conn = Rc::new(Conn::from_std(ours, None, engine).unwrap());
            let dog = Watchdog::new(&conn, Cut::Reset);
            dog.expire_in(Duration::from_millis(200));
            let t0 = Instant::now();
            // Far more than the socket buffers hold: the write waits for room.
            let res = conn.write_all(vec![7u8; 64 << 20]).await;
            assert!(res.is_err(), "{engine:?}: the write never failed");
            assert!(dog.fired());
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "{engine:?}: cut after {:?}",
                t0.elapsed()
            );
        });
    }

    #[test]
    fn a_cut_write_ends_with_epoll() {
        a_cut_write_ends(IoEngine::Epoll);
    }

    #[test]
    fn a_cut_write_ends_with_io_uring() {
        a_cut_write_ends(IoEngine::IoUring);
    }
}
