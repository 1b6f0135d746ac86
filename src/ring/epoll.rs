//! Socket reads and writes by readiness: the socket sits in the shard runtime's epoll
//! reactor, and each operation is a non-blocking `recv`/`send` once the socket is ready
//! (the `epoll` engine). Nothing is in flight in the kernel between polls, so a future
//! here may be dropped without losing bytes.

use std::io;
use std::ops::Range;

use tokio::net::TcpStream;

/// Reads up to `max` bytes into `buf`'s spare capacity (reserved once the socket is
/// readable: a parked read holds no more than it was given); 0 = EOF.
pub async fn read_append(
    s: &TcpStream,
    mut buf: Vec<u8>,
    max: usize,
) -> (io::Result<usize>, Vec<u8>) {
    use bytes::BufMut;
    loop {
        if let Err(e) = s.readable().await {
            return (Err(e), buf);
        }
        buf.reserve(max);
        match s.try_read_buf(&mut (&mut buf).limit(max)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            res => return (res, buf),
        }
    }
}

/// Sends all of `bytes` in one non-blocking `send`, or fails (`WriteZero` when the socket
/// took only part of them).
pub fn send_now(s: &TcpStream, bytes: &[u8]) -> io::Result<()> {
    match socket2::SockRef::from(s).send_with_flags(bytes, libc::MSG_NOSIGNAL)? {
        n if n == bytes.len() => Ok(()),
        _ => Err(io::ErrorKind::WriteZero.into()),
    }
}

/// Writes all of `buf[range]`.
pub async fn write_range(s: &TcpStream, buf: &[u8], range: Range<usize>) -> io::Result<()> {
    write_segments(s, buf, &mut [range], 1).await
}

/// Writes `buf[r]` for every range of `pending` (none empty), in order, with vectored
/// writes of at most `iov_max` ranges.
///
/// The first attempt is a plain `sendmsg`, made at once: a socket the reactor has not
/// reported on yet would otherwise wait a turn for nothing. Later attempts go through the
/// reactor, whose readiness a `WouldBlock` clears.
pub async fn write_segments(
    s: &TcpStream,
    buf: &[u8],
    pending: &mut [Range<usize>],
    iov_max: usize,
) -> io::Result<()> {
    let iovs = |pending: &[Range<usize>]| -> Vec<io::IoSlice<'_>> {
        let slice = |r: &Range<usize>| io::IoSlice::new(&buf[r.clone()]);
        pending.iter().take(iov_max).map(slice).collect()
    };
    let mut res =
        socket2::SockRef::from(s).send_vectored_with_flags(&iovs(pending), libc::MSG_NOSIGNAL);
    let mut next = 0; // first range not fully written
    loop {
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => next = super::conn::advance(pending, next, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if next == pending.len() {
            return Ok(());
        }
        s.writable().await?;
        res = s.try_write_vectored(&iovs(&pending[next..]));
    }
}
