//! One TCP connection on the shard's io_uring. The rest of the relay sees only owned-buffer
//! reads and writes on byte ranges, so the engine underneath can change without touching
//! the channel code.

use std::io;
use std::ops::Range;
use std::os::fd::{AsRawFd, BorrowedFd};

use tokio_uring::buf::{BoundedBuf, IoBuf};
use tokio_uring::net::TcpStream;

use super::buffer::Buffer;

pub struct Conn {
    stream: TcpStream,
    /// Which request the connection serves (keep-alive): deadlines armed for an earlier
    /// one no longer apply (see `Watchdog`).
    request: std::cell::Cell<u32>,
    /// The peer's address, for log lines (kept from the accept: after a reset the kernel
    /// no longer tells it).
    peer: Option<std::net::SocketAddr>,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: Option<std::net::SocketAddr>) -> Conn {
        // Both sides stream small frames too; never let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        Conn {
            stream,
            request: std::cell::Cell::new(0),
            peer,
        }
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

    /// Adopts a connection handed over from another shard (`peer`: as it was accepted).
    pub fn from_std(std: std::net::TcpStream, peer: Option<std::net::SocketAddr>) -> Conn {
        Conn::new(TcpStream::from_std(std), peer)
    }

    /// Reads up to `max` bytes appended to `buf` (into its spare capacity, reserved if
    /// needed — nothing is zeroed first). Returns the bytes read (0 = EOF); `buf.len()`
    /// grows by that much. The read must never be dropped while in flight: the kernel
    /// would complete it anyway and the bytes would be lost.
    pub async fn read_append(&self, mut buf: Vec<u8>, max: usize) -> (io::Result<usize>, Vec<u8>) {
        let start = buf.len();
        buf.reserve(max);
        let (res, slice) = self.stream.read(buf.slice(start..start + max)).await;
        (res, slice.into_inner())
    }

    /// Reads up to `max` bytes appended to `buf`, as [`Conn::read_append`]; a registered
    /// buffer is read with a fixed read (and must have room for `max`).
    pub async fn read_into(&self, buf: Buffer, max: usize) -> (io::Result<usize>, Buffer) {
        match buf.take_registered() {
            // Boxed: the heap path's future, which every idle connection holds, stays as
            // small as a plain read's.
            Ok((fixed, len, cap)) => Box::pin(self.read_fixed_append(fixed, len, cap, max)).await,
            Err(heap) => {
                let (res, v) = self.read_append(heap.into_vec(), max).await;
                (res, v.into())
            }
        }
    }

    async fn read_fixed_append(
        &self,
        fixed: tokio_uring::buf::fixed::FixedBuf,
        len: usize,
        cap: usize,
        max: usize,
    ) -> (io::Result<usize>, Buffer) {
        assert!(len + max <= cap, "a registered buffer cannot grow");
        let (res, slice) = self.stream.read_fixed(fixed.slice(len..len + max)).await;
        let n = *res.as_ref().unwrap_or(&0);
        let buf = Buffer::from_registered_read(slice.into_inner(), len, cap, n);
        (res, buf)
    }

    /// Writes all of `buf[range]`.
    pub async fn write_range<B: IoBuf>(&self, buf: B, range: Range<usize>) -> (io::Result<()>, B) {
        if range.is_empty() {
            return (Ok(()), buf);
        }
        let (res, slice) = self.stream.write_all(buf.slice(range)).await;
        (res, slice.into_inner())
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
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    /// Wakes any read in flight (it completes with 0) and stops further reads.
    pub fn shutdown_read(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Read);
    }

    /// Ends both directions; in-flight operations complete at once.
    pub fn shutdown(&self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
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

    /// Detaches the socket so it can be sent to another shard's ring: the descriptor is
    /// duplicated, and this shard's copy is closed when `self` drops.
    pub fn into_std(self) -> io::Result<std::net::TcpStream> {
        let owned = self.fd().try_clone_to_owned()?;
        Ok(std::net::TcpStream::from(owned))
    }

    /// The socket's descriptor, for socket options and duplication.
    fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the descriptor is owned by `self.stream` and stays open as long as `self`
        // lives, which bounds the returned borrow.
        unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) }
    }
}

/// A byte range of a buffer shared by several in-flight iovecs of one `writev`.
struct SharedRange {
    buf: std::rc::Rc<Buffer>,
    range: Range<usize>,
}

// SAFETY: the pointer is into a `Buffer` owned by the `Rc`, which this value keeps alive
// and which nothing mutates or reallocates while any `SharedRange` exists (the buffer is
// only taken back with `Rc::try_unwrap` after every `SharedRange` is dropped). The range
// lies within the buffer's initialized length (checked in `write_segments`).
unsafe impl tokio_uring::buf::IoBuf for SharedRange {
    fn stable_ptr(&self) -> *const u8 {
        self.buf[self.range.start..].as_ptr()
    }

    fn bytes_init(&self) -> usize {
        self.range.len()
    }

    fn bytes_total(&self) -> usize {
        self.range.len()
    }
}

impl Conn {
    /// Writes `buf[r]` for every range in `segments`, in order, with vectored writes: the
    /// ranges go out of the buffer where they lie, without being moved together first.
    pub async fn write_segments(
        &self,
        buf: Buffer,
        segments: &[Range<usize>],
    ) -> (io::Result<()>, Buffer) {
        match segments {
            [] => return (Ok(()), buf),
            [one] => return self.write_range(buf, one.clone()).await,
            _ => {}
        }
        assert!(segments
            .iter()
            .all(|r| r.start <= r.end && r.end <= buf.len()));
        let shared = std::rc::Rc::new(buf);
        let mut pending: Vec<Range<usize>> =
            segments.iter().filter(|r| !r.is_empty()).cloned().collect();
        let mut next = 0; // first range not fully written
        let mut result = Ok(());
        while next < pending.len() {
            let iovs: Vec<SharedRange> = pending[next..]
                .iter()
                .take(IOV_MAX)
                .map(|r| SharedRange {
                    buf: shared.clone(),
                    range: r.clone(),
                })
                .collect();
            let (res, iovs) = self.stream.writev(iovs).await;
            drop(iovs);
            match res {
                Ok(0) => {
                    result = Err(io::ErrorKind::WriteZero.into());
                    break;
                }
                Ok(mut n) => {
                    // Drop what was written; a partly written range keeps its tail.
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
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let buf = std::rc::Rc::try_unwrap(shared).expect("every iovec of the write was dropped");
        (result, buf)
    }
}

/// Most iovecs passed to one `writev` (the kernel's UIO_MAXIOV).
const IOV_MAX: usize = 1024;
