//! One TCP connection on the shard's event loop. The rest of the relay sees only owned-buffer
//! reads and writes on byte ranges, so the engine underneath can change without touching
//! the channel code — and it does: `io_engine` picks readiness (`epoll`, the default:
//! `epoll.rs`) or io_uring operations (`io_uring`: `uring.rs`). Measured on the relay's
//! hot loop and on the relay itself, readiness costs far less CPU per byte at many streams
//! and the same at one (`docs/architecture.md` has the figures and the decision).

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::buffer::Buffer;
use super::{epoll, uring};

/// How a shard's sockets are read and written (`io_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngine {
    /// Readiness from the shard runtime's epoll reactor, then non-blocking `recv`/`send`.
    #[default]
    Epoll,
    /// io_uring read/write operations (and fixed reads into registered buffers).
    IoUring,
}

/// The socket, as the engine holds it.
enum Socket {
    Epoll(epoll::EpollSocket),
    Uring(tokio_uring::net::TcpStream),
}

impl Socket {
    fn raw_fd(&self) -> RawFd {
        match self {
            Socket::Epoll(s) => s.as_raw_fd(),
            Socket::Uring(s) => s.as_raw_fd(),
        }
    }
}

pub struct Conn {
    socket: Socket,
    /// Which request the connection serves (keep-alive): deadlines armed for an earlier
    /// one no longer apply (see `Watchdog`).
    request: std::cell::Cell<u32>,
    /// The peer's address, for log lines (kept from the accept: after a reset the kernel
    /// no longer tells it).
    peer: Option<std::net::SocketAddr>,
}

impl Conn {
    fn new(socket: Socket, peer: Option<std::net::SocketAddr>) -> Conn {
        let conn = Conn {
            socket,
            request: std::cell::Cell::new(0),
            peer,
        };
        // Both sides stream small frames too; never let Nagle hold them back.
        let _ = socket2::SockRef::from(&conn.fd()).set_nodelay(true);
        conn
    }

    /// A connection a shard's listener accepted, in `epoll` mode (non-blocking).
    pub(super) fn accepted_epoll(
        s: std::net::TcpStream,
        peer: std::net::SocketAddr,
    ) -> io::Result<Conn> {
        Ok(Conn::new(
            Socket::Epoll(epoll::EpollSocket::new(s)?),
            Some(peer),
        ))
    }

    /// A connection a shard's listener accepted, in `io_uring` mode.
    pub(super) fn accepted_uring(
        s: tokio_uring::net::TcpStream,
        peer: std::net::SocketAddr,
    ) -> Conn {
        Conn::new(Socket::Uring(s), Some(peer))
    }

    /// Adopts a connection handed over from another shard (`peer`: as it was accepted).
    /// Fails when the socket cannot join the shard's epoll set (`fs.epoll.max_user_watches`
    /// reached, or no memory).
    pub fn from_std(
        std: std::net::TcpStream,
        peer: Option<std::net::SocketAddr>,
        engine: IoEngine,
    ) -> io::Result<Conn> {
        let socket = match engine {
            IoEngine::Epoll => {
                std.set_nonblocking(true)?;
                Socket::Epoll(epoll::EpollSocket::new(std)?)
            }
            IoEngine::IoUring => {
                // io_uring reads and writes wait for the socket themselves; a non-blocking
                // one would hand EAGAIN back on older kernels.
                std.set_nonblocking(false)?;
                Socket::Uring(tokio_uring::net::TcpStream::from_std(std))
            }
        };
        Ok(Conn::new(socket, peer))
    }

    /// The peer's address as accepted.
    pub fn peer(&self) -> Option<std::net::SocketAddr> {
        self.peer
    }

    /// The connection goes on to its next request: watchdogs armed before now (a close
    /// timeout of the channel end it served, say) no longer touch it.
    pub fn next_request(&self) {
        self.request.set(self.request.get().wrapping_add(1));
    }

    /// The number of the request the connection serves, for `Watchdog`.
    pub fn request(&self) -> u32 {
        self.request.get()
    }

    /// Reads up to `max` bytes appended to `buf` (into its spare capacity, reserved if
    /// needed — nothing is zeroed first). Returns the bytes read (0 = EOF); `buf.len()`
    /// grows by that much. The read must never be dropped while in flight (with io_uring
    /// the kernel would complete it anyway and the bytes would be lost).
    pub async fn read_append(&self, buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        match &self.socket {
            Socket::Epoll(s) => epoll::read_append(s, buf, max).await,
            Socket::Uring(s) => uring::read_append(s, buf, max).await,
        }
    }

    /// Waits until a read would find bytes (or EOF, or an error) — with readiness; with
    /// io_uring at once. A connection that is mostly idle waits here before it takes a
    /// buffer, so a parked read holds none.
    pub async fn wait_readable(&self) {
        if let Socket::Epoll(s) = &self.socket {
            let _ = s.readable().await;
        }
    }

    /// Reads up to `max` bytes appended to `buf`, as [`Conn::read_append`]; a registered
    /// buffer is read with a fixed read (and must have room for `max`).
    pub async fn read_into(&self, buf: Buffer, max: usize) -> (io::Result<usize>, Buffer) {
        // Registered buffers come with the io_uring engine only (the configuration refuses
        // them with epoll); any other buffer is read as a vector.
        let buf = match (&self.socket, buf.take_registered()) {
            // Boxed: the heap path's future, which every idle connection holds, stays as
            // small as a plain read's.
            (Socket::Uring(s), Ok((fixed, len, cap))) => {
                return Box::pin(uring::read_fixed_append(s, fixed, len, cap, max)).await
            }
            (_, Ok((fixed, len, cap))) => Buffer::from_registered_read(fixed, len, cap, 0),
            (_, Err(heap)) => heap,
        };
        let (res, v) = self.read_append(buf.into_vec(), max).await;
        (res, v.into())
    }

    /// Writes all of `buf[range]`.
    pub async fn write_range<B>(&self, buf: B, range: Range<usize>) -> (io::Result<()>, B)
    where
        B: tokio_uring::buf::IoBuf + AsRef<[u8]>,
    {
        if range.is_empty() {
            return (Ok(()), buf);
        }
        match &self.socket {
            Socket::Epoll(s) => {
                let res = epoll::write_range(s, buf.as_ref(), range).await;
                (res, buf)
            }
            // Boxed (as every write of the io_uring engine): an operation's future is large,
            // and every task that may write would carry its size.
            Socket::Uring(s) => Box::pin(uring::write_range(s, buf, range)).await,
        }
    }

    /// Writes a connection's first bytes (a handshake's 101) before any other task can
    /// write to it: once this returns, the channel may hand the socket data from another
    /// task, which must come after. With readiness the bytes go in one `send` now (a fresh
    /// socket always has room for a response head) or the write fails; io_uring keeps the
    /// order by submission.
    pub async fn write_first(&self, bytes: Vec<u8>) -> io::Result<()> {
        match &self.socket {
            Socket::Epoll(s) => epoll::send_now(s, &bytes),
            Socket::Uring(_) => self.write_all(bytes).await,
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&self, bytes: Vec<u8>) -> io::Result<()> {
        let n = bytes.len();
        self.write_range(bytes, 0..n).await.0
    }

    /// Writes the connection's last bytes and ends it (as [`Conn::shutdown`]): corked, so
    /// the FIN leaves in the same segment as the bytes instead of one of its own.
    pub async fn write_last(&self, bytes: Vec<u8>) -> io::Result<()> {
        self.cork();
        let res = self.write_all(bytes).await;
        self.shutdown();
        res
    }

    /// Holds back partial segments until the connection is shut down for writing (or the
    /// kernel's 200 ms cork limit): the last bytes and the FIN then share one segment.
    pub fn cork(&self) {
        let _ = socket2::SockRef::from(&self.fd()).set_cork(true);
    }

    /// Sends the FIN (with any corked bytes); reads go on.
    pub fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&self.fd()).shutdown(std::net::Shutdown::Write);
    }

    /// Wakes any read in flight (it completes with 0) and stops further reads.
    pub fn shutdown_read(&self) {
        let _ = socket2::SockRef::from(&self.fd()).shutdown(std::net::Shutdown::Read);
    }

    /// Ends both directions; in-flight operations complete at once.
    pub fn shutdown(&self) {
        let _ = socket2::SockRef::from(&self.fd()).shutdown(std::net::Shutdown::Both);
    }

    /// Ends the connection abortively: the close that follows sends a reset, discarding
    /// unsent data, so a peer that stopped reading learns at once that we are gone.
    pub fn abort(&self) {
        let _ = socket2::SockRef::from(&self.fd()).set_linger(Some(std::time::Duration::ZERO));
        self.shutdown();
    }

    /// Bytes written to the socket that the peer has not acknowledged yet (`SIOCOUTQ`):
    /// while this shrinks, the peer is still taking what was written to it.
    pub fn unacked_bytes(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: `SIOCOUTQ` (= `TIOCOUTQ`) writes one `c_int` through the pointer, which
        // points to a live local; the descriptor is open for as long as `self`.
        let rc = unsafe { libc::ioctl(self.fd().as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if rc == 0 {
            n.max(0) as usize
        } else {
            0
        }
    }

    /// Detaches the socket so it can be sent to another shard: the descriptor is
    /// duplicated, and this shard's copy is closed when `self` drops.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let owned = self.fd().try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(owned))
    }

    /// The socket's descriptor, for socket options and duplication.
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.socket` and stays open as long as `self`
        // lives, which bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.socket.raw_fd()) }
    }
}

impl Conn {
    /// Writes `buf[r]` for every range in `segments`, in order, with vectored writes: the
    /// ranges go out of the buffer where they lie, without being moved together first.
    /// Should the write have to wait for room, `idle` (the connection feeding this one,
    /// which will not be read until the write is done) is parked meanwhile (`park_reads`).
    pub async fn write_segments(
        &self,
        buf: Buffer,
        segments: &[Range<usize>],
        idle: Option<&Conn>,
    ) -> (io::Result<()>, Buffer) {
        assert!(segments
            .iter()
            .all(|r| r.start <= r.end && r.end <= buf.len()));
        // One range (a packed chunk, a control frame): no list to build.
        let (mut one, mut many);
        let pending: &mut [Range<usize>] = match segments {
            [r] if r.is_empty() => return (Ok(()), buf),
            [r] => {
                one = [r.clone()];
                &mut one
            }
            _ => {
                many = segments
                    .iter()
                    .filter(|r| !r.is_empty())
                    .cloned()
                    .collect::<Vec<_>>();
                &mut many
            }
        };
        if pending.is_empty() {
            return (Ok(()), buf);
        }
        match &self.socket {
            Socket::Epoll(s) => {
                let park = || idle.into_iter().for_each(Conn::park_reads);
                let res = epoll::write_segments(s, &buf, pending, IOV_MAX, park).await;
                (res, buf)
            }
            Socket::Uring(_) if pending.len() == 1 => {
                let range = pending[0].clone();
                self.write_range(buf, range).await
            }
            // Boxed, as every write of the io_uring engine (see `write_range`).
            Socket::Uring(s) => Box::pin(uring::write_segments(s, buf, pending, IOV_MAX)).await,
        }
    }

    /// The connection will not be read for a while (its peer's data waits for room on the
    /// other end): with readiness, bytes arriving meanwhile should not wake the shard. The
    /// next read or wait takes it back. Nothing to do with io_uring, where only a pending
    /// read listens.
    pub fn park_reads(&self) {
        if let Socket::Epoll(s) = &self.socket {
            s.park_reads();
        }
    }
}

/// After a vectored write of `n` bytes starting at range `next`: drops what was written (a
/// partly written range keeps its tail) and returns the first range not fully written.
pub(super) fn advance(pending: &mut [Range<usize>], mut next: usize, mut n: usize) -> usize {
    while n > 0 {
        let first = &mut pending[next];
        if n >= first.len() {
            n -= first.len();
            next += 1;
        } else {
            first.start += n;
            n = 0;
        }
    }
    next
}

/// Most iovecs passed to one `writev` (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;

#[cfg(test)]
mod tests {
    use super::{advance, Conn, IoEngine};

    #[test]
    fn a_first_write_goes_out_at_once_or_fails() {
        tokio_uring::start(async {
            let (peer, ours) = crate::ring::loopback_pair();
            let _ = socket2::SockRef::from(&peer).set_recv_buffer_size(4096);
            let _ = socket2::SockRef::from(&ours).set_send_buffer_size(4096);
            let conn = Conn::from_std(ours, None, IoEngine::Epoll).unwrap();
            conn.write_first(b"HTTP/1.1 101 Switching Protocols\r\n\r\n".to_vec())
                .await
                .expect("a fresh socket takes a response head at once");
            // Far more than the socket can take now: refused rather than left to finish
            // after whatever another task writes next.
            let res = conn.write_first(vec![0; 16 << 20]).await;
            assert!(res.is_err(), "{res:?}");
        });
    }

    #[test]
    fn a_partial_vectored_write_leaves_the_rest_of_its_range() {
        let mut pending = vec![0..10, 20..25, 30..40];
        // 12 bytes: the first range and 2 of the second.
        let next = advance(&mut pending, 0, 12);
        assert_eq!((next, &pending[1..]), (1, &[22..25, 30..40][..]));
        // The rest of the second range exactly.
        let next = advance(&mut pending, next, 3);
        assert_eq!((next, pending[2].clone()), (2, 30..40));
        let next = advance(&mut pending, next, 10);
        assert_eq!(next, 3);
    }
}
