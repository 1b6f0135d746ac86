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
///
/// The first attempt is a plain `send`, made at once: a socket the reactor has not reported
/// on yet would otherwise wait a turn for nothing. (`Conn` keeps a socket's writes in the
/// order they were started.)
pub async fn write_range(s: &TcpStream, buf: &[u8], range: Range<usize>) -> io::Result<()> {
    let mut at = range.start;
    match socket2::SockRef::from(s).send_with_flags(&buf[at..range.end], libc::MSG_NOSIGNAL) {
        Ok(n) => at += n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    while at < range.end {
        s.writable().await?;
        match s.try_write(&buf[at..range.end]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `buf[r]` for every range of `pending`, in order, with vectored writes (at most
/// `iov_max` ranges a call).
pub async fn write_segments(
    s: &TcpStream,
    buf: &[u8],
    mut pending: Vec<Range<usize>>,
    iov_max: usize,
) -> io::Result<()> {
    let mut next = 0; // first range not fully written
    let mut first = true; // at once by a plain `sendmsg`, as in `write_range`
    while next < pending.len() {
        if !first {
            s.writable().await?;
        }
        let iovs: Vec<io::IoSlice<'_>> = pending[next..]
            .iter()
            .take(iov_max)
            .map(|r| io::IoSlice::new(&buf[r.clone()]))
            .collect();
        let res = if std::mem::take(&mut first) {
            socket2::SockRef::from(s).send_vectored_with_flags(&iovs, libc::MSG_NOSIGNAL)
        } else {
            s.try_write_vectored(&iovs)
        };
        match res {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => next = super::conn::advance(&mut pending, next, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
