//! Socket reads and writes by readiness (the `epoll` engine): each operation is a
//! non-blocking `recv`/`send`, and a task waits in the runtime's reactor only when one would
//! block. Nothing is in flight in the kernel between attempts, so a future here may be
//! dropped without losing bytes.
//!
//! The reactor registers a socket edge-triggered for reads and writes, and then every
//! segment that arrives wakes the shard, also while no task is going to read it: a writer's
//! socket while its channel waits for the reader to take what was read already (about 17
//! wake-ups per stall, 7% of the relay's CPU on pipelined 1 KiB messages, where a copy loop
//! blocked in `send` is not woken at all). So a socket can be *parked* (`park_reads`): taken
//! out of the reactor until a task next has to wait on it. Reads and writes try the socket
//! first and register it again only to wait.
//!
//! An attempt that succeeds at once never returns to the runtime, so every read and write
//! spends a unit of the task's cooperative budget first (as tokio's own sockets do): a
//! stream whose writer always has data waiting and whose reader always has room would
//! otherwise hold its shard — every other channel on it, and the control plane's orders —
//! for as long as it flows.

use std::cell::{Ref, RefCell};
use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A socket of the `epoll` engine.
pub struct EpollSocket {
    /// The socket's place in the reactor; `None` while parked. A waiting task holds a
    /// borrow of it, so the socket is only parked while nobody waits on it, and it is only
    /// registered again (`borrow_mut`) while `None`, when no task can hold a borrow.
    reg: RefCell<Option<AsyncFd<SocketFd>>>,
    /// Owns the descriptor. Declared after `reg`, so the registration goes first.
    stream: std::net::TcpStream,
}

/// The descriptor as the reactor holds it (owned by `EpollSocket::stream`).
struct SocketFd(RawFd);

impl AsRawFd for SocketFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl EpollSocket {
    /// Takes a non-blocking socket into the current shard's reactor.
    pub fn new(stream: std::net::TcpStream) -> io::Result<EpollSocket> {
        let s = EpollSocket {
            reg: RefCell::new(None),
            stream,
        };
        s.registered()?;
        Ok(s)
    }

    fn sock(&self) -> socket2::SockRef<'_> {
        socket2::SockRef::from(&self.stream)
    }

    /// The socket's registration, made again if it was parked; waiting tasks hold the
    /// returned borrow across their `.await` (see `reg`). Fails when the socket cannot join
    /// the reactor (`fs.epoll.max_user_watches` reached, or no memory): for a parked socket
    /// that is a read or write failing mid-stream, and the connection ends as if its peer
    /// had gone.
    fn registered(&self) -> io::Result<Ref<'_, AsyncFd<SocketFd>>> {
        if self.reg.borrow().is_none() {
            let fd = SocketFd(self.stream.as_raw_fd());
            // SAFETY: the descriptor is `self.stream`'s, open until after `self.reg` (and
            // with it this registration) is dropped.
            let io = unsafe {
                AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)?
            };
            *self.reg.borrow_mut() = Some(io);
        }
        Ok(Ref::map(self.reg.borrow(), |r| {
            r.as_ref().expect("registered just above")
        }))
    }

    /// Takes the socket out of the reactor until a task next waits on it, so bytes arriving
    /// meanwhile wake nobody. Does nothing while a task waits on the socket (it holds a
    /// borrow of the registration).
    pub fn park_reads(&self) {
        if let Ok(mut reg) = self.reg.try_borrow_mut() {
            reg.take();
        }
    }

    /// Whether the socket is in the reactor (for tests).
    #[cfg(test)]
    pub fn is_registered(&self) -> bool {
        self.reg.borrow().is_some()
    }

    /// Clears the readiness for `interest` the reactor holds for the socket, if it holds
    /// any, without waiting. Only right after an attempt that would block: nothing ran in
    /// between, so a change since is an event the reactor has yet to take, and it will. (The
    /// readiness future is polled once; it is not subject to the task's budget.)
    fn forget_readiness(&self, interest: Interest) {
        let reg = self.reg.borrow();
        let Some(io) = reg.as_ref() else {
            return; // parked: the reactor holds nothing for it
        };
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let ready = if interest.is_readable() {
            std::pin::pin!(io.readable()).poll(&mut cx)
        } else {
            std::pin::pin!(io.writable()).poll(&mut cx)
        };
        if let Poll::Ready(Ok(mut ready)) = ready {
            ready.clear_ready();
        }
    }

    /// Waits until a read would find bytes, EOF or an error.
    #[allow(clippy::await_holding_refcell_ref)] // by design: see `reg`
    pub async fn readable(&self) -> io::Result<()> {
        let io = self.registered()?;
        let _ready = io.readable().await?;
        Ok(())
    }
}

impl AsRawFd for EpollSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }
}

/// Reads up to `max` bytes into `buf`'s spare capacity; 0 = EOF. A buffer that already has
/// that much room is read at once; a smaller one waits for the socket to be readable before
/// it is grown, so a parked read holds no more than it was given.
pub async fn read_append(
    s: &EpollSocket,
    mut buf: Vec<u8>,
    max: usize,
) -> (io::Result<usize>, Vec<u8>) {
    tokio::task::consume_budget().await;
    let mut try_now = buf.capacity() - buf.len() >= max;
    loop {
        if !try_now {
            if let Err(e) = s.readable().await {
                return (Err(e), buf);
            }
        }
        buf.reserve(max);
        let spare = &mut buf.spare_capacity_mut()[..max];
        match s.sock().recv(spare) {
            Ok(n) => {
                // SAFETY: `recv` initialized the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return (Ok(n), buf);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                s.forget_readiness(Interest::READABLE);
                try_now = false;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => try_now = true,
            Err(e) => return (Err(e), buf),
        }
    }
}

/// Sends all of `bytes` in one non-blocking `send`, or fails (`WriteZero` when the socket
/// took only part of them).
pub fn send_now(s: &EpollSocket, bytes: &[u8]) -> io::Result<()> {
    match s.sock().send_with_flags(bytes, libc::MSG_NOSIGNAL)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// Writes all of `buf[range]`.
pub async fn write_range(s: &EpollSocket, buf: &[u8], range: Range<usize>) -> io::Result<()> {
    write_segments(s, buf, &mut [range], 1, || {}).await
}

/// Writes `buf[r]` for every range of `pending` (none empty), in order, with vectored
/// writes of at most `iov_max` ranges; `before_wait` runs once, if the write has to wait for
/// room.
///
/// The first attempt is made at once: a socket the reactor has not reported on yet would
/// otherwise wait a turn for nothing. Only a write that has to wait goes on in a boxed
/// future: every task that writes holds the state of a write, and most writes never wait.
pub async fn write_segments(
    s: &EpollSocket,
    buf: &[u8],
    pending: &mut [Range<usize>],
    iov_max: usize,
    before_wait: impl FnOnce(),
) -> io::Result<()> {
    tokio::task::consume_budget().await;
    let next = send_until_full(s, buf, pending, 0, iov_max)?;
    if next == pending.len() {
        return Ok(());
    }
    before_wait();
    Box::pin(write_rest(s, buf, pending, next, iov_max)).await
}

/// Sends `pending[next..]` in vectored, non-blocking sends until all is sent or the socket
/// is full (a send took less than it was offered, or none of it); returns the first range
/// not fully written.
fn send_until_full(
    s: &EpollSocket,
    buf: &[u8],
    pending: &mut [Range<usize>],
    mut next: usize,
    iov_max: usize,
) -> io::Result<usize> {
    while next < pending.len() {
        let iovs: Vec<io::IoSlice<'_>> = pending[next..]
            .iter()
            .take(iov_max)
            .map(|r| io::IoSlice::new(&buf[r.clone()]))
            .collect();
        let offered: usize = iovs.iter().map(|v| v.len()).sum();
        match s.sock().send_vectored_with_flags(&iovs, libc::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                next = super::conn::advance(pending, next, n);
                if n < offered {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(next)
}

/// The rest of a write that found the socket full: the write readiness the reactor still
/// holds from before is forgotten, so each attempt waits for room first (rather than
/// failing with `WouldBlock` first).
#[allow(clippy::await_holding_refcell_ref)] // by design: see `EpollSocket::reg`
async fn write_rest(
    s: &EpollSocket,
    buf: &[u8],
    pending: &mut [Range<usize>],
    mut next: usize,
    iov_max: usize,
) -> io::Result<()> {
    while next < pending.len() {
        s.forget_readiness(Interest::WRITABLE);
        let io = s.registered()?;
        let _ready = io.writable().await?;
        next = send_until_full(s, buf, pending, next, iov_max)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    /// `(peer, ours)`, ours non-blocking as the engine takes it.
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let (peer, ours) = crate::ring::loopback_pair();
        ours.set_nonblocking(true).unwrap();
        (peer, ours)
    }

    async fn read_some(s: &EpollSocket) -> Vec<u8> {
        let fut = read_append(s, Vec::new(), 64);
        let (res, buf) = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("a read that should end");
        res.unwrap();
        buf
    }

    #[test]
    fn a_parked_socket_leaves_the_reactor_until_a_task_waits_on_it() {
        tokio_uring::start(async {
            let (mut a, b) = pair();
            let s = EpollSocket::new(b).unwrap();
            assert!(s.is_registered());
            s.park_reads();
            assert!(!s.is_registered());
            // Bytes that come while parked are read directly, without joining again.
            a.write_all(b"while parked").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let (res, buf) = read_append(&s, Vec::with_capacity(64), 64).await;
            assert_eq!((res.unwrap(), &buf[..]), (12, &b"while parked"[..]));
            assert!(!s.is_registered());
            // Bytes that came while parked wake the wait that joins again.
            a.write_all(b"x").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            s.park_reads();
            assert_eq!(read_some(&s).await, b"x");
            assert!(s.is_registered());
            // A read that has to wait joins again, and ends when bytes come.
            s.park_reads();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                a.write_all(b"later").unwrap();
                a
            });
            assert_eq!(read_some(&s).await, b"later");
            assert!(s.is_registered());
            drop(writer.join());
        });
    }

    #[test]
    fn reads_and_writes_that_never_wait_still_let_other_tasks_run() {
        tokio_uring::start(async {
            let (mut a, b) = pair();
            let s = EpollSocket::new(b).unwrap();
            // All there before the loops start (and within the socket buffers): no read or
            // write below has to wait.
            a.write_all(&[7u8; 16 << 10]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            let ran = std::rc::Rc::new(std::cell::Cell::new(false));
            let other = {
                let ran = ran.clone();
                crate::ring::spawn(async move { ran.set(true) })
            };
            for _ in 0..1000 {
                let (res, _) = read_append(&s, Vec::with_capacity(16), 16).await;
                assert_eq!(res.unwrap(), 16);
            }
            assert!(ran.get(), "1,000 reads that found bytes held the thread");
            other.await.unwrap();
            let ran = std::rc::Rc::new(std::cell::Cell::new(false));
            let other = {
                let ran = ran.clone();
                crate::ring::spawn(async move { ran.set(true) })
            };
            for _ in 0..1000 {
                write_range(&s, b"0123456789abcdef", 0..16).await.unwrap();
            }
            assert!(ran.get(), "1,000 writes that found room held the thread");
            other.await.unwrap();
        });
    }

    #[test]
    fn a_socket_a_task_waits_on_is_not_parked() {
        tokio_uring::start(async {
            let (mut a, b) = pair();
            let s = std::rc::Rc::new(EpollSocket::new(b).unwrap());
            let waiter = {
                let s = s.clone();
                crate::ring::spawn(async move { read_some(&s).await })
            };
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.park_reads();
            assert!(s.is_registered(), "parked under a waiting task");
            a.write_all(b"ok").unwrap();
            let got = tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, b"ok");
        });
    }

    #[test]
    fn a_write_that_waits_for_room_parks_the_idle_socket_and_still_ends() {
        tokio_uring::start(async {
            let (mut peer, out) = pair();
            let (_feeder, idle) = pair();
            let out = EpollSocket::new(out).unwrap();
            let idle = EpollSocket::new(idle).unwrap();
            socket2::SockRef::from(&out.stream)
                .set_send_buffer_size(4096)
                .unwrap();
            let data: Vec<u8> = (0..4 << 20).map(|i| i as u8).collect();
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                let mut got = Vec::new();
                peer.read_to_end(&mut got).unwrap();
                got
            });
            let mut parked = false;
            let mut pending: Vec<_> = std::iter::once(0..data.len()).collect();
            write_segments(&out, &data, &mut pending, 1, || {
                idle.park_reads();
                parked = true;
            })
            .await
            .unwrap();
            assert!(parked && !idle.is_registered());
            drop(out);
            assert!(reader.join().unwrap() == data, "every byte, in order");
            // The parked socket still reads.
            drop(_feeder);
            let (res, _) = read_append(&idle, Vec::new(), 64).await;
            assert_eq!(res.unwrap(), 0, "EOF");
        });
    }
}
